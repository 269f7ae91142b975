"""Result rows: one JSON line per run, with provenance, appended atomically under ``results/rows/``.

A row is written with a single ``write`` of one line while holding an exclusive ``fcntl`` lock on the file, so
many SLURM array tasks can finish at once without interleaving; a row whose key (``row_key``: ablation, kind,
preset, config hash, seed, data digest) is already present with status ok is not written again, so a requeued
task never duplicates its row. A half-written last line (a node that died mid-write) is moved to
``<ablation>.jsonl.quarantine`` before the next row is appended, so every complete row stays readable.
``read_rows`` returns the valid rows and reports every other line (malformed JSON, a missing field or a wrong type,
an unknown status, a row of another ablation) by file and line number; ``drop_superseded`` leaves out the failures
of cells that have since succeeded; ``has_row`` answers from ``ok_keys``, which reads a rows file once per change.
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

from ..config import (Config, ConfigError, config_hash, flatten, from_dict, run_hash, to_dict,
                      with_added_keys)
from ..files import write_error
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
    the digest that is part of the row's key: the content digest of the data (``derived["data_digest"]``: names and
    bytes of the training and evaluation images, or the in-memory arrays; ``digest_of: "content"``). Rows written
    before it recorded the digest of the training file names only (``derived["index_digest"]``), kept as it was.
    ``start`` (``start_state`` when the run started) is the provenance the row names; see ``provenance``."""
    content = derived.get("data_digest")
    data = {"dataset": cfg.data.dataset, "N": derived.get("N"), "image_size": cfg.data.image_size,
            "digest": content or derived.get("index_digest")}
    if content:
        data["digest_of"] = "content"
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
    the same cell, and the data's digest tells another dataset (or another selection, or other content) apart."""
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
    half-written last line left by a killed writer is quarantined first (``_repair_tail``). A write that fails (a
    full disk: ENOSPC, EDQUOT; a read-only folder: EROFS) cuts what it wrote of the line and raises
    ``files.WriteError`` naming the rows file and the reason.
    """
    path = rows_file(results_dir, row["ablation"])
    line = (json.dumps(row, sort_keys=True, default=str) + "\n").encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b", buffering=0) as f:  # unbuffered: what a failed write left is known and cut
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
                try:
                    rest = memoryview(line)
                    while rest:
                        rest = rest[f.write(rest):]
                    os.fsync(f.fileno())
                except OSError:
                    f.truncate(len(data))  # the part of the line written before the disk filled: cut again
                    raise
                return True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    except OSError as e:  # a full disk, a read-only folder, a quota: the file and the reason, one line
        err = write_error(path, e)
        if err is None:  # not the disk: a bug, as it was
            raise
        raise err from e


@dataclass
class RowProblem:
    file: str
    line: int
    reason: str
    key: tuple | None = None  # the cell the line names, where it names one (a row that is not valid)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


REQUIRED = ("ablation", "preset", "config_hash", "seed", "status", "metrics", "config")
# ok and failed: a run; skipped: an analysis point not measured (scaling's arms beyond memory, see suite/analysis)
STATUSES = ("ok", "failed", "skipped")
# the type of every field the suite reads from a row (None: the field may be null)
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "ablation": (str,), "preset": (str,), "config_hash": (str,), "seed": (int,), "status": (str,),
    "metrics": (dict,), "config": (dict,), "kind": (str,), "cell": (dict, type(None)), "error": (str, type(None)),
    "derived": (dict, type(None)), "data": (dict, type(None)), "time": (str, type(None)),
}


def _names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else {"str": "a string", "int": "an integer",
                                                         "dict": "an object"}[t.__name__] for t in types)


def row_problem(row: Any, ablation: str | None = None) -> str | None:
    """Why a parsed line is not a valid row of ``ablation``'s rows file (None: it is one).

    A valid row has every ``REQUIRED`` field, each field of ``FIELD_TYPES`` of its type (a seed is an integer, not
    "7" nor true), a status of ``STATUSES`` and, read from ``<ablation>.jsonl``, that ablation: a row of another
    ablation appended to the file is never one of its values."""
    if not isinstance(row, dict):
        return f"not a row (a JSON {type(row).__name__}, not an object)"
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        return f"missing field(s) {missing}"
    for k, types in FIELD_TYPES.items():
        v = row.get(k, None if type(None) in types else types[0]())
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            return f"field {k!r} is {json.dumps(v, default=str)[:60]}, not {_names(types)}"
    if any(not isinstance(v, dict) for v in row["config"].values()):
        return "field 'config' is not a config (each section an object)"
    if row["status"] not in STATUSES:
        return f"status {row['status']!r} is not one of {', '.join(STATUSES)}"
    if not isinstance(row_digest(row), (str, type(None))):
        return "its data digest is not a string"
    if ablation is not None and row["ablation"] != ablation:
        return (f"a row of ablation {row['ablation']!r} in the rows file of {ablation!r} (each ablation's rows "
                "are only read from its own file)")
    return None


def _key_of(row: Any) -> tuple | None:
    """The cell a line that is not a valid row names, where it names one (for saying why that cell runs again)."""
    try:
        key = row_key(row)
        hash(key)
        return key
    except Exception:  # noqa: BLE001 - a line too broken to name a cell
        return None


def scan_rows(path: Path, ablation: str | None = None):
    """(line number, row, None) for each valid row of a rows file and (line number, None, RowProblem) for each
    other non-blank line. ``ablation``: the file's ablation (default: its name)."""
    ablation = Path(path).name.removesuffix(".jsonl") if ablation is None else ablation
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as e:
                yield n, None, RowProblem(str(path), n, f"malformed JSON ({e.msg})")
                continue
            why = row_problem(row, ablation)
            if why is None:
                yield n, row, None
            else:
                yield n, None, RowProblem(str(path), n, why, _key_of(row))


