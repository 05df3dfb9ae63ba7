"""Every criterion hyper-parameter once: default, valid range, fairseq flag, help. Pure Python.

The pure losses, the fairseq criteria's dataclasses (their ``--help``), the Hugging Face
:class:`~labo_fairseq.hf.trainer.LossConfig` and the commands read their defaults and check their values
here, with one message format: ``NAME must be in RANGE, got VALUE``.
"""

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence


def _range_text(lo, hi, lo_open, hi_open) -> str:
    return f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def check_range(name: str, value, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False):
    """``value``, or ``ValueError`` naming ``name`` and the range unless ``lo (<|<=) value (<|<=) hi``
    (NaN never passes)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in {_range_text(lo, hi, lo_open, hi_open)}, got {value!r}") from None
    ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok or math.isnan(v):
        raise ValueError(f"{name} must be in {_range_text(lo, hi, lo_open, hi_open)}, got {value}")
    return value


@dataclass(frozen=True)
class HParam:
    """One hyper-parameter: its fairseq flag, default (None: unset), range and help."""

    flag: str
    default: Optional[float]
    lo: float
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    help: str = ""

    def check(self, value, name: Optional[str] = None):
        """``value`` (None passes where the default is None); ValueError naming ``name`` (default: the flag)."""
        name = name or self.flag
        if value is None and self.default is None:
            return None
        check_range(name, value, self.lo, self.hi, self.lo_open, self.hi_open or math.isinf(self.hi))
        if self.integer and (isinstance(value, bool) or not float(value).is_integer()):
            raise ValueError(f"{name} must be an integer in {self.range()}, got {value}")
        return value

    def range(self) -> str:
        return _range_text(self.lo, self.hi, self.lo_open, self.hi_open or math.isinf(self.hi))

    def describe(self) -> str:
        """The help text with the range: what a ``--help`` line says."""
        return f"{self.help}; in {self.range()}"


INF = math.inf
HP: Dict[str, HParam] = {
    "epsilon": HParam("--label-smoothing", 0.1, 0.0, 1.0, hi_open=True,
                      help="epsilon of uniform label smoothing, fairseq's convention (1-eps on the gold, "
                           "eps/(V-1) elsewhere): LS, and LABO's warm-up"),
    "tau": HParam("--labo-tau", 1.15, 0.0, INF, lo_open=True,
                  help="tau = beta/alpha: temperature of LABO's P* = softmax(log p / tau) (paper: 1.15, 1.25)"),
    "rho": HParam("--labo-rho", 0.5, 0.0, 1.0,
                  help="rho of LABO's adaptive alpha = (log V - rho H(p)) / log V (paper: 0.5 to 1; 0 gives alpha 1)"),
    "alpha": HParam("--labo-alpha", None, 0.0, 1.0,
                    help="a fixed LABO smoothing mass alpha; unset: the adaptive alpha (paper Eq. 16)"),
    "warmup_updates": HParam("--labo-warmup-updates", 5000, 0, integer=True,
                             help="optimizer updates trained with uniform label smoothing before LABO starts "
                                  "(paper: 5000 IWSLT, 10000 WMT); counted by the trainer, so --update-freq, "
                                  "validation and resume do not shift it"),
    "beta": HParam("--cp-beta", 0.1, 0.0, help="beta: weight of the entropy bonus, loss = NLL - beta H(p)"),
    "gamma": HParam("--focal-gamma", 1.0, 0.0, help="gamma of the focal loss -(1 - p_y)^gamma log p_y (paper: 1 or 2)"),
    "afl_gamma": HParam("--anti-focal-gamma", 1.0, 0.0,
                        help="gamma of the anti-focal loss -(1 + alpha p_y)^gamma log p_y (Raunak et al.: 1)"),
    "afl_alpha": HParam("--anti-focal-alpha", 0.5, 0.0,
                        help="alpha of the anti-focal loss -(1 + alpha p_y)^gamma log p_y (Raunak et al.: 0.5)"),
    "kd_alpha": HParam("--kd-alpha", 0.5, 0.0, 1.0,
                       help="weight of the distillation term: (1 - alpha) LS + alpha T^2 KL(teacher || student)"),
    "kd_temperature": HParam("--kd-temperature", 1.0, 0.0, INF, lo_open=True,
                             help="softmax temperature T of teacher and student in the distillation term"),
    "loss_chunk_tokens": HParam("--loss-chunk-tokens", 0, 0, integer=True,
                                help="tokens per chunk of the output layer fused with the loss, so that the (tokens x V) "
                                     "logits never exist whole (0: off, the model's own output layer)"),
    "kd_topk": HParam("--kd-topk", None, 1, integer=True,
                      help="keep the teacher's k most probable tokens, renormalized; unset: the full distribution"),
}
BY_FLAG: Dict[str, HParam] = {h.flag: h for h in HP.values()}


def default(key: str):
    return HP[key].default


def check_flags(argv: Sequence[str]) -> None:
    """Check every hyper-parameter flag of a fairseq-train argv (the last occurrence counts, as for
    argparse): ValueError naming the first bad one, before anything starts."""
    last: Dict[str, str] = {}
    for i, tok in enumerate(argv[:-1]):
        if tok in BY_FLAG:
            last[tok] = argv[i + 1]
    for flag, value in last.items():
        BY_FLAG[flag].check(value, flag)
