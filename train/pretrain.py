"""Crowd contextual pre-training of GraphGPT2 (paper §3.3-3.4): content LM and collaborative item LM, alternating.

    accelerate launch train/pretrain.py --config demo [--resume] [key=value ...]

Schedule (``pretrain.*``): ``content_epochs`` content-only warm-up epochs (text LM over the content / review /
second_order prompts listed in ``data.pretrain_configs``, "content" ID embeddings, no regulariser because the
"collab" embeddings are still random), then ``rounds`` rounds; round r is one collaborative epoch (item LM over
the interaction prompts, "collab" embeddings, regularised toward the content ones) followed by one content epoch
(regularised toward the collab ones) when ``content_every > 0 and (r + 1) % content_every == 0``.
paper: 10 + 100 rounds, content every round; released code: 3 + 100, content every 50th round.

One shared backbone, one AdamW with param groups (ID embeddings at ``lr_id``, backbone at ``lr_backbone``), linear
warm-up then linear decay over the whole schedule, gradient clipping. A checkpoint after every epoch (atomic,
last 2 kept); ``--resume`` continues after the last one with the same data order, RNG, optimizer and schedule.
The result is ``<output.dir>/pretrained`` (save_pretrained).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `accelerate launch train/pretrain.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from train.checkpointing import maybe_kill, resume_or_reset, save_checkpoint
from train.common import (
    apply_lora,
    build_model,
    freeze_backbone,
    make_accelerator,
    make_optimizer,
    mean_loss_across,
    seed_everything,
    steps_per_epoch,
    warmup_linear,
)
from train.config import PretrainConfig, RunConfig
from train.data_adapter import Corpus
from train.logging_utils import RunLogger

MODEL_KEYS = ("input_ids", "attention_mask", "hop_distances", "labels")


def pretrain_plan(p: PretrainConfig) -> list[str]:
    """The ordered list of epochs: ``"content"`` or ``"collab"``."""
    plan = ["content"] * p.content_epochs
    for r in range(p.rounds):
        plan.append("collab")
        if p.content_every > 0 and (r + 1) % p.content_every == 0:
            plan.append("content")
    return plan


def load_rows(corpus: Corpus, configs: list[str], max_length: int) -> list[dict]:
    """Prompt rows (input_ids, node_positions, labels) of the given configs' train splits, cut to max_length."""
    rows: list[dict] = []
    for name in configs:
        ds = corpus.dataset(name, "train").select_columns(["input_ids", "node_positions", "labels"])
        for r in ds.to_list():
            rows.append({k: list(v)[:max_length] for k, v in r.items()})
    return rows


def run_epoch_loader(accelerator, rows: list[dict], collate, batch_size: int, seed: int, epoch: int):
    """A sharded DataLoader over ``rows`` in an order fixed by (seed, epoch), so a resumed run sees the same batches."""
    order = np.random.default_rng([seed, epoch]).permutation(len(rows))
    dl = DataLoader([rows[i] for i in order], batch_size=batch_size, shuffle=False, collate_fn=collate)
    return accelerator.prepare_data_loader(dl)


