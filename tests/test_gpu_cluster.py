"""The paper run on a GPU cluster, part 2 (issue 18 items 1, 2, 3 and 7's first three), with CPU stand-ins:
evaluation under a process group that reports NCCL, checkpoints with one CUDA RNG state that restore on any GPU
count, a resume that moves aside only what cannot be read, the probe before the process group and cached beside
the listing, per-task GPU binding, inherited launcher variables, and deterministic cuBLAS's variable.

Stand-ins: two gloo ranks whose ``dist.get_backend`` reports "nccl" (then every ``DataParallel`` built without
this rank's CUDA device raises, as it does on a GPU node; the task's one is built with a CUDA device and its
tensors put on the CPU, where gloo's live), ``torch.cuda`` patched for device counts and RNG states.
"""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from ranks import free_port, init_gloo, run_ranks

from pic_bench.config import apply, build
from pic_bench.data import probe as P
from pic_bench.data import sources
from pic_bench.data.sources import encode_jpeg, load_source
from pic_bench.eval import evaluate as E
from pic_bench.pic import distributed
from pic_bench.pic.model import PICModel
from pic_bench.pic.train import Trainer
from pic_bench.suite import tasks as T
from pic_bench.suite.tasks import Task, run_task


# ---- item 1: evaluation under NCCL with any number of ranks

def _eval_cfg():
    return build("smoke", {"data.num_instances": 96, "data.test_size": 50, "eval.protocol": "linear_sgd",
                           "eval.sgd_epochs": 2, "eval.sgd_batch": 32, "eval.sgd_warmup_epochs": 0.5})


def _evaluate(ctx, progress_path):
    cfg = _eval_cfg()
    src = load_source(cfg.data)
    torch.manual_seed(0)
    model = PICModel(cfg.model, src.channels)
    progress = E.Progress(progress_path, dist=ctx) if progress_path else None
    return E.evaluate_model(model, src, cfg.data.image_size, cfg.eval, "cpu", 1, progress=progress, dist=ctx)


def _nccl_worker(rank: int, world: int, port: int, out: str) -> None:
    init_gloo(rank, world, port)
    try:
        torch.set_num_threads(1)
        dist.get_backend = lambda group=None: "nccl"  # what an NCCL group says; the collectives stay gloo's
        with pytest.raises(RuntimeError, match="NCCL process group needs"):
            distributed.current()  # what evaluation called before: it raised on every rank
        ctx = distributed.current(torch.device("cuda", rank))  # the task's ranks, as training builds them
        ctx.device = torch.device("cpu")  # where a gloo stand-in's tensors live
        first = _evaluate(ctx, out + ".progress")
        again = _evaluate(ctx, out + ".progress")  # resumes from every rank's progress file (they agree)
        torch.save({"first": first, "again": again}, f"{out}{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_evaluation_with_two_ranks_under_an_nccl_group_runs_and_equals_one_rank(tmp_path):
    run_ranks(_nccl_worker, 2, free_port(), str(tmp_path / "r"))
    outs = [tmp_path / f"r{r}" for r in range(2)]  # every rank returns the global result
    one = _evaluate(distributed.Single(), None)
    for o in outs:
        two = torch.load(o, weights_only=False)
        assert two["again"] == two["first"]
        assert two["first"]["knn_top1"] == one["knn_top1"]
        for k in ("linear_top1", "linear_top5"):  # the same batches split in two: rounding only
            assert abs(two["first"][k] - one[k]) <= 2 * 100 / 50, (k, two["first"], one)


def test_trainer_evaluation_uses_the_trainers_ranks(monkeypatch):
    from pic_bench.eval import evaluate

    t = Trainer(build("smoke", {"optim.max_steps": 1}))
    seen = {}
    monkeypatch.setattr(evaluate, "evaluate_model", lambda *a, **kw: seen.update(kw) or {})
    evaluate.evaluate_run(t)
    assert seen.get("dist") is t.dist


# ---- item 2: one CUDA RNG state per checkpoint, restored on any GPU count

def _states(n: int) -> list[torch.Tensor]:
    return [torch.full((16,), 10 + i, dtype=torch.uint8) for i in range(n)]


def test_a_checkpoint_keeps_this_ranks_cuda_rng_state_only(monkeypatch):
    t = Trainer(build("smoke", {"optim.max_steps": 1}))
    states = _states(4)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: list(states))
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[torch.device(device).index])
    t.device = torch.device("cuda", 2)  # rank 2 of a 4-GPU node
    saved = t.state_dict()["rng"]["cuda"]
    assert saved == states[2].numpy().tobytes()  # before: all four GPUs' states


