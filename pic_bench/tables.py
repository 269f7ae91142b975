"""Tables rebuilt from result rows; never edited by hand.

    python -m pic_bench.tables                 # every ablation with rows under results/rows/
    python -m pic_bench.tables negatives_k     # one ablation

Writes ``results/tables/<ablation>.md``, ``.csv`` and ``.tex``. One table row per (preset, device, kind, cell):
mean +- std over seeds with n and the individual values, the change against the ablation's default cell with a
95% confidence interval from seeds paired with the default's, step time, throughput and peak memory. Rows from
different presets or devices are never averaged together; rows that share a cell label but differ in config hash
are reported and kept apart.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .results import DEFAULT_RESULTS, read_rows

# Two-sided 95% Student t quantiles, df = 1..30 (beyond: 1.96).
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]

METRICS = ("knn_top1", "linear_top1")


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


def _fmt(x: float, nd: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def aggregate(rows: list[dict[str, Any]], default_cell: dict[str, Any] | None = None
              ) -> tuple[list[dict[str, Any]], list[str]]:
    """Groups ok rows into table rows; returns (table rows, warnings)."""
    warnings: list[str] = []
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    hashes: dict[tuple, set[str]] = defaultdict(set)
    for r in rows:
        if r.get("status") != "ok":
            continue
        dev = r.get("device", "?")
        label = cell_label(r.get("cell") or {})
        base = (r["preset"], dev, r.get("kind", "pic"), label)
        hashes[base].add(r["config_hash"])
        groups[base + (r["config_hash"],)].append(r)
    for base, hs in sorted(hashes.items()):
        if len(hs) > 1:
            warnings.append(f"cell '{base[3]}' ({base[2]}, preset {base[0]}, {base[1]}) has rows with "
                            f"{len(hs)} different configs ({', '.join(sorted(hs))}): reported apart, not averaged")
    out = []
    per_seed: dict[tuple, dict[str, dict[int, float]]] = {}
    for key, rs in groups.items():
        preset, dev, kind, label, chash = key
        rs = sorted(rs, key=lambda r: r["seed"])
        seen: dict[int, dict] = {}
        for r in rs:  # one row per seed: the last one wins (duplicates are reported)
            if r["seed"] in seen:
                warnings.append(f"cell '{label}' seed {r['seed']} has more than one row; the last is used")
            seen[r["seed"]] = r
        rs = list(seen.values())
        t = {"preset": preset, "device": dev, "kind": kind, "cell": label, "config_hash": chash, "n": len(rs),
             "seeds": [r["seed"] for r in rs], "cell_dict": rs[0].get("cell") or {}}
        for m in METRICS:
            vals = [r["metrics"][m] for r in rs if m in r["metrics"]]
            t[m] = vals
            t[m + "_mean"], t[m + "_std"] = mean_std(vals) if vals else (float("nan"), float("nan"))
        for m in ("step_ms_median", "step_ms_p90", "images_per_s", "peak_mem_mib", "train_wall_s", "final_loss"):
            vals = [r["metrics"][m] for r in rs if m in r["metrics"]]
            t[m] = float(np.median(vals)) if vals else float("nan")
        per_seed[key] = {m: {r["seed"]: r["metrics"][m] for r in rs if m in r["metrics"]} for m in METRICS}
        out.append(t)
    # Paired change against the default cell of the same preset and device.
    default_label = cell_label(default_cell) if default_cell is not None else None
    for t in out:
        ref = None
        if t["kind"] == "pic" and default_cell is not None:
            ref = next((k for k in per_seed if k[0] == t["preset"] and k[1] == t["device"] and k[2] == "pic"
                        and all(_matches(k, default_cell, out))), None)
        for m in METRICS:
            if ref is None:
                t["delta_" + m], t["ci_" + m], t["paired_n_" + m] = float("nan"), float("nan"), 0
            else:
                key = (t["preset"], t["device"], t["kind"], t["cell"], t["config_hash"])
                t["delta_" + m], t["ci_" + m], t["paired_n_" + m] = paired_ci(per_seed[key][m], per_seed[ref][m])
        t["is_default"] = default_label is not None and ref is not None and ref[3] == t["cell"]
    out.sort(key=lambda t: (t["preset"], t["device"], t["kind"] != "pic", t["kind"], _order(t)))
    return out, warnings


def _matches(key: tuple, default_cell: dict[str, Any], table: list[dict[str, Any]]) -> list[bool]:
    t = next(x for x in table if (x["preset"], x["device"], x["kind"], x["cell"], x["config_hash"]) == key)
    return [t["cell_dict"].get(k) == v for k, v in default_cell.items()]


def _order(t: dict[str, Any]) -> tuple:
    return tuple((str(type(v).__name__), v if not isinstance(v, (list, dict)) else str(v))
                 for v in t["cell_dict"].values())


def to_markdown(name: str, table: list[dict[str, Any]], warnings: list[str], problems: list[str],
                reference: list[str] | None = None) -> str:
    lines = [f"# {name}", "", "Generated by `python -m pic_bench.tables` from `results/rows/"
             f"{name}.jsonl`; do not edit. Accuracy: mean ± std over seeds (n, values). Δ: change against the "
             "default cell, mean of per-seed differences ± 95% t half-width (seeds paired). Step time: median "
             "over seeds of each run's median step (ms, compute only). Memory: peak CPU RSS or CUDA "
             "max allocated (MiB).", ""]
    for (preset, dev) in sorted({(t["preset"], t["device"]) for t in table}):
        lines += [f"## preset `{preset}` on {dev}", "",
                  "| cell | kind | n | kNN top-1 | linear top-1 | Δ kNN | Δ linear | step ms (p90) | img/s "
                  "| peak MiB | kNN values |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for t in table:
            if (t["preset"], t["device"]) != (preset, dev):
                continue
            star = " (default)" if t.get("is_default") else ""

            def delta(m):
                if t.get("is_default") or math.isnan(t["delta_" + m]):
                    return "—"
                ci = t["ci_" + m]
                return f"{t['delta_' + m]:+.2f} ± {_fmt(ci)}" if not math.isnan(ci) else f"{t['delta_' + m]:+.2f}"

            lines.append(
                f"| {t['cell']}{star} | {t['kind']} | {t['n']} | {_fmt(t['knn_top1_mean'])} ± "
                f"{_fmt(t['knn_top1_std'])} | {_fmt(t['linear_top1_mean'])} ± {_fmt(t['linear_top1_std'])} | "
                f"{delta('knn_top1')} | {delta('linear_top1')} | {_fmt(t['step_ms_median'], 1)} "
                f"({_fmt(t['step_ms_p90'], 1)}) | {_fmt(t['images_per_s'], 0)} | {_fmt(t['peak_mem_mib'], 0)} | "
                f"{', '.join(_fmt(v) for v in t['knn_top1'])} |")
        lines.append("")
    if reference:
        lines += ["## Published reference numbers", ""] + reference + [""]
    if warnings or problems:
        lines += ["## Problems found while building this table", ""]
        lines += [f"- {w}" for w in warnings] + [f"- {p}" for p in problems] + [""]
    return "\n".join(lines)


CSV_COLS = ["preset", "device", "kind", "cell", "config_hash", "n", "seeds", "knn_top1_mean", "knn_top1_std",
            "knn_top1", "linear_top1_mean", "linear_top1_std", "linear_top1", "delta_knn_top1", "ci_knn_top1",
            "delta_linear_top1", "ci_linear_top1", "step_ms_median", "step_ms_p90", "images_per_s", "peak_mem_mib",
            "train_wall_s", "final_loss"]


def to_csv(table: list[dict[str, Any]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLS)
    for t in table:
        w.writerow([(" ".join(_fmt(x, 4) for x in t[c]) if isinstance(t[c], list) and c != "seeds"
                     else " ".join(map(str, t[c])) if c == "seeds"
                     else _fmt(t[c], 4) if isinstance(t[c], float) else t[c]) for c in CSV_COLS])
    return buf.getvalue()


def to_latex(name: str, table: list[dict[str, Any]]) -> str:
    def esc(s: str) -> str:
        return s.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")

    lines = [f"% {name}: generated by python -m pic_bench.tables; do not edit", r"\begin{tabular}{llrrrr}",
             r"\toprule", r"cell & kind & $n$ & kNN top-1 & linear top-1 & step (ms) \\", r"\midrule"]
    for t in table:
        lines.append(f"{esc(t['cell'])} & {esc(t['kind'])} & {t['n']} & ${_fmt(t['knn_top1_mean'])} \\pm "
                     f"{_fmt(t['knn_top1_std'])}$ & ${_fmt(t['linear_top1_mean'])} \\pm {_fmt(t['linear_top1_std'])}$"
                     f" & {_fmt(t['step_ms_median'], 1)} \\\\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def _default_cell(name: str) -> dict[str, Any] | None:
    path = Path("ablations") / f"{name}.yaml"
    if not path.is_file():
        return None
    from .config import load_ablation

    try:
        return load_ablation(path).default_cell
    except Exception:  # noqa: BLE001 - a table is still built without the default cell
        return None


def build_table(name: str, results_dir: Path = DEFAULT_RESULTS, preset: str | None = None, write: bool = True,
                default_cell: dict[str, Any] | None = None) -> str:
    rows, problems = read_rows(results_dir, name)
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    if default_cell is None:
        default_cell = _default_cell(name)
    table, warnings = aggregate(rows, default_cell)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    md = to_markdown(name, table, warnings, [str(p) for p in problems])
    if write:
        out = Path(results_dir) / "tables"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.md").write_text(md)
        (out / f"{name}.csv").write_text(to_csv(table))
        (out / f"{name}.tex").write_text(to_latex(name, table))
    if preset:
        keep = [t for t in table if t["preset"] == preset]
        return to_markdown(name, keep, warnings, [str(p) for p in problems])
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pic_bench.tables", description=__doc__.split("\n")[0])
    ap.add_argument("ablations", nargs="*", help="ablation names (default: every one with rows)")
    ap.add_argument("--results", default=str(DEFAULT_RESULTS))
    args = ap.parse_args(argv)
    names = args.ablations or sorted(p.stem for p in (Path(args.results) / "rows").glob("*.jsonl"))
    if not names:
        print(f"no rows under {args.results}/rows/", file=sys.stderr)
        return 1
    for n in names:
        build_table(n, Path(args.results), write=True)
        print(f"wrote {args.results}/tables/{n}.md, .csv, .tex")
    return 0


if __name__ == "__main__":
    sys.exit(main())
