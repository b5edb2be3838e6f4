"""Config and RunOptions: presets are the paper's Table 8; fields are checked from their
declarations (Literal values, numeric bounds), overrides are typed and routed."""

from __future__ import annotations

import typing
from dataclasses import fields, replace

import pytest

from kgnnls import Config, ConfigError, RunOptions
from kgnnls.config import RUN_FIELDS, Max, Min, settings_for, split_settings


def test_presets_are_table8():
    lastfm = Config.preset("lastfm")
    assert (lastfm.n_neighbors, lastfm.dim, lastfm.n_layers, lastfm.ls_weight, lastfm.l2_weight,
            lastfm.lr, lastfm.batch_size) == (8, 16, 1, 0.1, 1e-4, 5e-4, 128)
    book = Config.preset("book")  # alias of book-crossing
    assert (book.n_neighbors, book.dim, book.n_layers, book.ls_weight, book.l2_weight, book.lr,
            book.batch_size) == (8, 64, 2, 0.5, 2e-5, 2e-4, 256)


def test_a_presets_run_options_are_split_off():
    assert RunOptions.preset("book").topk_users == 500  # the run option the preset sets
    assert RunOptions.preset("book", model="svd", threads=2) == RunOptions(threads=2,
                                                                           topk_users=500)
    assert RunOptions.preset("lastfm") == RunOptions()
    config, options = settings_for("book-crossing", "kgcn", {"d": "32", "threads": "2",
                                                             "seed": 3})
    assert (config.dim, config.seed, config.model) == (32, 3, "kgcn")
    assert (options.threads, options.topk_users) == (2, 500)


def test_overrides_accept_paper_symbols_and_strings():
    cfg = Config().with_overrides({"d": "32", "lambda": "0.5", "L": "2", "ls_hops": "none",
                                   "variant": "authors"})
    assert (cfg.dim, cfg.ls_weight, cfg.n_layers, cfg.ls_hops, cfg.variant) == (
        32, 0.5, 2, None, "authors")
    assert cfg.label_hops == 2  # authors: L
    options = RunOptions().with_overrides({"topk": "5,10", "threads": "2",
                                           "training_path": "autograd"})
    assert (options.topk, options.threads, options.training_path) == ((5, 10), 2, "autograd")


@pytest.mark.parametrize(("overrides", "message"), [
    ({"dimension": "3"}, "unknown setting 'dimension'"),
    ({"dim": "x"}, "bad value 'x' for dim"),
    ({"variant": "mine"}, "bad value 'mine' for variant"),
    ({"lr": "0"}, "lr .* must be > 0"),
    ({"S": "0"}, "n_neighbors .* must be >= 1"),
    ({"train_fraction": "1.5"}, r"train_fraction must be > 0 and <= 1, got 1.5"),
    ({"threads": "2"}, "unknown setting 'threads'.*run options: threads"),
])
def test_bad_overrides_are_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        Config().with_overrides(overrides)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"threads": "0"}, "threads must be >= 1, got 0"),
    ({"topk": "0,5"}, r"topk must be a list of values each >= 1, got \(0, 5\)"),
    ({"topk": ""}, r"topk must be non-empty, got \(\)"),
    ({"topk_users": "-1"}, "topk_users must be >= 0, got -1"),
    ({"dim": "8"}, "unknown setting 'dim'"),
])
def test_bad_run_options_are_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        RunOptions().with_overrides(overrides)


