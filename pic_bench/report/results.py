"""Result rows: one JSON line per run, with provenance, appended atomically under ``results/rows/``.

A row is written with a single ``write`` of one line while holding an exclusive ``fcntl`` lock on the file, so
many SLURM array tasks can finish at once without interleaving; a row whose key (``row_key``: ablation, kind,
preset, config hash, seed, data digest) is already present with status ok is not written again, so a requeued
task never duplicates its row. A half-written last line (a node that died mid-write) is moved to
``<ablation>.jsonl.quarantine`` before the next row is appended, so every complete row stays readable.
``read_rows`` returns the valid rows and reports malformed lines by file and line number.
"""
from __future__ import annotations

import fcntl
import json
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import Config, config_hash, to_dict, with_added_keys
from .machine import machine_info

DEFAULT_RESULTS = Path("results")


# what a run writes itself: a change there does not make the code that ran differ from its commit
OUTPUT_PATHS = ("results", "checkpoints")


def git_state(cwd: Path | None = None) -> dict[str, Any]:
    """The commit that ran, and whether tracked files outside the run's own outputs (``OUTPUT_PATHS``) differ
    from it. Before this exclusion every row after a sweep's first read dirty: the sweep's rows file had changed."""
    cwd = cwd or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                *(f":(exclude){p}" for p in OUTPUT_PATHS)], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return {"git_sha": None, "git_dirty": None}
        return {"git_sha": sha.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": None, "git_dirty": None}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("torchvision", "numpy", "nvidia.dali", "submitit"):
        try:
            m = __import__(mod, fromlist=["__version__"])
            out[mod.split(".")[-1]] = getattr(m, "__version__", "?")
        except Exception:  # noqa: BLE001 - an absent optional library is recorded as absent
            out[mod.split(".")[-1]] = None
    return out


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu} x{os.cpu_count()} ({torch.get_num_threads()} torch threads)"


def device_key(name: str) -> str:
    """A short, file-name-safe machine key: 'cpu2' or the GPU's name."""
    if name.startswith("cpu"):
        return f"cpu{os.cpu_count()}"
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()


def _portable_path(value: str, root: Path) -> str:
    """An absolute path inside the repository -> relative to it; any other absolute path -> '.../<last part>'."""
    if not os.path.isabs(value):
        return value
    try:
        return str(Path(value).resolve().relative_to(root))
    except ValueError:
        return ".../" + Path(value).name


def portable_argv(argv: list[str] | None = None, root: Path | None = None) -> list[str]:
    """The command line with every absolute path made portable, so rows name no machine's folders.

    Paths inside the repository become relative to it; other absolute paths keep only their last part
    ('/data/x/results' -> '.../results'), bare or as the value of ``--flag=`` / ``key=``. The resolved config in the
    same row still records every setting, data.root included.
    """
    root = root or Path(__file__).resolve().parents[2]
    out = []
    for arg in list(sys.argv if argv is None else argv):
        head, sep, value = arg.rpartition("=") if "=" in arg else ("", "", arg)
        out.append(head + sep + _portable_path(value, root))
    return out


def start_state() -> dict[str, Any]:
    """What a run's code was when it started: ``git_sha``, ``git_dirty`` and library ``versions``. A task takes it
    before its first step (``suite.tasks.run_task``) and hands it to ``make_row``, so its row names the commit the
    run started on, not the one checked out when the row was written (issue 19: one sweep named three commits)."""
    return {**git_state(), "versions": versions()}


