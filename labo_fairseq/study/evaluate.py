"""Evaluate a trained run: beam-5 fairseq-generate on the test set, BLEU as the paper reports it.

  labo-fairseq evaluate DATASET METHOD SEED [--tau T] [--checkpoint best|last|PATH]

The run is ``RUNS/DATASET/METHOD[-tauT]/seedS`` (made by ``labo-fairseq train``). Decoding goes
through ``--user-dir labo_fairseq`` (every test sentence is translated; checked). Per direction:

- the paper's BLEU for the dataset (``bleu:`` in its config): ``tokenized`` (IWSLT'14: tokenized,
  lowercased text after ``--remove-bpe``, as fairseq's recipe), ``compound_split`` (WMT'14, as
  fairseq's ``compound_split_bleu.sh``) or ``sacrebleu`` (IWSLT'17: detokenized output against the
  raw references kept by ``labo-fairseq prepare`` in ``TEXT_ROOT/DATA/raw/``);
- sacreBLEU (13a) and chrF of the detokenized output against the original references that
  ``labo-fairseq prepare`` keeps (``TEXT_ROOT/DATA/raw/``), lowercased where the dataset's text is;
  none where those references are missing (never against references rebuilt from tokenized text).

A run whose training has not completed is refused unless ``--checkpoint`` names a checkpoint.

Writes ``RESULTS/DATASET/METHOD[-tauT]/seedS.json`` and the hypotheses beside it
(``seedS.SRC-TGT.hyp``, in test-set order) and the per-sentence BLEU statistics (``seedS.stats.json``,
for :mod:`labo_fairseq.scoring.stats`); the full fairseq-generate output stays in the run's
``eval/``. An existing result is kept unless ``--force``.
"""

import argparse
import datetime
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from labo_fairseq.runtime.commandline import ArgumentParser, split_extra
from labo_fairseq.runtime.errors import ToolError, UsageError, usage_errors
from labo_fairseq.runtime.files import atomic_open, check_checkpoint, read_json, read_lines, relative, write_json, write_lines
from labo_fairseq.runtime.processes import cuda_visible
from labo_fairseq.scoring import bleu as B
from labo_fairseq.study.fairseq_tools import (
    checkpoint_state,
    generate_command,
    parse_generate,
    run_generate,
    split_size,
    validation_curve,
)
from labo_fairseq.study.protocol import (
    RUN_MARKER,
    Roots,
    absolute,
    add_root_arguments,
    add_run_arguments,
    dataset_config,
    directions,
    method_config,
    portable_command,
    raw_reference,
    result_path,
    run_dir,
    training_completed,
)

# The criterion hyper-parameters worth recording, by fairseq-train flag.
HPARAM_FLAGS = ("--criterion", "--label-smoothing", "--labo-tau", "--labo-rho", "--labo-alpha",
                "--labo-warmup-updates", "--cp-beta", "--focal-gamma", "--focal-detach-weight",
                "--anti-focal-gamma", "--anti-focal-alpha", "--anti-focal-differentiate-weight",
                "--arch", "--lr", "--max-tokens", "--max-epoch", "--max-update", "--dropout", "--update-freq",
                "--distributed-world-size", "--fp16", "--seed")


class EvalError(UsageError):
    """A missing run, checkpoint or reference, or an incomplete translation; the message says which."""


def hyper_parameters(argv: List[str]) -> Dict:
    """The recorded flags' values in a fairseq-train argv (the last occurrence wins, as in argparse)."""
    out: Dict = {}
    for i, tok in enumerate(argv):
        if tok in HPARAM_FLAGS:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            out[tok.lstrip("-").replace("-", "_")] = True if nxt is None or nxt.startswith("--") else nxt
    return out


def test_sets(ds: Dict, src: str, tgt: str) -> Dict[str, str]:
    """Result key -> fairseq subset: ``SRC-TGT`` is the test set; a dataset's ``extra_test_sets``
    (subset -> name) are scored too, as ``SRC-TGT.NAME``."""
    out = {f"{src}-{tgt}": "test"}
    out.update({f"{src}-{tgt}.{name}": subset for subset, name in (ds.get("extra_test_sets") or {}).items()})
    return out


