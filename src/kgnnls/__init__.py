"""kgnnls: knowledge-graph-aware recommendation (KGNN-LS, Wang et al., KDD 2019).

The public API::

    from kgnnls import Config, KGNNLS, load_dataset

    ds = load_dataset("lastfm")                      # embedded, works offline
    model = KGNNLS(Config.preset("lastfm")).fit(ds)  # paper's Table 8 setting
    model.evaluate()["test"]["auc"]
    model.recommend("2", k=10)                       # original user/item ids
"""

from kgnnls._version import __version__
from kgnnls.config import Config, RunOptions
from kgnnls.data import Dataset, load_dataset
from kgnnls.errors import CheckpointError, ConfigError, DataError, KgnnlsError
from kgnnls.presets import PRESETS
from kgnnls.recommender import KGNNLS

__all__ = ["KGNNLS", "PRESETS", "CheckpointError", "Config", "ConfigError", "DataError", "Dataset",
           "KgnnlsError", "RunOptions", "__version__", "load_dataset"]
