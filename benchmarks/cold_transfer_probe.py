"""Probe (validation shelf only, not a shipped scorer): do collaborative scores, carried to a cold item through its
text neighbours, beat content kNN on the "new arrivals" shelf of a cold-item folder?

    python -m benchmarks.cold_transfer_probe outputs/cold/beauty --split validation

score(u, c) = sum over the K warm items j nearest to cold item c by TF-IDF cosine of sim(c, j)^p x S(u, j), where
S is EASE's warm score of user u (lambda in {50, 250}) or the cosine co-occurrence score; also each of those,
standardised per user, plus w x content kNN (mean), standardised. Prints the validation Recall@20 of every
variant, best first (issue "New products", RESULTS log of 2026-12-06). Dense (shelf users x items): a probe for
catalogs of Beauty's size.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import scipy.sparse as sp

from benchmarks.cold_items import content_knn, shelf_users
from data_builders.corpus import Corpus
from data_builders.item_graph import ease_closed_form
from data_builders.item_text import item_token_counts, tfidf_rows
from train.cold_items import shelf_metrics, warm_item_mask

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
    args = p.parse_args(argv)
    corpus = Corpus(args.folder)
    tfidf = tfidf_rows(item_token_counts(corpus))
    train = corpus.interaction_matrix("train").astype(np.float64).tocsr()
    users, targets = shelf_users(corpus, args.split)
    candidates = corpus.cold_items(args.split)
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
    for key, value in sorted(res.items(), key=lambda kv: -kv[1])[:15]:
        print(f"{key:28s} {value:.4f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
