"""The training loop, top to bottom: build, train with early stopping, keep the best.

:func:`build` turns a dataset and a config into a split and a network (KG
graph, neighbour sample, initial weights, label table), all from the one
seed. :func:`fit` trains it with Adam on the labelled training rows (or on
re-sampled negatives), evaluates validation AUC after every epoch, stops
after ``patience`` epochs without improvement and restores the best epoch.

With ``checkpoint_path`` it writes the whole loop state (weights, optimizer,
best epoch so far, history, stale counter, random-number states) atomically
after every epoch; ``resume=True`` continues from that file, and a resumed
run ends with exactly the numbers of an uninterrupted one with the same seed.

The steps of an epoch run on one of two paths that compute the same update:
the fused compiled step of :mod:`kgnnls.fused` (forward, backward and Adam
in one numba loop) where it covers the config, else PyTorch autograd with
``torch.optim.Adam``; ``RunOptions.training_path`` chooses (``auto``: the
fused step where it applies) and ``Fitted.training_path`` records which ran.

How the run executes (threads, training path, device, validation batch size)
is a :class:`~kgnnls.config.RunOptions` beside the config: it is not part of
a checkpoint's identity, so a run may resume with other run options.

When a ``torch.distributed`` process group of several processes is up (the
CLI starts one under ``torchrun``), :func:`fit` trains data-parallel: each
rank trains on its shard of every global batch of ``config.batch_size`` rows
under DistributedDataParallel, validation metrics are rank 0's (broadcast),
and rank 0 alone logs and writes the checkpoint; see :mod:`kgnnls.distributed`.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from kgnnls import distributed
from kgnnls.budget import MEMORY_BUDGET, rows_per_chunk
from kgnnls.config import Config, RunOptions
from kgnnls.data.ablation import ablate_kg
from kgnnls.data.dataset import Dataset
from kgnnls.data.sampling import Split, draw_negatives, split_ratings, touched_keys
from kgnnls.device import resolve_device
from kgnnls.errors import CheckpointError, ConfigError
from kgnnls.evaluate import ctr_metrics
from kgnnls.fused import REACHED, FusedTrainer, unsupported
from kgnnls.model import KGNNLSNet
from kgnnls.optim import RowAdam, make_optimizer
from kgnnls.scoring import Scorer
from kgnnls.seeding import rng
from kgnnls.storage import load_checkpoint, save_checkpoint

#: ``kind`` of a training-state checkpoint (``RUN_DIR/checkpoint.pt``).
TRAINING_STATE = "training-state"


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
    options: RunOptions = field(default_factory=RunOptions)
    """How the run executed (threads, training path, device, evaluation settings)."""
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    train_seconds: float = 0.0
    compile_seconds: float = 0.0
    """Compiling the fused step's kernels before training (not in ``train_seconds``)."""
    ls_coverage: float | None = None
    training_path: str = "autograd"
    training_path_reason: str | None = None
    """Why ``training_path="auto"`` fell back to autograd (kgnnls.coverage); None when
    the fused step ran or autograd was asked for."""
    device: str = "cpu"
    """Where the training steps ran (``RunOptions.device`` resolved; kgnnls.device)."""
    world_size: int = 1
    dataset: Dataset | None = None
    """The dataset the network was built on: the input with ``config.kg`` applied."""


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
    split, _, network = _build(dataset, config, split)
    return split, network


def kg_dataset(dataset: Dataset, config: Config, split: Split) -> Dataset:
    """``dataset`` with ``config.kg`` applied (itself for ``full``): the graph every
    KG-aware model of this run is built on (``kg=ui`` reads the split's training rows)."""
    return ablate_kg(dataset, config.kg, config.seed, split.train)


def _build(dataset: Dataset, config: Config, split: Split | None
           ) -> tuple[Split, Dataset, nn.Module]:
    """:func:`build`, with the (ablated) dataset the model was built on."""
    config = effective_config(config.validate())
    if split is None:
        split = make_split(dataset, config)
    graph_data = kg_dataset(dataset, config, split)
    return split, graph_data, model_class(config.model).from_data(graph_data, split, config)


