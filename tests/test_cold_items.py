"""New products (docs/model.md "New items"): the cold-item split, its leakage guards, the text map and its metrics."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data_builders.build import build
from data_builders.corpus import Corpus
from data_builders.item_text import item_token_counts
from data_builders.preprocess import build_split
from data_builders.synthetic import make_synthetic
from train.cold_items import (candidate_columns, cold_item_metrics, fit_text_map, held_out_cold_items, item_text_svd,
                              shelf_metrics, warm_item_mask)
from train.common import build_model
from train.config import ConfigError, load_config
from train.testing import tiny_build_config, tiny_overrides


@pytest.fixture(scope="module")
def cold_tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cold") / "tiny_cold"
    build(tiny_build_config(folder, users=60, items=50).replace(cold_item_frac=0.2))
    return folder


def test_no_cold_fraction_is_todays_split_bit_for_bit():
    raw = make_synthetic(num_users=60, num_items=40)
    today, zero = build_split(raw), build_split(raw, cold_item_frac=0.0)
    assert zero.manifest == today.manifest and zero.cold_items == {}
    for s in ("train", "valid", "test"):
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(today.split_lists(s), zero.split_lists(s)))


def test_cold_items_leave_training_whole_and_split_in_halves():
    raw = make_synthetic(num_users=80, num_items=50)
    split = build_split(raw, cold_item_frac=0.2)
    val_cold, test_cold = set(split.cold_items["validation"]), set(split.cold_items["test"])
    assert val_cold and test_cold and not val_cold & test_cold
    assert abs(len(val_cold | test_cold) - 0.2 * split.num_items) <= 2
    assert not {int(j) for t in split.train for j in t} & (val_cold | test_cold)
    # every interaction of a validation-cold item is in validation, of a test-cold item in test
    assert not {int(j) for t in split.test for j in t} & val_cold
    assert not {int(j) for t in split.valid for j in t} & test_cold
    assert {int(j) for t in split.valid for j in t} >= val_cold and {int(j) for t in split.test for j in t} >= test_cold
    assert all(len(t) > 0 for t in split.train)  # users left without a warm item are dropped
    again = build_split(raw, cold_item_frac=0.2)
    assert again.cold_items == split.cold_items and again.manifest["split_hash"] == split.manifest["split_hash"]
    assert split.manifest["preprocess"]["cold_item_frac"] == 0.2
    assert build_split(raw, cold_item_frac=0.2, seed=7).cold_items != split.cold_items
    with pytest.raises(ValueError, match="cold_item_frac"):
        build_split(raw, cold_item_frac=1.0)


def test_no_cold_pair_reaches_the_graph_a_prompt_or_a_residual(cold_tiny, tmp_path):
    corpus = Corpus(cold_tiny)
    cold = set(corpus.cold_items("validation").tolist()) | set(corpus.cold_items("test").tolist())
    manifest = json.loads((cold_tiny / "manifest.json").read_text())
    assert "maps/cold_items.json" in manifest["files_sha256"]
    assert not set(corpus.hops.graph.edges[:, 1].tolist()) & cold
    U = corpus.num_users
    for config in ("interactions", "second_order"):
        for row in corpus.dataset(config).to_list():
            if config == "interactions":  # interaction events: no cold item token
                assert not {p - U for p in row["node_positions"] if p >= U} & cold
    for row in corpus.dataset("recommendation", "train").to_list():
        assert not set(row["history"]) & cold and not set(row["targets"]) & cold
    for split in ("validation", "test"):
        for row in corpus.dataset("recommendation", split).to_list():
            assert not set(row["history"]) & cold  # histories are train items
    cfg = load_config("demo", tiny_overrides(cold_tiny, tmp_path, "model.graph_residual=ease", "model.graph_residual_topn=10",
                                             "model.graph_lowpass_rank=8"))
    model = build_model(cfg, corpus)
    idx, val = model.graph_residual.indices.numpy(), model.graph_residual.values.numpy()
    assert np.all(val[np.isin(idx, list(cold))] == 0)  # no train pair ties anything to a cold item
    cold_idx = np.asarray(sorted(cold))
    assert np.all(model.graph_lowpass.sqrt_degree.numpy()[cold_idx] == 0)
    assert not warm_item_mask(corpus)[cold_idx].any()


def test_the_text_map_recovers_a_linear_map_and_the_shelf_ranks_only_the_candidates():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((40, 6))
    true_w, true_b = rng.standard_normal((6, 4)), rng.standard_normal(4)
    rows = vectors @ true_w + true_b
    fit = np.arange(40) < 30
    w, b = fit_text_map(vectors, rows, fit, alpha=1e-9)
    np.testing.assert_allclose(vectors[~fit] @ w + b, rows[~fit], atol=1e-6)
    candidates = np.asarray([7, 3, 9])
    assert [c.tolist() for c in candidate_columns([[9, 1], [3]], candidates)] == [[2], [1]]
    scores = np.asarray([[0.0, 1.0, 2.0], [5.0, 4.0, 3.0]])  # user 0 ranks item 9 first; user 1 ranks item 3 2nd
    m = shelf_metrics(scores, candidates, [np.asarray([9]), np.asarray([3])], ks=[1], ndcg_ks=[3])
    assert m["recall@1"] == pytest.approx(0.5) and m["num_users"] == 2
    assert m["ndcg@3"] == pytest.approx((1.0 + 1 / np.log2(3)) / 2)


def test_finetuning_maps_the_cold_rows_from_text_and_reports_the_shelf(cold_tiny, tmp_path):
    from train.finetune import finetune
    from train.modeling_io import load_model

    cfg = load_config("demo", tiny_overrides(cold_tiny, tmp_path, "pretrain.do_pretrain=false", "finetune.epochs=1",
                                             "model.cold_item_map_rank=16", "finetune.cold_map_alpha_grid=[0.5, 5]",
                                             "finetune.cold_item_text_scale_grid=[0, 3]",
                                             "model.cold_item_neighbours=4", "finetune.cold_item_transfer_grid=[0, 2]",
                                             "finetune.cold_item_offset_grid=[0, 0.5, 50]",
                                             "finetune.cold_item_gain_grid=[1, 3]",
                                             "finetune.cold_item_neighbour_power_grid=[1, 3]"))
    result = finetune(cfg)
    sweep = result.cold_item_map
    best_value = max(v for *_, v in sweep["values"])
    first_best = next((a, s, t, p) for a, s, t, p, v in sweep["values"] if v == best_value)
    # (alpha, scale, transfer) at the first power, then (power, scale, transfer) at the alpha chosen there
    first_stage = [(a, s, t, 1) for a in (0.5, 5) for s in (0, 3) for t in (0, 2)]
    stage_values = [v for *_, v in sweep["values"][:len(first_stage)]]
    alpha = first_stage[stage_values.index(max(stage_values))][0]
    assert [tuple(row[:4]) for row in sweep["values"]] == first_stage + [(alpha, s, t, 3) for s in (0, 3) for t in (0, 2)]
    chosen = sweep["chosen"]
    assert (chosen["alpha"], chosen["scale"], chosen["transfer"], chosen["power"]) == first_best
    corpus = Corpus(cold_tiny)
    best = load_model(result.model_dir)
    rows = best.id_embeddings("collab").item.weight.detach().numpy()
    vectors, idf, basis = item_text_svd(corpus, 16, cfg.seed)
    warm, cold = warm_item_mask(corpus), held_out_cold_items(corpus)
    # the saved cold rows are the chosen map of their text, fitted on the (unchanged) warm rows, times the gain: the
    # chosen multiple of the one that puts the transfer at weight 1 (1 without a transfer); the stored map gives the
    # same rows from the items' token counts
    assert best.config.cold_item_neighbour_power == chosen["power"] == best.cold_item_map.neighbour_power
    # the whole-shop validation metric per (multiple, offset), every target and warm targets only; 50 pushes every
    # cold item last, which keeps the warm targets' metric at the shop's without new items
    shop = sweep["shop_values"]
    assert [(m, d) for m, d, _, _ in shop[:-1]] == [(m, d) for m in (1, 3) for d in (0, 0.5, 50)]
    without = sweep["shop_warm_without_new_items"]
    assert all(w == pytest.approx(without) for m, d, _, w in shop if d == 50)
    assert shop[-1][0] == 1 and shop[-1][3] == without  # the guard pair: the warm targets as without new items
    kept = [row for row in shop if row[3] >= (1 - cfg.finetune.cold_item_warm_tolerance) * without]
    multiple, offset = max(kept, key=lambda row: row[2])[:2]
    gain = multiple / chosen["transfer"] if chosen["transfer"] else multiple
    assert chosen["gain"] == pytest.approx(gain) and chosen["offset"] == offset
    w, b = fit_text_map(vectors, rows, warm, chosen["alpha"])
    np.testing.assert_allclose(rows[cold], gain * (vectors[cold] @ w + b), rtol=1e-4, atol=1e-5)
    lever = best.cold_item_map
    assert lever.fitted() and lever.scale.item() == pytest.approx(gain * chosen["scale"])
    assert lever.offset.item() == offset
    assert lever.cold.numpy()[cold].all() and lever.cold.sum().item() == len(cold)  # the term reaches cold items only
    # each cold item's neighbours: its 4 nearest warm items by the cosine of the unit text vectors, cosine-weighted
    assert lever.transfer_weight.item() == pytest.approx(gain * chosen["transfer"])
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-30)
    cosines = np.where(warm[None, :], unit[cold] @ unit.T, -np.inf)
    nearest = np.sort(cosines, axis=1)[:, ::-1][:, :4]
    stored = lever.neighbour_weights.numpy()[cold]
    np.testing.assert_allclose(stored, np.maximum(nearest, 0), atol=1e-5)
    assert warm[lever.neighbours.numpy()[cold]].all()
    assert not lever.neighbour_weights.numpy()[warm].any()
    counts = torch.from_numpy(item_token_counts(corpus)[cold].toarray())
    np.testing.assert_allclose(lever.rows(counts).detach().numpy(), rows[cold], rtol=1e-3, atol=1e-4)
    shelf = result.cold_items_test["shelf"]
    assert 0 <= shelf["recall@20"] <= 1 and shelf["num_users"] > 0
    assert result.cold_items_test["shop_warm"]["num_users"] > 0
    assert result.cold_items_test["catalog_warm"]["num_users"] == result.cold_items_test["shop_warm"]["num_users"]


def test_the_guard_offset_keeps_the_warm_ranking_when_no_grid_pair_does(cold_tiny, tmp_path):
    """An offset grid that lifts every cold item above the catalog (-50) leaves no pair within the warm tolerance:
    the guard pair is chosen, and the validation whole shop's warm targets then score as without the new items."""
    from accelerate import Accelerator

    from train.finetune import finetune
    from train.modeling_io import load_model

    cfg = load_config("demo", tiny_overrides(cold_tiny, tmp_path, "pretrain.do_pretrain=false", "finetune.epochs=1",
                                             "model.cold_item_map_rank=16", "model.cold_item_neighbours=4",
                                             "finetune.cold_item_offset_grid=[-50]", "finetune.cold_item_gain_grid=[1]"))
    result = finetune(cfg)
    shop, chosen = result.cold_item_map["shop_values"], result.cold_item_map["chosen"]
    without = result.cold_item_map["shop_warm_without_new_items"]
    assert shop[0][3] < (1 - cfg.finetune.cold_item_warm_tolerance) * without  # the grid's pair costs the warm targets
    assert chosen["offset"] == shop[-1][1] > 0
    validation = cold_item_metrics(Accelerator(cpu=True), load_model(result.model_dir).eval(), Corpus(cold_tiny),
                                   "validation", cfg)
    assert validation["shop_warm"] == validation["catalog_warm"]


