"""The paper's training runs as fairseq-train commands built from ``configs/``.

``configs/common.yaml`` (the protocol of Appendix E), then ``configs/datasets/DATASET.yaml`` (which
may name a ``base:`` dataset config it overrides) and ``configs/methods/METHOD.yaml``; each holds
fairseq-train flags under ``args:``, later files override earlier ones, and a ``null`` value removes
a flag. The run directory is ``RUNS/DATASET/METHOD[-tauT]/seedS``.

  python -m labo_fairseq.experiments train iwslt14_de_en labo 1 --dry-run
"""

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
USER_DIR = Path(__file__).resolve().parent
RUN_MARKER = "run.json"


def names(kind: str) -> List[str]:
    return sorted(p.stem for p in (CONFIGS / kind).glob("*.yaml"))


def _read(path: Path) -> Dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def dataset_config(name: str) -> Dict:
    """The dataset's config with its ``base:`` chain applied (keys and ``args`` both override)."""
    if name not in names("datasets"):
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(names('datasets'))}")
    cfg = _read(CONFIGS / "datasets" / f"{name}.yaml")
    base = cfg.pop("base", None)
    if base is None:
        return cfg
    merged = dataset_config(base)
    args = {**merged.get("args", {}), **cfg.pop("args", {})}
    merged.update(cfg)
    merged["args"] = args
    return merged


def method_config(name: str) -> Dict:
    if name not in names("methods"):
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(names('methods'))}")
    return _read(CONFIGS / "methods" / f"{name}.yaml")


def _flags(args: Dict) -> List[str]:
    out: List[str] = []
    for flag, value in args.items():
        if value is None or value is False:
            continue
        out.append(flag)
        if value is not True:
            out.append(str(value))
    return out


def run_dir(runs_root: Path, dataset: str, method: str, seed: int, tau: Optional[float]) -> Path:
    tag = method if tau is None else f"{method}-tau{tau:g}"
    return runs_root / dataset / tag / f"seed{seed}"


def train_command(dataset: str, method: str, seed: int, tau: Optional[float] = None, gpus: int = 0,
                  update_freq: int = 1, data_root: Path = Path("data-bin"), runs_root: Path = Path("runs"),
                  extra: Tuple[str, ...] = ()) -> Tuple[List[str], Path]:
    """(fairseq-train argv, run directory). ``gpus=0`` trains on CPU; ``gpus>1`` uses fairseq's own
    multi-GPU spawning (``--distributed-world-size``); fp16 on GPU."""
    if seed < 0 or gpus < 0 or update_freq < 1:
        raise ValueError("need seed >= 0, --gpus >= 0, --update-freq >= 1")
    ds, me = dataset_config(dataset), method_config(method)
    if tau is not None and method != "labo":
        raise ValueError("--tau applies to the labo method only")
    args = {**_read(CONFIGS / "common.yaml").get("args", {}), **ds.get("args", {}), **me.get("args", {})}
    if method == "labo":
        args["--labo-warmup-updates"] = ds["labo_warmup_updates"]
        if tau is not None:
            args["--labo-tau"] = tau
    out = run_dir(runs_root, dataset, method, seed, tau)
    argv = ["fairseq-train", str(data_root / ds["data"]), "--user-dir", str(USER_DIR), "--task", ds.get("task", "translation")]
    if "source_lang" in ds:
        argv += ["--source-lang", ds["source_lang"], "--target-lang", ds["target_lang"]]
    argv += _flags(args) + ["--seed", str(seed), "--save-dir", str(out / "checkpoints")]
    argv += ["--fp16"] if gpus else ["--cpu"]
    if gpus > 1:
        argv += ["--distributed-world-size", str(gpus)]
    if update_freq > 1:
        argv += ["--update-freq", str(update_freq)]
    return argv + list(extra), out


def git_commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def cmd_train(a) -> int:
    try:
        argv, out = train_command(a.dataset, a.method, a.seed, a.tau, a.gpus, a.update_freq, a.data_root,
                                  a.runs_root, tuple(a.fairseq_args))
    except ValueError as err:
        print(f"train: error: {err}", file=sys.stderr)
        return 2
    exists = out.exists()
    if exists and a.force and not (out / RUN_MARKER).exists():
        print(f"train: error: {out} was not made by this command; not deleting it", file=sys.stderr)
        return 2
    if a.dry_run:
        if exists:
            print(f"# {out} exists: " + ("--force would delete it first" if a.force else
                                          "fairseq would resume from its checkpoint_last.pt"))
        print(shlex.join(argv))
        return 0
    if exists and a.force:
        shutil.rmtree(out)
    elif exists:
        print(f"{out} exists: resuming (fairseq continues from checkpoint_last.pt); --force to start over",
              file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_MARKER).write_text(json.dumps({
        "dataset": a.dataset, "method": a.method, "seed": a.seed, "tau": a.tau, "gpus": a.gpus,
        "update_freq": a.update_freq, "command": argv, "commit": git_commit(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }, indent=1) + "\n")
    exe = shutil.which("fairseq-train") or str(Path(sys.executable).parent / "fairseq-train")
    with open(out / "train.log", "a", encoding="utf-8") as log:
        proc = subprocess.Popen([exe, *argv[1:]], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
    return proc.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one dataset x method x seed (fairseq-train)")
    t.add_argument("dataset", help=f"one of: {', '.join(names('datasets'))}")
    t.add_argument("method", help=f"one of: {', '.join(names('methods'))}")
    t.add_argument("seed", type=int)
    t.add_argument("--tau", type=float, help="LABO's tau (default from configs/methods/labo.yaml: 1.15)")
    t.add_argument("--gpus", type=int, default=0, help="GPUs on this node (0: CPU); >1 spawns one process per GPU")
    t.add_argument("--update-freq", type=int, default=1,
                   help="gradient accumulation: keep 4096 tokens per GPU batch and raise this when you have "
                        "fewer GPUs than the effective batch you want")
    t.add_argument("--data-root", type=Path, default=Path("data-bin"))
    t.add_argument("--runs-root", type=Path, default=Path("runs"))
    t.add_argument("--force", action="store_true", help="delete an existing run directory (made by this command) first")
    t.add_argument("--dry-run", action="store_true", help="print the fairseq-train command, run nothing")
    t.epilog = "Extra fairseq-train flags go after --, e.g. -- --max-update 100 (they come last, so they win)."
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    a = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    a.fairseq_args = extra
    return cmd_train(a)


if __name__ == "__main__":
    sys.exit(main())