def pretrain(cfg: RunConfig, resume: bool = False, corpus: Corpus | None = None) -> dict:
    """Run the whole pre-training schedule; returns {"model_dir", "wall_s", "plan", "final_loss"}."""
    out = Path(cfg.output.dir)
    accelerator = make_accelerator(cfg, out)
    seed_everything(cfg.seed)
    corpus = corpus or Corpus(cfg.data.folder, cfg.data.leave_user_out_hops)
    model = build_model(cfg, corpus)
    if cfg.model.freeze_backbone:
        freeze_backbone(model)
    if cfg.model.lora_r > 0:
        model = apply_lora(model, cfg.model.lora_r, cfg.model.lora_alpha, out / "lora_base_pretrain", accelerator.is_main_process)
    p = cfg.pretrain
    plan = pretrain_plan(p)
    rows = {
        "content": load_rows(corpus, cfg.data.pretrain_configs, cfg.data.max_length) if "content" in plan else [],
        "collab": load_rows(corpus, ["interactions"], cfg.data.max_length) if "collab" in plan else [],
    }
    bs = {"content": p.batch_size, "collab": p.collab_batch_size}
    for task in set(plan):
        if not rows[task]:
            raise ValueError(f"pre-training plan has {task} epochs but the dataset folder gave no {task} rows ({cfg.data.folder})")
    n_proc = accelerator.num_processes
    total_steps = sum(steps_per_epoch(len(rows[t]), bs[t], n_proc) for t in plan)
    optimizer = make_optimizer(model, p)
    scheduler = warmup_linear(optimizer, total_steps, p.warmup_ratio)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    collate = corpus.collator(cfg.data.max_length)

    ckpt_root = out / "checkpoints" / "pretrain"
    logger = RunLogger(out / "logs" / "train_log.jsonl", enabled=accelerator.is_main_process, tensorboard_dir=out / "tensorboard")
    start_epoch, global_step = 0, 0
    if (state := resume_or_reset(accelerator, logger, "pretrain", ckpt_root, resume)) is not None:
        start_epoch, global_step = state["epoch"] + 1, state["global_step"]

    t0 = time.time()
    last_loss = float("nan")
    for epoch in range(start_epoch, len(plan)):
        task = plan[epoch]
        # no regulariser in the content warm-up: the collab embeddings are still random there
        reg = 0.0 if (task == "content" and epoch < p.content_epochs) else cfg.model.mutual_reg_weight
        loader = run_epoch_loader(accelerator, rows[task], collate, bs[task], cfg.seed, epoch)
        model.train()
        bar = tqdm(loader, desc=f"pretrain {epoch + 1}/{len(plan)} {task}", disable=not accelerator.is_local_main_process, leave=False)
        for batch in bar:
            batch = {k: v for k, v in batch.items() if k in MODEL_KEYS}
            outputs = model(**batch, task=task, reg_weight=reg)
            accelerator.backward(outputs.loss)
            if p.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), p.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            if global_step % cfg.output.log_every == 0 or global_step == 1:
                last_loss = mean_loss_across(accelerator, outputs.loss)
                rec = {"stage": "pretrain", "task": task, "epoch": epoch, "step": global_step, "loss": last_loss,
                       "lr_id": optimizer.param_groups[0]["lr"]}
                reg_loss = getattr(outputs, "reg_loss", None)
                if reg_loss is not None:
                    rec["reg_loss"] = float(reg_loss.detach())
                logger.log(rec)
                bar.set_postfix(loss=f"{last_loss:.4f}")
            maybe_kill("pretrain", global_step)
        save_checkpoint(accelerator, ckpt_root, epoch, {"epoch": epoch, "global_step": global_step, "task": task},
                        keep=cfg.output.save_total_limit)

    model_dir = out / "pretrained"
    save_model(accelerator, model, model_dir)
    logger.close()
    return {"model_dir": str(model_dir), "wall_s": time.time() - t0, "plan": plan, "final_loss": last_loss,
            "steps": global_step}


def save_model(accelerator, model, model_dir: Path) -> None:
    """save_pretrained into a temp folder, then rename. A LoRA model is saved merged (the folder fine-tuning
    starts from) with its adapter beside it in ``adapter/`` (PeftModel.from_pretrained(base, model_dir/"adapter"))."""
    import copy
    import shutil

    from train.io_utils import replace_dir

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp = model_dir.with_name(f".tmp-{model_dir.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        net = accelerator.unwrap_model(model)
        if hasattr(net, "merge_and_unload"):
            net.save_pretrained(str(tmp / "adapter"))
            net = copy.deepcopy(net).merge_and_unload()
        net.save_pretrained(str(tmp))
        replace_dir(tmp, model_dir)
    accelerator.wait_for_everyone()


def main(argv: list[str] | None = None) -> int:
    from train.cli_args import parse_stage_args, report_user_errors

    cfg, args = parse_stage_args("pretrain", argv)

    def run() -> int:
        result = pretrain(cfg, resume=args.resume)
        print({k: v for k, v in result.items() if k != "plan"})
        return 0

    return report_user_errors(run, args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
