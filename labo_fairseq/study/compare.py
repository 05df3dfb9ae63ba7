"""The converged comparison of CE, LS and LABO on Multi30k de->en (``labo-fairseq compare``).

A dataset config fixes the model and protocol (``--dataset``): ``multi30k_de_en_iwslt`` (default)
is the paper's IWSLT model scaled to the corpus, for a GPU; ``multi30k_de_en_small`` is the
quickstart's model trained to convergence, for a few CPU cores. Several seeds per method, the
checkpoint chosen by validation BLEU, beam 5 on test_2016_flickr, test_2017_flickr and
test_2017_mscoco. Steps, each through the project's own commands and each skipped when its output
exists:

  1. ``prepare multi30k.de-en`` (when the data-bin is missing; ``--source DIR`` for offline files);
  2. ``train`` of every run not finished, ``--parallel`` at a time (default: all at once), each
     evaluated as soon as it finishes (``evaluate``: BLEU, sacreBLEU and chrF);
  3. the report, from every result present: mean ± std per method and test set (n per cell, cells
     under 3 seeds marked), LS − CE, LABO − LS and each ablation of LABO − LABO with the seed-aware
     paired bootstrap (Holm's adjustment over the test sets) and, per seed pair, sacrebleu's paired
     bootstrap and approximate randomization (:mod:`labo_fairseq.scoring.stats`), validation NLL and training
     time per method, into ``RESULTS/compare/DATASET.{json,md}`` (``DATASET_tauT`` for another τ,
     ``DATASET_ablations`` with ablations; a rebuilt report may add results, not leave any out);
  4. the analyses on the checkpoints of the first seed given (frequency splits, beam probabilities,
     calibration, penultimate layer, inference calibration) into ``ROOT/analysis/compare/DATASET/`` (named
     as the report).

``--report`` only builds the report from the results present (of any number of calls or machines).
``--budget-minutes`` bounds one call: training stops (losing at most the updates since its last
save) and later steps wait when time runs out; the next call resumes. Exit status 0 means the
comparison is complete, 3 that it is not yet (call again). ``--tiny`` runs the same code path with a
tiny model and a few updates, on CPU in minutes: a check of the pipeline, not a result.
"""

import argparse
import functools
import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from labo_fairseq.scoring import stats as S
from labo_fairseq.losses.hparams import HP
from labo_fairseq.runtime.errors import ToolError, UsageError
from labo_fairseq.runtime.commandline import ArgumentParser
from labo_fairseq.runtime.files import atomic_open, read_json, write_json
from labo_fairseq.runtime.processes import cuda_visible, run_queue, run_tool
from labo_fairseq.study.protocol import (
    Roots, absolute, check_methods, dataset_config, is_labo, labo_warmup_updates, method_config, names, result_candidates,
    result_path,
    result_sentence_stats, run_dir, run_tag, test_set_name, tiny_model, training_completed,
)

DATASET = "multi30k_de_en_iwslt"
DATA = "multi30k.de-en"
METHODS = ("ce", "ls", "labo")
# (system, baseline): the comparisons the project exists for
PAIRS = (("ls", "ce"), ("labo", "ls"))
MIN_SEEDS = 3
NOT_FINISHED = 3  # exit status: call again to continue
# --tiny: a 1-layer model for a few updates, short outputs: the code path in minutes on 2 CPU cores.
TINY_TRAIN = [*tiny_model(), "--share-all-embeddings", "--max-tokens", "2000", "--max-update", "24", "--warmup-updates", "8",
              "--lr", "2e-3", "--save-interval-updates", "8",
              "--eval-bleu-args", '{"beam": 1, "max_len_a": 0, "max_len_b": 12}']
TINY_DECODE = ["--max-len-a", "0", "--max-len-b", "12"]
NAMES = {"ce": "CE", "ls": "LS", "labo": "LABO"}


def label(method: str) -> str:
    """A method's name in the report: CE, LS, LABO, or an ablation's ``name:``."""
    return NAMES.get(method) or method_config(method).get("name", method)


