"""``Corpus``: the one owner of the dataset folder (DESIGN.md section 4).

It is the only code that reads the folder by its file names (declared in ``modeling_graphgpt2.folder_layout``)
and knows its manifest keys. It opens either

- a dataset folder written by ``python -m data_builders build`` (manifest, tokenizer, graph, maps, prompt rows), or
- a published model folder (``train.publish``): the same files minus the prompt rows, plus the weights and
  ``graphgpt2_rec.json`` (inference settings),

and hands every consumer what it needs: the model's sizes, prompt rows, a collator, a prompt encoder, the
interaction matrices for baselines, and ``export_to(dir)`` for publishing. Graph settings fixed at build time
(``max_hops``) are read from here; a run or model config is compared against them, never passed into them.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from modeling_graphgpt2.folder_layout import (COLD_ITEMS_FILE, FORMAT_NAME, GRAPH_DIR, HISTORIES_FILE, INFERENCE_FILE,
                                              ITEMS_FILE, MANIFEST_FILE, MAPS_DIR, TITLES_FILE, TOKENIZER_CONFIG_FILE,
                                              TOKENIZER_DIR, TOKENIZER_FILE, USERS_FILE)
from modeling_graphgpt2.pipeline_graphgpt2 import file_sha256

from .atomic import atomic_write_text
from .collate import GraphCollator
from .graph import DEFAULT_TABLE_BUDGET_BYTES, HopDistances
from .pair_hops import row_nodes
from .preprocess import split_hash
from .prompts import RecPromptEncoder
from .tokenization import check_id_layout, load_tokenizer

TOKENIZER_CONFIG_DROP = ("is_local", "local_files_only", "auto_map")  # load-time flags save_pretrained writes back

REC_SPLITS = ("train", "validation", "test")
# the split manifest (data_builders.preprocess) names its splits train/valid/test
_SPLIT_HASH_KEYS = {"train": "train", "validation": "valid", "test": "test"}


class DataFolderError(ValueError):
    """The dataset folder is missing, incomplete, or does not match the model/tokenizer/config it is used with."""


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
    row: int = -1  # the row's index in its split (a shard's rows keep their place in the whole split)

    def pair_fields(self) -> dict:
        """Row fields that let the collator take the hops of any prompt over a subset of this row's nodes
        (a re-masked or cut history) from the stored matrix instead of the graph; empty when none is stored."""
        if self.pair_hops is None:
            return {}
        return {"pair_hops": self.pair_hops, "pair_hops_luo": self.pair_hops_luo, "pair_nodes": self.pair_nodes}


def _uint8_lists(ds, column: str) -> list:
    """A list<uint8> column as per-row numpy views."""
    arr = ds.data.table.column(column).combine_chunks()
    offsets, values = arr.offsets.to_numpy(), arr.values.to_numpy(zero_copy_only=False)
    return [values[offsets[k] : offsets[k + 1]] for k in range(len(arr))]


def shard_rows(num_rows: int, rank: int, world_size: int) -> range:
    """Row indices of ``rank``'s contiguous shard out of ``world_size``: the split ``datasets``'
    ``Dataset.shard(world_size, rank, contiguous=True)`` makes (sizes differ by at most one row)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    size, extra = divmod(num_rows, world_size)
    start = size * rank + min(rank, extra)
    return range(start, start + size + (rank < extra))


def read_manifest(folder: str | os.PathLike) -> dict:
    """The folder's manifest; DataFolderError when there is none or it is not this project's format."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise DataFolderError(f"{folder}: not a dataset folder (no {MANIFEST_FILE}); build it with `python -m data_builders build`")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT_NAME:
        raise DataFolderError(f"{path}: format {manifest.get('format')!r} is not {FORMAT_NAME!r}")
    return manifest


def has_manifest(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` looks built (holds a manifest); ``Corpus(folder)`` does the full checks."""
    return (Path(folder) / MANIFEST_FILE).is_file()


def _read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


