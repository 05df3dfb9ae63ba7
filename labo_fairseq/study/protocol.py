"""The paper's protocol as data: configs (package data under ``configs/``) and the layout of runs
and results on disk.

``configs/common.yaml`` (Appendix E), then ``configs/datasets/DATASET.yaml`` (which may name a
``base:`` dataset config it overrides) and ``configs/methods/METHOD.yaml``; each holds
fairseq-train flags under ``args:``, later files override earlier ones, and a ``null`` value removes
a flag. Layout under a root directory (default: the working directory)::

    ROOT/data/NAME/          prepared text          ROOT/data-bin/NAME/   binarized data
    ROOT/runs/DATASET/METHOD[-tauT]/seedS/          run.json, train.log, checkpoints/, eval/
    ROOT/results/DATASET/METHOD[-tauT]/seedS.json   the evaluate command's result (+ .hyp files)
"""

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from labo_fairseq.losses.hparams import HP
from labo_fairseq.runtime.files import read_json, read_json_if_exists, relative

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUN_MARKER = "run.json"


def names(kind: str) -> List[str]:
    """The configs of ``kind`` (``datasets`` or ``methods``)."""
    return sorted(p.stem for p in (CONFIGS / kind).glob("*.yaml"))


def read_config(path: Path) -> Dict:
    """A YAML config (empty: ``{}``)."""
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def common_config() -> Dict:
    return read_config(CONFIGS / "common.yaml")


def _config(kind: str, name: str) -> Dict:
    """``configs/KIND/NAME.yaml`` with its ``base:`` chain applied (keys and ``args`` both override)."""
    if name not in names(kind):
        raise ValueError(f"unknown {kind[:-1]} {name!r}; choose from {', '.join(names(kind))}")
    cfg = read_config(CONFIGS / kind / f"{name}.yaml")
    base = cfg.pop("base", None)
    if base is None:
        return cfg
    merged = _config(kind, base)
    args = {**merged.get("args", {}), **cfg.pop("args", {})}
    merged.update(cfg)
    merged["args"] = args
    return merged


def dataset_name(name: str) -> str:
    """A dataset config's name, also from prepare's spelling of its data (``multi30k.de-en`` is
    ``multi30k_de_en``); ValueError naming both kinds of name otherwise."""
    known = names("datasets")
    if name in known:
        return name
    spelled = name.replace(".", "_").replace("-", "_")
    if spelled in known and dataset_config(spelled).get("data") == name:
        return spelled
    users = [d for d in known if dataset_config(d).get("data") == name]
    hint = f" ({name} is the data of {', '.join(users)}: name one of those)" if users else ""
    raise ValueError(f"unknown dataset {name!r}{hint}; choose from {', '.join(known)}")


def data_name(name: str) -> str:
    """The data (prepare's name) of ``name``: itself, or the data of the dataset config so named."""
    from labo_fairseq.study.prepare import NAMES

    if name in NAMES:
        return name
    if name in names("datasets"):
        return dataset_config(name)["data"]
    raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(NAMES)} (or a dataset config: "
                     f"{', '.join(names('datasets'))})")


def dataset_config(name: str) -> Dict:
    return _config("datasets", name)


def method_config(name: str) -> Dict:
    """A method's config; an ablation of LABO names ``base: labo`` and overrides what it ablates."""
    return _config("methods", name)


def is_labo(method: str) -> bool:
    """LABO or one of its ablations (a method whose criterion is ``label_smoothed_labo``)."""
    return method_config(method).get("args", {}).get("--criterion") == "label_smoothed_labo"


WARMUPS = {"default": "labo_warmup_updates", "short": "labo_warmup_updates_short"}


