"""Summarise benchmarks/results/*.json into benchmarks/RESULTS.md.

Reads every result JSON the benchmark scripts write (train_speed_*, lastfm_accuracy,
vs_recbole_*, rank_speed_*, scale, kg_size, serve), and writes one markdown file:
a header (date written, machine, package versions), then one section per target
of the performance issue with the headline figures, each result's own recorded
date / commit / load, and whether the measured figure meets the target. A result
that is missing shows as "not run"; one whose keys are not the expected ones shows
as "unrecognised format" with what could be read. The file is written atomically
(``kgnnls.storage.atomic_write_text``: a temporary file, then a rename).

    python benchmarks/summarize.py [--results DIR] [--output FILE]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kgnnls.storage import atomic_write_text

HERE = Path(__file__).resolve().parent
DEFAULT_RESULTS = HERE / "results"
DEFAULT_OUTPUT = HERE / "RESULTS.md"

# Targets of the performance issue.
T1_SECONDS_PER_EPOCH = 0.05  # 10 Last.FM epochs <= 0.5 s
T2_MIN_RATIO = 20.0  # RecBole (as installed) s/epoch / ours >= 20
T3_RANK_SECONDS = 0.3  # all Last.FM users x all items
T4_EPOCH_SECONDS = 180.0  # ML-20M shape x1, one epoch
T4_PEAK_RSS_GIB = 6.0
T4_RANK_10K_SECONDS = 120.0
T5_R2 = 0.9  # a linear fit this good counts as "linear"
T5_FLAT_RATIO = 1.25  # largest/smallest KG epoch time at most this: "does not grow"

Json = dict[str, Any]
Lines = list[str]

MET, NOT_MET = "**met**", "**not met**"


# --------------------------------------------------------------------------- helpers


def _num(x: Any, fmt: str = ".3f") -> str:
    if isinstance(x, bool) or x is None:
        return "n/a" if x is None else str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return format(x, fmt)
    return str(x)


def _pct(x: Any) -> str:
    return f"{x:.0%}" if isinstance(x, int | float) and not isinstance(x, bool) else "n/a"


def verdict(ok: bool) -> str:
    return MET if ok else NOT_MET


def _cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Lines:
    out = ["| " + " | ".join(map(_cell, header)) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    return out


def meta_line(name: str, data: Any) -> str:
    """The result's own recorded date, commit, load and threads, as far as present."""
    m = data.get("machine") if isinstance(data, dict) else None
    parts: list[str] = []
    if isinstance(m, dict):
        if m.get("date"):
            parts.append(f"date {m['date']}")
        if m.get("commit"):
            parts.append(f"commit `{m['commit']}`")
        if m.get("loadavg_at_start"):
            la = m["loadavg_at_start"]
            parts.append("loadavg at start " + (" ".join(map(str, la)) if isinstance(la, list)
                                                 else str(la)))
        if m.get("torch_threads") is not None:
            parts.append(f"torch threads {m['torch_threads']}")
    if isinstance(data, dict) and isinstance(data.get("other_load"), int | float):
        parts.append(f"other processes' load {_pct(data['other_load'])}")
    return f"`{name}`: " + (", ".join(parts) if parts else "no machine record")


def load_results(results: Path) -> dict[str, Any]:
    """name (file stem) -> parsed JSON, or an ``Exception`` when unreadable."""
    out: dict[str, Any] = {}
    if not results.is_dir():
        return out
    for path in sorted(results.glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            out[path.stem] = exc
    return out


def _guarded(name: str, data: Any, body: Callable[[Json], Lines]) -> Lines:
    """Run a section body; a JSON of the wrong shape yields a note, not a crash."""
    if isinstance(data, Exception):
        return [f"- {meta_line(name, None)}: unreadable ({type(data).__name__}: {data})"]
    lines = [f"- {meta_line(name, data)}", ""]
    if not isinstance(data, dict):
        return [*lines, f"unrecognised format (top level is {type(data).__name__})"]
    try:
        return lines + body(data)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError,
            ZeroDivisionError) as exc:
        keys = ", ".join(f"`{k}`" for k in list(data)[:20])
        return [*lines, f"unrecognised format ({type(exc).__name__}: {exc}); "
                        f"top-level keys: {keys}"]


