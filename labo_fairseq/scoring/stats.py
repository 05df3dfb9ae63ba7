"""Statistics of results: mean ± std over seeds, and significance tests of one system against another.

Every test works on per-sentence sufficient statistics of a sacrebleu metric (BLEU: hypothesis and
reference length, then matches and totals of 1- to 4-grams; :func:`sentence_stats`), which the
evaluate command stores beside each result, so a test needs no references and no text.

- :func:`paired_bootstrap` and :func:`paired_ar`: one seed of A against one seed of B, exactly as
  sacrebleu's ``PairedTest`` computes them (same resampling, same RNG seed 12345, same p-value).
- :func:`seed_bootstrap`: several seeds of A against several seeds of B on the same test set. Each
  bootstrap sample draws one multiset of sentence indices and applies it to every seed of both
  systems (the seeds translate the same sentences); the statistic is
  ``mean_seeds score(B) − mean_seeds score(A)``. It reports that difference, its 95% percentile
  interval, and a two-sided p-value for "no difference" (the bootstrap distribution shifted to mean 0).
  The trained models stay fixed: it measures the test set's sampling, not one training run's
  difference from another.
- :func:`seed_permutation`: the per-seed corpus scores of A against those of B, an exact permutation
  test over the training seeds (the variation between training runs).
- :func:`holm`: p-values of one comparison made on several test sets, adjusted for the number made.
"""

import math
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

SEED = 12345  # sacrebleu's default SACREBLEU_SEED


def mean_std(values: Sequence[float]) -> Tuple[float, Optional[float]]:
    """Mean and sample standard deviation (n − 1); std is None for one value."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def mean_std_text(values: Sequence[float], digits: int = 2) -> str:
    """``mean ± std (n=N)``, or ``–`` without values."""
    if not values:
        return "–"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "") + f" (n={len(values)})"


def format_p(p: float, samples: int) -> str:
    """A p-value at the precision its number of samples supports: 1,000 samples -> 3 decimals, and
    ``< 0.001`` where no sample reached the observed difference."""
    digits = max(1, math.ceil(math.log10(samples)))
    if p <= 1.0 / (samples + 1) + 1e-12:
        return f"< {10 ** -digits:.{digits}f}"
    return f"{p:.{digits}f}"


def holm(p_values: Sequence[float]) -> List[float]:
    """Holm's step-down adjustment of m p-values (family-wise error): the i-th smallest becomes
    ``max_{j <= i} min(1, (m − j + 1) p_(j))``, returned in the input's order."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    out, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        out[i] = running
    return out


def metric(name: str, lowercase: bool = False):
    """The sacrebleu metric object of a stored statistic: ``bleu`` (tokenize none: the statistics
    are of already-tokenized text), ``sacrebleu`` (13a) or ``chrf``."""
    from sacrebleu.metrics import BLEU, CHRF

    if name == "bleu":
        return BLEU(tokenize="none", force=True, lowercase=lowercase)
    if name == "sacrebleu":
        return BLEU(lowercase=lowercase)
    if name == "chrf":
        return CHRF(lowercase=lowercase)
    raise ValueError(f"unknown metric {name!r}: bleu, sacrebleu or chrf")


def sentence_stats(m, hyps: Sequence[str], refs: Sequence[str]) -> List[List[int]]:
    """Per-sentence sufficient statistics of sacrebleu metric ``m`` (one reference per sentence)."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    return [[int(x) for x in row] for row in m._extract_corpus_statistics(list(hyps), [list(refs)])]


def corpus_score(m, stats) -> float:
    """The corpus score from summed sufficient statistics."""
    import numpy as np

    return float(m._compute_score_from_stats(np.asarray(stats, dtype="float32").sum(0)).score)


def _as_array(stats):
    import numpy as np

    a = np.asarray(stats, dtype="float32")
    if a.ndim != 2 or len(a) == 0:
        raise ValueError("sufficient statistics must be a non-empty sentences x fields table")
    return a


def _p_value(samples, observed: float) -> float:
    """sacrebleu's ``_compute_p_value``: (1 + #{samples > observed}) / (n + 1)."""
    import numpy as np

    return (int(np.sum(samples > observed)) + 1) / (len(samples) + 1)


def paired_bootstrap(m, base, system, samples: int = 1000, seed: int = SEED) -> Dict:
    """sacrebleu's paired bootstrap resampling (``PairedTest(test_type='bs')``) of ``system``
    against ``base``, from their per-sentence statistics."""
    import numpy as np

    a, b = _as_array(base), _as_array(system)
    if a.shape != b.shape:
        raise ValueError(f"statistics of {len(a)} and {len(b)} sentences: not the same test set")
    rng = np.random.default_rng(seed)
    idxs = rng.choice(len(a), size=(samples, len(a)), replace=True)
    score_a, score_b = corpus_score(m, a), corpus_score(m, b)
    scores_a = np.array([m._compute_score_from_stats(s.sum(0)).score for s in a[idxs]])
    scores_b = np.array([m._compute_score_from_stats(s.sum(0)).score for s in b[idxs]])
    diffs = np.abs(scores_b - scores_a)
    p = _p_value(diffs - diffs.mean(), abs(score_b - score_a))
    return {"test": "paired bootstrap (sacrebleu)", "base": round(score_a, 4), "system": round(score_b, 4),
            "delta": round(score_b - score_a, 4), "p_value": p, "p": format_p(p, samples), "samples": samples,
            "seed": seed}


