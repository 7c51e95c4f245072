"""New products (docs/model.md "New items"): items without a single train interaction, scored from their text.

A dataset folder built with ``--cold-item-frac`` holds cold items out whole (``data_builders.preprocess``): their
collab rows were never a fine-tuning target, so the softmax only pushed them down. After fine-tuning, each cold
item's row is replaced by a ridge map from its item-text vector (the TF-IDF SVD of ``data_builders.item_text``,
item metadata only) to the collab item table, fitted on the warm items' trained rows; the ridge's alpha is chosen
on the validation cold items' shelf. The graph residuals are 0 for a cold item (its EASE column and its low-pass
degree are 0), so its score is the user state times its mapped row.

Metrics, per split ("validation" or "test"), over that split's cold items:
- ``shelf``: the "new arrivals" shelf: each user with a cold item among their targets ranks only the split's cold
  items (nothing masked: a cold item is never in a train history);
- ``shop_warm``: the whole catalog ranked (train items masked), relevant = the user's warm targets only: what the
  cold items' rows cost the warm recommendations.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from accelerate.utils import gather_object, send_to_device

from data_builders.collate import MODEL_INPUT_KEYS
from data_builders.corpus import Corpus
from data_builders.item_text import item_token_counts, text_svd
from train.common import rank_rows
from train.config import RunConfig
from train.evaluate import example_batches, length_sorted, rec_rows
from train.metrics import metric_names, per_user_metrics, summarize

COLD_METRIC_SETS = ("shelf", "shop_warm")


def warm_item_mask(corpus: Corpus) -> np.ndarray:
    """(I,) bool: items with at least one train interaction."""
    return np.bincount(np.asarray(corpus.hops.graph.edges)[:, 1], minlength=corpus.num_items) > 0


def item_text_svd(corpus: Corpus, rank: int, seed: int):
    """``text_svd``'s (vectors, idf, basis) of the folder's item text (item metadata only), or None without text."""
    if "content" not in corpus.configs:
        return None
    fitted = text_svd(item_token_counts(corpus), rank, seed)
    return fitted if np.abs(fitted[0]).sum() > 0 else None


def fit_text_map(vectors: np.ndarray, rows: np.ndarray, fit: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge (with intercept) from item-text vectors to collab rows over the items ``fit`` selects: (k, d) weight
    and (d,) bias, so that ``vectors @ weight + bias`` approximates ``rows``."""
    x, y = vectors[fit].astype(np.float64), rows[fit].astype(np.float64)
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc = x - x_mean
    weight = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - y_mean))
    return weight, y_mean - x_mean @ weight


@torch.no_grad()
def _split_pass(accelerator, model, corpus: Corpus, split: str, cfg: RunConfig, consume) -> list:
    """One pass of the model over the split's recommendation prompts (this process's rows); ``consume(out, part)``
    gets each batch's rec output and its examples; returns what every process's calls returned, ordered by each
    batch's first row (the same order however many processes ran)."""
    net = accelerator.unwrap_model(model)
    was_training = net.training
    net.eval()
    mine = rank_rows(accelerator, corpus.num_rows("recommendation", split))
    bs = cfg.eval.batch_size
    collate = corpus.collator(cfg.data.max_length)
    results = []
    for part in example_batches(length_sorted(corpus.iter_rec_examples(split, mine, chunk_rows=bs * 64)), bs):
        batch = send_to_device(collate(rec_rows(corpus, part, cfg.data.max_length)), accelerator.device)
        out = net(**{k: v for k, v in batch.items() if k in MODEL_INPUT_KEYS}, task="rec")
        results.append((np.asarray([ex.row for ex in part]), consume(out, part)))
    if was_training:
        net.train()
    blocks = gather_object(results) if accelerator.num_processes > 1 else results
    return [value for _, value in sorted(((int(r[0]), v) for r, v in blocks if len(r)), key=lambda t: t[0])]


def _targets_in(part, items: np.ndarray) -> list[np.ndarray]:
    keep = set(items.tolist())
    return [np.asarray([j for j in ex.targets if j in keep], dtype=np.int64) for ex in part]


def user_states(accelerator, model, corpus: Corpus, split: str, cfg: RunConfig) -> tuple[np.ndarray, list[np.ndarray]]:
    """(n, d) user states of the split's users with a cold target, and those targets (item indices)."""
    cold = corpus.cold_items(split)
    blocks = _split_pass(accelerator, model, corpus, split, cfg, lambda out, part: (
        out.user_states.float().cpu().numpy(), _targets_in(part, cold)))
    states = np.concatenate([s for s, _ in blocks]) if blocks else np.zeros((0, model.config.n_embd))
    targets = [t for _, ts in blocks for t in ts]
    keep = np.asarray([len(t) > 0 for t in targets], dtype=bool)
    return states[keep], [t for t, k in zip(targets, keep) if k]


def candidate_columns(targets: Sequence[Sequence[int]], candidates: np.ndarray) -> list[np.ndarray]:
    """Each user's targets among ``candidates``, as column indices into ``candidates``."""
    column = {int(j): c for c, j in enumerate(candidates)}
    return [np.asarray([column[int(j)] for j in t if int(j) in column], dtype=np.int64) for t in targets]


