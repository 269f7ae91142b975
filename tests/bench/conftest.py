"""pytest-benchmark suite of the classification head. Not timed tests: CI runs each once with --benchmark-disable
(and checks its outputs are finite); timings are taken and saved with

    python -m pytest tests/bench --benchmark-only --benchmark-storage=results/bench \\
        --benchmark-save=head-$(python -m pic_bench.bench.scaling --machine-id)
    python -m pytest tests/bench --benchmark-only --benchmark-storage=results/bench --benchmark-compare

pytest-benchmark files saved runs under ``results/bench/<platform>/NNNN_<name>.json``; the name carries the
hardware and torch version, and the machine info below adds the device, thread count and load average.
"""
import os

import pytest
import torch

from pic_bench.bench.scaling import machine_id
from pic_bench.report.results import device_name

@pytest.fixture(autouse=True)
def _restore_math_flags():
    """GPU benchmarks turn TF32 on (the issue's figures are TF32 matmuls); put torch's global flags back after each,
    so the tests that run after them (slurm/gpu_checks.sh runs them in one process) see torch's own settings."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags[:2]
    torch.set_float32_matmul_precision(flags[2])


if os.environ.get("PIC_BENCH_THREADS"):  # e.g. 1 on a CPU whose cores other jobs share (see the README)
    torch.set_num_threads(int(os.environ["PIC_BENCH_THREADS"]))


def pytest_benchmark_update_machine_info(config, machine_info):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    machine_info["pic_bench"] = {
        "machine_id": machine_id(device), "device": device_name(device), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "loadavg": os.getloadavg(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }
