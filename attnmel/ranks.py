"""Which process of a (possibly distributed) job this is: the one reader of the launchers' rank variables.

Layer 1 (no attnmel imports): the run lock (:func:`attnmel.train.rundir.lock_run`) and the sweep
(:mod:`attnmel.sweep.one`) ask it, so that only the first process of a DDP job writes.
"""

from __future__ import annotations

import os


def process_rank() -> int:
    """This process's global rank: 0 for a single process and for the first process of a DDP job.

    Reads ``RANK`` (torchrun, and Lightning once DDP is set up), ``SLURM_PROCID`` (srun), else Lightning's own
    launcher's ``NODE_RANK`` / ``LOCAL_RANK`` (its extra processes get these before ``RANK`` exists).
    """
    env = os.environ
    for var in ("RANK", "SLURM_PROCID"):
        if env.get(var, "").isdigit():
            return int(env[var])
    local = int(env["LOCAL_RANK"]) if env.get("LOCAL_RANK", "").isdigit() else 0
    node_var = env.get("NODE_RANK", env.get("GROUP_RANK", ""))
    node = int(node_var) if node_var.isdigit() else 0
    per_node = int(env["LOCAL_WORLD_SIZE"]) if env.get("LOCAL_WORLD_SIZE", "").isdigit() else 1024
    return node * per_node + local


def is_rank_zero() -> bool:
    """False inside the extra processes of a DDP job."""
    return process_rank() == 0
