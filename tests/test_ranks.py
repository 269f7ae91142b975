"""The test ranks' launcher (tests/ranks.py): a rank that never returns fails its test at the deadline and is
killed, not left for pytest's exit to wait on forever (what happened in CI to two gloo ranks in futex waits), and a
collective whose peer never comes raises in the rank, at the process group's timeout."""
from __future__ import annotations

import os
import time

import pytest
from ranks import free_port, init_gloo, run_procs, run_ranks


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _sleeper(rank: int, world: int, pids: str, hang_rank: int) -> None:
    with open(f"{pids}.{rank}", "w") as f:
        f.write(str(os.getpid()))
    if rank == hang_rank:
        time.sleep(600)


def test_a_rank_that_never_returns_fails_at_the_deadline_and_is_killed(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match=r"processes \[1\] of 2 still running after 5 s: killed"):
        run_ranks(_sleeper, 2, str(tmp_path / "pid"), 1, timeout=5)
    assert time.monotonic() - t0 < 60
    pids = [int((tmp_path / f"pid.{r}").read_text()) for r in range(2)]
    assert not any(_alive(p) for p in pids)  # killed and reaped: nothing for the interpreter's exit to wait on


def _sleeps() -> None:
    time.sleep(600)


def test_join_all_waits_one_deadline_for_all_not_one_each():
    """preflight.check_ranks waited timeout_s for each rank in turn: 8 hung GPUs meant 8 x 180 s."""
    import multiprocessing as mp

    from pic_bench.pic.distributed import join_all

    procs = [mp.get_context("fork").Process(target=_sleeps) for _ in range(4)]
    for p in procs:
        p.start()
    t0 = time.monotonic()
    assert join_all(procs, 2) == [0, 1, 2, 3]
    assert time.monotonic() - t0 < 6  # one 2 s deadline (one each: 8 s)
    assert not any(p.is_alive() for p in procs) and all(p.exitcode is not None for p in procs)  # killed, reaped


def _exits(code: int) -> None:
    raise SystemExit(code)


def test_a_rank_that_fails_fails_the_test_with_every_exit_code():
    with pytest.raises(pytest.fail.Exception, match=r"exit codes \[0, 3\]"):
        run_procs(_exits, [(0,), (3,)], timeout=60)
    run_procs(_exits, [(0,), (0,)], timeout=60)  # all zero: passes


def _lonely_collective(rank: int, world: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    init_gloo(rank, world, port, timeout_s=3)
    if rank == 1:
        time.sleep(15)  # alive, so only the group's timeout (not a closed socket) can end rank 0's wait
        return
    t0 = time.monotonic()
    try:
        dist.all_reduce(torch.ones(1))  # rank 1 never joins
    finally:
        with open(out, "w") as f:
            f.write(str(time.monotonic() - t0))
    # no destroy_process_group: rank 0 has left by raising, and destroy would wait on it


def test_a_collective_whose_peer_never_comes_raises_at_the_group_timeout(tmp_path):
    with pytest.raises(pytest.fail.Exception, match=r"a process failed: exit codes \[1, 0\]"):
        run_ranks(_lonely_collective, 2, free_port(), str(tmp_path / "waited"), timeout=120)
    assert float((tmp_path / "waited").read_text()) < 10  # about the 3 s timeout, while rank 1 was still alive
