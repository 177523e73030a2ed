"""Configuration: `CfgNode`, the defaults (`get_cfg`), and `@configurable`.

The names are Detectron2's, so `from detzoo.config import get_cfg, configurable` is a
drop-in for `from detectron2.config import ...` (LazyConfig / instantiate excepted).
"""
from .config import CfgNode, configurable, global_cfg, set_global_cfg
from .defaults import get_cfg

__all__ = ["CfgNode", "get_cfg", "global_cfg", "set_global_cfg", "configurable"]
