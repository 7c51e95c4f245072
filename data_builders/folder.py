"""The dataset folder (DESIGN.md section 4): writer, one-call builder and ``load_corpus``.

```
<folder>/README.md              dataset card; YAML ``configs:`` so ``datasets.load_dataset(folder, "<config>")`` works
<folder>/manifest.json          split manifest (data-1) + num_users, num_items, base_vocab_size, max_hops,
                                tokenizer sha256, graph sha256, prompt configs, row counts
<folder>/tokenizer/             tokenizer.json etc. (base BPE + user_/item_ tokens)
<folder>/graph/                 train_edges.npy, graph.json (+ hops.npy, a dense uint8 table, only on request)
<folder>/maps/                  users.json, items.json (index -> raw id), item_titles.json
<folder>/<config>/<split>-00000-of-0000N.parquet
```
Everything is written into a temporary sibling folder that is renamed into place at the end, so a crash never
leaves a half-written dataset under the final name.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_write_text
from .graph import DEFAULT_MAX_HOPS, DEFAULT_TABLE_BUDGET_BYTES, HopDistances, InteractionGraph
from .pair_hops import PAIR_COLUMNS, attach_pair_hops
from .prompts import CONFIG_SPLITS, PromptConfig, RecPromptEncoder, build_config_rows, row_kinds
from .tokenization import build_tokenizer, check_id_layout, corpus_texts, load_tokenizer, save_tokenizer, tokenizer_sha256

FORMAT_NAME = "graphgpt2-rec-dataset"
FORMAT_VERSION = 1
DEFAULT_ROWS_PER_SHARD = 100_000
INT_LIST_COLUMNS = ("input_ids", "node_positions", "labels")
REC_LIST_COLUMNS = ("history", "targets")


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


# --------------------------------------------------------------------------------------------- parquet
def _int_list_array(arrays: list[np.ndarray]) -> pa.ListArray:
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate([np.asarray(a, dtype=np.int32) for a in arrays]) if arrays else np.zeros(0, np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int32()))


def _uint8_list_array(arrays: list[np.ndarray]) -> pa.ListArray:
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    if lengths.sum() >= 2**31:
        raise ValueError(f"{lengths.sum():,} pair_hops values in one shard; lower rows_per_shard")
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate([np.asarray(a, dtype=np.uint8) for a in arrays]) if arrays else np.zeros(0, np.uint8)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.uint8()))


def rows_schema(config: str) -> pa.Schema:
    fields = [
        pa.field("kind", pa.string()),
        pa.field("prompt", pa.string()),
        pa.field("main", pa.string()),
        *(pa.field(c, pa.list_(pa.int32())) for c in INT_LIST_COLUMNS),
        pa.field("user", pa.int32()),
        *(pa.field(c, pa.list_(pa.uint8())) for c in PAIR_COLUMNS),
    ]
    if config == "recommendation":
        fields += [pa.field(c, pa.list_(pa.int32())) for c in REC_LIST_COLUMNS]
    return pa.schema(fields)


def rows_to_table(rows: list[dict], config: str) -> pa.Table:
    schema = rows_schema(config)
    cols = {
        "kind": pa.array([r["kind"] for r in rows], pa.string()),
        "prompt": pa.array([r["prompt"] for r in rows], pa.string()),
        "main": pa.array([r["main"] for r in rows], pa.string()),
        **{c: _int_list_array([r[c] for r in rows]) for c in INT_LIST_COLUMNS},
        "user": pa.array(np.asarray([r["user"] for r in rows], dtype=np.int32), pa.int32()),
        **{c: _uint8_list_array([r[c] for r in rows]) for c in PAIR_COLUMNS},
    }
    if config == "recommendation":
        cols.update({c: _int_list_array([r[c] for r in rows]) for c in REC_LIST_COLUMNS})
    return pa.Table.from_pydict(cols, schema=schema)


def write_config(root: Path, config: str, splits: dict[str, list[dict]], rows_per_shard: int = DEFAULT_ROWS_PER_SHARD) -> dict[str, list[str]]:
    """Write ``<root>/<config>/<split>-0000k-of-0000n.parquet``; returns the relative shard paths per split."""
    (root / config).mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {}
    for split_name, rows in splits.items():
        n_shards = max(1, -(-len(rows) // rows_per_shard))
        files[split_name] = []
        for k in range(n_shards):
            part = rows[k * rows_per_shard : (k + 1) * rows_per_shard]
            rel = f"{config}/{split_name}-{k:05d}-of-{n_shards:05d}.parquet"
            pq.write_table(rows_to_table(part, config), root / rel)
            files[split_name].append(rel)
    return files


# --------------------------------------------------------------------------------------------- card
def dataset_card(manifest: dict, configs: list[str]) -> str:
    """README.md with the YAML ``configs:`` block (content is the default when built)."""
    default = "content" if "content" in configs else configs[0]
    lines = ["---", "configs:"]
    for c in configs:
        lines.append(f"- config_name: {c}")
        lines.append("  data_files:")
        for s in CONFIG_SPLITS[c]:
            lines.append(f"  - split: {s}")
            lines.append(f"    path: {c}/{s}-*.parquet")
        if c == default:
            lines.append("  default: true")
    lines += ["tags:", "- recommendation", "- graphgpt2-rec", "---", ""]
    name = manifest.get("name", "dataset")
    rows = manifest["rows"]
    table = "\n".join(f"| {c} | {s} | {n:,} |" for c in configs for s, n in rows[c].items())
    lines += [
        f"# GraphGPT2-Rec prompt corpora: {name}",
        "",
        "Prompt corpora for GraphGPT2-Rec built by `python -m data_builders build` from the training split only "
        "(validation/test interactions never enter a pre-training or fine-tuning input, a review prompt or the graph).",
        "",
        f"- users: {manifest['num_users']:,}, items: {manifest['num_items']:,}, base vocabulary: {manifest['base_vocab_size']:,}",
        f"- token id of `user_u` = base_vocab_size + u; of `item_j` = base_vocab_size + num_users + j",
        f"- graph: train edges only, hop distances capped at {manifest['max_hops']} (sha256 `{manifest['graph']['sha256'][:16]}...`)",
        f"- tokenizer sha256 `{manifest['tokenizer']['sha256'][:16]}...` (folder `tokenizer/`)",
        "",
        "| config | split | rows |",
        "|---|---|---|",
        table,
        "",
        "Columns: `kind`, `prompt`, `main`, `input_ids`, `node_positions` (-1 = text token, else graph node), "
        "`labels` (-100 on the prompt), `user` (-1 = none), `pair_hops` (the k x k capped hop matrix over the row's k distinct "
        "graph nodes in order of first appearance, row-major uint8) and `pair_hops_luo` (the same with the row user's own item pairs "
        "measured without that user; empty = equal to `pair_hops`); `recommendation` adds `history` and `targets` (item indices).",
        "",
        "Load with `datasets.load_dataset(folder, \"<config>\")` or `data_builders.load_corpus(folder)`.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- build
@dataclass
class BuildResult:
    folder: Path
    manifest: dict
    seconds: dict = field(default_factory=dict)


def build_dataset_folder(
    split,
    out: str | os.PathLike,
    tokenizer_source: str | os.PathLike | None = None,
    train_bpe_vocab: int | None = None,
    prompt_config: PromptConfig | None = None,
    max_hops: int = DEFAULT_MAX_HOPS,
    table_budget_bytes: int = DEFAULT_TABLE_BUDGET_BYTES,
    save_hop_table: bool = True,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    overwrite: bool = False,
    progress: bool = False,
    log=None,
) -> BuildResult:
    """Split -> tokenizer, graph, prompt corpora -> dataset folder at ``out`` (atomic: temp folder + rename)."""
    prompt_config = prompt_config or PromptConfig()
    log = log or (lambda msg: None)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.building-"))
    try:
        t = time.perf_counter()
        if train_bpe_vocab:
            tok, base = build_tokenizer(split.num_users, split.num_items, train_texts=list(corpus_texts(split)), vocab_size=train_bpe_vocab)
            tok_source = f"byte-level BPE trained on the corpus texts (vocab {train_bpe_vocab})"
        else:
            tok, base = build_tokenizer(split.num_users, split.num_items, source=tokenizer_source)
            tok_source = str(tokenizer_source) if tokenizer_source else "gpt2 (../shared/tokenizers/gpt2)"
        tok_sha = save_tokenizer(tok, tmp / "tokenizer")
        seconds["tokenizer"] = time.perf_counter() - t
        log(f"tokenizer: base vocabulary {base:,} + {split.num_users:,} users + {split.num_items:,} items")

        t = time.perf_counter()
        graph = InteractionGraph.from_split(split)
        hops = HopDistances(graph, max_hops, table_budget_bytes=table_budget_bytes, progress=progress)
        graph_sha = hops.save(tmp / "graph", save_table=save_hop_table)
        seconds["graph"] = time.perf_counter() - t
        log(f"graph: {graph.num_nodes:,} nodes, {len(graph.edges):,} train edges, hop table {'dense' if hops.is_dense else 'on demand'}")

        stats: dict = {}
        pair_cache: dict = {}  # a user's interactions row and recommendation rows share their node list
        files, rows_count, kinds, skipped = {}, {}, {}, {}
        configs = list(prompt_config.configs)
        it = configs
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(configs, desc="prompt corpora", unit="config")
        for config in it:
            t = time.perf_counter()
            splits = build_config_rows(config, split, tok, base, prompt_config, stats)
            if not any(splits.values()):
                # an empty Parquet shard cannot be loaded by datasets; leave the config out, say why
                skipped[config] = "0 rows (e.g. the source has no review text or no shared brands/categories)"
                log(f"{config}: 0 rows, config not written")
                continue
            t_pairs = time.perf_counter()
            for rows in splits.values():  # only personalized configs repeat node lists: cache just those
                attach_pair_hops(rows, graph, max_hops, pair_cache if config in ("interactions", "recommendation") else None)
            seconds[f"pair_hops/{config}"] = time.perf_counter() - t_pairs  # included in prompts/<config>
            files[config] = write_config(tmp, config, splits, rows_per_shard)
            rows_count[config] = {s: len(r) for s, r in splits.items()}
            kinds[config] = row_kinds([r for rows in splits.values() for r in rows])
            seconds[f"prompts/{config}"] = time.perf_counter() - t
            log(f"{config}: " + ", ".join(f"{s} {n:,}" for s, n in rows_count[config].items()))
            del splits

        (tmp / "maps").mkdir()
        _write_json(tmp / "maps" / "users.json", list(split.user_ids))
        _write_json(tmp / "maps" / "items.json", list(split.item_ids))
        _write_json(tmp / "maps" / "item_titles.json", [m.title for m in split.items])

        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "name": split.name,
            "split": split.manifest,
            "num_users": split.num_users,
            "num_items": split.num_items,
            "base_vocab_size": base,
            "vocab_size": len(tok),
            "max_hops": max_hops,
            "tokenizer": {"source": tok_source, "sha256": tok_sha, "files": "tokenizer/"},
            "graph": {
                "sha256": graph_sha,
                "num_edges": int(len(graph.edges)),
                "edges": "graph/train_edges.npy",
                "hop_table": "graph/hops.npy" if (save_hop_table and hops.is_dense) else None,
                "edges_from": "train split only",
            },
            "prompts": prompt_config.to_dict(),
            "configs": [c for c in configs if c in files],
            "skipped_configs": skipped,
            "data_files": files,
            "rows": rows_count,
            "row_kinds": kinds,
            "prompt_stats": stats,
            "build_seconds": {k: round(v, 3) for k, v in seconds.items()},
        }
        _write_json(tmp / "manifest.json", manifest)
        if not files:
            raise ValueError(f"no prompt config produced any row ({skipped}); nothing to write")
        atomic_write_text(tmp / "README.md", dataset_card(manifest, manifest["configs"]))
        if out.exists():
            trash = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, trash / "old")
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuildResult(out, manifest, seconds)


# --------------------------------------------------------------------------------------------- load
@dataclass
class Corpus:
    """A loaded dataset folder: manifest, tokenizer, hop distances, per-config datasets, item titles."""

    folder: Path
    manifest: dict
    tokenizer: object
    hops: HopDistances
    user_ids: list[str]
    item_ids: list[str]
    item_titles: list[str | None]

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
        return int(self.manifest["max_hops"])

    @property
    def configs(self) -> list[str]:
        return list(self.manifest["configs"])

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def dataset(self, config: str, split: str = "train"):
        """The ``datasets.Dataset`` of one config/split: the same rows ``datasets.load_dataset(folder, config)`` gives.

        Read from the manifest's Parquet files rather than through ``load_dataset``: the datasets cache keys a
        local folder by its base name and config, so two folders both called ``data`` served each other's rows
        (seen with datasets 5.2).
        """
        import datasets
        import pyarrow as pa
        import pyarrow.parquet as pq

        if config not in self.manifest["configs"]:
            why = self.manifest.get("skipped_configs", {}).get(config, "not requested at build time")
            raise KeyError(f"{self.folder}: config {config!r} was not built ({why}); built: {self.manifest['configs']}")
        if split not in self.manifest["rows"][config]:
            raise KeyError(f"{self.folder}: config {config!r} has no split {split!r}; has {list(self.manifest['rows'][config])}")
        tables = []
        for rel in self.manifest["data_files"][config][split]:
            path = self.folder / rel
            if not path.is_file():
                raise FileNotFoundError(f"{path}: listed in {self.folder / 'manifest.json'} but missing")
            tables.append(pq.read_table(path))
        return datasets.Dataset(pa.concat_tables(tables))

    def rec_encoder(self, max_length: int | None = None) -> RecPromptEncoder:
        L = max_length or int(self.manifest["prompts"]["max_length"])
        return RecPromptEncoder(self.tokenizer, self.base_vocab_size, self.num_users, self.num_items, L)

    def collator(self, **kwargs):
        from .collate import GraphCollator

        return GraphCollator(self.hops, self.pad_token_id, num_items=self.num_items, **kwargs)


def load_corpus(folder: str | os.PathLike, table_budget_bytes: int = DEFAULT_TABLE_BUDGET_BYTES, check_hashes: bool = True) -> Corpus:
    """Open a dataset folder; refuses a tokenizer or graph whose hash differs from the manifest."""
    d = Path(folder)
    mpath = d / "manifest.json"
    if not mpath.is_file():
        raise FileNotFoundError(f"{mpath}: not a dataset folder (no manifest.json); build one with `python -m data_builders build`")
    manifest = json.loads(mpath.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT_NAME:
        raise ValueError(f"{mpath}: format {manifest.get('format')!r} is not {FORMAT_NAME!r}")
    tok = load_tokenizer(d / "tokenizer", manifest["tokenizer"]["sha256"] if check_hashes else None)
    check_id_layout(tok, manifest["base_vocab_size"], manifest["num_users"], manifest["num_items"])
    hops = HopDistances.load(d / "graph", manifest["graph"]["sha256"] if check_hashes else None, table_budget_bytes=table_budget_bytes)
    if (hops.graph.num_users, hops.graph.num_items, hops.max_hops) != (manifest["num_users"], manifest["num_items"], manifest["max_hops"]):
        raise ValueError(f"{d / 'graph'}: graph shape/max_hops do not match {mpath}")
    maps = d / "maps"
    user_ids = json.loads((maps / "users.json").read_text(encoding="utf-8"))
    item_ids = json.loads((maps / "items.json").read_text(encoding="utf-8"))
    titles = json.loads((maps / "item_titles.json").read_text(encoding="utf-8"))
    if len(user_ids) != manifest["num_users"] or len(item_ids) != manifest["num_items"]:
        raise ValueError(f"{maps}: id maps do not match the manifest's counts")
    return Corpus(d, manifest, tok, hops, user_ids, item_ids, titles)


__all__ = ["BuildResult", "Corpus", "build_dataset_folder", "load_corpus", "write_config", "dataset_card", "tokenizer_sha256"]
