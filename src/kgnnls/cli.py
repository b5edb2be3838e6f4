"""Command-line interface: a thin layer over the Python API.

Errors caused by input (``KgnnlsError``) print as one line on stderr and exit
with status 2; there is no traceback for a bad file or a bad option. So do
usage errors (unknown command or option, missing or invalid value, empty
argument), whichever typer and click are installed: :func:`main` catches what
typer raises, not only click's classes (see ``_usage_error_types``). A
command that writes results refuses to replace a finished one without
``--overwrite`` (:func:`kgnnls.storage.refuse_to_overwrite`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from kgnnls.errors import ConfigError, KgnnlsError, OutputError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="KGNN-LS: knowledge-graph-aware recommendation (Wang et al., KDD 2019).")
data_app = typer.Typer(no_args_is_help=True, help="Inspect and generate datasets.")
app.add_typer(data_app, name="data")

DatasetOpt = Annotated[str, typer.Option("--dataset", "-d",
                                         help="Registered name (lastfm, book-crossing, ...) or a "
                                              "directory in the raw, final or RecBole layout.")]
DataDirOpt = Annotated[Path | None, typer.Option(
    "--data-dir", help="Local directory holding the dataset's files (or a sub-directory per "
                       "dataset); default: $KGNNLS_DATA, the package, then the download cache.")]
PresetOpt = Annotated[str | None, typer.Option(
    "--preset", help="Start from this dataset's paper setting (lastfm, book-crossing, "
                     "movielens-20m, dianping-food); default: the dataset's own, else lastfm's.")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a config field or run option, e.g. --set dim=32 --set lambda=0.5 "
                  "--set threads=2 (repeatable).")]


def _parse_sets(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _config_for(dataset: str, seed: int | None, sets: list[str] | None,
                preset: str | None = None, model: str = "kgnn-ls"):
    """``(Config, RunOptions)``: the preset (the dataset's own, else lastfm's) with the
    ``--set`` keys routed to the one that has the field."""
    from kgnnls.config import settings_for
    from kgnnls.data.registry import find_spec

    spec = find_spec(dataset)
    if preset is None:
        preset = spec.preset if spec is not None else "lastfm"
    overrides: dict[str, Any] = _parse_sets(sets)
    if seed is not None:
        overrides["seed"] = seed
    return settings_for(preset, model, overrides)


def _echo_err(message: str) -> None:
    typer.echo(message, err=True)


def _output_bytes(ds, config) -> int:
    """A generous estimate of what a training run writes: checkpoint.pt (weights,
    best weights, two Adam moments, sampled graph twice), model.pt (weights,
    graph, training rows), each written once more as a temp file."""
    params = (ds.n_users + ds.n_entities + ds.n_relations) * config.dim * (config.n_layers + 1)
    graph = ds.n_entities * config.n_neighbors * 16
    checkpoint = 16 * params + 2 * graph
    model = 4 * params + graph + 12 * len(ds.ratings)
    return 2 * (checkpoint + model) + (1 << 20)


def _on_every_rank(check: Callable[[], None]) -> None:
    """Run ``check`` on rank 0 alone (it reads files the other ranks may not see) and
    raise its one-line error on every rank (as OutputError under torchrun), so that no
    rank waits for the others."""
    from kgnnls import distributed

    error = None
    if distributed.is_main():
        try:
            check()
        except KgnnlsError as e:
            if not distributed.active():
                raise
            error = str(e)
    error = distributed.from_main(error)
    if error is not None:
        raise OutputError(error)


def _resume_config(out: Path, dataset: str | None, seed: int | None, sets: list[str] | None,
                   preset: str | None, model_name: str | None):
    """Config, run options and dataset source saved in OUT/checkpoint.pt; CheckpointError
    naming the config field where the given options disagree with it. Run options
    (``--set threads=2``) may differ: they replace the saved ones."""
    from kgnnls.config import Config, RunOptions, split_settings
    from kgnnls.errors import CheckpointError
    from kgnnls.train import config_mismatches, read_training_state

    path = out / "checkpoint.pt"
    if not path.is_file():
        done = (out / "model.pt").is_file() and (out / "metrics.json").is_file()
        raise CheckpointError(f"{path}: nothing to resume ("
                              + ("the run in this directory is complete" if done else
                                 "no checkpoint: start the run without --resume") + ")")
    saved = read_training_state(path)
    config = Config.from_dict(saved["config"])
    options = (RunOptions.from_dict(saved["run"]) if "run" in saved  # older: in its config
               else RunOptions.from_config_dict(saved["config"]))
    source = (saved.get("info") or {}).get("source") or {}
    if dataset is not None and source.get("name") not in (None, dataset) and not (
            Path(dataset).exists() and Path(dataset).resolve() == Path(source["name"]).resolve()):
        raise CheckpointError(f"{path}: dataset: {source['name']!r} in the checkpoint, "
                              f"{dataset!r} given")
    if preset is not None:  # a preset resets every field: compare a whole config
        given, options = _config_for(dataset or source.get("name", "lastfm"), seed, sets,
                                     preset, model_name or config.model)
    else:
        overrides, run_overrides = split_settings(_parse_sets(sets))
        if seed is not None:
            overrides["seed"] = seed
        if model_name is not None:
            overrides["model"] = model_name
        given = config.with_overrides(overrides)
        options = options.with_overrides(run_overrides)
    wrong = config_mismatches(saved["config"], given)
    if wrong:
        raise CheckpointError(f"{path}: the options disagree with the saved config "
                              f"({'; '.join(wrong)}); --resume re-uses the saved config")
    dataset = source.get("name") or dataset
    if dataset is None:
        raise CheckpointError(f"{path}: the checkpoint does not record its dataset; pass "
                              "--dataset")
    return config, options, dataset, source.get("data_dir")


def _summary(metrics: dict[str, Any], protocol: str = "both") -> str:
    pop = metrics["reference"]["popularity"]
    rows = [("val AUC", metrics["val"]["auc"], pop["val"]["auc"]),
            ("test AUC", metrics["test"]["auc"], pop["test"]["auc"]),
            ("test F1", metrics["test"]["f1"], None)]
    if protocol in ("both", "full"):
        for k in ("recall@10", "ndcg@10", "recall@100"):
            if k in metrics["test"]:  # --set topk=... may leave a K out
                rows.append((f"test {k} (full ranking)", metrics["test"][k], pop["test"][k]))
    if protocol in ("both", "paper"):
        for k in ((2, 10, 50, 100) if protocol == "paper" else (10,)):
            rows.append((f"test recall@{k} (paper protocol, 100 users)",
                         metrics["test_paper_protocol"][f"recall@{k}"],
                         pop["test_paper_protocol"][f"recall@{k}"]))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'metric':<{width}}  {metrics['model']:>10}  {'popularity':>10}"]
    for name, ours, ref in rows:
        ref_s = "-" if ref is None else f"{ref:.4f}"
        lines.append(f"{name:<{width}}  {ours:>10.4f}  {ref_s:>10}")
    return "\n".join(lines)


@app.command()
def train(
    dataset: Annotated[str | None, typer.Option(
        "--dataset", "-d", help="Registered name (lastfm, book-crossing, ...) or a directory in "
                                "the raw, final or RecBole layout; default: lastfm (with "
                                "--resume: the saved run's).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to create.")] = Path(
        "runs/latest"),
    seed: Annotated[int | None, typer.Option(help="Seed for split, sampling and init.")] = None,
    model_name: Annotated[str | None, typer.Option(
        "--model", "-m", help="kgnn-ls (default), kgcn, or a baseline.")] = None,
    preset: PresetOpt = None,
    sets: SetOpt = None,
    data_dir: DataDirOpt = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the interrupted run in --out from its checkpoint.pt, with "
                         "the config saved there (other options must agree with it).")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace the finished (or interrupted) run in --out; without it "
                            "train refuses to write over one.")] = False,
    show: Annotated[int, typer.Option(help="Users to show recommendations for.")] = 3,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Train on a dataset, evaluate, save RUN_DIR/model.pt and metrics.json.

    RUN_DIR/checkpoint.pt holds the training state after every epoch (for
    --resume) and is removed once model.pt and metrics.json are written. A
    RUN_DIR that holds a finished run (or an interrupted one) is never written
    over without --overwrite.
    Under ``torchrun --nproc_per_node N -m kgnnls train ...`` the N processes
    train data-parallel; rank 0 alone prints and writes RUN_DIR.
    """
    from kgnnls import distributed

    owned = distributed.init()  # under torchrun: join its process group
    try:
        _train(dataset, out, seed, model_name, preset, sets, data_dir, resume, show, quiet,
               overwrite=overwrite)
    finally:
        if owned:  # every rank leaves the group it joined
            distributed.finish()


