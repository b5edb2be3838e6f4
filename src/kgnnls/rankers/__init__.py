"""Top-K rankers: collaborative-filtering baselines fitted on training positives.

Each ranker is a :class:`Ranker` with its search space next to its code; see
docs/rankers.md. Modules are imported on first use (``implicit`` and
scipy's LAPACK load only for the models that need them).
"""

from __future__ import annotations

import importlib

from kgnnls.errors import ConfigError
from kgnnls.rankers.base import RankData, Ranker, fit_early_stopping

#: ranker name (as the CLI spells it) -> "module:Class"
RANKERS: dict[str, str] = {
    "popularity": "kgnnls.rankers.popularity:Popularity",
    "itemknn": "kgnnls.rankers.knn:ItemKNN",
    "itemknn-kg": "kgnnls.rankers.knn:KGItemKNN",
    "ease": "kgnnls.rankers.ease:EASE",
    "ease-kg": "kgnnls.rankers.ease:KGEASE",
    "als": "kgnnls.rankers.mf:ALS",
    "bpr": "kgnnls.rankers.mf:BPR",
    "lightgcn": "kgnnls.rankers.lightgcn:LightGCN",
    "lightgcn-kg": "kgnnls.rankers.lightgcn:KGLightGCN",
    "lightgcn-cold-kg": "kgnnls.rankers.lightgcn:ColdKGLightGCN",
}


def ranker_class(name: str) -> type[Ranker]:
    """The class of ranker ``name`` (imported lazily); ConfigError for an unknown name."""
    if name not in RANKERS:
        raise ConfigError(f"unknown ranker {name!r}; known: {', '.join(sorted(RANKERS))}")
    module, cls = RANKERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["RANKERS", "RankData", "Ranker", "fit_early_stopping", "ranker_class"]
