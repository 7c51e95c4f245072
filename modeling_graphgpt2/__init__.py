"""GraphGPT2: a graph-aware GPT-2 recommender as a Hugging Face model.

Importing the package registers `graphgpt2` with AutoConfig / AutoModel, and marks the classes for
`register_for_auto_class` so that `save_pretrained` writes `configuration_graphgpt2.py`,
`modeling_graphgpt2.py` and an `auto_map` (loadable with `trust_remote_code=True` without this package).
"""

from transformers import AutoConfig, AutoModel

from .configuration_graphgpt2 import GRAPH_BIAS_MODES, GRAPH_RESIDUAL_KINDS, GraphGPT2Config
from .modeling_graphgpt2 import (
    GraphHopBias,
    GraphGPT2Attention,
    GraphGPT2ForRecommendation,
    GraphItemResidual,
    GraphGPT2Model,
    GraphGPT2RecOutput,
    GraphGPT2Recommendations,
    GraphIDEmbeddings,
    graph_bias_values,
)

AutoConfig.register("graphgpt2", GraphGPT2Config, exist_ok=True)
AutoModel.register(GraphGPT2Config, GraphGPT2ForRecommendation, exist_ok=True)
GraphGPT2Config.register_for_auto_class()
GraphGPT2ForRecommendation.register_for_auto_class("AutoModel")

__all__ = [
    "GRAPH_BIAS_MODES",
    "GRAPH_RESIDUAL_KINDS",
    "GraphHopBias",
    "GraphGPT2Attention",
    "GraphGPT2Config",
    "GraphGPT2ForRecommendation",
    "GraphGPT2Model",
    "GraphGPT2RecOutput",
    "GraphGPT2Recommendations",
    "GraphIDEmbeddings",
    "GraphItemResidual",
    "graph_bias_values",
]