@pytest.mark.parametrize("index, saved, expect", [(0, 4, 0), (2, 4, 2), (0, 1, 0), (3, 2, 0), (1, None, 1)])
def test_cuda_rng_states_restore_in_a_process_with_fewer_gpus(monkeypatch, index, saved, expect):
    """An old checkpoint with several states restores the one of this rank's device index (or the first); a new
    one holds one state. Before: ``set_rng_state_all`` of 4 states in a 1-GPU process raised IndexError."""
    t = Trainer(build("smoke", {"optim.max_steps": 1}))
    sd = t.state_dict()
    states = _states(4)
    sd["rng"]["cuda"] = ([s.numpy().tobytes() for s in states[:saved]] if saved
                         else states[expect].numpy().tobytes())
    restored = []

    def set_rng_state(state, device="cuda"):
        device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        if (device.index or 0) >= 1 and index == 0:  # a 1-GPU process has no cuda:1
            raise IndexError(f"no {device}")
        restored.append((bytes(state.numpy()), device))

    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1 if index == 0 else 4)
    t.device = torch.device("cuda", index)
    t.load_state_dict(sd)
    assert restored == [(states[expect].numpy().tobytes(), torch.device("cuda", index))]


def tiny(**kw):
    return apply(build("smoke"), {"optim.max_steps": 2, "eval.linear_epochs": 2, **kw}, "test")


def task(tmp_path, **kw) -> Task:
    return Task("gpu_cluster", "smoke", {}, tiny(**kw), results_dir=str(tmp_path),
                checkpoint_dir=str(tmp_path / "ck"))


def test_a_checkpoint_that_reads_but_does_not_restore_is_an_error_naming_it_and_is_kept(tmp_path, capsys):
    t = task(tmp_path)
    trainer = Trainer(t.cfg)
    sd = trainer.state_dict()
    sd["w"] = torch.zeros(3, 3)  # another run's classifier: a restore error, not a corrupt file
    t.checkpoint.parent.mkdir(parents=True)
    torch.save(sd, t.checkpoint)
    before = t.checkpoint.read_bytes()
    with pytest.raises(T.CheckpointError, match=str(t.checkpoint)):
        run_task(t)  # before: moved aside as "corrupt" and the cell trained from step 0
    assert T.run_local([t], quiet=True) == 1  # a sweep goes on, and says it on one error: line
    err = capsys.readouterr().err
    assert any(line.startswith(f"error: checkpoint {t.checkpoint}") and "RuntimeError" in line
               for line in err.splitlines()), err
    assert t.checkpoint.read_bytes() == before
    assert not list(t.checkpoint.parent.glob("*.corrupt-*"))
    rows = [json.loads(x) for x in (tmp_path / "rows" / "gpu_cluster.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["failed", "failed"] and str(t.checkpoint) in rows[0]["error"]


def test_an_evaluation_task_never_moves_the_final_checkpoint_aside(tmp_path):
    t = task(tmp_path)
    assert run_task(t.at("train"))["status"] == "trained"
    ckpt = t.checkpoint
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])  # cut short after training
    cut = ckpt.read_bytes()
    with pytest.raises(T.CheckpointError, match=str(ckpt)):
        run_task(t.at("eval"))  # before: moved aside, and the evaluation task retrained the cell
    assert ckpt.read_bytes() == cut and not list(ckpt.parent.glob(ckpt.name + ".corrupt-*"))
    # its trained marker is moved aside instead, so the same command submits the training again
    assert not t.trained() and list(ckpt.parent.glob(t.trained_marker.name + ".corrupt-*"))
    assert run_task(t.at("train"))["status"] == "trained"  # the training task may move the checkpoint aside
    assert run_task(t.at("eval"))["status"] == "ok"


# ---- item 3: the probe before the process group, cached beside the listing; the group's timeout

def _write_folder(root: Path, n_train: int = 12, n_val: int = 6, bad: str | None = None) -> None:
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            p = root / split / f"c{i % 3}" / f"{i:03d}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(encode_jpeg(torch.randint(0, 255, (3, 10, 10), generator=g, dtype=torch.uint8)))
    if bad:
        (root / "train" / "c0" / bad).write_bytes(b"not an image")
    old = os.stat(root).st_mtime - 60  # listings of folders modified in the last seconds are not trusted
    for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        os.utime(d, (old, old))


