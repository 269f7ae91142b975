"""The preflight: checks in a few minutes what a paper run needs on this machine and names the first thing broken.

    python -m pic_bench.preflight                                  # here (the CPU subset without a GPU)
    python -m pic_bench.preflight --executor slurm --slurm gpus_per_node=4 partition=gpu   # one node, via SLURM

Writes ``results/bench/preflight-<machine>.json`` (machine key: ``results.device_key``) and exits 0 when no check
failed, 1 when one did (the first failed check is printed and recorded as ``first_broken``), 2 for bad arguments.

Checks, in order (each {"status": "ok" | "failed" | "not run", ...}):

- ``gpus``: one distinct GPU per rank: every local rank of the node (one per visible GPU) resolves
  ``distributed.local_device`` to its own GPU (by UUID).
- ``all_reduce``: an all-reduce across every rank of the node: NCCL over every GPU; gloo across 2 local
  processes on the CPU. One GPU: "not run" ("1 GPU: NCCL not exercised"), never a silent pass.
- ``dali_decode``: DALI decodes real JPEGs (written with ``data.sources.encode_jpeg``) into a training batch in
  the scheduler's order: ``mixed`` (nvJPEG) on the GPU, the CPU decoder without one; ``memory_mib``: the memory
  it took (DALI's pool: device memory on the GPU, host RSS on the CPU).
- ``head``: the fast head step (Triton kernels on the GPU) against its plain reference on fresh random inputs;
  its median time (target <= 0.25 ms on the GPU at K = 65536, B = 256, d = 128), under the math flags the paper
  preset's ``run.precision`` sets (``train.set_precision``; recorded as ``precision`` and ``tf32_matmul``).
- ``step``: one PIC training step (``Trainer.train_step``) timed against the backbone alone (forward, backward
  and SGD step of the same network on the same images with a trivial loss): on the GPU a bf16 ResNet-50 at
  224 px, B = 256, K = 65536 (target: within 5 %); on the CPU the smoke preset's network (timed, no target).
- ``checkpoint``: 4 steps, a checkpoint, a fresh Trainer resumed from it for 4 more, against 8 uninterrupted
  steps, on the run's device (CPU: bit-exact; GPU: within 1e-4 of each tensor's largest magnitude, since cuDNN's
  kernels may be chosen differently after the resume).

Without a GPU every GPU-only part is recorded as {"status": "not run", "why": "no CUDA device"}: the ``gpu_*``
entries. Timings are medians of a few repeats after a warm-up, with the device synchronised around each repeat.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

NO_CUDA = {"status": "not run", "why": "no CUDA device"}
HEAD_TARGET_MS = 0.25
STEP_TARGET_RATIO = 1.05


# ---- timing

def _timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` calls after ``warmup`` (device synchronised around each)."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


# ---- gpus + all_reduce: one process per rank

def _rank(rank: int, world: int, port: int, backend: str, out: str) -> None:
    import torch.distributed as dist

    from ..pic import distributed

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    result: dict[str, Any] = {"rank": rank}
    try:
        device = distributed.local_device("cuda" if backend == "nccl" else "cpu")
        result["device"] = str(device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
            result["uuid"] = str(getattr(torch.cuda.get_device_properties(device), "uuid", device.index))
            dist.init_process_group("nccl", rank=rank, world_size=world, device_id=device)
        else:
            dist.init_process_group("gloo", rank=rank, world_size=world)
        t = torch.full((1 << 20,), float(rank + 1), device=device)  # 4 MiB
        t0 = time.perf_counter()
        dist.all_reduce(t)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        result["all_reduce_ms"] = (time.perf_counter() - t0) * 1e3
        result["sum"] = float(t[0])
        result["sum_ok"] = bool(torch.all(t == world * (world + 1) / 2))
        dist.destroy_process_group()
    except Exception as e:  # noqa: BLE001 - reported by the parent
        result["error"] = f"{type(e).__name__}: {e}"
    Path(out).write_text(json.dumps(result))


def check_ranks(cuda: bool, timeout_s: float = 180, world: int | None = None
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(gpus, all_reduce): one process per GPU (NCCL), or 2 CPU processes (gloo); ``world`` overrides the count.
    With one rank the all-reduce crosses nothing: recorded as "not run" ("1 GPU: NCCL not exercised")."""
    import torch.multiprocessing as mp

    from ..pic import distributed

    world = world or (torch.cuda.device_count() if cuda else 2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        outs = [os.path.join(d, f"r{r}.json") for r in range(world)]
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_rank, args=(r, world, port, "nccl" if cuda else "gloo", outs[r]))
                 for r in range(world)]
        for p in procs:
            p.start()
        hung = distributed.join_all(procs, timeout_s)
        results = [json.loads(Path(o).read_text()) if os.path.exists(o) else {"rank": r, "error": "no result"}
                   for r, o in enumerate(outs)]
    errors = [f"rank {x['rank']}: {x['error']}" for x in results if "error" in x]
    if hung:
        errors.insert(0, f"rank(s) {hung} still running after {timeout_s:.0f} s")
    reduce = {"status": "ok" if not errors and all(x.get("sum_ok") for x in results) else "failed",
              "backend": "nccl" if cuda else "gloo", "ranks": world,
              "all_reduce_ms": [x.get("all_reduce_ms") for x in results]}
    if errors:
        reduce["why"] = "; ".join(errors)
    elif reduce["status"] == "failed":
        reduce["why"] = f"wrong sums {[x.get('sum') for x in results]}, want {world * (world + 1) / 2}"
    single_rank(reduce, cuda)
    if not cuda:
        return dict(NO_CUDA), reduce
    uuids = [x.get("uuid") for x in results]
    gpus: dict[str, Any] = {"status": "ok", "ranks": world, "devices": [x.get("device") for x in results],
                            "uuids": uuids, "names": [torch.cuda.get_device_name(i) for i in range(world)]}
    if None in uuids or len(set(uuids)) != world:
        gpus.update(status="failed", why=f"ranks do not each have their own GPU: {uuids}")
    return gpus, reduce


