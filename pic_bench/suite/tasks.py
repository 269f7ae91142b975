"""One task of an ablation (a sweep cell at one seed) and how it runs in this process.

``Task`` is what ``run.expand`` produces and what ``launch`` pickles into a SLURM array task; ``run_task`` trains
and evaluates one task and appends its row; ``run_local`` runs a list of tasks one after another. This module sits
below both ``run`` (the command line) and ``launch`` (SLURM), so neither has to import the other.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
import traceback
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import Config, config_hash
from ..data import sources as data_sources
from ..data.probe import probe
from ..files import WriteError, write_atomic, write_error
from ..pic.checkpoint import move_aside as _move_aside, unreadable_file
from ..report.results import DEFAULT_RESULTS, append_row, has_row, make_row, start_state
from ..report.timing import measure


# data config (and the seed, for data drawn from it) -> (the digest of its content, N, evaluation images,
# channels), per process
_DATA: dict[tuple, tuple[str, int, int, int]] = {}


def _data(cfg: Config) -> tuple[str, int, int, int]:
    """What a config's data is, loaded once per distinct data config in this process: a sweep over 20 cells x 3
    seeds lists or reads its dataset once, not 60 times."""
    # only the synthetic source draws its images from the run seed; others are the same at every seed
    key = (cfg.data, cfg.run.seed if cfg.data.dataset == "synthetic" else None)
    if key not in _DATA:
        s = data_sources.load_source(cfg.data, cfg.run.seed)
        _DATA[key] = (s.digest, s.N, len(s.test), s.channels)
    return _DATA[key]


def data_digest(cfg: Config) -> str:
    """The identity of the data a config trains and evaluates on (``Source.digest``: for a folder the names and bytes
    of its training images and evaluation split, for the in-memory datasets their arrays)."""
    return _data(cfg)[0]


def data_sizes(cfg: Config) -> tuple[int, int, int]:
    """(N training instances, images of the evaluation split, channels) of a config's data, from the same load as
    its digest (for a folder: the cached listing and file hashes, no image is decoded)."""
    return _data(cfg)[1:]


def short_digest(digest: str | None, n: int = 8) -> str:
    """The first n hex digits of a digest, for file and task names (a non-hex digest is hashed first)."""
    d = digest or ""
    if len(d) < n or any(c not in "0123456789abcdef" for c in d[:n]):
        d = hashlib.sha256(d.encode()).hexdigest()
    return d[:n]


def dedupe(tasks: list["Task"]) -> list["Task"]:
    """The tasks with duplicate keys removed (first kept), with a warning naming them: two tasks with one key
    would run the same experiment twice and share a checkpoint and a row."""
    seen: dict[tuple, Task] = {}
    dups = []
    for t in tasks:
        if t.key in seen:
            dups.append(t)
        else:
            seen[t.key] = t
    if dups:
        names = ", ".join(f"{t.name} {t.cell or 'default'}" for t in dups[:5]) + (" ..." if len(dups) > 5 else "")
        print(f"warning: {len(dups)} task(s) resolve to the same experiment as an earlier one and are dropped "
              f"(same kind, preset, config, data and seed): {names}", file=sys.stderr)
    return list(seen.values())


@dataclass(frozen=True)
class Task:
    """One array task: a cell of an ablation at one seed (picklable, for submitit).

    Its identity (``key``) is the experiment: kind, preset, config hash (paths left out), the content digest of the
    data it trains and evaluates on (``data_digest``), and the seed. The same bytes at another path are the same
    task; other bytes under the same names are another.
    """

    ablation: str
    preset: str
    cell: dict[str, Any]
    cfg: Config
    kind: str = "pic"  # pic | baseline_random | baseline_pixels
    results_dir: str = str(DEFAULT_RESULTS)
    checkpoint_dir: str = "checkpoints"
    # what this task runs of a pic cell: "all" (train, then evaluate and write the row), "train" (train, keep the
    # backbone and the final checkpoint, mark it trained; no row) or "eval" (evaluate a trained cell, write the
    # row). Not part of the identity: the train and eval tasks of a cell are one experiment with one row.
    stage: str = "all"

    @functools.cached_property
    def digest(self) -> str:
        return data_digest(self.cfg)

    @functools.cached_property
    def chash(self) -> str:
        """``config_hash(self.cfg)``, once per task (a 10,000-task sweep asks for its key and name ~7 times each)."""
        return config_hash(self.cfg)

    @property
    def key(self) -> tuple:
        """The same tuple as ``results.row_key`` of this task's row."""
        return (self.ablation, self.kind, self.preset, self.chash, self.cfg.run.seed, self.digest)

    @property
    def name(self) -> str:
        return (f"{self.ablation}/{self.kind}/{self.preset}/{self.chash}-{short_digest(self.digest)}"
                f"/s{self.cfg.run.seed}")

    @property
    def stem(self) -> str:
        """File stem naming every part of the key (the ablation and its folder aside)."""
        return (f"{self.kind}-{self.preset}-{config_hash(self.cfg)}-{short_digest(self.digest)}"
                f"-s{self.cfg.run.seed}")

    @property
    def checkpoint(self) -> Path:
        # every part of the key, so a checkpoint belongs to exactly one task
        return Path(self.checkpoint_dir) / self.ablation / self.preset / (
            f"{self.kind}-{config_hash(self.cfg)}-{short_digest(self.digest, 16)}-s{self.cfg.run.seed}.pt")

    @property
    def curve(self) -> Path:
        return Path(self.results_dir) / "curves" / self.ablation / f"{self.stem}.jsonl"

    @property
    def timing_file(self) -> Path:
        """The timing segments (``report.timing``) of a training stopped by preemption, for the resumed run's row."""
        return self.checkpoint.with_name(self.checkpoint.stem + "-timing.json")

    @property
    def trained_marker(self) -> Path:
        """Written when training has finished (beside the final checkpoint): the training metrics, measured in the
        process that trained, so an evaluation in another process or job reports them rather than its own."""
        return self.checkpoint.with_name(self.checkpoint.stem + "-trained.json")

    def done(self) -> bool:
        return has_row(Path(self.results_dir), *self.key)

    def trained(self) -> bool:
        """Training has finished and its final checkpoint is there for the evaluation (a pic cell only)."""
        return self.kind == "pic" and self.trained_marker.is_file() and self.checkpoint.is_file()

    def at(self, stage: str) -> "Task":
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        return dataclasses.replace(self, stage=stage)


