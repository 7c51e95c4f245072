"""Item vectors from item text: the tokens of each item's content prompts ("content" config: title, brand,
categories, description, ...), TF-IDF weighted and reduced by a truncated SVD.

Used to put content into the collaborative item IDs without pre-training (``finetune.init_collab_items=text_svd``,
train/common.py). Item metadata only: no interaction enters these vectors.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds


def item_token_counts(corpus) -> sp.csr_matrix:
    """(num_items, base_vocab_size) counts of the text tokens of each item's content prompts (the labelled part,
    i.e. the item's own text, not the template)."""
    rows, cols = [], []
    ds = corpus.dataset("content", "train", columns=["input_ids", "node_positions", "labels"])
    for record in ds:
        items = [p - corpus.num_users for p in record["node_positions"] if p >= corpus.num_users]
        if not items:
            continue
        tokens = [t for t, label in zip(record["input_ids"], record["labels"]) if label != -100 and t < corpus.base_vocab_size]
        rows.extend([items[0]] * len(tokens))
        cols.extend(tokens)
    counts = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(corpus.num_items, corpus.base_vocab_size))
    counts.sum_duplicates()
    return counts


def text_svd_vectors(counts: sp.csr_matrix, dim: int, seed: int = 0) -> np.ndarray:
    """(num_items, dim) float32: rows of U * S of the TF-IDF matrix (sublinear tf, smoothed idf, rows L2-normalised),
    each column's sign fixed so its largest entry is positive; items without text get a zero row."""
    tf = counts.copy().astype(np.float64)
    tf.data = 1.0 + np.log(tf.data)
    df = np.bincount(tf.indices, minlength=tf.shape[1])
    idf = np.log((1 + tf.shape[0]) / (1 + df)) + 1.0
    x = sp.csr_matrix(tf @ sp.diags(idf))
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    x = sp.csr_matrix(sp.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)) @ x)
    k = min(dim, min(x.shape) - 1)
    v0 = np.random.default_rng(seed).standard_normal(min(x.shape))  # ARPACK's start vector: deterministic
    u, s, _ = svds(x, k=k, v0=v0)
    vectors = u * s
    order = np.argsort(-s)
    vectors = vectors[:, order]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    out = np.zeros((x.shape[0], dim), dtype=np.float32)
    out[:, :k] = vectors * np.where(signs == 0, 1.0, signs)
    return out


__all__ = ["item_token_counts", "text_svd_vectors"]
