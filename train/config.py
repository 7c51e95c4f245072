"""One config object for a GraphGPT2-Rec run (RecBole style: one place drives data, model, training, evaluation).

A run config is a tree of dataclasses loaded from YAML (``train/configs/<preset>.yaml`` or any file) and then
patched with dotted ``key=value`` overrides from the command line::

    cfg = load_config("demo", ["pretrain.rounds=2", "model.n_layer=1"])

Unknown keys and values of the wrong type are errors that name the key (and the file). Nothing is guessed.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from data_builders.preprocess import DEFAULT_SPLIT_SEED
from modeling_graphgpt2.configuration_graphgpt2 import (
    GRAPH_BIAS_MODES,
    GRAPH_RESIDUAL_KINDS,
    GraphGPT2Config,
    GraphGPT2ConfigError,
)
from train.io_utils import atomic_write_text
from train.metric_names import parse_metric_name

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PRESETS = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))  # every YAML shipped in train/configs/
INIT_COLLAB_ITEMS = ("none", "text_svd", "graph_svd", "text_or_graph_svd", "content_set")  # finetune.init_collab_items


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key (and file)."""


@dataclass
class DataConfig:
    """Where the prompt corpus lives and, when ``build`` is on, how to build it (``python -m data_builders build``)."""

    folder: str = "outputs/demo/data"  # dataset folder (DESIGN.md §4); built here when build=True
    build: bool = True  # build the folder first (skipped when it exists and holds a manifest.json)
    source: str = "synthetic"  # "synthetic" (embedded default) or a raw data folder (e.g. ../shared/data/amazon-musical-instruments-2014)
    tokenizer: str = "bpe"  # "bpe" = train a byte-level BPE of bpe_vocab on the corpus; else a folder with vocab.json+merges.txt
    bpe_vocab: int = 2000
    split_seed: int = DEFAULT_SPLIT_SEED  # the data split's seed (authors' 98765); independent of the training seed
    # Item-item hops of each prompt measured without the prompt's own user (data_builders HopDistances.leave_user_out):
    # on the full graph a personalized prompt's bias is a fixed pattern (all items 2 hops apart via the user).
    leave_user_out_hops: bool = False
    build_args: list[str] = field(default_factory=list)  # extra CLI args passed verbatim to the builder
    # Which prompt configs feed content pre-training. Ablations are this list:
    # NoGHIP / without 2nd order -> drop "second_order"; without item content -> drop "content".
    pretrain_configs: list[str] = field(default_factory=lambda: ["content", "review", "second_order"])
    max_length: int = 1024  # prompts longer than this are truncated (histories from the left, see docs/training.md)


