"""The Hub-ready model folder and its upload.

    python -m train.publish --config demo [--model-dir outputs/demo/best] [--push-to-hub org/name]

Folder layout (one ``upload_folder`` commit; everything ``Recommender.from_folder`` and a remote-code user need)::

    config.json (auto_map, custom_pipelines), model.safetensors, configuration_graphgpt2.py, modeling_graphgpt2.py
    pipeline_graphgpt2.py, handler.py   the graph-recommendation pipeline + Inference Endpoints handler (remote code)
    folder_layout.py                    the folder's file names (imported by the pipeline)
    the dataset folder's manifest, tokenizer, train graph and id maps    written by ``Corpus.export_to`` (so
                                                                        ``Corpus(folder)`` opens it), plus the
                                                                        inference settings (prompt length, hops)
                                                                        and maps/train_histories.json (canonical prompts)
    metrics.json, run_config.yaml, train_log.jsonl, training_curve.png, README.md (model card with model-index)

LoRA adapters are merged before saving. The folder is written to a uniquely named temp sibling and renamed into
place; it ends with ``serving.json`` (the sha256 of every served file, checked on load by the pipeline, the handler
and ``train.recommend``). An existing folder at the target is replaced only when this tool wrote it and it holds
nothing else, which is checked before any work.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from data_builders.atomic import OWNED_FILE, check_replaceable, replace_dir
from data_builders.corpus import Corpus
from data_builders.hub_dataset import data_licence, is_amazon_source, stage_dataset_repo
from modeling_graphgpt2.folder_layout import SERVING_CODE_FILES
from modeling_graphgpt2.pipeline_graphgpt2 import write_serving_record
from train.cli_args import config_from_args, run_stage, stage_parser
from train.config import RunConfig
from train.evaluate import metrics_table
from train.io_utils import BEST_DIR, HUB_DATASET_DIR, HUB_MODEL_DIR, atomic_write_json, hold_output_dir, temp_sibling
from train.logging_utils import plot_training_curves, wall_text
from train.metrics import metric_names
from train.modeling_io import load_model, no_hf_progress_bars
from train.pretrain import pretrain_plan

TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "graphgpt2_rec.md"
SERVING_DIR = Path(__file__).resolve().parents[1] / "modeling_graphgpt2"
CUSTOM_PIPELINES = {"graph-recommendation": {"impl": "pipeline_graphgpt2.GraphRecommendationPipeline",
                                             "pt": ["AutoModel"], "type": "text"}}
METRIC_LABELS = {"recall": "Recall", "ndcg": "NDCG"}
# run-config keys that name this machine's paths or upload targets, not how the model was made (left off the card)
LOCAL_SETTINGS = ("data.folder", "output.dir", "output.push_to_hub", "output.push_dataset_to_hub")


def eval_results(metrics: dict, dataset_name: str, dataset_type: str, split: str = "test") -> list:
    """huggingface_hub EvalResult entries (the card's ``model-index``) for every reported metric."""

    out = []
    for key, value in metrics.items():
        if not (key.startswith("recall@") or key.startswith("ndcg@")) or not isinstance(value, float):
            continue
        kind, k = key.split("@")
        paper = k.endswith("_paper")
        k = k.replace("_paper", "")
        name = f"{METRIC_LABELS[kind]}@{k}" + (" (|rel| denominator, paper Eq. 8)" if paper else "")
        out.append(EvalResult(task_type="recommendation", task_name="Top-k recommendation", dataset_type=dataset_type,
                              dataset_name=dataset_name, dataset_split=split, metric_type=kind, metric_name=name,
                              metric_value=round(value, 6)))
    return out


def split_facts(split: dict) -> dict:
    """Card fields from the dataset's split record: recipe, sizes and per-split sha256 (short)."""
    recipe = split.get("preprocess", {}).get("recipe") or split.get("recipe")
    sizes = split.get("split_sizes") or {}
    hashes = split.get("split_hashes") or {}
    return {
        "split_recipe": json.dumps(recipe)[:300] if recipe else "(no recipe recorded)",
        "split_sizes": ", ".join(f"{k} {v:,}" for k, v in sizes.items()) or "(not recorded)",
        "split_hashes": ", ".join(f"{k} `{v[:16]}`" for k, v in hashes.items()) or "(not recorded)",
    }


def usage_examples(corpus) -> dict:
    """Real ids for the card's snippets: the first user with a history, two of their items, their prompt text."""
    items = corpus.train_items()
    u = next(i for i, h in enumerate(items) if h)
    hist = [int(j) for j in items[u][:3]]
    ids = corpus.item_ids
    return {
        "example_user": corpus.user_ids[u],
        "example_history": json.dumps([ids[j] for j in hist[:2]]),
        "example_prompt": f"user_{u} has interacted with " + " ".join(f"item_{j}" for j in hist) + f", user_{u} will interact with",
    }


def user_tokens_text(dropout: float) -> str:
    """How the card states ``model.user_token_dropout``."""
    if dropout >= 1.0:
        return "every one reads the mean user row (no user identity; the prompt's items carry the user)"
    if dropout > 0.0:
        return f"a user's own row, replaced by the mean user row with probability {dropout} in training"
    return "a row per user (the paper)"


def dataset_identity(corpus, dataset_repo: str | None) -> tuple[str, str]:
    """(type, name) of the evaluation data for the card's ``model-index`` and ``datasets:``: the dataset repo's Hub
    id when it is pushed, else a name that says what the data is."""
    name = corpus.name
    if dataset_repo:
        return dataset_repo, f"{name} (GraphGPT2-Rec prompt corpora)"
    source = corpus.split_manifest.get("source", {}).get("format", "")
    if is_amazon_source(corpus.manifest):
        year = "2018" if "2018" in source else "2014"
        return f"amazon-reviews-{year}-{name.lower().replace('_', '-')}", f"Amazon Reviews {year} ({name}, 5-core)"
    if source == "synthetic":
        return f"graphgpt2-rec-{name}", f"GraphGPT2-Rec synthetic shop ({name})"
    return name, name


def non_default_settings(cfg) -> list[tuple[str, Any, Any]]:
    """(dotted key, value, default) for every run-config field that differs from the package's defaults."""

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    ours, defaults = flat(cfg.to_dict()), flat(RunConfig().to_dict())
    return [(k, v, defaults.get(k)) for k, v in ours.items() if v != defaults.get(k) and k not in LOCAL_SETTINGS]


def levers_text(cfg) -> str:
    """Each graph/content lever of the model and whether it is on (docs/model.md describes them)."""
    m = cfg.model
    return "; ".join([
        f"hop bias `{m.graph_bias}`" + (" (learned per head)" if "learned" in m.graph_bias else ""),
        f"graph residual {'`' + m.graph_residual + '`' if m.graph_residual != 'none' else 'off'}",
        f"low-pass residual {'rank %d' % m.graph_lowpass_rank if m.graph_lowpass_rank else 'off'}",
        f"ID propagation {'%d layers' % m.id_propagation_layers if m.id_propagation_layers else 'off'}",
        f"edge bias {'on' if m.graph_edge_bias else 'off'}",
        f"item-ID init {'`' + cfg.finetune.init_collab_items + '`' if cfg.finetune.init_collab_items != 'none' else 'off'}",
    ])


def render_card(cfg, corpus, result: dict, repo_id: str, command: str | None, dataset_repo: str | None = None) -> str:
    """README.md text: model-index metadata + the template in model_cards/."""


    names = metric_names(cfg.eval.recall_ks, cfg.eval.ndcg_ks)
    data_name = corpus.name
    data_type, data_title = dataset_identity(corpus, dataset_repo)
    licence, licence_text = data_licence(corpus.manifest)
    if cfg.output.license != "auto":
        licence, licence_text = cfg.output.license, f"Set by the run (`output.license={cfg.output.license}`). {licence_text}"
    card_data = ModelCardData(
        language="en",
        license=licence,
        library_name="transformers",
        pipeline_tag="other",  # the Hub has no recommendation task; custom pipeline "graph-recommendation"
        tags=["recommendation", "recommender-system", "graph", "gpt2", "graphgpt2", "custom_code"],
        datasets=[data_type],
        metrics=sorted({METRIC_LABELS[n.split("@")[0]].lower() for n in names}),
        model_name=cfg.output.model_name,
        eval_results=eval_results(result["test"], data_title, data_type),
    )
    settings = non_default_settings(cfg)
    settings_table = "\n".join(["| setting | value | default |", "|---|---|---|"]
                                + [f"| `{k}` | `{v}` | `{d}` |" for k, v, d in settings]) if settings else "(none)"
    rows = {"GraphGPT2 (test)": result["test"]}
    if result.get("popularity_test"):
        rows["Popularity (test)"] = result["popularity_test"]
    rows["GraphGPT2 (validation)"] = result["validation"]
    cold = result.get("cold_items_test") or {}
    if cold:  # a cold-item split: the new products' shelf and the warm targets of the whole shop
        rows["GraphGPT2, new items' shelf (test cold items only)"] = cold["shelf"]
        rows["GraphGPT2, whole shop, warm targets (test)"] = cold["shop_warm"]
    plan = pretrain_plan(cfg.pretrain) if cfg.pretrain.do_pretrain else []
    plan_text = (f"{plan.count('content')} content epochs and {plan.count('collab')} collaborative epochs "
                 f"(order: {' '.join(plan[:12])}{' ...' if len(plan) > 12 else ''})") if plan else "none (NoPretrain)"
    m, sweep = cfg.model, result.get("residual_scale_sweep")
    residual_text = ("none" if m.graph_residual == "none" else
                     f"scores + scale x (prompt items x W) / std, W = `{m.graph_residual}`"
                     + (f" (lambda {m.graph_residual_lambda:g})" if m.graph_residual == "ease" else "")
                     + f" of the train graph, top {m.graph_residual_topn} per row (buffers in `model.safetensors`); scale "
                     + (f"{sweep['chosen']:g}, chosen on validation {sweep['metric']} from {sweep['scales']} after fine-tuning"
                        if sweep else ("learned" if m.graph_residual_learn_scale else f"fixed at {m.graph_residual_scale_init:g}")))
    lowpass = result.get("lowpass_scale_sweep")
    if m.graph_lowpass_rank > 0:
        residual_text += ("; plus GF-CF's ideal low-pass term of rank " + str(m.graph_lowpass_rank)
                          + (f" (chosen on validation from {lowpass['ranks']})" if lowpass and "ranks" in lowpass else "")
                          + " (basis in `model.safetensors`), scale "
                          + (f"{lowpass['chosen']:g}, chosen on validation from {lowpass['scales']}" if lowpass
                             else f"{m.graph_lowpass_scale_init:g}"))
    cold_map = result.get("cold_item_map") or {}
    if "chosen" in cold_map:
        chosen = cold_map["chosen"]
        residual_text += (f"; new items: a rank-{m.cold_item_map_rank} text map (ridge alpha {chosen['alpha']:g}), a "
                          f"text-similarity term (scale {chosen['scale']:g}), "
                          + (f"the mean score of its {m.cold_item_neighbours} nearest items by text (weight "
                             f"{chosen['transfer']:g}), " if m.cold_item_neighbours else "")
                          + f"all times a gain ({chosen['gain']:g}), and an offset ({chosen['offset']:g})"
                          + (", chosen on the validation cold items," if "values" in cold_map else "")
                          + " score products without interactions from their text (`new_items=`)")
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=cfg.output.model_name,
        selection_metric=result.get("selection_metric", cfg.finetune.selection_metric),
        best_epoch=result.get("best_epoch"),
        metrics_table=metrics_table(rows, names),
        data_source=cfg.data.source,
        data_name=data_name,
        num_users=corpus.num_users,
        num_items=corpus.num_items,
        **split_facts(corpus.split_manifest),
        **usage_examples(corpus),
        dataset_link=(f"Prompt corpora, graph and split: the dataset repo [{dataset_repo}](https://huggingface.co/datasets/{dataset_repo}) "
                      f'(`datasets.load_dataset("{dataset_repo}", "recommendation")`).\n' if dataset_repo else ""),
        num_edges=corpus.num_edges,
        max_hops=corpus.max_hops,
        tokenizer_source=corpus.tokenizer_source,
        tokenizer_sha256=corpus.tokenizer_sha256[:16],
        graph_sha256=corpus.graph_sha256[:16],
        n_layer=cfg.model.n_layer,
        n_embd=cfg.model.n_embd,
        n_head=cfg.model.n_head,
        graph_bias=cfg.model.graph_bias,
        graph_residual=residual_text,
        mutual_reg_weight=cfg.model.mutual_reg_weight,
        user_tokens=user_tokens_text(cfg.model.user_token_dropout),
        command=command or f"graphgpt2-rec run --config {cfg.preset}",
        pretrain_plan=plan_text,
        finetune_epochs=result.get("epochs", cfg.finetune.epochs) if cfg.finetune.do_finetune else 0,
        mask_fraction=cfg.finetune.mask_fraction,
        visible_target_weight=cfg.finetune.visible_target_weight,
        levers=levers_text(cfg),
        settings_table=settings_table,
        licence_text=licence_text,
        num_tokens=len(corpus.tokenizer),
        base_vocab_size=corpus.base_vocab_size,
        wall=wall_text(result.get("wall", {})),
        repo_id=repo_id,
    )
    return str(card)