STAGES = ("all", "train", "eval")


def read_trained(task: Task) -> dict[str, Any] | None:
    """The trained marker's content ({"step", "metrics", "backbone", "time"}), or None if absent or unreadable."""
    try:
        return json.loads(task.trained_marker.read_text())
    except (OSError, ValueError):
        return None


def read_trained_or_move(task: Task) -> tuple[dict[str, Any] | None, str]:
    """``read_trained`` for a run, and what became of an unreadable marker ("" when none): a marker that exists
    but cannot be read (not JSON, or not a marker's fields) is named, moved aside (``.corrupt-<n>``) and None is
    returned, so the training half runs again (from the final checkpoint, when there is one) instead of failing
    every rerun."""
    path = task.trained_marker
    if not path.is_file():
        return None, ""
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict):
            raise ValueError("not a trained marker (no metrics)")
        return record, ""
    except (ValueError, UnicodeDecodeError) as e:
        aside = move_aside(path)
        what = f"trained marker {path} cannot be read ({type(e).__name__}: {_first_line(e)}); moved to {aside}"
        print(f"warning: {what}; the cell's training half runs again", file=sys.stderr)
        return None, what
    except OSError:
        return None, ""


def write_trained(task: Task, **record: Any) -> None:
    """The trained marker (atomically): ``record`` (step, metrics, backbone, bad, derived) and the time."""
    path = task.trained_marker
    text = json.dumps({**record, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, default=float).encode()
    write_atomic(path, lambda f: f.write(text), tmp=path.with_suffix(".tmp"))


def start_file(task: Task) -> Path:
    """Where a training task keeps the provenance of its start, beside its checkpoint (deleted with it)."""
    return task.checkpoint.with_name(task.checkpoint.stem + "-start.json")


def task_start(task: Task) -> dict[str, Any]:
    """The provenance of the task's start (``results.start_state``: git sha, dirty flag, versions), which its row
    names. A training task keeps the first one in ``start_file``, so a run resumed after a preemption, or evaluated
    by a later job, still names the commit its training started on; the file goes with the checkpoint. A run that
    starts from step 0 (no checkpoint, no trained marker) starts afresh and replaces a file left by an earlier one."""
    if task.kind != "pic":
        return start_state()
    path = start_file(task)
    if task.checkpoint.is_file() or task.trained_marker.is_file():
        try:
            kept = json.loads(path.read_text())
            if isinstance(kept, dict) and "git_sha" in kept:
                return kept
        except (OSError, ValueError):
            pass  # a checkpoint from before this file existed, or one cut short by a kill: this start counts
    state = start_state()
    if task.stage == "eval":
        return state  # nothing trained this cell: the task fails and writes no start for a later training
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)
    return state


