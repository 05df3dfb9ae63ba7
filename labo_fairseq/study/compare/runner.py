"""One call of ``labo-fairseq compare``: prepare, train (``--parallel`` at a time), evaluate, analyse,
within a time budget; and the pilot's curves and epoch rule."""

import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from labo_fairseq.runtime.errors import ToolError, UsageError
from labo_fairseq.runtime.files import atomic_open, read_json, read_json_if_exists, write_json
from labo_fairseq.runtime.processes import cuda_visible, run_queue, run_tool, thread_env
from labo_fairseq.runtime.provenance import portable
from labo_fairseq.study.compare.report import (
    DATA,
    ReportError,
    build_report,
    label,
    markdown,
    report_name,
    result_name,
    results_in,
)
from labo_fairseq.study.protocol import (
    Plateau,
    Roots,
    absolute,
    is_labo,
    labo_warmup_updates,
    plateau,
    result_candidates,
    result_path,
    run_dir,
    run_tag,
    tiny_model,
    training_completed,
)

if TYPE_CHECKING:
    from labo_fairseq.study.compare.command import CompareOptions

NOT_FINISHED = 3  # exit status: call again to continue
# --tiny: a 1-layer model for a few updates, short outputs: the code path in minutes on 2 CPU cores.
TINY_TRAIN = [*tiny_model(), "--share-all-embeddings", "--max-tokens", "2000", "--max-update", "24", "--warmup-updates", "8",
              "--lr", "2e-3", "--save-interval-updates", "8",
              "--eval-bleu-args", '{"beam": 1, "max_len_a": 0, "max_len_b": 12}']
TINY_DECODE = ["--max-len-a", "0", "--max-len-b", "12"]