def publish(cfg, corpus, model_dir: Path, out_folder: Path, result: dict, command: str | None = None,
            repo_id: str | None = None, dataset_repo: str | None = None) -> Path:
    """Assemble the Hub-ready folder ``out_folder`` from the selected model and the dataset folder."""

    out_folder = Path(out_folder)
    run_dir = Path(cfg.output.dir)
    check_replaceable(out_folder, "published folder")  # before any work
    model = load_model(model_dir, merge_lora=True)
    corpus.check_model(model.config)
    tmp = temp_sibling(out_folder)
    try:
        model.config.custom_pipelines = CUSTOM_PIPELINES  # pipeline("graph-recommendation", model=repo, trust_remote_code=True)
        with no_hf_progress_bars():
            model.save_pretrained(str(tmp))  # config.json with auto_map + remote-code files + safetensors
        for name in SERVING_CODE_FILES:
            shutil.copy2(SERVING_DIR / name, tmp / name)
        corpus.export_to(tmp, {
            "max_length": cfg.data.max_length,
            "prompt_template": "user_i has interacted with item_a item_b ..., user_i will interact with",
            "new_user_template": "A new user has interacted with item_a ..., the user will interact with",
        }, model_max_length=model.config.n_positions)
        atomic_write_json(tmp / "metrics.json", {k: v for k, v in result.items() if k in
                                                ("validation", "test", "popularity_test", "best_epoch", "selection_metric", "wall")})
        cfg.save(tmp / "run_config.yaml")
        log = run_dir / "logs" / "train_log.jsonl"
        if log.is_file():
            shutil.copy2(log, tmp / "train_log.jsonl")
        plot_training_curves(log, tmp / "training_curve.png", cfg.finetune.selection_metric)
        (tmp / "README.md").write_text(render_card(cfg, corpus, result, repo_id or cfg.output.push_to_hub or f"<org>/{cfg.output.model_name}", command,
                                                   dataset_repo))
        write_serving_record(tmp)  # last: it hashes everything above
        replace_dir(tmp, out_folder, "published folder")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_folder