class NotTrained(RuntimeError):
    """An evaluation task of a cell whose training has not finished (no trained marker or no final checkpoint)."""


def _failed_row(task: Task, derived: dict[str, Any], device, e: BaseException, metrics: dict | None = None,
                start: dict[str, Any] | None = None) -> dict[str, Any]:
    error = str(e) if metrics is not None else f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
    if isinstance(e, WriteError):  # the file and the reason; not the traceback of torch's own wrapper
        error = f"{type(e).__name__}: {e}"
    row = make_row(task.ablation, task.preset, task.cell, task.cfg, "failed", metrics or {}, derived, device,
                   error=error, kind=task.kind, start=start)
    if task.kind == "pic" and task.curve.is_file():
        row["curve"] = os.path.relpath(task.curve, task.results_dir)  # the loss up to the failure
    try:
        append_row(row, Path(task.results_dir))
    except WriteError as w:  # the disk that failed the run may refuse its row too: said with the run's error
        e.add_note(f"its failed row was not written either: {w}")
        return row
    try:
        e.failed_row = True  # read by run_local: a failure says whether it left a row
    except AttributeError:
        pass
    return row


def _known_digest(task: Task) -> dict[str, Any]:
    """What a failed row can say about its data when the data could not be loaded: the task's digest if known."""
    try:
        return {"data_digest": task.digest}
    except Exception:  # noqa: BLE001 - the data is what failed; the row records the error
        return {}


def move_aside(path: Path) -> Path:
    """Renames ``path`` to the first free ``<path>.corrupt-<n>`` (kept for inspection, never deleted)."""
    return _move_aside(path)


