"""The converged LS-vs-LABO comparison on Multi30k de->en (``labo-fairseq compare``).

The paper's IWSLT model and protocol scaled to the corpus (``configs/datasets/multi30k_de_en_iwslt.yaml``,
every value with its reason): LS and LABO, several seeds each, the checkpoint chosen by validation
BLEU, beam 5 on test_2016_flickr, test_2017_flickr and test_2017_mscoco. Steps, each through the
project's own commands and each skipped when its output exists:

  1. ``prepare multi30k.de-en`` (when the data-bin is missing; ``--source DIR`` for offline files);
  2. ``train`` of every run not finished, all at once (they share one GPU, or the CPU);
  3. ``evaluate`` of every finished run;
  4. the report: mean ± std per method and test set, and LABO − LS with sacrebleu's paired bootstrap
     resampling (p-value) per test set, into ``RESULTS/compare/compare.{json,md}``;
  5. the analysis commands (frequency splits, beam probabilities, calibration) on the seed-1
     checkpoints, into ``ROOT/analysis/compare/``.

``--budget-minutes`` bounds one call: training stops (losing at most the updates since its last
save) and later steps wait when time runs out; the next call resumes. Exit status 0 means the
comparison is complete, 3 that it is not yet (call again). ``--tiny`` runs the same code path with a
tiny model and a few updates, on CPU in minutes: a check of the pipeline, not a result.
"""

import argparse
import json
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from labo_fairseq.io import atomic_open, cuda_visible, read_lines, write_json
from labo_fairseq.protocol import RUN_MARKER, Roots, absolute, dataset_config, result_path, run_dir

DATASET = "multi30k_de_en_iwslt"
DATA = "multi30k.de-en"
METHODS = ("ls", "labo")
NOT_FINISHED = 3  # exit status: call again to continue
# --tiny: a 1-layer model for a few updates, short outputs: the code path in minutes on 2 CPU cores.
TINY_TRAIN = ["--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32",
              "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
              "--encoder-attention-heads", "2", "--decoder-attention-heads", "2", "--share-all-embeddings",
              "--max-tokens", "2000", "--max-update", "24", "--warmup-updates", "8",
              "--lr", "2e-3", "--save-interval-updates", "8",
              "--eval-bleu-args", '{"beam": 1, "max_len_a": 0, "max_len_b": 12}']
TINY_DECODE = ["--max-len-a", "0", "--max-len-b", "12"]