def read_rows(results_dir: Path = DEFAULT_RESULTS, ablation: str | None = None
              ) -> tuple[list[dict[str, Any]], list[RowProblem]]:
    """All valid rows (of one ablation, or all) and the problems found, by file and line.

    Each file is ``<ablation>.jsonl`` and gives only rows of that ablation; a line that is not a valid row
    (``row_problem``: malformed JSON, a missing field, a wrong type, an unknown status, another ablation's row) is
    a problem, never a row."""
    rows, problems = [], []
    folder = Path(results_dir) / "rows"
    files = sorted(folder.glob("*.jsonl")) if ablation is None else [rows_file(results_dir, ablation)]
    for path in files:
        if not path.is_file():
            continue
        for _, row, problem in scan_rows(path):
            if problem is not None:
                problems.append(problem)
                continue
            row["config"] = with_added_keys(row["config"])  # keys added since it was written: what it ran
            rows.append(row)
    return rows, problems


def drop_superseded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows without the failures of a cell that also has an ok row (a rerun that succeeded after the failure:
    the failure no longer explains anything). Order is kept; ok rows and failures of cells without an ok row stay."""
    ok = {row_key(r) for r in rows if r.get("status") == "ok"}
    return [r for r in rows if r.get("status") != "failed" or row_key(r) not in ok]


# rows file -> (its stat signature, the keys of its ok rows, its problems): read again only when it changed
_DONE: dict[str, tuple[tuple, frozenset, list[RowProblem]]] = {}


def _done_index(results_dir: Path, ablation: str) -> tuple[frozenset, list[RowProblem]]:
    path = rows_file(results_dir, ablation)
    try:
        st = path.stat()
    except OSError:
        return frozenset(), []
    sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    name = str(path.resolve())
    if name not in _DONE or _DONE[name][0] != sig:
        keys, problems = set(), []
        for _, row, problem in scan_rows(path, ablation):
            if problem is not None:
                problems.append(problem)
            elif row["status"] == "ok":
                keys.add(row_key(row))
        _DONE[name] = (sig, frozenset(keys), problems)
    return _DONE[name][1], _DONE[name][2]


def ok_keys(results_dir: Path, ablation: str) -> frozenset:
    """The keys (``row_key``) of the ok rows of an ablation's rows file. The file is read once and again only
    when it has changed (its inode, size or modification time), so the done-check of a 10,000-task sweep reads it
    once, not per task. Rows files only grow (``append_row``); a hand edit that keeps the size within one tick of
    the filesystem's clock would read as unchanged until the next row lands."""
    return _done_index(Path(results_dir), ablation)[0]


def row_problems(results_dir: Path, ablation: str) -> list[RowProblem]:
    """The lines of an ablation's rows file that are not valid rows (read with ``ok_keys``, from the same cache)."""
    return _done_index(Path(results_dir), ablation)[1]


def problem_notes(results_dir: Path, ablation: str, keys: set[tuple], most: int = 20) -> list[str]:
    """One line per line of an ablation's rows file that is not a valid row (at most ``most``, then a count), each
    saying, where it names one of ``keys`` (the tasks about to run) without an ok row, that its cell runs again."""
    done = ok_keys(results_dir, ablation)
    out = []
    for p in row_problems(results_dir, ablation):
        again = p.key is not None and p.key in keys and p.key not in done
        out.append(f"{p}" + ("; its cell has no valid ok row, so it runs again" if again else ""))
    return out[:most] + ([f"... and {len(out) - most} more such line(s)"] if len(out) > most else [])


def has_row(results_dir: Path, ablation: str, kind: str, preset: str, chash: str, seed: int,
            digest: str | None = None) -> bool:
    """Whether an ok row of this key exists (``digest`` None: rows that record no data digest, as analyses)."""
    return (ablation, kind, preset, chash, seed, digest) in ok_keys(results_dir, ablation)


# ------------------------------------------------------------------------------------------------ shared runs
def _run_key(row: dict[str, Any]) -> tuple | None:
    """(kind, preset, run hash, seed, data digest) of an ok row that ran its experiment itself (None for a shared
    row, a failure, or a config this code cannot read)."""
    if row.get("status") != "ok" or row.get("shared_from"):
        return None
    try:
        cfg = from_dict(with_added_keys(row["config"]), where=f"row of {row.get('ablation')}")
    except (ConfigError, TypeError, ValueError):
        return None
    return (row.get("kind", "pic"), row["preset"], run_hash(cfg), row["seed"], row_digest(row))


