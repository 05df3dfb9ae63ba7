"""TER (Snover et al., 2006) with its word alignment, to label hypothesis words correct or wrong.

TER = (shifts + insertions + deletions + substitutions) / reference words. As TERCOM (and sacrebleu,
whose heuristics this follows so that the edit counts agree): greedily apply the phrase shift that
lowers the word-level edit distance most (phrases of <= 10 words that match the reference, moved at
most 50 positions, only where hypothesis and reference are both wrong), until none helps; then the
edit distance (a band of 25 cells around the diagonal, as TERCOM's beam) gives the alignment.

A hypothesis word is *correct* if the final alignment matches it to an identical reference word
(after its shift, if it was shifted), *wrong* if it is substituted or has no reference word.
Words are compared exactly (case-sensitive); tokenize and lowercase before if you want otherwise.
"""

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

MAX_SHIFT_SIZE = 10
MAX_SHIFT_DIST = 50
BEAM_WIDTH = 25
MAX_SHIFT_CANDIDATES = 1000
_INF = float("inf")

# Operations rewriting the hypothesis into the reference: match, substitution, hypothesis word
# without a reference word ("hyp"), reference word without a hypothesis word ("ref").
MATCH, SUB, HYP_ONLY, REF_ONLY = " ", "s", "h", "r"


@dataclass
class TerAlignment:
    edits: int              # shifts + edit distance after the shifts
    shifts: int
    ref_length: int
    correct: List[bool]     # per word of the original hypothesis

    @property
    def score(self) -> float:
        """TER in [0, inf): edits per reference word (sacrebleu reports 100x this)."""
        return self.edits / self.ref_length if self.ref_length else float(self.edits > 0)


class _Distance:
    """Banded edit distance to a fixed reference, with the matrix rows cached by hypothesis prefix
    (a shift leaves the prefix before it unchanged, so most rows are reused)."""

    def __init__(self, ref: Sequence[str]):
        self.ref = list(ref)
        self.cache = {}  # word -> (child cache, row)

    def __call__(self, hyp: Sequence[str]) -> Tuple[int, str]:
        ref, n, m = self.ref, len(hyp), len(self.ref)
        rows = [[(j, REF_ONLY) for j in range(m + 1)]]
        node = self.cache
        for w in hyp:  # longest cached prefix
            if w not in node:
                break
            node, row = node[w]
            rows.append(row)
        ratio = m / n if n else 1.0
        beam = math.ceil(ratio / 2 + BEAM_WIDTH) if BEAM_WIDTH < ratio / 2 else BEAM_WIDTH
        for i in range(len(rows), n + 1):
            diag = math.floor(i * ratio)
            lo, hi = max(0, diag - beam), (m + 1 if i == n else min(m + 1, diag + beam))
            prev, row = rows[i - 1], [(_INF, "")] * (m + 1)
            word = hyp[i - 1]
            for j in range(lo, hi):
                if j == 0:
                    row[0] = (prev[0][0] + 1, HYP_ONLY)
                    continue
                same = word == ref[j - 1]
                best = (prev[j - 1][0] + (0 if same else 1), MATCH if same else SUB)
                if prev[j][0] + 1 < best[0]:
                    best = (prev[j][0] + 1, HYP_ONLY)
                if row[j - 1][0] + 1 < best[0]:
                    best = (row[j - 1][0] + 1, REF_ONLY)
                row[j] = best
            node[word] = ({}, row)
            node = node[word][0]
            rows.append(row)
        ops, i, j = [], n, m
        while i > 0 or j > 0:
            op = rows[i][j][1]
            ops.append(op)
            if op in (MATCH, SUB):
                i, j = i - 1, j - 1
            elif op == HYP_ONLY:
                i -= 1
            else:
                j -= 1
        return int(rows[n][m][0]), "".join(reversed(ops))


def edit_distance(hyp: Sequence[str], ref: Sequence[str]) -> Tuple[int, str]:
    """(distance, trace): Levenshtein distance restricted to TERCOM's band, and its operations in order.

    Ties prefer match/substitution, then a hypothesis word without reference, then a reference word
    without hypothesis (sacrebleu's order, hence the same alignment)."""
    return _Distance(ref)(hyp)