def push_folder(folder: str | Path, repo_id: str, repo_type: str = "model", private: bool | None = None,
                commit_message: str | None = None) -> str:
    """Create the repo (if needed) and upload ``folder`` in one commit; returns the repo URL."""

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"nothing to push: {folder} is not a folder")
    api = HfApi()
    url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type,
                      commit_message=commit_message or f"Upload GraphGPT2-Rec {repo_type} folder",
                      ignore_patterns=[".tmp-*", "**/.tmp-*", OWNED_FILE, f"**/{OWNED_FILE}"])
    return str(url)


def main(argv: list[str] | None = None) -> int:

    ap = stage_parser("python -m train.publish", "Assemble the Hub-ready folder of a finished run (weights, tokenizer, "
                      "graph, maps, remote code, model card, serving record) and optionally upload it.",
                      "python -m train.publish --config quick --push-to-hub my-org/graphgpt2-mi", push=True)
    ap.add_argument("--model-dir", default=None, help="selected model folder (default <output.dir>/best)")
    ap.add_argument("--out", default=None, help="folder to write (default <output.dir>/hub_model); an existing one is "
                                                "replaced only if this tool wrote it and it holds nothing else")
    ap.add_argument("--push-dataset-to-hub", default=None, metavar="ORG/NAME", help="also upload the dataset folder")
    args = ap.parse_args(argv)

    def run() -> int:
        cfg = config_from_args(args)
        run_dir = Path(cfg.output.dir)
        with hold_output_dir(run_dir):
            return publish_run(cfg, run_dir, args, "python -m train.publish " + " ".join(argv or sys.argv[1:]))

    return run_stage(run, args.debug)