def labo_warmup_updates(dataset: str, method: str) -> int:
    """LABO's uniform-LS warm-up (updates): the dataset's ``labo_warmup_updates``; a method's
    ``labo_warmup: short`` takes the dataset's ``labo_warmup_updates_short`` (the paper's 5,000
    updates read the other way), ``none`` 0."""
    choice = method_config(method).get("labo_warmup", "default")
    if choice == "none":
        return 0
    if choice not in WARMUPS:
        raise ValueError(f"method {method}: labo_warmup must be one of default, short, none; got {choice!r}")
    ds = dataset_config(dataset)
    if WARMUPS[choice] not in ds:
        raise ValueError(f"dataset {dataset} has no {WARMUPS[choice]}, which method {method} needs")
    return int(ds[WARMUPS[choice]])


def check_methods(dataset: str, methods) -> None:
    """ValueError naming the first of ``methods`` that is unknown or cannot train on ``dataset``."""
    for m in methods:
        if is_labo(m):  # method_config raises for an unknown method
            labo_warmup_updates(dataset, m)


def flags(args: Dict) -> List[str]:
    """``{flag: value}`` as an argv: ``True`` is a bare flag, ``None``/``False`` leave it out."""
    out: List[str] = []
    for flag, value in args.items():
        if value is None or value is False:
            continue
        out.append(flag)
        if value is not True:
            out.append(str(value))
    return out


def directions(ds: Dict) -> List[Tuple[str, str]]:
    """(source, target) pairs the dataset's test set is scored on."""
    if ds.get("task") == "multilingual_translation":
        return [tuple(p.split("-")) for p in ds["args"]["--lang-pairs"].split(",")]
    return [(ds["source_lang"], ds["target_lang"])]


def training_completed(run: Path) -> bool:
    """Whether ``labo-fairseq train`` finished the run in directory ``run`` (``completed`` in its
    run.json: fairseq reached --max-epoch/--max-update): the one marker of a finished training."""
    return "completed" in read_json_if_exists(Path(run) / RUN_MARKER, {})


def raw_reference(text_root: Path, ds: Dict, subset: str, src: str, tgt: str) -> Path:
    """The original, untokenized target text of a test subset, as ``labo-fairseq prepare`` keeps it:
    ``TEXT_ROOT/DATA/raw/SUBSET.TGT`` (a dataset config's ``raw_references`` pattern overrides it)."""
    pattern = ds.get("raw_references", "raw/{subset}.{tgt}")
    return Path(text_root) / ds["data"] / pattern.format(subset=subset, src=src, tgt=tgt)


def tiny_model(dim: int = 32, heads: int = 2, arch: bool = True) -> List[str]:
    """The tiny transformer of the tests and of the ``--tiny`` paths (one definition): 1 encoder and
    1 decoder layer, embeddings ``dim``, FFN ``2·dim``, ``heads`` heads; ``arch=False`` keeps the
    dataset config's architecture and overrides its size only."""
    out = ["--arch", "transformer"] if arch else []
    for side in ("encoder", "decoder"):
        out += [f"--{side}-layers", "1", f"--{side}-embed-dim", str(dim), f"--{side}-ffn-embed-dim", str(2 * dim),
                f"--{side}-attention-heads", str(heads)]
    return out


def test_set_name(dataset: str, key: str) -> str:
    """A result key's test set as it is named: ``SRC-TGT`` is the dataset's test set (its config's
    ``test_name``, else ``test``), ``SRC-TGT.NAME`` the extra test set NAME."""
    if "." in key:
        return key.split(".", 1)[1]
    return (dataset_config(dataset).get("test_name") if dataset in names("datasets") else None) or "test"


def result_sentence_stats(result: Dict, key: str) -> List[List[int]]:
    """A loaded result's per-sentence BLEU statistics of one test set (``seedS.stats.json`` beside the
    result; ``result["_path"]`` is where the result was read)."""
    return read_json(Path(result["_path"]).with_name(result["sentence_stats"]))["directions"][key]


def not_converged(result: Dict) -> bool:
    """A loaded result whose run stopped before its stopping rule said it had converged (§ in every
    report and table); a run without a rule (no ``train.stopping``) is not one."""
    return ((result.get("train") or {}).get("stopping") or {}).get("converged") is False


def run_tag(method: str, tau: Optional[float]) -> str:
    return method if tau is None else f"{method}-tau{tau:g}"