def pairs(methods: Sequence[str]) -> List[Tuple[str, str]]:
    """(system, baseline) pairs tested: LS − CE, LABO − LS, and each ablation of LABO − LABO."""
    return [*PAIRS, *((m, "labo") for m in ablations(methods))]


def default_tau() -> float:
    return float(method_config("labo")["args"]["--labo-tau"])


def ablations(methods: Sequence[str]) -> List[str]:
    """The methods that are ablations of LABO (``base: labo``)."""
    return [m for m in methods if m not in METHODS and is_labo(m)]


def report_name(dataset: str, methods: Sequence[str], tau: float, tiny: bool = False) -> str:
    """``DATASET``, with ``_tauT`` when LABO runs at another τ than its config's, ``_ablations`` when
    ablations of LABO are among the methods and ``_tiny`` for ``--tiny``."""
    other_tau = "labo" in methods and tau != default_tau()
    return (dataset + (f"_tau{tau:g}" if other_tau else "") + ("_ablations" if ablations(methods) else "")
            + ("_tiny" if tiny else ""))


class ReportError(ValueError):
    """Results that cannot be compared (other configs or data), named."""


@functools.lru_cache(maxsize=None)
def protocol_flags() -> frozenset:
    """Flags a method, a seed or a run's place sets: what may differ between the runs compared
    (read from the method configs once)."""
    out = {"--seed", "--save-dir", "--user-dir", "--labo-warmup-updates", "--labo-tau", "--cpu", "--fp16",
           "--distributed-world-size", "--teacher-path"}
    for m in names("methods"):
        out |= set(method_config(m).get("args", {}))
    return frozenset(out)


def protocol_key(command: Sequence[str]) -> Tuple[str, ...]:
    """A run's fairseq-train command without what :func:`protocol_flags` names, its data directory by
    name only: equal for runs of one config on the same data, wherever they ran."""
    skip, out, i = protocol_flags(), [Path(command[1]).name], 2
    while i < len(command):
        tok = command[i]
        has_value = i + 1 < len(command) and not command[i + 1].startswith("--")
        if tok in skip:
            i += 2 if has_value else 1
            continue
        out.append(tok)
        i += 1
    return tuple(out)


