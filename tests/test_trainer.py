"""The trainer's contract (train/trainer.py): the selected epoch is the argmax of the validation metric (ties keep
the earlier), patience stops training, test is evaluated once with the selected model, the optimiser's learning
rates and weight-decay groups are what the config says, and a resume on another split is refused before training."""
import json

import pytest
import torch

from train.testing import build_tiny_data, tiny_overrides
from train.trainer import Trainer


def _scripted_fit(values, patience=0, epochs=None):
    """Fit a 1-parameter model for len(values) epochs; epoch e validates to values[e]."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), selection_metric="recall@20",
                      patience=patience, progress=False)
    best_calls, seen = [], []

    def loss(net, batch, epoch):
        seen.append(epoch)
        return net(batch).pow(2).mean()

    fit = trainer.fit(epochs or len(values), lambda epoch: [torch.ones(3, 2)] * 2, loss,
                      validate=lambda epoch: {"recall@20": values[epoch], "ndcg@100": 0.0},
                      on_best=best_calls.append)
    return fit, best_calls, sorted(set(seen))


@pytest.mark.parametrize(
    "values, best",
    [([0.1, 0.3, 0.2, 0.25], 1), ([0.2, 0.4, 0.4, 0.1], 1), ([0.5, 0.5, 0.5], 0), ([0.1, 0.2, 0.3], 2)],
)
def test_selected_epoch_is_argmax_ties_keep_earlier(values, best):
    fit, best_calls, ran = _scripted_fit(values)
    assert fit.best_epoch == best and fit.best_value == values[best]
    assert best_calls[-1] == best  # on_best saw the selected epoch last
    assert [h["recall@20"] for h in fit.history] == values and ran == list(range(len(values)))
    assert not fit.stopped_early


def test_patience_stops_training():
    fit, best_calls, ran = _scripted_fit([0.3, 0.5, 0.4, 0.45, 0.9, 1.0], patience=2)
    assert ran == [0, 1, 2, 3] and fit.stopped_early  # epochs 2 and 3 brought nothing after epoch 1
    assert fit.best_epoch == 1 and best_calls == [0, 1] and len(fit.epoch_losses) == 4
    fit, _, ran = _scripted_fit([0.3, 0.5, 0.4, 0.45, 0.9, 1.0], patience=0)
    assert ran == list(range(6)) and fit.best_epoch == 5 and not fit.stopped_early


def test_unvalidated_epochs_are_not_selected():
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), selection_metric="m", progress=False)
    fit = trainer.fit(4, lambda e: [torch.ones(1, 2)], lambda net, b, e: net(b).sum(),
                      validate=lambda e: {"m": float(-e)} if e % 2 else None)
    assert [h["epoch"] for h in fit.history] == [1, 3] and fit.best_epoch == 1


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_tiny_data(tmp_path_factory.mktemp("trainer") / "tiny")


def test_test_is_evaluated_once_with_the_selected_model(tiny_data, tmp_path, monkeypatch):
    """Validation is scripted so that epoch 0 wins; test must be scored once, by epoch 0's weights."""
    import train.finetune as finetune_mod
    from train.config import load_config

    real_evaluate = finetune_mod.evaluate_model
    calls, snapshots = [], {}
    scripted = iter([0.9, 0.1, 0.2])  # validation recall@20 of epochs 0, 1, 2

    def spy(accelerator, model, corpus, split, cfg):
        net = accelerator.unwrap_model(model)
        weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
        calls.append((split, weights))
        metrics = real_evaluate(accelerator, model, corpus, split, cfg)
        if split == "validation" and len(snapshots) < 3:
            snapshots[len(snapshots)] = weights
            metrics = {**metrics, "recall@20": next(scripted)}
        return metrics

    monkeypatch.setattr(finetune_mod, "evaluate_model", spy)
    cfg = load_config("demo", tiny_overrides(tiny_data, tmp_path, "pretrain.do_pretrain=false", "finetune.epochs=3"))
    result = finetune_mod.finetune(cfg)
    assert result.best_epoch == 0 and [h["recall@20"] for h in result.history] == [0.9, 0.1, 0.2]
    tests = [w for split, w in calls if split == "test"]
    assert len(tests) == 1
    assert all(torch.equal(tests[0][k], snapshots[0][k]) for k in snapshots[0])
    assert not all(torch.equal(tests[0][k], snapshots[2][k]) for k in snapshots[2])  # not simply the last epoch


