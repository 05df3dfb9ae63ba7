"""The fairseq plugin: the registered criteria, the checkpoint allow-list, fairseq's repairs,
all applied by :func:`register` (which the package runs under ``--user-dir``). Importing this
package loads neither torch nor fairseq; :func:`register` does."""

import logging

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
