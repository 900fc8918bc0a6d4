"""Real kills: SIGKILL ``index``, ``import`` and ``rebuild-index`` at random moments, check what each
kill left (integrity, the index loads and matches the live rows, nothing committed lost), then
finish with an uninterrupted run that holds every file exactly once. The harness is
:mod:`tests.support.crashkit`; ``tests/benchmarks/crash_cycles.py`` runs 50+ cycles per command."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support import crashkit


@pytest.fixture(scope="module")
def launcher() -> crashkit.Launcher:
    return crashkit.Launcher("fork")


def _assert_clean(run: crashkit.CrashRun) -> crashkit.Summary:
    summary = crashkit.Summary(run.w.command)
    for res in run.results:
        summary.add(res)
    assert not summary.lost, summary.lost
    assert not summary.failures, summary.failures
    return summary


def test_index_killed_repeatedly_then_completes_with_each_file_once(tiny_model, tmp_path, launcher):
    w = crashkit.index_workload(tmp_path, tiny_model, images=80)
    # kill as soon as the target commit is seen: with the tiny model a batch takes milliseconds, and
    # on a busy machine any wait after it can let the run finish first
    run = crashkit.CrashRun(w, launcher, np.random.default_rng(8), log_dir=tmp_path, max_jitter=0.0)
    for n in range(3):
        run.cycle(n, mode="rows", remaining=3 - n)
    run.finish(0)
    crashkit.churn_folder(w, np.random.default_rng(9), k=4, seed=1)  # removed, moved, rewritten, new files
    run.cycle(3, mode="rows")
    run.finish(1)
    summary = _assert_clean(run)
    assert summary.killed >= 3, [r.trigger for r in run.results]  # the kills landed while it worked


def test_import_killed_then_completes_with_each_product_once(tiny_model, tmp_path, launcher):
    w = crashkit.import_workload(tmp_path, tiny_model, products=100)
    run = crashkit.CrashRun(w, launcher, np.random.default_rng(5), log_dir=tmp_path)
    run.cycle(0, mode="rows", remaining=2)
    run.cycle(1, mode="rows", remaining=1)
    run.finish(0)
    summary = _assert_clean(run)
    assert summary.killed >= 1
    assert len(run.committed.products) == 100


def test_rebuild_index_killed_then_completes(tiny_model, tmp_path, launcher):
    w = crashkit.rebuild_workload(tmp_path, tiny_model, images=60, launcher=launcher)
    run = crashkit.CrashRun(w, launcher, np.random.default_rng(3), log_dir=tmp_path)
    crashkit.calibrate(run)
    for n in range(3):
        run.cycle(n, mode="time")
    run.finish(0)
    _assert_clean(run)


def test_spawned_cli_process_killed_mid_run(tiny_model, tmp_path):
    """The same through a fresh ``python -m searchengine`` process (no fork server)."""
    w = crashkit.index_workload(tmp_path, tiny_model, images=40, batch_size=1)
    run = crashkit.CrashRun(w, crashkit.Launcher("spawn"), np.random.default_rng(1), log_dir=tmp_path)
    res = run.cycle(0, mode="rows", remaining=1)
    assert res.killed and 0 < res.rows_after < 40, res
    run.finish(0)
    _assert_clean(run)
