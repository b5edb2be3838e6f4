"""Run (model, config, seed) cells once, cache their metrics, resume after a stop.

A cell is one training run plus its evaluation. Its result is cached as JSON
under ``OUT/cache/DATASET/<key>.json`` where the key hashes the dataset name,
the full effective config (seed included) and the run options that change
what evaluation reports (``RunOptions.REPORT_FIELDS``: the top-K lists; not
threads, training path, device or batch size), so the same cell requested by
two experiments (Table 3 and Table 4 share theirs) runs once, a re-run skips
finished cells, and an interrupted ``reproduce all`` resumes where it stopped.

Cells are independent (each seeds its own split, negatives, neighbours and
init), so ``jobs > 1`` runs them in that many worker processes, one thread
each, with the same numbers as one process.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from kgnnls.config import Config, RunOptions, split_settings
from kgnnls.data.dataset import Dataset
from kgnnls.data.registry import load_dataset
from kgnnls.storage import atomic_write_json

#: Bump when the meaning of cached results changes (metrics, protocol).
CACHE_VERSION = 2

#: Result keys kept per cell (the full metrics dict minus bulky parts).
_KEEP = ("val", "test", "test_paper_protocol", "reference", "ls_coverage", "train_seconds",
         "epochs_trained", "best_epoch", "training_path", "history", "dataset_fingerprint")


@dataclass(frozen=True)
class Cell:
    """One run: a model, config overrides and a seed."""

    model: str
    seed: int
    overrides: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, model: str, seed: int, **overrides: Any) -> Cell:
        return cls(model, seed, tuple(sorted(overrides.items())))

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.overrides)


@dataclass
class Runner:
    """Runs cells on one dataset with a cache; datasets are loaded once per seed."""

    dataset: str
    out: Path
    data_dir: str | Path | None = None
    base: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    log: Callable[[str], None] | None = None
    preset: str | None = None
    """Preset to start from (default: the dataset's own)."""
    loader: Callable[..., Dataset] | None = None
    """Dataset for a seed, called as ``loader(seed=seed)`` (default:
    ``load_dataset(dataset, seed=...)``); with ``jobs > 1`` it must pickle."""
    jobs: int = 1
    """Worker processes for the runs not cached yet (1: run them here)."""
    cached_only: bool = False
    """Run nothing: return the cached runs only (a look at a partial experiment)."""
    _datasets: dict[int, Dataset] = field(default_factory=dict, repr=False)
    _rekeyed: bool = field(default=False, repr=False)
    used: dict[str, float] = field(default_factory=dict, repr=False)
    """Runs asked for since the last ``used.clear()`` -> the seconds each took
    when it ran (cached or not): what an experiment costs from scratch."""
    missing: set[str] = field(default_factory=set, repr=False)
    """Keys of runs asked for but neither cached nor run (``cached_only``)."""

    def config(self, cell: Cell) -> Config:
        """The cell's config: its model's preset, ``base`` and the cell's settings on top."""
        settings, _ = split_settings({**self.base, **cell.settings, "seed": cell.seed})
        return Config.preset(self.preset or self.dataset, model=cell.model
                             ).with_overrides(settings)

    def options(self, cell: Cell) -> RunOptions:
        """The cell's run options: its preset's (Book-Crossing ranks 500 users), with the
        run options among ``base`` and the cell's settings on top."""
        _, options = split_settings({**self.base, **cell.settings})
        return RunOptions.preset(self.preset or self.dataset, model=cell.model
                                 ).with_overrides(options)

    def data(self, seed: int) -> Dataset:
        if seed not in self._datasets:
            if self.loader is not None:
                self._datasets[seed] = self.loader(seed=seed)
            else:
                cfg = Config.preset(self.preset or self.dataset).with_overrides(
                    split_settings(self.base)[0])
                self._datasets[seed] = load_dataset(self.dataset, seed=seed,
                                                    data_dir=self.data_dir,
                                                    threshold=cfg.threshold, progress=False,
                                                    ratings=cfg.ratings, unlinked=cfg.unlinked)
        return self._datasets[seed]

    def key(self, cell: Cell) -> str:
        return self.key_of(self.config(cell), self.options(cell))

    def key_of(self, config: Config, options: RunOptions | None = None) -> str:
        """Cache key of a run: the dataset, the config fields and the report-changing run
        options (``RunOptions.REPORT_FIELDS``) that differ from their defaults.

        Only non-default values enter, so a field added later at a default that
        keeps the old behaviour leaves every cached run valid; and a key from
        before the config split (which hashed every field of the old config,
        run options included, against their defaults) is unchanged for any run
        at the default threads, training path, device and batch size, as every
        committed run is (tests/test_reproduce.py checks the committed caches).
        """
        if config.ls_hops is not None and config.ls_hops == config.with_overrides(
                {"ls_hops": None}).label_hops:
            # an explicit depth equal to the default one is the same run (Book-Crossing's
            # L = 2 makes both of Figure 5's depths 2)
            config = config.with_overrides({"ls_hops": None})
        options = options or RunOptions()
        reported = {k: v for k, v in options.to_dict().items() if k in RunOptions.REPORT_FIELDS}
        default = {**Config().to_dict(), **RunOptions().to_dict()}
        settings = {k: v for k, v in {**config.to_dict(), **reported}.items()
                    if v != default.get(k, object())}
        payload = {"v": CACHE_VERSION, "dataset": self.dataset, "config": settings}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()
                              ).hexdigest()[:24]

    def rekey(self) -> int:
        """Rename cached runs whose file name is not the key of the config they
        store (written under an older key scheme); returns how many moved."""
        moved = 0
        for path in sorted((self.out / "cache" / self.dataset).glob("*.json")):
            entry = json.loads(path.read_text())
            stored = entry.get("config")
            if stored is None:
                continue
            options = (RunOptions.from_dict(entry["run"]) if "run" in entry  # older: in config
                       else RunOptions.from_config_dict(stored))
            target = path.with_name(f"{self.key_of(Config.from_dict(stored), options)}.json")
            if target != path:
                if target.exists():  # the same run twice: keep the one already in place
                    path.unlink()
                else:
                    path.rename(target)
                moved += 1
        return moved

    def cache_path(self, cell: Cell) -> Path:
        return self.out / "cache" / self.dataset / f"{self.key(cell)}.json"

    def run(self, cells: Iterable[Cell], desc: str = "cells") -> dict[Cell, dict]:
        """Results of every cell, running only those not cached yet."""
        if not self._rekeyed:
            self._rekeyed, moved = True, self.rekey()
            if moved and self.log:
                self.log(f"re-keyed {moved} cached runs to the current key scheme")
        cells = list(dict.fromkeys(cells))
        by_key: dict[str, list[Cell]] = {}
        for cell in cells:  # cells spelled differently can share a config
            by_key.setdefault(self.key(cell), []).append(cell)
        results: dict[Cell, dict] = {}
        todo = []
        for key, group in by_key.items():
            path = self.out / "cache" / self.dataset / f"{key}.json"
            if path.is_file():
                for cell in group:
                    results[cell] = json.loads(path.read_text())
            else:
                todo.append(group)
        n_cached = len(by_key) - len(todo)
        if self.cached_only:
            self.missing.update(self.key(group[0]) for group in todo)
            todo = []
        if self.log:
            self.log(f"{desc}: {n_cached} of {len(by_key)} runs cached, {len(todo)} to run")
        bar = tqdm(total=len(todo), desc=desc, unit="run", disable=not self.progress)
        for group, result in self._results(todo, bar):
            for other in group:
                results[other] = result
        bar.close()
        for key, group in by_key.items():
            if group[0] in results:
                self.used[key] = float(results[group[0]].get("wall_seconds") or 0.0)
        return results

    def _results(self, todo: list[list[Cell]], bar: tqdm) -> Iterable[tuple[list[Cell], dict]]:
        """(cells, result) of each group as its run finishes, here or in workers."""
        if self.jobs <= 1 or len(todo) <= 1:
            for group in todo:
                cell = group[0]
                path = self.cache_path(cell)
                if path.is_file():  # another invocation on the same cache finished it
                    yield group, json.loads(path.read_text())
                else:
                    bar.set_postfix_str(f"{cell.model} seed {cell.seed} {cell.settings or ''}"
                                        [:60])
                    yield group, self._run_one(cell)
                bar.update()
            return
        spec = {"dataset": self.dataset, "out": self.out, "data_dir": self.data_dir,
                "base": self.base, "preset": self.preset, "loader": self.loader}
        # spawn, not fork: numba's and torch's thread pools do not survive a fork
        with ProcessPoolExecutor(min(self.jobs, len(todo)),
                                 mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_one_thread) as pool:
            futures = {pool.submit(_run_in_worker, spec, group[0]): group for group in todo}
            try:
                for future in as_completed(futures):
                    yield futures[future], future.result()
                    bar.update()
            except BaseException:
                for future in futures:  # finished runs are cached; drop the queued ones
                    future.cancel()
                raise

    def _run_one(self, cell: Cell) -> dict:
        from kgnnls.recommender import KGNNLS

        cfg, options = self.config(cell), self.options(cell)
        t0 = time.perf_counter()
        model = KGNNLS(cfg, options).fit(self.data(cell.seed))
        metrics = model.evaluate()
        result = {k: metrics.get(k) for k in _KEEP}
        result |= {"model": cell.model, "seed": cell.seed, "settings": cell.settings,
                   "config": cfg.to_dict(), "run": options.to_dict(),
                   "wall_seconds": time.perf_counter() - t0}
        atomic_write_json(self.cache_path(cell), result)
        return result


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


_WORKER_RUNNERS: dict[str, Runner] = {}


def _run_in_worker(spec: dict[str, Any], cell: Cell) -> dict:
    """Run one cell in a worker process (keeping its runner, so datasets load once)."""
    key = repr(sorted((k, repr(v)) for k, v in spec.items()))
    if key not in _WORKER_RUNNERS:
        _WORKER_RUNNERS[key] = Runner(progress=False, **spec)
    return _WORKER_RUNNERS[key]._run_one(cell)
