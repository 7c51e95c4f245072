"""Inference Endpoints custom handler (shipped as ``handler.py`` in the published repo).

``EndpointHandler(path)(data)`` with ``data = {"inputs": {"user": "<raw user id>"} | {"history": [...]} | [...],
"parameters": {"top_k": 10, "exclude_seen": true, "new_items": [{"id": ..., "title": ...}]}}`` returns one list of ``{"item_id", "title", "score"}`` per
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
            raise ValueError('request body must be {"inputs": ..., "parameters": {...}}, got '
                             f"{type(data).__name__} {data!r:.80}")
        unknown = sorted(map(str, set(data) - {"inputs", "parameters"}))
        if unknown:
            raise ValueError(f'unknown request body keys {unknown}; the body is {{"inputs": ..., "parameters": {{...}}}}')
        params = data.get("parameters")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise ValueError(f'"parameters" must be an object such as {{"top_k": 10}}, got {type(params).__name__}')
        unknown = sorted(map(str, set(params) - {"top_k", "exclude_seen", "new_items"}))
        if unknown:
            raise ValueError(f"unknown parameters {unknown}; supported: top_k, exclude_seen, new_items")
        inputs = data["inputs"]
        batch = [inputs] if isinstance(inputs, dict) else inputs  # the pipeline checks the rest by type
        return self.pipe(batch, **params)