def test_the_shelf_per_user_values_average_to_its_metrics(cold_tiny, tmp_path):
    """``cold_item_metrics(per_user=True)`` (the paired bootstrap's input) keeps each user's shelf values once, and
    they average to the reported shelf metrics."""
    from accelerate import Accelerator

    from train.finetune import finetune
    from train.modeling_io import load_model

    cfg = load_config("demo", tiny_overrides(cold_tiny, tmp_path, "pretrain.do_pretrain=false", "finetune.epochs=1",
                                             "model.cold_item_map_rank=16"))
    model = load_model(finetune(cfg).model_dir).eval()
    shelf = cold_item_metrics(Accelerator(cpu=True), model, Corpus(cold_tiny), "test", cfg, per_user=True)["shelf"]
    kept = shelf["per_user"]["num_relevant"] > 0
    assert shelf["num_users"] == kept.sum() > 0 and len(np.unique(shelf["users"])) == len(shelf["users"])
    for key in ("recall@20", "ndcg@100"):
        assert shelf["per_user"][key][kept].mean() == pytest.approx(shelf[key], abs=1e-12)


def test_a_folder_without_item_text_says_its_cold_items_cannot_be_scored(tmp_path):
    folder = tmp_path / "no_text"
    build(tiny_build_config(folder, users=60, items=50).replace(cold_item_frac=0.2, prompts=("second_order", "interactions", "recommendation")))
    from train.finetune import finetune

    cfg = load_config("demo", tiny_overrides(folder, tmp_path / "run", "pretrain.do_pretrain=false", "finetune.epochs=1",
                                             "data.pretrain_configs=[second_order]", "model.cold_item_map_rank=16"))
    result = finetune(cfg)
    assert "no item text" in result.cold_item_map["skipped"]
    assert result.cold_items_test is None
    cfg = load_config("demo", tiny_overrides(folder, tmp_path / "run0", "pretrain.do_pretrain=false", "finetune.epochs=1",
                                             "data.pretrain_configs=[second_order]", "model.cold_item_map_rank=0"))
    assert "cold_item_map_rank is 0" in finetune(cfg).cold_item_map["skipped"]


