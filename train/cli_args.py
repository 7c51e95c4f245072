"""Command-line parsing shared by the stage scripts: ``--config <preset|yaml> [stage options] [key=value ...]``.

Every command's ``--help`` lists the presets (read from ``train/configs/``), the keys users override most and an
example; a stage shows only the options that apply to it.
"""
from __future__ import annotations

import argparse
import sys

import torch.distributed as dist

from data_builders.__main__ import report_user_errors
from train.config import PRESETS, ConfigError, RunConfig, load_config, preset_summary

# The run-config keys people override most (any field can be: `key=value`, dotted, see docs/training.md).
COMMON_OVERRIDES = (
    ("data.folder=PATH", "dataset folder; built there first when it has no manifest (data.build=true)"),
    ("data.source=PATH", "raw data to build from, e.g. ../shared/data/amazon-beauty-2014 (synthetic = the demo shop)"),
    ("output.dir=PATH", "run folder: checkpoints/, best/, hub_model/, logs/ (one run at a time)"),
    ("seed=N", "training seed (the split has its own, data.split_seed)"),
    ("num_threads=N", "torch threads per process (0 = auto: the usable cores not busy with other work)"),
    ("pretrain.do_pretrain=false", "skip pre-training"),
    ("finetune.epochs=N", "fine-tuning epochs (fewer under finetune.step_budget; validation patience may stop earlier: "
                           "finetune.patience)"),
    ("model.n_layer=N model.n_embd=N", "model size"),
    ("model.graph_bias=paper|none", "the attention's graph bias (docs/model.md lists every mode)"),
)


def help_epilog(example: str) -> str:
    presets = "\n".join(f"  {name:<12} {preset_summary(name)}" for name in PRESETS)
    keys = "\n".join(f"  {key:<34} {what}" for key, what in COMMON_OVERRIDES)
    return f"presets (train/configs/):\n{presets}\n\noften overridden (key=value, any run-config field):\n{keys}\n\nexample:\n  {example}"


def stage_parser(prog: str, description: str, example: str, *, resume: bool = False, lora: bool = False,
                 push: bool = False) -> argparse.ArgumentParser:
    """A stage's parser: ``--config``, ``--debug`` and the overrides, plus the options that apply to the stage."""
    ap = argparse.ArgumentParser(prog=prog, description=description, epilog=help_epilog(example),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="demo", metavar="PRESET|YAML",
                    help="a preset (listed below) or a YAML run config (default: demo)")
    if resume:
        ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint under output.dir")
    if lora:
        ap.add_argument("--lora-r", type=int, default=None, metavar="N", help="train LoRA adapters of rank N (model.lora_r)")
    if push:
        ap.add_argument("--push-to-hub", default=None, metavar="ORG/NAME", help="upload the published folder (output.push_to_hub)")
    ap.add_argument("--debug", action="store_true", help="show Python tracebacks for errors (default: one `error:` line)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="dotted run-config overrides, e.g. finetune.epochs=3")
    return ap


def config_from_args(args: argparse.Namespace) -> RunConfig:
    overrides = list(args.overrides)
    if getattr(args, "lora_r", None) is not None:
        overrides.append(f"model.lora_r={args.lora_r}")
    if getattr(args, "push_to_hub", None):
        overrides.append(f"output.push_to_hub={args.push_to_hub}")
    return load_config(args.config, overrides)


def parse_stage_args(ap: argparse.ArgumentParser, argv: list[str] | None = None) -> tuple[RunConfig, argparse.Namespace]:
    args = ap.parse_args(argv)
    try:
        return config_from_args(args), args
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2)


def run_stage(run, debug: bool) -> int:
    """Run a stage script's body with the builder's error reporting, then tear down the process group that
    ``accelerate launch`` opened: a rank that exits with it still open can abort at interpreter teardown."""
    try:
        return report_user_errors(run, debug)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
