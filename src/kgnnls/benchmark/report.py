"""The leaderboard's outputs: ``benchmark-NAME.json``, ``.md`` and ``.png``.

:func:`assemble` turns the per-model runs into the JSON document (test metrics
per seed, slices, KG ablations, paired tests); :func:`write_reports` writes
it with a Markdown table, verdict lines and a plot, each atomically.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from kgnnls.benchmark.models import uses_kg
from kgnnls.benchmark.stats import paired
from kgnnls.storage import atomic_write_bytes, atomic_write_json

SLICES = ("cold_items", "cold_users")
#: metrics listed per seed in the JSON (the tuning metric is added)
LISTED = ("recall@20", "ndcg@20", "precision@20", "hit@20", "recall@10", "ndcg@10",
          "recall@50", "ndcg@50")


def _per_seed(runs: list[dict], part: str, metric: str) -> list[float]:
    return [r["results"][part]["mean"][metric] for r in runs]


def _per_user(runs: list[dict], part: str, metric: str) -> list[list[float]]:
    return [r["results"][part]["per_user"][metric] for r in runs]


def _metrics_of(runs: list[dict], part: str, metrics: tuple[str, ...]) -> dict[str, list[float]]:
    return {m: _per_seed(runs, part, m) for m in metrics if m in runs[0]["results"][part]["mean"]}


def _model_entry(name: str, entry: dict, metrics: tuple[str, ...]) -> dict[str, Any]:
    runs = entry["runs"]
    out = {"kg_aware": uses_kg(name), "best_params": entry["best_params"],
           "best_validation": entry["best_validation"], "trials": entry["trials"],
           "tuning_seconds": sum(t["seconds"] or 0.0 for t in entry["trials"]),
           "test": _metrics_of(runs, "overall", metrics),
           "slices": {s: _metrics_of(runs, s, metrics) for s in SLICES},
           "slice_users": {s: [len(r["results"][s]["users"]) for r in runs] for s in SLICES},
           "fit_seconds": [r["fit_seconds"] for r in runs],
           "eval_seconds": [r["eval_seconds"] for r in runs]}
    entropy = [r["diagnostics"].get("relation_entropy") for r in runs]
    if any(e is not None for e in entropy):
        out["relation_entropy"] = entropy
    return out


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _pair(a: str, b: str, entries: dict, part: str, metric: str) -> dict[str, Any]:
    ra, rb = entries[a]["runs"], entries[b]["runs"]
    return {"a": a, "b": b, "metric": metric, "part": part,
            **paired(_per_seed(ra, part, metric), _per_seed(rb, part, metric),
                     _per_user(ra, part, metric), _per_user(rb, part, metric))}


def _cold_pairs(models: dict, entries: dict, metric: str, done: list[dict]) -> list[dict]:
    """The best KG-aware model on cold items against every CF model there (not yet tested)."""
    kg = [n for n in models if models[n]["kg_aware"]]
    if not kg:
        return []
    top = max(kg, key=lambda n: _mean(models[n]["slices"]["cold_items"].get(metric, [])))
    tested = {(p["a"], p["b"]) for p in done if p["part"] == "cold_items"}
    return [_pair(top, n, entries, "cold_items", metric) for n in models
            if not models[n]["kg_aware"] and (top, n) not in tested and (n, top) not in tested]


def _ablations(entries: dict, metric: str, metrics: tuple[str, ...]
               ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    table, gains = {}, []
    for name, entry in entries.items():
        if not entry["ablation"]:
            continue
        table[name] = {}
        for mode, runs in entry["ablation"].items():
            table[name][mode] = {**_metrics_of(runs, "overall", metrics),
                                 "slices": {s: _metrics_of(runs, s, metrics) for s in SLICES}}
            for part in ("overall", "cold_items"):
                full = entry["runs"]
                gains.append({"model": name, "ablation": mode, "part": part, "metric": metric,
                              **paired(_per_seed(full, part, metric),
                                       _per_seed(runs, part, metric),
                                       _per_user(full, part, metric),
                                       _per_user(runs, part, metric))})
    return table, gains


def assemble(spec: Any, entries: dict[str, dict], wall_seconds: float) -> dict[str, Any]:
    """The leaderboard document (see the issue's JSON layout) from the models' runs."""
    metric = spec.metric
    metrics = tuple(dict.fromkeys((*LISTED, metric)))
    models = {name: _model_entry(name, e, metrics) for name, e in entries.items()}
    means = {name: _mean(m["test"][metric]) for name, m in models.items()}
    best = max(means, key=lambda n: (means[n], n))
    pairs = []
    for name in models:
        for ref in dict.fromkeys([best, "popularity"]):
            if ref in models and ref != name:
                pairs += [_pair(name, ref, entries, part, metric)
                          for part in ("overall", "cold_items")]
    pairs += _cold_pairs(models, entries, metric, pairs)
    ablation, gains = _ablations(entries, metric, metrics)
    compute = sum(m["tuning_seconds"] for m in models.values()) + sum(
        r["fit_seconds"] + r["eval_seconds"] for e in entries.values()
        for runs in (e["runs"], *e["ablation"].values()) for r in runs)
    return {"dataset": spec.slug, "trials": spec.trials, "seeds": spec.seeds, "metric": metric,
            "budget": {"epochs": spec.budget.epochs, "patience": spec.budget.patience},
            "val_users": spec.val_users,
            "protocol": "full ranking over all items; validation masks training positives; "
                        "test masks training and validation positives; ties broken by item "
                        "index; Optuna TPE on validation " + metric,
            "best": best, "models": models, "paired": pairs, "kg_ablation": ablation,
            "kg_gain": gains, "wall_seconds": wall_seconds, "compute_seconds": compute,
            "cpus": os.cpu_count()}


# ---------------------------------------------------------------------- Markdown
def _ms(values: list[float]) -> str:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return "-"
    return f"{np.mean(v):.4f} ± {np.std(v):.4f}" if len(v) > 1 else f"{v[0]:.4f}"


def _p(x: float) -> str:
    return "-" if x is None or not math.isfinite(x) else (f"{x:.1e}" if x < 1e-3 else f"{x:.3f}")


def markdown(doc: dict[str, Any]) -> str:
    """The report: header, leaderboard table, KG gain, paired tests, verdict lines."""
    metric, models = doc["metric"], doc["models"]
    order = sorted(models, key=lambda n: -_mean(models[n]["test"][metric]))
    recall = "recall@20"
    lines = [f"# Leaderboard: {doc['dataset']}", "",
             f"{len(models)} models, {doc['trials']} Optuna trials each on validation {metric}, "
             f"best setting retrained on {doc['seeds']} seeds (seed = split), tested once. "
             f"Epoch cap {doc['budget']['epochs']}, patience {doc['budget']['patience']} for "
             f"every iterative model. Protocol: {doc['protocol']}.", "",
             f"Cost: {doc['compute_seconds'] / 60:.1f} min of compute (tuning, fits and "
             f"evaluations of these models, summed over every invocation and worker); the "
             f"invocation that wrote this report ran {doc['wall_seconds'] / 60:.1f} min wall "
             f"on {doc['cpus']} CPUs (a rerun reuses the stored trials and cached seeds).", "",
             "## Verdict", "", *verdict(doc), "",
             "## Test (mean ± std over seeds)", "",
             f"| model | KG | {metric} | {recall} | cold items {metric} | cold items {recall} | "
             f"cold users {metric} | fit s | best setting |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n in order:
        m = models[n]
        ci, cu = m["slices"]["cold_items"], m["slices"]["cold_users"]
        lines.append(f"| {n} | {'yes' if m['kg_aware'] else ''} | {_ms(m['test'][metric])} | "
                     f"{_ms(m['test'].get(recall, []))} | {_ms(ci.get(metric, []))} | "
                     f"{_ms(ci.get(recall, []))} | {_ms(cu.get(metric, []))} | "
                     f"{np.mean(m['fit_seconds']):.1f} | {_params(m['best_params'])} |")
    lines += _gain_lines(doc) + _pair_lines(doc)
    return "\n".join(lines) + "\n"


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in params.items()) or "-"


def _gain_lines(doc: dict[str, Any]) -> list[str]:
    if not doc["kg_gain"]:
        return []
    out = ["", f"## KG gain: full KG minus ablated KG ({doc['metric']}, same seeds)", "",
           "| model | ablation | part | mean gain | t p (seeds) | Wilcoxon p (seeds) | "
           "Wilcoxon p (users) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for g in doc["kg_gain"]:
        out.append(f"| {g['model']} | kg={g['ablation']} | {g['part']} | {g['mean_diff']:+.4f} "
                   f"| {_p(g['t_p'])} | {_p(g['wilcoxon_p'])} | {_p(g['user_wilcoxon_p'])} |")
    return out


def _pair_lines(doc: dict[str, Any]) -> list[str]:
    out = ["", f"## Paired tests ({doc['metric']}; a - b)", "",
           "| a | b | part | mean diff | t p (seeds) | Wilcoxon p (seeds) | Wilcoxon p (users) |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in doc["paired"]:
        out.append(f"| {p['a']} | {p['b']} | {p['part']} | {p['mean_diff']:+.4f} | "
                   f"{_p(p['t_p'])} | {_p(p['wilcoxon_p'])} | {_p(p['user_wilcoxon_p'])} |")
    return out


def verdict(doc: dict[str, Any]) -> list[str]:
    """Plain sentences: who wins overall and on cold items, where the KG models stand."""
    metric, models = doc["metric"], doc["models"]
    mean = {n: _mean(m["test"][metric]) for n, m in models.items()}
    cold = {n: _mean(m["slices"]["cold_items"].get(metric, [])) for n, m in models.items()}
    best = doc["best"]
    out = [f"- Best overall: **{best}**, test {metric} {mean[best]:.4f}."]
    kg = [n for n in models if models[n]["kg_aware"]]
    cf = [n for n in models if not models[n]["kg_aware"]]
    if kg:
        best_kg = max(kg, key=lambda n: mean[n])
        rel = mean[best_kg] / mean[best] if mean[best] > 0 else float("nan")
        out.append(f"- Best KG-aware model: **{best_kg}**, {mean[best_kg]:.4f} "
                   f"({rel:.0%} of the best).")
    valid = [n for n in models if math.isfinite(cold[n])]
    if valid:
        top = max(valid, key=lambda n: cold[n])
        out.append(f"- Best on cold items (test positives on items without a training "
                   f"positive): **{top}**, {metric} {cold[top]:.4f}." if cold[top] > 0 else
                   f"- Cold items (test positives on items without a training positive): no "
                   f"model ranks one into any user's top list ({metric} 0 for all).")
        if kg and cf:
            best_kg_cold = max((n for n in kg if n in valid), key=lambda n: cold[n],
                               default=None)
            best_cf_cold = max((n for n in cf if n in valid), key=lambda n: cold[n],
                               default=None)
            if best_kg_cold and best_cf_cold:
                pair = _find(doc["paired"], best_kg_cold, best_cf_cold, "cold_items")
                note = "" if pair is None else f", user-level Wilcoxon p {_p(pair)}"
                out.append(f"- Cold items, best KG-aware against best CF: {best_kg_cold} "
                           f"{cold[best_kg_cold]:.4f} vs {best_cf_cold} "
                           f"{cold[best_cf_cold]:.4f}{note}.")
    for name in (n for n in ("kgnn-ls", "kgcn") if n in models):
        rank = sorted(mean, key=lambda n: -mean[n]).index(name) + 1
        out.append(f"- {name}: rank {rank} of {len(models)}, {mean[name]:.4f}"
                   + (f"; popularity {mean['popularity']:.4f}" if "popularity" in mean else "")
                   + ".")
    for g in doc["kg_gain"]:
        if g["part"] == "overall" and g["ablation"] == "none":
            out.append(f"- KG gain of {g['model']} (full minus no KG): {g['mean_diff']:+.4f} "
                       f"{metric}, user-level Wilcoxon p {_p(g['user_wilcoxon_p'])}.")
    return out


def _find(pairs: list[dict], a: str, b: str, part: str) -> float | None:
    """User-level p of ``a`` against ``b`` (either order) on ``part``, if it was tested."""
    a_user = None
    for p in pairs:
        if p["part"] == part and {p["a"], p["b"]} == {a, b}:
            a_user = p["user_wilcoxon_p"]
    return a_user


# ---------------------------------------------------------------------- plot
def plot(doc: dict[str, Any]) -> bytes:
    """Two panels of bars (mean ± std over seeds): overall and cold items; KG models orange."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, models = doc["metric"], doc["models"]
    order = sorted(models, key=lambda n: _mean(models[n]["test"][metric]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.38 * len(order) + 1.6), sharey=True)
    panels = [("overall", lambda m: m["test"].get(metric, [])),
              ("cold items", lambda m: m["slices"]["cold_items"].get(metric, []))]
    for ax, (title, get) in zip(axes, panels, strict=True):
        vals = [[v for v in get(models[n]) if v is not None and math.isfinite(v)] or [0.0]
                for n in order]
        colors = ["tab:orange" if models[n]["kg_aware"] else "tab:blue" for n in order]
        ax.barh(order, [np.mean(v) for v in vals], xerr=[np.std(v) for v in vals],
                color=colors, capsize=2)
        if "popularity" in models:
            ax.axvline(np.mean(vals[order.index("popularity")]), color="grey", ls="--", lw=1)
        ax.set_title(f"test {metric}, {title}")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{doc['dataset']}: {doc['trials']} trials per model, {doc['seeds']} seeds "
                 "(orange: KG-aware; dashed: popularity)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def report_paths(out: Path, slug: str) -> list[Path]:
    """The three files of a finished leaderboard."""
    return [out / f"benchmark-{slug}.{ext}" for ext in ("json", "md", "png")]


def write_reports(doc: dict[str, Any], out: Path) -> list[Path]:
    """Write the JSON, Markdown and PNG atomically (JSON last: it marks a finished run)."""
    json_path, md_path, png_path = report_paths(out, doc["dataset"])
    atomic_write_bytes(md_path, markdown(doc).encode())
    atomic_write_bytes(png_path, plot(doc))
    atomic_write_json(json_path, doc)
    return [json_path, md_path, png_path]


__all__ = ["assemble", "markdown", "plot", "report_paths", "verdict", "write_reports"]
