"""Reference recommenders scored by the same metric code as GraphGPT2: Popularity, ItemKNN, EASE, RLAE, EASE + ideal
low-pass (``ease_ilp``), Multi-VAE, LightGCN.

Every baseline has one interface (RecBole-style, but without the framework):

    model = EASE(lambdas=(100, 250, 500)).fit(train_csr, valid_csr)   # valid only for hyper-parameter choice
    scores = model.score(np.arange(10))                                # (10, num_items) float, higher = better

``train_csr`` is a binary (U, I) scipy CSR of training interactions; ``valid_csr`` (same shape) holds the
validation items used to pick a hyper-parameter (EASE's L2 weight, Multi-VAE's epoch). Scoring never looks at
validation or test data: a user is represented by their training items only, and the caller masks those
items before ranking (``train.metrics``). :func:`evaluate_recommender` does exactly that, in user batches.
"""
from __future__ import annotations

import copy
import time
import warnings
from typing import Iterator, Sequence

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from torch import nn

from data_builders.item_graph import ease_closed_form, ease_form, ease_neighbourhood, normalized_adjacency
from modeling_graphgpt2.modeling_graphgpt2 import SymmetricSparseProduct
from train.metrics import item_popularity, merge_per_user, per_user_metrics, summarize
from train.trainer import Trainer

__all__ = [
    "Baseline",
    "Popularity",
    "ItemKNN",
    "EASE",
    "RLAE",
    "EASEIdealLowPass",
    "MultiVAE",
    "LightGCN",
    "BASELINES",
    "make_baseline",
    "evaluate_recommender",
    "to_csr",
]


def to_csr(item_lists: Sequence[Sequence[int]], num_items: int) -> sp.csr_matrix:
    """Binary (len(item_lists), num_items) float32 CSR from per-user item index lists (duplicates collapse to 1)."""
    rows = np.repeat(np.arange(len(item_lists)), [len(a) for a in item_lists])
    cols = np.concatenate([np.asarray(a, dtype=np.int64) for a in item_lists]) if len(item_lists) else np.zeros(0, np.int64)
    if cols.size and (cols.min() < 0 or cols.max() >= num_items):
        raise ValueError(f"item index out of range [0, {num_items}): {cols[(cols < 0) | (cols >= num_items)][:3]}")
    m = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(item_lists), num_items))
    m.data[:] = 1.0  # duplicates were summed
    return m


def _check_train(train: sp.spmatrix, valid: sp.spmatrix | None) -> sp.csr_matrix:
    if not sp.issparse(train) or train.ndim != 2:
        raise TypeError(f"train must be a 2-D scipy sparse matrix (users, items), got {type(train).__name__}")
    if valid is not None and valid.shape != train.shape:
        raise ValueError(f"valid has shape {valid.shape} but train has {train.shape}")
    train = sp.csr_matrix(train, dtype=np.float32)
    train.data[:] = 1.0
    return train


def evaluate_recommender(
    model: "Baseline",
    train: sp.csr_matrix,
    target: sp.csr_matrix,
    users: np.ndarray | None = None,
    ks: Sequence[int] = (20, 40),
    ndcg_ks: Sequence[int] = (100,),
    batch_size: int = 1024,
    per_user: bool = False,
):
    """Full-catalog metrics of ``model`` against ``target`` (validation or test CSR), train items masked.

    Returns :func:`train.metrics.summarize`'s dict, or the per-user arrays when ``per_user=True``.
    """
    users = np.arange(train.shape[0]) if users is None else np.asarray(users)
    blocks = []
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        scores = np.asarray(model.score(batch), dtype=np.float32)
        blocks.append(per_user_metrics(scores, target[batch], train[batch], ks, ndcg_ks))
    merged = merge_per_user(blocks)
    return merged if per_user else summarize(merged)


