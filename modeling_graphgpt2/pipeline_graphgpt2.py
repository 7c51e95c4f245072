"""GraphGPT2 recommendations from a published repo alone: the canonical prompt, the hop distances and a pipeline.

Remote-code file: imports only numpy, torch, transformers, huggingface_hub and the sibling folder_layout.py (the
file names), so `pipeline("graph-recommendation", model=<repo>, trust_remote_code=True)` and the Inference Endpoints
`handler.py` run without the graphgpt2-rec package. Layout:

  RecPrompt            THE personalized predictive prompt (user, items) -> input_ids, node_positions; the
                       package's `data_builders.prompts.RecPromptEncoder` is this class
  TrainGraph           train edges -> capped hop distances among a prompt's nodes (hop table or numpy BFS)
  ItemText             a new item's fields -> the token counts of its content prompts (as the build counts them)
  GraphRecommender     repo files -> top-k items for {"user": id} / {"history": [ids or titles]}, with new items
  GraphRecommendationPipeline   the transformers Pipeline around GraphRecommender
  serving record       serving.json: the sha256 of every file that decides the answers (weights, tokenizer,
                       maps, graph, settings, code) and of the config's fields; config.json holds serving.json's
                       own sha256, so no file, nor the record, can be swapped or edited alone. Checked on every
                       load (`verify_serving_folder`) by the pipeline, the handler and `train.recommend`.

Canonical history order: a known user's train items in the order the split stored them (maps/
train_histories.json; the order evaluation scored), a new user's history as given. Histories longer than the
context are cut from the LEFT, so the trigger phrase at the end survives.
"""

import hashlib
import json
import os
import re
import warnings

import numpy as np
import torch
from transformers import Pipeline

try:  # as remote code or in the package
    from .folder_layout import (CONFIG_FILE, DOC_FILES, EDGES_FILE, GRAPH_META_FILE, HISTORIES_FILE, INFERENCE_FILE,
                                ITEMS_FILE, MANIFEST_FILE, MAPS_DIR, SERVING_FILE, TITLES_FILE, TOKENIZER_FILE, USERS_FILE,
                                graph_file, maps_file)
except ImportError:  # imported by file name from a downloaded repo (the card's bare-model snippet puts it on sys.path)
    from folder_layout import (CONFIG_FILE, DOC_FILES, EDGES_FILE, GRAPH_META_FILE, HISTORIES_FILE, INFERENCE_FILE,
                               ITEMS_FILE, MANIFEST_FILE, MAPS_DIR, SERVING_FILE, TITLES_FILE, TOKENIZER_FILE, USERS_FILE,
                               graph_file, maps_file)

TASK = "graph-recommendation"
SERVING_FORMAT = "graphgpt2-rec-serving"
# config.json keys that do not change the answers: written by whichever transformers saved it, or the record's own hash
CONFIG_UNHASHED_KEYS = ("transformers_version", "_name_or_path", "serving_sha256")


def user_token(u):
    return f"user_{u}"


def item_token(j):
    return f"item_{j}"


