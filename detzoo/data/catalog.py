"""The two global catalogs every dataset goes through.

`DatasetCatalog` maps a dataset name (the strings of cfg.DATASETS.TRAIN / TEST) to a
zero-argument function returning the dataset as list[dict] in Detectron2's format; nothing is
read until `DatasetCatalog.get(name)` calls it. `MetadataCatalog` maps the same name to a
`Metadata` object: constant facts about the dataset (class names, colors, id maps, keypoint
names, where the files are) shared by the model, the evaluators and the visualizer.
"""
import copy
import logging
import types
from collections import UserDict
from typing import Any, Callable, Dict, Iterable, List

import numpy as np

from detzoo.utils.logger import log_first_n

__all__ = ["DatasetCatalog", "MetadataCatalog", "Metadata", "register_lazy_metadata"]


def _registered(names: Iterable[str]) -> str:
    names = sorted(names)
    return ", ".join(names) if names else "(none)"


class _DatasetCatalog(UserDict):
    """Dataset name -> function returning the dataset's records (list[dict]).

    The function takes no argument and must return the same records every time it is called
    (each data-loader worker and each evaluation calls it again).
    """

    def register(self, name: str, func: Callable[[], Any]) -> None:
        """Register `func` as the loader of dataset `name` (e.g. "coco_2017_train")."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"DatasetCatalog.register: the name must be a non-empty str, got {name!r}")
        if not callable(func):
            raise TypeError(f"DatasetCatalog.register({name!r}, ...): expected a callable returning list[dict], "
                            f"got {type(func).__name__}")
        if name in self:
            raise ValueError(f"dataset {name!r} is already registered in DatasetCatalog; "
                             f"call DatasetCatalog.remove({name!r}) first to replace it")
        self[name] = func

    def get(self, name: str) -> Any:
        """Call the loader registered as `name` and return its records (list[dict])."""
        try:
            func = self[name]
        except KeyError:
            raise KeyError(f"dataset {name!r} is not registered in DatasetCatalog. "
                           f"Registered datasets: {_registered(self.keys())}") from None
        return func()

    def list(self) -> List[str]:
        """The names of all registered datasets."""
        return list(self.keys())

    def remove(self, name: str) -> None:
        """Unregister dataset `name` (its metadata stays in MetadataCatalog)."""
        if name not in self:
            raise KeyError(f"cannot remove dataset {name!r}: it is not registered in DatasetCatalog. "
                           f"Registered datasets: {_registered(self.keys())}")
        del self[name]

    def __str__(self) -> str:
        return f"DatasetCatalog(registered datasets: {', '.join(self.keys())})"

    __repr__ = __str__


DatasetCatalog = _DatasetCatalog()

# name -> {"keys": set of metadata keys still to be resolved, "loader": () -> dict}. See
# register_lazy_metadata.
_LAZY_METADATA: Dict[str, Dict[str, Any]] = {}


def register_lazy_metadata(name: str, keys: Iterable[str], loader: Callable[[], Dict[str, Any]]) -> None:
    """Let dataset `name`'s metadata `keys` be computed on first access by `loader()`.

    A detzoo addition to Detectron2's API, for metadata that only the dataset's own files know
    (the LVIS category list is read from the LVIS json; see detzoo.data.datasets.lvis). The
    loader returns a dict holding at least `keys`; it runs at most once successfully. If it
    raises OSError (e.g. the annotation file is not there), the attribute access raises
    AttributeError saying why, so `Metadata.get(key, default)` and `hasattr` keep working.
    Setting one of `keys` explicitly cancels its lazy resolution.
    """
    _LAZY_METADATA[name] = {"keys": set(keys), "loader": loader}


class Metadata(types.SimpleNamespace):
    """Facts about one dataset, read and written as attributes.

    Common keys: thing_classes, thing_colors, thing_dataset_id_to_contiguous_id,
    stuff_classes, stuff_colors, stuff_dataset_id_to_contiguous_id, keypoint_names,
    keypoint_flip_map, keypoint_connection_rules, evaluator_type, ignore_label,
    label_divisor, json_file, image_root, panoptic_root, panoptic_json, sem_seg_root.

    A key, once set, is constant: setting it again to a different value raises ValueError
    naming the key and both values.

        MetadataCatalog.get("my_dataset").thing_classes = ["person", "dog"]
        classes = MetadataCatalog.get("my_dataset").thing_classes
    """

    # Class-level default, so that error messages can use self.name on an empty Metadata.
    name: str = "N/A"

    # Old Detectron2 names, still accepted (with a warning).
    _RENAMED = {
        "class_names": "thing_classes",
        "dataset_id_to_contiguous_id": "thing_dataset_id_to_contiguous_id",
        "stuff_class_names": "stuff_classes",
    }

    def __getattr__(self, key: str) -> Any:
        # Only called when the normal lookup failed.
        if key.startswith("__"):
            raise AttributeError(key)  # copy/pickle protocol probes
        if key in self._RENAMED:
            log_first_n(logging.WARNING, f"Metadata '{key}' was renamed to '{self._RENAMED[key]}'", n=10)
            return getattr(self, self._RENAMED[key])
        if self._resolve_lazy(key):
            return self.__dict__[key]
        keys = [k for k in self.__dict__ if k != "name"]
        if keys:
            raise AttributeError(f"Attribute '{key}' does not exist in the metadata of dataset '{self.name}'. "
                                 f"Available keys: {', '.join(sorted(keys))}")
        raise AttributeError(f"Attribute '{key}' does not exist in the metadata of dataset '{self.name}': "
                             "its metadata is empty")

    def __setattr__(self, key: str, val: Any) -> None:
        if key in self._RENAMED:
            log_first_n(logging.WARNING, f"Metadata '{key}' was renamed to '{self._RENAMED[key]}'", n=10)
            key = self._RENAMED[key]
        if key in self.__dict__:
            old = self.__dict__[key]
            if not _same_value(old, val):
                raise ValueError(f"Attribute '{key}' in the metadata of dataset '{self.name}' cannot be set to a "
                                 f"different value: it is {old!r}, the new value is {val!r}")
            return
        super().__setattr__(key, val)
        lazy = _LAZY_METADATA.get(self.name)
        if lazy is not None:
            lazy["keys"].discard(key)

    def _resolve_lazy(self, key: str) -> bool:
        lazy = _LAZY_METADATA.get(self.name)
        if lazy is None or key not in lazy["keys"]:
            return False
        try:
            values = lazy["loader"]()
        except OSError as e:
            raise AttributeError(f"Attribute '{key}' of dataset '{self.name}' is read from the dataset's files, "
                                 f"which could not be read: {e}") from e
        pending = sorted(lazy["keys"])
        lazy["keys"].clear()  # resolved once; keys the loader does not provide stay unset
        for k in pending:
            if k in values:
                setattr(self, k, values[k])
        return key in self.__dict__

    def as_dict(self) -> Dict[str, Any]:
        """A shallow copy of all metadata set so far (changing it does not change the Metadata)."""
        return copy.copy(self.__dict__)

    def set(self, **kwargs: Any) -> "Metadata":
        """Set several keys at once; returns self."""
        for key, val in kwargs.items():
            setattr(self, key, val)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key`, or `default` when it is not set."""
        try:
            return getattr(self, key)
        except AttributeError:
            return default


