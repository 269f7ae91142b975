"""Entry point: `python -m pic_bench.tables ...` runs `pic_bench.report.tables.main` (see that module's docstring)."""
import sys

from pic_bench.report.tables import main

if __name__ == "__main__":
    sys.exit(main())
