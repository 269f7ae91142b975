"""The method: PIC itself, as the paper describes it.

Holds the recent-negatives ring (``negatives``), the loss (``loss``), the classifier's corrected update
(``update``), the fast head and its Triton kernels (``head``, ``head_triton``), the network (``model``), one
training run (``train``) and the split of a run across data-parallel ranks (``distributed``).

May import: ``pic_bench.config``, ``pic_bench.files``, ``pic_bench.data``. Never the suite, the report or the
evaluation.
"""
