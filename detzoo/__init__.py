"""detzoo: object detection and segmentation with Detectron2's models, configs and checkpoints."""
__version__ = "0.1.0"