def decode_command(ds: Dict, data: Path, checkpoint: Path, src: str, tgt: str, cpu: bool, batch_size: int,
                   extra: Sequence[str] = (), subset: str = "test") -> List[str]:
    """Beam 5 on a test subset, BPE removed the dataset's way, the multilingual task where it is one."""
    task = ["--source-lang", src, "--target-lang", tgt]
    if ds.get("task") == "multilingual_translation":
        task += ["--task", "multilingual_translation", "--lang-pairs", ds["args"]["--lang-pairs"]]
    return generate_command(data, checkpoint, subset, 5, batch_size=batch_size,
                            remove_bpe="sentencepiece" if ds.get("bpe") == "sentencepiece" else "subword_nmt",
                            task_args=task, cpu=cpu, extra=extra)


def read_raw_references(path: Optional[Path], n_test: int) -> Optional[List[str]]:
    """The kept original references of a test set, or None where there are none; a count that differs
    from the test set's is an error naming both."""
    if path is None or not path.is_file():
        return None
    refs = read_lines(path)
    if len(refs) != n_test:
        raise EvalError(f"{path}: {len(refs)} lines but the test set has {n_test} sentences")
    return refs


def score_direction(ds: Dict, gen_text: str, n_test: int, src: str, tgt: str,
                    references: Optional[Path]) -> Tuple[Dict, List[str], List[List[int]]]:
    """(the direction's scores, the hypotheses in test-set order, the paper BLEU's per-sentence
    statistics) from fairseq-generate's output. ``references``: the raw references kept by prepare.

    - ``bleu``: the paper's convention (tokenized text: against fairseq's T- lines, as fairseq scores);
    - ``sacrebleu`` and ``chrf``: the detokenized output against the original references, lowercased
      where the dataset's text is (``lowercase: true``: signature ``case:lc``); None without them."""
    g = parse_generate(gen_text)
    if sorted(g.hypothesis) != list(range(n_test)):
        raise EvalError(f"{src}-{tgt}: fairseq-generate translated {len(g.hypothesis)} of {n_test} test sentences")
    hyps = g.ordered(g.hypothesis)
    convention, lowercase = ds["bleu"], bool(ds.get("lowercase"))
    raw = read_raw_references(references, n_test)
    if convention == "sacrebleu":  # the output is detokenized text: the paper's metric is on the raw references
        if raw is None:
            raise EvalError(f"{src}-{tgt}: raw references not found at {references} (kept by labo-fairseq prepare "
                            f"under data/DATASET/raw/; pass --text-root)")
        refs, detok = raw, hyps
        bleu_refs = f"{references} (the original references)"
    else:  # tokenized text: fairseq's references (T- lines, BPE removed), as fairseq-generate scores them
        refs, detok = g.ordered(g.reference), B.detokenize(hyps, tgt)
        bleu_refs = "fairseq-generate T- lines (the prepared test text, BPE removed)"
    paper = B.paper_bleu(convention, hyps, refs)
    out = {"bleu": paper["bleu"], "convention": convention, "paper_metric": paper, "bleu_references": bleu_refs,
           "fairseq_bleu_line": g.bleu_line, "sentences": n_test}
    if raw is None:
        out.update({"sacrebleu": None, "chrf": None,
                    "sacrebleu_note": f"no original references at {references}: no sacreBLEU or chrF "
                                      f"(labo-fairseq prepare keeps them; prepare again with --force)"})
    else:
        sacre = paper if convention == "sacrebleu" else B.sacrebleu_13a(detok, raw, lowercase)
        ch = B.chrf(detok, raw, lowercase)
        out.update({"sacrebleu": sacre["bleu"], "sacrebleu_signature": sacre["signature"], "sacrebleu_detail": sacre,
                    "chrf": ch["chrf"], "chrf_signature": ch["signature"],
                    "sacrebleu_input": ("detokenized output" if convention == "sacrebleu" else
                                        "Moses-detokenized output") + " vs the original references",
                    "raw_references": str(references), "raw_references_sha256": sha256_lines(raw)})
    return out, hyps, B.paper_stats(convention, hyps, refs)


