"""Fine-tune a Hugging Face seq2seq model with LABO or a baseline (``labo-fairseq hf-train``).

  labo-fairseq hf-train MODEL_DIR --train train.de train.en --valid valid.de valid.en \\
      --test test.de test.en --criterion labo --name opus_de_en --seed 1 --max-steps 2000

MODEL_DIR is a model already on disk (e.g. a downloaded ``Helsinki-NLP/opus-mt-de-en``): its
tokenizer and weights; nothing is downloaded. Text files are plain, untokenized, one sentence per
line. Training is transformers' ``Seq2SeqTrainer`` with :class:`labo_fairseq.hf.trainer.LossTrainer`; the
test set is then translated with beam 5 and scored with sacreBLEU and chrF against the test
references as given (``--lowercase`` for case-insensitive scores). It writes the same results JSON
as ``labo-fairseq evaluate`` (``RESULTS/NAME/METHOD[-tauT]/seedS.json``, hypotheses and sentence
statistics beside it; command, commit and hardware inside), so ``labo-fairseq tables`` shows HF runs
beside fairseq runs; the fine-tuned model goes to ``RUNS/NAME/METHOD[-tauT]/seedS/model``. An
existing result is kept unless ``--force``.
"""

import argparse
import datetime
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from labo_fairseq.hf.trainer import CRITERIA, LossConfig
from labo_fairseq.losses.hparams import HP
from labo_fairseq.runtime.commandline import ArgumentParser
from labo_fairseq.runtime.errors import UsageError
from labo_fairseq.runtime.files import overwrite_refusal, read_lines, write_json, write_lines
from labo_fairseq.study.protocol import Roots, absolute, add_root_arguments, result_path, run_dir


def _pairs(src: Path, tgt: Path) -> List:
    a, b = read_lines(src), read_lines(tgt)
    if len(a) != len(b):
        raise UsageError(f"{src} has {len(a)} lines but {tgt} has {len(b)}")
    return list(zip(a, b))


class _Dataset:
    def __init__(self, tokenizer, pairs, max_length: int):
        self.items = [tokenizer(s, text_target=t, truncation=True, max_length=max_length) for s, t in pairs]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return dict(self.items[i])


@dataclass(frozen=True)
class HfTrainOptions:
    """``labo-fairseq hf-train``'s options (see :func:`main`'s parser); each split is (SRC, TGT) files."""

    model: Path
    train: Tuple[Path, Path]
    valid: Tuple[Path, Path]
    test: Tuple[Path, Path]
    name: str
    criterion: str = "labo"
    tau: float = HP["tau"].default
    rho: float = HP["rho"].default
    alpha: Optional[float] = None
    warmup_steps: int = 0
    label_smoothing: float = 0.1
    seed: int = 1
    max_steps: int = 1000
    lr: float = 5e-5
    batch_size: int = 16
    grad_accum: int = 1
    eval_steps: int = 500
    max_length: int = 128
    lowercase: bool = False
    cpu: bool = False
    root: Optional[Path] = None
    runs_root: Optional[Path] = None
    results_root: Optional[Path] = None
    force: bool = False


