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


def smooth_idf(counts: sp.csr_matrix) -> np.ndarray:
    """(vocab,) smoothed idf of token counts (items x vocab): log((1 + n) / (1 + df)) + 1."""
    df = np.bincount(counts.indices, minlength=counts.shape[1])
    return np.log((1 + counts.shape[0]) / (1 + df)) + 1.0


def tfidf_rows(counts: sp.csr_matrix, idf: np.ndarray | None = None) -> sp.csr_matrix:
    """The TF-IDF matrix of token counts: sublinear tf, smoothed idf (``idf``, else ``smooth_idf(counts)``), rows
    L2-normalised (a row without text stays 0), so a row product is the cosine of two items' texts."""
    tf = counts.copy().astype(np.float64)
    tf.data = 1.0 + np.log(tf.data)
    x = sp.csr_matrix(tf @ sp.diags(smooth_idf(counts) if idf is None else idf))
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    return sp.csr_matrix(sp.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)) @ x)


def text_svd(counts: sp.csr_matrix, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The item-text vectors and what maps a new item's counts to one: ``(vectors, idf, basis)``.

    ``vectors`` (num_items, dim) float32 are the rows of U * S of ``tfidf_rows(counts)``, each column's sign fixed so
    its largest entry is positive; items without text get a zero row. ``basis`` (vocab, dim) float32 holds the
    matching right singular vectors (same order and signs), so ``tfidf_rows(c, idf) @ basis`` is the vector of any
    counts ``c`` (equal to ``vectors`` for the fitted items, up to rounding). Columns past the rank are 0."""
    x = tfidf_rows(counts)
    k = min(dim, min(x.shape) - 1)
    v0 = np.random.default_rng(seed).standard_normal(min(x.shape))  # ARPACK's start vector: deterministic
    u, s, vt = svds(x, k=k, v0=v0)
    vectors = u * s
    order = np.argsort(-s)
    vectors = vectors[:, order]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    signs = np.where(signs == 0, 1.0, signs)
    out = np.zeros((x.shape[0], dim), dtype=np.float32)
    out[:, :k] = vectors * signs
    basis = np.zeros((x.shape[1], dim), dtype=np.float32)
    basis[:, :k] = vt[order].T * signs
    return out, smooth_idf(counts).astype(np.float32), basis


def text_svd_vectors(counts: sp.csr_matrix, dim: int, seed: int = 0) -> np.ndarray:
    """(num_items, dim) float32: ``text_svd``'s item vectors."""
    return text_svd(counts, dim, seed)[0]


__all__ = ["item_token_counts", "smooth_idf", "text_svd", "text_svd_vectors", "tfidf_rows"]
