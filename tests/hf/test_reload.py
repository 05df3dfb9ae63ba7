"""load_best_model_at_end with LossTrainer: the best checkpoint comes back whole, tied embeddings included.

When the Trainer reloads the best checkpoint it logs "There were missing keys in the checkpoint model
loaded: ['model.encoder.embed_tokens.weight', ..., 'lm_head.weight']". That is expected and harmless:
``save_pretrained`` writes a tied group once (``model.shared.weight``) and leaves out Marian's frozen
sinusoidal positions (``_keys_to_ignore_on_save``); ``Trainer._load_best_model`` then loads the file
with ``model.load_state_dict(sd, strict=False)``, which copies ``model.shared.weight`` in place into
the one Parameter that the encoder and decoder embeddings and ``lm_head`` all are, so nothing is lost.
The warning appears because the missing keys are more than ``_keys_to_ignore_on_save`` (the tied
aliases too), which is only the Trainer's test for staying silent.

A tiny Marian (built here, nothing downloaded) on synthetic tokens: trained on targets from the lower
half of the vocabulary, evaluated on targets from the upper half, so that the validation NLL rises
and the best checkpoint is the first, not the last step.
"""

import logging
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install '.[hf]')")
from labo_fairseq.hf import trainer as hf  # noqa: E402  (after the skip: LossTrainer needs transformers)

V, SRC_LEN, MAX_STEPS, EVERY = 40, 6, 6, 2
TIED_ALIASES = {"model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"}
POSITIONS = {"model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight"}


class Tokens(torch.utils.data.Dataset):
    """Random source sentences; targets drawn from ``lo <= id < hi`` (ids 0, 1: pad, eos)."""

    def __init__(self, n, lo, hi, seed):
        g = torch.Generator().manual_seed(seed)
        self.items = [{"input_ids": torch.randint(2, V, (SRC_LEN,), generator=g).tolist() + [1],
                       "labels": torch.randint(lo, hi, (SRC_LEN,), generator=g).tolist() + [1]} for _ in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return dict(self.items[i])


def collate(items):
    ids = torch.tensor([x["input_ids"] for x in items])
    labels = torch.tensor([x["labels"] for x in items])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


class LastStep(transformers.TrainerCallback):
    """The model's weights after the last optimizer step, before the best checkpoint is loaded."""

    state_dict = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == args.max_steps:
            self.state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def tiny_marian(tied):
    from transformers import MarianConfig, MarianMTModel

    cfg = MarianConfig(vocab_size=V, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                       decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32,
                       pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, forced_eos_token_id=1, dropout=0.0,
                       attention_dropout=0.0, activation_dropout=0.0,
                       **({} if tied else {"tie_word_embeddings": False}))
    torch.manual_seed(0)
    return MarianMTModel(cfg)


def embeddings(model):
    m = model.model
    return [m.shared.weight, m.encoder.embed_tokens.weight, m.decoder.embed_tokens.weight, model.lm_head.weight]


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied_lm_head"])
def test_best_checkpoint_is_reloaded_whole_with_its_tied_embeddings(tmp_path, tied):
    import safetensors.torch
    from transformers import MarianMTModel, Seq2SeqTrainingArguments

    model = tiny_marian(tied)
    ptrs = [p.data_ptr() for p in embeddings(model)]
    assert (len(set(ptrs)) == 1) == tied  # Marian's tie: one Parameter for both embeddings and lm_head
    # as labo_fairseq.study.hf_train configures it
    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path), max_steps=MAX_STEPS, per_device_train_batch_size=8, per_device_eval_batch_size=16,
        learning_rate=1e-2, seed=1, eval_strategy="steps", eval_steps=EVERY, save_strategy="steps", save_steps=EVERY,
        save_total_limit=1, load_best_model_at_end=True, metric_for_best_model="eval_nll_loss",
        greater_is_better=False, logging_steps=1, report_to=[], use_cpu=True, disable_tqdm=True)
    last = LastStep()
    tr = hf.LossTrainer(model=model, args=args, loss=hf.LossConfig("labo"), train_dataset=Tokens(32, 2, V // 2, 1),
                        eval_dataset=Tokens(16, V // 2, V, 2), data_collator=collate, callbacks=[last])
    records, trainer_logger = Records(), logging.getLogger("transformers.trainer")
    trainer_logger.addHandler(records)
    try:
        tr.train()
    finally:
        trainer_logger.removeHandler(records)

    evals = [r["eval_nll_loss"] for r in tr.state.log_history if "eval_nll_loss" in r]
    assert len(evals) == MAX_STEPS // EVERY and evals == sorted(evals) and evals[0] < evals[-1]
    best = Path(tr.state.best_model_checkpoint)
    assert best.name == f"checkpoint-{EVERY}" and tr.state.global_step == MAX_STEPS

    saved = set(safetensors.torch.load_file(best / "model.safetensors"))
    missing = set(tr.model.state_dict()) - saved
    warned = [m for m in records.messages if "missing keys in the checkpoint model loaded" in m]
    if tied:  # the tied group saved once, as model.shared.weight: the user's warning, and nothing lost
        assert missing == TIED_ALIASES | POSITIONS and "model.shared.weight" in saved
        assert len(warned) == 1 and all(k in warned[0] for k in TIED_ALIASES | POSITIONS)
    else:  # every embedding matrix saved; only the fixed sinusoids left out, which the Trainer accepts silently
        assert missing == POSITIONS and TIED_ALIASES <= saved and not warned

    fresh = MarianMTModel.from_pretrained(best)
    now, disk, before = tr.model.state_dict(), fresh.state_dict(), last.state_dict
    assert now.keys() == disk.keys() == before.keys()
    for k in now:
        assert torch.equal(now[k], disk[k]), f"{k}: the reloaded model differs from the best checkpoint"
    trained = [k for k in now if not torch.equal(now[k], before[k])]  # the best is not what the last step left
    assert TIED_ALIASES <= set(trained)
    if tied:  # (untied, transformers 5 gives the encoder and decoder their own embeddings: shared is unused)
        assert "model.shared.weight" in trained
    assert not {"final_logits_bias", *POSITIONS} & set(trained)  # a buffer and frozen sinusoids: never trained
    assert [p.data_ptr() for p in embeddings(tr.model)] == ptrs  # loaded in place: still one Parameter if tied
    assert (len({p.data_ptr() for p in embeddings(fresh)}) == 1) == tied
