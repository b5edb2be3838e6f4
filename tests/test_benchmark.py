"""`kgnnls benchmark`: the leaderboard end to end on a tiny synthetic dataset.

Reports and their JSON layout, deterministic tuning, resuming after kill -9,
two processes sharing one Optuna storage, bad input (exit 2, one line, nothing
lost), --overwrite, and the protocol's folds and paired tests as units.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import write_final_layout
from kgnnls.benchmark import runner, tuning
from kgnnls.benchmark.protocol import COLD_USER_MAX, Fold
from kgnnls.benchmark.stats import paired
from kgnnls.cli import main

SLUG = "tiny"
FINISHED = ("COMPLETE", "PRUNED")


def _tiny_dataset():
    from kgnnls.data.synthetic import planted_dataset

    # 5 positives per user: some users keep <= 3 training positives, some items none
    return planted_dataset(seed=0, positives_per_user=5)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_final_layout(_tiny_dataset(), tmp_path_factory.mktemp("data") / SLUG)


def _args(dataset: Path, out: Path, *extra: str) -> list[str]:
    return ["benchmark", "--dataset", str(dataset), "--out", str(out), *extra]


def _doc(out: Path) -> dict:
    return json.loads((out / f"benchmark-{SLUG}.json").read_text())


def _reports(out: Path) -> list[Path]:
    return [out / f"benchmark-{SLUG}.{ext}" for ext in ("json", "md", "png")]


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``root``: (mtime_ns, sha256)."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns,
                                       hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


def _studies(url: str) -> dict[str, list]:
    """Study name -> its trials, read straight from the storage."""
    import optuna

    return {name: optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
            for name in optuna.study.get_all_study_names(url)}


def _finished(trials: list) -> list:
    return [t for t in trials if t.state.name in FINISHED]


def _study_of(url: str, model: str) -> list:
    studies = {n: t for n, t in _studies(url).items() if n.startswith(f"{SLUG}-{model}-")}
    assert len(studies) == 1, sorted(_studies(url))
    return next(iter(studies.values()))


def _sqlite(out: Path) -> str:
    return f"sqlite:///{(out / f'benchmark-{SLUG}.db').resolve()}"


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kgnnls: error: "), err
    return lines[0]


# ------------------------------------------------------------------ end to end
E2E = ("--models", "popularity,ease,kgnn-ls", "--trials", "2", "--seeds", "2", "--epochs", "2",
       "--patience", "1", "--fix", "kgnn-ls.dim=16", "--fix", "kgnn-ls.n_neighbors=4")


@pytest.fixture(scope="module")
def finished_run(tiny_dir, tmp_path_factory) -> Path:
    """One finished leaderboard (popularity, EASE, KGNN-LS), shared read-only."""
    out = tmp_path_factory.mktemp("e2e") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KGNNLS_CACHE", str(tmp_path_factory.mktemp("cache")))
        assert main(_args(tiny_dir, out, *E2E)) == 0
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(run, out)
    return out


def test_end_to_end_reports_and_json_layout(finished_run):
    out, seeds = finished_run, 2
    _, md_path, png_path = _reports(out)
    assert png_path.read_bytes().startswith(b"\x89PNG")
    doc = _doc(out)
    assert {"dataset", "trials", "seeds", "metric", "models", "paired", "kg_ablation"} <= set(doc)
    assert (doc["dataset"], doc["trials"], doc["seeds"], doc["metric"]) == (SLUG, 2, seeds,
                                                                           "ndcg@20")
    models = doc["models"]
    assert list(models) == ["popularity", "ease", "kgnn-ls"]
    md = md_path.read_text()
    for name, m in models.items():
        assert name in md
        assert {"best_params", "trials", "test", "slices", "fit_seconds",
                "eval_seconds"} <= set(m)
        # a search space without parameters (popularity) needs one trial
        assert len(_finished_trials_of(m)) == (1 if name == "popularity" else 2)
        for metric in ("recall@20", "ndcg@20"):
            values = m["test"][metric]
            assert len(values) == seeds and all(0.0 <= v <= 1.0 for v in values), (name, metric)
            for part in ("cold_items", "cold_users"):
                assert len(m["slices"][part][metric]) == seeds
        assert len(m["fit_seconds"]) == len(m["eval_seconds"]) == seeds
        assert all(s >= 0 for s in m["fit_seconds"] + m["eval_seconds"])
    # pinned values reach the trained model's setting
    assert models["kgnn-ls"]["best_params"]["dim"] == 16
    assert models["kgnn-ls"]["best_params"]["n_neighbors"] == 4
    assert models["ease"]["best_params"].keys() == {"lam"}
    # this dataset has cold users (<= 3 training positives) with test positives
    assert all(n > 0 for n in models["ease"]["slice_users"]["cold_users"])

    assert doc["paired"]
    for p in doc["paired"]:
        assert {"a", "b", "metric", "mean_diff", "t_p", "wilcoxon_p"} <= set(p)
        assert p["a"] in models and p["b"] in models and p["a"] != p["b"]
        if p["part"] == "overall":
            a, b = models[p["a"]]["test"][p["metric"]], models[p["b"]]["test"][p["metric"]]
            assert p["mean_diff"] == pytest.approx(np.mean(a) - np.mean(b))
    pairs = {(p["a"], p["b"]) for p in doc["paired"] if p["part"] == "overall"}
    assert ("ease", "popularity") in pairs or ("popularity", "ease") in pairs

    # KG ablation: only the KG-aware model, both modes, one value per seed
    assert set(doc["kg_ablation"]) == {"kgnn-ls"}
    ablation = doc["kg_ablation"]["kgnn-ls"]
    assert set(ablation) == {"none", "shuffle:1.0"}
    for mode in ablation.values():
        assert len(mode["ndcg@20"]) == len(mode["recall@20"]) == seeds
    # the cached seed runs: one per model and seed, plus the ablations
    cache = out / f"cache-{SLUG}"
    assert len(list((cache / "ease").glob("*.json"))) == seeds
    assert len(list((cache / "kgnn-ls").glob("*.json"))) == 3 * seeds
    # the reported cost counts every cached run, the ablations' too, and the tuning
    runs = [json.loads(p.read_text()) for p in cache.glob("*/*.json")]
    tuning = sum(m["tuning_seconds"] for m in models.values())
    assert doc["compute_seconds"] == pytest.approx(
        tuning + sum(r["fit_seconds"] + r["eval_seconds"] for r in runs))


def _finished_trials_of(model_entry: dict) -> list[dict]:
    return [t for t in model_entry["trials"] if t["state"] in FINISHED]


def test_reported_test_numbers_are_the_protocols(finished_run, tiny_dir):
    """EASE's best setting retrained on seed s and tested by Fold gives the JSON's numbers."""
    from kgnnls import load_dataset
    from kgnnls.benchmark.models import Budget, fit_model

    doc = _doc(finished_run)
    params = doc["models"]["ease"]["best_params"]
    for seed in range(doc["seeds"]):
        fold = Fold.of(load_dataset(str(tiny_dir), seed=seed, progress=False), seed)
        scorer = fit_model("ease", params, fold, Budget(), lambda s: 0.0)
        results = fold.test_results(scorer, "ndcg@20")
        for metric in ("ndcg@20", "recall@20"):
            assert doc["models"]["ease"]["test"][metric][seed] == pytest.approx(
                results["overall"]["mean"][metric])
            assert doc["models"]["ease"]["slices"]["cold_users"][metric][seed] == \
                pytest.approx(results["cold_users"]["mean"][metric], nan_ok=True)


# ------------------------------------------------------------------ determinism
def test_same_seed_same_trials_and_numbers(tiny_dir, tmp_path, capsys):
    opts = ("--models", "ease,itemknn,als", "--trials", "3", "--seeds", "2", "--epochs", "2",
            "--no-ablation")
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert main(_args(tiny_dir, a, *opts)) == 0
    assert main(_args(tiny_dir, b, *opts)) == 0
    da, db = _doc(a), _doc(b)
    for name in ("ease", "itemknn", "als"):
        ma, mb = da["models"][name], db["models"][name]
        trials_a = [(t["number"], t["state"], t["value"], t["params"]) for t in ma["trials"]]
        trials_b = [(t["number"], t["state"], t["value"], t["params"]) for t in mb["trials"]]
        assert trials_a == trials_b, name
        assert len(trials_a) == 3
        assert len({json.dumps(t[3], sort_keys=True) for t in trials_a}) == 3  # distinct draws
        assert ma["best_params"] == mb["best_params"]
        assert ma["test"] == mb["test"]
        assert ma["slices"] == mb["slices"]
    # the seed matters: another tuning seed draws other values
    assert main(_args(tiny_dir, c, "--models", "ease", "--trials", "3", "--seeds", "1",
                      "--seed", "1")) == 0
    assert [t["params"] for t in _doc(c)["models"]["ease"]["trials"]] != \
        [t["params"] for t in da["models"]["ease"]["trials"]]


# ------------------------------------------------------------------ resume
def _kill_mid_trial(cmd: list[str], url: str, model: str, timeout: float = 120.0) -> int:
    """Run ``cmd``; once it logged ``MODEL: trial 1/`` and the storage shows its next
    trial running, SIGKILL it (by its own pid). Returns the number of the killed trial."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stderr:
            seen.append(line)
            if line.startswith(f"{model}: trial 1/"):
                break
            assert time.monotonic() < deadline, "".join(seen)
        else:
            pytest.fail(f"exited ({proc.wait()}) before its first trial:\n{''.join(seen)}")
        while time.monotonic() < deadline and proc.poll() is None:
            running = [t.number for t in _study_of(url, model) if t.state.name == "RUNNING"]
            if running:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"no running trial seen (exit {proc.poll()}):\n{''.join(seen)}")
    finally:
        if proc.poll() is None and proc.returncode is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    return running[0]


