"""train/metrics.py: hand-computed cases, and cross-checks against scikit-learn and a brute-force recall."""
import math

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import ndcg_score

from train.metrics import (
    evaluate_scores,
    hits_matrix,
    merge_per_user,
    ndcg_at_k,
    per_user_metrics,
    recall_at_k,
    summarize,
    to_item_lists,
    topk_from_scores,
)


def test_topk_sorted_and_masked():
    scores = np.array([[0.1, 0.9, 0.5, 0.7, 0.3], [5.0, 4.0, 3.0, 2.0, 1.0]])
    top = topk_from_scores(scores, 3)
    assert top.tolist() == [[1, 3, 2], [0, 1, 2]]
    top = topk_from_scores(scores, 3, exclude=[[1], [0, 2]])
    assert top.tolist() == [[3, 2, 4], [1, 3, 4]]
    # the same mask as CSR and as a dense bool matrix
    mask = np.zeros((2, 5), bool)
    mask[0, 1] = mask[1, 0] = mask[1, 2] = True
    assert topk_from_scores(scores, 3, exclude=sp.csr_matrix(mask)).tolist() == top.tolist()
    assert topk_from_scores(scores, 3, exclude=mask).tolist() == top.tolist()
    assert scores[0, 1] == 0.9  # input untouched


def test_topk_pads_when_catalogue_too_small_or_fully_masked():
    scores = np.array([[1.0, 2.0, 3.0]])
    assert topk_from_scores(scores, 5).tolist() == [[2, 1, 0, -1, -1]]
    assert topk_from_scores(scores, 3, exclude=[[0, 2]]).tolist() == [[1, -1, -1]]


