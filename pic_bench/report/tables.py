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
individual values, the change against the ablation's default cell (seeds paired with the default's by pivoting) with
its 95% t interval and the paired t-test's p (``pic_bench.report.stats``, on scipy); a change whose interval spans 0
is "not detected" and printed with the largest effect its interval allows. Each section states the smallest effect
its design detects at 80% power (from the sd of its paired differences, pooled) and that the 95% half-width is not
that figure; where rows record it, the data regime (``derived["regime"]``). Step time, throughput and peak memory; a
step time measured under contention, or whose row has no timing record (``derived["timing"]``,
``pic_bench.report.timing.contention``), is marked † with a footnote saying why and takes part in no timing
comparison (the scaling table's speed-ups). The published reference beside our value where the setting matches it
(``pic_bench.reference``). Rows are grouped and aggregated with pandas; Markdown and LaTeX are our own writers
(pandas' pad every column and need extra libraries), CSV is pandas' writer. Rows are averaged, and compared, only
within one section: the same preset, device, CPU capability (``row["machine"]["cpu_capability"]``; rows without it
are "unrecorded", a section of their own) and dataset digest (``row["data"]["digest"]``, or ``derived.index_digest``
in older rows), because the same config and seed give other numbers on another machine (issue 13) and on other data.
Each section names its dataset, N and image size; the smoke preset's says it is a plumbing check. Cells that are the
same run in effect (K >= N: both use all N instances, e.g. K = 512 and K = 2048 at N = 256) are flagged with ‡;
where rows record |U| per step (``metrics.U_mean``), a cell's label shows the mean |U| beside its nominal K. Rows
that share a cell but differ in config hash are reported and kept apart; malformed lines and failed runs are listed
with their file and line. Analysis ablations (rows of kind ``visit_distance`` or ``scaling``, see
``pic_bench.suite.analysis``) get their own layout.

The default cell: when ``default_cell`` in the ablation file equals one cell's overrides, every cell is compared
with that cell (``default_cell: {pic.K: 0}``). When it names only some of the swept keys, each cell is compared
with the cell that differs from it only there (``default_cell: {pic.correction: true}``: each K without the
correction against the same K with it).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

from .. import reference
from ..config import canonical_cell
from .results import DEFAULT_RESULTS, drop_superseded, read_rows
from .stats import Paired, mde, paired, pooled_sd
from .timing import NOT_RECORDED, contention

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


def cell_label(cell: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in cell.items()) if cell else "default"


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
GROUP = ["preset", "device", "cpu_capability", "digest", "kind", "cell", "config_hash"]  # one table row each


def rows_frame(rows: list[dict[str, Any]]):
    """The ok rows as a DataFrame: the section and cell keys, the seed, the metrics the tables use, the row's
    timing verdict (``timing.contention``) and the row itself, in file order (``order``)."""
    import pandas as pd

    cols = GROUP + ["seed", "order", "timing", "shared", "row", "U_mean", *METRICS, *COST]
    recs = []
    for i, r in enumerate(rows):
        if r.get("status") != "ok":
            continue
        m = r.get("metrics") or {}
        recs.append({"preset": r["preset"], "device": r.get("device", "?"), "cpu_capability": capability_of(r),
                     "digest": digest_of(r), "kind": r.get("kind", "pic"), "cell": cell_label(r.get("cell") or {}),
                     "config_hash": r["config_hash"], "seed": r["seed"], "order": i, "timing": contention(r),
                     "shared": (r.get("shared_from") or {}).get("ablation"), "row": r,
                     **{k: m.get(k, float("nan")) for k in ("U_mean", *METRICS, *COST)}})
    return pd.DataFrame(recs, columns=cols)


def aggregate(rows: list[dict[str, Any]], default_cell: dict[str, Any] | None = None,
              cell_order: list[dict[str, Any]] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Groups ok rows into table rows; returns (table rows, warnings). ``cell_order``: the file's cells, in order.

    pandas does the work: one group per section and cell (``GROUP``), one row per seed (the last in file order
    wins; duplicates are reported), mean, std (ddof 1) and the values of each accuracy, medians of the costs, and
    the per-seed values pivoted (seed x group) for pairing with the default cell."""
    warnings: list[str] = []
    df = rows_frame(rows)
    base = GROUP[:-1]
    for key, hs in sorted(df.groupby(base, sort=True)["config_hash"].unique().items()):
        if len(hs) > 1:
            warnings.append(f"cell '{key[5]}' ({key[4]}, preset {key[0]}, {key[1]}) has rows with "
                            f"{len(hs)} different configs ({', '.join(sorted(hs))}): reported apart, not averaged")
    split = df.groupby(base)["config_hash"].transform("nunique") > 1 if len(df) else df["config_hash"]
    df = df.assign(split=split, dup=df.duplicated(GROUP + ["seed"], keep="first"))
    kept = df.drop_duplicates(GROUP + ["seed"], keep="last").sort_values(GROUP + ["seed"])
    kept = kept.assign(gid=kept.groupby(GROUP, sort=True).ngroup())
    wide = {m: kept.pivot(index="seed", columns="gid", values=m) for m in METRICS}  # seeds paired by pivoting
    out = []
    for key, g in kept.groupby(GROUP, sort=True):
        preset, dev, cap, digest, kind, label, chash = key
        for _, r in df[(df[GROUP] == list(key)).all(axis=1) & df["dup"]].sort_values("order").iterrows():
            warnings.append(f"cell '{label}' ({kind}, preset {preset}) seed {r['seed']} has more than one "
                            "row; the last is used")
        rs = list(g["row"])
        dataset, N, size = data_of(rs[0])
        t = {"preset": preset, "device": dev, "cpu_capability": cap, "digest": digest, "dataset": dataset, "N": N,
             "image_size": size, "kind": kind, "cell": label, "config_hash": chash, "n": len(rs),
             "seeds": [int(s) for s in g["seed"]], "cell_dict": rs[0].get("cell") or {}, "config": rs[0]["config"],
             "derived": rs[0].get("derived") or {}, "split": bool(g["split"].iloc[0]), "same_run": [],
             "gid": int(g["gid"].iloc[0]), "regimes": [(r.get("derived") or {}).get("regime") for r in rs],
             "timing": {int(s): why if isinstance(why, str) else None  # pandas may hold None as nan
                        for s, why in zip(g["seed"], g["timing"])},
             "shared": {int(s): src for s, src in zip(g["seed"], g["shared"]) if isinstance(src, str)}}
        t["U_mean"] = float(g["U_mean"].mean())
        for m in METRICS:
            vals = g[m].dropna()
            t[m] = [float(v) for v in vals]
            t[m + "_mean"], t[m + "_std"] = float(vals.mean()), float(vals.std(ddof=1))
        for m in COST:
            t[m] = float(g[m].median())
        if any((r.get("derived") or {}).get("eval_split") == "train" for r in rs):  # asked for, never silent
            warnings.append(f"cell '{label}' ({kind}, preset {preset}) was evaluated on its own training images "
                            "(data.eval_split=train): its accuracies are not held-out")
        out.append(t)
    _pair_with_default(out, wide, default_cell, warnings)
    _flag_same_runs(out)
    order = {repr(sorted(c.items())): i for i, c in enumerate(cell_order or [])}
    out.sort(key=lambda t: (section_of(t), t["kind"] != "pic", t["kind"],
                            order.get(repr(sorted(t["cell_dict"].items())), len(order)), _order(t), t["config_hash"]))
    return out, warnings


def compare(wide, a: int, b: int) -> Paired:
    """The paired change of group ``a`` against group ``b`` over the seeds both have (a column each of the
    seed x group pivot)."""
    both = wide[[a, b]].dropna()
    return paired(both[a].to_numpy(), both[b].to_numpy())


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


def _pair_with_default(table: list[dict[str, Any]], wide: dict, default_cell: dict[str, Any] | None,
                       warnings: list[str]) -> None:
    """Fills cmp_* (a ``stats.Paired``, or None), delta_*, ci_* (the 95% half-width), p_*, paired_n_* and
    is_default of every PIC entry (see the module docstring). ``wide``: per metric, the seed x group pivot."""
    for t in table:
        t["is_default"] = False
        for m in METRICS:
            _set_change(t, m, None)
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
            _set_change(t, m, compare(wide[m], t["gid"], ref["gid"]))


def _set_change(t: dict[str, Any], m: str, c: Paired | None) -> None:
    nan = float("nan")
    t["cmp_" + m] = c if c is not None and c.n else None
    t["delta_" + m], t["ci_" + m], t["p_" + m], t["paired_n_" + m] = \
        (c.delta, c.half, c.p, c.n) if c is not None and c.n else (nan, nan, nan, 0)


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


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def change_text(c: Paired | None) -> str:
    """A change as the tables print it: Δ [95% interval] p (n pairs); one that is not detected says so and
    gives the largest effect its interval allows; one pair has no interval."""
    if c is None or not c.n:
        return "—"
    if not c.has_interval:
        return f"{c.delta:+.2f} (n={c.n})"
    text = f"{c.delta:+.2f} [{c.lo:+.2f}, {c.hi:+.2f}] {_p(c.p)}"
    if not c.detected:
        text = f"not detected: {text}, effect up to {c.largest:.2f}"
    return f"{text} (n={c.n})"


def _delta(t: dict[str, Any], m: str) -> str:
    return "—" if t.get("is_default") else change_text(t.get("cmp_" + m))


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


PAIRED = ("mean of per-seed differences [95% t interval] and the paired t-test's p (seeds paired, n pairs); a change "
          "whose interval spans 0 is \"not detected\", printed with the largest effect the interval allows "
          "(the larger |bound|)")


def _file_name(path) -> str:
    """An ablation file as a table names it: relative to the repository when it is inside it (the same table bytes
    wherever the repository is and however the file was named), else as given."""
    p = Path(path).resolve()
    root = ABLATIONS_DIR.parent
    return str(p.relative_to(root)) if p.is_relative_to(root) else str(path)

def default_note(name: str, table: list[dict[str, Any]], default_cell: dict[str, Any] | None,
                 abl=None) -> str:
    """The sentence saying what Δ is measured against, or why it is not computed."""
    if default_cell is None:
        return (f"Δ: not computed: no ablation file named {name} was found (ablations/{name}.yaml); give the "
                f"file's path to compare with its default cell: `python -m pic_bench.tables path/to/file.yaml`.")
    if any(_same(t["cell_dict"], default_cell) for t in table if t["kind"] == "pic"):
        return f"Δ: change against the default cell ({cell_label(default_cell)}), {PAIRED}."
    if not default_cell:
        return f"Δ: not computed: {_file_name(abl.path) if abl is not None else name} names no default_cell."
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


def mde_lines(ts: list[dict[str, Any]]) -> list[str]:
    """The smallest effect this section's design detects at 80% power, per metric, from the sd of its paired
    differences pooled over its comparisons; and that the 95% half-width is not that figure."""
    by_n: dict[int, list[str]] = {}
    sds = []
    for m, what in (("knn_top1", "kNN"), ("linear_top1", "linear")):
        cs = [t["cmp_" + m] for t in ts if t.get("cmp_" + m) is not None and t["cmp_" + m].has_interval]
        for n in sorted({c.n for c in cs}):
            same = [c for c in cs if c.n == n]
            sd = pooled_sd([c.sd for c in same], [c.n for c in same])
            by_n.setdefault(n, []).append(f"{what} {mde(sd, n):.2f}")
            sds.append(f"{what} {sd:.2f}" + (f" at n = {n}" if len({c.n for c in cs}) > 1 else "")
                       + f", {len(same)} comparison{'s' if len(same) > 1 else ''}")
    if not by_n:
        return []
    said = "; ".join(f"{', '.join(v)} points at n = {n} seeds" for n, v in sorted(by_n.items()))
    return [f"Smallest effect detectable at 80% power (two-sided 5%, paired t-test): {said}; from the sd of the "
            f"paired differences pooled over this section's comparisons ({'; '.join(sds)}). The 95% half-width is "
            "not this figure: a true effect as large as the half-width is detected only about half the time.", ""]


REGIME = (("sweeps", "{} sweeps", 1.0, 1), ("never_visited", "{}% never visited", 100.0, 1),
          ("first_visit_share", "{}% of samples first visits", 100.0, 1),
          ("first_visits_end", "first visits done by {}% of training", 100.0, 1),
          ("revisit_distance_D", "mean revisit distance {} D", 1.0, 2))


def regime_lines(ts: list[dict[str, Any]]) -> list[str]:
    """One line with the section's data regime (``derived["regime"]``: sweeps of the data by the window, the
    never-visited share, the share of samples that are first visits, when first visits end (fractions of
    training), mean revisit distance in units of D), a range where rows differ; nothing where no row has it."""
    regimes = [r for t in ts if t["kind"] == "pic" for r in t.get("regimes", []) if isinstance(r, dict)]
    if not regimes:
        return []
    parts = []
    for key, fmt, scale, nd in REGIME:
        vs = sorted({round(float(r[key]) * scale, nd) for r in regimes if isinstance(r.get(key), (int, float))})
        if vs:
            parts.append(fmt.format(f"{vs[0]:.{nd}f}" if len(vs) == 1 else f"{vs[0]:.{nd}f}-{vs[-1]:.{nd}f}"))
    return [f"regime: {', '.join(parts)}.", ""] if parts else []


def _untrusted(t: dict[str, Any]) -> dict[int, str]:
    """The seeds of a table row whose step time cannot be trusted, with why (``timing.contention``)."""
    return {s: why for s, why in (t.get("timing") or {}).items() if why}


def timing_lines(ts: list[dict[str, Any]]) -> list[str]:
    """The footnote of the † marks: whose step times were measured under contention or not recorded, and why;
    such step times take part in no timing comparison."""
    marked = [t for t in ts if _untrusted(t) and not math.isnan(t["step_ms_median"])]
    if not marked:
        return []
    lines = []
    unrec = [t for t in marked if set(_untrusted(t).values()) == {NOT_RECORDED}]
    if unrec:
        every = len(unrec) == len([t for t in ts if not math.isnan(t["step_ms_median"])])
        lines.append("† step time not recorded as trusted: " + ("every cell of this section" if every else
                     ", ".join(_md(_label(t)) for t in unrec)) + " ran before rows carried the load and CPU time "
                     "of their training (`derived.timing`), so whether other work shared the cores is unknown; "
                     "left out of any timing comparison.")
    for t in marked:
        if t in unrec:
            continue
        why = "; ".join(f"seed {s}: {w}" for s, w in sorted(_untrusted(t).items()))
        lines.append(f"† {_md(_label(t))}: step time measured under contention ({why}); left out of any timing "
                     "comparison.")
    return lines + [""]


def _step(t: dict[str, Any]) -> str:
    mark = "†" if _untrusted(t) and not math.isnan(t["step_ms_median"]) else ""
    return f"{_fmt(t['step_ms_median'], 1)}{mark} ({_fmt(t['step_ms_p90'], 1)})"


def _same_run_lines(ts: list[dict[str, Any]]) -> list[str]:
    groups = sorted({tuple(t["same_run"]) for t in ts if t["same_run"]})
    return [f"‡ the same run in effect: {', '.join(g)} (K ≥ N = "
            f"{next(t['N'] for t in ts if t['cell'] == g[0]):,}: each uses all N instances, and their configs "
            "differ in nothing but the nominal K)." for g in groups] + ([""] if groups else [])


def shared_lines(ts: list[dict[str, Any]]) -> list[str]:
    """Which cells' rows are shared with another ablation's run (``row["shared_from"]``): the same experiment, run
    once, whose config differs from this cell's at most in a key that plays no part in the run (eval.baselines)."""
    said = []
    for t in ts:
        by: dict[str, list[int]] = {}
        for seed, src in sorted((t.get("shared") or {}).items()):
            by.setdefault(src, []).append(seed)
        kind = "" if t.get("kind", "pic") == "pic" else f" ({t['kind']})"  # a baseline's cell is the default's
        said += [f"{_md(_label(t))}{kind} seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} from {src}"
                 for src, seeds in sorted(by.items())]
    if not said:
        return []
    return ["Shared runs (the same experiment as another ablation's row, run once; the configs differ only in "
            "eval.baselines, `shared_from` in each row): " + "; ".join(said) + ".", ""]

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
        lines += [f"## preset `{preset}` on {dev}, CPU capability {cap}", ""] + _section_lines(ts) + \
                 regime_lines(ts) + own + [
                  "| cell | kind | n | kNN top-1 | linear top-1 | Δ kNN | Δ linear | step ms (p90) | img/s "
                  "| peak MiB | kNN values | linear values |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for t in ts:
            lines.append(
                f"| {_md(_label(t))} | {t['kind']} | {t['n']} | {_pm(t['knn_top1_mean'], t['knn_top1_std'])} | "
                f"{_pm(t['linear_top1_mean'], t['linear_top1_std'])} | "
                f"{_delta(t, 'knn_top1')} | {_delta(t, 'linear_top1')} | {_step(t)} | {_fmt(t['images_per_s'], 0)} | "
                f"{_fmt(t['peak_mem_mib'], 0)} | "
                f"{', '.join(_fmt(v) for v in t['knn_top1'])} | {', '.join(_fmt(v) for v in t['linear_top1'])} |")
        lines.append("")
        lines += _same_run_lines(ts) + shared_lines(ts) + timing_lines(ts) + mde_lines(ts)
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
            "p_knn_top1", "paired_n_knn_top1", "delta_linear_top1", "ci_linear_top1", "p_linear_top1",
            "paired_n_linear_top1",
            "step_ms_median", "step_time_untrusted",
            "step_ms_p90", "images_per_s", "peak_mem_mib", "train_wall_s", "final_loss", "reference_top1",
            "linear_minus_reference"]


def _csv_value(v: Any) -> str:
    if isinstance(v, list):
        return " ".join(_fmt(x, 4) if isinstance(x, float) else str(x) for x in v)
    return _fmt(v, 4) if isinstance(v, float) else str(v)


def to_csv(table: list[dict[str, Any]], cols: list[str] = CSV_COLS) -> str:
    """CSV through pandas' writer, of the values as the table prints them (4 decimals, lists space-joined)."""
    import pandas as pd

    for t in table:
        if "reference_top1" in cols and "reference_top1" not in t:
            r = reference.match(t["config"], t["derived"]) if t.get("kind") == "pic" else None
            t["reference_top1"] = r.top1 if r else float("nan")
            t["linear_minus_reference"] = t["linear_top1_mean"] - r.top1 if r else float("nan")
        if "step_time_untrusted" in cols and "step_time_untrusted" not in t:
            why = sorted(set(_untrusted(t).values())) if not math.isnan(t.get("step_ms_median", math.nan)) else []
            t["step_time_untrusted"] = "; ".join(why)
    frame = pd.DataFrame([[_csv_value(t.get(c, "")) for c in cols] for t in table], columns=cols, dtype=object)
    return frame.to_csv(index=False, lineterminator="\n")


def _esc(s: str) -> str:
    return s.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&").replace("|U|", "$|U|$")


def _tex_pm(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "--"
    return f"${mean:.2f}$" if math.isnan(std) else f"${mean:.2f} \\pm {std:.2f}$"


def _tex_mark(t: dict[str, Any]) -> str:
    return r"$^\dagger$" if _untrusted(t) and not math.isnan(t["step_ms_median"]) else ""


def to_latex(name: str, table: list[dict[str, Any]]) -> str:
    lines = [f"% {name}: generated by python -m pic_bench.tables; do not edit", r"\begin{tabular}{lllrrrrr}",
             r"\toprule", r"preset & cell & kind & $n$ & kNN top-1 & linear top-1 & $\Delta$ linear & step (ms) \\",
             r"\midrule"]
    for t in table:
        c = t.get("cmp_linear_top1")
        delta = "--" if t.get("is_default") or c is None else f"${c.delta:+.2f}$" if not c.has_interval else (
            f"${c.delta:+.2f}\\ [{c.lo:+.2f}, {c.hi:+.2f}]$" + ("" if c.detected else " n.d."))
        lines.append(f"{_esc(t['preset'])} & {_esc(_label(t))} & {_esc(t['kind'])} & {t['n']} & "
                     f"{_tex_pm(t['knn_top1_mean'], t['knn_top1_std'])} & "
                     f"{_tex_pm(t['linear_top1_mean'], t['linear_top1_std'])} & {delta} & "
                     f"{_fmt(t['step_ms_median'], 1)}{_tex_mark(t)} \\\\")
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
             "config": r["config"], **(r.get("derived") or {}), **r["metrics"], "_row": r}
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
                "head_speedup_vs_full", "timing_untrusted", "implementation", "config_hash"]


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
        p["timing_untrusted"] = contention(p.pop("_row")) or ""
    full = {(p["preset"], p["device"], p["N"]): p for p in points
            if default_cell is not None and all(p["cell_dict"].get(k) == v for k, v in default_cell.items())}
    for p in points:
        for part in ("head", "step"):  # working memory: what the step needs beyond storing w and u
            p[f"{part}_extra_mib"] = p[f"{part}_peak_mib"] - p["state_mib"]
        f = full.get((p["preset"], p["device"], p["N"]))
        # no ratio of doubtful times
        trusted = f is not None and not f["timing_untrusted"] and not p["timing_untrusted"]
        p["head_speedup_vs_full"] = f["head_ms_median"] / p["head_ms_median"] if trusted else float("nan")
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
            mark = "†" if p["timing_untrusted"] else ""
            lines.append(f"| {p['arm']} | {p['N']:,} | {p['K_effective']:,} | {p['head_ms_median']:.2f}{mark} "
                         f"({p['head_ms_p90']:.2f}) | {p['step_ms_median']:.1f} ({p['step_ms_p90']:.1f}) | "
                         f"{p['state_mib']:.1f} | {_fmt(p['head_peak_mib'], 1)} ({_fmt(p['head_extra_mib'], 1)}) | "
                         f"{_fmt(p['step_peak_mib'], 1)} ({_fmt(p['step_extra_mib'], 1)}) | "
                         f"{_fmt(p['head_speedup_vs_full'], 1)} |")
        lines.append("")
        impl = sorted({p.get("implementation", "?") for p in ps})
        paths = sorted({p["head_path"] for p in ps if "head_path" in p})
        lines += [f"Measured by {', '.join(impl)}" + (f"; head path: {', '.join(paths)}" if paths else "")
                  + f"; peak memory kind: {', '.join(sorted({p['peak_mem_kind'] for p in ps}))}.", ""]
        doubt = sorted({p["timing_untrusted"] for p in ps if p["timing_untrusted"]})
        if doubt:
            lines += ["† times not trusted, left out of the speed-up column (n/a): "
                      + ("measured before rows carried the load and CPU time of their measurement (`derived.timing`),"
                         " so whether other work shared the cores is unknown" if doubt == [NOT_RECORDED] else
                         "; ".join(doubt)) + ".", ""]
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
    from ..config import Ablation, load_ablation, name_problem

    if isinstance(ablation, Ablation):
        abl = ablation
    elif isinstance(ablation, Path) or _is_path(str(ablation)):
        abl = load_ablation(ablation)  # ConfigError naming the file when it is missing or wrong
    else:
        abl = None
    name = abl.name if abl is not None else str(ablation)
    where = f"the name in {abl.path}" if abl is not None else "the command line"
    if name_problem(name):  # the rule load_ablation applies, so a name that validates is one tables can write
        raise TableError(f"ablation name '{name}' ({where}) {name_problem(name)}")
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
    rows = drop_superseded(rows)  # a cell that failed, then succeeded: its failure is no longer a problem
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
        entries = [{k: v for k, v in e.items() if k != "_row"} for e in _analysis_entries(rows, kind, warnings)]
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
    from ..config import ConfigError, check_output_dirs

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
        check_output_dirs(("--results", results / "tables"))  # before any table is built
    except (TableError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for what, name in plan:
        build_table(what, results, write=True, plots=not args.no_plots)
        print(f"wrote {results}/tables/{name}.md, .csv, .tex" + ("" if args.no_plots else " and plots"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