def _same_value(a: Any, b: Any) -> bool:
    # Tuples and lists with equal items count as equal: metadata often comes from JSON
    # (lists) on one side and from Python constants (tuples) on the other.
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    try:
        return bool(a == b)
    except (ValueError, TypeError):  # values whose == is not a truth value
        return a is b


class _MetadataCatalog(UserDict):
    """Dataset name -> its `Metadata` (created empty on the first `get`).

    The Metadata of a name is a singleton for the life of the process; treat it as constant
    knowledge about the dataset (class names, colors, file locations), not as scratch space.
    """

    def get(self, name: str) -> Metadata:
        """The Metadata of dataset `name`, created empty if there is none yet."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"MetadataCatalog.get: the dataset name must be a non-empty str, got {name!r}")
        meta = self.data.get(name)
        if meta is None:
            meta = self.data[name] = Metadata(name=name)
        return meta

    def list(self) -> List[str]:
        """The names of all datasets that have metadata."""
        return list(self.keys())

    def remove(self, name: str) -> None:
        """Forget the metadata of dataset `name`."""
        if name not in self:
            raise KeyError(f"cannot remove the metadata of {name!r}: there is none. "
                           f"Datasets with metadata: {_registered(self.keys())}")
        del self[name]

    def __str__(self) -> str:
        return f"MetadataCatalog(registered metadata: {', '.join(self.keys())})"

    __repr__ = __str__


MetadataCatalog = _MetadataCatalog()