def publish_run(cfg, run_dir: Path, args, command: str) -> int:
    """``train.publish``'s body: the run's result file, the selected model, the folder, the uploads."""
    results = [run_dir / name for name in ("pipeline_result.json", "finetune_result.json")]
    result_file = next((f for f in results if f.is_file()), None)
    if result_file is None:
        raise FileNotFoundError(f"{run_dir}: no pipeline_result.json or finetune_result.json: fine-tune first "
                                "(`graphgpt2-rec run` or `train/finetune.py`) with this output.dir")
    result: dict[str, Any] = json.loads(result_file.read_text())
    corpus = Corpus(cfg.data.folder, cfg.data.leave_user_out_hops)
    folder = publish(cfg, corpus, Path(args.model_dir or run_dir / BEST_DIR), Path(args.out or run_dir / HUB_MODEL_DIR), result,
                     command=command, repo_id=cfg.output.push_to_hub, dataset_repo=args.push_dataset_to_hub)
    print(f"wrote {folder}")
    if cfg.output.push_to_hub:
        print(push_folder(folder, cfg.output.push_to_hub))
    if args.push_dataset_to_hub:
        staged = stage_dataset_repo(cfg.data.folder, run_dir / HUB_DATASET_DIR, model_repo=cfg.output.push_to_hub)
        print(push_folder(staged, args.push_dataset_to_hub, repo_type="dataset"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
