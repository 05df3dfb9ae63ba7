"""Evaluate a trained run: beam-5 fairseq-generate on the test set, BLEU as the paper reports it.

  python -m labo_fairseq.evaluate DATASET METHOD SEED [--tau T] [--checkpoint best|last|PATH]

The run is ``RUNS/DATASET/METHOD[-tauT]/seedS`` (made by ``scripts/train.sh``). Decoding goes
through ``--user-dir labo_fairseq`` (every test sentence is translated; checked). Per direction:

- the paper's BLEU for the dataset (``bleu:`` in its config): ``tokenized`` (IWSLT'14: tokenized,
  lowercased text after ``--remove-bpe``, as fairseq's recipe), ``compound_split`` (WMT'14, as
  fairseq's ``compound_split_bleu.sh``) or ``sacrebleu`` (IWSLT'17: detokenized output against the
  raw references kept by ``prepare_data.py`` in ``TEXT_ROOT/DATA/raw/``);
- always also sacrebleu's default BLEU (13a) on detokenized text, with its signature.

Writes ``RESULTS/DATASET/METHOD[-tauT]/seedS.json`` and the hypotheses beside it
(``seedS.SRC-TGT.hyp``, in test-set order); the full fairseq-generate output stays in the run's
``eval/``. An existing result is kept unless ``--force``.
"""

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from labo_fairseq import bleu as B
from labo_fairseq.train import (
    REPO, RUN_MARKER, USER_DIR, dataset_config, git_state, hardware, method_config, names, run_dir,
)
from labo_fairseq.prepare.pipeline import atomic_open, write_lines

# The criterion hyper-parameters worth recording, by fairseq-train flag.
HPARAM_FLAGS = ("--criterion", "--label-smoothing", "--labo-tau", "--labo-rho", "--labo-alpha",
                "--labo-warmup-updates", "--cp-beta", "--focal-gamma", "--focal-detach-weight",
                "--anti-focal-gamma", "--anti-focal-alpha", "--anti-focal-differentiate-weight",
                "--arch", "--lr", "--max-tokens", "--max-epoch", "--max-update", "--dropout", "--update-freq",
                "--distributed-world-size", "--fp16", "--seed")


class EvalError(RuntimeError):
    """A missing run, checkpoint or reference, or an incomplete translation; the message says which."""


def result_path(results_root: Path, dataset: str, method: str, seed: int, tau: Optional[float]) -> Path:
    rd = run_dir(Path("."), dataset, method, seed, tau)
    return results_root / rd.parent / f"{rd.name}.json"


def directions(ds: Dict) -> List[tuple]:
    """(source, target) pairs the dataset's test set is scored on."""
    if ds.get("task") == "multilingual_translation":
        return [tuple(p.split("-")) for p in ds["args"]["--lang-pairs"].split(",")]
    return [(ds["source_lang"], ds["target_lang"])]


def hyper_parameters(argv: List[str]) -> Dict:
    """The recorded flags' values in a fairseq-train argv (the last occurrence wins, as in argparse)."""
    out: Dict = {}
    for i, tok in enumerate(argv):
        if tok in HPARAM_FLAGS:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            out[tok.lstrip("-").replace("-", "_")] = True if nxt is None or nxt.startswith("--") else nxt
    return out


def test_size(data: Path, src: str, tgt: str) -> int:
    """Sentences in the binarized test split of src-tgt (either file order)."""
    from fairseq.data import data_utils

    for pair in (f"{src}-{tgt}", f"{tgt}-{src}"):
        ds = data_utils.load_indexed_dataset(str(data / f"test.{pair}.{src}"), None)
        if ds is not None:
            return len(ds)
    raise EvalError(f"{data}: no binarized test set for {src}-{tgt} (test.{src}-{tgt}.{src}.bin)")


def checkpoint_state(path: Path) -> Dict:
    """Updates, epoch, training wall time and validation metric stored in a fairseq checkpoint."""
    import torch

    import labo_fairseq  # noqa: F401  (allow-list for weights_only loading)

    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    extra = state.get("extra_state") or {}
    cfg = state.get("cfg") or {}
    ck_cfg = cfg.get("checkpoint") if hasattr(cfg, "get") else None
    val = extra.get("val_loss")
    return {
        "updates": (state.get("optimizer_history") or [{}])[-1].get("num_updates"),
        "epoch": (extra.get("train_iterator") or {}).get("epoch"),
        "train_wall_s": round(float(extra["previous_training_time"]), 1) if "previous_training_time" in extra else None,
        "valid_metric": ck_cfg.get("best_checkpoint_metric") if ck_cfg is not None else None,
        "valid_value": None if val is None else float(val),
    }


