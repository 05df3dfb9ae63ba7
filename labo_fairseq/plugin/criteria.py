"""fairseq criteria: thin registered wrappers around :mod:`labo_fairseq.losses`.

All of them subclass fairseq's ``label_smoothed_cross_entropy`` criterion and reuse its target
handling (``--ignore-prefix-size``, ``sentence_avg``), ``--report-accuracy`` and its logging of
``loss``, ``nll_loss`` (plain NLL, identical under every criterion) and ``ppl``. Only the token
loss differs. ``loss`` is each criterion's own objective (in bits, as fairseq logs it); compare
criteria on ``nll_loss``/``ppl`` or BLEU, never on ``loss``.
"""

import functools
import logging
import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    label_smoothed_nll_loss,
)
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II

from labo_fairseq import losses
from labo_fairseq.losses.hparams import HP, check_range

logger = logging.getLogger(__name__)
Stats = Dict[str, torch.Tensor]


def hp_field(key: str, **override):
    """A dataclass field of :data:`labo_fairseq.losses.hparams.HP`: its default, and its help with the range
    (what ``fairseq-train --help`` prints)."""
    return field(default=override.get("default", HP[key].default), metadata={"help": HP[key].describe()})


@dataclass
class RegularizedCriterionConfig(FairseqDataclass):
    report_accuracy: bool = field(default=False, metadata={"help": "report accuracy metric"})
    ignore_prefix_size: int = field(default=0, metadata={"help": "Ignore first N tokens"})
    sentence_avg: bool = II("optimization.sentence_avg")
    loss_chunk_tokens: int = hp_field("loss_chunk_tokens")


class RegularizedCriterion(LabelSmoothedCrossEntropyCriterion):
    """Base: subclasses implement :meth:`token_losses`; extra statistics are logged as
    ``sum(stat) / sum(stat_ntokens)`` for every name in ``mean_metrics`` (name -> scale)."""

    mean_metrics: Dict[str, float] = {}

    def __init__(self, task, sentence_avg, ignore_prefix_size=0, report_accuracy=False, label_smoothing=0.0,
                 loss_chunk_tokens=0):
        check_range("--ignore-prefix-size", ignore_prefix_size, 0, math.inf, hi_open=True)
        check(loss_chunk_tokens=loss_chunk_tokens)
        if loss_chunk_tokens and report_accuracy:
            raise ValueError("--report-accuracy needs the logits: not with --loss-chunk-tokens")
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        self.chunk_tokens = int(loss_chunk_tokens)
        self._stats: Stats = {}

    def token_losses(self, lprobs, target, reduce) -> Tuple[torch.Tensor, torch.Tensor, Stats]:
        """``(loss, nll_loss, stats)`` for flattened ``lprobs (N, V)`` and ``target (N,)``."""
        raise NotImplementedError

    def linear_terms(self) -> Tuple[str, Dict]:
        """The criterion and parameters of :func:`labo_fairseq.losses.linear_loss` that equal
        :meth:`token_losses` now (``--loss-chunk-tokens``)."""
        raise NotImplementedError(f"{type(self).__name__} has no --loss-chunk-tokens path")

    def linear_stats(self, stats: Stats, ntokens: torch.Tensor) -> Stats:
        """The logged statistics from :func:`linear_loss`'s (default: none)."""
        return {}

    def compute_loss(self, model, net_output, sample, reduce=True):
        lprobs, target = self.get_lprobs_and_target(model, net_output, sample)
        loss, nll_loss, self._stats = self.token_losses(lprobs, target, reduce)
        return loss, nll_loss

    def forward(self, model, sample, reduce=True):
        if self.chunk_tokens:
            return self.fused_forward(model, sample, reduce)
        loss, sample_size, logging_output = super().forward(model, sample, reduce=reduce)
        logging_output.update({k: v.detach() for k, v in self._stats.items()})
        return loss, sample_size, logging_output

    def fused_forward(self, model, sample, reduce=True):
        """The decoder's features and its output projection into :func:`linear_loss`, in chunks of
        ``--loss-chunk-tokens``: the same values and gradients as :meth:`forward`, without the
        (tokens x V) logits. fairseq's sample size and logging as its label-smoothed criterion."""
        if not reduce:
            raise ValueError("--loss-chunk-tokens computes summed losses only (reduce=True)")
        features, _ = model(**sample["net_input"], features_only=True)
        weight = output_weight(model)
        target = model.get_targets(sample, None)
        if self.ignore_prefix_size > 0:
            features, target = features[:, self.ignore_prefix_size:, :], target[:, self.ignore_prefix_size:]
        criterion, params = self.linear_terms()
        loss, nll, stats = losses.linear_loss(features, weight, target, criterion, chunk_tokens=self.chunk_tokens,
                                              ignore_index=self.padding_idx, return_stats=True, **params)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {"loss": loss.data, "nll_loss": nll.data, "ntokens": sample["ntokens"],
                          "nsentences": sample["target"].size(0), "sample_size": sample_size}
        logging_output.update({k: v.detach() for k, v in self.linear_stats(stats, stats["ntokens"]).items()})
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        ntokens = sum(log.get("stat_ntokens", 0) for log in logging_outputs)
        if ntokens <= 0:
            return
        for name, scale in cls.mean_metrics.items():
            total = sum(log.get(name, 0) for log in logging_outputs)
            metrics.log_scalar(name, total * scale / ntokens, ntokens, round=3)


