"""The low-pass residual (issue "Quality 3"): GF-CF's ideal low-pass filter as a second item-head residual, fitted on
the train graph only, stored with the weights, its scale chosen on validation after the graph residual's."""
import numpy as np
import pytest
import torch

from data_builders.corpus import Corpus
from data_builders.item_graph import graph_svd_vectors, ideal_lowpass_basis
from modeling_graphgpt2 import GraphGPT2ForRecommendation
from train.common import build_model, init_collab_items
from train.config import ConfigError, load_config
from train.testing import build_tiny_data, tiny_overrides

from test_graph_residual import prompt_items, random_interactions
from test_model_core import make_batch, tiny_model


def dense_filter(x: np.ndarray, rank: int) -> np.ndarray:
    """(X D^-1/2 V_k)(V_k^T D^1/2) with V_k from a full dense SVD: the reference of the formula."""
    deg_u, deg_i = x.sum(1), x.sum(0)
    inv = lambda d: np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0.0)  # noqa: E731
    _, _, vt = np.linalg.svd(inv(deg_u)[:, None] * x * inv(deg_i)[None, :], full_matrices=False)
    v = vt[:rank].T
    return (x * inv(deg_i)[None, :]) @ v @ (v.T * np.sqrt(deg_i)[None, :])


def test_the_basis_gives_gf_cfs_ideal_low_pass_filter():
    x = random_interactions(users=60, items=30, per_user=5, seed=3)
    basis, sqrt_degree = ideal_lowpass_basis(x, 8)
    assert basis.shape == (30, 8) and basis.dtype == np.float32
    np.testing.assert_allclose(sqrt_degree, np.sqrt(x.toarray().sum(0)), rtol=1e-6)
    np.testing.assert_allclose(basis.T @ basis, np.eye(8), atol=1e-5)  # orthonormal singular vectors
    xd = x.toarray().astype(np.float64)
    inv = np.where(sqrt_degree > 0, 1 / np.where(sqrt_degree > 0, sqrt_degree, 1), 0.0)
    got = (xd * inv[None, :]) @ basis @ (basis.T * sqrt_degree[None, :])
    np.testing.assert_allclose(got, dense_filter(xd, 8), atol=1e-4)  # the projector, whatever the vectors' signs
    assert np.array_equal(ideal_lowpass_basis(x, 8)[0], basis)  # seeded: the same basis every time
    wide, _ = ideal_lowpass_basis(x, 500)  # capped at the items, beyond ARPACK's min(U, I) - 1 zero columns
    assert wide.shape == (30, 30) and not wide[:, 29:].any()


def test_graph_svd_vectors_are_the_items_coordinates_on_the_normalised_graphs_top_directions():
    x = random_interactions(users=60, items=30, per_user=5, seed=3)
    xd = x.toarray().astype(np.float64)
    inv = lambda d: np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0.0)  # noqa: E731
    _, s, vt = np.linalg.svd(inv(xd.sum(1))[:, None] * xd * inv(xd.sum(0))[None, :], full_matrices=False)
    vectors = graph_svd_vectors(x, 6)
    assert vectors.shape == (30, 6) and vectors.dtype == np.float32
    expected = vt[:6].T * s[:6]
    expected *= np.sign(expected[np.abs(expected).argmax(0), np.arange(6)])  # the largest entry of a column > 0
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert not graph_svd_vectors(x, 40)[:, 29:].any()  # past ARPACK's min(U, I) - 1: zero columns


def test_graph_svd_starts_both_item_tables_from_the_train_graph(tiny, tmp_path):
    cfg = load_config("demo", tiny_overrides(tiny, tmp_path))
    corpus = Corpus(tiny)
    model = build_model(cfg, corpus)
    with torch.no_grad():
        done = init_collab_items(model, corpus, "graph_svd", seed=0)
    vectors = graph_svd_vectors(corpus.interaction_matrix("train"), model.config.n_embd)  # train pairs only
    assert done == f"graph_svd: {corpus.num_items} items"
    for name in ("content", "collab"):
        rows = model.id_embeddings(name).item.weight.detach().numpy()
        np.testing.assert_allclose(rows, vectors * (model.config.initializer_range / vectors.std()), rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="finetune.init_collab_items"):
        load_config("demo", ["finetune.init_collab_items=graph"])


