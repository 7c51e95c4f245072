"""benchmarks/baselines.py on a tiny dataset with planted cluster structure."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from benchmarks.baselines import (EASE, RLAE, EASEIdealLowPass, ItemKNN, LightGCN, MultiVAE, Popularity, evaluate_recommender,
                                  make_baseline, to_csr)
from modeling_graphgpt2.modeling_graphgpt2 import SymmetricSparseProduct
from train.metrics import topk_from_scores


def planted_split(seed: int = 0, num_users: int = 240, clusters: int = 6, per_cluster: int = 10):
    """Each user likes items of one cluster (plus one globally popular item); per-user random train/valid/test.

    Cluster sizes (number of users) differ, so popularity is a real but weak baseline; anything that uses
    co-occurrence should find the user's cluster.
    """
    rng = np.random.default_rng(seed)
    num_items = clusters * per_cluster + 3  # 3 popular "noise" items shared by everyone
    weights = np.arange(1, clusters + 1, dtype=float)
    train, valid, test = [], [], []
    for _ in range(num_users):
        c = rng.choice(clusters, p=weights / weights.sum())
        items = c * per_cluster + rng.choice(per_cluster, size=7, replace=False)
        items = np.append(items, clusters * per_cluster + rng.integers(3))
        rng.shuffle(items)
        test.append(items[:2]), valid.append(items[2:3]), train.append(items[3:])
    return to_csr(train, num_items), to_csr(valid, num_items), to_csr(test, num_items)


@pytest.fixture(scope="module")
def data():
    return planted_split()


@pytest.fixture(scope="module")
def pop_result(data):
    train, valid, test = data
    return evaluate_recommender(Popularity().fit(train), train, test, ks=(5,), ndcg_ks=(10,))


@pytest.mark.parametrize(
    "model",
    [
        ItemKNN(),
        ItemKNN(topk=5),
        EASE(lambdas=(1.0, 10.0, 100.0)),
        MultiVAE(epochs=40, batch_size=64, eval_every=5, seed=0),
        LightGCN(epochs=20, batch_size=256, lr=5e-3, eval_every=5, seed=0),
    ],
    ids=["itemknn", "itemknn-top5", "ease", "multivae", "lightgcn"],
)
def test_each_baseline_beats_popularity(data, pop_result, model):
    train, valid, test = data
    res = evaluate_recommender(model.fit(train, valid), train, test, ks=(5,), ndcg_ks=(10,))
    assert res["num_users"] == train.shape[0]
    assert res["recall@5"] > pop_result["recall@5"] + 0.15, (res, pop_result)
    assert res["ndcg@10"] > pop_result["ndcg@10"], (res, pop_result)


def test_popularity_scores_are_train_counts(data):
    train, _, _ = data
    scores = Popularity().fit(train).score(np.array([0, 5]))
    counts = np.asarray(train.sum(axis=0)).ravel()
    np.testing.assert_array_equal(scores[0], counts)
    np.testing.assert_array_equal(scores[1], counts)


def test_ease_matches_closed_form(data):
    train, _, _ = data
    lam = 7.0
    x = train.toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
    b = np.eye(x.shape[1]) - p @ np.diag(1.0 / np.diag(p))
    model = EASE(lambdas=(lam,)).fit(train)
    np.testing.assert_allclose(model.B_, b, atol=1e-10)
    assert np.all(np.diag(model.B_) == 0)
    np.testing.assert_allclose(model.score(np.arange(10)), x[:10] @ b, rtol=1e-5, atol=1e-5)


def test_ease_picks_lambda_on_validation(data):
    train, valid, _ = data
    model = EASE(lambdas=(0.1, 10.0, 1e6)).fit(train, valid)
    val = model.info()["validation"]
    assert set(val) == {"0.1", "10.0", "1000000.0"}
    best = max(model.lambdas, key=lambda v: val[str(v)]["recall@20"])
    assert model.lambda_ == best
    with pytest.raises(ValueError, match="no validation"):
        EASE(lambdas=(1.0, 2.0)).fit(train)


def test_itemknn_is_cosine(data):
    train, _, _ = data
    x = train.toarray().astype(np.float64)
    co = x.T @ x
    norm = np.sqrt(np.diag(co))
    sim = co / np.outer(norm, norm)
    np.fill_diagonal(sim, 0)
    model = ItemKNN().fit(train)
    np.testing.assert_allclose(model.sim_.toarray(), sim, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.score(np.arange(4)), x[:4] @ sim, rtol=1e-4, atol=1e-5)


def test_multivae_same_seed_same_scores(data):
    train, _, _ = data
    a = MultiVAE(epochs=2, batch_size=64, seed=3).fit(train).score(np.arange(5))
    b = MultiVAE(epochs=2, batch_size=64, seed=3).fit(train).score(np.arange(5))
    c = MultiVAE(epochs=2, batch_size=64, seed=4).fit(train).score(np.arange(5))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_lightgcn_same_seed_same_scores(data):
    train, _, _ = data
    a = LightGCN(epochs=2, batch_size=256, seed=3).fit(train).score(np.arange(5))
    b = LightGCN(epochs=2, batch_size=256, seed=3).fit(train).score(np.arange(5))
    np.testing.assert_array_equal(a, b)


def test_lightgcn_product_and_gradient_match_dense():
    rng = np.random.default_rng(0)
    a = rng.random((30, 30)) * (rng.random((30, 30)) < 0.2)
    dense = torch.from_numpy(a + a.T)
    e = torch.randn(30, 4, dtype=torch.float64, requires_grad=True)
    out = SymmetricSparseProduct.apply(dense.to_sparse_csr(), e)
    weights = torch.randn(30, 4, dtype=torch.float64)
    (grad,) = torch.autograd.grad((out * weights).sum(), e)
    torch.testing.assert_close(out, dense @ e)
    torch.testing.assert_close(grad, dense.T @ weights)


@pytest.mark.parametrize("model", [MultiVAE(epochs=300, batch_size=64, lr=1e-2, eval_every=1, patience=3, seed=0),
                                   LightGCN(epochs=300, batch_size=256, lr=5e-2, eval_every=1, patience=3, seed=0)],
                         ids=["multivae", "lightgcn"])
def test_patience_stops_a_baseline_after_that_many_checks_without_gain(data, model):
    train, valid, _ = data
    info = model.fit(train, valid).info()
    assert info["epochs_run"] < 300
    assert info["epochs_run"] == info["best_epoch"] + 3


def test_errors_are_clear(data):
    train, valid, _ = data
    with pytest.raises(RuntimeError, match="before fit"):
        Popularity().score(np.arange(3))
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline("bogus")
    with pytest.raises(ValueError, match="valid has shape"):
        Popularity().fit(train, valid[:, :5])
    with pytest.raises(TypeError, match="sparse"):
        Popularity().fit(np.ones((3, 3)))
    with pytest.raises(ValueError, match="out of range"):
        to_csr([[0, 9]], 5)
    assert make_baseline("multivae", seed=7).seed == 7


# ---- RLAE and EASE + ideal low-pass (issue Quality 3, part 1)


@pytest.fixture(scope="module")
def tiny():
    """30 users x 12 items, random binary, with one user without items and one item without users (zero degrees)."""
    rng = np.random.default_rng(0)
    x = (rng.random((30, 12)) < 0.35).astype(np.float64)
    x[0] = 0.0
    x[:, 11] = 0.0
    return x, sp.csr_matrix(x)


def dense_ease(x, lam):
    p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
    return np.eye(x.shape[1]) - p @ np.diag(1.0 / np.diag(p))


def dense_rlae(x, lam, xi):
    """The paper's KKT solution: B = I - P diag(lam + mu), mu_j = max(0, (1 - xi) / P_jj - lam), then diag(B) = 0."""
    p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
    mu = np.maximum(0.0, (1.0 - xi) / np.diag(p) - lam)
    b = np.eye(x.shape[1]) - p @ np.diag(lam + mu)
    np.fill_diagonal(b, 0.0)
    return b


