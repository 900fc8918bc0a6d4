"""Crash cycles on demand: SIGKILL ``index``, ``import`` and ``rebuild-index`` at random moments,
many times, checking after every kill (see :mod:`tests.support.crashkit` for the checks).

    python tests/benchmarks/crash_cycles.py --cycles 50 --images 300 --command all --seed 0

Cycles run in rounds: kills until the round's share of cycles is spent, then an uninterrupted
run that must complete the work. Between rounds (index, import) the folder or catalog is churned
(files removed, moved, rewritten and added; catalog rows dropped, edited and added), and every
second round starts a fresh collection, so that most kills land in a whole folder's work. Prints one line per command: cycles, kills, items lost (must be 0), check
failures, indexes rebuilt after a kill; exits 1 on any loss or failure.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def run_command(command: str, args, root: Path, model: str, launcher) -> "object":
    import numpy as np

    from tests.support import crashkit

    rng = np.random.default_rng(args.seed)
    summary = crashkit.Summary(command)
    if command == "rebuild-index":
        w = crashkit.rebuild_workload(root, model, args.images, launcher, seed=args.seed)
    elif command == "import":
        w = crashkit.import_workload(root, model, args.images // 3, seed=args.seed, batch_size=args.batch_size)
    else:
        w = crashkit.index_workload(root, model, args.images, seed=args.seed, batch_size=args.batch_size)
    run = crashkit.CrashRun(w, launcher, rng, log_dir=root)
    if command == "rebuild-index":
        crashkit.calibrate(run)
    per_round = args.per_round
    n = 0
    rounds = 0
    while n < args.cycles:
        todo = min(per_round, args.cycles - n)
        for i in range(todo):
            res = run.cycle(n, remaining=todo - i)
            if args.verbose:
                print(f"  {command} cycle {n}: {res.trigger}, killed={res.killed}, rows {res.rows_before}->"
                      f"{res.rows_after}, {res.seconds:.1f}s, rebuilt={res.rebuilt}, lost={len(res.lost)}, "
                      f"failures={res.failures[:2]}", flush=True)
            n += 1
        res = run.finish(rounds)
        if args.verbose:
            print(f"  {command} final run {rounds}: {res.seconds:.1f}s, failures={res.failures[:2]}", flush=True)
        rounds += 1
        if command == "index":
            crashkit.churn_folder(w, rng, k=max(1, args.images // 30), seed=rounds)
        elif command == "import":
            crashkit.churn_catalog(w, rng, k=max(1, args.images // 60), seed=rounds)
        if command != "rebuild-index" and rounds % 2 == 0:
            run.reset(root / f"home-{rounds}")  # a fresh collection: a whole folder of work to kill again
    for res in run.results:
        summary.add(res)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=50, help="kill cycles per command")
    parser.add_argument("--images", type=int, default=300, help="images (import: a third as many products)")
    parser.add_argument("--command", choices=["index", "import", "rebuild-index", "all"], default="all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-round", type=int, default=10, help="kill cycles before each uninterrupted run")
    parser.add_argument("--batch-size", type=int, default=4, help="images per batch (a commit each)")
    parser.add_argument("--model", help="model spec [default: a tiny random open_clip model made here]")
    parser.add_argument("--spawn", action="store_true", help="start each command as a fresh python process "
                        "(about 5 s of imports each) instead of forking a pre-imported server")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args()

    from tests.support import crashkit
    from tests.support.tinymodel import make_tiny_model

    work = Path(tempfile.mkdtemp(prefix="crash-cycles-"))
    commands = ["index", "import", "rebuild-index"] if args.command == "all" else [args.command]
    launcher = crashkit.Launcher("spawn" if args.spawn else "fork")
    summaries = []
    try:
        model = args.model or make_tiny_model(work / "model", seed=0)
        for command in commands:
            started = time.monotonic()
            root = work / command
            root.mkdir()
            summary = run_command(command, args, root, model, launcher)
            summaries.append((summary, time.monotonic() - started))
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder: {work}")
    print(f"{'command':<14}{'cycles':>7}{'killed':>7}{'done first':>11}{'final runs':>11}{'lost':>6}"
          f"{'failures':>9}{'rebuilt':>8}{'seconds':>9}")
    for s, seconds in summaries:
        print(f"{s.command:<14}{s.cycles:>7}{s.killed:>7}{s.finished_first:>11}{s.final_runs:>11}{len(s.lost):>6}"
              f"{len(s.failures):>9}{s.rebuilt:>8}{seconds:>9.0f}")
    for s, _ in summaries:
        for line in (s.lost + s.failures)[:20]:
            print(f"{s.command}: {line}")
    return 0 if all(s.ok for s, _ in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
