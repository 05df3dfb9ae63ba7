"""Calibration of next-token predictions (Müller et al., 2019): ECE, reliability diagram, temperature scaling.

Binning is written once (:func:`bin_index`) and shared by the metric and the plot: ``n_bins``
equal-width bins ``(lo, hi]`` over [0, 1], with confidence 0 in the first bin.
``ECE = sum_b |B_b|/n * |acc(B_b) - conf(B_b)|``.
"""

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor


def _as_tensor(x) -> Tensor:
    return x.detach().double().reshape(-1) if isinstance(x, Tensor) else torch.as_tensor(x, dtype=torch.float64).reshape(-1)


def bin_index(confidences, n_bins: int = 15) -> Tensor:
    """Bin of each confidence: ``b`` such that ``b/n < c <= (b+1)/n``; ``c = 0`` goes to bin 0."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    c = _as_tensor(confidences)
    if c.numel() and (c.min() < 0 or c.max() > 1 or torch.isnan(c).any()):
        raise ValueError("confidences must lie in [0, 1]")
    upper = torch.arange(1, n_bins + 1, dtype=torch.float64) / n_bins  # hi edges 1/n, 2/n, ..., 1
    return torch.searchsorted(upper, c.contiguous(), right=False).clamp_(0, n_bins - 1)


def _bin_sums(idx: Tensor, conf: Tensor, correct: Tensor, n_bins: int):
    """Per bin: token count, sum of confidences, sum of correctness."""
    zeros = torch.zeros(n_bins, dtype=torch.float64)
    return (zeros.index_add(0, idx, torch.ones_like(conf)), zeros.index_add(0, idx, conf),
            zeros.index_add(0, idx, correct))


def _reliability_from_sums(count: Tensor, conf_sum: Tensor, acc_sum: Tensor) -> Dict[str, List[float]]:
    n_bins = count.numel()
    nan = torch.full_like(count, float("nan"))
    return {
        "edges": [i / n_bins for i in range(n_bins + 1)],
        "count": count.tolist(),
        "confidence": torch.where(count > 0, conf_sum / count.clamp(min=1), nan).tolist(),
        "accuracy": torch.where(count > 0, acc_sum / count.clamp(min=1), nan).tolist(),
    }


def reliability(confidences, correct, n_bins: int = 15) -> Dict[str, List[float]]:
    """Per bin: ``count``, mean ``confidence`` and ``accuracy`` (NaN for empty bins), and bin edges."""
    c, k = _as_tensor(confidences), _as_tensor(correct)
    if c.shape != k.shape:
        raise ValueError(f"confidences and correct differ in size: {c.numel()} vs {k.numel()}")
    return _reliability_from_sums(*_bin_sums(bin_index(c, n_bins), c, k, n_bins))


def ece_from_reliability(rel: Dict[str, List[float]]) -> float:
    n = sum(rel["count"])
    if n == 0:
        return float("nan")
    return sum(cnt / n * abs(a - c) for cnt, a, c in zip(rel["count"], rel["accuracy"], rel["confidence"]) if cnt > 0)


def expected_calibration_error(confidences, correct, n_bins: int = 15) -> float:
    """ECE of max-probabilities ``confidences`` with 0/1 ``correct`` (1-D arrays or tensors)."""
    return ece_from_reliability(reliability(confidences, correct, n_bins))


def temperature_grid(lo: float = 0.5, hi: float = 3.0, step: float = 0.01) -> List[float]:
    n = int(round((hi - lo) / step))
    return [round(lo + i * step, 6) for i in range(n + 1)]


def scan_with_t1(lo: float, hi: float, step: float, n_bins: int) -> "TemperatureScan":
    """A :class:`TemperatureScan` over ``temperature_grid(lo, hi, step)`` with T = 1 always in it
    (the uncalibrated model is reported whatever the grid)."""
    return TemperatureScan(sorted(set(temperature_grid(lo, hi, step)) | {1.0}), n_bins)


@dataclass
class TemperatureScan:
    """Streams batches of logits and gold targets; accumulates, for every temperature T of the grid,
    the NLL of ``softmax(z / T)`` and the statistics of its ECE (the argmax, hence correctness, does
    not depend on T). Nothing of size (tokens x V) is kept."""

    temperatures: Sequence[float] = field(default_factory=temperature_grid)
    n_bins: int = 15

    def __post_init__(self):
        if not self.temperatures or min(self.temperatures) <= 0:
            raise ValueError("temperatures must be a non-empty list of positive numbers")
        t = len(self.temperatures)
        self.tokens = 0
        self.nll = torch.zeros(t, dtype=torch.float64)
        self.count = torch.zeros(t, self.n_bins, dtype=torch.float64)
        self.conf = torch.zeros(t, self.n_bins, dtype=torch.float64)
        self.acc = torch.zeros(t, self.n_bins, dtype=torch.float64)

    @torch.no_grad()
    def update(self, logits: Tensor, target: Tensor) -> None:
        z = logits.detach().float().reshape(-1, logits.size(-1))
        y = target.reshape(-1)
        correct = z.argmax(-1).eq(y).double().cpu()
        z_gold = z.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        z_max = z.max(-1).values
        for i, temp in enumerate(self.temperatures):
            lse = torch.logsumexp(z / temp, -1)
            self.nll[i] += (lse - z_gold / temp).double().sum().cpu()
            conf = (z_max / temp - lse).exp().double().clamp_(0, 1).cpu()
            count, conf_sum, acc_sum = _bin_sums(bin_index(conf, self.n_bins), conf, correct, self.n_bins)
            self.count[i] += count
            self.conf[i] += conf_sum
            self.acc[i] += acc_sum
        self.tokens += y.numel()

    def reliability_at(self, i: int) -> Dict[str, List[float]]:
        return _reliability_from_sums(self.count[i], self.conf[i], self.acc[i])

    def ece(self, i: int) -> float:
        return ece_from_reliability(self.reliability_at(i))

    def result(self) -> Dict:
        """Best temperatures for NLL and for ECE on the grid, with the T = 1 baseline."""
        if self.tokens == 0:
            raise ValueError("no tokens seen")
        nll = (self.nll / self.tokens).tolist()
        eces = [self.ece(i) for i in range(len(self.temperatures))]
        i_nll = min(range(len(nll)), key=nll.__getitem__)
        i_ece = min(range(len(eces)), key=eces.__getitem__)
        i_one = self._index_of(1.0)
        return {
            "tokens": self.tokens, "n_bins": self.n_bins,
            "grid": {"min": min(self.temperatures), "max": max(self.temperatures), "size": len(self.temperatures)},
            "t1": None if i_one is None else {"nll": nll[i_one], "ece": eces[i_one]},
            "best_nll": {"temperature": self.temperatures[i_nll], "nll": nll[i_nll], "ece": eces[i_nll]},
            "best_ece": {"temperature": self.temperatures[i_ece], "nll": nll[i_ece], "ece": eces[i_ece]},
            "curve": {"temperature": list(self.temperatures), "nll": nll, "ece": eces},
        }

    def _index_of(self, temp: float) -> Optional[int]:
        for i, t in enumerate(self.temperatures):
            if math.isclose(t, temp, abs_tol=1e-9):
                return i
        return None