def ls_coverage(network: KGNNLSNet, rows: np.ndarray, budget_bytes: int = MEMORY_BUDGET
                ) -> float:
    """Fraction of ``rows`` whose label-propagation tree reaches a labelled entity.

    Chunked to ``budget_bytes`` of temporaries: a depth-4 tree has 4,681 nodes per
    row (a fixed 65,536-row chunk took 8.7 GB there).
    """
    nodes = sum(network.n_neighbors ** h for h in range(network.label_hops + 1))
    chunk = rows_per_chunk(nodes * 8 * 6, budget_bytes, cap=65536)
    users, items = torch.from_numpy(rows[:, 0]), torch.from_numpy(rows[:, 1])
    reached = sum(int(network.label_coverage(users[i:i + chunk], items[i:i + chunk]).sum())
                  for i in range(0, len(rows), chunk))
    return reached / max(len(rows), 1)


def _epoch_record(sums: dict[str, float], n_batches: int, seconds: float, scorer: Scorer,
                  val_rows: np.ndarray, options: RunOptions,
                  validate: Callable[[], float] | None, main_rank: bool
                  ) -> tuple[dict, float]:
    """An epoch's history record (``sums``: the epoch, and its losses summed over
    its ``n_batches`` batches) with its validation metrics, and the early-stopping
    score (``validate()``, else the validation AUC). Rank 0's validation numbers
    on every rank: the early-stop and best-epoch decisions cannot diverge."""
    val = (ctr_metrics(scorer, val_rows, options.eval_batch_size) if main_rank
           else {"auc": np.nan, "f1": np.nan})
    if validate is not None:
        val["score"] = float(validate()) if main_rank else np.nan
    val_auc, val_f1, val_score = distributed.agree(
        [val["auc"], val["f1"], val.get("score", val["auc"])])
    record = {k: v if k == "epoch" else v / n_batches for k, v in sums.items()}
    record.update(val_auc=val_auc, val_f1=val_f1, seconds=seconds)
    if validate is not None:
        record["val_score"] = val_score
    return record, val_score


def _label_reach(network: nn.Module, fused: FusedTrainer | None, rows: np.ndarray
                 ) -> tuple[float | None, np.ndarray | None]:
    """The LS coverage of ``rows`` (:func:`ls_coverage`; None for a model without
    label smoothness) and, on the fused path, the rows' reach codes, which the fused
    steps take: one computation of the label reach serves both."""
    if not hasattr(network, "label_coverage"):
        return None, None
    if fused is None or fused.graph["hops"] != network.label_hops:  # no LS term to train
        return ls_coverage(network, rows), None
    codes = fused.reach_codes(rows[:, 0], rows[:, 1])
    return int(np.count_nonzero(codes == REACHED)) / max(len(rows), 1), codes


def _epoch_rows(dataset: Dataset, split: Split, config: Config, epoch: int,
                forbidden: np.ndarray | None) -> np.ndarray:
    """Training rows of one epoch: fixed, or positives plus fresh negatives; under
    ``loss="bpr"``, ``(user, positive, 1, negative)`` rows (:func:`_bpr_rows`)."""
    if config.loss == "bpr":
        return _bpr_rows(dataset, split, config, epoch, forbidden)
    if config.negatives == "fixed":
        return split.train
    pos = split.train[split.train[:, 2] == 1]
    need = np.bincount(pos[:, 0], minlength=dataset.n_users)
    neg = draw_negatives(need, forbidden, dataset.n_items,
                         rng(config.seed * 100_003 + epoch, "resample"), dataset.user_ids)
    return np.concatenate([pos, np.column_stack([neg, np.zeros(len(neg), np.int64)])])


