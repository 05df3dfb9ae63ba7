"""One-command GPU check (at most ~5 minutes on one H100): correctness, criterion speed and memory,
a whole fairseq training step in fp16/bf16, and decoding. Prints a markdown report and writes one
JSON to ``results/gpu/`` (under the working directory, or ``--out``).

  labo-fairseq gpu-check [--data-bin data-bin/multi30k.de-en]   # on a GPU
  labo-fairseq gpu-check --tiny                                  # CPU smoke run, ~2-3 min
  labo-fairseq gpu-check --dry-run                               # the fairseq commands

Parts (docs/gpu.md says what each figure means):
1. correctness: :mod:`labo_fairseq.gpu.device_checks` with pytest (``-m gpu`` on CUDA, the CPU parameters otherwise);
2. criterion benchmark (:mod:`labo_fairseq.bench.criteria`): time / LS with CUDA events, allocator peak memory;
3. training: fairseq-train ``transformer_iwslt_de_en``, LS vs LABO (warm-up 0) in ``--fp16`` and in
   ``--bf16``: words/s ratio (fairseq's ``wps``, first updates excluded) and peak memory; LABO with
   ``--memory-efficient-fp16`` must keep a finite loss;
4. decoding: fairseq-generate (beam 5) from the fp16 LABO checkpoint translates every test sentence.
Without CUDA (or with ``--tiny``) everything is scaled down and runs in fp32 on the CPU; the JSON
then says ``"kind": "cpu-smoke"``: those are not GPU figures.
"""

import argparse
import datetime
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from labo_fairseq.gpu.report import report, report_safe  # noqa: F401  (report: the tests format a result)
from labo_fairseq.runtime.commandline import ArgumentParser
from labo_fairseq.runtime.errors import ToolError, UsageError
from labo_fairseq.runtime.files import overwrite_refusal, read_json, write_json
from labo_fairseq.runtime.processes import run_tool as io_run_tool
from labo_fairseq.runtime.provenance import portable
from labo_fairseq.study.fairseq_tools import fairseq_command, log_record, split_size
from labo_fairseq.study.protocol import common_config, dataset_config, flags, method_config, tiny_model

PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # holds this labo_fairseq: a checkout or site-packages
USER_DIR = Path(__file__).resolve().parents[1]
GPU_TESTS = Path(__file__).resolve().parent / "device_checks.py"  # shipped in the package
PEAK_FLAG = "--_fairseq-train-with-peak"  # internal: run fairseq-train under the peak-memory hook

# The paper's optimisation protocol as the configs hold it (common.yaml, then IWSLT'14's lr and model),
# minus validation and checkpoint choice: a speed test. Read from the configs, never retyped.
_SPEED_TEST = {"--eval-bleu": None, "--best-checkpoint-metric": None, "--maximize-best-checkpoint-metric": None,
               "--log-interval": None, "--max-tokens": None}
TRAIN_COMMON = ["--task", "translation", *flags({**common_config()["args"], **_SPEED_TEST}),
                "--lr", str(dataset_config("iwslt14_de_en")["args"]["--lr"]), "--disable-validation", "--seed", "1"]
GPU_MODEL = ["--arch", dataset_config("iwslt14_de_en")["args"]["--arch"], "--share-decoder-input-output-embed",
             "--max-tokens", str(common_config()["args"]["--max-tokens"])]
TINY_MODEL = [*tiny_model(), "--share-all-embeddings", "--max-tokens", "1000", "--num-workers", "0", "--cpu"]
# LS and LABO as the method configs define them; LABO active from the first update (a speed test)
CRITERIA = {m: [*flags(method_config(m)["args"]), *(["--labo-warmup-updates", "0"] if m == "labo" else [])]
            for m in ("ls", "labo")}
PRECISION_FLAGS = {"fp16": ["--fp16"], "bf16": ["--bf16"], "memory_efficient_fp16": ["--memory-efficient-fp16"]}