class Compare:
    """One call of the command: what is done, what to run next, and the time left."""

    def __init__(self, o: "CompareOptions"):
        self.o, self.roots = o, Roots.from_options(o.root)
        self.dataset, self.methods = o.dataset, tuple(o.methods)
        self.deadline = time.monotonic() + 60 * o.budget_minutes
        self.lf = [sys.executable, "-m", "labo_fairseq"]
        self.gpu = not o.cpu and cuda_visible(probe_torch=not (o.dry_run or o.status))
        self.data = self.roots.data_bin / DATA
        self.terminated = False  # set by SIGTERM (a scheduler's preemption): stop like the budget does

    def left(self) -> float:
        return -1.0 if self.terminated else self.deadline - time.monotonic()

    def say(self, msg: str) -> None:
        print(f"compare: {msg}", file=sys.stderr, flush=True)

    def tau(self, method: str) -> Optional[float]:
        return self.o.tau if method == "labo" else None

    def runs(self):
        """Seed by seed (every method's seed 1 first), so that a partial study is a complete comparison."""
        for seed in self.o.seeds:
            for method in self.methods:
                yield method, seed, self.tau(method)

    def root_args(self) -> List[str]:
        return ["--root", str(self.roots.root), "--data-root", str(self.roots.data_bin),
                "--runs-root", str(self.roots.runs), "--results-root", str(self.roots.results)]

    def env(self) -> Dict[str, str]:
        return thread_env(self.o.threads)

    def train_cmd(self, method: str, seed: int, tau: Optional[float]) -> List[str]:
        cmd = [*self.lf, "train", self.dataset, method, str(seed), *self.root_args()[:6]]
        cmd += (["--tau", f"{tau:g}"] if tau is not None else []) + (["--gpus", "1"] if self.gpu else [])
        extra = [*TINY_TRAIN] if self.o.tiny else []
        if self.o.tiny and is_labo(method):  # LABO's warm-up shortened to a few updates, never lengthened (0 stays 0)
            extra += ["--labo-warmup-updates", str(min(8, labo_warmup_updates(self.dataset, method)))]
        if self.o.max_epoch:
            extra += ["--max-epoch", str(self.o.max_epoch)]
        return cmd + (["--", *extra] if extra else [])

    def evaluate_cmd(self, method: str, seed: int, tau: Optional[float]) -> List[str]:
        cmd = [*self.lf, "evaluate", self.dataset, method, str(seed), *self.root_args()]
        cmd += (["--tau", f"{tau:g}"] if tau is not None else []) + ([] if self.gpu else ["--cpu"])
        return cmd + (["--", *TINY_DECODE] if self.o.tiny else [])

    def finished(self, method: str, seed: int, tau: Optional[float]) -> bool:
        """Trained here, or its result present (here or kept in ``--results-from``): not trained again."""
        return (training_completed(run_dir(self.roots.runs, self.dataset, method, seed, tau))
                or self.result(method, seed, tau).is_file())

    def kept(self, method: str, seed: int, tau: Optional[float]) -> Optional[Path]:
        """The run's result in a ``--results-from`` directory of a training call (e.g. the checkout's
        ``results/``, where a lost work directory's finished runs were committed), else None."""
        if self.o.report:
            return None
        return next((p for d in self.o.results_from
                     for p in result_candidates(absolute(d), self.dataset, method, seed, tau) if p.is_file()), None)

    def result(self, method: str, seed: int, tau: Optional[float]) -> Path:
        """Where the run's result is (see :func:`result_candidates`): under ``--root``, else kept in
        ``--results-from``, else where evaluate writes it."""
        found = [p for p in result_candidates(self.roots.results, self.dataset, method, seed, tau) if p.is_file()]
        return (found[0] if found else self.kept(method, seed, tau)
                or result_path(self.roots.results, self.dataset, method, seed, tau))

    # ------------------------------------------------------------------------------- steps

    def prepare(self) -> bool:
        if (self.data / "test2.de-en.en.idx").is_file():
            return True
        if (self.data / "test.de-en.en.idx").is_file():
            raise UsageError(f"{self.data} lacks the 2017 test sets (test1, test2): prepare it again "
                             f"with `labo-fairseq prepare multi30k.de-en --force`")
        cmd = [*self.lf, "prepare", DATA, "--root", str(self.roots.root), "--dest", str(self.data)]
        cmd += [x for s in self.o.source for x in ("--source", str(absolute(s)))] + (["--offline"] if self.o.source else [])
        return self.run_one(cmd)

    def train(self) -> bool:
        """Train the unfinished runs, ``--parallel`` at a time, evaluating each as it finishes."""
        todo = [r for r in self.runs() if not self.finished(*r)]
        if not todo:
            return True
        parallel = self.o.parallel or len(todo)
        self.say(f"training {len(todo)} run(s), {min(parallel, len(todo))} at a time: "
                 + ", ".join(f"{m} seed {s}" for m, s, _ in todo))
        jobs = [(r, self.train_cmd(*r), self.train_output(*r)) for r in todo]
        _, failed = run_queue(jobs, parallel, lambda: self.left() - self.o.reserve_s, self.trained, env=self.env(),
                              interrupted=lambda: self.terminated)
        for (m, s, _), child in failed:
            self.say(child.failure(f"{m} seed {s}", chars=1500))
        if failed:
            raise ToolError(f"{len(failed)} training run(s) failed (above); fix the cause and run the same command again")
        return all(self.finished(*r) for r in self.runs())

    def trained(self, r: Tuple) -> bool:
        """After a train command exits 0: evaluate the run at once, so that its result can be kept."""
        if not self.finished(*r):
            return False
        if not self.result(*r).is_file() and self.left() > self.o.reserve_s:
            self.run_one(self.evaluate_cmd(*r))
        return True

    def train_output(self, method: str, seed: int, tau: Optional[float]) -> Path:
        """The train command's own output (fairseq's log is the run's train.log)."""
        return self.roots.root / "logs" / "compare" / self.dataset / f"{run_tag(method, tau)}-seed{seed}.train.out"

    def run_one(self, cmd: Sequence[str]) -> bool:
        self.say("+ " + shlex.join(cmd))
        if self.o.dry_run:
            return True
        run_tool(cmd, env=self.env(), what=cmd[3])
        return True

    def evaluate(self) -> bool:
        for r in self.runs():
            if not self.result(*r).is_file():
                if self.left() < self.o.reserve_s:
                    return False
                self.run_one(self.evaluate_cmd(*r))
        return True

    def found(self) -> Dict:
        """The results present, by (method, seed, tau): of this call's runs, or with ``--report
        --results-from`` every seed found in those results directories."""
        if self.o.report and self.o.results_from:
            return results_in(self.o.results_from, self.dataset, self.methods, self.o.tau)
        return {r: p for r, p in ((r, self.result(*r)) for r in self.runs()) if p.is_file()}

    def report(self) -> Dict:
        """The report of every result present (see :func:`build_report`)."""
        return build_report(self.dataset, self.found(), self.o.tau, self.o.bootstrap_samples, self.o.tiny)

    def report_is_current(self) -> bool:
        """Whether the written report already has every result present, as it is now (a call with more
        seeds than the one that wrote it, or after a run was evaluated again, must rebuild it)."""
        path = self.report_path()
        if not path.is_file():
            return False
        written, at = read_json(path).get("results", {}), path.stat().st_mtime
        return all(written.get(result_name(m, s)) == portable(p) and p.stat().st_mtime <= at
                   for (m, s, _), p in self.found().items())

    def report_path(self) -> Path:
        return self.roots.results / "compare" / f"{report_name(self.dataset, self.methods, self.o.tau, self.o.tiny)}.json"

    def analysis_dir(self) -> Path:
        return self.roots.root / "analysis" / "compare" / report_name(self.dataset, self.methods, self.o.tau, self.o.tiny)

    def analysis(self) -> bool:
        import importlib.util

        out = self.analysis_dir()
        seed = self.o.seeds[0]
        rd = {m: run_dir(self.roots.runs, self.dataset, m, seed, self.tau(m)) for m in self.methods}
        ck = {m: rd[m] / "checkpoints" / "checkpoint_best.pt" for m in self.methods}
        lost = [f"{m} seed {seed}" for m in self.methods if not ck[m].is_file()]
        if lost:  # a result kept in --results-from has no checkpoint here
            self.say(f"analysis skipped: no checkpoint of {', '.join(lost)} under {self.roots.runs} "
                     "(the analyses run where the runs' checkpoints are)")
            return True
        if importlib.util.find_spec("matplotlib") is None:  # the offline bundle leaves it out (64 MiB)
            self.say("analysis skipped: its figures need matplotlib (pip install 'labo-fairseq[plots]'); "
                     "run the same command again where it is installed")
            return True
        text = self.roots.text / DATA / "tmp"
        cpu = [] if self.gpu else ["--cpu"]
        small = ["--max-tokens", "2000"] if self.o.tiny else []
        coarse = ["--t-step", "0.1"] if self.o.tiny else []  # --tiny: a coarser temperature grid, the short test set
        gen = ["--gen-subset", "test2", "--max-len-b", "12"] if self.o.tiny else ["--gen-subset", "test"]
        systems = [f"--system={label(m)}={ck[m]}" for m in self.methods]
        steps = [
            (out / "freq" / "freq_splits.json",
             [*self.lf, "analyze", "freq-splits", "--train-src", str(text / "train.de"), "--src", str(text / "test.de"),
              "--ref", str(text / "test.en"),
              *[f"--system={label(m)}={rd[m] / 'eval' / 'generate-test.de-en.txt'}" for m in self.methods],
              "--tokenize", "none", "--parts", "3", "--out", str(out / "freq")]),
            (out / "beam" / "beam_probs.json",
             [*self.lf, "analyze", "beam-probs", str(self.data), *systems,
              "--splits", str(out / "freq" / "freq_splits.json"), "--out", str(out / "beam"), *cpu] + small),
            (out / "penultimate" / "penultimate.json",
             [*self.lf, "analyze", "penultimate", str(self.data), *systems, "--subset", "valid",
              "--out", str(out / "penultimate"), *cpu]),
        ] + [(out / f"calibration_{m}" / "calibration.json",
              [*self.lf, "analyze", "calibrate", str(self.data), "--path", str(ck[m]), "--subset", "valid",
               "--out", str(out / f"calibration_{m}"), *cpu, *coarse]) for m in self.methods
             ] + [(out / "inference_calibration" / m / "inference_calibration.json",
                   [*self.lf, "analyze", "inference-calibration", str(self.data), "--path", str(ck[m]),
                    "--name", label(m), "--subset", "valid", *gen, "--train-tgt", str(text / "train.en"),
                    "--out", str(out / "inference_calibration" / m), *cpu, *coarse])
                  for m in self.methods]
        for done, cmd in steps:
            if done.is_file():
                continue
            if self.left() < self.o.reserve_s:
                return False
            self.run_one(cmd)
        return True


