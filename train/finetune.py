"""Personalized predictive fine-tuning (paper §3.5): multinomial recommendation loss over all items.

    accelerate launch train/finetune.py --config demo [--resume] [key=value ...]

Every epoch re-masks each user's train history (CLLM4Rec, reference-code-notes §3): ``max(1, int(f * n))``
items (``f = finetune.mask_fraction``, 0.2) are removed from the prompt -- at most ``n - 1`` so the prompt keeps
one item -- the rest are shuffled, and the target is the multi-hot of ALL train items (the kept ones weighted
``finetune.visible_target_weight``, 1 by default). The mask is drawn from
``default_rng([seed, epoch])`` so a resumed run masks exactly as an uninterrupted one.

The loop is ``train.trainer.Trainer.fit``. After each epoch the model is evaluated on validation; the epoch with
the best ``finetune.selection_metric`` (one criterion, ties keep the earlier epoch) is saved to
``<output.dir>/best``; ``finetune.patience`` epochs without improvement stop training. Test is evaluated ONCE, after
training, with that model. Starts from ``<output.dir>/pretrained`` when pre-training ran (else a fresh model:
the NoPretrain ablation). With ``finetune.residual_scale_grid``, the selected model's graph-residual scale is
then chosen on validation from that grid (``choose_residual_scale``) before the final evaluations.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch

from data_builders.collate import MODEL_INPUT_KEYS
from data_builders.corpus import Corpus, RecExample
from modeling_graphgpt2.modeling_graphgpt2 import first_columns
from train.cli_args import parse_stage_args, run_stage, stage_parser
from train.common import (
    apply_lora,
    build_model,
    data_fingerprint,
    freeze_backbone,
    init_collab_items,
    make_accelerator,
    make_optimizer,
    rank_loader,
    rank_rows,
    seed_everything,
    steps_per_epoch,
    warmup_linear,
)
from train.cold_items import cold_item_metrics, fit_cold_item_map
from train.config import FinetuneConfig, RunConfig
from train.evaluate import evaluate_model, evaluate_residual_scales, metrics_table
from train.io_utils import BEST_DIR, PRETRAINED_DIR, atomic_write_json, check_run_outputs, locks_output_dir
from train.logging_utils import RunLogger
from train.metrics import metric_names
from train.modeling_io import load_model, save_model
from train.trainer import Trainer


@dataclass
class Selection:
    """What ``select_and_test`` chose on validation and measured: the selected model's validation and test metrics
    (with their "users"), the two scale sweeps and the new-item stage (None where they did not run)."""

    validation: dict
    test: dict | None  # None when select_and_test ran without test (a probe)
    residual_scale_sweep: dict | None = None
    lowpass_scale_sweep: dict | None = None
    cold_item_map: dict | None = None
    cold_items_test: dict | None = None


@dataclass
class FinetuneResult:
    """The fine-tuning stage's result (``finetune``; ``finetune_result.json`` is ``to_json()``)."""

    selection_metric: str
    epochs: int  # planned: finetune.epochs, fewer under finetune.step_budget (patience may stop sooner)
    best_epoch: int | None
    validation: dict  # the selected model's validation metrics (after the scale sweeps)
    test: dict  # test, evaluated once
    test_users: list  # gathered across processes: each user exactly once
    history: list  # validation metrics of every epoch
    stopped_early: bool
    train_wall_s: float
    stage_s: dict  # wall seconds of each stage (benchmarks/RESULTS.md reports them)
    model_dir: str
    steps: int
    residual_scale_sweep: dict | None
    lowpass_scale_sweep: dict | None
    init_collab_items: str
    cold_item_map: dict | None = None  # the new-item stage (docs/model.md "New items"), when the model has one
    cold_items_test: dict | None = None

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        if self.cold_item_map is None:  # models without the new-item stage keep the file's old keys
            del out["cold_item_map"], out["cold_items_test"]
        return out