def main(argv=None, prog="labo-fairseq hf-train") -> int:
    ap = ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="a seq2seq model directory (weights and tokenizer)")
    for split in ("train", "valid", "test"):
        ap.add_argument(f"--{split}", type=Path, nargs=2, required=True, metavar=("SRC", "TGT"))
    ap.add_argument("--name", required=True, help="the dataset's name in results/ and the tables")
    ap.add_argument("--criterion", default="labo", choices=CRITERIA)
    ap.add_argument("--tau", type=float, default=HP["tau"].default, help=f"LABO's tau (default {HP['tau'].default})")
    ap.add_argument("--rho", type=float, default=HP["rho"].default, help=f"LABO's rho: {HP['rho'].describe()}")
    ap.add_argument("--alpha", type=float, help="LABO: a fixed alpha instead of the adaptive one")
    ap.add_argument("--warmup-steps", type=int, default=0,
                    help="LABO: optimizer steps of uniform label smoothing first (the paper: 3%% of the run)")
    ap.add_argument("--label-smoothing", type=float, default=0.1, help="LS, and LABO's warm-up (fairseq's convention)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--eval-steps", type=int, default=500)
    ap.add_argument("--max-length", type=int, default=128, help="tokens per sentence (training and decoding)")
    ap.add_argument("--lowercase", action="store_true", help="case-insensitive sacreBLEU and chrF (case:lc)")
    ap.add_argument("--cpu", action="store_true")
    add_root_arguments(ap, "runs", "results")
    ap.add_argument("--force", action="store_true", help="replace an existing result")
    a = ap.parse_args(argv)
    o = HfTrainOptions(**{**vars(a), **{s: tuple(getattr(a, s)) for s in ("train", "valid", "test")}})
    try:
        loss = LossConfig(o.criterion, label_smoothing=o.label_smoothing, tau=o.tau, rho=o.rho, alpha=o.alpha,
                          warmup_steps=o.warmup_steps)
    except ValueError as err:
        ap.error(str(err))
    for flag in ("max_steps", "batch_size", "grad_accum", "eval_steps", "max_length"):
        if getattr(o, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be >= 1")
    model_dir = absolute(o.model)
    if not (model_dir / "config.json").is_file():
        ap.error(f"{model_dir}: no config.json (a model directory saved by transformers is needed; nothing is downloaded)")
    missing = [str(absolute(p)) for s in ("train", "valid", "test") for p in getattr(o, s) if not absolute(p).is_file()]
    if missing:
        ap.error(f"no such file: {', '.join(missing)}")
    roots = Roots.from_options(o.root, runs=o.runs_root, results=o.results_root)
    tau = o.tau if o.criterion == "labo" else None
    out = result_path(roots.results, o.name, o.criterion, o.seed, tau)
    refusal = overwrite_refusal(out, o.force)
    if refusal:
        raise UsageError(refusal)
    data = {s: _pairs(*(absolute(p) for p in getattr(o, s))) for s in ("train", "valid", "test")}
    return run(o, loss, model_dir, data, roots, out, tau)


def run(o: HfTrainOptions, loss: LossConfig, model_dir: Path, data, roots: Roots, out: Path, tau) -> int:
    rd = run_dir(roots.runs, o.name, o.criterion, o.seed, tau)
    trainer, tokenizer, ds = _trainer(o, loss, model_dir, data, rd)
    started, t0 = datetime.datetime.now(datetime.timezone.utc).isoformat(), time.time()
    last = sorted(Path(trainer.args.output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    trainer.train(resume_from_checkpoint=str(last[-1]) if last else None)  # an interrupted run resumes
    train_s = time.time() - t0
    trainer.save_model(str(rd / "model"))
    tokenizer.save_pretrained(str(rd / "model"))
    hyps = _decode(trainer, tokenizer, ds["test"], o.max_length)
    _write_result(o, loss, out, rd, trainer, hyps, [t for _, t in data["test"]], tau, started, train_s)
    return 0


def _trainer(o: HfTrainOptions, loss: LossConfig, model_dir: Path, data, rd: Path):
    """(the :class:`LossTrainer`, the tokenizer, the tokenized splits) of the model in ``model_dir``."""
    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, Seq2SeqTrainingArguments

    from labo_fairseq.hf.trainer import LossTrainer

    if not getattr(AutoConfig.from_pretrained(model_dir), "is_encoder_decoder", False):
        raise UsageError(f"{model_dir} is not an encoder-decoder model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    args = Seq2SeqTrainingArguments(
        output_dir=str(rd / "trainer"), max_steps=o.max_steps, learning_rate=o.lr, per_device_train_batch_size=o.batch_size,
        per_device_eval_batch_size=o.batch_size, gradient_accumulation_steps=o.grad_accum, seed=o.seed,
        eval_strategy="steps", eval_steps=o.eval_steps, save_strategy="steps", save_steps=o.eval_steps,
        save_total_limit=1, load_best_model_at_end=True, metric_for_best_model="eval_nll_loss", greater_is_better=False,
        logging_steps=max(1, min(100, o.eval_steps)), report_to=[], use_cpu=o.cpu or not torch.cuda.is_available(),
        predict_with_generate=False, disable_tqdm=True)
    ds = {s: _Dataset(tokenizer, p, o.max_length) for s, p in data.items()}
    trainer = LossTrainer(model=model, args=args, loss=loss, train_dataset=ds["train"], eval_dataset=ds["valid"],
                          data_collator=DataCollatorForSeq2Seq(tokenizer, model=model))
    return trainer, tokenizer, ds


def _decode(trainer, tokenizer, test: _Dataset, max_length: int) -> List[str]:
    """The test set translated with beam 5 (validation was scored by NLL)."""
    import torch

    trainer.args.predict_with_generate = True
    pred = trainer.predict(test, num_beams=5, max_length=max_length)
    ids = torch.as_tensor(pred.predictions)
    ids = torch.where(ids < 0, tokenizer.pad_token_id, ids)
    return [h.strip() for h in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def _write_result(o: HfTrainOptions, loss: LossConfig, out: Path, rd: Path, trainer, hyps: List[str], refs: List[str],
                  tau, started: str, train_s: float) -> None:
    """The result JSON as ``labo-fairseq evaluate`` writes it, the hypotheses and sentence statistics beside it."""
    from labo_fairseq.runtime.provenance import git_state, hardware
    from labo_fairseq.scoring import bleu as B
    from labo_fairseq.scoring import stats as S

    sacre, ch = B.sacrebleu_13a(hyps, refs, o.lowercase), B.chrf(hyps, refs, o.lowercase)
    here = {**git_state(), "hardware": hardware()}  # training and decoding ran in this one process
    src_lang, tgt_lang = (p.suffix.lstrip(".") or "src" for p in o.test)
    key = f"{src_lang}-{tgt_lang}"
    out.parent.mkdir(parents=True, exist_ok=True)
    hyp_file = out.with_name(f"{out.stem}.{key}.hyp")
    write_lines(hyp_file, hyps)
    stats_file = out.with_name(f"{out.stem}.stats.json")
    write_json(stats_file, {"what": "per-sentence sacreBLEU statistics (13a), for significance tests",
                            "directions": {key: S.sentence_stats(S.metric("sacrebleu", o.lowercase), hyps, refs)}},
               indent=None)
    result = {
        "dataset": o.name, "method": o.criterion, "seed": o.seed, "tau": tau, "framework": "transformers",
        "model": str(o.model), "loss": asdict(loss), "hyper_parameters": {
            "max_steps": o.max_steps, "lr": o.lr, "batch_size": o.batch_size, "grad_accum": o.grad_accum},
        "extra_train_args": [], "extra_generate_args": [], "bleu_convention": "sacrebleu", "lowercase": o.lowercase,
        "directions": {key: {
            "bleu": sacre["bleu"], "convention": "sacrebleu", "paper_metric": sacre, "sacrebleu": sacre["bleu"],
            "sacrebleu_signature": sacre["signature"], "chrf": ch["chrf"], "chrf_signature": ch["signature"],
            "references": str(absolute(o.test[1])), "sentences": len(refs), "hypotheses": hyp_file.name}},
        "sentence_stats": stats_file.name, "training_completed": True,
        "checkpoint": {"path": str(rd / "model"), "updates": trainer.state.global_step,
                       "valid_metric": "nll_loss", "valid_value": trainer.state.best_metric},
        "validation_curve": [r for r in trainer.state.log_history if "eval_loss" in r],
        "train": {"run_dir": str(rd), "command": ["labo-fairseq", "hf-train", *sys.argv[1:]], **here,
                  "wall_s": round(train_s, 1), "started": started,
                  "last_checkpoint": {"updates": trainer.state.global_step, "train_wall_s": round(train_s, 1)}},
        "evaluate": {**here, "beam": 5},
    }
    write_json(out, result)
    print(f"hf-train: {o.name} {o.criterion} seed {o.seed}: sacreBLEU {sacre['bleu']:.2f}, chrF {ch['chrf']:.2f}; "
          f"wrote {out}", file=sys.stderr)