# The model section of a run config is GraphGPT2Config's keyword arguments: every field GraphGPT2Config declares
# itself (documented in its docstring, validated by it) and GPT-2's architecture fields, with GraphGPT2Config's
# defaults. The dataset folder supplies the sizes. Only the keys that are not model options are declared here.
_GPT2_MODEL_KEYS = ("n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function", "resid_pdrop",
                    "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "initializer_range")
_DATA_SIZE_KEYS = ("num_users", "num_items", "base_vocab_size", "graph_train_edges")  # from the dataset folder
_RUN_ONLY_MODEL_FIELDS = [
    ("init_from", Optional[str], None),  # local GPT-2 checkpoint folder (backbone weights); None = random init
    ("lora_r", int, 0),  # >0: LoRA adapters on c_attn/c_proj/c_fc, ID embeddings trained in full
    ("lora_alpha", int, 16),
]


def _model_config_fields() -> list[tuple[str, Any, Any]]:
    """(name, type, dataclass field) of each GraphGPT2Config keyword a run config may set."""
    own = set(vars(GraphGPT2Config).get("__annotations__", {}))
    out = []
    for f in dataclasses.fields(GraphGPT2Config):
        if (f.name in own and f.name not in _DATA_SIZE_KEYS) or f.name in _GPT2_MODEL_KEYS:
            default = (field(default_factory=f.default_factory) if f.default is dataclasses.MISSING
                       else field(default=f.default))
            out.append((f.name, f.type, default))
    return out


MODEL_CONFIG_KEYS = tuple(name for name, _, _ in _model_config_fields())
ModelConfig = dataclasses.make_dataclass("ModelConfig", _model_config_fields() + _RUN_ONLY_MODEL_FIELDS)
ModelConfig.__module__ = __name__
ModelConfig.__doc__ = """The run config's model section: GraphGPT2Config's keyword arguments (see its docstring for every
field; the dataset folder gives num_users, num_items, base_vocab_size) plus the run-only keys init_from, lora_r and
lora_alpha. Checked by building a GraphGPT2Config from it (``model_config``), so the model's own validation is the
only one."""


@dataclass
class StageConfig:
    """Optimiser settings shared by the pre-training and fine-tuning stages."""

    batch_size: int = 8
    lr_id: float = 1e-3  # user/item ID embeddings
    lr_backbone: float = 1e-4  # transformer + text embeddings
    weight_decay: float = 0.0  # applied to backbone matrices only (never to embeddings, biases, LayerNorms)
    warmup_ratio: float = 0.05  # linear warm-up over this share of the stage's steps, then linear decay to 0
    grad_clip: float = 1.0  # max grad norm; 0 disables


@dataclass
class PretrainConfig(StageConfig):
    """Crowd contextual pre-training: content warm-up epochs, then rounds of collaborative (+ content)."""

    do_pretrain: bool = True  # False = NoPretrain ablation
    content_epochs: int = 1  # content-only warm-up epochs (paper: 10, released code: 3)
    rounds: int = 1  # collaborative rounds after the warm-up (paper: 100)
    content_every: int = 1  # a content epoch follows the collab epoch in round r when (r+1) % content_every == 0; 0 = never
    collab_batch_size: int = 8


@dataclass
class FinetuneConfig(StageConfig):
    """Personalized predictive fine-tuning (multinomial loss over all items)."""

    do_finetune: bool = True  # False = NoFineTune ablation (pre-trained model evaluated as is)
    epochs: int = 2
    # At most this many optimizer steps, in whole epochs: ceil(step_budget / steps per epoch) epochs when that is fewer
    # than ``epochs``, and the linear decay ends with the last of them. A large set then trains fewer, annealed epochs
    # while a small one keeps ``epochs``. 0 = always ``epochs``.
    step_budget: int = 0
    mask_fraction: float = 0.2  # share of each train history removed from the prompt every epoch (>= 1 item)
    # weight of the items still visible in the prompt in the multinomial target (the removed ones weigh 1); 1 = the
    # paper's target (every train item alike). Below 1 the loss leans on the items attention cannot copy.
    visible_target_weight: float = 1.0
    selection_metric: str = "recall@20"  # ONE validation criterion that picks the epoch (see train/evaluate.py)
    patience: int = 0  # stop after this many epochs without improvement; 0 = never stop early
    # Two-stage graph residual: after training, the residual's scale is set to the value of this grid with the best
    # selection_metric on validation (the selected epoch's model, one pass; ties keep the earlier value). Empty =
    # keep the model's scale. Train with model.graph_residual_learn_scale=false and scale_init=0 for the recipe
    # "fine-tune the transformer alone, then mix in W" (docs/model.md).
    residual_scale_grid: list[float] = field(default_factory=list)
    # The same for the low-pass residual (model.graph_lowpass_rank > 0), swept after residual_scale_grid with the
    # graph residual's scale fixed at its chosen value. Empty = keep model.graph_lowpass_scale_init.
    lowpass_scale_grid: list[float] = field(default_factory=list)
    # ... jointly with the low-pass rank: each rank r of this grid (<= model.graph_lowpass_rank, the rank fitted) is
    # the basis' first r singular vectors (the rank-r filter, no new fit); the same pass scores every (rank, scale)
    # pair, the best on validation is kept, and the published model stores the chosen rank only. Empty = the fitted
    # rank. ease_ilp's own grid chose rank 256 / 512 / 64 on Beauty / Toys / Musical Instruments validation.
    lowpass_rank_grid: list[int] = field(default_factory=list)
    # Size rule of both sweeps: a validation split with more users than this is swept on a seeded sample of this many
    # (``train.finetune.sweep_rows``; the chosen model's validation metrics are then a full pass). One sweep scores
    # every user once per grid value (20 ranked catalogs per user with amazon_cpu's grids: 8 scales, then 6 x 2
    # ranks), which made the sweeps the largest stage at 200k users / 100k items (benchmarks/RESULTS.md "Scale").
    # 50,000 leaves Beauty (22k users), Toys (19k) and Musical Instruments (526) swept on every user. 0 = always
    # every user.
    sweep_max_users: int = 50_000
    # Content into the collab item IDs before fine-tuning (issue 10; docs/model.md): "none"; "text_svd" = both item
    # tables start from the item text's TF-IDF SVD (so the mutual regulariser keeps collab rows near their text; meant
    # for runs without pre-training, as it overwrites the content rows too); "graph_svd" = both item tables start from
    # the items' coordinates on the top singular directions of the normalised TRAIN interaction matrix (the low-pass
    # residual's directions; no text needed); "text_or_graph_svd" = "text_svd" where the folder has item text, else
    # "graph_svd"; "content_set" = the collab item table starts as a copy of the (pre-trained) content item table.
    init_collab_items: str = "none"
    # New products (model.cold_item_map_rank > 0; docs/model.md "New items"): after selection, the ridge alpha of the
    # text -> collab row map and the scale of the cold items' text term are the pair of these grids with the best
    # selection_metric on the validation cold items' shelf (a folder built with --cold-item-frac); a folder without
    # cold items takes each grid's first value.
    # The first values are what validation chose on Beauty (3 seeds: alpha 0.1, scale 0.5, offset 0) and on two of
    # three Musical Instruments seeds (alpha 0.1, scale 0.5): a model trained without cold items serves new ones so.
    cold_map_alpha_grid: list[float] = field(default_factory=lambda: [0.1, 1.0, 10.0, 100.0])
    cold_item_text_scale_grid: list[float] = field(default_factory=lambda: [0.5, 0.0, 1.0, 2.0, 4.0, 8.0])
    # ... jointly with the weight of the text neighbours' scores (model.cold_item_neighbours > 0; ignored at 0); 2 first:
    # the best weight on Beauty's validation shelf with alpha 0.1 and scale 0.5 (probe on seed 0, RESULTS.md)
    cold_item_transfer_grid: list[float] = field(default_factory=lambda: [2.0, 0.0, 0.5, 1.0, 4.0, 8.0, 16.0, 32.0])
    # ... and the power on the neighbours' cosines (model.cold_item_neighbour_power), swept with the scale and the
    # transfer after the alpha: Beauty's validation shelf rose with 4 against 1 (probe, seeds 0 and 1, about +0.007
    # R@20; 8 and 16 lower), Musical Instruments' (seed 0) fell; 1 first: the lever's weights before the power
    cold_item_neighbour_power_grid: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0])
    # ... then the offset subtracted from the cold (and new) items' scores, chosen on the whole-shop validation ranking
    # (every validation target, warm or cold): where new items stand against the catalog
    cold_item_offset_grid: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 4.0, 8.0, -1.0])
    # ... with a gain on the cold items' whole score, times 1 / the chosen transfer weight (the shelf's order is the
    # same at any gain; the whole shop's is not)
    cold_item_gain_grid: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0])
    # ... among the pairs whose whole-shop metric over the warm targets stays within this fraction of the shop's
    # without the new items (the best whole shop over every target alone took Beauty's warm R@20 from 0.149 to 0.114;
    # 0.01 left -1.0 %, outside the seed spread of 0.3 %); the guard pair (the offset that keeps every cold item out of
    # each validation user's top max(k) warm items, measured in the same pass) always qualifies: where the cold scores
    # stand far above the catalog's, every pair of the grids can cost the warm targets more (Musical Instruments)
    cold_item_warm_tolerance: float = 0.0025


