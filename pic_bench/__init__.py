"""pic_bench: a reference implementation and ablation suite for PIC (Parametric Instance Classification).

``pic_bench.load_backbone(path)`` returns a run's trained backbone (``row["backbone"]``) as an nn.Module ready for
features; see ``pic_bench.eval.backbone``.
"""
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so that `import pic_bench.config` (status, launch) does not pull in torch and torchvision.
    if name == "load_backbone":
        from .eval.backbone import load_backbone

        return load_backbone
    raise AttributeError(f"module 'pic_bench' has no attribute {name!r}")