class RecPrompt:
    """``user_i has interacted with item_a item_b ..., user_i will interact with`` (known user) and
    ``A new user has interacted with item_a ..., the user will interact with`` (``user=None``).

    The fixed pieces are tokenised once; ``encode`` splices integer ids (ID token of user u = base + u, of
    item j = base + U + j), equal to tokenising ``text(user, items)``, so fine-tuning can re-mask histories every
    epoch without BPE. Histories longer than ``max_length`` allows are cut from the LEFT (the first items of the
    list), so the trigger phrase at the end is never cut. The package's one prompt encoder too
    (``data_builders.prompts.RecPromptEncoder``).
    """

    def __init__(self, tokenizer, base_vocab_size, num_users, num_items, max_length=1024):
        def enc(s):
            return np.asarray(tokenizer(s, add_special_tokens=False)["input_ids"], dtype=np.int64)

        self.base_vocab_size, self.num_users, self.num_items = int(base_vocab_size), int(num_users), int(num_items)
        self.max_length = int(max_length)
        self._mid = enc(" has interacted with")  # after user_i
        self._comma = enc(",")
        self._tail = enc(" will interact with")  # after ", user_i"
        self._anon_head = enc("A new user has interacted with")
        self._anon_tail = enc(" the user will interact with")  # after ","
        for piece in (self._mid, self._comma, self._tail, self._anon_head, self._anon_tail):
            if (piece >= self.base_vocab_size).any():
                raise ValueError("template piece tokenised into an ID token; tokenizer does not match base_vocab_size")

    def text(self, user, items):
        hist = "".join(" " + item_token(int(j)) for j in items)
        if user is None:
            return f"A new user has interacted with{hist}, the user will interact with"
        return f"{user_token(user)} has interacted with{hist}, {user_token(user)} will interact with"

    def encode(self, user, items):
        """``{"input_ids": int64, "node_positions": int32 (-1 text, else graph node), "history": kept items}``."""
        items = np.asarray(items, dtype=np.int64).ravel()
        if len(items) and (items.min() < 0 or items.max() >= self.num_items):
            raise ValueError(f"item index out of range [0, {self.num_items})")
        if user is None:
            head, tail = self._anon_head, np.concatenate([self._comma, self._anon_tail])
        else:
            if not 0 <= user < self.num_users:
                raise ValueError(f"user index {user} out of range [0, {self.num_users}); pass None for an unseen user")
            tok = np.array([self.base_vocab_size + user], dtype=np.int64)
            head, tail = np.concatenate([tok, self._mid]), np.concatenate([self._comma, tok, self._tail])
        room = self.max_length - len(head) - len(tail)
        if room < 0:
            raise ValueError(f"max_length={self.max_length} is shorter than the template")
        if len(items) > room:
            items = items[len(items) - room:]  # keep the most recent end of the list
        ids = np.concatenate([head, self.base_vocab_size + self.num_users + items, tail])
        pos = np.where(ids >= self.base_vocab_size, ids - self.base_vocab_size, -1).astype(np.int32)
        return {"input_ids": ids, "node_positions": pos, "history": items.astype(np.int32)}


# The content prompts' templates (their one home: data_builders.prompts imports them) and the text rules that keep
# ID and special tokens out of text (data_builders.textclean's two rules that change tokens; tested against it)
CONTENT_TEMPLATES = {
    "title": "The title of {item} is:",
    "brand": "The brand of {item} is:",
    "categories": "The categories of {item} are:",
    "description": "The description of {item} is:",
    "price": "The price of {item} is:",
}
_ID_PATTERN = re.compile(r"(user|item)_(?=[0-9])")
_SPECIAL_PATTERN = re.compile(r"<\|([^<>|\s]{0,64})\|>")
NEW_ITEM_KEYS = ("id", "title", "brand", "categories", "description", "price")


class ItemText:
    """A new item ``{"id", "title", "brand", "categories": [...], "description", "price"}`` -> the counts of the
    text tokens of its content prompts, field by field as the build writes them (`` value`` after the field's
    template, cut to the build's max_length), i.e. the row ``data_builders.item_text.item_token_counts`` gives an
    item of the catalog with the same metadata."""

    def __init__(self, tokenizer, base_vocab_size, max_length, fields):
        self.tokenizer, self.base_vocab_size, self.fields = tokenizer, int(base_vocab_size), tuple(fields)
        self._room = {f: int(max_length) - len(self._ids(CONTENT_TEMPLATES[f].format(item=item_token(0)))) for f in self.fields}

    def _ids(self, text):
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @staticmethod
    def value(item, field):
        if field == "categories":
            return ", ".join(str(c) for c in (item.get("categories") or []) if c)
        if field == "price":
            price = item.get("price")
            return f"${float(price):.2f}" if price is not None and np.isfinite(float(price)) else ""
        return str(item.get(field) or "").strip()

    def counts(self, items):
        """(n, base_vocab_size) float32 token counts."""
        out = np.zeros((len(items), self.base_vocab_size), dtype=np.float32)
        special = set(self.tokenizer.all_special_ids)
        for row, item in enumerate(items):
            for field in self.fields:
                value = self.value(item, field)
                if not value:
                    continue
                text = _SPECIAL_PATTERN.sub(r"<\1>", _ID_PATTERN.sub(r"\1-", " " + value))
                for t in self._ids(text)[: max(self._room[field], 0)]:
                    if t < self.base_vocab_size and t not in special:
                        out[row, t] += 1
        return out


