"""`CfgNode`, the process-wide `global_cfg`, and the `@configurable` decorator.

`CfgNode` is fvcore's yacs-based node (so YAML files written for Detectron2 load unchanged)
with a loader and merge of our own, written so that every failure says where it came from:

* `_BASE_` inheritance: a file names one base file or a list of them; relative paths are
  resolved against the including file and bases may themselves have bases. A cycle is an
  error, not a recursion overflow.
* An unknown key raises `KeyError` naming the full dotted key, the file(s) that set it and
  the closest existing keys; a type mismatch raises `ValueError` naming the key, the type the
  default has, the value that came and the file.
* YAML is read with `yaml.safe_load`. Detectron2 defaults to `allow_unsafe=True`, which runs
  whatever Python tags a file contains; we keep the argument but default it to False.
* Merging into a frozen node raises instead of silently editing it (yacs only guards
  attribute assignment, not the merge functions).
* A list given for a default that is a tuple of tuples (e.g. cascade box weights) becomes a
  tuple of tuples again, so `dump()` followed by `merge_from_file()` gives back an equal
  config.
"""
import copy
import difflib
import functools
import inspect
import logging
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import yaml
from fvcore.common.config import CfgNode as _FvcoreCfgNode

try:  # Detectron2 also routes OmegaConf configs (LazyConfig) through from_config.
    from omegaconf import DictConfig as _DictConfig

    _CONFIG_TYPES: Tuple[type, ...] = (_FvcoreCfgNode, _DictConfig)
except ImportError:
    _CONFIG_TYPES = (_FvcoreCfgNode,)

__all__ = ["CfgNode", "global_cfg", "set_global_cfg", "configurable"]

logger = logging.getLogger(__name__)

BASE_KEY = "_BASE_"
# The leaf value types yacs accepts; a None default may be replaced by any of them.
_LEAF_TYPES = (tuple, list, str, int, float, bool, type(None))
_URL_PREFIXES = ("http://", "https://")


