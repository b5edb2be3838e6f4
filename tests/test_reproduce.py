"""The reproduction harness on a tiny dataset: files appear, the cache skips, resume works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kgnnls.config import RUN_FIELDS, Config, RunOptions
from kgnnls.data.synthetic import planted_dataset
from kgnnls.reproduce import Cell, Runner, paper_numbers, run_experiment
from kgnnls.reproduce import experiments as ex
from kgnnls.storage import atomic_write_json

FAST = {"epochs": 1, "dim": 8, "n_neighbors": 4, "batch_size": 64, "topk_users": 20}


def runner(tmp_path, **kw):
    return Runner("planted", tmp_path, base=FAST, progress=False, preset="lastfm",
                  loader=lambda seed: planted_dataset(seed=seed), **kw)


@pytest.mark.parametrize("experiment", ["table4", "table3", "table6", "fig3"])
def test_experiment_writes_markdown_png_and_json(tmp_path, experiment, monkeypatch):
    if experiment == "table6":  # keep the sweep tiny
        monkeypatch.setattr(ex, "_recall_sweep", _small_sweep(ex._recall_sweep))
    written = run_experiment(experiment, runner(tmp_path), [0, 1], "kgnnls reproduce test")
    names = sorted(p.name for p in written)
    assert names == sorted(f"{experiment}-planted.{ext}" for ext in ("md", "png", "json"))
    md = (tmp_path / f"{experiment}-planted.md").read_text()
    assert "command: `kgnnls reproduce test`" in md and "wall time" in md
    raw = json.loads((tmp_path / f"{experiment}-planted.json").read_text())
    assert raw["experiment"] == experiment
    # the header carries the cost from scratch: runs behind the report and their seconds
    trains = experiment != "fig3"
    assert (raw["runs"] >= 4) == trains and (raw["run_seconds"] > 0) == trains
    assert f"the {raw['runs']} training runs behind it" in md


def _small_sweep(original):
    def sweep(runner, seeds, name, field, values, *args):
        return original(runner, seeds, name, field, values[:2], *args)
    return sweep


def test_cache_skips_finished_cells_and_resumes(tmp_path):
    logs = []
    r = runner(tmp_path, log=logs.append)
    cells = [Cell.of("kgnn-ls", s) for s in (0, 1)]
    first = r.run(cells[:1])  # "interrupted" after one cell
    assert len(list((tmp_path / "cache" / "planted").glob("*.json"))) == 1
    both = r.run(cells)  # resumes: runs only the missing one
    assert logs[-1].endswith("1 of 2 runs cached, 1 to run")
    assert both[cells[0]] == first[cells[0]]
    again = Runner("planted", tmp_path, base=FAST, progress=False, preset="lastfm",
                   loader=lambda seed: pytest.fail("cached cells must not load data"),
                   log=logs.append).run(cells)
    assert logs[-1].endswith("2 of 2 runs cached, 0 to run")
    assert again == both
    # a different config is a different cell
    other = Cell.of("kgnn-ls", 0, dim=4)
    assert r.key(other) != r.key(cells[0])
    assert r.key(Cell.of("kgnn-ls", 0, dim=8)) == r.key(cells[0])  # same config, same cell
    # an explicit label-propagation depth equal to the default one is the same run
    assert r.key(Cell.of("kgnn-ls", 0, ls_hops=2)) == r.key(cells[0])
    assert r.key(Cell.of("kgnn-ls", 0, ls_hops=1)) != r.key(cells[0])
    assert r.key(Cell.of("kgnn-ls", 0, n_layers=2, ls_hops=2)) == r.key(
        Cell.of("kgnn-ls", 0, n_layers=2))


def test_table4_has_paired_tests_and_popularity(tmp_path):
    run_experiment("table4", runner(tmp_path), [0, 1], "cmd")
    raw = json.loads((tmp_path / "table4-planted.json").read_text())
    assert {"kgnn-ls", "kgcn"} <= set(raw["models"])
    assert len(raw["popularity_auc"]) == 2
    assert [row[0] for row in raw["paired_tests"]] == ["KGNN-LS vs KGCN",
                                                        "KGNN-LS vs item popularity"]


def test_paper_numbers_are_the_papers_tables():
    paper = paper_numbers()
    assert paper["table4"]["lastfm"]["kgnn-ls"]["auc"] == 0.803
    assert paper["table3"]["lastfm"]["kgnn-ls"]["recall@10"] == 0.122
    assert paper["table6"]["book-crossing"]["2"] == 0.082
    assert paper["table7"]["lastfm"]["16"] == 0.122


def test_grow_kg_keeps_relation_distribution(lastfm):
    import numpy as np

    from kgnnls.data.synthetic import grow_kg

    grown = grow_kg(lastfm, 3, seed=0)
    assert len(grown.kg) == 3 * len(lastfm.kg)
    np.testing.assert_array_equal(grown.kg[: len(lastfm.kg)], lastfm.kg)
    before = np.bincount(lastfm.kg[:, 1], minlength=lastfm.n_relations) / len(lastfm.kg)
    after = np.bincount(grown.kg[:, 1], minlength=lastfm.n_relations) / len(grown.kg)
    assert np.abs(before - after).max() < 0.01
    assert grown.n_entities > lastfm.n_entities
    grown.validate()


def test_fig6_times_every_model(tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "available_models", lambda: ["kgnn-ls"])
    report = ex.fig6(runner(tmp_path), [0], factors=(1, 2), epochs=1)
    assert set(report.raw["seconds"]["kgnn-ls"]) == {"1", "2"}
    assert report.raw["triples"][2] == 2 * report.raw["triples"][1]
    # the timings are cached: a second report (an interrupted `all` resumed) re-times nothing
    cached = Runner("planted", tmp_path, base=FAST, progress=False, preset="lastfm",
                    loader=lambda seed: pytest.fail("cached timings must not load data"))
    again = ex.fig6(cached, [0], factors=(1, 2), epochs=1)
    assert again.raw["seconds"] == report.raw["seconds"]
    assert again.raw["triples"] == report.raw["triples"]
    assert len(cached.used) == 2
    # and a cached-only look at a larger sweep leaves the missing size out
    peek = Runner("planted", tmp_path, base=FAST, progress=False, preset="lastfm",
                  loader=lambda seed: pytest.fail("cached-only must not load data"),
                  cached_only=True)
    partial = ex.fig6(peek, [0], factors=(1, 2, 3), epochs=1)
    assert set(partial.raw["seconds"]["kgnn-ls"]) == {"1", "2"} and len(peek.missing) == 1


def test_cli_rejects_unknown_experiment(capsys):
    from kgnnls.cli import main

    assert main(["reproduce", "table9"]) == 2
    assert "unknown experiment 'table9'" in capsys.readouterr().err
    assert main(["reproduce", "table4", "--jobs", "0"]) == 2
    assert "--jobs must be >= 1" in capsys.readouterr().err


def test_cache_survives_a_new_config_field_and_old_key_schemes(tmp_path):
    r = runner(tmp_path)
    cell = Cell.of("kgnn-ls", 0)
    first = r.run([cell])[cell]
    path = r.cache_path(cell)
    # a key does not depend on fields left at their default ...
    assert r.key(Cell.of("kgnn-ls", 0, updates="dense")) == r.key(cell)
    assert r.key(Cell.of("kgnn-ls", 0, updates="rows")) != r.key(cell)
    # ... and a file written under another key scheme is found again
    old = path.with_name("0123456789abcdef01234567.json")
    path.rename(old)
    again = Runner("planted", tmp_path, base=FAST, progress=False, preset="lastfm",
                   loader=lambda seed: pytest.fail("cached cells must not load data"))
    assert again.run([cell])[cell] == first
    assert path.is_file() and not old.exists()


def test_run_options_key_a_run_only_where_they_change_its_report(tmp_path):
    r = runner(tmp_path)
    cell = Cell.of("kgnn-ls", 0)
    for same in ({"threads": 2}, {"eval_batch_size": 7}, {"training_path": "autograd"},
                 {"device": "cpu"}):
        assert r.key(Cell.of("kgnn-ls", 0, **same)) == r.key(cell), same
    assert r.options(Cell.of("kgnn-ls", 0, threads=2)).threads == 2
    assert r.key(Cell.of("kgnn-ls", 0, topk_users=7)) != r.key(cell)  # another report
    assert r.key(Cell.of("kgnn-ls", 0, topk="5,10")) != r.key(cell)


RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


@pytest.mark.parametrize("dataset", ["lastfm", "book-crossing"])
def test_committed_caches_keep_their_keys(dataset):
    """Every committed reproduction run is found under the current key scheme (its file
    name is the key of the config it stores, run options split off an older config
    dict), so ``kgnnls reproduce`` re-runs none of them."""
    runs = [path for path in sorted((RESULTS / "cache" / dataset).glob("*.json"))
            if not path.name.startswith("fig6-")]
    assert len(runs) > 100
    r = Runner(dataset, RESULTS)
    old_style = 0
    for path in runs:
        entry = json.loads(path.read_text())
        stored = entry["config"]
        old_style += not RUN_FIELDS.isdisjoint(stored)
        options = (RunOptions.from_dict(entry["run"]) if "run" in entry
                   else RunOptions.from_config_dict(stored))
        assert r.key_of(Config.from_dict(stored), options) == path.stem, path.name
    assert old_style == len(runs)  # written before the split: the case that matters
    if dataset == "book-crossing":  # its preset's topk_users = 500 is in the key
        assert r.key(Cell.of("kgnn-ls", 0)) in {p.stem for p in runs}


def test_worker_processes_give_the_same_runs(tmp_path):
    """jobs = 2 runs the cells in spawned workers: same numbers, same cache files."""
    cells = [Cell.of("kgnn-ls", s) for s in (0, 1)] + [Cell.of("kgcn", 0)]
    made = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        r = Runner("planted", out, base=FAST, progress=False, preset="lastfm",
                   loader=planted_dataset, jobs=jobs)
        made[jobs] = r.run(cells)
        assert len(list((out / "cache" / "planted").glob("*.json"))) == len(cells)
    for cell in cells:
        one, two = made[1][cell], made[2][cell]
        assert two["test"] == one["test"] and two["val"] == one["val"]
        assert [h["loss"] for h in two["history"]] == [h["loss"] for h in one["history"]]


def test_cached_only_writes_a_partial_report_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "_recall_sweep", _small_sweep(ex._recall_sweep))
    r = runner(tmp_path)
    r.run([Cell.of("kgnn-ls", 0)])  # the preset's L = 1, seed 0 only
    peek = Runner("planted", tmp_path, base=FAST, progress=False, preset="lastfm",
                  loader=lambda seed: pytest.fail("cached-only must not load data"),
                  cached_only=True)
    run_experiment("table6", peek, [0, 1], "kgnnls reproduce table6 --cached-only")
    md = (tmp_path / "table6-planted.md").read_text()
    assert "**Partial report** (`--cached-only`): 3 of 4 runs are not finished yet" in md
    rows = {line.split(" | ")[0]: line for line in md.splitlines() if line.startswith("| ")}
    assert "± 0.000" in rows["| 1"] and rows["| 2"].count(" - ") >= 3  # one seed / none
    assert len(list((tmp_path / "cache" / "planted").glob("*.json"))) == 1


def test_a_run_finished_by_another_invocation_is_not_repeated(tmp_path, monkeypatch):
    """Two invocations on one cache: a cell the other one wrote meanwhile is read, not run."""
    r = runner(tmp_path)
    cells = [Cell.of("kgnn-ls", 0), Cell.of("kgnn-ls", 1)]
    other = runner(tmp_path).run([cells[1]])[cells[1]]  # "the other invocation"
    ran = []
    real = Runner._run_one

    def run_one(self, cell):
        ran.append(cell)
        if cell == cells[0]:  # while this one runs, the other writes seed 1 ...
            atomic_write_json(self.cache_path(cells[1]), other)
        return real(self, cell)

    r.cache_path(cells[1]).unlink()
    monkeypatch.setattr(Runner, "_run_one", run_one)
    results = r.run(cells)  # ... which was still missing when this run began
    assert ran == [cells[0]] and results[cells[1]] == other
