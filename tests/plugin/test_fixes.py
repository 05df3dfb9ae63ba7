"""labo_fairseq.plugin.fixes: batching keeps every sentence whatever --required-batch-size-multiple, and a resumed
process batches as the one it continues; --patience counts across a resume as in an uninterrupted run."""

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


@pytest.fixture
def fresh_stop_rule(monkeypatch):
    """fairseq's should_stop_early wrapped anew by the fix (no count from other tests), and its cfg."""
    from types import SimpleNamespace

    import fairseq_cli.train as fairseq_train

    from labo_fairseq.plugin import fixes

    original = getattr(fairseq_train.should_stop_early, "__wrapped__", fairseq_train.should_stop_early)
    monkeypatch.setattr(fairseq_train, "should_stop_early", original)
    fixes.patience_across_resumes()
    cfg = SimpleNamespace(checkpoint=SimpleNamespace(patience=4, maximize_best_checkpoint_metric=True))
    return lambda values: [fairseq_train.should_stop_early(cfg, v) for v in values]


def test_a_resumed_patience_counts_on_from_the_checkpoints_best(fresh_stop_rule, monkeypatch):
    from fairseq import checkpoint_utils

    from labo_fairseq.plugin.fixes import SINCE_BEST_ENV

    monkeypatch.setattr(checkpoint_utils.save_checkpoint, "best", 20.0, raising=False)
    monkeypatch.setenv(SINCE_BEST_ENV, "2")
    # 2 validations since the best (20) before the resume, 2 more below it: patience 4 is spent. fairseq
    # alone would take 19 as its best and 19.5 as an improvement, and go on.
    assert fresh_stop_rule([19, 19.5]) == [False, True]


def test_a_new_best_after_a_resume_restarts_the_full_count(fresh_stop_rule, monkeypatch):
    from fairseq import checkpoint_utils

    from labo_fairseq.plugin.fixes import SINCE_BEST_ENV

    monkeypatch.setattr(checkpoint_utils.save_checkpoint, "best", 20.0, raising=False)
    monkeypatch.setenv(SINCE_BEST_ENV, "3")
    assert fresh_stop_rule([21, 20, 20, 20, 20]) == [False, False, False, False, True]


def test_a_fresh_run_counts_as_fairseq_does(fresh_stop_rule, monkeypatch):
    from fairseq import checkpoint_utils

    monkeypatch.delattr(checkpoint_utils.save_checkpoint, "best", raising=False)
    assert fresh_stop_rule([10, 9, 9, 9, 9]) == [False, False, False, False, True]


def _pairs(n=60):
    """A shuffled language-pair dataset with many equal lengths, so that the seeded tie-break matters."""
    import torch
    from fairseq.data import Dictionary, LanguagePairDataset

    d = Dictionary()
    lens = np.random.RandomState(0).randint(2, 6, size=n)
    text = [torch.full((int(k),), d.unk(), dtype=torch.long) for k in lens]
    return LanguagePairDataset(text, lens, d, text, lens, d, shuffle=True)


def _batches(get_batch_iterator, epoch, seed=1, **kw):
    from types import SimpleNamespace

    from fairseq.tasks.fairseq_task import FairseqTask

    task = FairseqTask(SimpleNamespace())
    itr = get_batch_iterator(task, _pairs(), max_tokens=12, seed=seed, epoch=epoch, **kw)
    return [b.tolist() for b in itr.frozen_batches], itr.epoch


def test_a_process_started_at_a_later_epoch_batches_as_one_started_at_epoch_1():
    from fairseq.tasks.fairseq_task import FairseqTask

    fixed, original = FairseqTask.get_batch_iterator, FairseqTask.get_batch_iterator.__wrapped__
    first, _ = _batches(fixed, 1)
    assert _batches(fixed, 1, seed=8)[0] != first  # the batches depend on the seeded tie-break
    assert _batches(fixed, 7) == (first, 7)  # the batches of epoch 1, the iterator at epoch 7
    # batches rebuilt at each epoch's own seed (no iterator cache) are fairseq's own
    assert _batches(fixed, 7, disable_iterator_cache=True) == _batches(original, 7, disable_iterator_cache=True)
