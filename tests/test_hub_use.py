"""Hub-native use of a published folder: the canonical prompt, the graph-recommendation pipeline, the endpoint
handler, train.recommend and the model's own recommend agree; the card's snippets run without the package."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from isolation import BLOCK_PACKAGE
from fake_hub_server import BLOCK_REMOTE_HOSTS, client_env, served_hub  # noqa: F401  (the faked Hub over HTTP)
from train.testing import build_tiny_data, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
TOP_K = 10


def _run(data: Path, out: Path):
    from train.config import load_config
    from data_builders.corpus import Corpus
    from train.main import run_pipeline

    overrides = tiny_overrides(data, out, "pretrain.do_pretrain=false", "finetune.epochs=1")
    max_length = json.loads((data / "manifest.json").read_text())["prompts"]["max_length"]
    overrides += [f"data.max_length={max_length}", f"model.n_positions={max(128, max_length)}"]
    cfg = load_config("demo", overrides)
    result = run_pipeline(cfg, command="pytest hub run")
    return cfg, result, Corpus(cfg.data.folder), Path(result["paths"]["hub_model"])


@pytest.fixture(scope="module", params=["synthetic", "musical_instruments"])
def hub(request, tmp_path_factory, shared_data):
    """A published folder from a tiny run: synthetic data, and real Musical Instruments 2014 with a small BPE."""
    root = tmp_path_factory.mktemp(f"hub-{request.param}")
    if request.param == "synthetic":
        data = build_tiny_data(root / "data")
    else:
        from data_builders.__main__ import main as build_main

        data = root / "data"
        rc = build_main(["build", "--source", str(shared_data / "amazon-musical-instruments-2014"), "--out", str(data),
                         "--train-bpe", "800", "--prompts", "content,recommendation", "--max-length", "256", "--quiet"])
        assert rc in (0, None)
    return _run(data, root / "run")


@pytest.fixture(scope="module")
def pipe(hub):
    from transformers import pipeline

    return pipeline("graph-recommendation", model=str(hub[3]), trust_remote_code=True)


def _ids(recs):
    return [[r["item_id"] for r in row] for row in recs]


def test_canonical_prompt_is_the_stored_rows(hub, pipe):
    """The remote-code RecPrompt, the builders' RecPromptEncoder and the pipeline's history for a raw user id give
    exactly the stored evaluation rows (build order); the numpy hop distances equal the collator's."""
    from data_builders.prompts import RecPromptEncoder

    cfg, _, corpus, folder = hub
    rec = pipe.recommender
    assert type(rec).__module__.startswith("transformers_modules")  # the shipped file, not the package
    builders = RecPromptEncoder(corpus.tokenizer, corpus.base_vocab_size, corpus.num_users, corpus.num_items, rec.max_length)
    rows = corpus.rec_examples("validation")
    assert rows
    for ex in rows:
        u, history = rec.resolve({"user": corpus.user_ids[ex.user]})
        assert (u, history) == (ex.user, corpus.train_items()[ex.user])
        remote = rec.prompt.encode(u, history)
        local = builders.encode(u, history)
        assert remote["input_ids"].tolist() == local["input_ids"].tolist() == ex.input_ids
        assert remote["node_positions"].tolist() == local["node_positions"].tolist() == ex.node_positions
    batch = rows[:32]
    ids, pos, mask = rec.collate([{"input_ids": np.array(r.input_ids), "node_positions": np.array(r.node_positions)} for r in batch])
    expected = corpus.collator(rec.max_length)([{"input_ids": r.input_ids, "node_positions": r.node_positions} for r in batch])
    assert ids.tolist() == expected["input_ids"].tolist() and mask.tolist() == expected["attention_mask"].tolist()
    assert rec.graph.pairwise(pos).tolist() == expected["hop_distances"].tolist()  # hop table
    bfs = type(rec.graph)(np.load(folder / "graph" / "train_edges.npy"), corpus.num_users, corpus.num_items, corpus.max_hops)
    assert bfs.pairwise(pos).tolist() == expected["hop_distances"].tolist()  # numpy BFS, no table
    lo = corpus.hops.leave_user_out(corpus.hops.pairwise(pos), pos)
    assert bfs.leave_user_out(bfs.pairwise(pos), pos, rec.train_items).tolist() == lo.astype(np.int64).tolist()


