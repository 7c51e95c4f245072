"""The paired bootstrap of a ratio of test means (benchmarks/paired_bootstrap.py) and the per-user arrays of the
evaluation loop it reads (``evaluate_scorer(per_user=True)``)."""
import numpy as np
import pytest

from benchmarks.baselines import EASE, evaluate_recommender
from benchmarks.paired_bootstrap import bootstrap_ratio, per_user_test
from data_builders.corpus import Corpus
from train.config import load_config
from train.evaluate import evaluate_scorer
from train.testing import build_tiny_data


def test_a_fixed_ratio_per_user_has_no_spread():
    base = np.random.default_rng(0).uniform(0.1, 1.0, 300)
    out = bootstrap_ratio(1.1 * base, base, draws=200, bar=1.05)
    assert out["ratio"] == pytest.approx(1.1) and out["ci95"] == pytest.approx([1.1, 1.1])
    assert out["share_at_or_above_bar"] == 1.0
    assert bootstrap_ratio(1.1 * base, base, draws=200, bar=1.2)["share_at_or_above_bar"] == 0.0


def test_the_interval_holds_the_ratio_and_narrows_with_more_users():
    rng = np.random.default_rng(1)

    def pair(n):
        base = rng.binomial(1, 0.3, n).astype(float)
        return np.where(rng.random(n) < 0.1, 1 - base, base), base  # 10 % of users flipped: a noisy pair

    small, large = bootstrap_ratio(*pair(500), draws=2000), bootstrap_ratio(*pair(20_000), draws=2000)
    for out in (small, large):
        assert out["ci95"][0] < out["ratio"] < out["ci95"][1]
        assert 0 <= out["share_at_or_above_bar"] <= 1
    width = lambda out: out["ci95"][1] - out["ci95"][0]  # noqa: E731
    assert width(large) < width(small) / 3  # sqrt(40) = 6.3 times narrower in expectation
    fixed = pair(500)  # the same data and seed: the same draws
    assert bootstrap_ratio(*fixed, draws=500, seed=3) == bootstrap_ratio(*fixed, draws=500, seed=3)


def test_unpaired_arrays_are_refused():
    with pytest.raises(ValueError, match="paired per-user arrays"):
        bootstrap_ratio(np.ones(3), np.ones(4))


def test_the_loops_per_user_values_are_the_users_own(tmp_path):
    """``evaluate_scorer(per_user=True)`` returns, per user of the split, the value the matrix loop gives that user,
    and their mean is the reported mean."""
    folder = build_tiny_data(tmp_path / "tiny")
    corpus = Corpus(folder)
    cfg = load_config("demo", [f"data.folder={folder}", "eval.batch_size=5"])
    train = corpus.interaction_matrix("train")
    ease = EASE(lambdas=(10.0,)).fit(train)
    result = evaluate_scorer(None, ease, corpus, "test", cfg, per_user=True)[0]
    users = np.asarray(result["users"])
    theirs = evaluate_recommender(ease, train, corpus.interaction_matrix("test"), ks=cfg.eval.recall_ks,
                                  ndcg_ks=cfg.eval.ndcg_ks, per_user=True)
    kept_users, kept = per_user_test(ease, corpus, cfg)
    assert len(kept_users) == result["num_users"] > 0
    for key in ("recall@20", "recall@40", "ndcg@100"):
        np.testing.assert_allclose(result["per_user"][key], theirs[key][users], atol=1e-12)
        assert kept[key].mean() == pytest.approx(result[key], abs=1e-12)
    assert "per_user" not in evaluate_scorer(None, ease, corpus, "test", cfg)[0]
