"""Flatten rich model inputs and outputs (lists, dicts, `Instances`, `Boxes`) to tuples of
tensors and back, so that `torch.jit.trace` and the ONNX exporter, which only accept tensors,
can see a detection model.

`flatten_to_tuple(obj)` returns `(tensors, schema)`; `schema(tensors)` rebuilds an object equal
to `obj`. Schemas are plain dataclasses: they compare by value and can be saved next to an
exported model to decode its outputs.
"""
import collections.abc
import pydoc
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import nn

from detzoo.structures import Boxes, Instances, ROIMasks, RotatedBoxes

from .torchscript_patch import patch_builtin_len

__all__ = [
    "DictSchema",
    "IdentitySchema",
    "InstancesSchema",
    "ListSchema",
    "Schema",
    "TensorWrapSchema",
    "TracingAdapter",
    "TupleSchema",
    "flatten_to_tuple",
]


def _class_path(cls: type) -> str:
    """The dotted import path of `cls`, e.g. "detzoo.structures.boxes.Boxes"."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _locate(path: str) -> Any:
    located = pydoc.locate(path)
    if located is None:
        raise ImportError(f"cannot import '{path}' to rebuild a flattened object")
    return located


@dataclass
class Schema:
    """How one flattened object is rebuilt. Subclasses implement `flatten` (a classmethod
    returning `(tuple_of_values, schema)`) and `__call__(values) -> object`."""

    @classmethod
    def flatten(cls, obj):
        raise NotImplementedError

    def __call__(self, values):
        raise NotImplementedError

    @staticmethod
    def _concat(flattened: List[tuple]) -> Tuple[tuple, List[int]]:
        """Join the flattened tuples of several children; also return each child's length."""
        values: tuple = ()
        sizes = []
        for child in flattened:
            if not isinstance(child, tuple):
                raise TypeError(f"a flattened value must be a tuple, got {type(child).__name__}")
            values += child
            sizes.append(len(child))
        return values, sizes

    @staticmethod
    def _split(values, sizes: List[int]) -> List[tuple]:
        """Cut `values` into consecutive pieces of the given lengths."""
        if sum(sizes) != len(values):
            raise ValueError(f"got {len(values)} flattened values, the schema expects {sum(sizes)}")
        pieces, start = [], 0
        for size in sizes:
            pieces.append(tuple(values[start : start + size]))
            start += size
        return pieces


@dataclass
class ListSchema(Schema):
    schemas: List[Schema]  # one per element
    sizes: List[int]  # number of flattened values of each element

    def __call__(self, values):
        pieces = self._split(values, self.sizes)
        if len(pieces) != len(self.schemas):
            raise ValueError(f"{len(pieces)} flattened elements for {len(self.schemas)} schemas")
        return [schema(piece) for schema, piece in zip(self.schemas, pieces)]

    @classmethod
    def flatten(cls, obj):
        children = [flatten_to_tuple(element) for element in obj]
        values, sizes = cls._concat([values for values, _ in children])
        return values, cls([schema for _, schema in children], sizes)


@dataclass
class TupleSchema(ListSchema):
    def __call__(self, values):
        return tuple(super().__call__(values))


@dataclass
class IdentitySchema(Schema):
    """A leaf: a tensor, or (for `allow_non_tensor`) any other object kept as it is."""

    def __call__(self, values):
        return values[0]

    @classmethod
    def flatten(cls, obj):
        return (obj,), cls()


@dataclass
class DictSchema(ListSchema):
    keys: List[str]  # sorted, so that equal dicts flatten identically whatever their order

    def __call__(self, values):
        return dict(zip(self.keys, super().__call__(values)))

    @classmethod
    def flatten(cls, obj):
        bad = [k for k in obj.keys() if not isinstance(k, str)]
        if bad:
            raise KeyError(f"only dicts with str keys can be flattened; got keys {bad!r}")
        keys = sorted(obj.keys())
        values, schema = ListSchema.flatten([obj[k] for k in keys])
        return values, cls(schema.schemas, schema.sizes, keys)


@dataclass
class InstancesSchema(DictSchema):
    """The fields of an `Instances` as a dict, followed by its image size as a tensor [h, w]."""

    def __call__(self, values):
        fields = super().__call__(values[:-1])
        return Instances(values[-1], **fields)

    @classmethod
    def flatten(cls, obj):
        values, schema = super().flatten(obj.get_fields())
        image_size = obj.image_size
        if not isinstance(image_size, torch.Tensor):
            # Sizes traced from the input (see ImageList.from_tensors) must stay in the graph.
            traced = all(isinstance(s, torch.Tensor) for s in image_size)
            image_size = torch.stack(tuple(image_size)) if traced else torch.tensor(image_size)
        return values + (image_size,), schema


@dataclass
class TensorWrapSchema(Schema):
    """Classes that only wrap one `.tensor`: Boxes, RotatedBoxes, ROIMasks."""

    class_name: str

    def __call__(self, values):
        return _locate(self.class_name)(values[0])

    @classmethod
    def flatten(cls, obj):
        return (obj.tensor,), cls(_class_path(type(obj)))