def _alignment(trace: str):
    """ref position -> hyp position it is aligned to (or the last hyp position before it), and error flags."""
    ih = ir = -1
    align, ref_err, hyp_err = {}, [], []
    for op in trace:
        if op in (MATCH, SUB):
            ih, ir = ih + 1, ir + 1
            align[ir] = ih
            hyp_err.append(op == SUB)
            ref_err.append(op == SUB)
        elif op == HYP_ONLY:
            ih += 1
            hyp_err.append(True)
        else:
            ir += 1
            align[ir] = ih
            ref_err.append(True)
    return align, ref_err, hyp_err


def _move(seq: list, start: int, length: int, target: int) -> list:
    """``seq`` with ``seq[start:start+length]`` moved to before index ``target`` (sacrebleu's convention)."""
    if target < start:
        return seq[:target] + seq[start:start + length] + seq[target:start] + seq[start + length:]
    if target > start + length:
        return seq[:start] + seq[start + length:target] + seq[start:start + length] + seq[target:]
    return seq[:start] + seq[start + length:length + target] + seq[start:start + length] + seq[length + target:]


def _matching_phrases(hyp: Sequence[str], ref: Sequence[str]):
    for sh in range(len(hyp)):
        for sr in range(len(ref)):
            if abs(sr - sh) > MAX_SHIFT_DIST:
                continue
            k = 0
            while k < MAX_SHIFT_SIZE and sh + k < len(hyp) and sr + k < len(ref) and hyp[sh + k] == ref[sr + k]:
                k += 1
                yield sh, sr, k


def _best_shift(words: list, order: list, ref: Sequence[str], dist: _Distance, checked: int):
    """(gain, shifted words, their original positions, candidates checked so far) of the best shift."""
    score, trace = dist(words)
    align, ref_err, hyp_err = _alignment(trace)
    best = None
    for sh, sr, k in _matching_phrases(words, ref):
        if not any(hyp_err[sh:sh + k]) or not any(ref_err[sr:sr + k]):
            continue  # shift only words that are wrong to where the reference is wrong
        if sh <= align[sr] < sh + k:
            continue
        prev = -1
        for off in range(-1, k):
            if sr + off == -1:
                target = 0
            elif sr + off in align:
                target = align[sr + off] + 1
            else:
                break
            if target == prev:
                continue
            prev = target
            moved = _move(words, sh, k, target)
            # TERCOM's ranking: largest gain, then longest phrase, earliest phrase, earliest target
            cand = (score - dist(moved)[0], k, -sh, -target)
            checked += 1
            if best is None or cand > best[0]:
                best = (cand, moved, _move(order, sh, k, target))
        if checked >= MAX_SHIFT_CANDIDATES:
            break
    if best is None:
        return 0, words, order, checked
    return best[0][0], best[1], best[2], checked


def align(hyp: Sequence[str], ref: Sequence[str]) -> TerAlignment:
    """TER's shifts and edit distance of ``hyp`` against ``ref`` (lists of words), with per-word labels."""
    hyp, ref = list(hyp), list(ref)
    if not ref:
        return TerAlignment(len(hyp), 0, 0, [False] * len(hyp))
    words, order, shifts, checked = hyp, list(range(len(hyp))), 0, 0
    dist_to_ref = _Distance(ref)
    while True:
        gain, moved, moved_order, checked = _best_shift(words, order, ref, dist_to_ref, checked)
        if checked >= MAX_SHIFT_CANDIDATES or gain <= 0:
            break
        words, order, shifts = moved, moved_order, shifts + 1
    dist, trace = dist_to_ref(words)
    correct = [False] * len(hyp)
    pos = -1
    for op in trace:
        if op != REF_ONLY:
            pos += 1
            correct[order[pos]] = op == MATCH
    return TerAlignment(shifts + dist, shifts, len(ref), correct)


def labels(hyp: str, ref: str) -> List[bool]:
    """Correct/wrong per whitespace-separated hypothesis word."""
    return align(hyp.split(), ref.split()).correct