def new_item_text(model, tokenizer, prompts):
    """The ItemText of a model with a fitted text map and the build's prompt settings (manifest.json "prompts");
    a ValueError saying why not otherwise."""
    lever = getattr(model, "cold_item_map", None)
    why = ("its config has cold_item_map_rank 0" if lever is None else
           "its text map was not fitted (the training data had no item text)" if not lever.fitted() else
           f"its {MANIFEST_FILE} has no prompt settings" if not prompts.get("max_length") else None)
    if why:
        raise ValueError(f"this model cannot take new items: {why}")
    return ItemText(tokenizer, model.config.base_vocab_size, prompts["max_length"],
                    prompts.get("content_fields") or list(CONTENT_TEMPLATES))


def new_item_counts(item_text, known_ids, new_items):
    """``[{"id", "title", ...}]`` -> (raw ids, titles, (n, base_vocab_size) token counts for the model's
    ``recommend(new_item_counts=...)``); an item id already in ``known_ids`` (the catalog) or repeated, an unknown
    key or an item without text is a named error."""
    if not isinstance(new_items, (list, tuple)) or not all(isinstance(x, dict) for x in new_items):
        raise ValueError('new_items must be a list of {"id": ..., "title": ..., "brand": ..., "categories": [...]} dicts')
    ids = []
    for k, item in enumerate(new_items):
        unknown = sorted(map(str, set(item) - set(NEW_ITEM_KEYS)))
        if unknown:
            raise ValueError(f"new_items[{k}]: unknown keys {unknown}; a new item holds {list(NEW_ITEM_KEYS)}")
        raw = item.get("id")
        if isinstance(raw, bool) or not isinstance(raw, (str, int)) or str(raw) in known_ids or str(raw) in ids:
            raise ValueError(f"new_items[{k}]: \"id\" must be a raw item id that is neither in the catalog nor repeated, "
                             f"got {raw!r:.80}")
        if not any(ItemText.value(item, f) for f in item_text.fields):
            raise ValueError(f"new_items[{k}] ({raw!r:.80}): no text in any of {list(item_text.fields)}")
        ids.append(str(raw))
    counts = torch.from_numpy(item_text.counts(new_items))
    return ids, [str(item.get("title") or i) for item, i in zip(new_items, ids)], counts


class TrainGraph:
    """The train user-item graph (nodes: users 0..U-1, items U..U+I-1) and capped hop distances.

    Distances come from the repo's uint8 hop table (memory-mapped) when it ships one, else from a numpy
    breadth-first search from the prompt's own nodes only. ``max_hops + 1`` = farther or unreachable.
    """

    def __init__(self, edges, num_users, num_items, max_hops, table=None):
        edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
        self.num_users, self.num_items, self.max_hops = int(num_users), int(num_items), int(max_hops)
        self.table = table
        by_item = np.argsort(edges[:, 1], kind="stable")
        by_user = np.argsort(edges[:, 0], kind="stable")
        self._eu_by_item, self._items_sorted = edges[by_item, 0], edges[by_item, 1]
        self._ei_by_user, self._users_sorted = edges[by_user, 1], edges[by_user, 0]
        self.item_users = np.split(self._eu_by_item, np.searchsorted(self._items_sorted, np.arange(1, num_items)))
        self.popularity = np.bincount(edges[:, 1], minlength=num_items)

    def _bfs(self, sources):
        """(len(sources), N) uint8 capped distances; one (sources x side) boolean frontier per hop."""
        U, I, far = self.num_users, self.num_items, self.max_hops + 1
        b = len(sources)
        dist = np.full((b, U + I), far, dtype=np.uint8)
        front = np.zeros((b, U + I), dtype=bool)
        front[np.arange(b), sources] = True
        dist[np.arange(b), sources] = 0
        u_of_item, items_sorted = self._eu_by_item, self._items_sorted
        i_of_user, users_sorted = self._ei_by_user, self._users_sorted
        for hop in range(1, self.max_hops + 1):
            reach = np.zeros_like(front)
            if len(u_of_item):
                # item j is reached when any of its users is on the frontier (and vice versa)
                hit_i = front[:, u_of_item]
                starts = np.flatnonzero(np.r_[True, items_sorted[1:] != items_sorted[:-1]])
                reach[:, U + items_sorted[starts]] = np.logical_or.reduceat(hit_i, starts, axis=1)
                hit_u = front[:, U + i_of_user]
                starts = np.flatnonzero(np.r_[True, users_sorted[1:] != users_sorted[:-1]])
                reach[:, users_sorted[starts]] = np.logical_or.reduceat(hit_u, starts, axis=1)
            new = reach & (dist == far)
            if not new.any():
                break
            dist[new] = hop
            front = new
        return dist

    def pairwise(self, node_positions):
        """(B, L) nodes (-1 = text/pad) -> (B, L, L) int64 hops, -1 where either token is not a node."""
        pos = np.asarray(node_positions, dtype=np.int64)
        is_node = pos >= 0
        safe = np.where(is_node, pos, 0)
        uniq, inv = np.unique(safe, return_inverse=True)
        if self.table is not None:
            sub = np.asarray(self.table[uniq][:, uniq])
        else:
            sub = self._bfs(uniq)[:, uniq]
        inv = inv.reshape(safe.shape)
        hops = sub[inv[:, :, None], inv[:, None, :]].astype(np.int64)
        hops[~(is_node[:, :, None] & is_node[:, None, :])] = -1
        return hops

    def leave_user_out(self, hops, node_positions, own_items):
        """Item-item hops of a personalized prompt measured without its user (`leave_user_out_hops` models):
        2 if another train user has both items, else min(4, max_hops + 1); the package's rule."""
        out = np.array(hops, copy=True)
        U, far = self.num_users, min(4, self.max_hops + 1)
        for b, row in enumerate(np.asarray(node_positions)):
            users = row[(row >= 0) & (row < U)]
            if not len(users):
                continue
            own = np.asarray(own_items[int(users[0])], dtype=np.int64)
            item_tok = np.flatnonzero((row >= U) & np.isin(row - U, own))
            if len(item_tok) < 2:
                continue
            uniq, inv = np.unique(row[item_tok] - U, return_inverse=True)
            member = np.zeros((len(uniq), U), dtype=np.int64)
            for k, j in enumerate(uniq):
                member[k, self.item_users[j]] = 1
            others = member @ member.T - 1  # co-interactions by users other than this one
            new = np.where(others >= 1, 2, far)
            new[np.arange(len(uniq)), np.arange(len(uniq))] = 0
            out[b, item_tok[:, None], item_tok[None, :]] = new[inv[:, None], inv[None, :]]
        return out


