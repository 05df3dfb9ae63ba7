"""The GPU check's markdown report, from its JSON result."""

from typing import Dict


def report(res: Dict) -> str:
    e = res["environment"]
    lines = [f"# labo-fairseq gpu_check ({res['kind']})", ""]
    if res["kind"] != "gpu":
        lines += ["**CPU smoke run: scaled down, fp32; these are not GPU figures.**", ""]
    lines += [f"- device: {e['device']} | driver {e['driver']} | torch {e['torch']} | CUDA {e['cuda']} | "
              f"fairseq {e['fairseq']} | Python {e['python']}",
              f"- commit {e['commit']}{' (dirty)' if e['dirty'] else ''} | {res['seconds']:.0f} s | `{res['command']}`", ""]
    c = res.get("correctness")
    if c:
        lines += ["## Correctness", f"{c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped "
                  f"of {c['collected']} ({c['selection']})"] + [f"- FAILED {f}" for f in c["failures"]] + [""]
    b = res.get("bench")
    if b:
        from labo_fairseq.bench.criteria import markdown
        lines += [f"## Criterion speed and memory ({b['device']}; {b['timing']})", markdown(b["rows"]), "",
                  f"LABO: at most {b['labo_time_vs_ls_max']:.2f}x LS time (target <= {b['targets']['labo_time_vs_ls']}x), "
                  f"{b['labo_extra_buffers_vs_ls_max']:+.2f} (tokens x V) buffers over LS (target <= +1)", ""]
        if b.get("fused"):
            lines += ["## The output layer fused with the loss (V = 256k, bf16, 4,096 tokens, d = 1,024)",
                      b["fused"]["markdown"], ""]
    t = res.get("training")
    if t:
        mem = "peak GPU MiB" if res["kind"] == "gpu" else "max RSS MiB"
        lines += ["## Training (fairseq-train)", f"| run | updates | words/s (median) | {mem} | final loss | finite |",
                  "|---|---|---|---|---|---|"]
        for r in t["runs"].values():
            m = r["peak_gpu_mib"] if res["kind"] == "gpu" else r["max_rss_mib"]
            m = "n/a" if m is None else f"{m:.0f}"
            lines.append(f"| {r['name']} | {r['updates']} | {r['wps_median']:.0f} | {m} | {r['final_loss']:.3f} | "
                         f"{r['finite_loss']} |")
        for p in ("fp16", "bf16", "fp32"):
            if p in t:
                lines.append(f"- {p}: LABO / LS words/s {t[p]['wps_ratio_labo_over_ls']:.3f}, "
                             f"peak memory {t[p]['peak_memory_ratio_labo_over_ls'] or float('nan'):.3f}")
        if "memory_efficient_fp16" in t:
            lines.append(f"- --memory-efficient-fp16 LABO finite loss: {t['memory_efficient_fp16']['labo_finite_loss']}")
        lines.append("")
    d = res.get("decoding")
    if d:
        lines += ["## Decoding", f"{d['hypotheses']} / {d['test_sentences']} test sentences translated "
                  f"(beam 5): {'all' if d['all_translated'] else 'NOT all'}", ""]
    return "\n".join(lines)


def report_safe(res: Dict) -> str:
    """The markdown report, leaving out parts that failed (their error is in the JSON)."""
    shown = {k: v for k, v in res.items() if not (isinstance(v, dict) and "error" in v)}
    text = report(shown)
    for k, v in res.items():
        if isinstance(v, dict) and "error" in v:
            text += f"\n## {k}: FAILED\n{v['error'][:2000]}\n"
    return text
