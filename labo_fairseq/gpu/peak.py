"""fairseq-train in this process under a hook that records the training steps' peak memory: what
``labo-fairseq gpu-check`` runs for each training run (its internal ``--_fairseq-train-with-peak``)."""

import atexit
import sys
from pathlib import Path
from typing import List

from labo_fairseq.runtime.files import write_json


def train_with_peak(peak_json: str, args: List[str]) -> None:
    """fairseq-train in this process, recording peak memory of the training steps into ``peak_json``.

    fairseq's trainer reads ``torch.cuda.max_memory_allocated()`` and calls
    ``reset_peak_memory_stats()`` after every update (it logs ``gb_free`` from it, rounded to 0.1 GB);
    wrapping that reset records each update's exact allocator peak before it is cleared.
    """
    import resource

    import torch

    peaks: List[int] = []
    if torch.cuda.is_available():
        reset = torch.cuda.reset_peak_memory_stats

        def recording_reset(device=None):
            peaks.append(torch.cuda.max_memory_allocated(device))
            reset(device)

        torch.cuda.reset_peak_memory_stats = recording_reset

    def dump():
        out = {"cuda_peak_bytes": max(peaks) if peaks else None, "steps_recorded": len(peaks),
               "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        write_json(Path(peak_json), out, indent=None)

    atexit.register(dump)
    from fairseq_cli.train import cli_main

    from labo_fairseq.plugin import register

    register()  # this package was imported before fairseq, so --user-dir would not register it

    sys.argv = ["fairseq-train", *args]
    cli_main()
