"""Crowd contextual pre-training of GraphGPT2 (paper §3.3-3.4): content LM and collaborative item LM, alternating.

    accelerate launch train/pretrain.py --config demo [--resume] [key=value ...]

Schedule (``pretrain.*``): ``content_epochs`` content-only warm-up epochs (text LM over the content / review /
second_order prompts listed in ``data.pretrain_configs``, "content" ID embeddings, no regulariser because the
"collab" embeddings are still random), then ``rounds`` rounds; round r is one collaborative epoch (item LM over
the interaction prompts, "collab" embeddings, regularised toward the content ones) followed by one content epoch
(regularised toward the collab ones) when ``content_every > 0 and (r + 1) % content_every == 0``.
paper: 10 + 100 rounds, content every round; released code: 3 + 100, content every 50th round.

One shared backbone, one AdamW with the model's parameter groups (ID embeddings at ``lr_id``, backbone at
``lr_backbone``), linear warm-up then linear decay over the whole schedule, gradient clipping. The loop is
``train.trainer.Trainer.fit``: a checkpoint after every epoch (atomic, last 2 kept); ``--resume`` continues after
the last one with the same data order, RNG, optimizer and schedule. The result is ``<output.dir>/pretrained``.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from data_builders.collate import MODEL_INPUT_KEYS
from data_builders.corpus import Corpus
from train.cli_args import parse_stage_args, run_stage, stage_parser
from train.common import (
    apply_lora,
    build_model,
    data_fingerprint,
    freeze_backbone,
    make_accelerator,
    make_optimizer,
    rank_loader,
    rank_rows,
    seed_everything,
    shard_order,
    steps_per_epoch,
    warmup_linear,
)
from train.config import PretrainConfig, RunConfig
from train.io_utils import PRETRAINED_DIR, check_run_outputs, locks_output_dir
from train.logging_utils import RunLogger
from train.modeling_io import save_model
from train.trainer import Trainer

MODEL_KEYS = (*MODEL_INPUT_KEYS, "labels")  # content and collab tasks take token labels


def pretrain_plan(p: PretrainConfig) -> list[str]:
    """The ordered list of epochs: ``"content"`` or ``"collab"``."""
    plan = ["content"] * p.content_epochs
    for r in range(p.rounds):
        plan.append("collab")
        if p.content_every > 0 and (r + 1) % p.content_every == 0:
            plan.append("content")
    return plan


def load_rows(corpus: Corpus, configs: list[str], max_length: int, rows: range | None = None) -> list[dict]:
    """Prompt rows (input_ids, node_positions, labels) of the given configs' train splits, cut to max_length.

    The configs' rows are numbered in this order, one after another; ``rows`` (one rank's shard of that
    numbering) keeps only those and reads only the files holding them.
    """
    out: list[dict] = []
    first = 0
    for name in configs:
        n = corpus.num_rows(name, "train")
        part = range(max(rows.start, first) - first, min(rows.stop, first + n) - first) if rows is not None else None
        first += n
        if part is not None and not len(part):
            continue
        ds = corpus.dataset(name, "train", rows=part, columns=["input_ids", "node_positions", "labels"])
        for r in ds.to_list():
            out.append({k: list(v)[:max_length] for k, v in r.items()})
    return out


def run_epoch_loader(accelerator, rows: list[dict], collate, batch_size: int, seed: int, epoch: int,
                     num_rows: int | None = None):
    """This rank's DataLoader over ``rows`` (its shard of ``num_rows``; all of them by default) in an order fixed by
    (seed, epoch): the one-process order restricted to the shard, so a resumed run sees the same batches."""
    num_rows = len(rows) if num_rows is None else num_rows
    mine = rank_rows(accelerator, num_rows)
    order = shard_order(np.random.default_rng([seed, epoch]).permutation(num_rows), mine)
    return rank_loader(accelerator, [rows[i] for i in order], batch_size, collate,
                       steps_per_epoch(num_rows, batch_size, accelerator.num_processes))


@locks_output_dir
def pretrain(cfg: RunConfig, resume: bool = False, corpus: Corpus | None = None) -> dict:
    """Run the whole pre-training schedule; returns {"model_dir", "wall_s", "plan", "final_loss"}."""
    out = Path(cfg.output.dir)
    check_run_outputs(out, (PRETRAINED_DIR,), ("pretrain",))  # before any work: what this stage replaces is ours
    p = cfg.pretrain
    accelerator = make_accelerator(cfg, out)
    seed_everything(cfg.seed)
    corpus = corpus or Corpus(cfg.data.folder, cfg.data.leave_user_out_hops)
    model = build_model(cfg, corpus)
    if cfg.model.freeze_backbone:
        freeze_backbone(model)
    if cfg.model.lora_r > 0:
        model = apply_lora(model, cfg.model.lora_r, cfg.model.lora_alpha, out / "lora_base_pretrain", accelerator.is_main_process)
    plan = pretrain_plan(p)
    task_configs = {"content": list(cfg.data.pretrain_configs), "collab": ["interactions"]}
    num_rows = {t: sum(corpus.num_rows(c, "train") for c in task_configs[t]) if t in plan else 0 for t in task_configs}
    batch_size = {"content": p.batch_size, "collab": p.collab_batch_size}
    for task in set(plan):
        if not num_rows[task]:
            raise ValueError(f"pre-training plan has {task} epochs but the dataset folder gave no {task} rows ({cfg.data.folder})")
    # each rank materialises only its shard of every task's rows
    rows = {t: load_rows(corpus, task_configs[t], cfg.data.max_length, rank_rows(accelerator, num_rows[t])) if t in plan else []
            for t in task_configs}
    total_steps = sum(steps_per_epoch(num_rows[t], batch_size[t], accelerator.num_processes) for t in plan)
    optimizer = make_optimizer(model, p)
    trainer = Trainer(
        model, optimizer, warmup_linear(optimizer, total_steps, p.warmup_ratio),
        accelerator=accelerator, stage="pretrain", grad_clip=p.grad_clip,
        checkpoint_dir=out / "checkpoints" / "pretrain", keep_checkpoints=cfg.output.save_total_limit,
        logger=RunLogger(out / "logs" / "train_log.jsonl", enabled=accelerator.is_main_process, tensorboard_dir=out / "tensorboard"),
        log_every=cfg.output.log_every, data_fingerprint=data_fingerprint(corpus),
    )
    collate = corpus.collator(cfg.data.max_length)

    def batches(epoch: int):
        task = plan[epoch]
        return run_epoch_loader(accelerator, rows[task], collate, batch_size[task], cfg.seed, epoch, num_rows[task])

    def loss(model, batch: dict, epoch: int):
        task = plan[epoch]
        # no regulariser in the content warm-up: the collab embeddings are still random there
        reg = 0.0 if (task == "content" and epoch < p.content_epochs) else cfg.model.mutual_reg_weight
        return model(**{k: v for k, v in batch.items() if k in MODEL_KEYS}, task=task, reg_weight=reg)

    t0 = time.time()
    fit = trainer.fit(len(plan), batches, loss, epoch_info=lambda epoch: {"task": plan[epoch]}, resume=resume,
                      epoch_steps=[steps_per_epoch(num_rows[t], batch_size[t], accelerator.num_processes) for t in plan])
    model_dir = out / PRETRAINED_DIR
    save_model(accelerator, trainer.model, model_dir)
    trainer.logger.close()
    return {"model_dir": str(model_dir), "wall_s": time.time() - t0, "plan": plan, "final_loss": fit.last_loss,
            "steps": fit.global_step}


def main(argv: list[str] | None = None) -> int:
    ap = stage_parser("accelerate launch train/pretrain.py", "Pre-train GraphGPT2 on the crowd contextual prompts "
                      "(content, reviews, second-order, interactions) into <output.dir>/pretrained.",
                      "accelerate launch train/pretrain.py --config quick pretrain.rounds=2", resume=True, lora=True)
    cfg, args = parse_stage_args(ap, argv)

    def run() -> int:
        result = pretrain(cfg, resume=args.resume)
        print(f"pre-training: {result['steps']} steps in {result['wall_s']:.0f} s, last loss {result['final_loss']:.4f}; "
              f"model in {result['model_dir']}")
        return 0

    return run_stage(run, args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
