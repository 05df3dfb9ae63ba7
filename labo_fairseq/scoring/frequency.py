"""Frequency splits of a test set (Raunak et al., 2020; the paper's Table 4): a source sentence's
score is the mean, over its tokens, of each token's count in the training source text; sentences are
ordered from most to least frequent and cut into parts. Shared by the freq-splits, beam-probs and
inference-calibration commands."""

from collections import Counter
from typing import List, Sequence

SPLIT_NAMES = ("most frequent", "medium", "least frequent")


def frequency_scores(src_lines: Sequence[str], train_src_lines: Sequence[str]) -> List[float]:
    counts = Counter(tok for line in train_src_lines for tok in line.split())
    scores = []
    for line in src_lines:
        toks = line.split()
        scores.append(sum(counts[t] for t in toks) / len(toks) if toks else 0.0)
    return scores


def make_splits(scores: Sequence[float], parts: int = 3, split_size: int = 0) -> List[List[int]]:
    """Sentence indices per part, most frequent first (ties keep the original order)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    if split_size:
        return [order[k * split_size:(k + 1) * split_size] for k in range(parts) if order[k * split_size:(k + 1) * split_size]]
    base, extra = divmod(len(order), parts)
    out, start = [], 0
    for k in range(parts):
        end = start + base + (1 if k < extra else 0)
        out.append(order[start:end])
        start = end
    return out


def split_names(n: int) -> List[str]:
    return list(SPLIT_NAMES) if n == 3 else [f"part {k + 1}" for k in range(n)]
