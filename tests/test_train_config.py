"""RunConfig: presets, dotted overrides, clear errors for unknown keys and wrong types."""
import pytest

from train.config import ConfigError, PRESETS, config_from_dict, load_config, parse_overrides
from train.pretrain import pretrain_plan


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load_and_round_trip(preset):
    cfg = load_config(preset)
    assert cfg.preset == preset
    assert config_from_dict(cfg.to_dict()) == cfg


def test_paper_and_released_schedules():
    paper, released = load_config("paper"), load_config("released")
    plan = pretrain_plan(paper.pretrain)
    assert plan[:10] == ["content"] * 10 and plan.count("collab") == 100 and plan.count("content") == 110
    assert (paper.finetune.epochs, released.finetune.epochs) == (50, 200)
    rplan = pretrain_plan(released.pretrain)
    # 3 warm-up content epochs, content again only after collab rounds 50 and 100
    assert rplan.count("content") == 5 and rplan.count("collab") == 100
    assert rplan[3 + 50] == "content" and rplan[-1] == "content"


def test_overrides_typed_and_nested():
    cfg = load_config("demo", ["pretrain.rounds=7", "model.graph_bias=exp", "finetune.lr_id=1e-2",
                               "data.pretrain_configs=[review]", "model.init_from=null", "pretrain.weight_decay=1"])
    assert cfg.pretrain.rounds == 7 and cfg.model.graph_bias == "exp" and cfg.finetune.lr_id == 0.01
    assert cfg.data.pretrain_configs == ["review"] and cfg.model.init_from is None
    assert cfg.pretrain.weight_decay == 1.0 and isinstance(cfg.pretrain.weight_decay, float)
    assert parse_overrides(["a.b=1", "a.c=x"]) == {"a": {"b": 1, "c": "x"}}


@pytest.mark.parametrize(
    "override, message",
    [
        ("pretrain.roundz=3", "unknown key 'pretrain.roundz'"),
        ("nope=1", "unknown key 'nope'"),
        ("pretrain.rounds=three", "key 'pretrain.rounds' expects an integer"),
        ("pretrain.rounds=1.5", "key 'pretrain.rounds' expects an integer"),
        ("finetune.do_finetune=maybe", "key 'finetune.do_finetune' expects true/false"),
        ("model.graph_bias=sideways", "key 'model.graph_bias' must be one of"),
        ("data.pretrain_configs=content", "key 'data.pretrain_configs' expects a list"),
        ("finetune.selection_metric=hr@10", "key 'finetune.selection_metric'"),
        ("finetune.selection_metric=recall@30", "needs k=30"),
        ("model.n_head=3", "divisible"),
        ("data.pretrain_configs=[reviews]", "unknown prompt configs"),
        ("noequals", "not of the form key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config("demo", [override])


def test_bad_yaml_file_names_file_and_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("pretrain:\n  rounds: 2\n  lr_idd: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'pretrain\.lr_idd'"):
        load_config(f)
    f.write_text("finetune:\n  epochs: '3'\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: key 'finetune\.epochs' expects an integer, got str"):
        load_config(f)
    f.write_text("model: 3\n")
    with pytest.raises(ConfigError, match="key 'model' expects a mapping"):
        load_config(f)
    with pytest.raises(ConfigError, match="unknown preset 'nosuch'"):
        load_config("nosuch")