# --------------------------------------------------------------------------- target 1


def _single_section(title: str, res: dict[str, Any], key: str, body: Callable[[Json], Lines]
                    ) -> Lines:
    """``## title`` with ``key``'s result rendered by ``body``, or "not run"."""
    lines = [f"## {title}", ""]
    if key not in res:
        return [*lines, f"not run (no `{key}.json`).", ""]
    return [*lines, *_guarded(key, res[key], body), ""]


def _train_speed(data: Json) -> Lines:
    med = float(data["median_seconds_per_epoch"])
    per = data.get("seconds_per_epoch") or []
    total = data.get("train_seconds_total")
    epochs = data.get("epochs", len(per) or None)
    # the thread count is a run option ("run"); results from before the split keep it in config
    threads = (data.get("run") or data.get("config") or {}).get("threads", "n/a")
    rows = [[data.get("variant", "?"), threads, epochs, _num(med, ".4f"),
             _num(min(per), ".4f") if per else "n/a", _num(total, ".2f"),
             _num(10 * med, ".2f"), _num(data.get("samples_per_second"), ",.0f"),
             data.get("training_path", "n/a"), _pct(data.get("other_load"))]]
    lines = table(["variant", "threads", "epochs", "median s/epoch", "best s/epoch",
                   "train s total", "10 epochs (10 x median) s", "samples/s", "training_path",
                   "other load"],
                  rows)
    totals = [float(t) for t in data.get("repeat_totals") or []]
    if len(totals) > 1:  # --repeats: the headline row is the run with the median total
        under = sum(t <= 10 * T1_SECONDS_PER_EPOCH for t in totals)
        lines += ["", f"{len(totals)} fused runs in one invocation (the row above is the "
                      f"median one), seconds for {epochs} epochs: "
                      + ", ".join(_num(t, ".2f") for t in totals)
                      + f"; {under} of {len(totals)} at most {10 * T1_SECONDS_PER_EPOCH:g} s."]
    return [*lines, "", f"Target: 10 Last.FM epochs <= 0.5 s (<= {T1_SECONDS_PER_EPOCH} "
                        f"s/epoch). Measured median {med:.4f} s/epoch "
                        f"(~{10 * med:.2f} s for 10): {verdict(med <= T1_SECONDS_PER_EPOCH)} "
                        f"({med / T1_SECONDS_PER_EPOCH:.1f}x the target)."]


def _accuracy(data: Json) -> Lines:
    paths = sorted({str(c.get("training_path")) for c in data.get("cells", [])
                    if isinstance(c, dict) and c.get("training_path")})
    rows = [[s["variant"], s["negatives"], str(s.get("path", "n/a")), _num(s["auc_mean"], ".4f"),
             _num(s.get("auc_std"), ".4f"), _num(s.get("f1_mean"), ".4f"),
             _num(s.get("popularity_mean"), ".4f"),
             _num(s["auc_mean"] - s["popularity_mean"], "+.4f")
             if isinstance(s.get("popularity_mean"), float) else "n/a"]
            for s in data["summary"]]
    lines = table(["variant", "negatives", "training path", "test AUC mean", "std",
                   "F1 mean", "popularity AUC", "AUC - popularity"], rows)
    seeds = data.get("seeds")
    checks = [f"{c['variant']}/{c['negatives']} {_num(c['auc_minus_autograd'], '+.6f')}"
              for c in data.get("path_check", []) if isinstance(c, dict)
              and isinstance(c.get("auc_minus_autograd"), float)]
    agree = ([f"Mean test AUC, fused minus autograd: {'; '.join(checks)} "
              "(target: within 0.005)."] if checks else [])
    return [*lines, "", f"Seeds {seeds}; training_path: {', '.join(paths) or 'n/a'}. "
                        "(Accuracy check, no speed target.)", *agree]


