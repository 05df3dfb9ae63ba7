"""The pure losses: tensors in, ``(loss, nll_loss)`` out; torch only, no fairseq.

- :mod:`.token`: from ``(N, V)`` log-probabilities (LABO, LS, CP, FL, AFL, word-level KD);
- :mod:`.linear`: from hidden states and the output layer, in chunks (the logits never whole);
- :mod:`.hparams`: every hyper-parameter's default and range, once (pure Python).

The loss functions are loaded on first use, so that reading :mod:`.hparams` (the commands'
checks) does not import torch.
"""

from labo_fairseq.losses.hparams import HP, check_range

_TOKEN = ("anti_focal_loss", "confidence_penalty_loss", "distillation_loss", "distillation_terms", "focal_loss",
          "label_smoothing_loss", "labo_loss", "labo_terms")
__all__ = ["HP", "check_range", "linear_loss", *_TOKEN]


def __getattr__(name):
    if name in _TOKEN:
        from labo_fairseq.losses import token

        return getattr(token, name)
    if name == "linear_loss":
        from labo_fairseq.losses.linear import linear_loss

        return linear_loss
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