class Baseline:
    """Common interface of the baselines (not ``train.recommend.Recommender``, which serves a published model).
    Subclasses set ``name`` and ``stochastic`` and implement ``fit`` and ``score``. A fitted baseline is also a
    ``train.evaluate.Scorer``, so the model's evaluation loop (``evaluate_scorer``) ranks it on a dataset folder's
    split exactly as it ranks GraphGPT2."""

    name = "base"
    num_variants = 1
    stochastic = False  # True when the result depends on the seed (then benchmarks run several seeds)

    def fit(self, train: sp.csr_matrix, valid: sp.csr_matrix | None = None) -> "Baseline":
        raise NotImplementedError

    def score(self, user_ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def score_users(self, examples: list) -> Iterator[np.ndarray]:
        """``Scorer``: the scores of the examples' users (one variant)."""
        yield np.asarray(self.score(np.asarray([ex.user for ex in examples], dtype=np.int64)), dtype=np.float32)

    def info(self) -> dict:
        """Chosen hyper-parameters and fit details, for the results JSON."""
        return {}

    def _require_fit(self) -> None:
        if getattr(self, "train_", None) is None:
            raise RuntimeError(f"{type(self).__name__}.score called before fit")


class Popularity(Baseline):
    """Score every item by its number of training interactions (the same list for every user)."""

    name = "pop"

    def fit(self, train, valid=None):
        self.train_ = _check_train(train, valid)
        self.counts_ = item_popularity(self.train_)
        return self

    def score(self, user_ids):
        self._require_fit()
        return np.broadcast_to(self.counts_, (len(user_ids), self.counts_.size)).copy()


class ItemKNN(Baseline):
    """Item-based cosine neighbourhood: S_ij = |U_i ∩ U_j| / sqrt(|U_i| |U_j|), diagonal 0; score = x_u S.

    ``topk=None`` keeps all neighbours; otherwise each item keeps its ``topk`` most similar items (the column
    of S that scores it). ``shrink`` adds to the denominator (0 = plain cosine).
    """

    name = "itemknn"

    def __init__(self, topk: int | None = None, shrink: float = 0.0):
        self.topk = topk
        self.shrink = shrink

    def fit(self, train, valid=None):
        self.train_ = _check_train(train, valid)
        x = self.train_
        co = (x.T @ x).tocsr().astype(np.float32)  # item-item co-occurrence counts
        deg = np.sqrt(np.asarray(x.sum(axis=0)).ravel()).astype(np.float32)
        co.setdiag(0)
        co.eliminate_zeros()
        coo = co.tocoo()
        vals = coo.data / (deg[coo.row] * deg[coo.col] + self.shrink)
        sim = sp.csr_matrix((vals.astype(np.float32), (coo.row, coo.col)), shape=co.shape)
        if self.topk is not None:
            sim = self._keep_topk_per_column(sim, self.topk)
        self.sim_ = sim
        return self

    @staticmethod
    def _keep_topk_per_column(sim: sp.csr_matrix, k: int) -> sp.csr_matrix:
        # Column j holds the neighbours that vote for item j; keep its k largest.
        csc = sim.tocsc()
        rows, cols, vals = [], [], []
        for j in range(csc.shape[1]):
            s, e = csc.indptr[j], csc.indptr[j + 1]
            if e - s > k:
                keep = np.argpartition(-csc.data[s:e], k - 1)[:k] + s
            else:
                keep = np.arange(s, e)
            rows.append(csc.indices[keep])
            cols.append(np.full(len(keep), j))
            vals.append(csc.data[keep])
        return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=sim.shape)

    def score(self, user_ids):
        self._require_fit()
        return np.asarray((self.train_[user_ids] @ self.sim_).todense(), dtype=np.float32)

    def info(self):
        return {"topk": self.topk, "shrink": self.shrink}


class EASE(Baseline):
    """EASE (Steck, 2019): B = I - P diag(1/diag(P)), P = (XᵀX + λI)⁻¹, i.e. diag(B) = 0; score = x_u B.

    With several ``lambdas`` and a ``valid`` matrix, each λ is fitted on train and the one with the best
    validation ``select_metric`` is kept (ties: the first in the grid).
    """

    name = "ease"

    def __init__(self, lambdas: Sequence[float] = (250.0,), select_metric: str = "recall@20", dtype=np.float64):
        if not len(lambdas):
            raise ValueError("EASE needs at least one L2 weight in lambdas")
        self.lambdas = [float(v) for v in lambdas]
        self.select_metric = select_metric
        self.dtype = dtype

    closed_form = staticmethod(ease_closed_form)  # data_builders.item_graph: shared with the model's graph residual

    def fit(self, train, valid=None):
        self.train_ = _check_train(train, valid)
        self.validation_ = {}
        if len(self.lambdas) > 1 and valid is None:
            raise ValueError(f"EASE got {len(self.lambdas)} lambdas but no validation matrix to choose among them")
        best = None
        for lam in self.lambdas:
            t0 = time.perf_counter()
            self.B_ = self.closed_form(self.train_, lam, self.dtype)
            if len(self.lambdas) == 1:
                best = (lam, self.B_)
                break
            res = evaluate_recommender(self, self.train_, sp.csr_matrix(valid))
            res["fit_seconds"] = time.perf_counter() - t0
            self.validation_[lam] = res
            if best is None or res[self.select_metric] > self.validation_[best[0]][self.select_metric]:
                best = (lam, self.B_)
        self.lambda_, self.B_ = best
        return self

    def score(self, user_ids):
        self._require_fit()
        return np.asarray(self.train_[user_ids] @ self.B_, dtype=np.float32)

    def info(self):
        return {
            "lambda": self.lambda_,
            "grid": self.lambdas,
            "select_metric": self.select_metric,
            "validation": {str(k): v for k, v in self.validation_.items()},
        }


