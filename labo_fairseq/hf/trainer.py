"""LABO and the Table 1 baselines for Hugging Face ``transformers`` (``Seq2SeqTrainer``), on the same
pure losses as the fairseq criteria (:mod:`labo_fairseq.losses`). Importing it loads neither fairseq
nor transformers; :class:`LossTrainer` imports transformers when first used.

  from labo_fairseq.hf import LossConfig, LossTrainer
  trainer = LossTrainer(loss=LossConfig("labo", tau=1.15, warmup_steps=500), model=model, args=args,
                        train_dataset=train, eval_dataset=valid, data_collator=collator)
  trainer.train()

Conventions, per criterion (``LossConfig.criterion``):

- ``labo``: Eq. 14 with Eq. 16's adaptive α (or ``alpha``), τ, ρ; for the first ``warmup_steps``
  optimizer steps (``state.global_step``: gradient accumulation, evaluation and resuming from a
  checkpoint do not shift it) uniform label smoothing with ``label_smoothing`` in fairseq's
  convention (``q_y = 1 − ε``; transformers' ``label_smoothing_factor`` ε is ours at ε(V−1)/V);
- ``ls`` (that same label smoothing), ``ce``, ``cp`` (β), ``fl`` (γ), ``afl`` (γ, a).

Labels of ``-100`` are ignored. The loss is a sum over the batch's tokens divided by the Trainer's
``num_items_in_batch`` (every target token of the accumulated batch), as the Trainer normalises its
own loss; the logs get ``nll_loss`` (nats per token, the plain NLL under every criterion) and, for
LABO, ``labo_alpha`` (mean α of the LABO tokens) and ``labo_active`` (1 once the warm-up is over).
"""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from labo_fairseq.losses.hparams import HP

CRITERIA = ("ce", "ls", "labo", "cp", "fl", "afl")
IGNORE = -100  # transformers' label padding


@dataclass
class LossConfig:
    """The criterion and its hyper-parameters (checked at construction, naming the bad value)."""

    criterion: str = "labo"
    label_smoothing: float = HP["epsilon"].default  # ls, and labo's warm-up (fairseq's convention)
    tau: float = HP["tau"].default
    rho: float = HP["rho"].default
    alpha: Optional[float] = None  # labo: a fixed alpha instead of Eq. 16's adaptive one
    warmup_steps: int = 0  # labo: optimizer steps of uniform label smoothing first
    cp_beta: float = HP["beta"].default
    focal_gamma: float = HP["gamma"].default
    anti_focal_gamma: float = HP["afl_gamma"].default
    anti_focal_alpha: float = HP["afl_alpha"].default

    def __post_init__(self):
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {self.criterion!r}; choose from {', '.join(CRITERIA)}")
        for name, key in (("label_smoothing", "epsilon"), ("tau", "tau"), ("rho", "rho"), ("alpha", "alpha"),
                          ("warmup_steps", "warmup_updates"), ("cp_beta", "beta"), ("focal_gamma", "gamma"),
                          ("anti_focal_gamma", "afl_gamma"), ("anti_focal_alpha", "afl_alpha")):
            HP[key].check(getattr(self, name), name)


def token_loss(cfg: LossConfig, logits, labels, step: int = 0) -> Tuple["object", "object", Dict[str, float]]:
    """``(loss_sum, nll_sum, stats)`` over the non-ignored tokens of ``logits (B, T, V)`` and
    ``labels (B, T)`` at optimizer step ``step``; ``stats``: ``ntokens``, and for LABO ``alpha_sum``
    and ``active`` (whether the LABO target was used)."""
    import torch

    from labo_fairseq import losses as L

    lprobs = torch.log_softmax(logits.float(), dim=-1).view(-1, logits.size(-1))  # fp32, as fairseq hands them
    target = labels.reshape(-1)
    stats: Dict[str, float] = {"ntokens": float(target.ne(IGNORE).sum())}  # floats: no graph kept
    c = cfg.criterion
    if c == "ce":
        loss, nll = L.label_smoothing_loss(lprobs, target, 0.0, IGNORE)
    elif c == "ls" or (c == "labo" and step < cfg.warmup_steps):
        loss, nll = L.label_smoothing_loss(lprobs, target, cfg.label_smoothing, IGNORE)
        if c == "labo":
            stats.update(active=0.0, alpha_sum=0.0)
    elif c == "labo":
        loss, nll, st = L.labo_terms(lprobs, target, cfg.tau, cfg.rho, cfg.alpha, IGNORE)
        stats.update(active=1.0, alpha_sum=float(st["alpha"]))
    elif c == "cp":
        loss, nll = L.confidence_penalty_loss(lprobs, target, cfg.cp_beta, IGNORE)
    elif c == "fl":
        loss, nll = L.focal_loss(lprobs, target, cfg.focal_gamma, IGNORE)
    else:
        loss, nll = L.anti_focal_loss(lprobs, target, cfg.anti_focal_gamma, cfg.anti_focal_alpha, IGNORE)
    return loss, nll, stats


