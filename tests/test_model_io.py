"""GraphGPT2 model I/O: save/load, remote code without the package, stock GPT-2 checkpoints, PEFT LoRA."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, GPT2Config, GPT2LMHeadModel, GPT2Model

from modeling_graphgpt2 import GraphGPT2ForRecommendation
from isolation import BLOCK_PACKAGE

try:  # tests/ is on sys.path under pytest's default import mode
    from test_model_core import BASE, ITEMS, USERS, make_batch, tiny_model
except ImportError:  # tests/ made a package
    from tests.test_model_core import BASE, ITEMS, USERS, make_batch, tiny_model


def stock_gpt2_config() -> GPT2Config:
    return GPT2Config(vocab_size=BASE, n_layer=2, n_embd=64, n_head=4, n_positions=64, bos_token_id=0,
                      eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def test_save_and_load_in_process(tmp_path):
    model = tiny_model(graph_bias="learned")
    for block in model.transformer.h:
        block.attn.graph_bias.table.data += 0.1 * torch.randn_like(block.attn.graph_bias.table)
    ids, mask, hop = make_batch(pad=True)
    expected = model(ids, attention_mask=mask, hop_distances=hop).scores
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "configuration_graphgpt2.py", "modeling_graphgpt2.py"} <= files
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == {"AutoConfig": "configuration_graphgpt2.GraphGPT2Config",
                        "AutoModel": "modeling_graphgpt2.GraphGPT2ForRecommendation"}
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is GraphGPT2ForRecommendation
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert torch.equal(loaded(ids, attention_mask=mask, hop_distances=hop).scores, expected)


REMOTE_SCRIPT = BLOCK_PACKAGE + textwrap.dedent("""
    import sys, torch
    try:
        import modeling_graphgpt2  # must not be importable here
        raise SystemExit("package importable: " + modeling_graphgpt2.__file__)
    except ImportError:
        pass
    from transformers import AutoModel
    folder = sys.argv[1]
    batch = torch.load(folder + "/batch.pt")
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    cls = type(model)
    scores = model(batch["ids"], attention_mask=batch["mask"], hop_distances=batch["hop"]).scores
    rec = model.recommend(batch["ids"], attention_mask=batch["mask"], hop_distances=batch["hop"], k=5)
    torch.save({"module": cls.__module__, "name": cls.__name__, "scores": scores, "items": rec.items},
               folder + "/remote.pt")