def _train(dataset: str | None, out: Path, seed: int | None, model_name: str | None,
           preset: str | None, sets: list[str] | None, data_dir: Path | None, resume: bool,
           show: int, quiet: bool, overwrite: bool = False) -> None:
    from tqdm.auto import tqdm

    from kgnnls import distributed
    from kgnnls.data.registry import load_dataset
    from kgnnls.recommender import KGNNLS, DataSource
    from kgnnls.storage import atomic_write_json, check_output_dir, refuse_to_overwrite

    if resume and overwrite:
        raise ConfigError("give at most one of --resume (continue the run in --out) and "
                          "--overwrite (start it over)")
    main_rank = distributed.is_main()
    if resume:  # rank 0 reads OUT/checkpoint.pt; the other ranks need not see it
        found, error = None, None
        if main_rank:
            try:
                found = _resume_config(out, dataset, seed, sets, preset, model_name)
            except KgnnlsError as e:
                if not distributed.active():
                    raise
                error = str(e)
        found, error = distributed.from_main((found, error))
        if error is not None:  # the same one-line error on every rank
            from kgnnls.errors import CheckpointError

            raise CheckpointError(error)
        config, options, dataset, saved_dir = found
        if data_dir is None and saved_dir is not None:
            data_dir = Path(saved_dir)
    else:
        dataset = dataset or "lastfm"
        config, options = _config_for(dataset, seed, sets, preset, model_name or "kgnn-ls")
        _on_every_rank(lambda: refuse_to_overwrite(
            [out / "model.pt", out / "metrics.json"], overwrite=overwrite, where=out, what="run",
            checkpoint=out / "checkpoint.pt"))
    if main_rank:
        check_output_dir(out)
    ds = load_dataset(dataset, seed=config.seed, data_dir=data_dir, threshold=config.threshold,
                      ratings=config.ratings, unlinked=config.unlinked,
                      progress=not quiet and main_rank)
    if main_rank:
        check_output_dir(out, _output_bytes(ds, config))  # preflight: before any training
        st = ds.stats()
        _echo_err(f"{ds.name}: {st['users']} users, {st['items']} items, {st['interactions']} "
                  f"labelled rows, {st['entities']} entities, {st['relations']} relations, "
                  f"{st['triples']} triples")
    source = DataSource(str(dataset), None if data_dir is None else str(data_dir.resolve()))
    checkpoint = out / "checkpoint.pt"
    model = KGNNLS(config, options).fit(ds, progress=not quiet,
                                        log=lambda m: tqdm.write(m, file=sys.stderr),
                                        source=source, checkpoint_path=checkpoint, resume=resume)
    if not main_rank:
        return  # rank 0 evaluates and writes RUN_DIR
    metrics = model.evaluate()
    metrics["world_size"] = distributed.world_size()
    model.save(out / "model.pt")
    atomic_write_json(out / "metrics.json", metrics)
    checkpoint.unlink(missing_ok=True)  # the run is complete: nothing left to resume
    for stale in out.glob(".checkpoint.pt.*.tmp"):  # left by a kill during a write
        stale.unlink(missing_ok=True)
    typer.echo(_summary(metrics))
    coverage = metrics["ls_coverage"]
    typer.echo(f"trained {metrics['epochs_trained']} epochs ({metrics['train_seconds']:.1f} s), "
               f"best epoch {metrics['best_epoch']}"
               + ("" if coverage is None else f", LS coverage {coverage:.1%}")
               + f"; saved {out / 'model.pt'} and {out / 'metrics.json'}")
    test = model._split.test
    for user_idx in list(dict.fromkeys(test[test[:, 2] == 1, 0].tolist()))[:show]:
        user = model.user_ids[user_idx]
        recs = ", ".join(f"{item} ({p:.2f})" for item, p in model.recommend(user, k=5))
        typer.echo(f"user {user}: {recs}")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (or model.pt) from train.")],
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print all metrics as JSON.")] = False,
    protocol: Annotated[str, typer.Option(
        help="Top-K protocol to show: full (all users, all items), paper (the authors' 100 "
             "sampled users), or both.")] = "both",
) -> None:
    """Re-evaluate a saved model on its dataset's split (fingerprint-checked)."""
    if protocol not in ("both", "full", "paper"):
        raise ConfigError(f"--protocol must be full, paper or both, got {protocol!r}")
    from kgnnls.data.registry import load_dataset
    from kgnnls.recommender import KGNNLS

    model = KGNNLS.load(run_dir)
    dataset = None
    if data_dir is not None:
        src = model.info.get("source") or {"name": model.info.get("dataset")}
        dataset = load_dataset(src["name"], seed=model.config.seed, data_dir=data_dir,
                               threshold=model.config.threshold, progress=False,
                               ratings=model.config.ratings, unlinked=model.config.unlinked)
    metrics = model.evaluate(dataset)
    typer.echo(json.dumps(metrics, indent=2, default=float) if as_json
               else _summary(metrics, protocol))