class CfgNode(_FvcoreCfgNode):
    """A config tree: attribute access to nested keys, YAML merge with `_BASE_`, freeze.

    Keys are upper-case by convention (`cfg.MODEL.ROI_HEADS.NUM_CLASSES`). Setting an
    attribute on an unfrozen node adds or replaces a key; keys starting with `COMPUTED_` may
    be added even when frozen but never changed (fvcore's rule).
    """

    # ----------------------------------------------------------------- loading YAML files
    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False) -> Dict[str, Any]:
        """Read `filename` as a dict, with the content of its `_BASE_` file(s) merged under it.

        Values in the including file win over values from its bases; with a list of bases,
        later bases win over earlier ones.
        """
        tree, _ = cls._load_tree_with_origins(filename, allow_unsafe, chain=())
        return tree

    @classmethod
    def _load_tree_with_origins(
        cls, filename: str, allow_unsafe: bool, chain: Tuple[str, ...]
    ) -> Tuple[Dict[str, Any], Dict[str, str]]:
        """The merged dict of `filename` and its bases, and the file that set each leaf key."""
        tree = cls._read_yaml_mapping(filename, allow_unsafe, included_from=chain[-1:])
        base_files = tree.pop(BASE_KEY, [])
        if isinstance(base_files, str):
            base_files = [base_files]
        if not isinstance(base_files, list) or not all(isinstance(b, str) for b in base_files):
            raise ValueError(
                f"{filename}: {BASE_KEY} must be a file name or a list of file names, "
                f"got {base_files!r}"
            )
        own_origins = {key: filename for key in _leaf_keys(tree)}
        if not base_files:
            return tree, own_origins

        merged: Dict[str, Any] = {}
        origins: Dict[str, str] = {}
        for base in base_files:
            base_path = _resolve_base_path(base, filename)
            if _path_identity(base_path) in map(_path_identity, chain + (filename,)):
                cycle = " -> ".join(chain + (filename, base_path))
                raise ValueError(f"{BASE_KEY} inclusion cycle: {cycle}")
            base_tree, base_origins = cls._load_tree_with_origins(
                base_path, allow_unsafe, chain + (filename,)
            )
            _merge_dict_into(base_tree, merged, base_path)
            origins.update(base_origins)
        _merge_dict_into(tree, merged, filename)
        origins.update(own_origins)
        # Keys of a base that the including file replaced by a scalar are gone from `merged`.
        live_keys = set(_leaf_keys(merged))
        return merged, {k: f for k, f in origins.items() if k in live_keys}

    @classmethod
    def _read_yaml_mapping(
        cls, filename: str, allow_unsafe: bool, included_from: Tuple[str, ...]
    ) -> Dict[str, Any]:
        where = f" (named in {BASE_KEY} of {included_from[0]})" if included_from else ""
        try:
            with cls._open_cfg(filename) as f:
                text = f.read()
        except FileNotFoundError as e:
            raise FileNotFoundError(f"Config file '{filename}'{where} does not exist") from e
        try:
            content = yaml.safe_load(text)
        except yaml.constructor.ConstructorError as e:
            if not allow_unsafe:
                raise ValueError(
                    f"{filename}: YAML tag not allowed by safe loading ({e.problem}). "
                    "Pass allow_unsafe=True only for files you trust: it runs the Python "
                    "the tags name."
                ) from e
            logger.warning(f"Loading {filename} with yaml.unsafe_load: it may run code.")
            content = yaml.unsafe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"{filename}: not valid YAML: {e}") from e
        if content is None:  # an empty file
            return {}
        if not isinstance(content, dict):
            kind = type(content).__name__
            raise ValueError(f"{filename}: a config file must hold a mapping of keys, got {kind}")
        return content

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        """Merge the YAML file `cfg_filename` (and its `_BASE_` chain) into this config.

        Raises:
            KeyError: a key in the file (or a base) does not exist in this config.
            ValueError: a value's type differs from the default's, or the file is malformed.
        """
        tree, origins = self._load_tree_with_origins(cfg_filename, allow_unsafe, chain=())
        loaded = type(self)(tree)
        self._check_version(loaded, cfg_filename)
        self._merge_checked(loaded, origins, default_source=cfg_filename)

    def _check_version(self, loaded: "CfgNode", filename: str) -> None:
        """Refuse configs newer than ours; warn about older ones (they merge as they are).

        Detectron2 rewrites v1 keys through downgrade/upgrade converters. v1 predates
        Detectron2's public release, so we only warn: a renamed key then fails as unknown.
        """
        if "VERSION" not in self:
            return
        loaded_version = loaded.get("VERSION")
        if loaded_version is None:
            return
        if not isinstance(loaded_version, int):
            raise ValueError(f"{filename}: VERSION must be an integer, got {loaded_version!r}")
        if loaded_version > self.VERSION:
            raise ValueError(
                f"{filename}: config VERSION {loaded_version} is newer than this "
                f"config's VERSION {self.VERSION}"
            )
        if loaded_version < self.VERSION:
            logger.warning(
                f"{filename} declares config VERSION {loaded_version}, older than "
                f"{self.VERSION}; merging it unchanged (keys renamed since will be unknown)."
            )
            loaded.VERSION = self.VERSION

    # ------------------------------------------------------------------------ merging
    def merge_from_other_cfg(self, cfg_other: "CfgNode") -> None:
        """Merge another config node into this one; keys must already exist here."""
        if BASE_KEY in cfg_other:
            raise KeyError(f"'{BASE_KEY}' is only allowed in config files")
        self._merge_checked(cfg_other, {}, default_source="the merged config")

    def merge_from_list(self, cfg_list: List[Any]) -> None:
        """Merge `[key1, value1, key2, value2, ...]`, e.g. command-line overrides.

        Keys are full dotted names (`"MODEL.RPN.NMS_THRESH"`); string values are parsed as
        Python literals when they are one (`"(640, 800)"` becomes a tuple).
        """
        if len(cfg_list) % 2 != 0:
            raise ValueError(
                "merge_from_list needs key/value pairs, got an odd number of items "
                f"({len(cfg_list)})"
            )
        self._raise_if_frozen("merge_from_list")
        source = "the override list"
        assignments = []  # all pairs are checked before any is applied
        for full_key, raw_value in zip(cfg_list[0::2], cfg_list[1::2]):
            if full_key == BASE_KEY:
                raise KeyError(f"'{BASE_KEY}' is only allowed in config files")
            if self.key_is_deprecated(full_key):
                continue
            self._raise_if_renamed(full_key, source)
            parent, leaf = self._parent_of(full_key, source)
            value = self._decode_cfg_value(raw_value)
            value = _coerce_to_default_type(value, parent[leaf], full_key, source)
            assignments.append((parent, leaf, value))
        for parent, leaf, value in assignments:
            parent[leaf] = value

    def _parent_of(self, full_key: str, source: str) -> Tuple["CfgNode", str]:
        """The node holding `full_key`'s last component, which must exist."""
        node = self
        *path, leaf = full_key.split(".")
        for name in path:
            child = node.get(name)
            if not isinstance(child, CfgNode):
                self._raise_unknown_key(full_key, [source])
            node = child
        if leaf not in node:
            self._raise_unknown_key(full_key, [source])
        return node, leaf

    def _merge_checked(
        self, other: "CfgNode", origins: Dict[str, str], default_source: str
    ) -> None:
        """Merge `other` into self, all or nothing: a failing merge leaves self unchanged."""
        self._raise_if_frozen("merge")
        trial = self.clone()
        trial._merge_node(other, trial, [], origins, default_source)
        _copy_values_into(trial, self)

    def _merge_node(
        self,
        source_node: "CfgNode",
        target: "CfgNode",
        key_path: List[str],
        origins: Dict[str, str],
        default_source: str,
    ) -> None:
        """Recursive merge of `source_node` into `target`, which sits at `key_path` in self."""
        for key, raw_value in source_node.items():
            full_key = ".".join(key_path + [str(key)])
            value = target._decode_cfg_value(copy.deepcopy(raw_value))
            if key in target:
                files = _files_of(full_key, origins, default_source)
                value = _coerce_to_default_type(value, target[key], full_key, ", ".join(files))
                if isinstance(value, CfgNode):
                    sub_path = key_path + [str(key)]
                    self._merge_node(value, target[key], sub_path, origins, default_source)
                else:
                    target[key] = value
            elif target.is_new_allowed():
                target[key] = value
            elif self.key_is_deprecated(full_key):
                continue
            else:
                files = _files_of(full_key, origins, default_source)
                self._raise_if_renamed(full_key, ", ".join(files))
                self._raise_unknown_key(full_key, files)

    def _raise_unknown_key(self, full_key: str, sources: Iterable[str]) -> None:
        message = f"Non-existent config key: {full_key} (from {', '.join(sources)})"
        close = difflib.get_close_matches(full_key, list(_all_keys(self)), n=1, cutoff=0.8)
        if close:
            message += f"; did you mean {close[0]}?"
        raise KeyError(message)

    def _raise_if_renamed(self, full_key: str, source: str) -> None:
        if not self.key_is_renamed(full_key):
            return
        try:
            self.raise_key_rename_error(full_key)
        except KeyError as e:
            raise KeyError(f"{e.args[0]} (from {source})") from None

    def _raise_if_frozen(self, action: str) -> None:
        if self.is_frozen():
            raise AttributeError(f"Cannot {action} into a frozen config; call defrost() first")

    # ------------------------------------------------------------------------ output
    def dump(self, **kwargs: Any) -> str:
        """The config as a YAML string (keys sorted; tuples written as lists).

        `merge_from_file` on the written string's file gives back an equal config.
        Keyword arguments go to `yaml.safe_dump`.
        """
        return super().dump(**kwargs)


