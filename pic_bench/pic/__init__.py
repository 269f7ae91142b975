"""The method: PIC itself, as the paper describes it.

Holds the recent-negatives ring (``negatives``), the loss (``loss``), the classifier's corrected update
(``update``), the fast head and its Triton kernels (``head``, ``head_triton``), the network (``model``), one
training run (``train``), the split of a run across data-parallel ranks (``distributed``) and which saved files
cannot be read back and are moved aside (``checkpoint``).

May import: ``pic_bench.config``, ``pic_bench.files``, ``pic_bench.data``. Never the suite, the report or the
evaluation.
"""
