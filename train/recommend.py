"""Top-k recommendations from a trained GraphGPT2 (the paper's deployment step and offline batch pipeline).

    python -m train.recommend --model outputs/demo/hub_model --users 0 5 17 --k 10
    python -m train.recommend --model outputs/demo/hub_model --history SYN00041X "Bowmaster Ebony Bow 856"  # a new user
    python -m train.recommend --model outputs/demo/hub_model --all --out recs.jsonl     # every user, JSON lines
    python -m train.recommend --model outputs/demo/hub_model --users 0 --new-items new.jsonl  # with new products

``--new-items`` reads JSON lines ``{"id", "title", "brand", "categories": [...], "description", "price"}``: products
without interactions, ranked with the catalog from their text (the model's text map, docs/model.md "New items")
and marked "(new)"; the same rows the pipeline's ``new_items`` gives.

A known user is scored from "user_u has interacted with <all train items, in the split's stored order>, user_u
will interact with" (the prompt evaluation scored; maps/train_histories.json) and their train items are excluded. An unseen user has no ID token, so the prompt is the builders' anonymous template
"A new user has interacted with <items>, the user will interact with": the items' collab embeddings and their
train-graph hop distances (item-item via the known users) carry all the information; the given items are excluded.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from data_builders.atomic import atomic_write
from data_builders.corpus import Corpus
from data_builders.textclean import printable
from modeling_graphgpt2.pipeline_graphgpt2 import new_item_counts, new_item_text, top_k_items, verify_serving_folder
from train.cli_args import report_user_errors
from train.modeling_io import load_model

RECORD_KEYS = ("user", "user_id", "items", "item_ids", "titles", "scores")  # one line of write_all's output


class Recommender:
    """A model plus the folder it was trained on (``Corpus``: tokenizer, train graph, ID maps, titles, train items)."""

    def __init__(self, model, corpus: Corpus, max_length: int = 1024):
        corpus.check_model(model.config)
        self.model = model.eval()
        self.corpus = corpus
        self.num_users, self.num_items = corpus.num_users, corpus.num_items
        self.train_items = corpus.train_items()
        self.item_titles = corpus.item_titles()
        self.user_ids = corpus.user_ids
        self.item_ids = corpus.item_ids
        self.max_length = min(max_length, model.config.n_positions)
        self.collate = corpus.collator(self.max_length, with_hops=model.config.graph_bias != "none")
        self.new_ids: list[str] = []  # new products (add_new_items): item indices num_items.. in the answers
        self.new_titles: list[str] = []
        self.new_counts: torch.Tensor | None = None

    def add_new_items(self, new_items: list[dict]) -> None:
        """Rank these products without interactions with the catalog from now on (the pipeline's ``new_items``)."""
        text = new_item_text(self.model, self.corpus.tokenizer, self.corpus.manifest.get("prompts") or {})
        known = {raw: j for j, raw in enumerate(self.item_ids or [])}
        self.new_ids, self.new_titles, self.new_counts = new_item_counts(text, known, new_items)

    def title(self, j: int) -> str:
        """Display title of item index ``j`` (a new item's from num_items on)."""
        return self.item_titles[j] if j < self.num_items else self.new_titles[j - self.num_items] + " (new)"

    def item_id(self, j: int) -> str | None:
        if j >= self.num_items:
            return self.new_ids[j - self.num_items]
        return self.item_ids[j] if self.item_ids else None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_folder(cls, folder: str | Path) -> "Recommender":
        """Load a published folder (train.publish): the model and, through ``Corpus``, everything else."""
        verify_serving_folder(str(folder))  # every served file is the one published (serving.json), else a named error
        corpus = Corpus(folder)
        return cls(load_model(folder), corpus, max_length=corpus.inference_settings.get("max_length", 1024))

    @classmethod
    def from_corpus(cls, model, corpus: Corpus, max_length: int = 1024) -> "Recommender":
        """From an in-memory model and the dataset folder it was trained on."""
        return cls(model, corpus, max_length)

    # ------------------------------------------------------------------ scoring
    def _run(self, prompts: list[tuple[list[int], list[int]]], exclude: list[list[int]], k: int, batch_size: int):
        device = next(self.model.parameters()).device
        out: list[list[tuple[int, float]]] = []
        for start in range(0, len(prompts), batch_size):
            rows = [{"input_ids": ids, "node_positions": pos} for ids, pos in prompts[start:start + batch_size]]
            batch = {key: v.to(device) for key, v in self.collate(rows).items()}
            out += top_k_items(self.model, batch["input_ids"], batch["attention_mask"], batch.get("hop_distances"),
                               exclude[start:start + batch_size], k, self.new_counts)
        return out

    def _check_k(self, k: int) -> int:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return min(k, self.num_items + len(self.new_ids))

    @torch.no_grad()
    def recommend_users(self, users: Sequence[int], k: int = 20, batch_size: int = 64) -> list[list[tuple[int, float]]]:
        """Top-k (item index, score) per known user index, train items excluded."""
        prompts, exclude = [], []
        for u in users:
            if isinstance(u, bool) or not isinstance(u, (int, np.integer)) or not 0 <= int(u) < self.num_users:
                raise ValueError(f"unknown user index {u!r}: the model knows users 0..{self.num_users - 1} "
                                 "(use recommend_history for a new user)")
            hist = list(self.train_items[int(u)])  # canonical order: the stored train order (evaluation's prompt)
            prompts.append(self.encode_prompt(int(u), hist))
            exclude.append(hist)
        return self._run(prompts, exclude, self._check_k(k), batch_size)

    def user_index(self, raw_user_id: str) -> int:
        """Index of a raw user id (e.g. an Amazon reviewerID); ValueError naming it when unknown."""
        if self.user_ids is None or raw_user_id not in self.user_ids:
            raise ValueError(f"unknown user id {raw_user_id!r} (not among the folder's raw user ids)")
        return self.user_ids.index(raw_user_id)

    @torch.no_grad()
    def recommend_history(self, items: Sequence[int], k: int = 20) -> list[tuple[int, float]]:
        """Top-k for a user the model has never seen, from a raw item history (indices); the items are excluded."""
        items = [int(j) for j in items]
        if not items:
            raise ValueError("empty history: a new user needs at least one item index to be recommended for")
        bad = [j for j in items if not 0 <= j < self.num_items]
        if bad:
            raise ValueError(f"unknown item indices {bad[:5]}: the model knows items 0..{self.num_items - 1}")
        return self._run([self.encode_prompt(None, items)], [items], self._check_k(k), 1)[0]

    def item_indices(self, names: Sequence[str]) -> list[int]:
        """Item indices of raw item ids or exact titles (the pipeline's rule: a raw id first, then a title that
        names one item); a ValueError names the unknown and the ambiguous ones."""
        by_id = {raw: j for j, raw in enumerate(self.item_ids or [])}
        by_title: dict[str, list[int]] = {}
        for j, title in enumerate(self.item_titles):
            by_title.setdefault(title, []).append(j)
        out, unknown, ambiguous = [], [], []
        for name in names:
            if name in by_id:
                out.append(by_id[name])
            elif len(by_title.get(name, [])) == 1:
                out.append(by_title[name][0])
            else:
                (ambiguous if name in by_title else unknown).append(name)
        if unknown or ambiguous:
            parts = [f"unknown item ids or titles {unknown[:5]}"] if unknown else []
            parts += [f"titles shared by several items {ambiguous[:5]} (use the raw item id)"] if ambiguous else []
            raise ValueError("; ".join(parts))
        return out

    def encode_prompt(self, user: int | None, items: Sequence[int]) -> tuple[list[int], list[int]]:
        """(input_ids, node_positions) of the recommendation prompt of ``user`` (None: a new user) and ``items``."""
        return self.corpus.encode_rec_prompt(user, items, self.max_length)

    @staticmethod
    def check_output_file(path: str | Path) -> None:
        """Before scoring: ``path`` is new, or a file that :meth:`write_all` wrote (it is replaced), never a folder
        or somebody's file."""
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"--out {path}: is a folder; name the JSON-lines file to write")
        if not path.exists():
            if not path.parent.is_dir():
                raise FileNotFoundError(f"--out {path}: folder {path.parent} does not exist")
            return
        try:
            with open(path, encoding="utf-8") as f:
                first = json.loads(f.readline() or "{}")
            ours = isinstance(first, dict) and set(RECORD_KEYS) <= set(first)
        except (OSError, ValueError):
            ours = False
        if not ours and path.stat().st_size > 0:
            raise FileExistsError(f"--out {path}: exists and is not a recommendations file this tool wrote; "
                                  "choose another path or remove it yourself")

    def write_all(self, path: str | Path, k: int = 20, batch_size: int = 64) -> Path:
        """Recommendations for every user as JSON lines (user, user_id, items, titles, scores); atomic.

        Streams: users are scored a chunk at a time (top-k per chunk) and each chunk's lines go straight to a
        temporary file that replaces ``path`` at the end, so memory does not grow with users x items or users.
        """
        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                for start in range(0, self.num_users, batch_size):
                    users = list(range(start, min(self.num_users, start + batch_size)))
                    for u, recs in zip(users, self.recommend_users(users, k, batch_size)):
                        f.write(json.dumps({
                            "user": u,
                            "user_id": self.user_ids[u] if self.user_ids else None,
                            "items": [j for j, _ in recs],
                            "item_ids": [self.item_id(j) for j, _ in recs] if self.item_ids else None,
                            "titles": [self.title(j) for j, _ in recs],
                            "scores": [round(s, 5) for _, s in recs],
                        }) + "\n")

        self.check_output_file(path)
        atomic_write(path, write)
        return Path(path)


