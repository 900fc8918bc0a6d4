"""The documentation: the generated tables match the code, and every relative link resolves."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)
README_MAX_LINES = 350


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_tables", ROOT / "docs" / "gen_tables.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def region(text: str, name: str) -> str:
    return text.split(f"<!-- {name}:start", 1)[1].split(f"<!-- {name}:end -->", 1)[0]


def prose(text: str) -> str:
    """Markdown without fenced code blocks and code spans, where links and headings are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def anchors(path: Path, gen: ModuleType) -> set[str]:
    """The #anchors GitHub gives the headings of a Markdown file (a repeated one gets -1, -2...)."""
    seen: dict[str, int] = {}
    found = set()
    for match in HEADING.finditer(FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = gen.anchor(re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(2)))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path.read_text(encoding="utf-8")))
            if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]  # http:, https:, mailto: ...


# -- generated tables ---------------------------------------------------------------------------------
def test_generated_tables_match_the_code(gen):
    diffs = gen.check()
    assert not diffs, "the generated tables are out of date: run python docs/gen_tables.py\n" + "".join(diffs)


def test_the_check_command_exits_zero_when_current():
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "gen_tables.py"), "--check"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_check_catches_a_stale_table(gen, tmp_path):
    for rel in gen.render_all():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    readme = tmp_path / "README.md"
    text = readme.read_text(encoding="utf-8")
    stale = text.replace("| `SEARCHENGINE_DB` |", "| `SEARCHENGINE_DATABASE` |", 1)
    assert stale != text
    readme.write_text(stale, encoding="utf-8")
    diffs = gen.check(tmp_path)
    assert len(diffs) == 1 and "SEARCHENGINE_DATABASE" in diffs[0]
    assert gen.replace_regions(stale, gen.render_all()["README.md"]) == text


def test_every_command_is_in_the_command_table(gen):
    table = region((ROOT / "README.md").read_text(encoding="utf-8"), "commands")
    paths = [path for path, _ in gen.commands()]
    assert {"searchengine index", "searchengine search", "searchengine eval retrieval"} <= set(paths)
    for path in paths:
        assert f"[`{path}" in table, path


def test_every_variable_the_code_reads_is_in_the_table(gen):
    table = region((ROOT / "README.md").read_text(encoding="utf-8"), "envvars")
    in_code = gen.code_envvars()
    # read through os.environ.get, through a typed helper, and declared on an option only
    assert {"SEARCHENGINE_DB", "SEARCHENGINE_DECODE_TIMEOUT", "SEARCHENGINE_MAX_UPLOAD_BYTES"} <= set(in_code)
    declared = gen.option_envvars(gen.commands())
    assert "RAY_ADDRESS" in declared
    for var in {*in_code, *declared}:
        assert f"| `{var}` |" in table, var


def test_every_error_class_is_in_the_error_table(gen):
    table = region((ROOT / "README.md").read_text(encoding="utf-8"), "errors")
    for name in gen.errors.__all__:
        cls = getattr(gen.errors, name)
        assert f"| `{name}` | {cls.exit_code} | {cls.http_status} |" in table, name


# -- links --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page, gen):
    broken = []
    for target in relative_links(page):
        file_part, _, fragment = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists() or ROOT not in (dest, *dest.parents):
            broken.append(f"{target}: no such file in the repository")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest, gen):
            broken.append(f"{target}: no heading with that anchor in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_check_sees_a_broken_link(tmp_path, gen):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](missing.md) `[code](not-a-link.md)`\n"
                    "```\n[fenced](not-a-link-either.md)\n```\n[web](https://example.com)\n", encoding="utf-8")
    assert relative_links(page) == ["#title", "missing.md"]
    assert anchors(page, gen) == {"title"}


def test_the_docs_index_links_every_page():
    index = ROOT / "docs" / "README.md"
    linked = {(index.parent / t.partition("#")[0]).resolve() for t in relative_links(index)}
    missing = [p.name for p in PAGES if p.parent == index.parent and p != index and p.resolve() not in linked]
    assert not missing, f"docs/README.md does not link {missing}"


def test_the_readme_stays_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to a page under docs/"
