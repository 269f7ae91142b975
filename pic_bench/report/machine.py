"""What machine a row ran on, in the fields that change numbers: the CPU kernels torch dispatches to, and on
GPUs the device and its software stack.

The same config and seed are bit-identical on one machine with the same library versions, but not across
machines: torch picks its CPU kernels by ``torch.backends.cpu.get_cpu_capability()`` (e.g. AVX2 vs AVX-512),
and float32 sums in another order give other roundings. Two 2-core machines that both report "AMD EPYC x2"
gave kNN 79.36 vs 79.53 for the same small-preset cell (issue 13), so the row records these fields and tables
keep rows of different capabilities apart.

Fields (GPU ones None on a CPU run): cpu_capability, cpu_model, isa (the flags among avx2, avx512f,
avx512_bf16 and amx_* that /proc/cpuinfo lists), torch_threads, gpu_name, cuda, cudnn, driver (nvidia-smi or
pynvml if present, else None).
"""
from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16")  # plus every amx_* flag


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str | None, list[str]]:
    """(model name, ISA flags that matter) of the first CPU in /proc/cpuinfo; (None, []) if unreadable."""
    try:
        text = path.read_text()
    except OSError:
        return None, []
    model, flags = None, []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and not flags:
            have = set(value.split())
            flags = [f for f in ISA_FLAGS if f in have] + sorted(f for f in have if f.startswith("amx"))
        if model is not None and flags:
            break
    return model, flags


def _driver() -> str | None:
    """NVIDIA driver version from nvidia-smi, else pynvml, else None."""
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0].strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:  # noqa: BLE001 - pynvml absent or no driver: the field is unknown
        return None


def machine_info(device: torch.device | str) -> dict[str, Any]:
    """The row's ``machine`` field for a run on ``device``."""
    device = torch.device(device)
    model, isa = _cpuinfo()
    info: dict[str, Any] = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_model": model or platform.processor() or None,
        "isa": isa, "torch_threads": torch.get_num_threads(),
        "gpu_name": None, "cuda": None, "cudnn": None, "driver": None,
    }
    if device.type == "cuda":
        info.update(gpu_name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), driver=_driver())
    return info
