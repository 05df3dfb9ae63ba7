"""labo_fairseq.hf.trainer: the losses inside transformers' Seq2SeqTrainer, on a tiny Marian model and a
tokenizer trained on real Multi30k text here (no model hub, no network)."""

import gzip
import json
import math
import subprocess
import sys

import pytest
import torch

from labo_fairseq import losses as L
from tests.helpers import MULTI30K, REPO

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install '.[hf]')")
from labo_fairseq.hf import trainer as hf  # noqa: E402


def multi30k(split, lang, n=None):
    path = MULTI30K / f"{split}.{lang}.gz"
    if not path.is_file():
        pytest.skip(f"real data not found at {path} (set LABO_SHARED_DATA)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    return lines[:n] if n else lines


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model directory, tokenizer, model): a 1-layer Marian with d_model 32 and a 2,000-piece BPE
    tokenizer trained on 5,000 Multi30k pairs, saved as a user's downloaded model would be."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerFast

    text = multi30k("train", "de", 5000) + multi30k("train", "en", 5000)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=2000, special_tokens=["<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    cfg = MarianConfig(vocab_size=len(fast), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                       decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
                       pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, forced_eos_token_id=1,
                       dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    torch.manual_seed(0)
    model = MarianMTModel(cfg)
    d = tmp_path_factory.mktemp("tiny_marian")
    model.save_pretrained(d)
    fast.save_pretrained(d)
    return d, fast, model


def batch(tokenizer, n=8, offset=0):
    src, tgt = multi30k("val", "de", offset + n)[offset:], multi30k("val", "en", offset + n)[offset:]
    enc = tokenizer(src, text_target=tgt, padding=True, return_tensors="pt")
    enc["labels"] = enc["labels"].masked_fill(enc["labels"].eq(tokenizer.pad_token_id), hf.IGNORE)
    return enc


def p_hat(logits, labels, tau, rho):
    """The LABO target, in float64, from the logits: (1 - alpha) onehot + alpha softmax(z / tau)."""
    z = logits.double().view(-1, logits.size(-1))
    p = torch.softmax(z, -1)
    v = z.size(-1)
    ent = -(p * p.log()).sum(-1)
    alpha = ((math.log(v) - rho * ent) / math.log(v)).clamp(0, 1)
    pstar = torch.softmax(z / tau, -1)
    y = labels.reshape(-1).clamp(min=0)
    onehot = torch.nn.functional.one_hot(y, v).double()
    return (1 - alpha)[:, None] * onehot + alpha[:, None] * pstar, p


def test_importing_the_integration_loads_neither_fairseq_nor_transformers():
    code = "import sys, labo_fairseq.hf.trainer\nprint([m for m in ('fairseq', 'transformers') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("kwargs,match", [({"criterion": "labo2"}, "unknown criterion 'labo2'"),
                                          ({"tau": 0.0}, r"tau must be in \(0, inf\), got 0.0"),
                                          ({"rho": -0.1}, r"rho must be in \[0, 1\], got -0.1"),
                                          ({"rho": 1.2}, r"rho must be in \[0, 1\], got 1.2"),
                                          ({"warmup_steps": -1}, "warmup_steps must be")])
def test_bad_hyper_parameters_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hf.LossConfig(**kwargs)


def test_labo_loss_equals_the_pure_loss_and_its_gradient_is_p_minus_p_hat(tiny):
    _, tokenizer, model = tiny
    b = batch(tokenizer)
    logits = model(**b).logits.detach().requires_grad_(True)
    cfg = hf.LossConfig("labo", tau=1.15, rho=0.5)
    loss, nll, stats = hf.token_loss(cfg, logits, b["labels"], step=0)
    ref, ref_nll = L.labo_loss(torch.log_softmax(logits.float(), -1).view(-1, logits.size(-1)),
                               b["labels"].reshape(-1), 1.15, 0.5, ignore_index=hf.IGNORE)
    assert torch.allclose(loss, ref) and torch.allclose(nll, ref_nll)
    assert stats["active"] == 1.0 and stats["ntokens"] == float(b["labels"].ne(hf.IGNORE).sum())
    loss.backward()
    target, p = p_hat(logits.detach(), b["labels"], 1.15, 0.5)
    keep = b["labels"].reshape(-1).ne(hf.IGNORE)
    expected = torch.where(keep[:, None], p - target, torch.zeros_like(p))
    assert torch.allclose(logits.grad.view(-1, logits.size(-1)).double(), expected, atol=1e-6)