def masked_prompts(corpus: Corpus, examples: list[RecExample], fraction: float, seed: int, epoch: int, max_length: int,
                   target_lengths: np.ndarray | None = None, visible_weight: float = 1.0) -> list[dict]:
    """One epoch of training prompts: each history re-masked and shuffled, target = all train items (those the mask
    keeps in the prompt weighted ``visible_weight``, given as ``target_weights`` when below 1; a history cut at
    ``max_length`` loses its oldest kept items from the prompt but they keep that weight).

    ``examples`` may be one rank's shard: ``target_lengths`` (every train row's number of items) lets the mask
    draws of the other rows be replayed (one permutation each, no prompt built), so a row's mask and its place
    in the epoch order are those of the one-process run. Without it, ``examples`` must be the whole split.
    """
    rng = np.random.default_rng([seed, epoch])
    if target_lengths is None:
        target_lengths = [len(ex.targets) for ex in examples]
    mine = {ex.row: ex for ex in examples}
    rows = {}
    for row, n in enumerate(target_lengths):
        n = int(n)
        n_mask = min(max(1, int(fraction * n)), n - 1) if (fraction > 0 and n > 1) else 0
        keep = rng.permutation(n)[n_mask:]
        ex = mine.get(row)
        if ex is None:  # another rank's row: only its draw is replayed
            continue
        items = np.asarray(ex.targets, dtype=np.int64)  # train split: targets = all train items
        ids, pos = corpus.encode_rec_prompt(ex.user, items[keep].tolist(), max_length)
        prompt = {"input_ids": ids, "node_positions": pos, "labels": [-100] * len(ids), "targets": items.tolist()}
        if visible_weight != 1.0:
            weights = np.ones(n, dtype=np.float32)
            weights[keep] = visible_weight
            prompt["target_weights"] = weights.tolist()
        if len(ex.history) == n:  # the kept items are nodes of the stored full-history matrix: no graph search
            prompt.update(ex.pair_fields())
        rows[row] = prompt
    order = rng.permutation(len(target_lengths))
    return [rows[i] for i in order if i in rows]


def train_target_lengths(corpus: Corpus) -> np.ndarray:
    """Every train recommendation row's number of target items (only that column is read)."""
    ds = corpus.dataset("recommendation", "train", columns=["targets"])
    return pc.list_value_length(ds.data.column("targets")).to_numpy()


def sweep_rows(corpus: Corpus, cfg: RunConfig) -> np.ndarray | None:
    """The validation rows the scale sweeps score: None (every row) up to ``finetune.sweep_max_users`` rows, else a
    seeded sample of that many (sorted)."""
    num_rows, cap = corpus.num_rows("recommendation", "validation"), cfg.finetune.sweep_max_users
    if cap == 0 or num_rows <= cap:
        return None
    return np.sort(np.random.default_rng([cfg.seed, num_rows]).choice(num_rows, size=cap, replace=False))


