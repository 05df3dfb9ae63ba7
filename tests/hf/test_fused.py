"""The Hugging Face paths beyond the seq2seq collator: the model never gets labels, decoder-only
causal LMs (prompt tokens masked with -100), the fused output layer equal to the logits' path,
heads that are more than a linear map falling back, and the plain Trainer's compute_loss_func."""

import logging

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install '.[hf]')")
from labo_fairseq.hf import fused as F  # noqa: E402
from labo_fairseq.hf import trainer as hf  # noqa: E402

V = 61


def llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


def marian(seed=0):
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(seed)
    cfg = MarianConfig(vocab_size=V, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                       decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
                       pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, dropout=0.0)
    model = MarianMTModel(cfg)
    with torch.no_grad():
        model.final_logits_bias.normal_()  # zeros in a fresh model: make the bias count
    return model


def prompt_batch(n=6, prompt=5, answer=4, seed=0):
    """A decoder-only translation batch: prompt tokens (labels -100), then the answer, then padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (n, prompt + answer + 2), generator=g)
    labels = ids.clone()
    labels[:, :prompt] = hf.IGNORE
    mask = torch.ones_like(ids)
    ids[-1, -2:], labels[-1, -2:], mask[-1, -2:] = 0, hf.IGNORE, 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def seq2seq_batch(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(3, V, (n, 6), generator=g)
    labels[0, -2:] = hf.IGNORE
    return {"input_ids": torch.randint(3, V, (n, 7), generator=g), "attention_mask": torch.ones(n, 7, dtype=torch.long),
            "labels": labels}


def loss_by_path(model, batch, cfg, fused):
    trainer = type("T", (), {})()  # just the pieces compute_loss reads
    model.zero_grad()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    labels = batch["labels"]
    if model.config.is_encoder_decoder:
        inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=labels)
    if fused:
        head, why = F.linear_head(model)
        assert head is not None, why
        loss, nll, stats = F.fused_loss(cfg, head, inputs, labels, step=10)
    else:
        logits = model(**inputs).logits
        if not model.config.is_encoder_decoder:
            logits, labels = logits[:, :-1], labels[:, 1:]
        loss, nll, stats = hf.token_loss(cfg, logits, labels, step=10)
    loss.backward()
    del trainer
    return loss.detach(), nll.detach(), stats, {n: p.grad.clone() for n, p in model.named_parameters()
                                                if p.grad is not None}


@pytest.mark.parametrize("build,batch", [(llama, prompt_batch), (marian, seq2seq_batch)], ids=["llama", "marian"])
@pytest.mark.parametrize("criterion", ["labo", "ls", "cp"])
def test_the_fused_path_equals_the_logits_path(build, batch, criterion):
    model, b = build(), batch()
    cfg = hf.LossConfig(criterion, chunk_tokens=7)
    l0, n0, s0, g0 = loss_by_path(model, b, cfg, fused=False)
    l1, n1, s1, g1 = loss_by_path(model, b, cfg, fused=True)
    assert torch.allclose(l0, l1, rtol=1e-5) and torch.allclose(n0, n1, rtol=1e-5)
    assert s0["ntokens"] == s1["ntokens"] and s0.keys() == s1.keys()
    assert s0.get("alpha_sum", 0) == pytest.approx(s1.get("alpha_sum", 0), rel=1e-5)
    assert set(g0) == set(g1)
    for name in g0:
        assert torch.allclose(g0[name], g1[name], rtol=1e-4, atol=1e-7), name


def test_prompt_tokens_count_for_nothing():
    model, b = llama(), prompt_batch()
    cfg = hf.LossConfig("labo")
    head, _ = F.linear_head(model)
    inputs = {k: v for k, v in b.items() if k != "labels"}
    loss, _, stats = F.fused_loss(cfg, head, inputs, b["labels"], step=0)
    assert stats["ntokens"] == float(b["labels"][:, 1:].ne(hf.IGNORE).sum()) == 5 * 6 + 4
    changed = b["labels"].clone()
    changed[:, :5] = hf.IGNORE  # already ignored: the same loss whatever the prompt's labels were
    assert torch.equal(F.fused_loss(cfg, head, inputs, changed, step=0)[0], loss)


def test_heads_that_are_more_than_a_linear_map_fall_back_with_the_reason():
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=V, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8))
    assert F.linear_head(t5)[0] is None and "model type 't5'" in F.linear_head(t5)[1]
    model = llama()
    model.config.final_logit_softcapping = 30.0
    assert F.linear_head(model) == (None, "config.final_logit_softcapping is set: its logits are more than a linear map")


def _train(model, batch, tmp_path, loss, steps=30, **kw):
    from transformers import Seq2SeqTrainingArguments

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return len(batch["labels"])

        def __getitem__(self, i):
            return {k: v[i] for k, v in batch.items()}

    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=steps,
                                    per_device_train_batch_size=len(batch["labels"]), learning_rate=3e-3,
                                    logging_steps=5, save_strategy="no", disable_tqdm=True, remove_unused_columns=False,
                                    **kw)
    trainer = hf.LossTrainer(model=model, args=args, train_dataset=Data(), loss=loss)
    seen = []
    inner = model.forward

    def spy(*a, **k):
        seen.append(sorted(k))
        return inner(*a, **k)

    model.forward = spy
    trainer.train()
    return trainer, seen


def test_a_decoder_only_model_fine_tunes_with_labo_through_the_trainer(tmp_path):
    model, b = llama(), prompt_batch(n=8)
    trainer, _ = _train(model, b, tmp_path, hf.LossConfig("labo", warmup_steps=10))
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 6 and logs[-1]["nll_loss"] < 0.9 * logs[0]["nll_loss"]
    assert logs[0]["labo_active"] == 0 and logs[-1]["labo_active"] == 1 and 0 < logs[-1]["labo_alpha"] <= 1


def test_a_seq2seq_model_with_a_plain_collator_is_never_given_labels(tmp_path):
    model, b = marian(), seq2seq_batch(n=4)
    trainer, seen = _train(model, b, tmp_path, hf.LossConfig("ls", fused=False), steps=3)
    assert len(seen) == 3 and all("labels" not in k and "decoder_input_ids" in k for k in seen)


def test_a_model_without_a_linear_head_trains_unfused_after_a_one_line_notice(tmp_path, caplog):
    from transformers import Seq2SeqTrainingArguments, T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=V, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8))
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with caplog.at_level(logging.WARNING):
        hf.LossTrainer(model=t5, args=args, loss=hf.LossConfig("labo"))
    notices = [r.getMessage() for r in caplog.records if "LossTrainer" in r.getMessage()]
    assert len(notices) == 1 and "unfused" in notices[0] and "model type 't5'" in notices[0]


def test_the_plain_trainer_takes_the_loss_with_its_warm_up_from_a_callback(tmp_path):
    from transformers import Trainer, TrainingArguments

    model, b = llama(), prompt_batch(n=8)
    fn = hf.LossFunction(hf.LossConfig("labo", warmup_steps=3), causal=True)
    steps = []
    inner = hf.token_loss

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {k: v[i] for k, v in b.items()}

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=6, learning_rate=3e-3,
                             per_device_train_batch_size=8, save_strategy="no", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Data(), compute_loss_func=fn, callbacks=[fn.callback()])
    try:
        hf.token_loss = lambda cfg, logits, labels, step: (steps.append(cfg.terms(step)[0]), inner(cfg, logits, labels, step))[1]
        trainer.train()
    finally:
        hf.token_loss = inner
    assert steps == ["ls", "ls", "ls", "labo", "labo", "labo"]
