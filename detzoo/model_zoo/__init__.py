"""Detectron2's model zoo: the packaged configs (`configs/`) and the checkpoints Detectron2
trained from them. Same functions as `detectron2.model_zoo`."""
from .model_zoo import get, get_checkpoint_url, get_config, get_config_file, list_configs

__all__ = ["get", "get_checkpoint_url", "get_config", "get_config_file", "list_configs"]
