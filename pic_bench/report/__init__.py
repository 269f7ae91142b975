"""The report: result rows with provenance, tables and figures, comparisons with committed rows.

``results`` (rows, their files and provenance; ``load_rows``, the rows as a pandas DataFrame), ``machine`` (what a
row ran on), ``timing`` (what a segment of work had of the machine, and whether its times can be trusted),
``stats`` (paired intervals, p and detectable effects), ``tables``, ``plots``, ``compare``.

May import: ``pic_bench.config``, ``pic_bench.files`` (writes that say which file failed) and ``pic_bench.reference``
(published numbers). Never the method or the suite.
"""


def load_rows(results_dir="results", ablation=None):
    """``pic_bench.report.results.load_rows``, imported when called (pandas and torch are not loaded before)."""
    from .results import load_rows as load

    return load(results_dir, ablation)