def run_dir(runs_root: Path, dataset: str, method: str, seed: int, tau: Optional[float]) -> Path:
    return Path(runs_root) / dataset / run_tag(method, tau) / f"seed{seed}"


def result_path(results_root: Path, dataset: str, method: str, seed: int, tau: Optional[float]) -> Path:
    return Path(results_root) / dataset / run_tag(method, tau) / f"seed{seed}.json"


def result_candidates(results_root: Path, dataset: str, method: str, seed: int, tau: Optional[float]) -> List[Path]:
    """Where a run's result may be: ``METHOD-tauT/`` (compare and the sweeps name τ always), and for
    LABO at its default τ also ``labo/`` (``train``/``evaluate`` without ``--tau``)."""
    out = [result_path(results_root, dataset, method, seed, tau)]
    if method == "labo" and tau is not None and tau == HP["tau"].default:
        out.append(result_path(results_root, dataset, method, seed, None))
    return out


def absolute(path: Path, base: Optional[Path] = None) -> Path:
    """``path`` made absolute against ``base`` (default: the working directory), symlinks kept."""
    path = Path(os.path.expanduser(str(path)))
    return Path(os.path.normpath(path if path.is_absolute() else Path(base or os.getcwd()) / path))


@dataclass
class Roots:
    """Where data, runs and results live: under ``--root`` (default: the working directory), each
    overridable; every path absolute, so a command's output never depends on where fairseq runs."""

    root: Path
    data_bin: Path
    text: Path
    runs: Path
    results: Path

    @classmethod
    def from_options(cls, root: Optional[Path] = None, data: Optional[Path] = None, text: Optional[Path] = None,
                     runs: Optional[Path] = None, results: Optional[Path] = None) -> "Roots":
        """``--root`` (None: the working directory) and the overrides given (None: under the root)."""
        top = absolute(root or ".")

        def pick(given: Optional[Path], default: str) -> Path:
            return absolute(given) if given is not None else top / default

        return cls(top, pick(data, "data-bin"), pick(text, "data"), pick(runs, "runs"), pick(results, "results"))


def add_run_arguments(ap: argparse.ArgumentParser, tau_help: str) -> None:
    """A run's ``dataset method seed`` and ``--tau``, as train, evaluate and the sweeps name it."""
    ap.add_argument("dataset", type=dataset_argument, help=f"one of: {', '.join(names('datasets'))} (or "
                    "prepare's name of its data, e.g. multi30k.de-en)")
    ap.add_argument("method", help=f"one of: {', '.join(names('methods'))}")
    ap.add_argument("seed", type=int)
    ap.add_argument("--tau", type=float, help=tau_help)