class CheckError(ToolError):
    """A step of the check could not run (the message names it and where its log is)."""


# ------------------------------------------------------------------------ running fairseq tools

def run_tool(argv: List[str], log: Path, env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None,
             check: bool = True) -> subprocess.CompletedProcess:
    """:func:`labo_fairseq.runtime.processes.run_tool` into ``log``, with the checkout's package first on the path
    (the tests and the user dir are this one); :class:`CheckError` on failure."""
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_PARENT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    try:
        return io_run_tool(argv, cwd=cwd, log=log, env=full_env, check=check)
    except ToolError as err:
        raise CheckError(str(err)) from None


def train_log(text: str) -> List[Dict]:
    """fairseq's ``train_inner`` json records (``--log-format json``)."""
    records = (log_record(line) for line in text.splitlines())
    return [r[1] for r in records if r is not None and r[0] == "train_inner"]


# ------------------------------------------------------------------------------------ the plan

class Plan:
    """Every setting that differs between the GPU check and the CPU smoke run."""

    def __init__(self, o: "CheckOptions", cuda: bool):
        self.cuda, self.o = cuda, o
        self.kind = "gpu" if cuda else "cpu-smoke"
        self.updates = o.updates or (300 if cuda else 6)
        self.skip = o.skip_updates if o.skip_updates is not None else (100 if cuda else 2)
        if self.skip >= self.updates:
            raise UsageError(f"--skip-updates ({self.skip}) must be below --updates ({self.updates})")
        self.log_interval = 20 if cuda else 1
        self.bench_tokens = [4096, 16384] if cuda else [512]
        self.bench_vocab = [10000, 40000] if cuda else [1000, 4000]
        self.bench_repeats = 11 if cuda else 3
        self.precisions = ["fp16", "bf16"] if cuda else ["fp32"]
        self.work = o.work

    def train_args(self, name: str, method: str, precision: str, updates: int) -> List[str]:
        model = GPU_MODEL if self.cuda else TINY_MODEL
        save = self.work / "train" / name
        args = [str(self.o.data_bin), "--user-dir", str(USER_DIR), "--source-lang", self.o.source_lang,
                "--target-lang", self.o.target_lang, *TRAIN_COMMON, *model, *CRITERIA[method],
                *PRECISION_FLAGS.get(precision, []), "--max-update", str(updates),
                "--log-interval", str(self.log_interval), "--save-dir", str(save),
                # every run saves at most once, at its end, so that no run's words/s pays for saving
                "--save-interval", "100000"]
        return args if name == "fp16-labo" or (not self.cuda and name == "fp32-labo") else args + ["--no-save"]

    def runs(self) -> List[Dict]:
        out = []
        for precision in self.precisions:
            for method in ("ls", "labo"):
                name = f"{precision}-{method}"
                out.append({"name": name, "precision": precision, "method": method,
                            "args": self.train_args(name, method, precision, self.updates)})
        if self.cuda:
            n = max(self.skip + self.log_interval, 50)
            out.append({"name": "memory_efficient_fp16-labo", "precision": "memory_efficient_fp16", "method": "labo",
                        "args": self.train_args("memory_efficient_fp16-labo", "labo", "memory_efficient_fp16", n)})
        return out

    def checkpoint(self) -> Path:
        return self.work / "train" / ("fp16-labo" if self.cuda else "fp32-labo") / "checkpoint_last.pt"

    def generate_args(self) -> List[str]:
        args = [str(self.o.data_bin), "--user-dir", str(USER_DIR), "--task", "translation", "--source-lang",
                self.o.source_lang, "--target-lang", self.o.target_lang, "--path", str(self.checkpoint()),
                "--gen-subset", "test", "--beam", "5", "--batch-size", "128", "--remove-bpe"]
        # The tiny model barely trained on the CPU would emit 200-token hypotheses (minutes of beam
        # search); the GPU check decodes with fairseq's defaults, as users do.
        return args + (["--fp16"] if self.cuda else ["--cpu", "--max-len-a", "0", "--max-len-b", "20"])

    def pytest_args(self, junit: Path) -> List[str]:
        return [sys.executable, "-m", "pytest", str(GPU_TESTS), "-q", "-p", "no:cacheprovider",
                "-o", "markers=gpu: needs CUDA", "-m", "gpu" if self.cuda else "not gpu", f"--junitxml={junit}"]


