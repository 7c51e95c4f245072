"""Diagnostics of the graph residual (issue 10, benchmarks/RESULTS.md "Graph residual in the item head").

    python -m benchmarks.residual_probes alone     <folder> cooc 100 250      # R@20 of x W alone, full vs top-N
    python -m benchmarks.residual_probes calibrate <folder> ease 100          # likelihood of softmax(t x W) per t
    python -m benchmarks.residual_probes scale     <folder> <residual model> N s1 s2 ...   # re-weighted residual
    python -m benchmarks.residual_probes posthoc   <folder> <model> <model holding W> s1 s2 ...

All fit W on the TRAIN interactions and choose on VALIDATION; only ``posthoc`` reads test, once, with the s that
is best on validation (the issue's post-hoc mix of a model trained WITHOUT residual and the pruned matrix).
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import scipy.sparse as sp
import torch

from benchmarks.baselines import evaluate_recommender
from data_builders.corpus import Corpus
from data_builders.item_graph import cooccurrence_row_normalised, ease_closed_form, residual_matrix, top_n_per_row
from train.metrics import per_user_metrics, summarize
from train.modeling_io import load_model


def sparse_w(indices: np.ndarray, values: np.ndarray) -> sp.csr_matrix:
    num_items = indices.shape[0]
    rows = np.repeat(np.arange(num_items), indices.shape[1])
    return sp.csr_matrix((values.ravel(), (rows, indices.ravel())), shape=(num_items, num_items))


class FixedScorer:
    """x_u W for the baselines' evaluation loop."""

    def __init__(self, train, w):
        self.train_, self.w = train, w

    def score(self, users):
        s = self.train_[users] @ self.w
        return np.asarray(s.todense() if sp.issparse(s) else s, dtype=np.float32)


def alone(folder: str, *kinds: str) -> None:
    c = Corpus(folder)
    train, valid = c.interaction_matrix("train"), c.interaction_matrix("validation")
    for kind in kinds:
        t0 = time.time()
        mat = cooccurrence_row_normalised(train) if kind == "cooc" else ease_closed_form(train, float(kind))
        out = [f"{kind}: full {evaluate_recommender(FixedScorer(train, mat), train, valid)['recall@20']:.4f}"]
        for n in (100, 200, 400):
            w = sparse_w(*top_n_per_row(mat, n))
            out.append(f"top{n} {evaluate_recommender(FixedScorer(train, w), train, valid)['recall@20']:.4f}")
        print(" ".join(out), f"({time.time() - t0:.0f} s)", flush=True)


def calibrate(folder: str, kind: str, lam: str = "500") -> None:
    c = Corpus(folder)
    train, valid = c.interaction_matrix("train"), c.interaction_matrix("validation")
    w = sparse_w(*residual_matrix(train, kind, 200, float(lam)))
    grid = [1, 2, 5, 10, 20, 50, 100, 200]
    ll, n = np.zeros(len(grid)), 0
    for s in range(0, train.shape[0], 2048):
        x = train[s:s + 2048]
        y = torch.from_numpy(valid[s:s + 2048].toarray())
        sc = torch.from_numpy(np.asarray((x @ w).todense(), dtype=np.float32))
        sc = sc.masked_fill(torch.from_numpy(x.toarray() > 0), -1e9)
        for g, t in enumerate(grid):
            ll[g] += float((torch.log_softmax(t * sc, -1) * y).sum())
        n += x.shape[0]
    print(kind, lam, "mean validation log-likelihood per user:", {t: round(v / n, 4) for t, v in zip(grid, ll)})


def _batches(c: Corpus, examples, size: int = 256):
    collate = c.collator(128)
    for s in range(0, len(examples), size):
        chunk = examples[s:s + size]
        yield chunk, collate([{"input_ids": e.input_ids, "node_positions": e.node_positions} for e in chunk])


def scale(folder: str, model_dir: str, n: str, *scales: str) -> None:
    c = Corpus(folder)
    model = load_model(model_dir).eval()
    examples = c.rec_examples("validation")[:int(n)]
    train = c.train_items()
    base, res = [], []
    with torch.no_grad():
        learned = model.graph_residual.scale.item()
        for _, b in _batches(c, examples):
            inputs = dict(attention_mask=b["attention_mask"], hop_distances=b["hop_distances"])
            model.graph_residual.scale.fill_(0.0)
            logits = model(b["input_ids"], **inputs).scores
            model.graph_residual.scale.fill_(1.0)
            res.append((model(b["input_ids"], **inputs).scores - logits).numpy())
            base.append(logits.numpy())
    base, res = np.concatenate(base), np.concatenate(res)
    rel = [np.asarray(e.targets) for e in examples]
    exc = [np.asarray(train[e.user]) for e in examples]
    print(f"learned scale {learned:.3f}; logit std {base.std(1).mean():.2f}, residual std {res.std(1).mean():.4f}")
    for s in [None] + [float(v) for v in scales]:
        m = per_user_metrics(res if s is None else base + s * res, rel, exc, (20,), ())
        print("residual only" if s is None else f"scale {s:g}", f"R@20 {np.mean(m['recall@20']):.4f}", flush=True)


def posthoc(folder: str, model_dir: str, w_dir: str, *grid: str) -> None:
    t0 = time.time()
    c = Corpus(folder)
    model = load_model(model_dir).eval()
    holder = load_model(w_dir)
    w = sparse_w(holder.graph_residual.indices.numpy(), holder.graph_residual.values.numpy())
    train = c.train_items()
    first = c.base_vocab_size + c.num_users

    def parts(split):
        out = []
        with torch.no_grad():
            for chunk, b in _batches(c, c.rec_examples(split), 512):
                logits = model(b["input_ids"], attention_mask=b["attention_mask"], hop_distances=b["hop_distances"]).scores
                ids = b["input_ids"].numpy()
                rows, cols = np.nonzero((ids >= first) & (b["attention_mask"].numpy() > 0))  # the prompt's items
                x = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, ids[rows, cols] - first)), shape=(len(ids), c.num_items))
                out.append((logits.numpy(), np.asarray((x @ w).todense()), chunk))
        return out

    def metrics(chunks, s):
        blocks = [per_user_metrics(lg + s * r, [np.asarray(e.targets) for e in ex], [np.asarray(train[e.user]) for e in ex],
                                   (20, 40), (100,)) for lg, r, ex in chunks]
        return summarize({k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]})

    valid = parts("validation")
    vals = {s: metrics(valid, s)["recall@20"] for s in [0.0] + [float(v) for v in grid]}
    print("validation R@20 per s:", {k: round(v, 4) for k, v in vals.items()}, flush=True)
    best = max(vals, key=lambda s: (vals[s], -s))
    test = metrics(parts("test"), best)
    print(json.dumps({"chosen_s": best, "validation_recall@20": vals[best],
                      "test": {k: test[k] for k in ("recall@20", "recall@40", "ndcg@100")}, "wall_s": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    commands = {"alone": alone, "calibrate": calibrate, "scale": scale, "posthoc": posthoc}
    if len(sys.argv) < 3 or sys.argv[1] not in commands:
        raise SystemExit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
