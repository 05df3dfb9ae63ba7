"""Word-level knowledge distillation as a registered fairseq criterion, ``word_distillation``.

The teacher (one checkpoint, or several averaged as an ensemble) is loaded by the criterion itself,
through fairseq's checkpoint utilities, so plain ``fairseq-train --user-dir labo_fairseq`` trains a
student: no patched ``fairseq_cli/train.py``. Loss: :func:`labo_fairseq.losses.distillation_loss`.

The teacher is kept out of the module tree (a plain list, not a submodule): it is then not among
``criterion.parameters()``, so fairseq's trainer neither gives it to the optimizer, nor wraps the
criterion in DDP, nor writes it into the student's checkpoints (``trainer.state_dict`` saves the
criterion only when it has parameters).
"""

import logging
import math
import os
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from fairseq.criterions import register_criterion

from labo_fairseq import losses
from labo_fairseq.plugin.criteria import RegularizedCriterion, RegularizedCriterionConfig, check, hp_field

logger = logging.getLogger(__name__)


@dataclass
class WordDistillationConfig(RegularizedCriterionConfig):
    teacher_path: str = field(
        default="",
        metadata={"help": "teacher checkpoint(s) CKPT[:CKPT...]; several form an ensemble that averages "
                          "probabilities, as fairseq-generate does"},
    )
    kd_alpha: float = hp_field("kd_alpha")
    kd_temperature: float = hp_field("kd_temperature")
    kd_topk: Optional[int] = hp_field("kd_topk")
    label_smoothing: float = field(  # not HP's default: the hard-label term is plain NLL unless asked
        default=0.0, metadata={"help": "epsilon in [0, 1) of the hard-label term's label smoothing (0: plain NLL)"}
    )


def teacher_paths(spec: str) -> List[str]:
    """``CKPT[:CKPT...]`` as a list; raises ``ValueError`` naming ``--teacher-path`` if empty or missing."""
    paths = [p for p in (spec or "").split(os.pathsep) if p]
    if not paths:
        raise ValueError("--teacher-path is required: the teacher checkpoint(s), CKPT[:CKPT...]")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ValueError(f"--teacher-path: no such checkpoint file: {', '.join(missing)}")
    return paths


def _first_difference(a, b) -> str:
    for i, (x, y) in enumerate(zip(a.symbols, b.symbols)):
        if x != y:
            return f"first difference at index {i}: {x!r} (teacher) vs {y!r} (task)"
    return f"{len(a)} vs {len(b)} symbols"


def check_dictionaries(path: str, state, task) -> None:
    """Refuse a teacher whose dictionaries differ from the task's, saying which (source/target).

    Compares symbol by symbol with the teacher's dictionaries where its data directory is still
    there (``cfg.task.data`` in the checkpoint); else compares the sizes of its embedding matrices.
    """
    from fairseq.data import Dictionary

    cfg = state["cfg"]
    data = str(getattr(cfg.task, "data", "") or "").split(os.pathsep)[0]
    sides = [("source", getattr(cfg.task, "source_lang", None), task.source_dictionary, "encoder.embed_tokens.weight"),
             ("target", getattr(cfg.task, "target_lang", None), task.target_dictionary, "decoder.embed_tokens.weight")]
    for side, lang, ours, key in sides:
        if ours is None:
            continue
        dict_file = os.path.join(data, f"dict.{lang}.txt") if data and lang else None
        if dict_file and os.path.isfile(dict_file):
            theirs = Dictionary.load(dict_file)
            if theirs.symbols != ours.symbols:
                raise ValueError(f"--teacher-path {path}: the teacher's {side} dictionary ({dict_file}, {len(theirs)} "
                                 f"symbols) differs from the task's ({len(ours)} symbols); "
                                 f"{_first_difference(theirs, ours)}")
        elif key in state["model"] and state["model"][key].size(0) != len(ours):
            raise ValueError(f"--teacher-path {path}: the teacher's {side} dictionary has {state['model'][key].size(0)} "
                             f"symbols, the task's {len(ours)}")


