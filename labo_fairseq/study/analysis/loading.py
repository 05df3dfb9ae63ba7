"""The analysis commands' fairseq side: a checkpoint with its task, batches of a split, and decoding
(fairseq-generate through the plugin, set up from the checkpoint and data)."""

import sys
import warnings
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import torch

from labo_fairseq.plugin import register
from labo_fairseq.runtime.errors import InvalidFile
from labo_fairseq.study.fairseq_tools import Generation, generate_command
from labo_fairseq.study.fairseq_tools import generate as generate_parsed

# Before any fairseq import: importing fairseq sets the root logger to DEBUG with a handler (its
# wav2vec module calls logging.basicConfig), and register() puts the logger back as it was.
register()
# Two harmless warnings of fairseq's data loader and attention on CPU, which would otherwise break
# the progress line: the rest are left alone.
warnings.filterwarnings("ignore", message="'pin_memory' argument is set as true")
warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask and attn_mask")


def device(cpu: bool) -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")


class CheckpointError(InvalidFile):
    """A checkpoint that cannot be read (truncated, corrupt, not a fairseq checkpoint), in one line
    instead of torch's traceback."""

    def __init__(self, checkpoint, reason: str):
        reason = " ".join(str(reason).split()).split(". ")[0][:200]  # torch's first sentence says it
        super().__init__(f"{checkpoint}: not a readable fairseq checkpoint (truncated or corrupt?): {reason}")


def read_checkpoint(checkpoint: Path, arg_overrides: Optional[dict] = None) -> dict:
    """fairseq's checkpoint state (on CPU), or :class:`CheckpointError` naming the file."""
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


def decoding_args(checkpoint: Path, data_bin: Path, source_lang: Optional[str] = None,
                  target_lang: Optional[str] = None) -> Tuple[str, List[str]]:
    """(``--remove-bpe`` mode, task flags) for decoding ``checkpoint`` on ``data_bin``.

    The task comes from the checkpoint's config (a multilingual model needs a language pair: it is
    an error to leave it out); the BPE from the dictionary: sentencepiece pieces start with ``▁``,
    subword-nmt units end with ``@@``.
    """
    state = read_checkpoint(checkpoint)
    task = (state.get("cfg") or {}).get("task") or {}
    args: List[str] = []
    if task.get("_name") == "multilingual_translation":
        pairs = task.get("lang_pairs")
        pairs = pairs if isinstance(pairs, str) else ",".join(pairs)
        if f"{source_lang}-{target_lang}" not in pairs.split(","):
            raise ValueError(f"{checkpoint} is a multilingual model: choose a pair of {pairs} with "
                             f"--source-lang/--target-lang")
        args += ["--task", "multilingual_translation", "--lang-pairs", pairs]
    if source_lang or target_lang:
        args += ["--source-lang", str(source_lang), "--target-lang", str(target_lang)]
    spm = False
    for d in sorted(Path(data_bin).glob("dict.*.txt"))[:1]:
        with open(d, encoding="utf-8") as f:
            spm = any(line.startswith("\u2581") for _, line in zip(range(5000), f))
    return ("sentencepiece" if spm else "subword_nmt"), args


def generate(data_bin: Path, checkpoint: Path, subset: str = "test", beam: int = 5, cpu: bool = False,
             extra: Sequence[str] = (), max_tokens: int = 4096, source_lang: Optional[str] = None,
             target_lang: Optional[str] = None, remove_bpe: bool = True) -> Generation:
    """``fairseq-generate --user-dir labo_fairseq`` (which translates every sentence), the task set
    and BPE removed as :func:`decoding_args` reads them off the checkpoint and data; with
    ``remove_bpe=False`` the H-/T- lines keep one token per positional score (EOS aside)."""
    bpe, task_args = decoding_args(checkpoint, data_bin, source_lang, target_lang)
    cmd = generate_command(data_bin, checkpoint, subset, beam, max_tokens=max_tokens,
                           remove_bpe=bpe if remove_bpe else None, task_args=task_args,
                           cpu=cpu or not torch.cuda.is_available(), extra=extra)
    return generate_parsed(cmd)


def collect(model, task, subset: str, scan, max_tokens: int, cpu: bool) -> None:
    """Teacher-forced logits of every non-padding target of ``subset`` into ``scan`` (a
    :class:`labo_fairseq.scoring.calibration.TemperatureScan`)."""
    pad = task.target_dictionary.pad()
    with torch.no_grad():
        for sample in batches(model, task, subset, max_tokens, cpu, desc=f"teacher forcing on {subset}"):
            logits = model(**sample["net_input"])[0]
            target = sample["target"]
            keep = target.ne(pad)
            scan.update(logits[keep], target[keep])
