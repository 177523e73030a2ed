"""Patches that make detzoo models exportable with TorchScript.

* `patch_builtin_len`: lets `torch.jit.trace` record shapes that the model reads with `len()`.
  `len(tensor)` must return a Python int, so under tracing it freezes the number of boxes of
  the sample input into the graph; `tensor.__len__()` returns the traced size instead. While a
  `TracingAdapter` runs, the builtin `len` of the modules listed here is replaced by one that
  calls `__len__` directly (every object `len` accepts has it).
* `patch_instances`: `Instances` keeps its fields in a dict of arbitrary values, which
  TorchScript cannot type. While scripting, it stands for a generated class whose fields are
  declared up front with their types (see `scripting_with_instances`).
* `freeze_training_mode`: declares `training` a constant of every submodule, so that the
  compiler drops the training branches instead of compiling them.
"""
import contextlib
import importlib
import importlib.util
import os
import sys
import tempfile
from typing import Dict, Iterable, Iterator, List, NamedTuple, Tuple

import torch
from torch import nn

from detzoo.structures import Instances

__all__ = ["TRACED_LEN_MODULES", "freeze_training_mode", "patch_builtin_len", "patch_instances"]

# Modules that size tensors with len() of boxes/instances on the inference path.
TRACED_LEN_MODULES = (
    "detzoo.modeling.poolers",
    "detzoo.modeling.roi_heads.roi_heads",
    "detzoo.modeling.roi_heads.fast_rcnn",
    "detzoo.modeling.roi_heads.mask_head",
    "detzoo.modeling.roi_heads.keypoint_head",
)


def _traceable_len(obj):
    return obj.__len__()


@contextlib.contextmanager
def patch_builtin_len(modules: Iterable[str] = ()) -> Iterator[None]:
    """Within the block, `len` in the `TRACED_LEN_MODULES` and `modules` (dotted names)
    returns `obj.__len__()`, a 0-d tensor for tensors being traced."""
    patched = []
    try:
        for name in tuple(TRACED_LEN_MODULES) + tuple(modules):
            module = importlib.import_module(name)
            patched.append((module, module.__dict__.get("len", _MISSING)))
            module.len = _traceable_len
        yield
    finally:
        for module, previous in reversed(patched):
            if previous is _MISSING:
                del module.len
            else:
                module.len = previous


_MISSING = object()


# ---------------------------------------------------------------------------------------------
# Instances with typed fields


def _type_name(field_type: type) -> str:
    """The name the generated module uses for `field_type` (imported by that name, since
    TorchScript resolves the names inside an annotation such as Optional[...] only when they
    are globals)."""
    return "torch.Tensor" if field_type is torch.Tensor else field_type.__name__


class _Field(NamedTuple):
    name: str
    annotation: str
    # Every detzoo structure used as a field (Boxes, ROIMasks, Keypoints...) keeps its data in
    # `.tensor`; get_fields() and cat() use it.
    wraps_tensor: bool
    movable: bool  # has `.to(device)`