def _bpr_rows(dataset: Dataset, split: Split, config: Config, epoch: int,
              forbidden: np.ndarray) -> np.ndarray:
    """Each training positive ``(u, i)`` with one item ``j`` drawn for this epoch
    uniformly among the items ``u`` never touched (validation and test rows
    included): ``(u, i, 1, j)`` rows. A user's draws are distinct."""
    pos = split.train[split.train[:, 2] == 1]
    pos = pos[np.argsort(pos[:, 0], kind="stable")]  # grouped by user, as the draws
    need = np.bincount(pos[:, 0], minlength=dataset.n_users)
    stream = rng(config.seed * 100_003 + epoch, "bpr-negatives")
    neg = draw_negatives(need, forbidden, dataset.n_items, stream, dataset.user_ids)
    # the draws come sorted by item within a user: shuffle them there, or a user's
    # first positive would always meet its smallest-index negative
    neg = neg[np.argsort(neg[:, 0] + stream.random(len(neg)), kind="stable")]
    return np.column_stack([pos, neg[:, 1]])


@dataclass
class _LoopState:
    """What the loop carries from one epoch to the next (and a checkpoint saves)."""

    next_epoch: int = 1
    best_auc: float = -np.inf
    best_state: dict | None = None
    stale: int = 0
    stopped: bool = False


def fit(dataset: Dataset, config: Config, split: Split | None = None, progress: bool = True,
        log: Callable[[str], None] | None = None,
        on_epoch: Callable[[dict], None] | None = None,
        checkpoint_path: str | Path | None = None, resume: bool = False,
        checkpoint_info: dict | None = None,
        validate: Callable[[nn.Module], float] | None = None,
        options: RunOptions | None = None) -> Fitted:
    """Train ``config.model`` on ``dataset``; returns the best-validation network.

    ``options``: threads, training path, device and validation batch size
    (default ``RunOptions()``); the numbers do not depend on them, and a
    checkpoint resumes under other ones.

    ``validate``: the early-stopping score of the network after each epoch
    (higher is better, e.g. a full-ranking validation NDCG), in place of
    validation AUC; each history record keeps ``val_auc`` and adds ``val_score``
    (the score that decided). Data-parallel, rank 0's score decides.

    ``on_epoch`` sees each epoch's record (loss, validation AUC, seconds) and
    may raise to stop training (tuning prunes trials this way).
    ``checkpoint_path``: write the loop state there after every epoch
    (``checkpoint_info``, plain data, is stored beside it); ``resume``: start
    from that file instead of epoch 1 (CheckpointError if it is missing or
    was written for another config, dataset, split or number of processes;
    other run options are accepted).
    The file is left in place: the caller removes it once its own outputs
    are saved.

    Data-parallel (a process group of several processes is up): every rank
    calls ``fit`` with the same arguments and returns the same network; only
    rank 0 logs, shows progress and writes (or, resuming, reads) the
    checkpoint; ``on_epoch`` runs on every rank with the same record, except
    ``seconds``. ``updates="rows"`` (sparse gradients) is refused.
    """
    if resume and checkpoint_path is None:
        raise ConfigError("resume needs a checkpoint_path")
    torch.set_flush_denormal(True)  # late epochs otherwise slow down on denormals
    try:
        return _fit(dataset, config, (options or RunOptions()).validate(), split, progress, log,
                    on_epoch, checkpoint_path, resume, checkpoint_info, validate)
    finally:
        torch.set_flush_denormal(False)  # process-wide state: leave it as we found it


