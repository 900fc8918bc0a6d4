"""The layering is written down (pyproject.toml, [tool.importlinter]) and enforced: a module imports
only from the layers below its own, and the serving core never imports the CLI, server or training."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_import_contracts_hold():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    out = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_the_structure_has_no_import_cycle_and_no_oversized_module():
    """No first-party import cycle (imports inside functions counted) and no module over 500 lines."""
    import ast

    mods: dict[str, Path] = {}
    for pkg in ("searchengine", "indexer"):
        for p in (ROOT / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            mods[name] = p
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        is_pkg = p.name == "__init__.py"
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = m.split(".") if is_pkg else m.split(".")[:-1]
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m and not m.startswith(t + "."):
                    edges[m].add(t)
    # a cycle exists iff some module reaches itself
    for start in mods:
        seen, todo = set(), list(edges[start])
        while todo:
            cur = todo.pop()
            assert cur != start, f"import cycle through {start}"
            if cur not in seen:
                seen.add(cur)
                todo.extend(edges[cur])
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in mods.values()}
    assert max(sizes.values()) <= 500, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
