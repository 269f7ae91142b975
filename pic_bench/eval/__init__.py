"""Judging a frozen backbone: weighted kNN, the linear protocols (``probe``, ``logreg``, ``linear_sgd``), kept backbones.

``evaluate`` holds the protocols and their resumable progress; ``backbone`` saves and loads trained backbones.

May import: ``pic_bench.config``, ``pic_bench.files``, ``pic_bench.data``, ``pic_bench.pic`` (the network and the
rank split).
"""
