"""Timings that can be trusted or say why not: what a segment of work had of the machine, and a verdict on it.

    from pic_bench.report.timing import measure, contention
    with measure() as seg:          # seg is filled in when the block ends
        trainer.train(...)
    row["derived"]["timing"] = {"segments": [seg]}
    contention(row)                 # None: its step times are the code's; else a short reason

``measure`` records, for one segment of work (a training call, a benchmark's timed loop), a plain dict:

- ``wall_s``: wall-clock seconds; ``cpu_s``: this process's CPU seconds, user + system, over all its threads
  (``resource.getrusage(RUSAGE_SELF)``; loader worker processes are not counted);
- ``threads``: ``torch.get_num_threads()``; ``cpus``: the cores this process may run on
  (``len(os.sched_getaffinity(0))``);
- ``load_start``, ``load_end``: the 1-minute load average (``os.getloadavg()[0]``) at both ends;
- ``gpu_util``: the CUDA device's utilisation in percent at the end (``torch.cuda.utilization``, which needs
  pynvml) when the segment ran on CUDA and it is available; else None; ``device``: "cpu" or "cuda".

Our interpretation of "measured under contention" (``contention``): the run's compute threads are
``min(threads, cpus)`` on a CPU run; other work competes with them when

1. **load**: the load average (the larger of start and end; a 1-minute average lags, so a short segment reads
   mostly what ran before and after it) exceeds what the run explains, its own ``threads``, by more than the
   cores it leaves free plus ``LOAD_SLACK``: others wanted cores the run was using; or
2. **CPU share** (CPU runs only): the process got less than ``CPU_SHARE`` of ``min(threads, cpus) x wall_s`` in
   CPU time: its threads were runnable (a compute-bound training step) but not running.

Calibration, on the shared 2-core AMD EPYC machine (2 torch threads; a quiet machine could not be had):
``python -m pic_bench.report.timing --calibrate`` (a busy matrix loop, 12 s) got 0.94 of 2 threads x wall at
load 1.2-1.4, 0.65 beside one other test process, 0.30 beside one busy process per core (load 1.5 -> 2.5: a
1-minute average lags a 12 s segment, so the CPU share is the sharper signal); a ``small``-preset training of
150 steps got 0.51 with a 41 ms median step (near the 31-39 ms of a quiet machine) and 0.32 with a 267 ms median
step at load 2.3 -> 3.9. A training loop of small convolutions does not keep two threads busy even alone, so
``CPU_SHARE`` is 0.4 (it flags the 0.30 and 0.32 cases, not the 0.51 one), and ``LOAD_SLACK`` 0.5.
Rows written before this record existed (every committed row) read "not recorded".
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

LOAD_SLACK = 0.5  # load average units: a quiet machine's background (shell, SLURM daemons) stays below it
CPU_SHARE = 0.4  # of min(threads, cpus) x wall: see the calibration in the module docstring
NOT_RECORDED = "not recorded"


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return ru.ru_utime + ru.ru_stime


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _gpu_util(device) -> float | None:
    """The device's utilisation in percent where it is cheap to read (CUDA with pynvml), else None."""
    if device is None:
        return None
    try:
        import torch

        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            return None
        return float(torch.cuda.utilization(device))
    except Exception:  # noqa: BLE001 - pynvml absent or the query refused: not worth failing a run over
        return None


class Measurer:
    """start/stop form of ``measure``: ``m = Measurer(device); m.start(); ...; seg = m.stop()``."""

    def __init__(self, device=None):
        self.device = device
        self._t0 = self._c0 = self._load0 = None

    def start(self) -> "Measurer":
        self._load0 = os.getloadavg()[0]
        self._c0 = _cpu_s()
        self._t0 = time.perf_counter()
        return self

    def stop(self) -> dict[str, Any]:
        if self._t0 is None:
            raise RuntimeError("Measurer.stop() before start()")
        wall = time.perf_counter() - self._t0
        cpu = _cpu_s() - self._c0
        kind = "cpu"
        if self.device is not None:
            import torch

            kind = torch.device(self.device).type
        return {"wall_s": round(wall, 4), "cpu_s": round(cpu, 4), "threads": _threads(), "cpus": _cpus(),
                "load_start": round(self._load0, 2), "load_end": round(os.getloadavg()[0], 2),
                "gpu_util": _gpu_util(self.device), "device": kind}


