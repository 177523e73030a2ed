"""`Instances`: the per-image table of detections or annotations that flows between components."""
import itertools
import warnings
from typing import Any, Dict, List, Tuple, Union

import torch


class Instances:
    """The instances of one image, as named fields of equal length.

    A field is any object with `__len__` and indexing (Tensor, Boxes, masks, Keypoints, list),
    e.g. `gt_boxes`, `gt_classes`, `pred_boxes`, `scores`, `pred_classes`, `pred_masks`.
    Fields read and write as attributes; names starting with "_" are the object's own.

        instances = Instances((480, 640), pred_boxes=Boxes(...), scores=scores)
        instances.pred_classes = classes          # length must match the other fields
        confident = instances[instances.scores > 0.9]
        "pred_masks" in instances.get_fields()
    """

    def __init__(self, image_size: Tuple[int, int], **kwargs: Any):
        """
        Args:
            image_size (height, width): the size of the image the instances belong to.
            kwargs: initial fields.
        """
        self._image_size = image_size
        self._fields: Dict[str, Any] = {}
        for name, value in kwargs.items():
            self.set(name, value)

    @property
    def image_size(self) -> Tuple[int, int]:
        """(height, width)."""
        return self._image_size

    def __setattr__(self, name: str, val: Any) -> None:
        if name.startswith("_"):
            super().__setattr__(name, val)
        else:
            self.set(name, val)

    def __getattr__(self, name: str) -> Any:
        # Reached only when normal lookup fails. "_fields" must not recurse here before
        # __init__ ran (copy and pickle build objects without calling __init__).
        if name == "_fields" or name not in self._fields:
            raise AttributeError(f"Cannot find field '{name}' in the given Instances!")
        return self._fields[name]

    def set(self, name: str, value: Any) -> None:
        """Set field `name`; its length must equal that of the existing fields."""
        with warnings.catch_warnings(record=True):  # len() of a traced tensor warns
            data_len = len(value)
        if self._fields and data_len != len(self):
            raise ValueError(
                f"Instances.set('{name}'): adding a field of length {data_len} to Instances "
                f"of length {len(self)}"
            )
        self._fields[name] = value

    def has(self, name: str) -> bool:
        """Whether field `name` exists."""
        return name in self._fields

    def remove(self, name: str) -> None:
        """Delete field `name`."""
        if name not in self._fields:
            raise KeyError(f"Instances.remove: no field '{name}' (fields: {list(self._fields)})")
        del self._fields[name]

    def get(self, name: str) -> Any:
        """The value of field `name`."""
        return self._fields[name]

    def get_fields(self) -> Dict[str, Any]:
        """The name -> value dict of all fields (the object's own dict: changes to it show)."""
        return self._fields

    def to(self, *args: Any, **kwargs: Any) -> "Instances":
        """A new Instances whose fields that have `.to` are moved/cast with these arguments
        (others are kept as they are)."""
        moved = Instances(self._image_size)
        for name, value in self._fields.items():
            if hasattr(value, "to"):
                value = value.to(*args, **kwargs)
            moved.set(name, value)
        return moved

    def __getitem__(self, item: Union[int, slice, torch.Tensor]) -> "Instances":
        """A new Instances with every field indexed by `item`: an int (kept as a length-1
        Instances), a slice, a bool mask of length len(self) or a tensor of indices."""
        if type(item) is int:
            if item >= len(self) or item < -len(self):
                raise IndexError(f"Instances index {item} out of range for length {len(self)}")
            # a length-1 slice keeps every field's own type and rank
            item = slice(item, None, len(self))
        selected = Instances(self._image_size)
        for name, value in self._fields.items():
            selected.set(name, value[item])
        return selected

    def __len__(self) -> int:
        for value in self._fields.values():
            # __len__ rather than len(): len() must return int, which breaks tracing
            return value.__len__()
        raise NotImplementedError("Empty Instances does not support __len__!")

    def __iter__(self):
        raise NotImplementedError("`Instances` object is not iterable!")

    @staticmethod
    def cat(instance_lists: List["Instances"]) -> "Instances":
        """Concatenate Instances of the same image size field by field (tensors with torch.cat,
        lists by chaining, other types with their own `cat`). A single element is returned
        as it is."""
        if len(instance_lists) == 0:
            raise ValueError("Instances.cat needs at least one Instances")
        for i, instances in enumerate(instance_lists):
            if not isinstance(instances, Instances):
                raise TypeError(f"Instances.cat: element {i} is a {type(instances).__name__}")
        if len(instance_lists) == 1:
            return instance_lists[0]
        image_size = instance_lists[0].image_size
        if not isinstance(image_size, torch.Tensor):  # image sizes are tensors when tracing
            for i, instances in enumerate(instance_lists[1:], start=1):
                if instances.image_size != image_size:
                    raise ValueError(
                        f"Instances.cat: element {i} has image size {instances.image_size}, "
                        f"element 0 has {image_size}"
                    )
        joined = Instances(image_size)
        for name in instance_lists[0]._fields.keys():
            joined.set(name, _cat_field(name, [i.get(name) for i in instance_lists]))
        return joined

    def __str__(self) -> str:
        fields = ", ".join(f"{name}: {value}" for name, value in self._fields.items())
        num_instances = len(self) if self._fields else 0
        return (
            f"{type(self).__name__}(num_instances={num_instances}, "
            f"image_height={self._image_size[0]}, image_width={self._image_size[1]}, "
            f"fields=[{fields}])"
        )

    __repr__ = __str__


def _cat_field(name: str, values: List[Any]) -> Any:
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(values, dim=0)
    if isinstance(first, list):
        return list(itertools.chain(*values))
    if hasattr(type(first), "cat"):
        return type(first).cat(values)
    raise ValueError(f"Instances.cat: field '{name}' of type {type(first).__name__} has no cat")