def test_learning_rates_and_weight_decay_groups_follow_the_config(tiny_data):
    from train.common import build_model, make_optimizer
    from train.config import load_config
    from data_builders.corpus import Corpus

    cfg = load_config("demo", tiny_overrides(tiny_data, "unused", "finetune.lr_id=0.02", "finetune.lr_backbone=0.003",
                                             "finetune.weight_decay=0.05", "model.graph_bias=learned"))
    model = build_model(cfg, Corpus(tiny_data))
    groups = {g["name"]: g for g in make_optimizer(model, cfg.finetune).param_groups}
    assert (groups["id_embeddings"]["lr"], groups["id_embeddings"]["weight_decay"]) == (0.02, 0.0)
    assert (groups["backbone_decay"]["lr"], groups["backbone_decay"]["weight_decay"]) == (0.003, 0.05)
    assert (groups["backbone_no_decay"]["lr"], groups["backbone_no_decay"]["weight_decay"]) == (0.003, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    by_group = {k: {names[id(p)] for p in g["params"]} for k, g in groups.items()}
    assert by_group["id_embeddings"] == {n for n in names.values() if n.startswith(("content_embeddings.", "collab_embeddings."))
                                         or ".graph_bias." in n}
    assert by_group["backbone_decay"] == {n for n, p in model.named_parameters() if p.ndim == 2 and n.startswith("transformer.h.")
                                          and ".graph_bias." not in n}
    assert "transformer.wte.weight" in by_group["backbone_no_decay"] and "transformer.wpe.weight" in by_group["backbone_no_decay"]
    assert set().union(*by_group.values()) == set(names.values())  # every parameter once (lm_head is tied to wte)
    assert sum(len(g["params"]) for g in groups.values()) == len(names)


def test_resume_on_another_split_fails_before_training(tiny_data, tmp_path):
    from train.checkpointing import CheckpointMismatchError
    from train.config import load_config
    from train.finetune import finetune

    other = build_tiny_data(tmp_path / "other", seed=1)  # same synthetic shop, another split
    a = json.loads((tiny_data / "manifest.json").read_text())
    b = json.loads((other / "manifest.json").read_text())
    assert a["split"]["split_hash"] != b["split"]["split_hash"]
    out = tmp_path / "run"
    finetune(load_config("demo", tiny_overrides(tiny_data, out, "pretrain.do_pretrain=false", "finetune.epochs=1")))
    log_before = (out / "logs" / "train_log.jsonl").read_text()
    ckpt = sorted((out / "checkpoints" / "finetune").iterdir())
    cfg = load_config("demo", tiny_overrides(other, out, "pretrain.do_pretrain=false", "finetune.epochs=2"))
    with pytest.raises(CheckpointMismatchError, match="split_hash"):
        finetune(cfg, resume=True)
    assert (out / "logs" / "train_log.jsonl").read_text() == log_before  # not one step was trained
    assert sorted((out / "checkpoints" / "finetune").iterdir()) == ckpt


def test_graphgpt2_learns_and_beats_popularity(tmp_path):
    """A learning test on a small embedded synthetic shop (150 users, 80 items; demo preset, one layer of 64, no
    pre-training, 6 epochs, seed 0): the training loss falls, and test Recall@20 beats popularity by >= 0.1
    (measured: 0.603 vs 0.360)."""
    from train.config import load_config
    from train.main import run_pipeline

    data = build_tiny_data(tmp_path / "shop", users=150, items=80)
    cfg = load_config("demo", tiny_overrides(data, tmp_path / "run", "pretrain.do_pretrain=false", "finetune.epochs=6",
                                             "finetune.lr_id=3e-3", "finetune.lr_backbone=1e-3", "model.n_embd=64",
                                             "model.n_head=4", "finetune.batch_size=16"))
    result = run_pipeline(cfg)
    assert result["test"]["recall@20"] >= result["popularity_test"]["recall@20"] + 0.1
    assert result["test"]["ndcg@100"] > result["popularity_test"]["ndcg@100"]
    log = [json.loads(l) for l in (tmp_path / "run" / "logs" / "train_log.jsonl").read_text().splitlines()]
    losses = {}
    for r in log:
        if r["stage"] == "finetune" and "loss" in r:
            losses.setdefault(r["epoch"], []).append(r["loss"])
    first, last = (sum(losses[e]) / len(losses[e]) for e in (0, 5))
    assert last < 0.95 * first


def test_the_stage_time_estimate_counts_every_epoch(capsys):
    """Printed once, after the first steps, with the steps of every remaining epoch (epochs may differ in length)."""
    model = torch.nn.Linear(2, 1)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), stage="pretrain", progress=False)
    lengths = [20, 5, 5]
    trainer.fit(3, lambda epoch: [torch.ones(3, 2)] * lengths[epoch], lambda net, batch, epoch: net(batch).pow(2).mean(),
                epoch_steps=lengths)
    lines = [line for line in capsys.readouterr().out.splitlines() if "s/step" in line]
    assert len(lines) == 1 and lines[0].startswith("pre-training: 30 steps in 3 epoch(s), about ")


