"""Equal-budget tuning: one Optuna study per model, resumable and shareable.

Every model gets ``trials`` finished trials (complete or pruned) of TPE over
its declared search space, scored by the validation metric of the fold of
the tuning seed. A study lives in an Optuna RDB storage (a SQLite file in the
output directory unless ``--storage`` names another database), so:

* an interrupted search (even ``kill -9``) resumes: trials of a dead process
  are failed by Optuna's heartbeat and run again;
* several processes or machines can share one search: each starts a trial
  only while fewer than ``trials`` are finished or running.

Determinism: the ``i``-th trial that did not fail is suggested by a TPE
sampler seeded with ``(seed, i)`` from the study's history (failed trials do
not enter TPE's history either), so the same seed gives the same trials
whether the search ran in one go or was resumed after a kill (a resumed
search first waits, at most the grace period, for the trials it finds running
to finish or be failed).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from typing import Any

from kgnnls.errors import ConfigError
from kgnnls.seeding import rng
from kgnnls.space import Space, suggest

#: seconds between a running trial's heartbeats, and after which a silent one is failed
HEARTBEAT_S, GRACE_S = 5, 30


def open_storage(url: str) -> Any:
    """An Optuna RDB storage with heartbeats; ConfigError if ``url`` cannot be opened."""
    import optuna

    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S,
                                                  grace_period=GRACE_S)
        except Exception as e:  # SQLAlchemy raises many types for a bad URL or database
            # processes opening a new database at once race to create its schema: the
            # loser gets "table ... already exists" or a duplicate alembic_version row
            # (IntegrityError), then finds the schema made
            racing = type(e).__name__ == "IntegrityError" or "already exists" in str(e)
            if racing and attempt < 2:
                time.sleep(0.5)
                continue
            raise ConfigError(f"cannot open storage {url!r}: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from None
    raise AssertionError("unreachable")


def _sampler(seed: int, index: int, trials: int) -> Any:
    import optuna

    trial_seed = int(rng(seed, f"tpe-{index}").integers(0, 2**31 - 1))
    return optuna.samplers.TPESampler(seed=trial_seed, n_startup_trials=max(3, trials // 3))


def run_study(storage: Any, study_name: str, space: Space, trials: int, seed: int,
              objective: Callable[[dict[str, Any], Callable[[int, float], None]], float],
              log: Callable[[str], None] | None = None, label: str = "") -> Any:
    """Bring study ``study_name`` to ``trials`` finished trials; returns the study.

    ``objective(params, report)`` trains with ``params`` and returns the
    validation score; it calls ``report(epoch, score)`` after each epoch, which
    raises ``optuna.TrialPruned`` when the median pruner stops the trial.
    A search space without parameters needs one trial.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name, storage=storage, load_if_exists=True, direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2))
    target = trials if space else 1
    states = optuna.trial.TrialState
    failures = 0
    _settle(study, time.monotonic() + GRACE_S + 2 * HEARTBEAT_S)
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        all_trials = study.get_trials(deepcopy=False)
        done = sum(t.state in (states.COMPLETE, states.PRUNED) for t in all_trials)
        running = sum(t.state == states.RUNNING for t in all_trials)
        if done >= target:
            break
        if done + running >= target:  # another process holds the last trials: wait for them
            time.sleep(1.0)
            continue
        before = len(all_trials)
        with contextlib.suppress(_SurplusTrialError):  # failed, not counted as a failure
            study.optimize(_wrap(objective, space, seed, target), n_trials=1,
                           catch=(RuntimeError,))
        last = study.get_trials(deepcopy=False)[before:]
        failures += sum(t.state == states.FAIL and not t.user_attrs.get("surplus")
                        for t in last)
        if failures > target:
            raise ConfigError(f"{label or study_name}: {failures} trials failed; see the log")
        if log is not None:
            _log_progress(study, label or study_name, target, log)
    return study


class _SurplusTrialError(Exception):
    """A trial created while ``target`` earlier ones were already finished or running."""


def _settle(study: Any, deadline: float) -> None:
    """Wait (until ``deadline``) for trials running at start-up to finish or be failed.

    A trial left running by a killed process is failed only once its heartbeat is
    ``GRACE_S`` old; starting the next trial before that would count the dead one
    as live and shift the seeds of the rest, so a resumed search waits it out.
    """
    import optuna

    running = optuna.trial.TrialState.RUNNING
    while time.monotonic() < deadline:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        if not any(t.state == running for t in study.get_trials(deepcopy=False)):
            return
        time.sleep(0.25)


def _wrap(objective: Callable, space: Space, seed: int, target: int) -> Callable:
    import optuna

    def run(trial: optuna.Trial) -> float:
        # processes sharing the study may all have seen room for one more trial: only
        # the first ``target`` live trials by number run, a later one fails at once
        states = optuna.trial.TrialState
        ahead = sum(t.number < trial.number and t.state in (states.COMPLETE, states.PRUNED,
                                                            states.RUNNING)
                    for t in trial.study.get_trials(deepcopy=False))
        if ahead >= target:
            trial.set_user_attr("surplus", True)
            raise _SurplusTrialError(f"{ahead} trials are already finished or running")
        # seeded by the trial's rank among the live ones (sampling is lazy: it happens in
        # suggest): processes that started trials at once draw different values, and a
        # trial that died with its process (failed) does not shift the seeds of the rest
        trial.study.sampler = _sampler(seed, ahead, target)
        params = suggest(trial, space)

        def report(epoch: int, score: float) -> None:
            trial.report(score, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        t0 = time.perf_counter()
        try:
            return objective(params, report)
        finally:
            trial.set_user_attr("seconds", time.perf_counter() - t0)

    return run


def _log_progress(study: Any, label: str, target: int, log: Callable[[str], None]) -> None:
    import optuna

    finished = [t for t in study.get_trials(deepcopy=False)
                if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    complete = [t for t in finished if t.value is not None and
                t.state == optuna.trial.TrialState.COMPLETE]
    best = max((t.value for t in complete), default=float("nan"))
    last = finished[-1] if finished else None
    value = float("nan") if last is None or last.value is None else last.value
    what = "" if last is None else f"{last.state.name.lower()} {value:.4f}"
    log(f"{label}: trial {len(finished)}/{target} {what}  best so far {best:.4f}")


def best_of(study: Any) -> tuple[dict[str, Any], float]:
    """Params and value of the best complete trial (lowest number among equals)."""
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False)
                if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise ConfigError(f"{study.study_name}: no trial completed")
    best = max(complete, key=lambda t: (t.value, -t.number))
    return dict(best.params), float(best.value)


def trial_records(study: Any) -> list[dict[str, Any]]:
    """Every trial as plain data (number, state, value, params, seconds)."""
    return [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
             "seconds": t.user_attrs.get("seconds")} for t in study.get_trials(deepcopy=False)]


__all__ = ["best_of", "open_storage", "run_study", "trial_records"]
