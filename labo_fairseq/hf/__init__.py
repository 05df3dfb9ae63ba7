"""LABO and the baselines for Hugging Face ``transformers``: :class:`LossConfig` and
:class:`LossTrainer` (:mod:`.trainer`). Importing it loads neither fairseq nor transformers;
``LossTrainer`` imports transformers when first used."""

from labo_fairseq.hf.trainer import CRITERIA, IGNORE, LossConfig, LossFunction, token_loss

__all__ = ["CRITERIA", "IGNORE", "LossConfig", "LossFunction", "LossTrainer", "token_loss"]


def __getattr__(name):
    if name == "LossTrainer":
        from labo_fairseq.hf import trainer

        return trainer.LossTrainer
    raise AttributeError(name)
