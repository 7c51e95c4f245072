"""Personalized predictive fine-tuning (paper §3.5): multinomial recommendation loss over all items.

    accelerate launch train/finetune.py --config demo [--resume] [key=value ...]

Every epoch re-masks each user's train history (CLLM4Rec, reference-code-notes §3): ``max(1, int(f * n))``
items (``f = finetune.mask_fraction``, 0.2) are removed from the prompt -- at most ``n - 1`` so the prompt keeps
one item -- the rest are shuffled, and the target is the multi-hot of ALL train items. The mask is drawn from
``default_rng([seed, epoch])`` so a resumed run masks exactly as an uninterrupted one.

After each epoch the model is evaluated on validation; the epoch with the best ``finetune.selection_metric``
(one criterion, ties keep the earlier epoch) is saved to ``<output.dir>/best``. Test is evaluated ONCE, after
training, with that model. Starts from ``<output.dir>/pretrained`` when pre-training ran (else a fresh model:
the NoPretrain ablation).
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
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
from train.config import RunConfig
from train.data_adapter import Corpus, RecExample
from train.evaluate import evaluate_model
from train.io_utils import atomic_write_json
from train.logging_utils import RunLogger
from train.metrics import metric_names

MODEL_KEYS = ("input_ids", "attention_mask", "hop_distances")


def masked_prompts(corpus: Corpus, examples: list[RecExample], fraction: float, seed: int, epoch: int, max_length: int) -> list[dict]:
    """One epoch of training prompts: each history re-masked and shuffled, target = all train items."""
    rng = np.random.default_rng([seed, epoch])
    rows = []
    for ex in examples:
        items = np.asarray(ex.targets, dtype=np.int64)  # train split: targets = all train items
        n = len(items)
        n_mask = min(max(1, int(fraction * n)), n - 1) if (fraction > 0 and n > 1) else 0
        keep = rng.permutation(n)[n_mask:]
        ids, pos = corpus.encode_rec_prompt(ex.user, items[keep].tolist(), max_length)
        row = {"input_ids": ids, "node_positions": pos, "labels": [-100] * len(ids), "targets": items.tolist()}
        if len(ex.history) == n:  # the kept items are nodes of the stored full-history matrix: no graph search
            row.update(ex.pair_fields())
        rows.append(row)
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def finetune(cfg: RunConfig, resume: bool = False, corpus: Corpus | None = None, init_dir: str | Path | None = None) -> dict:
    """Train, select on validation, evaluate test once. Returns val/test metrics and paths."""
    from train.modeling_io import load_model

    out = Path(cfg.output.dir)
    f = cfg.finetune
    accelerator = make_accelerator(cfg, out)
    seed_everything(cfg.seed)
    corpus = corpus or Corpus(cfg.data.folder, cfg.data.leave_user_out_hops)
    init_dir = Path(init_dir) if init_dir else out / "pretrained"
    if cfg.pretrain.do_pretrain and init_dir.is_dir():
        model = load_model(init_dir, merge_lora=True)
        corpus.check_model(model.config)
        lora_base = init_dir
    else:
        model = build_model(cfg, corpus)
        lora_base = out / "lora_base_finetune"
    if cfg.model.freeze_backbone:
        freeze_backbone(model)
    if cfg.model.lora_r > 0:
        model = apply_lora(model, cfg.model.lora_r, cfg.model.lora_alpha, lora_base, accelerator.is_main_process)
    train_examples = corpus.rec_examples("train")
    collate = corpus.collator(cfg.data.max_length)


    names = metric_names(cfg.eval.recall_ks, cfg.eval.ndcg_ks)
    select = f.selection_metric
    total_steps = f.epochs * steps_per_epoch(len(train_examples), f.batch_size, accelerator.num_processes)
    optimizer = make_optimizer(model, f)
    scheduler = warmup_linear(optimizer, total_steps, f.warmup_ratio)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    ckpt_root = out / "checkpoints" / "finetune"
    best_dir = out / "best"
    logger = RunLogger(out / "logs" / "train_log.jsonl", enabled=accelerator.is_main_process, tensorboard_dir=out / "tensorboard")
    start_epoch, global_step = 0, 0
    best = {"epoch": -1, "value": -float("inf"), "metrics": None}
    history: list[dict] = []
    if (state := resume_or_reset(accelerator, logger, "finetune", ckpt_root, resume, also_clear=(best_dir,))) is not None:
        start_epoch, global_step, best, history = state["epoch"] + 1, state["global_step"], state["best"], state["history"]

    t0 = time.time()
    bad_epochs = 0
    for epoch in range(start_epoch, f.epochs if cfg.finetune.do_finetune else 0):
        rows = masked_prompts(corpus, train_examples, f.mask_fraction, cfg.seed, epoch, cfg.data.max_length)
        loader = accelerator.prepare_data_loader(DataLoader(rows, batch_size=f.batch_size, shuffle=False, collate_fn=collate))
        model.train()
        bar = tqdm(loader, desc=f"finetune {epoch + 1}/{f.epochs}", disable=not accelerator.is_local_main_process, leave=False)
        for batch in bar:
            outputs = model(**{k: v for k, v in batch.items() if k in MODEL_KEYS}, target_items=batch["target_items"],
                            task="rec", reg_weight=cfg.model.mutual_reg_weight)
            accelerator.backward(outputs.loss)
            if f.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), f.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            if global_step % cfg.output.log_every == 0 or global_step == 1:
                loss = mean_loss_across(accelerator, outputs.loss)
                logger.log({"stage": "finetune", "task": "rec", "epoch": epoch, "step": global_step, "loss": loss})
                bar.set_postfix(loss=f"{loss:.4f}")
            maybe_kill("finetune", global_step)

        val = evaluate_model(accelerator, model, corpus, "validation", cfg)
        val_short = {n: val[n] for n in names}
        history.append({"epoch": epoch, **val_short})
        logger.log({"stage": "finetune", "event": "validation", "epoch": epoch, "step": global_step, "metrics": val_short})
        accelerator.print(f"epoch {epoch}: " + " ".join(f"{n}={val[n]:.4f}" for n in names))
        if val[select] > best["value"]:
            best = {"epoch": epoch, "value": float(val[select]), "metrics": val_short}
            save_selected(accelerator, model, best_dir)
            bad_epochs = 0
        else:
            bad_epochs += 1
        save_checkpoint(accelerator, ckpt_root, epoch,
                        {"epoch": epoch, "global_step": global_step, "best": best, "history": history},
                        keep=cfg.output.save_total_limit)
        if f.patience and bad_epochs >= f.patience:
            accelerator.print(f"no {select} improvement for {f.patience} epochs; stopping")
            break
    train_wall = time.time() - t0

    # Test once, with the selected model (or the starting model when fine-tuning is off: NoFineTune).
    if best_dir.is_dir():
        final = load_model(best_dir, merge_lora=True)
    else:
        final = accelerator.unwrap_model(model)
        final = final.merge_and_unload() if hasattr(final, "merge_and_unload") else final
        save_selected(accelerator, final, best_dir)
    final = final.to(accelerator.device)
    val = evaluate_model(accelerator, final, corpus, "validation", cfg)
    test = evaluate_model(accelerator, final, corpus, "test", cfg)
    result = {
        "selection_metric": select,
        "best_epoch": best["epoch"],
        "validation": {k: v for k, v in val.items() if k != "users"},
        "test": {k: v for k, v in test.items() if k != "users"},
        "test_users": sorted(test["users"]),  # gathered across processes: each user exactly once
        "history": history,
        "train_wall_s": train_wall,
        "model_dir": str(best_dir),
        "steps": global_step,
    }
    if accelerator.is_main_process:
        atomic_write_json(out / "finetune_result.json", result)
    logger.close()
    return result


def save_selected(accelerator, model, best_dir: Path) -> None:
    """Save the selected model atomically as a plain save_pretrained folder; a LoRA model is saved merged, with
    its adapter in ``adapter/`` (reload: ``train.modeling_io.load_model(best_dir / "adapter", merge_lora=False)``)."""
    import copy

    from train.io_utils import replace_dir

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        net = accelerator.unwrap_model(model)
        tmp = best_dir.with_name(f".tmp-{best_dir.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        if hasattr(net, "merge_and_unload"):
            net.save_pretrained(str(tmp / "adapter"))
            net = copy.deepcopy(net).merge_and_unload()
        net.save_pretrained(str(tmp))
        replace_dir(tmp, best_dir)
    accelerator.wait_for_everyone()


def main(argv: list[str] | None = None) -> int:
    from train.cli_args import parse_stage_args

    cfg, args = parse_stage_args("finetune", argv)
    result = finetune(cfg, resume=args.resume)
    print({k: result[k] for k in ("best_epoch", "validation", "test")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
