"""Inference Endpoints custom handler (shipped as ``handler.py`` in the published repo).

``EndpointHandler(path)(data)`` with ``data = {"inputs": {"user": "<raw user id>"} | {"history": [...]} | [...],
"parameters": {"top_k": 10, "exclude_seen": true}}`` returns one list of ``{"item_id", "title", "score"}`` per
input (always a list of lists). It is the repo's own ``graph-recommendation`` pipeline (pipeline_graphgpt2.py),
so an endpoint answers exactly what the pipeline and the model card's snippets answer.
"""
from typing import Any

from transformers import pipeline


class EndpointHandler:
    def __init__(self, path: str = ""):
        self.pipe = pipeline("graph-recommendation", model=path or ".", trust_remote_code=True)

    def __call__(self, data: dict[str, Any]) -> list:
        if not isinstance(data, dict) or "inputs" not in data:
            raise ValueError('request body must be {"inputs": ..., "parameters": {...}}')
        inputs = data["inputs"]
        params = dict(data.get("parameters") or {})
        unknown = set(params) - {"top_k", "exclude_seen"}
        if unknown:
            raise ValueError(f"unknown parameters {sorted(unknown)}; supported: top_k, exclude_seen")
        batch = [inputs] if isinstance(inputs, dict) else list(inputs)
        return self.pipe(batch, **params)