class CheckpointError(RuntimeError):
    """A checkpoint that is kept but cannot be used here: it reads but does not restore, or it is the final
    checkpoint of an evaluation task and cannot be read. The message names the file and the error."""


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def resume(trainer, ckpt: Path, move: bool = True, final: bool = False):
    """The trainer resumed from ``ckpt`` if it is a readable checkpoint of this run.

    A file that cannot be *read* (cut short by a full disk, zero bytes, garbage: ``checkpoint.unreadable_file``)
    is, with a warning naming it, moved aside (``move``: rank 0 only) and a fresh trainer starts at step 0;
    otherwise it would fail every later run of the cell with a raw unpickling error that never names the file.
    ``final`` (an evaluation task's trained checkpoint) is never moved aside: ``CheckpointError``. A file that
    reads but does not restore (a shape, a key, an RNG state: a bug or another run's file, not corruption) is
    kept and raises ``CheckpointError`` naming it and the error. A checkpoint whose recorded data digest is not
    the data's is refused (``train.DataMismatch`` naming the file and both digests), not moved aside."""
    from ..pic.train import DataMismatch

    if not ckpt.is_file():
        return trainer
    try:
        sd = trainer.read(ckpt)
    except Exception as e:  # noqa: BLE001 - sorted below: unreadable bytes, or anything else
        if not unreadable_file(e):
            raise CheckpointError(f"checkpoint {ckpt} cannot be loaded ({type(e).__name__}: {_first_line(e)}); "
                                  f"it is kept as it is") from e
        if final:
            raise CheckpointError(f"the final checkpoint {ckpt} of a trained cell cannot be read "
                                  f"({type(e).__name__}: {_first_line(e)}); an evaluation task does not retrain: "
                                  f"it is kept as it is") from e
        aside = move_aside(ckpt) if move and ckpt.is_file() else None
        print(f"warning: checkpoint {ckpt} cannot be read ({type(e).__name__}: {_first_line(e)})"
              + (f"; moved to {aside}" if aside else "") + "; the cell restarts from step 0", file=sys.stderr)
        return trainer
    try:
        trainer.load(ckpt, sd)
    except DataMismatch as e:  # readable, but of other data: kept where it is, and the run refused
        raise DataMismatch(f"{ckpt}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a readable file that does not restore is not corrupt: kept, named
        raise CheckpointError(f"checkpoint {ckpt} reads but cannot be restored ({type(e).__name__}: "
                              f"{_first_line(e)}); it is kept as it is (not moved aside): fix the cause, or move "
                              f"it away yourself to retrain the cell from step 0") from e
    print(f"resuming {ckpt} from step {trainer.step}", file=sys.stderr)
    return trainer


class CurveWriter:
    """A run's loss curve: every ``log_every`` steps one JSON line {"step", "loss", "lr", "wall_s"} appended to the
    task's curve file, and (``echo``) a line "step N/M loss x" on stderr, so SLURM logs show progress.

    Our interpretation: ``loss`` is the mean training loss of the steps since the previous line (a smoother
    signal than one step's), ``lr`` the learning rate of the line's step, ``wall_s`` the training wall time so far
    over every resumed segment. On resume, lines past the checkpoint's step are dropped (those steps run again);
    a run from step 0 starts a fresh file.
    """

    def __init__(self, path: Path, trainer, echo: bool = True, write: bool = True):
        self.path, self.trainer, self.echo, self.write = Path(path), trainer, echo, write
        self.every = max(1, trainer.cfg.run.log_every)
        self.last = trainer.step - trainer.step % self.every  # the step of the last line kept on a resume
        self.wall0 = trainer.meters.wall_s  # wall time of earlier segments
        self.t0 = time.perf_counter()
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            kept = []
            if trainer.step and self.path.is_file():
                for line in self.path.read_text().splitlines():
                    try:
                        if json.loads(line)["step"] <= trainer.step:
                            kept.append(line)
                    except (ValueError, KeyError, TypeError):
                        pass  # a line cut by a kill: dropped with the steps after the checkpoint
            text = "".join(line + "\n" for line in kept).encode("utf-8")
            write_atomic(self.path, lambda f: f.write(text))

    def __call__(self, step: int, steps: int, loss: float) -> None:
        if step % self.every and step != steps:
            return
        losses = self.trainer.meters.losses[self.last:step]
        mean = sum(losses) / len(losses) if losses else loss
        self.last = step
        line = {"step": step, "loss": mean, "lr": float(self.trainer.lr[step - 1]),
                "wall_s": round(self.wall0 + time.perf_counter() - self.t0, 3)}
        if self.write:
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(line) + "\n")
            except OSError as e:  # a full disk: the file named, not a bare "[Errno 28]"
                err = write_error(self.path, e)
                if err is None:  # not the disk: a bug, as it was
                    raise
                raise err from e
        if self.echo:
            print(f"step {step}/{steps} loss {mean:.4f} lr {line['lr']:.4g}", file=sys.stderr, flush=True)


