"""Reciprocal rank fusion (searchengine.engine.fuse): scores, weights, ties, ids in one list only."""

from __future__ import annotations

import random

import pytest

from searchengine.search.ranking import RRF_K, fuse


def _rrf(rank: int, weight: float) -> float:
    return weight / (RRF_K + rank)


def test_scores_are_weighted_reciprocal_ranks():
    vector = [(10, 0.9), (20, 0.8), (30, 0.7)]
    keyword = [(30, 12.0), (40, 7.5)]
    fused = dict(fuse(vector, keyword, keyword_weight=0.25))
    assert set(fused) == {10, 20, 30, 40}  # ids in only one list are kept
    assert fused[10] == pytest.approx(_rrf(1, 0.75))
    assert fused[20] == pytest.approx(_rrf(2, 0.75))
    assert fused[30] == pytest.approx(_rrf(3, 0.75) + _rrf(1, 0.25))
    assert fused[40] == pytest.approx(_rrf(2, 0.25))


def test_scores_ignore_the_input_scores_only_ranks_count():
    a = fuse([(1, 0.99), (2, 0.98)], [(2, 100.0), (3, 1.0)])
    b = fuse([(1, -5.0), (2, -6.0)], [(2, 0.001), (3, 0.0)])
    assert a == b


def test_result_is_sorted_best_first_and_each_id_once():
    rng = random.Random(3)
    for _ in range(200):
        ids = rng.sample(range(100), 30)
        vector = [(i, 1.0 - n / 100) for n, i in enumerate(rng.sample(ids, rng.randint(0, 20)))]
        keyword = [(i, 10.0 - n) for n, i in enumerate(rng.sample(ids, rng.randint(0, 20)))]
        fused = fuse(vector, keyword, rng.random())
        assert [i for i, _ in fused] == list(dict.fromkeys(i for i, _ in fused))
        assert {i for i, _ in fused} == {i for i, _ in vector} | {i for i, _ in keyword}
        scores = [s for _, s in fused]
        assert scores == sorted(scores, reverse=True)


def test_an_id_in_both_lists_beats_ids_in_one_at_equal_ranks():
    fused = fuse([(1, 0.9), (2, 0.8)], [(3, 5.0), (2, 4.0)])
    assert fused[0][0] == 2
    fused = fuse([(1, 0.9), (2, 0.8), (3, 0.7)], [(3, 5.0)], keyword_weight=0.5)
    assert [i for i, _ in fused] == [3, 1, 2]  # 0.5/63 + 0.5/61 > 0.5/61


@pytest.mark.parametrize("n_vector, n_keyword", [(5, 3), (0, 4), (4, 0), (6, 6)])
def test_weight_zero_reproduces_the_vector_list(n_vector, n_keyword):
    vector = [(i, 1.0 - i / 10) for i in range(n_vector)]
    keyword = [(100 + i, 9.0 - i) for i in range(n_keyword)] + [(0, 0.5)] * (n_vector > 0)
    fused = fuse(vector, keyword, keyword_weight=0.0)
    assert [i for i, _ in fused[:n_vector]] == [i for i, _ in vector]
    assert [s for _, s in fused[:n_vector]] == pytest.approx([_rrf(r, 1.0) for r in range(1, n_vector + 1)])
    rest = fused[n_vector:]  # keyword-only ids weigh nothing: after every vector hit, with score 0
    assert all(s == 0 for _, s in rest)
    assert sorted(i for i, _ in rest) == [i for i, _ in rest]  # ties among them: the smaller id first


@pytest.mark.parametrize("n_vector, n_keyword", [(5, 3), (0, 4), (4, 0), (6, 6)])
def test_weight_one_reproduces_the_keyword_list(n_vector, n_keyword):
    keyword = [(50 - i, 9.0 - i) for i in range(n_keyword)]  # ids not in rank order on purpose
    vector = [(i, 1.0 - i / 10) for i in range(n_vector)]
    fused = fuse(vector, keyword, keyword_weight=1.0)
    assert [i for i, _ in fused[:n_keyword]] == [i for i, _ in keyword]
    assert [s for _, s in fused[:n_keyword]] == pytest.approx([_rrf(r, 1.0) for r in range(1, n_keyword + 1)])
    rest = fused[n_keyword:]
    assert [i for i, _ in rest] == [i for i, _ in vector]  # vector-only ids: zero score, in vector order
    assert all(s == 0 for _, s in rest)


def test_ties_go_to_the_better_vector_rank_then_the_smaller_id():
    # 7 is 1st in vector and 2nd in keyword; 3 is 2nd in vector and 1st in keyword: equal scores
    fused = fuse([(7, 0.9), (3, 0.8)], [(3, 2.0), (7, 1.0)], keyword_weight=0.5)
    assert fused[0][1] == fused[1][1]
    assert [i for i, _ in fused] == [7, 3]
    # keyword weight 1: the keyword order, then the vector-only ids (score 0)
    fused = fuse([(5, 0.5)], [(9, 1.0), (4, 0.9)], keyword_weight=1.0)
    assert [i for i, _ in fused] == [9, 4, 5]
    # the same score from two vector-only ids at weight 0 for vectors: vector order decides
    fused = fuse([(8, 0.9), (2, 0.8)], [], keyword_weight=1.0)
    assert [i for i, _ in fused] == [8, 2] and all(s == 0 for _, s in fused)
    fused = fuse([], [(8, 0.9), (2, 0.8)], keyword_weight=0.0)
    assert [i for i, _ in fused] == [2, 8] and all(s == 0 for _, s in fused)


def test_empty_inputs():
    assert fuse([], []) == []
    assert [i for i, _ in fuse([(1, 0.3)], [])] == [1]
    assert [i for i, _ in fuse([], [(1, 0.3)])] == [1]


def test_default_weight_is_even():
    fused = dict(fuse([(1, 0.9)], [(2, 9.0)]))
    assert fused[1] == pytest.approx(fused[2]) == pytest.approx(_rrf(1, 0.5))
    assert [i for i, _ in fuse([(1, 0.9)], [(2, 9.0)])] == [1, 2]  # tie: the id with a vector rank first