def _folder_cfg(root: Path, **kw):
    return apply(build("smoke"), {"data.dataset": "imagefolder", "data.root": str(root), "data.num_instances": 0,
                                  "data.test_size": 0, "data.image_size": 8, **kw}, "test")


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real_try, real_read = P._try, P._read  # a folder's files are read (and hashed) by _read, a shard's by _try
    monkeypatch.setattr(P, "_try", lambda images, i: (calls.append(images.files[i]), real_try(images, i))[1])
    monkeypatch.setattr(P, "_read", lambda images, i: (calls.append(images.files[i]), real_read(images, i))[1])
    return calls


def test_the_probe_result_is_cached_beside_the_listing(tmp_path, monkeypatch, counted):
    monkeypatch.setenv("PIC_BENCH_CACHE", str(tmp_path / "cache"))
    _write_folder(tmp_path / "data", bad="broken.jpg")
    src = load_source(_folder_cfg(tmp_path / "data").data)
    first = P.probe(src, "skip")
    assert first == {"train": 1, "val": 0} and len(counted) == 13 + 6
    counted.clear()
    src = load_source(_folder_cfg(tmp_path / "data").data)  # a requeued segment: a new process, same folder
    assert P.probe(src, "skip") == first and counted == []  # before: every file decoded again
    with pytest.raises(sources.BadImageError, match="broken.jpg"):
        P.probe(src, "error")  # the cached result still refuses the run, naming the file
    assert counted == []
    facts = sources.read_facts(tmp_path / "data" / "train")
    assert [k for k in facts if k.startswith("probe:")]  # a generic dict, keyed like the listing
    # a changed folder is listed again: its facts are stale
    (tmp_path / "data" / "train" / "c1" / "new.jpg").write_bytes((tmp_path / "data" / "train" / "c1" /
                                                                  "001.jpg").read_bytes())
    old = os.stat(tmp_path / "data").st_mtime - 30
    os.utime(tmp_path / "data" / "train" / "c1", (old, old))
    with pytest.raises(sources.DatasetError):  # the instance list changed: refused, as before
        load_source(_folder_cfg(tmp_path / "data").data)
    assert sources.read_facts(tmp_path / "data" / "train") == {}


def test_every_ranks_shard_of_the_probe_makes_the_whole_probe(tmp_path, monkeypatch, counted):
    monkeypatch.setenv("PIC_BENCH_CACHE", str(tmp_path / "cache"))
    _write_folder(tmp_path / "data", bad="broken.jpg")
    src = load_source(_folder_cfg(tmp_path / "data").data)
    reference = P.unreadable(src.train), P.unreadable(src.test)
    counted.clear()
    for r in range(3):
        P.probe_shard(src, r, 3)
    assert sorted(counted) == sorted(src.train.files + src.test.files)  # each file once, over the ranks
    counted.clear()
    got = P.unreadable_cached(src.train, digest=src.digest), P.unreadable_cached(src.test, digest=src.digest)
    assert (got[0][0], got[1][0]) == reference and got[0][1] is None  # found in the cache: no bytes read
    assert counted == []


def _probe_worker(rank: int, world: int, port: int, root: str, results: str, cache: str) -> None:
    """One rank of a 2-rank task as SLURM would start it (torchrun-style variables), with each decode of the
    probe delayed: the whole probe takes longer than the group's timeout, one rank's half does not."""
    import time

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), PIC_BENCH_CACHE=cache)
    torch.set_num_threads(1)
    from pic_bench.data import probe
    from pic_bench.suite.launch import ArrayTask

    real = probe._try
    probe._try = lambda images, i: (time.sleep(DELAY_S), real(images, i))[1]
    t = Task("gpu_cluster", "smoke", {}, _folder_cfg(Path(root), **{"optim.max_steps": 2, "optim.batch_size": 8,
                                                                   "pic.K": 0, "eval.linear_epochs": 1}),
             results_dir=results, checkpoint_dir=results + "/ck")
    ArrayTask(group_timeout_min=TIMEOUT_S / 60)(t)


DELAY_S, TIMEOUT_S = 0.25, 12  # 48 files: 12 s of decoding in one process, 6 s per rank