def test_padding_contributes_nothing(tiny):
    _, tokenizer, model = tiny
    b = batch(tokenizer)
    logits = model(**b).logits.detach()
    cfg = hf.LossConfig("labo")
    base, _, _ = hf.token_loss(cfg, logits, b["labels"])
    # three more positions of ignored labels, with wild logits
    extra = torch.randn(logits.size(0), 3, logits.size(-1)) * 50
    padded = torch.cat([logits, extra], 1).requires_grad_(True)
    labels = torch.cat([b["labels"], torch.full((logits.size(0), 3), hf.IGNORE)], 1)
    loss, _, stats = hf.token_loss(cfg, padded, labels)
    assert torch.allclose(loss, base) and stats["ntokens"] == float(b["labels"].ne(hf.IGNORE).sum())
    loss.backward()
    assert padded.grad[:, -3:].abs().max() == 0


def test_limits_match_transformers_own_losses(tiny):
    """LABO with alpha 0 is the model's own cross-entropy; the warm-up's fairseq-convention LS at
    eps (V-1)/V is transformers' label_smoothing_factor eps."""
    from transformers.trainer_pt_utils import LabelSmoother

    _, tokenizer, model = tiny
    b = batch(tokenizer)
    out = model(**b)
    n = float(b["labels"].ne(hf.IGNORE).sum())
    zero, _, _ = hf.token_loss(hf.LossConfig("labo", alpha=0.0), out.logits, b["labels"])
    assert torch.allclose(zero / n, out.loss, atol=1e-6)
    ce, _, _ = hf.token_loss(hf.LossConfig("ce"), out.logits, b["labels"])
    assert torch.allclose(ce, zero, atol=1e-5)
    sharp = out.logits * 20  # peaked predictions, so that the two conventions' difference shows
    v = sharp.size(-1)
    theirs = LabelSmoother(epsilon=0.1)({"logits": sharp}, b["labels"])
    ours, _, st = hf.token_loss(hf.LossConfig("labo", label_smoothing=0.1 * (v - 1) / v, warmup_steps=10),
                                sharp, b["labels"], step=3)
    assert st["active"] == 0.0 and torch.allclose(ours / n, theirs, rtol=1e-6, atol=1e-5)


