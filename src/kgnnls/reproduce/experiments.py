"""The paper's experiments (Tables 3-7, Figures 3, 5, 6) as functions of a Runner.

Each function asks the runner for its cells (cached, shared between
experiments where the configuration is the same), aggregates mean ± std
over seeds, puts the paper's value beside ours in its own column, and
returns a :class:`Report`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from kgnnls.baselines import BASELINES
from kgnnls.reproduce.report import Report, fmt, markdown_table, mean_std, paper_fmt, paper_numbers
from kgnnls.reproduce.runner import Cell, Runner
from kgnnls.storage import atomic_write_json

LABELS = {"svd": "SVD", "libfm": "LibFM", "libfm-transe": "LibFM + TransE", "per": "PER",
          "cke": "CKE", "ripplenet": "RippleNet", "kgcn": "KGCN (KGNN-LS, λ = 0)",
          "kgnn-ls": "KGNN-LS", "popularity": "item popularity (reference)"}
PAPER_NAME = {"lastfm": "Last.FM", "book-crossing": "Book-Crossing",
              "movielens-20m": "MovieLens-20M", "dianping-food": "Dianping-Food"}


def available_models() -> list[str]:
    """The paper's baselines in its tables' order, then KGCN and KGNN-LS."""
    return [*BASELINES, "kgcn", "kgnn-ls"]


def _metric(results: dict[Cell, dict], cells: list[Cell], path: tuple[str, ...]) -> list[float]:
    out = []
    for cell in cells:
        value: Any = results.get(cell)  # absent: not run yet (a cached-only report)
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        out.append(value)
    return out


def _cut_note(dataset: str) -> list[str]:
    if dataset == "book-crossing":
        return ["Our Book-Crossing is the RippleNet/MKR release (17,860 users, 14,967 items, "
                "77,903 entities), a different cut from the paper's (19,676 users, 20,003 items, "
                "25,787 entities): the paper's numbers are a loose reference here."]
    return []


def _beyond_2std(rows: list[tuple[str, list[float], float | None]]) -> list[str]:
    """A sentence for every cell where the paper's value is more than 2 std away."""
    notes = []
    for name, values, paper in rows:
        if paper is None:
            continue
        m, s = mean_std(values)
        if m == m and abs(m - paper) > 2 * max(s, 1e-12):
            direction = "above" if m > paper else "below"
            notes.append(f"{name}: ours {m:.3f} ± {s:.3f} is {abs(m - paper):.3f} {direction} "
                         f"the paper's {paper:.3f} (more than 2 std).")
    return notes


def _paired(a: list[float], b: list[float]) -> tuple[str, str]:
    from scipy.stats import ttest_rel, wilcoxon

    a_arr, b_arr = np.asarray(a, float), np.asarray(b, float)
    if len(a_arr) < 2 or np.allclose(a_arr, b_arr):
        return "-", "-"
    t = ttest_rel(a_arr, b_arr).pvalue
    try:
        w = wilcoxon(a_arr, b_arr).pvalue
    except ValueError:
        w = float("nan")
    return f"{t:.3g}", f"{w:.3g}"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ------------------------------------------------------------------ Tables 3 and 4
def _ctr_runs(runner: Runner, seeds: list[int], name: str) -> tuple[list[str], dict]:
    models = available_models()
    cells = {m: [Cell.of(m, s) for s in seeds] for m in models}
    results = runner.run([c for cs in cells.values() for c in cs], desc=name)
    return models, {"cells": cells, "results": results}


