"""Paired significance tests between two models evaluated on the same folds.

Two levels of pairing, both reported:

* **seeds** (as the issue asks: same seed = same split): a paired t-test and a
  Wilcoxon signed-rank test over the per-seed means. With 5 seeds the exact
  two-sided Wilcoxon p cannot go below 0.0625, so it can never reach 0.05;
* **users**: the per-user metric differences of every seed pooled (one value
  per user and seed, the same users ranked by both models), tested by a
  Wilcoxon signed-rank test: the test with the power to tell models apart.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats


def _p(test, *args) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on tiny or degenerate samples
        try:
            p = float(test(*args).pvalue)
        except ValueError:  # e.g. every difference zero
            return float("nan")
    return p if math.isfinite(p) else float("nan")


def paired(a: list[float], b: list[float], users_a: list[list[float]] | None = None,
           users_b: list[list[float]] | None = None) -> dict[str, float]:
    """``mean_diff`` (a - b), ``t_p``, ``wilcoxon_p`` over seeds and ``user_wilcoxon_p``.

    ``users_a[s]``/``users_b[s]``: per-user values of seed ``s`` for the same users
    in the same order.
    """
    x, y = np.asarray(a, float), np.asarray(b, float)
    diff = x - y
    out = {"mean_diff": float(diff.mean()) if len(diff) else float("nan"),
           "t_p": float("nan"), "wilcoxon_p": float("nan"), "user_wilcoxon_p": float("nan"),
           "n_seeds": len(diff)}
    if len(diff) >= 2 and np.any(diff != 0):
        out["t_p"] = _p(stats.ttest_rel, x, y)
        out["wilcoxon_p"] = _p(stats.wilcoxon, x, y)
    if users_a is not None and users_b is not None:
        ua = np.concatenate([np.asarray(v, float) for v in users_a]) if users_a else np.zeros(0)
        ub = np.concatenate([np.asarray(v, float) for v in users_b]) if users_b else np.zeros(0)
        out["n_users"] = len(ua)
        if len(ua) and np.any(ua != ub):
            out["user_wilcoxon_p"] = _p(stats.wilcoxon, ua, ub)
    return out


__all__ = ["paired"]
