"""Tables and plots rebuilt from result rows; never edited by hand.

    python -m pic_bench.tables                      # every ablation with rows under results/rows/
    python -m pic_bench.tables negatives_k          # one ablation
    python -m pic_bench.tables --results /tmp/res   # another results folder
    python -m pic_bench.tables /path/to/x.yaml      # the ablation of any file, by its `name`

Writes ``<results>/tables/<ablation>.md``, ``.csv`` and ``.tex``, and PNG plots beside them (``pic_bench.report.plots``).
An ablation given as a file is found by the file's ``name`` (its rows in ``<results>/rows/<name>.jsonl``) and
compared with the file's default cell; a bare name is looked up as ``ablations/<name>.yaml``. A name without
rows, or a file that does not exist, is an ``error:`` line and exit code 2, before anything is written.

The same rows always give the same table bytes.

Training ablations: one table row per (preset, device, kind, cell, config): mean +- std over seeds with n and the
individual values, the change against the ablation's default cell with a 95% confidence interval from seeds
paired with the default's, step time, throughput and peak memory, and the published reference beside our value
where the setting matches it (``pic_bench.reference``). Rows are averaged, and compared, only within one section:
the same preset, device, CPU capability (``row["machine"]["cpu_capability"]``; rows without it are "unrecorded",
a section of their own) and dataset digest (``row["data"]["digest"]``, or ``derived.index_digest`` in older
rows), because the same config and seed give other numbers on another machine (issue 13) and on other data. Each
section names its dataset, N and image size; the smoke preset's says it is a plumbing check. Cells that are the
same run in effect (K >= N: both use all N instances, e.g. K = 512 and K = 2048 at N = 256) are flagged with ‡;
where rows record |U| per step (``metrics.U_mean``), a cell's label shows the mean |U| beside its nominal K.
Rows that share a cell but differ in config hash are reported and kept apart; malformed lines and failed
runs are listed with their file and line. Analysis ablations (rows of kind ``visit_distance`` or ``scaling``,
see ``pic_bench.suite.analysis``) get their own layout.

The default cell: when ``default_cell`` in the ablation file equals one cell's overrides, every cell is compared
with that cell (``default_cell: {pic.K: 0}``). When it names only some of the swept keys, each cell is compared
with the cell that differs from it only there (``default_cell: {pic.correction: true}``: each K without the
correction against the same K with it).
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .. import reference
from ..config import canonical_cell
from .results import DEFAULT_RESULTS, read_rows

# Two-sided 95% Student t quantiles, df = 1..30 (beyond: 1.96).
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]

METRICS = ("knn_top1", "linear_top1")
COST = ("step_ms_median", "step_ms_p90", "images_per_s", "peak_mem_mib", "train_wall_s", "final_loss")
ANALYSIS_KINDS = ("visit_distance", "scaling")
ABLATIONS_DIR = Path(__file__).resolve().parents[2] / "ablations"


UNRECORDED = "unrecorded"
SECTION = ("preset", "device", "cpu_capability", "digest")  # what a table never averages or compares across


class TableError(ValueError):
    """No table can be built: an ablation without rows, a file that does not exist, a name that is not a file
    name. The message names it; ``main`` prints it as one ``error:`` line and exits 2."""


def capability_of(r: dict[str, Any]) -> str:
    """torch's CPU capability the row was computed with (helper D's ``row["machine"]``), or 'unrecorded'."""
    return str((r.get("machine") or {}).get("cpu_capability") or UNRECORDED)


def digest_of(r: dict[str, Any]) -> str:
    """The digest of the data the row ran on (``row["data"]``, else the older ``derived``): ``content:<hex>`` for
    rows that digest the data's content (issue 21), else the older digest of the instance list (names only), so
    that a table shows the two apart as it shows other data apart."""
    d = str((r.get("data") or {}).get("digest") or (r.get("derived") or {}).get("index_digest") or UNRECORDED)
    return f"content:{d}" if (r.get("data") or {}).get("digest_of") == "content" else d


def data_of(r: dict[str, Any]) -> tuple[str, Any, Any]:
    """(dataset, N, image size) of a row: ``row["data"]`` where written, else its config and derived values."""
    data, cfg = r.get("data") or {}, (r.get("config") or {}).get("data") or {}
    return (str(data.get("dataset", cfg.get("dataset", "?"))), data.get("N", (r.get("derived") or {}).get("N")),
            data.get("image_size", cfg.get("image_size")))


def section_of(t: dict[str, Any]) -> tuple:
    return tuple(t[k] for k in SECTION)


def t975(df: int) -> float:
    return T975[df - 1] if 1 <= df <= len(T975) else 1.96


def cell_label(cell: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in cell.items()) if cell else "default"


def mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else float("nan")


def paired_ci(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int]:
    """Mean of a[s] - b[s] over shared seeds and the half-width of its 95% t interval (nan for n < 2)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return float("nan"), float("nan"), 0
    d = np.array([a[s] - b[s] for s in seeds])
    if len(d) < 2:
        return float(d.mean()), float("nan"), 1
    return float(d.mean()), t975(len(d) - 1) * float(d.std(ddof=1)) / math.sqrt(len(d)), len(d)


