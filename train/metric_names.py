"""Names of the reported metrics and how to parse them (the keys of ``train.metrics.per_user_metrics``).

``recall@k`` divides hits by min(k, |relevant|) (the authors' code); ``recall@k_paper`` divides by |relevant|
(the paper's Eq. 8). ``ndcg@k`` uses binary gain and an ideal DCG over min(k, |relevant|) items.
"""
from __future__ import annotations

import re

_PATTERN = re.compile(r"^(recall|ndcg)@([1-9][0-9]*)(_paper)?$")


def parse_metric_name(name: str) -> tuple[str, int]:
    """``"recall@20"`` -> ``("recall", 20)``, ``"recall@20_paper"`` -> ``("recall_paper", 20)``."""
    m = _PATTERN.match(name)
    if not m or (m.group(1) == "ndcg" and m.group(3)):
        raise ValueError(f"metric '{name}' is not one of recall@K, recall@K_paper, ndcg@K (K a positive integer)")
    return m.group(1) + (m.group(3) or ""), int(m.group(2))