class Corpus:
    """A dataset folder or published model folder, opened and checked (tokenizer and graph hashes, ID layout).

    Args:
        folder: the folder to open.
        leave_user_out: item-item hops of each prompt measured without the prompt's user (a run-time collator
            option); ``None`` takes the published folder's setting, else False.
        table_budget_bytes: largest dense hop table kept in memory.
    """

    def __init__(self, folder: str | os.PathLike, leave_user_out: bool | None = None,
                 table_budget_bytes: int = DEFAULT_TABLE_BUDGET_BYTES):
        self.folder = Path(folder)
        self.manifest: dict = read_manifest(self.folder)
        inference = self.folder / INFERENCE_FILE
        self.inference_settings: dict = _read_json(inference) if inference.is_file() else {}
        if leave_user_out is None:
            leave_user_out = bool(self.inference_settings.get("leave_user_out_hops", False))
        self.leave_user_out = leave_user_out
        try:
            # a published folder keeps its one tokenizer copy at the root (export_to)
            tokenizer_dir = self.folder / TOKENIZER_DIR if (self.folder / TOKENIZER_DIR).is_dir() else self.folder
            self.tokenizer = load_tokenizer(tokenizer_dir, self.tokenizer_sha256)
            check_id_layout(self.tokenizer, self.base_vocab_size, self.num_users, self.num_items)
            self.hops = HopDistances.load(self.folder / GRAPH_DIR, self.graph_sha256, table_budget_bytes=table_budget_bytes)
        except (OSError, ValueError, KeyError) as err:
            raise DataFolderError(f"{self.folder}: {err}") from err
        graph = self.hops.graph
        if (graph.num_users, graph.num_items, self.hops.max_hops) != (self.num_users, self.num_items, self.max_hops):
            raise DataFolderError(f"{self.folder / GRAPH_DIR}: graph shape/max_hops do not match {self.folder / MANIFEST_FILE}")
        maps = self.folder / MAPS_DIR
        self.user_ids: list[str] = _read_json(maps / USERS_FILE)
        self.item_ids: list[str] = _read_json(maps / ITEMS_FILE)
        self._titles: list[str | None] = _read_json(maps / TITLES_FILE)
        if len(self.user_ids) != self.num_users or len(self.item_ids) != self.num_items:
            raise DataFolderError(f"{maps}: id maps do not match the manifest's counts")
        self._check_file_hashes()
        self._encoders: dict[int, RecPromptEncoder] = {}
        self._train_items: list[list[int]] | None = None
        self._cold_items: dict | None = None

    def _check_file_hashes(self) -> None:
        """Every file the model's behaviour depends on and no other hash covers (id maps, titles, a dense hop
        table) must match the sha256 the build recorded; tokenizer and graph are checked by their own hashes."""
        for rel, want in self.files_sha256.items():
            path = self.folder / rel
            if not path.is_file():
                raise DataFolderError(f"{path}: missing (listed in {self.folder / MANIFEST_FILE} files_sha256)")
            got = file_sha256(path)
            if got != want:
                raise DataFolderError(f"{path}: sha256 {got[:12]}... does not match the {rel!r} entry of "
                                      f"{self.folder / MANIFEST_FILE} files_sha256 ({want[:12]}...): a file from another build "
                                      "or edited; rebuild the dataset folder or re-publish the model")

    # ---------------------------------------------------------------- sizes and fingerprints
    @property
    def files_sha256(self) -> dict[str, str]:
        """sha256 per folder-relative path of the id maps, titles and hop table (empty for folders built before)."""
        return dict(self.manifest.get("files_sha256") or {})

    @property
    def name(self) -> str:
        return str(self.manifest.get("name") or self.folder.name)

    @property
    def num_users(self) -> int:
        return int(self.manifest["num_users"])

    @property
    def num_items(self) -> int:
        return int(self.manifest["num_items"])

    @property
    def base_vocab_size(self) -> int:
        return int(self.manifest["base_vocab_size"])

    @property
    def max_hops(self) -> int:
        """Hop cap fixed when the graph was built; models and run configs must agree with it."""
        return int(self.manifest["max_hops"])

    @property
    def num_edges(self) -> int:
        return int(self.manifest["graph"]["num_edges"])

    @property
    def tokenizer_source(self) -> str:
        return str(self.manifest["tokenizer"]["source"])

    @property
    def tokenizer_sha256(self) -> str:
        return str(self.manifest["tokenizer"]["sha256"])

    @property
    def graph_sha256(self) -> str:
        return str(self.manifest["graph"]["sha256"])

    @property
    def split_manifest(self) -> dict:
        """The split's own manifest (seed, filters, counts, source files, hashes)."""
        return dict(self.manifest.get("split") or {})

    @property
    def split_hash(self) -> str:
        return str(self.split_manifest.get("split_hash", ""))

    @property
    def split_hashes(self) -> dict[str, str]:
        """sha256 of the sorted (user, item) pairs per split (keys train / valid / test)."""
        return dict(self.split_manifest.get("split_hashes") or {})

    @property
    def configs(self) -> list[str]:
        return list(self.manifest["configs"])

    @property
    def prompt_max_length(self) -> int:
        return int(self.manifest["prompts"]["max_length"])

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    @property
    def has_rows(self) -> bool:
        """True for a dataset folder (prompt rows on disk), False for a published model folder."""
        files = self.manifest.get("data_files", {}).get("recommendation", {}).get("train", [])
        return bool(files) and all((self.folder / rel).is_file() for rel in files)

    # ---------------------------------------------------------------- rows
    def dataset(self, config: str, split: str = "train", rows: range | None = None, columns: list[str] | None = None):
        """The ``datasets.Dataset`` of one config/split: the same rows ``datasets.load_dataset(folder, config)`` gives.

        ``rows`` (a contiguous range, e.g. one rank's :func:`shard_rows`) reads only the Parquet files that hold
        them and keeps only them; ``columns`` reads only those columns.

        Read from the manifest's Parquet files rather than through ``load_dataset``: the datasets cache keys a
        local folder by its base name and config, so two folders both called ``data`` served each other's rows
        (seen with datasets 5.2).
        """

        tables = [table for _, table in self._row_tables(config, split, rows, columns)]
        if not tables:  # an empty range: the schema of the first file, no rows
            tables = [next(self._row_tables(config, split, None, columns))[1].slice(0, 0)]
        return datasets.Dataset(pa.concat_tables(tables))

    def num_rows(self, config: str, split: str = "train") -> int:
        """Rows of one config/split, from the Parquet files' footers (no rows read)."""

        return sum(pq.ParquetFile(path).metadata.num_rows for path in self._row_files(config, split))

    def _row_files(self, config: str, split: str) -> list[Path]:
        if config not in self.manifest["configs"]:
            why = self.manifest.get("skipped_configs", {}).get(config, "not requested at build time")
            raise DataFolderError(f"{self.folder}: config {config!r} was not built ({why}); built: {self.manifest['configs']}")
        if split not in self.manifest["rows"][config]:
            raise DataFolderError(f"{self.folder}: config {config!r} has no split {split!r}; has {list(self.manifest['rows'][config])}")
        paths = [self.folder / rel for rel in self.manifest["data_files"][config][split]]
        for path in paths:
            if not path.is_file():
                raise DataFolderError(f"{path}: listed in {self.folder / MANIFEST_FILE} but missing "
                                      "(a published model folder holds no prompt rows)")
        return paths

    def _file_ranges(self, config: str, split: str, rows: range | None):
        """(path, index of its first row, lo, hi) per Parquet file holding rows ``lo..hi-1`` of ``rows`` (every file,
        whole, when None); files outside the range are left out."""

        if rows is not None and rows.step != 1:
            raise ValueError(f"rows must be a contiguous range, got {rows}")
        first = 0
        for path in self._row_files(config, split):
            n = pq.ParquetFile(path).metadata.num_rows
            lo, hi = (first, first + n) if rows is None else (max(rows.start, first), min(rows.stop, first + n))
            if rows is None or lo < hi:
                yield path, first, lo, hi
            first += n

    def _row_tables(self, config: str, split: str, rows: range | None, columns: list[str] | None):
        """(first row index, Arrow table) per Parquet file holding rows of ``rows`` (every file when None), cut to them."""

        for path, first, lo, hi in self._file_ranges(config, split, rows):
            yield lo, pq.read_table(path, columns=columns).slice(lo - first, hi - lo)

    def rec_examples(self, split: str, rows: range | None = None) -> list[RecExample]:
        """The stored personalized predictive prompts of ``split`` (train/validation/test); only ``rows`` when given."""
        return [ex for chunk in self.iter_rec_examples(split, rows) for ex in chunk]

    def iter_rec_examples(self, split: str, rows: range | None = None, chunk_rows: int = 4096):
        """:meth:`rec_examples` in lists of at most ``chunk_rows``, read from the Parquet files batch by batch
        (memory does not grow with the rows)."""

        for path, first, lo, hi in self._file_ranges("recommendation", split, rows):
            pos = first
            for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
                a, b = max(lo, pos), min(hi, pos + batch.num_rows)
                if a < b:
                    yield self._rec_examples(datasets.Dataset(pa.Table.from_batches([batch.slice(a - pos, b - a)])), a)
                pos += batch.num_rows
                if pos >= hi:
                    break

    def _rec_examples(self, ds, first_row: int) -> list[RecExample]:
        stored = "pair_hops" in ds.column_names
        cols = ds.select_columns(["user", "input_ids", "node_positions", "history", "targets"]).to_dict()
        # the uint8 matrices stay numpy views of the Arrow buffers (no Python int per pair)
        pairs = {c: _uint8_lists(ds, c) for c in ("pair_hops", "pair_hops_luo")} if stored else {}
        out = []
        for k, (u, ids, pos, h, t) in enumerate(zip(cols["user"], cols["input_ids"], cols["node_positions"], cols["history"], cols["targets"])):
            ex = RecExample(int(u), list(ids), list(pos), list(h), list(t), row=first_row + k)
            if stored:
                ex.pair_hops, ex.pair_hops_luo, ex.pair_nodes = pairs["pair_hops"][k], pairs["pair_hops_luo"][k], row_nodes(pos)[0]
            out.append(ex)
        return out

    def train_items(self) -> list[list[int]]:
        """Every user's train item list (masked out of the ranking).

        From the train recommendation rows (the split's order, which fine-tuning's masking depends on) in a
        dataset folder; from ``maps/train_histories.json`` (the same lists, written by ``export_to``) in a
        published folder, or from the train graph's edges (index order) for folders published before it existed.
        """
        if self._train_items is None:
            items: list[list[int]] = [[] for _ in range(self.num_users)]
            if self.has_rows:  # only these two columns are read, as arrays (no per-row Python dicts)
                table = self.dataset("recommendation", "train", columns=["user", "targets"]).data.table
                users = table.column("user").to_numpy()
                targets = table.column("targets").combine_chunks()
                offsets, values = targets.offsets.to_numpy(), targets.values.to_numpy()
                for row, u in enumerate(users.tolist()):
                    items[u] = values[offsets[row]:offsets[row + 1]].tolist()
            elif (self.folder / MAPS_DIR / HISTORIES_FILE).is_file():  # published: the same order, stored
                path = self.folder / MAPS_DIR / HISTORIES_FILE
                items = [[int(j) for j in h] for h in _read_json(path)]
                edges = sorted(map(tuple, self.hops.graph.edges.tolist()))
                if len(items) != self.num_users or sorted((u, j) for u, h in enumerate(items) for j in h) != edges:
                    raise DataFolderError(f"{path}: the histories are not the train graph's edges ({self.folder / GRAPH_DIR}); "
                                          "a file from another dataset or edited: re-publish the model")
            else:
                for u, j in self.hops.graph.edges.tolist():
                    items[u].append(j)
            self._train_items = items
        return self._train_items

    def cold_items(self, split: str) -> np.ndarray:
        """Item indices held out whole as new products for ``split`` ("validation" or "test"; build_split's
        ``cold_item_frac``); empty for a folder built without cold items."""
        if split not in ("validation", "test"):
            raise DataFolderError(f"cold items are held out for 'validation' and 'test', not {split!r}")
        path = self.folder / MAPS_DIR / COLD_ITEMS_FILE
        if self._cold_items is None:
            self._cold_items = _read_json(path) if path.is_file() else {}
        return np.asarray(self._cold_items.get(split, []), dtype=np.int64)

    def item_titles(self) -> list[str]:
        """Display title per item index (``item_<j>`` when the metadata had none)."""
        return [t or f"item_{j}" for j, t in enumerate(self._titles)]

    def interaction_matrix(self, split: str = "train") -> sp.csr_matrix:
        """Binary (num_users, num_items) float32 CSR of one split's interactions, for baselines and popularity.

        Train comes from the train graph (train edges only); validation/test from the recommendation rows'
        targets. Each is checked against the split hash the build recorded.
        """
        if split not in REC_SPLITS:
            raise DataFolderError(f"split must be one of {REC_SPLITS}, got {split!r}")
        if split == "train":
            pairs = np.asarray(self.hops.graph.edges, dtype=np.int64).reshape(-1, 2)
        else:
            cols = self.dataset("recommendation", split).select_columns(["user", "targets"]).to_dict()
            pairs = np.asarray([(int(u), int(j)) for u, t in zip(cols["user"], cols["targets"]) for j in t], dtype=np.int64).reshape(-1, 2)
        if len(pairs) and (pairs[:, 0].min() < 0 or pairs[:, 0].max() >= self.num_users
                           or pairs[:, 1].min() < 0 or pairs[:, 1].max() >= self.num_items):
            raise DataFolderError(f"{self.folder}: {split} pairs hold indices outside {self.num_users} users x {self.num_items} items")
        recorded = self.split_hashes.get(_SPLIT_HASH_KEYS[split])
        if recorded is not None and split_hash(pairs) != recorded:
            raise DataFolderError(f"{self.folder}: the {split} pairs do not match the manifest's split_hashes.{_SPLIT_HASH_KEYS[split]}")
        mat = sp.csr_matrix((np.ones(len(pairs), np.float32), (pairs[:, 0], pairs[:, 1])), shape=(self.num_users, self.num_items))
        mat.data[:] = 1.0  # duplicates were summed
        return mat

    # ---------------------------------------------------------------- prompts and batches
    def encode_rec_prompt(self, user: int | None, items: Sequence[int], max_length: int | None = None) -> tuple[list[int], list[int]]:
        """(input_ids, node_positions) of "user_u has interacted with <items>, user_u will interact with".

        ``user=None`` gives the unseen-user prompt "A new user has interacted with <items>, the user will
        interact with". Long histories are cut from the left so the trigger phrase is never truncated.
        """
        max_length = max_length or self.prompt_max_length
        enc = self._encoders.get(max_length)
        if enc is None:
            enc = self._encoders[max_length] = RecPromptEncoder(self.tokenizer, self.base_vocab_size, self.num_users,
                                                                self.num_items, max_length)
        out = enc.encode(user, list(items))
        return out["input_ids"].tolist(), out["node_positions"].tolist()

    def collator(self, max_length: int, with_hops: bool = True) -> GraphCollator:
        """Pads right, cuts rows longer than ``max_length`` from the left, adds hop_distances / target_items.

        ``with_hops=False`` leaves ``hop_distances`` out (a model without graph bias).
        """
        return GraphCollator(self.hops if with_hops else None, self.pad_token_id, num_items=self.num_items,
                             max_length=max_length, leave_user_out=self.leave_user_out)

    # ---------------------------------------------------------------- checks against configs and models
    def check_max_hops(self, max_hops: int, key: str = "model.max_hops") -> None:
        """Refuse a config whose hop cap differs from the one the folder's graph was built with."""
        if int(max_hops) != self.max_hops:
            raise DataFolderError(
                f"{key}={max_hops} but the dataset folder {self.folder} was built with max_hops={self.max_hops}: "
                f"set {key}={self.max_hops} or rebuild the folder with --max-hops {max_hops}"
            )

    def check_model(self, model_config: Any) -> None:
        """Refuse a model whose ID space, text vocabulary, hop cap, tokenizer or graph differs from this folder's."""
        for name in ("num_users", "num_items", "base_vocab_size"):
            a, b = getattr(model_config, name), getattr(self, name)
            if a != b:
                raise DataFolderError(
                    f"{self.folder}: dataset folder has {name}={b} but the model was built for {name}={a} "
                    "(a folder from another tokenizer or graph)"
                )
        if getattr(model_config, "max_hops", None) is not None:
            self.check_max_hops(model_config.max_hops, "the model's max_hops")
        for key in ("tokenizer_sha256", "graph_sha256"):
            want, have = getattr(model_config, key, None), getattr(self, key)
            if want and want != have:
                raise DataFolderError(
                    f"{self.folder}: {key.split('_')[0]} hash {have[:12]}... differs from the one the model was trained "
                    f"on ({want[:12]}...): a dataset folder from another tokenizer or graph"
                )
        trained_files = getattr(model_config, "files_sha256", None)
        if trained_files and trained_files != self.files_sha256:
            differ = sorted(k for k in set(trained_files) | set(self.files_sha256) if trained_files.get(k) != self.files_sha256.get(k))
            raise DataFolderError(f"{self.folder}: {', '.join(differ)} differ from the files the model was trained with "
                                  "(config.json files_sha256): id maps or hop table from another build")

    # ---------------------------------------------------------------- publishing
    def export_to(self, folder: str | os.PathLike, inference_settings: dict | None = None,
                  model_max_length: int | None = None) -> Path:
        """Copy what a published model folder needs: manifest, the tokenizer (once, at the root, where
        ``PreTrainedTokenizerFast`` / ``AutoTokenizer`` and the pipeline read it; ``model_max_length`` = the model's
        positions), graph and maps; plus the inference settings.

        ``Corpus(folder)`` opens the result (without prompt rows).
        """
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.folder / MANIFEST_FILE, out / MANIFEST_FILE)
        for sub in (GRAPH_DIR, MAPS_DIR):
            if (out / sub).exists():
                shutil.rmtree(out / sub)
            shutil.copytree(self.folder / sub, out / sub)
        self.tokenizer.save_pretrained(str(out))
        # a standard fast tokenizer for AutoTokenizer / PreTrainedTokenizerFast: no auto_map, no load-time flags
        tok_config = _read_json(out / TOKENIZER_CONFIG_FILE)
        tok_config = {k: v for k, v in tok_config.items() if k not in TOKENIZER_CONFIG_DROP}
        if model_max_length is not None:  # else transformers' "no limit" sentinel (1e30)
            tok_config["model_max_length"] = int(model_max_length)
        atomic_write_text(out / TOKENIZER_CONFIG_FILE, json.dumps(tok_config, indent=2) + "\n")
        # the canonical (build) order of every user's train history: the prompts evaluation scored
        atomic_write_text(out / MAPS_DIR / HISTORIES_FILE, json.dumps(self.train_items(), separators=(",", ":")) + "\n")
        tokenizer_dir = self.folder / TOKENIZER_DIR if (self.folder / TOKENIZER_DIR).is_dir() else self.folder
        shutil.copy2(tokenizer_dir / TOKENIZER_FILE, out / TOKENIZER_FILE)  # byte-identical: the recorded sha256
        settings = {"leave_user_out_hops": self.leave_user_out, **(inference_settings or {})}
        atomic_write_text(out / INFERENCE_FILE, json.dumps(settings, indent=2, sort_keys=True) + "\n")
        return out


__all__ = ["Corpus", "RecExample", "DataFolderError", "shard_rows", "read_manifest", "has_manifest"]
