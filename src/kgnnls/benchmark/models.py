"""Every leaderboard model behind one call: ``fit_model(name, params, fold, ...)``.

Two kinds of model take part, trained on the same fold:

* **rankers** (:mod:`kgnnls.rankers`: popularity, item kNN, EASE, ALS, BPR,
  LightGCN, ...): fitted on the fold's training positives;
* **trained CTR models** (KGNN-LS, KGCN and the paper's baselines): trained by
  :func:`kgnnls.train.fit` on the fold's labelled rows, from their published
  preset (:mod:`kgnnls.presets`) with the trial's values on top.

Iterative models of both kinds run under the same budget (epoch cap and
patience) and stop early on the same validation metric. A model's search
space is the one declared next to its code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kgnnls.benchmark.protocol import Fold
from kgnnls.config import Config
from kgnnls.data.ablation import ablate_kg
from kgnnls.errors import ConfigError
from kgnnls.evaluate import Scorer
from kgnnls.rankers import RANKERS, RankData, fit_early_stopping, ranker_class
from kgnnls.space import Space

#: trained CTR models: name -> module declaring ``SEARCH_SPACES[name]``
TRAINED: dict[str, str] = {
    "kgnn-ls": "kgnnls.model", "kgcn": "kgnnls.model",
    "svd": "kgnnls.baselines.mf", "libfm": "kgnnls.baselines.fm",
    "libfm-transe": "kgnnls.baselines.fm", "per": "kgnnls.baselines.per",
    "cke": "kgnnls.baselines.cke", "ripplenet": "kgnnls.baselines.ripplenet",
}
#: trained models that read the knowledge graph
TRAINED_KG = frozenset({"kgnn-ls", "kgcn", "libfm-transe", "per", "cke", "ripplenet"})


def model_names() -> list[str]:
    """Every model the leaderboard knows, as the CLI spells them."""
    return [*RANKERS, *TRAINED]


def check_models(names: list[str]) -> list[str]:
    """``names`` deduplicated in order; ConfigError naming an unknown one."""
    known = model_names()
    for name in names:
        if name not in known:
            raise ConfigError(f"unknown model {name!r}; known: {', '.join(known)}")
    return list(dict.fromkeys(names))


def search_space(name: str) -> Space:
    """The search space declared next to model ``name``'s code."""
    if name in TRAINED:
        return importlib.import_module(TRAINED[name]).SEARCH_SPACES[name]
    return ranker_class(name).space


def uses_kg(name: str) -> bool:
    return name in TRAINED_KG if name in TRAINED else ranker_class(name).uses_kg


@dataclass(frozen=True)
class Budget:
    """What every iterative model gets: an epoch cap and the early-stopping patience."""

    epochs: int = 30
    patience: int = 3


#: ``validate(scorer) -> score`` and ``on_epoch(epoch, score)`` of one fit
Validate = Callable[[Scorer], float]
OnEpoch = Callable[[int, float], None]


def fit_model(name: str, params: dict[str, Any], fold: Fold, budget: Budget,
              validate: Validate, on_epoch: OnEpoch | None = None, kg: str = "full",
              dataset_name: str | None = None) -> Scorer:
    """Train model ``name`` with ``params`` on ``fold``; returns its scorer.

    ``kg`` ablates the knowledge graph (``full``, ``none``, ``shuffle:P``, ...;
    see :mod:`kgnnls.data.ablation`); ``dataset_name`` picks the published
    preset the trial's values override (trained models).
    """
    if kg != "full" and not uses_kg(name):
        raise ConfigError(f"kg={kg} needs a KG-aware model; {name} reads no knowledge graph")
    if name in TRAINED:
        return _fit_trained(name, params, fold, budget, validate, on_epoch, kg, dataset_name)
    ranker = ranker_class(name)(seed=fold.seed, **params)
    data = _rank_data(fold, kg)
    if ranker.iterative:
        fit_early_stopping(ranker, data, validate, budget.epochs, budget.patience, on_epoch)
    else:
        ranker.fit(data)
        if on_epoch is not None:
            on_epoch(1, validate(ranker))
    return ranker


def _rank_data(fold: Fold, kg: str) -> RankData:
    ds = fold.dataset
    if kg != "full":
        ds = ablate_kg(ds, kg, fold.seed, train_rows=fold.split.train)
    return RankData.from_rows(fold.split.train, ds.n_users, ds.n_items, ds.kg, ds.n_entities,
                              ds.n_relations)


def base_config(name: str, dataset_name: str | None) -> Config:
    """The published preset of ``name`` on ``dataset_name``, else the defaults."""
    if dataset_name is not None:
        try:
            return Config.preset(dataset_name, model=name)
        except ConfigError:
            pass
    return Config(model=name)


def _fit_trained(name: str, params: dict[str, Any], fold: Fold, budget: Budget,
                 validate: Validate, on_epoch: OnEpoch | None, kg: str,
                 dataset_name: str | None) -> Scorer:
    from kgnnls import scoring
    from kgnnls.config import RunOptions
    from kgnnls.train import fit

    overrides: dict[str, Any] = {**params, "seed": fold.seed, "epochs": budget.epochs,
                                 "patience": budget.patience}
    if kg != "full":
        overrides["kg"] = kg
    config = base_config(name, dataset_name).with_overrides(overrides)

    def report(record: dict) -> None:
        if on_epoch is not None:
            on_epoch(record["epoch"], record["val_score"])

    options = RunOptions(threads=1)
    held: list[scoring.Scorer] = []  # the network's scorer, refreshed after every epoch

    def scorer(network: Any) -> scoring.Scorer:
        if not held or held[0].model is not network:
            held[:] = [scoring.Scorer(network, threads=options.threads,
                                      compiled=options.training_path != "autograd")]
        return held[0].refresh()

    fitted = fit(fold.dataset, config, split=fold.split, progress=False,
                 validate=lambda network: validate(scorer(network)), on_epoch=report,
                 options=options)
    return scorer(fitted.network)


__all__ = ["TRAINED", "Budget", "base_config", "check_models", "fit_model",
           "model_names", "search_space", "uses_kg"]