def sha256_lines(lines: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha256("".join(line + "\n" for line in lines).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class EvalPlan:
    """What an evaluation reads and writes: the run, its checkpoint, the data, the result, the commands."""

    ds: Dict
    roots: Roots
    run_dir: Path
    checkpoint: Path
    named: bool  # a checkpoint named explicitly: may be of a run still training
    out: Path
    data: Path
    cpu: bool
    cmds: Dict[str, List[str]]  # result key -> fairseq-generate command


def plan_evaluation(o: "EvaluateOptions") -> EvalPlan:
    from labo_fairseq.study.kd import runs as kd_runs

    ds, _ = dataset_config(o.dataset), method_config(o.method)
    roots = o.roots()
    student = kd_runs.plan(o.dataset, ds["data"], o.method, o.tau, o.teacher, o.data_variant, o.student, roots.runs,
                           roots.data_bin)
    tag, tau = (o.method, o.tau) if student is None else (student.tag, None)  # a student's tag names its run
    rd = run_dir(roots.runs, o.dataset, tag, o.seed, tau)
    which = o.checkpoint or "best"
    ck = (rd / "checkpoints" / f"checkpoint_{which}.pt" if which in ("best", "last") else absolute(Path(which)))
    data = roots.data_bin / ds["data"]
    cpu = o.cpu or not cuda_visible(probe_torch=not o.dry_run)  # a dry run imports neither torch nor fairseq
    cmds = {key: decode_command(ds, data, ck, s, t, cpu, o.batch_size, o.generate_args, subset)
            for s, t in directions(ds) for key, subset in test_sets(ds, s, t).items()}
    return EvalPlan(ds, roots, rd, ck, o.checkpoint is not None, result_path(roots.results, o.dataset, tag, o.seed, tau),
                    data, cpu, cmds)


def evaluate(o: "EvaluateOptions") -> int:
    p = plan_evaluation(o)
    if o.dry_run:
        print(f"# result {p.out} (hypotheses beside it; fairseq-generate output in {p.run_dir / 'eval'})")
        for cmd in p.cmds.values():
            print(shlex.join(cmd))
        return 0
    if p.out.is_file() and not o.force:
        print(f"evaluate: {p.out} exists: already evaluated, nothing to do (--force scores it again)", file=sys.stderr)
        return 0
    run, completed = _check_inputs(o, p)
    (p.run_dir / "eval").mkdir(exist_ok=True)
    p.out.parent.mkdir(parents=True, exist_ok=True)
    started, t0 = datetime.datetime.now(datetime.timezone.utc).isoformat(), time.time()
    scores, sentence_stats = _score_all(o, p)
    stats_file = p.out.with_name(f"{p.out.stem}.stats.json")
    write_json(stats_file, {"what": "per-sentence BLEU statistics of the reported BLEU (sacrebleu: hyp_len, ref_len, "
                                    "matches 1-4, totals 1-4), for significance tests", "directions": sentence_stats},
               indent=None)
    write_json(p.out, _result(o, p, run, completed, scores, stats_file, started, t0))
    print(f"evaluate: wrote {p.out}", file=sys.stderr)
    return 0


def _check_inputs(o: "EvaluateOptions", p: EvalPlan) -> Tuple[Dict, bool]:
    """The run's record and whether its training completed; :class:`EvalError` naming what is missing."""
    rd, ck = p.run_dir, p.checkpoint
    marker = rd / RUN_MARKER
    if not marker.is_file():
        raise EvalError(f"{rd}: no run here ({RUN_MARKER} missing); train it first: "
                        f"labo-fairseq train {o.dataset} {o.method} {o.seed}" + (f" --tau {o.tau:g}" if o.tau else ""))
    run = read_json(marker)
    completed = training_completed(rd)
    if not completed and not p.named:
        raise EvalError(f"{rd}: training has not completed ({RUN_MARKER} has no 'completed'): finish it with the same "
                        f"labo-fairseq train command (it resumes), or name a checkpoint with --checkpoint best|last|PATH "
                        f"to score it anyway (the result then says 'training not completed')")
    if not ck.is_file():
        raise EvalError(f"{ck}: no such checkpoint (training not finished? --checkpoint last|PATH)")
    check_checkpoint(ck)
    if not p.data.is_dir():
        raise EvalError(f"{p.data}: no such data-bin directory (--data-root; labo-fairseq prepare makes it)")
    return run, completed


def _score_all(o: "EvaluateOptions", p: EvalPlan) -> Tuple[Dict, Dict[str, List[List[int]]]]:
    """Decode and score every test set the data-bin has: the scores and per-sentence statistics by key."""
    scores: Dict = {}
    sentence_stats: Dict[str, List[List[int]]] = {}
    no_raw: List[str] = []
    for key, cmd in p.cmds.items():
        pair = key.split(".")[0]
        src, tgt = pair.split("-")
        subset = cmd[cmd.index("--gen-subset") + 1]
        if subset != "test" and not any((p.data / f"{subset}.{x}.{src}.idx").is_file() for x in (pair, f"{tgt}-{src}")):
            print(f"evaluate: note: {p.data} has no {subset} ({key.split('.', 1)[1]}): not scored; "
                  f"`labo-fairseq prepare ... --force` binarizes it", file=sys.stderr)
            continue
        scores[key], sentence_stats[key], refs = _score_one(o, p, key, cmd, subset, src, tgt)
        if scores[key]["sacrebleu"] is None:
            no_raw.append(str(refs))
    if no_raw:
        print(f"evaluate: note: no original references ({', '.join(no_raw)}): no sacreBLEU or chrF written; "
              f"`labo-fairseq prepare ... --force` keeps them", file=sys.stderr)
    return scores, sentence_stats


def _score_one(o: "EvaluateOptions", p: EvalPlan, key: str, cmd: List[str], subset: str, src: str,
               tgt: str) -> Tuple[Dict, List[List[int]], Path]:
    """One test set decoded (its output kept in the run's eval/), scored, its hypotheses written."""
    try:
        n_test = split_size(p.data, subset, src, tgt)
    except FileNotFoundError as err:
        raise EvalError(f"{err}; prepare the data again with --force if it was made by an older version") from None
    print(f"evaluate: {o.dataset} {o.method} seed {o.seed} {key}: beam 5 on {n_test} test sentences", file=sys.stderr)
    try:
        proc = run_generate(cmd, cwd=p.roots.root)
    except ToolError as err:
        raise EvalError(str(err)) from None
    gen_file = p.run_dir / "eval" / f"generate-{subset}.{key.split('.')[0]}.txt"
    with atomic_open(gen_file) as f:
        f.write(proc.stdout)
    refs = raw_reference(p.roots.text, p.ds, subset, src, tgt)
    score, hyps, stats = score_direction(p.ds, proc.stdout + "\n" + proc.stderr, n_test, src, tgt, refs)
    for k in ("raw_references", "bleu_references", "sacrebleu_note"):  # the references' path, relative to the root
        if score.get(k):
            score[k] = score[k].replace(str(refs), relative(refs, p.roots.root))
    hyp_file = p.out.with_name(f"{p.out.stem}.{key}.hyp")
    write_lines(hyp_file, hyps)
    extra = "" if score["sacrebleu"] is None else f", sacreBLEU {score['sacrebleu']:.2f}, chrF {score['chrf']:.2f}"
    print(f"  {key}: BLEU {score['bleu']:.2f} ({score['convention']}){extra}", file=sys.stderr)
    return ({**score, "subset": subset, "hypotheses": hyp_file.name,
             "generate_output": relative(gen_file, p.roots.root),
             "command": portable_command(cmd, p.roots.root)}, stats, refs)


def _result(o: "EvaluateOptions", p: EvalPlan, run: Dict, completed: bool, scores: Dict, stats_file: Path,
            started: str, t0: float) -> Dict:
    """The result JSON: scores, the chosen checkpoint and its validation, the training run's record;
    ``started`` and ``t0``: when the decoding began (date, ``time.time()``)."""
    from labo_fairseq.runtime.provenance import git_state, hardware
    from labo_fairseq.study.kd import runs as kd_runs

    rd, ck, root = p.run_dir, p.checkpoint, p.roots.root
    last = rd / "checkpoints" / "checkpoint_last.pt"
    hparams, chosen = hyper_parameters(run["command"]), checkpoint_state(ck)
    curve = validation_curve(rd / "train.log")  # the learning curve; the chosen checkpoint's validation in it
    last_state = chosen if last.is_file() and last.samefile(ck) else checkpoint_state(last) if last.is_file() else None
    result = {
        "dataset": o.dataset, "method": o.method, "seed": o.seed,
        "tau": float(hparams.get("labo_tau", 0)) or None,
        "hyper_parameters": hparams, "extra_train_args": run.get("extra_args", []),
        "extra_generate_args": list(o.generate_args),
        "bleu_convention": p.ds["bleu"], "lowercase": bool(p.ds.get("lowercase")), "directions": scores,
        "sentence_stats": stats_file.name, "training_completed": completed,
        "validation": next((v for v in curve if v.get("updates") == chosen["updates"]), None),
        "validation_curve": curve,
        "checkpoint": {"path": relative(ck, root), **chosen},
        "train": {"run_dir": relative(rd, root), "stopping": run.get("stopping"),
                  "command": portable_command(run["command"], root),
                  "commit": run.get("commit"), "dirty": run.get("dirty"),
                  "hardware": run.get("hardware"), "gpus": run.get("gpus"), "procs": run.get("procs"),
                  "nodes": run.get("nodes"), "sessions": len(run.get("sessions", [])) or 1,
                  "processes": [{k: s.get(k) for k in ("started", "commit", "dirty")} for s in run.get("sessions", [])],
                  "last_checkpoint": last_state},
        "evaluate": {**git_state(), "hardware": hardware(), "started": started, "wall_s": round(time.time() - t0, 1),
                     "beam": 5, "device": "cpu" if p.cpu else "cuda"},
    }
    if run.get("distillation"):
        result["distillation"] = {**run["distillation"], "teacher_gamma": kd_runs.teacher_gamma(rd)}
    return result


@dataclass(frozen=True)
class EvaluateOptions:
    """``labo-fairseq evaluate``'s options (see :func:`main`'s parser)."""

    dataset: str
    method: str
    seed: int
    tau: Optional[float] = None
    checkpoint: Optional[str] = None
    root: Optional[Path] = None
    data_root: Optional[Path] = None
    text_root: Optional[Path] = None
    runs_root: Optional[Path] = None
    results_root: Optional[Path] = None
    teacher: Tuple[str, ...] = ()
    data_variant: Optional[str] = None
    student: bool = False
    batch_size: int = 128
    cpu: bool = False
    force: bool = False
    dry_run: bool = False
    generate_args: Tuple[str, ...] = ()

    def roots(self) -> Roots:
        return Roots.from_options(self.root, data=self.data_root, text=self.text_root, runs=self.runs_root,
                                  results=self.results_root)


def main(argv=None, prog="labo-fairseq evaluate") -> int:
    ap = ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(ap, "LABO's tau, as given to the train command")
    ap.add_argument("--checkpoint",
                    help="best (chosen by validation BLEU, or NLL for IWSLT'17; the default), last, or a path; "
                         "naming one scores a run whose training has not completed (the result says so)")
    add_root_arguments(ap, "data", "text", "runs", "results")
    from labo_fairseq.study.kd import runs as kd_runs

    kd_runs.add_arguments(ap)
    ap.add_argument("--batch-size", type=int, default=128, help="sentences per decoding batch (fairseq's recipe: 128)")
    ap.add_argument("--cpu", action="store_true", help="decode on CPU even if a GPU is there")
    ap.add_argument("--force", action="store_true", help="replace an existing result")
    ap.add_argument("--dry-run", action="store_true", help="print the fairseq-generate command(s), run nothing")
    ap.epilog = ("Extra fairseq-generate flags go after --, e.g. -- --max-len-b 50 (recorded; the table marks "
                 "such results, since they differ from the paper's decoding).")
    own, extra = split_extra(sys.argv[1:] if argv is None else argv)
    a = ap.parse_args(own)
    if a.batch_size < 1:
        ap.error(f"--batch-size must be >= 1, got {a.batch_size}")
    if a.tau is not None and a.method != "labo":
        ap.error("--tau applies to the labo method only")
    o = EvaluateOptions(**{**vars(a), "teacher": tuple(a.teacher)}, generate_args=tuple(extra))
    with usage_errors():
        return evaluate(o)