class _InstancesSource:
    """Writes the source of a TorchScript class standing for `Instances` with the given fields.

    Every field `name` is held in an Optional attribute `_name` (None: field not set), read and
    written through a property `name`, so model code (`instances.scores = s`,
    `instances.scores`, `instances.has("scores")`, `instances[keep]`, `len(instances)`)
    compiles unchanged. Not supported: fields given to the constructor as keywords (TorchScript
    classes take none), `set`/`get` by name, and `Instances.cat` (use `instances[0].cat(...)`).
    """

    def __init__(self, class_name: str, fields: Dict[str, type]):
        self.name = class_name
        self.types = set(fields.values())
        names = [_type_name(t) for t in self.types]
        if len(set(names)) != len(names):
            raise ValueError(f"the field types must have distinct names, got {sorted(names)}")
        self.fields = [_Field(name, _type_name(t), t is not torch.Tensor, hasattr(t, "to"))
                       for name, t in fields.items()]
        self.lines: List[str] = []

    def add(self, indent: int, *lines: str) -> None:
        self.lines.extend("    " * indent + line for line in lines)

    def source(self) -> str:
        self.add(0, "import torch", "from typing import Dict, List, Optional, Tuple")
        self.add(0, *sorted({f"from {t.__module__} import {t.__name__}" for t in self.types if t is not torch.Tensor}))
        self.add(0, "", "", f"class {self.name}:")
        self.add(1, f'"""`Instances` with the fields {[f.name for f in self.fields]}, for TorchScript."""', "")
        for method in (self._init, self._properties, self._len, self._has, self._get_fields, self._getitem,
                       self._to, self._cat):
            method()
            self.add(0, "")
        return "\n".join(self.lines) + "\n"

    # Locals are named after their field ("<field>_value"): TorchScript does not let a variable
    # change type, and the fields have different types.

    def _init(self):
        self.add(1, "def __init__(self, image_size: Tuple[int, int]):")
        self.add(2, "self.image_size = image_size")
        for f in self.fields:
            self.add(2, f"self._{f.name} = torch.jit.annotate(Optional[{f.annotation}], None)")

    def _properties(self):
        for f in self.fields:
            self.add(1, "@property", f"def {f.name}(self) -> {f.annotation}:")
            # A local is needed for TorchScript to refine Optional[T] to T.
            self.add(2, f"value = self._{f.name}", "if value is None:")
            self.add(3, f"raise AttributeError(\"Cannot find field '{f.name}' in the given Instances!\")")
            self.add(2, "return value", "")
            self.add(1, f"@{f.name}.setter", f"def {f.name}(self, value: {f.annotation}) -> None:")
            self.add(2, f"self._{f.name} = value", "")

    def _len(self):
        self.add(1, "def __len__(self) -> int:")
        for f in self.fields:
            self.add(2, f"{f.name}_value = self._{f.name}", f"if {f.name}_value is not None:")
            self.add(3, f"return len({f.name}_value)")
        self.add(2, 'raise NotImplementedError("Empty Instances does not support __len__!")')

    def _has(self):
        self.add(1, "def has(self, name: str) -> bool:")
        for f in self.fields:
            self.add(2, f'if name == "{f.name}":')
            self.add(3, f"return self._{f.name} is not None")
        self.add(2, "return False")

    def _get_fields(self):
        self.add(1, "def get_fields(self) -> Dict[str, torch.Tensor]:")
        self.add(2, '"""The set fields; a Boxes-like field is given as its `.tensor`."""')
        self.add(2, "fields: Dict[str, torch.Tensor] = {}")
        for f in self.fields:
            self.add(2, f"{f.name}_value = self._{f.name}", f"if {f.name}_value is not None:")
            self.add(3, f'fields["{f.name}"] = {f.name}_value' + (".tensor" if f.wraps_tensor else ""))
        self.add(2, "return fields")

    def _copy_each_field(self, expression: str, fields: List[_Field]):
        """result._<field> = expression for each set field; "{}" in `expression` stands for
        the field's value."""
        for f in fields:
            self.add(2, f"{f.name}_value = self._{f.name}", f"if {f.name}_value is not None:")
            self.add(3, f"result._{f.name} = " + expression.format(f"{f.name}_value"))

    def _getitem(self):
        self.add(1, f'def __getitem__(self, item: torch.Tensor) -> "{self.name}":')
        self.add(2, f"result = {self.name}(self.image_size)")
        self._copy_each_field("{}[item]", self.fields)
        self.add(2, "return result")

    def _to(self):
        self.add(1, f'def to(self, device: torch.device) -> "{self.name}":')
        self.add(2, f"result = {self.name}(self.image_size)")
        self._copy_each_field("{}.to(device)", [f for f in self.fields if f.movable])
        self.add(2, "return result")

    def _cat(self):
        # A method, not a static one: TorchScript reaches it only through an object
        # (`instances[0].cat(instances)`); `Instances.cat` would name the eager class.
        self.add(1, f'def cat(self, instance_lists: List["{self.name}"]) -> "{self.name}":')
        self.add(2, "if len(instance_lists) == 0:")
        self.add(3, 'raise ValueError("Instances.cat needs at least one Instances")')
        self.add(2, "first = instance_lists[0]", "if len(instance_lists) == 1:")
        self.add(3, "return first")
        self.add(2, f"result = {self.name}(first.image_size)")
        for f in self.fields:
            self.add(2, f"if first._{f.name} is not None:")
            self.add(3, f"{f.name}_list: List[{f.annotation}] = []", "for instances in instance_lists:")
            self.add(4, f"{f.name}_value = instances._{f.name}", f"if {f.name}_value is None:")
            self.add(5, f"raise ValueError(\"Instances.cat: field '{f.name}' is missing from an element\")")
            self.add(4, f"{f.name}_list.append({f.name}_value)")
            # A Boxes-like field is rebuilt around the joined tensors (what its own `cat` does).
            joined = f"torch.cat({f.name}_list, dim=0)"
            if f.wraps_tensor:
                joined = f"{f.annotation}(torch.cat([v.tensor for v in {f.name}_list], dim=0))"
            self.add(3, f"result._{f.name} = {joined}")
        self.add(2, "return result")


