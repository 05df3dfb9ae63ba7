"""labo-fairseq compare: the converged comparison of CE, LS and LABO on Multi30k de->en.

A dataset config fixes the model and protocol (``--dataset``): ``multi30k_de_en_iwslt`` (default)
is the paper's IWSLT model scaled to the corpus, for a GPU; ``multi30k_de_en_converged`` is the
quickstart's model with a tuned setting, each run to its validation-BLEU plateau, for a few CPU
cores (``multi30k_de_en_small``: its superseded 45-epoch version). Several seeds per method, the
checkpoint chosen by validation BLEU, beam 5 on test_2016_flickr, test_2017_flickr and
test_2017_mscoco. Steps, each through the project's own commands and each skipped when its output
exists:

  1. ``prepare multi30k.de-en`` (when the data-bin is missing; ``--source DIR`` for offline files);
  2. ``train`` of every run not finished, ``--parallel`` at a time (default: all at once), each
     evaluated as soon as it finishes (``evaluate``: BLEU, sacreBLEU and chrF); a run whose result
     is kept in ``--results-from`` (e.g. the checkout's results/ after a lost work directory) counts
     as finished;
  3. the report, from every result present: mean ± std per method and test set (n per cell, cells
     under 3 seeds marked), LS − CE, LABO − LS and each ablation of LABO − LABO with the seed-aware
     paired bootstrap and an exact permutation test over the training seeds (each with Holm's
     adjustment over the test sets) and, per seed pair, sacrebleu's paired bootstrap and approximate
     randomization (:mod:`labo_fairseq.scoring.stats`), validation NLL and training time per method,
     into ``RESULTS/compare/DATASET.{json,md}`` (``DATASET_tauT`` for another τ,
     ``DATASET_ablations`` with ablations; rebuilt when results appear that it lacks; a rebuilt
     report may add results, not leave any out);
  4. the analyses on the checkpoints of the first seed given (frequency splits, beam probabilities,
     calibration, penultimate layer, inference calibration) into ``ROOT/analysis/compare/DATASET/`` (named
     as the report); skipped, saying so, where those checkpoints are not under ROOT.

``--report`` only builds the report from the results present (of any number of calls or machines);
``--status`` prints where each run stands (result, or the epoch, best so far and the validations
since it against the patience, read off its log).
``--budget-minutes`` bounds one call: training stops (losing at most the updates since its last
save) and later steps wait when time runs out; the next call resumes. Exit status 0 means the
comparison is complete, 3 that it is not yet (call again). ``--tiny`` runs the same code path with a
tiny model and a few updates, on CPU in minutes: a check of the pipeline, not a result.
"""

import argparse
import shlex
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from labo_fairseq.losses.hparams import HP
from labo_fairseq.runtime.commandline import ArgumentParser
from labo_fairseq.runtime.files import read_json, write_json
from labo_fairseq.study.compare.report import (
    DATA,
    DATASET,
    METHODS,
    ReportError,
    ablations,
    default_tau,
    markdown,
)
from labo_fairseq.study.compare.runner import NOT_FINISHED, Compare, curves, status, write_report
from labo_fairseq.study.protocol import (
    absolute,
    check_methods,
    dataset_config,
)


@dataclass(frozen=True)
class CompareOptions:
    """``labo-fairseq compare``'s options (see :func:`parse`)."""

    root: Optional[Path] = None
    dataset: str = DATASET
    methods: Tuple[str, ...] = METHODS
    seeds: Tuple[int, ...] = (1, 2, 3)
    tau: float = HP["tau"].default
    parallel: Optional[int] = None
    threads: Optional[int] = None
    source: Tuple[Path, ...] = ()
    budget_minutes: float = 9.0
    reserve_s: float = 45.0
    bootstrap_samples: int = 1000
    report: bool = False
    results_from: Tuple[Path, ...] = ()
    max_epoch: Optional[int] = None
    curves: bool = False
    status: bool = False
    no_analysis: bool = False
    tiny: bool = False
    cpu: bool = False
    force: bool = False
    dry_run: bool = False


