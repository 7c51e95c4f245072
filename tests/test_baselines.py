"""benchmarks/baselines.py on a tiny dataset with planted cluster structure."""
import numpy as np
import pytest
import torch

from benchmarks.baselines import EASE, ItemKNN, LightGCN, MultiVAE, Popularity, evaluate_recommender, make_baseline, to_csr
from modeling_graphgpt2.modeling_graphgpt2 import SymmetricSparseProduct


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
