"""The converged comparison of CE, LS and LABO on Multi30k de->en (``labo-fairseq compare``).

A dataset config fixes the model and protocol (``--dataset``): ``multi30k_de_en_iwslt`` (default)
is the paper's IWSLT model scaled to the corpus, for a GPU; ``multi30k_de_en_small`` is the
quickstart's model trained to convergence, for a few CPU cores. Several seeds per method, the
checkpoint chosen by validation BLEU, beam 5 on test_2016_flickr, test_2017_flickr and
test_2017_mscoco. Steps, each through the project's own commands and each skipped when its output
exists:

  1. ``prepare multi30k.de-en`` (when the data-bin is missing; ``--source DIR`` for offline files);
  2. ``train`` of every run not finished, ``--parallel`` at a time (default: all at once), each
     evaluated as soon as it finishes (``evaluate``: BLEU, sacreBLEU and chrF);
  3. the report, from every result present: mean ± std per method and test set (n per cell, cells
     under 3 seeds marked), LS − CE, LABO − LS and each ablation of LABO − LABO with the seed-aware
     paired bootstrap (Holm's adjustment over the test sets) and, per seed pair, sacrebleu's paired
     bootstrap and approximate randomization (:mod:`labo_fairseq.scoring.stats`), validation NLL and training
     time per method, into ``RESULTS/compare/DATASET.{json,md}`` (``DATASET_tauT`` for another τ,
     ``DATASET_ablations`` with ablations; a rebuilt report may add results, not leave any out);
  4. the analyses on the checkpoints of the first seed given (frequency splits, beam probabilities,
     calibration, penultimate layer, inference calibration) into ``ROOT/analysis/compare/DATASET/`` (named
     as the report).

``--report`` only builds the report from the results present (of any number of calls or machines).
``--budget-minutes`` bounds one call: training stops (losing at most the updates since its last
save) and later steps wait when time runs out; the next call resumes. Exit status 0 means the
comparison is complete, 3 that it is not yet (call again). ``--tiny`` runs the same code path with a
tiny model and a few updates, on CPU in minutes: a check of the pipeline, not a result.
"""

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
from labo_fairseq.study.compare.runner import NOT_FINISHED, Compare, curves, plateau_epoch, write_report

__all__ = [
    "DATA", "DATASET", "METHODS", "NOT_FINISHED", "Compare", "CompareOptions", "ReportError", "S", "ablations",
    "build_report", "curves",
    "default_tau", "label", "main", "markdown", "max_epoch", "pairs", "plateau_epoch", "protocol_key", "report_name",
    "results_in", "write_report",
]
