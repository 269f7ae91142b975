"""The report: result rows with provenance, tables and figures, comparisons with committed rows.

``results`` (rows, their files and provenance), ``machine`` (what a row ran on), ``tables``, ``plots``,
``compare``.

May import: ``pic_bench.config``, ``pic_bench.files`` (writes that say which file failed) and ``pic_bench.reference``
(published numbers). Never the method or the suite.
"""