def table4(runner: Runner, seeds: list[int]) -> Report:
    ds = runner.dataset
    models, runs = _ctr_runs(runner, seeds, "table4")
    cells, res = runs["cells"], runs["results"]
    paper = paper_numbers()["table4"].get(ds, {})
    auc = {m: _metric(res, cells[m], ("test", "auc")) for m in models}
    f1 = {m: _metric(res, cells[m], ("test", "f1")) for m in models}
    pop = _metric(res, cells["kgnn-ls"], ("reference", "popularity", "test", "auc"))
    rows, checks = [], []
    for m in models:
        p = paper.get("kgnn-ls" if m == "kgnn-ls" else m, {}).get("auc") if m != "kgcn" else None
        rows.append([LABELS[m], fmt(auc[m]), fmt(f1[m]), paper_fmt(p)])
        checks.append((f"{LABELS[m]} AUC", auc[m], p))
    rows.append([LABELS["popularity"], fmt(pop), "-", "-"])
    tests = []
    for other, values in (("KGCN", auc["kgcn"]), ("item popularity", pop)):
        t, w = _paired(auc["kgnn-ls"], values)
        m, _ = mean_std([a - b for a, b in zip(auc["kgnn-ls"], values, strict=True)])
        tests.append([f"KGNN-LS vs {other}", f"{m:+.4f}", t, w])
    report = Report("table4", ds, f"Table 4: CTR prediction on {PAPER_NAME.get(ds, ds)} "
                                  f"({len(seeds)} seeds)")
    report.sections += [
        "Test AUC and F1 (threshold 0.5) over every labelled test pair, at the best-validation "
        f"epoch; mean ± std over seeds {seeds}. The paper's AUC is the authors' per-batch "
        "average, in its own column.",
        markdown_table(["model", "AUC (ours)", "F1 (ours)", "AUC (paper)"], rows),
        "Paired comparisons over seeds (same seed = same split, negatives, neighbours, init):",
        markdown_table(["comparison", "mean AUC difference", "paired t-test p", "Wilcoxon p"],
                       tests),
    ]
    report.notes += _cut_note(ds) + _beyond_2std(checks)
    if len(seeds) < 6:
        report.notes.append(f"With {len(seeds)} paired seeds the smallest two-sided Wilcoxon p "
                            f"is {2 / 2 ** len(seeds):.3g}.")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = [LABELS[m] for m in models] + ["popularity"]
    means = [mean_std(auc[m])[0] for m in models] + [mean_std(pop)[0]]
    stds = [mean_std(auc[m])[1] for m in models] + [mean_std(pop)[1]]
    x = np.arange(len(names))
    ax.bar(x, means, yerr=stds, color="tab:blue", alpha=0.7, label="ours (mean ± std)")
    pv = [paper.get(m, {}).get("auc", np.nan) if m != "kgcn" else np.nan for m in models]
    ax.scatter(x[:len(models)], pv, color="tab:red", marker="D", zorder=3, label="paper")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(max(0.5, np.nanmin(means + pv) - 0.05), min(1.0, np.nanmax(means + pv) + 0.03))
    ax.set_ylabel("test AUC")
    ax.legend(fontsize=8)
    report.figure = fig
    report.raw = {"seeds": seeds, "models": models, "auc": auc, "f1": f1, "popularity_auc": pop,
                  "paper_auc": paper, "paired_tests": tests}
    return report


