#!/usr/bin/env python
"""Benchmark (not a test): forward+backward time and peak memory of each criterion's loss, from the
logits (log_softmax included, as fairseq computes it), against fairseq's label smoothing.

Prints one table per device with ratios to LS measured in the same run: the criteria run
interleaved, round by round, and the ratio is the median of the per-round ratios. Peak memory is the extra
memory a single forward+backward needs beyond the logits, in MiB and in units of one
(tokens x V) float32 buffer: on CUDA from the allocator's peak, on CPU (Linux) as the peak RSS of
a fresh subprocess above its RSS before the step (large tensors are mmap-backed there, so RSS
follows live tensors).

Targets (issue #2): LABO <= 1.3x LS time on CPU, <= 1.1x on GPU, at most one extra buffer of peak
memory over LS.
"""

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from labo_fairseq import losses  # noqa: E402

PAD = 1


def fairseq_ls(lprobs, target, ignore_index):
    """fairseq's label_smoothed_nll_loss (eps = 0.1), imported when fairseq is there."""
    try:
        from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss
    except ImportError:
        sys.exit("bench_criteria.py compares against fairseq's LS: install fairseq (scripts/install.sh)")
    return label_smoothed_nll_loss(lprobs, target, 0.1, ignore_index=ignore_index)


CRITERIA = {
    "ls (fairseq)": fairseq_ls,
    "labo": lambda lp, y, pad: losses.labo_loss(lp, y, 1.15, ignore_index=pad),
    "labo fixed alpha": lambda lp, y, pad: losses.labo_loss(lp, y, 1.15, alpha=0.1, ignore_index=pad),
    "confidence_penalty": lambda lp, y, pad: losses.confidence_penalty_loss(lp, y, 0.1, ignore_index=pad),
    "focal": lambda lp, y, pad: losses.focal_loss(lp, y, 1.0, ignore_index=pad),
    "anti_focal": lambda lp, y, pad: losses.anti_focal_loss(lp, y, 1.0, 0.5, ignore_index=pad),
}


def make_inputs(tokens, vocab, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    logits = (torch.randn(tokens, vocab, generator=g) * 3).to(device)
    target = torch.randint(4, vocab, (tokens,), generator=g)
    target[torch.randperm(tokens, generator=g)[: tokens // 20]] = PAD  # 5% padding
    return logits, target.to(device)


def step(fn, logits, target):
    z = logits.detach().requires_grad_()
    loss, _ = fn(torch.log_softmax(z, -1), target, PAD)
    loss.backward()
    return z.grad


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, logits, target, device):
    sync(device)
    t0 = time.perf_counter()
    step(fn, logits, target)
    sync(device)
    return (time.perf_counter() - t0) * 1e3


def time_rounds(logits, target, repeats, device):
    """Per criterion: median time and median of per-round ratios to LS. The criteria run
    interleaved, round by round, so that drift of the machine's speed hits all of them alike."""
    for fn in CRITERIA.values():
        step(fn, logits, target)  # warm-up
    times = {name: [] for name in CRITERIA}
    for _ in range(repeats):
        for name, fn in CRITERIA.items():
            times[name].append(time_ms(fn, logits, target, device))
    base = times["ls (fairseq)"]
    return {name: (statistics.median(t), statistics.median(a / b for a, b in zip(t, base))) for name, t in times.items()}


def peak_bytes_cuda(fn, logits, target):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    grad = step(fn, logits, target)
    torch.cuda.synchronize()
    del grad
    return torch.cuda.max_memory_allocated() - base


def _status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child_peak_bytes(name, tokens, vocab):
    """In a fresh interpreter: reset the RSS high-water mark (Linux clear_refs 5), run one
    forward+backward, return the peak RSS above the RSS before it."""
    logits, target = make_inputs(tokens, vocab, torch.device("cpu"))
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    step(CRITERIA[name], logits, target)
    return (_status_kib("VmHWM") - before) * 1024


def peak_bytes_cpu(name, tokens, vocab):
    code = (f"import sys; sys.argv = ['x', '--_child']; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            f"import bench_criteria as b; print(b.child_peak_bytes({name!r}, {tokens}, {vocab}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def bench(device, tokens, vocabs, repeats):
    rows = []
    for vocab in vocabs:
        logits, target = make_inputs(tokens, vocab, device)
        buffer = tokens * vocab * 4
        timing = time_rounds(logits, target, repeats, device)
        base_m = None
        for name, fn in CRITERIA.items():
            t, ratio = timing[name]
            m = peak_bytes_cuda(fn, logits, target) if device.type == "cuda" else peak_bytes_cpu(name, tokens, vocab)
            if base_m is None:
                base_m = m
            rows.append({
                "device": device.type, "V": vocab, "criterion": name, "ms": t, "time_vs_ls": ratio,
                "peak_mib": m / 2**20, "peak_buffers": m / buffer, "extra_buffers_vs_ls": (m - base_m) / buffer,
            })
    return rows


def machine(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096, help="target tokens per batch (default 4096)")
    ap.add_argument("--vocab", type=int, nargs="+", default=[10000, 40000], help="vocabulary sizes")
    ap.add_argument("--repeats", type=int, default=11,
                    help="timed rounds (every criterion once per round, interleaved); medians are shown")
    ap.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                    help="'all': CPU, and CUDA when present (default)")
    ap.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = ap.parse_args()

    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    elif args.device == "cuda":
        sys.exit("--device cuda: no CUDA device available")
    all_rows = []
    for device in devices:
        print(f"\n## {device.type}: {machine(device)} | torch {torch.__version__} | "
              f"{args.tokens} tokens, {args.repeats} interleaved rounds")
        print("| criterion | V | fwd+bwd ms (median) | time / LS (median of per-round ratios) | peak MiB | "
              "peak buffers | extra buffers vs LS |")
        print("|---|---|---|---|---|---|---|")
        rows = bench(device, args.tokens, args.vocab, args.repeats)
        for r in rows:
            print(f"| {r['criterion']} | {r['V']} | {r['ms']:.1f} | {r['time_vs_ls']:.2f}x | "
                  f"{r['peak_mib']:.0f} | {r['peak_buffers']:.2f} | {r['extra_buffers_vs_ls']:+.2f} |")
        all_rows += rows
    if args.json:
        args.json.write_text(json.dumps(all_rows, indent=1))


if __name__ == "__main__" and "--_child" not in sys.argv:
    main()
