"""Loading a checkpoint with its task, iterating a split, and running fairseq-generate with the plugin."""

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import torch

REPO_USER_DIR = Path(__file__).resolve().parents[1]  # the labo_fairseq package directory


def require_inputs(ap, dirs: Sequence = (), files: Sequence = ()) -> None:
    """Stop the command with a message naming the first missing input (argparse exits with 2)."""
    for d in dirs:
        if not Path(d).is_dir():
            ap.error(f"{d}: no such directory")
    for f in files:
        if f is not None and not Path(f).is_file():
            ap.error(f"{f}: no such file")


def device(cpu: bool) -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")


class CheckpointError(SystemExit):
    """A checkpoint that cannot be read (truncated, corrupt, not a fairseq checkpoint).

    A ``SystemExit`` whose code is the one-line message, so that every command that loads a
    checkpoint stops with that line and status 1 instead of torch's traceback."""

    def __init__(self, checkpoint, reason: str):
        reason = " ".join(str(reason).split()).split(". ")[0][:200]  # torch's first sentence says it
        super().__init__(f"error: {checkpoint}: not a readable fairseq checkpoint (truncated or corrupt?): {reason}")


def read_checkpoint(checkpoint: Path, arg_overrides: Optional[dict] = None) -> dict:
    """fairseq's checkpoint state (on CPU), or :class:`CheckpointError` naming the file."""
    import labo_fairseq  # noqa: F401  (checkpoint allow-list, criteria)
    from fairseq import checkpoint_utils

    if not Path(checkpoint).is_file():
        raise CheckpointError(checkpoint, "no such file")
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint), arg_overrides)
    except Exception as e:  # torch/pickle/zip raise many types for a damaged file
        raise CheckpointError(checkpoint, f"{type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or "model" not in state or not (state.get("cfg") or state.get("args")):
        raise CheckpointError(checkpoint, "no model weights and config in it")
    return state


def load(checkpoint: Path, data_bin: Path, cpu: bool = False):
    """(model, task) from a checkpoint, with its data directory replaced by ``data_bin``."""
    from fairseq import checkpoint_utils

    overrides = {"data": str(data_bin)}
    state = read_checkpoint(checkpoint, overrides)
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(checkpoint)], arg_overrides=overrides, state=state)
    model = models[0].to(device(cpu)).eval()
    return model, task


def batches(model, task, subset: str, max_tokens: int, cpu: bool = False, desc: str = "") -> Iterator[dict]:
    from fairseq import utils

    task.load_dataset(subset)
    dataset = task.dataset(subset)
    itr = task.get_batch_iterator(
        dataset=dataset, max_tokens=max_tokens,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        ignore_invalid_inputs=False, seed=1,
    ).next_epoch_itr(shuffle=False)
    n, total = 0, len(dataset)
    for sample in itr:
        n += len(sample["id"])
        if desc:
            print(f"\r  {desc}: {n:,}/{total:,} sentences", end="", file=sys.stderr, flush=True)
        yield utils.move_to_cuda(sample) if device(cpu).type == "cuda" else sample
    if desc:
        print(file=sys.stderr)


@dataclass
class Generation:
    """Parsed fairseq-generate output: per sentence id, source/reference/hypothesis and token scores."""

    source: Dict[int, str] = field(default_factory=dict)
    reference: Dict[int, str] = field(default_factory=dict)
    hypothesis: Dict[int, str] = field(default_factory=dict)
    detok: Dict[int, str] = field(default_factory=dict)
    positional_scores: Dict[int, List[float]] = field(default_factory=dict)  # log2 p per output token (EOS last)
    bleu_line: Optional[str] = None

    def ordered(self, which: Dict[int, str]) -> List[str]:
        return [which[i] for i in sorted(which)]


def parse_generate(text: str) -> Generation:
    g = Generation()
    for line in text.splitlines():
        m = re.match(r"^([STHDP])-(\d+)\t(.*)$", line)
        if m:
            kind, idx, rest = m.group(1), int(m.group(2)), m.group(3)
            if kind == "S":
                g.source[idx] = rest
            elif kind == "T":
                g.reference[idx] = rest
            elif kind == "H":
                g.hypothesis[idx] = rest.split("\t", 1)[1] if "\t" in rest else ""
            elif kind == "D":
                g.detok[idx] = rest.split("\t", 1)[1] if "\t" in rest else ""
            else:
                g.positional_scores[idx] = [float(x) for x in rest.split()]
        elif line.startswith("Generate ") and "BLEU" in line:
            g.bleu_line = line.strip()
    return g


def generate(data_bin: Path, checkpoint: Path, subset: str = "test", beam: int = 5, cpu: bool = False,
             extra: Sequence[str] = (), max_tokens: int = 4096, remove_bpe: bool = True) -> Generation:
    """``fairseq-generate --user-dir labo_fairseq`` (which translates every sentence); BPE is removed
    unless ``remove_bpe`` is False (then H-/T- lines hold one token per positional score, EOS aside)."""
    cmd = [sys.executable, "-m", "fairseq_cli.generate", str(data_bin), "--user-dir", str(REPO_USER_DIR),
           "--path", str(checkpoint), "--gen-subset", subset, "--beam", str(beam),
           *(["--remove-bpe"] if remove_bpe else []), "--max-tokens", str(max_tokens), *map(str, extra)]
    if cpu or not torch.cuda.is_available():
        cmd.append("--cpu")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        read_checkpoint(checkpoint)  # a damaged checkpoint: one line naming it, not fairseq's traceback
        raise RuntimeError(f"fairseq-generate failed:\n{proc.stderr[-3000:]}")
    return parse_generate(proc.stdout + "\n" + proc.stderr)  # the BLEU line may be on either stream