def section_target1(res: dict[str, Any]) -> Lines:
    lines = ["## Target 1: Last.FM training speed (and accuracy)", ""]
    speed = sorted(k for k in res if k.startswith("train_speed"))
    for variant in ("paper", "authors"):
        if f"train_speed_{variant}" not in res:
            lines += [f"Training speed ({variant} variant): not run "
                      f"(no `train_speed_{variant}.json`).", ""]
    for k in speed:
        lines += [f"### {k}", "", *_guarded(k, res[k], _train_speed), ""]
    lines += ["### lastfm_accuracy", ""]
    if "lastfm_accuracy" in res:
        lines += [*_guarded("lastfm_accuracy", res["lastfm_accuracy"], _accuracy), ""]
    else:
        lines += ["Accuracy: not run (no `lastfm_accuracy.json`).", ""]
    return lines


# --------------------------------------------------------------------------- target 2


def _vs_recbole(data: Json) -> Lines:
    ours = data["ours"]
    runs = [("ours", ours), ("RecBole as installed (anomaly on)", data["recbole_installed"]),
            ("RecBole anomaly off", data.get("recbole_anomaly_off"))]
    base = float(ours["median_seconds_per_epoch"])
    rows = []
    for label, r in runs:
        if not isinstance(r, dict):
            continue
        s = float(r["median_seconds_per_epoch"])
        rows.append([label, _num(s, ".3f"), _num(s / base, ".2f"), _num(r.get("test_auc"), ".4f"),
                     f"{r.get('discarded', '?')}/{r.get('n_epochs', '?')}",
                     _pct(r.get("mean_other_load")), r.get("training_path", "")])
    lines = table(["run", "median s/epoch", "x ours", "test AUC", "discarded epochs",
                   "mean other load", "training_path"], rows)
    ratios = data.get("ratios_recbole_over_ours") or {}
    inst = ratios.get("installed", {}).get("seconds_per_epoch")
    if inst is None:
        inst = float(data["recbole_installed"]["median_seconds_per_epoch"]) / base
    off = ratios.get("off", {}).get("seconds_per_epoch")
    notes = []
    cfg = data.get("config") or {}
    if cfg.get("updates", "dense") != "dense":  # e.g. --set updates=rows: not the paper's L2
        notes.append(f"ours with updates={cfg['updates']} (RecBole: dense Adam)")
    if any(isinstance(r, dict) and r.get("all_disturbed") for _, r in runs):
        notes.append("every epoch of some run was disturbed: its median uses them all")
    if isinstance(data.get("recbole_installed"), dict) \
            and data["recbole_installed"].get("recbole_version"):
        notes.append(f"RecBole {data['recbole_installed']['recbole_version']}")
    lines += ["", f"Target: ours >= {T2_MIN_RATIO:g}x fewer s/epoch than RecBole as installed. "
                  f"Measured {inst:.2f}x: {verdict(inst >= T2_MIN_RATIO)}. "
                  f"Vs RecBole with anomaly detection off: "
                  f"{_num(off, '.2f')}x."]
    if notes:
        lines += ["", "Notes: " + "; ".join(notes) + "."]
    return lines


def section_target2(res: dict[str, Any]) -> Lines:
    lines = ["## Target 2: ours vs RecBole 1.2.1 KGNNLS (s/epoch)", ""]
    keys = sorted(k for k in res if k.startswith("vs_recbole"))
    if not keys:
        return [*lines, "not run (no `vs_recbole_*.json`).", ""]
    for k in keys:
        data = res[k]
        ds = data.get("dataset", "?") if isinstance(data, dict) else "?"
        cfg = data.get("config") if isinstance(data, dict) else None
        neg = f", negatives {cfg.get('negatives')}" if isinstance(cfg, dict) else ""
        lines += [f"### {k} (dataset {ds}{neg})", "", *_guarded(k, data, _vs_recbole), ""]
    return lines


