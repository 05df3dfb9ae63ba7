"""Criterion benchmark: forward+backward time and peak memory of each loss from the logits
(``log_softmax`` included, as fairseq computes it), against fairseq's ``label_smoothed_nll_loss``.

The criteria run interleaved, round by round, and a criterion's time ratio is the median of its
per-round ratios to LS, so drift of the machine's speed hits all of them alike. On CUDA each step
is timed with CUDA events; on the CPU with ``perf_counter``. Peak memory is what one
forward+backward needs beyond the logits, in MiB and in (tokens x V) float32 buffers: on CUDA from
the allocator (``max_memory_allocated`` after ``reset_peak_memory_stats``), on the CPU (Linux) as
the peak RSS of a fresh subprocess above its RSS before the step (large tensors are mmap-backed,
so RSS follows live tensors).

Targets (README): LABO <= 1.3x LS time on CPU, <= 1.1x on GPU, at most one extra buffer over LS.
"""

import argparse
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from labo_fairseq import losses
from labo_fairseq.runtime.commandline import ArgumentParser
from labo_fairseq.runtime.errors import UsageError
from labo_fairseq.runtime.files import write_json
from labo_fairseq.runtime.processes import python_value

PAD = 1
LS = "ls (fairseq)"


def fairseq_ls(lprobs, target, ignore_index):
    """fairseq's label_smoothed_nll_loss (eps = 0.1)."""
    try:
        from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss
    except ImportError:
        raise UsageError("the benchmark compares against fairseq's LS: install fairseq (scripts/install.sh)")
    return label_smoothed_nll_loss(lprobs, target, 0.1, ignore_index=ignore_index)


CRITERIA: Dict[str, Callable] = {
    LS: fairseq_ls,
    "labo": lambda lp, y, pad: losses.labo_loss(lp, y, 1.15, ignore_index=pad),
    "labo fixed alpha": lambda lp, y, pad: losses.labo_loss(lp, y, 1.15, alpha=0.1, ignore_index=pad),
    "confidence_penalty": lambda lp, y, pad: losses.confidence_penalty_loss(lp, y, 0.1, ignore_index=pad),
    "focal": lambda lp, y, pad: losses.focal_loss(lp, y, 1.0, ignore_index=pad),
    "anti_focal": lambda lp, y, pad: losses.anti_focal_loss(lp, y, 1.0, 0.5, ignore_index=pad),
}


def make_inputs(tokens: int, vocab: int, device, seed: int = 0):
    """Float32 logits ~ N(0, 3^2) and targets with 5% padding, identical on every device."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    logits = (torch.randn(tokens, vocab, generator=g) * 3).to(device)
    target = torch.randint(4, vocab, (tokens,), generator=g)
    target[torch.randperm(tokens, generator=g)[: tokens // 20]] = PAD
    return logits, target.to(device)


def step(fn, logits, target):
    z = logits.detach().requires_grad_()
    loss, _ = fn(torch.log_softmax(z, -1), target, PAD)
    loss.backward()
    return z.grad


def time_ms(fn, logits, target, device) -> float:
    """Milliseconds of one forward+backward (CUDA events on CUDA)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step(fn, logits, target)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    step(fn, logits, target)
    return (time.perf_counter() - t0) * 1e3


def time_rounds(logits, target, repeats: int, device) -> Dict[str, Tuple[float, float]]:
    """Per criterion: (median ms, median of per-round ratios to LS), criteria interleaved."""
    for fn in CRITERIA.values():
        step(fn, logits, target)  # warm-up: kernels, allocator cache
    times: Dict[str, List[float]] = {name: [] for name in CRITERIA}
    for _ in range(repeats):
        for name, fn in CRITERIA.items():
            times[name].append(time_ms(fn, logits, target, device))
    base = times[LS]
    return {name: (statistics.median(t), statistics.median(a / b for a, b in zip(t, base)))
            for name, t in times.items()}