def shelf_metrics(scores: np.ndarray, candidates: np.ndarray, targets: Sequence[np.ndarray], ks, ndcg_ks) -> dict:
    """Metrics of ranking only ``candidates`` ((n, C) scores, one column per candidate) against each user's targets
    among them."""
    relevant = candidate_columns(targets, candidates)
    return summarize(per_user_metrics(scores, relevant=relevant, exclude=None, ks=ks, ndcg_ks=ndcg_ks))


@torch.no_grad()
def set_cold_rows(model, items: np.ndarray, rows: np.ndarray) -> None:
    table = model.id_embeddings("collab").item.weight
    table[torch.as_tensor(items)] = torch.as_tensor(rows, dtype=table.dtype, device=table.device)


def held_out_cold_items(corpus: Corpus) -> np.ndarray:
    """The folder's cold items (validation and test), sorted."""
    return np.sort(np.concatenate([corpus.cold_items("validation"), corpus.cold_items("test")]))


def fit_cold_item_map(accelerator, model, corpus: Corpus, cfg: RunConfig) -> dict:
    """Fill the model's text map (``model.cold_item_map``) from the warm items' trained rows and write the mapped
    rows of the folder's cold items into the collab item table.

    With validation cold items, the ridge alpha is the value of ``finetune.cold_map_alpha_grid`` with the best
    validation shelf selection metric (first of equals); without, the grid's first value. Returns the sweep, or
    why nothing was fitted."""
    net = accelerator.unwrap_model(model)
    lever = net.cold_item_map
    if lever is None:
        return {"skipped": "model.cold_item_map_rank is 0: the model keeps no text map (new items cannot be scored)"}
    fitted = item_text_svd(corpus, lever.basis.shape[1], cfg.seed)
    if fitted is None:
        return {"skipped": f"{corpus.folder} has no item text: the model cannot score items without interactions"}
    vectors, idf, basis = fitted
    warm, cold = warm_item_mask(corpus), held_out_cold_items(corpus)
    rows = net.id_embeddings("collab").item.weight.detach().float().cpu().numpy()
    alphas, metric = list(cfg.finetune.cold_map_alpha_grid), cfg.finetune.selection_metric
    report: dict = {"metric": metric, "alphas": alphas, "cold_items": int(len(cold)), "warm_items": int(warm.sum())}
    best = 0
    if len(corpus.cold_items("validation")):
        states, targets = user_states(accelerator, model, corpus, "validation", cfg)
        candidates = corpus.cold_items("validation")
        sweep = []
        for alpha in alphas:
            weight, bias = fit_text_map(vectors, rows, warm, alpha)
            mapped = vectors[candidates] @ weight + bias
            sweep.append(shelf_metrics(states @ mapped.T, candidates, targets, cfg.eval.recall_ks, cfg.eval.ndcg_ks))
        report["values"] = [m[metric] for m in sweep]
        best = int(np.argmax(report["values"]))
        report["validation_shelf"] = sweep[best]
    weight, bias = fit_text_map(vectors, rows, warm, alphas[best])
    lever.set_tables(idf, basis, weight, bias)
    set_cold_rows(net, cold, vectors[cold] @ weight + bias)
    report["chosen"] = alphas[best]
    accelerator.print(f"cold items: text map alpha {alphas[best]}"
                      + (f", chosen on the validation shelf ({metric} {report['values'][best]:.4f})" if "values" in report else
                         " (the grid's first: no validation cold items)"))
    return report


def cold_item_metrics(accelerator, model, corpus: Corpus, split: str, cfg: RunConfig) -> dict:
    """``{"shelf": metrics, "shop_warm": metrics}`` of the model as it is (one pass over the split)."""
    ks, ndcg_ks = cfg.eval.recall_ks, cfg.eval.ndcg_ks
    names = metric_names(ks, ndcg_ks)
    cold = corpus.cold_items(split)
    warm = np.flatnonzero(warm_item_mask(corpus))
    train_ui = corpus.hops.graph.ui

    def consume(out, part):
        scores = out.scores.float().cpu().numpy()
        users = np.asarray([ex.user for ex in part], dtype=np.int64)
        shelf = per_user_metrics(scores[:, cold], relevant=candidate_columns([ex.targets for ex in part], cold),
                                 exclude=None, ks=ks, ndcg_ks=ndcg_ks)
        shop = per_user_metrics(scores, relevant=_targets_in(part, warm), exclude=train_ui[users], ks=ks, ndcg_ks=ndcg_ks)
        return [np.stack([m[n] for n in names] + [m["num_relevant"].astype(np.float64)], axis=1) for m in (shelf, shop)]

    blocks = _split_pass(accelerator, model, corpus, split, cfg, consume)
    out = {}
    for k, name in enumerate(COLD_METRIC_SETS):
        vals = np.concatenate([b[k] for b in blocks]) if blocks else np.zeros((0, len(names) + 1))
        per_user = {n: vals[:, j] for j, n in enumerate(names)}
        per_user["num_relevant"] = vals[:, -1].astype(np.int64)
        out[name] = summarize(per_user)
    return out