def choose_residual_scale(accelerator, model, corpus: Corpus, cfg: RunConfig, model_dir: Path,
                          term: str = "graph_residual") -> tuple[dict, dict | None]:
    """Set the scale of the residual ``term`` to the value of its grid (``finetune.residual_scale_grid`` for the
    graph residual, ``lowpass_scale_grid`` for the low-pass one, swept at each rank of ``lowpass_rank_grid``) with the
    best validation selection metric (first of equals, ranks before scales in grid order) on ``sweep_rows``, and save
    the model again; returns the sweep (scales, that metric per scale, the chosen scale, the users swept; with ranks,
    the metric per rank and the chosen rank) and the chosen validation metrics (None when a sample was swept)."""
    f, metric, lever = cfg.finetune, cfg.finetune.selection_metric, getattr(model, term)
    grid = f.residual_scale_grid if term == "graph_residual" else f.lowpass_scale_grid
    ranks = f.lowpass_rank_grid if term == "graph_lowpass" else []
    fitted = lever.basis.clone() if ranks else None  # the basis at the fitted rank; each rank keeps its first columns
    rows = sweep_rows(corpus, cfg)
    swept = evaluate_residual_scales(accelerator, model, corpus, "validation", cfg, grid, term=term, only_rows=rows,
                                     lowpass_bases=[first_columns(fitted, r) for r in ranks] or None)
    best, by_rank = None, {}  # best: (metric, rank, scale index, the rank's metrics, its values)
    for i, rank in enumerate(ranks or [None]):  # one pass scored every (rank, scale) pair, ranks outer
        part = swept[i * len(grid):(i + 1) * len(grid)]
        values = [m[metric] for m in part]
        if best is None or max(values) > best[0]:
            best = (max(values), rank, int(np.argmax(values)), part, values)
        if rank is not None:
            by_rank[str(rank)] = values
    value, rank, index, chosen, values = best
    if rank is not None:
        lever.keep_rank(fitted, rank)
        model.config.graph_lowpass_rank = rank
    with torch.no_grad():
        lever.scale.fill_(grid[index])
    save_model(accelerator, model, model_dir)
    accelerator.print(f"{term.replace('_', ' ')} scale chosen on validation: {grid[index]}"
                      + (f" at rank {rank}" if rank is not None else "") + f" ({metric} {value:.4f}"
                      + (f", a sample of {len(rows)} users)" if rows is not None else ")"))
    sweep = {"metric": metric, "scales": list(grid), "values": values, "chosen": grid[index],
             "users": chosen[index]["num_users"]}
    if rank is not None:
        sweep.update(ranks=list(ranks), values_by_rank=by_rank, chosen_rank=rank)
    return sweep, (chosen[index] if rows is None else None)


def prepare_model(cfg: RunConfig, corpus: Corpus, accelerator, init_dir: Path, stage_s: dict):
    """The model fine-tuning starts from: the pre-trained one when pre-training ran, else a fresh one with its
    graph levers fitted (their times into ``stage_s``); then the item-text init, the frozen backbone or LoRA.
    Returns the model and what the item-text init did."""
    out, f = Path(cfg.output.dir), cfg.finetune
    t_model = time.time()
    if cfg.pretrain.do_pretrain and init_dir.is_dir():
        model = load_model(init_dir, merge_lora=True)
        corpus.check_model(model.config)
        lora_base = init_dir
    else:
        model = build_model(cfg, corpus, stage_s)  # the graph levers' fits: stage_s["graph_residual_fit_s"], ...
        lora_base = out / "lora_base_finetune"
    t0 = time.time()
    collab_items_init = init_collab_items(model, corpus, f.init_collab_items, cfg.seed)
    stage_s["text_init_s"] = time.time() - t0
    if cfg.model.freeze_backbone:
        freeze_backbone(model)
    if cfg.model.lora_r > 0:
        model = apply_lora(model, cfg.model.lora_r, cfg.model.lora_alpha, lora_base, accelerator.is_main_process)
    stage_s["model_s"] = time.time() - t_model  # everything above: the levers' fits and the text init included
    return model, collab_items_init


def planned_epochs(f: FinetuneConfig, epoch_steps: int) -> int:
    """``finetune.epochs``, or fewer whole epochs when ``finetune.step_budget`` optimizer steps end sooner."""
    if f.step_budget == 0:
        return f.epochs
    return max(1, min(f.epochs, math.ceil(f.step_budget / epoch_steps)))