def standardise(s):
    std = s.std(axis=1, keepdims=True)
    return s / np.where(std == 0, 1.0, std)


def dense_ease_ilp(x, lam, k, w):
    """S_E = X B and S_I = X D_I^-1/2 V_k V_k^T D_I^1/2 from numpy's full SVD, each divided by its per-user std."""
    deg_u, deg_i = x.sum(1), x.sum(0)
    inv = lambda d: np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)  # noqa: E731
    rn = np.diag(inv(deg_u)) @ x @ np.diag(inv(deg_i))
    _, s, vt = np.linalg.svd(rn)
    assert s[k - 1] - s[k] > 1e-6  # the rank-k subspace is unique
    v = vt[:k].T
    s_i = x @ np.diag(inv(deg_i)) @ v @ v.T @ np.diag(np.sqrt(deg_i))
    return standardise(x @ dense_ease(x, lam)) + w * standardise(s_i)


@pytest.mark.parametrize("lam,xi", [(3.0, 0.0), (3.0, 0.3), (3.0, 0.6), (20.0, 0.2)])
def test_rlae_matches_dense_closed_form(tiny, lam, xi):
    x, train = tiny
    model = RLAE(lambdas=(lam,), xis=(xi,)).fit(train)
    np.testing.assert_allclose(model.weights(), dense_rlae(x, lam, xi), atol=1e-10)
    np.testing.assert_allclose(model.score(np.arange(30)), x @ dense_rlae(x, lam, xi), rtol=1e-5, atol=1e-6)
    p = np.linalg.inv(x.T @ x + lam * np.eye(12))
    assert model.active_ == int(np.sum(1.0 - lam * np.diag(p) > xi))
    if xi == 0.6:
        assert 0 < model.active_ < 11  # both branches of mu (bound binding and not) are exercised


