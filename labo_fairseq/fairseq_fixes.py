"""Fixes for known defects of the fairseq forks this project runs on, applied when the plugin loads.

``keep_final_batch``: fairseq-fixed 0.12.3.1 adds to ``fairseq.data.data_utils.batch_by_size``::

    if bsz_mult > 1 and len(b[-1]) % bsz_mult != 0:
        b = b[:-1]

which silently drops the last batch whenever it is not a multiple of
``--required-batch-size-multiple`` (default 8): fairseq-generate translated 48 of 50 test
sentences, validation scores a subset, and each training epoch loses its tail. Official fairseq
0.12.2 keeps that batch. The wrapper appends the dropped indices back as the final batch (batches
are contiguous splits of ``indices``, so the missing ones are exactly the tail); on a fairseq
without the defect nothing is missing and nothing changes.
"""

import functools

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


def apply_fixes() -> None:
    """Every repair of this module; each does nothing on a fairseq without its defect."""
    keep_final_batch()