def test_the_model_adds_the_standardised_filter_with_its_scale():
    x = random_interactions(users=60, seed=4)
    basis, sqrt_degree = ideal_lowpass_basis(x, 16)
    plain = tiny_model(graph_bias="none")
    model = tiny_model(graph_bias="none", graph_lowpass_rank=16, graph_lowpass_scale_init=0.0)
    model.graph_lowpass.set_tables(basis, sqrt_degree)
    ids, mask, _ = make_batch(pad=True)
    out = model(input_ids=ids, attention_mask=mask, task="rec")
    torch.testing.assert_close(out.scores, plain(input_ids=ids, attention_mask=mask, task="rec").scores)  # scale 0
    items = prompt_items(ids, mask).numpy()
    inv = np.where(sqrt_degree > 0, 1 / np.where(sqrt_degree > 0, sqrt_degree, 1), 0.0)
    r = (items * inv[None, :]) @ basis @ (basis.T * sqrt_degree[None, :])
    want = r / r.std(axis=1, ddof=1, keepdims=True)
    np.testing.assert_allclose(out.score_terms["graph_lowpass"].detach().numpy(), want, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        model.graph_lowpass.scale.fill_(0.5)
    mixed = model(input_ids=ids, attention_mask=mask, task="rec").scores
    torch.testing.assert_close(mixed, out.scores + 0.5 * out.score_terms["graph_lowpass"])
    assert not model.graph_lowpass.scale.requires_grad  # fixed: chosen on validation, never trained


def test_off_the_state_dict_is_unchanged_and_on_it_saves_and_reloads_strictly(tmp_path):
    assert not any("graph_lowpass" in k for k in tiny_model().state_dict())
    model = tiny_model(graph_lowpass_rank=8, graph_lowpass_scale_init=0.25)
    basis, sqrt_degree = ideal_lowpass_basis(random_interactions(users=60, seed=5), 8)
    model.graph_lowpass.set_tables(basis, sqrt_degree)
    model.save_pretrained(tmp_path / "m")
    loaded = GraphGPT2ForRecommendation.from_pretrained(tmp_path / "m")
    for key in ("graph_lowpass.basis", "graph_lowpass.sqrt_degree", "graph_lowpass.scale"):
        torch.testing.assert_close(loaded.state_dict()[key], model.state_dict()[key])
    with pytest.raises(ValueError, match=r"GraphLowPassResidual table basis must have shape \(300, 8\)"):
        model.graph_lowpass.set_tables(basis[:, :4], sqrt_degree)


def test_keeping_a_lower_rank_serves_that_ranks_filter_and_reloads_strictly(tmp_path):
    x = random_interactions(users=60, seed=6)
    basis, sqrt_degree = ideal_lowpass_basis(x, 16)
    wide = tiny_model(graph_bias="none", graph_lowpass_rank=16)
    wide.graph_lowpass.set_tables(basis, sqrt_degree)
    narrow = tiny_model(graph_bias="none", graph_lowpass_rank=6)
    narrow.graph_lowpass.set_tables(basis[:, :6], sqrt_degree)
    wide.graph_lowpass.keep_rank(wide.graph_lowpass.basis.clone(), 6)
    wide.config.graph_lowpass_rank = 6
    ids, mask, _ = make_batch(pad=True)
    torch.testing.assert_close(wide(input_ids=ids, attention_mask=mask, task="rec").score_terms["graph_lowpass"],
                               narrow(input_ids=ids, attention_mask=mask, task="rec").score_terms["graph_lowpass"])
    wide.save_pretrained(tmp_path / "m")
    loaded = GraphGPT2ForRecommendation.from_pretrained(tmp_path / "m")  # strict: the config says rank 6
    np.testing.assert_array_equal(loaded.graph_lowpass.basis.numpy(), basis[:, :6])
    with pytest.raises(ValueError, match=r"a low-pass rank must be in \[1, 16\]"):
        wide.graph_lowpass.keep_rank(torch.as_tensor(basis), 17)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_data(tmp_path_factory.mktemp("lowpass") / "tiny")


def test_the_built_models_basis_comes_from_the_train_pairs_only(tiny, tmp_path):
    corpus = Corpus(tiny)
    cfg = load_config("demo", tiny_overrides(tiny, tmp_path, "model.graph_lowpass_rank=12"))
    model = build_model(cfg, corpus)
    basis, sqrt_degree = ideal_lowpass_basis(corpus.interaction_matrix("train"), 12)
    np.testing.assert_array_equal(model.graph_lowpass.basis.numpy(), basis)
    np.testing.assert_array_equal(model.graph_lowpass.sqrt_degree.numpy(), sqrt_degree)
    test_degrees = np.sqrt(corpus.interaction_matrix("train").toarray().sum(0) + corpus.interaction_matrix("test").toarray().sum(0))
    assert not np.allclose(model.graph_lowpass.sqrt_degree.numpy(), test_degrees)  # test pairs are not in it


def test_finetuning_chooses_both_scales_on_validation_and_the_card_states_them(tiny, tmp_path):
    from train.finetune import finetune
    from train.modeling_io import load_model

    grid = [0.0, 0.5, 2.0]
    cfg = load_config("demo", tiny_overrides(tiny, tmp_path, "pretrain.do_pretrain=false", "finetune.epochs=1",
                                             "model.graph_residual=ease", "model.graph_residual_topn=15",
                                             "model.graph_residual_learn_scale=false", "finetune.residual_scale_grid=[0, 1]",
                                             "model.graph_lowpass_rank=10", f"finetune.lowpass_scale_grid={grid}"))
    result = finetune(cfg)
    sweep = result.lowpass_scale_sweep
    assert sweep["scales"] == grid and sweep["chosen"] == grid[int(np.argmax(sweep["values"]))]
    best = load_model(result.model_dir)
    assert best.graph_lowpass.scale.item() == pytest.approx(sweep["chosen"])
    assert best.graph_residual.scale.item() == pytest.approx(result.residual_scale_sweep["chosen"])
    assert result.validation["recall@20"] == pytest.approx(max(sweep["values"]), abs=1e-9)


def test_a_lowpass_grid_needs_a_lowpass_residual():
    with pytest.raises(ConfigError, match="key 'finetune.lowpass_scale_grid'"):
        load_config("demo", ["finetune.lowpass_scale_grid=[0, 1]"])
    with pytest.raises(ConfigError, match="graph_lowpass_rank"):
        load_config("demo", ["model.graph_lowpass_rank=-1"]).model  # noqa: B018


def test_finetuning_chooses_the_lowpass_rank_with_its_scale_on_validation(tiny, tmp_path):
    from train.finetune import finetune
    from train.modeling_io import load_model

    ranks, grid = [3, 10], [0.0, 1.0, 4.0]
    cfg = load_config("demo", tiny_overrides(tiny, tmp_path, "pretrain.do_pretrain=false", "finetune.epochs=1",
                                             "model.graph_lowpass_rank=10", f"finetune.lowpass_scale_grid={grid}",
                                             f"finetune.lowpass_rank_grid={ranks}"))
    result = finetune(cfg)
    sweep = result.lowpass_scale_sweep
    assert sweep["ranks"] == ranks and set(sweep["values_by_rank"]) == {"3", "10"}
    best_value = max(max(v) for v in sweep["values_by_rank"].values())
    chosen_rank = next(r for r in ranks if max(sweep["values_by_rank"][str(r)]) == best_value)  # first of equals
    assert sweep["chosen_rank"] == chosen_rank and sweep["values"] == sweep["values_by_rank"][str(chosen_rank)]
    assert result.validation["recall@20"] == pytest.approx(best_value, abs=1e-9)
    best = load_model(result.model_dir)  # strict load: the config's rank is the chosen one
    assert best.config.graph_lowpass_rank == chosen_rank
    fitted, _ = ideal_lowpass_basis(Corpus(tiny).interaction_matrix("train"), 10)
    np.testing.assert_array_equal(best.graph_lowpass.basis.numpy(), fitted[:, :chosen_rank])
    assert best.graph_lowpass.scale.item() == pytest.approx(sweep["chosen"])


def test_a_lowpass_rank_grid_stays_within_the_fitted_rank_and_needs_scales():
    with pytest.raises(ConfigError, match=r"key 'finetune.lowpass_rank_grid' must be a list of ranks in \[1, "):
        load_config("demo", ["model.graph_lowpass_rank=8", "finetune.lowpass_scale_grid=[0, 1]",
                             "finetune.lowpass_rank_grid=[4, 16]"])
    with pytest.raises(ConfigError, match="key 'finetune.lowpass_rank_grid' needs finetune.lowpass_scale_grid"):
        load_config("demo", ["model.graph_lowpass_rank=8", "finetune.lowpass_rank_grid=[4]"])


def test_reselect_gives_a_fresh_runs_selection_from_the_trained_weights(tiny, tmp_path):
    from benchmarks.reselect import reselect
    from train.finetune import finetune

    common = ["pretrain.do_pretrain=false", "finetune.epochs=1", "model.graph_residual=ease",
              "model.graph_residual_topn=15", "model.graph_residual_learn_scale=false",
              "finetune.residual_scale_grid=[0, 1]", "model.graph_lowpass_rank=10", "finetune.lowpass_scale_grid=[0, 1, 4]"]
    run = load_config("demo", tiny_overrides(tiny, tmp_path / "run", *common))
    run.save(tmp_path / "run" / "run_config.yaml")
    finetune(run)
    grid = "finetune.lowpass_rank_grid=[3, 10]"
    fresh = finetune(load_config("demo", tiny_overrides(tiny, tmp_path / "fresh", *common, grid)))
    again = reselect(tmp_path / "run", tmp_path / "again", [grid])
    assert again["test"] == fresh.test and again["validation"] == fresh.validation
    assert again["lowpass_scale_sweep"] == fresh.lowpass_scale_sweep
    # from a run that kept a lower rank than it fitted: the fitted basis is fitted again, so the wider ranks return
    narrow = load_config("demo", tiny_overrides(tiny, tmp_path / "narrow", *common, "finetune.lowpass_rank_grid=[3]"))
    narrow.save(tmp_path / "narrow" / "run_config.yaml")
    assert finetune(narrow).lowpass_scale_sweep["chosen_rank"] == 3
    widened = reselect(tmp_path / "narrow", tmp_path / "widened", [grid])
    assert widened["lowpass_scale_sweep"] == fresh.lowpass_scale_sweep and widened["test"] == fresh.test
    assert fresh.lowpass_scale_sweep["values_by_rank"]["3"] != fresh.lowpass_scale_sweep["values_by_rank"]["10"]
    # the training-free residuals refitted (another lambda and width, a wider basis), as a fresh run fits them
    refit = ["model.graph_residual_lambda=30", "model.graph_residual_topn=9", "model.graph_lowpass_rank=14"]
    fresh = finetune(load_config("demo", tiny_overrides(tiny, tmp_path / "fresh_refit", *common, *refit)))
    again = reselect(tmp_path / "run", tmp_path / "again_refit", refit)
    assert again["test"] == fresh.test and again["residual_scale_sweep"] == fresh.residual_scale_sweep
    probe = reselect(tmp_path / "run", tmp_path / "probe", refit, with_test=False)
    assert probe["test"] is None and probe["validation"] == fresh.validation
    with pytest.raises(SystemExit, match="reselect changes only"):
        reselect(tmp_path / "run", tmp_path / "other", ["finetune.epochs=3"])
    # the result file of several folders: each row as written, the mean and sample std over them
    from benchmarks.collect_runs import run_row, summary

    rows = [run_row(tmp_path / "again"), run_row(tmp_path / "again_refit")]
    assert rows[1]["test"] == fresh.test and rows[1]["overrides"] == refit
    r20 = [row["test"]["recall@20"] for row in rows]
    assert summary(rows)["test recall@20"] == {"mean": np.mean(r20), "std": np.std(r20, ddof=1), "values": r20}


def test_the_one_pass_rank_sweep_scores_as_the_model_with_each_rank_kept(tiny, tmp_path):
    from modeling_graphgpt2.modeling_graphgpt2 import first_columns
    from train.common import make_accelerator
    from train.evaluate import evaluate_residual_scales

    cfg = load_config("demo", tiny_overrides(tiny, tmp_path, "model.graph_lowpass_rank=10"))
    corpus, accelerator = Corpus(tiny), make_accelerator(cfg, tmp_path)
    model = build_model(cfg, corpus)
    fitted, scales = model.graph_lowpass.basis.clone(), [0.0, 1.0, 3.0]
    swept = evaluate_residual_scales(accelerator, model, corpus, "validation", cfg, scales, term="graph_lowpass",
                                     lowpass_bases=[first_columns(fitted, r) for r in (4, 10)])
    assert len(swept) == 6
    for i, rank in enumerate((4, 10)):
        model.graph_lowpass.keep_rank(fitted, rank)
        kept = evaluate_residual_scales(accelerator, model, corpus, "validation", cfg, scales, term="graph_lowpass")
        assert kept == swept[3 * i:3 * i + 3]  # the same metrics to the last bit
    assert swept[1] != swept[4]  # and the two ranks do differ