# ---------------------------------------------------------------------- merge helpers
def _coerce_to_default_type(value: Any, default: Any, full_key: str, source: str) -> Any:
    """`value` made to the default's type under yacs' rules, or a ValueError naming both.

    yacs accepts exactly the same type, None in place of (or replaced by) any leaf type, and
    list <-> tuple. An int for a float default is an error in yacs and Detectron2, so here too.
    """
    value_type, default_type = type(value), type(default)
    if value_type is default_type:
        if isinstance(value, (list, tuple)):
            return _match_inner_sequences(value, default)
        return value
    if value is None and default_type in _LEAF_TYPES:
        return value
    if default is None and value_type in _LEAF_TYPES:
        return value
    if isinstance(value, (list, tuple)) and default_type in (list, tuple):
        return _match_inner_sequences(default_type(value), default)
    hint = ""
    if default_type is float and value_type is int:
        hint = f" (write {float(value)!r} for a float)"
    raise ValueError(
        f"Type mismatch for config key {full_key} (from {source}): expected "
        f"{_type_name(default)} like the default {default!r}, got {_type_name(value)} "
        f"{value!r}{hint}"
    )


def _match_inner_sequences(value: Any, default: Any) -> Any:
    """Give the elements of `value` the sequence type that every element of `default` has."""
    inner_types = {type(x) for x in default}
    if len(inner_types) != 1:
        return value
    inner_type = inner_types.pop()
    if inner_type not in (list, tuple):
        return value
    converted = [inner_type(x) if isinstance(x, (list, tuple)) else x for x in value]
    return type(value)(converted)