def fit_epochs(cfg: RunConfig, corpus: Corpus, accelerator, model, resume: bool):
    """The fine-tuning epochs (``Trainer.fit``): the best epoch on validation is saved to ``<output.dir>/best``.
    Returns the fit result, the trainer (its logger is still open) and the epochs planned (:func:`planned_epochs`)."""
    out, f = Path(cfg.output.dir), cfg.finetune
    num_train = corpus.num_rows("recommendation", "train")
    train_examples = corpus.rec_examples("train", rank_rows(accelerator, num_train))  # this rank's shard only
    target_lengths = train_target_lengths(corpus)
    collate = corpus.collator(cfg.data.max_length)
    names = metric_names(cfg.eval.recall_ks, cfg.eval.ndcg_ks)
    epoch_steps = steps_per_epoch(num_train, f.batch_size, accelerator.num_processes)
    epochs = planned_epochs(f, epoch_steps)
    if epochs < f.epochs:  # say so: a user who set finetune.epochs would otherwise wonder where the rest went
        accelerator.print(f"finetune.step_budget={f.step_budget} caps finetune.epochs={f.epochs} at {epochs} epoch(s) of "
                          f"{epoch_steps:,} steps; finetune.step_budget=0 trains all {f.epochs}")
    total_steps = epochs * epoch_steps
    optimizer = make_optimizer(model, f)
    best_dir = out / BEST_DIR
    trainer = Trainer(
        model, optimizer, warmup_linear(optimizer, total_steps, f.warmup_ratio),
        accelerator=accelerator, stage="finetune", grad_clip=f.grad_clip,
        selection_metric=f.selection_metric, patience=f.patience,
        checkpoint_dir=out / "checkpoints" / "finetune", keep_checkpoints=cfg.output.save_total_limit,
        logger=RunLogger(out / "logs" / "train_log.jsonl", enabled=accelerator.is_main_process, tensorboard_dir=out / "tensorboard"),
        log_every=cfg.output.log_every, data_fingerprint=data_fingerprint(corpus),
    )

    def batches(epoch: int):
        rows = masked_prompts(corpus, train_examples, f.mask_fraction, cfg.seed, epoch, cfg.data.max_length, target_lengths,
                              f.visible_target_weight)
        return rank_loader(accelerator, rows, f.batch_size, collate, epoch_steps)

    def loss(model, batch: dict, epoch: int):
        return model(**{k: v for k, v in batch.items() if k in MODEL_INPUT_KEYS}, target_items=batch["target_items"],
                     task="rec", reg_weight=cfg.model.mutual_reg_weight)

    def validate(epoch: int) -> dict | None:
        if epochs == 1:  # nothing to choose between: the selection's validation pass scores this model once
            return None
        val = evaluate_model(accelerator, trainer.model, corpus, "validation", cfg)
        return {n: val[n] for n in names}

    if epochs == 1 and f.do_finetune:
        accelerator.print("one planned epoch: no validation pass after it (nothing to choose); the residual sweeps "
                          "and the final validation score the trained model")

    fit = trainer.fit(epochs if f.do_finetune else 0, batches, loss, validate=validate,
                      on_best=lambda epoch: save_model(accelerator, trainer.model, best_dir),
                      epoch_info=lambda epoch: {"task": "rec"}, resume=resume, also_clear=(best_dir,),
                      epoch_steps=[epoch_steps] * epochs)
    return fit, trainer, epochs


def select_and_test(cfg: RunConfig, corpus: Corpus, accelerator, trainer, stage_s: dict, with_test: bool = True) -> Selection:
    """The selected model (or the starting one when fine-tuning is off: NoFineTune), its residual scales chosen on
    validation, then test evaluated ONCE (``with_test`` False: not at all, for probes that choose on validation)."""
    f, best_dir = cfg.finetune, Path(cfg.output.dir) / BEST_DIR
    if not best_dir.is_dir():  # no epoch was validated (none trained, or one planned): the model as it stands,
        save_model(accelerator, trainer.model, best_dir)  # saved as on_best saves it (a LoRA adapter beside it)
    final = load_model(best_dir, merge_lora=True).to(accelerator.device)
    t0 = time.time()
    scale_sweep = lowpass_sweep = val = None  # a sweep's pass gives the chosen scale's validation metrics
    if f.residual_scale_grid:
        scale_sweep, val = choose_residual_scale(accelerator, final, corpus, cfg, best_dir)
    if f.lowpass_scale_grid:  # with the graph residual's scale fixed at its chosen value
        lowpass_sweep, val = choose_residual_scale(accelerator, final, corpus, cfg, best_dir, term="graph_lowpass")
    if val is None:
        val = evaluate_model(accelerator, final, corpus, "validation", cfg)
    cold_map = cold_test = None
    if final.cold_item_map is not None or len(corpus.cold_items("validation")):  # the text map of new products
        cold_map = fit_cold_item_map(accelerator, final, corpus, cfg)
        if "chosen" in cold_map:
            save_model(accelerator, final, best_dir)
    stage_s["select_s"], t0 = time.time() - t0, time.time()  # final validation (the residual-scale sweep)
    if not with_test:
        return Selection(val, None, scale_sweep, lowpass_sweep, cold_map, None)
    test = evaluate_model(accelerator, final, corpus, "test", cfg)
    if cold_map is not None and "chosen" in cold_map and len(corpus.cold_items("test")):
        cold_test = cold_item_metrics(accelerator, final, corpus, "test", cfg)
    stage_s["test_s"] = time.time() - t0
    return Selection(val, test, scale_sweep, lowpass_sweep, cold_map, cold_test)