def test_topk_ties_break_by_lower_index():
    scores = np.zeros((1, 6))
    assert topk_from_scores(scores, 4).tolist() == [[0, 1, 2, 3]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("num_items,levels", [(60, 4), (3000, 300), (3000, 4)])
def test_topk_equals_a_full_sort_with_ties_at_the_cut(dtype, num_items, levels):
    """The top-k keeps exactly the full sort's first k: score descending, then lower item index, also when many
    items tie at the k-th score (coarse scores), with masked items (-inf), and with rows masked down to fewer
    than k items. 3000 items take the chunk-maxima candidates; 60 items, and 4 levels (ties everywhere), the
    whole rows."""
    rng = np.random.default_rng(3)
    users = 40
    scores = rng.integers(0, levels, size=(users, num_items)).astype(dtype)  # every cut falls inside a tie
    scores[:10] = rng.standard_normal((10, num_items))  # and rows without ties
    exclude = [rng.choice(num_items, size=rng.integers(0, num_items // 20), replace=False) for _ in range(users)]
    exclude[-1] = np.arange(num_items - 3)  # three items left
    exclude[-2] = np.argsort(-scores[-2], kind="stable")[:30]  # the best items masked
    for k in (1, 5, 20, 59):
        masked = scores.astype(np.float64)
        for u, items in enumerate(exclude):
            masked[u, items] = -np.inf
        order = np.lexsort((np.broadcast_to(np.arange(num_items), masked.shape), -masked), axis=1)[:, :k]
        expected = np.where(np.take_along_axis(masked, order, axis=1) == -np.inf, -1, order)
        assert topk_from_scores(scores, k, exclude=exclude).tolist() == expected.tolist()


def test_recall_hand_computed():
    top = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    rel = [np.array([1, 3, 9, 10, 11]), np.array([7])]
    # user 0: 2 hits in top-2? top-2 = {0,1} -> 1 hit; min(2,5)=2 -> 0.5; paper: 1/5
    assert recall_at_k(top, rel, 2, "min").tolist() == [0.5, 0.0]
    assert recall_at_k(top, rel, 2, "relevant").tolist() == [pytest.approx(0.2), 0.0]
    # top-4: user 0 hits {1,3} -> 2/min(4,5)=0.5, paper 2/5; user 1 hit {7} -> 1/1
    assert recall_at_k(top, rel, 4, "min").tolist() == [0.5, 1.0]
    assert recall_at_k(top, rel, 4, "relevant").tolist() == [pytest.approx(0.4), 1.0]
    with pytest.raises(ValueError, match="denominator"):
        recall_at_k(top, rel, 2, "bogus")
    with pytest.raises(ValueError, match=">= 5"):
        recall_at_k(top, rel, 5)


def test_ndcg_hand_computed():
    top = np.array([[0, 1, 2, 3]])
    rel = [np.array([1, 3, 9])]
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)  # min(4, 3) = 3 ideal hits
    assert ndcg_at_k(top, rel, 4)[0] == pytest.approx(dcg / idcg)
    # k=2: one hit at rank 2, IDCG over min(2, 3) = 2 ranks
    assert ndcg_at_k(top, rel, 2)[0] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    # perfect ranking
    assert ndcg_at_k(np.array([[9, 3, 1, 0]]), rel, 4)[0] == pytest.approx(1.0)


def test_users_without_relevant_items_are_nan_and_left_out():
    scores = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    res = evaluate_scores(scores, [[0], []], ks=(1,), ndcg_ks=(2,))
    assert res["num_users"] == 1 and res["num_skipped"] == 1
    assert res["recall@1"] == 1.0 and res["recall@1_paper"] == 1.0 and res["ndcg@2"] == 1.0
    pu = per_user_metrics(scores, [[0], []], ks=(1,), ndcg_ks=(2,))
    assert math.isnan(pu["recall@1"][1])


def test_bad_input_is_a_clear_error():
    scores = np.zeros((2, 4))
    with pytest.raises(ValueError, match="relevant: got 1 rows"):
        evaluate_scores(scores, [[0]])
    with pytest.raises(ValueError, match=r"relevant: row 1 holds item indices \[4\]"):
        evaluate_scores(scores, [[0], [4]])
    with pytest.raises(ValueError, match="exclude: row 0"):
        evaluate_scores(scores, [[0], [1]], exclude=[[-1], []])
    with pytest.raises(ValueError, match="NaN"):
        evaluate_scores(np.full((2, 4), np.nan), [[0], [1]])
    with pytest.raises(ValueError, match="2-D"):
        evaluate_scores(np.zeros(4), [[0]])
    with pytest.raises(ValueError, match="CSR has 3 rows"):
        evaluate_scores(scores, sp.csr_matrix(np.ones((3, 4))))


def test_csr_explicit_zeros_are_not_items():
    m = sp.csr_matrix((np.array([1.0, 0.0, 1.0]), np.array([0, 1, 2]), np.array([0, 2, 3])), shape=(2, 3))
    assert [a.tolist() for a in to_item_lists(m, 2, 3)] == [[0], [2]]


def _random_case(seed, U=60, I=150):
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((U, I))  # continuous: no ties, so sklearn's tie handling does not matter
    train, rel = [], []
    for _ in range(U):
        perm = rng.permutation(I)
        n_tr, n_rel = rng.integers(0, 30), rng.integers(1, 60)  # some users with |rel| > k
        train.append(perm[:n_tr])
        rel.append(perm[n_tr : n_tr + n_rel])
    return scores, train, rel


@pytest.mark.parametrize("seed", [0, 1])
def test_ndcg_matches_sklearn(seed):
    scores, train, rel = _random_case(seed)
    U, I = scores.shape
    y_true = np.zeros((U, I))
    masked = scores.copy()
    for u in range(U):
        y_true[u, rel[u]] = 1
        masked[u, train[u]] = -1e9  # sklearn rejects inf; a huge negative is the same ranking
    for k in (10, 100):
        ours = ndcg_at_k(topk_from_scores(scores, k, exclude=train), rel, k)
        theirs = [ndcg_score(y_true[u : u + 1], masked[u : u + 1], k=k) for u in range(U)]
        np.testing.assert_allclose(ours, theirs, rtol=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_recall_matches_brute_force(seed):
    scores, train, rel = _random_case(seed)
    U, _ = scores.shape
    csr_rel = sp.csr_matrix(
        (np.ones(sum(len(r) for r in rel)), np.concatenate(rel), np.cumsum([0] + [len(r) for r in rel])),
        shape=scores.shape,
    )
    res = evaluate_scores(scores, csr_rel, exclude=train, ks=(20, 40), ndcg_ks=(100,))
    for k in (20, 40):
        code, paper = [], []
        for u in range(U):
            ranked = [i for i in sorted(range(scores.shape[1]), key=lambda i: -scores[u, i]) if i not in set(train[u])]
            hit = len(set(ranked[:k]) & set(rel[u].tolist()))
            code.append(hit / min(k, len(rel[u])))
            paper.append(hit / len(rel[u]))
        assert res[f"recall@{k}"] == pytest.approx(np.mean(code), rel=1e-12)
        assert res[f"recall@{k}_paper"] == pytest.approx(np.mean(paper), rel=1e-12)
        assert res[f"recall@{k}_paper"] <= res[f"recall@{k}"]
    assert res["num_users"] == U


def test_blocks_merge_to_the_same_result():
    scores, train, rel = _random_case(3)
    whole = per_user_metrics(scores, rel, train)
    blocks = [per_user_metrics(scores[s:e], rel[s:e], train[s:e]) for s, e in [(0, 17), (17, 41), (41, 60)]]
    merged = merge_per_user(blocks)
    for key in whole:
        np.testing.assert_array_equal(whole[key], merged[key])
    assert summarize(merged) == summarize(whole)


def test_hits_matrix_ignores_padding():
    assert hits_matrix(np.array([[-1, 2]]), [np.array([2])]).tolist() == [[False, True]]
