"""Sweeps: every cell (dataset x method x τ x seed) of a table as one job that trains, then evaluates.

  labo-fairseq sweep --table 1 --launcher slurm --partition gpu --gpus-per-job 1 --time 12:00:00
  labo-fairseq sweep --datasets iwslt14_de_en --methods ls labo --tau 1.15 1.25 --seeds 1 2 3 --launcher local
  labo-fairseq sweep status --table 1

A job runs the project's own commands, with the roots given here (made absolute against the working
directory): ``python -m labo_fairseq train DATASET METHOD SEED ...`` then ``python -m labo_fairseq
evaluate ...``. A cell whose result JSON exists is skipped; a cell with a run directory but no result
resumes from its checkpoint_last.pt (``train`` resumes an existing run); a cell whose job is still
queued or running is not submitted again.

- ``--launcher slurm``: one SLURM job per cell, submitted as job arrays through submitit. A job that
  reaches its time limit or is preempted is requeued by submitit's checkpointing (and one requeued
  with ``scontrol requeue`` simply starts again): either way ``train`` continues from checkpoint_last.pt,
  and LABO's warm-up count with it.
- ``--launcher local``: the cells one after the other on this machine, in the foreground; stop it
  any time and run the same command again to continue.

The sweep's bookkeeping (submitted jobs, submitit's scripts and logs) is in RUNS_ROOT/.sweep/.
"""

from labo_fairseq.study.sweep.command import main, sweep_main  # noqa: F401
from labo_fairseq.study.sweep.launchers import (  # noqa: F401
    _minutes,
    job_state,
    last_error,
    load_jobs,
    run_local,
    save_jobs,
    sbatch_script,
    slurm_parameters,
    squeue,
    submit_slurm,
)
from labo_fairseq.study.sweep.selection import (  # noqa: F401
    SWEEP_DIR,
    Cell,
    CellJob,
    SweepError,
    cell_result,
    cell_run_dir,
    commands,
    default_tau,
    select,
    sweep_dir,
    table_spec,
)
from labo_fairseq.study.sweep.status import _hours, gpu_hours_report, status_main, status_rows  # noqa: F401