@dataclass
class EvalConfig:
    """Full-catalog ranking metrics."""

    recall_ks: list[int] = field(default_factory=lambda: [20, 40])
    ndcg_ks: list[int] = field(default_factory=lambda: [100])
    batch_size: int = 32
    num_examples: int = 3  # example recommendations printed at the end of a run


@dataclass
class OutputConfig:
    """Where a run writes checkpoints, logs, metrics and the Hub-ready model folder."""

    dir: str = "outputs/demo"
    save_total_limit: int = 2  # checkpoints kept per stage
    log_every: int = 10  # steps between tqdm/JSONL log lines
    push_to_hub: Optional[str] = None  # "org/name": upload the published folder
    push_dataset_to_hub: Optional[str] = None  # "org/name": upload the dataset folder (repo_type="dataset")
    model_name: str = "graphgpt2-rec"
    # the model card's licence: "auto" takes it from the data (Amazon review data: "other", research use; the
    # synthetic shop: apache-2.0; any other data: "other" until you set it), else a Hub licence id
    license: str = "auto"


@dataclass
class RunConfig:
    """The whole run."""

    preset: str = "demo"
    seed: int = 0
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16" (Accelerate); "no" on CPU
    # torch threads per process; 0 = torch's default capped at the cores this process may use (CPU affinity and
    # cgroup quota) shared by the launch's local processes. Set OMP_NUM_THREADS and it wins.
    num_threads: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the resolved config as YAML (atomically)."""
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


# --------------------------------------------------------------------------------------------------------------
# Checking values against the dataclass field types.

_ALLOWED_CHOICES = {
    "model.graph_bias": GRAPH_BIAS_MODES,
    "model.graph_residual": GRAPH_RESIDUAL_KINDS,
    "mixed_precision": ("no", "fp16", "bf16"),
    "finetune.init_collab_items": INIT_COLLAB_ITEMS,
}


def _check_value(key: str, value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` converted to ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_value(key, value, inner[0], where)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: key '{key}' expects a list, got {type(value).__name__} {value!r}")
        return [_check_value(f"{key}[{i}]", v, item_tp, where) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: key '{key}' expects true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: key '{key}' expects an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: key '{key}' expects a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: key '{key}' expects a string, got {type(value).__name__} {value!r}")
        if key in _ALLOWED_CHOICES and value not in _ALLOWED_CHOICES[key]:
            raise ConfigError(f"{where}: key '{key}' must be one of {_ALLOWED_CHOICES[key]}, got {value!r}")
        return value
    raise ConfigError(f"{where}: key '{key}' has an unsupported type {tp}")  # pragma: no cover


def _field_types(obj: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def _apply(obj: Any, updates: dict, prefix: str, where: str) -> None:
    """Set ``updates`` (a nested dict) on dataclass ``obj``; unknown keys and wrong types raise ConfigError."""
    if not isinstance(updates, dict):
        raise ConfigError(f"{where}: key '{prefix.rstrip('.') or '<root>'}' expects a mapping, got {updates!r}")
    types_ = _field_types(obj)
    for name, value in updates.items():
        key = f"{prefix}{name}"
        if name not in types_ and f"{prefix}{name}" == "model.dropout":  # a run config from before GPT-2's names
            raise ConfigError(f"{where}: key 'model.dropout' is now GPT-2's own three keys: set model.resid_pdrop, "
                              "model.embd_pdrop and model.attn_pdrop (GraphGPT2Config's names; each defaults to 0.1)")
        if name not in types_:
            known = ", ".join(f"{prefix}{n}" for n in types_)
            raise ConfigError(f"{where}: unknown key '{key}' (known keys: {known})")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            _apply(current, value, f"{key}.", where)
        else:
            setattr(obj, name, _check_value(key.lstrip("."), value, types_[name], where))


def model_config_fields(m: ModelConfig) -> dict[str, Any]:
    """GraphGPT2Config keyword arguments of the model section (sizes of the data not included)."""
    return {name: getattr(m, name) for name in MODEL_CONFIG_KEYS}


def model_config(m: ModelConfig, **sizes: Any) -> GraphGPT2Config:
    """The GraphGPT2Config of the model section (``sizes``: num_users, num_items, base_vocab_size, token ids).

    Raises ConfigError naming the run-config key when GraphGPT2Config rejects a value."""
    try:
        return GraphGPT2Config(**model_config_fields(m), **sizes)
    except GraphGPT2ConfigError as err:
        raise ConfigError(f"key 'model.{err.field}': {err}") from None


def _require(cfg: RunConfig, key: str, ok: Any, what: str) -> None:
    """Raise ConfigError naming ``key`` (dotted) unless ``ok(value)``."""
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    if not ok(value):
        raise ConfigError(f"key '{key}' must be {what}, got {value!r}")


def _validate(cfg: RunConfig) -> None:
    """Checks that types alone cannot express: ranges and cross-field rules. Each error names its key."""
    model_config(cfg.model)  # the model section: GraphGPT2Config's own checks (sizes, dropout, bias settings)
    positive, non_negative = (lambda v: v > 0), (lambda v: v >= 0)
    _require(cfg, "model.lora_r", non_negative, ">= 0 (0 = no LoRA)")
    if cfg.model.lora_r > 0:
        _require(cfg, "model.lora_alpha", positive, "> 0")
    for stage in ("pretrain", "finetune"):
        for name in ("lr_id", "lr_backbone"):
            _require(cfg, f"{stage}.{name}", lambda v: v > 0 and v == v and v != float("inf"), "a finite number > 0")
        _require(cfg, f"{stage}.batch_size", positive, ">= 1")
        _require(cfg, f"{stage}.weight_decay", non_negative, ">= 0")
        _require(cfg, f"{stage}.warmup_ratio", lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
        _require(cfg, f"{stage}.grad_clip", non_negative, ">= 0 (0 = no clipping)")
    p, f = cfg.pretrain, cfg.finetune
    _require(cfg, "pretrain.collab_batch_size", positive, ">= 1")
    for name in ("content_epochs", "rounds", "content_every"):
        _require(cfg, f"pretrain.{name}", non_negative, ">= 0")
    if p.do_pretrain and p.content_epochs + p.rounds == 0:
        raise ConfigError("keys 'pretrain.content_epochs' and 'pretrain.rounds' are both 0 with pretrain.do_pretrain=true; "
                          "set pretrain.do_pretrain=false for the NoPretrain ablation")
    _require(cfg, "finetune.epochs", non_negative, ">= 1 (finetune.do_finetune=false is the NoFineTune ablation)")
    if f.do_finetune and f.epochs == 0:
        raise ConfigError("key 'finetune.epochs' must be >= 1 when finetune.do_finetune=true "
                          "(finetune.do_finetune=false is the NoFineTune ablation)")
    if not (p.do_pretrain or f.do_finetune):
        raise ConfigError("keys 'pretrain.do_pretrain' and 'finetune.do_finetune' are both false: nothing would be trained")
    _require(cfg, "finetune.step_budget", non_negative, ">= 0 (0 = always finetune.epochs)")
    _require(cfg, "finetune.patience", non_negative, ">= 0 (0 = never stop early)")
    _require(cfg, "finetune.residual_scale_grid", lambda g: all(v >= 0 and v != float("inf") for v in g),
             "a list of finite scales >= 0")
    if f.residual_scale_grid and cfg.model.graph_residual == "none":
        raise ConfigError("key 'finetune.residual_scale_grid' needs a graph residual (model.graph_residual=ease or cooc)")
    _require(cfg, "finetune.lowpass_scale_grid", lambda g: all(v >= 0 and v != float("inf") for v in g),
             "a list of finite scales >= 0")
    _require(cfg, "finetune.cold_map_alpha_grid", lambda g: len(g) > 0 and all(0 < v < float("inf") for v in g),
             "a non-empty list of finite ridge alphas > 0")
    _require(cfg, "finetune.cold_item_text_scale_grid", lambda g: len(g) > 0 and all(0 <= v < float("inf") for v in g),
             "a non-empty list of finite scales >= 0")
    _require(cfg, "finetune.cold_item_transfer_grid", lambda g: len(g) > 0 and all(0 <= v < float("inf") for v in g),
             "a non-empty list of finite weights >= 0")
    _require(cfg, "finetune.cold_item_neighbour_power_grid",
             lambda g: len(g) > 0 and all(0 < v < float("inf") for v in g), "a non-empty list of finite powers > 0")
    _require(cfg, "finetune.cold_item_gain_grid", lambda g: len(g) > 0 and all(0 < v < float("inf") for v in g),
             "a non-empty list of finite gains > 0")
    _require(cfg, "finetune.sweep_max_users", lambda v: v >= 0, "a number of users >= 0 (0 = every user)")
    _require(cfg, "finetune.cold_item_warm_tolerance", lambda v: 0.0 <= v <= 1.0, "a fraction in [0, 1]")
    _require(cfg, "finetune.cold_item_offset_grid", lambda g: len(g) > 0 and all(abs(v) < float("inf") for v in g),
             "a non-empty list of finite offsets")
    if f.lowpass_scale_grid and cfg.model.graph_lowpass_rank <= 0:
        raise ConfigError("key 'finetune.lowpass_scale_grid' needs a low-pass residual (model.graph_lowpass_rank > 0)")
    if f.lowpass_rank_grid:
        _require(cfg, "finetune.lowpass_rank_grid", lambda g: all(1 <= r <= cfg.model.graph_lowpass_rank for r in g),
                 f"a list of ranks in [1, model.graph_lowpass_rank = {cfg.model.graph_lowpass_rank}]")
        if not f.lowpass_scale_grid:
            raise ConfigError("key 'finetune.lowpass_rank_grid' needs finetune.lowpass_scale_grid (the scales each rank is "
                              "swept with)")
    if not 0.0 <= f.visible_target_weight <= 1.0:
        raise ConfigError(f"key 'finetune.visible_target_weight' must be in [0, 1], got {f.visible_target_weight}")
    if not 0.0 <= f.mask_fraction < 1.0:
        raise ConfigError(f"key 'finetune.mask_fraction' must be in [0, 1), got {f.mask_fraction}")
    for name in ("recall_ks", "ndcg_ks"):
        _require(cfg, f"eval.{name}", lambda ks: len(ks) > 0 and all(k >= 1 for k in ks), "a non-empty list of cut-offs >= 1")
    _require(cfg, "eval.batch_size", positive, ">= 1")
    _require(cfg, "eval.num_examples", non_negative, ">= 0")
    _require(cfg, "data.max_length", positive, ">= 1")
    _require(cfg, "data.bpe_vocab", positive, ">= 1")
    _require(cfg, "output.save_total_limit", positive, ">= 1")
    _require(cfg, "num_threads", non_negative, ">= 0")
    _require(cfg, "output.log_every", positive, ">= 1")
    try:
        kind, k = parse_metric_name(f.selection_metric)
    except ValueError as err:
        raise ConfigError(f"key 'finetune.selection_metric': {err}") from None
    ks = cfg.eval.ndcg_ks if kind == "ndcg" else cfg.eval.recall_ks
    if k not in ks:
        raise ConfigError(f"key 'finetune.selection_metric' ({f.selection_metric}) needs k={k} in the eval cut-offs {ks}")
    known = {"content", "review", "second_order"}
    bad = [c for c in cfg.data.pretrain_configs if c not in known]
    if bad:
        raise ConfigError(f"key 'data.pretrain_configs' has unknown prompt configs {bad}; known: {sorted(known)}")


def parse_overrides(overrides: list[str]) -> dict:
    """``["a.b=1", "c=[x, y]"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override '{key}': cannot parse value {raw!r}: {err}") from None
        node = nested
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{key}' conflicts with an earlier override")
        node[parts[-1]] = value
    return nested


def preset_summary(name: str) -> str:
    """The first comment line of a preset's YAML, without its ``# <name>:`` head (what ``--help`` lists)."""
    first = (CONFIG_DIR / f"{name}.yaml").read_text(encoding="utf-8").splitlines()[0]
    return first.lstrip("# ").removeprefix(f"{name}:").strip()


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A preset name (``demo``) or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        return p
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise ConfigError(f"unknown preset '{name_or_path}' (presets: {', '.join(PRESETS)}) and no such file")
    return candidate


def load_config(name_or_path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a preset or YAML file, apply dotted overrides, validate. ``None`` = the built-in defaults."""
    cfg = RunConfig()
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from None
        _apply(cfg, raw, "", str(path))
    if overrides:
        _apply(cfg, parse_overrides(overrides), "", "command-line override")
    _validate(cfg)
    return cfg


def config_from_dict(d: dict) -> RunConfig:
    """Rebuild a RunConfig from ``to_dict()`` output (e.g. a saved run config)."""
    cfg = RunConfig()
    _apply(cfg, d, "", "dict")
    _validate(cfg)
    return cfg