@locks_output_dir
def finetune(cfg: RunConfig, resume: bool = False, corpus: Corpus | None = None, init_dir: str | Path | None = None) -> FinetuneResult:
    """Train, select on validation, evaluate test once. Returns val/test metrics and paths."""
    out = Path(cfg.output.dir)
    check_run_outputs(out, (BEST_DIR,), ("finetune",))  # before any work: what this stage replaces is ours
    accelerator = make_accelerator(cfg, out)
    seed_everything(cfg.seed)
    corpus = corpus or Corpus(cfg.data.folder, cfg.data.leave_user_out_hops)
    init_dir = Path(init_dir) if init_dir else out / PRETRAINED_DIR
    stage_s: dict = {}  # wall seconds of each stage (benchmarks/RESULTS.md reports them)
    model, collab_items_init = prepare_model(cfg, corpus, accelerator, init_dir, stage_s)
    t0 = time.time()
    fit, trainer, epochs = fit_epochs(cfg, corpus, accelerator, model, resume)
    train_wall = stage_s["train_s"] = time.time() - t0  # the epochs with their validation passes
    chosen = select_and_test(cfg, corpus, accelerator, trainer, stage_s)
    result = FinetuneResult(
        selection_metric=cfg.finetune.selection_metric,
        epochs=epochs,
        best_epoch=fit.best_epoch if fit.best_epoch >= 0 or not fit.global_step else epochs - 1,  # one epoch: its own
        validation={k: v for k, v in chosen.validation.items() if k != "users"},
        test={k: v for k, v in chosen.test.items() if k != "users"},
        test_users=sorted(chosen.test["users"]),
        history=fit.history,
        stopped_early=fit.stopped_early,
        train_wall_s=train_wall,
        stage_s=stage_s,
        model_dir=str(out / BEST_DIR),
        steps=fit.global_step,
        residual_scale_sweep=chosen.residual_scale_sweep,
        lowpass_scale_sweep=chosen.lowpass_scale_sweep,
        init_collab_items=collab_items_init,
        cold_item_map=chosen.cold_item_map,
        cold_items_test=chosen.cold_items_test,
    )
    if accelerator.is_main_process:
        atomic_write_json(out / "finetune_result.json", result.to_json())
    trainer.logger.close()
    return result


def main(argv: list[str] | None = None) -> int:

    ap = stage_parser("accelerate launch train/finetune.py", "Fine-tune GraphGPT2 on the personalized predictive prompts, "
                      "select the epoch on validation into <output.dir>/best, then evaluate test once.",
                      "accelerate launch train/finetune.py --config quick finetune.epochs=3", resume=True, lora=True)
    cfg, args = parse_stage_args(ap, argv)

    def run() -> int:
        result = finetune(cfg, resume=args.resume)
        names = metric_names(cfg.eval.recall_ks, cfg.eval.ndcg_ks)
        print(f"fine-tuning: best epoch {result.best_epoch} by validation {result.selection_metric}; model in "
              f"{result.model_dir}")
        print(metrics_table({"validation": result.validation, "test": result.test}, names))
        return 0

    return run_stage(run, args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
