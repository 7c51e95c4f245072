"""The one place where ``train/`` touches ``data_builders`` (DESIGN.md §4).

Everything the loops need from a dataset folder goes through :class:`Corpus`: counts, tokenizer, prompt rows per
config, a collator that pads and adds ``hop_distances``, and a prompt encoder for (user, items). Keeping it in
one module means a change in the builders' API is a change here only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence



class DataFolderError(ValueError):
    """The dataset folder is missing, incomplete, or does not match the model/tokenizer it is used with."""


@dataclass
class RecExample:
    """One personalized predictive prompt: tokens, node positions, the user and the items it is scored against."""

    user: int
    input_ids: list[int]
    node_positions: list[int]
    history: list[int]  # items shown / excluded from ranking
    targets: list[int]  # items to predict (multi-hot target or relevant set)
    pair_hops: Any = None  # the stored hop matrix over pair_nodes (data_builders.pair_hops), None if absent
    pair_hops_luo: Any = None
    pair_nodes: Any = None

    def pair_fields(self) -> dict:
        """Row fields that let the collator take the hops of any prompt over a subset of this row's nodes
        (a re-masked or cut history) from the stored matrix instead of the graph; empty when none is stored."""
        if self.pair_hops is None:
            return {}
        return {"pair_hops": self.pair_hops, "pair_hops_luo": self.pair_hops_luo, "pair_nodes": self.pair_nodes}


class Corpus:
    """A loaded dataset folder (a thin view over ``data_builders.load_corpus``) with the calls the loops need."""

    def __init__(self, folder: str | Path, leave_user_out: bool = False):
        self.folder = Path(folder)
        self.leave_user_out = leave_user_out
        if not (self.folder / "manifest.json").is_file():
            raise DataFolderError(f"{self.folder}: not a dataset folder (no manifest.json); build it with `python -m data_builders build`")
        from data_builders import load_corpus

        try:
            self._c = load_corpus(self.folder)
        except (ValueError, KeyError) as err:
            raise DataFolderError(f"{self.folder}: {err}") from err
        self.manifest: dict = self._c.manifest
        self.num_users = self._c.num_users
        self.num_items = self._c.num_items
        self.base_vocab_size = self._c.base_vocab_size
        self.max_hops = self._c.max_hops
        self.tokenizer = self._c.tokenizer
        self.hops = self._c.hops
        self.tokenizer_sha256 = self.manifest["tokenizer"]["sha256"]
        self.graph_sha256 = self.manifest["graph"]["sha256"]
        self._encoders: dict[int, Any] = {}
        self._train_items: list[list[int]] | None = None

    # ---------------------------------------------------------------- rows
    def dataset(self, config: str, split: str = "train"):
        """The ``datasets.Dataset`` of one prompt config/split (DESIGN.md §4 columns)."""
        try:
            return self._c.dataset(config, split)
        except KeyError as err:
            raise DataFolderError(err.args[0]) from err

    def rec_examples(self, split: str) -> list[RecExample]:
        """The stored personalized predictive prompts of ``split`` (train/validation/test)."""
        from data_builders.pair_hops import row_nodes

        ds = self.dataset("recommendation", split)
        stored = "pair_hops" in ds.column_names
        cols = ds.select_columns(["user", "input_ids", "node_positions", "history", "targets"]).to_dict()
        # the uint8 matrices stay numpy views of the Arrow buffers (no Python int per pair)
        pairs = {c: _uint8_lists(ds, c) for c in ("pair_hops", "pair_hops_luo")} if stored else {}
        out = []
        for k, (u, ids, pos, h, t) in enumerate(zip(cols["user"], cols["input_ids"], cols["node_positions"], cols["history"], cols["targets"])):
            ex = RecExample(int(u), list(ids), list(pos), list(h), list(t))
            if stored:
                ex.pair_hops, ex.pair_hops_luo, ex.pair_nodes = pairs["pair_hops"][k], pairs["pair_hops_luo"][k], row_nodes(pos)[0]
            out.append(ex)
        return out

    def train_items(self) -> list[list[int]]:
        """Every user's full train item list (masked out of the ranking), from the train recommendation rows."""
        if self._train_items is None:
            items: list[list[int]] = [[] for _ in range(self.num_users)]
            cols = self.dataset("recommendation", "train").select_columns(["user", "targets"]).to_dict()
            for u, t in zip(cols["user"], cols["targets"]):
                items[int(u)] = [int(x) for x in t]
            self._train_items = items
        return self._train_items

    def item_titles(self) -> list[str]:
        return [t or f"item_{j}" for j, t in enumerate(self._c.item_titles)]

    # ---------------------------------------------------------------- prompts
    def encode_rec_prompt(self, user: int | None, items: Sequence[int], max_length: int) -> tuple[list[int], list[int]]:
        """(input_ids, node_positions) of "user_u has interacted with <items>, user_u will interact with".

        ``user=None`` gives the unseen-user prompt "A new user has interacted with <items>, the user will
        interact with". Long histories are cut from the left so the trigger phrase is never truncated.
        """
        enc = self._encoders.get(max_length)
        if enc is None:
            enc = self._encoders[max_length] = self._c.rec_encoder(max_length)
        out = enc.encode(user, list(items))
        return out["input_ids"].tolist(), out["node_positions"].tolist()

    # ---------------------------------------------------------------- batches
    def collator(self, max_length: int):
        """Pads right, cuts rows longer than ``max_length`` from the left, adds hop_distances / target_items."""
        return self._c.collator(max_length=max_length, leave_user_out=self.leave_user_out)

    def check_model(self, model_config: Any) -> None:
        """Refuse a model whose ID space, text vocabulary, tokenizer or graph differs from this folder's."""
        for name in ("num_users", "num_items", "base_vocab_size"):
            a, b = getattr(model_config, name), getattr(self, name)
            if a != b:
                raise DataFolderError(
                    f"{self.folder}: dataset folder has {name}={b} but the model was built for {name}={a} "
                    "(a folder from another tokenizer or graph)"
                )
        for key in ("tokenizer_sha256", "graph_sha256"):
            want, have = getattr(model_config, key, None), getattr(self, key)
            if want and want != have:
                raise DataFolderError(
                    f"{self.folder}: {key.split('_')[0]} hash {have[:12]}... differs from the one the model was trained "
                    f"on ({want[:12]}...): a dataset folder from another tokenizer or graph"
                )


def _uint8_lists(ds, column: str) -> list:
    """A list<uint8> column as per-row numpy views."""
    arr = ds.data.table.column(column).combine_chunks()
    offsets, values = arr.offsets.to_numpy(), arr.values.to_numpy(zero_copy_only=False)
    return [values[offsets[k] : offsets[k + 1]] for k in range(len(arr))]


def read_manifest(folder: str | Path) -> dict:
    p = Path(folder) / "manifest.json"
    if not p.is_file():
        raise DataFolderError(f"{folder}: no manifest.json")
    return json.loads(p.read_text())


__all__ = ["Corpus", "RecExample", "DataFolderError", "read_manifest"]