def _grid_key(**params) -> str:
    """A grid point as one JSON key, e.g. ``lambda=100,xi=0.2``."""
    return ",".join(f"{k}={v:g}" for k, v in params.items())


def _row_major(b: np.ndarray) -> np.ndarray:
    """B in C order. ``ease_closed_form`` returns LAPACK's column-major array, and scipy's CSR @ dense copies a
    non-C-contiguous operand on every product (a 12k x 12k B: ~10x slower per user batch); one copy here instead."""
    return b if b.flags["C_CONTIGUOUS"] else np.ascontiguousarray(b)


def _standardise_rows(scores: np.ndarray) -> np.ndarray:
    """Divide each row by its standard deviation over all items (before any masking), in place; a constant row
    (a user without train items) is left as it is."""
    std = scores.std(axis=1, keepdims=True)
    std[std == 0] = 1.0
    scores /= std
    return scores


class RLAE(Baseline):
    """RLAE (Moon, Kim & Lee, SIGIR 2023, "It's Enough: Relaxing Diagonal Constraints in Linear Autoencoders for
    Recommendation"): EASE with the equality diag(B) = 0 relaxed to the inequality diag(B) <= ξ.

    Closed form (the paper's KKT solution, as in the authors' code ``jaewan7599/RDLAE_SIGIR2023``, ``RLAE``):
    P = (XᵀX + λI)⁻¹, μ_j = max(0, (1 − ξ) / P_jj − λ), B = I − P diag(λ + μ); the authors then set diag(B) to 0,
    as here (a diagonal entry only scores a user's own train items, which evaluation masks). ξ = 0 gives μ_j =
    1/P_jj − λ, i.e. EASE. Column j of that B is column j of EASE's B (−P_ij / P_jj) times
    P_jj (λ + μ_j) = max(1 − ξ, λ P_jj), so one EASE inverse per λ (``ease_closed_form``) serves every ξ; P_jj
    comes from EASE's B without a second inverse: 1 / P_jj = G_jj + λ − Σ_i G_ij B_ij, G = XᵀX (row j of
    (G + λI) P = I with P = (I − B) diag(P_jj)).

    Grid, picked on validation ``select_metric`` (ties: the first in λ-major order): λ ∈ {50, 100, 250, 500} ×
    ξ ∈ {0, 0.1, 0.2, 0.3, 0.5} by default (the project's grid; the authors' README tunes ξ over 0.1 ... 0.9 and
    their shipped runs use ξ 0.2 to 0.6, λ 60 to 300).
    """

    name = "rlae"

    def __init__(self, lambdas: Sequence[float] = (50.0, 100.0, 250.0, 500.0), xis: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.5),
                 select_metric: str = "recall@20", dtype=np.float64):
        if not len(lambdas) or not len(xis):
            raise ValueError("RLAE needs at least one L2 weight (lambdas) and one diagonal bound (xis)")
        if any(not 0 <= x < 1 for x in xis):
            raise ValueError(f"RLAE's xi must lie in [0, 1), got {list(xis)}")
        self.lambdas = [float(v) for v in lambdas]
        self.xis = [float(v) for v in xis]
        self.select_metric = select_metric
        self.dtype = dtype

    @staticmethod
    def diag_inverse(train: sp.csr_matrix, ease_b: np.ndarray, lam: float) -> np.ndarray:
        """diag((XᵀX + λI)⁻¹) from EASE's B of the same λ: 1 / P_jj = G_jj + λ − Σ_i G_ij B_ij."""
        gram = sp.coo_matrix(train.T @ train)
        gb = np.bincount(gram.col, weights=gram.data * ease_b[gram.row, gram.col], minlength=gram.shape[1])
        g_diag = np.asarray(train.sum(axis=0), dtype=np.float64).ravel()  # binary X: G_jj = item degree
        return 1.0 / (g_diag + lam - gb)

    @staticmethod
    def column_scale(diag_p: np.ndarray, lam: float, xi: float) -> np.ndarray:
        """P_jj (λ + μ_j) = max(1 − ξ, λ P_jj): RLAE's B = EASE's B diag(this)."""
        return np.maximum(1.0 - xi, lam * diag_p)

    def fit(self, train, valid=None):
        self.train_ = _check_train(train, valid)
        grid = len(self.lambdas) * len(self.xis)
        if grid > 1 and valid is None:
            raise ValueError(f"RLAE got {grid} grid points but no validation matrix to choose among them")
        self.validation_ = {}
        best, best_val = None, -np.inf
        for lam in self.lambdas:
            t0 = time.perf_counter()
            self.B_ = _row_major(EASE.closed_form(self.train_, lam, self.dtype))
            diag_p = self.diag_inverse(self.train_, self.B_, lam)
            fit_s = time.perf_counter() - t0
            for xi in self.xis:
                self.lambda_, self.xi_, self.scale_ = lam, xi, self.column_scale(diag_p, lam, xi)
                self.active_ = int(np.sum(lam * diag_p < 1.0 - xi))  # items whose bound diag(B) <= xi binds
                if grid == 1:
                    best = (lam, xi, self.B_, self.scale_, self.active_)
                    break
                res = evaluate_recommender(self, self.train_, sp.csr_matrix(valid))
                res.update(fit_seconds=fit_s, active_constraints=self.active_)
                self.validation_[_grid_key(**{"lambda": lam, "xi": xi})] = res
                if res[self.select_metric] > best_val:
                    best, best_val = (lam, xi, self.B_, self.scale_, self.active_), res[self.select_metric]
        self.lambda_, self.xi_, self.B_, self.scale_, self.active_ = best
        return self

    def weights(self) -> np.ndarray:
        """The item-item matrix B (dense, zero diagonal) of the chosen grid point."""
        self._require_fit()
        return self.B_ * self.scale_[None, :]

    def score(self, user_ids):
        self._require_fit()
        return np.asarray((self.train_[user_ids] @ self.B_) * self.scale_[None, :], dtype=np.float32)

    def info(self):
        return {
            "lambda": self.lambda_,
            "xi": self.xi_,
            "active_constraints": self.active_,
            "grid": {"lambda": self.lambdas, "xi": self.xis},
            "select_metric": self.select_metric,
            "validation": self.validation_,
        }