# --------------------------------------------------------------------------- target 3


def _rank(data: Json) -> Lines:
    med = float(data["seconds_median"])
    rows = [[data.get("dataset", "?"), _num(data.get("users")), _num(data.get("items")),
             data.get("n_layers", "?"), _num(med, ".3f"), _num(data.get("seconds_best"), ".3f"),
             _num(data.get("reference_extrapolated_seconds"), ".2f"),
             _num(data.get("speedup_vs_reference"), ".1f"),
             _num(data.get("max_abs_diff_vs_reference"), ".1e")]]
    lines = table(["dataset", "users", "items", "L", "median s", "best s",
                   "reference s (extrapolated)", "speed-up", "max abs diff vs reference"], rows)
    loads = data.get("other_load")
    if isinstance(loads, list) and loads:
        lines += ["", f"Other processes' load per repeat: median {_pct(statistics.median(loads))}"
                      f", max {_pct(max(loads))}."]
    if data.get("dataset", "lastfm") == "lastfm":
        lines += ["", f"Target: full ranking of all Last.FM users x items <= {T3_RANK_SECONDS} s. "
                      f"Measured median {med:.3f} s: {verdict(med <= T3_RANK_SECONDS)}."]
    else:
        lines += ["", "(The target is for Last.FM; this dataset is informational.)"]
    return lines


def section_target3(res: dict[str, Any]) -> Lines:
    lines = ["## Target 3: full ranking speed", ""]
    keys = sorted(k for k in res if k.startswith("rank_speed"))
    if not keys:
        return [*lines, "not run (no `rank_speed_*.json`).", ""]
    for k in keys:
        lines += [f"### {k}", "", *_guarded(k, res[k], _rank), ""]
    return lines


# --------------------------------------------------------------------------- target 4


def _scale(data: Json) -> Lines:
    rows = []
    for r in data["rows"]:
        st = r.get("stats", {})
        rows.append([f"x{r['scale']:g}", _num(st.get("users")), _num(st.get("items")),
                     _num(st.get("interactions")), _num(r["epoch_seconds"], ".1f"),
                     _num(r.get("setup_and_validation_seconds"), ".1f"),
                     _num(r["peak_rss_gib"], ".2f"), _num(r.get("rank_users")),
                     _num(r["rank_seconds_per_10k_users"], ".1f"),
                     _num(r.get("test_auc"), ".4f"), r.get("training_path", "n/a"),
                     _pct(r.get("fit_other_load"))])
    lines = table(["scale", "users", "items", "rows", "epoch s", "setup+val s", "peak RSS GiB",
                   "rank users", "rank s / 10k users", "test AUC", "training_path",
                   "other load"], rows)
    v = data.get("verdict") or {}
    x1 = next((r for r in data["rows"] if float(r["scale"]) == 1.0), None)
    measured = x1["epoch_seconds"] if x1 else v.get("epoch_seconds_x1_measured")
    extrap = v.get("epoch_seconds_x1_extrapolated")
    rss = max(float(r["peak_rss_gib"]) for r in data["rows"])
    rank = max(float(r["rank_seconds_per_10k_users"]) for r in data["rows"])
    exp = data.get("epoch_growth_exponent")
    out = [*lines, ""]
    if exp is not None:
        out.append(f"Epoch seconds grow as rows^{exp:.3f} over the scales run.")
        out.append("")
    if measured is not None:
        out.append(f"- One epoch at x1 < {T4_EPOCH_SECONDS:g} s: measured {measured:.1f} s: "
                   f"{verdict(measured < T4_EPOCH_SECONDS)}.")
    elif extrap is not None:
        out.append(f"- One epoch at x1 < {T4_EPOCH_SECONDS:g} s: x1 not run; extrapolated "
                   f"{extrap:.1f} s: {verdict(extrap < T4_EPOCH_SECONDS)} (extrapolated).")
    else:
        out.append(f"- One epoch at x1 < {T4_EPOCH_SECONDS:g} s: not run.")
    scope = "" if x1 else f" (largest scale run x{max(float(r['scale']) for r in data['rows']):g}"\
                          ", not x1)"
    out.append(f"- Peak RSS < {T4_PEAK_RSS_GIB:g} GiB: max {rss:.2f} GiB{scope}: "
               f"{verdict(rss < T4_PEAK_RSS_GIB)}.")
    out.append(f"- Ranking 10k users < {T4_RANK_10K_SECONDS:g} s: max {rank:.1f} s{scope}: "
               f"{verdict(rank < T4_RANK_10K_SECONDS)}.")
    return out