def peak_bytes_cuda(fn, logits, target) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    grad = step(fn, logits, target)
    torch.cuda.synchronize()
    del grad
    return torch.cuda.max_memory_allocated() - base


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child_peak_bytes(names: Sequence[str], tokens: int, vocab: int) -> List[int]:
    """In a fresh interpreter, per criterion: reset the RSS high-water mark (Linux clear_refs 5),
    run one forward+backward, record the peak RSS above the RSS before it. A small step of every
    criterion first, so that lazy initialisation is not counted."""
    small = make_inputs(64, 64, torch.device("cpu"))
    for name in names:
        step(CRITERIA[name], *small)
    logits, target = make_inputs(tokens, vocab, torch.device("cpu"))
    out = []
    for name in names:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
        grad = step(CRITERIA[name], logits, target)
        # the high-water mark and the RSS are read at different moments: a step that keeps nothing
        # extra can read a few KiB below its start, which is 0
        out.append(max(0, _status_kib("VmHWM") - before) * 1024)
        del grad
    return out


def peak_bytes_cpu(names: Sequence[str], tokens: int, vocab: int) -> List[int]:
    """:func:`child_peak_bytes` in one subprocess (one interpreter start per (tokens, V))."""
    code = f"from labo_fairseq.bench import criteria as bench; print(bench.child_peak_bytes({list(names)!r}, {tokens}, {vocab}))"
    return python_value(code)


def bench(device, tokens_list: Sequence[int], vocabs: Sequence[int], repeats: int) -> List[Dict]:
    """One row per (tokens, V, criterion)."""
    device = torch.device(device)
    rows = []
    for tokens in tokens_list:
        for vocab in vocabs:
            logits, target = make_inputs(tokens, vocab, device)
            buffer = tokens * vocab * 4
            timing = time_rounds(logits, target, repeats, device)
            if device.type == "cuda":
                peaks = [peak_bytes_cuda(fn, logits, target) for fn in CRITERIA.values()]
            else:
                peaks = peak_bytes_cpu(list(CRITERIA), tokens, vocab)
            base_m = peaks[0]  # LS comes first
            for (name, fn), m in zip(CRITERIA.items(), peaks):
                t, ratio = timing[name]
                rows.append({
                    "device": device.type, "tokens": tokens, "V": vocab, "criterion": name, "ms": t,
                    "time_vs_ls": ratio, "peak_mib": m / 2**20, "peak_buffers": m / buffer,
                    "extra_buffers_vs_ls": (m - base_m) / buffer, "repeats": repeats,
                })
            del logits, target
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def machine(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def markdown(rows: List[Dict]) -> str:
    lines = ["| criterion | tokens | V | fwd+bwd ms (median) | time / LS (median of per-round ratios) | "
             "peak MiB | peak buffers | extra buffers vs LS |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['criterion']} | {r['tokens']} | {r['V']} | {r['ms']:.2f} | {r['time_vs_ls']:.2f}x | "
              f"{r['peak_mib']:.0f} | {r['peak_buffers']:.2f} | {r['extra_buffers_vs_ls']:+.2f} |" for r in rows]
    return "\n".join(lines)


def main(argv=None, prog="labo-fairseq bench-criteria") -> int:
    ap = ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=[4096], help="target tokens per batch (default 4096)")
    ap.add_argument("--vocab", type=int, nargs="+", default=[10000, 40000], help="vocabulary sizes")
    ap.add_argument("--repeats", type=int, default=11,
                    help="timed rounds (every criterion once per round, interleaved); medians are shown")
    ap.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                    help="'all': CPU, and CUDA when present (default)")
    ap.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    if min(args.tokens + args.vocab) < 2 or args.repeats < 1:
        ap.error("--tokens and --vocab must be >= 2 and --repeats >= 1")
    devices = ["cpu"] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append("cuda")
    elif args.device == "cuda":
        ap.error("--device cuda: no CUDA device available")
    all_rows = []
    for device in devices:
        print(f"\n## {device}: {machine(device)} | torch {torch.__version__} | {args.repeats} interleaved rounds")
        rows = bench(device, args.tokens, args.vocab, args.repeats)
        print(markdown(rows))
        all_rows += rows
    if args.json:
        write_json(args.json, all_rows)
    return 0