def _copy_values_into(source: "CfgNode", target: "CfgNode") -> None:
    """Make `target` equal to `source` in place, keeping `target`'s existing sub-nodes."""
    for key, value in source.items():
        if isinstance(value, CfgNode) and isinstance(target.get(key), CfgNode):
            _copy_values_into(value, target[key])
        else:
            target[key] = value


def _type_name(value: Any) -> str:
    return "a config node" if isinstance(value, _FvcoreCfgNode) else type(value).__name__


def _merge_dict_into(source: Dict[str, Any], target: Dict[str, Any], filename: str) -> None:
    """Plain-dict merge of one YAML file into what its bases produced; source wins."""
    for key, value in source.items():
        if isinstance(value, dict) and key in target:
            if not isinstance(target[key], dict):
                raise ValueError(
                    f"{filename}: key '{key}' is a mapping here but {target[key]!r} in a "
                    f"{BASE_KEY} file, so it cannot be merged"
                )
            _merge_dict_into(value, target[key], filename)
        else:
            target[key] = value


def _leaf_keys(tree: Dict[str, Any], prefix: str = "") -> Iterable[str]:
    """Dotted names of every non-mapping value (and every empty mapping) in `tree`."""
    for key, value in tree.items():
        full_key = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _leaf_keys(value, full_key + ".")
        else:
            yield full_key


def _all_keys(node: Dict[str, Any], prefix: str = "") -> Iterable[str]:
    """Dotted names of every key in `node`, inner nodes included."""
    for key, value in node.items():
        full_key = f"{prefix}{key}"
        yield full_key
        if isinstance(value, dict):
            yield from _all_keys(value, full_key + ".")


def _files_of(full_key: str, origins: Dict[str, str], default_source: str) -> List[str]:
    """The files that set `full_key` or any key under it, in first-seen order."""
    files = [f for k, f in origins.items() if k == full_key or k.startswith(full_key + ".")]
    return list(dict.fromkeys(files)) or [default_source]


def _resolve_base_path(base: str, including_file: str) -> str:
    """A `_BASE_` entry as a path: `~` expanded, relative to the including file's folder."""
    base = os.path.expanduser(base)
    if os.path.isabs(base) or base.startswith(_URL_PREFIXES):
        return base
    return os.path.join(os.path.dirname(including_file), base)


def _path_identity(path: str) -> str:
    return path if path.startswith(_URL_PREFIXES) else os.path.realpath(path)


# ------------------------------------------------------------------------ global config
global_cfg = CfgNode()


def set_global_cfg(cfg: CfgNode) -> None:
    """Make `detzoo.config.global_cfg` hold the content of `cfg`.

    The object `global_cfg` stays the same (it is cleared and refilled), so modules that
    imported it earlier see the new keys. It is a shortcut for quick experiments: reading
    `global_cfg.GLOBAL.HACK` deep in the code without passing a config around.
    """
    global_cfg.clear()
    global_cfg.update(cfg)


