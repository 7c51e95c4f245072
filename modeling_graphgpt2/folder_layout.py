"""The folder layout: every file and folder name of a dataset folder and of a published model folder.

Remote-code file without imports: the data builders (which write dataset folders), ``train.publish`` (which writes
published folders) and the pipeline (which reads a published folder without the package) all take their names
from here, and ``train.publish`` ships it beside the pipeline. Reading a folder by these names is
``data_builders.corpus.Corpus``'s job (and the pipeline's, for a published folder); ``tests/test_corpus.py``
flags a literal file name anywhere else.

Dataset folder::

    manifest.json  README.md  tokenizer/  graph/{train_edges.npy, graph.json, hops.npy}
    maps/{users,items,item_titles}.json [+ cold_items.json]  <config>/<split>-0000k-of-0000n.parquet

A published folder adds, at its root: ``tokenizer.json`` (+ ``tokenizer_config.json``), ``maps/train_histories.json``,
``graphgpt2_rec.json`` (inference settings), ``config.json``, ``model.safetensors``, the remote code and
``serving.json`` (the sha256 of every served file).
"""

FORMAT_NAME = "graphgpt2-rec-dataset"
FORMAT_VERSION = 1

MANIFEST_FILE = "manifest.json"
README_FILE = "README.md"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
GRAPH_DIR = "graph"
EDGES_FILE = "train_edges.npy"
HOP_TABLE_FILE = "hops.npy"
GRAPH_META_FILE = "graph.json"
MAPS_DIR = "maps"
USERS_FILE = "users.json"
ITEMS_FILE = "items.json"
TITLES_FILE = "item_titles.json"
COLD_ITEMS_FILE = "cold_items.json"  # cold-item splits only: {"validation": [item indices], "test": [...]}
HISTORIES_FILE = "train_histories.json"  # published folders only: every user's train items in the split's order

# published folders only
INFERENCE_FILE = "graphgpt2_rec.json"  # settings used at inference (prompt length, hops)
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SERVING_FILE = "serving.json"
SERVING_CODE_FILES = ("pipeline_graphgpt2.py", "handler.py", "folder_layout.py")  # remote code beside the model's
# Documentation, not served: left out of the serving record (and of a Hub snapshot the pipeline reads).
DOC_FILES = ("README.md", "metrics.json", "run_config.yaml", "train_log.jsonl", "training_curve.png")


def graph_file(name):
    """Path of a graph file relative to the folder root, e.g. ``graph/train_edges.npy``."""
    return f"{GRAPH_DIR}/{name}"


def maps_file(name):
    """Path of an id-map file relative to the folder root, e.g. ``maps/users.json``."""
    return f"{MAPS_DIR}/{name}"


def shard_file(config, split, index, count):
    """A prompt config's Parquet shard relative to the folder root: ``<config>/<split>-0000k-of-0000n.parquet``."""
    return f"{config}/{split}-{index:05d}-of-{count:05d}.parquet"


def pending_shard_file(split, index):
    """A shard's hidden name inside its config folder while the number of shards is not known yet."""
    return f".{split}-{index:05d}.parquet"


def shard_glob(config, split):
    """The ``data_files`` pattern of a split's shards, for a dataset card's YAML."""
    return f"{config}/{split}-*.parquet"
