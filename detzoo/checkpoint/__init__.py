"""Checkpoints: loading Detectron2 / Detectron1 / torchvision weights, atomic saving."""
from fvcore.common.checkpoint import Checkpointer, PeriodicCheckpointer

from .c2_model_loading import align_and_update_state_dicts
from .detection_checkpoint import DetectionCheckpointer

__all__ = ["Checkpointer", "PeriodicCheckpointer", "DetectionCheckpointer", "align_and_update_state_dicts"]