# ------------------------------------------------------------------------ @configurable
def configurable(init_func: Optional[Callable] = None, *, from_config: Optional[Callable] = None):
    """Let a class `__init__` or a function be called with a config as well as with arguments.

    On `__init__`, the class must define `from_config(cls, cfg, ...)` as a classmethod that
    returns the `__init__` keyword arguments. On a function, pass the translator:
    `@configurable(from_config=lambda cfg: {...})`. Then:

        Thing(a=1, b=2)           # plain arguments, nothing changes
        Thing(cfg)                # arguments from from_config(cfg)
        Thing(cfg=cfg)            # the same
        Thing(cfg, b=5)           # from_config(cfg), then b=5 replaces what it gave

    A call counts as "with a config" when its first positional argument, or its `cfg`
    keyword, is a CfgNode (or an OmegaConf DictConfig when omegaconf is installed). Extra
    arguments go to `from_config` when it accepts them by name (or takes **kwargs), else
    straight to the decorated callable, overriding what `from_config` returned.
    """
    if init_func is not None:
        _check_decorates_init(init_func, from_config)

        @functools.wraps(init_func)
        def wrapped_init(self, *args, **kwargs):
            if not _called_with_cfg(*args, **kwargs):
                return init_func(self, *args, **kwargs)
            translator = _class_from_config(type(self))
            init_func(self, **_get_args_from_config(translator, *args, **kwargs))

        return wrapped_init

    if from_config is None:
        return configurable  # `@configurable()` means the same as `@configurable`
    if not inspect.isfunction(from_config):
        raise TypeError(
            f"configurable(from_config=...) needs a function, got {type(from_config).__name__}"
        )

    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def wrapped(*args, **kwargs):
            if _called_with_cfg(*args, **kwargs):
                return func(**_get_args_from_config(from_config, *args, **kwargs))
            return func(*args, **kwargs)

        wrapped.from_config = from_config
        return wrapped

    return decorate


def _check_decorates_init(init_func: Callable, from_config: Optional[Callable]) -> None:
    if not inspect.isfunction(init_func) or init_func.__name__ != "__init__":
        name = getattr(init_func, "__qualname__", repr(init_func))
        raise TypeError(
            f"@configurable without arguments decorates a class's __init__, got {name}; "
            "for a function use @configurable(from_config=...)"
        )
    if from_config is not None:
        raise TypeError(
            "@configurable on __init__ takes no from_config argument: define a "
            "from_config classmethod on the class instead"
        )


def _class_from_config(cls: type) -> Callable:
    """`cls.from_config`, which must exist and be a classmethod."""
    translator = getattr(cls, "from_config", None)
    if translator is None:
        raise AttributeError(
            f"{cls.__qualname__} uses @configurable, so it needs a 'from_config' classmethod"
        )
    if not inspect.ismethod(translator):
        raise TypeError(
            f"{cls.__qualname__}.from_config must be a classmethod (decorate it with @classmethod)"
        )
    return translator


def _get_args_from_config(from_config_func: Callable, *args, **kwargs) -> Dict[str, Any]:
    """Call `from_config_func` with the arguments it accepts; return the merged keyword args."""
    name = _callable_name(from_config_func)
    signature = inspect.signature(from_config_func)
    parameter_names = list(signature.parameters)
    if not parameter_names or parameter_names[0] != "cfg":
        raise TypeError(
            f"{name} must take 'cfg' as its first argument, its signature is {signature}"
        )
    takes_var_args = any(
        p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in signature.parameters.values()
    )
    passthrough = {}
    if not takes_var_args:
        passthrough = {k: kwargs.pop(k) for k in list(kwargs) if k not in signature.parameters}
    try:
        signature.bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"{name}{signature} cannot be called with these arguments: {e}") from None
    explicit_args = from_config_func(*args, **kwargs)
    if not isinstance(explicit_args, dict):
        kind = type(explicit_args).__name__
        raise TypeError(f"{name} must return a dict of keyword arguments, returned {kind}")
    explicit_args.update(passthrough)
    return explicit_args


def _callable_name(func: Callable) -> str:
    owner = getattr(func, "__self__", None)
    if isinstance(owner, type):
        return f"{owner.__qualname__}.{func.__name__}"
    return getattr(func, "__qualname__", repr(func))


def _called_with_cfg(*args, **kwargs) -> bool:
    """Whether a call passes a config (first positional argument or `cfg=`)."""
    if args and isinstance(args[0], _CONFIG_TYPES):
        return True
    # from_config's first parameter is always named cfg, so these two cases are all.
    return isinstance(kwargs.get("cfg"), _CONFIG_TYPES)
