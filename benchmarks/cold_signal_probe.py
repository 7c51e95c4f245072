"""Probe (validation shelf only, not a shipped scorer): is there text signal that the main preset's cold-item scorer
(``GraphColdItemMap``, docs/model.md "New items") leaves out? Three candidates, each on a finished run's saved model:

    python -m benchmarks.cold_signal_probe outputs/cold7/beauty_s0 --out /tmp/cold_signal_s0.json

- ``knn``: the scorer's shelf scores, standardised per user, plus w x content kNN (full TF-IDF cosine to the user's
  train items, mean or max, standardised): the text term inside the lever uses the rank-512 vectors;
- ``neighbours``: the lever's text-neighbour transfer re-fitted with K in {20, 50} neighbours found by the rank-512
  cosine (the lever's space) or by the full TF-IDF cosine, at powers {1, 2, 4, 8, 16}, with the lever's own scale x
  transfer grid (a wider transfer grid, up to 64) at the run's chosen ridge alpha;
- ``bilinear``: a text-to-text model fitted on the train interactions, X ~ (X T) W T^T with T the unit rank-k item
  text vectors (k in {128, 512}) and W = argmin ||X - X T W T^T||^2 + lam ||W||^2 (closed form through the eigen
  decompositions of the two k x k Grams: O(k^2 + nnz) memory, no item x item matrix): "users who bought items with
  this text buy items with that text", which neither content kNN nor the neighbours' scores say; alone and
  standardised plus w x the scorer's.

With ``--combined``, instead: the best two together, the neighbours' transfer on the full TF-IDF table (K 20 or 50,
power 4, its best scale x transfer) standardised plus w x the bilinear model (rank 512, lam 1e-4), standardised.

With ``--metadata SOURCE`` (the raw dataset the folder was built from), instead: the user's affinity to the cold
item's brand, leaf category or category path (the share of the user's train items that hold it), alone and
standardised plus w x the scorer's: item metadata that the TF-IDF of the whole item text dilutes.

Prints and writes every variant's validation shelf Recall@20 (RESULTS log "new products, three more text signals probed").
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from accelerate import Accelerator

from benchmarks.cold_items import content_knn
from benchmarks.cold_transfer_probe import standardised
from data_builders.corpus import Corpus
from data_builders.item_text import item_token_counts, tfidf_rows
from data_builders.readers import read_source
from train.cold_items import (_targets_in, fit_text_map, held_out_cold_items, item_text_svd, shelf_inputs,
                              shelf_metrics, warm_item_mask)
from train.config import load_config
from train.evaluate import model_pass
from train.modeling_io import load_model

KS, NDCG_KS = (20, 40), (100,)
BLEND_WEIGHTS = (0.1, 0.25, 0.5, 1.0)
POWERS = (1.0, 2.0, 4.0, 8.0, 16.0)
SCALES = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
TRANSFERS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


def shelf_scores(model, corpus: Corpus, cfg, split: str):
    """(n, C) the model's scores of the split's cold items for its users with a cold target, those users, and their
    cold targets."""
    cold = corpus.cold_items(split)

    def consume(out, part):
        return out.scores[:, cold].float().numpy(), np.asarray([ex.user for ex in part]), _targets_in(part, cold)

    blocks = model_pass(Accelerator(cpu=True), model, corpus, split, cfg, consume)
    scores, users = np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])
    targets = [t for b in blocks for t in b[2]]
    keep = np.asarray([len(t) > 0 for t in targets])
    return scores[keep], users[keep], [t for t, k in zip(targets, keep) if k]


def bilinear_text_model(train: "np.ndarray", vectors: np.ndarray, lam_fraction: float) -> np.ndarray:
    """(k, k) W of X ~ (X T) W T^T, ridge lam = lam_fraction x the two Grams' top eigenvalues' product."""
    profiles = train @ vectors  # (U, k): each user's summed item text vectors
    a, p = np.linalg.eigh(profiles.T @ profiles)
    b, q = np.linalg.eigh(vectors.T @ vectors)
    rhs = p.T @ (profiles.T @ profiles) @ q  # A^T X T = A^T A, since X T = A
    return p @ (rhs / (np.outer(a, b) + lam_fraction * a.max() * b.max())) @ q.T


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a finished amazon_cpu run on a --cold-item-frac folder (its best/ model is read)")
    ap.add_argument("--split", default="validation", choices=("validation", "test"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--combined", action="store_true", help="the best neighbours' table plus the bilinear model")
    ap.add_argument("--metadata", default=None, help="raw source of the folder: brand and category affinities")
    args = ap.parse_args(argv)
    run = Path(args.run)
    cfg = load_config(run / "run_config.yaml")
    corpus, model = Corpus(cfg.data.folder), load_model(run / "best").eval()
    candidates = corpus.cold_items(args.split)
    scores, users, targets = shelf_scores(model, corpus, cfg, args.split)

    def recall(s: np.ndarray) -> float:
        return round(shelf_metrics(s, candidates, targets, KS, NDCG_KS)["recall@20"], 4)

    res: dict = {"run": str(run), "split": args.split, "scorer": recall(scores)}
    tfidf = tfidf_rows(item_token_counts(corpus)).tocsr()
    history = corpus.hops.graph.ui[users]
    if args.metadata:
        res.update(metadata_variants(corpus, args.metadata, history, candidates, scores, recall))
    elif args.combined:
        res.update(combined_variants(model, corpus, cfg, args.split, tfidf, run, recall, history, candidates))
    else:
        for how in ("mean", "max"):
            knn = content_knn(tfidf, history, candidates, how)
            res[f"knn_{how}"] = recall(knn)
            for w in BLEND_WEIGHTS:
                res[f"scorer+{w:g}xknn_{how}"] = recall(standardised(scores) + w * standardised(knn))
        for rank in (128, 512):
            for lam, bilinear in bilinear_scores(corpus, cfg, history, candidates, rank, (1e-4, 1e-3, 1e-2)).items():
                res[f"bilinear_r{rank}_lam{lam:g}"] = recall(bilinear)
                for w in BLEND_WEIGHTS:
                    res[f"scorer+{w:g}xbilinear_r{rank}_lam{lam:g}"] = recall(standardised(scores) + w * standardised(bilinear))
        res.update(neighbour_variants(model, corpus, cfg, args.split, tfidf, run, recall))
    print(json.dumps(res, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


def bilinear_scores(corpus: Corpus, cfg, history, candidates, rank: int, lams: tuple) -> dict:
    """{lam: (n, C) the bilinear text model's scores of the candidates for the users' train ``history`` (CSR rows)}
    with the rank-``rank`` unit text vectors, one fit per ridge ``lam``."""
    vectors = item_text_svd(corpus, rank, cfg.seed)[0].astype(np.float64)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-30)
    train = corpus.hops.graph.ui.astype(np.float64).tocsr()
    return {lam: (history @ vectors) @ bilinear_text_model(train, vectors, lam) @ vectors[candidates].T for lam in lams}


def metadata_variants(corpus: Corpus, source: str, history, candidates, scores, recall) -> dict:
    """{variant: validation shelf R@20} of the users' brand, leaf-category and category-path affinities to the
    candidates, alone (ties broken by a seeded jitter) and blended into the scorer's standardised scores."""
    meta = read_source(source).items
    items = [meta.get(i) for i in corpus.item_ids]
    keys = {
        "brand": [[m.brand.lower()] if m is not None and m.brand else [] for m in items],
        "leaf": [[m.categories[-1]] if m is not None and m.categories else [] for m in items],
        "path": [[" > ".join(m.categories[:d + 1]) for d in range(len(m.categories))] if m is not None else []
                 for m in items],
    }
    sizes = np.maximum(np.asarray(history.sum(axis=1)).ravel(), 1.0)[:, None]
    out = {}
    for name, per_item in keys.items():
        vocab: dict = {}
        rows = [j for j, ks in enumerate(per_item) for _ in ks]
        cols = [vocab.setdefault(k, len(vocab)) for ks in per_item for k in ks]
        onehot = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(corpus.num_items, max(len(vocab), 1)))
        affinity = np.asarray((history.astype(np.float64) @ onehot @ onehot[candidates].T).todense()) / sizes
        out[name] = recall(affinity + 1e-9 * np.random.default_rng(0).random(affinity.shape))
        for w in (0.05, 0.1, 0.25, 0.5, 1.0):
            out[f"scorer+{w:g}x{name}"] = recall(standardised(scores) + w * standardised(affinity))
    return out


