"""Batched, gathered evaluation equals scoring the whole matrix at once with train.metrics; popularity row."""
import numpy as np
import pytest
import torch

from train.testing import build_tiny_data


def test_evaluate_model_matches_one_shot_metrics(tmp_path):
    from accelerate import Accelerator

    from train.common import build_model
    from train.config import load_config
    from data_builders.corpus import Corpus
    from train.evaluate import evaluate_model, metrics_table, popularity_metrics
    from train.metrics import evaluate_scores

    data = build_tiny_data(tmp_path / "tiny")
    cfg = load_config("demo", [f"data.folder={data}", "data.max_length=96", "model.n_layer=1", "model.n_embd=16",
                               "model.n_head=2", "model.n_positions=128", "eval.batch_size=7"])
    corpus = Corpus(data)
    torch.manual_seed(0)
    model = build_model(cfg, corpus).eval()
    acc = Accelerator(cpu=True)
    got = evaluate_model(acc, model, corpus, "test", cfg)

    ex = corpus.rec_examples("test")
    batch = corpus.collator(96)([{"input_ids": e.input_ids, "node_positions": e.node_positions} for e in ex])
    with torch.no_grad():
        scores = model(**batch, task="rec").scores.numpy()
    want = evaluate_scores(scores, [np.array(e.targets) for e in ex], [np.array(corpus.train_items()[e.user]) for e in ex])
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    assert sorted(got["users"]) == sorted(e.user for e in ex)
    pop = popularity_metrics(corpus, "test", cfg)
    assert 0 < pop["recall@20"] <= 1 and pop["num_users"] == len(ex)
    table = metrics_table({"GraphGPT2": got, "Popularity": pop}, ["recall@20", "ndcg@100"])
    assert table.splitlines()[0] == "| model | recall@20 | ndcg@100 | users |" and len(table.splitlines()) == 4


def test_masked_prompts_follow_cllm4rec(tmp_path):
    from data_builders.corpus import Corpus
    from train.finetune import masked_prompts

    corpus = Corpus(build_tiny_data(tmp_path / "tiny"))
    ex = corpus.rec_examples("train")
    rows0 = masked_prompts(corpus, ex, 0.2, seed=0, epoch=0, max_length=96)
    again = masked_prompts(corpus, ex, 0.2, seed=0, epoch=0, max_length=96)
    rows1 = masked_prompts(corpus, ex, 0.2, seed=0, epoch=1, max_length=96)
    assert [r["input_ids"] for r in rows0] == [r["input_ids"] for r in again]  # (seed, epoch) fixes the mask
    assert [r["input_ids"] for r in rows0] != [r["input_ids"] for r in rows1]  # re-masked every epoch
    base, users = corpus.base_vocab_size, corpus.num_users
    for r in rows0:
        shown = [t - base - users for t in r["input_ids"] if t >= base + users]
        n = len(r["targets"])
        assert len(shown) == n - min(max(1, int(0.2 * n)), n - 1)  # max(1, int(0.2 n)) removed
        assert set(shown) < set(r["targets"])  # target = ALL train items, including the shown ones


def test_visible_target_weight_weighs_the_items_left_in_the_prompt(tmp_path):
    """finetune.visible_target_weight: the items still shown in the prompt weigh w in the target, the removed
    ones 1; the same mask as w = 1 (which adds no weights); the collator writes the weights into target_items."""
    from data_builders.corpus import Corpus
    from train.finetune import masked_prompts

    corpus = Corpus(build_tiny_data(tmp_path / "tiny"))
    ex = corpus.rec_examples("train")
    plain = masked_prompts(corpus, ex, 0.2, seed=0, epoch=0, max_length=96)
    weighted = masked_prompts(corpus, ex, 0.2, seed=0, epoch=0, max_length=96, visible_weight=0.25)
    assert all("target_weights" not in r for r in plain)
    assert [r["input_ids"] for r in plain] == [r["input_ids"] for r in weighted]
    base, users = corpus.base_vocab_size, corpus.num_users
    batch = corpus.collator(96)(weighted)
    for b, r in enumerate(weighted):
        shown = {t - base - users for t in r["input_ids"] if t >= base + users}
        want = {item: (0.25 if item in shown else 1.0) for item in r["targets"]}
        assert dict(zip(r["targets"], r["target_weights"])) == want
        row = batch["target_items"][b].numpy()
        assert all(row[item] == w for item, w in want.items()) and row.sum() == pytest.approx(sum(want.values()))


