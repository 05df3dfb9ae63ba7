"""Output-layer benchmark: forward+backward of ``loss(hidden @ W.T, target)`` from the hidden states,
unfused (the (tokens x V) logits materialized) against fused (:func:`labo_fairseq.losses.linear.linear_loss`,
chunked), side by side in one run, per vocabulary size.

Methods: Hugging Face ``transformers``' ``LabelSmoother`` (eps 0.1, if transformers imports); torch
``F.cross_entropy(logits.float(), label_smoothing=0.1)``; torch's chunked
``F.linear_cross_entropy`` (if this torch has it; plain CE, its chunked path has no smoothing); ours unfused (logits in the
inputs' dtype, then ``log_softmax`` in fp32 and :func:`~labo_fairseq.losses.label_smoothing_loss`
/ :func:`~labo_fairseq.losses.labo_loss`); ours fused LS and LABO (fp32 inside); Liger-Kernel's
fused linear cross-entropy and Cut Cross-Entropy where installed (their rows say why not otherwise).
Inputs: hidden (tokens, d) and W (V, d) leaves needing gradients, 5% of targets ignored (-100).

Time: median over ``--repeats`` rounds (every method once per round, interleaved, after one warm-up
step each), wall and, on the CPU, this process's CPU time (the robust one where other work
shares the cores). Peak: bytes a step needs beyond its inputs: on CUDA the allocator's
``max_memory_allocated`` above the allocated bytes before it; on the CPU (Linux) a fresh subprocess
per row builds the inputs and warms the method up on tiny ones, resets the RSS high-water mark and
reports ``VmHWM`` minus ``VmRSS`` before the step (as :mod:`labo_fairseq.bench.criteria` does); gradients
kept for the inputs count. Full size needs tens of GB of memory on the CPU; try
``--vocab 2000 --tokens 256 --dim 64 --repeats 1`` first.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from labo_fairseq import losses
from labo_fairseq.bench.criteria import _status_kib
from labo_fairseq.losses.linear import linear_loss
from labo_fairseq.runtime.commandline import ArgumentParser
from labo_fairseq.runtime.files import write_json
from labo_fairseq.runtime.processes import python_value
from labo_fairseq.runtime.provenance import record

PAD = -100
UNFUSED_LS, FUSED_LABO = "ours unfused LS", "ours fused LABO"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _logits(h, w):
    return h @ w.t()


def _hf_label_smoother(h, w, y):
    from transformers.trainer_pt_utils import LabelSmoother
    return LabelSmoother(epsilon=0.1)({"logits": _logits(h, w)}, y)


def _torch_ce(h, w, y):
    return F.cross_entropy(_logits(h, w).float(), y, label_smoothing=0.1, ignore_index=PAD, reduction="sum")


def _torch_linear_ce(h, w, y):
    # plain CE: torch 2.13's chunked path falls back to the full logits (with a warning) under label smoothing
    if not hasattr(F, "linear_cross_entropy"):
        raise ImportError("this torch has no F.linear_cross_entropy")
    return F.linear_cross_entropy(h, w, y, reduction="sum", ignore_index=PAD,
                                  options=torch.nn.LinearCrossEntropyOptions())


def _unfused(h, w, y, fn, **kw):
    return fn(torch.log_softmax(_logits(h, w).float(), -1), y, ignore_index=PAD, **kw)[0]


def _liger(h, w, y):
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    return LigerFusedLinearCrossEntropyLoss(ignore_index=PAD, label_smoothing=0.1, reduction="sum")(w, h, y)


def _cce(h, w, y):
    from cut_cross_entropy import linear_cross_entropy
    impl = "cce" if h.is_cuda else "torch_compile"
    return linear_cross_entropy(h, w, y, ignore_index=PAD, reduction="sum", impl=impl)


METHODS: dict[str, Callable] = {
    "transformers LabelSmoother": _hf_label_smoother,
    "torch cross_entropy(ls=0.1)": _torch_ce,
    "torch linear_cross_entropy chunked (CE)": _torch_linear_ce,
    UNFUSED_LS: lambda h, w, y: _unfused(h, w, y, losses.label_smoothing_loss, epsilon=0.1),
    "ours unfused LABO": lambda h, w, y: _unfused(h, w, y, losses.labo_loss, tau=1.15),
    "ours fused LS": lambda h, w, y: linear_loss(h, w, y, "ls", ignore_index=PAD, epsilon=0.1)[0],
    FUSED_LABO: lambda h, w, y: linear_loss(h, w, y, "labo", ignore_index=PAD, tau=1.15)[0],
    "Liger-Kernel fused linear CE (ls=0.1)": _liger,
    "Cut Cross-Entropy (CE)": _cce,
}


def make_inputs(tokens: int, vocab: int, dim: int, dtype, device, seed: int = 0):
    """hidden ~ N(0, 1) and W ~ N(0, 4/d) (logits of std ~2) as gradient-needing leaves; 5% padding."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, dim, generator=g).to(device=device, dtype=dtype).requires_grad_()
    weight = (torch.randn(vocab, dim, generator=g) * (2.0 / dim**0.5)).to(device=device, dtype=dtype).requires_grad_()
    target = torch.randint(0, vocab, (tokens,), generator=g)
    target[torch.randperm(tokens, generator=g)[: tokens // 20]] = PAD
    return hidden, weight, target.to(device)


def step(fn, hidden, weight, target):
    hidden.grad = weight.grad = None
    fn(hidden, weight, target).backward()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, inputs, device) -> tuple[float, float]:
    """(wall, this process's CPU time) of one step, in ms. The CPU time is what the step cost rather
    than how long it waited, so it holds where other work shares the cores."""
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    step(fn, *inputs)
    _sync(device)
    return (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3


def usable(names, inputs) -> dict[str, str]:
    """Per method: "" if a step runs on these inputs, else why not ("not installed", the error)."""
    out = {}
    for name in names:
        try:
            step(METHODS[name], *inputs)
            out[name] = ""
        except ImportError:
            out[name] = "not installed"
        except Exception as e:  # a method that cannot run here (a GPU-only kernel on the CPU)
            out[name] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"
    return out


def child_peak(name: str, tokens: int, vocab: int, dim: int, dtype: str) -> int:
    """In a fresh interpreter: bytes of RSS one step of ``name`` needs above the RSS after its inputs."""
    step(METHODS[name], *make_inputs(16, 64, 8, DTYPES[dtype], "cpu"))  # lazy initialisation not counted
    inputs = make_inputs(tokens, vocab, dim, DTYPES[dtype], "cpu")
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    step(METHODS[name], *inputs)
    return max(0, _status_kib("VmHWM") - before) * 1024


def peak_cpu(name, tokens, vocab, dim, dtype) -> int:
    code = (f"from labo_fairseq.bench import vocab as b; "
            f"print(b.child_peak({name!r}, {tokens}, {vocab}, {dim}, {dtype!r}))")
    return python_value(code)


def peak_cuda(fn, inputs) -> int:
    inputs[0].grad = inputs[1].grad = None  # the last timed step's gradients are not the baseline
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step(fn, *inputs)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def bench_vocab(vocab: int, tokens: int, dim: int, dtype: str, repeats: int, device,
                methods: list[str] | None = None) -> list[dict]:
    """One row per method (``methods``: keys of :data:`METHODS`, all when None) for one vocabulary
    size (``dtype``: a key of :data:`DTYPES`)."""
    inputs = make_inputs(tokens, vocab, dim, DTYPES[dtype], device)
    names = list(METHODS) if methods is None else methods
    why = usable(names, inputs)  # also the warm-up step
    ok = [name for name in names if not why[name]]
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in ok}
    for _ in range(repeats):
        for name in ok:
            times[name].append(time_ms(METHODS[name], inputs, device))
    rows = []
    for name in names:
        fn = METHODS[name]
        row = {"V": vocab, "method": name, "note": why[name], "ms": None, "cpu_ms": None, "peak_bytes": None}
        if name in times:
            row["ms"] = statistics.median(t[0] for t in times[name])
            if device.type == "cpu":  # a GPU step's CPU time says nothing of its cost
                row["cpu_ms"] = statistics.median(t[1] for t in times[name])
            row["peak_bytes"] = (peak_cuda(fn, inputs) if device.type == "cuda" else
                                 peak_cpu(name, tokens, vocab, dim, dtype))
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows, then fused LABO's time (wall; CPU time on the CPU) and peak over unfused LS's."""
    def cpu(r, fmt):
        return "–" if r.get("cpu_ms") is None else format(r["cpu_ms"], fmt)

    lines = ["| V | method | fwd+bwd ms (median) | CPU ms (median) | peak extra MiB |", "|---|---|---|---|---|"]
    for r in rows:
        if r["ms"] is None:
            lines.append(f"| {r['V']} | {r['method']} | {r['note']} | | |")
        else:
            lines.append(f"| {r['V']} | {r['method']} | {r['ms']:.1f} | {cpu(r, '.1f')} | {r['peak_bytes'] / 2**20:.1f} |")
    lines += ["", f"| V | {FUSED_LABO} / {UNFUSED_LS}: time | CPU time | peak |", "|---|---|---|---|"]
    for vocab in dict.fromkeys(r["V"] for r in rows):
        by = {r["method"]: r for r in rows if r["V"] == vocab}
        a, b = by.get(FUSED_LABO), by.get(UNFUSED_LS)
        if a and b and a["ms"] is not None and b["ms"] is not None:
            peak = a["peak_bytes"] / b["peak_bytes"] if b["peak_bytes"] else float("nan")
            ratio = "–" if b.get("cpu_ms") is None else f"{a['cpu_ms'] / b['cpu_ms']:.2f}x"
            lines.append(f"| {vocab} | {a['ms'] / b['ms']:.2f}x | {ratio} | {peak:.3f}x |")  # 3 places: the goal is 0.125
    return "\n".join(lines)


def main(argv=None, prog="labo-fairseq bench-vocab") -> int:
    ap = ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, nargs="+", default=[10000, 40000, 128000, 256000], help="vocabulary sizes V")
    ap.add_argument("--tokens", type=int, default=4096, help="target tokens per batch (default 4096)")
    ap.add_argument("--dim", type=int, default=1024, help="hidden size d (default 1024)")
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16", help="dtype of hidden and W (default bf16)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds; the median is shown (default 3)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu",
                    help="default: cuda when available, else cpu")
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), metavar="METHOD",
                    help=f"only these (default: all; the ratios need {UNFUSED_LS!r} and {FUSED_LABO!r}): "
                         + ", ".join(map(repr, METHODS)))
    ap.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    if min(args.vocab) < 2 or args.tokens < 1 or args.dim < 1 or args.repeats < 1:
        ap.error("--vocab must be >= 2, --tokens, --dim and --repeats >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device available")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"## {name} | torch {torch.__version__} | tokens {args.tokens}, d {args.dim}, {args.dtype}, "
          f"median of {args.repeats} interleaved rounds")
    rows = []
    for vocab in args.vocab:
        rows += bench_vocab(vocab, args.tokens, args.dim, args.dtype, args.repeats, device, args.methods)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(markdown(rows))
    if args.json:
        write_json(args.json, {"rows": rows, "machine": name, "torch": torch.__version__, "tokens": args.tokens,
                               "dim": args.dim, "dtype": args.dtype, "repeats": args.repeats,
                               "provenance": record(prog, argv)})
    return 0