def _fit(dataset: Dataset, config: Config, options: RunOptions, split: Split | None,
         progress: bool,
         log: Callable[[str], None] | None, on_epoch: Callable[[dict], None] | None,
         checkpoint_path: str | Path | None, resume: bool,
         checkpoint_info: dict | None,
         validate: Callable[[nn.Module], float] | None = None) -> Fitted:
    config = effective_config(config.validate())
    parallel, world, me = distributed.active(), distributed.world_size(), distributed.rank()
    if parallel and config.updates == "rows":
        raise ConfigError("updates=rows (sparse gradients) cannot train data-parallel: "
                          "DistributedDataParallel all-reduces dense gradients only; use "
                          "updates=dense or one process")
    main_rank = me == 0
    progress = progress and main_rank
    torch.set_num_threads(options.threads)
    split, graph_data, network = _build(dataset, config, split)
    optimizer = make_optimizer(network, config.lr, config.l2_weight, config.updates)
    resampled = config.negatives == "resample" or config.loss == "bpr"
    forbidden = touched_keys(dataset) if resampled else None
    shuffle = rng(config.seed, "shuffle")
    fitted = Fitted(network=network, config=config, split=split, options=options,
                    world_size=world, dataset=graph_data)
    fused, fitted.training_path_reason = _fused_trainer(network, optimizer, config, options,
                                                        parallel)
    # the fused step's reach codes of the training rows, and the rows they are of
    fitted.ls_coverage, codes = _label_reach(network, fused, split.train)
    codes_of = None if codes is None else split.train
    fitted.training_path = "autograd" if fused is None else "fused"
    device = resolve_device(options.device, fused is not None, parallel,
                            _gpu_ready(network, config))
    fitted.device = device.type
    if device.type != "cpu":  # autograd only; a fresh optimizer holds the moved parameters
        optimizer = _move(network, device, config)
    state = _LoopState()
    say = (log if main_rank else None) or (lambda _msg: None)
    say(_describe(fitted, dataset.name))
    identity = None if checkpoint_path is None else _identity(dataset, split)
    if resume:
        state = _restore(checkpoint_path, identity, fitted, optimizer, shuffle)
        say(f"resumed from {checkpoint_path} after epoch {state.next_epoch - 1}")
    # the training step: the network's loss, under DDP when data-parallel (its gradient
    # hooks run only through DDP.__call__, hence the LossModule wrapper)
    # a model whose loss may skip parameters (uses_every_parameter unset) makes DDP
    # look for the unused ones every step
    step = (distributed.wrap(network,
                             find_unused=not getattr(network, "uses_every_parameter", False))
            if parallel else network.loss)

    if fused is not None:  # compiled before the timer: train_seconds counts training only
        fitted.compile_seconds = fused.compile(config.batch_size, validate=main_rank)
        fused.pull()  # from here the trainer's flat buffer owns the parameters
    # validation scores as evaluation does (autograd runs score pairs on the reference
    # path); on the fused path it reads the trainer's buffer, which needs no copy
    scorer = Scorer(network, threads=options.threads,
                    compiled=options.training_path != "autograd",
                    forward=None if fused is None else fused.forward())
    for epoch in range(state.next_epoch, config.epochs + 1):
        rows = _epoch_rows(dataset, split, config, epoch, forbidden)
        order = shuffle.permutation(len(rows))
        network.train()
        t0 = time.perf_counter()
        starts = range(0, len(rows), config.batch_size)
        batches = tqdm(starts, desc=f"epoch {epoch}", leave=False, disable=not progress,
                       unit="batch")
        if fused is not None:
            if config.loss == "bpr":  # each batch's rows are built by the BPR step
                codes = None
            elif codes_of is not rows:  # fixed negatives: the same rows, once per run
                codes_of, codes = rows, fused.reach_codes(rows[:, 0], rows[:, 1])
            sums = _fused_epoch(fused, rows[order], None if codes is None else codes[order],
                                batches, config.batch_size)
        else:
            sums = _autograd_epoch(step, optimizer, rows[order], batches, config.batch_size,
                                   parallel, me, world, device)
        batches.close()
        if parallel:
            sums = distributed.mean(sums)  # the loss of the global batches
        seconds = time.perf_counter() - t0
        fitted.train_seconds += seconds
        network.eval()
        # the network's tensors follow the fused buffer only where they are read: a
        # checkpoint, a validate callback, a new best state (below), the end
        synced = fused is None or checkpoint_path is not None or validate is not None
        if fused is not None and synced:
            fused.push()
        scorer.refresh()  # this epoch's parameters
        record, val_score = _epoch_record(
            {"epoch": epoch, "loss": float(sums[0]), config.loss: float(sums[1]),
             "ls": float(sums[2])}, max(len(starts), 1), seconds, scorer, split.val,
            options, validate if validate is None else lambda: validate(network), main_rank)
        fitted.history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        say(f"epoch {epoch:3d}  loss {record['loss']:.4f}  val auc {record['val_auc']:.4f}  "
            f"f1 {record['val_f1']:.4f}  {seconds:.2f}s")
        if val_score > state.best_auc:  # best_auc: the best early-stopping score so far
            if not synced:
                fused.push()
            state.best_auc, state.stale, fitted.best_epoch = val_score, 0, epoch
            state.best_state = copy.deepcopy(network.state_dict())
        else:
            state.stale += 1
            state.stopped = state.stale >= config.patience
        state.next_epoch = epoch + 1
        if checkpoint_path is not None and main_rank:
            _save_state(checkpoint_path, state, identity, fitted, optimizer, shuffle,
                        checkpoint_info)
        if state.stopped:
            say(f"early stop: no better validation {'score' if validate else 'AUC'} for "
                f"{state.stale} epochs")
            break
    if fused is not None:
        fused.push()  # the last epoch's parameters and Adam state
    network.load_state_dict(state.best_state)
    # a network trained on a GPU stays there: ranking and serving run on it, scores come
    # back as CPU tensors and save() writes CPU tensors (kgnnls.device)
    network.eval()
    return fitted