def output_weight(model) -> torch.Tensor:
    """The (V, d) weight of the decoder's linear output projection (fairseq's transformer decoders:
    ``decoder.output_projection``, shared with the embeddings or not)."""
    proj = getattr(getattr(model, "decoder", None), "output_projection", None)
    if not isinstance(proj, torch.nn.Linear) or proj.bias is not None:
        raise ValueError("--loss-chunk-tokens needs a decoder whose output layer is a linear map without bias "
                         "(decoder.output_projection); this model has none (adaptive softmax?)")
    return proj.weight


def check(**values) -> None:
    """Each ``key=value`` checked against its range in HP, the error naming the fairseq flag."""
    for key, value in values.items():
        HP[key].check(value)


def _pad_count(target, padding_idx):
    return target.ne(padding_idx).sum().float()


# ----------------------------------------------------------------------------------------- LABO


@dataclass
class LaboConfig(RegularizedCriterionConfig):
    label_smoothing: float = hp_field("epsilon")
    labo_tau: float = hp_field("tau")
    labo_rho: float = hp_field("rho")
    labo_alpha: Optional[float] = hp_field("alpha")
    labo_warmup_updates: int = hp_field("warmup_updates")


@register_criterion("label_smoothed_labo", dataclass=LaboConfig)
class LaboCriterion(RegularizedCriterion):
    """Uniform LS (fairseq's, eps/(V-1) off the gold) for ``--labo-warmup-updates`` optimizer updates,
    then the LABO loss of :func:`labo_fairseq.losses.labo_loss`. Logs ``labo_alpha`` (mean
    smoothing mass: eps while warming up), ``labo_target_ent`` (mean entropy of the target, bits)
    and ``labo_active`` (fraction of tokens trained with the LABO target)."""

    mean_metrics = {"labo_alpha": 1.0, "labo_target_ent": 1.0 / math.log(2), "labo_active": 1.0}

    def __init__(
        self,
        task,
        sentence_avg,
        label_smoothing=HP["epsilon"].default,
        labo_tau=HP["tau"].default,
        labo_rho=HP["rho"].default,
        labo_alpha=None,
        labo_warmup_updates=HP["warmup_updates"].default,
        ignore_prefix_size=0,
        report_accuracy=False,
        loss_chunk_tokens=0,
    ):
        check(epsilon=label_smoothing, tau=labo_tau, rho=labo_rho, alpha=labo_alpha, warmup_updates=labo_warmup_updates)
        super().__init__(task, sentence_avg, ignore_prefix_size, report_accuracy, label_smoothing, loss_chunk_tokens)
        self.tau, self.rho, self.alpha = labo_tau, labo_rho, labo_alpha
        self.warmup_updates = int(labo_warmup_updates)
        self.num_updates = 0
        follow_trainer_updates(task)
        logger.info(
            "label_smoothed_labo: uniform LS (eps=%g) for %d updates, then LABO (tau=%g, %s)",
            self.eps, self.warmup_updates, self.tau,
            f"alpha={self.alpha}" if self.alpha is not None else f"adaptive alpha, rho={self.rho}",
        )

    def set_num_updates(self, num_updates: int) -> None:
        """Completed optimizer updates; LABO's target is used from update ``warmup_updates`` on."""
        if num_updates >= self.warmup_updates > self.num_updates:
            if num_updates == self.warmup_updates:
                logger.info("label_smoothed_labo: warm-up over at update %d, LABO target from now on", num_updates)
            else:  # a resumed run starts past the warm-up
                logger.info("label_smoothed_labo: resumed at update %d, past the warm-up (over at update %d): "
                            "LABO target", num_updates, self.warmup_updates)
        self.num_updates = int(num_updates)

    @property
    def labo_active(self) -> bool:
        return self.num_updates >= self.warmup_updates

    def token_losses(self, lprobs, target, reduce):
        if self.labo_active:
            loss, nll, st = losses.labo_terms(
                lprobs, target, self.tau, self.rho, self.alpha, self.padding_idx, reduce
            )
            ntok = st["ntokens"].sum()
            stats = {
                "labo_alpha": st["alpha"].sum(),
                "labo_target_ent": st["target_entropy"].sum(),
                "labo_active": ntok,
            }
        else:
            loss, nll = label_smoothed_nll_loss(lprobs, target, self.eps, self.padding_idx, reduce)
            loss, nll = (t if reduce else t.view(-1) for t in (loss, nll))
            ntok = _pad_count(target, self.padding_idx)
            stats = {
                "labo_alpha": ntok * self.eps,
                "labo_target_ent": ntok * _uniform_ls_entropy(self.eps, lprobs.size(-1)),
                "labo_active": ntok * 0,
            }
        stats["stat_ntokens"] = ntok
        return loss, nll, stats

    def linear_terms(self):
        if self.labo_active:
            return "labo", {"tau": self.tau, "rho": self.rho, "alpha": self.alpha}
        return "ls", {"epsilon": self.eps}

    def linear_stats(self, stats, ntokens):
        if self.labo_active:
            return {"labo_alpha": stats["alpha"], "labo_target_ent": stats["target_entropy"], "labo_active": ntokens,
                    "stat_ntokens": ntokens}
        return {"labo_alpha": ntokens * self.eps, "labo_active": ntokens * 0, "stat_ntokens": ntokens,
                "labo_target_ent": ntokens * _uniform_ls_entropy(self.eps, self.task.target_dictionary.__len__())}


