"""The CLI package's shape: one app built in searchengine.cli from plain command functions, and a cheap start."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import typer

from searchengine.cli import app

COMMANDS = ["index", "import", "search", "status", "duplicates", "rebuild-index", "build-index", "export-model", "train",
            "caption", "ask", "classify", "tag", "serve", "remove", "eval"]
MODULES = ["options", "index", "search", "stages", "train", "evaluate", "serve"]


def test_every_command_is_on_the_app():
    group = typer.main.get_command(app)
    assert list(group.commands) == COMMANDS  # type: ignore[attr-defined]
    assert list(group.commands["eval"].commands) == ["retrieval", "zeroshot"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", MODULES)
def test_command_modules_build_no_app_of_their_own(name):
    module = importlib.import_module(f"searchengine.cli.{name}")
    assert not [k for k, v in vars(module).items() if isinstance(v, typer.Typer)]


def test_help_imports_no_heavy_library():
    code = ("import sys\nfrom searchengine.cli import app\n"
            "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'open_clip', 'faiss', 'transformers', 'fastapi', 'uvicorn', 'ray')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