def test_pipeline_handler_recommend_and_model_agree(hub, pipe):
    """Same users and histories -> same items in the same order from all four entry points."""
    from train.recommend import Recommender

    cfg, _, corpus, folder = hub
    sys.path.insert(0, str(folder))
    try:
        from handler import EndpointHandler
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("handler", None)
    handler = EndpointHandler(str(folder))
    local = Recommender.from_folder(folder)
    item_ids = corpus.item_ids

    # known users: every user of the validation split
    rows = corpus.rec_examples("validation")
    users = [ex.user for ex in rows]
    requests = [{"user": corpus.user_ids[u]} for u in users]
    by_pipe = _ids(pipe(requests, top_k=TOP_K))
    by_handler = _ids(handler({"inputs": requests, "parameters": {"top_k": TOP_K}}))
    by_recommend = [[item_ids[j] for j, _ in r] for r in local.recommend_users(users, TOP_K)]
    model = local.model
    batch = corpus.collator(local.max_length)([{"input_ids": ex.input_ids, "node_positions": ex.node_positions} for ex in rows])
    out = model.recommend(batch["input_ids"], attention_mask=batch["attention_mask"], hop_distances=batch.get("hop_distances"),
                          k=TOP_K, exclude_items=[corpus.train_items()[u] for u in users])
    by_model = [[item_ids[j] for j in r] for r in out.items.tolist()]  # evaluation's prompts (stored rows)
    assert by_pipe == by_handler == by_recommend == by_model
    seen = [set(item_ids[j] for j in corpus.train_items()[u]) for u in users]
    assert all(not (set(r) & s) for r, s in zip(by_pipe, seen))  # exclude_seen
    # exclude_seen=False may return seen items and ranks by the raw scores
    raw = pipe(requests[:3], top_k=corpus.num_items, exclude_seen=False)
    assert all(len(r) == corpus.num_items for r in raw)

    # new users: raw item ids, and the same history by exact (unique) titles
    titles = corpus.item_titles()
    histories = [corpus.train_items()[u][:3] for u in users[:8]]
    unique_title = {t for t in titles if titles.count(t) == 1}
    by_pipe = _ids(pipe([{"history": [item_ids[j] for j in h]} for h in histories], top_k=TOP_K))
    by_handler = _ids(handler({"inputs": [{"history": [item_ids[j] for j in h]} for h in histories], "parameters": {"top_k": TOP_K}}))
    by_recommend = [[item_ids[j] for j, _ in local.recommend_history(h, TOP_K)] for h in histories]
    assert by_pipe == by_handler == by_recommend
    titled = [h for h in histories if all(titles[j] in unique_title for j in h)]
    assert titled
    assert _ids(pipe([{"history": [titles[j] for j in h]} for h in titled], top_k=TOP_K)) == \
        [by_pipe[histories.index(h)] for h in titled]


def test_the_published_test_metrics_are_the_pipelines_answers(hub, pipe):
    """Recall@20, Recall@40 and NDCG@100 recomputed from what the shipped pipeline answers each test user (raw ids
    in, raw ids out) equal the metrics.json the folder was published with: serving ranks as evaluation did."""
    from train.metrics import per_user_metrics, summarize

    _, _, corpus, folder = hub
    published = json.loads((folder / "metrics.json").read_text())["test"]
    examples = corpus.rec_examples("test")
    answers = pipe([{"user": corpus.user_ids[ex.user]} for ex in examples], top_k=100)
    index = {raw: j for j, raw in enumerate(corpus.item_ids)}
    # the answers as a score matrix whose top 100 is the pipeline's ranking (every other item below)
    scores = np.zeros((len(examples), corpus.num_items))
    for row, answer in enumerate(answers):
        assert all(r.get("source") is None for r in answer)  # ranked by the model, not a popularity fallback
        for rank, r in enumerate(answer):
            scores[row, index[r["item_id"]]] = 200 - rank
    mine = summarize(per_user_metrics(scores, [ex.targets for ex in examples], None, (20, 40), (100,)))
    for key in ("recall@20", "recall@40", "ndcg@100"):
        assert mine[key] == pytest.approx(published[key], abs=1e-9), key