def load_teacher(path: str, task) -> torch.nn.Module:
    """One teacher: fairseq's ``load_checkpoint_to_cpu`` (torch >= 2.6: the plugin's allow-list, since
    ``labo_fairseq`` is imported), the dictionary check, then the model in eval mode, frozen.

    Built with ``fairseq.models.build_model``, not ``task.build_model``: the translation task's
    ``build_model`` with ``--eval-bleu`` would make the *teacher* the model that validation BLEU decodes.
    """
    from fairseq import checkpoint_utils, models

    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    check_dictionaries(path, state, task)
    model = models.build_model(state["cfg"].model, task)
    model.load_state_dict(state["model"], strict=True, model_cfg=state["cfg"].model)
    model.eval()
    model.requires_grad_(False)
    return model


@register_criterion("word_distillation", dataclass=WordDistillationConfig)
class WordDistillationCriterion(RegularizedCriterion):
    """Word-level KD, :func:`labo_fairseq.losses.distillation_loss`. Logs ``kd_loss`` (``T^2 KL``, bits
    per token), ``teacher_nll`` (bits per token, comparable to ``nll_loss``) and ``gamma`` (Müller
    et al.'s teacher mass off the gold, of the target the student sees)."""

    mean_metrics = {"kd_loss": 1.0 / math.log(2), "teacher_nll": 1.0 / math.log(2), "gamma": 1.0}

    def __init__(self, task, sentence_avg, teacher_path="", kd_alpha=0.5, kd_temperature=1.0, kd_topk=None,
                 label_smoothing=0.0, ignore_prefix_size=0, report_accuracy=False, teachers=None, loss_chunk_tokens=0):
        check(kd_alpha=kd_alpha, kd_temperature=kd_temperature, kd_topk=kd_topk, epsilon=label_smoothing)
        if loss_chunk_tokens:
            raise ValueError("word_distillation needs the student's whole distribution beside the teacher's: "
                             "not with --loss-chunk-tokens")
        paths = teacher_paths(teacher_path) if teachers is None else []
        super().__init__(task, sentence_avg, ignore_prefix_size, report_accuracy, label_smoothing)
        self.alpha, self.temperature, self.topk = float(kd_alpha), float(kd_temperature), kd_topk
        # A plain list keeps the teachers out of parameters(), state_dict() and .to()/.half().
        self.__dict__["_teachers"] = list(teachers) if teachers is not None else [load_teacher(p, task) for p in paths]
        self._placed = None
        logger.info("word_distillation: %d teacher model(s) %s, alpha=%g, T=%g, top-k=%s, eps=%g",
                    len(self._teachers), paths, self.alpha, self.temperature, self.topk, self.eps)

    @property
    def teachers(self) -> List[torch.nn.Module]:
        return self._teachers

    def _place(self, model) -> None:
        """Move the teachers to the student's device and dtype (fp16 on GPU), once."""
        p = next(model.parameters(), None)
        where = (p.device, p.dtype) if p is not None else None
        if where is not None and where != self._placed:
            for t in self._teachers:
                t.to(device=where[0], dtype=where[1])
            self._placed = where

    @torch.no_grad()
    def teacher_lprobs(self, model, sample) -> torch.Tensor:
        """(N, V) log-probabilities of the teacher (ensemble: log of the mean probability), flattened as
        ``get_lprobs_and_target`` flattens the student's."""
        self._place(model)
        out = []
        for t in self._teachers:
            t.eval()
            lp = t.get_normalized_probs(t(**sample["net_input"]), log_probs=True)
            if self.ignore_prefix_size > 0:
                lp = lp[:, self.ignore_prefix_size:, :]
            out.append(lp.reshape(-1, lp.size(-1)).float())
        if len(out) == 1:
            return out[0]
        return torch.logsumexp(torch.stack(out), 0) - math.log(len(out))

    def compute_loss(self, model, net_output, sample, reduce=True):
        lprobs, target = self.get_lprobs_and_target(model, net_output, sample)
        loss, nll, st = losses.distillation_terms(
            lprobs, target, self.teacher_lprobs(model, sample), self.alpha, self.temperature, self.eps,
            self.padding_idx, reduce, self.topk,
        )
        self._stats = {"kd_loss": st["kd_loss"], "teacher_nll": st["teacher_nll"], "gamma": st["gamma"],
                       "stat_ntokens": st["ntokens"]}
        return loss, nll