def _parser(prog: str) -> ArgumentParser:
    ap = ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, help="directory for data/, data-bin/, runs/, results/ and analysis/ "
                                               "(default: the working directory)")
    ap.add_argument("--dataset", default=DATASET,
                    help=f"the config of the comparison (default {DATASET}: the paper's model, for a GPU; "
                         "multi30k_de_en_converged: the quickstart's model, each run to its plateau, for a CPU)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), help="methods (default: ce ls labo)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds per method (default: 1 2 3)")
    ap.add_argument("--tau", type=float, default=HP["tau"].default, help=f"LABO's tau (default {HP['tau'].default:g})")
    ap.add_argument("--parallel", type=int, help="runs trained at a time (default: all at once)")
    ap.add_argument("--threads", type=int, help="CPU threads per run (OMP_NUM_THREADS; default: torch's choice)")
    ap.add_argument("--source", type=Path, action="append", default=[],
                    help="directory with the Multi30k .gz files (offline preparation); default: download them")
    ap.add_argument("--budget-minutes", type=float, default=9.0,
                    help="wall time of this call (default 9: a 10-minute allocation); the next call resumes")
    ap.add_argument("--reserve-s", type=float, default=45.0,
                    help="seconds kept for stopping cleanly before the budget ends (default 45)")
    ap.add_argument("--bootstrap-samples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    ap.add_argument("--report", action="store_true",
                    help="only build the report from the results present (n per cell shown), train nothing")
    ap.add_argument("--results-from", type=Path, nargs="+", metavar="DIR",
                    help="with --report: the results directories to read (e.g. one per GPU allocation), every "
                         "seed found in them; a method's seed found twice is an error. Without it: results "
                         "already kept (e.g. the checkout's results/ after the work directory was lost); a run "
                         "whose result is there is neither trained nor evaluated again, and the report takes it")
    ap.add_argument("--max-epoch", type=int,
                    help="train this many epochs instead of the dataset config's (a shorter protocol, stated in "
                         "the report and never pooled with another)")
    ap.add_argument("--curves", action="store_true",
                    help="print the runs' validation curves (BLEU, NLL per epoch) and the pilot's epoch rule, "
                         "into RESULTS/compare/DATASET_curves.json")
    ap.add_argument("--status", action="store_true",
                    help="print where each run stands (result, training: epoch and best so far against the "
                         "patience, or not started), run nothing")
    ap.add_argument("--no-analysis", action="store_true", help="stop after the report")
    ap.add_argument("--tiny", action="store_true", help="a tiny model and a few updates: the code path on CPU in minutes")
    ap.add_argument("--cpu", action="store_true", help="train and decode on CPU even with a GPU")
    ap.add_argument("--force", action="store_true", help="rewrite an existing report")
    ap.add_argument("--dry-run", action="store_true", help="print the commands of the next steps, run nothing")
    return ap


def parse(argv, prog: str) -> CompareOptions:
    """The options, checked (argparse's one-line errors)."""
    ap = _parser(prog)
    a = ap.parse_args(argv)
    if not a.seeds or any(s < 0 for s in a.seeds) or len(set(a.seeds)) != len(a.seeds):
        ap.error("--seeds: distinct integers >= 0")
    try:
        HP["tau"].check(a.tau, "--tau")
    except ValueError as err:
        ap.error(str(err))
    if a.budget_minutes <= 0 or a.bootstrap_samples < 1:
        ap.error("--budget-minutes and --bootstrap-samples must be positive")
    if (a.parallel is not None and a.parallel < 1) or (a.threads is not None and a.threads < 1):
        ap.error("--parallel and --threads must be >= 1")
    if a.max_epoch is not None and a.max_epoch < 1:
        ap.error("--max-epoch must be >= 1")
    modes = [f"--{m.replace('_', '-')}" for m in ("report", "curves", "status", "dry_run") if getattr(a, m)]
    if len(modes) > 1:
        ap.error(f"{' and '.join(modes)}: one at a time")
    for d in a.results_from or ():
        if not absolute(d).is_dir():
            ap.error(f"--results-from {d}: no such directory")
    if a.results_from and not a.report and (a.tiny or a.max_epoch):
        ap.error(f"--results-from with {'--tiny' if a.tiny else '--max-epoch'}: the kept results were trained under "
                 "the dataset config's protocol, not this call's; continue a study under its own protocol")
    try:
        if dataset_config(a.dataset).get("data") != DATA:
            ap.error(f"--dataset {a.dataset}: compare runs on {DATA} (its config's data is "
                     f"{dataset_config(a.dataset).get('data')})")
    except ValueError as err:
        ap.error(f"--dataset: {err}")
    try:
        check_methods(a.dataset, a.methods)
    except ValueError as err:
        ap.error(f"--methods: {err}")
    if ablations(a.methods) and a.tau != default_tau():
        ap.error(f"--tau {a.tau:g}: the ablations of LABO ({', '.join(ablations(a.methods))}) run at LABO's "
                 f"config's tau ({default_tau():g}); compare them without --tau")
    return CompareOptions(**{**vars(a), **{k: tuple(getattr(a, k) or ()) for k in ("methods", "seeds", "source",
                                                                            "results_from")}})


def main(argv=None, prog="labo-fairseq compare") -> int:
    o = parse(argv, prog)
    c = Compare(o)

    def on_sigterm(signum, frame):
        c.terminated = True
        c.say("SIGTERM: stopping the runs (each resumes from its last checkpoint next time)")

    signal.signal(signal.SIGTERM, on_sigterm)
    if o.status:
        print("\n".join(status(c)))
        return 0
    if o.curves:
        return _curves(c)
    if o.report:
        return _report(c)
    if o.dry_run:
        return _dry_run(c)
    return _run(c)


def _curves(c: Compare) -> int:
    """``--curves``: the runs' validation curves and the pilot's epoch rule."""
    cur = curves(c)
    path = write_json(c.roots.results / "compare" / f"{c.dataset}_curves.json", cur)
    for name, rows in cur["curves"].items():
        print(f"{name}: " + " ".join(f"{r['epoch']}:{r['bleu']:.2f}" for r in rows))
    print(f"plateau epoch by the rule: {cur['plateau_epoch'] or 'not yet reached'} ({cur['rule']})")
    c.say(f"curves {path}")
    return 0


def _report(c: Compare) -> int:
    """``--report``: the report of the results present, nothing trained."""
    rep = c.report()
    path = write_report(c, rep)
    sys.stdout.write(markdown(rep))
    c.say(f"report {path} (from {len(rep['results'])} result(s))")
    return 0


def _dry_run(c: Compare) -> int:
    """The commands of the steps still to do (finished or kept runs are left out)."""
    c.prepare()
    for r in c.runs():
        if not c.finished(*r):
            c.say("+ " + shlex.join(c.train_cmd(*r)))
    for r in c.runs():
        if not c.result(*r).is_file():
            c.say("+ " + shlex.join(c.evaluate_cmd(*r)))
    return 0


def _run(c: Compare) -> int:
    """Prepare, train, evaluate, report, analyse, as far as the budget goes (:data:`NOT_FINISHED`: call again)."""
    o = c.o
    report_json = c.report_path()
    if not (c.prepare() and c.train() and c.evaluate()):
        why = "by SIGTERM" if c.terminated else f"for the time budget ({o.budget_minutes:g} min)"
        c.say(f"stopped {why}; run the same command again to continue")
        return NOT_FINISHED
    if o.force or not c.report_is_current():
        try:
            write_report(c, c.report())
        except ReportError as err:
            if not report_json.is_file():
                raise
            c.say(f"report not rebuilt: {err}")  # it names runs this call does not: kept, and the call goes on
    rep = read_json(report_json)
    sys.stdout.write(markdown(rep))
    c.say(f"report {report_json}")
    if o.no_analysis:
        return 0
    if not c.analysis():
        c.say("analysis stopped for the time budget; run the same command again to continue")
        return NOT_FINISHED
    c.say(f"analysis in {c.analysis_dir()}")
    return 0