def _read_candidates(path: Path, model) -> tuple[list[str], dict[str, str]]:
    """Candidates file: ``ITEM_ID`` per line, or ``NEW_ITEM_ID<TAB>KG_ENTITY_ID``."""
    from kgnnls.errors import DataError

    if not path.is_file():
        raise DataError("candidates file not found", path)
    known, new = [], {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"not valid UTF-8 ({e.reason})", path) from None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cells = [c.strip() for c in line.split("\t")]
        if len(cells) > 2 or not cells[0]:
            raise DataError("expected ITEM_ID or NEW_ITEM_ID<TAB>KG_ENTITY_ID", path, number)
        if cells[0] in model._item_index:
            known.append(cells[0])
        elif len(cells) == 2 and cells[1]:
            model.entity_index(cells[1])  # unknown entity -> clear error
            new[cells[0]] = cells[1]
        else:
            raise DataError(f"unknown item {cells[0]!r}: give its KG entity as a second column "
                            "to score it as a new item", path, number)
    if not known and not new:
        raise DataError("no candidates", path)
    return known, new


@app.command()
def recommend(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (or model.pt) from train.")],
    user: Annotated[str | None, typer.Option("--user", "-u", help="Original user id.")] = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="How many items.")] = 10,
    include_seen: Annotated[bool, typer.Option(help="Keep the user's training positives.")] = False,
    candidates: Annotated[Path | None, typer.Option(
        help="Rank only these: a file with ITEM_ID per line, or NEW_ITEM_ID<TAB>KG_ENTITY_ID "
             "for items without interactions (cold start).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    all_users: Annotated[bool, typer.Option(
        "--all", help="Every user's top-k into --out (instead of --user).")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="With --all: a .parquet or .csv file (user, rank, item, score), "
                            "written atomically, users in chunks.")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="With --all: replace an existing --out file.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Top-k items for a user, or for every user into a file (original ids)."""
    from kgnnls.recommender import KGNNLS

    if all_users:
        _recommend_all(run_dir, out, k, include_seen, overwrite, user, candidates, quiet)
        return
    if user is None or out is not None:
        raise ConfigError("give --user USER_ID, or --all with --out FILE")
    model = KGNNLS.load(run_dir)
    known, new = (None, None) if candidates is None else _read_candidates(candidates, model)
    recs = model.recommend(user, k=k, exclude_seen=not include_seen, candidates=known,
                           new_items=new)
    if as_json:
        typer.echo(json.dumps([{"item": i, "score": p} for i, p in recs]))
        return
    for rank, (item, p) in enumerate(recs, 1):
        typer.echo(f"{rank:3d}  {item}  {p:.4f}")


