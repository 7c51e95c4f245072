"""Smoke test of the stage scripts as a user runs them: pre-training and evaluation with python, fine-tuning with
LoRA under `accelerate launch` (the scripts are run as files, not modules)."""
import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest

from train.testing import build_tiny_data, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", ACCELERATE_USE_CPU="1")
    env.pop("GRAPHGPT2_KILL_AFTER_STEP", None)
    env.pop("PYTHONPATH", None)  # the installed package, as after `pip install -e .`
    return env


def _run(cmd, timeout=300):
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd[:4]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    data = build_tiny_data(tmp_path_factory.mktemp("stagedata") / "tiny")
    out = tmp_path_factory.mktemp("stages")
    overrides = tiny_overrides(data, out, "pretrain.rounds=0", "finetune.epochs=1")
    pre = _run([sys.executable, "train/pretrain.py", "--config", "demo", *overrides])
    fin = _run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "train/finetune.py", "--config", "demo", "--lora-r", "2", *overrides])
    ev = _run([sys.executable, "train/evaluate.py", "--config", "demo", "--split", "validation", *overrides])
    return out, pre, fin, ev


def test_pretrain_script_writes_the_pretrained_model(stages):
    out, pre, *_ = stages
    assert (out / "pretrained" / "config.json").is_file() and (out / "pretrained" / "model.safetensors").is_file()
    assert re.search(r"^pre-training: 20 steps in \d+ s, last loss \d+\.\d{4}; model in .*pretrained$", pre.stdout, re.M)
    assert "{'" not in pre.stdout  # a sentence, not a dict repr
    log = [json.loads(l) for l in (out / "logs" / "train_log.jsonl").read_text().splitlines()]
    assert {r["task"] for r in log if r["stage"] == "pretrain"} == {"content"}


def test_finetune_script_under_accelerate_with_lora(stages):
    out, _, fin, _ = stages
    result = json.loads((out / "finetune_result.json").read_text())
    assert result["best_epoch"] == 0 and result["test"]["num_users"] == 41
    assert (out / "best" / "adapter" / "adapter_config.json").is_file()  # LoRA adapter saved beside the merged model
    assert json.loads((out / "best" / "adapter" / "adapter_config.json").read_text())["r"] == 2


def test_evaluate_script_scores_the_selected_model(stages):
    out, _, _, ev = stages
    metrics = json.loads((out / "eval_validation.json").read_text())
    result = json.loads((out / "finetune_result.json").read_text())
    for key in ("recall@20", "recall@40", "ndcg@100"):
        assert metrics[key] == pytest.approx(result["validation"][key], abs=1e-12)
    assert "Popularity" in (out / "eval_validation.md").read_text()


def test_a_stage_script_tears_down_its_process_group_even_when_it_fails(tmp_path):
    """accelerate launch opens a process group; a rank that exits with it open can abort at teardown."""
    import torch.distributed as dist

    from train.cli_args import run_stage

    for body, code in ((lambda: 0, 0), (lambda: (_ for _ in ()).throw(ValueError("bad input")), 2)):  # 2: a user error
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / f'store{code}'}", rank=0, world_size=1)
        assert dist.is_initialized()
        assert run_stage(body, debug=False) == code
        assert not dist.is_initialized()