def single_rank(reduce: dict[str, Any], cuda: bool) -> dict[str, Any]:
    """An all-reduce of one rank that ran fine is not a pass: nothing crossed a process (or GPU) boundary."""
    if reduce.get("ranks") == 1 and reduce["status"] == "ok":
        reduce.update(status="not run", why="1 GPU: NCCL not exercised" if cuda else "1 rank: gloo not exercised")
    return reduce


def _rss_mib() -> float | None:
    """This process's resident memory (Linux /proc), MiB."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def _memory_mib(device: torch.device) -> float | None:
    """Memory in use now: the GPU's (all allocators, DALI's pool included: cudaMemGetInfo) or the host process's."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return (total - free) / 2**20
    return _rss_mib()


# ---- DALI decode of real JPEGs

def check_dali(device: torch.device) -> dict[str, Any]:
    from ..config import build
    from ..data.loaders import build_loader, dali_available
    from ..data.sources import encode_jpeg, load_source
    from ..data.window import make_schedule

    if not dali_available():
        return {"status": "failed", "why": "nvidia.dali does not import (pip install nvidia-dali-cuda120)"}
    gpu = device.type == "cuda"
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        g = torch.Generator().manual_seed(0)
        for i in range(16):
            folder = root / "train" / f"c{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            img = torch.randint(0, 256, (3, 40, 48), generator=g, dtype=torch.uint8)
            (folder / f"img{i:02d}.jpg").write_bytes(encode_jpeg(img))
        cfg = build("smoke", {"data.dataset": "imagefolder", "data.root": str(root), "data.num_instances": 0,
                              "data.eval_split": "train",  # a decode check: no val/ split in its folder
                              "data.loader": "dali", "data.image_size": 32, "optim.batch_size": 8, "pic.K": 8,
                              "pic.D": 12, "pic.S": 4, "run.device": "cuda" if gpu else "cpu"})
        src = load_source(cfg.data)
        sched = make_schedule(cfg.pic.scheduler, src.N, cfg.pic.D, cfg.pic.S, 0, cfg.pic.official_shuffle)
        before = _memory_mib(device)
        loader = build_loader(cfg, src, sched, device=device)
        t0 = time.perf_counter()
        batches = list(loader.iterate(0, 2))
        ms = (time.perf_counter() - t0) * 1e3
        after = _memory_mib(device)
    # DALI's pool and buffers: device memory on the GPU (its own allocator, outside torch's counters), host
    # memory on the CPU; the growth while the pipeline ran, with the batches it returned
    out: dict[str, Any] = {"decoder": "mixed (nvJPEG)" if gpu else "cpu", "batches": len(batches),
                           "ms_for_2_batches": ms, "status": "ok",
                           "memory_mib": None if before is None or after is None else round(after - before, 1),
                           "memory_kind": "device (cudaMemGetInfo)" if gpu else "host RSS"}
    for b in batches:
        want = torch.from_numpy(sched.batch(b.step, 8))
        v = b.views[0]
        if not torch.equal(b.index.cpu(), want):
            return {**out, "status": "failed", "why": f"batch {b.step}: indices are not the scheduler's order"}
        if v.shape != (8, 3, 32, 32) or not bool(torch.isfinite(v).all()) or (v.device.type == "cuda") != gpu:
            return {**out, "status": "failed", "why": f"batch {b.step}: view {tuple(v.shape)} on {v.device}"}
    return out