def _recommend_all(run_dir: Path, out: Path | None, k: int, include_seen: bool,
                   overwrite: bool, user: str | None, candidates: Path | None,
                   quiet: bool) -> None:
    """``recommend --all``: every user's top-k into ``out`` (kgnnls.export)."""
    from kgnnls.export import output_format, write_all_recommendations
    from kgnnls.recommender import KGNNLS
    from kgnnls.storage import refuse_to_overwrite

    if out is None or user is not None or candidates is not None:
        raise ConfigError("--all needs --out FILE (.parquet or .csv) and takes no --user or "
                          "--candidates")
    output_format(out)  # a bad suffix or a missing pyarrow fails before the model loads
    refuse_to_overwrite([out], overwrite=overwrite, what="recommendation list")
    model = KGNNLS.load(run_dir)
    rows = write_all_recommendations(model, out, k=k, exclude_seen=not include_seen,
                                     progress=not quiet)
    _echo_err(f"wrote {rows} recommendations for {len(model.user_ids)} users to {out}")


@app.command()
def explain(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (or model.pt) from train.")],
    user: Annotated[str, typer.Option("--user", "-u", help="Original user id.")],
    item: Annotated[str | None, typer.Option("--item", "-i", help="Original item id.")] = None,
    entity: Annotated[str | None, typer.Option(
        help="A KG entity scored as a new item (instead of --item).")] = None,
    top: Annotated[int, typer.Option(min=1, help="Relations to list.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Why a user gets an item: relation importance, KG neighbours, label evidence."""
    from kgnnls.recommender import KGNNLS

    if (item is None) == (entity is None):
        raise ConfigError("give exactly one of --item and --entity")
    result = KGNNLS.load(run_dir).explain(user, item, entity=entity, top=top)
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.to_text())


@app.command()
def tune(
    dataset: DatasetOpt = "lastfm",
    trials: Annotated[int, typer.Option(min=1, help="Finished trials to reach (a resumed "
                                                    "study runs only the missing ones).")] = 20,
    storage: Annotated[str | None, typer.Option(
        help="Optuna storage URL, e.g. sqlite:///tune.db (resumable); default: in memory.")
                       ] = None,
    study_name: Annotated[str | None, typer.Option(help="Study name in the storage.")] = None,
    space: Annotated[list[str] | None, typer.Option(
        help="Restrict a searched field: --space dim=8,16,32 (repeatable); default: the "
             "paper's grid for S, d, L, lambda, gamma, eta.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the data, runs and sampler.")] = 0,
    preset: PresetOpt = None,
    sets: SetOpt = None,
    data_dir: DataDirOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where tune.json and the importance "
                                                          "plot go.")] = Path("runs/tune"),
) -> None:
    """Search hyper-parameters with Optuna on validation AUC (pruning bad trials)."""
    from kgnnls.extras import require_extra

    require_extra("tune")
    from kgnnls.config import ALIASES
    from kgnnls.data.registry import load_dataset
    from kgnnls.storage import check_output_dir
    from kgnnls.tune import tune as run_tune

    config, options = _config_for(dataset, seed, sets, preset)
    restricted = {}
    for item in space or []:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ConfigError(f"--space expects field=v1,v2,..., got {item!r}")
        field = ALIASES.get(key.strip(), key.strip())
        restricted[field] = [config.with_overrides({field: v}).__getattribute__(field)
                             for v in values.split(",")]
    check_output_dir(out)
    ds = load_dataset(dataset, seed=config.seed, data_dir=data_dir, threshold=config.threshold,
                      ratings=config.ratings, unlinked=config.unlinked)
    result = run_tune(ds, config, trials, storage=storage, study_name=study_name,
                      space=restricted, out=out, log=_echo_err, options=options)
    states = [t["state"] for t in result["trials"]]
    typer.echo(f"best validation AUC {result['best_value']:.4f} ({states.count('COMPLETE')} "
               f"trials complete, {states.count('PRUNED')} pruned)")
    given = " ".join(f"--set {item}" for item in sets or [])
    typer.echo(f"kgnnls train --dataset {dataset} {given} {result['set_line']}".replace("  ", " "))
    if "importance_png" in result:
        typer.echo(f"wrote {result['importance_png']} and {out / 'tune.json'}")