def table3(runner: Runner, seeds: list[int]) -> Report:
    ds = runner.dataset
    models, runs = _ctr_runs(runner, seeds, "table3")
    cells, res = runs["cells"], runs["results"]
    paper = paper_numbers()["table3"].get(ds, {})
    ks = (2, 10, 50, 100)
    rows, checks = [], []
    for m in models:
        row = [LABELS[m]]
        for k in ks:
            values = _metric(res, cells[m], ("test_paper_protocol", f"recall@{k}"))
            p = paper.get(m, {}).get(f"recall@{k}") if m != "kgcn" else None
            row += [fmt(values), paper_fmt(p)]
            checks.append((f"{LABELS[m]} Recall@{k}", values, p))
        rows.append(row)
    pop_row = [LABELS["popularity"]]
    for k in ks:
        pop_row += [fmt(_metric(res, cells["kgnn-ls"], ("reference", "popularity",
                                                      "test_paper_protocol", f"recall@{k}"))), "-"]
    rows.append(pop_row)
    full_rows = []
    for m in [*models, "popularity"]:
        src = cells["kgnn-ls"] if m == "popularity" else cells[m]
        prefix = ("reference", "popularity", "test") if m == "popularity" else ("test",)
        row = [LABELS[m]]
        for k in (10, 20, 50, 100):
            row += [fmt(_metric(res, src, (*prefix, f"recall@{k}"))),
                    fmt(_metric(res, src, (*prefix, f"ndcg@{k}")))]
        full_rows.append(row)
    n_users = _metric(res, cells["kgnn-ls"], ("test", "topk_users"))
    report = Report("table3", ds, f"Table 3: top-K recommendation on {PAPER_NAME.get(ds, ds)} "
                                  f"({len(seeds)} seeds)")
    header = ["model"] + [h for k in ks for h in (f"R@{k} (ours)", f"R@{k} (paper)")]
    report.sections += [
        "**Paper protocol** (the authors' `topk_eval`: 100 sampled users, candidates = items "
        "not in the user's training rows), mean ± std over seeds, the paper's values beside:",
        markdown_table(header, rows),
        f"**Full ranking** (every item for each of {int(n_users[0]) if n_users[0] else 'all'} "
        "users with test positives, training positives masked): Recall / NDCG.",
        markdown_table(["model"] + [h for k in (10, 20, 50, 100)
                                    for h in (f"R@{k}", f"NDCG@{k}")], full_rows),
    ]
    report.notes += _cut_note(ds) + _beyond_2std(checks)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for m in models:
        ours = [mean_std(_metric(res, cells[m], ("test_paper_protocol", f"recall@{k}")))[0]
                for k in ks]
        line = ax.plot(ks, ours, marker="o", label=f"{LABELS[m]} (ours)")
        if m in paper:
            ax.plot(ks, [paper[m][f"recall@{k}"] for k in ks], linestyle="--",
                    color=line[0].get_color(), alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (paper protocol)")
    ax.set_title("solid: ours, dashed: paper", fontsize=9)
    ax.legend(fontsize=7)
    report.figure = fig
    report.raw = {"seeds": seeds, "models": models, "per_seed": {
        m: [res.get(c, {}) | {"history": None} for c in cells[m]] for m in models}, "paper": paper}
    return report


# ------------------------------------------------------------------ sweeps
def _sweep(runner: Runner, seeds: list[int], name: str, field: str, values: list[Any],
           models: list[str]) -> tuple[dict, dict[Cell, dict]]:
    preset = runner.config(Cell.of("kgnn-ls", 0))
    cells = {(m, v): [Cell.of(m, s, **({} if getattr(preset, field) == v else {field: v}))
                      for s in seeds] for m in models for v in values}
    return cells, runner.run([c for cs in cells.values() for c in cs], desc=name)


def table5(runner: Runner, seeds: list[int]) -> Report:
    ds, ratios, models = runner.dataset, [0.2, 0.4, 0.6, 0.8, 1.0], ["kgcn", "kgnn-ls"]
    cells, res = _sweep(runner, seeds, "table5", "train_fraction", ratios, models)
    paper = paper_numbers()["table5"].get(ds, {})
    rows = []
    for m in models:
        row = [LABELS[m]] + [fmt(_metric(res, cells[(m, r)], ("test", "auc"))) for r in ratios]
        rows.append(row)
    pop = [LABELS["popularity"]] + [fmt(_metric(res, cells[("kgnn-ls", r)], (
        "reference", "popularity", "test", "auc"))) for r in ratios]
    rows.append(pop)
    for m, values in paper.items():
        rows.append([f"{LABELS.get(m, m)} (paper)"] + [paper_fmt(values[str(r)]) for r in ratios])
    drop = {m: (mean_std(_metric(res, cells[(m, 1.0)], ("test", "auc")))[0]
                - mean_std(_metric(res, cells[(m, 0.2)], ("test", "auc")))[0]) for m in models}
    report = Report("table5", ds, f"Table 5: cold start on {PAPER_NAME.get(ds, ds)}: test AUC "
                                  f"vs the share r of the training set ({len(seeds)} seeds)")
    report.sections += [
        "The training rows are subsampled (seeded) to r of their size; validation and test "
        "rows stay fixed. The paper reports this table for MovieLens-20M only; its rows are "
        "shown where the dataset matches.",
        markdown_table(["model"] + [f"r = {int(r * 100)}%" for r in ratios], rows),
        "AUC lost from r = 100 % to r = 20 %: " + ", ".join(
            f"{LABELS[m]} {d:.3f}" for m, d in drop.items()) + ".",
    ]
    report.notes += _cut_note(ds)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for m in models:
        ms = [mean_std(_metric(res, cells[(m, r)], ("test", "auc"))) for r in ratios]
        ax.errorbar([r * 100 for r in ratios], [a for a, _ in ms], yerr=[b for _, b in ms],
                    marker="o", capsize=3, label=LABELS[m])
    ax.set_xlabel("training set ratio r (%)")
    ax.set_ylabel("test AUC")
    ax.legend(fontsize=8)
    report.figure = fig
    report.raw = {"seeds": seeds, "ratios": ratios, "auc": {
        f"{m}@{r}": _metric(res, cells[(m, r)], ("test", "auc")) for m in models for r in ratios},
        "drop_100_to_20": drop, "paper": paper}
    return report


def _recall_sweep(runner: Runner, seeds: list[int], name: str, field: str, values: list[Any],
                  paper_key: str, title: str, xlabel: str) -> Report:
    ds = runner.dataset
    cells, res = _sweep(runner, seeds, name, field, values, ["kgnn-ls"])
    paper = paper_numbers()[paper_key].get(ds, {})
    rows, checks = [], []
    for v in values:
        c = cells[("kgnn-ls", v)]
        r10 = _metric(res, c, ("test_paper_protocol", "recall@10"))
        p = paper.get(str(v))
        rows.append([str(v), fmt(r10), paper_fmt(p),
                     fmt(_metric(res, c, ("test", "recall@10"))),
                     fmt(_metric(res, c, ("test", "auc"))),
                     fmt(_metric(res, c, ("ls_coverage",)), 3)])
        checks.append((f"{field} = {v} Recall@10", r10, p))
    report = Report(name, ds, f"{title} on {PAPER_NAME.get(ds, ds)} ({len(seeds)} seeds)")
    report.sections += [
        "KGNN-LS with the dataset's preset except the swept value. Recall@10 in the paper's "
        "protocol (as its table) beside the paper, then full-ranking Recall@10, test AUC and "
        "the LS coverage.",
        markdown_table([xlabel, "R@10 paper protocol (ours)", "R@10 (paper)",
                        "R@10 full ranking", "AUC", "LS coverage"], rows),
    ]
    report.notes += _cut_note(ds) + _beyond_2std(checks)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ms = [mean_std(_metric(res, cells[("kgnn-ls", v)], ("test_paper_protocol", "recall@10")))
          for v in values]
    xs = list(range(len(values)))
    ax.errorbar(xs, [a for a, _ in ms], yerr=[b for _, b in ms], marker="o", capsize=3,
                label="ours (paper protocol)")
    if paper:
        ax.plot(xs, [paper.get(str(v), np.nan) for v in values], "D--", label="paper")
    ax.set_xticks(xs, [str(v) for v in values])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Recall@10")
    ax.legend(fontsize=8)
    report.figure = fig
    report.raw = {"seeds": seeds, "field": field, "values": values, "per_value": {
        str(v): [res.get(c, {}) | {"history": None} for c in cells[("kgnn-ls", v)]]
        for v in values},
        "paper": paper}
    return report


def table6(runner: Runner, seeds: list[int]) -> Report:
    return _recall_sweep(runner, seeds, "table6", "n_layers", [1, 2, 3, 4], "table6",
                         "Table 6: Recall@10 vs the number of layers L", "L")


def table7(runner: Runner, seeds: list[int]) -> Report:
    return _recall_sweep(runner, seeds, "table7", "dim", [4, 8, 16, 32, 64, 128], "table7",
                         "Table 7: Recall@10 vs the dimension d", "d")


def fig5(runner: Runner, seeds: list[int]) -> Report:
    ds = runner.dataset
    lambdas, dims = [0.0, 0.01, 0.1, 0.5, 1.0, 5.0], [4, 8, 16]
    preset = runner.config(Cell.of("kgnn-ls", 0))
    L = preset.n_layers
    depths = {"authors' depth (ls_hops = L)": L, "default depth (ls_hops = max(L, 2))": None}
    if preset.with_overrides({"ls_hops": L}).label_hops == preset.label_hops:
        depths = {f"authors' depth L = default depth max(L, 2) = {L}": None}
    cells = {(d, lam, h): [Cell.of("kgnn-ls", s, dim=d, ls_weight=lam, ls_hops=hv)
                           for s in seeds]
             for d in dims for lam in lambdas for h, hv in depths.items()}
    res = runner.run([c for cs in cells.values() for c in cs], desc="fig5")
    report = Report("fig5", ds, f"Figure 5: label-smoothness weight λ on "
                                f"{PAPER_NAME.get(ds, ds)} ({len(seeds)} seeds)")
    report.sections.append(
        "KGNN-LS with the preset except d and λ, for two label-propagation depths. With the "
        "authors' depth on Last.FM (L = 1) an item's one-hop neighbours are almost never "
        "items: the LS coverage (share of training rows whose propagation tree reaches a "
        "labelled entity) is about 0, the propagated label is constant and λ cannot act; a "
        "flat curve there is expected, not a finding."
        + (f" Here L = {L}, so the two depths are the same runs, shown once." if len(depths) == 1
           else ""))
    for h in depths:
        rows = []
        for d in dims:
            cov = fmt(_metric(res, cells[(d, lambdas[-1], h)], ("ls_coverage",)), 3)
            rows.append([str(d)] + [
                fmt(_metric(res, cells[(d, lam, h)], ("test_paper_protocol", "recall@10")))
                + " / " + fmt(_metric(res, cells[(d, lam, h)], ("test", "auc")))
                for lam in lambdas] + [cov])
        report.sections += [f"**{h}**: Recall@10 (paper protocol) / test AUC",
                            markdown_table(["d"] + [f"λ = {lam:g}" for lam in lambdas]
                                           + ["LS coverage"], rows)]
    plt = _plt()
    fig, axes = plt.subplots(2, len(depths), figsize=(4.5 * len(depths) + 0.5, 6),
                             sharex=True, squeeze=False)
    for col, h in enumerate(depths):
        for row, (path, label) in enumerate(((("test_paper_protocol", "recall@10"), "R@10"),
                                             (("test", "auc"), "AUC"))):
            ax = axes[row][col]
            for d in dims:
                ms = [mean_std(_metric(res, cells[(d, lam, h)], path)) for lam in lambdas]
                ax.errorbar(range(len(lambdas)), [a for a, _ in ms], yerr=[b for _, b in ms],
                            marker="o", capsize=2, label=f"d = {d}")
            ax.set_xticks(range(len(lambdas)), [f"{lam:g}" for lam in lambdas])
            ax.set_ylabel(label)
            if row == 0:
                ax.set_title(h, fontsize=9)
            if row == 1:
                ax.set_xlabel("λ")
            ax.legend(fontsize=7)
    report.figure = fig
    report.notes.append("Paper (Sec. 5.4.2): every non-zero λ beats λ = 0 and λ in [0.1, 1] is "
                        "preferable; Figure 5 prints no values to compare with.")
    report.raw = {"seeds": seeds, "lambdas": lambdas, "dims": dims, "cells": {
        f"d={d} lambda={lam} {h}": {"recall@10": _metric(res, c, ("test_paper_protocol",
                                                                  "recall@10")),
                                    "auc": _metric(res, c, ("test", "auc")),
                                    "ls_coverage": _metric(res, c, ("ls_coverage",))}
        for (d, lam, h), c in cells.items()}}
    return report


# ------------------------------------------------------------------ Figure 3
def kg_distances(kg: np.ndarray, n_entities: int, sources: np.ndarray, targets: np.ndarray,
                 chunk: int = 512) -> np.ndarray:
    """Unweighted shortest-path length in the undirected KG for each (source, target)."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import shortest_path

    graph = sp.coo_matrix((np.ones(len(kg)), (kg[:, 0], kg[:, 2])),
                          shape=(n_entities, n_entities)).tocsr()
    out = np.empty(len(sources))
    uniq, inverse = np.unique(sources, return_inverse=True)
    for start in range(0, len(uniq), chunk):
        block = uniq[start:start + chunk]
        dist = shortest_path(graph, directed=False, unweighted=True, indices=block)
        rows = np.flatnonzero((inverse >= start) & (inverse < start + len(block)))
        out[rows] = dist[inverse[rows] - start, targets[rows]]
    return out


def fig3(runner: Runner, seeds: list[int], pairs: int = 10_000) -> Report:
    import scipy.sparse as sp

    from kgnnls.seeding import rng

    ds = runner.dataset
    curves: dict[str, list[dict[str, float]]] = {"with common rater": [], "no common rater": []}
    for seed in seeds:
        data = runner.data(seed)
        pos = data.ratings[data.ratings[:, 2] == 1]
        items = np.unique(pos[:, 1])
        rated = sp.csr_matrix((np.ones(len(pos)), (pos[:, 1], pos[:, 0])),
                              shape=(data.n_items, data.n_users))
        r = rng(seed, "figure3")
        found = {True: [], False: []}
        while min(len(found[True]), len(found[False])) < pairs:
            a, b = r.choice(items, 20_000), r.choice(items, 20_000)
            keep = a != b
            a, b = a[keep], b[keep]
            common = np.asarray(rated[a].multiply(rated[b]).sum(1)).ravel() > 0
            for flag in (True, False):
                need = pairs - len(found[flag])
                sel = np.flatnonzero(common == flag)[:need]
                found[flag].extend(zip(a[sel], b[sel], strict=True))
        for flag, name in ((True, "with common rater"), (False, "no common rater")):
            p = np.asarray(found[flag][:pairs])
            dist = kg_distances(data.kg, data.n_entities, p[:, 0], p[:, 1])
            hist = {str(k): float(np.mean(dist == k)) for k in range(1, 9)}
            hist[">8"] = float(np.mean(np.isfinite(dist) & (dist > 8)))
            hist["inf"] = float(np.mean(~np.isfinite(dist)))
            hist["<=2"] = float(np.mean(dist <= 2))
            curves[name].append(hist)
    paper = paper_numbers()["figure3"].get(ds)
    keys = [str(k) for k in range(1, 9)] + [">8", "inf"]
    rows = [[name] + [fmt([h[k] for h in hs]) for k in keys] + [fmt([h["<=2"] for h in hs])]
            for name, hs in curves.items()]
    report = Report("fig3", ds, f"Figure 3: KG distance between item pairs vs common raters "
                                f"on {PAPER_NAME.get(ds, ds)} ({len(seeds)} seeds)")
    report.sections += [
        f"{pairs:,} random item pairs with at least one common rater (a user with both as "
        f"positives) and {pairs:,} without, per seed; probability of each shortest-path "
        "distance in the undirected KG (∞: not connected).",
        markdown_table(["pairs"] + [f"d = {k}" for k in keys] + ["P(d ≤ 2)"], rows),
    ]
    if paper:
        report.notes.append(f"Paper (MovieLens-20M): P(d ≤ 2) = "
                            f"{paper['p_within_2_hops_with_common_rater']} with a common rater, "
                            f"{paper['p_within_2_hops_without_common_rater']} without.")
    else:
        report.notes.append("The paper prints values for MovieLens-20M only (0.92 vs 0.80 "
                            "within 2 hops); the claim checked here is the direction: pairs "
                            "with common raters are closer in the KG.")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(keys))
    for off, (name, hs) in zip((-0.2, 0.2), curves.items(), strict=True):
        ms = [mean_std([h[k] for h in hs]) for k in keys]
        ax.bar(x + off, [m for m, _ in ms], width=0.4, yerr=[s for _, s in ms], label=name)
    ax.set_xticks(x, keys)
    ax.set_xlabel("shortest-path distance in the KG")
    ax.set_ylabel("probability")
    ax.legend(fontsize=8)
    report.figure = fig
    report.raw = {"seeds": seeds, "pairs": pairs, "distributions": curves}
    return report


# ------------------------------------------------------------------ Figure 6
def fig6(runner: Runner, seeds: list[int], factors: tuple[int, ...] = (1, 2, 3, 4, 5),
         epochs: int = 2, reverse: bool = False) -> Report:
    from kgnnls.data.synthetic import grow_kg
    from kgnnls.train import fit

    ds = runner.dataset
    seed = seeds[0]
    models = available_models()
    timings: dict[str, dict[str, float]] = {m: {} for m in models}
    sizes: dict[int, int] = {}
    paths: dict[str, str] = {}
    from tqdm.auto import tqdm

    def take(m: str, k: int, path, entry: dict) -> None:
        timings[m][str(k)], sizes[k] = entry["seconds"], entry["triples"]
        paths[m] = entry.get("training_path", "")
        runner.used[path.stem] = entry["wall_seconds"]

    todo = []
    for k in factors:  # timings are cached like runs, so an interrupted `all` resumes
        for m in models:
            run = Cell.of(m, seed)
            cfg = runner.config(run).with_overrides({"epochs": epochs, "patience": epochs})
            path = _fig6_cache_path(runner, cfg, runner.options(run), k)
            if path.is_file():
                take(m, k, path, json.loads(path.read_text()))
            elif runner.cached_only:
                runner.missing.add(path.stem)
            else:
                todo.append((k, m, cfg, runner.options(run), path))
    grown = {}
    # reverse: largest KG first, so that a second invocation shares the work
    for k, m, cfg, options, path in tqdm(todo[::-1] if reverse else todo, desc="fig6",
                                         unit="run", disable=not runner.progress):
        if path.is_file():  # timed meanwhile by another invocation on this cache
            take(m, k, path, json.loads(path.read_text()))
            continue
        if k not in grown:
            grown[k] = grow_kg(runner.data(seed), k, seed)
        t0 = time.perf_counter()
        fitted = fit(grown[k], cfg, progress=False, options=options)
        entry = {"model": m, "factor": k, "seed": seed, "triples": len(grown[k].kg),
                 "seconds": float(np.median([h["seconds"] for h in fitted.history])),
                 "epoch_seconds": [h["seconds"] for h in fitted.history],
                 "training_path": fitted.training_path,
                 "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
                 "wall_seconds": time.perf_counter() - t0}
        atomic_write_json(path, entry)
        take(m, k, path, entry)

    def cell(m: str, k: int) -> str:
        return f"{timings[m][str(k)]:.3f}" if str(k) in timings[m] else "-"

    def growth(m: str) -> str:
        first, last = timings[m].get(str(factors[0])), timings[m].get(str(factors[-1]))
        return "-" if first is None or last is None else f"{last / first:.2f}"

    rows = [[LABELS[m]] + [cell(m, k) for k in factors] + [growth(m)] for m in models]
    by_path: dict[str, list[str]] = {}
    for m, p in paths.items():
        by_path.setdefault(p, []).append(LABELS[m])
    report = Report("fig6", ds, f"Figure 6: training time per epoch vs KG size on "
                                f"{PAPER_NAME.get(ds, ds)}")
    report.sections += [
        "The paper grows MovieLens-20M's KG with more Satori triples, which we do not have. "
        "We grow the KG synthetically: each added triple copies the head and relation of a "
        "uniformly drawn existing triple (so the relation distribution and the heads' degree "
        "distribution are kept) and takes a tail of that relation drawn by frequency, or a "
        "new entity at the rate the relation introduces new tails. Seconds per training epoch "
        f"(median of {epochs} epochs, seed {seed}; training path as the loop chose it: "
        + "; ".join(f"{p}: {', '.join(ms)}" for p, ms in by_path.items())
        + "). Each timing is cached like a training run (`cache/DATASET/fig6-*.json`, with "
        "the date it was measured); delete those files to re-time.",
        markdown_table(["model"] + [f"KG x{k} ({sizes[k]:,} triples)" if k in sizes
                                    else f"KG x{k}" for k in factors]
                       + [f"x{factors[-1]} / x{factors[0]}"], rows),
    ]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for m in models:
        ax.plot(factors, [timings[m].get(str(k), np.nan) for k in factors], marker="o",
                label=LABELS[m])
    ax.set_xlabel("KG size (x original)")
    ax.set_ylabel("seconds per epoch")
    ax.legend(fontsize=7)
    report.figure = fig
    report.notes.append("Timings depend on the machine's load; see the header for the machine.")
    report.raw = {"seed": seed, "factors": list(factors), "triples": sizes, "seconds": timings,
                  "training_path": paths}
    return report


def _fig6_cache_path(runner: Runner, config: Any, options: Any, factor: int) -> Any:
    """Where the timing of one (model config, KG growth factor) is cached."""
    payload = json.dumps({"fig6": factor, "run": runner.key_of(config, options)},
                         sort_keys=True)
    return (runner.out / "cache" / runner.dataset
            / f"fig6-{hashlib.sha256(payload.encode()).hexdigest()[:24]}.json")


EXPERIMENTS: dict[str, Callable[[Runner, list[int]], Report]] = {
    "table3": table3, "table4": table4, "table5": table5, "table6": table6, "table7": table7,
    "fig3": fig3, "fig5": fig5, "fig6": fig6,
}


def run_experiment(name: str, runner: Runner, seeds: list[int], command: str) -> list:
    """Run one experiment (or ``all``) and write its reports; returns written paths."""
    names = list(EXPERIMENTS) if name == "all" else [name]
    written = []
    for n in names:
        t0 = time.perf_counter()
        runner.used.clear()
        runner.missing.clear()
        report = EXPERIMENTS[n](runner, seeds)
        if runner.missing:
            report.notes.insert(0, (
                f"**Partial report** (`--cached-only`): {len(runner.missing)} of "
                f"{len(runner.missing) + len(runner.used)} runs are not finished yet. A '-' "
                "is a cell with no finished run; other cells average the seeds finished so far."))
        written += report.write(runner.out, command, time.perf_counter() - t0,
                                runs=len(runner.used), run_seconds=sum(runner.used.values()))
    return written


__all__ = ["EXPERIMENTS", "available_models", "kg_distances", "run_experiment"]
