"""Ablation switches run end to end through run_pipeline (the benchmark harness's entry point)."""
import json

import pytest
import torch

from train.testing import build_tiny_data, tiny_overrides


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_tiny_data(tmp_path_factory.mktemp("abl") / "tiny")


def test_nofinetune_evaluates_the_pretrained_model(data, tmp_path):
    from train.config import load_config
    from train.main import run_pipeline
    from train.modeling_io import load_model

    cfg = load_config("demo", tiny_overrides(data, tmp_path, "finetune.do_finetune=false", "pretrain.rounds=0"))
    result = run_pipeline(cfg)
    assert result["best_epoch"] == -1 and result["test"]["num_users"] == 41
    pre, best = load_model(tmp_path / "pretrained").state_dict(), load_model(tmp_path / "best").state_dict()
    assert all(torch.equal(pre[k], best[k]) for k in pre)
    log = [json.loads(l) for l in (tmp_path / "logs" / "train_log.jsonl").read_text().splitlines()]
    assert not [r for r in log if r["stage"] == "finetune"]


def test_nopretrain_and_no_graph_bias(data, tmp_path):
    from train.config import load_config
    from train.main import run_pipeline

    cfg = load_config("demo", tiny_overrides(data, tmp_path, "pretrain.do_pretrain=false", "model.graph_bias=none",
                                             "finetune.epochs=1"))
    result = run_pipeline(cfg)
    assert not (tmp_path / "pretrained").exists()
    assert json.loads((tmp_path / "hub_model" / "config.json").read_text())["graph_bias"] == "none"
    assert 0 <= result["test"]["recall@20"] <= 1
    # the switch reached the model: its scores ignore the hop distances, which the same weights under the
    # "paper" bias do not
    from modeling_graphgpt2 import GraphGPT2Config, GraphGPT2ForRecommendation
    from data_builders.corpus import Corpus
    from train.modeling_io import load_model

    model = load_model(tmp_path / "best").eval()
    assert not any(".graph_bias." in n for n, _ in model.named_parameters())
    corpus = Corpus(data)
    rows = [{"input_ids": e.input_ids, "node_positions": e.node_positions} for e in corpus.rec_examples("test")[:6]]
    batch = corpus.collator(96)(rows)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    # (compared on the item logits of every position: with one layer the last token's rec score cannot see the
    # bias, which only acts between two ID tokens)
    with torch.no_grad():
        plain = model(**inputs, task="collab").logits
        assert torch.equal(model(**inputs, hop_distances=batch["hop_distances"], task="collab").logits, plain)
        biased = GraphGPT2ForRecommendation(GraphGPT2Config(**{**model.config.to_dict(), "graph_bias": "paper"}))
        biased.load_state_dict(model.state_dict())
        assert not torch.allclose(biased.eval()(**inputs, hop_distances=batch["hop_distances"], task="collab").logits, plain)
    # a second fresh run in the same folder retrains (new files) instead of picking up the first run's selected
    # model or checkpoints, and the same seed gives the same metrics
    first_write = (tmp_path / "best" / "model.safetensors").stat().st_mtime_ns
    result2 = run_pipeline(cfg)
    assert (tmp_path / "best" / "model.safetensors").stat().st_mtime_ns != first_write
    assert result2["test"] == result["test"]
