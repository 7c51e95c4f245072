"""Probe (validation shelf only, not a shipped scorer): do collaborative scores, carried to a cold item through its
text neighbours, beat content kNN on the "new arrivals" shelf of a cold-item folder?

    python -m benchmarks.cold_transfer_probe outputs/cold/beauty --split validation

score(u, c) = sum over the K warm items j nearest to cold item c by TF-IDF cosine of sim(c, j)^p x S(u, j), where
S is EASE's warm score of user u (lambda in {50, 250}) or the cosine co-occurrence score; also each of those,
standardised per user, plus w x content kNN (mean), standardised. Prints the validation Recall@20 of every
variant, best first (issue "New products", RESULTS log of 2026-12-06). Dense (shelf users x items): a probe for
catalogs of Beauty's size.

    python -m benchmarks.cold_transfer_probe outputs/cold/beauty --run outputs/cold/beauty_s0

carries the scores of a finished run's model instead (its published folder, the cold-item lever as fitted): the
model's cold-item scores plus beta x the cosine-weighted mean of the model's scores of the K nearest warm items, by
full TF-IDF cosine or by the rank-512 text vectors' cosine (the space the lever searches), K in {10, 20}: the probe
behind ``model.cold_item_neighbours``.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import scipy.sparse as sp

from pathlib import Path

from accelerate import Accelerator

from benchmarks.cold_items import content_knn, shelf_users
from data_builders.corpus import Corpus
from data_builders.item_graph import ease_closed_form
from data_builders.item_text import item_token_counts, text_svd, tfidf_rows
from train.cold_items import _targets_in, shelf_metrics, warm_item_mask
from train.config import load_config
from train.evaluate import model_pass
from train.modeling_io import load_model

KS, NDCG_KS = (20, 40), (100,)


def standardised(a: np.ndarray) -> np.ndarray:
    return (a - a.mean(1, keepdims=True)) / (a.std(1, keepdims=True) + 1e-12)


def neighbour_weights(sims: np.ndarray, k: int) -> np.ndarray:
    """(C, I) the top-k similarities of each cold item, zero elsewhere."""
    top = np.argpartition(-sims, k, axis=1)[:, :k]
    rows = np.arange(len(sims))[:, None]
    out = np.zeros_like(sims)
    out[rows, top] = sims[rows, top]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="a dataset folder built with --cold-item-frac")
    p.add_argument("--split", default="validation", choices=("validation", "test"))
    p.add_argument("--out", default=None, help="JSON of every variant's Recall@20")
    p.add_argument("--run", default=None, help="a finished run's output dir: carry its model's scores (see above)")
    args = p.parse_args(argv)
    res = model_transfer(args.folder, args.run, args.split) if args.run else warm_score_transfer(args.folder, args.split)
    for key, value in sorted(res.items(), key=lambda kv: -kv[1])[:15]:
        print(f"{key:28s} {value:.4f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


def model_transfer(folder: str, run: str, split: str) -> dict:
    """Validation shelf R@20 of the run's model, alone and plus beta x its text neighbours' mean model score."""
    cfg = load_config(str(Path(run) / "run_config.yaml"))
    corpus = Corpus(folder)
    model = load_model(Path(run) / "hub_model")
    candidates, warm = corpus.cold_items(split), warm_item_mask(corpus)

    def consume(out, part):
        return out.scores.float().numpy(), _targets_in(part, candidates)

    blocks = model_pass(Accelerator(cpu=True), model, corpus, split, cfg, consume)
    scores = np.concatenate([b[0] for b in blocks])
    targets = [t for b in blocks for t in b[1]]
    keep = np.asarray([len(t) > 0 for t in targets])
    scores, targets = scores[keep], [t for t, k in zip(targets, keep) if k]

    def recall(s: np.ndarray) -> float:
        return shelf_metrics(s, candidates, targets, KS, NDCG_KS)["recall@20"]

    counts = item_token_counts(corpus)
    tfidf = tfidf_rows(counts)
    vectors = text_svd(counts, 512, cfg.seed)[0].astype(np.float64)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-30)
    spaces = {"tfidf": (tfidf[candidates] @ tfidf.T).toarray(), "svd512": unit[candidates] @ unit.T}
    warm_scores = np.where(warm[None, :], scores, 0.0)
    res = {"model": recall(scores[:, candidates])}
    for space, sims in spaces.items():
        sims[:, ~warm] = 0.0
        for k in (10, 20):
            weights = neighbour_weights(sims, k)
            carried = warm_scores @ (weights / np.maximum(weights.sum(1, keepdims=True), 1e-12)).T
            res[f"{space}_K{k}_carried"] = recall(carried)
            for beta in (0.5, 1.0, 2.0, 4.0, 8.0):
                res[f"model+{beta:g}x{space}_K{k}"] = recall(scores[:, candidates] + beta * carried)
    return res


def warm_score_transfer(folder: str, split: str) -> dict:
    """Validation shelf R@20 of EASE / co-occurrence scores carried through text neighbours (module docstring)."""
    corpus = Corpus(folder)
    tfidf = tfidf_rows(item_token_counts(corpus))
    train = corpus.interaction_matrix("train").astype(np.float64).tocsr()
    users, targets = shelf_users(corpus, split)
    candidates = corpus.cold_items(split)
    history = corpus.hops.graph.ui[users]

    def recall(scores: np.ndarray) -> float:
        return shelf_metrics(scores, candidates, targets, KS, NDCG_KS)["recall@20"]

    knn_mean = content_knn(tfidf, history, candidates, "mean")
    res = {"knn_mean": recall(knn_mean), "knn_max": recall(content_knn(tfidf, history, candidates, "max"))}
    sims = (tfidf[candidates] @ tfidf.T).toarray()
    sims[:, ~warm_item_mask(corpus)] = 0.0
    warm_scores = {f"ease{lam:g}": np.asarray(train[users] @ ease_closed_form(train, lam)) for lam in (50.0, 250.0)}
    gram = (train.T @ train).tocsr()
    norm = sp.diags(1 / (np.sqrt(gram.diagonal()) + 1e-12))
    warm_scores["cooc"] = np.asarray((train[users] @ (norm @ gram @ norm)).todense())
    for name, scores in warm_scores.items():
        for k in (5, 20, 50, 200):
            weights = neighbour_weights(sims, k)
            for power in (1.0, 2.0):
                transfer = scores @ (weights ** power).T
                res[f"{name}_K{k}_p{power:g}"] = recall(transfer)
                for w in (0.5, 1.0):
                    res[f"{name}_K{k}_p{power:g}+knn{w:g}"] = recall(standardised(transfer) + w * standardised(knn_mean))
    return res


if __name__ == "__main__":
    raise SystemExit(main())
