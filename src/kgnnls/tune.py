"""Hyper-parameter search with Optuna over the paper's grid (Appendix B).

Objective: the best validation AUC of a run. Trials report every epoch's
validation AUC, so a median pruner stops unpromising ones early. A study in
``storage`` (e.g. ``sqlite:///tune.db``) is resumable: ``trials`` is the
number of finished trials to reach, so re-running after an interruption
runs only the missing ones.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kgnnls.config import Config, RunOptions
from kgnnls.data.dataset import Dataset
from kgnnls.errors import ConfigError
from kgnnls.extras import require_extra
from kgnnls.storage import atomic_write_bytes, atomic_write_json

#: The paper's search space (Appendix B), by Config field.
PAPER_SPACE: dict[str, list[Any]] = {
    "n_neighbors": [2, 4, 8, 16, 32],
    "dim": [4, 8, 16, 32, 64, 128],
    "n_layers": [1, 2, 3, 4],
    "ls_weight": [0.0, 0.01, 0.1, 0.5, 1.0, 5.0],
    "l2_weight": [1e-9, 1e-8, 1e-7, 2e-7, 5e-7, 1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4,
                  5e-4, 1e-3],
    "lr": [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1],
}


def tune(dataset: Dataset, base: Config, trials: int, storage: str | None = None,
         study_name: str | None = None, space: dict[str, list[Any]] | None = None,
         out: Path | None = None, log: Callable[[str], None] | None = None,
         options: RunOptions | None = None) -> dict[str, Any]:
    """Run (or resume) a study; returns the best trial's config and value.

    ``space`` searches ``Config`` fields; ``options`` (threads, training path,
    ...) run every trial.
    """
    require_extra("tune", "tuning")
    import optuna

    from kgnnls.recommender import KGNNLS

    space = {**PAPER_SPACE, **(space or {})}
    unknown = set(space) - set(Config.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown search field(s): {', '.join(sorted(unknown))}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name or f"kgnnls-{dataset.name}", storage=storage,
        load_if_exists=True, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=base.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2))

    def objective(trial: optuna.Trial) -> float:
        values = {name: trial.suggest_categorical(name, choices) for name, choices in
                  space.items()}
        config = base.with_overrides(values)

        def report(record: dict) -> None:
            trial.report(record["val_auc"], record["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned()

        model = KGNNLS(config, options).fit(dataset, on_epoch=report)
        best = max(h["val_auc"] for h in model.history)
        if log:
            log(f"trial {trial.number}: val AUC {best:.4f}  {config.as_set_line(list(values))}")
        return best

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = sum(t.state in finished for t in study.trials)
    if trials > done:
        study.optimize(objective, n_trials=trials - done, catch=(RuntimeError,))
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise ConfigError("no trial completed")
    best = study.best_trial
    best_config = base.with_overrides(best.params)
    result = {"study": study.study_name, "best_value": best.value, "best_params": best.params,
              "set_line": best_config.as_set_line(list(best.params)),
              "trials": [{"number": t.number, "state": t.state.name, "value": t.value,
                          "params": t.params} for t in study.trials]}
    if out is not None:
        atomic_write_json(out / "tune.json", result)
        if len(completed) >= 2:
            result["importance_png"] = str(_importance_plot(study, out / "tune-importance.png"))
    return result


def _importance_plot(study, path: Path) -> Path:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import warnings

    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_param_importances

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental feature"
        ax = plot_param_importances(study)
    fig = ax.figure
    fig.set_size_inches(6, 3.5)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


__all__ = ["PAPER_SPACE", "tune"]
