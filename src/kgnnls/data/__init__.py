"""Datasets: readers for three layouts, a registry, negative sampling, splits."""

from kgnnls.data.dataset import Dataset
from kgnnls.data.readers import detect_layout, read_directory, read_final, read_raw, read_recbole
from kgnnls.data.registry import REGISTRY, DatasetSpec, find_spec, load_dataset
from kgnnls.data.sampling import Split, sample_negatives, split_ratings

__all__ = [
           "REGISTRY",
           "Dataset",
           "DatasetSpec",
           "Split",
           "detect_layout",
           "find_spec",
           "load_dataset",
           "read_directory",
           "read_final",
           "read_raw",
           "read_recbole",
           "sample_negatives",
           "split_ratings",
]
