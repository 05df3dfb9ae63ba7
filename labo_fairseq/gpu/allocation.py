"""One short GPU allocation made to count (``labo-fairseq gpu-allocation``).

For a node with a GPU, no network and a time limit (an interactive SLURM job of 10 minutes, a
preemptible instance), from the carried repository, its offline bundle and the raw Multi30k files:

  1. install   ``scripts/install.sh --from-bundle BUNDLE --no-venv`` (skipped when fairseq imports)
  2. prepare   ``labo-fairseq prepare multi30k.de-en --source MULTI30K --offline``
  3. check     the essential GPU check (``gpu-check`` with fewer updates): correctness in
               fp32/fp16/bf16, criterion speed and memory ratios, LS and LABO trained briefly in fp16
               and bf16, decoding; a failed check stops here
  4. pilot     one epoch (with its validation) and the evaluation of every run of the comparison,
               all at once as step 5 trains them, timed: seconds per epoch ``e`` and the fixed cost
               ``F`` (start-up, data loading, evaluation)
  5. runs      ``compare``: the same runs trained from scratch, ``--max-epoch N`` with
               ``N = min(config epochs, floor((time left - F - reserve) / e))``, each evaluated as it
               finishes. A run whose ``N`` is below the config's says so in its result and in the
               report (never pooled with another ``N``); a run the time still cuts short is not
               evaluated, so no unfinished run is reported.

What comes back lies under ``--out``: ``allocation.json`` (each step's command, status and seconds,
the sizing, device, driver, commit), the GPU check's JSON, and ``results/`` (result JSONs and
hypotheses, as ``evaluate`` writes them). Checkpoints and data stay in ``--work``. A later
allocation with other ``--seeds`` adds runs; ``labo-fairseq compare --report --results-from
OUT1/results OUT2/results`` builds one table from all of them.

``--tiny`` rehearses the whole sequence on CPU (tiny model, scaled-down budget); ``--dry-run``
prints the plan with each step's expected time and how it was estimated.
"""

import argparse
import datetime
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from labo_fairseq.losses.hparams import HP
from labo_fairseq.runtime.commandline import ArgumentParser
from labo_fairseq.runtime.errors import ToolError
from labo_fairseq.runtime.files import write_json
from labo_fairseq.runtime.processes import cuda_visible, run_tool
from labo_fairseq.study.protocol import absolute, check_methods, dataset_config, names, run_dir

PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # holds this labo_fairseq: a checkout or site-packages
DATA = "multi30k.de-en"
DEFAULT_DATASET = "multi30k_de_en_iwslt"
# Expected seconds of each step for --dry-run, with where each figure comes from. A GPU node's
# figures are assumptions until the pilot measures them on the node itself.
ESTIMATES = {
    "install": (30, "measured: 27 s from the packed bundle with its prebuilt fairseq wheel into Python 3.12, "
                    "torch 2.11, numpy 2 on 2 CPU cores (docs/gpu.md); assumed no slower on a GPU node"),
    "prepare": (20, "measured: 16 s for Multi30k with one worker on 2 CPU cores"),
    "check": (120, "the check's budget: its training parts are sized by --check-updates"),
    "pilot_gpu": (40, "assumed: one epoch (~100 updates of 4,096 tokens) and a beam-5 validation per run on an "
                      "H100-class GPU, plus start-up and evaluation"),
    "epoch_gpu": (15, "assumed: ~10 updates/s per run with the runs sharing the GPU, plus validation"),
    "pilot_cpu": (60, "measured: the --tiny pilot on 2 CPU cores"),
    "epoch_cpu": (8, "measured: a --tiny epoch on 2 CPU cores"),
}


class AllocationError(ToolError):
    """A step failed; the message names it and where its log is."""


