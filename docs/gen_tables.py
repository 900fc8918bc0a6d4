"""Generate the documentation's tables from the code, so they cannot drift.

Rewrites the regions between ``<!-- NAME:start ... -->`` and ``<!-- NAME:end -->`` markers:

- README.md ``commands``: every command of the typer app with its one-line summary;
- README.md ``envvars``: every environment variable the code reads: the ``envvar`` of each click
  option, plus each ``"SEARCHENGINE_..."`` string literal in searchengine/ and indexer/ (found with a
  regex at generation time), each with the meaning and default written in ``DESCRIPTIONS`` below;
- README.md ``errors``: the error table (class, exit code, HTTP status) from ``searchengine.errors``;
- docs/cli.md ``reference``: each command's usage, help and options.

    python docs/gen_tables.py           # rewrite the regions in place
    python docs/gen_tables.py --check   # exit 1, printing a diff, when a file is out of date
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import typer

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # document this checkout, not another installed copy

from searchengine import errors  # noqa: E402  (after the path above)
from searchengine.cli import app  # noqa: E402

__all__ = ["DESCRIPTIONS", "ROOT", "check", "code_envvars", "commands", "render_all", "replace_regions", "main"]

PROG = "searchengine"
SOURCE_DIRS = ("searchengine", "indexer")
#: an environment variable the code names: a whole string literal such as "SEARCHENGINE_DB"
ENV_LITERAL = re.compile(r"""(?<![\w"'])["'](SEARCHENGINE_[A-Z0-9_]+)["']""")
REGION = re.compile(r"(<!-- (?P<name>[\w-]+):start[^>]*-->\n)(?P<body>.*?)(<!-- (?P=name):end -->)", re.S)
MANY_COMMANDS = 4  # an option on more commands than this is summed up as "N commands"

#: meaning and default of each variable; a variable the code reads must be described here, or,
#: for a click option's variable, its option's help is used.
DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "SEARCHENGINE_HOME": ("data directory (SQLite file, index files)",
                          "`$XDG_DATA_HOME/searchengine` or `~/.local/share/searchengine`"),
    "SEARCHENGINE_DB": ("any SQLAlchemy URL, e.g. `postgresql+psycopg://user@host/db` "
                        "(`pip install -e \".[postgres]\"`; see [PostgreSQL](docs/reliability.md#postgresql))",
                        "SQLite in the data directory"),
    "SEARCHENGINE_COLLECTION": ("collection name", "`default`"),
    "SEARCHENGINE_MODEL": ("model spec for new collections (see [Models](docs/models-and-training.md#models))",
                           "`ViT-B-32:laion2b_s34b_b79k` (offline: `lite`)"),
    "SEARCHENGINE_DEVICE": ("`auto` (cuda > mps > cpu), `cpu`, `cuda`, `cuda:N`, `mps`", "`auto`"),
    "SEARCHENGINE_PRECISION": ("model precision: `auto` (fp16 on CUDA; bf16 on CPUs with AMX when it stays within "
                               "cosine 0.99 of fp32), `fp32`, `bf16`, `fp16`", "`auto`"),
    "SEARCHENGINE_INDEX_FACTORY": ("faiss factory string for new collections (`auto`: by size, see "
                                   "[Vector index](docs/vector-index-and-scale.md#vector-index))", "`auto`"),
    "SEARCHENGINE_BATCH_SIZE": ("images per model batch (`index --batch-size`)", "32 on CPU, 256 on GPU"),
    "SEARCHENGINE_WORKERS": ("decode processes (`index --workers`; 0: decode in the main process)",
                             "from the core count"),
    "SEARCHENGINE_DECODE_TIMEOUT": ("seconds one file may take in a decode worker before the worker is killed and "
                                    "the file recorded as an error (0: no limit)", "60"),
    "SEARCHENGINE_DECODE_MEMORY_MB": ("memory a decode worker may map beyond what it started with (0: no limit; see "
                                      "[Hostile and odd input](docs/reliability.md#hostile-and-odd-input))",
                                      "40 bytes a pixel of the pixel cap, at least 1 GiB"),
    "SEARCHENGINE_CAPTION_MODEL": ("BLIP captioning model: a Hugging Face id or a `save_pretrained` folder; the "
                                   "server offers captions only when it is set",
                                   "`Salesforce/blip-image-captioning-base`"),
    "SEARCHENGINE_VQA_MODEL": ("BLIP visual question answering model; the server offers questions only when it is set",
                               "`Salesforce/blip-vqa-base`"),
    "SEARCHENGINE_RERANK_MODEL": ("reranker for `--rerank`: a folder from `train --itm` or a BLIP ITM model; the "
                                  "server offers reranking only when it is set", "`itm` (none ships yet)"),
    "SEARCHENGINE_READ_KEYS": ("comma-separated API keys that may search", "none (no keys: loopback only)"),
    "SEARCHENGINE_ADMIN_KEYS": ("comma-separated API keys that may also index, import and remove", "none"),
    "SEARCHENGINE_CORS_ORIGINS": ("comma-separated web origins allowed to call the API from a browser",
                                  "none (no CORS headers)"),
    "SEARCHENGINE_RATE_LIMIT": ("server requests a minute per key (or per client address without one); 0: off",
                                "600"),
    "SEARCHENGINE_MAX_UPLOAD_BYTES": ("largest request body, in bytes, for `ServerConfig.from_env()` in Python "
                                      "(`serve` takes `--max-upload-mb`)", "20 MiB"),
    "RAY_ADDRESS": ("the Ray cluster for `--engine ray`, e.g. `ray://head:10001`", "a local Ray"),
}


# -- the command tree ---------------------------------------------------------------------------------
def root_command() -> Any:
    """The click command behind the typer app, wherever the app lives (cli.py or a cli/ package)."""
    return typer.main.get_command(app)


def commands(root: Any | None = None) -> list[tuple[str, Any]]:
    """``("searchengine eval retrieval", command)`` for every visible leaf command, by name."""
    return sorted(_walk(root if root is not None else root_command(), PROG), key=lambda item: item[0])


def _walk(cmd: Any, path: str) -> Iterator[tuple[str, Any]]:
    subs = getattr(cmd, "commands", None)
    if subs is None or not hasattr(cmd, "list_commands"):  # a leaf (duck-typed: click or typer's own click)
        yield path, cmd
        return
    for name, sub in subs.items():
        if not getattr(sub, "hidden", False):
            yield from _walk(sub, f"{path} {name}")


def _is_argument(param: Any) -> bool:
    return getattr(param, "param_type_name", "") == "argument"


def usage(path: str, cmd: Any) -> str:
    """``searchengine index PATHS...``: the command and its positional arguments."""
    parts = [path]
    for param in cmd.params:
        if _is_argument(param):
            name = (param.name or "").upper() + ("..." if param.nargs == -1 else "")
            parts.append(name if param.required else f"[{name}]")
    return " ".join(parts)


def summary(cmd: Any) -> str:
    """The help's first sentence, on one line."""
    return cmd.get_short_help_str(limit=10**6)


def cell(text: str) -> str:
    """Text fit for one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_commands(cmds: list[tuple[str, Any]]) -> str:
    rows = [[f"[`{usage(path, cmd)}`](docs/cli.md#{anchor(path)})", cell(summary(cmd))] for path, cmd in cmds]
    return table(["command", "what it does"], rows)


# -- environment variables ----------------------------------------------------------------------------
def option_envvars(cmds: list[tuple[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each click option's environment variable -> its option names, commands and help."""
    found: dict[str, dict[str, Any]] = {}
    for path, cmd in cmds:
        for param in cmd.params:
            envvars = param.envvar if isinstance(param.envvar, (list, tuple)) else [param.envvar]
            for var in filter(None, envvars):
                entry = found.setdefault(var, {"opts": set(), "commands": set(), "help": param.help or ""})
                entry["opts"].add("/".join(param.opts))
                entry["commands"].add(path.removeprefix(PROG + " "))
    return found


def code_envvars(root: Path = ROOT) -> dict[str, list[str]]:
    """Each ``"SEARCHENGINE_..."`` string literal in the packages' sources -> the files naming it."""
    found: dict[str, list[str]] = {}
    for folder in SOURCE_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            for var in set(ENV_LITERAL.findall(path.read_text(encoding="utf-8"))):
                found.setdefault(var, []).append(path.relative_to(root).as_posix())
    return found


def _describe(var: str, option: dict[str, Any] | None) -> tuple[str, str]:
    if var in DESCRIPTIONS:
        return DESCRIPTIONS[var]
    if option and option["help"]:
        return cell(option["help"]), ""
    raise SystemExit(f"{var} is read by the code but not described: add it to DESCRIPTIONS in {Path(__file__).name}")


def _where(option: dict[str, Any] | None) -> str:
    if not option:
        return ""
    opts = ", ".join(f"`{o}`" for o in sorted(option["opts"]))
    names = sorted(option["commands"])
    where = ", ".join(names) if len(names) <= MANY_COMMANDS else f"{len(names)} commands"
    return f"{opts} ({where})"


def render_envvars(cmds: list[tuple[str, Any]]) -> str:
    options, in_code = option_envvars(cmds), code_envvars()
    names = sorted(set(options) | set(in_code), key=lambda v: (not v.startswith("SEARCHENGINE_"), v))
    stale = sorted(set(DESCRIPTIONS) - set(names))
    if stale:
        raise SystemExit(f"described but no longer read by the code: {', '.join(stale)}; "
                         f"remove them from DESCRIPTIONS in {Path(__file__).name}")
    rows = []
    for var in names:
        meaning, default = _describe(var, options.get(var))
        rows.append([f"`{var}`", meaning, default, _where(options.get(var))])
    return table(["variable", "meaning", "default", "option"], rows)


# -- errors -------------------------------------------------------------------------------------------
def render_errors() -> str:
    rows = []
    for name in errors.__all__:
        cls = getattr(errors, name)
        doc = inspect.getdoc(cls) or ""
        rows.append([f"`{name}`", str(cls.exit_code), str(cls.http_status), cell(doc.split("\n\n")[0])])
    return table(["error", "exit code", "HTTP status", "meaning"], rows)


# -- docs/cli.md: the reference -----------------------------------------------------------------------
def _default(param: Any) -> str:
    default = param.default
    if param.required:
        return "required"
    if not param.show_default or default in (None, False, (), []) or callable(default):
        return ""
    if isinstance(default, (list, tuple)):
        return ", ".join(f"`{v}`" for v in default)
    return f"`{default}`"


def _option_row(param: Any) -> list[str]:
    names = "/".join(param.opts)
    if getattr(param, "secondary_opts", None):
        names += " / " + "/".join(param.secondary_opts)
    env = param.envvar if isinstance(param.envvar, str) else ", ".join(param.envvar or [])
    return [f"`{names}`", f"`{env}`" if env else "", _default(param), cell(param.help or "")]


def render_reference(cmds: list[tuple[str, Any]]) -> str:
    parts = []
    for path, cmd in cmds:
        help_text = inspect.cleandoc(cmd.help or "").replace("\b\n", "")
        command_line = usage(path, cmd).replace(path, f"{path} [OPTIONS]", 1)
        parts.append(f"### {path}\n\n```\n{command_line}\n```\n\n{help_text}\n")
        args = [[f"`{(p.name or '').upper()}`", cell(getattr(p, 'help', None) or "")]
                for p in cmd.params if _is_argument(p)]
        if args:
            parts.append(table(["argument", "meaning"], args))
        options = [_option_row(p) for p in cmd.params if not _is_argument(p)]
        options.append(["`--help`", "", "", "Show the command's help and exit."])
        parts.append(table(["option", "environment", "default", "meaning"], options))
    return "\n".join(parts)


# -- regions ------------------------------------------------------------------------------------------
def render_all() -> dict[str, dict[str, Callable[[], str]]]:
    """File (relative to the root) -> region name -> what renders it."""
    cmds = commands()
    return {
        "README.md": {"commands": lambda: render_commands(cmds), "envvars": lambda: render_envvars(cmds),
                      "errors": render_errors},
        "docs/cli.md": {"reference": lambda: render_reference(cmds)},
    }


def replace_regions(text: str, renderers: dict[str, Callable[[], str]], where: str = "") -> str:
    """``text`` with each named region's body replaced by what its renderer returns."""
    seen: set[str] = set()

    def body(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in renderers:
            return match.group(0)
        seen.add(name)
        return match.group(1) + renderers[name]() + match.group(4)

    new = REGION.sub(body, text)
    missing = sorted(set(renderers) - seen)
    if missing:
        raise SystemExit(f"{where}: no <!-- NAME:start --> ... <!-- NAME:end --> region for {', '.join(missing)}")
    return new


def check(root: Path = ROOT) -> list[str]:
    """A unified diff for each file whose generated regions are out of date (empty: all current)."""
    diffs = []
    for rel, renderers in render_all().items():
        old = (root / rel).read_text(encoding="utf-8")
        new = replace_regions(old, renderers, rel)
        if new != old:
            diffs.append("".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                      f"{rel} (checked in)", f"{rel} (generated)")))
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 with a diff when a file is out of date")
    args = parser.parse_args(argv)
    if args.check:
        diffs = check()
        sys.stdout.write("".join(diffs))
        if diffs:
            print("generated tables are out of date: run python docs/gen_tables.py", file=sys.stderr)
        return 1 if diffs else 0
    for rel, renderers in render_all().items():
        path = ROOT / rel
        old = path.read_text(encoding="utf-8")
        new = replace_regions(old, renderers, rel)
        if new != old:
            path.write_text(new, encoding="utf-8")
            print(f"updated {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
