"""labo_fairseq.losses.workspace: the fused loss's CPU buffers, kept between calls and bounded."""

from labo_fairseq.losses import workspace
from tests.losses.test_linear import PAD, fused, make, same


def test_the_cpu_workspace_is_reused_and_bounded(monkeypatch):
    # the chunk buffers are views of one allocation kept between calls (up to WORKSPACE_BYTES);
    # nothing returned aliases it, so a second call leaves the first call's results as they were
    hidden, weight, bias, target = make(n=64, v=500)
    workspace.WORKSPACE.storage = None
    first = fused(hidden, weight, bias, target, "labo", PAD, 16)
    kept = workspace.WORKSPACE.storage
    assert kept is not None and kept.numel() >= 2 * 16 * 500 * 4
    saved = [first[0].clone(), first[1].clone(), [g.clone() for g in first[2]]]
    fused(hidden * 2, weight, bias, target, "labo", PAD, 16)
    assert workspace.WORKSPACE.storage is kept
    assert same(first, saved)
    monkeypatch.setattr(workspace, "WORKSPACE_BYTES", 1000)
    workspace.WORKSPACE.storage = None
    again = fused(hidden, weight, bias, target, "labo", PAD, 16)
    assert workspace.WORKSPACE.storage is None  # too large to keep: allocated for the call only
    assert same(again, saved)
