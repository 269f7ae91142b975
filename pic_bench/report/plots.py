"""Plots rebuilt from result rows (matplotlib, Agg), written as PNG beside the tables by ``pic_bench.tables``.

    python -m pic_bench.tables          # regenerates every table and its plots under results/tables/

- training ablations: kNN and linear top-1 (mean, error bars the std over seeds) against the numeric setting
  the ablation sweeps (K, epochs, tau, ...), one line per combination of the other varied settings; where no
  numeric setting is swept (the components' arms, the schedulers), one point per arm and no lines. Lines join
  only points along a swept axis. The baselines are dotted grey lines; one legend serves both panels.
  ``pic.K = 0`` (all instances) is drawn at K = N.
- scaling: head and whole-step time, and peak memory beyond w and u (the working memory; w and u themselves
  as a dotted line), against N, log-log, one line per arm; the legend below the panels.
- visit_distance: histograms of the distance between consecutive visits of an instance, log-binned, one panel
  per (N, D, S), one line per scheduler, with D and N marked.

Every function takes the table rows the tables module built and returns whether it wrote a file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

SAVE = {"dpi": 100, "metadata": {"Software": None}}  # no version stamp: the same rows give the same bytes


def config_value(config: dict[str, Any], dotted: str) -> Any:
    section, _, key = dotted.partition(".")
    return (config.get(section) or {}).get(key)


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def varied_keys(table: list[dict[str, Any]]) -> tuple[str | None, list[str]]:
    """(x key, series keys): the numeric setting swept across the PIC cells, and the other varied ones.

    A swept axis is a numeric key that every cell sets (a ``sweep``, or cells that all name it) and that takes
    more than one value; a key that only some cells set is an arm's setting (``model.pool: 1`` among the
    components), not an axis, and joining it to the others' value with a line would draw a trend that was never
    measured. Keys are the cells' override keys in order of first appearance; values come from each row's
    resolved config.
    """
    keys: list[str] = []
    for t in table:
        for k in t["cell_dict"]:
            if k not in keys:
                keys.append(k)
    varied = [k for k in keys if len({repr(config_value(t["config"], k)) for t in table}) > 1]
    swept = [k for k in varied if all(k in t["cell_dict"] for t in table)
             and all(_numeric(config_value(t["config"], k)) for t in table)]
    if not swept:
        return None, varied
    x = swept[0]
    return x, [k for k in varied if k != x]


def _x(t: dict[str, Any], key: str) -> float:
    v = config_value(t["config"], key)
    if key == "pic.K" and v == 0:  # all instances
        return float((t.get("derived") or {}).get("N") or np.nan)
    return float(v)


def _tick(v: float, key: str, table: list[dict[str, Any]]) -> str:
    if key == "pic.K" and any(config_value(t["config"], key) == 0 and _x(t, key) == v for t in table):
        return f"all\n({v:,.0f})"
    return f"{v:g}"


def _save(fig, path: Path) -> None:
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, **SAVE)
    plt.close(fig)


ERROR_BARS = "error bars: std over seeds (none at n = 1)"


def accuracy_figure_kind(table: list[dict[str, Any]]) -> str | None:
    """'numeric' (lines along a swept numeric setting), 'categorical' (one point per arm, no lines) or None
    (fewer than two PIC cells: nothing to compare, no figure)."""
    pic = [t for t in table if t["kind"] == "pic"]
    if len(pic) < 2:
        return None
    return "numeric" if varied_keys(pic)[0] is not None else "categorical"


def _arm_label(t: dict[str, Any]) -> str:
    return (t["cell"] if t["cell_dict"] else "default") + (" (default)" if t.get("is_default") and t["cell_dict"]
                                                           else "")


def accuracy_figure(title: str, table: list[dict[str, Any]]):
    """The accuracy figure of one table section (kNN and linear top-1, mean +- std over seeds), or None.

    Along a swept numeric setting, one line per combination of the other varied settings (a combination with a
    single point is a point); categorical arms are points with error bars at their own x position, no lines.
    The baselines are grey horizontal lines (a level to compare every arm with). One legend for both panels.
    """
    kind = accuracy_figure_kind(table)
    if kind is None:
        return None
    pic = [t for t in table if t["kind"] == "pic"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), layout="constrained")
    if kind == "numeric":
        xkey, series_keys = varied_keys(pic)
        series: dict[str, list[dict[str, Any]]] = {}
        for t in pic:
            label = ", ".join(f"{k}={config_value(t['config'], k)}" for k in series_keys) or "PIC"
            series.setdefault(label, []).append(t)
        xs_all = [_x(t, xkey) for t in pic if np.isfinite(_x(t, xkey))]
        log = bool(xs_all) and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 8
    for ax, metric, mname in zip(axes, ("knn_top1", "linear_top1"), ("kNN top-1 (%)", "linear top-1 (%)")):
        if kind == "numeric":
            span = (max(xs_all) - min(xs_all)) if xs_all else 0.0
            for i, (label, ts) in enumerate(series.items()):
                ts = sorted(ts, key=lambda t: _x(t, xkey))
                xs = np.array([_x(t, xkey) for t in ts])
                shift = (i - (len(series) - 1) / 2) * 0.025  # dodge series apart so overlapping error bars show
                xs = xs * (1 + shift) if log else xs + shift * span
                ys = np.array([t[metric + "_mean"] for t in ts])
                es = np.array([0.0 if np.isnan(t[metric + "_std"]) else t[metric + "_std"] for t in ts])
                ax.errorbar(xs, ys, yerr=es, fmt="-o" if len(ts) > 1 else "o", color=f"C{i}", capsize=3,
                            label=label)
            if log:
                ax.set_xscale("log")
            ticks = sorted(set(xs_all))
            ax.set_xticks(ticks)
            ax.set_xticklabels([_tick(v, xkey, pic) for v in ticks], fontsize=7)
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(xkey + (" (0 = all: drawn at N)" if xkey == "pic.K" else ""))
        else:
            for i, t in enumerate(pic):
                std = t[metric + "_std"]
                ax.errorbar([i], [t[metric + "_mean"]], yerr=[0.0 if np.isnan(std) else std], fmt="o",
                            color="C0", capsize=3, label="PIC" if i == 0 else None)
            ax.set_xticks(range(len(pic)))
            ax.set_xticklabels([_arm_label(t) for t in pic], fontsize=7, rotation=20, ha="right")
            ax.set_xlim(-0.5, len(pic) - 0.5)
            ax.set_xlabel("arm (each a separate setting; no trend between them)")
        for j, base in enumerate(sorted({t["kind"] for t in table if t["kind"] != "pic"})):
            vals = [t[metric + "_mean"] for t in table if t["kind"] == base]
            ax.axhline(float(np.mean(vals)), color="0.5", ls=":" if j == 0 else "-.", lw=1,
                       label=base.replace("baseline_", "baseline: "))
        ax.set_ylabel(f"{mname}\n{ERROR_BARS}", fontsize=8)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i].startswith("baseline"))  # PIC first, then baselines
    fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside lower center",
               ncol=min(len(labels), 4), fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def accuracy_plot(name: str, title: str, table: list[dict[str, Any]], path: Path) -> bool:
    """Writes ``accuracy_figure`` to ``path``; False (nothing written) when there is no figure."""
    fig = accuracy_figure(title, table)
    if fig is None:
        return False
    _save(fig, path)
    return True


def _extra(p: dict[str, Any], part: str) -> float:
    """Peak memory beyond w and u: given, or the peak (which includes them) less their size."""
    return p.get(f"{part}_extra_mib", p[f"{part}_peak_mib"] - p["state_mib"])


def scaling_figure(title: str, points: list[dict[str, Any]]):
    """Step time and peak memory against N, log-log, or None; ``points`` are ok scaling rows' table entries.
    One legend for both panels, below them, so that it covers no point."""
    if not points:
        return None
    arms: dict[str, list[dict[str, Any]]] = {}
    for p in sorted(points, key=lambda p: (p["arm"].startswith("recent"), "dense" not in p["arm"], p["arm"])):
        arms.setdefault(p["arm"], []).append(p)
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 5.2), layout="constrained")
    for i, (arm, ps) in enumerate(arms.items()):
        ps = sorted(ps, key=lambda p: p["N"])
        n = [p["N"] for p in ps]
        color = f"C{i}"
        ax_t.plot(n, [p["head_ms_median"] for p in ps], "-o", color=color, label=f"{arm}: head")
        ax_t.plot(n, [p["step_ms_median"] for p in ps], "--s", color=color, label=f"{arm}: whole step")
        ax_m.plot(n, [_extra(p, "head") for p in ps], "-o", color=color, label=f"{arm}: head")
        ax_m.plot(n, [_extra(p, "step") for p in ps], "--s", color=color, label=f"{arm}: whole step")
    state = sorted({(p["N"], p["state_mib"]) for p in points})
    ax_m.plot([s[0] for s in state], [s[1] for s in state], ":", color="0.4", label="w and u (state)")
    for ax, ylabel in ((ax_t, "step time (ms, median over timed steps)"),
                       (ax_m, "peak memory beyond w and u (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N (instances)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
    handles, labels = ax_m.get_legend_handles_labels()  # the memory panel has every line, the state's too
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def scaling_plot(title: str, points: list[dict[str, Any]], path: Path) -> bool:
    """Writes ``scaling_figure`` to ``path``; False when there are no points."""
    fig = scaling_figure(title, points)
    if fig is None:
        return False
    _save(fig, path)
    return True


def visit_plot(title: str, entries: list[dict[str, Any]], path: Path) -> bool:
    """Revisit-distance histograms: one panel per (N, D, S), one line per scheduler (share of revisits per bin)."""
    if not entries:
        return False
    settings = sorted({(e["N"], e["D"], e["S"]) for e in entries})
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4.2), squeeze=False)
    order = {"epoch": 0, "sliding": 1, "official": 2}
    for ax, (N, D, S) in zip(axes[0], settings):
        es = sorted((e for e in entries if (e["N"], e["D"], e["S"]) == (N, D, S)),
                    key=lambda e: (order.get(e["scheduler"], 9), e["scheduler"]))
        for e in es:
            edges = np.asarray(e["hist_edges"], dtype=float)
            counts = np.asarray(e["hist_counts"], dtype=float)
            share = counts / max(counts.sum(), 1)
            ax.stairs(share, edges, color=f"C{order.get(e['scheduler'], 3)}", lw=1.5,
                      label=f"{e['scheduler']} (median {e['median']:,.0f})")
        ax.axvline(D, color="0.3", ls="--", lw=1)
        ax.axvline(N, color="0.3", ls=":", lw=1)
        ax.text(D, ax.get_ylim()[1] * 0.95, " D", fontsize=8, va="top")
        ax.text(N, ax.get_ylim()[1] * 0.85, " N", fontsize=8, va="top")
        ax.set_xscale("log")
        ax.set_xlabel("samples between consecutive visits of an image")
        ax.set_ylabel("share of revisits per bin")
        ax.set_title(f"N={N:,}, D={D:,}, S={S:,}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)
    return True
