"""LoRA (--lora-r): adapters on c_attn/c_proj/c_fc, ID embeddings trained in full; adapter saves, reloads, merges."""
import pytest
import torch

from train.testing import build_tiny_data, tiny_overrides


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    from train.config import load_config
    from train.main import run_pipeline

    data = build_tiny_data(tmp_path_factory.mktemp("loradata") / "tiny")
    out = tmp_path_factory.mktemp("lorarun")
    cfg = load_config("demo", tiny_overrides(data, out, "model.lora_r=2", "finetune.epochs=1", "pretrain.rounds=0"))
    return cfg, run_pipeline(cfg), out


def test_lora_adapter_reload_and_merge_match(lora_run):
    from data_builders.corpus import Corpus
    from train.modeling_io import load_model

    cfg, result, out = lora_run
    assert (out / "pretrained" / "adapter" / "adapter_config.json").is_file()
    assert (out / "best" / "adapter" / "adapter_model.safetensors").is_file()
    merged = load_model(out / "best").eval()
    peft = load_model(out / "best" / "adapter", merge_lora=False).eval()
    assert type(peft).__name__ == "PeftModel"
    corpus = Corpus(cfg.data.folder)
    ex = corpus.rec_examples("validation")[:6]
    batch = corpus.collator(cfg.data.max_length)([{"input_ids": e.input_ids, "node_positions": e.node_positions} for e in ex])
    with torch.no_grad():
        a = merged(**batch, task="rec").scores
        b = peft(**batch, task="rec").scores
        c = peft.merge_and_unload()(**batch, task="rec").scores
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)


def test_lora_updates_are_low_rank_and_ids_train_in_full(lora_run):
    from train.modeling_io import load_model

    cfg, result, out = lora_run
    base = load_model(out / "pretrained").state_dict()  # the fine-tuning stage's starting point (merged)
    tuned = load_model(out / "best").state_dict()
    delta = tuned["transformer.h.0.attn.c_attn.weight"] - base["transformer.h.0.attn.c_attn.weight"]
    assert delta.abs().max() > 0
    assert torch.linalg.matrix_rank(delta.double(), atol=1e-6) <= cfg.model.lora_r
    # full-rank change of the ID embeddings (trained in full, not through an adapter)
    id_delta = tuned["collab_embeddings.item.weight"] - base["collab_embeddings.item.weight"]
    assert torch.linalg.matrix_rank(id_delta.double(), atol=1e-6) > cfg.model.lora_r
    # weights without an adapter and not in modules_to_save stay frozen
    assert torch.equal(tuned["transformer.wpe.weight"], base["transformer.wpe.weight"])
    assert 0.0 <= result["test"]["recall@20"] <= 1.0