@contextmanager
def measure(device=None) -> Iterator[dict[str, Any]]:
    """Measures the ``with`` block; the yielded dict is filled in when the block ends (also when it raises)."""
    seg: dict[str, Any] = {}
    m = Measurer(device).start()
    try:
        yield seg
    finally:
        seg.update(m.stop())


def segment_contention(seg: dict[str, Any]) -> str | None:
    """None when a segment's times are the code's, else why not (see the module docstring)."""
    try:
        wall, cpu, threads, cpus = float(seg["wall_s"]), float(seg["cpu_s"]), int(seg["threads"]), int(seg["cpus"])
        load = max(float(seg["load_start"]), float(seg["load_end"]))
    except (KeyError, TypeError, ValueError):
        return NOT_RECORDED
    used = max(1, min(threads, cpus))
    free = max(0, cpus - threads)
    others = load - threads
    if others > free + LOAD_SLACK:
        return (f"load {load:.1f} on {cpus} cores, {others:.1f} beyond the run's own {threads} threads")
    if seg.get("device", "cpu") == "cpu" and wall > 0 and cpu < CPU_SHARE * used * wall:
        return f"CPU time {cpu / wall:.2f} x wall, under {CPU_SHARE} x its {used} threads"
    return None


def contention(row: dict[str, Any]) -> str | None:
    """None when the row's step times can be trusted; a short reason when they were measured under contention;
    ``"not recorded"`` for a row without ``derived["timing"]`` (rows written before it existed)."""
    timing = (row.get("derived") or {}).get("timing")
    segs = timing.get("segments") if isinstance(timing, dict) else None
    if not segs or not isinstance(segs, list):
        return NOT_RECORDED
    reasons = [r for r in (segment_contention(s) if isinstance(s, dict) else NOT_RECORDED for s in segs) if r]
    if not reasons:
        return None
    return reasons[0] if len(segs) == 1 else f"segment {len(reasons)} of {len(segs)}: {reasons[0]}" \
        if len(reasons) == 1 else f"{len(reasons)} of {len(segs)} segments, e.g. {reasons[0]}"


def warn_if_contended(seg: dict[str, Any], what: str) -> str | None:
    """Prints ``warning: <what> measured under contention: <reason>`` on stderr when it was; returns the reason."""
    reason = segment_contention(seg)
    if reason:
        print(f"warning: {what} measured under contention: {reason}; its times are not the code's alone",
              file=sys.stderr, flush=True)
    return reason


def _busy(seconds: float) -> None:
    import torch

    x = torch.randn(256, 256)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        x = torch.tanh(x @ x) * 0.5


def _rival(seconds: float) -> None:
    """Another process's work: plain Python arithmetic (no torch: its thread pool does not survive a fork)."""
    t0, x = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        x = (x * 7 + 1) % 1000003


def main(argv: list[str] | None = None) -> int:
    """``--calibrate``: measures a busy matrix loop alone, then beside a second busy process, and prints both."""
    ap = argparse.ArgumentParser(prog="python -m pic_bench.report.timing", description=__doc__.split("\n")[0])
    ap.add_argument("--calibrate", action="store_true", help="measure a busy loop alone and beside another")
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args(argv)
    if not args.calibrate:
        ap.print_help()
        return 0
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    for label, rivals in (("alone", 0), ("beside one busy process per core", _cpus())):
        procs = [ctx.Process(target=_rival, args=(args.seconds + 5,)) for _ in range(rivals)]
        for p in procs:
            p.start()
        with measure() as seg:
            _busy(args.seconds)
        for p in procs:
            p.join()
        print(f"{label}: {seg} -> {segment_contention(seg) or 'not contended'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
