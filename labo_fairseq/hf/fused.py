"""The output layer and the loss fused in chunks (:func:`labo_fairseq.losses.linear_loss`) for
transformers' models whose logits are a plain linear map of their base model's last hidden state,
so that the (tokens x V) logits never exist whole.

Exactly such heads: the Marian / BART family (``lm_head``, plus the ``final_logits_bias`` buffer
taken as the bias; NLLB's M2M100 without it) and the Llama family (``lm_head`` on the final norm's
output). Other heads are more than a linear map, e.g. T5 rescales the decoder output of tied
embeddings, Gemma 2 soft-caps its logits, Cohere scales them: those models take the unfused path
from their own logits, with a one-line notice (:func:`linear_head` says why).
"""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

LINEAR_HEADS = ("marian", "bart", "mbart", "m2m_100", "llama", "mistral", "qwen2", "qwen3")
NOT_LINEAR = ("final_logit_softcapping", "logit_scale", "tie_word_embeddings_scale")  # config fields that change logits


@dataclass
class Head:
    """Where a model's logits come from: ``base(**inputs).last_hidden_state @ weight.T + bias``."""

    base: object
    weight: object
    bias: Optional[object]
    causal: bool


def linear_head(model) -> Tuple[Optional[Head], str]:
    """The model's head when its logits are exactly linear in its base model's output, else
    ``(None, why)``."""
    import torch

    cfg = model.config
    kind = getattr(cfg, "model_type", None)
    if kind not in LINEAR_HEADS:
        return None, (f"model type {kind!r} is not one whose logits are known to be a linear map of its base model's "
                      f"output ({', '.join(LINEAR_HEADS)})")
    for field in NOT_LINEAR:
        if getattr(cfg, field, None):
            return None, f"config.{field} is set: its logits are more than a linear map"
    head = model.get_output_embeddings()
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    width = getattr(cfg, "d_model", None) or getattr(cfg, "hidden_size", None)
    if not isinstance(head, torch.nn.Linear) or base is None or base is model or head.in_features != width \
            or base.get_output_embeddings() is not None:  # e.g. a PEFT wrapper, whose .model is the whole LM
        return None, "it has no linear output embeddings beside a base model"
    bias = head.bias
    extra = getattr(model, "final_logits_bias", None)
    if extra is not None:
        bias = extra.reshape(-1) if bias is None else bias + extra.reshape(-1)
    return Head(base, head.weight, bias, not cfg.is_encoder_decoder), ""


def fused_loss(cfg, head: Head, inputs: Dict, labels, step: int):
    """``(loss_sum, nll_sum, stats)`` as :func:`labo_fairseq.hf.trainer.token_loss` gives them from the
    logits, from the base model's output and the head's weights instead (a causal LM's labels shifted
    as transformers shifts them)."""
    from labo_fairseq.hf.trainer import IGNORE, loss_stats
    from labo_fairseq.losses.linear import linear_loss

    hidden = head.base(**inputs)[0]
    if head.causal:
        hidden, labels = hidden[:, :-1], labels[:, 1:]
    name, params = cfg.terms(step)
    loss, nll, stats = linear_loss(hidden, head.weight, labels, name, bias=head.bias, chunk_tokens=cfg.chunk_tokens,
                                   ignore_index=IGNORE, return_stats=True, **params)
    return loss, nll, loss_stats(cfg, name, stats["ntokens"], stats)
