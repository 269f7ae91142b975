"""Entry point: `python -m pic_bench.status ...` runs `pic_bench.suite.status.main` (see that module's docstring)."""
import sys

from pic_bench.suite.status import main

if __name__ == "__main__":
    sys.exit(main())