def plateau_epoch(curves: Dict[str, List[Dict]], window: int = 10, gain: float = 0.2, step: int = 5) -> Optional[int]:
    """The pilot's rule: the first epoch E at which, for every curve, the best validation BLEU up to E
    is less than ``gain`` above the best up to E − ``window``; rounded up to a multiple of ``step``.
    None while some curve has not reached it."""
    found = []
    for rows in curves.values():
        best, e_found = {}, None
        for r in sorted(rows, key=lambda r: r["epoch"]):
            best[r["epoch"]] = max(r["bleu"], best.get(r["epoch"] - 1, float("-inf")))
            e = r["epoch"]
            if e - window in best and best[e] - best[e - window] < gain:
                e_found = e
                break
        if e_found is None:
            return None
        found.append(e_found)
    e = max(found)
    return -(-e // step) * step


def curves(c: "Compare") -> Dict:
    """Validation BLEU and NLL per epoch of every run present (from its train.log), and the pilot's rule."""
    from labo_fairseq.runtime.provenance import record
    from labo_fairseq.study.fairseq_tools import validation_curve

    out, runs = {}, {}
    for m, s, t in c.runs():
        rd = run_dir(c.roots.runs, c.dataset, m, s, t)
        rows = validation_curve(rd / "train.log")
        if rows:
            out[f"{m} seed {s}"] = [{"epoch": r["epoch"], "updates": r.get("updates"), "bleu": r.get("bleu"),
                                     "nll_loss": r.get("nll_loss")} for r in rows if r.get("bleu") is not None]
            run = read_json_if_exists(rd / "run.json", {})
            runs[f"{m} seed {s}"] = {"training_completed": training_completed(rd), "train_command": run.get("command"),
                                     "commit": run.get("commit"), "dirty": run.get("dirty"),
                                     "hardware": run.get("hardware")}
    return {"dataset": c.dataset, "curves": out, "runs": runs, "provenance": record("labo-fairseq compare"),
            "what": "validation BLEU (beam 5, tokenized as the test BLEU) and NLL (bits) per epoch, from train.log",
            "plateau_epoch": plateau_epoch(out) if out else None,
            "rule": "first epoch E where, for every run, best valid BLEU up to E is < 0.2 above the best up to "
                    "E - 10; rounded up to a multiple of 5"}



def status(c: "Compare") -> List[str]:
    """Where each run of the call stands, a line each: its result (kept or here) with where the rule
    stopped it, trained but not evaluated, training (last epoch, best so far, validations since it
    against the patience), or not started."""
    from labo_fairseq.study.fairseq_tools import validation_curve

    def where(rule: Plateau) -> str:
        if rule.best is None:
            return "no validation yet"
        cap = ", converged" if rule.converged else ", at its cap: not converged" if rule.cap_reached else ""
        return (f"epoch {rule.last_epoch}, best {rule.best:g} at epoch {rule.best_epoch}, "
                f"{rule.since_best}/{rule.patience or '-'} validations since{cap}")

    lines = []
    for m, s, t in c.runs():
        rd, res = run_dir(c.roots.runs, c.dataset, m, s, t), c.result(m, s, t)
        if res.is_file():
            stop = read_json(res).get("train", {}).get("stopping")
            state = f"done: {portable(res)}" + (f" ({where(Plateau.from_dict(stop))})" if stop else "")
        elif (rd / "run.json").is_file():
            rule = plateau(validation_curve(rd / "train.log"), read_json(rd / "run.json").get("command") or [])
            state = ("trained, not evaluated: " if training_completed(rd) else "training: ") + where(rule)
        else:
            state = "not started"
        lines.append(f"{label(m)} seed {s}: {state}")
    return lines


def write_report(c: Compare, rep: Dict) -> Path:
    """Write the report; one that would leave out results the existing report has needs ``--force``."""
    path = c.report_path()
    if path.is_file() and not c.o.force:
        dropped = sorted(set(read_json(path).get("results", {})) - set(rep["results"]))
        if dropped:
            raise ReportError(f"{path} has results this report would leave out ({', '.join(dropped)}): "
                              "name them too (--methods, --seeds, --results-from) or replace it with --force")
    write_json(path, rep)
    with atomic_open(path.with_suffix(".md")) as f:
        f.write(markdown(rep))
    import importlib.util

    if rep.get("curves") and importlib.util.find_spec("matplotlib") is not None:  # the plots extra
        from labo_fairseq.study.analysis.plots import validation_curves

        validation_curves(rep["curves"], path.with_suffix(".curves.png"))
    return path


