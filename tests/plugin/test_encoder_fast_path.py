"""labo_fairseq.plugin.fixes.encoder_fast_path_mask_type: official fairseq 0.12.2's fused encoder
path decodes left-padded batches, with the slow path's hypotheses and scores; other stacks untouched."""

import pytest

pytest.importorskip("fairseq", reason="fairseq is not installed (scripts/install.sh)")
import torch

from labo_fairseq import register

register()  # applies the fixes
from fairseq.modules.transformer_layer import TransformerEncoderLayerBase  # noqa: E402

from labo_fairseq.plugin import fixes as fairseq_fixes  # noqa: E402

HAS_FAST_PATH = fairseq_fixes._fast_path_omits_mask_type(TransformerEncoderLayerBase) or hasattr(
    TransformerEncoderLayerBase.forward, "_labo_mask_type")
needs_fast_path = pytest.mark.skipif(not HAS_FAST_PATH, reason="this fairseq has no fused encoder fast path "
                                     "(fairseq-fixed 0.12.3.1 removed it); the fix does not apply")


def test_fix_is_applied_exactly_where_the_defect_is():
    patched = getattr(TransformerEncoderLayerBase.forward, "_labo_mask_type", False)
    src = __import__("inspect").getsource(getattr(TransformerEncoderLayerBase.forward, "__wrapped__",
                                                  TransformerEncoderLayerBase.forward))
    defective = ("_transformer_encoder_layer_fwd" in src and "mask_type" not in src
                 and fairseq_fixes._op_takes_mask_type())
    assert patched == defective
    if not defective:  # e.g. fairseq-fixed: fairseq's own forward, not a wrapper
        assert not hasattr(TransformerEncoderLayerBase.forward, "__wrapped__")
    # applying again does not wrap twice
    before = TransformerEncoderLayerBase.forward
    fairseq_fixes.encoder_fast_path_mask_type()
    assert TransformerEncoderLayerBase.forward is before


def _load(ck):
    from fairseq import checkpoint_utils

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(ck)])
    model = models[0].eval()
    return model, cfg, task


def _set_fast_path(model, on):
    for layer in model.encoder.layers:
        layer.can_use_fastpath = on


def _test_batches(task, cfg, max_tokens=300):
    task.load_dataset("test", task_cfg=cfg.task)
    ds = task.dataset("test")
    assert ds.left_pad_source, "the defect is about left-padded sources, fairseq's default"
    itr = task.get_batch_iterator(ds, max_tokens=max_tokens, max_positions=(1024, 1024),
                                  seed=1).next_epoch_itr(shuffle=False)
    return list(itr)


@pytest.mark.slow
@needs_fast_path
def test_unfixed_fast_path_fails_on_left_padded_batch(tiny_checkpoint):
    """The defect itself, on this stack: fairseq's own forward refuses a padded batch."""
    model, cfg, task = _load(tiny_checkpoint)
    batch = next(b for b in _test_batches(task, cfg) if b["net_input"]["src_tokens"].eq(task.src_dict.pad()).any())
    layer = model.encoder.layers[0]
    assert layer.load_to_BT and not layer.ever_training
    fixed = TransformerEncoderLayerBase.forward
    try:
        TransformerEncoderLayerBase.forward = fixed.__wrapped__
        with torch.no_grad(), pytest.raises(RuntimeError, match="Mask Type should be defined"):
            model.encoder(batch["net_input"]["src_tokens"], batch["net_input"]["src_lengths"])
    finally:
        TransformerEncoderLayerBase.forward = fixed


@pytest.mark.slow
@needs_fast_path
def test_fast_path_decodes_like_the_slow_path(tiny_checkpoint, monkeypatch):
    """Beam 5 over the 50 left-padded test sentences: the fused path (fixed) and fairseq's
    layer-by-layer path give the same encoder states at real tokens, hypotheses and scores."""
    from fairseq.sequence_generator import SequenceGenerator

    model, cfg, task = _load(tiny_checkpoint)
    batches = _test_batches(task, cfg)
    pad = task.src_dict.pad()
    assert sum(b["net_input"]["src_tokens"].eq(pad).any() for b in batches) >= 2
    calls = []
    fused = torch._transformer_encoder_layer_fwd
    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", lambda *a: calls.append(a[18] is not None) or fused(*a))
    gen = SequenceGenerator([model], task.target_dictionary, beam_size=5, max_len_b=20)

    def decode(fast):
        _set_fast_path(model, fast)
        enc, hyps = [], {}
        with torch.no_grad():
            for b in batches:
                out = model.encoder(b["net_input"]["src_tokens"], b["net_input"]["src_lengths"])
                keep = ~out["encoder_padding_mask"][0].t()  # T x B, True at real tokens
                enc.append(out["encoder_out"][0][keep])
                for sid, h in zip(b["id"].tolist(), gen.generate([model], b)):
                    hyps[sid] = [(x["tokens"].tolist(), float(x["score"])) for x in h]
        return torch.cat(enc), hyps

    calls.clear()
    enc_fast, fast = decode(True)
    assert any(calls), "the fused path with a padding mask was never taken"
    calls.clear()
    enc_slow, slow = decode(False)
    assert not calls
    assert len(fast) == len(slow) == 50
    torch.testing.assert_close(enc_fast, enc_slow, rtol=1e-4, atol=1e-5)
    for sid in slow:
        assert [t for t, _ in fast[sid]] == [t for t, _ in slow[sid]], sid
        assert [s for _, s in fast[sid]] == pytest.approx([s for _, s in slow[sid]], abs=1e-4), sid