def epoch_seconds(train_log: Path) -> Optional[float]:
    """Seconds from the start of training to the end of epoch 1's validation, from fairseq's log
    timestamps (one-second resolution), or None if the log lacks them."""
    stamp = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \| INFO \| "
    start = end = None
    for line in train_log.read_text(encoding="utf-8", errors="replace").splitlines():
        m = re.match(stamp + r"fairseq_cli\.train \| Start iterating over samples", line)
        if m and start is None:
            start = m.group(1)
        m = re.match(stamp + r"valid \| ", line)
        if m and start is not None:
            end = m.group(1)
            break
    if not (start and end):
        return None
    fmt = "%Y-%m-%d %H:%M:%S"
    return max(1.0, (datetime.datetime.strptime(end, fmt) - datetime.datetime.strptime(start, fmt)).total_seconds())


def epochs_that_fit(left_s: float, fixed_s: float, epoch_s: float, reserve_s: float, config_epochs: int) -> int:
    """``min(config_epochs, floor((left - fixed - reserve) / epoch))``, at least 0."""
    return max(0, min(config_epochs, int((left_s - fixed_s - reserve_s) // epoch_s)))


class Allocation:
    def __init__(self, o: "AllocationOptions"):
        self.o = o
        self.start = time.monotonic()
        self.deadline = self.start + 60 * o.minutes
        self.out = absolute(o.out)
        self.work = absolute(o.work) if o.work else Path(tempfile.gettempdir()) / "labo-gpu-allocation"
        self.lf = [sys.executable, "-m", "labo_fairseq"]
        # a dry run plans for the GPU (unless --tiny) wherever it is printed
        self.gpu = (not o.tiny) and (o.dry_run or cuda_visible(probe_torch=False))
        self.record: Dict = {"command": shlex.join(["labo-fairseq", "gpu-allocation", *o.argv]),
                             "minutes": o.minutes, "tiny": o.tiny, "steps": []}
        self.env = {**os.environ, "PYTHONPATH": str(PACKAGE_PARENT) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def say(self, msg: str) -> None:
        print(f"gpu-allocation: {msg}", file=sys.stderr, flush=True)

    def save(self) -> None:
        write_json(self.out / "allocation.json", self.record)

    def step(self, name: str, cmd: List[str], expected: float, how: str, skip: str = "") -> Optional[float]:
        """Run one step (or print it with --dry-run), logged to OUT/logs/NAME.log; its seconds."""
        entry = {"step": name, "command": shlex.join(cmd), "expected_s": expected, "estimate": how}
        self.record["steps"].append(entry)
        if skip:
            entry.update(status="skipped", why=skip)
            self.say(f"{name}: skipped ({skip})")
            return 0.0
        self.say(f"{name}: + {shlex.join(cmd)}" + (f"   [expected {expected:.0f} s: {how}]" if self.o.dry_run else ""))
        if self.o.dry_run:
            return expected
        t0 = time.monotonic()
        log = self.out / "logs" / f"{name}.log"
        try:
            proc = run_tool(cmd, log=log, env=self.env, check=False, what=name)
        finally:
            entry["seconds"] = round(time.monotonic() - t0, 1)
        entry["status"] = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
        entry["log"] = str(log.relative_to(self.out))
        self.save()
        if proc.returncode not in (0, *(() if name != "runs" else (3,))):
            raise AllocationError(f"{name} failed (exit {proc.returncode}); its log: {log}\n"
                                  + log.read_text(encoding="utf-8", errors="replace")[-2000:])
        return entry["seconds"]

    # ------------------------------------------------------------------------------- the steps

    def fairseq_imports(self) -> bool:
        probe = "import fairseq.data.data_utils_fast, fairseq.libbleu"
        return run_tool([sys.executable, "-c", probe], env=self.env, check=False).returncode == 0

    def install(self) -> None:
        if self.fairseq_imports():
            self.step("install", [], 0, "", skip="fairseq already imports here")
            return
        if not self.o.bundle:
            raise AllocationError("fairseq does not import here and no --bundle was given: build one with "
                                  "scripts/install.sh --bundle DIR (docs/gpu.md) and carry it in")
        script = PACKAGE_PARENT / "scripts" / "install.sh"  # installing from a bundle is a checkout's job
        if not script.is_file():
            raise AllocationError(f"{script} not found: run gpu-allocation from the carried repository")
        self.step("install", ["bash", str(script), "--from-bundle", str(absolute(self.o.bundle)), "--no-venv",
                              "--python", sys.executable], *ESTIMATES["install"])

    def compare_cmd(self, root: Path, max_epoch: Optional[int], budget_s: float) -> List[str]:
        cmd = [*self.lf, "compare", "--dataset", self.o.dataset, "--root", str(root),
               "--methods", *self.o.methods, "--seeds", *map(str, self.o.seeds), "--tau", f"{self.o.tau:g}",
               "--no-analysis",
               "--budget-minutes", f"{max(budget_s, 1) / 60:.2f}", "--reserve-s", "10"]
        cmd += (["--max-epoch", str(max_epoch)] if max_epoch else []) + (["--tiny", "--cpu"] if self.o.tiny else [])
        return cmd + (["--threads", str(self.o.threads)] if self.o.threads else [])

    def run(self) -> int:
        """The steps in order: install, prepare, check, the pilot, the runs sized by it, the report."""
        o = self.o
        self.begin()
        cfg = dataset_config(o.dataset)
        if cfg.get("data") != DATA or "--max-epoch" not in cfg.get("args", {}):
            raise AllocationError(f"--dataset {o.dataset}: needs a config on {DATA} with --max-epoch")
        try:
            check_methods(o.dataset, o.methods)
        except ValueError as err:
            raise AllocationError(f"--methods: {err}") from None
        self.prepare_and_check()
        pilot_s, epoch_s, how = self.pilot()
        config_epochs = int(cfg["args"]["--max-epoch"])
        fixed_s = max(0.0, pilot_s - epoch_s)
        left = self.left() if not o.dry_run else 60 * o.minutes - sum(s.get("expected_s", 0) for s in self.record["steps"])
        n = epochs_that_fit(left, fixed_s, epoch_s, o.reserve_s, config_epochs)
        self.record["sizing"] = {"seconds_per_epoch": epoch_s, "epoch_estimate": how, "fixed_s": round(fixed_s, 1),
                                 "left_s": round(left, 1), "reserve_s": o.reserve_s, "config_epochs": config_epochs,
                                 "epochs": n, "rule": "N = min(config epochs, floor((left - fixed - reserve) / epoch))"}
        self.say(f"sizing: {epoch_s:.0f} s per epoch ({how}), {fixed_s:.0f} s fixed, {left:.0f} s left -> "
                 f"{n} of the config's {config_epochs} epochs per run")
        if n < 1:
            self.record["outcome"] = "no complete run fits in the time left"
            if not o.dry_run:
                self.save()
            self.say("no complete run fits in the time left: nothing trained (give more --minutes)")
            return 3
        self.step("runs", self.compare_cmd(self.work, n if n < config_epochs else None,
                                           self.left() if not o.dry_run else left),
                  n * epoch_s + fixed_s, f"N = {n} epochs x {epoch_s:.0f} s + {fixed_s:.0f} s fixed")
        return 0 if o.dry_run else self.report()

    def begin(self) -> None:
        """The record's provenance, the device, the install step."""
        o = self.o
        if not o.dry_run:
            self.out.mkdir(parents=True, exist_ok=True)
            from labo_fairseq.runtime.provenance import nvidia_driver, record

            self.record["provenance"] = {**record("labo-fairseq gpu-allocation", o.argv, with_hardware=False),
                                         "driver": nvidia_driver()}
            self.save()
        if not self.gpu and not o.tiny:
            raise AllocationError("no CUDA GPU is visible: --tiny rehearses the sequence on CPU")
        self.say(f"{o.minutes:g} minutes on {'the GPU' if self.gpu else 'the CPU (a rehearsal: no GPU figures)'}; "
                 f"results under {self.out}, checkpoints and data under {self.work}")
        self.install()
        if not o.dry_run:
            from labo_fairseq.runtime.provenance import hardware  # torch imports now (after the install)

            self.record["provenance"]["hardware"] = hardware()

    def prepare_and_check(self) -> None:
        o = self.o
        data_bin = self.work / "data-bin" / DATA
        prepared = (data_bin / "test2.de-en.en.idx").is_file()
        self.step("prepare", [*self.lf, "prepare", DATA, "--root", str(self.work), "--offline",
                              *[x for s in o.source for x in ("--source", str(absolute(s)))],
                              "--workers", str(min(8, os.cpu_count() or 1))],
                  *ESTIMATES["prepare"], skip="the data-bin is there" if prepared and not o.dry_run else "")
        check = [*self.lf, "gpu-check", "--data-bin", str(data_bin), "--out", str(self.out / "gpu"),
                 "--work", str(self.work / "gpu_check")]
        check += ["--tiny"] if o.tiny else ["--updates", str(o.check_updates), "--skip-updates", str(o.check_updates // 3)]
        self.step("check", check, *ESTIMATES["check"], skip="--no-check" if o.no_check else "")

    def pilot(self) -> Tuple[float, float, str]:
        """The runs' first epoch and their evaluation, timed, in a scratch root beside the data:
        (the pilot's seconds, the seconds of an epoch, how that was found)."""
        o = self.o
        kind = "gpu" if self.gpu else "cpu"
        pilot = self.work / "pilot"
        for part in ("data", "data-bin"):
            link = pilot / part / DATA
            if not o.dry_run and not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(self.work / part / DATA)
        est_pilot, how_pilot = ESTIMATES[f"pilot_{kind}"]
        pilot_s = self.step("pilot", self.compare_cmd(pilot, 1, self.left()), est_pilot, how_pilot)
        if o.dry_run:
            return (pilot_s, *ESTIMATES[f"epoch_{kind}"])
        logs = [run_dir(pilot / "runs", o.dataset, m, s, o.tau if m == "labo" else None) / "train.log"
                for s in o.seeds for m in o.methods]
        measured = [epoch_seconds(p) for p in logs if p.is_file()]
        if not measured or None in measured:
            raise AllocationError(f"the pilot's logs lack an epoch's timing: {', '.join(map(str, logs))}")
        return pilot_s, max(measured), "measured by the pilot (the slowest run)"

    def report(self) -> int:
        """The comparison's report, and what comes back (results, hypotheses, sentence statistics,
        the report) copied under OUT; 3 if some run did not finish."""
        o = self.o
        report = [*self.lf, "compare", "--report", "--dataset", o.dataset, "--root", str(self.work),
                  "--methods", *o.methods, "--seeds", *map(str, o.seeds)]
        self.step("report", report + (["--tiny"] if o.tiny else []), 5, "a few seconds")
        for part in (o.dataset, "compare"):
            if (self.work / "results" / part).is_dir():
                shutil.copytree(self.work / "results" / part, self.out / "results" / part, dirs_exist_ok=True)
        results = sorted(str(p.relative_to(self.out)) for p in (self.out / "results").rglob("seed*.json")
                         if re.fullmatch(r"seed\d+\.json", p.name))  # not the sentence statistics beside them
        self.record["results"] = results
        self.record["outcome"] = f"{len(results)} of {len(o.seeds) * len(o.methods)} run(s) trained and evaluated"
        self.record["wall_s"] = round(time.monotonic() - self.start, 1)
        self.save()
        self.say(f"{self.record['outcome']} in {self.record['wall_s']:.0f} s; {self.out / 'allocation.json'}")
        return 0 if len(results) == len(o.seeds) * len(o.methods) else 3


@dataclass(frozen=True)
class AllocationOptions:
    """``labo-fairseq gpu-allocation``'s options (see :func:`parse`); ``argv``: as given, for the record."""

    minutes: float
    out: Path
    work: Optional[Path] = None
    bundle: Optional[Path] = None
    source: Tuple[Path, ...] = ()
    dataset: str = DEFAULT_DATASET
    methods: Tuple[str, ...] = ("ce", "ls", "labo")
    seeds: Tuple[int, ...] = (1, 2, 3)
    tau: float = HP["tau"].default
    threads: Optional[int] = None
    check_updates: int = 150
    no_check: bool = False
    reserve_s: float = 30.0
    tiny: bool = False
    dry_run: bool = False
    argv: Tuple[str, ...] = ()


def parse(argv: List[str], prog: str) -> AllocationOptions:
    ap = ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, required=True, help="wall time of the whole command (e.g. 9 of a 10-minute job)")
    ap.add_argument("--out", type=Path, required=True, help="what to bring back: allocation.json, the check, results/")
    ap.add_argument("--work", type=Path, help="data, data-bin and checkpoints (default: TMPDIR/labo-gpu-allocation)")
    ap.add_argument("--bundle", type=Path,
                    help="the offline bundle for the install step: its directory, or the DIR.tar.xz of "
                         "scripts/install.sh --bundle DIR --pack (a third smaller to carry)")
    ap.add_argument("--source", type=Path, action="append", default=[],
                    help="directory with the Multi30k .gz files (default: download them, if the node can)")
    ap.add_argument("--dataset", default=DEFAULT_DATASET, help=f"the comparison's config (default {DEFAULT_DATASET})")
    ap.add_argument("--methods", nargs="+", default=["ce", "ls", "labo"], help="methods (default: ce ls labo)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                    help="seeds (default 1 2 3; a later allocation adds others, e.g. 4 5 6)")
    ap.add_argument("--tau", type=float, default=HP["tau"].default, help=f"LABO's tau (default {HP['tau'].default})")
    ap.add_argument("--threads", type=int, help="CPU threads per run (default: torch's choice)")
    ap.add_argument("--check-updates", type=int, default=150,
                    help="updates per training run of the GPU check (default 150, ~2 minutes in all)")
    ap.add_argument("--no-check", action="store_true", help="skip the GPU check (it ran in an earlier allocation)")
    ap.add_argument("--reserve-s", type=float, default=30.0, help="seconds kept free at the end (default 30)")
    ap.add_argument("--tiny", action="store_true", help="rehearse the sequence on CPU: tiny model, a few updates")
    ap.add_argument("--dry-run", action="store_true", help="print the plan: each step's command and expected time")
    a = ap.parse_args(argv)
    if a.minutes <= 0 or a.reserve_s < 0 or a.check_updates < 3:
        ap.error("--minutes must be > 0, --reserve-s >= 0 and --check-updates >= 3")
    if not a.seeds or len(set(a.seeds)) != len(a.seeds) or min(a.seeds) < 0:
        ap.error("--seeds: distinct integers >= 0")
    for m in a.methods:
        if m not in names("methods"):
            ap.error(f"--methods: unknown method {m!r}; choose from {', '.join(names('methods'))}")
    # the config itself is read after the install step (a bare node has no YAML reader yet)
    if a.dataset not in names("datasets"):
        ap.error(f"--dataset: unknown dataset {a.dataset!r}; choose from {', '.join(names('datasets'))}")
    for d in a.source:
        if not absolute(d).is_dir():
            ap.error(f"no such directory: {d}")
    if a.bundle and not (absolute(a.bundle).is_dir() or (absolute(a.bundle).is_file() and a.bundle.name.endswith(".tar.xz"))):
        ap.error(f"--bundle {a.bundle}: no such directory or .tar.xz (scripts/install.sh --bundle DIR [--pack])")
    if (a.out / "allocation.json").is_file() and not a.dry_run and (a.out / "results").is_dir() \
            and any((a.out / "results").rglob("seed*.json")):
        ap.error(f"{a.out} holds the results of an earlier allocation: give another --out (nothing is overwritten)")
    return AllocationOptions(**{**vars(a), **{k: tuple(getattr(a, k)) for k in ("source", "methods", "seeds")}},
                             argv=tuple(argv))


def main(argv=None, prog="labo-fairseq gpu-allocation") -> int:
    return Allocation(parse(list(sys.argv[1:] if argv is None else argv), prog)).run()