def test_the_alpha_grid_is_checked():
    with pytest.raises(ConfigError, match="finetune.cold_map_alpha_grid"):
        load_config("demo", ["finetune.cold_map_alpha_grid=[0]"])


@pytest.fixture(scope="module")
def cold_hub(cold_tiny, tmp_path_factory):
    """A published folder of a tiny run on the cold-item folder, with the text map and the scalable (neighbourhood)
    EASE residual at a fixed non-zero scale."""
    from train.main import run_pipeline

    out = tmp_path_factory.mktemp("cold_run")
    cfg = load_config("demo", tiny_overrides(cold_tiny, out, "pretrain.do_pretrain=false", "finetune.epochs=1",
                                             "model.cold_item_map_rank=16", "finetune.cold_item_text_scale_grid=[2]",
                                             "finetune.cold_item_offset_grid=[0.3]", "model.cold_item_neighbours=5",
                                             "finetune.cold_item_transfer_grid=[1.5]", "finetune.cold_item_gain_grid=[1]",
                                             "finetune.cold_item_neighbour_power_grid=[2]",
                                             "model.graph_residual=ease", "model.graph_residual_exact_max_items=0",
                                             "model.graph_residual_neighbours=8", "model.graph_residual_topn=15",
                                             "model.graph_residual_learn_scale=false", "finetune.residual_scale_grid=[1]"))
    result = run_pipeline(cfg, command="pytest cold hub")
    return cfg, Corpus(cold_tiny), Path(result["paths"]["hub_model"])


