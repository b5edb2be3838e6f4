"""Reproduce the paper: one command per table and figure, seeds, paper numbers alongside.

``kgnnls reproduce EXPERIMENT --dataset NAME --seeds 5 --out reports/`` runs
the cells an experiment needs through :class:`Runner` (cached, resumable) and
writes ``EXPERIMENT-DATASET.md`` / ``.png`` / ``.json``.
"""

from kgnnls.reproduce.experiments import EXPERIMENTS, available_models, run_experiment
from kgnnls.reproduce.report import paper_numbers
from kgnnls.reproduce.runner import Cell, Runner

__all__ = ["EXPERIMENTS", "Cell", "Runner", "available_models", "paper_numbers",
           "run_experiment"]
