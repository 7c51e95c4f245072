"""data_builders: raw reviews -> split -> graph, tokenizer, prompt corpora (a dataset folder) -> batches.

Public API (imported lazily so ``import data_builders`` stays cheap):

- ``read_source``, ``make_synthetic``, ``build_split``: raw files / synthetic data -> ``SplitDataset`` (data-1)
- ``build_dataset_folder(split, out, ...)``: tokenizer + train-only graph + prompt corpora -> dataset folder
- ``build(BuildConfig(...))``: the typed build (``python -m data_builders build`` parses its flags into a BuildConfig)
- ``Corpus(folder)``: the one owner of a dataset folder or published model folder (sizes, rows, collator, prompt
  encoder, interaction matrices, ``export_to``)
- ``GraphCollator``: rows -> padded tensors + (B, L, L) ``hop_distances`` + multi-hot ``target_items``
- ``RecPromptEncoder``: (user or None, items) -> ``input_ids`` + ``node_positions`` without BPE at call time
- ``HopDistances`` / ``InteractionGraph``: capped BFS hop distances of the train graph
- ``PromptConfig``: which corpora are built (ablations are configs)
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "read_source": ".readers",
    "make_synthetic": ".synthetic",
    "build_split": ".preprocess",
    "SplitDataset": ".records",
    "ItemMeta": ".records",
    "RawDataset": ".records",
    "build_dataset_folder": ".folder",
    "Corpus": ".corpus",
    "DataFolderError": ".corpus",
    "RecExample": ".corpus",
    "BuildConfig": ".build",
    "build": ".build",
    "GraphCollator": ".collate",
    "RecPromptEncoder": ".prompts",
    "PromptConfig": ".prompts",
    "HopDistances": ".graph",
    "InteractionGraph": ".graph",
    "GraphGPT2RecPrompts": ".builder",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'data_builders' has no attribute {name!r}")