def _catalog_item_as_new(corpus: Corpus, j: int, new_id: str) -> dict:
    """Item j's metadata as a new item (read again from the synthetic source the folder was built from)."""
    from data_builders.build import read_raw

    meta = read_raw(tiny_build_config("unused", users=60, items=50)).items[corpus.item_ids[j]]
    return {"id": new_id, "title": meta.title, "brand": meta.brand, "categories": list(meta.categories),
            "description": meta.description, "price": meta.price}


def test_a_new_item_gets_the_score_the_model_gives_it_in_evaluation(cold_hub):
    """A held-out cold item of the test split, sent to the pipeline as a new product with its metadata: its row from
    the stored text map equals its row in the table and its text term is the cold item's, so its score equals the
    model's score for that item in evaluation (the term's scale 2 and the text neighbours' weight 1.5,
    both times the gain 1 / 1.5, their cosines squared, and a positive offset, so all count)."""
    from transformers import pipeline

    from train.evaluate import rec_rows
    from train.modeling_io import load_model
    from train.recommend import Recommender

    cfg, corpus, folder = cold_hub
    pipe = pipeline("graph-recommendation", model=str(folder), trust_remote_code=True)
    assert pipe.model.cold_item_map.scale.item() == pytest.approx(2.0 / 1.5)  # the gain 1 / 1.5 puts the
    assert pipe.model.cold_item_map.transfer_weight.item() == 1.0  # transfer at weight 1
    assert pipe.model.cold_item_map.offset.item() > 0  # 0.3 or the guard's (the one that keeps the warm targets)
    assert pipe.model.cold_item_map.neighbour_power == 2.0
    cold = int(corpus.cold_items("test")[0])
    new = _catalog_item_as_new(corpus, cold, "NEW-1")
    ex = corpus.rec_examples("test")[0]
    top = corpus.num_items + 1
    answer = pipe({"user": corpus.user_ids[ex.user]}, top_k=top, new_items=[new])
    by_id = {r["item_id"]: r for r in answer}
    assert by_id["NEW-1"]["new"] is True and "new" not in by_id[corpus.item_ids[cold]]
    model = load_model(folder).eval()
    batch = corpus.collator(cfg.data.max_length)(rec_rows(corpus, [ex], cfg.data.max_length))
    with torch.no_grad():
        scores = model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "hop_distances")}, task="rec").scores[0]
    assert by_id["NEW-1"]["score"] == pytest.approx(float(scores[cold]), abs=1e-4)
    assert by_id[corpus.item_ids[cold]]["score"] == pytest.approx(float(scores[cold]), abs=1e-5)
    # train.recommend ranks it the same way
    rec = Recommender.from_folder(folder)
    rec.add_new_items([new])
    (recs,) = rec.recommend_users([ex.user], k=top)
    mine = dict(recs)
    assert mine[corpus.num_items] == pytest.approx(by_id["NEW-1"]["score"], abs=1e-5)
    with pytest.raises(ValueError, match="neither in the catalog"):
        pipe({"user": corpus.user_ids[ex.user]}, new_items=[{**new, "id": corpus.item_ids[0]}])
    with pytest.raises(ValueError, match="no text"):
        pipe({"user": corpus.user_ids[ex.user]}, new_items=[{"id": "NEW-2"}])