def test_rlae_with_xi_zero_is_ease(tiny):
    x, train = tiny
    for lam in (1.0, 3.0, 50.0):
        rlae, ease = RLAE(lambdas=(lam,), xis=(0.0,)).fit(train), EASE(lambdas=(lam,)).fit(train)
        np.testing.assert_allclose(rlae.weights(), ease.B_, atol=1e-12)
        np.testing.assert_allclose(rlae.weights(), dense_ease(x, lam), atol=1e-10)
        np.testing.assert_allclose(rlae.score(np.arange(30)), ease.score(np.arange(30)), atol=1e-6)


@pytest.mark.parametrize("lam,k,w", [(3.0, 4, 0.5), (10.0, 7, 1.0), (3.0, 64, 0.25)])
def test_ease_ilp_matches_dense_reference(tiny, lam, k, w):
    x, train = tiny
    model = EASEIdealLowPass(lambdas=(lam,), ks=(k,), weights=(w,), chunk_size=7).fit(train)
    k_used = min(k, 11)  # clipped to min(users, items) - 1
    assert model.k_ == k_used
    scores = model.score(np.arange(30))
    assert np.isfinite(scores).all()
    np.testing.assert_array_equal(scores[0], 0.0)  # no train items: both terms are 0, and the std guard holds
    np.testing.assert_allclose(scores, dense_ease_ilp(x, lam, k_used, w), rtol=1e-4, atol=1e-4)
    # the two terms separately, at a smaller rank sliced from the same SVD
    rows = np.arange(30)
    np.testing.assert_allclose(model._ease_term(rows, model.B_), standardise(x @ dense_ease(x, lam)), atol=1e-8)
    np.testing.assert_allclose(model._lowpass_term(rows, 3), dense_ease_ilp(x, 1.0, 3, 1.0) - standardise(x @ dense_ease(x, 1.0)),
                               atol=1e-6)