# ---- the head against its reference, and its time

def check_head(device: torch.device, repeats: int, precision: str | None = None) -> dict[str, Any]:
    """The head at the math flags a run at ``precision`` sets (default: the paper preset's ``run.precision``),
    through ``train.set_precision`` as a run does; torch's flags are restored afterwards."""
    from ..config import PRESETS
    from ..pic.train import set_precision

    precision = precision or PRESETS["paper"].get("run.precision", "fp32")
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        ran = set_precision(precision, device, False)
        out = _check_head(device, repeats)
        return {**out, "precision": ran, "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32)}
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = flags


def _check_head(device: torch.device, repeats: int) -> dict[str, Any]:
    from ..pic import head

    gpu = device.type == "cuda"
    N, K, B, d = (200_000, 65536, 256, 128) if gpu else (8192, 1024, 64, 128)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(N, d, generator=g).to(device)
    u = torch.randn(N, d, generator=g).mul_(0.01).to(device)
    U = torch.randperm(N, generator=g)[:K].sort().values.to(device)
    target = torch.randint(0, K, (B,), generator=g).to(device)
    z = torch.randn(B, d, generator=g).to(device)
    hp = dict(tau=0.2, lr=0.03, momentum=0.9, weight_decay=1e-4)
    w1, u1, w2, u2 = w.clone(), u.clone(), w.clone(), u.clone()
    loss, gz = head.head_step(z, w1, u1, U, target, **hp)
    loss_r, gz_r = head.head_step_reference(z, w2, u2, U, target, **hp)
    errs = {"loss": abs(float(loss) - float(loss_r)) / abs(float(loss_r)),
            "grad_z": float((gz - gz_r).abs().max() / gz_r.abs().max()),
            "w": float((w1 - w2).abs().max() / w2.abs().max()), "u": float((u1 - u2).abs().max() / u2.abs().max())}
    tol = 1e-4
    triton = head._use_triton(w, None)
    out: dict[str, Any] = {"N": N, "K": K, "B": B, "d": d, "triton": triton, "rel_err": errs, "tol": tol}
    ws = head.Workspace()
    out["head_step_ms"] = _timed(lambda: head.head_step(z, w1, u1, U, target, ws=ws, **hp), device, repeats)
    bad = [k for k, e in errs.items() if not e <= tol]
    if bad:
        return {**out, "status": "failed", "why": f"fast head differs from its reference in {bad}: {errs}"}
    if gpu and not triton:
        return {**out, "status": "failed", "why": "Triton does not import: the fused head kernels cannot run"}
    if gpu:
        out["target_ms"] = HEAD_TARGET_MS
        if out["head_step_ms"] > HEAD_TARGET_MS:
            return {**out, "status": "failed",
                    "why": f"head step {out['head_step_ms']:.3f} ms > target {HEAD_TARGET_MS} ms"}
    return {**out, "status": "ok"}


# ---- one PIC step against the backbone alone

class _Unloaded:
    """N instances whose images are never loaded (the step is fed random images)."""

    files = None

    def __init__(self, n: int):
        self.labels = np.broadcast_to(np.int64(0), (n,))

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int):
        raise RuntimeError("the preflight never loads images")


def _step_config(device: torch.device):
    from ..config import build

    if device.type == "cuda":  # the paper preset's step at the target sizes
        return build("paper", {"data.dataset": "synthetic", "data.loader": "torchvision", "data.workers": 0,
                               "optim.batch_size": 256, "pic.K": 65536, "run.device": "cuda"}), 131072
    return build("smoke", {"pic.K": 64, "run.device": "cpu"}), 256