def section_target4(res: dict[str, Any]) -> Lines:
    return _single_section("Target 4: MovieLens-20M-shape scaling (synthetic)", res, "scale",
                           _scale)


# --------------------------------------------------------------------------- target 5


def _fit(x: list[float], y: list[float]) -> tuple[float, float, float]:
    """Least squares y = a + b x: (a, b, R^2)."""
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxx = sum((xi - mx) ** 2 for xi in x)
    b = sum((xi - mx) * (yi - my) for xi, yi in zip(x, y, strict=True)) / sxx
    a = my - b * mx
    ss_tot = sum((yi - my) ** 2 for yi in y)
    ss_res = sum((yi - a - b * xi) ** 2 for xi, yi in zip(x, y, strict=True))
    return a, b, (1.0 - ss_res / ss_tot) if ss_tot > 0 else 1.0


def _kg_size(data: Json) -> Lines:
    rs = data["rows"]
    rows = [[r.get("factor", "?"), _num(r["triples"]), _num(r.get("entities")),
             _num(r["median_epoch_seconds"], ".3f"), _num(r.get("best_val_auc"), ".4f"),
             r.get("training_path", "n/a"), _pct(r.get("other_load"))] for r in rs]
    lines = table(["KG factor", "triples", "entities", "median s/epoch", "best val AUC",
                   "training_path", "other load"], rows)
    x = [float(r["triples"]) for r in rs]
    y = [float(r["median_epoch_seconds"]) for r in rs]
    fit = data.get("linear_fit") or {}
    if {"r2", "slope_seconds_per_triple", "intercept_seconds"} <= set(fit):
        a, b, r2 = fit["intercept_seconds"], fit["slope_seconds_per_triple"], fit["r2"]
    else:
        a, b, r2 = _fit(x, y)
    t_ratio = y[-1] / y[0] if y[0] else float("inf")
    k_ratio = x[-1] / x[0] if x[0] else float("inf")
    lines += ["", f"Fit: seconds = {a:.4f} {b:+.3e} x triples, R^2 = {r2:.3f}; "
                  f"epoch time x{t_ratio:.2f} for KG x{k_ratio:.2f}."]
    if r2 >= T5_R2 and b > 0:
        v = f"{MET} (linear: R^2 = {r2:.3f} >= {T5_R2})"
    elif t_ratio <= T5_FLAT_RATIO:
        v = (f"{MET} (time does not grow with KG size: last/first = {t_ratio:.2f}; "
             f"R^2 = {r2:.3f} is not meaningful for a flat line)")
    else:
        v = (f"{NOT_MET} (R^2 = {r2:.3f} < {T5_R2}, time x{t_ratio:.2f} for KG x{k_ratio:.2f})")
    return [*lines, "", f"Target: time per epoch linear in KG size (report fit R^2): {v}."]


