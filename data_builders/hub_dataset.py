"""The dataset folder as a Hub dataset repo (``python -m train.publish ... --push-dataset-to-hub org/name``).

Part of the data side because it lays out the dataset folder's own files (``Corpus`` owns their names).

The upload is a staged copy of the dataset folder (hard links where the filesystem allows) whose README.md is
a Hub dataset card: the YAML ``configs:`` that ``datasets.load_dataset("org/name", "<config>")`` reads, a
licence note (Amazon review data: research use), and the rows per config/split, columns, split sizes and
hashes from the manifest. The dataset folder itself is not modified.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from modeling_graphgpt2.folder_layout import MANIFEST_FILE, README_FILE, TOKENIZER_DIR, shard_glob

from .atomic import OWNED_FILE, atomic_write_text, check_replaceable, make_temp_dir, replace_dir
from .corpus import read_manifest
from .prompts import CONFIG_SPLITS

COLUMNS = {
    "kind": "row kind (title, brand, review, interactions, recommendation, ...)",
    "prompt": "prompt text (no loss)",
    "main": "main text (the language-model target; empty for recommendation rows)",
    "input_ids": "token ids of prompt + main (`user_u` = base_vocab_size + u, `item_j` = base_vocab_size + num_users + j)",
    "node_positions": "graph node of each token (-1 = text token; users 0..U-1, items U..U+I-1)",
    "labels": "-100 on the prompt, the main's token ids elsewhere",
    "user": "user index of the row (-1 = none)",
    "history": "recommendation only: the train items shown in the prompt (item indices, stored order)",
    "targets": "recommendation only: the items to predict (train: all train items; validation/test: held-out items)",
}
AMAZON_NOTE = ("Built from the Amazon review data of the McAuley lab (\"Amazon product data\", 2014/2018 releases), "
               "which is distributed for research use only: the licence of this repo is `other`; cite "
               "He & McAuley (WWW 2016) and McAuley et al. (SIGIR 2015) (2014 data) or Ni, Li & McAuley (EMNLP 2019) "
               "(2018 data) and check the original terms before any other use.")


def is_amazon_source(manifest: dict) -> bool:
    """Whether a dataset folder was built from the Amazon review data (its source format or file paths say so)."""
    split = manifest.get("split", {})
    return "amazon" in (json.dumps(split.get("source", {})) + manifest.get("name", "")).lower()


def data_licence(manifest: dict) -> tuple[str, str]:
    """(Hub licence id, a sentence) for what was built from this folder's data: ``other`` for the Amazon review
    data (research use), apache-2.0 for the embedded synthetic shop, ``other`` with a request to set it for
    anything else (the data's owner decides, not this package)."""
    if is_amazon_source(manifest):
        return "other", AMAZON_NOTE
    if manifest.get("split", {}).get("source", {}).get("format") == "synthetic":
        return "apache-2.0", "Trained on the package's embedded synthetic shop: Apache-2.0, like the package."
    return "other", ("Trained on user-supplied data: its licence decides this repo's; set it with "
                     "`output.license=<Hub licence id>` (the package's own code is Apache-2.0).")


def hub_dataset_card(manifest: dict, model_repo: str | None = None) -> str:
    """README.md of the dataset repo (YAML metadata + body) from the folder's manifest."""
    configs = list(manifest["configs"])
    default = "recommendation" if "recommendation" in configs else configs[0]
    split = manifest.get("split", {})
    source = split.get("source", {}).get("format", "unknown")
    licence, licence_text = data_licence(manifest)
    lines = ["---", f"license: {licence}", "pretty_name: GraphGPT2-Rec prompt corpora "
             f"({manifest.get('name', 'dataset')})", "tags:", "- recommendation", "- graphgpt2-rec", "- graph", "configs:"]
    for c in configs:
        lines += [f"- config_name: {c}", "  data_files:"]
        for s in CONFIG_SPLITS[c]:
            lines += [f"  - split: {s}", f"    path: {shard_glob(c, s)}"]
        if c == default:
            lines.append("  default: true")
    lines += ["---", "", f"# GraphGPT2-Rec prompt corpora: {manifest.get('name', 'dataset')}", ""]
    lines += ["Prompt corpora, train graph and id maps for a GraphGPT2-Rec recommender, built by "
              "`python -m data_builders build` from the TRAIN split only (validation/test interactions never enter a "
              "prompt, a review row or the graph).", ""]
    if model_repo:
        lines += [f"Model trained on it: [{model_repo}](https://huggingface.co/{model_repo}).", ""]
    lines += ["```python", "import datasets", "", "rec = datasets.load_dataset(\"<this repo>\", \"recommendation\")"
              "  # train / validation / test", "```", ""]
    lines += ["## Counts", "", f"- source format: `{source}`; {manifest['num_users']:,} users, {manifest['num_items']:,} items, "
              f"base vocabulary {manifest['base_vocab_size']:,}", "", "| config | split | rows |", "|---|---|---:|"]
    lines += [f"| {c} | {s} | {n:,} |" for c in configs for s, n in manifest["rows"][c].items()]
    sizes, hashes = split.get("split_sizes", {}), split.get("split_hashes", {})
    lines += ["", "## Split", "", f"Recipe: {split.get('preprocess', {}).get('recipe', '(not recorded)')}", "",
              "| split | interactions | sha256 |", "|---|---:|---|"]
    lines += [f"| {s} | {sizes.get(s, 0):,} | `{hashes.get(s, '')}` |" for s in sizes]
    lines += ["", f"Graph (train edges, `graph/`): sha256 `{manifest['graph']['sha256']}`, hops capped at {manifest['max_hops']}. "
              f"Tokenizer (`{TOKENIZER_DIR}/`): sha256 `{manifest['tokenizer']['sha256']}`. Full record: `{MANIFEST_FILE}`.", "",
              "## Columns", "", "| column | meaning |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in COLUMNS.items()]
    lines += ["", "## Licence", "", f"{licence_text} Source record: `{MANIFEST_FILE}`.", ""]
    return "\n".join(lines)


def stage_dataset_repo(folder: str | Path, out: str | Path, model_repo: str | None = None) -> Path:
    """A copy of ``folder`` (hard links when possible) with the Hub dataset card as README.md; atomic."""
    folder, out = Path(folder), Path(out)
    manifest = read_manifest(folder)
    check_replaceable(out, "staged dataset folder")  # before any work
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, prefix=f".tmp-{out.name}-")
    tmp.rmdir()  # copytree creates it

    def link_or_copy(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    try:
        shutil.copytree(folder, tmp, copy_function=link_or_copy, ignore=shutil.ignore_patterns(".tmp-*", README_FILE, OWNED_FILE))
        atomic_write_text(tmp / README_FILE, hub_dataset_card(manifest, model_repo))
        replace_dir(tmp, out, "staged dataset folder")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
