"""Config loading: unknown keys, wrong types and bad values are named errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedrec.config import load_config
from fedrec.errors import ConfigError

BASE = """
[run]
name = "t"

[data]
kind = "synthetic"

[data.options]
n_users = 20
n_items = 30

[train]
rounds = 1

[method]
name = "fedavg"
"""


def _write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


def test_base_config_is_valid(tmp_path):
    cfg = load_config(_write(tmp_path, BASE))
    assert cfg.run.name == "t"
    assert cfg.train.rounds == 1
    assert cfg.data.options == {"n_users": 20, "n_items": 30}
    assert cfg.method == {"name": "fedavg", "weighted": True}


def test_unknown_top_level_key_names_key_and_file(tmp_path):
    path = _write(tmp_path, BASE + "\n[trian]\nrounds = 2\n")
    msg = _error(path)
    assert "'trian'" in msg
    assert str(path) in msg


def test_unknown_nested_key_names_dotted_key_and_file(tmp_path):
    path = _write(tmp_path, BASE.replace("rounds = 1", "rounds = 1\nlrr = 0.1"))
    msg = _error(path)
    assert "train.lrr" in msg
    assert str(path) in msg


@pytest.mark.parametrize(
    ("line", "key"),
    [('rounds = "3"', "train.rounds"), ("lr = true", "train.lr")],
)
def test_wrong_type_names_key(tmp_path, line, key):
    path = _write(tmp_path, BASE.replace("rounds = 1", line))
    msg = _error(path)
    assert key in msg
    assert str(path) in msg


def test_wrong_type_in_list_names_key(tmp_path):
    path = _write(tmp_path, BASE + '\n[model]\nlayers = [4, "x"]\n')
    assert "model.layers[1]" in _error(path)


def test_literal_violation_lists_choices(tmp_path):
    path = _write(tmp_path, BASE.replace("rounds = 1", 'optimizer = "rmsprop"'))
    msg = _error(path)
    assert "train.optimizer" in msg
    assert "rmsprop" in msg
    assert "adam" in msg and "sgd" in msg


def test_unknown_method_lists_known_methods(tmp_path):
    path = _write(tmp_path, BASE.replace('name = "fedavg"', 'name = "fedfoo"'))
    msg = _error(path)
    assert "fedfoo" in msg
    for known in ("fedavg", "fedprox", "local", "centralised"):
        assert known in msg


def test_method_specific_unknown_key(tmp_path):
    path = _write(tmp_path, BASE + "foo = 1\n")  # appended to [method]
    msg = _error(path)
    assert "method.foo" in msg
    assert str(path) in msg


def test_method_specific_wrong_type_and_value(tmp_path):
    path = _write(tmp_path, BASE.replace('"fedavg"', '"fedprox"') + 'mu = "x"\n')
    assert "method.mu" in _error(path)
    path = _write(tmp_path, BASE.replace('"fedavg"', '"fedprox"') + "mu = -1.0\n")
    assert "method.mu" in _error(path)


def test_missing_method_name(tmp_path):
    path = _write(tmp_path, BASE.replace('name = "fedavg"', "weighted = true"))
    assert "method.name" in _error(path)


def test_overrides_are_parsed_as_toml(tmp_path):
    path = _write(tmp_path, BASE)
    cfg = load_config(
        path,
        [
            "train.lr=0.5",
            "model.layers=[4,2]",
            "run.name=abc",
            "train.rounds=3",
            "train.optimizer=sgd",
            "method.weighted=false",
        ],
    )
    assert cfg.train.lr == 0.5 and type(cfg.train.lr) is float
    assert cfg.model.layers == [4, 2]
    assert cfg.run.name == "abc"
    assert cfg.train.rounds == 3 and type(cfg.train.rounds) is int
    assert cfg.train.optimizer == "sgd"  # not TOML: kept as the string
    assert cfg.method["weighted"] is False


def test_integer_override_for_float_key_becomes_float(tmp_path):
    cfg = load_config(_write(tmp_path, BASE), ["train.lr=1"])
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float


def test_overrides_are_validated(tmp_path):
    path = _write(tmp_path, BASE)
    assert "train.rounds" in _error(path, ['train.rounds="3"'])
    assert "train.lrr" in _error(path, ["train.lrr=0.1"])
    assert "KEY=VALUE" in _error(path, ["train.lr"])


def test_override_does_not_mutate_nested_tables(tmp_path):
    path = _write(tmp_path, BASE)
    a = load_config(path, ["data.options.n_users=7"])
    b = load_config(path)
    assert a.data.options["n_users"] == 7
    assert b.data.options["n_users"] == 20


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["train.client_fraction=0"], "train.client_fraction"),
        (["train.client_fraction=1.5"], "train.client_fraction"),
        (["train.rounds=0"], "train.rounds"),
        (["train.lr=0"], "train.lr"),
        (["train.min_rows_per_bucket=-1"], "train.min_rows_per_bucket"),
        (["train.max_rows_per_bucket=8"], "train.min_rows_per_bucket"),
        (["data.val_ratio=0.9", "data.test_ratio=0.2"], "val + test"),
        (["data.val_ratio=1.0"], "data.val_ratio"),
        (["model.layers=[4,0]"], "model.layers"),
        (["guard.max_update_norm=-1"], "guard.max_update_norm"),
        (["run.checkpoint_every=0"], "run.checkpoint_every"),
        (['data.kind="csv"'], "data.path"),
    ],
)
def test_post_init_checks(tmp_path, overrides, needle):
    path = _write(tmp_path, BASE)
    msg = _error(path, overrides)
    assert needle in msg
    assert str(path) in msg


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nope.toml"
    msg = _error(path)
    assert str(path) in msg
    assert "not found" in msg


def test_invalid_toml_names_file(tmp_path):
    path = _write(tmp_path, "[train\nrounds = = 2\n")
    msg = _error(path)
    assert str(path) in msg
    assert "invalid TOML" in msg


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))
)
def test_every_shipped_config_and_variant_validates(path):
    from fedrec.tables import variants

    cfg = load_config(path)
    assert cfg.train.rounds >= 1
    # real data by name (fedrec data fetch), never by a path beside this checkout
    assert cfg.data.kind == "synthetic" or (cfg.data.name and not cfg.data.path)
    for label, v in variants(cfg, source=str(path)) if cfg.variants else []:
        assert v.run.name == label


def test_users_division_selects_private_clients():
    from fedrec.build import build_engine
    from fedrec.config import config_from_raw

    base = {"data": {"options": {"n_users": 40, "n_items": 30}}}
    all_ = build_engine(config_from_raw(base))
    raw = {
        "data": {
            "options": {"n_users": 40, "n_items": 30},
            "users": {"clients": "private", "open_ratio": 0.25},
        }
    }
    priv = build_engine(config_from_raw(raw))
    raw["data"]["users"]["clients"] = "open"
    opn = build_engine(config_from_raw(raw))
    assert all_.fed.n_clients == 40
    assert (priv.fed.n_clients, opn.fed.n_clients) == (30, 10)  # round(0.25·40) open
    p = set(np.flatnonzero(priv.fed.client_of_user >= 0))
    o = set(np.flatnonzero(opn.fed.client_of_user >= 0))
    assert not p & o and len(p | o) == 40


def test_attribute_division_needs_values():
    from fedrec.config import config_from_raw

    with pytest.raises(ConfigError, match="attribute"):
        config_from_raw({"data": {"users": {"style": "attribute"}}})