@app.command()
def benchmark(
    dataset: DatasetOpt = "lastfm",
    models: Annotated[str, typer.Option(
        help="'all' or a comma-separated list (kgnnls.benchmark.model_names()).")] = "all",
    trials: Annotated[int, typer.Option(min=1, help="Optuna trials per model (finished trials "
                                                    "to reach; a resumed search runs the "
                                                    "missing ones).")] = 20,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds (splits) the best setting is "
                                                   "retrained and tested on.")] = 5,
    metric: Annotated[str, typer.Option(help="Validation metric tuned and the report's "
                                             "headline: ndcg@K, recall@K, ...")] = "ndcg@20",
    out: Annotated[Path, typer.Option("--out", "-o", help="Report directory (with the run "
                                                          "cache and the default storage).")
                   ] = Path("reports"),
    storage: Annotated[str | None, typer.Option(
        help="Optuna RDB URL shared by several processes or machines (default: "
             "sqlite:///OUT/benchmark-NAME.db).")] = None,
    jobs: Annotated[int, typer.Option(min=1, help="Models run at once in worker "
                                                  "processes.")] = 1,
    epochs: Annotated[int, typer.Option(min=1, help="Epoch cap of every iterative "
                                                    "model.")] = 30,
    patience: Annotated[int, typer.Option(min=1, help="Early-stopping patience of every "
                                                      "iterative model.")] = 3,
    val_users: Annotated[int, typer.Option(min=0, help="Validation users ranked per "
                                                       "evaluation (0: all).")] = 0,
    fix: Annotated[list[str] | None, typer.Option(
        help="Pin a search-space key: --fix MODEL.KEY=VALUE (repeatable).")] = None,
    ablate: Annotated[str | None, typer.Option(
        help="KG-aware models also run with kg=none and kg=shuffle:1.0 (the KG gain): a "
             "comma-separated list; default: every KG-aware model run.")] = None,
    no_ablation: Annotated[bool, typer.Option(
        "--no-ablation", help="No KG ablation runs (as --ablate with no model).")] = False,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the tuning samplers.")] = 0,
    data_dir: DataDirOpt = None,
    overwrite: Annotated[bool, typer.Option(
        help="Rewrite a finished leaderboard's reports (stored trials and seeds are "
             "reused).")] = False,
) -> None:
    """A fair leaderboard: every model tuned with the same budget, tested on several seeds."""
    from kgnnls.extras import require_extra

    require_extra("benchmark")
    from kgnnls.benchmark import BenchmarkSpec, Budget, model_names, run_benchmark, write_reports
    from kgnnls.benchmark.report import report_paths
    from kgnnls.config import _auto
    from kgnnls.storage import refuse_to_overwrite

    names = model_names() if models.strip() == "all" else [
        m.strip() for m in models.split(",") if m.strip()]
    fixed: dict[str, dict[str, Any]] = {}
    for item in fix or []:
        key, sep, value = item.partition("=")
        model, dot, field = key.partition(".")
        if not sep or not dot or not field:
            raise ConfigError(f"--fix expects MODEL.KEY=VALUE, got {item!r}")
        fixed.setdefault(model.strip(), {})[field.strip()] = _auto(value.strip())
    spec = BenchmarkSpec(dataset=dataset, models=tuple(names), out=out, trials=trials,
                         seeds=seeds, metric=metric.strip().lower(),
                         budget=Budget(epochs=epochs, patience=patience), val_users=val_users,
                         data_dir=None if data_dir is None else str(data_dir), storage=storage,
                         fixed=fixed, ablate=_ablated(names, ablate, no_ablation),
                         seed=seed).validate()
    refuse_to_overwrite(report_paths(out, spec.slug), overwrite=overwrite, what="leaderboard")
    doc = run_benchmark(spec, jobs=jobs, log=_echo_err)
    paths = write_reports(doc, out)
    from kgnnls.benchmark.report import verdict

    typer.echo("\n".join(verdict(doc)))
    typer.echo(f"wrote {', '.join(map(str, paths))}")


