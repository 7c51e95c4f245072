"""Polish of a run's output: checkpoints store tied weights once without the "Removed shared tensor" warning,
model loading prints no progress bars, the published tokenizer is a standard fast tokenizer (no remote code)."""
import logging

import torch
from safetensors import safe_open

from modeling_graphgpt2 import GraphGPT2Config, GraphGPT2ForRecommendation


def _tiny_model():
    cfg = GraphGPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32, base_vocab_size=50, num_users=3, num_items=4)
    return GraphGPT2ForRecommendation(cfg)


def test_checkpoint_keeps_tied_head_once_without_warning(tmp_path, caplog):
    from accelerate import Accelerator

    from train.checkpointing import load_checkpoint, save_checkpoint

    acc = Accelerator(cpu=True)
    model = _tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, opt = acc.prepare(model, opt)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.WARNING):
        path = save_checkpoint(acc, tmp_path, 0, {"epoch": 0})
    assert not [r for r in caplog.records if "shared tensor" in r.getMessage()]
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "transformer.wte.weight" in keys and "lm_head.weight" not in keys
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    load_checkpoint(acc, path)  # strict: a missing key is accepted only because it aliases wte
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_load_model_prints_no_progress_bars(tmp_path, capsys):
    from transformers.utils import logging as hf_logging

    from train.modeling_io import load_model

    _tiny_model().save_pretrained(str(tmp_path / "m"))
    capsys.readouterr()
    load_model(tmp_path / "m")
    captured = capsys.readouterr()
    assert "Loading weights" not in captured.err + captured.out
    assert hf_logging.is_progress_bar_enabled()  # restored for everything else
