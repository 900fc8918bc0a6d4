"""The one nprobe calibrator: the same recall whether the exact answers come from all vectors at
once or streamed in chunks, nprobe doubled to the target, and the plateau rule of lossy codes."""

from __future__ import annotations

import numpy as np

from searchengine.index import calibrate
from searchengine.index.factory import make_index

DIM = 32


def unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ivf(factory: str, data: np.ndarray, ids: np.ndarray):
    index = make_index(factory, DIM)
    index.train(data)
    index.add_with_ids(data, ids)
    return index


def test_streamed_and_in_memory_exact_answers_agree():
    data, ids = unit(3000, 0), np.arange(3000) * 3 + 1
    rows = calibrate.calibration_rows(len(data), seed=0)
    assert len(set(rows.tolist())) == calibrate.CALIBRATION_QUERIES
    top = calibrate.ExactTop(data[rows], 11)
    for s in range(0, len(data), 700):
        top.update(ids[s : s + 700], data[s : s + 700])
    np.testing.assert_array_equal(top.ranked(), calibrate.exact_top(data[rows], ids, data, 11))
    assert calibrate.ExactTop(data[:2], 11).ranked().tolist() == [[-1] * 11] * 2  # nothing seen yet


def test_nprobe_is_doubled_until_the_target_recall():
    data, ids = unit(6000, 1), np.arange(6000)
    index = ivf("IVF256,Flat", data, ids)
    rows = calibrate.calibration_rows(len(data))
    truth = calibrate.exact_top(data[rows], ids, data, 11)
    nprobe, recall = calibrate.tune_nprobe(index, data[rows], ids[rows], truth, target=0.9)
    assert index.nprobe == nprobe and recall >= 0.9 and nprobe in (8, 16, 32, 64, 128, 256)
    if nprobe > 8:  # the one before did not reach it
        index.nprobe = nprobe // 2
        assert calibrate.recall_at_k(index, data[rows], ids[rows], truth) < 0.9
    assert calibrate.tune_nprobe(index, data[rows], ids[rows], truth, target=1.01) == (256, 1.0)  # every list


def test_a_plateau_stops_the_doubling_when_asked():
    data, ids = unit(6000, 2), np.arange(6000)
    index = ivf("IVF64,PQ2", data, ids)  # codes far too coarse: recall caps well below the target
    rows = calibrate.calibration_rows(len(data))
    truth = calibrate.exact_top(data[rows], ids, data, 11)
    full = calibrate.tune_nprobe(index, data[rows], ids[rows], truth)
    assert full[0] == 64 and full[1] < 0.97
    early = calibrate.tune_nprobe(index, data[rows], ids[rows], truth, min_gain=0.5)
    assert early[0] == 8 and index.nprobe == 8
    assert calibrate.recall_at_k(index, data[:0], ids[:0], truth[:0]) == 1.0  # no queries