def _ablated(models: list[str], ablate: str | None, none: bool) -> tuple[str, ...]:
    """The models ``benchmark`` runs the KG ablations for."""
    from kgnnls.benchmark.models import check_models, uses_kg

    if none:
        return ()
    if ablate is None:
        return tuple(m for m in check_models(models) if uses_kg(m))
    return tuple(m.strip() for m in ablate.split(",") if m.strip())


@app.command()
def serve(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (or model.pt) from train.")],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    max_k: Annotated[int, typer.Option(min=1, help="Largest k /recommend accepts.")] = 1000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    device: Annotated[str, typer.Option(
        help="Where the model ranks: auto (where it trained, if a GPU is visible), cpu, "
             "cuda.")] = "auto",
) -> None:
    """Serve a trained model over HTTP (FastAPI + uvicorn; OpenAPI docs at /docs)."""
    from kgnnls.extras import require_extra

    require_extra("serve")
    from kgnnls.serve import serve as run_server

    run_server(str(run_dir), host=host, port=port, log_level=log_level, max_k=max_k,
               device=device)


@app.command()
def reproduce(
    experiment: Annotated[str, typer.Argument(
        help="table3, table4, table5, table6, table7, fig3, fig5, fig6 or all.")],
    dataset: DatasetOpt = "lastfm",
    seeds: Annotated[int, typer.Option(help="Number of seeds (0 .. N-1); a seed varies the "
                                            "split, negatives, neighbours and init.")] = 5,
    out: Annotated[Path, typer.Option("--out", "-o", help="Report directory (and its cache/).")
                   ] = Path("reports"),
    data_dir: DataDirOpt = None,
    sets: SetOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    jobs: Annotated[int, typer.Option(help="Runs at once, in worker processes of one "
                                           "thread each (same numbers as 1).")] = 1,
    cached_only: Annotated[bool, typer.Option(
        help="Run nothing: write the reports from the runs finished so far (a look at a "
             "long experiment; fig6 still times its epochs).")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Rewrite finished reports in --out (cached runs are still "
                            "reused; delete OUT/cache to re-run them).")] = False,
) -> None:
    """Regenerate a table or figure of the paper with mean ± std over seeds.

    Finished runs are cached under OUT/cache: re-running skips them and an
    interrupted run resumes where it stopped. A finished report (not a
    --cached-only partial one) is never rewritten without --overwrite: ``all``
    keeps the finished ones and writes the others, and refuses when every one
    is finished.
    """
    from kgnnls.extras import require_extra

    require_extra("reproduce")
    from kgnnls.data.registry import find_spec
    from kgnnls.reproduce import EXPERIMENTS, Runner, run_experiment
    from kgnnls.storage import check_output_dir

    if experiment != "all" and experiment not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {experiment!r}; choose from "
                          f"{', '.join(EXPERIMENTS)} or all")
    spec = find_spec(dataset)
    if spec is None:
        raise ConfigError(f"reproduce needs a registered dataset, got {dataset!r}")
    if seeds < 1:
        raise ConfigError("--seeds must be >= 1")
    if jobs < 1:
        raise ConfigError("--jobs must be >= 1")
    names = list(EXPERIMENTS) if experiment == "all" else [experiment]
    todo = names if overwrite else _unfinished_reports(out, names, spec.name)
    check_output_dir(out)
    runner = Runner(spec.name, out, data_dir=data_dir, base=_parse_sets(sets),
                    progress=not quiet, log=_echo_err, jobs=jobs, cached_only=cached_only)
    argv = sys.argv[1:] or ["reproduce", experiment]
    command = "kgnnls " + " ".join(argv)
    for name in todo:
        for path in run_experiment(name, runner, list(range(seeds)), command):
            typer.echo(f"wrote {path}")