_generated_count = 0


def _import_generated(source: str, directory: str):
    """Import `source` as a new module (TorchScript reads a class's source from its file)."""
    global _generated_count
    _generated_count += 1
    module_name = f"{__name__}._scripted_instances{_generated_count}"
    path = os.path.join(directory, f"scripted_instances{_generated_count}.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _check_fields(fields: Dict[str, type]) -> None:
    if not isinstance(fields, dict) or not fields:
        raise ValueError(f"fields must be a non-empty dict of field name -> type, got {fields!r}")
    for name, field_type in fields.items():
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            raise ValueError(f"field names must be identifiers not starting with '_', got {name!r}")
        if not isinstance(field_type, type):
            raise TypeError(f"field '{name}': expected a type (e.g. torch.Tensor, Boxes), got {field_type!r}")


def clear_jit_cache() -> None:
    """Forget the types TorchScript inferred for module classes and compiled free functions:
    they may name an `Instances` class of an earlier `patch_instances`, or predate a change
    of annotations (`freeze_training_mode`)."""
    from torch.jit._recursive import concrete_type_store
    from torch.jit._state import _jit_caching_layer

    concrete_type_store.type_store.clear()
    _jit_caching_layer.clear()


@contextlib.contextmanager
def patch_instances(fields: Dict[str, type]) -> Iterator[type]:
    """Within the block, TorchScript compiles `Instances` as a generated class that holds
    exactly `fields` (name -> type, e.g. {"pred_boxes": Boxes, "scores": torch.Tensor}).
    Eager code is not affected. Yields the generated class."""
    _check_fields(fields)
    with tempfile.TemporaryDirectory(prefix="detzoo_instances") as directory:
        clear_jit_cache()
        class_name = f"ScriptedInstances{_generated_count + 1}"
        module = _import_generated(_InstancesSource(class_name, fields).source(), directory)
        try:
            for field_type in fields.values():
                if field_type is not torch.Tensor:
                    torch.jit.script(field_type)  # the generated class names it in annotations
            scripted_class = getattr(module, class_name)
            # By default a class's names are looked up in the caller's frame; use its module's.
            resolve = torch._jit_internal.createResolutionCallbackForClassMethods(scripted_class)
            torch.jit.script(scripted_class, _rcb=resolve)
            # TorchScript looks a class up by its qualified name: send `Instances` to the new one.
            Instances._jit_override_qualname = torch._jit_internal._qualified_name(scripted_class)
            yield scripted_class
        finally:
            if "_jit_override_qualname" in Instances.__dict__:
                del Instances._jit_override_qualname
            sys.modules.pop(module.__name__, None)
            clear_jit_cache()


# ---------------------------------------------------------------------------------------------
# training as a constant


@contextlib.contextmanager
def freeze_training_mode(model: nn.Module) -> Iterator[None]:
    """Within the block, `training` is annotated `Final[bool]` on the class of every submodule
    of `model`, so that `torch.jit.script` treats it as a constant and compiles only the branch
    of the current mode. Classes declaring `__constants__` (the old way to mark constants,
    which cannot be mixed with Final) are left alone."""
    from torch.jit._recursive import get_annotations

    classes = {type(m) for m in model.modules() if not hasattr(type(m), "__constants__")}
    saved: List[Tuple[type, object]] = []
    try:
        for cls in classes:
            saved.append((cls, cls.__dict__.get("__annotations__", _MISSING)))
            # TorchScript reads only a class's own annotations when it has some: keep the inherited.
            cls.__annotations__ = {**get_annotations(cls), "training": torch.jit.Final[bool]}
        clear_jit_cache()
        yield
    finally:
        for cls, previous in saved:
            if previous is _MISSING:
                del cls.__annotations__
            else:
                cls.__annotations__ = previous
        clear_jit_cache()