class Pairs(torch.utils.data.Dataset):
    def __init__(self, tokenizer, split, n, offset=0):
        src, tgt = multi30k(split, "de", offset + n)[offset:], multi30k(split, "en", offset + n)[offset:]
        self.items = [tokenizer(s, text_target=t, truncation=True, max_length=64) for s, t in zip(src, tgt)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return dict(self.items[i])


def trainer(tiny, out, loss, **kw):
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainingArguments

    d, tokenizer, model = tiny
    from transformers import MarianMTModel

    model = MarianMTModel.from_pretrained(d)
    defaults = dict(output_dir=str(out), per_device_train_batch_size=8, learning_rate=3e-3, report_to=[],
                    logging_steps=1, save_strategy="no", use_cpu=True, seed=1, disable_tqdm=True)
    args = Seq2SeqTrainingArguments(**{**defaults, **kw})
    return hf.LossTrainer(model=model, args=args, loss=loss, train_dataset=Pairs(tokenizer, "train", 96),
                          eval_dataset=Pairs(tokenizer, "val", 32),
                          data_collator=DataCollatorForSeq2Seq(tokenizer, model=model))


def labo_log(tr):
    return [(r["step"], r["labo_active"], r.get("labo_alpha")) for r in tr.state.log_history if "labo_active" in r]


@pytest.mark.slow
def test_warmup_switches_at_the_optimizer_step_with_accumulation_and_resume(tiny, tmp_path):
    cfg = hf.LossConfig("labo", warmup_steps=3)
    tr = trainer(tiny, tmp_path / "a", cfg, gradient_accumulation_steps=2, max_steps=5, save_strategy="steps",
                 save_steps=2)
    tr.train()
    log = labo_log(tr)
    # logged after optimizer step s: the loss of step s was computed at global_step s - 1
    assert [(s, a) for s, a, _ in log] == [(1, 0.0), (2, 0.0), (3, 0.0), (4, 1.0), (5, 1.0)]
    assert all(0 < al < 1 for s, a, al in log if a)
    assert all("nll_loss" in r for r in tr.state.log_history if "loss" in r)
    # resumed from the step-2 checkpoint: the count goes on from 2, the switch is at the same step
    tr2 = trainer(tiny, tmp_path / "a", cfg, gradient_accumulation_steps=2, max_steps=5)
    tr2.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert [(s, a) for s, a, _ in labo_log(tr2) if s > 2] == [(3, 0.0), (4, 1.0), (5, 1.0)]


@pytest.mark.slow
def test_a_short_run_on_real_text_learns_and_is_scored_with_our_bleu(tiny, tmp_path):
    from labo_fairseq.scoring import bleu as B

    tr = trainer(tiny, tmp_path / "b", hf.LossConfig("labo", warmup_steps=20), max_steps=60,
                 predict_with_generate=True, generation_num_beams=5, generation_max_length=32,
                 per_device_eval_batch_size=16)
    before = tr.evaluate()["eval_loss"]
    tr.train()
    after = tr.evaluate()
    assert after["eval_loss"] < before and "eval_nll_loss" in after
    _, tokenizer, _ = tiny
    pred = tr.predict(Pairs(tokenizer, "val", 32), num_beams=5, max_length=32)
    ids = torch.where(torch.as_tensor(pred.predictions) < 0, tokenizer.pad_token_id, torch.as_tensor(pred.predictions))
    hyps = tokenizer.batch_decode(ids, skip_special_tokens=True)
    refs = multi30k("val", "en", 32)
    assert len(hyps) == 32 and any(h.strip() for h in hyps)
    score = B.sacrebleu_13a(hyps, refs)
    assert 0.0 <= score["bleu"] <= 100.0 and "tok:13a" in score["signature"]
    assert B.chrf(hyps, refs)["chrf"] > 0


@pytest.mark.slow
def test_hf_train_command_writes_a_result_the_tables_show(tiny, tmp_path):
    from labo_fairseq.study import tables
    from tests.helpers import cli

    d, _, _ = tiny
    files = {}
    for split, src_split, n in (("train", "train", 200), ("valid", "val", 40), ("test", "test_2016_flickr", 40)):
        for lang in ("de", "en"):
            files[split, lang] = tmp_path / f"{split}.{lang}"
            files[split, lang].write_text("\n".join(multi30k(src_split, lang, n)) + "\n", encoding="utf-8")
    args = ["hf-train", d, *[x for s in ("train", "valid", "test") for x in ("--" + s, files[s, "de"], files[s, "en"])],
            "--name", "m30k_tiny_hf", "--criterion", "labo", "--warmup-steps", "5", "--max-steps", "12",
            "--eval-steps", "6", "--batch-size", "8", "--lr", "3e-3", "--max-length", "32", "--cpu", "--root", tmp_path]
    proc = cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res_path = tmp_path / "results" / "m30k_tiny_hf" / "labo-tau1.15" / "seed1.json"
    res = json.loads(res_path.read_text())
    d_ = res["directions"]["de-en"]
    assert d_["convention"] == "sacrebleu" and "tok:13a" in d_["sacrebleu_signature"] and d_["chrf"] >= 0
    assert res["train"]["commit"] and res["train"]["hardware"] and res["checkpoint"]["updates"] == 12
    assert len((res_path.parent / "seed1.de-en.hyp").read_text(encoding="utf-8").splitlines()) == 40
    table = tables.build(tables.load_results(tmp_path / "results"), only="m30k_tiny_hf")
    assert "LABO τ=1.15" in table and f"{d_['bleu']:.2f} (n=1)" in table
    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 2 and "exists; --force" in again.stderr
    bad = cli(*args[:-2], "--rho", "1.3", cwd=tmp_path)
    assert bad.returncode == 2 and "rho must be in [0, 1], got 1.3" in bad.stderr
    files["test", "en"].unlink()
    gone = cli(*args[:-2], "--force", cwd=tmp_path)
    assert gone.returncode == 2 and f"no such file: {files['test', 'en']}" in gone.stderr
    assert json.loads(res_path.read_text()) == res  # nothing overwritten
