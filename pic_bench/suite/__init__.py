"""The suite: ablation files to tasks, validation, local and SLURM runs, status, plans, the preflight.

``run`` (the CLI and its validation), ``tasks`` (one cell x seed with its row, curve, checkpoint and faults),
``launch`` (SLURM arrays through submitit), ``status``, ``plan`` (the dry run's per-task plan), ``preflight``
(the cluster check), ``analysis`` (ablations that measure without training), ``loss_rise`` and
``curve_ends`` (readings of how a loss curve ends).

May import: everything below it (``config``, ``data``, ``pic``, ``eval``, ``report``, ``bench``).
"""
