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
import contextlib
from typing import Iterator, Protocol, Sequence

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
from train.metrics import item_popularity, metric_names, per_user_metrics, summarize
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
    yield from score_variants(model, out, residual_scales, term)


@torch.no_grad()
def score_variants(model, out, residual_scales: Sequence[float] | None = None,
                   term: str = "graph_residual") -> Iterator[torch.Tensor]:
    """``score_batch``'s matrices from a rec output ``out`` of ``model``."""
    if residual_scales is None:
        yield out.scores.float()
        return
    residual = out.score_terms[term].float()
    others = out.scores.float() - float(getattr(model, term).scale) * residual
    for s in residual_scales:
        yield others + s * residual


class Scorer(Protocol):
    """What the evaluation loop ranks: for a batch of a split's examples (``RecExample``: user, prompt, targets),
    (B, I) item scores, one matrix per variant (``num_variants`` of them; a scale sweep has one per scale)."""

    num_variants: int

    def score_users(self, examples: list) -> Iterator[np.ndarray]:
        ...


class ModelScorer:
    """A GraphGPT2 model as a ``Scorer``: each batch's personalized predictive prompts collated and run once in
    eval mode; with ``residual_scales``, one variant per scale of the residual ``term`` (``score_variants``); with
    ``lowpass_bases`` too (the low-pass term only), one per (basis, scale) pair, bases outer: a rank sweep
    (``finetune.lowpass_rank_grid``) from the same forward pass."""

    def __init__(self, accelerator, model, corpus: Corpus, cfg: RunConfig, residual_scales: Sequence[float] | None = None,
                 term: str = "graph_residual", lowpass_bases: Sequence[torch.Tensor] | None = None):
        self.net, self.device = accelerator.unwrap_model(model), accelerator.device
        self.corpus, self.max_length = corpus, cfg.data.max_length
        self.collate = corpus.collator(cfg.data.max_length)
        self.scales, self.term = (None if residual_scales is None else list(residual_scales)), term
        self.bases = list(lowpass_bases) if lowpass_bases else None
        if self.bases and (term != "graph_lowpass" or self.scales is None):
            raise ValueError("lowpass_bases sweep the low-pass term: pass term='graph_lowpass' and residual_scales")
        self.num_variants = 1 if residual_scales is None else len(self.scales) * len(self.bases or [None])

    def batch(self, examples: list) -> dict:
        return send_to_device(self.collate(rec_rows(self.corpus, examples, self.max_length)), self.device)

    @torch.no_grad()
    def outputs(self, examples: list, batch: dict | None = None):
        """The rec output (scores, score terms, user states) of the examples' prompts (``batch``: collated already)."""
        batch = self.batch(examples) if batch is None else batch
        return self.net(**{k: v for k, v in batch.items() if k in MODEL_INPUT_KEYS}, task="rec")

    @torch.no_grad()
    def score_users(self, examples: list) -> Iterator[np.ndarray]:
        batch = self.batch(examples)
        out = self.outputs(examples, batch)
        if self.bases is None:
            for scores in score_variants(self.net, out, self.scales, self.term):
                yield scores.cpu().numpy()
            return
        lowpass = self.net.graph_lowpass
        others = out.scores.float() - float(lowpass.scale) * out.score_terms["graph_lowpass"].float()
        item_index, is_item = self.net.prompt_items(batch["input_ids"], batch.get("attention_mask"))
        for basis in self.bases:  # the term as the model computes it with that basis kept (keep_rank)
            term = lowpass.standardised(item_index, is_item, basis=basis).to(out.scores.dtype).float()
            for s in self.scales:
                yield (others + s * term).cpu().numpy()


class PopularityScorer:
    """The popularity baseline as a ``Scorer``: every user gets the items' train-interaction counts."""

    num_variants = 1

    def __init__(self, corpus: Corpus):
        self.counts = item_popularity(corpus.interaction_matrix("train"))

    def score_users(self, examples: list) -> Iterator[np.ndarray]:
        yield np.broadcast_to(self.counts, (len(examples), len(self.counts)))


@contextlib.contextmanager
def eval_mode(model):
    """The model in eval mode inside the block, back in its training mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()


def split_pass(accelerator, corpus: Corpus, split: str, cfg: RunConfig, consume, chunk_batches: int = 64,
               only_rows: np.ndarray | None = None) -> list:
    """The one loop over a split's personalized predictive prompts, for every evaluation (validation, the scale
    sweeps, test, popularity, the new-item stages, the probes): this process's rows (all of them when
    ``accelerator`` is None), read ``chunk_batches`` batches at a time and length-sorted within a chunk, in batches
    of ``eval.batch_size``; ``consume(examples)`` gets each batch. ``only_rows`` keeps those rows of the split only
    (a sample). Returns ``(rows, value)`` per batch of every process, ordered by each batch's first row (the same
    order however many processes ran)."""
    num_rows = corpus.num_rows("recommendation", split)
    mine = range(num_rows) if accelerator is None else rank_rows(accelerator, num_rows)
    bs = cfg.eval.batch_size
    kept = None if only_rows is None else np.isin(np.arange(mine.start, mine.stop), only_rows)

    def chunks():
        for chunk in corpus.iter_rec_examples(split, mine, chunk_rows=bs * chunk_batches):
            yield chunk if kept is None else [ex for ex in chunk if kept[ex.row - mine.start]]

    chunks_sorted = lambda: length_sorted(chunks())  # noqa: E731
    # a DataLoader over the stream of batches, like every other loop: its iterator draws the one torch seed
    # training's random stream has always seen at each evaluation
    loader = DataLoader(_BatchStream(lambda: example_batches(chunks_sorted(), bs)), batch_size=None, collate_fn=lambda part: part)
    results = [(np.asarray([ex.row for ex in part], dtype=np.int64), consume(part)) for part in loader]
    many = accelerator is not None and accelerator.num_processes > 1
    blocks = gather_object(results) if many else results
    return sorted((b for b in blocks if len(b[0])), key=lambda b: int(b[0][0]))


def model_pass(accelerator, model, corpus: Corpus, split: str, cfg: RunConfig, consume) -> list:
    """``split_pass`` with the model run in eval mode on each batch: ``consume(out, examples)`` gets the rec output;
    returns the values in ``split_pass``'s order."""
    scorer = ModelScorer(accelerator, model, corpus, cfg)
    with eval_mode(scorer.net):
        blocks = split_pass(accelerator, corpus, split, cfg, lambda part: consume(scorer.outputs(part), part))
    return [value for _, value in blocks]