def _gpu_ready(network: nn.Module, config: Config) -> str | None:
    """None when ``network``'s autograd path runs on a GPU, else why not (kgnnls.device)."""
    if not isinstance(network, KGNNLSNet):
        return f"model {config.model!r} trains on the CPU only (GPU: kgnn-ls and kgcn)"
    if config.updates != "dense":
        return "updates=rows (sparse row gradients) trains on the CPU only"
    return None


def _move(network: nn.Module, device: torch.device, config: Config) -> Any:
    """Move ``network`` (and its label table) to ``device``; returns a fresh
    optimizer over the moved parameters."""
    network.to(device)
    if getattr(network, "labels", None) is not None:
        network.set_labels(network.labels.to(device))
    return make_optimizer(network, config.lr, config.l2_weight, config.updates)


def _describe(fitted: Fitted, dataset_name: str) -> str:
    """The line a run starts with: model, data, LS coverage, processes, training path."""
    config = fitted.config
    return (f"training {config.model} ({config.variant} variant) on {dataset_name}: "
            f"{len(fitted.split.train)} train rows"
            + ("" if fitted.ls_coverage is None else f", LS coverage {fitted.ls_coverage:.1%}")
            + (f", data-parallel on {fitted.world_size} processes"
               if fitted.world_size > 1 else "")
            + f", {fitted.training_path} training path"
            + ("" if fitted.training_path_reason is None
               else f" (not fused: {fitted.training_path_reason})"))


def _fused_trainer(network: nn.Module, optimizer: Any, config: Config, options: RunOptions,
                   parallel: bool) -> tuple[FusedTrainer | None, str | None]:
    """The fused compiled step where ``options.training_path`` asks for it and it applies
    (kgnnls.coverage; device=cuda means autograd), and why not where ``auto`` falls
    back (None when autograd was asked for)."""
    if options.training_path == "autograd":
        return None, None
    reason = (unsupported(config, parallel=parallel) if isinstance(network, KGNNLSNet)
              else f"model={config.model} (a baseline)")
    if reason is None and options.device == "cuda":  # a run option: not in the coverage table
        reason = "device=cuda (the fused step is CPU code: device=cuda trains on autograd)"
    if reason is None and not isinstance(optimizer, torch.optim.Adam | RowAdam):
        reason = "the optimizer is not torch.optim.Adam or RowAdam"
    if reason is not None:
        if options.training_path == "fused":
            raise ConfigError(f"training_path=fused does not cover this run: {reason}")
        return None, reason
    return FusedTrainer(network, optimizer, threads=options.threads), None


