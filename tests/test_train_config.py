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


@pytest.mark.parametrize(
    "override, key",
    [
        ("finetune.epochs=-3", "finetune.epochs"),
        ("finetune.epochs=0", "finetune.epochs"),
        ("finetune.step_budget=-1", "finetune.step_budget"),
        ("finetune.cold_item_neighbour_power_grid=[0]", "finetune.cold_item_neighbour_power_grid"),
        ("model.cold_item_neighbour_power=-2", "model.cold_item_neighbour_power"),
        ("finetune.lr_id=-1e-3", "finetune.lr_id"),
        ("pretrain.lr_backbone=0", "pretrain.lr_backbone"),
        ("model.n_layer=0", "model.n_layer"),
        ("model.n_head=0", "model.n_head"),
        ("model.lora_r=-3", "model.lora_r"),
        ("model.resid_pdrop=1.5", "model.resid_pdrop"),
        ("model.attn_pdrop=-0.1", "model.attn_pdrop"),
        ("model.dropout=0.2", "model.dropout"),
        ("model.max_hops=0", "model.max_hops"),
        ("model.bias_delta=2", "model.bias_delta"),
        ("model.graph_bias_layers=[5]", "model.graph_bias_layers"),
        ("model.mutual_reg_weight=-1", "model.mutual_reg_weight"),
        ("eval.recall_ks=[0]", "eval.recall_ks"),
        ("eval.ndcg_ks=[-5]", "eval.ndcg_ks"),
        ("eval.recall_ks=[]", "eval.recall_ks"),
        ("finetune.batch_size=0", "finetune.batch_size"),
        ("pretrain.collab_batch_size=0", "pretrain.collab_batch_size"),
        ("finetune.patience=-1", "finetune.patience"),
        ("finetune.warmup_ratio=1.5", "finetune.warmup_ratio"),
        ("pretrain.weight_decay=-0.1", "pretrain.weight_decay"),
        ("pretrain.grad_clip=-1", "pretrain.grad_clip"),
        ("pretrain.rounds=-1", "pretrain.rounds"),
        ("eval.batch_size=0", "eval.batch_size"),
        ("output.log_every=0", "output.log_every"),
        ("output.save_total_limit=0", "output.save_total_limit"),
        ("data.max_length=0", "data.max_length"),
    ],
)
def test_invalid_numbers_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        load_config("demo", [override])


def test_nothing_to_train_and_empty_pretraining_are_rejected():
    with pytest.raises(ConfigError, match="nothing would be trained"):
        load_config("demo", ["pretrain.do_pretrain=false", "finetune.do_finetune=false"])
    with pytest.raises(ConfigError, match="pretrain.content_epochs"):
        load_config("demo", ["pretrain.content_epochs=0", "pretrain.rounds=0"])
    # the ablations stay expressible
    assert load_config("demo", ["finetune.do_finetune=false"]).finetune.do_finetune is False
    assert load_config("demo", ["pretrain.do_pretrain=false"]).pretrain.do_pretrain is False


def test_model_section_is_a_graphgpt2_config():
    from modeling_graphgpt2 import GRAPH_BIAS_MODES
    from train.config import _ALLOWED_CHOICES, model_config

    cfg = load_config("demo", ["model.graph_bias_layers=[1]", "model.graph_bias_per_head=true", "model.graph_bias=exp"])
    conf = model_config(cfg.model, num_users=3, num_items=4, base_vocab_size=10)
    assert (conf.graph_bias_layers, conf.graph_bias_per_head, conf.graph_bias) == ([1], True, "exp")
    assert (conf.n_layer, conf.n_embd, conf.n_head, conf.resid_pdrop) == (cfg.model.n_layer, cfg.model.n_embd,
                                                                          cfg.model.n_head, cfg.model.resid_pdrop)
    assert _ALLOWED_CHOICES["model.graph_bias"] is GRAPH_BIAS_MODES  # listed once, in the model's config


def test_stage_script_rejects_negative_lora_rank(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "train/finetune.py", "--config", "demo", "--lora-r", "-3",
                           f"output.dir={tmp_path}"], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "key 'model.lora_r'" in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())
