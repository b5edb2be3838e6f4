"""The leaderboard run: tune every model, retrain its best setting per seed, test, compare.

:func:`run_benchmark` is the whole job of ``kgnnls benchmark``. For each model
(in worker processes with ``jobs > 1``):

1. tune (:mod:`kgnnls.benchmark.tuning`) on the validation split of the first seed;
2. train the best setting on every seed's fold and evaluate once on test,
   overall and on the cold slices (:mod:`kgnnls.benchmark.protocol`);
3. KG-aware models again with the knowledge graph removed (``kg=none``) and
   randomized (``kg=shuffle:1.0``), same seeds: the KG gain.

Finished seeds are cached as JSON under ``OUT/cache-DATASET/`` (keyed by the
model, its best setting, the budget and the protocol), trials live in the
Optuna storage: an interrupted run continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from kgnnls.benchmark.models import Budget, check_models, fit_model, search_space, uses_kg
from kgnnls.benchmark.protocol import Fold, parse_metric
from kgnnls.benchmark.tuning import best_of, open_storage, run_study, trial_records
from kgnnls.data.dataset import Dataset
from kgnnls.diagnostics import relation_entropy
from kgnnls.errors import ConfigError
from kgnnls.space import check_space
from kgnnls.storage import atomic_write_json

#: bumped when the protocol changes, so cached seeds of an older one are not reused
PROTOCOL_VERSION = 1
#: the KG ablations every KG-aware model runs at its tuned setting
ABLATIONS = ("none", "shuffle:1.0")


@dataclass(frozen=True)
class BenchmarkSpec:
    """Everything that defines a leaderboard (and so its cache keys)."""

    dataset: str
    models: tuple[str, ...]
    out: Path
    trials: int = 20
    seeds: int = 5
    metric: str = "ndcg@20"
    budget: Budget = field(default_factory=Budget)
    val_users: int = 0
    """Validation users ranked per evaluation: 0 for all, else a seeded sample."""
    data_dir: str | None = None
    storage: str | None = None
    fixed: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per model, search-space keys pinned to a value (removed from the search)."""
    ablate: tuple[str, ...] = ()
    """KG-aware models that are also run with each of ``ABLATIONS`` (the KG gain)."""
    seed: int = 0
    """Seed of the tuning samplers (the folds are seeds 0 .. seeds-1)."""

    def validate(self) -> BenchmarkSpec:
        check_models(list(self.models))
        parse_metric(self.metric)
        for name, (low, what) in {"trials": (1, self.trials), "seeds": (1, self.seeds),
                                  "epochs": (1, self.budget.epochs),
                                  "patience": (1, self.budget.patience)}.items():
            if what < low:
                raise ConfigError(f"{name} must be >= {low}, got {what}")
        for model in self.ablate:
            if model not in self.models or not uses_kg(model):
                raise ConfigError(f"--ablate names {model!r}, which is not a KG-aware model "
                                  f"among the models run")
        for model, pinned in self.fixed.items():
            if model not in self.models:
                raise ConfigError(f"a fixed value is given for {model!r}, which is not among "
                                  f"the models run ({', '.join(self.models)})")
            check_space(model, search_space(model), list(pinned))
        return self

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out / f'benchmark-{self.slug}.db').resolve()}"

    @property
    def slug(self) -> str:
        return Path(self.dataset).name if Path(self.dataset).is_dir() else self.dataset


class Folds:
    """Datasets and folds by seed, loaded once per process."""

    def __init__(self, spec: BenchmarkSpec):
        self.spec = spec
        self._folds: dict[int, Fold] = {}

    def __call__(self, seed: int) -> Fold:
        if seed not in self._folds:
            from kgnnls.data.registry import load_dataset

            ds: Dataset = load_dataset(self.spec.dataset, seed=seed, data_dir=self.spec.data_dir,
                                       progress=False)
            self._folds[seed] = Fold.of(ds, seed)
        return self._folds[seed]


def run_benchmark(spec: BenchmarkSpec, jobs: int = 1, log: Callable[[str], None] | None = None
                  ) -> dict[str, Any]:
    """Run (or resume) the leaderboard; returns its results (see :mod:`.report`)."""
    spec = spec.validate()
    spec.out.mkdir(parents=True, exist_ok=True)
    open_storage(spec.storage_url)  # a bad URL fails here, before any work
    t0 = time.perf_counter()
    if jobs > 1 and len(spec.models) > 1:
        with ProcessPoolExecutor(min(jobs, len(spec.models)),
                                 mp_context=get_context("spawn")) as pool:
            entries = list(pool.map(_model_in_worker, [spec] * len(spec.models), spec.models))
    else:
        entries = [run_model(spec, name, Folds(spec), log) for name in spec.models]
    from kgnnls.benchmark.report import assemble

    return assemble(spec, dict(zip(spec.models, entries, strict=True)),
                    wall_seconds=time.perf_counter() - t0)