def check_step(device: torch.device, repeats: int) -> dict[str, Any]:
    from ..data import Batch
    from ..data.sources import Source
    from ..pic.train import Trainer

    cfg, N = _step_config(device)
    source = Source("preflight", _Unloaded(N), _Unloaded(1), 3, (0.5,) * 3, (0.25,) * 3, f"unloaded-{N}")
    trainer = Trainer(cfg, source)
    B, size = cfg.optim.batch_size, cfg.data.image_size
    views = [torch.randn(B, 3, size, size, device=device) for _ in range(cfg.data.views)]  # (B, C, H, W)
    position = [max(cfg.pic.K, B)]
    trainer.negatives.refill(trainer.schedule, position[0])

    def pic_step() -> None:
        index = torch.from_numpy(trainer.schedule.positions(position[0], B)).to(device)  # (B,)
        position[0] += B
        trainer.train_step(Batch(views, index, trainer.step))

    def backbone_step() -> None:  # the same network, images and optimizer; a trivial loss instead of PIC's
        trainer.opt.zero_grad(set_to_none=True)
        sum(trainer.z(x).sum() for x in views).backward()
        trainer.opt.step()

    pic_ms = _timed(pic_step, device, repeats)
    backbone_ms = _timed(backbone_step, device, repeats)
    ratio = pic_ms / backbone_ms
    out: dict[str, Any] = {"arch": cfg.model.arch, "image_size": size, "B": B, "K": trainer.derived["K_effective"],
                           "N": N, "precision": trainer.derived["precision"], "pic_step_ms": pic_ms,
                           "backbone_step_ms": backbone_ms, "ratio": ratio, "status": "ok"}
    if device.type == "cuda":
        out["target_ratio"] = STEP_TARGET_RATIO
        if ratio > STEP_TARGET_RATIO:
            out.update(status="failed", why=f"PIC step {pic_ms:.1f} ms is {ratio:.3f} x the backbone's "
                                            f"{backbone_ms:.1f} ms (target <= {STEP_TARGET_RATIO})")
    else:
        out["note"] = "CPU: timed for the record; the 5 % target is for a bf16 ResNet-50 on a GPU"
    return out


# ---- checkpoint saved and resumed on the device

def check_checkpoint(device: torch.device) -> dict[str, Any]:
    from ..config import build
    from ..pic.train import Preempted, Trainer

    cfg = build("smoke", {"run.deterministic": device.type == "cpu", "optim.max_steps": 8, "optim.epochs": 2,
                          "run.device": device.type, "run.log_every": 4})
    ref = Trainer(cfg)
    ref.train()
    calls = [0]

    def stop() -> bool:
        calls[0] += 1
        return calls[0] == 5  # before step 5: 4 steps done

    with tempfile.TemporaryDirectory() as d:
        ckpt = Path(d) / "c.pt"
        t = Trainer(cfg)
        try:
            t.train(should_stop=stop, checkpoint=ckpt)
            return {"status": "failed", "why": "the stop request was not honoured"}
        except Preempted:
            pass
        t = Trainer(cfg)
        t.load(ckpt)
        resumed_at = t.step
        t.train()
    tensors = {"w": (t.w, ref.w), "u": (t.u, ref.u),
               **{k: (v, ref.model.state_dict()[k]) for k, v in t.model.state_dict().items() if v.is_floating_point()}}
    worst = max(float((a.double() - b.double()).abs().max()) / max(float(b.abs().max()), 1e-30)
                for a, b in tensors.values())
    exact = device.type == "cpu"
    tol = 0.0 if exact else 1e-4
    out = {"device": str(device), "resumed_at": resumed_at, "steps": t.step, "max_rel_diff": worst, "tol": tol,
           "status": "ok"}
    if t.step != 8 or resumed_at != 4 or worst > tol or (exact and t.meters.losses != ref.meters.losses):
        out.update(status="failed", why=f"resumed run differs from the uninterrupted one (max rel diff {worst:.3g})")
    return out


# ---- the whole preflight

