"""Spawning test ranks so that a hang fails the test in bounded time instead of stalling the whole run.

A rank that never returns (a gloo rendezvous or collective that waits forever; seen once in CI, two spawned ranks
in futex waits for over ten minutes) used to outlive ``Process.join(timeout=...)``: the test then failed its
exit-code assert, but pytest's interpreter exit joins every non-daemon child and so waited on the hung ranks
forever. :func:`run_ranks` kills what is still alive at one overall deadline and fails naming the ranks;
:func:`init_gloo` gives each rank's process group a timeout, so a stuck collective raises in the rank (with its
traceback) well before that deadline.
"""
from __future__ import annotations

import os
import socket
from datetime import timedelta

import pytest

from pic_bench.pic.distributed import join_all

GLOO_TIMEOUT_S = 120  # one collective or the rendezvous; the tests' collectives take well under a second


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_gloo(rank: int, world: int, port: int, timeout_s: float = GLOO_TIMEOUT_S) -> None:
    """In a rank: join the gloo group on 127.0.0.1:port; a rendezvous or collective that waits longer raises."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))


def run_ranks(target, world: int, *args, timeout: float = 300) -> None:
    """Start ``target(rank, world, *args)`` in ``world`` spawned processes; :func:`run_procs` says the rest."""
    run_procs(target, [(r, world, *args) for r in range(world)], timeout=timeout)


def run_procs(target, arglists, timeout: float = 300, method: str = "spawn") -> None:
    """Start ``target(*a)`` in one process per ``a`` in ``arglists`` and wait at most ``timeout`` seconds in all.

    Processes still running then are killed and reaped before the test fails, naming them; one that exited non-zero
    fails the test with every exit code. Nothing is left running either way.
    """
    import torch.multiprocessing as mp

    ctx = mp.get_context(method)
    procs = [ctx.Process(target=target, args=tuple(a)) for a in arglists]
    started = []
    try:
        for p in procs:
            p.start()
            started.append(p)
    finally:
        hung = join_all(started, timeout)  # also when a start failed: nothing is left running
    if hung:
        pytest.fail(f"processes {hung} of {len(procs)} still running after {timeout:g} s: killed (a hung rendezvous "
                    f"or collective); exit codes {[p.exitcode for p in procs]}", pytrace=False)
    codes = [p.exitcode for p in procs]
    if any(c != 0 for c in codes):
        pytest.fail(f"a process failed: exit codes {codes} (its traceback is in the captured stderr)", pytrace=False)
