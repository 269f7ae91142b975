"""Peak memory of a piece of work: CUDA max allocated on GPUs, the process's peak RSS on Linux CPUs.

The analysis ablations (``pic_bench.suite.analysis``) and the head benchmark (``pic_bench.bench.scaling``) both
measure with it; it lives below both so that neither imports the other for it.

Our interpretation of "peak memory" on a CPU: the highest resident set size of the whole process (VmHWM) above
what was resident when the measurement started, after handing freed heap pages back to the system; it counts
everything the process touched meanwhile, not only tensors.
"""
from __future__ import annotations

import gc
import re
from pathlib import Path

import torch


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory above a baseline: CUDA max allocated, or on Linux CPUs the peak RSS (VmHWM) after resetting it
    through /proc/self/clear_refs. ``kind`` says which, or 'unavailable' (values are then nan)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss"
        if device.type != "cuda" and not self._reset_rss():
            self.kind = "unavailable"

    @staticmethod
    def _status(field: str) -> float:
        m = re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())
        return float(m.group(1)) * 1024

    def _reset_rss(self) -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            return True
        except OSError:
            return False

    def start(self) -> None:
        gc.collect()
        _malloc_trim()  # hand freed heap pages back, so the baseline RSS is what is live now
        if self.kind == "cuda_max_allocated":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = float(torch.cuda.memory_allocated(self.device))
        elif self.kind == "cpu_peak_rss":
            self._reset_rss()
            self.base = self._status("VmRSS")

    def peak_mib(self) -> float:
        if self.kind == "cuda_max_allocated":
            torch.cuda.synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        if self.kind == "cpu_peak_rss":
            return (self._status("VmHWM") - self.base) / 2**20
        return float("nan")
