"""How long opening a large collection takes: the index load (checksums, mapping) and the check
that the index matches the store, when nothing changed since the index was saved and when the
store moved on (a write the index has not seen: the id sets are compared).

    python tests/benchmarks/bench_open.py --rows 500000 --factory IVF1024,PQ64 --json test-artifacts/bench_open.json

Rows are synthetic (random 512-d unit vectors written straight into the store, no images); the
index is built with ``searchengine build-index`` (an on-disk factory) or ``rebuild-index``
(``--factory auto`` and other in-memory ones). The collection lives under ``--workdir`` (a temp
folder by default, deleted at the end unless ``--keep``); a kept one is reused by the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
MODEL = f"local-dir:{ROOT / 'data/cache/models/vit-b-32-random'}"
BATCH = 20_000


def fill(home: Path, rows: int, model: str) -> float:
    from searchengine import SearchEngine
    from searchengine.store import NewImage

    rng = np.random.default_rng(0)
    started = time.perf_counter()
    with SearchEngine.open("bench", data_dir=home, model=model, create=True, writable=True) as engine:
        cid = engine.collection.id
        for start in range(0, rows, BATCH):
            n = min(rows, start + BATCH) - start
            vecs = rng.standard_normal((n, engine.encoder.dim)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            new = [NewImage(f"/photos/{i // 1000:04d}/{i:08d}.jpg", 250_000, 0.0, f"{i:064x}", 1600, 1200)
                   for i in range(start, start + n)]
            engine.store.write_batch(cid, new=new, new_vectors=vecs)
    return time.perf_counter() - started


def timed_open(home: Path, model: str) -> dict:
    """Open read-only; seconds in all, in the index load and in the store check (``_reconcile``)."""
    import searchengine.engine as engine_module
    from searchengine import SearchEngine

    spent: dict[str, float] = {}
    originals = {}
    for owner, name in ((engine_module.SearchEngine, "_reconcile"), (engine_module.OnDiskIndex, "load"),
                        (engine_module.VectorIndex, "load")):
        real = owner.__dict__[name]
        originals[(owner, name)] = real
        func = real.__func__ if isinstance(real, classmethod) else real

        def wrapper(*args, _func=func, _name=name, **kwargs):
            started = time.perf_counter()
            try:
                return _func(*args, **kwargs)
            finally:
                spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - started

        setattr(owner, name, classmethod(wrapper) if isinstance(real, classmethod) else wrapper)
    try:
        started = time.perf_counter()
        engine = SearchEngine.open("bench", data_dir=home, model=model)
        total = time.perf_counter() - started
        index = engine.status().index_in_use
        engine.close()
    finally:
        for (owner, name), real in originals.items():
            setattr(owner, name, real)
    return {"open_s": round(total, 3), "index_load_s": round(spent.get("load", 0.0), 3),
            "store_check_s": round(spent.get("_reconcile", 0.0), 3), "index": index}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--factory", default="IVF1024,PQ64")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--opens", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    home = args.workdir or Path(tempfile.mkdtemp(prefix="bench-open-"))
    result: dict = {"rows": args.rows, "factory": args.factory}
    try:
        if not (home / "filled").exists():
            result["fill_s"] = round(fill(home, args.rows, args.model), 1)
            started = time.perf_counter()
            command = (["build-index", "--factory", args.factory] if args.factory.upper().startswith("IVF")
                       and "," in args.factory else ["rebuild-index", "--index-factory", args.factory])
            subprocess.run([sys.executable, "-m", "searchengine", *command, "-c", "bench", "--data-dir", str(home)],
                           check=True, stdout=subprocess.DEVNULL)
            result["build_s"] = round(time.perf_counter() - started, 1)
            (home / "filled").touch()
        result["unchanged"] = [timed_open(home, args.model) for _ in range(args.opens)]
        # the store moves on without the index: one row written behind its back (no index save)
        from searchengine.store import NewImage, Store

        store = Store(f"sqlite:///{home / 'searchengine.db'}")
        cid = store.require_collection("bench").id
        vec = np.eye(1, 512, dtype=np.float32)
        store.write_batch(cid, new=[NewImage(f"/photos/extra-{time.time_ns()}.jpg", 1, 0.0, f"{time.time_ns():064x}",
                                             8, 8)], new_vectors=vec)
        store.close()
        result["behind_by_one_write"] = timed_open(home, args.model)
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