def evaluate_scorer(accelerator, scorer: Scorer, corpus: Corpus, split: str, cfg: RunConfig,
                    only_rows: np.ndarray | None = None, per_user: bool = False) -> list[dict]:
    """Mean metrics over the split's users (``only_rows``: those rows of it) of each of the scorer's variants, the
    user's train items masked; every process gets the same dicts (``accelerator`` None: one process scores every
    row). The gathered rows are checked to be the split's (or ``only_rows``), once each, and the means are taken in
    row order. ``per_user``: each dict also holds the per-user arrays it averaged (``"per_user"``, in the order of
    ``"users"``), for paired statistics (benchmarks/paired_bootstrap.py)."""
    expected = np.arange(corpus.num_rows("recommendation", split)) if only_rows is None else np.unique(only_rows)
    train_ui = corpus.hops.graph.ui  # the train items of each user (CSR rows): masked out of the ranking
    ks, ndcg_ks = cfg.eval.recall_ks, cfg.eval.ndcg_ks
    names = metric_names(ks, ndcg_ks)

    def consume(part):
        users = np.asarray([ex.user for ex in part], dtype=np.int64)
        relevant = [np.asarray(ex.targets, dtype=np.int64) for ex in part]
        values = []
        for scores in scorer.score_users(part):
            pu = per_user_metrics(scores, relevant=relevant, exclude=train_ui[users], ks=ks, ndcg_ks=ndcg_ks)
            values.append(np.stack([pu[n] for n in names] + [pu["num_relevant"].astype(np.float64)], axis=1))
        return users, values

    blocks = split_pass(accelerator, corpus, split, cfg, consume, only_rows=only_rows)
    idx = np.concatenate([rows for rows, _ in blocks]) if blocks else np.zeros(0, np.int64)
    users = np.concatenate([value[0] for _, value in blocks]) if blocks else np.zeros(0, np.int64)
    if len(idx) != len(expected) or not np.array_equal(np.sort(idx), expected):
        raise RuntimeError(
            f"evaluation gathered {len(idx)} rows ({len(np.unique(idx))} unique) for {len(expected)} users of '{split}': "
            "users were duplicated or missed across processes"
        )
    order = np.argsort(idx)
    results = []
    for v in range(scorer.num_variants):
        vals = np.concatenate([value[1][v] for _, value in blocks]) if blocks else np.zeros((0, len(names) + 1))
        values = {n: vals[order, j] for j, n in enumerate(names)}
        values["num_relevant"] = vals[order, -1].astype(np.int64)
        result = summarize(values)
        result["split"] = split
        result["users"] = [int(u) for u in users[order]]
        if per_user:
            result["per_user"] = values
        results.append(result)
    return results


def evaluate_model(accelerator, model, corpus: Corpus, split: str, cfg: RunConfig) -> dict:
    """Mean metrics of the model over the split's users (all processes get the same dict)."""
    scorer = ModelScorer(accelerator, model, corpus, cfg)
    with eval_mode(scorer.net):
        return evaluate_scorer(accelerator, scorer, corpus, split, cfg)[0]


def evaluate_residual_scales(accelerator, model, corpus: Corpus, split: str, cfg: RunConfig, scales: Sequence[float],
                             term: str = "graph_residual", only_rows: np.ndarray | None = None,
                             lowpass_bases: Sequence[torch.Tensor] | None = None) -> list[dict]:
    """The metrics of ``evaluate_model`` with the scale of the residual ``term`` ("graph_residual", or the
    low-pass "graph_lowpass") set to each of ``scales`` in turn, from one pass over the split (``only_rows``: over
    those rows of it; how ``finetune.residual_scale_grid`` and ``lowpass_scale_grid`` are searched on validation).
    With ``lowpass_bases``, the low-pass term's scales at each of those bases in turn (bases outer)."""
    if getattr(accelerator.unwrap_model(model), term, None) is None:
        raise ValueError(f"evaluate_residual_scales needs a model with a {term} (model.graph_residual / graph_lowpass_rank)")
    scorer = ModelScorer(accelerator, model, corpus, cfg, scales, term, lowpass_bases)
    with eval_mode(scorer.net):
        return evaluate_scorer(accelerator, scorer, corpus, split, cfg, only_rows)


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


def popularity_metrics(corpus: Corpus, split: str, cfg: RunConfig, accelerator=None) -> dict:
    """The popularity baseline (train-interaction counts) on the same users, masks and metrics as the model, by the
    same loop (``evaluate_scorer``), in batches of ``eval.batch_size`` users."""
    metrics = evaluate_scorer(accelerator, PopularityScorer(corpus), corpus, split, cfg)[0]
    return {k: v for k, v in metrics.items() if k not in ("split", "users")}


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
