"""Entry point: `python -m pic_bench.preflight ...` runs `pic_bench.suite.preflight.main` (see that module's docstring)."""
import sys

from pic_bench.suite.preflight import main

if __name__ == "__main__":
    sys.exit(main())
