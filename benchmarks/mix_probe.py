"""How the transformer's scores and the two residual terms are mixed, probed on a finished run's validation split.

The preset mixes ``logits + a * E + b * P`` (E, P: the EASE and low-pass terms, each standardised per prompt) and
chooses a, then b, one after the other. This probe scores, from one pass over validation with the run's selected
model (its low-pass rank as chosen):
- ``raw``: the same mix on the joint (a, b) grid (the greedy pair is one of its cells);
- ``z``: the logits standardised per prompt too, ``z(logits) + a * E + b * P``, on a joint grid of its own;
- ``third:<name>``: the run's chosen mix plus c * T, T a third standardised term from the user's train items (the
  cosine ItemKNN, RP3beta, EASE at lambda 500, or the low-pass filter at rank 64), on a grid of c.
Validation only; nothing here reads test.

    python -m benchmarks.mix_probe outputs/probe6/toys_budget1200_s0 benchmarks/results/Toys/toys_mix_probe_s0.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

import scipy.sparse as sp

from data_builders.corpus import Corpus
from data_builders.item_graph import ease_closed_form, ideal_lowpass_basis, top_n_per_row
from train.common import make_accelerator
from train.config import load_config
from train.evaluate import ModelScorer, eval_mode, evaluate_scorer
from train.io_utils import BEST_DIR, atomic_write_json
from train.modeling_io import load_model

RAW_E = (0, 0.25, 0.375, 0.5, 0.625, 0.75, 1.0, 1.25)
RAW_P = (0, 0.125, 0.25, 0.375, 0.5, 0.75)
Z_E = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6)
Z_P = (0, 0.05, 0.1, 0.15, 0.2, 0.3)
THIRD_C = (0.0625, 0.125, 0.25, 0.375, 0.5)


def _sparse_top(mat, n: int = 200) -> sp.csr_matrix:
    idx, val = top_n_per_row(mat, n)
    rows = np.repeat(np.arange(idx.shape[0]), idx.shape[1])
    return sp.csr_matrix((val.ravel(), (rows, idx.ravel())), shape=(idx.shape[0], idx.shape[0]))


def third_terms(train: sp.csr_matrix) -> dict:
    """name -> a function (users' train rows, CSR) -> (B, I) raw term; each matrix fitted on the TRAIN pairs."""
    x = (train > 0).astype(np.float64).tocsr()
    deg_i = np.asarray(x.sum(axis=0)).ravel()
    co = (x.T @ x).toarray()
    np.fill_diagonal(co, 0)
    inv = np.power(np.maximum(deg_i, 1), -0.5)
    knn = _sparse_top(co * inv[:, None] * inv[None, :])
    deg_u = np.asarray(x.sum(axis=1)).ravel()
    p_iu = sp.diags(1 / np.maximum(deg_i, 1)) @ x.T
    p_ui = sp.diags(1 / np.maximum(deg_u, 1)) @ x
    rp3 = (p_iu @ p_ui).toarray() / np.power(np.maximum(deg_i, 1), 0.5)[None, :]
    np.fill_diagonal(rp3, 0)
    rp3 = _sparse_top(rp3)
    ease500 = _sparse_top(ease_closed_form(x, 500.0))
    basis, sqrt_deg = ideal_lowpass_basis(x, 64)
    left = basis / np.maximum(sqrt_deg, 1e-12)[:, None]
    right = (basis * sqrt_deg[:, None]).T

    def product(w):
        return lambda rows: np.asarray((rows @ w).todense(), dtype=np.float32)

    return {"itemknn": product(knn), "rp3beta": product(rp3), "ease500": product(ease500),
            "lowpass64": lambda rows: np.asarray(rows @ left, dtype=np.float32) @ right}


def standardise(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(dim=-1, keepdim=True)) / x.std(dim=-1, keepdim=True).clamp_min(1e-12)


class MixScorer(ModelScorer):
    """One variant per (family, a, b, c): the run's logits (both scales at 0), or their standardised form (family
    "z"), plus a x the EASE term, b x the low-pass term and, for a "third:<name>" family, c x that term."""

    def __init__(self, accelerator, model, corpus, cfg, variants, terms=None):
        super().__init__(accelerator, model, corpus, cfg)
        self.variants, self.terms = variants, terms or {}
        self.train = corpus.interaction_matrix("train").tocsr().astype(np.float32)
        self.num_variants = len(variants)
        self.logit_std: list[np.ndarray] = []

    @torch.no_grad()
    def score_users(self, examples):
        out = self.outputs(examples)
        ease, lowpass = out.score_terms["graph_residual"].float(), out.score_terms["graph_lowpass"].float()
        logits = (out.scores.float() - float(self.net.graph_residual.scale) * ease
                  - float(self.net.graph_lowpass.scale) * lowpass)
        self.logit_std.append(logits.std(dim=-1).cpu().numpy())
        z = standardise(logits)
        rows = self.train[np.asarray([ex.user for ex in examples])]
        third = {name: torch.from_numpy(f(rows)) for name, f in self.terms.items()}
        third = {name: t / t.std(dim=-1, keepdim=True).clamp_min(1e-12) for name, t in third.items()}
        for family, a, b, c in self.variants:
            mix = (z if family == "z" else logits) + a * ease + b * lowpass
            yield (mix + c * third[family[6:]] if family.startswith("third:") else mix).cpu().numpy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--third", action="store_true", help="the third-term families instead of the raw and z grids")
    args = ap.parse_args(argv)
    cfg = load_config(args.run_dir / "run_config.yaml", [f"output.dir=/tmp/mix_probe/{args.run_dir.name}"])
    model = load_model(args.run_dir / BEST_DIR)
    with torch.no_grad():  # a non-zero scale so that both terms are computed; the scorer subtracts them again
        for lever in (model.graph_residual, model.graph_lowpass):
            if float(lever.scale) == 0:
                lever.scale.fill_(1e-3)
    corpus = Corpus(cfg.data.folder, cfg.data.leave_user_out_hops)
    if args.third:
        done = json.loads((args.run_dir / "finetune_result.json").read_text())
        chosen = (done["residual_scale_sweep"]["chosen"], done["lowpass_scale_sweep"]["chosen"])
        terms = third_terms(corpus.interaction_matrix("train"))
        variants = [("raw", *chosen, 0.0)] + [(f"third:{name}", *chosen, c) for name in terms for c in THIRD_C]
    else:
        terms = None
        variants = ([("raw", a, b, 0.0) for a, b in itertools.product(RAW_E, RAW_P)]
                    + [("z", a, b, 0.0) for a, b in itertools.product(Z_E, Z_P)])
    scorer = MixScorer(make_accelerator(cfg, Path(cfg.output.dir)), model, corpus, cfg, variants, terms)
    t0 = time.time()
    with eval_mode(scorer.net):
        results = evaluate_scorer(None, scorer, corpus, "validation", cfg)
    metric = cfg.finetune.selection_metric
    table = [{"family": f, "ease": a, "lowpass": b, "third": c, metric: round(float(r[metric]), 5),
              "recall@40": round(float(r["recall@40"]), 5), "ndcg@100": round(float(r["ndcg@100"]), 5)}
             for (f, a, b, c), r in zip(variants, results)]
    best = {fam: max((row for row in table if row["family"] == fam), key=lambda row: row[metric])
            for fam in dict.fromkeys(row["family"] for row in table)}
    std = np.concatenate(scorer.logit_std)
    summary = {"run_dir": str(args.run_dir), "rank": model.config.graph_lowpass_rank, "seconds": time.time() - t0,
               "logit_std_quartiles": [float(q) for q in np.quantile(std, [0.25, 0.5, 0.75])],
               "best": best, "table": table}
    atomic_write_json(args.out, summary)
    print(json.dumps({k: summary[k] for k in ("rank", "seconds", "logit_std_quartiles", "best")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