def read_curve(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a curve file (a line being written is left out)."""
    out = []
    try:
        text = Path(path).read_text()
    except OSError:
        return out
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def read_segments(task: Task) -> list[dict[str, Any]]:
    """The timing segments of the task's training before its last preemption ([] if none or unreadable)."""
    try:
        segs = json.loads(task.timing_file.read_text())
    except (OSError, ValueError):
        return []
    return [x for x in segs if isinstance(x, dict)] if isinstance(segs, list) else []


def run_task(task: Task, should_stop: Callable[[], bool] = lambda: False,
             progress: Callable[[int, int, float], None] | None = None, echo: bool = True) -> dict[str, Any]:
    """Runs one task in this process and appends its row (ok or failed). Returns the row.

    Resumes from the task's checkpoint if one exists (an unreadable one is moved aside and the cell restarts);
    ``should_stop`` (preemption) saves one and raises ``train.Preempted``. A failure (non-finite loss, bad image,
    missing data, ...) writes a row marked failed and re-raises. The loss curve goes to ``task.curve`` (named in
    the row as ``row["curve"]``); ``echo`` also prints its lines on stderr.
    """
    from ..eval.evaluate import baseline_metrics, evaluate_run
    from ..pic.train import NonFiniteLoss, Preempted, Trainer

    cfg = task.cfg
    start = task_start(task)  # the row names the code as it was now, and says if it changed before the row
    if task.kind != "pic":
        device = cfg.run.device if cfg.run.device != "auto" else "cpu"
        try:
            source = data_sources.load_source(cfg.data, cfg.run.seed)
            # with skip, the images the evaluation leaves out are counted (with error it names the first itself)
            bad = probe(source, "skip") if cfg.data.on_bad_image == "skip" else {}
            metrics, derived = baseline_metrics(cfg, task.kind.removeprefix("baseline_"), source)
        except Exception as e:  # noqa: BLE001 - recorded before it propagates
            _failed_row(task, _known_digest(task), device, e, start=start)
            raise
        if bad:
            derived["bad_images"] = bad
            metrics["eval_skipped_images"] = sum(bad.values())
            metrics["skipped_images"] = metrics.get("skipped_images", 0) + metrics["eval_skipped_images"]
        row = make_row(task.ablation, task.preset, task.cell, cfg, "ok", metrics, derived, device, kind=task.kind,
                       start=start)
        append_row(row, Path(task.results_dir))
        return row
    from ..pic.train import derive_regime, reset_peak_memory, resolve_device

    ckpt = task.checkpoint
    marker, moved = read_trained_or_move(task) if task.trained() else (None, "")
    if task.stage == "eval" and marker is None:
        e = NotTrained(f"{task.name}: an evaluation task, but its training has not finished (" + (
            moved or f"no {task.trained_marker} or no {ckpt}") + "); running the same command again submits the "
                       "training")
        _failed_row(task, _known_digest(task), cfg.run.device, e, start=start)
        raise e
    reset_peak_memory(resolve_device(cfg.run.device))
    try:
        trainer = Trainer(cfg)
    except Exception as e:  # noqa: BLE001 - missing data and the like: recorded before it propagates
        _failed_row(task, _known_digest(task), cfg.run.device, e, start=start)
        raise
    try:
        # an unreadable image in train/ or val/ refuses the run now, not after training (data.on_bad_image=error);
        # a trained cell was probed by its training
        bad = marker["bad"] if marker and "bad" in marker else probe(trainer.source, cfg.data.on_bad_image)
    except Exception as e:  # noqa: BLE001 - recorded before it propagates
        _failed_row(task, {**trainer.derived, "index_digest": trainer.source.index_digest,
                           "data_digest": trainer.source.digest}, trainer.device, e,
                    start=start)
        raise
    try:
        trainer = resume(trainer, ckpt, final=task.stage == "eval")
    except CheckpointError as e:
        if (task.stage == "eval" and e.__cause__ is not None and unreadable_file(e.__cause__)
                and task.trained_marker.is_file()):
            # the marker names a checkpoint that cannot be read: moved aside, so that the next run of the
            # same command submits the training again, whose resume moves the checkpoint aside
            move_aside(task.trained_marker)
        _failed_row(task, {**trainer.derived, "index_digest": trainer.source.index_digest}, trainer.device, e,
                    start=start)
        raise
    trained_here = trainer.step < trainer.derived["steps"]  # False: only evaluation runs in this process
    derived = {**trainer.derived, "index_digest": trainer.source.index_digest, "data_digest": trainer.source.digest,
               "eval_split": trainer.source.eval_split, "regime": derive_regime(cfg, trainer.N)}
    if any(bad.values()):
        derived["bad_images"] = bad
    if marker is not None and not trained_here:
        # the row says what the training did (its resume, its job), not this evaluation's resume at the last step
        derived.update(marker.get("derived", {}))
        derived["evaluated_after_training"] = True  # in a later process or job than the one that trained
    elif trainer.step:
        derived["resumed_from_step"] = trainer.step
    curve = CurveWriter(task.curve, trainer, echo=echo, write=False)  # Trainer.train(curve=...) writes the file

    def on_step(step: int, steps: int, loss: float) -> None:
        curve(step, steps, loss)
        if progress:
            progress(step, steps, loss)

    try:
        earlier = read_segments(task) if trained_here and trainer.step else []  # before a preemption
        with measure(trainer.device) as segment:  # load and CPU share: whether its step times are the code's
            metrics = trainer.train(should_stop=should_stop, checkpoint=ckpt, progress=on_step,
                                    curve=task.curve if trained_here else None)
        if trained_here:
            derived["timing"] = {"segments": earlier + [segment]}
        if marker is not None and not trained_here:
            # step times, memory and loss as the training process measured them (this one only loaded it)
            metrics.update(marker["metrics"])
        from ..eval.backbone import save_backbone  # every trained backbone is kept, before evaluation can fail
        from ..eval.evaluate import Progress

        backbone_path = ckpt.with_name(ckpt.stem + "-backbone.pt")
        if not trainer.dist.is_main:
            backbone = None
        elif marker is not None and backbone_path.is_file():
            backbone = backbone_path
        else:
            backbone = save_backbone(trainer.model, cfg.model, trainer.source.channels, backbone_path)
        if trained_here or marker is None:
            trainer.save(ckpt)  # a kill during evaluation reruns from here and from evaluation's own progress file
            if trainer.dist.is_main:
                job = {k: os.environ[v] for k, v in (("slurm_job_id", "SLURM_ARRAY_JOB_ID"),
                                                     ("slurm_array_task_id", "SLURM_ARRAY_TASK_ID"),
                                                     ("slurm_job", "SLURM_JOB_ID")) if v in os.environ}
                kept = {k: derived[k] for k in ("resumed_from_step", "timing") if k in derived}
                write_trained(task, step=trainer.step, metrics=metrics, backbone=str(backbone) if backbone else None,
                              bad=bad, derived={**kept, **({"train_job": job} if job else {})})
        if task.stage == "train":
            return {"status": "trained", "name": task.name, "metrics": metrics,
                    "backbone": str(backbone) if backbone else None}
        eval_progress = Progress(ckpt.with_name(ckpt.stem + "-eval.pt"), dist=trainer.dist)
        t0 = time.perf_counter()
        metrics.update(evaluate_run(trainer, eval_progress))
        metrics["eval_wall_s"] = time.perf_counter() - t0
        if any(bad.values()):  # on_bad_image=skip: what the evaluation left out (train set and val split)
            metrics["eval_skipped_images"] = sum(bad.values())
            metrics["skipped_images"] = metrics.get("skipped_images", 0) + metrics["eval_skipped_images"]
        # peak_mem_*: the training loop's, from train() (read before evaluation) or from the trained marker
        row = make_row(task.ablation, task.preset, task.cell, cfg, "ok", metrics, derived, trainer.device,
                       start=start)
        row["curve"] = os.path.relpath(task.curve, task.results_dir)
        row["backbone"] = str(backbone) if backbone else None
    except Preempted:
        if trained_here and "segment" in locals():  # kept beside the checkpoint for the resumed run's row
            task.timing_file.write_text(json.dumps(earlier + [segment]))
        raise
    except NonFiniteLoss as e:
        trainer.save(ckpt.with_name(ckpt.stem + "-failed.pt"))
        _failed_row(task, derived, trainer.device, e, trainer.meters.summary(cfg.optim.batch_size), start=start)
        raise
    except Exception as e:  # noqa: BLE001 - any failure is recorded before it propagates
        _failed_row(task, derived, trainer.device, e, start=start)
        raise
    append_row(row, Path(task.results_dir))
    for done_with in (ckpt, task.trained_marker, task.timing_file, start_file(task)):
        if done_with.is_file():
            done_with.unlink()
    eval_progress.clear()
    return row


def run_local(tasks: list[Task], quiet: bool = False, fail_fast: bool = False) -> int:
    """Runs tasks one after another in this process, with a progress bar. Returns the exit code: 0 when every
    task has an ok row, 1 when some failed (each wrote its failed row; they are listed at the end) or a file could
    not be written, 2 when the data that identifies the tasks cannot be read (one ``error:`` line, before any work).

    A failed task does not stop the sweep (the healthy cells after it still run) unless ``fail_fast``; a write
    that fails (``files.WriteError``: a full disk, a read-only folder, a quota) stops it with one ``error:`` line
    naming the file and the reason, since every later task would fail the same way.
    """
    from tqdm import tqdm

    from ..pic.train import Preempted

    try:
        tasks = dedupe(tasks)
        todo = [t for t in tasks if not t.done()]
    except data_sources.DatasetError as e:  # the data cannot be read: no task can run; nothing is written
        print(f"error: {e}", file=sys.stderr)
        return 2
    if len(todo) < len(tasks):
        print(f"skipping {len(tasks) - len(todo)} task(s) whose row already exists", file=sys.stderr)
    failed: list[tuple[Task, str]] = []
    write_failed = False
    rowless = 0  # failures that wrote no failed row (an error before the task could write one)
    for i, task in enumerate(todo, 1):
        bar = tqdm(total=1, desc=f"[{i}/{len(todo)}] {task.kind} {task.cell or 'default'} s{task.cfg.run.seed}",
                   disable=quiet, leave=False, file=sys.stderr, mininterval=1.0)

        def progress(step, steps, loss, bar=bar):
            bar.total = steps
            bar.n = step
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            bar.refresh() if step == steps or step % 10 == 0 else None

        try:
            row = run_task(task, progress=progress, echo=False)  # the bar shows step and loss
        except (KeyboardInterrupt, Preempted):
            raise
        except WriteError as e:  # a full or read-only disk: every later task would fail the same way
            print(f"error: {task.name} {task.cell or 'default'}: {e}"
                  + "".join(f"; {n}" for n in getattr(e, "__notes__", []))
                  + " (stopping here: free space or fix the folder, then run the same command again)",
                  file=sys.stderr)
            write_failed = True
            break
        except Exception as e:  # noqa: BLE001 - its failed row is written; the sweep goes on
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            failed.append((task, why))
            rowless += not getattr(e, "failed_row", False)
            if isinstance(e, CheckpointError):  # a kept file the user must look at: named on an error: line
                print(f"error: {e}", file=sys.stderr)
            print(f"[{i}/{len(todo)}] {task.kind} {task.cell} seed {task.cfg.run.seed}: FAILED: "
                  f"{type(e).__name__}: {why}", file=sys.stderr)
            if fail_fast:
                print("stopping at the first failure (--fail-fast)", file=sys.stderr)
                break
            continue
        finally:
            bar.close()
        r = row["metrics"]
        print(f"[{i}/{len(todo)}] {task.kind} {task.cell} seed {task.cfg.run.seed}: "
              + ", ".join(f"{k} {r[k]:.2f}" for k in ("knn_top1", "linear_top1", "step_ms_median") if k in r),
              file=sys.stderr)
    if failed:
        wrote = ("each wrote a failed row" if not rowless else "none wrote a row" if rowless == len(failed)
                 else f"{len(failed) - rowless} wrote a failed row, {rowless} none")
        print(f"{len(failed)} task(s) failed ({wrote}; running the same command again retries them):",
              file=sys.stderr)
        for task, why in failed:
            print(f"  {task.name} {task.cell or 'default'}: {why}", file=sys.stderr)
        return 1
    return 1 if write_failed else 0
