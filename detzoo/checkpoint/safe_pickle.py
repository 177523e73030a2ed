"""Reading `.pkl` weight files without executing arbitrary code.

Detectron2 and Detectron1 publish weights as pickles of dicts of numpy arrays. A plain
`pickle.load` runs whatever callable the file names; this unpickler only rebuilds the few
types such files contain (numpy arrays, dtypes and scalars, and plain containers) and
refuses anything else with an error naming the type.
"""
import codecs
import collections
import io
import pickle

import numpy as np

# (module, name) pairs a weights pickle may reference. numpy moved numpy.core to numpy._core
# in 2.0; old files name the former.
_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("collections", "OrderedDict"),
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "bytearray"),
    ("__builtin__", "set"),
    # Protocol-2 pickles written by Python 3 encode bytes through _codecs.encode(str, "latin1").
    ("_codecs", "encode"),
}


class _WeightsUnpickler(pickle.Unpickler):
    def __init__(self, file, source):
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(
                f"{self._source}: refusing to load {module}.{name} from a weights pickle; only numpy "
                "arrays and plain containers are allowed (convert the file to .pth if you trust it)")
        if module.startswith("numpy.core.") or module.startswith("numpy._core."):
            return getattr(np._core.multiarray if hasattr(np, "_core") else np.core.multiarray, name)
        if module in ("builtins", "__builtin__"):
            return {"dict": dict, "list": list, "tuple": tuple, "set": set, "bytearray": bytearray}[name]
        if module == "_codecs":
            return codecs.encode
        if module == "collections":
            return collections.OrderedDict
        return getattr(np, name)


def load_weights_pickle(file, source="<stream>"):
    """Unpickle a weights file (an open binary file or bytes); `source` names it in errors."""
    if isinstance(file, (bytes, bytearray)):
        file = io.BytesIO(file)
    return _WeightsUnpickler(file, source).load()