def _fmt(x: Any, nd: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _count(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:,.0f}"


def _relative(path: str, results_dir: Path) -> str:
    """A row file's path relative to the results folder, so tables do not depend on where it lives."""
    try:
        return str(Path(path).resolve().relative_to(Path(results_dir).resolve()))
    except ValueError:
        return Path(path).name


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return canonical_cell(a) == canonical_cell(b)  # pic.recent at K = 0 plays no part


# --------------------------------------------------------------------------------------------- training tables
def aggregate(rows: list[dict[str, Any]], default_cell: dict[str, Any] | None = None,
              cell_order: list[dict[str, Any]] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Groups ok rows into table rows; returns (table rows, warnings). ``cell_order``: the file's cells, in order."""
    warnings: list[str] = []
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    hashes: dict[tuple, set[str]] = defaultdict(set)
    for r in rows:
        if r.get("status") != "ok":
            continue
        label = cell_label(r.get("cell") or {})
        base = (r["preset"], r.get("device", "?"), capability_of(r), digest_of(r), r.get("kind", "pic"), label)
        hashes[base].add(r["config_hash"])
        groups[base + (r["config_hash"],)].append(r)
    for base, hs in sorted(hashes.items()):
        if len(hs) > 1:
            warnings.append(f"cell '{base[5]}' ({base[4]}, preset {base[0]}, {base[1]}) has rows with "
                            f"{len(hs)} different configs ({', '.join(sorted(hs))}): reported apart, not averaged")
    out = []
    per_seed: dict[tuple, dict[str, dict[int, float]]] = {}
    for key in sorted(groups):
        preset, dev, cap, digest, kind, label, chash = key
        seen: dict[int, dict] = {}
        for r in groups[key]:  # one row per seed: the last one in file order wins (duplicates are reported)
            if r["seed"] in seen:
                warnings.append(f"cell '{label}' ({kind}, preset {preset}) seed {r['seed']} has more than one "
                                "row; the last is used")
            seen[r["seed"]] = r
        rs = [seen[s] for s in sorted(seen)]
        dataset, N, size = data_of(rs[0])
        t = {"preset": preset, "device": dev, "cpu_capability": cap, "digest": digest, "dataset": dataset, "N": N,
             "image_size": size, "kind": kind, "cell": label, "config_hash": chash, "n": len(rs),
             "seeds": [r["seed"] for r in rs], "cell_dict": rs[0].get("cell") or {}, "config": rs[0]["config"],
             "derived": rs[0].get("derived") or {}, "split": len(hashes[key[:6]]) > 1, "same_run": []}
        u = [r["metrics"]["U_mean"] for r in rs if "U_mean" in r["metrics"]]
        t["U_mean"] = float(np.mean(u)) if u else float("nan")
        for m in METRICS:
            vals = [r["metrics"][m] for r in rs if m in r["metrics"]]
            t[m] = vals
            t[m + "_mean"], t[m + "_std"] = mean_std(vals) if vals else (float("nan"), float("nan"))
        for m in COST:
            vals = [r["metrics"][m] for r in rs if m in r["metrics"]]
            t[m] = float(np.median(vals)) if vals else float("nan")
        per_seed[key] = {m: {r["seed"]: r["metrics"][m] for r in rs if m in r["metrics"]} for m in METRICS}
        if any((r.get("derived") or {}).get("eval_split") == "train" for r in rs):  # asked for, never silent
            warnings.append(f"cell '{label}' ({kind}, preset {preset}) was evaluated on its own training images "
                            "(data.eval_split=train): its accuracies are not held-out")
        out.append(t)
    _pair_with_default(out, per_seed, default_cell, warnings)
    _flag_same_runs(out)
    order = {repr(sorted(c.items())): i for i, c in enumerate(cell_order or [])}
    out.sort(key=lambda t: (section_of(t), t["kind"] != "pic", t["kind"],
                            order.get(repr(sorted(t["cell_dict"].items())), len(order)), _order(t), t["config_hash"]))
    return out, warnings


def _key(t: dict[str, Any]) -> tuple:
    return section_of(t) + (t["kind"], t["cell"], t["config_hash"])


def _flag_same_runs(table: list[dict[str, Any]]) -> None:
    """Sets ``same_run`` (the labels of the cells it shares its run with) on PIC cells that are the same run in
    effect: K >= N, so each uses all N instances, and their configs differ in nothing but the nominal K."""
    full = [t for t in table if t["kind"] == "pic" and isinstance(t["N"], int)
            and (t["config"].get("pic") or {}).get("K", 0) >= t["N"] > 0]
    for t in full:
        group = [o for o in full if section_of(o) == section_of(t)
                 and not config_difference(t["config"], o["config"], {"pic.K"})]
        if len(group) > 1:
            t["same_run"] = [o["cell"] for o in sorted(group, key=lambda o: o["config"]["pic"]["K"])]


def _pair_with_default(table: list[dict[str, Any]], per_seed: dict, default_cell: dict[str, Any] | None,
                       warnings: list[str]) -> None:
    """Fills delta_*, ci_*, paired_n_* and is_default of every PIC entry (see the module docstring)."""
    for t in table:
        t["is_default"] = False
        for m in METRICS:
            t["delta_" + m], t["ci_" + m], t["paired_n_" + m] = float("nan"), float("nan"), 0
    if default_cell is None:
        return
    warned = set()
    for t in table:
        if t["kind"] != "pic":
            continue
        peers = [r for r in table if section_of(r) == section_of(t) and r["kind"] == "pic"]
        exact = [r for r in peers if _same(r["cell_dict"], default_cell)]
        if exact:
            want = default_cell
        else:
            want = {**{k: v for k, v in t["cell_dict"].items()}, **default_cell}
            if set(want) != set(t["cell_dict"]):  # the default names a key this cell does not sweep
                continue
        refs = [r for r in peers if _same(r["cell_dict"], want)]
        if len(refs) != 1:
            if len(refs) > 1 and section_of(t) + (cell_label(want),) not in warned:
                warned.add(section_of(t) + (cell_label(want),))
                warnings.append(f"default cell '{cell_label(want)}' (preset {t['preset']}) has {len(refs)} configs: "
                                "no change against it is computed")
            continue
        ref = refs[0]
        t["is_default"] = ref is t
        if ref is t:
            continue
        differ = config_difference(t["config"], ref["config"], set(t["cell_dict"]) | set(ref["cell_dict"]))
        if differ:
            warnings.append(f"cell '{_label(t)}' (preset {t['preset']}) differs from its default "
                            f"'{_label(ref)}' beyond the cell's settings ({', '.join(differ[:4])}"
                            f"{', ...' if len(differ) > 4 else ''}): no change against it is computed")
            continue
        for m in METRICS:
            t["delta_" + m], t["ci_" + m], t["paired_n_" + m] = paired_ci(per_seed[_key(t)][m], per_seed[_key(ref)][m])


def config_difference(a: dict[str, Any], b: dict[str, Any], cell_keys: set[str]) -> list[str]:
    """Dotted keys where two resolved configs differ, leaving out the cells' own keys and what the config hash
    leaves out (the seed and other run settings, loader workers, the data folder)."""
    out = []
    for section in sorted(set(a) | set(b)):
        sa, sb = a.get(section) or {}, b.get(section) or {}
        for key in sorted(set(sa) | set(sb)):
            dotted = f"{section}.{key}"
            if dotted in cell_keys or (section == "run" and key != "deterministic") \
                    or dotted in ("data.workers", "data.root"):
                continue
            if sa.get(key, "<absent>") != sb.get(key, "<absent>"):
                out.append(dotted)
    return out


def _order(t: dict[str, Any]) -> tuple:
    return tuple((str(type(v).__name__), v if not isinstance(v, (list, dict)) else str(v))
                 for v in t["cell_dict"].values())


def _delta(t: dict[str, Any], m: str) -> str:
    if t.get("is_default") or math.isnan(t["delta_" + m]):
        return "—"
    ci = t["ci_" + m]
    n = t["paired_n_" + m]
    return f"{t['delta_' + m]:+.2f} ± {_fmt(ci)} (n={n})" if not math.isnan(ci) else f"{t['delta_' + m]:+.2f} (n={n})"


def _label(t: dict[str, Any]) -> str:
    split = f" [config {t['config_hash']}]" if t.get("split") else ""
    same = " ‡" if t.get("same_run") else ""
    u = t.get("U_mean", float("nan"))
    u = "" if math.isnan(u) else f" · mean |U| {u:,.1f}"
    return f"{t['cell']}{' (default)' if t.get('is_default') else ''}{same}{u}{split}"


def _md(text: str) -> str:
    """Text inside a markdown table cell: a '|' (as in |U|) would end the cell."""
    return text.replace("|", "\\|")


def _pm(mean: float, std: float) -> str:
    """mean ± std, or the value alone where one seed leaves no spread (the n column says so)."""
    return _fmt(mean) if math.isnan(std) else f"{_fmt(mean)} ± {_fmt(std)}"


def reference_lines(table: list[dict[str, Any]], refs: list[reference.Reference] | None = None) -> list[str]:
    """The reference beside our value for every PIC cell that ran its setting, else the PIC rows for context."""
    refs = reference.load() if refs is None else refs
    pic = [t for t in table if t["kind"] == "pic"]
    matched = [(t, r) for t, r in ((t, reference.match(t["config"], t["derived"], refs)) for t in pic) if r]
    probed = [t for t in pic if not any(t is m for m, _ in matched)
              and reference.match(t["config"], t["derived"], refs, any_protocol=True)]
    lines = ["## Published reference", ""]
    if probed:
        lines += ["Cells that ran the setting of a published number but were evaluated by the fast probe "
                  "(eval.protocol: probe, full-batch Adam on frozen, standardised features), not the official "
                  "linear evaluation, so they are not put beside it: "
                  + ", ".join(f"{t['preset']} {_md(_label(t))}" for t in probed)
                  + " (rerun with eval.protocol=linear_sgd).", ""]
    if matched:
        lines += [f"Cells that ran the setting of a published number (from {reference.SOURCE}) and were "
                  "evaluated by its protocol (eval.protocol: linear_sgd, the official linear evaluation: 100 "
                  "epochs of SGD on the frozen backbone, as bl0/PIC main_linear.py).",
                  "", "| preset | cell | n | our linear top-1 | reference top-1 | ours − reference | reference |",
                  "|---|---|---|---|---|---|---|"]
        for t, r in matched:
            diff = t["linear_top1_mean"] - r.top1
            lines.append(f"| {t['preset']} | {_md(_label(t))} | {t['n']} | "
                         f"{_pm(t['linear_top1_mean'], t['linear_top1_std'])} | {r.top1:.1f} | {diff:+.2f} | {r.method}, {r.epochs} epochs |")
        return lines + [""]
    lines += [f"Reference: ImageNet-1K ResNet-50 linear-probe numbers from {reference.SOURCE}, listed for context "
              "only: no matching setting reproduced here (theirs: ImageNet-1K, ResNet-50, multi-crop, the official "
              "sampler, all instances as negatives, 200-1600 epochs), so no difference is shown.", "",
              "| method | epochs | linear top-1 | top-5 |", "|---|---|---|---|"]
    lines += [f"| {r.method} | {r.epochs} | {r.top1:.1f} | {r.top5:.1f} |" for r in refs if r.is_pic]
    return lines + [""]


PAIRED = "mean of per-seed differences ± 95% t half-width (seeds paired, n pairs)"


def default_note(name: str, table: list[dict[str, Any]], default_cell: dict[str, Any] | None,
                 abl=None) -> str:
    """The sentence saying what Δ is measured against, or why it is not computed."""
    if default_cell is None:
        return (f"Δ: not computed: no ablation file named {name} was found (ablations/{name}.yaml); give the "
                f"file's path to compare with its default cell: `python -m pic_bench.tables path/to/file.yaml`.")
    if any(_same(t["cell_dict"], default_cell) for t in table if t["kind"] == "pic"):
        return f"Δ: change against the default cell ({cell_label(default_cell)}), {PAIRED}."
    if not default_cell:
        return f"Δ: not computed: {abl.path if abl is not None else name} names no default_cell."
    return f"Δ: change against the same cell with {cell_label(default_cell)}, {PAIRED}."


def _section_lines(ts: list[dict[str, Any]]) -> list[str]:
    """What a section ran: its dataset, N, image size and data digest; for smoke, that it is a plumbing check."""
    def values(key: str, fmt) -> str:
        vs = sorted({t[key] for t in ts if t[key] is not None}, key=str)
        return " / ".join(fmt(v) for v in vs) if vs else "?"

    n = values("N", lambda v: f"{v:,}" if isinstance(v, int) else str(v))
    px = values("image_size", str)
    digest = ts[0]["digest"]
    if digest.startswith("content:"):
        said = f"content digest (train and evaluation images) `{digest.removeprefix('content:')[:12]}`."
    else:
        said = "instance list digest " + (f"`{digest[:12]}`." if digest != UNRECORDED else "unrecorded.")
    lines = [f"Data: {values('dataset', str)}, N = {n} training images at {px} px; {said}", ""]
    if ts[0]["preset"] == "smoke":
        lines += [f"**A plumbing check**: the smoke preset takes {n} images at {px} px and a few steps to check "
                  "that every part runs end to end; its numbers mean nothing about PIC.", ""]
    return lines


def _same_run_lines(ts: list[dict[str, Any]]) -> list[str]:
    groups = sorted({tuple(t["same_run"]) for t in ts if t["same_run"]})
    return [f"‡ the same run in effect: {', '.join(g)} (K ≥ N = "
            f"{next(t['N'] for t in ts if t['cell'] == g[0]):,}: each uses all N instances, and their configs "
            "differ in nothing but the nominal K)." for g in groups] + ([""] if groups else [])


def to_markdown(name: str, table: list[dict[str, Any]], warnings: list[str], problems: list[str],
                reference: list[str] | None = None, plots: dict[tuple, str] | None = None,
                default: str | dict[str, str] = f"Δ: change against the default cell, {PAIRED}.") -> str:
    """The markdown table. ``default``: the sentence saying what Δ is measured against, or one per preset (said
    in each preset's sections where the presets differ)."""
    per_preset = default if isinstance(default, dict) else {}
    if per_preset:
        said = {per_preset.get(t["preset"]) for t in table}
        default = said.pop() if len(said) == 1 else "Δ: against each preset's own default cell, said in its sections."
    lines = [f"# {name}", "", "Generated by `python -m pic_bench.tables` from `results/rows/"
             f"{name}.jsonl`; do not edit. Accuracy: mean ± std over seeds (n; the values, in seed order). "
             f"{default} Rows are averaged and compared only within a section (one preset, device, CPU "
             "capability and dataset). Step time: median over seeds of each run's median step (ms, compute only; p90 in brackets). "
             "Memory: peak CPU RSS of the process or CUDA max allocated (MiB).", ""]
    for section in sorted({section_of(t) for t in table}):
        preset, dev, cap, _ = section
        ts = [t for t in table if section_of(t) == section]
        own = [per_preset[preset], ""] if per_preset and per_preset.get(preset) != default else []
        lines += [f"## preset `{preset}` on {dev}, CPU capability {cap}", ""] + _section_lines(ts) + own + [
                  "| cell | kind | n | kNN top-1 | linear top-1 | Δ kNN | Δ linear | step ms (p90) | img/s "
                  "| peak MiB | kNN values | linear values |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for t in ts:
            lines.append(
                f"| {_md(_label(t))} | {t['kind']} | {t['n']} | {_pm(t['knn_top1_mean'], t['knn_top1_std'])} | "
                f"{_pm(t['linear_top1_mean'], t['linear_top1_std'])} | "
                f"{_delta(t, 'knn_top1')} | {_delta(t, 'linear_top1')} | {_fmt(t['step_ms_median'], 1)} "
                f"({_fmt(t['step_ms_p90'], 1)}) | {_fmt(t['images_per_s'], 0)} | {_fmt(t['peak_mem_mib'], 0)} | "
                f"{', '.join(_fmt(v) for v in t['knn_top1'])} | {', '.join(_fmt(v) for v in t['linear_top1'])} |")
        lines.append("")
        lines += _same_run_lines(ts)
        if plots and section in plots:
            lines += [f"![{name}, preset {preset}]({plots[section]})", ""]
    if reference:
        lines += reference
    lines += _problem_lines(warnings, problems)
    return "\n".join(lines)


def _problem_lines(warnings: list[str], problems: list[str]) -> list[str]:
    if not (warnings or problems):
        return []
    return (["## Problems found while building this table", ""] + [f"- {w}" for w in warnings]
            + [f"- {p}" for p in problems] + [""])


CSV_COLS = ["preset", "device", "cpu_capability", "digest", "dataset", "N", "image_size", "kind", "cell",
            "config_hash", "U_mean", "same_run", "n", "seeds", "knn_top1_mean", "knn_top1_std",
            "knn_top1", "linear_top1_mean", "linear_top1_std", "linear_top1", "delta_knn_top1", "ci_knn_top1",
            "paired_n_knn_top1", "delta_linear_top1", "ci_linear_top1", "paired_n_linear_top1", "step_ms_median",
            "step_ms_p90", "images_per_s", "peak_mem_mib", "train_wall_s", "final_loss", "reference_top1",
            "linear_minus_reference"]


def _csv_value(v: Any) -> str:
    if isinstance(v, list):
        return " ".join(_fmt(x, 4) if isinstance(x, float) else str(x) for x in v)
    return _fmt(v, 4) if isinstance(v, float) else str(v)


def to_csv(table: list[dict[str, Any]], cols: list[str] = CSV_COLS) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for t in table:
        if "reference_top1" in cols and "reference_top1" not in t:
            r = reference.match(t["config"], t["derived"]) if t.get("kind") == "pic" else None
            t["reference_top1"] = r.top1 if r else float("nan")
            t["linear_minus_reference"] = t["linear_top1_mean"] - r.top1 if r else float("nan")
        w.writerow([_csv_value(t.get(c, "")) for c in cols])
    return buf.getvalue()


def _esc(s: str) -> str:
    return s.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&").replace("|U|", "$|U|$")


def _tex_pm(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "--"
    return f"${mean:.2f}$" if math.isnan(std) else f"${mean:.2f} \\pm {std:.2f}$"


def to_latex(name: str, table: list[dict[str, Any]]) -> str:
    lines = [f"% {name}: generated by python -m pic_bench.tables; do not edit", r"\begin{tabular}{lllrrrrr}",
             r"\toprule", r"preset & cell & kind & $n$ & kNN top-1 & linear top-1 & $\Delta$ linear & step (ms) \\",
             r"\midrule"]
    for t in table:
        d = t["delta_linear_top1"]
        ci = t["ci_linear_top1"]
        delta = "--" if t.get("is_default") or math.isnan(d) else (
            f"${d:+.2f} \\pm {_fmt(ci)}$" if not math.isnan(ci) else f"${d:+.2f}$")
        lines.append(f"{_esc(t['preset'])} & {_esc(_label(t))} & {_esc(t['kind'])} & {t['n']} & "
                     f"{_tex_pm(t['knn_top1_mean'], t['knn_top1_std'])} & "
                     f"{_tex_pm(t['linear_top1_mean'], t['linear_top1_std'])} & {delta} & "
                     f"{_fmt(t['step_ms_median'], 1)} \\\\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def failed_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per failed run, so a missing seed in a table is explained."""
    out = []
    for r in rows:
        if r.get("status") == "failed":
            err = (r.get("error") or "").strip().splitlines()
            out.append(f"failed run: cell '{cell_label(r.get('cell') or {})}' ({r.get('kind', 'pic')}, preset "
                       f"{r['preset']}) seed {r['seed']}: {err[0] if err else 'no error recorded'}")
    return out


# --------------------------------------------------------------------------------------------- analysis tables
def _analysis_entries(rows: list[dict[str, Any]], kind: str, warnings: list[str]) -> list[dict[str, Any]]:
    """The latest ok row per (preset, device, config hash, seed), flattened for the table."""
    latest: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if r.get("kind") != kind or r.get("status") != "ok":
            continue
        # revisit distances are arithmetic (any machine); timings are kept apart by device and CPU capability
        dev = "any machine" if kind == "visit_distance" else f"{r.get('device', '?')}, CPU capability {capability_of(r)}"
        key = (r["preset"], dev, r["config_hash"], r["seed"])
        if key in latest:
            warnings.append(f"{kind} cell '{cell_label(r.get('cell') or {})}' (preset {r['preset']}) seed "
                            f"{r['seed']} has more than one row; the last is used")
        latest[key] = r
    out = []
    for (preset, dev, chash, seed), r in sorted(latest.items(), key=lambda kv: kv[0]):
        e = {"preset": preset, "device": dev, "config_hash": chash, "seed": seed, "cell_dict": r.get("cell") or {},
             "config": r["config"], **(r.get("derived") or {}), **r["metrics"]}
        e["scheduler"] = r["config"]["pic"]["scheduler"]
        out.append(e)
    return out


VISIT_COLS = ["preset", "scheduler", "N", "D", "S", "samples", "seed", "revisits", "p10", "median", "p90", "p99",
              "max", "mean", "median_over_D", "median_over_N", "share_within_2D", "expected_median", "config_hash"]


def visit_markdown(name: str, entries: list[dict[str, Any]], warnings: list[str], problems: list[str],
                   plots: dict[tuple[str, str], str] | None = None) -> str:
    lines = [f"# {name}", "", f"Generated by `python -m pic_bench.tables` from `results/rows/{name}.jsonl`; do not "
             "edit. Distance, in samples, between two consecutive visits of the same image over `optim.epochs x N` "
             "samples of each scheduler's stream (revisits after the stream's end are not seen, which shortens the "
             "longest gaps). Share ≤ 2D: revisits within two window lengths. Expected median: our derivation "
             "(epoch: N; sliding: about 1.07 D at D/S = 8), not a published number; n/a where it has no simple form.",
             ""]
    order = {"epoch": 0, "sliding": 1, "official": 2}
    for preset in sorted({e["preset"] for e in entries}):
        lines += [f"## preset `{preset}`", "",
                  "| scheduler | N | D | S | samples | seed | revisits | p10 | median | p90 | p99 | median / D | "
                  "median / N | share ≤ 2D | expected median |", "|" + "---|" * 15]
        es = sorted((e for e in entries if e["preset"] == preset),
                    key=lambda e: (e["N"], e["D"], e["S"], order.get(e["scheduler"], 9), e["seed"], e["config_hash"]))
        for e in es:
            lines.append(f"| {e['scheduler']} | {e['N']:,} | {e['D']:,} | {e['S']:,} | {e['samples']:,} | "
                         f"{e['seed']} | {e['revisits']:,} | {e['p10']:,.0f} | {e['median']:,.0f} | {e['p90']:,.0f} | "
                         f"{e['p99']:,.0f} | {e['median_over_D']:.2f} | {e['median_over_N']:.3f} | "
                         f"{e['share_within_2D']:.3f} | {_count(e['expected_median'])} |")
        lines.append("")
        if plots and (preset, "any machine") in plots:
            lines += [f"![{name}, preset {preset}]({plots[(preset, 'any machine')]})", ""]
    return "\n".join(lines + _problem_lines(warnings, problems))


SCALING_COLS = ["preset", "device", "arm", "N", "K_effective", "B", "d", "head_ms_median", "head_ms_p90",
                "step_ms_median", "step_ms_p90", "state_mib", "head_peak_mib", "step_peak_mib", "head_extra_mib",
                "step_extra_mib", "peak_mem_kind", "head_floor_ms_median", "head_ratio_to_floor",
                "head_speedup_vs_full", "implementation", "config_hash"]


def _arm(config: dict[str, Any]) -> str:
    """The arm of a scaling row, named from its config: full softmax, or recent K with or without correction."""
    p = config["pic"]
    storage = "" if p.get("storage", "float32") == "float32" else f", {p['storage']} w and u"
    if p["K"] == 0:
        return "full softmax (all N), dense update" + storage
    return f"recent K={p['K']}, " + ("correction" if p["correction"] else "dense update (no correction)") + storage


def _arm_order(arm: str) -> tuple:
    return (not arm.startswith("full"), "dense" not in arm, arm)


def scaling_entries(rows: list[dict[str, Any]], default_cell: dict[str, Any] | None, warnings: list[str]
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(ok points with the head's speed-up against the default arm at the same N, skipped points)."""
    points = _analysis_entries(rows, "scaling", warnings)
    for p in points:
        p["arm"] = _arm(p["config"])
    full = {(p["preset"], p["device"], p["N"]): p for p in points
            if default_cell is not None and all(p["cell_dict"].get(k) == v for k, v in default_cell.items())}
    for p in points:
        for part in ("head", "step"):  # working memory: what the step needs beyond storing w and u
            p[f"{part}_extra_mib"] = p[f"{part}_peak_mib"] - p["state_mib"]
        f = full.get((p["preset"], p["device"], p["N"]))
        p["head_speedup_vs_full"] = f["head_ms_median"] / p["head_ms_median"] if f else float("nan")
    skipped = []
    for r in rows:
        if r.get("kind") == "scaling" and r.get("status") == "skipped":
            skipped.append({"preset": r["preset"], "device": f"{r.get('device', '?')}, CPU capability "
                            f"{capability_of(r)}", "arm": _arm(r["config"]),
                            "N": (r.get("derived") or {}).get("N"), "why": r.get("error") or ""})
    skipped.sort(key=lambda s: (s["preset"], s["device"], _arm_order(s["arm"]), s["N"] or 0))
    return points, skipped


def scaling_markdown(name: str, points: list[dict[str, Any]], skipped: list[dict[str, Any]], warnings: list[str],
                     problems: list[str], plots: dict[tuple[str, str], str] | None = None) -> str:
    lines = [f"# {name}", "", f"Generated by `python -m pic_bench.tables` from `results/rows/{name}.jsonl`; do not "
             "edit. Head: gather the candidate rows of w, cosine logits, cross-entropy, backward to z and the rows, "
             "momentum-SGD update of w and u. Whole step: the backbone's forward, backward and SGD step on random "
             "images, then the head (`Trainer.train_step`). Times: median (p90) over timed steps, device "
             "synchronised. Peak memory: from before w and u are allocated (so it includes them), CUDA max "
             "allocated or peak RSS; in brackets, beyond the size of w and u (the working memory, which recent K "
             "should keep constant). Speed-up: the default arm's head time at the same N over this arm's.", ""]
    for (preset, dev) in sorted({(p["preset"], p["device"]) for p in points}):
        lines += [f"## preset `{preset}` on {dev}", "",
                  "| arm | N | K used | head ms (p90) | whole step ms (p90) | state MiB | head peak MiB (beyond) | "
                  "step peak MiB (beyond) | head speed-up vs default |", "|---|---|---|---|---|---|---|---|---|"]
        ps = [p for p in points if (p["preset"], p["device"]) == (preset, dev)]
        for p in sorted(ps, key=lambda p: (_arm_order(p["arm"]), p["N"], p["seed"], p["config_hash"])):
            lines.append(f"| {p['arm']} | {p['N']:,} | {p['K_effective']:,} | {p['head_ms_median']:.2f} "
                         f"({p['head_ms_p90']:.2f}) | {p['step_ms_median']:.1f} ({p['step_ms_p90']:.1f}) | "
                         f"{p['state_mib']:.1f} | {_fmt(p['head_peak_mib'], 1)} ({_fmt(p['head_extra_mib'], 1)}) | "
                         f"{_fmt(p['step_peak_mib'], 1)} ({_fmt(p['step_extra_mib'], 1)}) | "
                         f"{_fmt(p['head_speedup_vs_full'], 1)} |")
        lines.append("")
        impl = sorted({p.get("implementation", "?") for p in ps})
        paths = sorted({p["head_path"] for p in ps if "head_path" in p})
        lines += [f"Measured by {', '.join(impl)}" + (f"; head path: {', '.join(paths)}" if paths else "")
                  + f"; peak memory kind: {', '.join(sorted({p['peak_mem_kind'] for p in ps}))}.", ""]
        if plots and (preset, dev) in plots:
            lines += [f"![{name}, preset {preset}]({plots[(preset, dev)]})", ""]
    if skipped:
        lines += ["## Points not measured", ""]
        lines += [f"- preset {s['preset']}, {s['arm']}, N = {_count(s['N'])}: {s['why']}" for s in skipped] + [""]
    return "\n".join(lines + _problem_lines(warnings, problems))


def _analysis_latex(name: str, entries: list[dict[str, Any]], cols: list[str]) -> str:
    lines = [f"% {name}: generated by python -m pic_bench.tables; do not edit",
             r"\begin{tabular}{" + "l" * 3 + "r" * (len(cols) - 3) + "}", r"\toprule",
             " & ".join(_esc(c) for c in cols) + r" \\", r"\midrule"]
    for e in entries:
        lines.append(" & ".join(_esc(_csv_value(e.get(c, ""))) for c in cols) + r" \\")
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}", ""])


# ------------------------------------------------------------------------------------------------- build, main
def _ablation_file(name: str):
    """The ablation whose rows these are (ablations/<name>.yaml in the repository or the working directory)."""
    from ..config import load_ablation

    for folder in (ABLATIONS_DIR, Path("ablations")):
        path = folder / f"{name}.yaml"
        if path.is_file():
            try:
                return load_ablation(path)
            except Exception as e:  # noqa: BLE001 - a table is still built without the file
                print(f"warning: {path}: {e}; table built without its default cell", file=sys.stderr)
                return None
    return None


def _is_path(arg: str) -> bool:
    return arg.endswith((".yaml", ".yml")) or "/" in arg or os.sep in arg


def resolve(ablation) -> tuple[str, Any]:
    """(name, Ablation or None) of what ``build_table`` was given: an Ablation (the whole file, not one preset's
    view of it: the table covers every preset that has rows), the path of an ablation file, or a bare name."""
    from ..config import Ablation, load_ablation

    if isinstance(ablation, Ablation):
        abl = ablation
    elif isinstance(ablation, Path) or _is_path(str(ablation)):
        abl = load_ablation(ablation)  # ConfigError naming the file when it is missing or wrong
    else:
        abl = None
    name = abl.name if abl is not None else str(ablation)
    where = f"the name in {abl.path}" if abl is not None else "the command line"
    if not name or Path(name).name != name or name.startswith("."):
        raise TableError(f"ablation name '{name}' ({where}) is not a plain file name: its tables would be written "
                         "outside <results>/tables/")
    return name, abl if abl is not None else _ablation_file(name)


def require_rows(name: str, abl, results_dir: Path) -> None:
    """A TableError unless ``name`` has a rows file with at least one line in it."""
    path = Path(results_dir) / "rows" / f"{name}.jsonl"
    if path.is_file() and path.read_text().strip():
        return
    source = f"the name in {abl.path}" if abl is not None else "from the command line"
    hint = f"python -m pic_bench.run {abl.path}" if abl is not None else "python -m pic_bench.run <its file>"
    raise TableError(f"no rows for ablation '{name}' ({source}): {path} "
                     f"{'is empty' if path.is_file() else 'does not exist'}; run `{hint}` first, or pass --results")


def _plot_names(name: str, groups: list[tuple]) -> dict[tuple, str]:
    """One PNG per section: <name>_<preset>.png, then _2, _3 for the further sections of that preset."""
    out: dict[tuple, str] = {}
    for preset in sorted({g[0] for g in groups}):
        for i, g in enumerate(sorted(g for g in groups if g[0] == preset)):
            out[g] = f"{name}_{preset}{'' if i == 0 else f'_{i + 1}'}.png"
    return out


def build_table(ablation, results_dir: Path = DEFAULT_RESULTS, preset: str | None = None, write: bool = True,
                default_cell: dict[str, Any] | None = None, plots: bool = True, missing_ok: bool = True) -> str:
    """Builds (and with ``write``, writes) the table of one ablation and its plots. Returns the markdown, only
    ``preset``'s part of it when given.

    ``ablation``: an Ablation, the path of its file (its ``name`` finds the rows, its default cell gives Δ) or a
    bare name (ablations/<name>.yaml gives the default cell where it exists). With ``missing_ok`` false, an
    ablation without rows is a TableError rather than an empty table.
    """
    results_dir = Path(results_dir)
    name, abl = resolve(ablation)
    if not missing_ok:
        require_rows(name, abl, results_dir)
    rows, bad = read_rows(results_dir, name)
    problems = [f"{_relative(p.file, results_dir)}:{p.line}: {p.reason}" for p in bad]
    for p in bad:
        print(f"warning: {p}", file=sys.stderr)
    explicit_default = default_cell is not None
    if default_cell is None and abl is not None:
        default_cell = abl.default_cell
    problems += failed_lines(rows)
    kinds = {r.get("kind", "pic") for r in rows}
    out = results_dir / "tables"
    if write:
        out.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []

    if kinds & set(ANALYSIS_KINDS):
        return _build_analysis(name, rows, kinds, default_cell, warnings, problems, out, preset, write, plots)

    from . import plots as plotting

    table, warnings, notes = [], [], {}
    for p in sorted({r.get("preset") for r in rows}, key=str):  # a preset may have its own cells and default
        sub = abl.for_preset(p) if abl is not None else None
        dc = default_cell if explicit_default or sub is None else sub.default_cell
        if dc is not None and not dc and not any(not (r.get("cell") or {}) for r in rows if r.get("preset") == p):
            dc = None  # the file names no default cell, and no cell is the plain default
        part, warn = aggregate([r for r in rows if r.get("preset") == p], dc,
                               sub.cell_overrides() if sub is not None else None)
        table += part
        warnings += warn
        notes[p] = default_note(name, part, dc if (dc is not None or abl is None) else {}, sub)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    groups = sorted({section_of(t) for t in table})
    names = _plot_names(name, groups)
    drawn: dict[tuple, str] = {}
    for g in groups:
        part = [t for t in table if section_of(t) == g]
        title = f"{name}: preset {g[0]}, {g[1]}, CPU capability {g[2]}"
        if write and plots:
            if plotting.accuracy_plot(name, title, part, out / names[g]):
                drawn[g] = names[g]
        elif plotting.accuracy_figure_kind(part) is not None:
            drawn[g] = names[g]
    refs = reference_lines(table) if table else None
    note = notes or default_note(name, table, default_cell, abl)
    md = to_markdown(name, table, warnings, problems, refs, drawn, note)
    if write:
        (out / f"{name}.md").write_text(md)
        (out / f"{name}.csv").write_text(to_csv(table))
        (out / f"{name}.tex").write_text(to_latex(name, table))
    if preset:
        keep = [t for t in table if t["preset"] == preset]
        return to_markdown(name, keep, warnings, problems, refs, drawn, notes.get(preset, note))
    return md


def _build_analysis(name, rows, kinds, default_cell, warnings, problems, out, preset, write, plots) -> str:
    if len(kinds) > 1:
        warnings.append(f"rows of several kinds ({', '.join(sorted(kinds))}) in one file; only "
                        f"{', '.join(k for k in ANALYSIS_KINDS if k in kinds)} rows are shown")
    kind = next(k for k in ANALYSIS_KINDS if k in kinds)
    if kind == "visit_distance":
        entries = _analysis_entries(rows, kind, warnings)
        skipped: list[dict[str, Any]] = []
        cols = VISIT_COLS
    else:
        entries, skipped = scaling_entries(rows, default_cell, warnings)
        cols = SCALING_COLS
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    groups = sorted({(e["preset"], e["device"]) for e in entries})
    names = _plot_names(name, groups)
    if write and plots:
        from . import plots as plotting

        for g in groups:
            part = [e for e in entries if (e["preset"], e["device"]) == g]
            title = f"{name}: preset {g[0]}" + ("" if kind == "visit_distance" else f", {g[1]}")
            (plotting.visit_plot if kind == "visit_distance" else plotting.scaling_plot)(title, part, out / names[g])

    def render(es, sk):
        if kind == "visit_distance":
            return visit_markdown(name, es, warnings, problems, names)
        return scaling_markdown(name, es, sk, warnings, problems, names)

    md = render(entries, skipped)
    if write:
        (out / f"{name}.md").write_text(md)
        (out / f"{name}.csv").write_text(to_csv(entries, cols))
        (out / f"{name}.tex").write_text(_analysis_latex(name, entries, cols))
    if preset:
        return render([e for e in entries if e["preset"] == preset], [s for s in skipped if s["preset"] == preset])
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pic_bench.tables", description=__doc__.split("\n")[0])
    ap.add_argument("ablations", nargs="*",
                    help="ablation names or ablation files (default: every name with rows under <results>/rows/)")
    ap.add_argument("--results", default=str(DEFAULT_RESULTS))
    ap.add_argument("--no-plots", action="store_true", help="write the tables only")
    args = ap.parse_args(argv)
    from ..config import ConfigError

    results = Path(args.results)
    names = args.ablations or sorted(p.stem for p in (results / "rows").glob("*.jsonl"))
    try:
        if not names:
            raise TableError(f"no rows under {results}/rows/ (the results folder, from --results)")
        plan = []
        for arg in names:  # every argument is checked before anything is written
            name, abl = resolve(arg)
            require_rows(name, abl, results)
            plan.append((arg if abl is None else abl, name))
    except (TableError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for what, name in plan:
        build_table(what, results, write=True, plots=not args.no_plots)
        print(f"wrote {results}/tables/{name}.md, .csv, .tex" + ("" if args.no_plots else " and plots"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
