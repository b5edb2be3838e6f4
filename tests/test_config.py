"""Config: presets are the paper's Table 8; overrides are typed and checked."""

from __future__ import annotations

import pytest

from kgnnls import Config, ConfigError


def test_presets_are_table8():
    lastfm = Config.preset("lastfm")
    assert (lastfm.n_neighbors, lastfm.dim, lastfm.n_layers, lastfm.ls_weight, lastfm.l2_weight,
            lastfm.lr, lastfm.batch_size) == (8, 16, 1, 0.1, 1e-4, 5e-4, 128)
    book = Config.preset("book")  # alias of book-crossing
    assert (book.n_neighbors, book.dim, book.n_layers, book.ls_weight, book.l2_weight, book.lr,
            book.batch_size) == (8, 64, 2, 0.5, 2e-5, 2e-4, 256)


def test_overrides_accept_paper_symbols_and_strings():
    cfg = Config().with_overrides({"d": "32", "lambda": "0.5", "L": "2", "ls_hops": "none",
                                   "variant": "authors", "topk": "5,10"})
    assert (cfg.dim, cfg.ls_weight, cfg.n_layers, cfg.ls_hops, cfg.variant, cfg.topk) == (
        32, 0.5, 2, None, "authors", (5, 10))
    assert cfg.label_hops == 2  # authors: L


@pytest.mark.parametrize(("overrides", "message"), [
    ({"dimension": "3"}, "unknown setting 'dimension'"),
    ({"dim": "x"}, "bad value 'x' for dim"),
    ({"variant": "mine"}, "bad value 'mine' for variant"),
    ({"lr": "0"}, "lr .* must be > 0"),
    ({"S": "0"}, "n_neighbors .* must be >= 1"),
])
def test_bad_overrides_are_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        Config().with_overrides(overrides)


def test_config_roundtrips_through_dict():
    cfg = Config.preset("book", seed=3)
    assert Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown config field"):
        Config.from_dict({**cfg.to_dict(), "bogus": 1})


def test_set_line_reproduces_config():
    cfg = Config().with_overrides({"dim": 32, "ls_weight": 0.5})
    line = cfg.as_set_line()
    assert line == "--set dim=32 --set ls_weight=0.5"