class Compare:
    """One call of the command: what is done, what to run next, and the time left."""

    def __init__(self, a: argparse.Namespace):
        self.a, self.roots = a, Roots.from_args(a)
        self.dataset = getattr(a, "dataset", None) or DATASET
        self.methods = tuple(getattr(a, "methods", None) or METHODS)
        self.deadline = time.monotonic() + 60 * a.budget_minutes
        self.lf = [sys.executable, "-m", "labo_fairseq"]
        self.gpu = not a.cpu and cuda_visible(probe_torch=not a.dry_run)
        self.data = self.roots.data_bin / DATA
        self.terminated = False  # set by SIGTERM (a scheduler's preemption): stop like the budget does

    def left(self) -> float:
        return -1.0 if self.terminated else self.deadline - time.monotonic()

    def say(self, msg: str) -> None:
        print(f"compare: {msg}", file=sys.stderr, flush=True)

    def tau(self, method: str) -> Optional[float]:
        return self.a.tau if method == "labo" else None

    def runs(self):
        """Seed by seed (every method's seed 1 first), so that a partial study is a complete comparison."""
        for seed in self.a.seeds:
            for method in self.methods:
                yield method, seed, self.tau(method)

    def root_args(self) -> List[str]:
        return ["--root", str(self.roots.root), "--data-root", str(self.roots.data_bin),
                "--runs-root", str(self.roots.runs), "--results-root", str(self.roots.results)]

    def env(self) -> Dict[str, str]:
        threads = getattr(self.a, "threads", None)
        return {**os.environ, **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {})}

    def train_cmd(self, method: str, seed: int, tau: Optional[float]) -> List[str]:
        cmd = [*self.lf, "train", self.dataset, method, str(seed), *self.root_args()[:6]]
        cmd += (["--tau", f"{tau:g}"] if tau is not None else []) + (["--gpus", "1"] if self.gpu else [])
        extra = [*TINY_TRAIN] if self.a.tiny else []
        if self.a.tiny and is_labo(method):  # LABO's warm-up shortened to a few updates, never lengthened (0 stays 0)
            extra += ["--labo-warmup-updates", str(min(8, labo_warmup_updates(self.dataset, method)))]
        if getattr(self.a, "max_epoch", None):
            extra += ["--max-epoch", str(self.a.max_epoch)]
        return cmd + (["--", *extra] if extra else [])

    def evaluate_cmd(self, method: str, seed: int, tau: Optional[float]) -> List[str]:
        cmd = [*self.lf, "evaluate", self.dataset, method, str(seed), *self.root_args()]
        cmd += (["--tau", f"{tau:g}"] if tau is not None else []) + ([] if self.gpu else ["--cpu"])
        return cmd + (["--", *TINY_DECODE] if self.a.tiny else [])

    def finished(self, method: str, seed: int, tau: Optional[float]) -> bool:
        return training_completed(run_dir(self.roots.runs, self.dataset, method, seed, tau))

    def result(self, method: str, seed: int, tau: Optional[float]) -> Path:
        """Where the run's result is (see :func:`result_candidates`), else where evaluate writes it."""
        found = [p for p in result_candidates(self.roots.results, self.dataset, method, seed, tau) if p.is_file()]
        return found[0] if found else result_path(self.roots.results, self.dataset, method, seed, tau)

    # ------------------------------------------------------------------------------- steps

    def prepare(self) -> bool:
        if (self.data / "test2.de-en.en.idx").is_file():
            return True
        if (self.data / "test.de-en.en.idx").is_file():
            raise UsageError(f"{self.data} lacks the 2017 test sets (test1, test2): prepare it again "
                             f"with `labo-fairseq prepare multi30k.de-en --force`")
        cmd = [*self.lf, "prepare", DATA, "--root", str(self.roots.root), "--dest", str(self.data)]
        cmd += [x for s in self.a.source for x in ("--source", str(absolute(s)))] + (["--offline"] if self.a.source else [])
        return self.run_one(cmd)

    def train(self) -> bool:
        """Train the unfinished runs, ``--parallel`` at a time, evaluating each as it finishes."""
        todo = [r for r in self.runs() if not self.finished(*r)]
        if not todo:
            return True
        parallel = getattr(self.a, "parallel", None) or len(todo)
        self.say(f"training {len(todo)} run(s), {min(parallel, len(todo))} at a time: "
                 + ", ".join(f"{m} seed {s}" for m, s, _ in todo))
        jobs = [(r, self.train_cmd(*r), self.train_output(*r)) for r in todo]
        _, failed = run_queue(jobs, parallel, lambda: self.left() - self.a.reserve_s, self.trained, env=self.env(),
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
        if not self.result(*r).is_file() and self.left() > self.a.reserve_s:
            self.run_one(self.evaluate_cmd(*r))
        return True

    def train_output(self, method: str, seed: int, tau: Optional[float]) -> Path:
        """The train command's own output (fairseq's log is the run's train.log)."""
        return self.roots.root / "logs" / "compare" / self.dataset / f"{run_tag(method, tau)}-seed{seed}.train.out"

    def run_one(self, cmd: Sequence[str]) -> bool:
        self.say("+ " + shlex.join(cmd))
        if self.a.dry_run:
            return True
        run_tool(cmd, env=self.env(), what=cmd[3])
        return True

    def evaluate(self) -> bool:
        for r in self.runs():
            if not self.result(*r).is_file():
                if self.left() < self.a.reserve_s:
                    return False
                self.run_one(self.evaluate_cmd(*r))
        return True

    def report(self) -> Dict:
        """The report of every result present (see :func:`build_report`): of this call's runs, or with
        ``--results-from`` of every seed found in those results directories."""
        if getattr(self.a, "results_from", None):
            found = results_in(self.a.results_from, self.dataset, self.methods, self.a.tau)
        else:
            found = {r: self.result(*r) for r in self.runs() if self.result(*r).is_file()}
        return build_report(self.dataset, found, self.a.tau, self.a.bootstrap_samples, self.a.tiny)

    def report_path(self) -> Path:
        return self.roots.results / "compare" / f"{report_name(self.dataset, self.methods, self.a.tau, self.a.tiny)}.json"

    def analysis_dir(self) -> Path:
        return self.roots.root / "analysis" / "compare" / report_name(self.dataset, self.methods, self.a.tau, self.a.tiny)

    def analysis(self) -> bool:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:  # the offline bundle leaves it out (64 MiB)
            self.say("analysis skipped: its figures need matplotlib (pip install 'labo-fairseq[plots]'); "
                     "run the same command again where it is installed")
            return True
        out = self.analysis_dir()
        seed = self.a.seeds[0]
        rd = {m: run_dir(self.roots.runs, self.dataset, m, seed, self.tau(m)) for m in self.methods}
        ck = {m: rd[m] / "checkpoints" / "checkpoint_best.pt" for m in self.methods}
        text = self.roots.text / DATA / "tmp"
        cpu = [] if self.gpu else ["--cpu"]
        small = ["--max-tokens", "2000"] if self.a.tiny else []
        coarse = ["--t-step", "0.1"] if self.a.tiny else []  # --tiny: a coarser temperature grid, the short test set
        gen = ["--gen-subset", "test2", "--max-len-b", "12"] if self.a.tiny else ["--gen-subset", "test"]
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
            if self.left() < self.a.reserve_s:
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
    from labo_fairseq.study.fairseq_tools import validation_curve
    from labo_fairseq.runtime.provenance import record

    out, runs = {}, {}
    for m, s, t in c.runs():
        rd = run_dir(c.roots.runs, c.dataset, m, s, t)
        rows = validation_curve(rd / "train.log")
        if rows:
            out[f"{m} seed {s}"] = [{"epoch": r["epoch"], "updates": r.get("updates"), "bleu": r.get("bleu"),
                                     "nll_loss": r.get("nll_loss")} for r in rows if r.get("bleu") is not None]
            run = json.loads((rd / "run.json").read_text()) if (rd / "run.json").is_file() else {}
            runs[f"{m} seed {s}"] = {"training_completed": training_completed(rd), "train_command": run.get("command"),
                                     "commit": run.get("commit"), "dirty": run.get("dirty"),
                                     "hardware": run.get("hardware")}
    return {"dataset": c.dataset, "curves": out, "runs": runs, "provenance": record("labo-fairseq compare"),
            "what": "validation BLEU (beam 5, tokenized as the test BLEU) and NLL (bits) per epoch, from train.log", "plateau_epoch": plateau_epoch(out) if out else None,
            "rule": "first epoch E where, for every run, best valid BLEU up to E is < 0.2 above the best up to "
                    "E - 10; rounded up to a multiple of 5"}


def _load(path: Path) -> Dict:
    r = read_json(path)
    r["_path"] = str(path)
    return r


def results_in(dirs: Sequence[Path], dataset: str, methods: Sequence[str], tau: float) -> Dict:
    """Every ``DIR/DATASET/TAG/seedS.json`` of the methods in the results directories ``dirs`` (e.g.
    one per GPU allocation), by (method, seed, tau); a seed of a method found twice is an error naming
    both files."""
    found: Dict = {}
    for d in dirs:
        for m in methods:
            t = tau if m == "labo" else None
            tags = {p.parent.name for p in result_candidates(absolute(d), dataset, m, 0, t)}
            for path in sorted(p for tag in sorted(tags) for p in (absolute(d) / dataset / tag).glob("seed*.json")):
                if not path.stem[4:].isdigit():
                    continue
                run = (m, int(path.stem[4:]), t)
                if run in found:
                    raise ReportError(f"{m} seed {run[1]} is in {found[run]} and in {path}: give each allocation its "
                                      "own seeds (--seeds)")
                found[run] = path
    return found


def max_epoch(command: Sequence[str]) -> Optional[int]:
    """The ``--max-epoch`` a fairseq-train command ran with (its last occurrence wins), or None."""
    values = [command[i + 1] for i, tok in enumerate(command[:-1]) if tok == "--max-epoch"]
    return int(values[-1]) if values else None


def build_report(dataset: str, found: Dict[Tuple[str, int, Optional[float]], Path], tau: float,
                 samples: int = 1000, tiny: bool = False) -> Dict:
    """Mean ± std per method and test set (BLEU, sacreBLEU, chrF; n, and whether under MIN_SEEDS),
    the differences of :func:`pairs` (seed-aware bootstrap with Holm's adjustment over the test sets;
    per seed pair sacrebleu's bootstrap and AR), and per method the chosen checkpoints' epochs,
    validation NLL and training time. Refuses results of other configs or data (:func:`protocol_key`),
    naming two that differ."""
    if not found:
        raise ReportError(f"no results of {dataset} yet (train and evaluate first)")
    results = {r: _load(p) for r, p in found.items()}
    first_run, first = next(iter(results.items()))
    key0 = protocol_key(first["train"]["command"])
    for r, res in results.items():
        if protocol_key(res["train"]["command"]) != key0:
            raise ReportError(f"{res['_path']} and {first['_path']} were trained with different configs or data: "
                              "not compared (one config, one data-bin per report)")
    methods = [m for m in METHODS if any(r[0] == m for r in results)] + sorted({r[0] for r in results} - set(METHODS))
    keys = [k for k in first["directions"]]
    m_ = S.metric("bleu")
    table: Dict = {}
    for key in keys:
        per: Dict = {}
        for method in methods:
            rs = sorted(((r[1], res) for r, res in results.items() if r[0] == method and key in res["directions"]),
                        key=lambda x: x[0])
            cell = {"seeds": [s for s, _ in rs]}
            for metric in ("bleu", "sacrebleu", "chrf"):
                values = [res["directions"][key].get(metric) for _, res in rs]
                values = [v for v in values if v is not None]
                mean, std = S.mean_std(values) if values else (None, None)
                cell[metric] = {"values": values, "mean": mean, "std": std, "n": len(values)}
            cell["under_min_seeds"] = len(rs) < MIN_SEEDS
            cell["incomplete_training"] = [s for s, res in rs if res.get("training_completed") is False]
            cell["not_converged"] = [s for s, res in rs if (res["train"].get("stopping") or {}).get("converged") is False]
            per[method] = cell
        comparisons = {}
        for b, a in pairs(methods):
            if b not in per or a not in per:
                continue
            common = sorted(set(per[a]["seeds"]) & set(per[b]["seeds"]))
            if not common:
                continue
            st = {m: {s: result_sentence_stats(results[(m, s, tau if m == "labo" else None)], key) for s in common}
                  for m in (a, b)}
            comparisons[f"{b}_minus_{a}"] = {
                "seeds": common,
                "seed_aware": S.seed_bootstrap(m_, [st[a][s] for s in common], [st[b][s] for s in common], samples),
                "per_seed": {s: {"bootstrap": S.paired_bootstrap(m_, st[a][s], st[b][s], samples),
                                 "approximate_randomization": S.paired_ar(m_, st[a][s], st[b][s], 10 * samples)}
                             for s in common},
            }
        table[key] = {"methods": per, "comparisons": comparisons}
    for name in {n for t in table.values() for n in t["comparisons"]}:  # one family per pair: its test sets
        tests = [t["comparisons"][name]["seed_aware"] for t in table.values() if name in t["comparisons"]]
        for sa, p in zip(tests, S.holm([sa["p_value"] for sa in tests])):
            sa["p_holm"], sa["holm_family"] = p, len(tests)
    runs = {}
    for method in methods:
        rs = sorted(((r[1], res) for r, res in results.items() if r[0] == method), key=lambda x: x[0])
        runs[method] = [{
            "seed": s, "epoch": res["checkpoint"].get("epoch"), "updates": res["checkpoint"].get("updates"),
            "valid_metric": res["checkpoint"].get("valid_metric"), "valid_value": res["checkpoint"].get("valid_value"),
            "stopping": res["train"].get("stopping"),
            "valid_nll_bits": (res.get("validation") or {}).get("nll_loss"),
            "last_updates": ((res["train"].get("last_checkpoint") or {}).get("updates")),
            "train_wall_s": ((res["train"].get("last_checkpoint") or {}).get("train_wall_s")),
            "hardware": res["train"].get("hardware"), "commit": res["train"].get("commit"),
            "training_completed": res.get("training_completed"),
            "max_epoch": max_epoch(res["train"]["command"]),
        } for s, res in rs]
    config_epochs = dataset_config(dataset).get("args", {}).get("--max-epoch")
    return {"dataset": dataset, "tau": tau, "tiny": tiny, "bleu": first.get("bleu_convention"),
            "max_epoch": max_epoch(first["train"]["command"]),
            "config_max_epoch": int(config_epochs) if config_epochs is not None else None,
            "signatures": {k: {"bleu": first["directions"][k]["paper_metric"]["signature"],
                               **{m: first["directions"][k].get(f"{m}_signature") for m in ("sacrebleu", "chrf")}}
                           for k in keys},
            "test_sets": table, "runs": runs, "samples": samples,
            "results": {f"{m} seed {s}": str(p) for (m, s, _), p in found.items()}}


METRIC_NAMES = {"bleu": "BLEU", "nll_loss": "NLL (bits)", "loss": "loss (bits)"}


def run_cells(r: Dict) -> List[str]:
    """A run's row of the report after its chosen epoch: where it stopped, whether its rule says
    converged, the chosen checkpoint's validation metric named, NLL, updates, time."""
    value = r.get("valid_value", r.get("valid_bleu"))  # reports written before the metric was named: BLEU
    metric = METRIC_NAMES.get(r.get("valid_metric") or "bleu", r.get("valid_metric"))
    stop = r.get("stopping") or {}
    converged = "–" if not stop else "yes" if stop["converged"] else "no: reached the cap"
    return [str(stop.get("last_epoch", "–")), converged, "–" if value is None else f"{metric} {value:.2f}",
            "–" if r["valid_nll_bits"] is None else f"{r['valid_nll_bits']:.3f}", str(r["last_updates"]),
            "–" if r["train_wall_s"] is None else f"{r['train_wall_s'] / 60:.0f} min"]


def markdown(rep: Dict) -> str:
    """The report as markdown: one table of scores, one of differences, one of the runs."""
    ds = rep["dataset"]
    methods = list(next(iter(rep["test_sets"].values()))["methods"])

    def cell(d, metric):
        if not d[metric]["n"]:
            return "–"
        return (S.mean_std_text(d[metric]["values"]) + (" *" if d["under_min_seeds"] else "")
                + (" ‡" if d["incomplete_training"] else "") + (" §" if d.get("not_converged") else ""))

    head = (f"### {ds}: " + ", ".join(label(m) for m in methods) + f" (LABO τ={rep['tau']:g}), beam 5"
            + (" — TINY: a pipeline check, not a result" if rep["tiny"] else ""))
    if rep.get("max_epoch") and rep.get("config_max_epoch") and rep["max_epoch"] != rep["config_max_epoch"]:
        head += (f" — {rep['max_epoch']} epochs per run instead of the config's {rep['config_max_epoch']} "
                 "(what fitted the allocation): another protocol than the full one")
    lines = [head, "", "| test set | metric | " + " | ".join(label(m) for m in methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for key, t in rep["test_sets"].items():
        for metric, title in (("bleu", f"BLEU ({rep['bleu']})"), ("sacrebleu", "sacreBLEU"), ("chrf", "chrF")):
            lines.append(f"| {test_set_name(ds, key)} | {title} | "
                         + " | ".join(cell(t["methods"][m], metric) for m in methods) + " |")
    lines += ["", "| test set | difference (BLEU) | Δ | 95% CI | p (seed-aware bootstrap) | p, Holm over the test sets "
                  "| p per seed: bootstrap / AR |", "|---|---|---|---|---|---|---|"]
    for key, t in rep["test_sets"].items():
        for name, c in t["comparisons"].items():
            b, a = name.split("_minus_")
            sa = c["seed_aware"]
            holm = "–" if sa.get("p_holm") is None else S.format_p(sa["p_holm"], sa["samples"])  # older reports lack it
            per = ", ".join(f"{s}: {v['bootstrap']['p']} / {v['approximate_randomization']['p']}"
                            for s, v in c["per_seed"].items())
            lines.append(f"| {test_set_name(ds, key)} | {label(b)} − {label(a)} | {sa['delta']:+.2f} | "
                         f"[{sa['ci95'][0]:+.2f}, {sa['ci95'][1]:+.2f}] | {sa['p']} | {holm} | {per} |")
    lines += ["", "| method | seed | chosen epoch (updates) | stopped at epoch | converged | valid metric of the chosen "
                  "checkpoint | valid NLL (bits) | updates | training time |", "|---|---|---|---|---|---|---|---|---|"]
    for m, rs in rep["runs"].items():
        for r in rs:
            lines.append(f"| {label(m)} | {r['seed']} | {r['epoch']} ({r['updates']}) | " + " | ".join(run_cells(r)) + " |")
    sig = next(iter(rep["signatures"].values()))
    notes = ["Cells: mean ± sample std over n seeds; * fewer than 3 seeds; ‡ includes a run whose training had not "
             "completed; § includes a run that reached its epoch cap before its stopping rule said it had converged.",
             f"Differences: seed-aware paired bootstrap ({rep['samples']} samples: one set of sentence indices per "
             "sample for every seed of both methods; Δ of the seed-averaged corpus BLEU), and per seed pair "
             f"sacrebleu's paired bootstrap ({rep['samples']}) and approximate randomization ({10 * rep['samples']}). "
             "Holm: the seed-aware p-values of one difference over the test sets, adjusted for testing it on each.",
             "Signatures: " + "; ".join(f"{k} `{v}`" for k, v in sig.items() if v)]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def write_report(c: Compare, rep: Dict) -> Path:
    """Write the report; one that would leave out results the existing report has needs ``--force``."""
    path = c.report_path()
    if path.is_file() and not c.a.force:
        dropped = sorted(set(json.loads(path.read_text(encoding="utf-8")).get("results", {})) - set(rep["results"]))
        if dropped:
            raise ReportError(f"{path} has results this report would leave out ({', '.join(dropped)}): "
                              "name them too (--methods, --seeds, --results-from) or replace it with --force")
    write_json(path, rep)
    with atomic_open(path.with_suffix(".md")) as f:
        f.write(markdown(rep))
    return path


def main(argv=None, prog="labo-fairseq compare") -> int:
    ap = ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, help="directory for data/, data-bin/, runs/, results/ and analysis/ "
                                               "(default: the working directory)")
    ap.add_argument("--dataset", default=DATASET,
                    help=f"the config of the comparison (default {DATASET}: the paper's model, for a GPU; "
                         "multi30k_de_en_small: the quickstart's model to convergence, for a CPU)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), help="methods (default: ce ls labo)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds per method (default: 1 2 3)")
    ap.add_argument("--tau", type=float, default=HP["tau"].default, help=f"LABO's tau (default {HP['tau'].default:g})")
    ap.add_argument("--parallel", type=int, help="runs trained at a time (default: all at once)")
    ap.add_argument("--threads", type=int, help="CPU threads per run (OMP_NUM_THREADS; default: torch's choice)")
    ap.add_argument("--source", type=Path, action="append", default=[],
                    help="directory with the Multi30k .gz files (offline preparation); default: download them")
    ap.add_argument("--budget-minutes", type=float, default=9.0,
                    help="wall time of this call (default 9: a 10-minute allocation); the next call resumes")
    ap.add_argument("--reserve-s", type=float, default=45.0,
                    help="seconds kept for stopping cleanly before the budget ends (default 45)")
    ap.add_argument("--bootstrap-samples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    ap.add_argument("--report", action="store_true",
                    help="only build the report from the results present (n per cell shown), train nothing")
    ap.add_argument("--results-from", type=Path, nargs="+", metavar="DIR",
                    help="with --report: the results directories to read (e.g. one per GPU allocation), every "
                         "seed found in them; a method's seed found twice is an error")
    ap.add_argument("--max-epoch", type=int,
                    help="train this many epochs instead of the dataset config's (a shorter protocol, stated in "
                         "the report and never pooled with another)")
    ap.add_argument("--curves", action="store_true",
                    help="print the runs' validation curves (BLEU, NLL per epoch) and the pilot's epoch rule, "
                         "into RESULTS/compare/DATASET_curves.json")
    ap.add_argument("--no-analysis", action="store_true", help="stop after the report")
    ap.add_argument("--tiny", action="store_true", help="a tiny model and a few updates: the code path on CPU in minutes")
    ap.add_argument("--cpu", action="store_true", help="train and decode on CPU even with a GPU")
    ap.add_argument("--force", action="store_true", help="rewrite an existing report")
    ap.add_argument("--dry-run", action="store_true", help="print the commands of the next steps, run nothing")
    a = ap.parse_args(argv)
    if not a.seeds or any(s < 0 for s in a.seeds) or len(set(a.seeds)) != len(a.seeds):
        ap.error("--seeds: distinct integers >= 0")
    try:
        HP["tau"].check(a.tau, "--tau")
    except ValueError as err:
        ap.error(str(err))
    if a.budget_minutes <= 0 or a.bootstrap_samples < 1:
        ap.error("--budget-minutes and --bootstrap-samples must be positive")
    if (a.parallel is not None and a.parallel < 1) or (a.threads is not None and a.threads < 1):
        ap.error("--parallel and --threads must be >= 1")
    if a.max_epoch is not None and a.max_epoch < 1:
        ap.error("--max-epoch must be >= 1")
    if a.results_from and not a.report:
        ap.error("--results-from goes with --report")
    for d in a.results_from or ():
        if not absolute(d).is_dir():
            ap.error(f"--results-from {d}: no such directory")
    try:
        if dataset_config(a.dataset).get("data") != DATA:
            ap.error(f"--dataset {a.dataset}: compare runs on {DATA} (its config's data is "
                     f"{dataset_config(a.dataset).get('data')})")
    except ValueError as err:
        ap.error(f"--dataset: {err}")
    try:
        check_methods(a.dataset, a.methods)
    except ValueError as err:
        ap.error(f"--methods: {err}")
    if ablations(a.methods) and a.tau != default_tau():
        ap.error(f"--tau {a.tau:g}: the ablations of LABO ({', '.join(ablations(a.methods))}) run at LABO's "
                 f"config's tau ({default_tau():g}); compare them without --tau")
    c = Compare(a)

    def on_sigterm(signum, frame):
        c.terminated = True
        c.say("SIGTERM: stopping the runs (each resumes from its last checkpoint next time)")

    signal.signal(signal.SIGTERM, on_sigterm)
    if a.curves:
        cur = curves(c)
        path = write_json(c.roots.results / "compare" / f"{c.dataset}_curves.json", cur)
        for name, rows in cur["curves"].items():
            print(f"{name}: " + " ".join(f"{r['epoch']}:{r['bleu']:.2f}" for r in rows))
        print(f"plateau epoch by the rule: {cur['plateau_epoch'] or 'not yet reached'} ({cur['rule']})")
        c.say(f"curves {path}")
        return 0
    if a.report:
        try:
            rep = c.report()
            path = write_report(c, rep)
        except ReportError as err:
            print(f"compare: error: {err}", file=sys.stderr)
            return 2
        sys.stdout.write(markdown(rep))
        c.say(f"report {path} (from {len(rep['results'])} result(s))")
        return 0
    if a.dry_run:
        c.prepare()
        for r in c.runs():
            c.say("+ " + shlex.join(c.train_cmd(*r)))
        for r in c.runs():
            c.say("+ " + shlex.join(c.evaluate_cmd(*r)))
        return 0
    report_json = c.report_path()
    if not (c.prepare() and c.train() and c.evaluate()):
        why = "by SIGTERM" if c.terminated else f"for the time budget ({a.budget_minutes:g} min)"
        c.say(f"stopped {why}; run the same command again to continue")
        return NOT_FINISHED
    if not report_json.is_file() or a.force:
        try:
            write_report(c, c.report())
        except ReportError as err:
            print(f"compare: error: {err}", file=sys.stderr)
            return 2
    rep = json.loads(report_json.read_text())
    sys.stdout.write(markdown(rep))
    c.say(f"report {report_json}")
    if a.no_analysis:
        return 0
    if not c.analysis():
        c.say("analysis stopped for the time budget; run the same command again to continue")
        return NOT_FINISHED
    c.say(f"analysis in {c.analysis_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