class Compare:
    """One call of the command: what is done, what to run next, and the time left."""

    def __init__(self, a: argparse.Namespace):
        self.a, self.roots = a, Roots.from_args(a)
        self.deadline = time.monotonic() + 60 * a.budget_minutes
        self.lf = [sys.executable, "-m", "labo_fairseq"]
        self.gpu = not a.cpu and cuda_visible(probe_torch=not a.dry_run)
        self.data = self.roots.data_bin / DATA

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def say(self, msg: str) -> None:
        print(f"compare: {msg}", file=sys.stderr, flush=True)

    def runs(self):
        for method in METHODS:
            for seed in self.a.seeds:
                yield method, seed, (self.a.tau if method == "labo" else None)

    def root_args(self) -> List[str]:
        return ["--root", str(self.roots.root), "--data-root", str(self.roots.data_bin),
                "--runs-root", str(self.roots.runs), "--results-root", str(self.roots.results)]

    def train_cmd(self, method: str, seed: int, tau: Optional[float]) -> List[str]:
        cmd = [*self.lf, "train", DATASET, method, str(seed), *self.root_args()[:6]]
        cmd += (["--tau", f"{tau:g}"] if tau is not None else []) + (["--gpus", "1"] if self.gpu else [])
        if self.a.tiny:
            cmd += ["--", *TINY_TRAIN] + (["--labo-warmup-updates", "8"] if method == "labo" else [])
        return cmd

    def evaluate_cmd(self, method: str, seed: int, tau: Optional[float]) -> List[str]:
        cmd = [*self.lf, "evaluate", DATASET, method, str(seed), *self.root_args()]
        cmd += (["--tau", f"{tau:g}"] if tau is not None else []) + ([] if self.gpu else ["--cpu"])
        return cmd + (["--", *TINY_DECODE] if self.a.tiny else [])

    def finished(self, method: str, seed: int, tau: Optional[float]) -> bool:
        marker = run_dir(self.roots.runs, DATASET, method, seed, tau) / RUN_MARKER
        return marker.is_file() and "completed" in json.loads(marker.read_text())

    def result(self, method: str, seed: int, tau: Optional[float]) -> Path:
        return result_path(self.roots.results, DATASET, method, seed, tau)

    # ------------------------------------------------------------------------------- steps

    def prepare(self) -> bool:
        if (self.data / "test2.de-en.en.idx").is_file():
            return True
        if (self.data / "test.de-en.en.idx").is_file():
            raise SystemExit(f"compare: error: {self.data} lacks the 2017 test sets (test1, test2): prepare it again "
                             f"with `labo-fairseq prepare multi30k.de-en --force`")
        cmd = [*self.lf, "prepare", DATA, "--root", str(self.roots.root), "--dest", str(self.data)]
        cmd += [x for s in self.a.source for x in ("--source", str(absolute(s)))] + (["--offline"] if self.a.source else [])
        return self.run_one(cmd)

    def train(self) -> bool:
        todo = [r for r in self.runs() if not self.finished(*r)]
        if not todo:
            return True
        self.say(f"training {len(todo)} run(s) at once: " + ", ".join(f"{m} seed {s}" for m, s, _ in todo))
        # Each train command's own output goes to a temporary file, read back only if it fails: a pipe
        # nobody reads fills up (64 KiB) and then blocks the command, which could then not even stop.
        outputs = [tempfile.TemporaryFile("w+", encoding="utf-8") for _ in todo]
        procs = [subprocess.Popen(self.train_cmd(*r), stdout=subprocess.DEVNULL, stderr=out, text=True)
                 for r, out in zip(todo, outputs)]
        stopped = set()  # the runs this call stopped for the budget: they resume next time, they did not fail
        try:
            while any(p.poll() is None for p in procs) and self.left() > self.a.reserve_s:
                time.sleep(2)
        finally:
            for i, p in enumerate(procs):
                if p.poll() is None:
                    # SIGTERM, which the train command handles (it stops fairseq; checkpoint_last stays):
                    # SIGINT is ignored by a command started in the background of a script
                    p.send_signal(signal.SIGTERM)
                    stopped.add(i)
            for p in procs:
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        failed = [(r, p, out) for i, (r, p, out) in enumerate(zip(todo, procs, outputs))
                  if i not in stopped and p.returncode != 0 and not self.finished(*r)]
        for (m, s, t), p, out in failed:
            log = run_dir(self.roots.runs, DATASET, m, s, t) / "train.log"
            tail = log.read_text(encoding="utf-8")[-1500:] if log.is_file() else ""
            out.seek(0)
            self.say(f"{m} seed {s} failed (exit {p.returncode}): {out.read()[-1500:]}{tail}")
        for out in outputs:
            out.close()
        if failed:
            raise SystemExit(1)
        return all(self.finished(*r) for r in todo)

    def run_one(self, cmd: Sequence[str]) -> bool:
        self.say("+ " + shlex.join(cmd))
        if self.a.dry_run:
            return True
        proc = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"compare: error: {cmd[3]} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        return True

    def evaluate(self) -> bool:
        for r in self.runs():
            if not self.result(*r).is_file():
                if self.left() < self.a.reserve_s:
                    return False
                self.run_one(self.evaluate_cmd(*r))
        return True

    def report(self) -> Dict:
        from sacrebleu.metrics import BLEU
        from sacrebleu.significance import PairedTest

        results = {}
        for r in self.runs():
            results[r] = json.loads(self.result(*r).read_text())
            results[r]["_path"] = str(self.result(*r))  # its hypotheses lie beside it
        keys = list(next(iter(results.values()))["directions"])
        table: Dict = {}
        for key in keys:
            per: Dict = {}
            for method in METHODS:
                scores = [results[r]["directions"][key]["bleu"] for r in self.runs() if r[0] == method]
                per[method] = {"bleu": scores, "mean": statistics.fmean(scores),
                               "std": statistics.stdev(scores) if len(scores) > 1 else None}
            # Paired bootstrap of LABO against LS, on the seeds' outputs concatenated (same sentences
            # in the same order for both), and per seed pair.
            hyps = {m: [self.hypotheses(results[r], key) for r in self.runs() if r[0] == m] for m in METHODS}
            refs = self.references(results[next(iter(results))], key)
            pooled = self.bootstrap(PairedTest, BLEU, [h for hs in hyps["ls"] for h in hs],
                                    [h for hs in hyps["labo"] for h in hs], refs * len(self.a.seeds))
            paired = [self.bootstrap(PairedTest, BLEU, a, b, refs) for a, b in zip(hyps["ls"], hyps["labo"])]
            per["labo_minus_ls"] = {"delta_mean": per["labo"]["mean"] - per["ls"]["mean"], "pooled": pooled,
                                    "per_seed": paired}
            table[key] = per
        return {"dataset": DATASET, "seeds": list(self.a.seeds), "tau": self.a.tau, "tiny": self.a.tiny,
                "bleu": "tokenized (the IWSLT'14 convention)", "test_sets": table,
                "results": {f"{m} seed {s}": str(self.result(m, s, t)) for m, s, t in self.runs()}}

    def hypotheses(self, result: Dict, key: str) -> List[str]:
        return read_lines(Path(result["_path"]).with_name(result["directions"][key]["hypotheses"]))

    @staticmethod
    def references(result: Dict, key: str) -> List[str]:
        from labo_fairseq.io import parse_generate

        g = parse_generate(Path(result["directions"][key]["generate_output"]).read_text(encoding="utf-8"))
        return g.ordered(g.reference)

    def bootstrap(self, paired_test, bleu, base: List[str], system: List[str], refs: List[str]) -> Dict:
        metric = bleu(tokenize="none", force=True)
        _, scores = paired_test([("LS", base), ("LABO", system)], {"BLEU": metric}, [refs], test_type="bs",
                                n_samples=self.a.bootstrap_samples)()
        ls, labo = scores["BLEU"]
        return {"ls": round(ls.score, 2), "labo": round(labo.score, 2), "p_value": labo.p_value,
                "samples": self.a.bootstrap_samples, "sentences": len(refs)}

    def analysis(self) -> bool:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:  # the offline bundle leaves it out (64 MiB)
            self.say("analysis skipped: its figures need matplotlib (pip install 'labo-fairseq[plots]'); "
                     "run the same command again where it is installed")
            return True
        out = self.roots.root / "analysis" / "compare"
        seed = self.a.seeds[0]
        ck = {m: run_dir(self.roots.runs, DATASET, m, seed, self.a.tau if m == "labo" else None)
              / "checkpoints" / "checkpoint_best.pt" for m in METHODS}
        text = self.roots.text / DATA / "tmp"
        hyps = {m: self.result(m, seed, self.a.tau if m == "labo" else None).with_name(f"seed{seed}.de-en.hyp")
                for m in METHODS}
        cpu = [] if self.gpu else ["--cpu"]
        steps = [
            (out / "freq" / "freq_splits.json",
             [*self.lf, "analyze", "freq-splits", "--train-src", str(text / "train.de"), "--src", str(text / "test.de"),
              "--ref", str(text / "test.en"), *[f"--system={m.upper()}={hyps[m]}" for m in METHODS],
              "--tokenize", "none", "--parts", "3", "--out", str(out / "freq")]),
            (out / "beam" / "beam_probs.json",
             [*self.lf, "analyze", "beam-probs", str(self.data), *[f"--system={m.upper()}={ck[m]}" for m in METHODS],
              "--splits", str(out / "freq" / "freq_splits.json"), "--out", str(out / "beam"), *cpu]
             + (["--max-tokens", "2000"] if self.a.tiny else [])),
        ] + [(out / f"calibration_{m}" / "calibration.json",
              [*self.lf, "analyze", "calibrate", str(self.data), "--path", str(ck[m]), "--subset", "valid",
               "--out", str(out / f"calibration_{m}"), *cpu]) for m in METHODS]
        for done, cmd in steps:
            if done.is_file():
                continue
            if self.left() < self.a.reserve_s:
                return False
            self.run_one(cmd)
        return True