@pytest.mark.parametrize("budget, epoch_steps, expected", [(0, 350, 8), (800, 350, 3), (800, 304, 3), (800, 22, 8),
                                                            (900, 900, 1), (1, 5000, 1)])
def test_step_budget_caps_the_epochs_in_whole_epochs(budget, epoch_steps, expected):
    from train.config import FinetuneConfig
    from train.finetune import planned_epochs

    assert planned_epochs(FinetuneConfig(epochs=8, step_budget=budget), epoch_steps) == expected


def test_step_budget_shortens_training_and_its_decay(tiny_data, tmp_path, capsys):
    """Under a step budget the run trains the planned epochs only, and the learning rate decays to 0 at their end."""
    from train import finetune as finetune_mod
    from train.config import load_config

    epoch_steps = -(-finetune_mod.Corpus(tiny_data).num_rows("recommendation", "train") // 4)
    budget = epoch_steps + 1  # one step into the second epoch: two whole epochs
    cfg = load_config("demo", tiny_overrides(tiny_data, tmp_path, "pretrain.do_pretrain=false", "finetune.epochs=5",
                                             "finetune.batch_size=4", "finetune.patience=0", f"finetune.step_budget={budget}"))
    result = finetune_mod.finetune(cfg)
    assert result.epochs == 2 and len(result.history) == 2 and result.steps == 2 * epoch_steps
    assert f"finetune.step_budget={budget} caps finetune.epochs=5 at 2 epoch(s)" in capsys.readouterr().out
    assert json.loads((tmp_path / "finetune_result.json").read_text())["epochs"] == 2
    lrs = [json.loads(line).get("lr_id") for line in (tmp_path / "logs" / "train_log.jsonl").read_text().splitlines()]
    assert [lr for lr in lrs if lr is not None][-1] < 0.1 * cfg.finetune.lr_id


def test_one_planned_epoch_is_not_validated_twice(tiny_data, tmp_path, capsys):
    """With one planned epoch there is nothing to choose: no validation pass after it (at 200k users one pass is
    most of an hour); the trained model is the selected one, and the selection's pass gives its validation metrics."""
    from accelerate import Accelerator

    from train import finetune as finetune_mod
    from train.config import load_config
    from train.evaluate import evaluate_model
    from train.modeling_io import load_model

    cfg = load_config("demo", tiny_overrides(tiny_data, tmp_path, "pretrain.do_pretrain=false", "finetune.epochs=1",
                                             "finetune.batch_size=4", "finetune.residual_scale_grid=[]"))
    calls = []
    real = finetune_mod.evaluate_model
    finetune_mod.evaluate_model = lambda *a, **k: calls.append(a[3]) or real(*a, **k)
    try:
        result = finetune_mod.finetune(cfg)
    finally:
        finetune_mod.evaluate_model = real
    assert calls == ["validation", "test"]  # the selection's validation and the test, nothing after the epoch
    assert result.history == [] and result.best_epoch == 0 and result.steps > 0
    assert "one planned epoch: no validation pass after it" in capsys.readouterr().out
    events = [json.loads(line).get("event") for line in (tmp_path / "logs" / "train_log.jsonl").read_text().splitlines()]
    assert "validation" not in events
    again = evaluate_model(Accelerator(cpu=True), load_model(tmp_path / "best").eval(), finetune_mod.Corpus(tiny_data), "validation", cfg)
    assert again["recall@20"] == pytest.approx(result.validation["recall@20"])  # best/ holds the trained model