def _trainer_base():
    from transformers import Seq2SeqTrainer

    return Seq2SeqTrainer


class _Meter:
    """Sums of one phase (train or eval) between two logs."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.nll = self.tokens = self.alpha = self.labo_tokens = 0.0
        self.active: Optional[float] = None

    def add(self, nll: float, stats: Dict[str, float]):
        self.nll += nll
        self.tokens += stats["ntokens"]
        if "active" in stats:
            self.active = stats["active"]
            if stats["active"]:
                self.alpha += stats["alpha_sum"]
                self.labo_tokens += stats["ntokens"]

    def logs(self, prefix: str) -> Dict[str, float]:
        out = {}
        if self.tokens:
            out[f"{prefix}nll_loss"] = self.nll / self.tokens
        if self.active is not None:
            out[f"{prefix}labo_active"] = self.active
            if self.labo_tokens:
                out[f"{prefix}labo_alpha"] = self.alpha / self.labo_tokens
        return out


def make_trainer_class():
    """``LossTrainer``: a ``Seq2SeqTrainer`` whose loss is :func:`token_loss` (built on first use, so
    that importing this module needs no transformers)."""
    base = _trainer_base()

    class LossTrainer(base):
        # The loss is already normalised over the whole accumulated batch (num_items_in_batch).
        loss_is_scaled_for_ga = True

        def __init__(self, *args, loss: Optional[LossConfig] = None, **kwargs):
            if kwargs.get("compute_loss_func") is not None:
                raise ValueError("LossTrainer computes the loss itself: pass loss=LossConfig(...), not compute_loss_func")
            args_ = kwargs.get("args") if "args" in kwargs else (args[1] if len(args) > 1 else None)
            if args_ is not None and getattr(args_, "label_smoothing_factor", 0):
                raise ValueError("label_smoothing_factor is transformers' own label smoothing; with LossTrainer use "
                                 "LossConfig('ls', label_smoothing=...) instead")
            super().__init__(*args, **kwargs)
            model = self.model
            if not getattr(getattr(model, "config", None), "is_encoder_decoder", False):
                raise ValueError(f"{type(model).__name__} is not an encoder-decoder model (config.is_encoder_decoder "
                                 "is false): LossTrainer is for seq2seq models (Marian, mBART, NLLB, T5)")
            self.loss_config = loss or LossConfig()
            self.model_accepts_loss_kwargs = True  # so the Trainer counts num_items_in_batch for us
            self._meters = {"train": _Meter(), "eval": _Meter()}

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            outputs = model(**inputs, labels=labels) if "decoder_input_ids" not in inputs else model(**inputs)
            logits = outputs.logits
            loss_sum, nll_sum, stats = token_loss(self.loss_config, logits, labels, self.state.global_step)
            if num_items_in_batch is None:
                denom = max(stats["ntokens"], 1.0)
            else:
                denom = num_items_in_batch.to(loss_sum.device) if hasattr(num_items_in_batch, "to") else num_items_in_batch
            loss = loss_sum / denom
            if getattr(self.args, "average_tokens_across_devices", False) and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            self._meters["train" if model.training else "eval"].add(float(nll_sum.detach()), stats)
            return (loss, outputs) if return_outputs else loss

        def evaluate(self, *args, **kwargs):
            """The Trainer's metrics, with ``eval_nll_loss`` (and LABO's) as they were logged."""
            self._last_eval = {}
            metrics = super().evaluate(*args, **kwargs)
            return {**metrics, **self._last_eval}

        def log(self, logs, *args, **kwargs):
            if any(k.startswith("eval_") for k in logs):
                self._last_eval = self._meters["eval"].logs("eval_")
                logs = {**logs, **self._last_eval}
                self._meters["eval"].reset()
            elif "loss" in logs:
                logs = {**logs, **self._meters["train"].logs("")}
                self._meters["train"].reset()
            return super().log(logs, *args, **kwargs)

    return LossTrainer


def __getattr__(name):
    if name == "LossTrainer":
        cls = make_trainer_class()
        globals()["LossTrainer"] = cls
        return cls
    raise AttributeError(name)