@pytest.mark.slow
def test_a_slow_probe_does_not_run_into_the_group_timeout(tmp_path):
    _write_folder(tmp_path / "data", n_train=32, n_val=16)
    run_ranks(_probe_worker, 2, free_port(), str(tmp_path / "data"), str(tmp_path / "res"), str(tmp_path / "cache"))
    rows = [json.loads(x) for x in (tmp_path / "res" / "rows" / "gpu_cluster.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok"]


def test_the_group_timeout_is_a_cluster_key_with_a_default_of_30_minutes(monkeypatch):
    from pic_bench.config import ConfigError
    from pic_bench.suite.launch import ClusterConfig, load_cluster

    assert ClusterConfig().group_timeout_min == 30
    assert load_cluster(None, {"group_timeout_min": 45}).group_timeout_min == 45
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="group_timeout_min"):
            load_cluster(None, {"group_timeout_min": bad})
    calls = []
    _fake_group(monkeypatch, calls)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    distributed.init_from_env("cpu")
    assert calls[0]["timeout"] == datetime.timedelta(minutes=30)


# ---- item 7: per-task GPU binding, inherited launcher variables, deterministic cuBLAS

def _fake_group(monkeypatch, calls: list) -> None:
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append({"backend": backend, **kw}))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
              "SUBMITIT_EXECUTOR", "CUBLAS_WORKSPACE_CONFIG"):
        monkeypatch.delenv(k, raising=False)
    for k in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(k)


def _slurm_task(monkeypatch, procid: int, ntasks: int, gpus_on_node: int | None = None) -> None:
    env = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "localhost",
           "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(procid),
           "SLURM_NTASKS": str(ntasks), "SLURM_NTASKS_PER_NODE": str(ntasks), "SLURM_STEP_ID": "0"}
    if gpus_on_node is not None:
        env["SLURM_GPUS_ON_NODE"] = str(gpus_on_node)
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def _cuda(monkeypatch, n: int) -> list:
    set_calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: set_calls.append(
        (torch.device(d), os.environ.get("CUBLAS_WORKSPACE_CONFIG"))))
    return set_calls


def test_per_task_gpu_binding_gives_every_rank_its_only_gpu(monkeypatch):
    _fake_group(monkeypatch, [])
    _cuda(monkeypatch, 1)  # the cluster binds one GPU per task: every rank sees one
    _slurm_task(monkeypatch, 3, 4, gpus_on_node=4)
    assert distributed.local_device("auto") == torch.device("cuda", 0)  # before: "rank 3 has no GPU of its own"
    _slurm_task(monkeypatch, 3, 4, gpus_on_node=1)  # four ranks given one GPU: they would share it
    with pytest.raises(RuntimeError, match="no GPU of its own"):
        distributed.local_device("auto")


def test_inherited_launcher_variables_do_not_stop_a_slurm_task(monkeypatch, capsys):
    calls = []
    _fake_group(monkeypatch, calls)
    _slurm_task(monkeypatch, 1, 2)
    # a job submitted from inside another launch (torchrun, an interactive job) inherits its variables
    for k, v in {"MASTER_ADDR": "node-elsewhere", "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "5"}.items():
        monkeypatch.setenv(k, v)
    distributed.init_from_env("cpu")  # before: RuntimeError "Cannot export ... MASTER_ADDR is already set"
    assert len(calls) == 1 and (calls[0]["rank"], calls[0]["world_size"]) == (1, 2)
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_ADDR"]) == ("1", "2", "localhost")
    err = capsys.readouterr().err
    assert "MASTER_ADDR=node-elsewhere -> localhost" in err and "RANK=5 -> 1" in err
    # one task: no group at all, whatever the inherited RANK / WORLD_SIZE say
    calls.clear()
    _slurm_task(monkeypatch, 0, 1)
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert isinstance(distributed.init_from_env("cpu"), distributed.Single) and calls == []


def test_deterministic_runs_export_cublas_workspace_config_before_cuda_starts(monkeypatch):
    calls = []
    _fake_group(monkeypatch, calls)
    set_calls = _cuda(monkeypatch, 2)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False, raising=False)
    distributed.init_from_env("auto", deterministic=True)
    assert set_calls[0] == (torch.device("cuda", 1), ":4096:8")  # set before the first CUDA call
    assert calls[0]["backend"] == "nccl"
    # a Trainer of a deterministic run exports it too (the local path, no launcher)
    monkeypatch.undo()
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    from pic_bench.pic import train

    seen = []
    real = train.resolve_device
    monkeypatch.setattr(train, "resolve_device", lambda name: (seen.append(os.environ.get(
        "CUBLAS_WORKSPACE_CONFIG")), real(name))[1])
    was = torch.are_deterministic_algorithms_enabled()
    try:
        Trainer(build("smoke", {"run.deterministic": True, "optim.max_steps": 1}))
    finally:
        torch.use_deterministic_algorithms(was)
    assert seen == [":4096:8"]
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # a valid value of the user's is kept
    distributed.deterministic_cuda_env()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