def generate_command(ds: Dict, data: Path, checkpoint: Path, src: str, tgt: str, cpu: bool, batch_size: int,
                     extra: Sequence[str] = ()) -> List[str]:
    exe = str(Path(sys.executable).parent / "fairseq-generate")
    sp = ds.get("bpe") == "sentencepiece"
    cmd = [exe, str(data), "--user-dir", str(USER_DIR), "--path", str(checkpoint), "--gen-subset", "test",
           "--beam", "5", "--batch-size", str(batch_size), "--remove-bpe", "sentencepiece" if sp else "subword_nmt",
           "--source-lang", src, "--target-lang", tgt]
    if ds.get("task") == "multilingual_translation":
        cmd += ["--task", "multilingual_translation", "--lang-pairs", ds["args"]["--lang-pairs"]]
    return cmd + (["--cpu"] if cpu else ["--fp16"]) + list(extra)


def score_direction(ds: Dict, gen_text: str, n_test: int, src: str, tgt: str, references: Optional[Path]) -> Dict:
    from labo_fairseq.analysis.fairseq_io import parse_generate

    g = parse_generate(gen_text)
    if sorted(g.hypothesis) != list(range(n_test)):
        raise EvalError(f"{src}-{tgt}: fairseq-generate translated {len(g.hypothesis)} of {n_test} test sentences")
    hyps = g.ordered(g.hypothesis)
    convention = ds["bleu"]
    if convention == "sacrebleu":  # the output is detokenized text: score against the raw references
        if references is None or not references.is_file():
            raise EvalError(f"{src}-{tgt}: raw references not found at {references} (kept by scripts/prepare_data.py "
                            f"under data/DATASET/raw/; pass --text-root)")
        with open(references, encoding="utf-8") as f:
            refs = f.read().splitlines()
        if len(refs) != n_test:
            raise EvalError(f"{references}: {len(refs)} lines but the test set has {n_test} sentences")
        detok_hyps, detok_refs = hyps, refs  # (the paper's metric is then sacrebleu on them: computed once)
        ref_source = str(references)
    else:  # tokenized text: fairseq's references (T- lines, BPE removed), Moses-detokenized for sacrebleu
        refs = g.ordered(g.reference)
        detok_hyps, detok_refs = B.detokenize(hyps, tgt), B.detokenize(refs, tgt)
        ref_source = "fairseq-generate T- lines (the prepared test text, BPE removed)"
    paper = B.paper_bleu(convention, hyps, refs)
    sacre = paper if convention == "sacrebleu" else B.sacrebleu_13a(detok_hyps, detok_refs)
    return {
        "bleu": paper["bleu"], "convention": convention, "paper_metric": paper,
        "sacrebleu": sacre["bleu"], "sacrebleu_signature": sacre["signature"], "sacrebleu_detail": sacre,
        "sacrebleu_input": ("detokenized output vs raw references" if convention == "sacrebleu" else
                            "Moses-detokenized output vs Moses-detokenized references"),
        "references": ref_source, "fairseq_bleu_line": g.bleu_line, "sentences": n_test,
    }, hyps