#: What kgnnls.reproduce writes at the top of a --cached-only report with runs missing.
_PARTIAL_MARK = "**Partial report**"


def _unfinished_reports(out: Path, names: list[str], dataset: str) -> list[str]:
    """The experiments among ``names`` without a finished report in ``out``.

    A report is finished when its .md and .json exist and the .md is not a
    --cached-only partial one. Finished ones are kept (one line each, so that an
    interrupted ``all`` resumes); OutputError naming --overwrite when all are.
    """
    from kgnnls.storage import refuse_to_overwrite

    def files(name: str) -> list[Path]:
        return [out / f"{name}-{dataset}.md", out / f"{name}-{dataset}.json"]

    def finished(name: str) -> bool:
        md, js = files(name)
        return (md.is_file() and js.is_file()
                and _PARTIAL_MARK not in md.read_text(encoding="utf-8", errors="replace"))

    done = [name for name in names if finished(name)]
    if done and len(done) == len(names):
        refuse_to_overwrite([p for name in done for p in files(name)], overwrite=False,
                            where=out, what="report" if len(done) == 1 else "set of reports")
    for name in done:
        _echo_err(f"kept {files(name)[0]}: finished (--overwrite rewrites it)")
    return [name for name in names if name not in done]


@data_app.command("stats")
def data_stats(dataset: DatasetOpt = "lastfm", data_dir: DataDirOpt = None,
               seed: Annotated[int, typer.Option(help="Seed of negative sampling.")] = 0,
               sets: SetOpt = None) -> None:
    """Print the paper's Table 2 row for a dataset."""
    from kgnnls.data.registry import load_dataset

    cfg, _ = _config_for(dataset, seed, sets)
    st = load_dataset(dataset, seed=seed, data_dir=data_dir, threshold=cfg.threshold,
                      ratings=cfg.ratings, unlinked=cfg.unlinked).stats()
    width = max(map(len, st))
    for key, value in st.items():
        typer.echo(f"{key:<{width}}  {value:,}" if isinstance(value, int) else
                   f"{key:<{width}}  {value}")