def test_visible_target_weight_is_checked():
    from train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="finetune.visible_target_weight"):
        load_config("demo", ["finetune.visible_target_weight=1.5"])


def test_evaluation_batches_come_from_length_sorted_chunks():
    from types import SimpleNamespace

    from train.evaluate import example_batches, length_sorted

    chunks = [[SimpleNamespace(row=r, input_ids=[0] * n) for r, n in enumerate(lengths)] for lengths in ([5, 2, 9, 2], [7, 1])]
    batches = list(example_batches(length_sorted(chunks), 3))
    assert [[ex.row for ex in b] for b in batches] == [[1, 3, 0], [2, 1, 0]]  # stable within a chunk, every row once
    assert [[len(ex.input_ids) for ex in b] for b in batches] == [[2, 2, 5], [9, 1, 7]]


def test_the_scale_sweeps_score_a_seeded_sample_above_the_size_rule(tmp_path):
    """Above ``finetune.sweep_max_users`` validation users, the sweeps rank a seeded sample of that many: the sweep's
    metrics are those of the model on exactly those users; at or below it, every user."""
    from accelerate import Accelerator

    from data_builders.corpus import Corpus
    from train.common import build_model
    from train.config import ConfigError, load_config
    from train.evaluate import ModelScorer, evaluate_residual_scales, evaluate_scorer
    from train.finetune import sweep_rows

    data = build_tiny_data(tmp_path / "tiny")
    over = ["model.n_layer=1", "model.n_embd=16", "model.n_head=2", "model.graph_residual=ease", "eval.batch_size=4"]
    corpus = Corpus(data)
    num_rows = corpus.num_rows("recommendation", "validation")
    cfg = load_config("demo", [f"data.folder={data}", *over, "finetune.sweep_max_users=5"])
    rows = sweep_rows(corpus, cfg)
    assert len(rows) == len(np.unique(rows)) == 5 and np.all(np.diff(rows) > 0) and rows.max() < num_rows
    assert np.array_equal(rows, sweep_rows(corpus, cfg))  # seeded
    for cap in (0, num_rows):
        assert sweep_rows(corpus, load_config("demo", [f"data.folder={data}", f"finetune.sweep_max_users={cap}"])) is None
    with pytest.raises(ConfigError, match="finetune.sweep_max_users"):
        load_config("demo", [f"data.folder={data}", "finetune.sweep_max_users=-1"])

    torch.manual_seed(0)
    model = build_model(cfg, corpus).eval()
    acc = Accelerator(cpu=True)
    swept = evaluate_residual_scales(acc, model, corpus, "validation", cfg, [0.0, 1.0], only_rows=rows)
    users = {ex.row: ex.user for ex in corpus.rec_examples("validation")}
    assert swept[0]["num_users"] == 5 and swept[0]["users"] == [users[r] for r in rows]
    with torch.no_grad():
        model.graph_residual.scale.fill_(1.0)
    plain = evaluate_scorer(acc, ModelScorer(acc, model, corpus, cfg), corpus, "validation", cfg, only_rows=rows)[0]
    for key in ("recall@20", "ndcg@100"):
        assert swept[1][key] == pytest.approx(plain[key], abs=1e-6), key
    every = evaluate_scorer(acc, ModelScorer(acc, model, corpus, cfg), corpus, "validation", cfg)[0]
    assert every["num_users"] == num_rows > 5
