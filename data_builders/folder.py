"""The dataset folder (DESIGN.md section 4): the writer. ``data_builders.corpus.Corpus`` opens what it writes.

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

import glob
import json
import multiprocessing
import os
import shutil
import socket
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from modeling_graphgpt2.folder_layout import (COLD_ITEMS_FILE, EDGES_FILE, FORMAT_NAME, FORMAT_VERSION, GRAPH_DIR, HOP_TABLE_FILE,
                                              ITEMS_FILE, MANIFEST_FILE, MAPS_DIR, README_FILE, TITLES_FILE, TOKENIZER_DIR,
                                              USERS_FILE, graph_file, maps_file, pending_shard_file, shard_file, shard_glob)

from .atomic import OWNED_FILE, ForeignFolderError, atomic_write_text, check_replaceable, json_default, make_temp_dir, mark_owned
from .corpus import file_sha256
from .graph import DEFAULT_MAX_HOPS, DEFAULT_TABLE_BUDGET_BYTES, HopDistances, InteractionGraph
from .pair_hops import PAIR_COLUMNS, attach_pair_hops
from .prompts import CONFIG_SPLITS, PromptConfig, config_row_chunks, corpus_texts, row_kinds
from .tokenization import build_tokenizer, save_tokenizer, tokenizer_sha256

DEFAULT_ROWS_PER_SHARD = 100_000
INT_LIST_COLUMNS = ("input_ids", "node_positions", "labels")
REC_LIST_COLUMNS = ("history", "targets")


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=json_default) + "\n")


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


# What a forked shard writer prepares and writes: set before its pool starts (a closure does not pickle).
_SHARD_JOB: tuple[str, Callable[[list[dict]], None] | None] | None = None


def _write_shard(pending: Path, rows: list[dict]) -> float:
    """Prepare ``rows`` (e.g. their pair hops) and write them as one Parquet shard; returns the preparing seconds."""
    config, prepare = _SHARD_JOB
    t = time.perf_counter()
    if prepare is not None:
        prepare(rows)
    prepare_s = time.perf_counter() - t
    pq.write_table(rows_to_table(rows, config), pending)
    return prepare_s


def write_config(root: Path, config: str, splits: dict[str, Iterable[list[dict]]],
                 prepare: Callable[[list[dict]], None] | None = None, num_proc: int = 1):
    """Write ``<root>/<config>/<split>-0000k-of-0000n.parquet``, one shard per chunk of rows (``config_row_chunks``),
    each written as soon as it is made (after ``prepare(chunk)``, e.g. its pair hops), so memory holds one chunk.
    With ``num_proc`` > 1, that many forked processes prepare and write the chunks while this one makes the next
    (at most ``num_proc`` chunks in flight): the same shards, row for row, in the same order. A split without rows
    gets one empty shard. Shards are named ``-of-n`` once n is known. Returns the relative shard paths per split,
    the rows per split, the rows per kind and the seconds spent in ``prepare`` (summed over processes)."""
    global _SHARD_JOB
    (root / config).mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    kinds: dict[str, int] = {}
    prepare_s = 0.0
    _SHARD_JOB = (config, prepare)
    pool = ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context("fork")) if num_proc > 1 else None
    try:
        for split_name, chunks in splits.items():
            written, in_flight = [], deque()
            for part in chunks:
                pending = root / config / pending_shard_file(split_name, len(written))
                for kind, n in row_kinds(part).items():
                    kinds[kind] = kinds.get(kind, 0) + n
                counts[split_name] = counts.get(split_name, 0) + len(part)
                written.append(pending)
                if pool is None:
                    prepare_s += _write_shard(pending, part)
                    continue
                in_flight.append(pool.submit(_write_shard, pending, part))
                if len(in_flight) >= num_proc:
                    prepare_s += in_flight.popleft().result()
            prepare_s += sum(job.result() for job in in_flight)
            counts.setdefault(split_name, 0)
            if not written:  # an empty split still has its (empty) shard
                written.append(root / config / pending_shard_file(split_name, 0))
                pq.write_table(rows_to_table([], config), written[0])
            files[split_name] = []
            for k, pending in enumerate(written):
                rel = shard_file(config, split_name, k, len(written))
                os.replace(pending, root / rel)
                files[split_name].append(rel)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        _SHARD_JOB = None
    return files, counts, kinds, prepare_s


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
            lines.append(f"    path: {shard_glob(c, s)}")
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
        "- token id of `user_u` = base_vocab_size + u; of `item_j` = base_vocab_size + num_users + j",
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
        "Load with `datasets.load_dataset(folder, \"<config>\")` or `data_builders.Corpus(folder)`.",
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
    num_proc: int = 1,
    overwrite: bool = False,
    progress: bool = False,
    log=None,
) -> BuildResult:
    """Split -> tokenizer, graph, prompt corpora -> dataset folder at ``out`` (atomic: temp folder + rename).
    ``num_proc`` processes prepare and write the prompt shards (``write_config``); the folder is the same."""
    prompt_config = prompt_config or PromptConfig()
    log = log or (lambda msg: None)
    given_out, out = Path(out), Path(out).resolve()
    source_files = [f["path"] for f in (split.manifest.get("source") or {}).get("files", []) if "path" in f]
    check_output_folder(out, overwrite, protect=source_files)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_build_folders(out):
        log(f"removed {stale} (left by an interrupted build)")
    seconds: dict[str, float] = {}
    bpe_text_stats: dict[str, int] = {}  # what bounding the BPE training text changed (counted in the manifest)
    tmp = _claimed_temp_dir(out, "building")
    try:
        t = time.perf_counter()
        if train_bpe_vocab:
            tok, base = build_tokenizer(split.num_users, split.num_items, train_texts=list(corpus_texts(split, stats=bpe_text_stats)), vocab_size=train_bpe_vocab)
            tok_source = f"byte-level BPE trained on the corpus texts (vocab {train_bpe_vocab})"
        else:
            tok, base = build_tokenizer(split.num_users, split.num_items, source=tokenizer_source)
            tok_source = str(tokenizer_source) if tokenizer_source else "gpt2 (../shared/tokenizers/gpt2)"
        tok_sha = save_tokenizer(tok, tmp / TOKENIZER_DIR)
        seconds["tokenizer"] = time.perf_counter() - t
        log(f"tokenizer: base vocabulary {base:,} + {split.num_users:,} users + {split.num_items:,} items")

        t = time.perf_counter()
        graph = InteractionGraph.from_split(split)
        hops = HopDistances(graph, max_hops, table_budget_bytes=table_budget_bytes, progress=progress)
        graph_sha = hops.save(tmp / GRAPH_DIR, save_table=save_hop_table)
        seconds["graph"] = time.perf_counter() - t
        log(f"graph: {graph.num_nodes:,} nodes, {len(graph.edges):,} train edges, hop table {'dense' if hops.is_dense else 'on demand'}")

        stats: dict = {}
        pair_cache: dict = {}  # a user's interactions row and recommendation rows share their node list
        files, rows_count, kinds, skipped = {}, {}, {}, {}
        configs = list(prompt_config.configs)
        it = configs
        if progress:
        
            it = tqdm(configs, desc="prompt corpora", unit="config", disable=None)  # a bar on a terminal only
        for config in it:
            t = time.perf_counter()
            chunks = config_row_chunks(config, split, tok, base, prompt_config, stats, chunk_rows=rows_per_shard)

            def with_pair_hops(rows: list[dict], config=config) -> None:
                # only personalized configs repeat node lists: cache just those (per process)
                attach_pair_hops(rows, graph, max_hops, pair_cache if config in ("interactions", "recommendation") else None)

            config_files, counts, config_kinds, pair_s = write_config(tmp, config, chunks, with_pair_hops, num_proc)
            if not any(counts.values()):
                # an empty Parquet shard cannot be loaded by datasets; leave the config out, say why
                shutil.rmtree(tmp / config)
                skipped[config] = "0 rows (e.g. the source has no review text or no shared brands/categories)"
                log(f"{config}: 0 rows, config not written")
                continue
            files[config], rows_count[config], kinds[config] = config_files, counts, config_kinds
            seconds[f"pair_hops/{config}"] = pair_s  # included in prompts/<config> (summed over processes)
            seconds[f"prompts/{config}"] = time.perf_counter() - t
            log(f"{config}: " + ", ".join(f"{s} {n:,}" for s, n in rows_count[config].items()))

        (tmp / MAPS_DIR).mkdir()
        _write_json(tmp / MAPS_DIR / USERS_FILE, list(split.user_ids))
        _write_json(tmp / MAPS_DIR / ITEMS_FILE, list(split.item_ids))
        _write_json(tmp / MAPS_DIR / TITLES_FILE, [m.title for m in split.items])
        cold_files = []
        if split.cold_items:
            _write_json(tmp / MAPS_DIR / COLD_ITEMS_FILE, split.cold_items)
            cold_files = [maps_file(COLD_ITEMS_FILE)]

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
            "tokenizer": {"source": tok_source, "sha256": tok_sha, "files": f"{TOKENIZER_DIR}/",
                          **({"training_text": bpe_text_stats} if bpe_text_stats else {})},
            "graph": {
                "sha256": graph_sha,
                "num_edges": int(len(graph.edges)),
                "edges": graph_file(EDGES_FILE),
                "hop_table": graph_file(HOP_TABLE_FILE) if (save_hop_table and hops.is_dense) else None,
                "edges_from": "train split only",
            },
            # the files no other hash covers; Corpus checks them on every load (a swapped map changes every answer)
            "files_sha256": {rel: file_sha256(tmp / rel) for rel in (
                maps_file(USERS_FILE), maps_file(ITEMS_FILE), maps_file(TITLES_FILE), *cold_files,
                *([graph_file(HOP_TABLE_FILE)] if (save_hop_table and hops.is_dense) else []))},
            "prompts": prompt_config.to_dict(),
            "configs": [c for c in configs if c in files],
            "skipped_configs": skipped,
            "data_files": files,
            "rows": rows_count,
            "row_kinds": kinds,
            "prompt_stats": stats,
            "build_seconds": {k: round(v, 3) for k, v in seconds.items()},
        }
        _write_json(tmp / MANIFEST_FILE, manifest)
        if not files:
            raise ValueError(f"no prompt config produced any row ({skipped}); nothing to write")
        atomic_write_text(tmp / README_FILE, dataset_card(manifest, manifest["configs"]))
        (tmp / _PID_FILE).unlink()
        mark_owned(tmp)
        if out.exists():
            check_output_folder(out, overwrite, protect=source_files)  # again: it may have changed during the build
            trash = _claimed_temp_dir(out, "old")
            os.replace(out, trash / "old")
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuildResult(given_out, manifest, seconds)


# --------------------------------------------------------------------------------------------- output safety
class OutputFolderError(ForeignFolderError):
    """``--out`` names a folder the builder must not write or replace (data loss guard)."""


# What a built dataset folder may hold; anything else is somebody's file and blocks --overwrite.
_FOLDER_ENTRIES = {README_FILE, MANIFEST_FILE, TOKENIZER_DIR, GRAPH_DIR, MAPS_DIR}
_PID_FILE = ".building.pid"  # in a temp build folder: which process owns it (stale-folder cleanup)
STALE_AFTER_SECONDS = 3600.0  # temp folders without a pid file (older builds) are removed after this


def check_output_folder(out: Path, overwrite: bool, protect: list[str] | tuple = ()) -> None:
    """Refuse an output folder whose replacement could lose data.

    ``out`` may be new, or (with ``overwrite``) a folder that holds our manifest and nothing but what a build
    writes. Never the filesystem root, never a protected path (the source files) or a folder above one.
    """
    out = Path(out).resolve()
    if out == Path(out.anchor):
        raise OutputFolderError(f"--out {out}: refusing to write the filesystem root; name a new folder")
    for p in protect:
        p = Path(p).resolve()
        if p == out or out in p.parents:
            raise OutputFolderError(f"--out {out}: holds the source data ({p}); choose another output folder")
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if out.is_symlink() or not out.is_dir():
        raise OutputFolderError(f"--out {out}: exists and is not a dataset folder (a file or link); --overwrite replaces only dataset folders")
    mpath = out / MANIFEST_FILE
    try:
        fmt = json.loads(mpath.read_text(encoding="utf-8")).get("format") if mpath.is_file() else None
    except (OSError, ValueError, AttributeError):
        fmt = None
    if fmt != FORMAT_NAME:
        raise OutputFolderError(
            f"--out {out}: not a dataset folder built by this tool (no {FORMAT_NAME!r} {MANIFEST_FILE}); "
            "--overwrite replaces only such folders: choose a new folder or remove it yourself"
        )
    try:  # every entry, at any depth, must be one the build wrote (its ownership record)
        check_replaceable(out, "--out")
    except ForeignFolderError as err:
        raise OutputFolderError(f"{err} (--overwrite replaces only what a build wrote)") from None


def _claimed_temp_dir(out: Path, kind: str) -> Path:
    """A hidden sibling ``.<name>.<kind>-XXXX`` (mode per umask) holding a pid file that marks it in use."""
    tmp = make_temp_dir(out.parent, prefix=f".{out.name}.{kind}-")
    (tmp / _PID_FILE).write_text(f"{os.getpid()} {socket.gethostname()}\n", encoding="utf-8")
    return tmp


def _owner_alive(folder: Path) -> bool | None:
    """True/False from the pid file (same host only); None when there is none or it is unreadable."""
    try:
        pid_text, host = (folder / _PID_FILE).read_text(encoding="utf-8").split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if host != socket.gethostname():
        return True  # another machine's process: we cannot tell, so leave it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_build_folders(out: Path, now: float | None = None) -> list[Path]:
    """Remove ``.<name>.building-*`` / ``.<name>.old-*`` siblings of ``out`` left by killed builds.

    Only folders whose owner process is gone (pid file), or, for folders without a pid file, that are older than
    ``STALE_AFTER_SECONDS`` and hold only what a build writes. Returns what was removed.
    """
    out = Path(out).resolve()
    if not out.parent.is_dir():
        return []
    now = time.time() if now is None else now
    removed = []
    for kind in ("building", "old"):
        if kind == "old" and not out.exists():
            continue  # killed between the two renames: the old dataset in there is the only copy
        for d in sorted(out.parent.glob(f".{glob.escape(out.name)}.{kind}-*")):
            if d.is_symlink() or not d.is_dir():
                continue
            alive = _owner_alive(d)
            if alive is None:
                known = _FOLDER_ENTRIES | {"old", OWNED_FILE, *CONFIG_SPLITS}
                if now - d.stat().st_mtime < STALE_AFTER_SECONDS or any(e.name not in known for e in d.iterdir()):
                    continue
            elif alive:
                continue
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


__all__ = ["BuildResult", "build_dataset_folder", "write_config", "dataset_card", "tokenizer_sha256"]
