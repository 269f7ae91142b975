"""Entry point: `python -m pic_bench.run ...` runs `pic_bench.suite.run.main` (see that module's docstring)."""
import sys

from pic_bench.suite.run import main

if __name__ == "__main__":
    sys.exit(main())
