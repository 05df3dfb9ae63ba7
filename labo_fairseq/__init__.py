"""labo-fairseq: learned label regularization (LABO) and baselines as a fairseq ``--user-dir`` plugin.

Under ``--user-dir labo_fairseq`` (and whenever fairseq is imported before this package),
importing it runs :func:`register`: the criteria ``label_smoothed_labo``, ``confidence_penalty``,
``focal_loss``, ``anti_focal_loss`` and ``word_distillation`` are registered, fairseq checkpoints load on torch >= 2.6
(:mod:`labo_fairseq.plugin.checkpoints`) and known fairseq defects are repaired
(:mod:`labo_fairseq.plugin.fixes`). Code that imports this package first calls :func:`register`
itself. Without fairseq loaded, importing it loads neither torch nor fairseq, so the
``labo-fairseq`` command's tables and ``--dry-run`` start fast on a machine without them; the pure
losses in :mod:`labo_fairseq.losses` need torch only.
"""

import logging
import sys

__version__ = "0.2.0"
_registered = False


def register() -> None:
    """Register the criteria, the checkpoint allow-list and the fairseq fixes (once).

    fairseq's import configures the root logger (some of its modules call ``logging.basicConfig``,
    one at DEBUG level); it is put back as it was, so a user's own logging stays theirs.
    """
    global _registered
    if _registered:
        return
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        from labo_fairseq.plugin import criteria, word_distillation  # noqa: F401  (registering on import)
        from labo_fairseq.plugin.checkpoints import allow_fairseq_checkpoints
        from labo_fairseq.plugin.fixes import apply_fixes

        allow_fairseq_checkpoints()
        apply_fixes()
        _registered = True
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


if "fairseq" in sys.modules:  # --user-dir: fairseq imports the plugin
    register()