def run_checks(repeats: int = 5) -> dict[str, Any]:
    """Every check on this machine; a check that raises is recorded as failed with its error."""
    from ..report.results import device_key, device_name, git_state, versions

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    checks: dict[str, Any] = {}

    def guarded(name: str, fn: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - the preflight's job is to name what broke
            result = {"status": "failed", "why": f"{type(e).__name__}: {e}",
                      "traceback": traceback.format_exc(limit=4)}
        result["wall_s"] = round(time.perf_counter() - t0, 2)
        checks[name] = result
        print(f"preflight: {name}: {result['status']}" + (f" ({result['why']})" if "why" in result else ""),
              file=sys.stderr, flush=True)

    ranks: dict[str, Any] = {}

    def do_ranks() -> dict[str, Any]:
        ranks["gpus"], ranks["all_reduce"] = check_ranks(cuda)
        return ranks["all_reduce"]

    guarded("all_reduce", do_ranks)
    checks["gpus"] = ranks.get("gpus", dict(NO_CUDA) if not cuda else {"status": "failed", "why": "rank check raised"})
    guarded("dali_decode", lambda: check_dali(device))
    guarded("head", lambda: check_head(device, repeats))
    guarded("step", lambda: check_step(device, repeats))
    guarded("checkpoint", lambda: check_checkpoint(device))
    if not cuda:  # the GPU-only parts, named so nobody mistakes the CPU subset for a GPU pass
        for name in ("gpu_dali_mixed_decode", "gpu_nccl_all_reduce", "gpu_triton_head", "gpu_bf16_resnet50_step",
                     "gpu_checkpoint_resume"):
            checks[name] = dict(NO_CUDA)
    order = ["gpus", "all_reduce", "dali_decode", "head", "step", "checkpoint"]
    first = next((n for n in order if checks.get(n, {}).get("status") == "failed"), None)
    name = device_name(device)
    return {"machine": device_key(name), "device": name, "cuda": torch.version.cuda if cuda else None,
            "gpu_count": torch.cuda.device_count() if cuda else 0, "host": socket.gethostname(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "first_broken": first, "checks": checks,
            "versions": versions(), **{k: v for k, v in git_state().items() if k in ("git_sha", "git_dirty")}}


def write_report(report: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"preflight-{report['machine']}.json"
    path.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    return path


def _in_job(out_dir: str, repeats: int) -> dict[str, Any]:
    """What the SLURM job runs: the checks on its node, the report written to the shared results folder."""
    report = run_checks(repeats)
    write_report(report, Path(out_dir))
    return report


def submit(out_dir: Path, repeats: int, cluster: str, overrides: list[str]) -> int:
    """One one-node job through launch's cluster settings (the same file and --slurm keys as a run)."""
    import submitit

    from . import launch
    from ..config import ConfigError

    try:
        cc = launch.load_cluster(cluster, launch.parse_overrides(overrides))
        known = launch.partitions()
        if cc.partition and cc.partition not in known:
            raise ConfigError(f"{cluster}: partition '{cc.partition}' does not exist (sinfo lists: {known})")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ex = submitit.SlurmExecutor(folder=Path(cc.folder) / "preflight" / "%j")
    params = launch.sbatch_params(cc, "pic_preflight", time=max(10, min(cc.time_min, 30)), nodes=1,
                                  ntasks_per_node=1, cpus_per_task=max(cc.cpus_per_task, 2))
    for key in ("signal_delay_s", "array_parallelism"):  # one plain job: no requeue signal, no array
        params.pop(key)
    ex.update_parameters(**params)
    # by reference to this module, never as __main__'s copy (under ``python -m`` the job would unpickle a
    # __main__ whose spawned ranks cannot be pickled again)
    from . import preflight as this

    job = ex.submit(this._in_job, str(out_dir.resolve()), repeats)
    print(f"submitted preflight job {job.job_id} (log: {job.paths.stdout}); waiting", file=sys.stderr)
    report = job.result()
    return _summary(report, write_report(report, out_dir))


def _summary(report: dict[str, Any], path: Path) -> int:
    first = report["first_broken"]
    if first:
        print(f"preflight: FIRST BROKEN: {first}: {report['checks'][first].get('why', '')}", file=sys.stderr)
    print(f"preflight written to {path}")
    return 1 if first else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pic_bench.preflight", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/bench", help="folder of preflight-<machine>.json")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median)")
    ap.add_argument("--executor", default="local", choices=["local", "slurm"])
    ap.add_argument("--cluster", default="slurm/cluster.yaml", help="cluster resources file for --executor slurm")
    ap.add_argument("--slurm", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="with slurm: override cluster-file keys, e.g. --slurm gpus_per_node=4 partition=gpu")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        print(f"error: --repeats must be >= 1, got {args.repeats}", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    from ..config import ConfigError, check_output_dirs

    try:  # before any check runs: a report that cannot be written would waste them all
        check_output_dirs(("--out", out_dir))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.executor == "slurm":
        return submit(out_dir, args.repeats, args.cluster, args.slurm)
    report = run_checks(args.repeats)
    return _summary(report, write_report(report, out_dir))


if __name__ == "__main__":
    sys.exit(main())
