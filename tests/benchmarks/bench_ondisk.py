"""On-disk inverted file benchmark: build time, bytes per vector, recall@10 and latency, 1M-10M vectors.

    python tests/benchmarks/bench_ondisk.py --sizes 1000000 --json test-artifacts/bench_ondisk.json
    python tests/benchmarks/bench_ondisk.py --sizes 10000000 --factory IVF4096,PQ64 --workdir /var/tmp/x

Vectors are synthetic 512-d unit vectors drawn like tests/benchmarks/bench_query.py's (a cone around a
common direction, clusters of about 100, float16-rounded as the store keeps them), but generated in
seeded chunks and never all in memory: the build streams them (the store is not involved; the
builder is :func:`searchengine.index.build_ondisk`, the same one ``build-index`` runs).

* build: training on ``--sample`` vectors, adding in shards of ``--shard-size``, merging on disk.
* bytes/vector: the ``.ivfdata`` file (codes + 8-byte ids) and the index file (quantizer, codebooks),
  over the vector count; in memory: the index file, plus the mapped pages the queries touched
  (``RssFile`` growth), with the page cache warm from the build.
* recall@10: against exact inner-product search over the same vectors (brute force, streamed again),
  for ``--queries`` fresh queries; p50/p95 of one query at a time at each ``--nprobe``.
* re-ranked: what the engine does with a lossy (PQ) index (``searchengine.index.RERANK_FACTOR``):
  10x the candidates from the index, scored exactly against the float16 vectors (kept here in a
  memory-mapped file in the work folder, standing in for the store), top 10 kept; p50 includes it.

The files are written under ``--workdir`` (a temp folder by default) and deleted at the end.
Prints a table and an extrapolation to 100M and 1B vectors, labelled as such; ``--json`` writes it all.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
DIM = 512
CHUNK = 100_000


class Source:
    """``n`` vectors of bench_query's distribution, regenerated chunk by chunk from seeds."""

    def __init__(self, n: int, clusters: int, seed: int = 0) -> None:
        self.n, self.seed = n, seed
        self.common = np.random.default_rng(1).standard_normal(DIM).astype(np.float32)
        self.centers = np.random.default_rng(2).standard_normal((clusters, DIM)).astype(np.float32)

    def draw(self, m: int, rng: np.random.Generator) -> np.ndarray:
        x = (self.common + 0.9 * self.centers[rng.integers(0, len(self.centers), m)]
             + 0.6 * rng.standard_normal((m, DIM), dtype=np.float32))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)

    def chunks(self):
        for start in range(0, self.n, CHUNK):
            m = min(CHUNK, self.n - start)
            yield np.arange(start, start + m, dtype=np.int64) + 1, self.draw(m, np.random.default_rng((self.seed, start)))

    def fresh(self, m: int, seed: int) -> np.ndarray:
        return self.draw(m, np.random.default_rng((seed, 10**12)))


