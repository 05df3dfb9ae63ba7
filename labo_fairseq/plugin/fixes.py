"""Fixes for known defects of the fairseq releases this project runs on, applied when the plugin loads.

``keep_final_batch``: fairseq-fixed 0.12.3.1 adds to ``fairseq.data.data_utils.batch_by_size``::

    if bsz_mult > 1 and len(b[-1]) % bsz_mult != 0:
        b = b[:-1]

which silently drops the last batch whenever it is not a multiple of
``--required-batch-size-multiple`` (default 8): fairseq-generate translated 48 of 50 test
sentences, validation scores a subset, and each training epoch loses its tail. Official fairseq
0.12.2 keeps that batch. The wrapper appends the dropped indices back as the final batch (batches
are contiguous splits of ``indices``, so the missing ones are exactly the tail); on a fairseq
without the defect nothing is missing and nothing changes.

``encoder_fast_path_mask_type``: official fairseq 0.12.2 on torch >= 1.13 cannot decode a
left-padded batch ("Mask Type should be defined"); see that function and docs/fairseq-compat.md.

``patience_across_resumes``: fairseq's ``--patience`` restarts its count in a resumed process and
takes the process's first validation as the best; see that function.

``batches_as_uninterrupted``: a resumed process groups the training sentences into other batches
than the process it continues; see that function.
"""

import functools
import inspect
import os

import numpy as np


def keep_final_batch() -> None:
    from fairseq.data import data_utils

    inner = data_utils.batch_by_size
    if getattr(inner, "_labo_keeps_final_batch", False):
        return

    @functools.wraps(inner)
    def batch_by_size(indices, num_tokens_fn, num_tokens_vec=None, max_tokens=None,
                      max_sentences=None, required_batch_size_multiple=1, fixed_shapes=None):
        if not isinstance(indices, np.ndarray):
            indices = np.fromiter(indices, dtype=np.int64, count=-1)
        batches = inner(indices, num_tokens_fn, num_tokens_vec, max_tokens, max_sentences,
                        required_batch_size_multiple, fixed_shapes)
        if fixed_shapes is None:
            covered = sum(len(b) for b in batches)
            if covered < len(indices):
                batches = list(batches) + [indices[covered:]]
        return batches

    batch_by_size._labo_keeps_final_batch = True
    data_utils.batch_by_size = batch_by_size


# torch's ``_transformer_encoder_layer_fwd`` mask types (``MultiheadAttention.merge_masks``):
# 0 = attention mask (T, T), 1 = key-padding mask (B, T), 2 = merged (B, H, T, T).
_KEY_PADDING_MASK = 1


def _op_takes_mask_type() -> bool:
    import torch

    try:
        schemas = torch._C._jit_get_schemas_for_operator("aten::_transformer_encoder_layer_fwd")
    except (AttributeError, RuntimeError):
        return False
    return any(a.name == "mask_type" for s in schemas for a in s.arguments)


def _fast_path_omits_mask_type(layer_cls) -> bool:
    import inspect

    try:
        src = inspect.getsource(layer_cls.forward)
    except (OSError, TypeError):
        return False
    return "_transformer_encoder_layer_fwd" in src and "mask_type" not in src


def _dense_fast_path(layer, x, encoder_padding_mask) -> bool:
    """Whether fairseq 0.12.2's encoder layer takes torch's fused path with a dense input and a
    (B, T) padding mask: the call that needs ``mask_type``."""
    return (
        encoder_padding_mask is not None
        and encoder_padding_mask.dim() == 2
        and not x.is_nested
        # fairseq 0.12.2's own fast-path condition
        and layer.BT_version
        and x.dim() == 3
        and layer.load_to_BT
        and not layer.return_fc
        and layer.can_use_fastpath
        and not layer.training
        and not layer.ever_training
        and not layer.cfg_checkpoint_activations
    )


