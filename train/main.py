"""The main job: build data -> pre-train -> fine-tune -> evaluate -> Hub-ready folder, in one command.

    graphgpt2-rec demo                                 # embedded synthetic default (README: measured times)
    graphgpt2-rec run --config quick [key=value ...]   # any preset / YAML, e.g. real Musical Instruments data
    accelerate launch -m train.main run --config ...   # the same, multi-process

``run_pipeline(cfg) -> dict`` is the Python entry point (the benchmark harness calls it per ablation variant).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from accelerate import PartialState

from data_builders.build import BuildConfig, build, parse_build_config
from data_builders.corpus import Corpus, has_manifest
from data_builders.textclean import printable
from train.cli_args import config_from_args, help_epilog, run_stage, stage_parser
from train.common import set_threads
from train.config import ConfigError, RunConfig
from train.evaluate import metrics_table, popularity_metrics, write_metrics
from train.finetune import finetune
from train.io_utils import HUB_MODEL_DIR, atomic_write_json, check_run_outputs, hold_output_dir
from train.logging_utils import wall_text
from train.metrics import metric_names
from train.pretrain import pretrain
from train.publish import publish, push_folder
from train.recommend import Recommender


def build_config(cfg: RunConfig) -> BuildConfig:
    """The typed build of ``cfg.data.folder``; ``data.build_args`` are ``python -m data_builders build`` flags on top."""
    tokenizer = {"train_bpe": cfg.data.bpe_vocab} if cfg.data.tokenizer == "bpe" else {"tokenizer": cfg.data.tokenizer}
    build_cfg = BuildConfig(source=cfg.data.source, out=str(cfg.data.folder), max_hops=cfg.model.max_hops,
                            max_length=cfg.data.max_length, seed=cfg.data.split_seed, **tokenizer)
    if cfg.data.build_args:
        build_cfg = parse_build_config(list(cfg.data.build_args), base=build_cfg)
    return build_cfg


def build_data(cfg: RunConfig) -> Path:
    """Build the dataset folder unless it already exists (then its own max_hops is checked, in ``Corpus``)."""
    folder = Path(cfg.data.folder)
    if has_manifest(folder):
        return folder
    if not cfg.data.build:
        raise FileNotFoundError(f"data.folder={folder} is not a dataset folder (no manifest) and data.build=false")
    build(build_config(cfg))
    return folder


def run_pipeline(cfg: RunConfig, resume: bool = False, command: str | None = None) -> dict:
    """Everything for one config. Returns val/test metrics, popularity, wall times and output paths."""
    with hold_output_dir(cfg.output.dir):  # a second run into the same output.dir is refused, not mixed in
        check_run_outputs(cfg.output.dir)  # before any work: every folder this run replaces holds only our files
        return _run_pipeline(cfg, resume, command)


def _run_pipeline(cfg: RunConfig, resume: bool, command: str | None) -> dict:
    out = Path(cfg.output.dir)
    walls: dict[str, float] = {}
    print(f"torch threads: {set_threads(cfg.num_threads)}")
    t = time.time()
    build_data(cfg)
    walls["build_s"] = time.time() - t
    cfg.save(out / "run_config.yaml")
    corpus = Corpus(cfg.data.folder, cfg.data.leave_user_out_hops)
    corpus.check_max_hops(cfg.model.max_hops, "model.max_hops")  # before any training: a prebuilt folder may differ

    pre = None
    if cfg.pretrain.do_pretrain:
        t = time.time()
        pre = pretrain(cfg, resume=resume, corpus=corpus)
        walls["pretrain_s"] = time.time() - t
    t = time.time()
    fin = finetune(cfg, resume=resume, corpus=corpus)
    walls["finetune_s"] = time.time() - t
    walls.update({f"finetune_{k}": v for k, v in fin.stage_s.items()})  # model_s, train_s, select_s, test_s
    state = PartialState()
    result = {
        "validation": fin.validation,
        "test": fin.test,
        "best_epoch": fin.best_epoch,
        "selection_metric": fin.selection_metric,
        "history": fin.history,  # validation metrics of every fine-tuning epoch
        "residual_scale_sweep": fin.residual_scale_sweep,
        "lowpass_scale_sweep": fin.lowpass_scale_sweep,
        "cold_item_map": fin.cold_item_map,  # the text map of new products (docs/model.md "New items")
        "cold_items_test": fin.cold_items_test,
        "wall": walls,
        "paths": {"output": str(out), "data": str(cfg.data.folder), "best_model": fin.model_dir},
        "pretrain": {k: v for k, v in (pre or {}).items() if k != "plan"},
    }
    if state.is_main_process:
        names = metric_names(cfg.eval.recall_ks, cfg.eval.ndcg_ks)
        pop = popularity_metrics(corpus, "test", cfg)
        result["popularity_test"] = pop
        write_metrics(out, "metrics_test", {**fin.test, "split": "test"}, names, {"Popularity (test)": pop})
        t = time.time()
        folder = publish(cfg, corpus, Path(fin.model_dir), out / HUB_MODEL_DIR, result, command=command)
        walls["publish_s"] = time.time() - t
        result["paths"]["hub_model"] = str(folder)
        if cfg.output.push_to_hub:
            result["paths"]["hub_url"] = push_folder(folder, cfg.output.push_to_hub)
        if cfg.output.push_dataset_to_hub:
            result["paths"]["dataset_url"] = push_folder(cfg.data.folder, cfg.output.push_dataset_to_hub, repo_type="dataset")
        atomic_write_json(out / "pipeline_result.json", result)
    state.wait_for_everyone()
    return result


def print_summary(cfg: RunConfig, result: dict) -> None:
    names = metric_names(cfg.eval.recall_ks, cfg.eval.ndcg_ks)
    print("\nTest metrics (model selected on validation " + result["selection_metric"] + f", epoch {result['best_epoch']}):")
    print(metrics_table({"GraphGPT2": result["test"], "Popularity": result["popularity_test"]}, names))
    print("wall time: " + wall_text(result["wall"]))
    print(f"Hub-ready model folder: {result['paths']['hub_model']}")
    rec = Recommender.from_folder(result["paths"]["hub_model"])
    titles = [printable(t) for t in rec.item_titles]  # data, not terminal commands
    for user in range(min(cfg.eval.num_examples, rec.num_users)):
        hist = rec.train_items[user]
        top = rec.recommend_users([user], k=5)[0]
        print(f"\nuser {user} bought: " + "; ".join(titles[j] for j in hist[:5]) + (" ..." if len(hist) > 5 else ""))
        print("  recommended: " + "; ".join(f"{titles[j]} ({s:.2f})" for j, s in top))


MODES = {
    "demo": ("Run the whole job on the embedded synthetic shop (no download): build, pre-train, fine-tune, evaluate, "
             "publish outputs/demo/hub_model.", "graphgpt2-rec demo"),
    "run": ("Run the whole job for a preset or YAML config: build the dataset folder if needed, pre-train, fine-tune, "
            "select on validation, test once, publish <output.dir>/hub_model.",
            "graphgpt2-rec run --config amazon_cpu data.folder=outputs/qbench/beauty_bpe4k output.dir=outputs/beauty"),
}


def top_help() -> str:
    commands = "\n".join(f"  {mode:<6} {text}" for mode, (text, _) in MODES.items())
    return ("usage: graphgpt2-rec {demo,run} [--config PRESET|YAML] [options] [key=value ...]\n\n"
            "GraphGPT2-Rec: a graph-aware GPT-2 recommender, from raw data to a Hub-ready model folder.\n\n"
            f"commands:\n{commands}\n\n`graphgpt2-rec run --help` lists the options. Stages one at a time: "
            "accelerate launch train/pretrain.py | train/finetune.py | train/evaluate.py, python -m train.publish, "
            "python -m train.recommend (each with --help).\n\n" + help_epilog(MODES["run"][1]))


def cli(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(top_help(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in MODES:
        print(f"error: unknown command {argv[0]!r}; commands: {', '.join(MODES)} (graphgpt2-rec --help)", file=sys.stderr)
        return 2
    mode, rest = argv[0], argv[1:]
    description, example = MODES[mode]
    parser = stage_parser(f"graphgpt2-rec {mode}", description, example, resume=True, lora=True, push=True)
    args = parser.parse_args(rest)
    if mode == "demo" and args.config != "demo":
        print("error: `graphgpt2-rec demo` always uses the demo preset; use `run --config` for others", file=sys.stderr)
        return 2
    try:
        cfg = config_from_args(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    command = "graphgpt2-rec " + " ".join(argv)

    def run() -> int:
        result = run_pipeline(cfg, resume=args.resume, command=command)
        if PartialState().is_main_process:
            print_summary(cfg, result)
        return 0

    return run_stage(run, args.debug)


if __name__ == "__main__":
    raise SystemExit(cli())