@data_app.command("synth")
def data_synth(
        out: Annotated[Path, typer.Option("--out", help="Directory to write (final layout).")],
        like: Annotated[str, typer.Option("--like", help="Table 2 shape to copy.")] = "ml-20m",
        scale: Annotated[float, typer.Option(help="Multiplies users, items, interactions, "
                                                  "entities and triples.")] = 1.0,
        seed: Annotated[int, typer.Option(help="Seed of the generator.")] = 0) -> None:
    """Write a synthetic dataset of a paper dataset's shape, with a learnable signal."""
    import time

    from kgnnls.data.synthetic import synthetic_like, write_final
    from kgnnls.storage import check_output_dir

    check_output_dir(out)
    t0 = time.perf_counter()
    try:
        ds = synthetic_like(like, scale, seed)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    t1 = time.perf_counter()
    write_final(ds, out)
    t2 = time.perf_counter()
    for key, value in ds.stats().items():
        typer.echo(f"{key:<12}  {value:,}" if isinstance(value, int) else f"{key:<12}  {value}")
    typer.echo(f"generated in {t1 - t0:.2f} s, wrote {out} in {t2 - t1:.2f} s "
               f"(train with: kgnnls train --dataset {out} --preset movielens-20m)")


@data_app.command("list")
def data_list() -> None:
    """Registered datasets and where each comes from."""
    from kgnnls.data.registry import REGISTRY

    for spec in REGISTRY.values():
        where = "embedded" if spec.embedded else ("download" if spec.files else "local only")
        typer.echo(f"{spec.name:<15} {where:<10} {spec.title}")


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """The ClickException classes the installed typer raises for a malformed command line.

    typer < 0.26 raises click's own; later releases vendor click as ``typer._click``,
    whose exceptions are not click's. Both are found without importing a private
    module: typer.BadParameter is whichever BadParameter typer raises.
    """
    found: list[type[BaseException]] = [
        cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException"]
    try:  # click itself, where installed: what code calling click directly raises
        import click

        found.append(click.exceptions.ClickException)
    except ImportError:
        pass
    return tuple(dict.fromkeys(found)) or (typer.BadParameter,)


def _empty_argument(args: list[str]) -> str | None:
    """The one-line complaint about an empty argument, or None.

    No option or argument of this CLI takes an empty value, and an empty one is
    usually an unset shell variable (``--out "$RUN"``): refused before typer sees
    it, since ``Path("")`` is the current directory and ``""`` a valid string.
    """
    for i, arg in enumerate(args):
        if arg == "--":
            return None
        if arg == "":
            return "empty argument" + (f" after {args[i - 1]!r}" if i else "")
        if arg.startswith("-") and arg.endswith("="):
            return f"empty value in {arg!r}"
    return None


def _show_usage_error(error: Any) -> int:
    """Print a typer/click usage error as one line (plus a usage hint); its exit code."""
    if type(error).__name__ == "NoArgsIsHelpError":  # a bare group: its help is the answer
        error.show()
        return error.exit_code
    _echo_err(f"kgnnls: error: {' '.join(error.format_message().split())}")
    ctx = getattr(error, "ctx", None)
    if ctx is not None:
        usage = " ".join(ctx.get_usage().split())
        _echo_err(f"{usage} (try '{ctx.command_path} --help')")
    return error.exit_code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kgnnls`` console script; returns the exit status.

    0: done. 2: bad input, one line on stderr and no traceback, whether typer
    rejected the command line (unknown command or option, missing or invalid
    value) or the package rejected a file, value or checkpoint (KgnnlsError).
    130: interrupted.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    empty = _empty_argument(args)
    if empty is not None:
        _echo_err(f"kgnnls: error: {empty}; give a value or leave the option out")
        return 2
    try:
        # prog_name: usage lines say `kgnnls` under `python -m`, torchrun and tests too
        status = app(args=args, prog_name="kgnnls", standalone_mode=False)
    except KgnnlsError as e:
        _echo_err(f"kgnnls: error: {e}")
        return 2
    except (typer.Abort, KeyboardInterrupt):
        _echo_err("kgnnls: aborted")
        return 130
    except _usage_error_types() as e:
        return _show_usage_error(e)
    # outside standalone mode typer returns the code of a typer.Exit (--help: 0; an
    # interrupt in typer >= 0.26: 130), else the command's return value (None)
    if isinstance(status, int) and not isinstance(status, bool):
        if status == 130:
            _echo_err("kgnnls: aborted")
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
