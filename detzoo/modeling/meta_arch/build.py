"""Registry and builder of meta-architectures (whole models)."""
import torch

from detzoo.utils.registry import Registry

META_ARCH_REGISTRY = Registry("META_ARCH")
META_ARCH_REGISTRY.__doc__ = """
Meta-architectures are whole models: they take a list of input dicts and return losses
(training) or a list of output dicts (inference). Registered classes are built as `cls(cfg)`.
"""


def build_model(cfg):
    """Build the model named by cfg.MODEL.META_ARCHITECTURE on cfg.MODEL.DEVICE.

    Weights are not loaded here: use DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS).
    """
    model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    model.to(torch.device(cfg.MODEL.DEVICE))
    return model
