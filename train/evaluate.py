"""Full-catalog ranking evaluation of a GraphGPT2 recommender (paper §4.1.3, DESIGN.md §5).

    accelerate launch train/evaluate.py --config demo [--model-dir DIR] [--split test]

Every user of the split is scored against all items from the personalized predictive prompt with their full
train history; the user's train items are masked (-inf) before ranking; validation items are neither shown
nor masked at test time (the CLLM4Rec protocol). Metrics come from ``train.metrics`` (numpy): Recall@20/@40 with
the min(k, |rel|) denominator (authors' code) and the |rel| one (paper Eq. 8, keys ``*_paper``), NDCG@100.

Multi-process: users are sharded by Accelerate; every batch carries its row indices, and
``accelerator.gather_for_metrics`` drops the padding duplicates of the last batch. The gathered row indices
are checked to be exactly the split's rows, once each, before averaging.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from data_builders.collate import MODEL_INPUT_KEYS
from data_builders.corpus import Corpus
from train.config import RunConfig
from train.io_utils import atomic_write_json, atomic_write_text
from train.metrics import evaluate_scores, item_popularity, metric_names, per_user_metrics, summarize


def rec_loader(accelerator, corpus: Corpus, examples: list, batch_size: int, max_length: int):
    """Sharded DataLoader of (model batch, row index) over personalized predictive prompts."""
    collate = corpus.collator(max_length)
    rows = []
    for i, ex in enumerate(examples):
        ids, pos = ex.input_ids, ex.node_positions
        if len(ids) > max_length:  # re-encode with the history cut from the left, keeping the trigger
            ids, pos = corpus.encode_rec_prompt(ex.user, ex.history, max_length)
        rows.append({"input_ids": ids, "node_positions": pos, "labels": [-100] * len(ids), "_idx": i, **ex.pair_fields()})

    def collate_with_index(batch):
        idx = torch.tensor([r["_idx"] for r in batch], dtype=torch.long)
        return collate([{k: v for k, v in r.items() if k != "_idx"} for r in batch]), idx

    return accelerator.prepare_data_loader(DataLoader(rows, batch_size=batch_size, shuffle=False, collate_fn=collate_with_index))


@torch.no_grad()
def score_batch(model, batch: dict) -> torch.Tensor:
    """(B, I) item scores from the last non-pad token (task="rec")."""
    out = model(**{k: v for k, v in batch.items() if k in MODEL_INPUT_KEYS}, task="rec")
    return out.scores.float()


@torch.no_grad()
def evaluate_model(accelerator, model, corpus: Corpus, split: str, cfg: RunConfig) -> dict:
    """Mean metrics over the split's users (all processes get the same dict)."""
    examples = corpus.rec_examples(split)
    train_items = corpus.train_items()
    ks, ndcg_ks = cfg.eval.recall_ks, cfg.eval.ndcg_ks
    names = metric_names(ks, ndcg_ks)
    net = accelerator.unwrap_model(model)
    was_training = net.training
    net.eval()
    loader = rec_loader(accelerator, corpus, examples, cfg.eval.batch_size, cfg.data.max_length)
    all_idx, all_vals = [], []
    for batch, idx in loader:
        scores = score_batch(net, batch).cpu().numpy()
        rows = idx.cpu().tolist()
        pu = per_user_metrics(
            scores,
            relevant=[np.asarray(examples[i].targets, dtype=np.int64) for i in rows],
            exclude=[np.asarray(train_items[examples[i].user], dtype=np.int64) for i in rows],
            ks=ks,
            ndcg_ks=ndcg_ks,
        )
        vals = torch.tensor(np.stack([pu[n] for n in names] + [pu["num_relevant"].astype(np.float64)], axis=1), device=idx.device)
        g_idx, g_vals = accelerator.gather_for_metrics((idx, vals))
        all_idx.append(g_idx.cpu())
        all_vals.append(g_vals.cpu())
    if was_training:
        net.train()
    idx = torch.cat(all_idx).numpy() if all_idx else np.zeros(0, np.int64)
    vals = torch.cat(all_vals).numpy() if all_vals else np.zeros((0, len(names) + 1))
    if len(idx) != len(examples) or len(np.unique(idx)) != len(examples):
        raise RuntimeError(
            f"evaluation gathered {len(idx)} rows ({len(np.unique(idx))} unique) for {len(examples)} users of '{split}': "
            "users were duplicated or missed across processes"
        )
    order = np.argsort(idx)
    per_user = {n: vals[order, j] for j, n in enumerate(names)}
    per_user["num_relevant"] = vals[order, -1].astype(np.int64)
    result = summarize(per_user)
    result["split"] = split
    result["users"] = [int(examples[i].user) for i in idx[order]]
    return result


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


def popularity_metrics(corpus: Corpus, split: str, cfg: RunConfig) -> dict:
    """The popularity baseline (train-interaction counts) on the same users, masks and metrics."""
    examples = corpus.rec_examples(split)
    train_items = corpus.train_items()
    counts = item_popularity(corpus.interaction_matrix("train"))
    scores = np.broadcast_to(counts, (len(examples), corpus.num_items))
    return evaluate_scores(
        scores,
        relevant=[np.asarray(e.targets, dtype=np.int64) for e in examples],
        exclude=[np.asarray(train_items[e.user], dtype=np.int64) for e in examples],
        ks=cfg.eval.recall_ks,
        ndcg_ks=cfg.eval.ndcg_ks,
    )


def main(argv: list[str] | None = None) -> int:
    from train.cli_args import config_from_args, report_user_errors, stage_parser
    from train.common import make_accelerator
    from train.modeling_io import load_model

    ap = stage_parser("evaluate")
    ap.add_argument("--model-dir", default=None, help="model folder (default: <output.dir>/best or /pretrained)")
    ap.add_argument("--split", default="test", choices=["validation", "test"])
    args = ap.parse_args(argv)

    def run() -> int:
        cfg = config_from_args(args)
        out = Path(cfg.output.dir)
        candidates = [Path(args.model_dir)] if args.model_dir else [out / "best", out / "pretrained"]
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
            write_metrics(out, f"eval_{args.split}", metrics, names, {"Popularity": popularity_metrics(corpus, args.split, cfg)})
            print(json.dumps({k: v for k, v in metrics.items() if k != "users"}, indent=2))
        return 0

    return report_user_errors(run, args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
