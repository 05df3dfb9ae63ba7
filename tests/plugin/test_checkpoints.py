"""labo_fairseq.plugin.checkpoints: fairseq checkpoint contents load with weights_only; nothing else does."""

import argparse
import os
import pickle
import typing

import numpy as np
import pytest
import torch

pytest.importorskip("omegaconf")
from omegaconf import OmegaConf

from labo_fairseq.plugin.checkpoints import allow_fairseq_checkpoints

needs_allowlist = pytest.mark.skipif(
    not hasattr(torch.serialization, "add_safe_globals"), reason="torch < 2.4 has no weights_only allow-list"
)
# omegaconf's metadata pickles typing.Any, which torch's allow-list cannot name before Python 3.10
# (no __name__); there torch < 2.6 loads checkpoints without weights_only by default.
needs_typing_any = pytest.mark.skipif(
    not hasattr(typing.Any, "__name__"), reason="typing.Any has no __name__ before Python 3.10: torch cannot allow-list it"
)


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def fairseq_like_state():
    """What fairseq 0.12 writes: omegaconf cfg, Namespace args, numpy state from --eval-bleu."""
    cfg = OmegaConf.create({"model": {"arch": "transformer", "dropout": 0.3, "any": None},
                            "optimization": {"lr": [5e-4], "update_freq": [1]}})
    return {
        "args": argparse.Namespace(arch="transformer", lr=[5e-4]),
        "cfg": cfg,
        "model": {"w": torch.ones(2, 2)},
        "extra_state": {"best": np.float64(31.2), "counts": np.arange(4), "bleu_sys_len": np.int64(3)},
        "optimizer_history": [{"num_updates": 10, "criterion_name": "LaboCriterion"}],
    }


@needs_allowlist
@needs_typing_any
def test_fairseq_checkpoint_loads_with_weights_only(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save(fairseq_like_state(), path)
    allow_fairseq_checkpoints()
    state = torch.load(path, weights_only=True)
    assert state["cfg"].model.arch == "transformer"
    assert state["args"].lr == [5e-4]
    assert state["extra_state"]["best"] == pytest.approx(31.2)
    assert state["optimizer_history"][0]["num_updates"] == 10


@needs_allowlist
def test_allowlist_keeps_plain_weights_only_loads_working(tmp_path):
    """Every allow-listed global must be nameable by torch: one that is not (typing.Any on
    Python 3.8) made every weights_only load that looks up the allow-list fail (AttributeError)."""
    path = tmp_path / "plain.pt"
    torch.save({"w": torch.arange(3.0), "args": argparse.Namespace(lr=[5e-4])}, path)
    allow_fairseq_checkpoints()
    state = torch.load(path, weights_only=True)
    assert state["w"].tolist() == [0.0, 1.0, 2.0] and state["args"].lr == [5e-4]


@needs_allowlist
def test_allowlist_still_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "x": Exploit()}, path)
    allow_fairseq_checkpoints()
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


@needs_allowlist
@needs_typing_any
def test_distributed_broadcast_of_a_real_fairseq_state_loads(tmp_path):
    """What rank 0 sends on distributed resume: fairseq's real training config (omegaconf, with
    builtin types in its metadata) with tensors split out into fairseq's placeholders."""
    pytest.importorskip("fairseq")
    import io

    from labo_fairseq import register

    register()  # checkpoint allow-list (and criteria)
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.distributed.utils import _split_tensors_from_obj

    (tmp_path / "dict.de.txt").write_text("a 1\n")
    (tmp_path / "dict.en.txt").write_text("a 1\n")
    args = options.parse_args_and_arch(
        options.get_training_parser(),
        [str(tmp_path), "--user-dir", "labo_fairseq", "--task", "translation", "-s", "de", "-t", "en",
         "--arch", "transformer", "--criterion", "label_smoothed_labo", "--cpu"],
    )
    state = fairseq_like_state()
    state["cfg"] = convert_namespace_to_omegaconf(args)
    tensors = []
    obj = _split_tensors_from_obj(state, tensors)
    assert tensors, "the model tensor should have been split out"
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert loaded["cfg"].criterion.labo_tau == 1.15


def test_the_study_reads_a_checkpoints_state_on_every_stack(tmp_path):
    """``checkpoint_state`` (what evaluate records and train resumes from) on this torch: with
    weights_only where torch loads so by default (>= 2.6), in full below it, as fairseq does there."""
    from labo_fairseq.study.fairseq_tools import checkpoint_state

    state = fairseq_like_state()
    state["extra_state"]["train_iterator"] = {"epoch": 4, "iterations_in_epoch": 0}
    path = tmp_path / "checkpoint_last.pt"
    torch.save(state, path)
    assert checkpoint_state(path)["updates"] == 10 and checkpoint_state(path)["epoch"] == 3
