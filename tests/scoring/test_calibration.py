"""labo_fairseq.scoring.calibration on constructed inputs with known answers."""

import math

import numpy as np
import pytest
import torch

from labo_fairseq.scoring.calibration import (
    TemperatureScan,
    bin_index,
    expected_calibration_error,
    reliability,
)


def test_perfectly_calibrated_is_zero():
    # In each bin, accuracy equals the confidence exactly: 10 tokens at 0.3 with 3 correct, etc.
    conf, correct = [], []
    for c, n in ((0.3, 10), (0.5, 4), (0.9, 20), (1.0, 5)):
        k = round(c * n)
        conf += [c] * n
        correct += [1] * k + [0] * (n - k)
    assert expected_calibration_error(conf, correct) == pytest.approx(0.0, abs=1e-12)


def test_always_confident_and_wrong():
    assert expected_calibration_error([0.95] * 7, [0] * 7) == pytest.approx(0.95)
    assert expected_calibration_error(torch.ones(4), torch.zeros(4)) == pytest.approx(1.0)


def test_known_mixed_value_and_empty_bins():
    # bin of 0.2: acc 1/2 vs conf 0.2 -> 0.3 * 2/5; bin of 0.8: acc 1/3 vs conf 0.8 -> 0.4667 * 3/5
    ece = expected_calibration_error(np.array([0.2, 0.2, 0.8, 0.8, 0.8]), np.array([1, 0, 1, 0, 0]))
    assert ece == pytest.approx(0.3 * 2 / 5 + (0.8 - 1 / 3) * 3 / 5)
    rel = reliability([0.2, 0.8], [1, 0], n_bins=15)
    assert sum(c > 0 for c in rel["count"]) == 2 and math.isnan(rel["accuracy"][14])


def test_edges_zero_and_one_and_bin_boundaries():
    values = torch.tensor([0.0, 1e-9, 1 / 15, 1 / 15 + 1e-9, 0.5, 1.0], dtype=torch.float64)
    idx = bin_index(values, 15).tolist()
    assert idx == [0, 0, 0, 1, 7, 14]  # (lo, hi]: 1/15 is in bin 0, 0 also in bin 0, 1 in the last
    with pytest.raises(ValueError):
        bin_index([1.5])
    with pytest.raises(ValueError):
        expected_calibration_error([0.5, 0.5], [1])


def test_metric_and_plot_share_the_binning():
    conf = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    correct = (torch.rand(1000, generator=torch.Generator().manual_seed(1)) < conf).double()
    rel = reliability(conf, correct)
    idx = bin_index(conf)
    assert rel["count"] == torch.bincount(idx, minlength=15).double().tolist()


@pytest.mark.slow  # tens of seconds of sampling and scanning
def test_temperature_scan_recovers_the_generating_temperature():
    g = torch.Generator().manual_seed(0)
    true_t = 1.6
    z = torch.randn(20000, 30, generator=g) * 3
    y = torch.multinomial(torch.softmax(z / true_t, -1), 1, generator=g).squeeze(-1)
    scan = TemperatureScan()
    for zb, yb in zip(z.split(4096), y.split(4096)):  # streamed in batches
        scan.update(zb, yb)
    res = scan.result()
    assert res["best_nll"]["temperature"] == pytest.approx(true_t, abs=0.05)
    assert res["best_nll"]["nll"] < res["t1"]["nll"]
    assert res["best_ece"]["ece"] < res["t1"]["ece"]
    # The scan's ECE at T = 1 equals the plain function's on the same predictions.
    conf = torch.softmax(z, -1).max(-1).values
    assert res["t1"]["ece"] == pytest.approx(expected_calibration_error(conf, z.argmax(-1).eq(y)), abs=1e-9)
