"""Cold start against rclip: a whole ``searchengine search`` command in a fresh process, and indexing
a photo folder from scratch, next to rclip 3.3 (ONNX Runtime, ViT-B-32-256) on the same folder.

    python tests/benchmarks/bench_cold.py --images 300 --runs 7 --json-out test-artifacts/bench_cold.json
    python tests/benchmarks/bench_cold.py --images 60 --runs 3 --keep          # quick; reuse the set-up next time
    python tests/benchmarks/bench_cold.py --lite --no-rclip --keep             # searchengine's offline lite model only

Set-up (under ``--work``, default ~/.cache/searchengine-bench). Without ``--keep`` it is built afresh
and removed at the end; with ``--keep`` it stays, and a later ``--keep`` run reuses each part whose
stamp (``.bench-stamp.json``, written once the part is complete) matches:

* ``hf/``: a Hugging Face cache (``HF_HOME``) in the hub layout, ``hub/models--laion--CLIP-ViT-B-32-
  laion2B-s34B-b79K/{refs/main, snapshots/<commit>/open_clip_model.safetensors}``, holding a random
  ``ViT-B-32``: searchengine runs the real default spec ``ViT-B-32:laion2b_s34b_b79k`` with
  ``HF_HUB_OFFLINE=1``, the way a user who downloaded it once does (not a ``local-dir:`` shortcut).
* ``rclip-venv/``: ``pip install "rclip>=3.3,<3.4"`` in its own virtual environment (the only network use).
* ``rclip-data/`` (``RCLIP_DATADIR``): random ViT-B-32-256 towers exported to ONNX as rclip's own
  converter does, in the layout rclip downloads its model repo into (see ``coldkit.py``), so rclip
  finds them and never calls the hub; its index database lives there too and is reset per run.
* ``photos-N-WxH/``: N generated JPEG photos (default 1024x768, one in four portrait).

Measured, every command in a fresh process, wall time from spawn to exit and peak memory (the exact
peak RSS of the largest process, from ``wait4``, and the polled peak PSS of the whole process tree;
the tables show the larger; the polling costs the benchmark ~3% of one core):

* index from scratch, once each: ``searchengine index PHOTOS -c bench --model ViT-B-32:laion2b_s34b_b79k``
  and, in PHOTOS, ``rclip "a flower" -t 10`` (rclip indexes the current folder, then answers the query);
* ``--runs`` interleaved rounds of cold queries (searchengine, rclip, searchengine, rclip, ...):
  ``searchengine search "a flower" -k 10 -c bench --data-dir D`` and ``rclip -n "a flower" -t 10``
  (``-n``: no folder rescan, as searchengine search does none; ``--rclip-rescan`` drops it);
* ``--lite``: also a collection on searchengine's offline ``lite`` model, indexed and queried in the
  same rounds (no rclip counterpart, so no ratio).

Prints medians, min/max and the ratios searchengine / rclip as a table; ``--json-out`` writes every
run. Weights are random: speed and memory do not depend on their values. "Cold" is a fresh process;
the OS file cache is warm for both tools alike (the model files were just read by the index step).
Run on demand, never in the default test run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from tests.benchmarks import coldkit  # noqa: E402
from tests.benchmarks.bench_ingest import _cpu_name  # noqa: E402
from tests.benchmarks.coldkit import BenchError, Run, measure  # noqa: E402

COLLECTION = "bench"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=300, help="photos in the folder [300]")
    p.add_argument("--runs", type=int, default=5, help="interleaved cold query rounds [5]")
    p.add_argument("--size", default="1024x768", help="photo size WxH [1024x768]")
    p.add_argument("--query", default="a flower", help='the text query ["a flower"]')
    p.add_argument("-k", type=int, default=10, help="hits per query [10]")
    p.add_argument("--work", default="~/.cache/searchengine-bench", help="set-up folder [~/.cache/searchengine-bench]")
    p.add_argument("--keep", action="store_true", help="keep the set-up (venv, caches, photos) and reuse a kept one")
    p.add_argument("--lite", action="store_true", help="also time searchengine with the offline lite model")
    p.add_argument("--no-rclip", action="store_true", help="time searchengine alone")
    p.add_argument("--rclip-spec", default=coldkit.RCLIP_DEFAULT_SPEC, help=f"pip requirement [{coldkit.RCLIP_DEFAULT_SPEC}]")
    p.add_argument("--rclip-venv", help="an existing virtual environment with rclip installed (used as is)")
    p.add_argument("--rclip-rescan", action="store_true", help="let rclip rescan the folder on each query (no -n)")
    p.add_argument("--searchengine", help="the searchengine command [the console script beside this python, "
                   "running this checkout]")
    p.add_argument("--timeout", type=float, default=900, help="seconds before one command is killed [900]")
    p.add_argument("--json-out", help="write every figure here")
    args = p.parse_args(argv)
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        p.error(f"--size must be WxH, e.g. 1024x768, not {args.size!r}")
    args.size_wh = (w, h)
    if args.images < 1 or args.runs < 1 or args.k < 1:
        p.error("--images, --runs and -k must be at least 1")
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def searchengine_cmd(args) -> list[str]:
    if args.searchengine:
        return args.searchengine.split()
    script = Path(sys.executable).parent / "searchengine"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "searchengine"]


def searchengine_env(hf_home: Path) -> dict:
    env = coldkit.hub_env(os.environ, hf_home)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    for name in ("SEARCHENGINE_MODEL", "SEARCHENGINE_COLLECTION", "SEARCHENGINE_HOME", "SEARCHENGINE_DB"):
        env.pop(name, None)
    return env


def checked(run: Run, what: str) -> Run:
    if run.returncode != 0:
        out = (run.stderr.strip() or run.stdout.strip())[-3000:]
        raise BenchError(f"{what} failed (exit {run.returncode}): {' '.join(run.argv)}\n{out}")
    return run


def rclip_hits(run: Run) -> int:
    lines = run.stdout.strip().splitlines()
    return sum(1 for line in lines[1:] if "\t" in line) if lines and lines[0].startswith("score") else 0


def searchengine_hits(run: Run) -> int:
    return sum(1 for line in run.stdout.splitlines() if line.strip() and line.lstrip()[0].isdigit())


def summary(runs: list[Run]) -> dict:
    walls = [r.wall_s for r in runs]
    peaks = [r.peak_mb for r in runs]
    return {"n": len(runs), "wall_median_s": round(statistics.median(walls), 3), "wall_min_s": round(min(walls), 3),
            "wall_max_s": round(max(walls), 3), "peak_mb_median": round(statistics.median(peaks), 1),
            "maxrss_mb_median": round(statistics.median(r.maxrss_mb for r in runs), 1),
            "tree_pss_mb_median": round(statistics.median(r.tree_pss_mb for r in runs), 1),
            "tree_rss_mb_median": round(statistics.median(r.tree_rss_mb for r in runs), 1)}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def mb(x: float) -> str:
    return f"{x / 1024:.2f} GB" if x >= 1024 else f"{x:.0f} MB"


def secs(s: dict) -> str:
    if s["n"] == 1:
        return f"{s['wall_median_s']:.2f} s"
    return f"median {s['wall_median_s']:.2f} s ({s['wall_min_s']:.2f}-{s['wall_max_s']:.2f})"


def table(result: dict) -> str:
    q, idx = result["query"], result["index"]
    rc = "rclip" in q
    head = f"rclip {result['rclip_version']} (ONNX Runtime, ViT-B-32-256)" if rc else None
    rows = [["", "searchengine"] + ([head, "ratio"] if rc else [])]
    n = result["images"]

    def row(label, se, rcl=None, fmt=str, rat=None):
        rows.append([label, fmt(se)] + ([fmt(rcl) if rcl is not None else "-", rat or "-"] if rc else []))

    def x(r):
        return f"{r}x" if r is not None else "-"

    runs = f'{result["runs"]} run{"s" if result["runs"] > 1 else ""}'
    cmd = f'cold `search "{result["query_text"]}" -k {result["k"]}`, whole command ({runs})'
    row(cmd, q["searchengine"], q.get("rclip"), secs,
        x(ratio(q["searchengine"]["wall_median_s"], q.get("rclip", {}).get("wall_median_s"))))
    row("its peak memory (median)", q["searchengine"]["peak_mb_median"], q.get("rclip", {}).get("peak_mb_median"), mb,
        x(ratio(q["searchengine"]["peak_mb_median"], q.get("rclip", {}).get("peak_mb_median"))))
    se_i, rc_i = idx["searchengine"], idx.get("rclip")
    row(f"index {n} photos from scratch" + (" (rclip: incl. one query)" if rc else ""), se_i, rc_i, secs,
        x(ratio(se_i["wall_median_s"], rc_i and rc_i["wall_median_s"])))
    row("images/s while indexing (ratio: searchengine's / rclip's)", round(n / se_i["wall_median_s"], 2),
        rc_i and round(n / rc_i["wall_median_s"], 2), str, x(ratio(rc_i and rc_i["wall_median_s"], se_i["wall_median_s"])))
    row("peak memory while indexing (tree PSS)", se_i["tree_pss_mb_median"], rc_i and rc_i["tree_pss_mb_median"], mb,
        x(ratio(se_i["tree_pss_mb_median"], rc_i and rc_i["tree_pss_mb_median"])))
    row("peak RSS while indexing (largest process)", se_i["maxrss_mb_median"], rc_i and rc_i["maxrss_mb_median"], mb,
        x(ratio(se_i["maxrss_mb_median"], rc_i and rc_i["maxrss_mb_median"])))
    if "lite" in q:
        row(f"lite: cold search, whole command ({runs})", q["lite"], None, secs)
        row("lite: its peak memory (median)", q["lite"]["peak_mb_median"], None, mb)
        row(f"lite: index {n} photos from scratch", idx["lite"], None, secs)
        row("lite: peak memory while indexing (tree PSS)", idx["lite"]["tree_pss_mb_median"], None, mb)
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work).expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    w, h = args.size_wh
    hf_home, photos = work / "hf", work / f"photos-{args.images}-{w}x{h}"
    rclip_venv = Path(args.rclip_venv).expanduser().resolve() if args.rclip_venv else work / "rclip-venv"
    rclip_data, se_data = work / "rclip-data", work / "searchengine-data"
    made = [hf_home, photos, rclip_data, se_data] + ([] if args.rclip_venv else [rclip_venv])
    use_rclip = not args.no_rclip
    se = searchengine_cmd(args)
    se_env = searchengine_env(hf_home)
    try:
        log(f"set-up in {work}" + (" (kept afterwards)" if args.keep else " (removed afterwards; --keep keeps it)"))
        if use_rclip:
            if args.rclip_venv:
                rclip = coldkit.venv_bin(rclip_venv, "rclip")
                if not rclip.is_file():
                    raise BenchError(f"--rclip-venv {rclip_venv}: no rclip executable at {rclip}")
            else:
                rclip = coldkit.install_rclip(rclip_venv, args.rclip_spec, args.keep, log)
            version = coldkit.rclip_version(rclip)
            if not version.startswith("3.3"):
                log(f"  note: rclip {version} installed; this benchmark's model layout is rclip 3.3's")
        else:
            rclip, version = None, None
        coldkit.in_child("build_hub_cache", str(hf_home), args.keep)
        log(f"  open_clip resolves {coldkit.DEFAULT_SPEC} offline to {coldkit.check_hub_cache(hf_home, sys.executable)}")
        if use_rclip:
            coldkit.in_child("build_rclip_model", str(rclip_data), args.keep)
        coldkit.in_child("build_photos", str(photos), args.images, [w, h], args.keep)
        where = subprocess.run([sys.executable, "-c", "import searchengine; print(searchengine.__file__)"],
                               capture_output=True, text=True, env=se_env).stdout.strip()
        log(f"  searchengine command: {' '.join(se)} (imports {where or '?'})")
        result = run_bench(args, se, se_env, rclip, rclip_data, photos, se_data, hf_home)
        result["rclip_version"] = version
    except BenchError as exc:
        log(f"bench_cold: {exc}")
        return 2
    finally:
        for path in made:
            shutil.rmtree(path.with_name(path.name + ".partial"), ignore_errors=True)  # an interrupted build
            if not args.keep:
                shutil.rmtree(path, ignore_errors=True)
    print(table(result))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=1))
        log(f"wrote {args.json_out}")
    return 0


def run_bench(args, se, se_env, rclip, rclip_data, photos, se_data, hf_home) -> dict:
    n, k, q = args.images, args.k, args.query
    spec = coldkit.DEFAULT_SPEC
    collections = {"searchengine": (se_data / "vit", spec)}
    if args.lite:
        collections["lite"] = (se_data / "lite", "lite")
    r_env = coldkit.rclip_env(os.environ, rclip_data, hf_home) if rclip else None
    raw: dict[str, dict[str, list[Run]]] = {"index": {}, "query": {}}

    # ---- index from scratch, once each
    for name, (data, model) in collections.items():
        shutil.rmtree(data, ignore_errors=True)
        log(f"index: searchengine ({model}) ...")
        run = checked(measure(se + ["index", str(photos), "-c", COLLECTION, "--data-dir", str(data), "--model", model,
                                    "--json"], env=se_env, timeout=args.timeout), f"searchengine index ({model})")
        added = _indexed(run)
        if added is not None and added != n:
            raise BenchError(f"searchengine index ({model}) indexed {added} of {n} photos:\n{run.stdout[-2000:]}")
        log(f"  {run.wall_s:.2f} s, peak {mb(run.peak_mb)}")
        raw["index"][name] = [run]
    if rclip:
        coldkit.reset_rclip_index(rclip_data)
        log("index: rclip ...")
        run = checked(measure([rclip, q, "-t", str(k)], cwd=photos, env=r_env, timeout=args.timeout), "rclip (indexing)")
        if rclip_hits(run) != min(k, n):
            raise BenchError(f"rclip indexed, but its query printed {rclip_hits(run)} hits, not {min(k, n)}:\n"
                             f"{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
        log(f"  {run.wall_s:.2f} s, peak {mb(run.peak_mb)}")
        raw["index"]["rclip"] = [run]

    # ---- interleaved cold queries
    commands = {name: (se + ["search", q, "-k", str(k), "-c", COLLECTION, "--data-dir", str(data)], None, se_env)
                for name, (data, _) in collections.items()}
    if rclip:
        commands["rclip"] = ([str(rclip)] + ([] if args.rclip_rescan else ["-n"]) + [q, "-t", str(k)], photos, r_env)
    order = ["searchengine"] + (["rclip"] if rclip else []) + (["lite"] if args.lite else [])
    for name in order:
        raw["query"][name] = []
    for i in range(args.runs):
        for name in order:
            argv, cwd, env = commands[name]
            run = checked(measure(argv, cwd=cwd, env=env, timeout=args.timeout), f"{name} query")
            hits = rclip_hits(run) if name == "rclip" else searchengine_hits(run)
            if hits != min(k, n):
                raise BenchError(f"{name} query printed {hits} hits, not {min(k, n)}:\n{run.stdout[-2000:]}")
            raw["query"][name].append(run)
            log(f"round {i + 1}/{args.runs} {name:12s} {run.wall_s:6.2f} s  peak {mb(run.peak_mb)}")

    return {
        "images": n, "image_size": list(args.size_wh), "runs": args.runs, "query_text": q, "k": k,
        "model": spec, "rclip_model": f"{coldkit.RCLIP_REPO}/{coldkit.RCLIP_MODEL_SUBDIR} (random, ONNX fp32)"
        if rclip else None, "rclip_rescan": args.rclip_rescan,
        "machine": {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else None, "platform": platform.platform(), "processor": _cpu_name(), "python": sys.version.split()[0]},
        "checkout": _git_head(),
        "commands": {name: shlex.join(str(a) for a in argv) for name, (argv, _, _) in commands.items()},
        "index": {name: summary(runs) for name, runs in raw["index"].items()},
        "query": {name: summary(runs) for name, runs in raw["query"].items()},
        "ratios": _ratios(raw),
        "runs_raw": {kind: {name: [r.record() for r in runs] for name, runs in d.items()} for kind, d in raw.items()},
    }


def _indexed(run: Run) -> int | None:
    """How many images ``searchengine index --json`` says it added (None when it does not say)."""
    try:
        doc = json.loads(run.stdout[run.stdout.index("{"):])
    except ValueError:
        return None
    for key in ("added", "indexed"):
        if isinstance(doc.get(key), int):
            return doc[key]
    return None


def _ratios(raw) -> dict:
    if "rclip" not in raw["query"]:
        return {}
    q = {name: summary(runs) for name, runs in raw["query"].items()}
    i = {name: summary(runs) for name, runs in raw["index"].items()}
    return {"query_wall": ratio(q["searchengine"]["wall_median_s"], q["rclip"]["wall_median_s"]),
            "query_peak_memory": ratio(q["searchengine"]["peak_mb_median"], q["rclip"]["peak_mb_median"]),
            "index_wall": ratio(i["searchengine"]["wall_median_s"], i["rclip"]["wall_median_s"]),
            "index_images_per_s": ratio(i["rclip"]["wall_median_s"], i["searchengine"]["wall_median_s"]),
            "index_peak_pss": ratio(i["searchengine"]["tree_pss_mb_median"], i["rclip"]["tree_pss_mb_median"]),
            "index_peak_rss_largest": ratio(i["searchengine"]["maxrss_mb_median"], i["rclip"]["maxrss_mb_median"])}


def _git_head() -> str | None:
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or None


if __name__ == "__main__":
    sys.exit(main())
