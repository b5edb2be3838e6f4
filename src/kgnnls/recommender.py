"""The public estimator: ``KGNNLS(config).fit(dataset)``, then score and recommend.

It wraps the network, the training loop and evaluation behind a small API in
the style of ``implicit`` and scikit-learn. Users and items are addressed by
their *original* ids (Last.FM user ``"2"``, artist ``"51"``); internal indices
never leave this class.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kgnnls._version import __version__
from kgnnls.arrays import concat_ranges, csr_from_pairs
from kgnnls.config import Config, RunOptions, split_settings
from kgnnls.data.dataset import Dataset
from kgnnls.data.registry import load_dataset
from kgnnls.data.sampling import Split
from kgnnls.device import network_device, place, scoring_device
from kgnnls.diagnostics import relation_entropy
from kgnnls.errors import CheckpointError, DataError
from kgnnls.evaluate import PopularityScorer, evaluate_scorer
from kgnnls.explain import Explanation, explain_pair
from kgnnls.graph import LabelTable
from kgnnls.scoring import Scorer
from kgnnls.seeding import rng
from kgnnls.storage import load_checkpoint, save_checkpoint
from kgnnls.train import Fitted, effective_config, fit, kg_dataset, make_split, model_class


@dataclass(frozen=True)
class DataSource:
    """How to load the dataset a model was trained on again."""

    name: str
    data_dir: str | None = None

    def load(self, seed: int, threshold: float | None, ratings: str = "positives-only",
             unlinked: str = "entity") -> Dataset:
        return load_dataset(self.name, seed=seed, data_dir=self.data_dir, threshold=threshold,
                            ratings=ratings, unlinked=unlinked,
                            progress=False)


class KGNNLS:
    """KGNN-LS recommender (``Config.model = "kgcn"`` gives KGCN).

    >>> ds = load_dataset("lastfm")                                  # doctest: +SKIP
    >>> model = KGNNLS(Config.preset("lastfm")).fit(ds)              # doctest: +SKIP
    >>> model.recommend("2", k=5)                                    # doctest: +SKIP

    ``options`` (:class:`~kgnnls.config.RunOptions`): threads, training path,
    device and what :meth:`evaluate` reports; keyword ``overrides`` may set
    fields of either (``KGNNLS(config, dim=32, threads=2)``).
    """

    def __init__(self, config: Config | None = None, options: RunOptions | None = None,
                 **overrides: Any):
        config_part, options_part = split_settings(overrides)
        self.config = (config or Config()).with_overrides(config_part)
        self.options = (options or RunOptions()).with_overrides(options_part)
        self.network: Any = None
        self._scorer: Scorer | None = None
        self.history: list[dict] = []
        self.info: dict[str, Any] = {}

    # ------------------------------------------------------------------ training
    def fit(self, dataset: Dataset, split: Split | None = None, progress: bool = False,
            log: Callable[[str], None] | None = None, source: DataSource | None = None,
            on_epoch: Callable[[dict], None] | None = None,
            checkpoint_path: str | Path | None = None, resume: bool = False,
            validate: Callable[[Any], float] | None = None) -> KGNNLS:
        """Train on ``dataset`` (seeded 6:2:2 split unless ``split`` is given).

        ``checkpoint_path``: keep the training state there after every epoch;
        ``resume``: continue from it; ``validate``: the early-stopping score in
        place of validation AUC (see :func:`kgnnls.train.fit`).
        """
        info = {"source": None if source is None else {"name": source.name,
                                                       "data_dir": source.data_dir}}
        fitted = fit(dataset, self.config, split=split, progress=progress, log=log,
                     on_epoch=on_epoch, checkpoint_path=checkpoint_path, resume=resume,
                     checkpoint_info=info, validate=validate, options=self.options)
        self._adopt(fitted, dataset, source)
        return self

    def _adopt(self, fitted: Fitted, dataset: Dataset, source: DataSource | None) -> None:
        self.config = fitted.config
        self.options = fitted.options
        self.network = fitted.network
        self._scorer = None  # a new network: the next call builds its scorer
        self.history = fitted.history
        self._split = fitted.split
        # the graph the network was built on (config.kg applied); the fingerprint stays
        # the input's, which evaluate() checks a reloaded dataset against
        graph_data = fitted.dataset if fitted.dataset is not None else dataset
        self._dataset = graph_data
        self._set_ids(graph_data.user_ids, graph_data.item_ids, graph_data.entity_ids,
                      graph_data.relation_names)
        self._set_train(fitted.split.train)
        self.info = {
            "dataset": dataset.name, "fingerprint": dataset.fingerprint(),
            "stats": graph_data.stats(), "negatives": dataset.negatives,
            "source": None if source is None else {"name": source.name,
                                                    "data_dir": source.data_dir},
            "epochs_trained": len(fitted.history), "best_epoch": fitted.best_epoch,
            "train_seconds": fitted.train_seconds, "compile_seconds": fitted.compile_seconds,
            "ls_coverage": fitted.ls_coverage, "training_path": fitted.training_path,
            "training_path_reason": fitted.training_path_reason, "device": fitted.device,
        }

    def _set_ids(self, users, items, entities, relations) -> None:
        self.user_ids = np.asarray(users).astype(str)
        self.item_ids = np.asarray(items).astype(str)
        self.entity_ids = np.asarray(entities).astype(str)
        self.relation_names = np.asarray(relations).astype(str)
        self._user_index = {u: i for i, u in enumerate(self.user_ids)}
        self._item_index = {v: i for i, v in enumerate(self.item_ids)}
        self._entity_index = None

    def _set_train(self, train: np.ndarray) -> None:
        self._train = np.asarray(train, dtype=np.int64)
        pos = self._train[self._train[:, 2] == 1]
        self._seen_ptr, self._seen_items = csr_from_pairs(pos[:, 0], pos[:, 1],
                                                          len(self.user_ids))

    def _require_fitted(self) -> Any:
        if self.network is None:
            raise RuntimeError("the model is not trained: call fit() or KGNNLS.load()")
        return self.network

    @property
    def scorer(self) -> Scorer:
        """How ``score``, ``recommend``, ``similar_items``, ``explain`` and ``evaluate``
        score (:class:`kgnnls.scoring.Scorer`): built once per fitted or loaded
        network, so its compiled layout is copied once, not on every call.

        It is a snapshot of the parameters: ``fit`` and ``load`` replace it, and so
        does assigning another ``network``; after changing the network's
        parameters in place, ``del model.scorer`` drops it.
        """
        net = self._require_fitted()
        if self._scorer is None or self._scorer.model is not net:
            # training_path="autograd" scores pairs on the reference path, as it validated
            self._scorer = Scorer(net, compiled=self.options.training_path != "autograd")
        return self._scorer

    @scorer.deleter
    def scorer(self) -> None:
        self._scorer = None

    # ------------------------------------------------------------------ use
    def user_index(self, user: str | int) -> int:
        try:
            return self._user_index[str(user)]
        except KeyError:
            raise DataError(f"unknown user id {user!r}") from None

    def item_index(self, item: str | int) -> int:
        try:
            return self._item_index[str(item)]
        except KeyError:
            raise DataError(f"unknown item id {item!r}") from None

    def score(self, users: Sequence[str | int], items: Sequence[str | int]) -> np.ndarray:
        """Predicted engagement probability of each ``(users[i], items[i])`` pair."""
        scorer = self.scorer
        if len(users) != len(items):
            raise ValueError(f"{len(users)} users but {len(items)} items")
        u = torch.tensor([self.user_index(x) for x in users], dtype=torch.long)
        v = torch.tensor([self.item_index(x) for x in items], dtype=torch.long)
        return torch.sigmoid(scorer.score_pairs(u, v)).numpy()

    def entity_index(self, entity: str | int) -> int:
        """Internal index of an original KG entity id; DataError if unknown."""
        if getattr(self, "_entity_index", None) is None:
            self._entity_index = {e: i for i, e in enumerate(self.entity_ids)}
        try:
            return self._entity_index[str(entity)]
        except KeyError:
            raise DataError(f"unknown KG entity id {entity!r}") from None

    def recommend(self, user: str | int | Sequence[str | int] | np.ndarray, k: int = 10,
                  exclude_seen: bool = True, candidates: Sequence[str | int] | None = None,
                  new_items: dict[str, str] | None = None, *, filter_seen: bool | None = None
                  ) -> list[tuple[str, float]] | tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for one user, or for a batch of users as ``implicit`` returns them.

        * One user (a ``str`` or ``int`` id): a list of ``(item_id,
          probability)``, best first, at most ``k`` long (fewer when fewer
          items are eligible). This is the form the CLI, the server and
          earlier releases use.
        * Several users (a list, tuple or array of ids, even of length 1):
          ``(item_ids, scores)``, two arrays of shape ``[n_users, k']`` with
          ``k' = min(k, number of candidates)``: original item ids (``str``)
          and probabilities, best first per row. A row with fewer eligible
          items than ``k'`` is padded with item id ``""`` and score ``nan``.
          Users are ranked in chunks (``ranking_chunk``), so memory stays
          bounded for any number of users.

        ``exclude_seen`` (``filter_seen``, implicit's name, wins when given):
        leave out the user's training positives. ``candidates`` restricts the
        pool to these item ids (default: every item). ``new_items`` adds
        items without interactions, given as ``{new_item_id: kg_entity_id}``:
        such an item is scored from its KG neighbourhood, with the entity's
        own trained embedding as its vector (the KGNN-LS item vector *is* its
        entity's; see docs/serving.md). Both paths share one ranking code, so
        a user's row in a batch equals its single-user list.
        """
        self._require_fitted()
        if k < 1:
            raise ValueError("k must be >= 1")
        if filter_seen is not None:
            exclude_seen = filter_seen
        batch = np.ndim(user) > 0
        asked = np.ravel(user).tolist() if batch else [user]  # tolist: plain ids in errors
        users = np.array([self.user_index(u) for u in asked], dtype=np.int64)
        ids, index = self._candidate_pool(candidates, new_items)
        top, logits = self._top_k(users, index, k, exclude_seen)
        probs = torch.sigmoid(torch.from_numpy(logits)).numpy()
        valid = np.isfinite(logits)
        if not batch:
            return [(str(ids[c]), float(p)) for c, p in zip(top[0][valid[0]].tolist(),
                                                       probs[0][valid[0]], strict=True)]
        item_ids = np.asarray(ids, dtype=str)[top]
        item_ids[~valid] = ""
        return item_ids, np.where(valid, probs, np.nan).astype(np.float32)

    def _candidate_pool(self, candidates: Sequence[str | int] | None,
                        new_items: dict[str, str] | None) -> tuple[list[str], torch.Tensor]:
        """Ids and entity indices of the items to rank (every item by default)."""
        net = self._require_fitted()
        if candidates is None and not new_items:
            return list(self.item_ids), torch.arange(len(self.item_ids))
        ids = [str(c) for c in candidates or []]
        index = [self.item_index(c) for c in ids]
        if new_items and not getattr(net, "scores_entities", False):
            raise DataError(f"model {self.config.model!r} cannot score new items: it has "
                            "no representation of KG entities that are not items")
        for new_id, entity in (new_items or {}).items():
            ids.append(str(new_id))
            index.append(self.entity_index(entity))
        return ids, torch.tensor(index, dtype=torch.long)

    def _top_k(self, users: np.ndarray, index: torch.Tensor, k: int, exclude_seen: bool
               ) -> tuple[np.ndarray, np.ndarray]:
        """Columns of ``index`` and logits of each user's top ``min(k, len(index))``,
        ranked in chunks of users; excluded cells read ``-inf``."""
        scorer = self.scorer
        k = min(k, len(index))
        chunk = scorer.ranking_chunk(len(index))
        top = np.empty((len(users), k), dtype=np.int64)
        logits = np.empty((len(users), k), dtype=np.float32)
        order = np.argsort(index.numpy(), kind="stable")
        for s in range(0, len(users), chunk):
            part = users[s:s + chunk]
            scores = scorer.score_matrix(torch.from_numpy(part), index).float()
            if exclude_seen:
                rows, cols = self._seen_cells(part, index.numpy(), order)
                scores[torch.from_numpy(rows), torch.from_numpy(cols)] = -torch.inf
            best = torch.topk(scores, k, dim=1)
            top[s:s + len(part)] = best.indices.numpy()
            logits[s:s + len(part)] = best.values.numpy()
        return top, logits

    def _seen_cells(self, users: np.ndarray, index: np.ndarray, order: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
        """``(row, column)`` of every training positive of ``users`` among the ranked
        ``index`` (``order`` sorts it; an entity listed twice is masked twice)."""
        starts, counts = self._seen_ptr[users], np.diff(self._seen_ptr)[users]
        rows = np.repeat(np.arange(len(users)), counts)
        items = self._seen_items[concat_ranges(starts, counts)]
        lo = np.searchsorted(index, items, side="left", sorter=order)
        n = np.searchsorted(index, items, side="right", sorter=order) - lo
        rows = np.repeat(rows, n)
        return rows, order[concat_ranges(lo, n)]

    #: users whose scores make an item's profile in :meth:`similar_items`
    SIMILAR_USERS = 1024

    def similar_items(self, item: str | int | Sequence[str | int] | np.ndarray, k: int = 10
                      ) -> list[tuple[str, float]] | tuple[np.ndarray, np.ndarray]:
        """The ``k`` items most similar to ``item`` (itself left out), best first.

        Similarity is the cosine between the items' *score profiles*: the
        logits ``s(u, i)`` the model gives them over a fixed set of users
        (every user, or a seeded sample of :data:`SIMILAR_USERS` on larger
        data), each user's mean logit over all items subtracted. Why: a
        KGNN-LS item has no user-independent vector (its representation is
        aggregated with the user's own relation weights), so two items are
        compared by what the model does with them: similar when the same
        users rank them high and low. Centring per user removes each user's
        overall level, which every item shares and which would otherwise make
        all pairs look alike. Cost: one ranking pass over the sampled users on
        first use, kept (``4 * users * items`` bytes) until the model changes.

        One item id: a list of ``(item_id, similarity)``; several ids:
        ``(item_ids, similarities)`` arrays ``[n, min(k, n_items - 1)]``.
        """
        if k < 1:
            raise ValueError("k must be >= 1")
        batch = np.ndim(item) > 0
        asked = np.ravel(item).tolist() if batch else [item]
        rows = np.array([self.item_index(i) for i in asked], dtype=np.int64)
        profiles = self._item_profiles()
        sims = torch.from_numpy(profiles[rows] @ profiles.T)  # [n, I]
        sims[torch.arange(len(rows)), torch.from_numpy(rows)] = -torch.inf  # not itself
        best = torch.topk(sims, min(k, len(self.item_ids) - 1), dim=1)
        ids, values = self.item_ids[best.indices.numpy()], best.values.numpy()
        if batch:
            return ids, values
        return list(zip(ids[0].tolist(), values[0].tolist(), strict=True))

    def _item_profiles(self) -> np.ndarray:
        """Unit-norm centred score profiles ``[n_items, n_users_sampled]``, cached per network."""
        net = self._require_fitted()
        cached = getattr(self, "_profiles", None)
        if cached is not None and cached[0] is net:
            return cached[1]
        n_users = len(self.user_ids)
        users = np.arange(n_users)
        if n_users > self.SIMILAR_USERS:
            users = np.sort(rng(self.config.seed, "similar-items").choice(
                n_users, self.SIMILAR_USERS, replace=False))
        items = torch.arange(len(self.item_ids))
        scorer = self.scorer
        chunk = scorer.ranking_chunk(len(items))
        scores = np.concatenate([scorer.score_matrix(torch.from_numpy(users[s:s + chunk]), items)
                                 .float().numpy() for s in range(0, len(users), chunk)])
        scores -= scores.mean(axis=1, keepdims=True)
        profiles = np.ascontiguousarray(scores.T)
        profiles /= np.maximum(np.linalg.norm(profiles, axis=1, keepdims=True), 1e-12)
        self._profiles = (net, profiles)
        return profiles

    def explain(self, user: str | int, item: str | int | None = None, *,
                entity: str | None = None, top: int = 5) -> Explanation:
        """Why ``user`` gets ``item`` (or a new item given by its KG ``entity``).

        Returns the user's relation importance, the item's most influential
        KG neighbours and the label-propagation evidence; see
        :mod:`kgnnls.explain`.
        """
        net = self._require_fitted()
        if not hasattr(net, "label_inputs"):
            raise DataError(f"explanations need a KGNN-LS model, not {self.config.model!r}")
        if (item is None) == (entity is None):
            raise ValueError("give exactly one of item or entity")
        target = self.item_index(item) if item is not None else self.entity_index(entity)
        names = {"user_ids": self.user_ids, "item_ids": self.item_ids,
                 "entity_ids": self.entity_ids, "relation_names": self.relation_names}
        return explain_pair(net, self.user_index(user), target, names, top_relations=top,
                            scorer=self.scorer)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, dataset: Dataset | None = None) -> dict[str, Any]:
        """Validation and test metrics plus the popularity reference.

        Uses the training split (after ``fit``) or, after ``load``, reloads the
        dataset from where the model was trained and checks its fingerprint.
        """
        net = self._require_fitted()
        split, ds = self._evaluation_split(dataset)
        cfg, run = self.config, self.options
        scorer = self.scorer
        ours = evaluate_scorer(scorer, split.train, split.val, split.test, ds.n_users,
                               ds.n_items, cfg.seed, run.topk, batch_size=run.eval_batch_size,
                               chunk=scorer.ranking_chunk(ds.n_items), topk_users=run.topk_users)
        pop = evaluate_scorer(PopularityScorer(split.train, ds.n_items), split.train, split.val,
                              split.test, ds.n_users, ds.n_items, cfg.seed, run.topk,
                              probabilistic=False, topk_users=run.topk_users)
        return {
            "dataset": ds.name, "model": cfg.model, "variant": cfg.variant, "seed": cfg.seed,
            "config": cfg.to_dict(), "run": run.to_dict(), **{k: self.info.get(k) for k in (
                "epochs_trained", "best_epoch", "train_seconds", "compile_seconds",
                "ls_coverage", "training_path", "training_path_reason", "device")},
            "ranking_device": network_device(net).type,  # where score_matrix ran
            "history": self.history, **ours,
            "reference": {"popularity": pop},
            "kg": cfg.kg, "relation_entropy": relation_entropy(
                net, np.unique(split.train[:, 0]), n_relations=ds.n_relations),
            "dataset_stats": ds.stats(),  # ds: with config.kg applied (its triple count)
            "dataset_fingerprint": self.info.get("fingerprint") or ds.fingerprint(),
            "negatives": ds.negatives, "package_version": __version__,
            "torch_version": torch.__version__, "machine": platform.machine(),
        }

    def _evaluation_split(self, dataset: Dataset | None) -> tuple[Split, Dataset]:
        if dataset is None and getattr(self, "_dataset", None) is not None:
            return self._split, self._dataset
        if dataset is None:
            src = self.info.get("source")
            if not src:
                raise CheckpointError("this model does not record its dataset; pass it to "
                                      "evaluate(dataset)")
            dataset = DataSource(src["name"], src.get("data_dir")).load(self.config.seed,
                                                                        self.config.threshold,
                                                                        self.config.ratings,
                                                                        self.config.unlinked)
        if dataset.fingerprint() != self.info.get("fingerprint"):
            raise CheckpointError(f"dataset {dataset.name!r} differs from the one the model was "
                                  "trained on (fingerprint mismatch)")
        self._split = make_split(dataset, self.config)
        self._dataset = kg_dataset(dataset, self.config, self._split)  # as fit() built it
        return self._split, self._dataset

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write a self-contained checkpoint (weights, sampled graph, ids, training rows)."""
        net = self._require_fitted()
        state = net.state_dict()
        if network_device(net).type != "cpu":  # CPU tensors: the checkpoint loads anywhere
            state = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
        return save_checkpoint(path, {
            "package_version": __version__,
            "config": self.config.to_dict(),
            "run": self.options.to_dict(),
            "meta": net.checkpoint_meta(),
            "state_dict": state,
            "ids": {"users": self.user_ids.tolist(), "items": self.item_ids.tolist(),
                    "entities": self.entity_ids.tolist(),
                    "relations": self.relation_names.tolist()},
            "train": torch.from_numpy(self._train.astype(np.int32)),
            "history": self.history,
            "info": self.info,
        })

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", options: RunOptions | None = None
             ) -> KGNNLS:
        """Load a checkpoint written by :meth:`save` (safe: ``weights_only``).

        ``device`` (``auto``, ``cpu``, ``cuda``): where the network ranks and
        serves; ``auto`` puts it where it trained, on the CPU without a GPU
        (:func:`kgnnls.device.scoring_device`). ``options``: the run options
        of what follows (evaluation's top-K lists, ...); default: the saved
        ones (a checkpoint from before the split keeps them in its config).
        """
        payload = load_checkpoint(path)
        try:
            config = effective_config(Config.from_dict(payload["config"]))
            if options is None:
                saved = payload.get("run")
                options = (RunOptions.from_dict(saved) if saved is not None
                           else RunOptions.from_config_dict(payload["config"]))
            ids = payload["ids"]
            model = cls(config, options)
            net = model_class(config.model).from_checkpoint(config, payload["meta"],
                                                            payload["state_dict"])
            net.eval()
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: incompatible checkpoint ({type(e).__name__}: {e})"
                                  ) from None
        model.network = net  # model._scorer is None: built on first use, after place()
        model.history = list(payload.get("history", []))
        model.info = dict(payload.get("info", {}))
        model._set_ids(ids["users"], ids["items"], ids["entities"], ids["relations"])
        train = payload["train"].numpy().astype(np.int64)
        model._set_train(train)
        if hasattr(net, "set_labels"):
            net.set_labels(LabelTable(train[:, 0], train[:, 1], train[:, 2],
                                      len(model.entity_ids)))
        model._dataset = None
        gpu_ready = (None if hasattr(net, "label_inputs")  # KGNN-LS / KGCN
                     else f"model {config.model!r} ranks on the CPU only")
        target = scoring_device(device, str(model.info.get("device", "cpu")), gpu_ready)
        if target.type != "cpu":
            place(net, target)
        return model
