"""Query benchmark: text->image latency end to end and search alone, recall@10 and memory per vector,
for several faiss index types at 10k, 100k and 1M vectors.

    python tests/benchmarks/bench_query.py --json test-artifacts/bench_query.json
    python tests/benchmarks/bench_query.py --sizes 10000,100000 --variants Flat,auto

Vectors are synthetic (speed and recall do not need real images): 512-d unit vectors in a cone
around a common direction, in clusters of about 100, with noise, stored as float16 like the store
keeps them. A random pair has cosine ~0.5 and a cluster mate ~0.8, roughly how CLIP image embeddings
of a photo collection behave. Queries are fresh draws from the same distribution.

* ``search``: ``VectorIndex.search`` for one query at a time: p50/p95 over ``--queries`` queries.
* ``recall@10``: against exact inner-product search over the same float16 vectors.
* ``bytes/vector``: the serialised index size over the vector count (what it holds in memory).
* inverted files get ``nprobe`` tuned by the engine's own calibration (recall@10 >= 0.97 on held-out
  stored vectors); ``auto`` is what a collection of that size gets by default.
* ``end to end`` (``--e2e``, for ``auto`` only): a real collection of that many rows (SQLite, the
  ViT-B-32 random-weight model, bf16 on AMX CPUs) and ``SearchEngine.search(text)``: text encoding,
  index search and the SQL join of the hits, p50/p95 over distinct query texts.

Prints a table; ``--json`` writes every figure. Run on demand, never in the default test run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
DIM = 512
WORDS = ("red car", "dog on a beach", "mountain lake", "city at night", "bowl of fruit", "old bridge",
         "snowy forest", "sailing boat", "flower field", "kitchen table", "desert road", "tall building",
         "cat asleep", "rainy street", "green hills")


def synthetic(n: int, seed: int, clusters: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    common = np.random.default_rng(1).standard_normal(DIM).astype(np.float32)
    centers = np.random.default_rng(2).standard_normal((clusters, DIM)).astype(np.float32)
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        x = common + 0.9 * centers[rng.integers(0, clusters, m)] + 0.6 * rng.standard_normal((m, DIM), dtype=np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out.astype(np.float16).astype(np.float32)


def exact_top10(data: np.ndarray, queries: np.ndarray) -> np.ndarray:
    import faiss

    flat = faiss.IndexFlatIP(DIM)
    flat.add(data)
    return flat.search(queries, 10)[1]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))


def percentiles(times: list[float]) -> dict:
    ms = np.array(times) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2)}


def bench_variant(factory: str, data: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict:
    import faiss

    from searchengine.index import VectorIndex

    ids = np.arange(len(data), dtype=np.int64)
    started = time.perf_counter()
    index = VectorIndex.build(factory, DIM, ids, data)
    if factory != "auto" and index.nprobe is not None:
        index.tune_nprobe(ids, data)
    if "HNSW" in index.chosen:
        faiss.downcast_index(index.faiss_index.index).hnsw.efSearch = 64
    build = time.perf_counter() - started
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        _, f = index.search(q[None], 10)
        times.append(time.perf_counter() - t)
        found.append(f[0])
    size = faiss.serialize_index(index.faiss_index).size
    return {"factory": factory, "in_use": index.chosen, "nprobe": index.nprobe, "build_s": round(build, 1),
            "recall_at_10": round(recall(np.array(found), truth), 4), "bytes_per_vector": round(size / len(data)),
            **{f"search_{k}": v for k, v in percentiles(times).items()}}


def bench_e2e(n: int, data: np.ndarray, queries: np.ndarray, truth: np.ndarray, model: str, texts: int) -> dict:
    """A real collection of ``n`` rows (vectors = ``data``) and SearchEngine.search end to end."""
    from searchengine import SearchEngine
    from searchengine.store import NewImage

    with tempfile.TemporaryDirectory() as home:
        with SearchEngine.open("bench", data_dir=home, model=model, create=True, writable=True) as engine:
            cid = engine.collection.id
            started = time.perf_counter()
            for start in range(0, n, 20_000):
                rows = [NewImage(f"/photos/{i // 1000:04d}/{i:08d}.jpg", 250_000, 0.0, f"{i:064x}", 1600, 1200)
                        for i in range(start, min(n, start + 20_000))]
                engine.store.write_batch(cid, new=rows, new_vectors=data[start : start + len(rows)])
            fill = time.perf_counter() - started
            started = time.perf_counter()
            engine.rebuild_index()
            build = time.perf_counter() - started
            status = engine.status()
            engine.search("warm up", k=10)
            phrases = [f"a photo of a {WORDS[i % len(WORDS)]} number {i}" for i in range(texts)]
            times = []
            for phrase in phrases:
                t = time.perf_counter()
                hits = engine.search(phrase, k=10)
                times.append(time.perf_counter() - t)
                assert len(hits) == 10 and all(h.path for h in hits)
            # recall of the collection's own index (its ids are 1..n in insertion order)
            found = [np.array([h.id - 1 for h in engine.search(vector=q, k=10)]) for q in queries]
            precision = engine.encoder.precision
    return {"rows": n, "fill_s": round(fill, 1), "index_build_s": round(build, 1), "index": status.index_in_use,
            "nprobe": status.index_nprobe, "model_precision": precision, "recall_at_10": round(recall(found, truth), 4),
            **{f"e2e_{k}": v for k, v in percentiles(times).items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--variants", default="Flat,SQfp16,SQ8,HNSW32,IVF,IVF-SQ8,auto",
                        help="faiss factories; IVF and IVF-SQ8 get sqrt(n) lists")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--e2e", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--texts", type=int, default=100, help="distinct query texts for the end-to-end latency")
    parser.add_argument("--model", default=f"local-dir:{ROOT / 'data/cache/models/vit-b-32-random'}")
    parser.add_argument("--skip-hnsw-above", type=int, default=100_000,
                        help="HNSW builds slowly on 2 cores; skip it above this size")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import faiss

    from searchengine.index.factory import nlist_for as _nlist

    results = {"dim": DIM, "queries": args.queries, "cpus": os.cpu_count(), "faiss": faiss.__version__,
               "faiss_threads": faiss.omp_get_max_threads(), "sizes": {}}
    for n in (int(s) for s in args.sizes.split(",")):
        data = synthetic(n, seed=0, clusters=max(10, n // 100))
        queries = synthetic(args.queries, seed=1, clusters=max(10, n // 100))
        truth = exact_top10(data, queries)
        nlist = _nlist(n)  # the list count auto would give this size
        rows = results["sizes"][n] = {"variants": []}
        for name in args.variants.split(","):
            if name.startswith("HNSW") and n > args.skip_hnsw_above:
                continue
            factory = {"IVF": f"IVF{nlist},Flat", "IVF-SQ8": f"IVF{nlist},SQ8"}.get(name, name)
            row = bench_variant(factory, data, queries, truth)
            rows["variants"].append(row)
            print(json.dumps({n: row}), file=sys.stderr, flush=True)
        if args.e2e:
            rows["end_to_end"] = bench_e2e(n, data, queries, truth, args.model, args.texts)
            print(json.dumps({n: rows["end_to_end"]}), file=sys.stderr, flush=True)
        del data
    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def print_table(results: dict) -> None:
    print(f"{'vectors':>9}  {'index':<22}{'nprobe':>7}{'build s':>9}{'recall@10':>10}{'B/vector':>9}"
          f"{'search p50':>11}{'p95 ms':>8}")
    for n, rows in results["sizes"].items():
        for r in rows["variants"]:
            name = r["factory"] if r["factory"] == r["in_use"] else f"{r['factory']} ({r['in_use']})"
            print(f"{n:>9,}  {name:<22}{r['nprobe'] or '':>7}{r['build_s']:>9}{r['recall_at_10']:>10}"
                  f"{r['bytes_per_vector']:>9}{r['search_p50_ms']:>11}{r['search_p95_ms']:>8}")
        e = rows.get("end_to_end")
        if e:
            print(f"{n:>9,}  end to end, auto = {e['index']} (nprobe {e['nprobe']}), {e['model_precision']} text encoder: "
                  f"p50 {e['e2e_p50_ms']} ms, p95 {e['e2e_p95_ms']} ms, recall@10 {e['recall_at_10']}")


if __name__ == "__main__":
    main()
