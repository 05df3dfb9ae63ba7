"""labo-fairseq: learned label regularization (LABO) and baselines as a fairseq ``--user-dir`` plugin.

Importing the package (what ``--user-dir labo_fairseq`` does) registers the criteria
``label_smoothed_labo``, ``confidence_penalty``, ``focal_loss`` and ``anti_focal_loss`` and lets
fairseq load its checkpoints on torch >= 2.6 (:mod:`labo_fairseq.checkpoints`), and repairs the
fairseq-fixed fork's dropped final batch (:mod:`labo_fairseq.fairseq_fixes`). The pure loss
functions in :mod:`labo_fairseq.losses` need torch only.
"""

__version__ = "0.1.0"

import importlib.util

if importlib.util.find_spec("fairseq") is not None:  # without fairseq, losses stay usable
    from labo_fairseq import criteria  # noqa: F401  (registers the criteria)
    from labo_fairseq import distillation  # noqa: F401  (registers word_distillation)
    from labo_fairseq.checkpoints import allow_fairseq_checkpoints
    from labo_fairseq.fairseq_fixes import keep_final_batch

    allow_fairseq_checkpoints()
    keep_final_batch()