def _uniform_ls_entropy(eps: float, vocab: int) -> float:
    """Entropy (nats) of fairseq's LS target: 1-eps on the gold, eps/(V-1) elsewhere."""
    def xlogx(v):
        return v * math.log(v) if v > 0 else 0.0
    return -(xlogx(1.0 - eps) + (vocab - 1) * xlogx(eps / (vocab - 1)))


def follow_trainer_updates(task) -> None:
    """Let ``task.train_step`` pass the trainer's ``update_num`` to the criterion it is given.

    fairseq gives the number of completed optimizer updates only to ``task.train_step`` (once per
    micro-batch, the same value for all ``--update-freq`` micro-batches; restored from the
    checkpoint on resume) and never to criteria. Wrapping the task *instance* keeps plain
    ``--task translation`` (or any task) and calls ``criterion.set_num_updates(update_num)`` before
    each training forward. Validation does not pass through it, so it cannot shift the count.
    """
    if task is None or getattr(task, "_labo_follows_updates", False) or not hasattr(task, "train_step"):
        return
    inner = task.train_step

    @functools.wraps(inner)
    def train_step(sample, model, criterion, optimizer, update_num, *args, **kwargs):
        crit = getattr(criterion, "module", criterion)  # unwrap a distributed wrapper
        if hasattr(crit, "set_num_updates"):
            crit.set_num_updates(update_num)
        return inner(sample, model, criterion, optimizer, update_num, *args, **kwargs)

    task.train_step = train_step
    task._labo_follows_updates = True


# ------------------------------------------------------------------------------------ baselines


@dataclass
class ConfidencePenaltyConfig(RegularizedCriterionConfig):
    cp_beta: float = hp_field("beta")


@register_criterion("confidence_penalty", dataclass=ConfidencePenaltyConfig)
class ConfidencePenaltyCriterion(RegularizedCriterion):
    """Confidence penalty (Pereyra et al., 2017), :func:`labo_fairseq.losses.confidence_penalty_loss`."""

    def __init__(self, task, sentence_avg, cp_beta=HP["beta"].default, ignore_prefix_size=0, report_accuracy=False,
                 loss_chunk_tokens=0):
        check(beta=cp_beta)
        super().__init__(task, sentence_avg, ignore_prefix_size, report_accuracy, loss_chunk_tokens=loss_chunk_tokens)
        self.beta = cp_beta

    def linear_terms(self):
        return "cp", {"beta": self.beta}

    def token_losses(self, lprobs, target, reduce):
        loss, nll = losses.confidence_penalty_loss(lprobs, target, self.beta, self.padding_idx, reduce)
        return loss, nll, {}


