"""Let fairseq load its own checkpoints on torch >= 2.6 without switching ``weights_only`` off.

torch >= 2.6 unpickles with ``weights_only=True`` by default, and fairseq 0.12 checkpoints hold
more than tensors: the omegaconf training config (and its node/metadata classes), an
``argparse.Namespace`` (the model config), numpy scalars/arrays (e.g. ``--eval-bleu``'s best-BLEU
state) and, when rank 0 broadcasts a loaded checkpoint on distributed resume, fairseq's tensor
placeholder. :func:`allow_fairseq_checkpoints` adds exactly those classes to torch's
allow-list of safe globals; everything else is still refused. It runs when ``labo_fairseq`` is
imported, so ``--user-dir labo_fairseq`` is enough for fairseq-train resume, fairseq-generate and
fairseq-interactive.

Full unpickling (arbitrary code on load) is left to torch's own opt-in, for files you trust:
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``.
"""

import argparse
import collections
import importlib
import typing

import torch


def _numpy_globals():
    import numpy as np

    found = [np.ndarray, np.dtype]
    # numpy 1 pickles through numpy.core.multiarray, numpy 2 through numpy._core.multiarray.
    for mod_name in ("numpy.core.multiarray", "numpy._core.multiarray"):
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        found += [getattr(mod, "_reconstruct"), getattr(mod, "scalar")]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles dtypes by class
    if dtypes is not None:
        found += [c for c in vars(dtypes).values() if isinstance(c, type) and issubclass(c, np.dtype)]
    return found


def _omegaconf_globals():
    from omegaconf import base, dictconfig, listconfig, nodes

    found = [dictconfig.DictConfig, listconfig.ListConfig, base.ContainerMetadata, base.Metadata]
    found += [c for c in vars(nodes).values() if isinstance(c, type) and issubclass(c, nodes.Node)]
    return found


def _fairseq_globals():
    # Distributed resume: rank 0 loads the checkpoint and broadcasts it to the other ranks through
    # torch.save/torch.load, with tensors replaced by this placeholder.
    try:
        from fairseq.distributed.utils import _TensorPlaceholder
    except ImportError:  # a fairseq without it does not broadcast placeholders
        return []
    return [_TensorPlaceholder]


def fairseq_checkpoint_globals():
    """The classes and functions a fairseq 0.12 checkpoint (or a broadcast of one) pickles besides
    tensors and builtin containers."""
    found = [argparse.Namespace, collections.defaultdict, collections.OrderedDict]
    # torch's allow-list keys a global by __module__ and __name__; typing.Any has no __name__
    # before Python 3.10, and listing it there (torch 2.4, Python 3.8) breaks every weights_only load.
    if hasattr(typing.Any, "__name__"):
        found.append(typing.Any)
    # omegaconf metadata names value/key types as globals (object_type=dict, key_type=Any, ...).
    found += [dict, list, tuple, int, float, str, bool, bytes]
    return found + _omegaconf_globals() + _numpy_globals() + _fairseq_globals()


def allow_fairseq_checkpoints() -> bool:
    """Register :func:`fairseq_checkpoint_globals` as safe; False on torch without the allow-list
    (torch < 2.4, which loads without ``weights_only`` by default anyway)."""
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is None:
        return False
    add(fairseq_checkpoint_globals())
    return True
