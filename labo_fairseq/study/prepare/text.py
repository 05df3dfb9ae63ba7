"""Line-level text processing of fairseq's translation recipes, in Python (no perl, no git clones).

Each function states which line of fairseq's ``examples/translation/prepare-*.sh`` it replaces.
Whitespace classes are ASCII (``[ \\t\\n\\r\\f\\v]``) like GNU sed's ``\\s`` and grep, not Python's
Unicode ``\\s``.
"""

import re
import unicodedata
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

_WS = r"[ \t\n\r\f\v]"
_SEG_OPEN = re.compile(r'<seg id="[0-9]*">' + _WS + "*")
_SEG_CLOSE = re.compile(_WS + r"*</seg>" + _WS + "*")


def xml_segments(lines: Iterable[str]) -> Iterator[str]:
    """IWSLT/WMT XML or SGML dev/test file -> one segment per line::

        grep '<seg id' | sed -e 's/<seg id="[0-9]*">\\s*//g' | sed -e 's/\\s*<\\/seg>\\s*//g' | sed -e "s/\\’/\\'/g"
    """
    for line in lines:
        line = line.rstrip("\n")
        if "<seg id" not in line:
            continue
        line = _SEG_OPEN.sub("", line)
        line = _SEG_CLOSE.sub("", line)
        yield line.replace("\u2019", "'")


IWSLT14_TRAIN_DROP = ("<url>", "<talkid>", "<keywords>")
IWSLT17_TRAIN_DROP = IWSLT14_TRAIN_DROP + ("<speaker>", "<reviewer", "<translator", "<doc", "</doc>")
_TAGS_REMOVED = ("<title>", "</title>", "<description>", "</description>")


def train_tags_lines(lines: Iterable[str], drop: Sequence[str] = IWSLT14_TRAIN_DROP, strip: bool = False) -> Iterator[str]:
    """IWSLT ``train.tags.*`` -> text lines: drop lines containing any of ``drop``, delete the
    title/description tags; ``strip`` also trims leading/trailing ASCII whitespace (IWSLT'17)."""
    for line in lines:
        line = line.rstrip("\n")
        if any(tag in line for tag in drop):
            continue
        for tag in _TAGS_REMOVED:
            line = line.replace(tag, "")
        if strip:
            line = line.strip(" \t\n\r\f\v")
        yield line


def _sacremoses_tokenizer(lang: str):
    from sacremoses import MosesTokenizer as _SacreMosesTokenizer

    class _Tokenizer(_SacreMosesTokenizer):
        def handles_nonbreaking_prefixes(self, text):
            # tokenizer.perl splits the period off the sentence's last word unconditionally
            # ("split last words independently as they are unlikely to be non-breaking prefixes");
            # sacremoses 0.x lacks that rule ("... in the u.s.a." stayed "u.s.a.").
            tokens = super().handles_nonbreaking_prefixes(text).split()
            if tokens:
                last = re.search(r"^(\S+)\.$", tokens[-1])
                if last:
                    tokens[-1] = last.group(1) + " ."
            return " ".join(tokens)

    return _Tokenizer(lang=lang)


class MosesTokenizer:
    """``tokenizer.perl -l LANG [-a]`` (Moses escaping on), through sacremoses; optionally with
    ``normalize-punctuation.perl LANG`` and ``remove-non-printing-char.perl`` first (WMT)."""

    def __init__(self, lang: str, aggressive_dash_splits: bool = False, normalize: bool = False):
        from sacremoses import MosesPunctNormalizer

        self.tok = _sacremoses_tokenizer(lang)
        self.aggressive = aggressive_dash_splits
        self.norm = MosesPunctNormalizer(lang=lang) if normalize else None

    def __call__(self, line: str) -> str:
        if self.norm is not None:
            line = remove_non_printing_chars(self.norm.normalize(line))
        return self.tok.tokenize(line, aggressive_dash_splits=self.aggressive, return_str=True, escape=True)


def remove_non_printing_chars(line: str) -> str:
    """``remove-non-printing-char.perl``: ``s/\\p{C}/ /g``, every character of Unicode category C
    (control, format, unassigned, private use, surrogate; tabs included) becomes a space."""
    return "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in line)


def clean_corpus(pairs: Iterable[Tuple[str, str]], lo: int, hi: int, ratio: float,
                 max_word_length: int = 1000) -> Iterator[Tuple[str, str]]:
    """``clean-corpus-n.perl -ratio RATIO corpus l1 l2 out LO HI`` on (l1, l2) line pairs.

    Removes ``|`` (unless the first pair contains one: a factored corpus), collapses whitespace,
    drops pairs with an empty side, a side of fewer than LO or more than HI words, a length ratio
    above RATIO either way, or a word longer than ``max_word_length`` characters.
    """
    factored: Optional[bool] = None
    long_word = re.compile(r"[^\s|]{%d}" % (max_word_length + 1))
    for f, e in pairs:
        if factored is None:
            factored = "|" in e or "|" in f
        out = []
        for side in (f, e):
            if not factored:
                side = side.replace("|", "")
            side = re.sub(r"\s+", " ", side)
            if side.startswith(" "):
                side = side[1:]
            if side.endswith(" "):
                side = side[:-1]
            out.append(side)
        f, e = out
        if not f or not e:
            continue
        fc, ec = len(f.split(" ")), len(e.split(" "))
        if ec > hi or fc > hi or ec < lo or fc < lo:
            continue
        if ec / fc > ratio or fc / ec > ratio:
            continue
        if long_word.search(e) or long_word.search(f):
            continue
        yield f, e


def every_nth(lines: Sequence[str], n: int) -> Tuple[List[str], List[str]]:
    """``awk 'NR%n == 0'`` / ``awk 'NR%n != 0'``: (every n-th line, the rest), 1-based like awk."""
    picked = [line for i, line in enumerate(lines, 1) if i % n == 0]
    rest = [line for i, line in enumerate(lines, 1) if i % n != 0]
    return picked, rest