def section_target5(res: dict[str, Any]) -> Lines:
    return _single_section("Target 5: training time vs KG size (Last.FM, grown KG)", res,
                           "kg_size", _kg_size)


# --------------------------------------------------------------------------- serving


def _serve(data: Json) -> Lines:
    rows = [[conc, _num(r.get("requests")), _num(r["p50_ms"], ".2f"), _num(r["p99_ms"], ".2f"),
             _num(r.get("mean_ms"), ".2f"), _num(r.get("throughput_rps"), ".0f"),
             _pct(r.get("other_load"))]
            for conc, r in sorted(data["results"].items(), key=lambda kv: int(kv[0]))]
    lines = table(["concurrency", "requests", "p50 ms", "p99 ms", "mean ms", "req/s",
                   "other load"], rows)
    model = data.get("model") or {}
    return [*lines, "", f"Endpoint {data.get('endpoint', '?')}, k = {data.get('k', '?')}, model "
                        f"{model.get('model', '?')} ({model.get('variant', '?')}) on "
                        f"{model.get('dataset', '?')}. (Latency, no target in the issue.)"]


def section_serve(res: dict[str, Any]) -> Lines:
    return _single_section("Serving latency", res, "serve", _serve)


# --------------------------------------------------------------------------- loading


def _load_speed(data: Json) -> Lines:
    rows = [[_num(r["generated"]["rows"]), _num(r["seconds"], ".2f"),
             _num(r["peak_rss_gib"], ".2f"),
             _num(r.get("rss_after_import_gib"), ".2f"), _num(r["stats"]["interactions"]),
             " ".join(map(str, r.get("loadavg_before", [])))]
            for r in data["runs"]]
    lines = table(["ratings.csv rows", "load s", "peak RSS GiB",
                   "RSS after import GiB", "labelled rows", "loadavg before"], rows)
    big = max(data["runs"], key=lambda r: r["generated"]["rows"])
    ok = big["seconds"] <= data["target_seconds"] and \
        big["peak_rss_gib"] <= data["target_peak_rss_gib"]
    return [*lines, "", f"Target: {_num(big['generated']['rows'])} rows to a ready Dataset in "
                        f"<= {data['target_seconds']:g} s with peak RSS <= "
                        f"{data['target_peak_rss_gib']:g} GiB. Measured "
                        f"{big['seconds']:.2f} s, {big['peak_rss_gib']:.2f} GiB: {verdict(ok)}."]


def section_load_speed(res: dict[str, Any]) -> Lines:
    return _single_section("Loading a MovieLens-20M-shaped raw directory (load_speed)", res,
                           "load_speed", _load_speed)


def _deep(data: Json) -> Lines:
    rows = [[r["n_layers"], _num(r.get("tree_nodes"), ","), _num(r["fused_ms_per_step"], ".1f"),
             _num(r["autograd_ms_per_step"], ".1f"), _num(r.get("fused_seconds_per_epoch"), ".1f"),
             _num(r.get("autograd_seconds_per_epoch"), ".1f"), _num(r["speedup"], ".1f") + "x",
             _pct(r.get("other_load"))] for r in data["results"]]
    return [*table(["L", "nodes / pair", "fused ms/step", "autograd ms/step", "fused s/epoch",
                    "autograd s/epoch", "speed-up", "other load"], rows), "",
            f"{data.get('dataset', '?')} preset with L changed (Table 6's sweep); "
            "no target in the issue."]


def section_deep(res: dict[str, Any]) -> Lines:
    key = next((k for k in sorted(res) if k.startswith("deep_speed")), "deep_speed")
    return _single_section("Deep receptive fields (L = 1..4)", res, key, _deep)