@dataclass
class FocalConfig(RegularizedCriterionConfig):
    focal_gamma: float = hp_field("gamma")
    focal_detach_weight: bool = field(
        default=False,
        metadata={"help": "treat (1 - p_y)^gamma as a constant; default: differentiate it (Lin et al.)"},
    )


@register_criterion("focal_loss", dataclass=FocalConfig)
class FocalCriterion(RegularizedCriterion):
    """Focal loss (Lin et al., 2017), :func:`labo_fairseq.losses.focal_loss`."""

    def __init__(self, task, sentence_avg, focal_gamma=HP["gamma"].default, focal_detach_weight=False,
                 ignore_prefix_size=0, report_accuracy=False, loss_chunk_tokens=0):
        check(gamma=focal_gamma)
        super().__init__(task, sentence_avg, ignore_prefix_size, report_accuracy, loss_chunk_tokens=loss_chunk_tokens)
        self.gamma, self.detach_weight = focal_gamma, focal_detach_weight

    def linear_terms(self):
        return "fl", {"gamma": self.gamma, "detach_weight": self.detach_weight}

    def token_losses(self, lprobs, target, reduce):
        loss, nll = losses.focal_loss(
            lprobs, target, self.gamma, self.padding_idx, reduce, detach_weight=self.detach_weight
        )
        return loss, nll, {}


@dataclass
class AntiFocalConfig(RegularizedCriterionConfig):
    anti_focal_gamma: float = hp_field("afl_gamma")
    anti_focal_alpha: float = hp_field("afl_alpha")
    anti_focal_differentiate_weight: bool = field(
        default=False,
        metadata={"help": "differentiate through (1 + alpha p_y)^gamma; default: detached, as the authors' code"},
    )


@register_criterion("anti_focal_loss", dataclass=AntiFocalConfig)
class AntiFocalCriterion(RegularizedCriterion):
    """Anti-focal loss (Raunak et al., 2020), :func:`labo_fairseq.losses.anti_focal_loss`."""

    def __init__(self, task, sentence_avg, anti_focal_gamma=HP["afl_gamma"].default,
                 anti_focal_alpha=HP["afl_alpha"].default, anti_focal_differentiate_weight=False,
                 ignore_prefix_size=0, report_accuracy=False, loss_chunk_tokens=0):
        check(afl_gamma=anti_focal_gamma, afl_alpha=anti_focal_alpha)
        super().__init__(task, sentence_avg, ignore_prefix_size, report_accuracy, loss_chunk_tokens=loss_chunk_tokens)
        self.gamma, self.alpha = anti_focal_gamma, anti_focal_alpha
        self.detach_weight = not anti_focal_differentiate_weight

    def linear_terms(self):
        return "afl", {"gamma": self.gamma, "alpha": self.alpha, "detach_weight": self.detach_weight}

    def token_losses(self, lprobs, target, reduce):
        loss, nll = losses.anti_focal_loss(
            lprobs, target, self.gamma, self.alpha, self.padding_idx, reduce,
            detach_weight=self.detach_weight,
        )
        return loss, nll, {}


# ---------------------------------------------------------------------------- LS, for like for like


@dataclass
class LabelSmoothedConfig(RegularizedCriterionConfig):
    label_smoothing: float = hp_field("epsilon")


@register_criterion("label_smoothed_ce", dataclass=LabelSmoothedConfig)
class LabelSmoothedCriterion(RegularizedCriterion):
    """fairseq's ``label_smoothed_cross_entropy`` (the same values: :func:`labo_fairseq.losses.label_smoothing_loss`)
    through this plugin's paths, ``--loss-chunk-tokens`` included, so that LS and CE (``--label-smoothing 0``)
    compare like for like with LABO and the other criteria."""

    def __init__(self, task, sentence_avg, label_smoothing=HP["epsilon"].default, ignore_prefix_size=0,
                 report_accuracy=False, loss_chunk_tokens=0):
        check(epsilon=label_smoothing)
        super().__init__(task, sentence_avg, ignore_prefix_size, report_accuracy, label_smoothing, loss_chunk_tokens)

    def token_losses(self, lprobs, target, reduce):
        loss, nll = losses.label_smoothing_loss(lprobs, target, self.eps, self.padding_idx, reduce)
        return loss, nll, {}

    def linear_terms(self):
        return "ls", {"epsilon": self.eps}
