"""``labo-fairseq``: the project's one command.

  labo-fairseq prepare DATASET           data preparation as fairseq's recipes (text + data-bin)
  labo-fairseq train DATASET METHOD SEED the paper's fairseq-train command for one run
  labo-fairseq evaluate DATASET METHOD SEED   beam-5 test BLEU into results/
  labo-fairseq tables                    Tables 1 and 2 from results/
  labo-fairseq tune GRID                 a tuning grid, each point to its plateau, judged on validation
  labo-fairseq compare                   CE, LS and LABO on Multi30k, converged, with significance
  labo-fairseq sweep [status]            every cell of a table as jobs: SLURM (submitit) or this machine
  labo-fairseq distill-data DATASET RUN  sequence-level KD data from a teacher run
  labo-fairseq analyze WHAT              freq-splits | beam-probs | calibrate | penultimate | inference-calibration
  labo-fairseq user-dir                  the directory to pass to fairseq as --user-dir
  labo-fairseq bench-criteria|bench-vocab|bench-training  benchmarks (ratios measured side by side, never timed tests)
  labo-fairseq gpu-check                 the one-command GPU check (results/gpu/)
  labo-fairseq gpu-allocation            one short GPU job: install, check, whole comparison runs
  labo-fairseq hf-train MODEL_DIR ...    LABO or a baseline for a Hugging Face seq2seq model (labo_fairseq.hf.trainer)

Every subcommand has ``--help``; those that start fairseq have ``--dry-run``. Relative paths are
taken from the working directory (or ``--root`` where a command has it), never from the checkout.
Subcommands are imported only when run, so ``tables`` and ``--help`` need neither torch nor fairseq.
"""

import importlib
import os
import sys
from typing import Dict, List, Optional, Tuple

PROG = "labo-fairseq"

# name -> (module with main(argv, prog), one-line help)
COMMANDS: Dict[str, Tuple[str, str]] = {
    "prepare": ("labo_fairseq.study.prepare.cli", "prepare a dataset as fairseq's recipes do (text and data-bin)"),
    "train": ("labo_fairseq.study.train", "train one dataset x method x seed with the paper's settings"),
    "evaluate": ("labo_fairseq.study.evaluate", "beam-5 test BLEU of a trained run into results/"),
    "tables": ("labo_fairseq.study.tables", "Tables 1 and 2 (mean ± std over seeds) from results/"),
    "tune": ("labo_fairseq.study.tune", "a study's tuning grid on validation only (configs/grids), resumable"),
    "compare": ("labo_fairseq.study.compare", "the converged CE/LS/LABO comparison on Multi30k (3 seeds, 3 test sets)"),
    "distill-data": ("labo_fairseq.study.kd.seqkd_data", "sequence-level KD data: a teacher's beam-5 training set"),
    "sweep": ("labo_fairseq.study.sweep", "every cell of a table as jobs (SLURM or this machine); sweep status"),
    "user-dir": ("labo_fairseq.cli", "print the directory to pass to fairseq as --user-dir"),
    "hf-train": ("labo_fairseq.study.hf_train", "fine-tune a Hugging Face seq2seq model with a criterion, scored into results/"),
    "bench-criteria": ("labo_fairseq.bench.criteria", "benchmark: each criterion's forward+backward against fairseq's LS"),
    "bench-vocab": ("labo_fairseq.bench.vocab", "benchmark: the chunked output-layer loss at large vocabularies"),
    "bench-training": ("labo_fairseq.study.bench_training",
                       "benchmark: fairseq-train's time with LS and LABO, unfused and fused, alternated"),
    "gpu-check": ("labo_fairseq.gpu.check", "the GPU check: correctness, speed, memory, fp16/bf16 training, decoding"),
    "gpu-allocation": ("labo_fairseq.gpu.allocation", "one short GPU job: install from the bundle, check, train comparison runs"),
}
ANALYZE: Dict[str, Tuple[str, str]] = {
    "freq-splits": ("labo_fairseq.study.analysis.freq_splits", "BLEU on token-frequency splits (Table 4)"),
    "beam-probs": ("labo_fairseq.study.analysis.beam_probs", "probability of the chosen token in beam search (Figure 2)"),
    "calibrate": ("labo_fairseq.study.analysis.calibrate", "ECE, reliability diagrams, temperature scaling (Müller et al.)"),
    "penultimate": ("labo_fairseq.study.analysis.penultimate", "decoder features on 3 output embeddings (Müller Fig. 1)"),
    "inference-calibration": ("labo_fairseq.study.analysis.inference_calibration",
                              "ECE of beam-search tokens labelled by TER, beside teacher-forced ECE (Wang et al.)"),
}


def _listing(table: Dict[str, Tuple[str, str]]) -> str:
    width = max(len(k) for k in table)
    return "\n".join(f"  {k.ljust(width)}  {h}" for k, (_, h) in table.items())


def usage() -> str:
    return (f"usage: {PROG} COMMAND [options]   ({PROG} COMMAND --help for its options)\n\ncommands:\n"
            f"{_listing(COMMANDS)}\n  analyze   {' | '.join(ANALYZE)}\n\nanalyze:\n{_listing(ANALYZE)}\n")


def user_dir_main(argv: List[str], prog: str) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(f"usage: {prog}\n\nPrints the directory to pass to fairseq as --user-dir.")
        return 0
    if argv:
        print(f"{prog}: error: unexpected arguments {' '.join(argv)}", file=sys.stderr)
        return 2
    print(os.path.dirname(os.path.abspath(__file__)))
    return 0


def _run(module: str, argv: List[str], prog: str) -> int:
    """A subcommand's ``main``; the errors a user can fix become one line on stderr and an exit status."""
    from labo_fairseq.runtime.errors import LaboError

    try:
        if module == __name__:
            return user_dir_main(argv, prog)
        return importlib.import_module(module).main(argv, prog=prog) or 0
    except LaboError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return err.status
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; what finished is kept (training keeps its checkpoint_last.pt): run the "
              "same command again to resume", file=sys.stderr)
        return 130


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "analyze":
        if not rest or rest[0] in ("-h", "--help"):
            print(f"usage: {PROG} analyze WHAT [options]\n\n{_listing(ANALYZE)}")
            return 0 if rest else 2
        if rest[0] not in ANALYZE:
            print(f"{PROG} analyze: error: unknown analysis {rest[0]!r}; choose from {', '.join(ANALYZE)}",
                  file=sys.stderr)
            return 2
        return _run(ANALYZE[rest[0]][0], rest[1:], f"{PROG} analyze {rest[0]}")
    if name not in COMMANDS:
        print(f"{PROG}: error: unknown command {name!r}; choose from {', '.join(list(COMMANDS) + ['analyze'])}",
              file=sys.stderr)
        return 2
    return _run(COMMANDS[name][0], rest, f"{PROG} {name}")