def paired_ar(m, base, system, samples: int = 10000, seed: int = SEED) -> Dict:
    """sacrebleu's paired approximate randomization (``PairedTest(test_type='ar')``)."""
    import numpy as np

    a, b = _as_array(base), _as_array(system)
    if a.shape != b.shape:
        raise ValueError(f"statistics of {len(a)} and {len(b)} sentences: not the same test set")
    rng = np.random.default_rng(seed)
    pos = rng.integers(2, size=(samples, len(a)), dtype=bool)
    a64, b64 = a.astype("int64"), b.astype("int64")
    shuf_a, shuf_b = pos @ a64 + ~pos @ b64, ~pos @ a64 + pos @ b64
    scores_a = np.array([m._compute_score_from_stats(x).score for x in shuf_a])
    scores_b = np.array([m._compute_score_from_stats(x).score for x in shuf_b])
    score_a, score_b = corpus_score(m, a), corpus_score(m, b)
    p = _p_value(np.abs(scores_a - scores_b), abs(score_b - score_a))
    return {"test": "paired approximate randomization (sacrebleu)", "base": round(score_a, 4),
            "system": round(score_b, 4), "delta": round(score_b - score_a, 4), "p_value": p,
            "p": format_p(p, samples), "samples": samples, "seed": seed}


def seed_bootstrap(m, base_seeds: Sequence, system_seeds: Sequence, samples: int = 1000, seed: int = SEED) -> Dict:
    """Seed-aware paired bootstrap of B (``system_seeds``) against A (``base_seeds``): one index
    multiset per sample, applied to every seed of both; statistic: difference of seed-averaged corpus
    scores. Returns the observed difference, the 95% percentile interval and the two-sided p-value
    ``(1 + #{|d_b − mean(d)| ≥ |d|}) / (samples + 1)``."""
    import numpy as np

    if not base_seeds or not system_seeds:
        raise ValueError("each system needs at least one seed")
    arrays = [_as_array(s) for s in (*base_seeds, *system_seeds)]
    n = len(arrays[0])
    if any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError("every seed of both systems must be scored on the same test set (same sentences)")
    rng = np.random.default_rng(seed)
    idxs = rng.choice(n, size=(samples, n), replace=True)
    counts = np.zeros((samples, n), dtype="float64")
    np.add.at(counts, (np.repeat(np.arange(samples), n), idxs.ravel()), 1.0)
    # each sample's summed statistics of every seed: counts @ stats (exact: integer counts)
    sums = [counts @ a.astype("float64") for a in arrays]
    k = len(base_seeds)

    def scores(rows) -> np.ndarray:
        return np.array([m._compute_score_from_stats(r).score for r in rows])

    per = [scores(s) for s in sums]
    d_samples = np.mean(per[k:], axis=0) - np.mean(per[:k], axis=0)
    full = [corpus_score(m, a) for a in arrays]
    observed = float(np.mean(full[k:]) - np.mean(full[:k]))
    extreme = int(np.sum(np.abs(d_samples - d_samples.mean()) >= abs(observed) - 1e-9))
    p = (extreme + 1) / (samples + 1)
    lo, hi = np.percentile(d_samples, [2.5, 97.5])
    return {"test": "seed-aware paired bootstrap (one index set per sample for every seed of both systems)",
            "delta": round(observed, 4), "ci95": [round(float(lo), 4), round(float(hi), 4)], "p_value": p,
            "p": format_p(p, samples), "samples": samples, "seed": seed, "sentences": n,
            "seeds": [k, len(system_seeds)], "base_scores": [round(x, 4) for x in full[:k]],
            "system_scores": [round(x, 4) for x in full[k:]]}


def seed_permutation(base: Sequence[float], system: Sequence[float]) -> Dict:
    """Exact permutation test over training seeds: B's per-seed corpus scores (``system``) against
    A's (``base``), statistic ``mean(B) − mean(A)``, two-sided p = the share of all splits of the
    pooled scores into groups of those sizes with ``|Δ| ≥ |observed|`` (the observed split included:
    5 + 5 seeds, 252 splits, p ≥ 2/252; 3 + 3 seeds, 20 splits, p ≥ 0.1)."""
    from itertools import combinations

    k, pooled = len(base), [float(x) for x in (*base, *system)]
    if not k or k == len(pooled):
        raise ValueError("each system needs at least one seed")
    splits = math.comb(len(pooled), k)
    if splits > 1_000_000:
        raise ValueError(f"{splits} splits of {len(pooled)} seeds: too many to enumerate")
    total, rest = sum(pooled), len(pooled) - k

    def delta(base_sum: float) -> float:  # mean(B) − mean(A), A the group summing to base_sum
        return (total - base_sum) / rest - base_sum / k

    observed = delta(sum(pooled[:k]))
    deltas = [delta(sum(pooled[i] for i in c)) for c in combinations(range(len(pooled)), k)]
    p = sum(abs(d) >= abs(observed) - 1e-9 for d in deltas) / len(deltas)
    return {"test": "exact permutation test over training seeds (difference of the mean per-seed corpus score)",
            "delta": round(observed, 4), "p_value": p, "p": f"{p:.3f}", "splits": len(deltas),
            "min_p": round(2 / len(deltas) if k == rest else 1 / len(deltas), 4), "seeds": [k, rest]}