""")


def model_with_graph_levers():
    """ID propagation, the edge bias and the low-pass residual on, their train-graph tables filled."""
    from data_builders.item_graph import edge_buckets, ideal_lowpass_basis, normalized_adjacency

    rng = np.random.default_rng(0)
    train = sp.csr_matrix((np.ones(USERS * 8, np.float32), (np.repeat(np.arange(USERS), 8), rng.integers(0, 30, USERS * 8))),
                          shape=(USERS, ITEMS))
    train.sum_duplicates()
    train.data[:] = 1.0
    model = tiny_model(graph_bias="paper", id_propagation_layers=2, graph_train_edges=int(train.nnz), graph_edge_bias=True,
                       graph_edge_topn=10, graph_lowpass_rank=6, graph_lowpass_scale_init=0.5)
    model.graph_lowpass.set_tables(*ideal_lowpass_basis(train, 6))
    model.id_propagation.set_tables(*normalized_adjacency(train))
    model.edge_tables.set_tables(*edge_buckets(train, 10))
    with torch.no_grad():
        model.transformer.h[0].attn.edge_bias.table.normal_()
    return model


@pytest.mark.parametrize("levers", [False, True], ids=["plain", "graph_levers"])
def test_remote_code_load_without_the_package(tmp_path, levers):
    model = model_with_graph_levers() if levers else tiny_model(graph_bias="paper", graph_bias_per_head=True)
    ids, mask, hop = make_batch(pad=True)
    expected = model(ids, attention_mask=mask, hop_distances=hop).scores
    folder = tmp_path / "release"
    model.save_pretrained(folder)
    torch.save({"ids": ids, "mask": mask, "hop": hop}, folder / "batch.pt")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    # -I: isolated mode (no cwd / script dir / PYTHONPATH on sys.path), so the repo cannot be imported
    done = subprocess.run([sys.executable, "-I", "-c", REMOTE_SCRIPT, str(folder)], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    remote = torch.load(folder / "remote.pt")
    assert remote["module"].startswith("transformers_modules"), remote["module"]
    assert remote["name"] == "GraphGPT2ForRecommendation"
    assert torch.equal(remote["scores"], expected)
    assert torch.equal(remote["items"], expected.topk(5).indices)


@pytest.mark.parametrize("stock_class", [GPT2LMHeadModel, GPT2Model])
def test_load_stock_gpt2_checkpoint(tmp_path, stock_class):
    torch.manual_seed(3)
    stock = stock_class(stock_gpt2_config()).eval()
    stock.save_pretrained(tmp_path)
    model = GraphGPT2ForRecommendation.from_gpt2_checkpoint(tmp_path, num_users=USERS, num_items=ITEMS,
                                                            graph_bias="paper").eval()
    assert model.config.base_vocab_size == BASE and model.config.graph_bias == "paper"
    ids, mask, _ = make_batch(pad=True)
    text = torch.where(ids < BASE, ids, 3)
    out = model(text, attention_mask=mask, task="content", output_hidden_states=True)
    keep = mask.bool()
    if stock_class is GPT2LMHeadModel:
        ref = stock(text, attention_mask=mask).logits
        assert torch.allclose(out.logits[keep], ref[keep], atol=1e-5)
    else:
        ref = stock(text, attention_mask=mask).last_hidden_state
        assert torch.allclose(out.hidden_states[-1][keep], ref[keep], atol=1e-5)
    # ID embeddings start fresh: N(0, initializer_range), different per set
    for table in (model.content_embeddings.item.weight, model.collab_embeddings.item.weight):
        assert abs(table.std().item() - 0.02) < 0.003
    assert not torch.equal(model.content_embeddings.item.weight, model.collab_embeddings.item.weight)
    frozen = GraphGPT2ForRecommendation.from_gpt2_checkpoint(tmp_path, num_users=USERS, num_items=ITEMS,
                                                             freeze_backbone=True)
    assert not frozen.transformer.wte.weight.requires_grad and frozen.collab_embeddings.user.weight.requires_grad


def test_bad_gpt2_checkpoint_fails_clearly(tmp_path):
    stock = GPT2LMHeadModel(stock_gpt2_config())
    stock.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    key = "transformer.h.1.mlp.c_fc.weight"
    missing = {k: v for k, v in weights.items() if k != key}
    save_file(missing, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing keys: \['h\.1\.mlp\.c_fc\.weight'\]"):
        GraphGPT2ForRecommendation.from_gpt2_checkpoint(tmp_path, num_users=USERS, num_items=ITEMS)
    wrong = dict(weights)
    wrong["transformer.wpe.weight"] = torch.zeros(32, 64)
    wrong["transformer.h.0.extra.weight"] = torch.zeros(2)
    save_file(wrong, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"wpe\.weight: checkpoint \(32, 64\) vs model \(64, 64\)") as err:
        GraphGPT2ForRecommendation.from_gpt2_checkpoint(tmp_path, num_users=USERS, num_items=ITEMS)
    assert "h.0.extra.weight" in str(err.value)
    with pytest.raises(FileNotFoundError, match="config.json"):
        GraphGPT2ForRecommendation.from_gpt2_checkpoint(tmp_path / "nowhere", num_users=USERS, num_items=ITEMS)


def test_lora_wrap_save_reload_merge(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    base = tiny_model(graph_bias="learned")
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    lora_config = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True,
                             modules_to_save=base.peft_modules_to_save(), init_lora_weights=False)
    peft_model = get_peft_model(base, lora_config)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in trainable)
    assert any("collab_embeddings" in n for n in trainable) and any("graph_bias" in n for n in trainable)
    assert not any(n.endswith("wte.weight") for n in trainable)

    ids, mask, hop = make_batch(pad=True)
    targets = torch.zeros(3, ITEMS)
    targets[:, :4] = 1
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    peft_model.train()
    peft_model(input_ids=ids, attention_mask=mask, hop_distances=hop, target_items=targets).loss.backward()
    optimizer.step()
    peft_model.eval()
    expected = peft_model(input_ids=ids, attention_mask=mask, hop_distances=hop).scores

    peft_model.save_pretrained(tmp_path)
    fresh = tiny_model(graph_bias="learned")
    fresh.load_state_dict(base_state)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path).eval()
    assert torch.allclose(reloaded(input_ids=ids, attention_mask=mask, hop_distances=hop).scores, expected,
                          atol=1e-6)
    merged = reloaded.merge_and_unload().eval()
    assert type(merged) is GraphGPT2ForRecommendation
    assert torch.allclose(merged(ids, attention_mask=mask, hop_distances=hop).scores, expected, atol=1e-5)
    # the untouched base differs (the adapter did something)
    untouched = tiny_model(graph_bias="learned")
    untouched.load_state_dict(base_state)
    assert (untouched(ids, attention_mask=mask, hop_distances=hop).scores - expected).abs().max() > 1e-3
