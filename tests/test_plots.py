"""The figures' logic on the data they plot (which artists, which labels), not their pixels.

    nice -n 10 python -m pytest tests/test_plots.py -q
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pic_bench.report import plots, tables  # noqa: E402
from test_tables import make  # noqa: E402

COMPONENTS = [{}, {"pic.softmax": "plain"}, {"data.aug": "weak"}, {"model.head": "linear"}, {"model.head": "none"},
              {"model.pool": 1}]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def components_table():
    rows = []
    for s in range(3):
        for i, cell in enumerate(COMPONENTS):
            rows.append(make("components", cell, s, 70.0 + i + s, 80.0 + i))
        rows.append(make("components", {}, s, 72.0, 74.0, kind="baseline_random"))
    rows.append(make("components", {}, 0, 96.5, 83.0, kind="baseline_pixels"))
    table, _ = tables.aggregate(rows, {}, COMPONENTS)  # in the file's order, as build_table gives it
    return table


def data_lines(ax):
    """The lines that carry PIC data: the data line of each error-bar container (not its caps or bars)."""
    return [c.lines[0] for c in ax.containers]


def label(ln) -> str:
    """A data line's legend label (matplotlib puts it on the error-bar container)."""
    return next(c.get_label() for c in ln.axes.containers if c.lines[0] is ln)


def horizontal(ax):
    return [ln for ln in ax.get_lines() if len(set(np.atleast_1d(ln.get_ydata()))) == 1
            and len(ln.get_xdata()) == 2 and ln.get_marker() in ("", "None", None)]


def test_categorical_arms_are_points_with_error_bars_not_lines():
    table = components_table()
    assert plots.accuracy_figure_kind(table) == "categorical"  # model.pool is one arm's setting, not a sweep
    fig = plots.accuracy_figure("components", table)
    for ax, metric in zip(fig.axes[:2], ("knn_top1", "linear_top1")):
        lines = data_lines(ax)
        assert len(lines) == len(COMPONENTS)  # one point per arm
        assert all(len(ln.get_xdata()) == 1 and ln.get_linestyle() == "None" for ln in lines)  # no joining line
        assert [float(ln.get_ydata()[0]) for ln in lines] == [t[metric + "_mean"] for t in table if t["kind"] == "pic"]
        # every arm has its error bar (std over 3 seeds = 1.0)
        bars = [c for c in ax.containers if c.has_yerr]
        assert len(bars) == len(COMPONENTS)
        # the only horizontal lines are the baselines, never a PIC arm
        labels = sorted(ln.get_label() for ln in horizontal(ax))
        assert labels == ["baseline: pixels", "baseline: random"]
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        assert ticks == ["default", "pic.softmax=plain", "data.aug=weak", "model.head=linear", "model.head=none",
                         "model.pool=1"]


def test_error_bars_are_labelled_and_one_legend_serves_both_panels():
    fig = plots.accuracy_figure("components", components_table())
    for ax in fig.axes[:2]:
        assert "error bars: std over seeds" in ax.get_ylabel()
        assert ax.get_legend() is None
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["PIC", "baseline: pixels", "baseline: random"]


def k_table(extra_series: bool = False):
    rows = []
    for s in range(2):
        for K in (128, 512, 2048, 0):
            for corr in ((True, False) if extra_series else (True,)):
                cell = {"pic.K": K, "pic.correction": corr} if extra_series else {"pic.K": K}
                rows.append(make("x", cell, s, 70.0 + K / 1000 + corr + s, 80.0))
    table, _ = tables.aggregate(rows, {"pic.K": 0} if not extra_series else {"pic.correction": True})
    return table


def test_a_swept_numeric_axis_is_one_line_per_series():
    table = k_table(extra_series=True)
    assert plots.accuracy_figure_kind(table) == "numeric"
    fig = plots.accuracy_figure("weight_correction", table)
    ax = fig.axes[0]
    lines = data_lines(ax)
    assert sorted(label(ln) for ln in lines) == ["pic.correction=False", "pic.correction=True"]
    for ln in lines:
        assert ln.get_linestyle() == "-" and len(ln.get_xdata()) == 4
        assert list(ln.get_xdata()) == sorted(ln.get_xdata())  # along the axis: 128, 512, 2048, all (N)
    assert ax.get_xscale() == "log" and "pic.K" in ax.get_xlabel()
    assert sorted(t.get_text() for t in fig.legends[0].get_texts()) == ["pic.correction=False",
                                                                        "pic.correction=True"]


def test_a_series_with_one_point_is_a_point_not_a_horizontal_line():
    rows = [make("x", {"pic.K": K, "pic.tau": tau}, s, 70.0 + K / 1000, 80.0)
            for s in range(2) for K, tau in ((128, 0.2), (512, 0.2), (2048, 0.2), (512, 0.5))]
    table, _ = tables.aggregate(rows, None)
    fig = plots.accuracy_figure("x", table)
    ax = fig.axes[0]
    single = [ln for ln in data_lines(ax) if label(ln) == "pic.tau=0.5"]
    assert len(single) == 1 and len(single[0].get_xdata()) == 1 and single[0].get_linestyle() == "None"
    assert horizontal(ax) == []  # no baselines here, and no arm drawn as a horizontal line


def test_fewer_than_two_cells_draw_nothing(tmp_path):
    table, _ = tables.aggregate([make("x", {"pic.K": 0}, 0, 70.0, 80.0)], None)
    assert plots.accuracy_figure_kind(table) is None and plots.accuracy_figure("x", table) is None
    assert not plots.accuracy_plot("x", "x", table, tmp_path / "x.png") and not (tmp_path / "x.png").exists()


def scaling_points():
    out = []
    for arm, head in (("full softmax (all N), dense update", 1.0), ("recent K=512, correction", 0.01),
                      ("recent K=512, dense update (no correction)", 0.1)):
        for N in (10_000, 100_000, 1_000_000, 1_281_167):
            out.append({"arm": arm, "N": N, "head_ms_median": head * N / 100, "step_ms_median": 50 + head * N / 100,
                        "state_mib": 2 * N * 128 * 4 / 2**20, "head_peak_mib": 2 * N * 128 * 4 / 2**20 + 10,
                        "step_peak_mib": 2 * N * 128 * 4 / 2**20 + 300})
    return out


def test_the_scaling_legend_is_shared_and_covers_no_data():
    fig = plots.scaling_figure("scaling", scaling_points())
    fig.canvas.draw()
    axes = fig.axes[:2]
    assert all(ax.get_legend() is None for ax in axes)
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert len(texts) == 3 * 2 + 1 and "w and u (state)" in texts  # every arm's two lines, and the state
    box = legend.get_window_extent()
    for ax in axes:
        assert not box.overlaps(ax.get_window_extent()), "the legend sits on a panel"
    assert "median" in axes[0].get_ylabel()


def test_the_figures_are_the_ones_written(tmp_path):
    """accuracy_plot and scaling_plot write the figures tested above (a PNG; byte stability: test_tables)."""
    assert plots.accuracy_plot("components", "components", components_table(), tmp_path / "a.png")
    assert plots.scaling_plot("scaling", scaling_points(), tmp_path / "s.png")
    for name in ("a.png", "s.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