def share_sources(results_dir: Path, tasks) -> dict[tuple, dict[str, Any]]:
    """For each task without a row of its own (``task.done()``), the row of another ablation under the same
    results folder that ran the same experiment: the same kind, preset, seed and data digest, and a config that
    differs at most in ``LAUNCH_ONLY_KEYS`` (``run_hash``). Keys are ``task.key``; tasks with no such row are absent.

    Only rows that ran themselves are sources (a shared row is never shared again); where several ablations ran it,
    the first file in name order gives it, its last ok row in file order."""
    todo = [t for t in tasks if not t.done()]
    if not todo:
        return {}
    mine = {t.ablation for t in todo}
    index: dict[tuple, dict[str, Any]] = {}
    for path in sorted((Path(results_dir) / "rows").glob("*.jsonl")):
        if path.name.removesuffix(".jsonl") in mine:
            continue
        found: dict[tuple, dict[str, Any]] = {}
        for _, row, problem in scan_rows(path):
            key = None if problem is not None else _run_key(row)
            if key is not None:
                found[key] = row
        for key, row in found.items():
            index.setdefault(key, row)
    out = {}
    for t in todo:
        src = index.get((t.kind, t.preset, run_hash(t.cfg), t.cfg.run.seed, t.digest))
        if src is not None:
            out[t.key] = src
    return out


def shared_row(src: dict[str, Any], task) -> dict[str, Any]:
    """``task``'s row, taken from ``src`` (a row of another ablation that ran the same experiment, see
    ``share_sources``): the run's metrics, derived figures, timing, data and provenance (git sha, machine, time)
    as ``src`` has them, under this task's ablation, cell, config and config hash. ``shared_from`` names the row it
    came from (ablation, cell, config hash, time, curve) and the config keys in which the two differ;
    ``shared_time`` is when it was shared."""
    row = json.loads(json.dumps(src))
    cfg = to_dict(task.cfg)
    mine, theirs = flatten(cfg), flatten(with_added_keys(src["config"]))
    differs = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    curve = curve_file(Path(task.results_dir), src)
    row.update({
        "ablation": task.ablation, "cell": task.cell, "config": cfg, "config_hash": config_hash(task.cfg),
        "shared_from": {"ablation": src["ablation"], "cell": src.get("cell"), "config_hash": src["config_hash"],
                        "time": src.get("time"),
                        "curve": str(curve.relative_to(Path(task.results_dir))) if curve else None,
                        "differs": {k: [mine.get(k), theirs.get(k)] for k in differs}},
        "shared_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    return row


def curve_file(results_dir: Path, row: dict[str, Any]) -> Path | None:
    """The loss curve of a row's run under ``results_dir``: ``curves/<ablation>/<kind>-<preset>-<config hash>-
    <digest>-s<seed>.jsonl``, of the row it was shared from for a shared row; None where there is none."""
    shared = row.get("shared_from") or {}
    if shared.get("curve"):
        path = Path(results_dir) / shared["curve"]
        return path if path.is_file() else None
    ablation, chash = shared.get("ablation", row["ablation"]), shared.get("config_hash", row["config_hash"])
    hits = sorted((Path(results_dir) / "curves" / ablation).glob(
        f"{row.get('kind', 'pic')}-{row['preset']}-{chash}-*-s{row['seed']}.jsonl"))
    return hits[0] if hits else None

def load_rows(results_dir: Path = DEFAULT_RESULTS, ablation: str | None = None):
    """The rows of one ablation (or of all) as a pandas DataFrame, one line per result row, for notebooks:

        from pic_bench.report import load_rows
        df = load_rows("results", "negatives_k")
        df.groupby(["preset", "cell.pic.K"])["metrics.knn_top1"].agg(["mean", "std", "count"])

    Nested fields are flattened with dots: ``config.optim.base_lr``, ``metrics.knn_top1``, ``derived.N``,
    ``data.digest`` (``row_digest``: older rows have it in ``derived.index_digest``), ``machine.cpu_capability``,
    ``versions.torch``, ``cell.pic.K``; provenance (``git_sha``, ``git_dirty``, ``device``, ``host``, ``time``) stays
    at the top level, lists stay lists. Rows come from ``read_rows``, in file order; each line it cannot read is a
    ``warnings.warn`` naming its file and line, and is listed in ``df.attrs["problems"]`` ("<file>:<line>: <reason>"),
    never dropped silently.
    """
    import warnings

    import pandas as pd

    rows, problems = read_rows(results_dir, ablation)
    for p in problems:
        warnings.warn(f"{p} (left out of the DataFrame)", stacklevel=2)
    # data.digest for every row: older rows record it as derived.index_digest (``row_digest``)
    rows = [{**r, "data": {**(r.get("data") or {}), "digest": row_digest(r)}} for r in rows]
    df = pd.json_normalize(rows, sep=".") if rows else pd.DataFrame()
    df.attrs["problems"] = [str(p) for p in problems]
    return df
