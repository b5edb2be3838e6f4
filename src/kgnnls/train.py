"""The training loop, top to bottom: build, train with early stopping, keep the best.

:func:`build` turns a dataset and a config into a split and a network (KG
graph, neighbour sample, initial weights, label table), all from the one
seed. :func:`fit` trains it with Adam on the labelled training rows (or on
re-sampled negatives), evaluates validation AUC after every epoch, stops
after ``patience`` epochs without improvement and restores the best epoch.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from kgnnls.config import Config
from kgnnls.data.dataset import Dataset
from kgnnls.data.sampling import Split, draw_negatives, split_ratings, touched_keys
from kgnnls.errors import ConfigError
from kgnnls.evaluate import ctr_metrics
from kgnnls.model import KGNNLSNet
from kgnnls.seeding import rng


class Trainable(Protocol):
    """What the loop needs of a model (KGNN-LS and every baseline)."""

    def loss(self, users: Tensor, items: Tensor, labels: Tensor
             ) -> tuple[Tensor, dict[str, Tensor]]: ...

    def parameter_groups(self, l2_weight: float) -> list[dict]: ...

    def score_pairs(self, users: Tensor, items: Tensor) -> Tensor: ...

    def score_matrix(self, users: Tensor, items: Tensor) -> Tensor: ...

    def checkpoint_meta(self) -> dict: ...


#: KGNN-LS and its lambda = 0 special case; baselines add theirs (kgnnls.baselines).
KGNN_MODELS = ("kgnn-ls", "kgcn")


def model_class(name: str) -> type:
    """The class of model ``name``: it has ``from_data(dataset, split, config)``
    and ``from_checkpoint(config, meta, state_dict)``."""
    from kgnnls.baselines import BASELINES, baseline_class

    if name in KGNN_MODELS:
        return KGNNLSNet
    if name in BASELINES:
        return baseline_class(name)
    raise ConfigError(f"unknown model {name!r}; known: {', '.join([*KGNN_MODELS, *BASELINES])}")


@dataclass
class Fitted:
    """Outcome of :func:`fit`: the best network and how it got there."""

    network: nn.Module
    config: Config
    split: Split
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    train_seconds: float = 0.0
    ls_coverage: float | None = None
    training_path: str = "autograd"


def effective_config(config: Config) -> Config:
    """Resolve model aliases: ``kgcn`` is ``kgnn-ls`` with ``ls_weight = 0``."""
    model_class(config.model)  # unknown names fail here
    if config.model == "kgcn" and config.ls_weight != 0:
        return replace(config, ls_weight=0.0)
    return config


def make_split(dataset: Dataset, config: Config) -> Split:
    """The seeded 6:2:2 split, its training part shrunk to ``config.train_fraction``."""
    split = split_ratings(dataset.ratings, config.seed)
    if config.train_fraction < 1:
        n = len(split.train)
        keep = rng(config.seed, "train-fraction").permutation(n)[:max(1, round(
            n * config.train_fraction))]
        split = replace(split, train=split.train[np.sort(keep)])
    return split


def build(dataset: Dataset, config: Config, split: Split | None = None
          ) -> tuple[Split, nn.Module]:
    """Split (unless given) and an initialised model, all seeded by ``config.seed``."""
    config = effective_config(config.validate())
    if split is None:
        split = make_split(dataset, config)
    return split, model_class(config.model).from_data(dataset, split, config)


def ls_coverage(network: KGNNLSNet, rows: np.ndarray, chunk: int = 65536) -> float:
    """Fraction of ``rows`` whose label-propagation tree reaches a labelled entity."""
    users, items = torch.from_numpy(rows[:, 0]), torch.from_numpy(rows[:, 1])
    reached = sum(int(network.label_coverage(users[i:i + chunk], items[i:i + chunk]).sum())
                  for i in range(0, len(rows), chunk))
    return reached / max(len(rows), 1)


def _epoch_rows(dataset: Dataset, split: Split, config: Config, epoch: int,
                forbidden: np.ndarray | None) -> np.ndarray:
    """Training rows of one epoch: fixed, or positives plus fresh negatives."""
    if config.negatives == "fixed":
        return split.train
    pos = split.train[split.train[:, 2] == 1]
    need = np.bincount(pos[:, 0], minlength=dataset.n_users)
    neg = draw_negatives(need, forbidden, dataset.n_items,
                         rng(config.seed * 100_003 + epoch, "resample"), dataset.user_ids)
    return np.concatenate([pos, np.column_stack([neg, np.zeros(len(neg), np.int64)])])


def fit(dataset: Dataset, config: Config, split: Split | None = None, progress: bool = True,
        log: Callable[[str], None] | None = None,
        on_epoch: Callable[[dict], None] | None = None) -> Fitted:
    """Train ``config.model`` on ``dataset``; returns the best-validation network.

    ``on_epoch`` sees each epoch's record (loss, validation AUC, seconds) and
    may raise to stop training (tuning prunes trials this way).
    """
    torch.set_flush_denormal(True)  # late epochs otherwise slow down on denormals
    try:
        return _fit(dataset, config, split, progress, log, on_epoch)
    finally:
        torch.set_flush_denormal(False)  # process-wide state: leave it as we found it


def _fit(dataset: Dataset, config: Config, split: Split | None, progress: bool,
         log: Callable[[str], None] | None, on_epoch: Callable[[dict], None] | None) -> Fitted:
    config = effective_config(config.validate())
    torch.set_num_threads(config.threads)
    split, network = build(dataset, config, split)
    # fused: one kernel for all parameters (the per-tensor loop costs ~1 ms a step)
    optimizer = torch.optim.Adam(network.parameter_groups(config.l2_weight), lr=config.lr,
                                 fused=True)
    coverage = ls_coverage(network, split.train) if hasattr(network, "label_coverage") else None
    forbidden = touched_keys(dataset) if config.negatives == "resample" else None
    shuffle = rng(config.seed, "shuffle")
    fitted = Fitted(network=network, config=config, split=split, ls_coverage=coverage)
    best_auc, best_state, stale = -np.inf, None, 0
    say = log or (lambda _msg: None)
    say(f"training {config.model} ({config.variant} variant) on {dataset.name}: "
        f"{len(split.train)} train rows"
        + ("" if coverage is None else f", LS coverage {coverage:.1%}"))

    for epoch in range(1, config.epochs + 1):
        rows = _epoch_rows(dataset, split, config, epoch, forbidden)
        perm = torch.from_numpy(shuffle.permutation(len(rows)))
        users, items = torch.from_numpy(rows[:, 0])[perm], torch.from_numpy(rows[:, 1])[perm]
        labels = torch.from_numpy(rows[:, 2]).float()[perm]
        network.train()
        sums = torch.zeros(3)
        t0 = time.perf_counter()
        starts = range(0, len(rows), config.batch_size)
        for s in tqdm(starts, desc=f"epoch {epoch}", leave=False, disable=not progress,
                      unit="batch"):
            e = s + config.batch_size
            loss, parts = network.loss(users[s:e], items[s:e], labels[s:e])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.stack([loss.detach(), parts["bce"], parts.get("ls", torch.zeros(()))])
        seconds = time.perf_counter() - t0
        fitted.train_seconds += seconds
        network.eval()
        val = ctr_metrics(network, split.val, config.eval_batch_size)
        n_batches = max(len(starts), 1)
        record = {"epoch": epoch, "loss": float(sums[0]) / n_batches,
                  "bce": float(sums[1]) / n_batches, "ls": float(sums[2]) / n_batches,
                  "val_auc": val["auc"], "val_f1": val["f1"], "seconds": seconds}
        fitted.history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        say(f"epoch {epoch:3d}  loss {record['loss']:.4f}  val auc {val['auc']:.4f}  "
            f"f1 {val['f1']:.4f}  {seconds:.2f}s")
        if val["auc"] > best_auc:
            best_auc, stale, fitted.best_epoch = val["auc"], 0, epoch
            best_state = copy.deepcopy(network.state_dict())
        else:
            stale += 1
            if stale >= config.patience:
                say(f"early stop: no better validation AUC for {stale} epochs")
                break
    network.load_state_dict(best_state)
    network.eval()
    return fitted