def test_the_pipelines_item_text_counts_like_the_build(cold_hub):
    """ItemText (remote code) gives the counts item_token_counts reads from the content prompts, for every item."""
    from modeling_graphgpt2.pipeline_graphgpt2 import ItemText

    _, corpus, _ = cold_hub
    prompts = corpus.manifest["prompts"]
    text = ItemText(corpus.tokenizer, corpus.base_vocab_size, prompts["max_length"], prompts["content_fields"])
    items = [_catalog_item_as_new(corpus, j, f"N{j}") for j in range(corpus.num_items)]
    np.testing.assert_array_equal(text.counts(items), item_token_counts(corpus).toarray())
    # text that looks like ID or special tokens is rewritten as the build's clean_text rewrites it
    from data_builders.textclean import clean_text

    title = "item_5 and user_7 <|endoftext|> strings"
    cleaned = clean_text(" " + title)[0]
    expected = np.bincount(corpus.tokenizer(cleaned, add_special_tokens=False)["input_ids"], minlength=corpus.base_vocab_size)
    assert cleaned != " " + title
    np.testing.assert_array_equal(text.counts([{"id": "X", "title": title}])[0], expected[:corpus.base_vocab_size])


def test_a_model_without_the_text_map_says_it_cannot_take_new_items(tmp_path):
    """A folder published without the map (cold_item_map_rank 0, or older folders) loads and answers as before;
    asking it for new items is a named error."""
    from transformers import pipeline

    from train.main import run_pipeline
    from train.testing import build_tiny_data

    data = build_tiny_data(tmp_path / "data")
    cfg = load_config("demo", tiny_overrides(data, tmp_path / "run", "pretrain.do_pretrain=false", "finetune.epochs=1"))
    folder = Path(run_pipeline(cfg, command="pytest no map")["paths"]["hub_model"])
    pipe = pipeline("graph-recommendation", model=str(folder), trust_remote_code=True)
    user = Corpus(data).user_ids[0]
    assert len(pipe({"user": user}, top_k=3)) == 3
    with pytest.raises(ValueError, match="cannot take new items: its config has cold_item_map_rank 0"):
        pipe({"user": user}, new_items=[{"id": "NEW", "title": "a new guitar"}])