def test_ease_ilp_above_its_size_rule_uses_the_neighbourhood_ease(tiny):
    x, train = tiny
    scalable = EASEIdealLowPass(lambdas=(3.0,), ks=(4,), weights=(0.5,), exact_max_items=0, neighbours=11).fit(train)
    exact = EASEIdealLowPass(lambdas=(3.0,), ks=(4,), weights=(0.5,)).fit(train)
    assert (scalable.info()["ease_form"], exact.info()["ease_form"]) == ("neighbourhood", "exact")
    assert sp.issparse(scalable.B_)
    # K covers the 11 other items: the neighbourhood EASE is EASE, so the blend is the same
    np.testing.assert_allclose(scalable.score(np.arange(30)), exact.score(np.arange(30)), atol=1e-4)
    small = EASEIdealLowPass(lambdas=(3.0,), ks=(4,), weights=(0.5,), exact_max_items=0, neighbours=2).fit(train)
    assert (small.B_ != 0).sum(axis=0).max() <= 2
    assert np.isfinite(small.score(np.arange(30))).all()


@pytest.mark.parametrize("make", [
    lambda: RLAE(lambdas=(1.0, 30.0, 1e4), xis=(0.0, 0.3, 0.6)),
    lambda: EASEIdealLowPass(lambdas=(1.0, 30.0), ks=(2, 8, 40), weights=(0.25, 1.0, 4.0), chunk_size=64),
], ids=["rlae", "ease_ilp"])
def test_grid_is_chosen_on_validation(data, make):
    """Each grid point refitted alone and scored on validation here; the model's choice is the first argmax."""
    train, valid, _ = data
    model = make().fit(train, valid)
    info = model.info()
    names = ("lambda", "xi") if isinstance(model, RLAE) else ("lambda", "k", "w")
    grids = [info["grid"][n] if n != "k" else info["grid"]["k_used"] for n in names]
    points = [dict(zip(names, p)) for p in np.array(np.meshgrid(*grids, indexing="ij")).reshape(len(names), -1).T]
    assert len(info["validation"]) == len(points)
    recomputed = []
    for point in points:
        alone = (RLAE(lambdas=(point["lambda"],), xis=(point["xi"],)) if isinstance(model, RLAE)
                 else EASEIdealLowPass(lambdas=(point["lambda"],), ks=(int(point["k"]),), weights=(point["w"],)))
        recomputed.append(evaluate_recommender(alone.fit(train), train, valid)["recall@20"])
    key = lambda p: ",".join(f"{n}={v:g}" for n, v in p.items())  # noqa: E731
    np.testing.assert_allclose([info["validation"][key(p)]["recall@20"] for p in points], recomputed, atol=1e-12)
    best = points[int(np.argmax(recomputed))]
    assert {n: info[n] for n in names} == pytest.approx(best)
    assert len(set(np.round(recomputed, 12))) > 1  # the grid is not flat: the choice means something
    # the chosen model scores validation as it did in the grid
    assert evaluate_recommender(model, train, valid)["recall@20"] == pytest.approx(max(recomputed), abs=1e-12)


@pytest.mark.parametrize("model", [RLAE(lambdas=(3.0,), xis=(0.5,)), EASEIdealLowPass(lambdas=(3.0,), ks=(5,), weights=(1.0,))],
                         ids=["rlae", "ease_ilp"])
def test_train_items_are_masked(tiny, model):
    _, train = tiny
    model.fit(train)
    res = evaluate_recommender(model, train, train, ks=(5,), ndcg_ks=(10,))  # train items as the target: never ranked
    assert res["recall@5"] == 0.0 and res["ndcg@10"] == 0.0
    top = topk_from_scores(model.score(np.arange(30)), 11, exclude=train)
    for u in range(30):
        assert not set(top[u][top[u] >= 0]) & set(train[u].indices)


def test_new_baselines_registered_and_checked(data):
    train, _, _ = data
    assert isinstance(make_baseline("rlae", xis=(0.2,), lambdas=(5.0,)), RLAE)
    assert isinstance(make_baseline("ease_ilp", ks=(4,)), EASEIdealLowPass)
    with pytest.raises(ValueError, match="no validation"):
        RLAE().fit(train)
    with pytest.raises(ValueError, match="no validation"):
        EASEIdealLowPass().fit(train)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        RLAE(xis=(1.0,))
