"""Benchmarks; each module is a command that writes rows named by machine under ``results/bench/``.

    python -m pic_bench.bench.loader      # loader throughput: DALI against torchvision
    python -m pic_bench.bench.scaling     # the classification head: step time and memory vs N and K
    python -m pic_bench.bench.digest      # an image folder's content digest, cold and cached, beside its listing

``memory`` measures peak memory (also for the analysis ablations).

May import: anything below the suite (``config``, ``data``, ``pic``, ``eval``, ``report``).
"""
