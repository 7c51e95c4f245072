"""Issue "A user's first hour": the CLI explains itself, output is lines a person reads, the Hub page has the fields
the Hub reads, the tokenizer and the bare model follow the conventions. (The bare-model path equal to the pipeline
is tested over HTTP in tests/test_hub_use.py::test_card_snippets_run_verbatim_without_the_package.)"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train.config import CONFIG_DIR, PRESETS
from train.testing import build_tiny_data, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run through the CLI with its output redirected (as a log file gets it): (stdout, stderr, hub folder)."""
    root = tmp_path_factory.mktemp("first-hour")
    data = build_tiny_data(root / "data")
    proc = subprocess.run([sys.executable, "-m", "train.main", "run", "--config", "demo",
                           *tiny_overrides(data, root / "run", "pretrain.do_pretrain=false", "finetune.epochs=1")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, proc.stderr, root / "run" / "hub_model"


# ------------------------------------------------------------------------------------------ the CLI
def test_top_level_help_lists_commands_presets_keys_and_an_example(capsys):
    from train.main import cli

    assert cli(["--help"]) == 0
    text = capsys.readouterr().out
    assert {p.stem for p in CONFIG_DIR.glob("*.yaml")} == set(PRESETS) and len(PRESETS) >= 7
    for word in ("demo", "run", *PRESETS, "data.folder=PATH", "output.dir=PATH", "example:", "train/pretrain.py"):
        assert word in text, word
    assert cli([]) == 2 and "commands:" in capsys.readouterr().err
    assert cli(["frobnicate"]) == 2 and "unknown command 'frobnicate'" in capsys.readouterr().err


def _parser(module: str) -> argparse.ArgumentParser:
    """The stage script's parser, captured from its main() (parse_args is stopped at --help)."""
    import importlib

    captured = {}
    original = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        captured["parser"] = self
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = capture
    try:
        with pytest.raises(SystemExit):
            importlib.import_module(module).main(["--help"])
    finally:
        argparse.ArgumentParser.parse_args = original
    return captured["parser"]


@pytest.mark.parametrize("module, has, lacks", [
    ("train.pretrain", {"--resume", "--lora-r"}, {"--push-to-hub"}),
    ("train.finetune", {"--resume", "--lora-r"}, {"--push-to-hub"}),
    ("train.evaluate", {"--split", "--model-dir"}, {"--resume", "--lora-r", "--push-to-hub"}),
    ("train.publish", {"--push-to-hub", "--out"}, {"--resume", "--lora-r"}),
    ("train.recommend", {"--history", "--indices", "--out"}, {"--resume", "--lora-r", "--push-to-hub"}),
])
def test_each_stage_shows_only_its_options_and_every_option_has_help(module, has, lacks):
    parser = _parser(module)
    flags = {s for a in parser._actions for s in a.option_strings}
    assert has <= flags and not lacks & flags
    assert all(a.help for a in parser._actions), [a.dest for a in parser._actions if not a.help]
    if module != "train.recommend":
        assert all(p in (parser.epilog or "") for p in PRESETS)


# ------------------------------------------------------------------------------------------ quiet, readable output
def test_redirected_output_is_lines_a_person_reads(run):
    stdout, stderr, _ = run
    both = stdout + stderr
    assert "\r" not in both  # no progress-bar updates in a log file
    assert "Writing model shards" not in both and "Loading weights" not in both
    assert "{'" not in both and '{"test"' not in stdout  # no dict reprs, no second copy of the metrics as JSON
    assert stdout.count("| GraphGPT2 |") == 1
    wall = next(line for line in stdout.splitlines() if line.startswith("wall time:"))
    assert "fine-tuning" in wall and "_s" not in wall
    assert stdout.startswith("torch threads: 1 (num_threads)")  # the demo preset pins one thread


def test_thread_count_follows_the_setting_and_the_usable_cores(monkeypatch):
    from train.common import set_threads, usable_cores

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    before = torch.get_num_threads()
    try:
        assert set_threads(3).startswith("3 (num_threads)") and torch.get_num_threads() == 3
        text = set_threads(0)
        assert torch.get_num_threads() <= usable_cores() and text.startswith(f"{torch.get_num_threads()} (auto")
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------ the Hub page
def test_the_card_has_every_field_the_hub_reads(run):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    card = ModelCard.load(run[2] / "README.md")
    data = card.data
    assert data.pipeline_tag == "other" and data.library_name == "transformers" and data.license == "apache-2.0"
    assert data.datasets == ["graphgpt2-rec-synthetic-41u-60i-seed0"] or data.datasets[0].startswith("graphgpt2-rec-")
    assert set(data.metrics) == {"recall", "ndcg"}
    name, results = model_index_to_eval_results(data.to_dict()["model-index"])
    assert name == "graphgpt2-rec-demo" and {r.metric_name for r in results} >= {"Recall@20", "Recall@40", "NDCG@100"}
    assert all(r.dataset_type == data.datasets[0] and "/" not in r.dataset_type for r in results)
    text = card.text
    for needle in ("@article{wang2024llmenhanced", "@inproceedings{zhu2024cllm4rec", "or a local copy of this folder",
                   "| `finetune.epochs` | `1` | `2` |", "| `num_threads` | `1` | `0` |", "edge bias off",
                   "item-ID init off", "## Licence", "trust_remote_code=True"):
        assert needle in text, needle
    assert "output.dir" not in text.split("## Training")[0]  # local paths are not settings


def test_the_licence_follows_the_data():
    from data_builders.hub_dataset import data_licence

    amazon = {"name": "Beauty", "split": {"source": {"format": "atomic", "files": [{"path": "../amazon-beauty-2014/x"}]}}}
    assert data_licence(amazon)[0] == "other" and "research use" in data_licence(amazon)[1]
    assert data_licence({"split": {"source": {"format": "synthetic"}}})[0] == "apache-2.0"
    mine = data_licence({"name": "shop", "split": {"source": {"format": "jsonl"}}})
    assert mine[0] == "other" and "output.license" in mine[1]


# ------------------------------------------------------------------------------------------ tokenizer conventions
def test_the_tokenizer_loads_without_a_question_and_states_its_sizes(run, monkeypatch):
    from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerFast

    folder = run[2]

    def no_questions(prompt=""):
        raise AssertionError(f"asked: {prompt[:200]}")

    monkeypatch.setattr("builtins.input", no_questions)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    for tok in (AutoTokenizer.from_pretrained(folder, trust_remote_code=True), PreTrainedTokenizerFast.from_pretrained(folder)):
        assert len(tok) == config.num_tokens == config.base_vocab_size + config.num_users + config.num_items
        assert tok.model_max_length == config.n_positions
    assert config.vocab_size == config.base_vocab_size < len(tok)
    assert not (folder / "tokenizer").exists() and (folder / "tokenizer.json").is_file()  # stored once
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert "auto_map" not in tok_config and tok_config["model_max_length"] == config.n_positions


def test_the_published_folder_still_opens_as_a_corpus(run):
    from data_builders.corpus import Corpus

    corpus = Corpus(run[2])
    assert len(corpus.tokenizer) == corpus.base_vocab_size + corpus.num_users + corpus.num_items
