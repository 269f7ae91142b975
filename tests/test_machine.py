"""The machine a row ran on (pic_bench.report.machine): CPU capability, model, ISA flags, threads; GPU stack on CUDA."""
import pytest
import torch

from pic_bench.report.machine import machine_info


def test_machine_info_on_cpu():
    m = machine_info("cpu")
    assert set(m) == {"cpu_capability", "cpu_model", "isa", "torch_threads", "gpu_name", "cuda", "cudnn", "driver"}
    assert m["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert m["torch_threads"] == torch.get_num_threads()
    assert isinstance(m["isa"], list) and set(m["isa"]) <= {"avx2", "avx512f", "avx512_bf16"} | {
        f for f in m["isa"] if f.startswith("amx")}
    assert m["gpu_name"] is m["cuda"] is m["cudnn"] is m["driver"] is None


def test_machine_info_reads_the_isa_flags_that_matter(tmp_path, monkeypatch):
    from pic_bench.report import machine
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse avx avx2 avx512f avx512bw "
                    "amx_tile amx_bf16\n\nprocessor\t: 1\nmodel name\t: other\nflags\t: sse\n")
    assert machine._cpuinfo(info) == ("Test CPU 9000", ["avx2", "avx512f", "amx_bf16", "amx_tile"])
    assert machine._cpuinfo(tmp_path / "missing") == (None, [])


def test_rows_carry_the_machine():
    from pic_bench.report.results import provenance
    assert provenance("cpu")["machine"] == machine_info("cpu")


@pytest.mark.gpu
def test_machine_info_on_cuda():
    m = machine_info("cuda")
    assert m["gpu_name"] == torch.cuda.get_device_name(0) and m["cuda"] == torch.version.cuda
    assert m["cudnn"] == torch.backends.cudnn.version()