def repo_file(name_or_path, relative, revision=None, required=True):
    """Local path of a repo file: from a folder, or downloaded (cached) from the Hub; None if optional and absent."""
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, relative)
        if os.path.isfile(path):
            return path
        if required:
            raise FileNotFoundError(f"{path}: missing (a GraphGPT2-Rec repo written by train.publish has it)")
        return None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return hf_hub_download(name_or_path, relative, revision=revision)
    except (EntryNotFoundError, LocalEntryNotFoundError):
        if required:
            raise
        return None


def file_sha256(path):
    """sha256 of a file's bytes, read in 1 MiB blocks (the package's file hashes too)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def graph_sha256(edges, num_users, num_items):
    """Hash of the train graph: node counts plus the sorted edge list (independent of how it was stored); the
    package's too (``data_builders.graph``), so a published repo checks its graph against the model's config."""
    edges = np.ascontiguousarray(np.unique(np.asarray(edges, dtype=np.int32).reshape(-1, 2), axis=0))
    h = hashlib.sha256()
    h.update(f"graphgpt2-train-graph users={num_users} items={num_items} edges={len(edges)}\n".encode())
    h.update(edges.tobytes())
    return h.hexdigest()


def verified_file(name_or_path, relative, revision, recorded):
    """``repo_file`` plus a sha256 check against the repo manifest's ``files_sha256`` (when it records the file)."""
    path = repo_file(name_or_path, relative, revision)
    want = recorded.get(relative)
    if want is not None and file_sha256(path) != want:
        raise ValueError(f"{path}: sha256 does not match the repo's {MANIFEST_FILE} files_sha256 entry: a file from another "
                         "build or edited; re-publish the model")
    return path


def _read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


class ServingFolderError(ValueError):
    """A published folder's files are not the ones it was published with (swapped, edited, truncated or missing)."""


def config_sha256(config):
    """sha256 of a config.json dict without the keys that do not change the answers (``CONFIG_UNHASHED_KEYS``)."""
    kept = {k: v for k, v in config.items() if k not in CONFIG_UNHASHED_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def _served_files(folder):
    """Every file of a published folder that decides its answers: all but the docs, config.json (hashed by its
    fields), the record itself and hidden files."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_root = os.path.relpath(root, folder)
        for name in sorted(files):
            rel = name if rel_root == "." else f"{rel_root}/{name}".replace(os.sep, "/")
            if not name.startswith(".") and rel not in DOC_FILES + (CONFIG_FILE, SERVING_FILE):
                out.append(rel)
    return out


def write_serving_record(folder):
    """Write ``serving.json`` for a finished published folder and put its sha256 into ``config.json``."""
    config_path = os.path.join(folder, CONFIG_FILE)
    config = _read_json(config_path)
    record = {"format": SERVING_FORMAT, "version": 1, "config_sha256": config_sha256(config),
              "files": {rel: file_sha256(os.path.join(folder, rel)) for rel in _served_files(folder)}}
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    with open(os.path.join(folder, SERVING_FILE), "w", encoding="utf-8") as handle:
        handle.write(text)
    config["serving_sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    with open(config_path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(config, indent=2, sort_keys=True) + "\n")


def verify_serving_folder(folder):
    """Check a published folder against its serving record; raise ``ServingFolderError`` naming the first file
    that differs. A folder published before the record existed gets a warning, and its files go unchecked."""
    config_path = os.path.join(folder, CONFIG_FILE)
    record_path = os.path.join(folder, SERVING_FILE)
    if not os.path.isfile(config_path):
        raise ServingFolderError(f"{config_path}: missing (not a published GraphGPT2-Rec folder)")
    try:
        config = _read_json(config_path)
    except ValueError as err:
        raise ServingFolderError(f"{config_path}: not valid JSON ({err})") from None
    want = config.get("serving_sha256")
    if want is None and not os.path.isfile(record_path):
        warnings.warn(f"{folder}: published before serving records ({SERVING_FILE}): its weights, tokenizer and maps "
                      "cannot be checked; re-publish it with `python -m train.publish` to add them", stacklevel=2)
        return
    if not os.path.isfile(record_path):
        raise ServingFolderError(f"{record_path}: missing, but {CONFIG_FILE} names it (serving_sha256); re-publish the model")
    if want is None or file_sha256(record_path) != want:
        raise ServingFolderError(f"{record_path}: sha256 does not match {CONFIG_FILE} serving_sha256: the record or "
                                 "the config was edited or comes from another publish; re-publish the model")
    record = _read_json(record_path)
    if record.get("config_sha256") != config_sha256(config):
        raise ServingFolderError(f"{config_path}: its fields (n_layer, n_head, graph_bias, ...) differ from the ones "
                                 f"the model was published with ({SERVING_FILE} config_sha256): an edited config")
    files = sorted(record.get("files", {}).items())
    missing = [rel for rel, _ in files if not os.path.isfile(os.path.join(folder, rel))]
    if missing:
        raise ServingFolderError(f"{os.path.join(folder, missing[0])}: missing (listed in {SERVING_FILE})"
                                 + (f"; also missing: {', '.join(missing[1:4])}" if len(missing) > 1 else ""))
    differ = [rel for rel, sha in files if file_sha256(os.path.join(folder, rel)) != sha]
    if differ:
        raise ServingFolderError(f"{os.path.join(folder, differ[0])}: sha256 does not match its {SERVING_FILE} entry"
                                 + (f" (so do {', '.join(differ[1:4])})" if len(differ) > 1 else "")
                                 + ": a file from another build or training, edited or truncated; re-publish the model")


@torch.no_grad()
def top_k_items(model, input_ids, attention_mask, hop_distances, exclude, k, new_item_counts=None):
    """Serving's one scoring step (this pipeline's and ``train.recommend``'s): one forward pass, then per prompt
    its top ``k`` as (item index, score), best first, without the ``exclude``d items. Item indices from
    ``num_items`` on are the new items of ``new_item_counts``."""
    rec = model.recommend(input_ids, attention_mask=attention_mask, hop_distances=hop_distances, k=k,
                          exclude_items=exclude, new_item_counts=new_item_counts)
    return [[(j, s) for j, s in zip(items, scores) if s != float("-inf")]
            for items, scores in zip(rec.items.tolist(), rec.scores.tolist())]


class GraphRecommender:
    """Everything a top-k request needs, read from the repo: prompt, graph, id maps, titles, train histories."""

    def __init__(self, model, tokenizer, name_or_path, revision=None):
        self.model = model.eval()
        cfg = model.config
        if not os.path.isdir(name_or_path):  # a Hub repo: every serving file from ONE resolved commit
            from huggingface_hub import snapshot_download

            name_or_path = snapshot_download(name_or_path, revision=revision, ignore_patterns=list(DOC_FILES))
        verify_serving_folder(name_or_path)
        tokenizer_path = repo_file(name_or_path, TOKENIZER_FILE, revision)
        trained_with = getattr(cfg, "tokenizer_sha256", None)  # the tokenizer the ID rows were trained with
        if trained_with and file_sha256(tokenizer_path) != trained_with:
            raise ServingFolderError(f"{tokenizer_path}: not the tokenizer this model was trained with (config.json tokenizer_sha256)")
        meta = _read_json(repo_file(name_or_path, INFERENCE_FILE, revision))
        graph_meta = _read_json(repo_file(name_or_path, graph_file(GRAPH_META_FILE), revision))
        manifest_path = repo_file(name_or_path, MANIFEST_FILE, revision, required=False)  # absent in older repos
        recorded = (_read_json(manifest_path).get("files_sha256") or {}) if manifest_path else {}
        trained_files = getattr(cfg, "files_sha256", None)  # the maps the ID rows were trained with
        if trained_files and recorded and trained_files != recorded:
            raise ServingFolderError(f"{manifest_path}: files_sha256 differs from config.json files_sha256: maps from another build")
        self.num_users, self.num_items = cfg.num_users, cfg.num_items
        self.max_length = min(int(meta.get("max_length", cfg.n_positions)), cfg.n_positions)
        self.leave_user_out = bool(meta.get("leave_user_out_hops", False))
        self.prompt = RecPrompt(tokenizer, cfg.base_vocab_size, cfg.num_users, cfg.num_items, self.max_length)
        self.tokenizer = tokenizer
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        table = None
        if graph_meta.get("hop_table") and cfg.graph_bias != "none":
            table = np.load(verified_file(name_or_path, graph_file(graph_meta["hop_table"]), revision, recorded), mmap_mode="r")
        edges = np.load(repo_file(name_or_path, graph_file(EDGES_FILE), revision))
        trained_on = getattr(cfg, "graph_sha256", None)  # the graph the ID rows were trained with
        if trained_on and graph_sha256(edges, cfg.num_users, cfg.num_items) != trained_on:
            raise ValueError(f"{name_or_path}: {graph_file(EDGES_FILE)} is not the train graph this model was trained on ({CONFIG_FILE} graph_sha256)")
        self.graph = TrainGraph(edges, cfg.num_users, cfg.num_items, graph_meta["max_hops"], table)
        self.user_ids = _read_json(verified_file(name_or_path, maps_file(USERS_FILE), revision, recorded))
        self.item_ids = _read_json(verified_file(name_or_path, maps_file(ITEMS_FILE), revision, recorded))
        titles = _read_json(verified_file(name_or_path, maps_file(TITLES_FILE), revision, recorded))
        self.titles = [t or item_token(j) for j, t in enumerate(titles)]
        self.train_items = _read_json(repo_file(name_or_path, maps_file(HISTORIES_FILE), revision))
        if len(self.user_ids) != self.num_users or len(self.item_ids) != self.num_items or len(self.train_items) != self.num_users:
            raise ValueError(f"{name_or_path}: {MAPS_DIR}/ does not match the model's {self.num_users} users / {self.num_items} items")
        stored = np.array([(u, j) for u, h in enumerate(self.train_items) for j in h], dtype=np.int64).reshape(-1, 2)
        if len(stored) != len(edges) or not np.array_equal(np.unique(stored, axis=0), np.unique(np.asarray(edges, np.int64), axis=0)):
            raise ValueError(f"{name_or_path}: {maps_file(HISTORIES_FILE)} is not the train graph's edges: a file from another dataset or edited")
        self._user_index = {u: i for i, u in enumerate(self.user_ids)}
        self._item_index = {j: i for i, j in enumerate(self.item_ids)}
        by_title = {}
        for j, t in enumerate(self.titles):
            by_title.setdefault(t, []).append(j)
        self._title_index = by_title
        self.prompts = (_read_json(manifest_path).get("prompts") or {}) if manifest_path else {}

    def new_item_counts(self, new_items):
        """``[{"id", "title", ...}]`` -> (ids, titles, (n, base_vocab_size) token counts of their texts)."""
        return new_item_counts(new_item_text(self.model, self.tokenizer, self.prompts), self._item_index, new_items)

    # ---- requests -> (user index or None, history indices) -----------------------------------------------------
    def resolve(self, request):
        """``{"user": raw id}`` -> (u, train items in canonical order); ``{"history": [raw ids / titles]}`` -> (None, items)."""
        if not isinstance(request, dict):
            raise ValueError(f'a request is {{"user": "<raw user id>"}} or {{"history": ["<raw item id or title>", ...]}}, '
                             f"got {type(request).__name__} {request!r:.80}")
        unknown_keys = sorted(map(str, set(request) - {"user", "history"}))
        if unknown_keys:
            raise ValueError(f"unknown request keys {unknown_keys}: a request holds exactly one of \"user\" and \"history\"; "
                             "top_k, exclude_seen and batch_size are call options (pipeline(inputs, top_k=5)) "
                             "or the handler's \"parameters\"")
        if len(request) != 1:
            raise ValueError(f'a request holds exactly one of "user" and "history", got {sorted(request)}')
        if "user" in request:
            raw = request["user"]
            if isinstance(raw, bool) or not isinstance(raw, (str, int)):
                raise ValueError(f'"user" must be a raw user id (a string), got {type(raw).__name__} {raw!r:.80}')
            raw = str(raw)
            if raw not in self._user_index:
                raise ValueError(f"unknown user id {raw!r:.80} (not in {maps_file(USERS_FILE)}; pass {{'history': [...]}} for a new user)")
            u = self._user_index[raw]
            return u, [int(j) for j in self.train_items[u]]
        history = request["history"]
        if isinstance(history, str) or not isinstance(history, (list, tuple)):
            raise ValueError(f'"history" must be a list of raw item ids or titles, got {type(history).__name__} {history!r:.80}')
        bad = [x for x in history if isinstance(x, bool) or not isinstance(x, (str, int))]
        if bad:
            raise ValueError(f'"history" entries must be raw item ids or titles (strings), got {bad[:3]!r:.80}')
        items, unknown, ambiguous = [], [], []
        for x in history:
            x = str(x)
            if x in self._item_index:
                items.append(self._item_index[x])
            elif len(self._title_index.get(x, [])) == 1:
                items.append(self._title_index[x][0])
            elif x in self._title_index:
                ambiguous.append(x)
            else:
                unknown.append(x)
        if unknown or ambiguous:
            parts = [f"unknown item ids or titles {unknown}"] if unknown else []
            parts += [f"titles shared by several items {ambiguous} (use the raw item id)"] if ambiguous else []
            raise ValueError("; ".join(parts))
        return None, items

    # ---- scoring ----------------------------------------------------------------------------------------------
    def hop_distances(self, node_positions):
        hops = self.graph.pairwise(node_positions)
        if self.leave_user_out:
            hops = self.graph.leave_user_out(hops, node_positions, self.train_items)
        return hops

    def collate(self, encoded):
        L = max(len(e["input_ids"]) for e in encoded)
        ids = np.full((len(encoded), L), self.pad_token_id, dtype=np.int64)
        pos = np.full((len(encoded), L), -1, dtype=np.int64)
        mask = np.zeros((len(encoded), L), dtype=np.int64)
        for b, e in enumerate(encoded):
            n = len(e["input_ids"])
            ids[b, :n], pos[b, :n], mask[b, :n] = e["input_ids"], e["node_positions"], 1
        return ids, pos, mask

    @torch.no_grad()
    def score(self, resolved, top_k, exclude_seen=True, new_counts=None):
        """[(u or None, items)] -> one list of (item index, score) per request, best first; one forward pass. Item
        indices from num_items on are the new items of ``new_counts`` (their token counts)."""
        encoded = [self.prompt.encode(u, items) for u, items in resolved]
        ids, pos, mask = self.collate(encoded)
        device = next(self.model.parameters()).device
        hops = None
        if self.model.config.graph_bias != "none":
            hops = self.hop_distances(pos)
            hops = torch.from_numpy(hops).to(device)
        exclude = [items if exclude_seen else [] for _, items in resolved]
        k = min(int(top_k), self.num_items + (0 if new_counts is None else len(new_counts)))
        return top_k_items(self.model, torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device), hops, exclude,
                           k, new_counts)

    def popular(self, top_k):
        """Most-interacted train items (ties by index), scored by their train interaction counts."""
        order = np.argsort(-self.graph.popularity, kind="stable")[:top_k]
        return [(int(j), float(self.graph.popularity[j])) for j in order]

    def recommend(self, requests, top_k=10, exclude_seen=True, batch_size=64, new_items=None):
        """One list of ``{"item_id", "title", "score"}`` per request (``"source": "popularity"`` on the fallback);
        ``new_items`` are ranked with the catalog and marked ``"new": true``."""
        check_options(top_k, exclude_seen, batch_size)
        if not isinstance(requests, (list, tuple)):
            raise ValueError(f"requests must be a list of request dicts, got {type(requests).__name__}")
        new_ids, new_titles, new_counts = self.new_item_counts(new_items) if new_items else ([], [], None)
        resolved = [self.resolve(r) for r in requests]
        ranked = [None] * len(resolved)
        model_rows = [i for i, (u, items) in enumerate(resolved) if u is not None or items]
        for start in range(0, len(model_rows), batch_size):
            chunk = model_rows[start:start + batch_size]
            for i, recs in zip(chunk, self.score([resolved[i] for i in chunk], top_k, exclude_seen, new_counts)):
                ranked[i] = recs
        out = []
        for i, recs in enumerate(ranked):
            source = "model"
            if recs is None:  # an empty history: nothing to condition on, so the most popular train items
                recs, source = self.popular(top_k), "popularity"
            out.append([self._entry(j, s, new_ids, new_titles, source) for j, s in recs])
        return out

    def _entry(self, j, score, new_ids, new_titles, source):
        if j >= self.num_items:
            return {"item_id": new_ids[j - self.num_items], "title": new_titles[j - self.num_items], "score": float(score), "new": True}
        return {"item_id": self.item_ids[j], "title": self.titles[j], "score": float(score),
                **({"source": source} if source != "model" else {})}


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def check_options(top_k, exclude_seen, batch_size):
    """The call options, by type and range (a JSON ``"false"`` is a string, not false)."""
    if not _is_int(top_k) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r:.80}")
    if not isinstance(exclude_seen, bool):
        raise ValueError(f"exclude_seen must be true or false (a boolean), got {exclude_seen!r:.80}")
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r:.80}")


def as_request_list(inputs):
    """``(requests, single)``: one request dict or a list of them; anything else is a named error."""
    if isinstance(inputs, dict):
        return [inputs], True
    if isinstance(inputs, (list, tuple)):
        return list(inputs), False
    raise ValueError('inputs must be a request ({"user": "<raw user id>"} or {"history": [...]}) or a list of them, '
                     f"got {type(inputs).__name__} {inputs!r:.80}")


class GraphRecommendationPipeline(Pipeline):
    """``pipeline("graph-recommendation", model=<repo>, trust_remote_code=True)``.

    Call with ``{"user": "<raw user id>"}``, ``{"history": ["<raw item id or exact title>", ...]}`` or a list of
    them; options ``top_k`` (default 10), ``exclude_seen`` (default True), ``batch_size`` (default 64) and
    ``new_items`` (products without interactions, ``[{"id", "title", "brand", "categories": [...], ...}]``: ranked
    with the catalog from their text, marked ``"new": true``; needs a model with a fitted text map).
    Returns one list of ``{"item_id", "title", "score"}`` per input (a single list for a single input). An empty
    history is answered from train popularity and every entry carries ``"source": "popularity"``.
    """

    _load_tokenizer = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.recommender = GraphRecommender(self.model, self.tokenizer, self.model.config._name_or_path,
                                            getattr(self.model.config, "_commit_hash", None))

    def _sanitize_parameters(self, top_k=None, exclude_seen=None, new_items=None, **kwargs):
        params = {}
        if new_items is not None:
            params["new_items"] = new_items
        if top_k is not None:
            params["top_k"] = top_k
        if exclude_seen is not None:
            params["exclude_seen"] = exclude_seen  # checked as a boolean in recommend: bool("false") is True
        return {}, {}, params

    def __call__(self, inputs, top_k=10, exclude_seen=True, batch_size=64, new_items=None, **kwargs):
        if kwargs:
            raise TypeError(f"unexpected options {sorted(kwargs)}; the graph-recommendation pipeline takes top_k, "
                            "exclude_seen, batch_size, new_items")
        requests, single = as_request_list(inputs)
        out = self.recommender.recommend(requests, top_k, exclude_seen, batch_size, new_items)
        return out[0] if single else out

    # Pipeline's abstract steps; __call__ above batches the whole request list itself (the hop tensor needs
    # its own padding), so these serve only Pipeline internals that call them one input at a time.
    def preprocess(self, inputs):
        return {"inputs": inputs}

    def _forward(self, model_inputs, **params):
        return {"recs": self.recommender.recommend([model_inputs["inputs"]], **params)[0]}

    def postprocess(self, model_outputs, **params):
        return model_outputs["recs"]