# ------------------------------------------------------------------------------------ the parts

def environment(cuda: bool) -> Dict:
    import torch

    from labo_fairseq.runtime.provenance import git_state, hardware, nvidia_driver

    env = {**hardware(), "cudnn": torch.backends.cudnn.version() if cuda else None, "driver": None,
           "device": None, "gpu_memory_gib": None}
    try:
        import fairseq
        env["fairseq"] = fairseq.__version__
    except ImportError:
        env["fairseq"] = None
    if cuda:
        prop = torch.cuda.get_device_properties(0)
        env["device"], env["gpu_memory_gib"] = prop.name, prop.total_memory / 2**30
        env["compute_capability"] = f"{prop.major}.{prop.minor}"
        env["driver"] = nvidia_driver()
    else:
        env["device"] = f"cpu: {env['cpu']}"
    return {**env, **git_state()}


def part_correctness(plan: Plan) -> Dict:
    import xml.etree.ElementTree as ET

    if not GPU_TESTS.is_file():
        raise CheckError(f"the device checks are not at {GPU_TESTS}: reinstall labo-fairseq")
    import importlib.util

    if importlib.util.find_spec("pytest") is None:
        raise CheckError("pytest is not installed, and the correctness part runs labo_fairseq.gpu.device_checks with it "
                         "(pip install pytest; or --parts bench training decoding)")
    junit = plan.work / "correctness.xml"
    t0 = time.time()
    argv = plan.pytest_args(junit)
    proc = run_tool(argv, plan.work / "logs" / "pytest.log", cwd=plan.work, check=False)
    if not junit.is_file():
        raise CheckError(f"pytest wrote no report (status {proc.returncode}); see {plan.work / 'logs' / 'pytest.log'}")
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    count = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    return {"selection": "-m gpu (the cuda parameter)" if plan.cuda else "-m 'not gpu' (the cpu parameter)",
            "command": shlex.join(argv), "collected": count["tests"], "skipped": count["skipped"],
            "failed": count["failures"] + count["errors"],
            "passed": count["tests"] - count["skipped"] - count["failures"] - count["errors"],
            "failures": failed, "pytest_status": proc.returncode, "seconds": time.time() - t0}


def part_bench(plan: Plan) -> Dict:
    from labo_fairseq.bench import criteria as bench

    device = "cuda" if plan.cuda else "cpu"
    t0 = time.time()
    rows = bench.bench(device, plan.bench_tokens, plan.bench_vocab, plan.bench_repeats)
    labo = [r for r in rows if r["criterion"] == "labo"]
    return {"device": bench.machine(device), "rows": rows, "seconds": time.time() - t0,
            "labo_time_vs_ls_max": max(r["time_vs_ls"] for r in labo),
            "labo_extra_buffers_vs_ls_max": max(r["extra_buffers_vs_ls"] for r in labo),
            "targets": {"labo_time_vs_ls": 1.1 if plan.cuda else 1.3, "labo_extra_buffers_vs_ls": 1.0},
            "timing": "CUDA events" if plan.cuda else "perf_counter",
            "memory": "torch.cuda.max_memory_allocated after reset_peak_memory_stats" if plan.cuda
            else "peak RSS of a fresh process (Linux clear_refs)",
            **({"fused": fused_rows(device)} if plan.cuda else {})}


