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

import logging
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from labo_fairseq.hf.fused import fused_loss, linear_head
from labo_fairseq.losses.hparams import HP

logger = logging.getLogger(__name__)

CRITERIA = ("ce", "ls", "labo", "cp", "fl", "afl")
IGNORE = -100  # transformers' label padding


@dataclass
class LossConfig:
    """The criterion and its hyper-parameters (checked at construction, naming the bad value).
    ``fused``: compute the output layer and the loss together in chunks of ``chunk_tokens`` tokens
    (None: chosen from the vocabulary size) wherever the model's head is a plain linear map
    (:mod:`labo_fairseq.hf.fused`); elsewhere, or with False, from the model's logits."""

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
    fused: bool = True
    chunk_tokens: Optional[int] = None

    def __post_init__(self):
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {self.criterion!r}; choose from {', '.join(CRITERIA)}")
        for name, key in (("label_smoothing", "epsilon"), ("tau", "tau"), ("rho", "rho"), ("alpha", "alpha"),
                          ("warmup_steps", "warmup_updates"), ("cp_beta", "beta"), ("focal_gamma", "gamma"),
                          ("anti_focal_gamma", "afl_gamma"), ("anti_focal_alpha", "afl_alpha")):
            HP[key].check(getattr(self, name), name)
        if self.chunk_tokens is not None and self.chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {self.chunk_tokens}")

    def terms(self, step: int) -> Tuple[str, Dict]:
        """The pure loss (:data:`labo_fairseq.losses.linear.CRITERIA`'s name) and its parameters at
        optimizer step ``step``: LABO is uniform LS before ``warmup_steps``."""
        c = self.criterion
        if c == "ce":
            return "ce", {}
        if c == "ls" or (c == "labo" and step < self.warmup_steps):
            return "ls", {"epsilon": self.label_smoothing}
        if c == "labo":
            return "labo", {"tau": self.tau, "rho": self.rho, "alpha": self.alpha}
        if c == "cp":
            return "cp", {"beta": self.cp_beta}
        if c == "fl":
            return "fl", {"gamma": self.focal_gamma}
        return "afl", {"gamma": self.anti_focal_gamma, "alpha": self.anti_focal_alpha}


def loss_stats(cfg: LossConfig, name: str, ntokens, stats) -> Dict[str, float]:
    """The meters' statistics (floats: no graph kept): ``ntokens``, and for LABO ``active`` and ``alpha_sum``."""
    out = {"ntokens": float(ntokens)}
    if cfg.criterion == "labo":
        out.update(active=float(name == "labo"), alpha_sum=float(stats["alpha"]) if name == "labo" else 0.0)
    return out


def token_loss(cfg: LossConfig, logits, labels, step: int = 0) -> Tuple["object", "object", Dict[str, float]]:
    """``(loss_sum, nll_sum, stats)`` over the non-ignored tokens of ``logits (B, T, V)`` and
    ``labels (B, T)`` at optimizer step ``step``; ``stats``: ``ntokens``, and for LABO ``alpha_sum``
    and ``active`` (whether the LABO target was used)."""
    import torch

    from labo_fairseq.losses.linear import token_loss_fn

    lprobs = torch.log_softmax(logits.float(), dim=-1).view(-1, logits.size(-1))  # fp32, as fairseq hands them
    target = labels.reshape(-1)
    name, params = cfg.terms(step)
    loss, nll, stats = token_loss_fn(name, params)(lprobs, target, IGNORE)
    return loss, nll, loss_stats(cfg, name, target.ne(IGNORE).sum(), stats)


def _denominator(num_items_in_batch, stats, like):
    """The Trainer's token count of the accumulated batch, else this batch's."""
    if num_items_in_batch is None:
        return max(stats["ntokens"], 1.0)
    return num_items_in_batch.to(like.device) if hasattr(num_items_in_batch, "to") else num_items_in_batch


class LossFunction:
    """The loss for transformers' plain ``Trainer`` (and so TRL's trainers)::

        f = LossFunction(LossConfig("labo", warmup_steps=500), causal=True)
        Trainer(..., compute_loss_func=f, callbacks=[f.callback()])

    The Trainer then gives the model no labels and calls ``f(outputs, labels, num_items_in_batch)``;
    ``causal``: labels are the inputs (shifted here, as transformers shifts them). The callback tells
    ``f`` the optimizer step, for LABO's warm-up. A seq2seq model needs ``decoder_input_ids`` from
    its collator (``DataCollatorForSeq2Seq(model=...)``). From the logits: :class:`LossTrainer` has
    the fused path."""

    def __init__(self, config: Optional[LossConfig] = None, causal: bool = False):
        self.config, self.causal, self.step = config or LossConfig(), causal, 0

    def __call__(self, outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        if self.causal:
            logits, labels = logits[:, :-1], labels[:, 1:]
        loss_sum, _, stats = token_loss(self.config, logits, labels, self.step)
        return loss_sum / _denominator(num_items_in_batch, stats, loss_sum)

    def callback(self):
        """A ``TrainerCallback`` that sets ``self.step`` to the optimizer step before each step."""
        from transformers import TrainerCallback

        fn = self

        class StepCallback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                fn.step = state.global_step

        return StepCallback()


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
    # Long: a class factory: the class is defined in here so that its base, transformers'
    # Seq2SeqTrainer, is imported only on first use; each of its methods is short.
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
            self.loss_config = loss or LossConfig()
            self.model_accepts_loss_kwargs = True  # so the Trainer counts num_items_in_batch for us
            self._meters = {"train": _Meter(), "eval": _Meter()}
            self._heads: Dict[int, object] = {}
            self.fused_head(self.model)  # the notice, if any, at once

        def fused_head(self, model):
            """The model's linear head (:func:`linear_head`) or None, found once per model object (a
            ``model_init`` makes a new one), with a one-line notice where the fused path is off."""
            if id(model) not in self._heads:
                head, why = (None, "fused=False") if not self.loss_config.fused else linear_head(model)
                if head is None and self.loss_config.fused:
                    logger.warning("LossTrainer: the loss from the model's logits (unfused): %s", why)
                self._heads = {id(model): head}
            return self._heads[id(model)]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")  # the model never gets them: it would compute its own loss as well
            unwrapped = self.accelerator.unwrap_model(model)
            if unwrapped.config.is_encoder_decoder and "decoder_input_ids" not in inputs:
                inputs = {**inputs, "decoder_input_ids": unwrapped.prepare_decoder_input_ids_from_labels(labels=labels)}
            step, outputs, head = self.state.global_step, None, self.fused_head(unwrapped)
            if head is not None and model is not unwrapped and not getattr(self, "_told_wrapped", False):
                self._told_wrapped = True  # DDP/FSDP hooks live in the wrapper's forward: do not bypass it
                logger.warning("LossTrainer: the model is wrapped for distributed training: the loss from its logits")
            if head is not None and not return_outputs and model is unwrapped:
                with self.accelerator.autocast():  # mixed precision applies to the base model as to model(...)
                    loss_sum, nll_sum, stats = fused_loss(self.loss_config, head, inputs, labels, step)
            else:  # evaluation asking for the logits, a model wrapped for distributed training, or no linear head
                outputs = model(**inputs)
                logits = outputs.logits
                if not unwrapped.config.is_encoder_decoder:  # a causal LM predicts the next token: shift
                    logits, labels = logits[:, :-1], labels[:, 1:]
                loss_sum, nll_sum, stats = token_loss(self.loss_config, logits, labels, step)
            loss = loss_sum / _denominator(num_items_in_batch, stats, loss_sum)
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