def evaluate(a) -> int:
    from labo_fairseq import kd_runs

    ds, _ = dataset_config(a.dataset), method_config(a.method)
    student = kd_runs.plan(a.dataset, ds["data"], a.method, a.tau, a.teacher, a.data_variant, a.student, a.runs_root,
                           a.data_root)
    tag, tau = (a.method, a.tau) if student is None else (student.tag, None)  # a student's tag names its run
    rd = run_dir(a.runs_root, a.dataset, tag, a.seed, tau)
    ck = Path(a.checkpoint) if a.checkpoint not in ("best", "last") else rd / "checkpoints" / f"checkpoint_{a.checkpoint}.pt"
    out = result_path(a.results_root, a.dataset, tag, a.seed, tau)
    data = a.data_root / ds["data"]
    import torch

    cpu = a.cpu or not torch.cuda.is_available()
    cmds = {f"{s}-{t}": generate_command(ds, data, ck, s, t, cpu, a.batch_size, a.generate_args) for s, t in directions(ds)}
    if a.dry_run:
        for cmd in cmds.values():
            print(shlex.join(cmd))
        return 0
    marker = rd / RUN_MARKER
    if not marker.is_file():
        raise EvalError(f"{rd}: no run here ({RUN_MARKER} missing); train it first: "
                        f"scripts/train.sh {a.dataset} {a.method} {a.seed}" + (f" --tau {a.tau:g}" if a.tau else ""))
    run = json.loads(marker.read_text())
    if not ck.is_file():
        raise EvalError(f"{ck}: no such checkpoint (training not finished? --checkpoint last|PATH)")
    if out.exists() and not a.force:
        raise EvalError(f"{out} exists: a finished result is kept; --force to evaluate again and replace it")
    if not data.is_dir():
        raise EvalError(f"{data}: no such data-bin directory (--data-root; scripts/prepare_data.py makes it)")
    eval_dir = rd / "eval"
    eval_dir.mkdir(exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    scores, started, t0 = {}, datetime.datetime.now(datetime.timezone.utc).isoformat(), time.time()
    for pair, cmd in cmds.items():
        src, tgt = pair.split("-")
        n_test = test_size(data, src, tgt)
        print(f"evaluate: {a.dataset} {a.method} seed {a.seed} {pair}: beam 5 on {n_test} test sentences", file=sys.stderr)
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
        gen_file = eval_dir / f"generate-test.{pair}.txt"
        with atomic_open(gen_file) as f:
            f.write(proc.stdout)
        if proc.returncode != 0:
            raise EvalError(f"fairseq-generate failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        refs = a.text_root / ds["data"] / "raw" / f"test0.{pair}.{tgt}" if ds["bleu"] == "sacrebleu" else None
        score, hyps = score_direction(ds, proc.stdout + "\n" + proc.stderr, n_test, src, tgt, refs)
        hyp_file = out.with_name(f"{out.stem}.{pair}.hyp")
        write_lines(hyp_file, hyps)
        scores[pair] = {**score, "hypotheses": hyp_file.name, "generate_output": str(gen_file), "command": cmd}
        print(f"  {pair}: BLEU {score['bleu']:.2f} ({score['convention']}), sacrebleu {score['sacrebleu']:.2f}",
              file=sys.stderr)
    last = rd / "checkpoints" / "checkpoint_last.pt"
    hparams, chosen = hyper_parameters(run["command"]), checkpoint_state(ck)
    last_state = chosen if last.is_file() and last.samefile(ck) else checkpoint_state(last) if last.is_file() else None
    result = {
        "dataset": a.dataset, "method": a.method, "seed": a.seed,
        "tau": float(hparams.get("labo_tau", 0)) or None,
        "hyper_parameters": hparams, "extra_train_args": run.get("extra_args", []),
        "extra_generate_args": list(a.generate_args),
        "bleu_convention": ds["bleu"], "directions": scores,
        "checkpoint": {"path": str(ck), **chosen},
        "train": {"run_dir": str(rd), "command": run["command"], "commit": run.get("commit"), "dirty": run.get("dirty"),
                  "hardware": run.get("hardware"), "gpus": run.get("gpus"), "procs": run.get("procs"),
                  "nodes": run.get("nodes"), "sessions": len(run.get("sessions", [])) or 1,
                  "last_checkpoint": last_state},
        "evaluate": {**git_state(), "hardware": hardware(), "started": started, "wall_s": round(time.time() - t0, 1),
                     "beam": 5, "device": "cpu" if cpu else "cuda"},
    }
    if run.get("distillation"):
        result["distillation"] = {**run["distillation"], "teacher_gamma": kd_runs.teacher_gamma(rd)}
    write_lines(out, [json.dumps(result, indent=1)])
    print(f"evaluate: wrote {out}", file=sys.stderr)
    return 0


def main(argv=None, prog="labo-fairseq evaluate") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", help=f"one of: {', '.join(names('datasets'))}")
    ap.add_argument("method", help=f"one of: {', '.join(names('methods'))}")
    ap.add_argument("seed", type=int)
    ap.add_argument("--tau", type=float, help="LABO's tau, as given to the train command")
    ap.add_argument("--checkpoint", default="best",
                    help="best (chosen by validation BLEU, or NLL for IWSLT'17; default), last, or a path")
    ap.add_argument("--runs-root", type=Path, default=Path("runs"))
    ap.add_argument("--data-root", type=Path, default=Path("data-bin"))
    ap.add_argument("--text-root", type=Path, default=Path("data"),
                    help="prepared text (raw IWSLT'17 references under DATA/raw/); default data/")
    ap.add_argument("--results-root", type=Path, default=Path("results"))
    from labo_fairseq import kd_runs

    kd_runs.add_arguments(ap)
    ap.add_argument("--batch-size", type=int, default=128, help="sentences per decoding batch (fairseq's recipe: 128)")
    ap.add_argument("--cpu", action="store_true", help="decode on CPU even if a GPU is there")
    ap.add_argument("--force", action="store_true", help="replace an existing result")
    ap.add_argument("--dry-run", action="store_true", help="print the fairseq-generate command(s), run nothing")
    ap.epilog = ("Extra fairseq-generate flags go after --, e.g. -- --max-len-b 50 (recorded; the table marks "
                 "such results, since they differ from the paper's decoding).")
    argv = list(sys.argv[1:] if argv is None else argv)
    a = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    a.generate_args = argv[argv.index("--") + 1:] if "--" in argv else []
    if a.batch_size < 1:
        ap.error(f"--batch-size must be >= 1, got {a.batch_size}")
    if a.tau is not None and a.method != "labo":
        ap.error("--tau applies to the labo method only")
    try:
        return evaluate(a)
    except (EvalError, ValueError) as err:
        print(f"evaluate: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