def fused_rows(device: str) -> Dict:
    """The output layer fused with the loss at V = 256k in bf16 (NLLB's and mBART's size), beside the
    unfused paths: ``labo-fairseq bench-vocab --vocab 256000`` on this GPU."""
    import torch

    from labo_fairseq.bench import vocab

    rows = vocab.bench_vocab(256000, 4096, 1024, "bf16", 3, torch.device(device))
    torch.cuda.empty_cache()
    return {"rows": rows, "markdown": vocab.markdown(rows)}


def run_training(plan: Plan, run: Dict) -> Dict:
    """One fairseq-train run under the peak-memory hook; resumable: a finished run's figures are reused."""
    done = plan.work / "train" / f"{run['name']}.json"
    if done.is_file():
        prev = read_json(done)
        if prev.get("args") == run["args"]:
            return prev
        shutil.rmtree(plan.work / "train" / run["name"], ignore_errors=True)  # other settings: redo
    peak = plan.work / "train" / f"{run['name']}.peak.json"
    log = plan.work / "logs" / f"train-{run['name']}.log"
    t0 = time.time()
    run_tool([sys.executable, "-m", "labo_fairseq", "gpu-check", PEAK_FLAG, str(peak), "--", *run["args"]], log)
    records = train_log(log.read_text(encoding="utf-8"))
    if not records:
        raise CheckError(f"fairseq-train logged no train_inner records (log: {log})")
    timed = [r for r in records if int(r["num_updates"]) > plan.skip]
    if not timed:
        raise CheckError(f"no train_inner record after update {plan.skip} (log: {log}); raise --updates")
    p = read_json(peak)
    last = records[-1]
    out = {"name": run["name"], "precision": run["precision"], "method": run["method"],
           "updates": int(last["num_updates"]), "timed_records": len(timed), "excluded_updates": plan.skip,
           "wps_median": statistics.median(float(r["wps"]) for r in timed),
           "ups_median": statistics.median(float(r["ups"]) for r in timed),
           "final_loss": float(last["loss"]), "final_nll_loss": float(last["nll_loss"]),
           "peak_gpu_mib": p["cuda_peak_bytes"] / 2**20 if p["cuda_peak_bytes"] is not None else None,
           "max_rss_mib": p["max_rss_bytes"] / 2**20, "seconds": time.time() - t0,
           "command": shlex.join(["fairseq-train", *run["args"]]), "args": run["args"]}
    out["finite_loss"] = all(math.isfinite(float(r["loss"])) for r in records)
    write_json(done, out)
    return out


def part_training(plan: Plan) -> Dict:
    runs = {r["name"]: run_training(plan, r) for r in plan.runs()}
    mem_key = "peak_gpu_mib" if plan.cuda else "max_rss_mib"
    out: Dict = {"runs": runs, "memory_source": (
        "allocator peak per update (fairseq's reset_peak_memory_stats, hooked)" if plan.cuda
        else "max RSS of the fairseq-train process (CPU smoke run)")}
    for precision in plan.precisions:
        ls, labo = runs[f"{precision}-ls"], runs[f"{precision}-labo"]
        out[precision] = {"wps_ratio_labo_over_ls": labo["wps_median"] / ls["wps_median"],
                          "peak_memory_ratio_labo_over_ls": labo[mem_key] / ls[mem_key]
                          if labo[mem_key] and ls[mem_key] else None,  # None: the hook saw no update
                          "peak_memory_mib": {"ls": ls[mem_key], "labo": labo[mem_key]},
                          "finite_loss": ls["finite_loss"] and labo["finite_loss"]}
    if "memory_efficient_fp16-labo" in runs:
        r = runs["memory_efficient_fp16-labo"]
        out["memory_efficient_fp16"] = {"labo_finite_loss": r["finite_loss"], "final_loss": r["final_loss"]}
    return out