# ---------------------------------------------------------------------- declared checks
def _declared(cls: type) -> list[tuple[str, typing.Any, tuple]]:
    """(field, base type, constraints) of each field of ``cls``, Annotated unpacked."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out = []
    for f in fields(cls):
        typ, constraints = hints[f.name], ()
        if typing.get_origin(typ) is typing.Union:  # Optional[...]: the non-None part
            typ = next(a for a in typing.get_args(typ) if a is not type(None))
        if typing.get_origin(typ) is typing.Annotated:
            typ, *rest = typing.get_args(typ)
            constraints = tuple(rest)
        out.append((f.name, typ, constraints))
    return out


LITERALS = [(cls, name, typing.get_args(typ)) for cls in (Config, RunOptions)
            for name, typ, _ in _declared(cls) if typing.get_origin(typ) is typing.Literal]
BOUNDED = [(cls, name, typ, c) for cls in (Config, RunOptions)
           for name, typ, cs in _declared(cls) for c in cs if isinstance(c, Min | Max)]


def test_the_declarations_cover_the_choice_and_bounded_fields():
    literal = {name for _, name, _ in LITERALS}
    assert literal == {"variant", "aggregator", "updates", "negatives", "loss", "ratings",
                       "unlinked", "training_path", "device"}
    bounded = {name for _, name, _, _ in BOUNDED}
    assert {"n_neighbors", "dim", "n_layers", "ls_hops", "ls_weight", "l2_weight", "lr",
            "init_scale", "batch_size", "epochs", "patience", "train_fraction", "seed",
            "threads", "eval_batch_size", "topk_users"} <= bounded


@pytest.mark.parametrize(("cls", "name", "allowed"), LITERALS,
                         ids=[f"{c.__name__}.{n}" for c, n, _ in LITERALS])
def test_every_literal_field_refuses_an_unknown_value_naming_it(cls, name, allowed):
    for value in allowed:  # every declared value is accepted
        replace(cls(), **{name: value}).validate()
    with pytest.raises(ConfigError) as info:
        replace(cls(), **{name: "bogus"}).validate()
    message = str(info.value)
    assert message.startswith(f"{name} must be one of ") and "'bogus'" in message
    assert all(str(v) in message for v in allowed)
    with pytest.raises(ConfigError, match=f"bad value 'bogus' for {name}"):  # --set strings
        cls().with_overrides({name: "bogus"})


@pytest.mark.parametrize(("cls", "name", "typ", "bound"), BOUNDED,
                         ids=[f"{c.__name__}.{n}-{b}" for c, n, _, b in BOUNDED])
def test_every_bound_is_checked_at_its_edge(cls, name, typ, bound):
    integer = typ is int
    step = 1 if integer else 1e-9
    if isinstance(bound, Min):
        inside = bound.value + (step if bound.exclusive else 0)
        outside = bound.value - (0 if bound.exclusive else step)
    else:
        inside, outside = bound.value, bound.value + step
    cast = int if integer else float
    replace(cls(), **{name: cast(inside)}).validate()
    with pytest.raises(ConfigError, match=rf"^{name}( \(\w+\))? must be .*{bound}.*, got"):
        replace(cls(), **{name: cast(outside)}).validate()


@pytest.mark.parametrize(("cls", "changes", "message"), [
    (Config, {"dim": 1.5}, r"dim \(d\) must be an integer, got 1.5"),
    (Config, {"lr": "fast"}, r"lr \(eta\) must be a number, got 'fast'"),
    (Config, {"epochs": True}, "epochs must be an integer, got True"),
    (Config, {"ls_hops": 0}, "ls_hops must be None or >= 1, got 0"),
    (RunOptions, {"topk": [5, 10]}, "topk must be a tuple"),
    (RunOptions, {"topk": (5, 2.5)}, "topk must be a list of values each an integer"),
])
def test_types_are_checked_from_the_declarations(cls, changes, message):
    with pytest.raises(ConfigError, match=message):
        replace(cls(), **changes).validate()


@pytest.mark.parametrize(("changes", "message"), [
    (dict(model="svd", loss="bpr"), "loss=bpr is for kgnn-ls and kgcn; model 'svd'"),
    (dict(model="libfm", kg="none"), "kg=none ablates the knowledge graph, which model 'libfm'"),
    (dict(kg="shuffle:2"), "shuffle"),
])
def test_cross_field_rules_stay(changes, message):
    with pytest.raises(ConfigError, match=message):
        replace(Config(), **changes).validate()


# ---------------------------------------------------------------------- (de)serialisation
def test_config_roundtrips_through_dict():
    cfg = Config.preset("book", seed=3)
    assert Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown config field"):
        Config.from_dict({**cfg.to_dict(), "bogus": 1})
    options = RunOptions(threads=2, topk=(5, 10))
    assert options.to_dict()["topk"] == [5, 10]  # JSON-friendly
    assert RunOptions.from_dict(options.to_dict()) == options
    with pytest.raises(ConfigError, match="unknown run option field"):
        RunOptions.from_dict({"dim": 8})


def test_a_config_dict_from_before_the_split_loads_with_its_run_options_split_off():
    old = {**Config(dim=32).to_dict(), "threads": 2, "training_path": "autograd",
           "eval_batch_size": 100, "topk": [5, 10], "topk_users": 50, "device": "cpu"}
    assert Config.from_dict(old) == Config(dim=32)
    assert RunOptions.from_config_dict(old) == RunOptions(
        threads=2, training_path="autograd", eval_batch_size=100, topk=(5, 10), topk_users=50,
        device="cpu")
    assert RunOptions.from_config_dict(Config().to_dict()) == RunOptions()  # none stored
    assert RUN_FIELDS.isdisjoint(Config().to_dict())


def test_settings_are_routed_by_field():
    config, options = split_settings({"d": "8", "threads": "2", "topk": "5", "bogus": 1,
                                      "extra.n_hop": "2"})
    assert config == {"d": "8", "bogus": 1, "extra.n_hop": "2"}  # unknown keys: config errs
    assert options == {"threads": "2", "topk": "5"}


def test_set_line_reproduces_config():
    cfg = Config().with_overrides({"dim": 32, "ls_weight": 0.5})
    line = cfg.as_set_line()
    assert line == "--set dim=32 --set ls_weight=0.5"
    assert RunOptions(threads=2, topk=(5, 10)).as_set_line() == "--set threads=2 --set topk=5,10"