def markdown(rep: Dict) -> str:
    lines = ["| test set | LS | LABO | LABO − LS | p (paired bootstrap, seeds pooled) | p per seed |",
             "|---|---|---|---|---|---|"]

    def cell(d):
        return f"{d['mean']:.2f}" + (f" ± {d['std']:.2f}" if d["std"] is not None else "") + f" (n={len(d['bleu'])})"

    for key, per in rep["test_sets"].items():
        name = key.split(".", 1)[1] if "." in key else "test_2016_flickr"
        d = per["labo_minus_ls"]
        lines.append(f"| {name} | {cell(per['ls'])} | {cell(per['labo'])} | {d['delta_mean']:+.2f} | "
                     f"{d['pooled']['p_value']:.4f} | " + ", ".join(f"{p['p_value']:.3f}" for p in d["per_seed"]) + " |")
    head = (f"### LS vs LABO (τ={rep['tau']:g}) on Multi30k de→en, tokenized BLEU, beam 5, seeds "
            f"{', '.join(map(str, rep['seeds']))}" + (" — TINY: a pipeline check, not a result" if rep["tiny"] else ""))
    return head + "\n\n" + "\n".join(lines) + "\n"


def main(argv=None, prog="labo-fairseq compare") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, help="directory for data/, data-bin/, runs/, results/ and analysis/ "
                                               "(default: the working directory)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds per method (default: 1 2 3)")
    ap.add_argument("--tau", type=float, default=1.15, help="LABO's tau (default 1.15)")
    ap.add_argument("--source", type=Path, action="append", default=[],
                    help="directory with the Multi30k .gz files (offline preparation); default: download them")
    ap.add_argument("--budget-minutes", type=float, default=9.0,
                    help="wall time of this call (default 9: a 10-minute device call); the next call resumes")
    ap.add_argument("--reserve-s", type=float, default=45.0,
                    help="seconds kept for stopping cleanly before the budget ends (default 45)")
    ap.add_argument("--bootstrap-samples", type=int, default=1000, help="paired bootstrap resamples (default 1000)")
    ap.add_argument("--tiny", action="store_true", help="a tiny model and a few updates: the code path on CPU in minutes")
    ap.add_argument("--cpu", action="store_true", help="train and decode on CPU even with a GPU")
    ap.add_argument("--force", action="store_true", help="rewrite an existing report")
    ap.add_argument("--dry-run", action="store_true", help="print the commands of the next steps, run nothing")
    a = ap.parse_args(argv)
    if not a.seeds or any(s < 0 for s in a.seeds) or len(set(a.seeds)) != len(a.seeds):
        ap.error("--seeds: distinct integers >= 0")
    if a.tau <= 0 or a.budget_minutes <= 0 or a.bootstrap_samples < 1:
        ap.error("--tau, --budget-minutes and --bootstrap-samples must be positive")
    dataset_config(DATASET)  # the config is there
    c = Compare(a)
    if a.dry_run:
        c.prepare()
        for r in c.runs():
            c.say("+ " + shlex.join(c.train_cmd(*r)))
        for r in c.runs():
            c.say("+ " + shlex.join(c.evaluate_cmd(*r)))
        return 0
    report_json = c.roots.results / "compare" / ("compare_tiny.json" if a.tiny else "compare.json")
    if not (c.prepare() and c.train() and c.evaluate()):
        c.say(f"stopped for the time budget ({a.budget_minutes:g} min); run the same command again to continue")
        return NOT_FINISHED
    if not report_json.is_file() or a.force:
        rep = c.report()
        write_json(report_json, rep)
        with atomic_open(report_json.with_suffix(".md")) as f:
            f.write(markdown(rep))
    rep = json.loads(report_json.read_text())
    sys.stdout.write(markdown(rep))
    c.say(f"report {report_json}")
    if not c.analysis():
        c.say("analysis stopped for the time budget; run the same command again to continue")
        return NOT_FINISHED
    c.say(f"analysis in {c.roots.root / 'analysis' / 'compare'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
