"""The distillation experiment's runs: which teacher, which student, where they live.

Used by ``train``, ``evaluate`` and ``distill-data`` (no fairseq import here). A student is one of

- word-level KD: ``train DATASET kd SEED --teacher RUN``, run ``RUNS/DATASET/kd-TEACHER/seedS``;
- sequence-level KD: ``train DATASET ce SEED --data-variant seqkd:RUN``, trained on
  ``DATA_ROOT/DATA.seqkd-TEACHER`` (made by ``distill-data``), run ``RUNS/DATASET/ce-seqkd-TEACHER/seedS``;
- the baseline without KD: ``train DATASET ce SEED --student``, run ``RUNS/DATASET/ce-student/seedS``.

``RUN`` names a trained teacher run: ``METHOD[-tauT]/seedS`` under ``RUNS/DATASET``, or a run
directory's path. ``TEACHER`` is its tag, e.g. ``ls-seed1``. Every student uses the student
architecture of ``configs/student.yaml``.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from labo_fairseq.runtime.errors import UsageError
from labo_fairseq.runtime.files import read_json
from labo_fairseq.study.fairseq_tools import log_record
from labo_fairseq.study.protocol import CONFIGS, read_config

SEQKD = "seqkd:"


class KDError(UsageError):
    """A teacher run, checkpoint or distilled data-bin that is missing, or flags that do not fit."""


@dataclass
class Teacher:
    run_dir: Path
    method: str
    tau: Optional[float]
    seed: int

    @property
    def tag(self) -> str:
        m = self.method if self.tau is None else f"{self.method}-tau{self.tau:g}"
        return f"{m}-seed{self.seed}"

    def checkpoint(self, which: str = "best") -> Path:
        return self.run_dir / "checkpoints" / f"checkpoint_{which}.pt"

    def record(self) -> Dict:
        return {"run": str(self.run_dir), "method": self.method, "tau": self.tau, "seed": self.seed, "tag": self.tag}


def resolve_teacher(spec: str, runs_root: Path, dataset: str) -> Teacher:
    """``METHOD[-tauT]/seedS`` (under RUNS/DATASET) or a run directory -> :class:`Teacher`.

    Method, τ and seed come from the run's ``run.json`` when it is there, else from the name."""
    p = Path(spec)
    rd = p if (p / "run.json").is_file() or p.is_absolute() else runs_root / dataset / p
    rd = rd.absolute()
    marker = rd / "run.json"
    if marker.is_file():
        run = read_json(marker)
        if run.get("distillation"):
            raise KDError(f"--teacher {spec}: {rd} is a student run; name a teacher run (METHOD[-tauT]/seedS)")
        return Teacher(rd, run["method"], run.get("tau"), int(run["seed"]))
    m = re.fullmatch(r"([a-z0-9_]+?)(?:-tau([0-9.]+))?", rd.parent.name)
    s = re.fullmatch(r"seed(\d+)", rd.name)
    if not (m and s):
        raise KDError(f"--teacher {spec}: expected METHOD[-tauT]/seedS under {runs_root / dataset} or a run directory")
    return Teacher(rd, m.group(1), float(m.group(2)) if m.group(2) else None, int(s.group(1)))


def student_args(dataset: str) -> Dict:
    """fairseq-train flags of the student architecture for DATASET (``configs/student.yaml``)."""
    cfg = read_config(CONFIGS / "student.yaml")
    return {**cfg.get("args", {}), **(cfg.get("datasets", {}).get(dataset) or {}).get("args", {})}


def seqkd_data_name(data: str, teacher: Teacher) -> str:
    """The distilled data-bin's directory name beside the dataset's own."""
    return f"{data}.seqkd-{teacher.tag}"


@dataclass
class StudentPlan:
    """What a student run changes in the train command: run tag, data directory, extra config flags."""

    tag: str
    data: str
    args: Dict = field(default_factory=dict)
    record: Dict = field(default_factory=dict)
    needs: List[Path] = field(default_factory=list)  # inputs that must exist before training


def plan(dataset: str, data: str, method: str, tau: Optional[float], teachers: Sequence[str], data_variant: Optional[str],
         student: bool, runs_root: Path, data_root: Path) -> Optional[StudentPlan]:
    """The :class:`StudentPlan` of a train/evaluate invocation, or None for an ordinary run.

    Raises :class:`KDError` naming the flag for combinations that do not fit."""
    if method == "kd" and not teachers:
        raise KDError("method kd (word-level distillation) needs --teacher RUN (e.g. --teacher ls/seed1)")
    if teachers and method != "kd":
        raise KDError(f"--teacher is for method kd (word-level distillation), not {method}")
    if data_variant is not None and not data_variant.startswith(SEQKD):
        raise KDError(f"--data-variant must be seqkd:RUN (sequence-level KD data from a teacher run), got {data_variant!r}")
    if not (teachers or data_variant or student):
        return None
    base = method if tau is None else f"{method}-tau{tau:g}"
    tag, record, args, needs = base, {"student": True, "kind": "none"}, student_args(dataset), []
    if teachers:
        ts = [resolve_teacher(t, runs_root, dataset) for t in teachers]
        tag += "-" + "+".join(t.tag for t in ts)
        args["--teacher-path"] = ":".join(str(t.checkpoint()) for t in ts)
        needs += [t.checkpoint() for t in ts]
        record.update(kind="word", teachers=[t.record() for t in ts])
    if data_variant is not None:
        t = resolve_teacher(data_variant[len(SEQKD):], runs_root, dataset)
        data = seqkd_data_name(data, t)
        tag += f"-seqkd-{t.tag}"
        needs.append(data_root / data)
        record.update(kind="seq" if record["kind"] == "none" else "word+seq", seq_teacher=t.record())
    if record["kind"] == "none":
        tag += "-student"
    return StudentPlan(tag, data, args, record, needs)


def add_arguments(ap) -> None:
    """The train/evaluate flags that select a student run."""
    ap.add_argument("--teacher", action="append", default=[], metavar="RUN",
                    help="method kd: the teacher run, METHOD[-tauT]/seedS under RUNS/DATASET or a run directory "
                         "(its checkpoint_best.pt); repeat for an ensemble")
    ap.add_argument("--data-variant", metavar="seqkd:RUN",
                    help="sequence-level KD: train on the teacher RUN's beam-5 translations of the training set "
                         "(made by labo-fairseq distill-data)")
    ap.add_argument("--student", action="store_true",
                    help="the student architecture (configs/student.yaml) without KD: the baseline of the "
                         "distillation table (implied by kd and --data-variant)")


def teacher_gamma(run_dir: Path) -> Optional[Dict]:
    """Müller's γ as the word_distillation criterion last logged it in ``train.log``: the last
    training-epoch record (Müller et al. measure γ over the training set; the teacher runs in eval
    mode, so dropout does not enter it), else the last validation record."""
    log = run_dir / "train.log"
    if not log.is_file():
        return None
    found: Dict[str, float] = {}
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        record = log_record(line)
        if record is not None and record[0] in ("train", "valid"):
            kind, rec = record
            key = f"{kind}_gamma"  # fairseq prefixes epoch-level records' keys with the split
            if key in rec:
                found[kind] = float(rec[key])
    for split in ("train", "valid"):
        if split in found:
            return {"gamma": found[split], "split": split}
    return None