def rss() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def exact_top10(source: Source, queries: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """The exact top 10 ids per query; ``keep`` (n x DIM float16, row = id - 1) gets the vectors."""
    from searchengine.index.calibrate import ExactTop as _ExactTop

    top = _ExactTop(queries, 10)
    for ids, vecs in source.chunks():
        top.update(ids, vecs)
        if keep is not None:
            keep[ids[0] - 1 : ids[-1]] = vecs
    return np.take_along_axis(top.ids, np.argsort(-top.scores, axis=1), 1)


def reranked(index, kept: np.ndarray, row: np.ndarray, k: int = 10) -> np.ndarray:
    """The engine's re-rank of a lossy index: ``RERANK_FACTOR * k`` candidates scored exactly."""
    from searchengine.index import RERANK_FACTOR

    _, cand = index.search(row.reshape(1, -1), k * RERANK_FACTOR)
    cand = np.sort(cand[0][cand[0] >= 0])  # sorted: the mapped rows read in file order
    sims = kept[cand - 1].astype(np.float32) @ row
    return cand[np.argsort(-sims, kind="stable")[:k]]


def bench(n: int, factory: str, sample: int, shard_size: int, queries: int, nprobes: list[int], work: Path) -> dict:
    import faiss

    from searchengine.index import BuildOptions, BuildStats, OnDiskIndex, build_ondisk

    source = Source(n, clusters=max(1, n // 100))
    train = source.fresh(sample, seed=7)
    stats = BuildStats()
    path = work / "index.faiss"
    before = rss()
    started = time.perf_counter()
    index = build_ondisk(factory, DIM, path, train, np.zeros(len(train), np.int64) - 2, source.chunks(),
                         BuildOptions(sample=sample, shard_size=shard_size), stats)
    build_s = time.perf_counter() - started
    record = index.save(path)
    del index, train
    index = OnDiskIndex.load(path, "ondisk:" + factory, DIM, checksum=record)
    q = source.fresh(queries, seed=99)
    kept = np.lib.format.open_memmap(work / "vectors.npy", mode="w+", dtype=np.float16, shape=(n, DIM))
    started = time.perf_counter()
    truth = exact_top10(source, q, kept)
    exact_s = time.perf_counter() - started
    kept.flush()
    del kept  # unmapped, so its written pages are not counted in RssFile below
    base = index.faiss_index
    rows = []
    for nprobe in nprobes:
        if nprobe > base.nlist:
            continue
        base.nprobe = nprobe
        index.search(q[:5], 10)  # warm up
        times, found = [], []
        for row in q:
            t = time.perf_counter()
            _, ids = index.search(row.reshape(1, -1), 10)
            times.append(time.perf_counter() - t)
            found.append(ids[0])
        ms = np.array(times) * 1000
        rows.append({"nprobe": nprobe, "recall_at_10": round(float(np.mean(
            [len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])), 3),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2)})
    after = rss()  # before the re-rank maps the vectors
    kept = np.load(work / "vectors.npy", mmap_mode="r")
    for entry in rows:
        base.nprobe = entry["nprobe"]
        re_times, re_found = [], []
        for row in q:
            t = time.perf_counter()
            re_found.append(reranked(index, kept, row))
            re_times.append(time.perf_counter() - t)
        re_ms = np.array(re_times) * 1000
        entry["reranked_recall_at_10"] = round(float(np.mean(
            [len(set(f) & set(t)) / 10 for f, t in zip(re_found, truth)])), 3)
        entry["reranked_p50_ms"] = round(float(np.percentile(re_ms, 50)), 2)
    ivf = faiss.extract_index_ivf(base)
    result = {
        "vectors": n, "factory": factory, "nlist": int(ivf.nlist), "code_bytes": int(ivf.code_size),
        "sample": stats.sample, "shards": stats.shards, "shard_size": shard_size,
        "build_s": round(build_s, 1), "train_s": round(stats.train_s, 1), "add_s": round(stats.add_s, 1),
        "merge_s": round(stats.merge_s, 1), "tune_s": round(stats.tune_s, 1),
        "tuned_nprobe": stats.nprobe, "tuned_recall_at_10": round(stats.recall_at_10, 3),
        "data_bytes": stats.data_bytes, "index_bytes": stats.index_bytes,
        "disk_bytes_per_vector": round((stats.data_bytes + stats.index_bytes) / n, 2),
        "data_bytes_per_vector": round(stats.data_bytes / n, 2),
        "rss_file_after_queries_bytes": after["RssFile"] - before["RssFile"],
        "exact_s": round(exact_s, 1), "queries": queries, "nprobe": rows,
    }
    del index, base, kept
    return result


def gemm_flops() -> float:
    """FLOP/s of a float32 matrix product on this machine (what the coarse assignment runs on)."""
    a, b = np.ones((4096, 512), np.float32), np.ones((512, 8192), np.float32)
    a @ b
    started = time.perf_counter()
    a @ b
    return 2 * 4096 * 512 * 8192 / (time.perf_counter() - started)


def extrapolate(r: dict, flops: float) -> list[dict]:
    """Plain arithmetic from one measured run; nothing here is measured."""
    out = []
    for big, nlist in ((100_000_000, 65_536), (1_000_000_000, 262_144)):
        out.append({
            "vectors": big, "nlist": nlist, "list_length": big // nlist,
            "data_bytes": big * (r["code_bytes"] + 8), "centroid_bytes": nlist * DIM * 4,
            "encode_s": round(r["add_s"] * big / r["vectors"]),  # the measured add rate, linear in n
            "assign_flops": 2.0 * big * nlist * DIM,  # every vector against every centroid (flat quantizer)
            "assign_s": round(2.0 * big * nlist * DIM / flops),
        })
    return out


def print_table(results: list[dict], flops: float) -> None:
    from searchengine.index import RERANK_FACTOR

    print("| vectors | index | build (train / add / merge) | disk bytes/vector | in memory | nprobe | "
          f"recall@10 | p50 / p95 | recall@10 re-ranked (x{RERANK_FACTOR} candidates) | p50 re-ranked |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        for i, row in enumerate(r["nprobe"]):
            head = (f"| {r['vectors']:,} | {r['factory']} | {r['build_s']} s ({r['train_s']} / {r['add_s']} / "
                    f"{r['merge_s']}) | {r['disk_bytes_per_vector']} | {r['index_bytes'] / 1e6:.1f} MB + "
                    f"{r['rss_file_after_queries_bytes'] / 1e6:.0f} MB mapped"
                    if i == 0 else "| | | | | ")
            print(f"{head} | {row['nprobe']} | {row['recall_at_10']:.3f} | {row['p50_ms']} / {row['p95_ms']} ms | "
                  f"{row['reranked_recall_at_10']:.3f} | {row['reranked_p50_ms']} ms |")
    print(f"\nmatrix product speed here: {flops / 1e9:.0f} GFLOP/s")
    for r in results:
        print(f"\nExtrapolated from the {r['vectors']:,}-vector run, not measured ({r['factory']}):")
        for e in extrapolate(r, flops):
            print(f"  {e['vectors']:,} vectors, IVF{e['nlist']}: lists {e['vectors']:,} x ({r['code_bytes']} + 8) B = "
                  f"{e['data_bytes'] / 1e9:.1f} GB on disk; centroids {e['nlist']:,} x {DIM} x 4 B = "
                  f"{e['centroid_bytes'] / 1e6:.0f} MB in memory; ~{e['list_length']:,} vectors a list; adding: "
                  f"encoding {r['add_s']} s x {e['vectors'] // r['vectors']:,} = {e['encode_s']:,} s, plus the "
                  f"flat coarse assignment 2 x {e['vectors']:.0e} x {e['nlist']:,} x {DIM} = "
                  f"{e['assign_flops']:.1e} FLOP / {flops / 1e9:.0f} GFLOP/s = {e['assign_s']:,} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000")
    parser.add_argument("--factory", default=None, help="default: IVF{~sqrt(n)},PQ64")
    parser.add_argument("--sample", type=int, default=None, help="training vectors (default 50 per list)")
    parser.add_argument("--shard-size", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--nprobe", default="8,16,32,64,128")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = []
    for n in [int(s) for s in args.sizes.split(",")]:
        nlist = int(2 ** round(np.log2(n ** 0.5)))
        factory = args.factory or f"IVF{nlist},PQ64"
        import faiss

        lists = faiss.extract_index_ivf(faiss.index_factory(DIM, factory)).nlist
        work = Path(tempfile.mkdtemp(prefix="bench_ondisk.", dir=args.workdir))
        try:
            results.append(bench(n, factory, args.sample or min(n, 50 * lists), args.shard_size, args.queries,
                                 [int(x) for x in args.nprobe.split(",")], work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(results[-1]), flush=True)
    flops = gemm_flops()
    print_table(results, flops)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"results": results, "gemm_flops": flops,
                                               "extrapolated_not_measured": [extrapolate(r, flops) for r in results]}, indent=2))


if __name__ == "__main__":
    main()
