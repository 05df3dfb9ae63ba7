"""labo_fairseq.plugin.fixes: batching keeps every sentence whatever --required-batch-size-multiple."""

import numpy as np
import pytest

pytest.importorskip("fairseq", reason="fairseq is not installed (scripts/install.sh)")
from labo_fairseq import register

register()  # criteria, fixes, checkpoint allow-list

pytestmark = pytest.mark.slow  # builds fairseq tasks and models
from fairseq.data import data_utils  # noqa: E402


@pytest.mark.parametrize("n,mult,max_tokens", [(50, 8, 2000), (50, 8, 160), (13, 8, 1000), (16, 8, 1000), (7, 1, 20)])
def test_batch_by_size_covers_every_index_once_in_order(n, mult, max_tokens):
    indices = np.arange(n, dtype=np.int64)[::-1].copy()
    sizes = np.full(n, 20, dtype=np.int64)
    batches = data_utils.batch_by_size(indices, None, num_tokens_vec=sizes, max_tokens=max_tokens,
                                       required_batch_size_multiple=mult)
    assert np.concatenate(batches).tolist() == indices.tolist()
    assert all(len(b) * 20 <= max_tokens for b in batches)
    # every batch but the last keeps the multiple
    assert all(len(b) % mult == 0 for b in batches[:-1])


def test_batch_by_size_with_tokens_fn_and_list_indices():
    batches = data_utils.batch_by_size(list(range(10)), lambda i: 5, max_tokens=1000, required_batch_size_multiple=8)
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