def part_decoding(plan: Plan) -> Dict:
    try:
        expected = split_size(plan.o.data_bin, "test", plan.o.source_lang, plan.o.target_lang)
    except FileNotFoundError as err:
        raise CheckError(f"{err} (was the data-bin made by fairseq-preprocess?)") from None
    log = plan.work / "logs" / "generate.log"
    t0 = time.time()
    args = plan.generate_args()
    run_tool([*fairseq_command("generate"), *args], log)
    ids = {int(m.group(1)) for m in re.finditer(r"^H-(\d+)\t", log.read_text(encoding="utf-8"), re.M)}
    return {"test_sentences": expected, "hypotheses": len(ids), "all_translated": ids == set(range(expected)),
            "checkpoint": str(plan.checkpoint()), "beam": 5, "seconds": time.time() - t0,
            "command": shlex.join(["fairseq-generate", *args])}


# ------------------------------------------------------------------------------------ command

@dataclass(frozen=True)
class CheckOptions:
    """``labo-fairseq gpu-check``'s options (see :func:`parse`); ``work`` None: the default for the kind."""

    data_bin: Path = Path("data-bin/multi30k.de-en")
    source_lang: str = "de"
    target_lang: str = "en"
    out: Path = Path("results/gpu")
    work: Optional[Path] = None
    tiny: bool = False
    updates: Optional[int] = None
    skip_updates: Optional[int] = None
    parts: Tuple[str, ...] = ("correctness", "bench", "training", "decoding")
    force: bool = False
    dry_run: bool = False


def parse(argv, prog) -> CheckOptions:
    ap = ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-bin", type=Path, default=Path("data-bin/multi30k.de-en"),
                    help="fairseq data-bin with train and test splits (default data-bin/multi30k.de-en, as "
                         "'labo-fairseq prepare multi30k.de-en' makes it)")
    ap.add_argument("--source-lang", default="de", help="source language of the data-bin (default de)")
    ap.add_argument("--target-lang", default="en", help="target language of the data-bin (default en)")
    ap.add_argument("--out", type=Path, default=Path("results/gpu"), help="where the JSON goes (default results/gpu)")
    ap.add_argument("--work", type=Path, help="logs and checkpoints (default runs/gpu_check/KIND); finished "
                                              "training runs there are reused by a rerun")
    ap.add_argument("--tiny", "--quick", dest="tiny", action="store_true",
                    help="CPU smoke run (automatic without CUDA): a tiny model, a few updates, small V, fp32")
    ap.add_argument("--updates", type=int, help="updates per training run (default 300 on GPU, 6 tiny)")
    ap.add_argument("--skip-updates", type=int, help="updates excluded from words/s (default 100 on GPU, 2 tiny)")
    ap.add_argument("--parts", nargs="+", choices=["correctness", "bench", "training", "decoding"],
                    default=["correctness", "bench", "training", "decoding"], help="which parts to run (default all)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing result JSON and redo finished runs")
    ap.add_argument("--dry-run", action="store_true", help="print the commands (fairseq, pytest) and exit")
    a = ap.parse_args(argv)
    if a.updates is not None and a.updates < 1:
        ap.error("--updates must be >= 1")
    if a.skip_updates is not None and a.skip_updates < 0:
        ap.error("--skip-updates must be >= 0")
    if "decoding" in a.parts and "training" not in a.parts:
        ap.error("--parts decoding needs training (it decodes the checkpoint trained there)")
    return CheckOptions(**{**vars(a), "parts": tuple(a.parts)})


