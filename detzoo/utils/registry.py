"""Registries for the extension points users plug into (backbones, heads, meta-architectures).

fvcore's `Registry` is the well-kept implementation Detectron2 also uses; we re-export it so
`from detzoo.utils.registry import Registry` works as users expect.
"""
from fvcore.common.registry import Registry

__all__ = ["Registry"]