def _schema_for(obj) -> type:
    # Order matters: str is a Sequence, and Instances must not be taken for a Mapping.
    if isinstance(obj, (str, bytes)):
        return IdentitySchema
    if isinstance(obj, list):
        return ListSchema
    if isinstance(obj, tuple):
        return TupleSchema
    if isinstance(obj, collections.abc.Mapping):
        return DictSchema
    if isinstance(obj, Instances):
        return InstancesSchema
    if isinstance(obj, (Boxes, RotatedBoxes, ROIMasks)):
        return TensorWrapSchema
    return IdentitySchema


def flatten_to_tuple(obj) -> Tuple[tuple, Schema]:
    """Flatten a nest of lists, tuples, str-keyed dicts, `Instances`, `Boxes`, `RotatedBoxes`
    and `ROIMasks` into a tuple of leaves (tensors, normally).

    Returns:
        (values, schema): `schema(values)` rebuilds an object equal to `obj`.
    """
    return _schema_for(obj).flatten(obj)


def _unwrap_parallel(model: nn.Module) -> nn.Module:
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return model.module
    return model


def _call_model(model, *inputs):
    return model(*inputs)


class TracingAdapter(nn.Module):
    """Wraps a model whose inputs and outputs are rich structures so that it takes and returns
    tuples of tensors, as `torch.jit.trace` and `torch.onnx.export` need.

        adapter = TracingAdapter(model, [{"image": image}])
        traced = torch.jit.trace(adapter, adapter.flattened_inputs)
        outputs = adapter.outputs_schema(traced(*adapter.flattened_inputs))  # rich again

    Attributes:
        flattened_inputs (tuple[Tensor]): the given inputs, flattened.
        inputs_schema (Schema): rebuilds the inputs from tensors (None with allow_non_tensor
            when the inputs held non-tensors).
        outputs_schema (Schema): rebuilds the outputs; set by the first forward call.
    """

    flattened_inputs: Tuple[torch.Tensor, ...] = None
    inputs_schema: Optional[Schema] = None
    outputs_schema: Optional[Schema] = None

    def __init__(
        self,
        model: nn.Module,
        inputs,
        inference_func: Optional[Callable] = None,
        allow_non_tensor: bool = False,
    ):
        """
        Args:
            model: the module to wrap.
            inputs: one argument, or a tuple of the arguments, to call `model` with; once
                flattened it must hold only tensors (unless `allow_non_tensor`).
            inference_func: `(model, *inputs) -> outputs`; default `model(*inputs)`. E.g.
                `lambda m, x: m.inference(x, do_postprocess=False)`.
            allow_non_tensor: drop non-tensor leaves of inputs and outputs instead of raising.
                The adapter then only replays the given inputs (no schemas), which is enough
                for one trace, e.g. to count flops.
        """
        super().__init__()
        self.model = _unwrap_parallel(model)
        # Exporters restore the wrapper's mode when done, and that mode reaches the model.
        self.training = self.model.training
        self.inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        self.inference_func = inference_func or _call_model
        self.allow_non_tensor = allow_non_tensor
        self.flattened_inputs, self.inputs_schema = flatten_to_tuple(self.inputs)
        non_tensors = [type(x).__name__ for x in self.flattened_inputs if not isinstance(x, torch.Tensor)]
        if not non_tensors:
            return
        if not allow_non_tensor:
            raise ValueError(f"the inputs to trace must flatten to tensors only; they hold {non_tensors}")
        self.flattened_inputs = tuple(x for x in self.flattened_inputs if isinstance(x, torch.Tensor))
        self.inputs_schema = None

    def _rebuild_inputs(self, args):
        if self.inputs_schema is not None:
            return self.inputs_schema(args)
        same = len(args) == len(self.flattened_inputs) and all(a is b for a, b in zip(args, self.flattened_inputs))
        if not same:
            raise ValueError(
                "this TracingAdapter has no inputs schema (its inputs held non-tensors), so it can "
                "only be called with its own `flattened_inputs`"
            )
        return self.inputs

    def forward(self, *args: torch.Tensor):
        with torch.no_grad(), patch_builtin_len():
            outputs = self.inference_func(self.model, *self._rebuild_inputs(args))
        flattened, schema = flatten_to_tuple(outputs)
        tensors = tuple(x for x in flattened if isinstance(x, torch.Tensor))
        if len(tensors) < len(flattened):
            if not self.allow_non_tensor:
                kinds = sorted({type(x).__name__ for x in flattened if not isinstance(x, torch.Tensor)})
                raise ValueError(f"the model outputs do not flatten to tensors only: they hold {kinds}")
            self.outputs_schema = None
            return tensors
        if self.outputs_schema is None:
            self.outputs_schema = schema
        elif self.outputs_schema != schema:
            raise ValueError(
                "the model returned outputs of another structure than on the first call, so one "
                f"traced graph cannot stand for it:\nfirst: {self.outputs_schema}\nnow: {schema}"
            )
        return flattened

    def _create_wrapper(self, traced_model: Callable) -> Callable:
        """A function with the original model's interface that runs `traced_model`."""

        def forward(*args):
            flattened, _ = flatten_to_tuple(args)
            return self.outputs_schema(traced_model(*flattened))

        return forward
