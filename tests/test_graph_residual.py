"""Graph residual in the item head (issue 10): scores + scale * (prompt items) @ W, W fitted on the train graph only,
stored with the weights; off = today's state dict."""
import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from benchmarks.baselines import EASE, to_csr
from data_builders.corpus import Corpus
from data_builders.item_graph import (cooccurrence_row_normalised, ease_closed_form, ease_form, ease_neighbourhood,
                                     residual_matrix, top_n_per_row)
from modeling_graphgpt2 import GraphGPT2ForRecommendation
from train.common import build_model
from train.config import ConfigError, load_config
from train.testing import build_tiny_data, tiny_overrides

from test_model_core import BASE, ITEMS, USERS, make_batch, tiny_model


def random_interactions(users=50, items=ITEMS, per_user=6, seed=0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    return to_csr([rng.choice(items, per_user, replace=False) for _ in range(users)], items)


def dense(indices: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.zeros((indices.shape[0], indices.shape[0]), dtype=np.float64)
    np.add.at(out, (np.repeat(np.arange(indices.shape[0]), indices.shape[1]), indices.ravel()), values.ravel())
    return out


def prompt_items(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, I) multi-hot of the item tokens the model sees (padding excluded), computed independently."""
    x = torch.zeros(ids.shape[0], ITEMS, dtype=torch.float64)
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            token = int(ids[b, t])
            if mask[b, t] and token >= BASE + USERS:
                x[b, token - BASE - USERS] += 1
    return x


# ---------------------------------------------------------------------------------------------- the matrices
def test_cooccurrence_rows_sum_to_one_and_top_n_keeps_the_largest():
    x = random_interactions()
    c = cooccurrence_row_normalised(x).toarray()
    co = (x.T @ x).toarray()
    np.fill_diagonal(co, 0)
    assert np.allclose(np.diag(c), 0)
    held = co.sum(1) > 0
    np.testing.assert_allclose(c[held], co[held] / co[held].sum(1, keepdims=True), rtol=1e-6)
    b = EASE.closed_form(x, 5.0)  # the baseline's closed form is the shared one
    for mat in (c, b, sp.csr_matrix(b)):
        idx, val = top_n_per_row(mat, 7)
        m = mat.toarray() if sp.issparse(mat) else mat
        assert idx.shape == val.shape == (ITEMS, 7)
        kept = val != 0  # padding (rows with fewer non-zeros) is (column 0, value 0)
        np.testing.assert_allclose(val[kept], np.take_along_axis(m, idx, 1)[kept], rtol=1e-6)  # values sit in their columns
        kth = -np.sort(-np.abs(m), axis=1)[:, 6]
        assert np.all(np.abs(val).min(1) >= kth - 1e-6)  # nothing larger was dropped
    np.testing.assert_allclose(dense(*top_n_per_row(b, ITEMS)), b, rtol=1e-6, atol=1e-7)  # N = I keeps all
    with pytest.raises(ValueError, match="kind"):
        residual_matrix(x, "itemknn", 5)


# ---------------------------------------------------------------------------------------------- the model
def residual_model(scale: float, seed: int = 0, **overrides) -> GraphGPT2ForRecommendation:
    model = tiny_model(seed, graph_residual="ease", graph_residual_topn=20, graph_residual_scale_init=scale, **overrides)
    model.graph_residual.set_tables(*residual_matrix(random_interactions(), "ease", 20, lam=3.0))
    return model


def test_option_off_keeps_the_state_dict_and_old_checkpoints_load(tmp_path):
    plain = tiny_model()
    assert not any("graph_residual" in k for k in plain.state_dict())
    with_residual = residual_model(0.0)
    extra = set(with_residual.state_dict()) - set(plain.state_dict())
    assert extra == {"graph_residual.indices", "graph_residual.values", "graph_residual.scale"}
    # a checkpoint written before the option existed (no graph_residual* in config.json) loads strictly, as "none"
    plain.save_pretrained(tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    old = {k: v for k, v in conf.items() if not k.startswith("graph_residual")}
    assert len(old) == len(conf) - 7
    (tmp_path / "config.json").write_text(json.dumps(old))
    loaded, info = GraphGPT2ForRecommendation.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and loaded.graph_residual is None
    ids, mask, hop = make_batch(pad=True)
    assert torch.equal(loaded.eval()(ids, attention_mask=mask, hop_distances=hop).scores,
                       plain(ids, attention_mask=mask, hop_distances=hop).scores)


def test_scale_zero_gives_the_plain_scores_and_the_residual_is_the_prompts_items_times_w():
    plain = tiny_model()
    model = residual_model(0.0)
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert set(missing) == {"graph_residual.indices", "graph_residual.values", "graph_residual.scale"} and not unexpected
    model.graph_residual.set_tables(*residual_matrix(random_interactions(), "ease", 20, lam=3.0))  # reloaded over
    ids, mask, hop = make_batch(pad=True)
    base = plain(ids, attention_mask=mask, hop_distances=hop).scores
    assert torch.equal(model(ids, attention_mask=mask, hop_distances=hop).scores, base)
    with torch.no_grad():
        model.graph_residual.scale.fill_(0.7)
    scores = model(ids, attention_mask=mask, hop_distances=hop).scores
    w = torch.from_numpy(dense(model.graph_residual.indices.numpy(), model.graph_residual.values.numpy()))
    residual = prompt_items(ids, mask) @ w  # padded positions contribute nothing
    expected = base.double() + 0.7 * residual / residual.std(dim=1, keepdim=True)  # standardised per prompt
    assert not torch.allclose(scores, base)
    torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-5)
    empty = model.graph_residual(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.bool))
    assert torch.equal(empty, torch.zeros(2, ITEMS))  # a prompt without item tokens: no residual, no NaN
    # recommend() ranks the same scores
    rec = model.recommend(ids, attention_mask=mask, hop_distances=hop, k=5)
    torch.testing.assert_close(rec.scores, torch.topk(scores, 5).values)


def test_scale_is_learned_at_lr_id_and_gets_a_gradient():
    model = residual_model(0.0).train()
    ids, mask, hop = make_batch(pad=True)
    targets = torch.zeros(ids.shape[0], ITEMS)
    targets[:, :5] = 1
    model(ids, attention_mask=mask, hop_distances=hop, target_items=targets).loss.backward()
    assert model.graph_residual.scale.grad is not None and float(model.graph_residual.scale.grad) != 0.0
    groups = {g["name"]: g for g in model.optimizer_groups(1e-3, 1e-4, 0.0)}
    assert any(p is model.graph_residual.scale for p in groups["id_embeddings"]["params"])
    assert "graph_residual" in model.peft_modules_to_save()


def test_a_fixed_scale_is_not_trained(tmp_path):
    model = residual_model(3.0, graph_residual_learn_scale=False)
    groups = model.optimizer_groups(1e-3, 1e-4, 0.0)
    assert not any(p is model.graph_residual.scale for g in groups for p in g["params"])
    model.save_pretrained(tmp_path)
    loaded = GraphGPT2ForRecommendation.from_pretrained(tmp_path)
    assert not loaded.graph_residual.scale.requires_grad and loaded.graph_residual.scale.item() == 3.0


def test_a_term_fixed_at_zero_is_skipped_in_training_with_the_same_loss(monkeypatch):
    """amazon_cpu fine-tunes with both residual scales fixed at 0: the terms are not computed then, and the loss and
    its gradients are those of the model that computes them (to the last bit); eval mode still returns them."""
    model = residual_model(0.0, graph_residual_learn_scale=False).train()
    ids, mask, hop = make_batch(pad=True)
    targets = torch.zeros(ids.shape[0], ITEMS)
    targets[:, :5] = 1

    def loss_and_grads():
        torch.manual_seed(0)  # the same dropout draws
        out = model(ids, attention_mask=mask, hop_distances=hop, target_items=targets)
        grads = torch.autograd.grad(out.loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
        return out, out.loss, grads

    skipped, loss, grads = loss_and_grads()
    assert "graph_residual" not in skipped.score_terms
    monkeypatch.setattr(type(model.graph_residual), "fixed_at_zero", lambda self: False)
    computed, loss_computed, grads_computed = loss_and_grads()
    assert "graph_residual" in computed.score_terms and torch.equal(loss, loss_computed)
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(grads, grads_computed))
    monkeypatch.undo()
    assert "graph_residual" in model.eval()(ids, attention_mask=mask, hop_distances=hop).score_terms  # the sweeps' input
    with torch.no_grad():
        model.graph_residual.scale.fill_(0.5)
    assert "graph_residual" in model.train()(ids, attention_mask=mask, hop_distances=hop).score_terms


def test_save_load_round_trip_keeps_scores_with_strict_loading(tmp_path):
    model = residual_model(0.3, graph_bias="learned")
    ids, mask, hop = make_batch(pad=True)
    expected = model(ids, attention_mask=mask, hop_distances=hop).scores
    model.save_pretrained(tmp_path)
    loaded, info = GraphGPT2ForRecommendation.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    loaded.eval()
    for name in ("indices", "values", "scale"):
        assert torch.equal(getattr(loaded.graph_residual, name), getattr(model.graph_residual, name))
    assert torch.equal(loaded(ids, attention_mask=mask, hop_distances=hop).scores, expected)


def test_config_fields_are_checked_and_name_the_run_config_key():
    from modeling_graphgpt2 import GRAPH_RESIDUAL_KINDS, GraphGPT2Config
    from modeling_graphgpt2.configuration_graphgpt2 import GraphGPT2ConfigError
    from train.config import _ALLOWED_CHOICES, model_config

    assert _ALLOWED_CHOICES["model.graph_residual"] is GRAPH_RESIDUAL_KINDS
    for override, key in (("model.graph_residual=knn", "model.graph_residual"),
                          ("model.graph_residual_topn=0", "model.graph_residual_topn"),
                          ("model.graph_residual_lambda=0", "model.graph_residual_lambda"),
                          ("model.graph_residual_neighbours=0", "model.graph_residual_neighbours"),
                          ("model.graph_residual_exact_max_items=-1", "model.graph_residual_exact_max_items")):
        with pytest.raises(ConfigError, match=f"key '{key}'"):
            load_config("demo", [override])
    with pytest.raises(GraphGPT2ConfigError, match="graph_residual_scale_init"):
        GraphGPT2Config(num_users=2, num_items=3, graph_residual="cooc", graph_residual_scale_init=float("nan"))
    cfg = load_config("demo", ["model.graph_residual=cooc", "model.graph_residual_topn=7",
                               "model.graph_residual_lambda=50", "model.graph_residual_scale_init=0.5"])
    conf = model_config(cfg.model, num_users=3, num_items=4, base_vocab_size=10)
    assert (conf.graph_residual, conf.graph_residual_topn, conf.graph_residual_lambda,
            conf.graph_residual_scale_init) == ("cooc", 7, 50.0, 0.5)


def test_neighbourhood_ease_is_exact_ease_when_the_neighbourhood_covers_every_item():
    x = random_interactions()
    exact = ease_closed_form(x, 7.0)
    for block, hubs in ((3, 0), (3, 4), (512, 8192)):  # blocks of targets and the hub table change nothing
        got = ease_neighbourhood(x, 7.0, neighbours=ITEMS - 1, block_items=block, hub_items=hubs).toarray()
        np.testing.assert_allclose(got, exact, atol=1e-6)
    assert np.abs(exact).max() > 0.05  # not trivially zero


@pytest.mark.parametrize("hub_items", [0, 4, 8192])  # Grams from co-occurrence rows only, mixed, hub table only
def test_neighbourhood_ease_is_each_columns_ridge_regression_on_its_k_most_co_held_items(hub_items):
    x = random_interactions(users=80, seed=3)
    k, lam = 5, 4.0
    b = ease_neighbourhood(x, lam, k, block_items=4, hub_items=hub_items).toarray()
    xd = x.toarray().astype(np.float64)
    co = xd.T @ xd
    for j in range(ITEMS):
        counts = np.delete(co[j], j)
        others = np.delete(np.arange(ITEMS), j)
        order = np.lexsort((others, -counts))  # by count, ties to the lower index
        members = np.sort(others[order][: k][counts[order][: k] > 0])
        xn = xd[:, members]
        want = np.linalg.solve(xn.T @ xn + lam * np.eye(len(members)), xn.T @ xd[:, j])
        np.testing.assert_allclose(b[members, j], want, atol=1e-5)
        outside = np.setdiff1d(np.arange(ITEMS), members)
        assert not b[outside, j].any()  # only the neighbourhood gets weight, never the item itself


def test_the_hub_table_gives_the_same_neighbourhood_ease_to_the_last_bit():
    x = random_interactions(users=200, seed=5)
    without = ease_neighbourhood(x, 3.0, 6, block_items=5, hub_items=0)
    for hubs in (1, 5, ITEMS):
        got = ease_neighbourhood(x, 3.0, 6, block_items=5, hub_items=hubs)
        assert (got != without).nnz == 0 and got.nnz == without.nnz > 0


def test_the_size_rule_picks_exact_ease_up_to_its_threshold():
    assert ease_form(100, 100) == "exact" and ease_form(101, 100) == "neighbourhood"
    assert ease_form(5, 0) == "neighbourhood"  # 0: always the scalable form
    x = random_interactions()
    small = residual_matrix(x, "ease", 10, 7.0, exact_max_items=ITEMS, neighbours=3)
    np.testing.assert_array_equal(small[1], top_n_per_row(ease_closed_form(x, 7.0), 10)[1])
    big = residual_matrix(x, "ease", 10, 7.0, exact_max_items=ITEMS - 1, neighbours=3)
    assert (dense(*big) != 0).sum(axis=0).max() <= 3  # at most K sources per target item


# ---------------------------------------------------------------------------------------------- train-only matrix
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_data(tmp_path_factory.mktemp("residual") / "tiny")


@pytest.mark.parametrize("kind, form", [("ease", "exact"), ("ease", "neighbourhood"), ("cooc", None)])
def test_the_built_models_matrix_comes_from_the_train_pairs_only(tiny, tmp_path, kind, form):
    corpus = Corpus(tiny)
    size_rule = {"exact": [], "neighbourhood": ["model.graph_residual_exact_max_items=0",
                                                "model.graph_residual_neighbours=8"], None: []}[form]
    cfg = load_config("demo", tiny_overrides(tiny, tmp_path, f"model.graph_residual={kind}", *size_rule,
                                             "model.graph_residual_topn=15", "model.graph_residual_lambda=20"))
    exact_max, k = cfg.model.graph_residual_exact_max_items, cfg.model.graph_residual_neighbours
    model = build_model(cfg, corpus)
    got = (model.graph_residual.indices.numpy(), model.graph_residual.values.numpy())
    # the train pairs read another way: the train recommendation rows' targets (not the graph edges)
    train_lists = [[] for _ in range(corpus.num_users)]
    for ex in corpus.rec_examples("train"):
        train_lists[ex.user] = list(ex.targets)
    train = to_csr(train_lists, corpus.num_items)
    want = residual_matrix(train, kind, 15, 20.0, exact_max, k)
    if form == "neighbourhood":  # the size rule picked the scalable form, and it is not the exact one
        assert ease_form(corpus.num_items, exact_max) == form
        assert not np.allclose(dense(*want), dense(*residual_matrix(train, kind, 15, 20.0)))
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    # one test pair more changes the matrix: a leak would show
    ex = next(e for e in corpus.rec_examples("test") if e.targets)
    leaked = train.tolil()
    leaked[ex.user, ex.targets[0]] = 1.0
    assert not np.array_equal(dense(*residual_matrix(leaked.tocsr(), kind, 15, 20.0, exact_max, k)), dense(*got))


def test_finetuning_learns_the_scale_and_the_best_model_keeps_the_matrix(tiny, tmp_path):
    from train.finetune import finetune
    from train.modeling_io import load_model

    cfg = load_config("demo", tiny_overrides(tiny, tmp_path, "pretrain.do_pretrain=false", "model.graph_residual=cooc",
                                             "model.graph_residual_topn=10", "finetune.epochs=1"))
    result = finetune(cfg)
    saved = json.loads((tmp_path / "finetune_result.json").read_text())  # the typed result is what the file holds
    assert saved == json.loads(json.dumps(result.to_json())) and saved["model_dir"] == result.model_dir
    assert "cold_item_map" not in saved and result.cold_item_map is None  # no new-item stage, no keys
    best = load_model(result.model_dir)
    assert best.graph_residual.scale.item() != 0.0  # started at 0, moved by the rec loss
    want = residual_matrix(Corpus(tiny).interaction_matrix("train"), "cooc", 10)
    np.testing.assert_array_equal(best.graph_residual.values.numpy(), want[1])


# ---------------------------------------------------------------------------------------------- scale chosen on validation
def test_one_pass_over_the_scales_equals_evaluating_each_scale(tiny, tmp_path):
    from accelerate import Accelerator

    from train.evaluate import evaluate_model, evaluate_residual_scales

    corpus = Corpus(tiny)
    cfg = load_config("demo", tiny_overrides(tiny, tmp_path, "model.graph_residual=ease", "model.graph_residual_topn=15",
                                             "model.graph_residual_scale_init=0.7"))
    torch.manual_seed(0)
    model = build_model(cfg, corpus).eval()
    acc = Accelerator(cpu=True)
    scales = [0.0, 0.7, 4.0]
    swept = evaluate_residual_scales(acc, model, corpus, "validation", cfg, scales)
    for s, got in zip(scales, swept):
        with torch.no_grad():
            model.graph_residual.scale.fill_(s)
        want = evaluate_model(acc, model, corpus, "validation", cfg)
        for name in ("recall@20", "recall@40", "ndcg@100"):
            assert got[name] == pytest.approx(want[name], abs=1e-9)
    assert swept[0]["recall@20"] != swept[2]["recall@20"]  # the scale matters on this data: the check can fail


def test_finetuning_chooses_the_residual_scale_on_validation_and_saves_it(tiny, tmp_path):
    from train.finetune import finetune
    from train.modeling_io import load_model

    grid = [0.0, 1.0, 3.0, 10.0]
    cfg = load_config("demo", tiny_overrides(tiny, tmp_path, "pretrain.do_pretrain=false", "model.graph_residual=ease",
                                             "model.graph_residual_topn=15", "model.graph_residual_learn_scale=false",
                                             "finetune.epochs=1", f"finetune.residual_scale_grid={grid}"))
    result = finetune(cfg)
    sweep = result.residual_scale_sweep
    assert sweep["scales"] == grid and len(sweep["values"]) == len(grid)
    assert sweep["chosen"] == grid[int(np.argmax(sweep["values"]))]
    assert load_model(result.model_dir).graph_residual.scale.item() == pytest.approx(sweep["chosen"])
    assert result.validation["recall@20"] == pytest.approx(max(sweep["values"]), abs=1e-9)


def test_a_scale_grid_needs_a_residual_and_finite_scales():
    with pytest.raises(ConfigError, match="key 'finetune.residual_scale_grid'"):
        load_config("demo", ["finetune.residual_scale_grid=[0, 1]"])
    with pytest.raises(ConfigError, match="key 'finetune.residual_scale_grid'"):
        load_config("demo", ["model.graph_residual=cooc", "finetune.residual_scale_grid=[-1]"])
