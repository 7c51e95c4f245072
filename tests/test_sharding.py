"""Several processes: each rank reads only its contiguous shard of the rows (Corpus.dataset(rows=...)), the ranks'
shards cover every row exactly once, fine-tuning masks and orders a shard's rows as the one-process run does, and a
two-process run's metrics equal one process's evaluation of the same model."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from data_builders.corpus import Corpus, shard_rows
from data_builders.folder import build_dataset_folder
from data_builders.preprocess import build_split
from data_builders.synthetic import make_synthetic
from train.common import rank_loader, shard_order, steps_per_epoch
from train.testing import build_tiny_data, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
ROW_CONFIGS = {("recommendation", "train"), ("recommendation", "validation"), ("recommendation", "test"),
               ("content", "train"), ("second_order", "train"), ("interactions", "train")}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_tiny_data(tmp_path_factory.mktemp("sharddata") / "tiny")


@pytest.mark.parametrize("num_rows,world", [(41, 1), (41, 2), (41, 3), (40, 4), (7, 7)])
def test_shard_rows_split_like_datasets_shard(num_rows, world):
    import datasets

    ds = datasets.Dataset.from_dict({"i": list(range(num_rows))})
    shards = [shard_rows(num_rows, r, world) for r in range(world)]
    assert [list(s) for s in shards] == [ds.shard(world, r, contiguous=True)["i"] for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(num_rows))


def test_row_ranges_read_only_the_files_holding_them(tmp_path, gpt2_tokenizer_dir):
    """A folder written 7 rows per Parquet file: every shard equals the same slice of the whole split, across file
    boundaries, and chunked iteration gives the same examples."""
    split = build_split(make_synthetic(num_users=60, num_items=40))
    folder = build_dataset_folder(split, tmp_path / "multi", tokenizer_source=gpt2_tokenizer_dir, rows_per_shard=7).folder
    corpus = Corpus(folder)
    files = corpus.manifest["data_files"]["recommendation"]["test"]
    assert len(files) > 3
    whole = corpus.dataset("recommendation", "test").to_list()
    assert corpus.num_rows("recommendation", "test") == len(whole)
    for world in (2, 3, 7):
        parts = [corpus.dataset("recommendation", "test", rows=shard_rows(len(whole), r, world)).to_list() for r in range(world)]
        assert [row for part in parts for row in part] == whole
    examples = corpus.rec_examples("test")
    chunked = [ex for chunk in corpus.iter_rec_examples("test", range(5, len(whole) - 2), chunk_rows=3) for ex in chunk]
    assert [ex.row for ex in chunked] == list(range(5, len(whole) - 2))
    for a, b in zip(examples[5:], chunked):
        assert (a.user, a.input_ids, a.history, a.targets) == (b.user, b.input_ids, b.history, b.targets)
        assert np.array_equal(a.pair_hops, b.pair_hops)
    assert corpus.dataset("content", "train", columns=["input_ids"]).column_names == ["input_ids"]


def test_a_build_in_several_processes_is_the_one_process_build(tmp_path, gpt2_tokenizer_dir):
    """``num_proc`` processes writing the prompt shards (pair hops included) give the one-process folder: the same
    shard files, row for row, and the same manifest but for the stage times."""
    import pyarrow.parquet as pq

    split = build_split(make_synthetic(num_users=60, num_items=40))
    folders = {n: build_dataset_folder(split, tmp_path / f"proc{n}", tokenizer_source=gpt2_tokenizer_dir, rows_per_shard=7,
                                       num_proc=n).folder for n in (1, 3)}
    manifests = {n: json.loads((folders[n] / "manifest.json").read_text()) for n in folders}
    for manifest in manifests.values():
        manifest.pop("build_seconds")
    assert manifests[1] == manifests[3]
    shards = [rel for config in manifests[1]["data_files"].values() for files in config.values() for rel in files]
    assert len(manifests[1]["data_files"]["interactions"]["train"]) > 3  # several chunks in flight at once
    for rel in shards:
        one, several = pq.read_table(folders[1] / rel), pq.read_table(folders[3] / rel)
        assert one.num_rows and one.equals(several), rel
    assert sorted(p.name for p in folders[1].rglob("*")) == sorted(p.name for p in folders[3].rglob("*"))


@pytest.mark.parametrize("world", [2, 3])
def test_masked_prompts_of_the_shards_are_the_one_process_epoch(tiny_data, world):
    """Every rank builds prompts for its rows only; together they are the one-process epoch, row for row (same
    masks), and each rank meets its rows in the one-process order."""
    from train.finetune import masked_prompts, train_target_lengths

    corpus = Corpus(tiny_data)
    lengths = train_target_lengths(corpus)
    examples = corpus.rec_examples("train")
    whole = masked_prompts(corpus, examples, 0.2, seed=3, epoch=1, max_length=96)
    assert masked_prompts(corpus, examples, 0.2, seed=3, epoch=1, max_length=96, target_lengths=lengths) == whole
    key = lambda p: (tuple(p["input_ids"]), tuple(p["targets"]))  # noqa: E731
    position = {key(p): k for k, p in enumerate(whole)}
    seen = []
    for rank in range(world):
        mine = corpus.rec_examples("train", shard_rows(len(examples), rank, world))
        part = masked_prompts(corpus, mine, 0.2, seed=3, epoch=1, max_length=96, target_lengths=lengths)
        assert len(part) == len(mine) < len(examples)
        places = [position[key(p)] for p in part]
        assert places == sorted(places)  # the one-process order, restricted to the shard
        seen += places
    assert sorted(seen) == list(range(len(whole)))


@pytest.mark.parametrize("num_rows,batch_size,world", [(41, 8, 2), (41, 8, 3), (40, 5, 3), (17, 4, 4)])
def test_rank_loaders_run_as_many_batches_and_cover_every_row(num_rows, batch_size, world):
    """Uneven shards: every rank runs steps_per_epoch batches (DDP steps in lock-step); padding repeats a rank's
    own first row only, so every row is trained once and at most world - 1 rows twice."""
    order = np.random.default_rng(0).permutation(num_rows)
    steps = steps_per_epoch(num_rows, batch_size, world)
    trained = []
    for rank in range(world):
        acc = SimpleNamespace(process_index=rank, num_processes=world, device=torch.device("cpu"))
        rows = shard_rows(num_rows, rank, world)
        mine = [int(rows.start + i) for i in shard_order(order, rows)]
        batches = list(rank_loader(acc, mine, batch_size, lambda b: torch.tensor(b), steps))
        assert len(batches) == steps
        got = torch.cat(batches).tolist()
        assert got[:len(mine)] == mine and set(got) == set(rows)
        trained += got
    assert set(trained) == set(range(num_rows)) and len(trained) - num_rows < world


RUN_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from accelerate import PartialState
    from data_builders.corpus import Corpus
    from train.config import load_config
    from train.finetune import finetune
    from train.pretrain import pretrain

    class RecordingCorpus(Corpus):
        '''Records the rows of every block this process reads from the dataset folder's Parquet files.'''
        def _row_tables(self, config, split, rows, columns):
            for first, table in super()._row_tables(config, split, rows, columns):
                self.reads.append([config, split, list(range(first, first + table.num_rows)), columns])
                yield first, table

        def iter_rec_examples(self, split, rows=None, chunk_rows=4096):
            for chunk in super().iter_rec_examples(split, rows, chunk_rows):
                self.reads.append(["recommendation", split, [ex.row for ex in chunk], None])
                yield chunk

    cfg = load_config("demo", sys.argv[1:])
    corpus = RecordingCorpus(cfg.data.folder, cfg.data.leave_user_out_hops)
    corpus.reads = []
    pretrain(cfg, corpus=corpus)
    finetune(cfg, corpus=corpus)
    state = PartialState()
    Path(cfg.output.dir, f"reads_rank{state.process_index}.json").write_text(json.dumps(corpus.reads))
    state.destroy_process_group()  # a gloo group left to interpreter teardown once aborted a rank (SIGABRT)
""")