def provenance(device: torch.device | str, start: dict[str, Any] | None = None) -> dict[str, Any]:
    """A row's provenance. ``git_sha``, ``git_dirty`` and ``versions`` are the run's at its start (``start``, from
    ``start_state``; without it, now); ``git_sha_end`` and ``git_dirty_end`` are read now, and
    ``provenance_changed`` lists what differs between the two (``git_sha``, ``git_dirty``, ``versions.<lib>``;
    empty: the code did not change while the run ran)."""
    now = start_state()
    start = start or now
    changed = [k for k in ("git_sha", "git_dirty") if start.get(k) != now[k]]
    before, after = start.get("versions") or {}, now["versions"]
    changed += [f"versions.{k}" for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    return {
        "git_sha": start.get("git_sha"), "git_dirty": start.get("git_dirty"), "versions": before,
        "git_sha_end": now["git_sha"], "git_dirty_end": now["git_dirty"], "provenance_changed": changed,
        "device": device_name(device), "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": portable_argv(), "machine": machine_info(device),
    }


def make_row(ablation: str, preset: str, cell: dict[str, Any], cfg: Config, status: str,
             metrics: dict[str, Any], derived: dict[str, Any], device, error: str | None = None,
             kind: str = "pic", start: dict[str, Any] | None = None) -> dict[str, Any]:
    """One result row. ``row["data"]`` names the data the run saw: the dataset, N (instances), the image size and
    the digest of its index -> image map (``derived["index_digest"]``), which is part of the row's key. ``start``
    (``start_state`` when the run started) is the provenance the row names; see ``provenance``."""
    data = {"dataset": cfg.data.dataset, "N": derived.get("N"), "image_size": cfg.data.image_size,
            "digest": derived.get("index_digest")}
    return {
        "ablation": ablation, "preset": preset, "kind": kind, "cell": cell, "config_hash": config_hash(cfg),
        "seed": cfg.run.seed, "status": status, "error": error, "metrics": metrics, "derived": derived,
        "data": data, "config": to_dict(cfg), **provenance(device, start),
    }


def row_digest(row: dict[str, Any]) -> str | None:
    """The digest of the data a row ran on: ``row["data"]["digest"]``, or for rows written before that field
    existed ``derived.index_digest`` (every committed training row has it; analysis rows have neither: None)."""
    return (row.get("data") or {}).get("digest") or (row.get("derived") or {}).get("index_digest")


def row_key(row: dict[str, Any]) -> tuple:
    """A row's cell identity: the config hash leaves paths out (data.root), so the same data at another path is
    the same cell, and the data's digest tells another dataset (or another selection of it) apart."""
    return (row.get("ablation"), row.get("kind"), row.get("preset"), row.get("config_hash"), row.get("seed"),
            row_digest(row))


def rows_file(results_dir: Path, ablation: str) -> Path:
    return Path(results_dir) / "rows" / f"{ablation}.jsonl"


def quarantine_file(path: Path) -> Path:
    return path.with_name(path.name + ".quarantine")


def _repair_tail(f, path: Path, data: bytes) -> bytes:
    """Cuts a half-written last line (a writer killed mid-write: the file does not end with a newline) back to the
    last complete line, so the next row starts on a line of its own; the cut bytes go to ``<rows>.quarantine``
    with their line number and the time, and a warning names both files. Returns the data that remains.

    Called with the file's exclusive lock held. A last line that is complete JSON and lacks only its newline is
    kept and given one."""
    if not data or data.endswith(b"\n"):
        return data
    cut = data.rfind(b"\n") + 1
    tail = data[cut:]
    try:
        if isinstance(json.loads(tail), dict):
            f.write(b"\n")
            return data + b"\n"
    except ValueError:
        pass
    line = data[:cut].count(b"\n") + 1
    q = quarantine_file(path)
    entry = {"file": path.name, "line": line, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "bytes": len(tail),
             "text": tail.decode("utf-8", "replace")}
    with open(q, "a", encoding="utf-8") as g:
        g.write(json.dumps(entry) + "\n")
        g.flush()
        os.fsync(g.fileno())
    f.truncate(cut)
    print(f"warning: {path}: line {line} was cut off mid-write ({len(tail)} bytes, not a complete row); moved it "
          f"to {q} and cut the file back to its last complete line", file=sys.stderr)
    return data[:cut]


def append_row(row: dict[str, Any], results_dir: Path = DEFAULT_RESULTS, replace_failed: bool = True) -> bool:
    """Appends ``row`` unless a successful row with the same key exists. Returns whether it was written.

    The check and the append happen under one exclusive lock, so concurrent writers never duplicate a row; a
    half-written last line left by a killed writer is quarantined first (``_repair_tail``).
    """
    path = rows_file(results_dir, row["ablation"])
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row, sort_keys=True, default=str) + "\n").encode("utf-8")
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0)
            data = _repair_tail(f, path, f.read())
            key = row_key(row)
            for raw in data.splitlines():
                try:
                    old = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(old, dict) and row_key(old) == key and old.get("status") == "ok":
                    return False
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
            return True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class RowProblem:
    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


REQUIRED = ("ablation", "preset", "config_hash", "seed", "status", "metrics", "config")


def read_rows(results_dir: Path = DEFAULT_RESULTS, ablation: str | None = None
              ) -> tuple[list[dict[str, Any]], list[RowProblem]]:
    """All valid rows (of one ablation, or all) and the problems found, by file and line."""
    rows, problems = [], []
    folder = Path(results_dir) / "rows"
    files = sorted(folder.glob("*.jsonl")) if ablation is None else [rows_file(results_dir, ablation)]
    for path in files:
        if not path.is_file():
            continue
        with open(path, encoding="utf-8") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                except json.JSONDecodeError as e:
                    problems.append(RowProblem(str(path), n, f"malformed JSON ({e.msg})"))
                    continue
                missing = [k for k in REQUIRED if k not in row] if isinstance(row, dict) else list(REQUIRED)
                if missing:
                    problems.append(RowProblem(str(path), n, f"missing field(s) {missing}"))
                    continue
                row["config"] = with_added_keys(row["config"])  # keys added since it was written: what it ran
                rows.append(row)
    return rows, problems


def has_row(results_dir: Path, ablation: str, kind: str, preset: str, chash: str, seed: int,
            digest: str | None = None) -> bool:
    """Whether an ok row of this key exists (``digest`` None: rows that record no data digest, as analyses)."""
    rows, _ = read_rows(results_dir, ablation)
    return any(row_key(r) == (ablation, kind, preset, chash, seed, digest) and r["status"] == "ok" for r in rows)
