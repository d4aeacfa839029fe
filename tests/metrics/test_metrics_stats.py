import warnings

import numpy as np
import pytest

from fedrec.metrics import client_stats, mean_ignore_nan


def test_client_stats_mapping_with_nan_and_weights():
    values = {"a": 0.2, "b": np.nan, "c": 0.6, 1: 0.4}
    weights = {"a": 1.0, "b": 5.0, "c": 3.0, 1: 0.0}
    out = client_stats(values, weights)
    assert set(out) == {"mean", "std", "min", "max", "gap", "worst"}
    assert out["mean"] == pytest.approx((0.2 * 1 + 0.6 * 3 + 0.4 * 0) / (1 + 3 + 0))
    # std: unweighted, ddof 0, over {0.2, 0.6, 0.4} (mean 0.4)
    assert out["std"] == pytest.approx(np.sqrt((0.2**2 + 0.2**2 + 0.0) / 3))
    assert out["min"] == pytest.approx(0.2)
    assert out["worst"] == pytest.approx(0.2)
    assert out["max"] == pytest.approx(0.6)
    assert out["gap"] == pytest.approx(0.4)


def test_client_stats_array_unweighted():
    out = client_stats(np.array([1.0, np.nan, 3.0, 2.0]))
    assert out["mean"] == pytest.approx(2.0)
    assert out["std"] == pytest.approx(np.sqrt(2 / 3))
    assert (out["min"], out["max"], out["gap"]) == pytest.approx((1.0, 3.0, 2.0))


def test_client_stats_array_weights_by_position():
    out = client_stats([1.0, np.nan, 3.0], weights=[3.0, 100.0, 1.0])
    assert out["mean"] == pytest.approx((1.0 * 3 + 3.0 * 1) / 4)


def test_client_stats_all_nan():
    out = client_stats({"a": np.nan})
    assert all(np.isnan(v) for v in out.values())
    with pytest.raises(ValueError):
        client_stats([1.0, 2.0], weights=[1.0])


def test_mean_ignore_nan():
    assert mean_ignore_nan(np.array([1.0, np.nan, 2.0])) == pytest.approx(1.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(mean_ignore_nan(np.array([np.nan, np.nan])))
        assert np.isnan(mean_ignore_nan(np.array([])))