def test_the_neighbourhood_residual_and_the_map_reload_strictly_and_run_as_remote_code(cold_hub, tmp_path):
    """The published model with the scalable residual and the cold-item lever: strict reload, and transformers' remote
    code in a process that cannot import this package gives the package's scores, new items included."""
    import os
    import subprocess
    import sys
    import textwrap

    from isolation import BLOCK_PACKAGE
    from modeling_graphgpt2 import GraphGPT2ForRecommendation
    from train.evaluate import rec_rows

    cfg, corpus, folder = cold_hub
    model, info = GraphGPT2ForRecommendation.from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert model.config.graph_residual_exact_max_items == 0 and model.graph_residual.scale.item() == 1.0
    rows = rec_rows(corpus, corpus.rec_examples("test")[:6], cfg.data.max_length)
    batch = {k: v for k, v in corpus.collator(cfg.data.max_length)(rows).items() if k in ("input_ids", "attention_mask", "hop_distances")}
    counts = torch.from_numpy(item_token_counts(corpus)[:3].toarray())
    with torch.no_grad():
        expected = model.eval().recommend(**batch, k=corpus.num_items + 3, new_item_counts=counts).scores
    torch.save({"batch": batch, "counts": counts}, tmp_path / "inputs.pt")
    script = textwrap.dedent(f"""
        import json, sys, torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        data = torch.load({str(tmp_path / 'inputs.pt')!r})
        rec = model.recommend(**data["batch"], k={corpus.num_items + 3}, new_item_counts=data["counts"])
        print(json.dumps(rec.scores.tolist()))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", BLOCK_PACKAGE + script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = torch.tensor(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert torch.allclose(remote, expected, atol=1e-5)


def test_a_cold_item_gets_its_text_neighbours_mean_score_and_a_warm_item_nothing():
    """The neighbour transfer: with the map at 0 and no text term, a cold item's score is transfer_weight times the
    cosine-weighted mean of its neighbours' scores before the lever (minus the offset); warm scores are unchanged;
    a model without `cold_item_neighbours` has no such buffers (its state dict is the old one)."""
    from modeling_graphgpt2 import GraphGPT2Config, GraphGPT2ForRecommendation

    fields = dict(num_users=3, num_items=6, base_vocab_size=40, n_layer=1, n_embd=8, n_head=2, n_positions=16,
                  cold_item_map_rank=4)
    assert not any("neighbour" in k for k in GraphGPT2ForRecommendation(GraphGPT2Config(**fields)).state_dict())
    torch.manual_seed(0)
    model = GraphGPT2ForRecommendation(GraphGPT2Config(**fields, cold_item_neighbours=2)).eval()
    lever = model.cold_item_map
    item_text = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    cold = torch.tensor([0, 0, 0, 0, 1, 1], dtype=torch.float32)
    neighbours = torch.tensor([[0, 0]] * 4 + [[1, 3], [2, 0]])
    weights = torch.tensor([[0.0, 0.0]] * 4 + [[0.6, 0.2], [0.5, 0.5]])
    lever.set_tables(torch.ones(40), torch.zeros(40, 4), torch.zeros(4, 8), torch.zeros(8), item_text, cold,
                     neighbours, weights)
    ids = torch.tensor([[40 + 3 + 1, 40 + 3 + 2]])  # a prompt of items 1 and 2
    before = model(ids, task="rec").scores
    with torch.no_grad():
        lever.transfer_weight.fill_(3.0)
        lever.offset.fill_(0.5)
    after = model(ids, task="rec").scores
    torch.testing.assert_close(after[:, :4], before[:, :4])
    expected_4 = before[0, 4] - 0.5 + 3.0 * (0.6 * before[0, 1] + 0.2 * before[0, 3]) / 0.8
    expected_5 = before[0, 5] - 0.5 + 3.0 * (before[0, 2] + before[0, 0]) / 2
    torch.testing.assert_close(after[0, 4:], torch.stack([expected_4, expected_5]))
    lever.neighbour_power = 2.0  # the cosines squared: item 4 leans further on its nearer neighbour
    squared = model(ids, task="rec").scores
    expected_4 = before[0, 4] - 0.5 + 3.0 * (0.36 * before[0, 1] + 0.04 * before[0, 3]) / 0.4
    torch.testing.assert_close(squared[0, 4:], torch.stack([expected_4, expected_5]))
    with pytest.raises(ValueError, match="neighbours must be item indices"):
        lever.set_tables(torch.ones(40), torch.zeros(40, 4), torch.zeros(4, 8), torch.zeros(8), item_text, cold,
                         neighbours + 6, weights)