def encoder_fast_path_mask_type() -> None:
    """Official fairseq 0.12.2 on torch >= 1.13: ``fairseq-generate`` fails with
    ``RuntimeError: Mask Type should be defined``.

    The defect: a ``TransformerEncoderLayerBase`` loaded from a checkpoint and never trained in the
    process (``load_to_BT``, not ``ever_training``: generate, interactive, ``--eval-bleu`` before any
    update) runs torch's fused encoder layer ``torch._transformer_encoder_layer_fwd(..., mask)``.
    The encoder turns a padded batch into a nested tensor (and passes ``mask=None``) only when the
    padding is on the right; translation pads sources on the left (``--left-pad-source True``), so
    the layer gets the dense (B, T, C) batch and the (B, T) padding mask. Since torch 1.13 that op
    takes ``mask_type`` as well, and its masked softmax refuses a mask without one. Batches with no
    padding (a batch of one, equal lengths) pass ``mask=None`` and work, so the failure depends on
    the data.

    The repair: in exactly that case (fast path taken, dense input, a mask given) the wrapper makes
    the same call with ``mask_type=1``, torch's code for a (B, T) key-padding mask (True = pad), as
    ``torch.nn.TransformerEncoderLayer`` passes for ``src_key_padding_mask``. Every other call goes
    to fairseq's own ``forward``. Applied only where fairseq's fast path omits ``mask_type`` and
    torch's op takes one; fairseq-fixed 0.12.3.1 has no fast path and is left alone.
    """
    try:
        from fairseq.modules.transformer_layer import TransformerEncoderLayerBase
    except ImportError:
        return
    inner = TransformerEncoderLayerBase.forward
    if getattr(inner, "_labo_mask_type", False):
        return
    if not (_fast_path_omits_mask_type(TransformerEncoderLayerBase) and _op_takes_mask_type()):
        return

    import torch

    @functools.wraps(inner)
    def forward(self, x, encoder_padding_mask, attn_mask=None):
        if _dense_fast_path(self, x, encoder_padding_mask):
            return torch._transformer_encoder_layer_fwd(
                x, self.embed_dim, self.num_heads,
                self.in_proj_weight, self.in_proj_bias, self.out_proj_weight, self.out_proj_bias,
                self.activation_relu_or_gelu == 2,
                False,  # norm_first: the fast path is only taken without normalize_before
                self.self_attn_layer_norm.eps,
                self.self_attn_layer_norm.weight, self.self_attn_layer_norm.bias,
                self.final_layer_norm.weight, self.final_layer_norm.bias,
                self.fc1_weight, self.fc1_bias, self.fc2_weight, self.fc2_bias,
                encoder_padding_mask, _KEY_PADDING_MASK,
            )
        return inner(self, x, encoder_padding_mask, attn_mask)

    forward._labo_mask_type = True
    TransformerEncoderLayerBase.forward = forward


# validations since the best that labo-fairseq train read off the run's log when it resumes it
SINCE_BEST_ENV = "LABO_VALIDATIONS_SINCE_BEST"


def patience_across_resumes() -> None:
    """``--patience`` as in an uninterrupted run. fairseq keeps its count on ``should_stop_early``
    (``best``, ``num_runs``), in the process only: a resumed fairseq-train takes its first validation
    as the best, whatever the checkpoint's best was, and counts from zero, so it can stop before or
    long after an uninterrupted run would. The wrapper seeds the count before the process's first
    check with the best the checkpoint restored (``save_checkpoint.best``, the same metric) and the
    validations since it from ``LABO_VALIDATIONS_SINCE_BEST`` (set by ``labo-fairseq train``; 0 when
    unset, so a plain resumed fairseq-train counts against the true best)."""
    try:
        import fairseq_cli.train as fairseq_train
    except ImportError:
        return
    original = fairseq_train.should_stop_early
    if getattr(original, "_labo_seeded", False):
        return

    @functools.wraps(original)
    def should_stop_early(cfg, valid_loss):
        # fairseq's function keeps its state on the module's name, which is now this wrapper
        if valid_loss is not None and not hasattr(should_stop_early, "best"):
            from fairseq import checkpoint_utils

            best = getattr(checkpoint_utils.save_checkpoint, "best", None)
            if best is not None:  # None: a fresh run, nothing to carry over
                should_stop_early.best = best
                should_stop_early.num_runs = int(os.environ.get(SINCE_BEST_ENV) or 0)
        return original(cfg, valid_loss)

    should_stop_early._labo_seeded = True
    fairseq_train.should_stop_early = should_stop_early


def batches_as_uninterrupted() -> None:
    """Training batches that do not depend on where a process started. fairseq 0.12 builds a split's
    batches once per process, ordering the sentences by length with ties broken by a permutation
    seeded with ``seed + epoch`` of the epoch the process starts at, and reuses them every epoch
    (shuffling their order by ``seed + epoch``): a run resumed at epoch k groups its sentences into
    other batches than the uninterrupted run (seeded by epoch 1) from then on, so their losses part at
    the first resumed update. Where fairseq would freeze the batches, the wrapper builds them as at
    epoch 1 and hands back the iterator at the epoch asked for; batches rebuilt every epoch (sharded
    data, ``--rebuild-batches``) are left alone, as they do not depend on the start."""
    from fairseq.tasks.fairseq_task import FairseqTask

    inner = FairseqTask.get_batch_iterator
    if getattr(inner, "_labo_as_uninterrupted", False):
        return
    signature = inspect.signature(inner)

    @functools.wraps(inner)
    def get_batch_iterator(self, *args, **kwargs):
        a = signature.bind(self, *args, **kwargs)
        a.apply_defaults()
        kw, dataset, epoch = a.arguments, a.arguments["dataset"], a.arguments["epoch"]
        frozen = (not kw["disable_iterator_cache"] and not kw.get("update_epoch_batch_itr", False)
                  and self.can_reuse_epoch_itr(dataset) and dataset not in self.dataset_to_epoch_iter
                  and not getattr(getattr(self, "cfg", None), "rebuild_batches", False))
        if not frozen or epoch <= 1:
            return inner(**kw)
        itr = inner(**{**kw, "epoch": 1})
        dataset.set_epoch(epoch)  # as fairseq's own call at this epoch leaves it
        itr.epoch = epoch
        return itr

    get_batch_iterator._labo_as_uninterrupted = True
    FairseqTask.get_batch_iterator = get_batch_iterator


def apply_fixes() -> None:
    """Every repair of this module; each does nothing on a fairseq without its defect."""
    keep_final_batch()
    encoder_fast_path_mask_type()
    patience_across_resumes()
    batches_as_uninterrupted()