class EASEIdealLowPass(Baseline):
    """EASE blended with GF-CF's ideal low-pass filter (Shen et al., CIKM 2021, "How Powerful is Graph Convolution
    for Recommendation?"), each term standardised per user:

        S_E = X B,  B = EASE(XᵀX, λ)                                   (``ease_closed_form``)
        S_I = (X D_I^-1/2 V_k)(V_kᵀ D_I^1/2),  V_k = top-k right singular vectors of R̃ = D_U^-1/2 X D_I^-1/2
        score = S_E / std_u(S_E) + w · S_I / std_u(S_I)    (std over all items of the user's row, before masking)

    The two terms are separate methods (``_fit_ease`` / ``_ease_term`` and ``_fit_lowpass`` / ``_lowpass_term``).
    B follows the model residual's size rule: exact EASE up to ``exact_max_items`` items, above it the
    neighbourhood EASE of ``neighbours`` co-held items per item (``ease_neighbourhood``: a sparse B, so the blend
    runs at catalog sizes where a dense item x item inverse does not fit).
    The SVD runs once, at the largest k (truncated ARPACK ``svds`` with a fixed start vector), and smaller k slice
    it; k is clipped to min(users, items) − 1. Zero degrees give zero weights in D^-1/2. The grid λ × k × w is
    chosen on validation ``select_metric`` (ties: the first in λ, k, w order): one EASE inverse per λ, and every
    (k, w) is scored from the same per-user standardised blocks of ``chunk_size`` users (memory: a few
    chunk × items arrays plus B, never users × items). Train items are masked by the evaluation, as for EASE.
    """

    name = "ease_ilp"

    def __init__(
        self,
        lambdas: Sequence[float] = (50.0, 100.0, 250.0),
        ks: Sequence[int] = (64, 128, 256, 512),
        weights: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
        select_metric: str = "recall@20",
        chunk_size: int = 1024,
        svd_seed: int = 0,
        dtype=np.float64,
        exact_max_items: int = 20000,
        neighbours: int = 256,
    ):
        if not len(lambdas) or not len(ks) or not len(weights):
            raise ValueError("ease_ilp needs at least one lambda, one k and one weight")
        if any(int(k) < 1 for k in ks):
            raise ValueError(f"ease_ilp's ranks k must be >= 1, got {list(ks)}")
        self.lambdas = [float(v) for v in lambdas]
        self.ks = [int(k) for k in ks]
        self.weights = [float(w) for w in weights]
        self.select_metric, self.chunk_size, self.svd_seed, self.dtype = select_metric, int(chunk_size), svd_seed, dtype
        self.exact_max_items, self.neighbours = int(exact_max_items), int(neighbours)

    # ---- EASE term
    def _fit_ease(self, lam: float) -> np.ndarray | sp.csr_matrix:
        if self.ease_form_ == "exact":
            return _row_major(EASE.closed_form(self.train_, lam, self.dtype))
        return ease_neighbourhood(self.train_, lam, self.neighbours)

    def _ease_term(self, rows: np.ndarray, b: np.ndarray | sp.csr_matrix) -> np.ndarray:
        """(rows, items) X B, standardised per user."""
        s_e = self.train_[rows] @ b
        return _standardise_rows(np.asarray(s_e.toarray() if sp.issparse(s_e) else s_e, dtype=np.float64))

    # ---- ideal low-pass term
    def _fit_lowpass(self, k: int) -> None:
        """V (items, k) of R̃ = D_U^-1/2 X D_I^-1/2, singular values descending, and the item degree scalings."""
        x = self.train_
        deg_u = np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
        deg_i = np.asarray(x.sum(axis=0), dtype=np.float64).ravel()
        inv_sqrt = lambda d: np.divide(1.0, np.sqrt(d), out=np.zeros_like(d), where=d > 0)  # noqa: E731
        self.item_inv_sqrt_, self.item_sqrt_ = inv_sqrt(deg_i), np.sqrt(deg_i)
        rn = sp.diags(inv_sqrt(deg_u)) @ x.astype(np.float64) @ sp.diags(self.item_inv_sqrt_)
        v0 = np.random.default_rng(self.svd_seed).uniform(-1.0, 1.0, min(rn.shape))
        _, s, vt = spla.svds(sp.csr_matrix(rn), k=k, v0=v0, solver="arpack")
        order = np.argsort(-s, kind="stable")
        self.singular_values_ = s[order]
        self.v_ = np.ascontiguousarray(vt[order].T)  # (items, k)
        self.v_right_ = self.v_.T * self.item_sqrt_[None, :]  # V_kᵀ D_I^1/2, (k, items); rank k = first k rows

    def _lowpass_input(self, rows: np.ndarray) -> np.ndarray:
        """X D_I^-1/2 V at the largest k, (rows, k_max): sliced for every smaller k."""
        return np.asarray(self.train_[rows] @ sp.diags(self.item_inv_sqrt_) @ self.v_, dtype=np.float64)

    def _lowpass_term(self, rows: np.ndarray, k: int, z: np.ndarray | None = None) -> np.ndarray:
        """(rows, items) X D_I^-1/2 V_k V_kᵀ D_I^1/2, standardised per user."""
        z = self._lowpass_input(rows) if z is None else z
        return _standardise_rows(z[:, :k] @ self.v_right_[:k])

    # ---- fit / score
    def fit(self, train, valid=None):
        self.train_ = _check_train(train, valid)
        num_users, num_items = self.train_.shape
        k_max = min(num_users, num_items) - 1
        if k_max < 1:
            raise ValueError(f"ease_ilp needs at least 2 users and 2 items, got {self.train_.shape}")
        self.ks_used_ = sorted(set(min(k, k_max) for k in self.ks))
        self.ease_form_ = ease_form(num_items, self.exact_max_items)
        grid = [(lam, k, w) for lam in self.lambdas for k in self.ks_used_ for w in self.weights]
        if len(grid) > 1 and valid is None:
            raise ValueError(f"ease_ilp got {len(grid)} grid points but no validation matrix to choose among them")
        t0 = time.perf_counter()
        self._fit_lowpass(max(self.ks_used_))
        self.svd_seconds_ = time.perf_counter() - t0
        self.validation_, self.ease_seconds_ = {}, {}
        best, best_val = None, -np.inf
        for lam in self.lambdas:
            t0 = time.perf_counter()
            b = self._fit_ease(lam)
            self.ease_seconds_[lam] = time.perf_counter() - t0
            if len(grid) == 1:
                best = (lam, self.ks_used_[0], self.weights[0], b)
                break
            results = self._validate(b, sp.csr_matrix(valid))
            for (k, w), res in results.items():
                self.validation_[_grid_key(**{"lambda": lam, "k": k, "w": w})] = res
                if res[self.select_metric] > best_val:
                    best, best_val = (lam, k, w, b), res[self.select_metric]
            del b
        self.lambda_, self.k_, self.w_, self.B_ = best
        return self

    def _validate(self, b: np.ndarray, valid: sp.csr_matrix) -> dict[tuple[int, float], dict]:
        """Validation metrics of every (k, w) at one λ, from per-user standardised blocks of ``chunk_size`` users,
        scored by :func:`evaluate_recommender` (the same masking as every baseline)."""
        per_user = {(k, w): [] for k in self.ks_used_ for w in self.weights}
        users = np.arange(self.train_.shape[0])
        block = _Block()
        for start in range(0, len(users), self.chunk_size):
            rows = users[start : start + self.chunk_size]
            s_e, z = self._ease_term(rows, b), self._lowpass_input(rows)
            for k in self.ks_used_:
                s_i = self._lowpass_term(rows, k, z)
                for w in self.weights:
                    block.scores = s_e + w * s_i
                    per_user[(k, w)].append(evaluate_recommender(block, self.train_, valid, users=rows,
                                                                 batch_size=len(rows), per_user=True))
        return {key: summarize(merge_per_user(parts)) for key, parts in per_user.items()}

    def score(self, user_ids):
        self._require_fit()
        rows = np.asarray(user_ids)
        out = np.empty((len(rows), self.train_.shape[1]), dtype=np.float32)
        for start in range(0, len(rows), self.chunk_size):
            r = rows[start : start + self.chunk_size]
            out[start : start + len(r)] = self._ease_term(r, self.B_) + self.w_ * self._lowpass_term(r, self.k_)
        return out

    def info(self):
        return {
            "lambda": self.lambda_,
            "k": self.k_,
            "w": self.w_,
            "grid": {"lambda": self.lambdas, "k": self.ks, "k_used": self.ks_used_, "w": self.weights},
            "ease_form": self.ease_form_,
            "neighbours": self.neighbours if self.ease_form_ == "neighbourhood" else None,
            "select_metric": self.select_metric,
            "svd_seconds": self.svd_seconds_,
            "ease_seconds": {str(k): v for k, v in self.ease_seconds_.items()},
            "validation": self.validation_,
        }


