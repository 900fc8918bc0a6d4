"""Untrusted artifacts: nothing the engine reads back may run code on load (issue 8's rule).

Metadata lives in SQL and JSON, arrays are read with ``allow_pickle=False``, weights come from
safetensors or ``torch.load(weights_only=True)``. A new ``pickle``, ``allow_pickle=True`` or bare
``torch.load`` in the package fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for d in ("searchengine", "indexer") for p in (ROOT / d).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_code_executing_loaders(path):
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib|shelve)\b", text, re.M), "pickle-based module"
    assert "allow_pickle=True" not in text
    for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
        assert "weights_only=True" in call.group(1), f"torch.load without weights_only=True: {call.group(0)}"
    for call in re.finditer(r"np\.load\(([^)]*)\)", text):
        assert "allow_pickle=False" in call.group(1), f"np.load without allow_pickle=False: {call.group(0)}"


def test_the_scan_sees_the_package():
    assert len(SOURCES) > 30 and any(p.name == "engine.py" for p in SOURCES)
