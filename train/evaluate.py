"""Full-catalog ranking evaluation of a GraphGPT2 recommender (paper §4.1.3, DESIGN.md §5).

    accelerate launch train/evaluate.py --config demo [--model-dir DIR] [--split test]

Every user of the split is scored against all items from the personalized predictive prompt with their full
train history; the user's train items are masked (-inf) before ranking; validation items are neither shown
nor masked at test time (the CLLM4Rec protocol). Metrics come from ``train.metrics`` (numpy): Recall@20/@40 with
the min(k, |rel|) denominator (authors' code) and the |rel| one (paper Eq. 8, keys ``*_paper``), NDCG@100.

Streaming and multi-process: each process reads only its contiguous shard of the split's rows
(``Corpus.iter_rec_examples``, a chunk of prompts at a time), takes the top-k of each batch's scores and keeps
only the per-user metric values; the blocks of all processes are gathered once at the end (no padding, so no
user is counted twice). The gathered row indices are checked to be exactly the split's rows, once each, before
averaging in row order, so the means equal the one-process run's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from accelerate.utils import gather_object, send_to_device
from torch.utils.data import DataLoader, IterableDataset

from data_builders.collate import MODEL_INPUT_KEYS
from data_builders.corpus import Corpus
from train.cli_args import config_from_args, run_stage, stage_parser
from train.common import make_accelerator, rank_rows
from train.config import RunConfig
from train.io_utils import BEST_DIR, PRETRAINED_DIR, atomic_write_json, atomic_write_text
from train.metrics import item_popularity, merge_per_user, metric_names, per_user_metrics, summarize
from train.modeling_io import load_model


def rec_rows(corpus: Corpus, examples: list, max_length: int) -> list[dict]:
    """Collator rows of personalized predictive prompts (the history cut from the left past ``max_length``)."""
    rows = []
    for ex in examples:
        ids, pos = ex.input_ids, ex.node_positions
        if len(ids) > max_length:  # re-encode with the history cut from the left, keeping the trigger
            ids, pos = corpus.encode_rec_prompt(ex.user, ex.history, max_length)
        rows.append({"input_ids": ids, "node_positions": pos, "labels": [-100] * len(ids), **ex.pair_fields()})
    return rows


def example_batches(chunks, batch_size: int):
    """Lists of ``batch_size`` examples (the last one shorter) from a stream of chunks, across chunk (and file)
    boundaries, so the batches are the same however the rows are stored."""
    pending: list = []
    for chunk in chunks:
        pending.extend(chunk)
        start = 0
        while len(pending) - start >= batch_size:
            yield pending[start:start + batch_size]
            start += batch_size
        pending = pending[start:]
    if pending:
        yield pending


def length_sorted(chunks):
    """Each chunk of examples sorted by prompt length (stable), so a batch pads to a length near its own prompts'.

    On Beauty a batch of 256 validation prompts padded to its longest holds 3.5x the real tokens in the stored
    order; the metrics are per user and put back in row order, so the order of the batches changes nothing."""
    for chunk in chunks:
        yield sorted(chunk, key=lambda ex: len(ex.input_ids))


class _BatchStream(IterableDataset):
    """An iterable dataset whose items are whole batches made by ``make()`` (a fresh generator per pass)."""

    def __init__(self, make):
        self.make = make

    def __iter__(self):
        return iter(self.make())


@torch.no_grad()
def score_batch(model, batch: dict, residual_scales: Sequence[float] | None = None,
                term: str = "graph_residual") -> Iterator[torch.Tensor]:
    """(B, I) item scores from the last non-pad token (task="rec"): the scores, or with ``residual_scales`` one
    matrix per scale s: the scores with the model's standardised ``term`` ("graph_residual" or "graph_lowpass")
    weighted s instead of its current scale. The model runs once; the matrices are made one at a time as they are
    read, so a sweep holds two (B, I) arrays more, not one per scale (0.8 GB for 8 scales at 100k items)."""
    out = model(**{k: v for k, v in batch.items() if k in MODEL_INPUT_KEYS}, task="rec")
    if residual_scales is None:
        yield out.scores.float()
        return
    residual = out.score_terms[term].float()
    others = out.scores.float() - float(getattr(model, term).scale) * residual
    for s in residual_scales:
        yield others + s * residual


def evaluate_model(accelerator, model, corpus: Corpus, split: str, cfg: RunConfig, chunk_batches: int = 64) -> dict:
    """Mean metrics over the split's users (all processes get the same dict); ``chunk_batches`` batches of
    prompts are read at a time."""
    return _evaluate(accelerator, model, corpus, split, cfg, chunk_batches)[0]


def evaluate_residual_scales(accelerator, model, corpus: Corpus, split: str, cfg: RunConfig, scales: Sequence[float],
                             chunk_batches: int = 64, term: str = "graph_residual") -> list[dict]:
    """The metrics of ``evaluate_model`` with the scale of the residual ``term`` ("graph_residual", or the
    low-pass "graph_lowpass") set to each of ``scales`` in turn, from one pass over the split (how
    ``finetune.residual_scale_grid`` and ``lowpass_scale_grid`` are searched on validation)."""
    if getattr(accelerator.unwrap_model(model), term, None) is None:
        raise ValueError(f"evaluate_residual_scales needs a model with a {term} (model.graph_residual / graph_lowpass_rank)")
    return _evaluate(accelerator, model, corpus, split, cfg, chunk_batches, list(scales), term)


@torch.no_grad()
def _evaluate(accelerator, model, corpus: Corpus, split: str, cfg: RunConfig, chunk_batches: int,
              residual_scales: list[float] | None = None, term: str = "graph_residual") -> list[dict]:
    """One metrics dict per score variant (``score_batch``)."""
    num_rows = corpus.num_rows("recommendation", split)
    mine = rank_rows(accelerator, num_rows)
    train_ui = corpus.hops.graph.ui  # the train items of each user (CSR rows): masked out of the ranking
    ks, ndcg_ks = cfg.eval.recall_ks, cfg.eval.ndcg_ks
    names = metric_names(ks, ndcg_ks)
    collate = corpus.collator(cfg.data.max_length)
    net = accelerator.unwrap_model(model)
    was_training = net.training
    net.eval()
    bs = cfg.eval.batch_size
    variants = 1 if residual_scales is None else len(residual_scales)
    row_parts, user_parts, val_parts = [], [], [[] for _ in range(variants)]
    # a DataLoader over the stream of batches, like every other loop: its iterator draws the one torch seed
    # training's random stream has always seen at each evaluation
    chunks = lambda: length_sorted(corpus.iter_rec_examples(split, mine, chunk_rows=bs * chunk_batches))  # noqa: E731
    loader = DataLoader(_BatchStream(lambda: example_batches(chunks(), bs)),
                        batch_size=None, collate_fn=lambda part: (collate(rec_rows(corpus, part, cfg.data.max_length)), part))
    for batch, part in loader:
        batch = send_to_device(batch, accelerator.device)
        users = np.asarray([ex.user for ex in part], dtype=np.int64)
        relevant = [np.asarray(ex.targets, dtype=np.int64) for ex in part]
        for parts, scores in zip(val_parts, score_batch(net, batch, residual_scales, term)):
            pu = per_user_metrics(scores.cpu().numpy(), relevant=relevant, exclude=train_ui[users], ks=ks, ndcg_ks=ndcg_ks)
            parts.append(np.stack([pu[n] for n in names] + [pu["num_relevant"].astype(np.float64)], axis=1))
        row_parts.append(np.asarray([ex.row for ex in part], dtype=np.int64))
        user_parts.append(users)
    if was_training:
        net.train()
    local = (np.concatenate(row_parts) if row_parts else np.zeros(0, np.int64),
             np.concatenate(user_parts) if user_parts else np.zeros(0, np.int64),
             [np.concatenate(parts) if parts else np.zeros((0, len(names) + 1)) for parts in val_parts])
    blocks = gather_object([local]) if accelerator.num_processes > 1 else [local]
    idx = np.concatenate([b[0] for b in blocks])
    users = np.concatenate([b[1] for b in blocks])
    if len(idx) != num_rows or len(np.unique(idx)) != num_rows:
        raise RuntimeError(
            f"evaluation gathered {len(idx)} rows ({len(np.unique(idx))} unique) for {num_rows} users of '{split}': "
            "users were duplicated or missed across processes"
        )
    order = np.argsort(idx)
    results = []
    for v in range(variants):
        vals = np.concatenate([b[2][v] for b in blocks])
        per_user = {n: vals[order, j] for j, n in enumerate(names)}
        per_user["num_relevant"] = vals[order, -1].astype(np.int64)
        result = summarize(per_user)
        result["split"] = split
        result["users"] = [int(u) for u in users[order]]
        results.append(result)
    return results


def metrics_table(rows: dict[str, dict], names: list[str]) -> str:
    """Markdown table: one row per model/split, one column per metric."""
    head = "| model | " + " | ".join(names) + " | users |\n|---|" + "---|" * (len(names) + 1) + "\n"
    body = ""
    for label, m in rows.items():
        body += f"| {label} | " + " | ".join(f"{m[n]:.4f}" for n in names) + f" | {m.get('num_users', '')} |\n"
    return head + body


def write_metrics(out_dir: str | Path, name: str, metrics: dict, names: list[str], extra_rows: dict | None = None) -> tuple[Path, Path]:
    """``<name>.json`` (all fields) and ``<name>.md`` (a table, popularity etc. as extra rows)."""
    out_dir = Path(out_dir)
    jpath, mpath = out_dir / f"{name}.json", out_dir / f"{name}.md"
    atomic_write_json(jpath, metrics)
    rows = {f"GraphGPT2 ({metrics.get('split', '')})": metrics}
    rows.update(extra_rows or {})
    atomic_write_text(mpath, metrics_table(rows, names))
    return jpath, mpath


def popularity_metrics(corpus: Corpus, split: str, cfg: RunConfig, max_scores: int = 1 << 24) -> dict:
    """The popularity baseline (train-interaction counts) on the same users, masks and metrics.

    Streams users in blocks of at most ``max_scores`` scores (users x items), so memory does not grow with
    users x items.
    """
    counts = item_popularity(corpus.interaction_matrix("train"))
    train_ui = corpus.hops.graph.ui  # each user's train items (CSR rows), masked as in evaluate_model
    cols = corpus.dataset("recommendation", split, columns=["user", "targets"]).to_dict()
    users, targets = np.asarray(cols["user"], dtype=np.int64), cols["targets"]
    block = max(1, max_scores // max(1, corpus.num_items))
    parts = [
        per_user_metrics(
            np.broadcast_to(counts, (len(users[start:start + block]), corpus.num_items)),
            relevant=[np.asarray(t, dtype=np.int64) for t in targets[start:start + block]],
            exclude=train_ui[users[start:start + block]],
            ks=cfg.eval.recall_ks,
            ndcg_ks=cfg.eval.ndcg_ks,
        )
        for start in range(0, len(users), block)
    ]
    return summarize(merge_per_user(parts))


def main(argv: list[str] | None = None) -> int:

    ap = stage_parser("accelerate launch train/evaluate.py", "Full-catalog Recall@k / NDCG@k of a trained model on one "
                      "split, next to popularity; writes <output.dir>/eval_<split>.{json,md}.",
                      "accelerate launch train/evaluate.py --config quick --split validation")
    ap.add_argument("--model-dir", default=None, help="model folder (default: <output.dir>/best, else /pretrained)")
    ap.add_argument("--split", default="test", choices=["validation", "test"], help="split to score (default: test)")
    args = ap.parse_args(argv)

    def run() -> int:
        cfg = config_from_args(args)
        out = Path(cfg.output.dir)
        candidates = [Path(args.model_dir)] if args.model_dir else [out / BEST_DIR, out / PRETRAINED_DIR]
        model_dir = next((p for p in candidates if p.is_dir()), None)
        if model_dir is None:
            raise FileNotFoundError(f"no model folder at {' or '.join(map(str, candidates))}: train first or pass --model-dir")
        accelerator = make_accelerator(cfg, out)
        corpus = Corpus(cfg.data.folder, cfg.data.leave_user_out_hops)
        model = load_model(model_dir)
        corpus.check_model(model.config)
        model = accelerator.prepare(model)
        metrics = evaluate_model(accelerator, model, corpus, args.split, cfg)
        if accelerator.is_main_process:
            names = metric_names(cfg.eval.recall_ks, cfg.eval.ndcg_ks)
            pop = popularity_metrics(corpus, args.split, cfg)
            write_metrics(out, f"eval_{args.split}", metrics, names, {"Popularity": pop})
            print(f"{model_dir}, {args.split}:")
            print(metrics_table({"GraphGPT2": metrics, "Popularity": pop}, names))
        return 0

    return run_stage(run, args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