#: training rows per compiled call of fused steps (at least one batch): few enough for a
#: live progress bar, many enough that the call's cost vanishes (Last.FM: 32 batches)
FUSED_ROWS_PER_CALL = 4096


def _fused_epoch(fused: FusedTrainer, rows: np.ndarray, codes: np.ndarray | None,
                 batches: Any, batch_size: int) -> Tensor:
    """One epoch of fused steps over ``rows`` (already shuffled; ``codes``: their
    :meth:`FusedTrainer.reach_codes`) on the trainer's flat buffer; summed (loss, base,
    ls). ``(user, positive, 1, negative)`` rows (``loss="bpr"``) take BPR steps.

    Runs about ``FUSED_ROWS_PER_CALL`` rows of steps per call and moves the
    progress bar ``batches`` (a tqdm over the batch starts) after each call.
    """
    users = np.ascontiguousarray(rows[:, 0], np.int64)
    items = np.ascontiguousarray(rows[:, 1], np.int64)
    labels = np.ascontiguousarray(rows[:, 2], np.float32)
    negatives = np.ascontiguousarray(rows[:, 3], np.int64) if rows.shape[1] == 4 else None
    sums = np.zeros(3)
    span = max(1, FUSED_ROWS_PER_CALL // batch_size) * batch_size
    for s in range(0, len(rows), span):
        e = min(s + span, len(rows))
        if negatives is None:
            part, n_steps = fused.steps(users, items, labels, s, e, batch_size, codes)
        else:
            part, n_steps = fused.bpr_steps(users[s:e], items[s:e], negatives[s:e],
                                            batch_size)
        sums += part
        batches.update(n_steps)
    return torch.tensor(sums.tolist())  # float32, like the autograd path's sums


def _autograd_epoch(step: Callable, optimizer: Any, rows: np.ndarray, batches: Any,
                    batch_size: int, parallel: bool, me: int, world: int,
                    device: torch.device | None = None) -> Tensor:
    """One epoch of autograd steps over ``rows`` (already shuffled); summed (loss, bce, ls).

    ``device``: where the network lives; the epoch's rows move there once."""
    device = device or torch.device("cpu")
    users = torch.from_numpy(rows[:, 0].copy()).to(device)
    items = torch.from_numpy(rows[:, 1].copy()).to(device)
    labels = torch.from_numpy(rows[:, 2]).float().to(device)
    # loss="bpr": a fourth column holds each positive's sampled negative
    negatives = torch.from_numpy(rows[:, 3].copy()).to(device) if rows.shape[1] == 4 else None
    sums = torch.zeros(3, device=device)
    for s in batches:
        e = s + batch_size
        lo, hi, factor = s, e, 1.0
        if parallel:  # this rank's shard of the global batch rows[s:e], weighted
            lo, hi, factor = distributed.batch_part(s, min(e, len(rows)), me, world)
        args = (users[lo:hi], items[lo:hi], labels[lo:hi])
        loss, parts = step(*args) if negatives is None else step(*args, negatives[lo:hi])
        if factor != 1:
            loss = loss * factor
            parts = {k: v * factor for k, v in parts.items()}
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        base = parts["bce"] if "bce" in parts else parts["bpr"]
        sums += torch.stack([loss.detach(), base, parts.get("ls", torch.zeros((), device=device))])
    return sums.cpu()


# ---------------------------------------------------------------------- checkpoints
def _read_on_main(path: str | Path) -> dict[str, Any]:
    """:func:`read_training_state` on rank 0, the same payload (or error) on every rank."""
    if not distributed.active():
        return read_training_state(path)
    saved, error = None, None
    if distributed.is_main():
        try:
            saved = read_training_state(path)
        except CheckpointError as e:
            error = str(e)
    saved, error = distributed.from_main((saved, error))
    if error is not None:
        raise CheckpointError(error)
    return saved


def _identity(dataset: Dataset, split: Split) -> dict[str, str]:
    """What a checkpoint must have been written for: this dataset and this split."""
    h = hashlib.sha256()
    for part in (split.train, split.val, split.test):
        h.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
    return {"dataset_fingerprint": dataset.fingerprint(), "split_digest": h.hexdigest()}


def _save_state(path: str | Path, state: _LoopState, identity: dict[str, str], fitted: Fitted,
                optimizer: torch.optim.Optimizer, shuffle: np.random.Generator,
                info: dict | None) -> None:
    """Everything :func:`_restore` needs, as data ``torch.load(weights_only=True)`` accepts
    (the NumPy generator's state is a dict of ints and strings)."""
    save_checkpoint(path, {
        "kind": TRAINING_STATE, "config": fitted.config.to_dict(),
        "run": fitted.options.to_dict(), **identity,  # run: informational, not checked
        "epoch": state.next_epoch - 1, "stopped": state.stopped, "stale": state.stale,
        "best_auc": state.best_auc, "best_epoch": fitted.best_epoch,
        "best_state": state.best_state, "model": fitted.network.state_dict(),
        "optimizer": optimizer.state_dict(), "history": fitted.history,
        "train_seconds": fitted.train_seconds, "world_size": fitted.world_size,
        "rng": {"shuffle": shuffle.bit_generator.state, "torch": torch.get_rng_state()},
        "info": info or {},
    })


def read_training_state(path: str | Path) -> dict[str, Any]:
    """A training-state checkpoint (safe load); CheckpointError if it is not one."""
    payload = load_checkpoint(path)
    if payload.get("kind") != TRAINING_STATE:
        raise CheckpointError(f"{path}: not a training-state checkpoint (a model.pt cannot be "
                              "resumed)")
    return payload


def config_mismatches(saved: dict[str, Any], config: Config) -> list[str]:
    """``field: saved -> given`` for each field where ``config`` differs from ``saved``
    (a field the checkpoint predates counts as its default; the run options an
    older checkpoint's config still holds are not compared: see RunOptions)."""
    given = effective_config(config.validate()).to_dict()
    saved = {**Config().to_dict(), **saved}
    return [f"{name}: {saved[name]!r} in the checkpoint, {value!r} given"
            for name, value in given.items() if saved[name] != value]


def _restore(path: str | Path, identity: dict[str, str], fitted: Fitted,
             optimizer: torch.optim.Optimizer, shuffle: np.random.Generator) -> _LoopState:
    """Load ``path`` into the freshly built loop; a run that had stopped early (or
    finished) has no epochs left. Data-parallel, rank 0 reads the file and sends its
    content (or its error) to the other ranks, which need not see the file."""
    saved = _read_on_main(path)
    try:
        written = int(saved.get("world_size", 1))
        if written != fitted.world_size:
            raise CheckpointError(f"{path}: written by a run on {written} process(es), resumed "
                                  f"on {fitted.world_size}: resume with {written}, so that the "
                                  "run ends with the numbers of an uninterrupted one")
        wrong = config_mismatches(saved["config"], fitted.config)
        if wrong:
            raise CheckpointError(f"{path}: written for another config ({'; '.join(wrong)})")
        if saved["dataset_fingerprint"] != identity["dataset_fingerprint"]:
            raise CheckpointError(f"{path}: written for another dataset (fingerprint mismatch)")
        if saved["split_digest"] != identity["split_digest"]:
            raise CheckpointError(f"{path}: written for another train/validation/test split")
        fitted.network.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        shuffle.bit_generator.state = saved["rng"]["shuffle"]
        torch.set_rng_state(saved["rng"]["torch"])
        fitted.history = list(saved["history"])
        fitted.best_epoch, fitted.train_seconds = saved["best_epoch"], saved["train_seconds"]
        done = saved["stopped"] or saved["epoch"] >= fitted.config.epochs
        return _LoopState(next_epoch=fitted.config.epochs + 1 if done else saved["epoch"] + 1,
                          best_auc=saved["best_auc"], best_state=saved["best_state"],
                          stale=saved["stale"], stopped=saved["stopped"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: incompatible training state ({type(e).__name__}: {e})"
                              ) from None
