"""Issue "Reliability 2", sections 3 and 4: a published folder proves what it serves, and requests are checked.

The serving record (``serving.json``, its own sha256 in ``config.json``) covers the weights, the tokenizer, every map,
graph and history file, the settings, the code and the config's fields. The pipeline, the endpoint handler and
``train.recommend`` check it on load; a folder published before the record warns. Remote code raises its own copy
of ``ServingFolderError`` (loaded from the folder), so the pipeline cases match ``ValueError`` and the message.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from modeling_graphgpt2.pipeline_graphgpt2 import ServingFolderError, verify_serving_folder, write_serving_record
from train.testing import build_tiny_data, tiny_overrides


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    from train.config import load_config
    from train.main import run_pipeline

    root = tmp_path_factory.mktemp("serving")
    data = build_tiny_data(root / "data")
    cfg = load_config("demo", tiny_overrides(data, root / "run", "pretrain.do_pretrain=false", "finetune.epochs=1"))
    return Path(run_pipeline(cfg, command="pytest serving")["paths"]["hub_model"])


@pytest.fixture
def copy(published, tmp_path):
    return Path(shutil.copytree(published, tmp_path / "hub"))


def _pipeline(folder):
    from transformers import pipeline

    return pipeline("graph-recommendation", model=str(folder), trust_remote_code=True)


def _handler(folder):
    import importlib.util

    spec = importlib.util.spec_from_file_location("published_handler", folder / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EndpointHandler(str(folder))


def _refused_everywhere(folder: Path, says: str) -> None:
    """The CLI, the pipeline and the handler all refuse the folder with the same named error."""
    from train.recommend import Recommender

    with pytest.raises(ServingFolderError, match=says):
        Recommender.from_folder(folder)
    with pytest.raises(ValueError, match=says):
        _pipeline(folder)
    with pytest.raises(ValueError, match=says):
        _handler(folder)


def _edit_json(path: Path, edit) -> None:
    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(json.dumps(obj, indent=2))


# ------------------------------------------------------------------------------------------ 3. the serving record
def test_the_record_covers_every_served_file(published):
    record = json.loads((published / "serving.json").read_text())
    served = set(record["files"])
    assert {"model.safetensors", "tokenizer.json", "tokenizer_config.json", "maps/users.json",
            "maps/items.json", "maps/item_titles.json", "maps/train_histories.json", "graph/train_edges.npy",
            "graph/graph.json", "graphgpt2_rec.json", "manifest.json", "pipeline_graphgpt2.py", "handler.py",
            "folder_layout.py", "modeling_graphgpt2.py", "configuration_graphgpt2.py"} <= served
    assert not served & {"README.md", "metrics.json", "config.json", "serving.json"}
    on_disk = {p.relative_to(published).as_posix() for p in published.rglob("*") if p.is_file()}
    assert served <= on_disk
    verify_serving_folder(str(published))


@pytest.mark.parametrize("key, value", [("n_head", 1), ("n_layer", 2), ("graph_bias", "none")])
def test_an_edited_config_is_refused(copy, key, value):
    config = json.loads((copy / "config.json").read_text())
    assert config[key] != value
    _edit_json(copy / "config.json", lambda c: c.__setitem__(key, value))
    _refused_everywhere(copy, r"config.json: its fields .* differ")


def test_same_shape_weights_from_another_training_are_refused(copy):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(copy / "model.safetensors"))
    name = next(k for k in sorted(tensors) if tensors[k].ndim == 2)
    tensors[name] = tensors[name] + np.float32(0.01)  # same shapes, other values
    save_file(tensors, str(copy / "model.safetensors"), metadata={"format": "pt"})
    _refused_everywhere(copy, r"model.safetensors: sha256 does not match its serving.json entry")


def test_a_tokenizer_from_another_build_is_refused(copy):
    def swap_two_tokens(tok):
        vocab = tok["model"]["vocab"]
        a, b = sorted(vocab)[:2]
        vocab[a], vocab[b] = vocab[b], vocab[a]

    _edit_json(copy / "tokenizer.json", swap_two_tokens)
    _refused_everywhere(copy, r"tokenizer.json: sha256 does not match its serving.json entry")
    write_serving_record(copy)  # records rewritten to match: the model's tokenizer_sha256 still refuses it
    with pytest.raises(ValueError, match="not the tokenizer this model was trained with"):
        _pipeline(copy)


def test_edited_titles_with_the_manifest_edited_to_match_are_refused(copy):
    from data_builders.corpus import file_sha256

    titles = copy / "maps" / "item_titles.json"
    _edit_json(titles, lambda t: t.__setitem__(0, "A different product"))
    _edit_json(copy / "manifest.json", lambda m: m["files_sha256"].__setitem__("maps/item_titles.json", file_sha256(titles)))
    _refused_everywhere(copy, r"manifest.json: sha256 does not match its serving.json entry \(so do maps/item_titles.json\)")


def test_the_record_itself_cannot_be_edited_or_dropped(copy):
    _edit_json(copy / "serving.json", lambda r: r["files"].pop("maps/item_titles.json"))
    _refused_everywhere(copy, r"serving.json: sha256 does not match config.json serving_sha256")
    (copy / "serving.json").unlink()
    _refused_everywhere(copy, r"serving.json: missing, but config.json names it")


def test_a_folder_published_before_the_record_warns_and_loads(copy):
    (copy / "serving.json").unlink()
    _edit_json(copy / "config.json", lambda c: c.pop("serving_sha256"))
    with pytest.warns(UserWarning, match="published before serving records"):
        verify_serving_folder(str(copy))
    with pytest.warns(UserWarning, match="published before serving records"):
        recs = _pipeline(copy)({"history": [json.loads((copy / "maps" / "items.json").read_text())[0]]}, top_k=3)
    assert len(recs) == 3


def test_documentation_files_may_change(copy):
    (copy / "README.md").write_text("my own card")
    (copy / ".gitattributes").write_text("*.safetensors filter=lfs\n")  # what a Hub clone adds
    verify_serving_folder(str(copy))


# ------------------------------------------------------------------------------------------ 4. requests
@pytest.fixture(scope="module")
def pipe(published):
    return _pipeline(published)


@pytest.fixture(scope="module")
def handler(published):
    return _handler(published)


@pytest.mark.parametrize("inputs, options, says", [
    (None, {}, "inputs must be a request"),
    (5, {}, "inputs must be a request"),
    ("user_1", {}, "inputs must be a request"),
    ({"history": "item"}, {}, '"history" must be a list'),
    ({"history": [None]}, {}, '"history" entries must be raw item ids'),
    ({"user": None}, {}, '"user" must be a raw user id'),
    ({"user": ["a"]}, {}, '"user" must be a raw user id'),
    ({}, {}, "exactly one of"),
    ({"user": "x", "history": []}, {}, "exactly one of"),
    ({"history": [], "top_k": 3}, {}, r"unknown request keys \['top_k'\]"),
    ({"history": [], "exclude_seen": False}, {}, r"unknown request keys \['exclude_seen'\]"),
    ({"history": []}, {"exclude_seen": "false"}, "exclude_seen must be true or false"),
    ({"history": []}, {"top_k": 0}, "top_k must be an integer >= 1"),
    ({"history": []}, {"top_k": True}, "top_k must be an integer >= 1"),
    ({"history": []}, {"top_k": "5"}, "top_k must be an integer >= 1"),
    ({"history": []}, {"batch_size": 0}, "batch_size must be an integer >= 1"),
    ([{"history": []}, 7], {}, "a request is"),
])
def test_bad_requests_are_named_errors(pipe, inputs, options, says):
    with pytest.raises(ValueError, match=says):
        pipe(inputs, **options)


@pytest.mark.parametrize("body, says", [
    (None, "request body must be"),
    ({"input": {}}, "request body must be"),
    ({"inputs": {"history": []}, "params": {}}, r"unknown request body keys \['params'\]"),
    ({"inputs": {"history": []}, "parameters": [1]}, '"parameters" must be an object'),
    ({"inputs": {"history": []}, "parameters": {"batch": 1}}, r"unknown parameters \['batch'\]"),
    ({"inputs": {"history": []}, "parameters": {"exclude_seen": "false"}}, "exclude_seen must be true or false"),
    ({"inputs": "user_1"}, "inputs must be a request"),
])
def test_bad_handler_bodies_are_named_errors(handler, body, says):
    with pytest.raises(ValueError, match=says):
        handler(body)


def test_valid_options_still_work(pipe, handler, published):
    item = json.loads((published / "maps" / "items.json").read_text())[0]
    recs = pipe({"history": [item]}, top_k=4, exclude_seen=False)
    assert len(recs) == 4
    assert handler({"inputs": {"history": [item]}, "parameters": {"top_k": 4, "exclude_seen": False}}) == [recs]


def _random_json(rng: random.Random, ids: list[str], depth: int = 0):
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 3, 10**12, rng.randrange(-5, 50)])
    if kind == 3:
        return rng.choice([0.5, float("nan"), -2.0, 1e308])
    if kind == 4:
        return rng.choice(ids + ["", "false", "user", "\x00", "ü" * 3])
    if kind == 5:
        return rng.choice(ids)
    if kind == 6:
        return [_random_json(rng, ids, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["user", "history", "top_k", "exclude_seen", "inputs", "parameters", "x"]
    return {rng.choice(keys): _random_json(rng, ids, depth + 1) for _ in range(rng.randrange(3))}


def _valid_answer(out, single: bool) -> bool:
    rows = [out] if single else out
    return isinstance(rows, list) and all(
        isinstance(row, list) and all(isinstance(r, dict) and {"item_id", "title", "score"} <= set(r) for r in row)
        for row in rows)


def test_random_json_like_requests_give_an_answer_or_a_named_error(pipe, handler, published):
    """Property-style: 400 seeded random JSON-like requests; each is a valid answer or a ValueError with a message
    (never a TypeError, KeyError or IndexError from the internals)."""
    users = json.loads((published / "maps" / "users.json").read_text())
    items = json.loads((published / "maps" / "items.json").read_text())
    rng = random.Random(0)
    outcomes = {"answer": 0, "error": 0}
    for _ in range(200):
        ids = users[:3] + items[:3]
        request = _random_json(rng, ids)
        if rng.random() < 0.5:
            request = {rng.choice(["user", "history"]): request}
        if rng.random() < 0.3:  # some well-formed ones, so that answers are checked too
            request = rng.choice([{"user": rng.choice(users)}, {"history": rng.sample(items, 2)}])
        options = {k: _random_json(rng, ids) for k in rng.sample(["top_k", "exclude_seen"], rng.randrange(3))}
        if rng.random() < 0.5:
            options = {"top_k": rng.randrange(1, 30), "exclude_seen": rng.random() < 0.5}
        for call, args, single in ((pipe, (request,), isinstance(request, dict)),
                                   (handler, ({"inputs": request, "parameters": options},), False)):
            try:
                out = call(*args, **(options if call is pipe else {}))
            except ValueError as err:
                assert str(err), request
                outcomes["error"] += 1
            else:
                assert _valid_answer(out, single), (request, out)
                outcomes["answer"] += 1
    assert outcomes["answer"] > 10 and outcomes["error"] > 10  # both kinds of outcome were exercised