def _profile(data: Json) -> Lines:
    lines: Lines = []
    for path, prof in data["profiles"].items():
        top = prof.get("top_own_time") or []
        lines += [f"**{path}**: one epoch {_num(prof.get('epoch_seconds'), '.3f')} s under "
                  f"cProfile; top own time:", ""]
        lines += table(["function", "calls", "own s", "cumulative s"],
                       [[t["function"], _num(t.get("calls"), ","),
                         _num(t.get("own_seconds"), ".3f"),
                         _num(t.get("cumulative_seconds"), ".3f")] for t in top[:6]])
        lines.append("")
    parts = data.get("fused_parts") or {}
    if parts.get("seconds_per_epoch"):
        lines += [f"Fused step by part ({parts.get('batches', '?')} batches, best of repeats; "
                  "compiled kernels called once per batch, so the parts need not add up):", ""]
        lines += table(["part", "s / epoch"], [[k, _num(v, ".4f")] for k, v in
                                               parts["seconds_per_epoch"].items()])
    return lines


def section_profile(res: dict[str, Any]) -> Lines:
    return _single_section("Where one Last.FM epoch goes (profile_epoch)", res,
                           "profile_epoch", _profile)


def _bpr_speed(data: Json) -> Lines:
    med = data["median"]
    rows = [[name, _num(med[name], ".4f"), ", ".join(f"{x:.4f}" for x in v)]
            for name, v in data["seconds_per_epoch"].items()]
    ratio, target = float(data["bpr_over_bce"]), float(data["target_ratio"])
    return [*table(["run", "median s/epoch", "rounds"], rows), "",
            f"Target: a BPR epoch of KGNN-LS on Last.FM within {target:g}x of the BCE epoch. "
            f"Measured {ratio:.2f}x (bpr-fused / bce-fused, {data['epochs']} epochs, "
            f"{data['repeats']} alternating rounds, 1 thread, mean other load "
            f"{_pct(sum(data['other_load']) / len(data['other_load']))}): "
            f"{verdict(ratio <= target)}."]


def section_bpr_speed(res: dict[str, Any]) -> Lines:
    return _single_section("A BPR epoch against a BCE epoch (bpr_speed)", res, "bpr_speed",
                           _bpr_speed)


def _first_run(data: Json) -> Lines:
    rows = [[name, _num(r["wall_seconds"], ".1f"), _num(r["cpu_seconds"], ".1f"),
             _num(r.get("compile_seconds"), ".1f"), _num(r["train_seconds"], ".2f"),
             _num(r["test_auc"], ".4f")]
            for pair in data["runs"] for name, r in pair.items()]
    cold = min(pair["cold"]["wall_seconds"] for pair in data["runs"])
    target = float(data["target_cold_wall_seconds"])
    return [*table(["run", "wall s", "cpu s", "compile s", "train s", "test AUC"], rows), "",
            f"`{data['command']}` with `NUMBA_CACHE_DIR` empty (cold) and filled (warm). "
            f"Target: cold <= {target:g} s wall. Best cold {cold:.1f} s: "
            f"{verdict(cold <= target)} (history: docs/performance.md)."]


def section_first_run(res: dict[str, Any]) -> Lines:
    return _single_section("First run on an empty numba cache (first_run)", res, "first_run",
                           _first_run)


def _leaderboard_cost(data: Json) -> Lines:
    models = sorted(data["models"].items(), key=lambda kv: -sum(kv[1].values()))
    rows = [[name, _num(m["tuning_seconds"], ".0f"), _num(m["seeds_seconds"], ".0f"),
             _num(sum(m.values()) / 60, ".1f")] for name, m in models]
    wall, target = float(data["wall_seconds"]) / 60, float(data["target_wall_minutes"])
    return [*table(["model", "tuning s", "test seeds s", "total min"], rows), "",
            f"Target: the whole {data['dataset']} leaderboard ({len(models)} models, "
            f"{data['trials']} trials, {data['seeds']} seeds, no KG ablations, validation "
            f"ranked for {data.get('val_users') or 'all'} users) within "
            f"{target:g} min wall on this 2-core machine. Measured {wall:.1f} min wall on "
            f"{data['cpus']} CPUs ({float(data['compute_seconds']) / 60:.1f} min of compute): "
            f"{verdict(wall <= target)}."]