def test_pipeline_errors_and_popularity_fallback(hub, pipe):
    cfg, _, corpus, folder = hub
    with pytest.raises(ValueError, match="unknown user id 'nobody'"):
        pipe({"user": "nobody"})
    with pytest.raises(ValueError, match=r"unknown item ids or titles \['nope', 'gone'\]"):
        pipe({"history": [corpus.item_ids[0], "nope", "gone"]})
    with pytest.raises(ValueError, match="top_k"):
        pipe({"user": corpus.user_ids[0]}, top_k=0)
    recs = pipe({"history": []}, top_k=5)
    counts = np.bincount(np.load(folder / "graph" / "train_edges.npy")[:, 1], minlength=corpus.num_items)
    assert [r["source"] for r in recs] == ["popularity"] * 5
    assert [r["score"] for r in recs] == sorted(counts.tolist(), reverse=True)[:5]
    assert "source" not in pipe({"user": corpus.user_ids[0]}, top_k=2)[0]


def _card_snippets(readme: str) -> list[str]:
    section = readme.split("## How to use", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.mark.parametrize("hub", ["synthetic"], indirect=True)  # one folder is enough: the snippets are templated
def test_card_snippets_run_verbatim_without_the_package(hub, pipe, served_hub, tmp_path):  # noqa: F811
    """Publish for repo "org/graphgpt2-hub", push to the faked Hub, run every "How to use" snippet of the
    README in a process that cannot import this package and reaches the repo only over HTTP (HF_ENDPOINT = the
    fake Hub's server, empty caches); each prints the pipeline's items for the example."""
    from train.publish import publish, push_folder

    cfg, result, corpus, folder = hub
    out = publish(cfg, corpus, Path(result["paths"]["best_model"]), tmp_path / "hub", result,
                  repo_id="org/graphgpt2-hub", dataset_repo="org/graphgpt2-hub-data")
    push_folder(out, "org/graphgpt2-hub")
    readme = (out / "README.md").read_text()
    assert "datasets/org/graphgpt2-hub-data" in readme
    snippets = _card_snippets(readme)
    assert len(snippets) == 3 and "pipeline(" in snippets[0] and "EndpointHandler" in snippets[1] and "AutoModel" in snippets[2]
    example_user = re.search(r'\{"user": "([^"]+)"\}', snippets[0]).group(1)
    expected = pipe({"user": example_user}, top_k=5)
    env = dict(os.environ, **client_env(served_hub.url, tmp_path / "snippet-hf-home"), OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    marker = "\n# ---- next snippet ----\n"
    script = marker.join(code + f"print({marker.strip()!r})\n" for code in snippets)  # one process: one torch import
    proc = subprocess.run([sys.executable, "-I", "-c", BLOCK_PACKAGE + BLOCK_REMOTE_HOSTS + script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = [o.strip() for o in proc.stdout.split(marker.strip())][:3]
    want = [r["item_id"] for r in expected]
    for printed in outputs[:2]:
        assert re.findall(r"'item_id': '([^']+)'", printed.splitlines()[0]) == want
    assert "popularity" in outputs[0]
    # the card's bare-model path (AutoModel + AutoTokenizer + GraphRecommender) gives the pipeline's answer
    assert re.findall(r"'item_id': '([^']+)'", outputs[2].splitlines()[-1]) == want
    fetched = {path.rsplit("/", 1)[1] for method, path, status in served_hub.requests
               if method == "GET" and status == 200 and path.startswith("/org/graphgpt2-hub/resolve/")}
    assert {"config.json", "model.safetensors", "pipeline_graphgpt2.py", "handler.py", "folder_layout.py",
            "tokenizer.json"} <= fetched
    # the serving files (graph, maps, settings) come from one resolved commit, never from a moving "main"
    serving = [path for method, path, status in served_hub.requests if method == "GET" and status == 200
               and path.startswith("/org/graphgpt2-hub/resolve/") and ("/graph/" in path or "/maps/" in path)]
    assert serving and all(re.match(r"/org/graphgpt2-hub/resolve/[0-9a-f]{40}/", p) for p in serving), serving


@pytest.mark.parametrize("hub", ["synthetic"], indirect=True)
def test_push_dataset_to_hub_with_card(hub, served_hub, tmp_path):  # noqa: F811
    """`train.publish --push-to-hub M --push-dataset-to-hub D`, then over HTTP from the faked Hub: the dataset
    repo has a card with configs, counts, split hashes and a licence note, `datasets.load_dataset(D,
    "recommendation")` BY REPO ID gives the dataset folder's rows, and the model card links it."""
    import datasets
    from huggingface_hub import ModelCard, hf_hub_download

    from train.publish import main as publish_main

    cfg, _, corpus, _ = hub
    cfg.save(tmp_path / "run.yaml")
    assert publish_main(["--config", str(tmp_path / "run.yaml"), "--push-to-hub", "org/graphgpt2-m",
                         "--push-dataset-to-hub", "org/graphgpt2-d", "--out", str(tmp_path / "hub_model")]) == 0
    assert [(r, t) for r, t, *_ in served_hub.calls["upload_folder"]] == [("org/graphgpt2-m", "model"), ("org/graphgpt2-d", "dataset")]
    model_card = ModelCard.load(hf_hub_download("org/graphgpt2-m", "README.md"))
    assert model_card.data.datasets == ["org/graphgpt2-d"] and "huggingface.co/datasets/org/graphgpt2-d" in model_card.text
    card = Path(hf_hub_download("org/graphgpt2-d", "README.md", repo_type="dataset")).read_text()
    split = corpus.manifest["split"]
    assert all(h in card for h in split["split_hashes"].values())
    assert f"| recommendation | validation | {corpus.manifest['rows']['recommendation']['validation']:,} |" in card
    assert "`node_positions`" in card and "## Licence" in card

    rec = datasets.load_dataset("org/graphgpt2-d", "recommendation")
    assert set(rec) == {"train", "validation", "test"}
    stored = corpus.dataset("recommendation", "validation")
    assert rec["validation"]["input_ids"] == stored["input_ids"] and rec["validation"]["targets"] == stored["targets"]
    # the rows came over HTTP: every recommendation shard was downloaded from the server by the pushed commit
    sha = (served_hub.store / "datasets--org--graphgpt2-d" / "refs" / "main").read_text()
    shards = {p.relative_to(corpus.folder).as_posix() for p in (corpus.folder / "recommendation").glob("*.parquet")}
    fetched = {path.split(f"/resolve/{sha}/", 1)[1] for method, path, status in served_hub.requests
               if method == "GET" and status == 200 and path.startswith(f"/datasets/org/graphgpt2-d/resolve/{sha}/")}
    assert shards and shards <= fetched
    assert (corpus.folder / "README.md").read_text() != card  # the dataset folder itself is untouched


@pytest.mark.parametrize("hub", ["synthetic"], indirect=True)
def test_published_tokenizer_is_a_standard_fast_tokenizer(hub):
    """No auto_map / load-time flags in tokenizer_config.json; PreTrainedTokenizerFast (which never reads
    config.json, so never asks about remote code) gives the dataset tokenizer's ids."""
    from transformers import PreTrainedTokenizerFast

    cfg, _, corpus, folder = hub
    conf = json.loads((folder / "tokenizer_config.json").read_text())
    assert not {"auto_map", "is_local", "local_files_only"} & set(conf)
    tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
    text = "user_3 has interacted with item_1 item_7, user_3 will interact with"
    assert tok(text)["input_ids"] == corpus.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(tok) == len(corpus.tokenizer)