def test_resume_after_kill_9_and_cached_seeds(tiny_dir, tmp_path, monkeypatch, capsys):
    out, n = tmp_path / "out", 3
    # ALS, 25 epochs without early stop: most of a second per trial, so the kill
    # lands in the middle of one
    opts = ("--models", "als", "--trials", str(n), "--seeds", "2", "--epochs", "25",
            "--patience", "25")
    cmd = [sys.executable, "-m", "kgnnls", *_args(tiny_dir, out, *opts)]
    url = _sqlite(out)
    killed = _kill_mid_trial(cmd, url, "als")
    before = _finished(_study_of(url, "als"))
    assert 1 <= len(before) < n, "the search finished before the kill; slow the trials down"
    assert not _reports(out)[0].exists()

    # resume: the killed trial is failed once its heartbeat is older than the grace
    # period (shortened here from 30 s), the missing trials run
    monkeypatch.setattr(tuning, "HEARTBEAT_S", 1)
    monkeypatch.setattr(tuning, "GRACE_S", 2)
    assert main(_args(tiny_dir, out, *opts)) == 0
    trials = _study_of(url, "als")
    done = _finished(trials)
    assert len(done) == n
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    # the trial of the dead process was failed (heartbeat), none is left running
    assert [t.number for t in trials if t.state.name not in FINISHED] == [killed]
    assert next(t for t in trials if t.number == killed).state.name == "FAIL"
    # trials finished before the kill are kept, not rerun
    kept = {t.number: (t.params, t.value) for t in done}
    assert all(kept[t.number] == (t.params, t.value) for t in before)
    assert all(p.exists() for p in _reports(out))
    doc = _doc(out)
    assert len(_finished_trials_of(doc["models"]["als"])) == n
    # the dead trial shifts no seed: the resumed search suggests what an uninterrupted
    # one does, and picks the same best setting
    one_go = tmp_path / "one-go"
    assert main(_args(tiny_dir, one_go, *opts)) == 0
    straight = _finished(_study_of(_sqlite(one_go), "als"))
    assert [t.params for t in done] == [t.params for t in straight]
    assert doc["models"]["als"]["best_params"] == _doc(one_go)["models"]["als"]["best_params"]

    # a finished seed is not recomputed: with --overwrite the reports are rewritten
    # from the cached seeds (no fit at all) and the cache files are untouched
    cache = out / f"cache-{SLUG}"
    cached = _snapshot(cache)
    assert len(cached) == 2
    json_before = _reports(out)[0].stat().st_mtime_ns

    def no_fit(*args, **kwargs):
        raise AssertionError("a cached seed was trained again")

    monkeypatch.setattr(runner, "fit_model", no_fit)
    time.sleep(0.01)
    assert main(_args(tiny_dir, out, *opts, "--overwrite")) == 0
    assert _snapshot(cache) == cached
    assert _reports(out)[0].stat().st_mtime_ns != json_before
    again = _doc(out)
    assert again["models"]["als"]["test"] == doc["models"]["als"]["test"]
    assert len(_finished(_study_of(url, "als"))) == n  # no trial added


