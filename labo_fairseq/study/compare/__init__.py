"""The converged comparison of CE, LS and LABO on Multi30k de->en (``labo-fairseq compare``): what it
does is :mod:`labo_fairseq.study.compare.command`'s docstring, which is also its ``--help``."""

from labo_fairseq.scoring import stats as S
from labo_fairseq.study.compare.command import CompareOptions, main
from labo_fairseq.study.compare.report import (
    DATA,
    DATASET,
    METHODS,
    ReportError,
    ablations,
    build_report,
    default_tau,
    label,
    markdown,
    max_epoch,
    pairs,
    protocol_key,
    report_name,
    results_in,
)
from labo_fairseq.study.compare.runner import NOT_FINISHED, Compare, curves, plateau_epoch, status, write_report

__all__ = [
    "DATA", "DATASET", "METHODS", "NOT_FINISHED", "Compare", "CompareOptions", "ReportError", "S", "ablations",
    "build_report", "curves",
    "default_tau", "label", "main", "markdown", "max_epoch", "pairs", "plateau_epoch", "protocol_key", "report_name",
    "results_in", "status", "write_report",
]
