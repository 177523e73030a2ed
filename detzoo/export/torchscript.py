"""TorchScript helpers: scripting models that pass `Instances` around, and saving TorchScript
models with a readable dump of their code and graph."""
import os
from typing import Dict, List

import torch
from torch import nn

from detzoo import _ext
from detzoo.modeling import GeneralizedRCNN
from detzoo.structures import Boxes
from detzoo.utils.file_io import PathManager

from .torchscript_patch import freeze_training_mode, patch_instances

__all__ = [
    "DEFAULT_SCRIPTING_FIELDS",
    "ScriptableAdapter",
    "dump_torchscript_IR",
    "save_torchscript",
    "scripting_with_instances",
]

# The Instances fields of detzoo's R-CNN and dense detectors at inference.
DEFAULT_SCRIPTING_FIELDS: Dict[str, type] = {
    "proposal_boxes": Boxes,
    "objectness_logits": torch.Tensor,
    "pred_boxes": Boxes,
    "scores": torch.Tensor,
    "pred_classes": torch.Tensor,
    "pred_masks": torch.Tensor,
    "pred_keypoints": torch.Tensor,
    "pred_keypoint_heatmaps": torch.Tensor,
}


def scripting_with_instances(model: nn.Module, fields: Dict[str, type]) -> torch.jit.ScriptModule:
    """`torch.jit.script` a model in eval mode whose code uses `Instances`.

    An `Instances` holds any fields, which TorchScript cannot type; while compiling, it is
    replaced by a generated class with exactly the given fields (see `patch_instances`), and
    `training` is made a constant so that only the inference code is compiled. Both are undone
    afterwards, so another model can be scripted with other fields.

        fields = {"pred_boxes": Boxes, "scores": torch.Tensor, "pred_classes": torch.Tensor}
        scripted = scripting_with_instances(model.eval(), fields)

    Args:
        model: the module to compile, in eval mode.
        fields: name -> type (torch.Tensor, Boxes, ...) of every field an `Instances` takes in
            the model, inputs and outputs included.

    Returns:
        the ScriptModule. `Instances` it returns are of the generated class; their
        `get_fields()` gives a dict of tensors (a Boxes field as its `.tensor`).
    """
    if model.training:
        raise ValueError("scripting_with_instances supports models in eval mode only; call model.eval() first")
    _ext.load()  # the compiler must see the torch.ops.detzoo.* schemas
    with freeze_training_mode(model), patch_instances(fields):
        return torch.jit.script(model)


class ScriptableAdapter(nn.Module):
    """Wraps a detector for scripting: takes `[{"image": Tensor[C, H, W]}, ...]` and returns one
    dict of output tensors per image (a scripted model cannot return `Instances` to Python).

    R-CNN models run without the final resize (`do_postprocess=False`): boxes are at the
    network input size and masks are (R, 1, M, M) probabilities, as with tracing. Dense
    detectors (RetinaNet) return their raw detections when scripted.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.is_rcnn = isinstance(model, GeneralizedRCNN)
        self.eval()

    def __prepare_scriptable__(self):
        # TorchScript compiles each branch of `self.is_rcnn`; give it a class with one path.
        adapter_class = _RCNNScriptableAdapter if self.is_rcnn else _DenseScriptableAdapter
        return adapter_class(self.model).train(self.training)

    def forward(self, inputs: List[Dict[str, torch.Tensor]]) -> List[Dict[str, torch.Tensor]]:
        return self.__prepare_scriptable__().forward(inputs)


class _RCNNScriptableAdapter(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: List[Dict[str, torch.Tensor]]) -> List[Dict[str, torch.Tensor]]:
        return [i.get_fields() for i in self.model.inference(inputs, do_postprocess=False)]


class _DenseScriptableAdapter(_RCNNScriptableAdapter):
    def forward(self, inputs: List[Dict[str, torch.Tensor]]) -> List[Dict[str, torch.Tensor]]:
        return [i.get_fields() for i in self.model(inputs)]


def _code_of(module: torch.jit.ScriptModule) -> str:
    """The Python-like code of `module` and of every submodule that has its own forward."""
    parts = []
    for name, submodule in [("", module)] + list(module.named_modules())[1:]:
        code = getattr(submodule, "code", None) if isinstance(submodule, torch.jit.ScriptModule) else None
        if code:
            parts.append(f"# --- {name or type(module).__name__} ---\n{code}")
    return "\n".join(parts)


def dump_torchscript_IR(model, dir: str) -> None:
    """Write `model_ts_code.txt` (the TorchScript code) and `model_ts_IR.txt` (the inlined
    graph) of a traced or scripted `model` into `dir`, to read what was exported."""
    PathManager.mkdirs(dir)
    if isinstance(model, torch.jit.ScriptModule):
        code = _code_of(model)
        graph = model.inlined_graph if hasattr(model, "inlined_graph") else model.graph
    else:  # ScriptFunction
        code, graph = model.code, model.graph
    with PathManager.open(os.path.join(dir, "model_ts_code.txt"), "w") as f:
        f.write(code)
    with PathManager.open(os.path.join(dir, "model_ts_IR.txt"), "w") as f:
        f.write(str(graph))


def save_torchscript(model, dir: str, filename: str = "model.ts") -> str:
    """`torch.jit.save` `model` as dir/filename, with its IR dumps beside; returns the path."""
    PathManager.mkdirs(dir)
    path = os.path.join(dir, filename)
    with PathManager.open(path, "wb") as f:
        torch.jit.save(model, f)
    dump_torchscript_IR(model, dir)
    return path