def test_two_processes_read_disjoint_shards_and_match_one_process_metrics(tiny_data, tmp_path):
    out = tmp_path / "run2"
    script = tmp_path / "run_recording.py"
    script.write_text(RUN_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", ACCELERATE_USE_CPU="1")
    env.pop("GRAPHGPT2_KILL_AFTER_STEP", None)
    # `--cpu --num_processes 2` starts one process; multi_gpu + ACCELERATE_USE_CPU=1 gives two gloo ranks on CPU
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(script),
           *tiny_overrides(tiny_data, out, "finetune.epochs=1", "pretrain.rounds=1", "pretrain.content_epochs=1")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-4000:]

    # (a) what each rank read: disjoint row sets whose union is every row of every config it trained or scored on
    corpus = Corpus(tiny_data)
    per_rank = []
    for rank in (0, 1):
        reads = json.loads((out / f"reads_rank{rank}.json").read_text())
        rows: dict = {}
        for config, split, read, columns in reads:
            if columns == ["targets"]:
                continue  # the fine-tuning mask replay reads every row's target count (one column), by design
            rows.setdefault((config, split), set()).update(read)
        per_rank.append(rows)
    assert set(per_rank[0]) | set(per_rank[1]) == ROW_CONFIGS
    for key in ROW_CONFIGS:
        a, b = per_rank[0].get(key, set()), per_rank[1].get(key, set())
        assert not a & b and a | b == set(range(corpus.num_rows(*key))), key
    content_rows = corpus.num_rows("content") + corpus.num_rows("second_order")
    for rank in (0, 1):  # each task is sharded over its configs' rows one after another
        got = sum(len(per_rank[rank].get((c, "train"), ())) for c in ("content", "second_order"))
        assert got == len(shard_rows(content_rows, rank, 2)) < content_rows
        for split in ("train", "validation", "test"):
            n = corpus.num_rows("recommendation", split)
            assert len(per_rank[rank][("recommendation", split)]) == len(shard_rows(n, rank, 2)) < n

    # (b) the test/validation metrics of the 2-process run equal one process evaluating the same model
    from accelerate import Accelerator

    from train.config import load_config
    from train.evaluate import evaluate_model
    from train.modeling_io import load_model

    result = json.loads((out / "finetune_result.json").read_text())
    cfg = load_config("demo", tiny_overrides(tiny_data, out))
    model = load_model(out / "best").eval()
    acc = Accelerator(cpu=True)
    for split in ("test", "validation"):
        one = evaluate_model(acc, model, corpus, split, cfg)
        if split == "test":
            assert result["test_users"] == sorted(one["users"])
        two = result[split]
        assert set(two) == set(one) - {"users"}
        for key, value in two.items():
            if isinstance(value, float):
                assert value == pytest.approx(one[key], abs=1e-6), (split, key)
            else:
                assert value == one[key], (split, key)
        assert one["num_users"] == corpus.num_rows("recommendation", split)


def test_popularity_baseline_streams_users_with_the_one_shot_metrics(tiny_data):
    """Blocks of a few users at a time give the metrics of scoring the whole users x items matrix at once."""
    from train.config import load_config
    from train.evaluate import popularity_metrics
    from train.metrics import evaluate_scores, item_popularity

    corpus = Corpus(tiny_data)
    cfg = load_config("demo", [f"data.folder={tiny_data}"])
    examples = corpus.rec_examples("test")
    counts = item_popularity(corpus.interaction_matrix("train"))
    want = evaluate_scores(np.tile(counts, (len(examples), 1)), [np.array(e.targets) for e in examples],
                           [np.array(corpus.train_items()[e.user]) for e in examples])
    for batch in (7, 1 << 16):  # 7 users per batch; everyone in one batch
        cfg.eval.batch_size = batch
        assert popularity_metrics(corpus, "test", cfg) == want
