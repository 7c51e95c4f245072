"""Diagnostics of the graph residual (issue 10, benchmarks/RESULTS.md "Graph residual in the item head").

    python -m benchmarks.residual_probes alone     <folder> cooc 100 250      # R@20 of x W alone, full vs top-N
    python -m benchmarks.residual_probes calibrate <folder> ease 100          # likelihood of softmax(t x W) per t
    python -m benchmarks.residual_probes scale     <folder> <residual model> N s1 s2 ...   # re-weighted residual
    python -m benchmarks.residual_probes posthoc   <folder> <model> <model holding W> s1 s2 ...
    python -m benchmarks.residual_probes mixgrid   <folder> <model> <out.json> 100,200 200,400 [<checkpoint folder>]
    python -m benchmarks.residual_probes buckets   <folder> <validation logits .npy> <out.json>
    python -m benchmarks.residual_probes ensemble  <folder> <validation logits .npy> <validation logits .npy> ...

``mixgrid`` caches the model's (or an epoch checkpoint's) validation logits as ``val_logits.npy`` beside it and
scores logits + s * the standardised x W for every EASE lambda x top-N x s; ``buckets`` chooses one scale per
train-history-length bucket on half of the validation users and reads it on the other half (and vice versa);
``ensemble`` averages the logits of several epochs before the mix.

All fit W on the TRAIN interactions and choose on VALIDATION; only ``posthoc`` reads test, once, with the s that
is best on validation (the issue's post-hoc mix of a model trained WITHOUT residual and the pruned matrix).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from benchmarks.baselines import evaluate_recommender
from data_builders.corpus import Corpus
from data_builders.item_graph import cooccurrence_row_normalised, ease_closed_form, residual_matrix, top_n_per_row
from train.evaluate import rec_rows, score_batch
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


MIX_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


class ValidationMix:
    """Validation users, targets and train masks of a folder, scoring `logits + s * r / std(r)` with r = x W (x the
    user's train items) in numpy, 4,096 users at a time."""

    def __init__(self, folder: str):
        self.corpus = Corpus(folder)
        self.train = self.corpus.interaction_matrix("train")
        examples = [ex for chunk in self.corpus.iter_rec_examples("validation") for ex in chunk]
        self.examples = examples
        self.users = np.asarray([ex.user for ex in examples])
        self.targets = [np.asarray(ex.targets, dtype=np.int64) for ex in examples]
        self.exclude = self.corpus.hops.graph.ui[self.users]

    def residual(self, w) -> np.ndarray:
        r = self.train[self.users] @ w
        r = np.asarray(r.todense() if sp.issparse(r) else r, dtype=np.float32)
        return r / np.maximum(r.std(axis=1, keepdims=True), 1e-30)

    def per_user(self, scores: np.ndarray) -> dict:
        block = 4096
        parts = [per_user_metrics(scores[a:a + block], self.targets[a:a + block], self.exclude[a:a + block])
                 for a in range(0, len(self.users), block)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def metrics(self, scores: np.ndarray) -> dict:
        m = summarize(self.per_user(scores))
        return {k: round(float(m[k]), 5) for k in ("recall@20", "recall@40", "ndcg@100")}

    def logits(self, model_dir: str, checkpoint: str | None = None) -> np.ndarray:
        """The model's validation logits at scale 0, cached as val_logits.npy in the model (or checkpoint) folder."""
        cache = Path(checkpoint or model_dir) / "val_logits.npy"
        if cache.exists():
            return np.load(cache)
        model = load_model(model_dir).eval()
        if checkpoint:  # an epoch checkpoint's weights (Accelerate's model.safetensors; the text head is tied)
            from safetensors.torch import load_file

            missing, unexpected = model.load_state_dict(load_file(str(Path(checkpoint) / "model.safetensors")), strict=False)
            if set(missing) - {"lm_head.weight"} or unexpected:
                raise RuntimeError(f"checkpoint {checkpoint} does not fit the model: {missing} {unexpected}")
            model.tie_weights()
        collate = self.corpus.collator(128)
        parts = []
        for start in range(0, len(self.examples), 256):
            batch = collate(rec_rows(self.corpus, self.examples[start:start + 256], 128))
            parts.append(next(score_batch(model, batch, [0.0])).numpy())
        logits = np.concatenate(parts).astype(np.float32)
        np.save(cache, logits)
        return logits


def mixgrid(folder: str, model_dir: str, out: str, lams: str = "100", topns: str = "200", checkpoint: str | None = None) -> None:
    v = ValidationMix(folder)
    logits = v.logits(model_dir, checkpoint)
    results = {"model_only": v.metrics(logits)}
    print(results, flush=True)
    for lam in (float(x) for x in lams.split(",")):
        mat = ease_closed_form(v.train, lam)
        for n in (int(x) for x in topns.split(",")):
            r = v.residual(mat.astype(np.float32) if n >= mat.shape[0] else sparse_w(*top_n_per_row(mat, n)))
            key = f"lam{lam:g}_top{n}"
            results[key + "_alone"] = v.metrics(r)
            for s_ in MIX_SCALES:
                results[f"{key}_s{s_}"] = v.metrics(logits + s_ * r)
                print(key, s_, results[f"{key}_s{s_}"], flush=True)
            Path(out).write_text(json.dumps(results, indent=1))


def buckets(folder: str, logits_path: str, out: str) -> None:
    v = ValidationMix(folder)
    logits = np.load(logits_path)
    r = v.residual(sparse_w(*residual_matrix(v.train, "ease", 200, 100.0)))
    scales = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0]
    recall = np.stack([v.per_user(logits + s_ * r)["recall@20"] for s_ in scales], 1)  # (users, scales)
    edges = [0, 3, 4, 5, 7, 10, 10**9]
    bucket = np.digitize(np.asarray(v.train[v.users].sum(1)).ravel(), edges[1:-1])
    half = np.random.default_rng(0).random(len(v.users)) < 0.5
    res = {"bucket_edges": edges, "bucket_sizes": np.bincount(bucket).tolist()}
    for name, choose, read in (("A->B", half, ~half), ("B->A", ~half, half)):
        g = int(np.nanargmax(np.nanmean(recall[choose], 0)))
        chosen = [int(np.nanargmax(np.nanmean(recall[choose & (bucket == b)], 0))) if (choose & (bucket == b)).any() else g
                  for b in range(len(edges) - 1)]
        per_user = recall[np.arange(len(v.users)), [chosen[b] for b in bucket]]
        res[name] = {"global_scale": scales[g], "global_read": float(np.nanmean(recall[read, g])),
                     "bucket_scales": [scales[c] for c in chosen], "bucket_read": float(np.nanmean(per_user[read]))}
        print(name, res[name], flush=True)
    Path(out).write_text(json.dumps(res, indent=1))


def ensemble(folder: str, *logits_paths: str) -> None:
    v = ValidationMix(folder)
    mean = sum(np.load(p) for p in logits_paths) / len(logits_paths)
    r = v.residual(sparse_w(*residual_matrix(v.train, "ease", 200, 100.0)))
    print("mean logits alone", v.metrics(mean))
    for s_ in MIX_SCALES[:4]:
        print(f"mean logits + {s_} r", v.metrics(mean + s_ * r), flush=True)


if __name__ == "__main__":
    commands = {"alone": alone, "calibrate": calibrate, "scale": scale, "posthoc": posthoc, "mixgrid": mixgrid,
                "buckets": buckets, "ensemble": ensemble}
    if len(sys.argv) < 3 or sys.argv[1] not in commands:
        raise SystemExit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
