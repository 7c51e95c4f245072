"""Issue 9: every file a model's answers depend on is checked on load, in a dataset folder and a published one.

Swapped id maps, a swapped dense hop table, a graph whose recorded hashes were edited to match, and edited train
histories are refused by ``Corpus`` (so by training, evaluation and ``train.recommend``) and by the Hub pipeline.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_builders.build import build
from data_builders.corpus import Corpus, DataFolderError, file_sha256
from data_builders.graph import graph_sha256
from modeling_graphgpt2.pipeline_graphgpt2 import ServingFolderError, write_serving_record
from train.testing import tiny_build_config, tiny_overrides

USERS = "maps/users.json"


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A tiny dataset folder (with a dense hop table) and the model folder published from it."""
    from train.config import load_config
    from train.main import run_pipeline

    root = tmp_path_factory.mktemp("hashes")
    data = root / "data"
    build(tiny_build_config(data).replace(hop_table_budget_gb=0.01))
    cfg = load_config("demo", tiny_overrides(data, root / "run", "pretrain.do_pretrain=false", "finetune.epochs=1"))
    result = run_pipeline(cfg, command="pytest hashes")
    return data, Path(result["paths"]["hub_model"])


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _swap_users(folder: Path) -> None:
    users = json.loads((folder / USERS).read_text())
    (folder / USERS).write_text(json.dumps(users[1:] + users[:1]))  # same count, other order: every answer changes


def _edit_manifest(folder: Path, edit) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    edit(m)
    (folder / "manifest.json").write_text(json.dumps(m))


def test_build_records_the_maps_and_the_hop_table(published):
    data, _ = published
    recorded = Corpus(data).files_sha256
    assert set(recorded) == {"maps/users.json", "maps/items.json", "maps/item_titles.json", "graph/hops.npy"}
    assert all(file_sha256(data / rel) == sha for rel, sha in recorded.items())


@pytest.mark.parametrize("rel", ["maps/users.json", "maps/items.json", "maps/item_titles.json", "graph/hops.npy"])
def test_a_swapped_file_is_refused_by_name(published, tmp_path, rel):
    folder = _copy(published[0], tmp_path / "d")
    path = folder / rel
    if rel.endswith(".npy"):
        table = np.load(path)
        table[0, -1] = (table[0, -1] + 1) % 3  # one distance changed: the bias of one pair differs
        np.save(path, table)
    else:
        values = json.loads(path.read_text())
        path.write_text(json.dumps(values[1:] + values[:1]))
    with pytest.raises(DataFolderError, match=rf"{rel}: sha256 .* files_sha256"):
        Corpus(folder)


def test_a_hash_edited_to_match_is_caught_by_the_model(published, tmp_path):
    """Editing the manifest to match the swapped map gets past the folder check, not past the model's record."""
    from train.modeling_io import load_model

    data, hub = published
    folder = _copy(data, tmp_path / "d")
    _swap_users(folder)
    _edit_manifest(folder, lambda m: m["files_sha256"].__setitem__(USERS, file_sha256(folder / USERS)))
    corpus = Corpus(folder)  # consistent with itself now
    with pytest.raises(DataFolderError, match="maps/users.json differ from the files the model was trained with"):
        corpus.check_model(load_model(hub).config)


def test_a_published_graph_edited_to_match_is_refused(published, tmp_path):
    """Another train graph with graph.json and the manifest rewritten to its hash: the model's graph_sha256 refuses it."""
    from transformers import pipeline

    from train.recommend import Recommender

    hub = _copy(published[1], tmp_path / "hub")
    edges = np.load(hub / "graph" / "train_edges.npy")
    edges = edges[1:]  # one train edge fewer
    np.save(hub / "graph" / "train_edges.npy", edges)
    meta = json.loads((hub / "graph" / "graph.json").read_text())
    sha = graph_sha256(edges, meta["num_users"], meta["num_items"])
    meta.update(sha256=sha, num_edges=len(edges), hop_table=None)
    (hub / "graph" / "graph.json").write_text(json.dumps(meta))
    (hub / "graph" / "hops.npy").unlink()

    def point_at_new_graph(m):
        m["graph"]["sha256"] = sha
        m["files_sha256"].pop("graph/hops.npy")

    _edit_manifest(hub, point_at_new_graph)
    with pytest.raises(ServingFolderError, match=r"graph/hops.npy: missing \(listed in serving.json\)"):
        Recommender.from_folder(hub)
    write_serving_record(hub)  # a forger who also rewrites the serving record: the model's own record still refuses
    with pytest.raises(DataFolderError, match="graph hash .* differs from the one the model was trained on"):
        Recommender.from_folder(hub)
    with pytest.raises(ValueError, match="files_sha256 differs from config.json files_sha256"):  # the dropped hop table
        pipeline("graph-recommendation", model=str(hub), trust_remote_code=True)
    trained_files = json.loads((hub / "config.json").read_text())["files_sha256"]
    _edit_manifest(hub, lambda m: m.__setitem__("files_sha256", trained_files))
    write_serving_record(hub)
    with pytest.raises(ValueError, match="not the train graph this model was trained on"):
        pipeline("graph-recommendation", model=str(hub), trust_remote_code=True)


def test_edited_train_histories_are_refused(published, tmp_path):
    from transformers import pipeline

    hub = _copy(published[1], tmp_path / "hub")
    path = hub / "maps" / "train_histories.json"
    histories = json.loads(path.read_text())
    u = next(i for i, h in enumerate(histories) if len(h) > 1)
    histories[u] = histories[u][:-1]  # a user's history lost an item
    path.write_text(json.dumps(histories))
    with pytest.raises(ValueError, match="train_histories.json: sha256 does not match its serving.json entry"):  # remote code's own class
        pipeline("graph-recommendation", model=str(hub), trust_remote_code=True)
    write_serving_record(hub)  # records rewritten to match: the histories are still checked against the graph
    with pytest.raises(DataFolderError, match="train_histories.json: the histories are not the train graph's edges"):
        Corpus(hub).train_items()
    with pytest.raises(ValueError, match="train_histories.json is not the train graph's edges"):
        pipeline("graph-recommendation", model=str(hub), trust_remote_code=True)


def test_the_pipeline_checks_the_maps_too(published, tmp_path):
    from transformers import pipeline

    hub = _copy(published[1], tmp_path / "hub")
    _swap_users(hub)
    with pytest.raises(ValueError, match="users.json: sha256 does not match its serving.json entry"):
        pipeline("graph-recommendation", model=str(hub), trust_remote_code=True)
    write_serving_record(hub)  # records rewritten to match: the manifest's files_sha256 still refuses the map
    with pytest.raises(ValueError, match="users.json: sha256 does not match"):
        pipeline("graph-recommendation", model=str(hub), trust_remote_code=True)


def test_the_pipeline_graph_hash_is_the_packages(published):
    """The graph hash the build recorded is the one the remote code computes from the edges, in any order (else
    every repo would be refused)."""
    from modeling_graphgpt2.pipeline_graphgpt2 import graph_sha256 as remote_graph_sha256

    corpus = Corpus(published[1])
    edges = corpus.hops.graph.edges
    assert remote_graph_sha256(edges, corpus.num_users, corpus.num_items) == corpus.graph_sha256
    assert remote_graph_sha256(edges[::-1], corpus.num_users, corpus.num_items) == corpus.graph_sha256  # order-free
