"""benchmarks/summarize.py: sections, figures, target verdicts and "not run"."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_summarize",
                                                  ROOT / "benchmarks" / "summarize.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


summarize = _load()

MACHINE = {"date": "2026-12-01T09:49:29", "host_cpu": "x86_64", "cores": 2,
           "python": "3.11.7", "torch": "2.13.0+cpu", "torch_threads": 1,
           "cpu_model": "Test CPU 9000", "commit": "abc1234",
           "loadavg_at_start": ["0.10", "0.20", "0.30"]}


def train_speed(median: float) -> dict:
    return {"benchmark": "train_speed", "dataset": "lastfm", "variant": "paper",
            "machine": MACHINE, "training_path": "fused-test", "epochs": 10,
            "train_rows": 25408, "seconds_per_epoch": [median] * 10,
            "train_seconds_total": 10 * median, "median_seconds_per_epoch": median,
            "samples_per_second": 25408 / median, "other_load": 0.01, "best_val_auc": 0.8}


def rank_speed(median: float) -> dict:
    return {"machine": MACHINE, "dataset": "lastfm", "users": 1872, "items": 3846,
            "n_layers": 1, "seconds": [median] * 3, "seconds_best": median,
            "seconds_median": median, "other_load": [0.0, 0.0, 0.0],
            "reference_seconds_per_user": 0.001, "reference_extrapolated_seconds": 2.0,
            "speedup_vs_reference": 2.0 / median, "max_abs_diff_vs_reference": 1e-10}


def vs_recbole(ours: float, recbole: float, off: float) -> dict:
    def run(s: float) -> dict:
        return {"median_seconds_per_epoch": s, "test_auc": 0.8, "discarded": 0, "n_epochs": 10,
                "all_disturbed": False, "mean_other_load": 0.0, "recbole_version": "1.2.1"}
    return {"benchmark": "vs_recbole", "dataset": "lastfm", "machine": MACHINE,
            "config": {"negatives": "fixed"},
            "ours": {**run(ours), "training_path": "fused-test"},
            "recbole_installed": run(recbole), "recbole_anomaly_off": run(off),
            "ratios_recbole_over_ours": {
                "installed": {"seconds_per_epoch": recbole / ours, "test_auc": 1.0},
                "off": {"seconds_per_epoch": off / ours, "test_auc": 1.0}}}


def write(d: Path, name: str, payload: object) -> None:
    (d / f"{name}.json").write_text(json.dumps(payload))


def run(tmp_path: Path, results: dict[str, object]) -> str:
    rdir = tmp_path / "results"
    rdir.mkdir(exist_ok=True)
    for p in rdir.glob("*.json"):
        p.unlink()
    for name, payload in results.items():
        write(rdir, name, payload)
    out = tmp_path / "RESULTS.md"
    assert summarize.main(["--results", str(rdir), "--output", str(out)]) == 0
    assert not list(tmp_path.glob(".RESULTS.md.*"))  # no temp file left behind
    return out.read_text()


def section(md: str, title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}.*?(?=^## |\Z)", md, re.M | re.S)
    assert m, f"no section {title!r}"
    return m.group(0)


def test_sections_figures_and_not_run(tmp_path: Path) -> None:
    md = run(tmp_path, {"train_speed_paper": train_speed(0.04),
                        "rank_speed_lastfm": rank_speed(0.5)})
    assert md.startswith("# Benchmark results")
    assert "Test CPU 9000" in md and "kgnnls" in md and "torch" in md
    for title in ("Target 1", "Target 2", "Target 3", "Target 4", "Target 5",
                  "Serving latency"):
        section(md, title)
    t1 = section(md, "Target 1")
    assert "0.0400" in t1 and "fused-test" in t1 and "commit `abc1234`" in t1
    assert "2026-12-01T09:49:29" in t1
    assert "**met**" in t1
    assert "authors variant): not run" in t1
    assert "not run" in section(md, "Target 1").split("### lastfm_accuracy")[1]
    t3 = section(md, "Target 3")
    assert "0.500" in t3 and "**not met**" in t3
    for title in ("Target 2", "Target 4", "Target 5", "Serving latency"):
        assert "not run" in section(md, title)


@pytest.mark.parametrize(("figure", "met"), [(0.049, True), (0.051, False)])
def test_target1_verdict_flips(tmp_path: Path, figure: float, met: bool) -> None:
    t1 = section(run(tmp_path, {"train_speed_paper": train_speed(figure)}), "Target 1")
    assert ("**met**" in t1) is met and ("**not met**" in t1) is not met


@pytest.mark.parametrize(("figure", "met"), [(0.29, True), (0.31, False)])
def test_target3_verdict_flips(tmp_path: Path, figure: float, met: bool) -> None:
    t3 = section(run(tmp_path, {"rank_speed_lastfm": rank_speed(figure)}), "Target 3")
    assert ("**met**" in t3) is met and ("**not met**" in t3) is not met


@pytest.mark.parametrize(("recbole", "met"), [(2.1, True), (1.9, False)])
def test_target2_verdict_flips_and_reports_anomaly_off(tmp_path: Path, recbole: float,
                                                       met: bool) -> None:
    t2 = section(run(tmp_path, {"vs_recbole_lastfm": vs_recbole(0.1, recbole, 0.5)}),
                 "Target 2")
    ratio = f"{recbole / 0.1:.2f}x"
    assert ratio in t2 and "anomaly detection off: 5.00x" in t2
    assert ("**met**" in t2) is met and ("**not met**" in t2) is not met


def test_unexpected_keys_do_not_crash(tmp_path: Path) -> None:
    md = run(tmp_path, {"train_speed_paper": {"machine": MACHINE, "surprise": 1},
                        "kg_size": [1, 2, 3], "mystery": {"x": 1}})
    t1 = section(md, "Target 1")
    assert "unrecognised format" in t1 and "surprise" in t1
    assert "unrecognised format" in section(md, "Target 5")
    assert "mystery" in section(md, "Other result files")
    (tmp_path / "results" / "scale.json").write_text("{not json")
    out = tmp_path / "R2.md"
    summarize.summarize(tmp_path / "results", out)
    assert "unreadable" in section(out.read_text(), "Target 4")


def scale_row(scale: float, epoch: float, rss: float = 1.5, rank: float = 10.0) -> dict:
    return {"scale": scale, "stats": {"users": 1000, "items": 100, "interactions": 10_000},
            "epoch_seconds": epoch, "setup_and_validation_seconds": 1.0,
            "peak_rss_gib": rss, "rank_users": 1000, "rank_seconds_per_10k_users": rank,
            "test_auc": 0.7, "training_path": "fused-test", "fit_other_load": 0.0}


@pytest.mark.parametrize(("epoch", "met"), [(170.0, True), (190.0, False)])
def test_target4_verdict_flips(tmp_path: Path, epoch: float, met: bool) -> None:
    data = {"benchmark": "scale", "machine": MACHINE, "scales": [0.5, 1.0],
            "rows": [scale_row(0.5, epoch / 2), scale_row(1.0, epoch)],
            "epoch_growth_exponent": 1.0, "verdict": {"epoch_seconds_x1_measured": epoch}}
    t4 = section(run(tmp_path, {"scale": data}), "Target 4")
    line = next(ln for ln in t4.splitlines() if ln.startswith("- One epoch at x1"))
    assert f"{epoch:.1f} s" in line and ("**met**" in line) is met
    assert "**met**" in next(ln for ln in t4.splitlines() if ln.startswith("- Peak RSS"))


@pytest.mark.parametrize(("slope", "met"), [(1e-5, True), (1e-4, True), (None, False)])
def test_target5_fit(tmp_path: Path, slope: float | None, met: bool) -> None:
    triples = [1000, 2000, 3000, 4000]
    secs = ([1.0 + slope * t for t in triples] if slope is not None
            else [1.0, 1.0, 1.0, 9.0])  # superlinear jump at the end
    rows = [{"factor": i + 1, "triples": t, "median_epoch_seconds": s,
             "training_path": "fused-test"} for i, (t, s) in enumerate(zip(triples, secs,
                                                                          strict=True))]
    t5 = section(run(tmp_path, {"kg_size": {"machine": MACHINE, "rows": rows}}), "Target 5")
    verdict_line = next(ln for ln in t5.splitlines() if ln.startswith("Target:"))
    assert "R^2 = " in t5 and ("**met**" in verdict_line) is met


def test_deep_speed_section(tmp_path: Path) -> None:
    rows = [{"n_layers": L, "tree_nodes": sum(8 ** h for h in range(L + 1)),
             "fused_ms_per_step": 10.0 * L, "autograd_ms_per_step": 45.0 * L,
             "speedup": 4.5, "fused_seconds_per_epoch": 3.3 * L,
             "autograd_seconds_per_epoch": 14.8 * L, "other_load": 0.0} for L in (1, 4)]
    md = run(tmp_path, {"deep_speed_book-crossing": {"dataset": "book-crossing",
                                                     "machine": MACHINE, "results": rows}})
    deep = section(md, "Deep receptive fields")
    assert "4,681" in deep and "180.0" in deep and "4.5x" in deep
    assert "Other result files" not in md
    assert "not run" in section(run(tmp_path, {}), "Deep receptive fields")


def test_profile_section(tmp_path: Path) -> None:
    def prof(path: str, epoch: float) -> dict:
        return {"training_path": path, "epoch_seconds": epoch,
                "top_own_time": [{"function": f"fused.py:1(f{i})", "calls": 7 + i,
                                  "own_seconds": 0.01 * i, "cumulative_seconds": 0.02 * i}
                                 for i in range(8)]}
    payload = {"machine": MACHINE, "profiles": {"fused": prof("fused", 0.0789),
                                                "autograd": prof("autograd", 1.0155)},
               "fused_parts": {"batches": 199, "seconds_per_epoch": {"Adam": 0.0148}}}
    md = run(tmp_path, {"profile_epoch": payload})
    sec = section(md, "Where one Last.FM epoch goes")
    assert "0.079" in sec and "1.016" in sec and "fused.py:1(f5)" in sec
    assert "fused.py:1(f6)" not in sec  # the top 6 functions only
    assert "| Adam | 0.0148 |" in sec and "199 batches" in sec
    assert "Other result files" not in md and "unrecognised" not in md
    assert "not run" in section(run(tmp_path, {}), "Where one Last.FM epoch goes")


def test_threads_column_and_row_updates_note(tmp_path: Path) -> None:
    two = {**train_speed(0.045), "config": {"threads": 2}}
    rows = vs_recbole(3.5, 63.0, 32.0)
    rows["config"]["updates"] = "rows"
    md = run(tmp_path, {"train_speed_paper_t2": two, "vs_recbole_book-crossing_rows": rows,
                        "vs_recbole_lastfm": vs_recbole(0.08, 2.4, 1.5)})
    t1 = section(md, "Target 1")
    assert "| paper | 2 | 10 | 0.0450 |" in t1
    t2 = section(md, "Target 2")
    rows_part = t2.split("### vs_recbole_book-crossing_rows")[1].split("### ")[0]
    assert "updates=rows" in rows_part
    assert "updates=" not in t2.split("### vs_recbole_lastfm")[1]


def test_target1_lists_repeated_runs(tmp_path: Path) -> None:
    data = {**train_speed(0.052), "repeats": 3, "repeat_totals": [0.48, 0.52, 0.61]}
    t1 = section(run(tmp_path, {"train_speed_paper": data}), "Target 1")
    assert "3 fused runs in one invocation" in t1
    assert "0.48, 0.52, 0.61" in t1 and "1 of 3 at most 0.5 s" in t1
    assert "fused runs" not in section(run(tmp_path, {"train_speed_paper": train_speed(0.05)}),
                                       "Target 1")


@pytest.mark.parametrize(("seconds", "met"), [(12.5, True), (21.0, False)])
def test_load_speed_section(tmp_path: Path, seconds: float, met: bool) -> None:
    def run_of(rows: int, s: float) -> dict:
        return {"generated": {"rows": rows}, "seconds": s, "stages": {}, "peak_rss_gib": 1.9,
                "rss_after_import_gib": 0.36, "stats": {"interactions": rows // 2},
                "loadavg_before": ["1.00", "0.50", "0.20"]}
    data = {"benchmark": "load_speed", "machine": MACHINE, "target_seconds": 20.0,
            "target_peak_rss_gib": 3.0,
            "runs": [run_of(5_000_000, 3.0), run_of(20_000_000, seconds)]}
    md = section(run(tmp_path, {"load_speed": data}), "Loading a MovieLens-20M")
    assert "20,000,000" in md and f"{seconds:.2f}" in md and "1.00 0.50 0.20" in md
    assert ("**met**" if met else "**not met**") in md
    assert "not run" in section(run(tmp_path, {}), "Loading a MovieLens-20M")


@pytest.mark.parametrize(("wall", "met"), [(1750.0, True), (1850.0, False)])
def test_leaderboard_cost_section(tmp_path: Path, wall: float, met: bool) -> None:
    data = {"machine": MACHINE, "dataset": "lastfm", "trials": 20, "seeds": 5, "cpus": 2,
            "wall_seconds": wall, "compute_seconds": 3300.0, "target_wall_minutes": 30.0,
            "models": {"ease": {"tuning_seconds": 40.0, "seeds_seconds": 12.0},
                       "kgnn-ls": {"tuning_seconds": 1500.0, "seeds_seconds": 600.0}}}
    md = section(run(tmp_path, {"leaderboard_cost_lastfm": data}), "The whole leaderboard")
    assert f"{wall / 60:.1f} min wall" in md and "55.0 min of compute" in md
    assert md.index("kgnn-ls") < md.index("| ease")  # the costliest model first
    assert ("**met**" if met else "**not met**") in md
    assert "not run" in section(run(tmp_path, {}), "The whole leaderboard")
