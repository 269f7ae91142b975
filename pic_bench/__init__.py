"""pic_bench: a reference implementation and ablation suite for PIC (Parametric Instance Classification)."""
__version__ = "0.1.0"