def _argtype(fn):
    """An argparse ``type`` from a function raising ValueError: its message becomes argparse's error."""
    def convert(value: str):
        try:
            return fn(value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    convert.__name__ = fn.__name__
    return convert


dataset_argument = _argtype(dataset_name)  # argparse's type for a dataset name, in either spelling


def add_root_arguments(ap: argparse.ArgumentParser, *which: str) -> None:
    """``--root`` and the chosen overrides (``data``, ``text``, ``runs``, ``results``)."""
    ap.add_argument("--root", type=Path, help="directory holding data-bin/, data/, runs/ and results/ "
                                               "(default: the working directory)")
    helps = {"data": ("--data-root", "binarized data (default: ROOT/data-bin)"),
             "text": ("--text-root", "prepared text, e.g. IWSLT'17's raw references (default: ROOT/data)"),
             "runs": ("--runs-root", "run directories (default: ROOT/runs)"),
             "results": ("--results-root", "results JSONs (default: ROOT/results)")}
    for w in which:
        flag, text = helps[w]
        ap.add_argument(flag, type=Path, help=text)


def flag_value(command: Sequence[str], flag: str) -> Optional[str]:
    """The value of ``flag`` in an argv (its last occurrence wins, as in argparse), or None."""
    values = [command[i + 1] for i, tok in enumerate(command[:-1]) if tok == flag]
    return values[-1] if values else None


@dataclass
class Plateau:
    """Where a run stands by its stopping rule: validations without improvement of the checkpoint
    metric (fairseq's ``--patience``), under the ``--max-epoch``/``--max-update`` cap."""

    patience: int            # 0: no rule (the run is bounded by the cap alone)
    best_epoch: Optional[int]
    last_epoch: Optional[int]
    since_best: int          # validations after the best one
    best: Optional[float]
    cap_reached: bool = False  # the last validation is at --max-epoch or --max-update

    @property
    def converged(self) -> bool:
        """The rule says so: ``patience`` validations without improvement."""
        return self.patience > 0 and self.since_best >= self.patience

    @property
    def stopped(self) -> bool:
        """Whether training is over by the rule or the cap (a run without a rule: by the cap alone,
        which fairseq enforces)."""
        return not self.patience or self.converged or self.cap_reached

    @property
    def verdict(self) -> str:
        """Whether the run converged, as every table says it: ``yes``; ``no: reached the cap`` before its
        patience ran out; ``no: stopped before its rule`` (another of fairseq's stops, e.g.
        ``--stop-time-hours``); ``no rule`` (bounded by the cap alone)."""
        if not self.patience:
            return "no rule"
        if self.converged:
            return "yes"
        return "no: reached the cap" if self.cap_reached else "no: stopped before its rule"

    def as_dict(self) -> Dict:
        return {"patience": self.patience, "best_epoch": self.best_epoch, "last_epoch": self.last_epoch,
                "validations_since_best": self.since_best, "best": self.best, "converged": self.converged,
                "cap_reached": self.cap_reached}

    @classmethod
    def from_dict(cls, d: Dict) -> "Plateau":
        """The inverse of :meth:`as_dict` (a record written before ``cap_reached`` existed: False)."""
        return cls(d["patience"], d["best_epoch"], d["last_epoch"], d["validations_since_best"], d["best"],
                   bool(d.get("cap_reached")))


def plateau(curve: Sequence[Dict], command: Sequence[str]) -> Plateau:
    """The stopping rule applied to a run's validation curve (:func:`labo_fairseq.study.fairseq_tools.validation_curve`)
    as fairseq applies it: the best is the first validation that no later one beats strictly, on
    ``--best-checkpoint-metric`` (``loss`` by default; larger is better with
    ``--maximize-best-checkpoint-metric``). A validation repeated by a resume counts once."""
    metric = flag_value(command, "--best-checkpoint-metric") or "loss"
    maximize = "--maximize-best-checkpoint-metric" in command
    patience = int(flag_value(command, "--patience") or 0)
    rows = list({(r.get("epoch"), r.get("updates")): r for r in curve if r.get(metric) is not None}.values())
    best_i, best = None, None
    for i, r in enumerate(rows):
        v = float(r[metric])
        if best is None or (v > best if maximize else v < best):
            best_i, best = i, v
    if best_i is None:
        return Plateau(patience, None, None, 0, None)
    last = rows[-1]
    caps = [(int(flag_value(command, "--max-epoch") or 0), last.get("epoch")),
            (int(flag_value(command, "--max-update") or 0), last.get("updates"))]
    capped = any(cap and done is not None and int(done) >= cap for cap, done in caps)
    return Plateau(patience, rows[best_i].get("epoch"), last.get("epoch"), len(rows) - 1 - best_i, best, capped)


def portable_command(command: Sequence[str], root: Path) -> List[str]:
    """A command as a record shows it on any machine: paths under ``root`` relative to it, the
    program by its name, the plugin's ``--user-dir`` as ``labo_fairseq``."""
    out = []
    for i, tok in enumerate(command):
        if i == 0:
            tok = Path(tok).name
        elif i > 0 and command[i - 1] == "--user-dir":
            tok = "labo_fairseq"
        elif tok.startswith("/"):
            rel = relative(Path(tok), root)
            tok = tok if rel.startswith("/") else rel
        out.append(tok)
    return out