def section_leaderboard_cost(res: dict[str, Any]) -> Lines:
    lines = ["## The whole leaderboard in one command (leaderboard_cost)", ""]
    keys = sorted(k for k in res if k.startswith("leaderboard_cost"))
    if not keys:
        return [*lines, "not run (no `leaderboard_cost_*.json`).", ""]
    for key in keys:
        lines += [*_guarded(key, res[key], _leaderboard_cost), ""]
    return lines


# --------------------------------------------------------------------------- header


KNOWN_PREFIXES = ("train_speed", "lastfm_accuracy", "vs_recbole", "rank_speed", "scale",
                  "kg_size", "serve", "deep_speed", "profile_epoch", "load_speed",
                  "bpr_speed", "first_run", "leaderboard_cost")


def _versions() -> list[tuple[str, str]]:
    out = []
    for pkg in ("kgnnls", "torch", "numpy", "numba"):
        if importlib.util.find_spec(pkg) is None:
            out.append((pkg, "not installed"))
            continue
        try:
            out.append((pkg, importlib.metadata.version(pkg)))
        except importlib.metadata.PackageNotFoundError:
            out.append((pkg, "importable, version unknown"))
    return out


def _this_machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f
                        if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def header(res: dict[str, Any], results: Path) -> Lines:
    now = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    lines = ["# Benchmark results", "",
             f"Written {now} by `benchmarks/summarize.py` from `{results}`; "
             "regenerate with `bash benchmarks/run_all.sh` (all) or "
             "`python benchmarks/summarize.py` (summary only).", "",
             f"- Summarising machine: {_this_machine()}",
             "- Package versions here: "
             + ", ".join(f"{p} {v}" for p, v in _versions())]
    recorded: dict[tuple[str, ...], list[str]] = {}
    for name, data in res.items():
        m = data.get("machine") if isinstance(data, dict) else None
        if not isinstance(m, dict):
            continue
        key = tuple(str(m.get(k, "?")) for k in ("cpu_model", "cores", "python", "torch"))
        recorded.setdefault(key, []).append(name)
    if recorded:
        lines += ["", "Machines the results record:", ""]
        lines += table(["CPU", "cores", "python", "torch", "results"],
                       [[*key, ", ".join(names)] for key, names in recorded.items()])
    lines += ["", "Each result's timed sections record the CPU share other processes used "
                  "(\"other load\"); a high value means the figure was disturbed.", ""]
    return lines


def render(results: Path) -> str:
    """The markdown summary of the result JSONs in ``results``."""
    res = load_results(results)
    lines = header(res, results)
    for section in (section_target1, section_target2, section_target3, section_target4,
                    section_target5, section_profile, section_deep, section_serve,
                    section_load_speed, section_bpr_speed, section_first_run,
                    section_leaderboard_cost):
        lines += section(res)
    other = sorted(k for k in res if not k.startswith(KNOWN_PREFIXES))
    if other:
        lines += ["## Other result files", ""]
        for k in other:
            data = res[k]
            keys = ", ".join(f"`{x}`" for x in list(data)[:20]) if isinstance(data, dict) else ""
            lines += [f"- {meta_line(k, data)}; unrecognised format; keys: {keys}"]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def summarize(results: Path = DEFAULT_RESULTS, output: Path = DEFAULT_OUTPUT) -> Path:
    """Write the summary of ``results`` to ``output`` atomically; return ``output``."""
    return atomic_write_text(output, render(Path(results)))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                    help="directory of result JSONs (default benchmarks/results)")
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                    help="markdown file to write (default benchmarks/RESULTS.md)")
    args = ap.parse_args(argv)
    print(f"wrote {summarize(args.results, args.output)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