def combined_variants(model, corpus: Corpus, cfg, split: str, tfidf, run: Path, recall, history, candidates) -> dict:
    """{variant: validation shelf R@20} of the full-TF-IDF neighbours' scorer (power 4, its best scale x transfer)
    plus w x the rank-512 bilinear model."""
    bilinear = standardised(bilinear_scores(corpus, cfg, history, candidates, 512, (1e-4,))[1e-4])
    out = {}
    for k in (20, 50):
        best = neighbour_variants(model, corpus, cfg, split, tfidf, run, recall, ks=(k,), spaces=("tfidf",),
                                  powers=(4.0,), keep_scores=True)[f"neighbours_K{k}_tfidf_p4"]
        out[f"neighbours_K{k}_tfidf_p4"] = best[:3]
        for w in BLEND_WEIGHTS:
            out[f"neighbours_K{k}_tfidf_p4+{w:g}xbilinear"] = recall(standardised(best[3]) + w * bilinear)
    return out


def neighbour_variants(model, corpus: Corpus, cfg, split: str, tfidf, run: Path, recall, ks=(20, 50),
                       spaces=("svd512", "tfidf"), powers=POWERS, keep_scores: bool = False) -> dict:
    """{variant: (best validation shelf R@20, scale, transfer)} of the lever re-fitted with other neighbour tables."""
    lever = model.cold_item_map
    alpha = json.loads((run / "finetune_result.json").read_text())["cold_item_map"]["chosen"]["alpha"]
    vectors = item_text_svd(corpus, lever.basis.shape[1], cfg.seed)[0]
    rows = model.id_embeddings("collab").item.weight.detach().float().numpy()
    weight, bias = fit_text_map(vectors, rows, warm_item_mask(corpus), alpha)
    candidates, every_cold = corpus.cold_items(split), held_out_cold_items(corpus)
    unit = torch.as_tensor(vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-30))
    out = {}
    for k, space in itertools.product(ks, spaces):
        cosines = (unit[candidates] @ unit.T if space == "svd512"
                   else torch.as_tensor((tfidf[candidates] @ tfidf.T).toarray(), dtype=torch.float32))
        cosines[:, torch.as_tensor(every_cold)] = -float("inf")  # neighbours are items with interactions
        top = torch.topk(cosines, k, dim=-1)
        lever.neighbour_count = k
        lever.neighbours = torch.zeros(lever.cold.shape[0], k, dtype=torch.long).index_copy(
            0, torch.as_tensor(candidates), top.indices)
        lever.neighbour_weights = torch.zeros(lever.cold.shape[0], k).index_copy(
            0, torch.as_tensor(candidates), top.values.clamp_min(0.0))
        states, terms, carried, _ = shelf_inputs(Accelerator(cpu=True), model, corpus, split, cfg, powers)
        mapped = states @ (vectors[candidates] @ weight + bias).T
        for i, power in enumerate(powers):
            best = max((recall(mapped + s * terms + t * carried[i]), s, t) for s, t in itertools.product(SCALES, TRANSFERS))
            if keep_scores:  # the best variant's (n, C) scores too
                best = (*best, mapped + best[1] * terms + best[2] * carried[i])
            out[f"neighbours_K{k}_{space}_p{power:g}"] = best
    return out


if __name__ == "__main__":
    raise SystemExit(main())
