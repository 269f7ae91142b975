"""pytest-benchmark suite of the classification head. Not timed tests: CI runs each once with --benchmark-disable
(and checks its outputs are finite); timings are taken and saved with

    python -m pytest tests/bench --benchmark-only --benchmark-storage=results/bench \\
        --benchmark-save=head-$(python -m pic_bench.bench.scaling --machine-id)
    python -m pytest tests/bench --benchmark-only --benchmark-storage=results/bench --benchmark-compare

pytest-benchmark files saved runs under ``results/bench/<platform>/NNNN_<name>.json``; the name carries the
hardware and torch version, and the machine info below adds the device, thread count and load average.
"""
import os

import torch

from pic_bench.bench.scaling import machine_id
from pic_bench.report.results import device_name

if os.environ.get("PIC_BENCH_THREADS"):  # e.g. 1 on a CPU whose cores other jobs share (see the README)
    torch.set_num_threads(int(os.environ["PIC_BENCH_THREADS"]))


def pytest_benchmark_update_machine_info(config, machine_info):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    machine_info["pic_bench"] = {
        "machine_id": machine_id(device), "device": device_name(device), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "loadavg": os.getloadavg(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }
