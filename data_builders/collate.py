"""GraphCollator: rows -> right-padded tensors plus the (B, L, L) hop-distance tensor (DESIGN.md section 2).

Vectorised: padding is one numpy fill per column; the hop tensor is gathered per row from the (k, k) matrix over
the row's distinct nodes stored with it (``pair_hops``, built with the dataset: the graph is not touched), and
only rows without one (a raw history, an unseen user) have their few pairs measured on the fly by
``HopDistances.row_matrices`` (the authors' collate loop cost ~10 us per token pair).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .graph import HopDistances
from .pair_hops import gather_row_hops, stored_token_index

IGNORE_INDEX = -100
# the batch keys the model's forward takes as inputs (labels / target_items depend on the task)
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "hop_distances")


def _pad(seqs: list[np.ndarray], L: int, value: int) -> np.ndarray:
    out = np.full((len(seqs), L), value, dtype=np.int64)
    for b, s in enumerate(seqs):  # one slice copy per row, not per token
        out[b, : len(s)] = s
    return out


class GraphCollator:
    """Batch rows (dicts with ``input_ids``, ``node_positions``, optional ``labels`` and ``targets``).

    Returns ``input_ids`` (B, L) long, ``attention_mask`` (B, L) long, ``labels`` (B, L) long with -100 on pad
    (only when rows have labels), ``hop_distances`` (B, L, L) long (-1 where either token is text or pad),
    and ``target_items`` (B, I) float multi-hot when rows have ``targets`` (needs ``num_items``; a row's optional
    ``target_weights``, one per target, replace its ones).
    A row's hops come from its ``pair_hops`` (``pair_hops_luo`` with ``leave_user_out`` when non-empty), over
    ``pair_nodes`` when given (a re-masked prompt pointing into its full-history matrix); rows without
    ``pair_hops`` are measured on the train graph.

    Args:
        hops: the corpus's HopDistances (``None`` gives no ``hop_distances``: plain GPT-2 attention).
        pad_token_id: id written into padded positions (masked out by ``attention_mask``).
        num_items: width of ``target_items``.
        max_length: rows longer than this are cut from the LEFT (the trigger phrase and last tokens survive).
        pad_to_multiple_of: round L up (e.g. 8) for tensor-core friendly shapes.
        leave_user_out: item-item hops of each prompt measured without the prompt's user
            (``HopDistances.leave_user_out``), so the bias of a personalized prompt carries graph information.
    """

    def __init__(
        self,
        hops: HopDistances | None,
        pad_token_id: int,
        num_items: int | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        leave_user_out: bool = False,
    ):
        self.hops = hops
        self.pad_token_id = int(pad_token_id)
        self.num_items = num_items
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.leave_user_out = leave_user_out

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("GraphCollator got an empty batch")
        ids = [np.asarray(r["input_ids"], dtype=np.int64) for r in rows]
        pos = [np.asarray(r["node_positions"], dtype=np.int64) for r in rows]
        for b, (i, p) in enumerate(zip(ids, pos)):
            if len(i) != len(p):
                raise ValueError(f"row {b}: input_ids ({len(i)}) and node_positions ({len(p)}) differ in length")
        has_labels = all(r.get("labels") is not None for r in rows)
        labels = [np.asarray(r["labels"], dtype=np.int64) for r in rows] if has_labels else None
        if self.max_length is not None:
            cut = lambda xs: [x[-self.max_length :] for x in xs]  # noqa: E731
            ids, pos = cut(ids), cut(pos)
            labels = cut(labels) if labels is not None else None
        L = max(len(x) for x in ids)
        if self.pad_to_multiple_of:
            L = -(-L // self.pad_to_multiple_of) * self.pad_to_multiple_of
        lengths = np.array([len(x) for x in ids])
        attention = (np.arange(L)[None, :] < lengths[:, None]).astype(np.int64)
        batch = {
            "input_ids": torch.from_numpy(_pad(ids, L, self.pad_token_id)),
            "attention_mask": torch.from_numpy(attention),
        }
        if labels is not None:
            batch["labels"] = torch.from_numpy(_pad(labels, L, IGNORE_INDEX))
        if self.hops is not None:
            batch["hop_distances"] = torch.from_numpy(self._hops(rows, L).astype(np.int64))
        if all(r.get("targets") is not None for r in rows):
            if self.num_items is None:
                raise ValueError("rows carry targets but GraphCollator was built without num_items")
            multi_hot = np.zeros((len(rows), self.num_items), dtype=np.float32)
            for b, r in enumerate(rows):  # optional per-target weights (finetune.visible_target_weight)
                weights = r.get("target_weights")
                multi_hot[b, np.asarray(r["targets"], dtype=np.int64)] = 1.0 if weights is None else weights
            batch["target_items"] = torch.from_numpy(multi_hot)
        return batch

    def _hops(self, rows: Sequence[dict], L: int) -> np.ndarray:
        """(B, L, L) hops from the rows' stored matrices; rows without one are measured on the graph."""
        column = "pair_hops_luo" if self.leave_user_out else "pair_hops"
        matrices: list = [None] * len(rows)
        index: list = [None] * len(rows)
        missing = []
        for b, r in enumerate(rows):
            flat = r.get("pair_hops")
            if flat is None:
                missing.append(b)
                continue
            if self.leave_user_out and r.get("pair_hops_luo") is not None and len(r["pair_hops_luo"]):
                flat = r["pair_hops_luo"]
            flat = np.asarray(flat, dtype=np.uint8)
            k = int(round(len(flat) ** 0.5))
            if k * k != len(flat):
                raise ValueError(f"row {b}: {column} has {len(flat)} values, not a k x k matrix")
            matrices[b], index[b] = flat.reshape(k, k), stored_token_index(r)
            if index[b].max(initial=-1) >= k:
                raise ValueError(f"row {b}: {column} is {k} x {k} but the row has more distinct nodes")
        if missing:
            pos = [np.asarray(rows[b]["node_positions"], dtype=np.int64) for b in missing]
            for b, p, m in zip(missing, pos, self.hops.row_matrices(pos, leave_user_out=self.leave_user_out)):
                matrices[b], index[b] = m, stored_token_index({"node_positions": p})
        if self.max_length is not None:
            index = [i[-self.max_length :] for i in index]
        return gather_row_hops(matrices, index, L)
