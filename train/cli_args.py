"""Command-line parsing shared by the stage scripts: ``--config <preset|yaml> [--resume] [--lora-r N] [key=value ...]``."""
from __future__ import annotations

import argparse
import sys

import torch.distributed as dist

from data_builders.__main__ import report_user_errors
from train.config import ConfigError, RunConfig, load_config


def stage_parser(prog: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=f"GraphGPT2-Rec {prog}; overrides are dotted key=value pairs")
    ap.add_argument("--config", default="demo", help="preset name (demo, quick, paper, released) or a YAML file")
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint under output.dir")
    ap.add_argument("--lora-r", type=int, default=None, help="train LoRA adapters of rank N (model.lora_r)")
    ap.add_argument("--push-to-hub", default=None, metavar="ORG/NAME", help="upload the published folder (output.push_to_hub)")
    ap.add_argument("--debug", action="store_true", help="show Python tracebacks for errors (default: one `error:` line)")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. pretrain.rounds=3 model.n_layer=2")
    return ap


def config_from_args(args: argparse.Namespace) -> RunConfig:
    overrides = list(args.overrides)
    if getattr(args, "lora_r", None) is not None:
        overrides.append(f"model.lora_r={args.lora_r}")
    if getattr(args, "push_to_hub", None):
        overrides.append(f"output.push_to_hub={args.push_to_hub}")
    return load_config(args.config, overrides)


def parse_stage_args(prog: str, argv: list[str] | None = None) -> tuple[RunConfig, argparse.Namespace]:
    args = stage_parser(prog).parse_args(argv)
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