class _Block(Baseline):
    """A precomputed score block served to :func:`evaluate_recommender` (``scores`` rows = the users asked for)."""

    scores: np.ndarray

    def score(self, user_ids):
        return self.scores


class _VAE(nn.Module):
    """Multi-VAE network (Liang et al., 2018): [I -> 600 -> 2x200] encoder, [200 -> 600 -> I] decoder, tanh."""

    def __init__(self, num_items: int, hidden: int = 600, latent: int = 200, dropout: float = 0.5):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.enc = nn.Sequential(nn.Linear(num_items, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent))
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, num_items))
        self.latent = latent
        for m in self.modules():  # Xavier weights, small normal biases, as in the reference code
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=0.001)

    def forward(self, x: sp.csr_matrix) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits over items and the KL term for a CSR batch of users.

        The input is L2-normalised and dropped out on its non-zeros only, and the first layer is a sparse
        product: the same maths as the dense version, without a (batch, I) x (I, 600) dense matmul.
        """
        coo = x.tocoo()
        rows = torch.from_numpy(coo.row.astype(np.int64))
        vals = torch.from_numpy(coo.data.astype(np.float32))
        norm = torch.zeros(x.shape[0]).index_add_(0, rows, vals**2).sqrt().clamp_min(1e-12)
        vals = self.drop(vals / norm[rows])
        idx = torch.stack([rows, torch.from_numpy(coo.col.astype(np.int64))])
        first = self.enc[0]
        h = torch.sparse.mm(torch.sparse_coo_tensor(idx, vals, x.shape, check_invariants=False), first.weight.T) + first.bias
        mu, logvar = self.enc[2](torch.tanh(h)).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        kl = 0.5 * torch.mean(torch.sum(-logvar + torch.exp(logvar) + mu**2 - 1, dim=1))
        return self.dec(z), kl


def _history(fit, **per_epoch: dict) -> list[dict]:
    """Per-epoch rows of a neural baseline (1-based epochs, as the baselines report them): mean training loss,
    validation metrics where validated, and any ``per_epoch`` values."""
    valid = {h["epoch"]: {k: v for k, v in h.items() if k != "epoch"} for h in fit.history}
    rows = []
    for epoch, loss in enumerate(fit.epoch_losses):
        row = {"epoch": epoch + 1, "loss": loss, **{k: v[epoch] for k, v in per_epoch.items() if epoch in v}}
        if epoch in valid:
            row["valid"] = valid[epoch]
        rows.append(row)
    return rows


class MultiVAE(Baseline):
    """Multi-VAE with KL annealing: loss = -Σ x log softmax(f(z)) + β KL, β = min(cap, step / anneal_steps).

    Trained on train rows (Adam, batch of users); with ``valid`` the epoch with the best validation
    ``select_metric`` is kept (checked every ``eval_every`` epochs; ``patience`` > 0 stops after that many checks
    without improvement). Defaults follow the paper except the epoch count, which is sized for CPUs.
    """

    name = "multivae"
    stochastic = True

    def __init__(
        self,
        epochs: int = 100,
        batch_size: int = 500,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        hidden: int = 600,
        latent: int = 200,
        dropout: float = 0.5,
        anneal_cap: float = 0.2,
        anneal_steps: int = 200_000,
        eval_every: int = 1,
        patience: int = 0,
        select_metric: str = "recall@20",
        seed: int = 0,
    ):
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.patience = patience
        self.hidden, self.latent, self.dropout = hidden, latent, dropout
        self.anneal_cap, self.anneal_steps = anneal_cap, anneal_steps
        self.eval_every, self.select_metric, self.seed = eval_every, select_metric, seed

    def fit(self, train, valid=None):
        self.train_ = _check_train(train, valid)
        gen = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)  # dropout and reparameterisation noise
        self.net_ = _VAE(self.train_.shape[1], self.hidden, self.latent, self.dropout)
        opt = torch.optim.Adam(self.net_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        trainer = Trainer(self.net_, opt, selection_metric=self.select_metric, patience=self.patience, progress=False)
        users = np.flatnonzero(np.diff(self.train_.indptr) > 0)  # users with no train items teach nothing
        valid = sp.csr_matrix(valid) if valid is not None else None
        betas, best = {}, {}

        def batches(epoch):
            order = users[torch.randperm(len(users), generator=gen).numpy()]
            for start in range(0, len(order), self.batch_size):
                yield self.train_[order[start : start + self.batch_size]]

        def loss(net, batch, epoch):
            betas[epoch] = min(self.anneal_cap, trainer.global_step / self.anneal_steps)
            logits, kl = net(batch)
            nll = -(torch.log_softmax(logits, dim=1) * torch.from_numpy(batch.toarray())).sum(dim=1).mean()
            return nll + betas[epoch] * kl

        def validate(epoch):
            if valid is None or not ((epoch + 1) % self.eval_every == 0 or epoch + 1 == self.epochs):
                return None
            return evaluate_recommender(self, self.train_, valid)

        fit = trainer.fit(self.epochs, batches, loss, validate,
                          on_best=lambda epoch: best.update(state=copy.deepcopy(self.net_.state_dict())))
        self.best_epoch_ = fit.best_epoch + 1 if fit.best_epoch >= 0 else self.epochs
        self.history_ = _history(fit, beta=betas)
        if "state" in best:
            self.net_.load_state_dict(best["state"])
        self.net_.eval()
        return self

    @torch.no_grad()
    def score(self, user_ids):
        self._require_fit()
        self.net_.eval()
        logits, _ = self.net_(self.train_[user_ids])
        return logits.numpy()

    def info(self):
        return {
            "epochs": self.epochs,
            "epochs_run": len(self.history_),
            "patience": self.patience,
            "best_epoch": self.best_epoch_,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "dims": [self.hidden, self.latent],
            "dropout": self.dropout,
            "anneal_cap": self.anneal_cap,
            "anneal_steps": self.anneal_steps,
            "seed": self.seed,
        }


class LightGCN(Baseline):
    """LightGCN (He et al., 2020): ID embeddings smoothed over the normalised train graph, BPR loss.

    E = mean_{l=0..L} Â^l E0 with Â = D^-1/2 A D^-1/2 on the user-item bipartite train graph; score = e_u · e_i.
    One epoch = one pass over the train interactions as (user, positive, random negative) triples; the epoch
    with the best validation ``select_metric`` is kept (checked every ``eval_every`` epochs; ``patience`` > 0 stops
    after that many checks without improvement).
    """

    name = "lightgcn"
    stochastic = True

    def __init__(
        self,
        dim: int = 64,
        layers: int = 3,
        epochs: int = 100,
        batch_size: int = 2048,
        lr: float = 1e-3,
        reg: float = 1e-4,
        eval_every: int = 5,
        patience: int = 0,
        select_metric: str = "recall@20",
        seed: int = 0,
    ):
        self.dim, self.layers, self.epochs, self.batch_size = dim, layers, epochs, batch_size
        self.patience = patience
        self.lr, self.reg, self.eval_every, self.select_metric, self.seed = lr, reg, eval_every, select_metric, seed

    def _propagate(self) -> torch.Tensor:
        e = self.emb_.weight
        out = e
        for _ in range(self.layers):
            e = SymmetricSparseProduct.apply(self.adj_, e)
            out = out + e
        return out / (self.layers + 1)

    def fit(self, train, valid=None):
        self.train_ = _check_train(train, valid)
        U, I = self.train_.shape
        coo = self.train_.tocoo()
        crow, col, vals = (torch.from_numpy(a) for a in normalized_adjacency(self.train_))
        with warnings.catch_warnings():  # CSR support is "beta"; the product used here is the plain one
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            self.adj_ = torch.sparse_csr_tensor(crow, col, vals, (U + I, U + I), check_invariants=True)
        gen = np.random.default_rng(self.seed)
        torch.manual_seed(self.seed)
        self.emb_ = nn.Embedding(U + I, self.dim)
        nn.init.normal_(self.emb_.weight, std=0.1)
        trainer = Trainer(self.emb_, torch.optim.Adam(self.emb_.parameters(), lr=self.lr), selection_metric=self.select_metric,
                          patience=self.patience, progress=False)
        users, pos = coo.row.astype(np.int64), coo.col.astype(np.int64)
        train_keys = np.sort(users * I + pos)
        valid = sp.csr_matrix(valid) if valid is not None else None
        best = {}

        def batches(epoch):
            order = gen.permutation(len(users))
            neg = gen.integers(0, I, len(users))
            clash = np.isin(users * I + neg, train_keys)  # resample negatives that are train items, once
            neg[clash] = gen.integers(0, I, int(clash.sum()))
            for start in range(0, len(order), self.batch_size):
                b = order[start : start + self.batch_size]
                yield tuple(torch.from_numpy(a[b]) for a in (users, pos, neg))

        def loss(emb, batch, epoch):
            u, p, n = batch
            e = self._propagate()
            eu, ep, en = e[u], e[U + p], e[U + n]
            bpr = -nn.functional.logsigmoid((eu * ep).sum(1) - (eu * en).sum(1)).mean()
            e0 = emb.weight
            l2 = (e0[u].pow(2).sum() + e0[U + p].pow(2).sum() + e0[U + n].pow(2).sum()) / (2 * len(u))
            return bpr + self.reg * l2

        def validate(epoch):
            if valid is None or not ((epoch + 1) % self.eval_every == 0 or epoch + 1 == self.epochs):
                return None
            self._cache_final()
            return evaluate_recommender(self, self.train_, valid)

        fit = trainer.fit(self.epochs, batches, loss, validate,
                          on_best=lambda epoch: best.update(state=self.emb_.weight.detach().clone()))
        self.best_epoch_ = fit.best_epoch + 1 if fit.best_epoch >= 0 else self.epochs
        self.history_ = _history(fit)
        if "state" in best:
            with torch.no_grad():
                self.emb_.weight.copy_(best["state"])
        self._cache_final()
        return self

    @torch.no_grad()
    def _cache_final(self) -> None:
        U = self.train_.shape[0]
        e = self._propagate()
        self.user_e_, self.item_e_ = e[:U].numpy().copy(), e[U:].numpy().copy()

    def score(self, user_ids):
        self._require_fit()
        return self.user_e_[np.asarray(user_ids)] @ self.item_e_.T

    def info(self):
        return {"dim": self.dim, "layers": self.layers, "epochs": self.epochs, "epochs_run": len(self.history_),
                "patience": self.patience, "best_epoch": self.best_epoch_,
                "batch_size": self.batch_size, "lr": self.lr, "reg": self.reg, "seed": self.seed}


BASELINES = {"pop": Popularity, "itemknn": ItemKNN, "ease": EASE, "rlae": RLAE, "ease_ilp": EASEIdealLowPass,
             "multivae": MultiVAE, "lightgcn": LightGCN}


def make_baseline(name: str, seed: int = 0, **kwargs) -> Baseline:
    """Instantiate a baseline by its short name; ``seed`` only reaches stochastic models."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; expected one of {sorted(BASELINES)}")
    cls = BASELINES[name]
    if cls.stochastic:
        kwargs["seed"] = seed
    return cls(**kwargs)
