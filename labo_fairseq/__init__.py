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

import sys

from labo_fairseq.plugin import register

__version__ = "0.2.0"
__all__ = ["__version__", "register"]

if "fairseq" in sys.modules:  # --user-dir: fairseq imports the plugin
    register()