def read_new_items(path: str | Path) -> list[dict]:
    """The JSON objects of a JSON-lines file (blank lines skipped); a bad line is a ValueError naming file and line."""
    items = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON object ({err.msg})") from None
            if not isinstance(item, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object with \"id\" and text fields, got {type(item).__name__}")
            items.append(item)
    if not items:
        raise ValueError(f"{path}: no new items in it")
    return items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.recommend", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="published model folder (train.publish output)")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--users", nargs="+", help="user indices (or raw user ids with --raw-ids)")
    g.add_argument("--history", nargs="+", metavar="ITEM", help="a new user's history: raw item ids or exact titles "
                                                                   "(item indices with --indices), as the pipeline takes")
    g.add_argument("--all", action="store_true", help="every user, written to --out as JSON lines")
    ap.add_argument("--raw-ids", action="store_true", help="--users are raw user ids (e.g. Amazon reviewerIDs)")
    ap.add_argument("--indices", action="store_true", help="--history gives item indices (0..num_items-1)")
    ap.add_argument("--k", type=int, default=20, help="recommendations per user (default 20)")
    ap.add_argument("--out", default=None, help="with --all: the JSON-lines file to write (required)")
    ap.add_argument("--new-items", default=None, metavar="FILE.jsonl", help="new products, one JSON object a line "
                    '({"id", "title", "brand", "categories": [...], ...}), ranked with the catalog from their text')
    ap.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    args = ap.parse_args(argv)
    return report_user_errors(lambda: _run(args), args.debug)


def _run(args) -> int:
    if args.all:
        if not args.out:
            raise ValueError("--all needs --out FILE.jsonl (where to write every user's recommendations)")
        Recommender.check_output_file(args.out)  # before the model is loaded and every user scored
    new_items = read_new_items(args.new_items) if args.new_items else None
    rec = Recommender.from_folder(args.model)
    try:
        if new_items:
            rec.add_new_items(new_items)
        if args.all:
            print(rec.write_all(args.out, args.k))
            return 0
        if args.history:
            items = [int(j) for j in args.history] if args.indices else rec.item_indices(args.history)
            results = {"new_user": rec.recommend_history(items, args.k)}
        else:
            users = [rec.user_index(u) if args.raw_ids else int(u) for u in args.users]
            results = dict(zip(args.users, rec.recommend_users(users, args.k)))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for who, recs in results.items():  # titles and ids are data: control characters shown escaped, never sent raw
        print(f"{printable(who)}:")
        for j, s in recs:
            print(f"  {j:>6}  {s:8.3f}  {printable(rec.title(j))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
