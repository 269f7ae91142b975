"""slurm/gpu_checks.sh and what it runs work on a bare GPU machine (issue 18, item 8), shown on the CPU:

- the script writes ONE tar under its output folder, with per-step time-outs (a stand-in ``python`` plays the
  machine: CUDA present, one step that hangs, one that fails);
- pytest collects the test modules that import the launcher without submitit (they skip, collection goes on);
- ``bench.loader`` makes its JPEGs without Fashion-MNIST;
- the DALI GPU tests skip only without a DALI GPU backend, never because a GPU graph raised;
- tests/bench restores torch's TF32 flags after each benchmark.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_gpu_checks_writes_one_tar_with_per_step_timeouts(tmp_path):
    stub = tmp_path / "python"
    stub.write_text(textwrap.dedent("""\
        #!/usr/bin/env bash
        # a stand-in python: CUDA "present"; the train tests hang, the DALI tests fail, the rest pass
        case "$*" in
          *"disable tests/test_gpu.py"*) sleep 30 ;;
          *"disable tests/test_dali_gpu.py"*) echo "broken graph"; exit 1 ;;
          *preflight*) echo '{}' > "${@: -1}/preflight-x.json" ;;
        esac
        exit 0
        """))
    stub.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": str(stub), "STEP_TIMEOUT": "2", "TOTAL_S": "600", "PATH": os.environ["PATH"]}
    r = subprocess.run(["bash", "slurm/gpu_checks.sh", str(out)], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr  # two failed steps
    assert [p.name for p in out.iterdir()] == ["gpu_checks.tar"]
    with tarfile.open(out / "gpu_checks.tar") as tar:
        names = {Path(n).name for n in tar.getnames()}
        summary = tar.extractfile("./summary.txt").read().decode()
    assert {"summary.txt", "machine.txt", "gpu_tests_train.log", "preflight-x.json", "bench_scaling.log"} <= names
    assert "gpu_tests_train" in summary and "timed out after 2 s" in summary
    assert "FAILED (exit 1" in summary and summary.count("   ok (") == 5


def test_gpu_checks_defaults_fit_ten_minutes():
    text = (REPO / "slurm" / "gpu_checks.sh").read_text()
    assert "T=${STEP_TIMEOUT:-120}" in text and "TOTAL=${TOTAL_S:-600}" in text


def test_launcher_test_modules_collect_without_submitit(tmp_path):
    blocker = tmp_path / "block"
    (blocker / "submitit").mkdir(parents=True)
    (blocker / "submitit" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'submitit'\", name='submitit')\n")  # as on a bare machine
    mods = ["tests/test_eval_task.py", "tests/test_identity.py", "tests/test_slurm.py",
            "tests/test_cluster_budget.py", "tests/test_cli.py"]
    env = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{REPO}"}
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *mods],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert "Interrupted" not in r.stdout and "error" not in r.stdout.lower() and r.returncode == 0, \
        r.stdout[-3000:] + r.stderr[-2000:]
    assert r.stdout.count("could not import 'submitit'") == 4  # the four launcher modules skip
    assert "test_cli.py::" in r.stdout  # the CLI tests import the launcher only where they use it


def test_bench_loader_generates_jpegs_without_fashion_mnist(tmp_path, monkeypatch):
    from PIL import Image

    from pic_bench.bench import loader
    from pic_bench.data.sources import DatasetError

    def missing(root):
        raise DatasetError("Fashion-MNIST not found")

    monkeypatch.setattr(loader, "_find_fashion_mnist", missing)
    train, kind = loader.generate_jpegs(tmp_path, 12, H=60, W=80)
    files = sorted(train.rglob("*.jpg"))
    assert kind == "synthetic" and len(files) == 12 and len({f.parent.name for f in files}) == 10
    img = Image.open(files[0])
    assert img.size == (80, 60) and img.mode == "RGB"


def test_dali_gpu_backend_check_runs_no_graph(monkeypatch):
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import backend

    from pic_bench.data import dali as D

    def broken(*a, **k):
        raise RuntimeError("a broken GPU graph")

    monkeypatch.setattr(D, "augment_with_draws", broken)  # whatever a graph does, the check does not run one
    monkeypatch.setattr(backend, "GetCUDADeviceCount", lambda: 1)
    assert D.gpu_backend_missing() is None  # a GPU backend: the tests run, and a broken graph fails them
    monkeypatch.setattr(backend, "GetCUDADeviceCount", lambda: 0)
    assert "no CUDA device" in D.gpu_backend_missing()
    source = (REPO / "tests" / "test_dali_gpu.py").read_text()
    assert "except RuntimeError" not in source and "gpu_backend_missing" in source


def test_bench_fixture_restores_tf32(tmp_path):
    import shutil

    shutil.copy(REPO / "tests" / "bench" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_flags.py").write_text(textwrap.dedent("""\
        import torch

        def test_a_benchmark_turns_tf32_on():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = not torch.backends.cudnn.allow_tf32
            torch.set_float32_matmul_precision("medium")

        def test_the_next_test_sees_torchs_flags():
            assert torch.backends.cuda.matmul.allow_tf32 is False
            assert torch.get_float32_matmul_precision() == "highest"
        """))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable",
                        "-p", "no:randomly", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
