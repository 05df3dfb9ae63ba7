"""Whole-training benchmark: fairseq-train's time for the same updates with fairseq's LS, LABO, and
both through the fused output layer (``--loss-chunk-tokens``), side by side in one run.

Each variant is the study's own command for DATASET (``labo-fairseq train``'s, seed 1) with
``--max-update N``, no validation, no checkpoints, LABO active from the first update
(``--labo-warmup-updates 0``); "LS fused" is our ``label_smoothed_ce`` (the same loss as fairseq's
LS) on the fused path, so that fused LS and fused LABO differ only in the loss. Rounds alternate
the variants, so that a machine whose speed drifts slows them alike. Time: fairseq's own
``train_wall`` (seconds in training steps, summed over its epoch records; whole seconds), and the
process's wall time (start-up included), and its CPU time (user + system: on a machine that other
work shares, the one that measures the work itself). The ratios are medians of per-round ratios to
fairseq's LS in the same round.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

from labo_fairseq.runtime.commandline import ArgumentParser
from labo_fairseq.runtime.files import read_lines, write_json
from labo_fairseq.runtime.processes import run_tool, thread_env
from labo_fairseq.runtime.provenance import record
from labo_fairseq.study.fairseq_tools import log_record
from labo_fairseq.study.protocol import dataset_argument
from labo_fairseq.study.train import train_command

BASELINE = "LS"
# name -> (method, fairseq flags added to the method's command)
VARIANTS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    BASELINE: ("ls", ()),
    "LABO": ("labo", ()),
    "LS fused": ("ls", ("--criterion", "label_smoothed_ce")),
    "LABO fused": ("labo", ()),
}
FUSED = ("LS fused", "LABO fused")


@dataclass(frozen=True)
class Options:
    dataset: str
    root: Path
    updates: int
    rounds: int
    threads: int
    chunk_tokens: int
    dry_run: bool


def command(o: Options, name: str, save_dir: Path) -> List[str]:
    """The fairseq-train argv of one variant."""
    method, flags = VARIANTS[name]
    extra = ["--max-update", str(o.updates), "--max-epoch", "0", "--disable-validation", "--no-save",
             *flags, *(["--labo-warmup-updates", "0"] if method == "labo" else []),
             *(["--loss-chunk-tokens", str(o.chunk_tokens)] if name in FUSED else [])]
    launch = train_command(o.dataset, method, 1, data_root=o.root / "data-bin", runs_root=save_dir, extra=tuple(extra))
    (process,) = launch.processes  # one CPU process: fairseq-train as this interpreter starts it
    return process


def train_seconds(log: Path) -> float:
    """fairseq's ``train_wall`` summed over the epoch records of ``log``."""
    records = (log_record(line) for line in read_lines(log))
    return float(sum(float(rec.get("train_train_wall", 0)) for kind, rec in filter(None, records) if kind == "train"))


def _children_cpu_s() -> float:
    import resource

    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def run_once(o: Options, name: str, work: Path) -> Dict[str, float]:
    log = work / f"{name.replace(' ', '_')}.log"
    start, cpu = time.monotonic(), _children_cpu_s()
    run_tool(command(o, name, work / "runs"), log=log, env=thread_env(o.threads), what=f"fairseq-train ({name})")
    return {"process_s": time.monotonic() - start, "cpu_s": _children_cpu_s() - cpu, "train_wall_s": train_seconds(log)}


def ratios(rounds: List[Dict[str, Dict[str, float]]], key: str) -> Dict[str, float]:
    """Per variant: the median over rounds of its ``key`` over the baseline's in the same round (nan
    where the baseline's is 0: fairseq's whole seconds of a very short run)."""
    return {name: statistics.median(r[name][key] / r[BASELINE][key] if r[BASELINE][key] else float("nan")
                                    for r in rounds) for name in VARIANTS}


MEASURES = {"train_wall_s": "train_wall s", "process_s": "process s", "cpu_s": "CPU s"}


def report(rounds: List[Dict[str, Dict[str, float]]]) -> str:
    """One row per variant: each measure's median over rounds and its ratio to LS."""
    head = " | ".join(f"{label} (median) | / LS" for label in MEASURES.values())
    lines = [f"| variant | {head} |", "|---" * (1 + 2 * len(MEASURES)) + "|"]
    by = {key: ratios(rounds, key) for key in MEASURES}
    for name in VARIANTS:
        cells = [f"{statistics.median(r[name][key] for r in rounds):.1f} | {by[key][name]:.3f}x" for key in MEASURES]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def run(o: Options) -> Dict | None:
    """The rounds and ratios (None under ``dry_run``, which prints the commands)."""
    if o.dry_run:
        for name in VARIANTS:
            print(f"# {name}\n" + shlex.join(command(o, name, Path("BENCH_DIR") / "runs")))
        return None
    rounds: List[Dict[str, Dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="labo-bench-training-") as tmp:
        for i in range(o.rounds):
            rounds.append({name: run_once(o, name, Path(tmp)) for name in VARIANTS})
            print(f"round {i + 1}: " + ", ".join(f"{n} {r['train_wall_s']:.0f}s" for n, r in rounds[-1].items()),
                  flush=True)
    print(report(rounds))
    return {"rounds": rounds, **{f"ratio_{key[:-2]}": ratios(rounds, key) for key in MEASURES},
            "options": {"dataset": o.dataset, "updates": o.updates, "threads": o.threads,
                        "chunk_tokens": o.chunk_tokens}}


def main(argv=None, prog="labo-fairseq bench-training") -> int:
    ap = ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=dataset_argument, default="multi30k_de_en",
                    help="a dataset config (default: the quickstart's)")
    ap.add_argument("--root", type=Path, default=Path("."), help="the study root whose data-bin/ holds the data")
    ap.add_argument("--updates", type=int, default=200, help="updates per run (default 200)")
    ap.add_argument("--rounds", type=int, default=2, help="alternated rounds of every variant (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads per run (default 2)")
    ap.add_argument("--chunk-tokens", type=int, default=4096,
                    help="--loss-chunk-tokens of the fused variants (default 4096: one chunk per batch of "
                         "--max-tokens 4096 at a small vocabulary)")
    ap.add_argument("--json", type=Path, help="also write the rounds and ratios to this JSON file")
    ap.add_argument("--dry-run", action="store_true", help="print the four fairseq-train commands, run nothing")
    a = ap.parse_args(argv)
    if min(a.updates, a.rounds, a.threads, a.chunk_tokens) < 1:
        ap.error("--updates, --rounds, --threads and --chunk-tokens must be >= 1")
    out = run(Options(a.dataset, a.root.resolve(), a.updates, a.rounds, a.threads, a.chunk_tokens, a.dry_run))
    if out is not None and a.json:
        write_json(a.json, {**out, "provenance": record(prog, argv)})
    return 0
