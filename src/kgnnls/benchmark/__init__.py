"""``kgnnls benchmark``: a fair leaderboard of every model on one dataset.

Strong collaborative-filtering rankers, KGNN-LS, KGCN and the paper's
baselines, each tuned with the same Optuna budget on validation full ranking,
retrained on several seeds, tested once, compared by paired tests, with the
cold-start slices and the KG ablations beside the overall numbers. See
docs/benchmark.md.
"""

from kgnnls.benchmark.models import Budget, model_names
from kgnnls.benchmark.report import write_reports
from kgnnls.benchmark.runner import BenchmarkSpec, run_benchmark

__all__ = ["BenchmarkSpec", "Budget", "model_names", "run_benchmark", "write_reports"]