def main(argv=None, prog="labo-fairseq gpu-check") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [PEAK_FLAG]:
        if len(argv) < 3 or argv[2] != "--":
            raise UsageError(f"usage: {PEAK_FLAG} PEAK_JSON -- FAIRSEQ_TRAIN_ARGS")
        from labo_fairseq.gpu.peak import train_with_peak

        train_with_peak(argv[1], argv[3:])
        return 0
    o = parse(argv, prog)
    from labo_fairseq.runtime.processes import cuda_visible

    cuda = cuda_visible(probe_torch=not o.dry_run) and not o.tiny  # a dry run imports no torch
    kind = "gpu" if cuda else "cpu-smoke"
    o = replace(o, data_bin=o.data_bin.resolve(), out=o.out.resolve(),
                work=(o.work or Path("runs") / "gpu_check" / kind).resolve())  # runs/ holds checkpoints, not results/
    plan = Plan(o, cuda)
    if o.dry_run:
        return _dry_run(plan)
    dest = o.out / f"gpu_check-{kind}.json"
    _check_inputs(o, dest)
    if o.force and o.work.exists():
        shutil.rmtree(o.work)
    o.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    res: Dict = {"kind": kind, "note": "GPU figures" if cuda else
                 "CPU smoke run (scaled down, fp32 instead of fp16/bf16): NOT GPU figures",
                 "command": shlex.join([*prog.split(), *map(portable, argv)]),
                 "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "environment": environment(cuda), "data_bin": portable(o.data_bin), "work": portable(o.work)}
    status = _run_parts(plan, res)
    res["seconds"] = time.time() - t0
    res["ok"] = _ok(res, o.parts)
    write_json(dest, res, default=str)
    print(report_safe(res))
    print(f"\nwrote {dest}")
    return status or (0 if res["ok"] else 1)


def _dry_run(plan: Plan) -> int:
    o = plan.o
    print(f"# {plan.kind} check; training runs under the peak-memory hook: "
          f"{sys.executable} -m labo_fairseq gpu-check {PEAK_FLAG} PEAK.json -- ARGS")
    if "correctness" in o.parts:
        print(shlex.join(plan.pytest_args(o.work / "correctness.xml")))
    if "training" in o.parts:
        for r in plan.runs():
            print(shlex.join(["fairseq-train", *r["args"]]))
    if "decoding" in o.parts:
        print(shlex.join(["fairseq-generate", *plan.generate_args()]))
    return 0


def _check_inputs(o: CheckOptions, dest: Path) -> None:
    """:class:`UsageError` for a result that would be overwritten or a data-bin that is missing."""
    refusal = overwrite_refusal(dest, o.force)
    if refusal:
        raise UsageError(refusal)
    if {"training", "decoding"} & set(o.parts):
        missing = [p for p in (o.data_bin / f"dict.{o.source_lang}.txt", o.data_bin / f"dict.{o.target_lang}.txt")
                   if not p.is_file()]
        if missing:
            raise UsageError(f"no data-bin at {o.data_bin} ({missing[0].name} missing); make it with "
                             "'labo-fairseq prepare multi30k.de-en' or pass --data-bin")


def _run_parts(plan: Plan, res: Dict) -> int:
    """Each part asked for into ``res``, in the order of the docstring; 1 if one could not run (the
    others still do)."""
    parts = {"correctness": part_correctness, "bench": part_bench, "training": part_training, "decoding": part_decoding}
    status = 0
    for name in [p for p in parts if p in plan.o.parts]:  # in this order, whatever the order given
        t = time.time()
        print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
        try:
            res[name] = parts[name](plan)
        except CheckError as e:
            res[name] = {"error": str(e)}
            print(f"[gpu_check] {name} FAILED: {e}", file=sys.stderr)
            status = 1
        print(f"[gpu_check] {name} done in {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    return status


def _ok(res: Dict, parts) -> bool:
    """Whether the check passed: the device checks ran and passed, every part ran, every training
    loss stayed finite, every test sentence was translated."""
    corr = res.get("correctness", {"failed": 0, "passed": 1})
    return bool(corr.get("failed", 1) == 0 and corr.get("passed", 0) > 0  # all skipped is no evidence
                and all("error" not in res.get(p, {}) for p in parts)
                and all(r["finite_loss"] for r in res.get("training", {}).get("runs", {}).values())
                and res.get("decoding", {}).get("all_translated", True))