def _model_in_worker(spec: BenchmarkSpec, name: str) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    return run_model(spec, name, Folds(spec), _stderr_log)


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_model(spec: BenchmarkSpec, name: str, folds: Folds,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Tune ``name``, then test its best setting on every seed (and its KG ablations)."""
    say = log or (lambda _m: None)
    study = _tune(spec, name, folds, say)
    best_params, best_value = best_of(study)
    params = {**spec.fixed.get(name, {}), **best_params}
    say(f"{name}: best validation {spec.metric} {best_value:.4f} with {params}")
    runs = [_seed_run(spec, name, params, folds, seed, "full", say) for seed in range(spec.seeds)]
    ablation = {}
    if name in spec.ablate:
        ablation = {mode: [_seed_run(spec, name, params, folds, s, mode, say)
                           for s in range(spec.seeds)] for mode in ABLATIONS}
    return {"best_params": params, "best_validation": best_value,
            "trials": trial_records(study), "runs": runs, "ablation": ablation}


def _tune(spec: BenchmarkSpec, name: str, folds: Folds, say: Callable[[str], None]) -> Any:
    pinned = spec.fixed.get(name, {})
    space = {k: v for k, v in search_space(name).items() if k not in pinned}
    fold = folds(0)
    users = fold.validation_users(spec.val_users)

    def objective(params: dict[str, Any], report: Callable[[int, float], None]) -> float:
        best = [float("-inf")]

        def on_epoch(epoch: int, score: float) -> None:
            best[0] = max(best[0], score)
            report(epoch, score)

        fit_model(name, {**pinned, **params}, fold, spec.budget,
                  lambda s: fold.validation_score(s, spec.metric, users), on_epoch,
                  dataset_name=spec.dataset)
        return best[0]

    study_name = f"{spec.slug}-{name}-{spec.metric}-{_digest(_tuning_identity(spec, name))}"
    return run_study(open_storage(spec.storage_url), study_name, space, spec.trials, spec.seed,
                     objective, say, label=name)


def _tuning_identity(spec: BenchmarkSpec, name: str) -> dict[str, Any]:
    return {"protocol": PROTOCOL_VERSION, "budget": asdict(spec.budget),
            "val_users": spec.val_users, "fixed": spec.fixed.get(name, {}), "seed": spec.seed}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _seed_run(spec: BenchmarkSpec, name: str, params: dict[str, Any], folds: Folds, seed: int,
              kg: str, say: Callable[[str], None]) -> dict[str, Any]:
    """Train ``params`` on seed ``seed``'s fold and test it; cached."""
    key = _digest({**_tuning_identity(spec, name), "params": params, "metric": spec.metric,
                   "kg": kg})
    suffix = "" if kg == "full" else f"-kg-{kg.replace(':', '_')}"
    path = spec.out / f"cache-{spec.slug}" / name / f"{key}-seed{seed}{suffix}.json"
    if path.exists():
        return json.loads(path.read_text())
    fold = folds(seed)
    users = fold.validation_users(spec.val_users)
    t0 = time.perf_counter()
    scorer = fit_model(name, params, fold, spec.budget,
                       lambda s: fold.validation_score(s, spec.metric, users), kg=kg,
                       dataset_name=spec.dataset)
    t1 = time.perf_counter()
    result = fold.test_results(scorer, spec.metric)
    record = {"model": name, "seed": seed, "kg": kg, "params": params,
              "fit_seconds": t1 - t0, "eval_seconds": time.perf_counter() - t1,
              "results": result, "diagnostics": _diagnostics(scorer)}
    atomic_write_json(path, record)
    mean = result["overall"]["mean"][spec.metric]
    say(f"{name}{'' if kg == 'full' else f' (kg={kg})'}: seed {seed} test {spec.metric} "
        f"{mean:.4f} (fit {t1 - t0:.1f} s)")
    return record


def _diagnostics(scorer: Any) -> dict[str, Any]:
    """The relation-entropy report of KG models that have user-specific relation weights."""
    model = getattr(scorer, "model", scorer)  # a trained model's kgnnls.scoring.Scorer
    if not hasattr(model, "relation_weights"):
        return {}
    return {"relation_entropy": relation_entropy(model)}


__all__ = ["ABLATIONS", "BenchmarkSpec", "run_benchmark", "run_model"]