# ------------------------------------------------------------------ shared storage
def test_two_processes_share_one_storage(tiny_dir, tmp_path):
    n = 4
    url = f"sqlite:///{tmp_path / 'shared.db'}"  # new: both processes create its schema
    opts = ("--models", "ease,itemknn", "--trials", str(n), "--seeds", "1", "--storage", url)
    procs = [subprocess.Popen([sys.executable, "-m", "kgnnls",
                               *_args(tiny_dir, tmp_path / f"out{i}", *opts)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    errs = []
    for p in procs:
        try:
            errs.append(p.communicate(timeout=180)[1])
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], errs
    studies = _studies(url)
    assert len(studies) == 2
    for name, trials in studies.items():
        done = _finished(trials)
        assert len(done) == n, (name, [(t.number, t.state.name) for t in trials])
        assert len({t.number for t in trials}) == len(trials)
        assert len({json.dumps(t.params, sort_keys=True) for t in done}) == n, name
    # both leaderboards read the same search
    a, b = _doc(tmp_path / "out0"), _doc(tmp_path / "out1")
    for model in ("ease", "itemknn"):
        assert a["models"][model]["best_params"] == b["models"][model]["best_params"]
        assert a["models"][model]["test"] == b["models"][model]["test"]
    assert not (tmp_path / "out0" / f"benchmark-{SLUG}.db").exists()  # --storage used


@pytest.mark.parametrize("target", [1, 3])
def test_racing_workers_never_exceed_the_budget(tmp_path, target):
    """Workers that find room for a trial at the same moment still finish exactly ``target``."""
    import optuna

    from kgnnls.space import Float

    url = f"sqlite:///{tmp_path / 'race.db'}"
    tuning.open_storage(url)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def objective(params, report):
        time.sleep(0.2)
        return params["x"]

    def worker():
        try:
            storage = tuning.open_storage(url)
            barrier.wait(timeout=30)
            tuning.run_study(storage, "race", {"x": Float(0.0, 1.0)}, target, 0, objective)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    trials = optuna.load_study(study_name="race", storage=url).get_trials(deepcopy=False)
    done = _finished(trials)
    assert len(done) == target, [(t.number, t.state.name) for t in trials]
    assert len({t.params["x"] for t in done}) == target  # no two workers drew the same value


# ------------------------------------------------------------------ bad input
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BAD = [
    (("--models", "popularity,nosuch"), "nosuch"),
    (("--metric", "foo@20"), "foo@20"),
    (("--metric", "ndcg@0"), "ndcg@0"),
    (("--fix", "popularity.nosuch=1"), "nosuch"),
    (("--models", "ease", "--fix", "ease.nosuch=1"), "nosuch"),
    (("--fix", "ease.lam=1"), "ease"),  # a model that is not run
    (("--storage", "sqlite:////nonexistent-dir/x/y.db"), "cannot open storage"),
    (("--storage", f"postgresql://u:p@127.0.0.1:{_free_port()}/db"), "cannot open storage"),
    (("--storage", "notaurl"), "cannot open storage"),
    (("--models", "popularity,ease", "--ablate", "ease"), "ease"),  # no KG: no KG gain
]


def test_bad_input_exits_2_with_one_line_and_loses_nothing(tiny_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(tiny_dir, out, "--models", "popularity", "--trials", "1",
                      "--seeds", "1")) == 0
    stored = _snapshot(out)
    assert len(stored) >= 5  # reports, database, a cached seed
    capsys.readouterr()
    for extra, named in BAD:
        opts = ("--models", "popularity", "--trials", "1", "--seeds", "1", *extra, "--overwrite")
        t0 = time.monotonic()
        assert main(_args(tiny_dir, out, *opts)) == 2, extra
        assert time.monotonic() - t0 < 15, f"{extra}: took {time.monotonic() - t0:.0f} s"
        line = _one_error_line(capsys.readouterr().err)
        assert named in line, (extra, line)
        assert _snapshot(out) == stored, extra


# ------------------------------------------------------------------ --overwrite
def test_finished_leaderboard_needs_overwrite(finished_run, tiny_dir, tmp_path, capsys):
    out = _copy(finished_run, tmp_path)
    stored = _snapshot(out)
    capsys.readouterr()
    assert main(_args(tiny_dir, out, *E2E)) == 2
    assert "--overwrite" in _one_error_line(capsys.readouterr().err)
    assert _snapshot(out) == stored
    before = _doc(out)
    time.sleep(0.01)
    assert main(_args(tiny_dir, out, *E2E, "--overwrite")) == 0
    after = _snapshot(out)
    for path in _reports(out):
        assert after[path.name][0] != stored[path.name][0], path.name  # rewritten
    doc = _doc(out)
    assert doc["wall_seconds"] != before["wall_seconds"]
    # the stored trials and seeds are reused: same numbers
    for name, m in before["models"].items():
        assert doc["models"][name]["test"] == m["test"]
        assert doc["models"][name]["trials"] == m["trials"]
    assert doc["kg_ablation"] == before["kg_ablation"]


# ------------------------------------------------------------------ protocol units
@pytest.fixture(scope="module")
def fold() -> Fold:
    return Fold.of(_tiny_dataset(), 0)


class _Table:
    """A scorer answering from a dense ``[n_users, n_items]`` score table."""

    def __init__(self, scores: np.ndarray):
        self.scores = torch.as_tensor(scores, dtype=torch.float32)

    def score_matrix(self, users, items):
        return self.scores[users][:, items]

    def score_pairs(self, users, items):
        return self.scores[users, items]

    def ranking_chunk(self, n_items):
        return 7  # fewer users than the fold has: the lists are built chunk by chunk


def test_fold_cold_slices(fold):
    ds = fold.dataset
    train_pos = {(int(u), int(i)) for u, i, y in fold.split.train if y == 1}
    warm = {i for _, i in train_pos}
    expected = np.array([i not in warm for i in range(ds.n_items)])
    assert np.array_equal(fold.cold_items, expected)
    assert 0 < fold.cold_items.sum() < ds.n_items
    counts = np.zeros(ds.n_users, int)
    for u, _ in train_pos:
        counts[u] += 1
    assert np.array_equal(fold.cold_users, counts <= COLD_USER_MAX)
    assert 0 < fold.cold_users.sum() < ds.n_users

    results = fold.test_results(_Table(np.random.default_rng(0).random(
        (ds.n_users, ds.n_items))), "ndcg@20")
    test_pos = fold.test_pos
    cold_item_users = sorted({int(u) for u, i in test_pos[:, :2] if int(i) not in warm})
    assert results["cold_items"]["users"] == cold_item_users
    cold_users = results["cold_users"]["users"]
    assert cold_users and all(counts[u] <= COLD_USER_MAX for u in cold_users)
    assert cold_users == sorted({int(u) for u in test_pos[:, 0] if counts[u] <= COLD_USER_MAX})
    assert results["overall"]["users"] == sorted({int(u) for u in test_pos[:, 0]})
    for part in ("overall", "cold_items", "cold_users"):
        assert len(results[part]["per_user"]["ndcg@20"]) == len(results[part]["users"])


def test_test_lists_mask_training_and_validation_positives(fold):
    ds = fold.dataset
    # an oracle that also loves the validation and training positives: ranked above
    # the test positives, they would push them down if they were not masked
    scores = np.zeros((ds.n_users, ds.n_items))
    scores[fold.test_pos[:, 0], fold.test_pos[:, 1]] = 2.0
    scores[fold.val_pos[:, 0], fold.val_pos[:, 1]] = 3.0
    scores[fold.train_pos[:, 0], fold.train_pos[:, 1]] = 4.0
    scorer = _Table(scores)
    users, top = fold.test_lists(scorer, 20)
    masked = {(int(u), int(i)) for u, i in np.concatenate([fold.train_pos,
                                                           fold.val_pos])[:, :2]}
    listed = {(int(u), int(i)) for u, row in zip(users, top, strict=True) for i in row}
    assert not listed & masked
    results = fold.test_results(scorer, "ndcg@20")
    n_test = np.bincount(fold.test_pos[:, 0], minlength=ds.n_users)
    assert n_test.max() <= 20
    assert results["overall"]["mean"]["ndcg@20"] == pytest.approx(1.0)
    assert results["overall"]["mean"]["recall@20"] == pytest.approx(1.0)
    # validation masks training positives only: the validation positives come first
    users = fold.validation_users(0)
    assert fold.validation_score(scorer, "recall@20", users) == pytest.approx(1.0)
    assert fold.validation_score(scorer, "ndcg@20", users) == pytest.approx(1.0)


def test_paired_matches_scipy():
    a, b = [0.31, 0.28, 0.35, 0.30, 0.33], [0.29, 0.27, 0.30, 0.31, 0.28]
    ua = [[0.1, 0.5, 0.2], [0.4, 0.0], [0.9], [0.3, 0.3], [0.7, 0.2]]
    ub = [[0.0, 0.4, 0.3], [0.1, 0.0], [0.5], [0.2, 0.1], [0.6, 0.1]]
    out = paired(a, b, ua, ub)
    assert out["mean_diff"] == pytest.approx(np.mean(np.subtract(a, b)))
    assert out["t_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert out["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    flat_a, flat_b = [v for s in ua for v in s], [v for s in ub for v in s]
    assert out["user_wilcoxon_p"] == pytest.approx(stats.wilcoxon(flat_a, flat_b).pvalue)
    assert (out["n_seeds"], out["n_users"]) == (5, len(flat_a))
    # sign: a - b
    assert paired(b, a)["mean_diff"] == pytest.approx(-out["mean_diff"])
    # identical models: no difference to test
    same = paired(a, a, ua, ua)
    assert same["mean_diff"] == 0.0
    assert math.isnan(same["t_p"]) and math.isnan(same["wilcoxon_p"])
    assert math.isnan(same["user_wilcoxon_p"])
