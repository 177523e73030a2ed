"""DetectionCheckpointer: loads Detectron2 / Detectron1 / torchvision-converted weights and
saves training checkpoints atomically."""
import logging
import os
import pickle
import tempfile

import numpy as np
import torch
from fvcore.common.checkpoint import Checkpointer
from iopath.common.file_io import PathManager as _PathManagerClass

from .c2_model_loading import align_and_update_state_dicts
from .catalog import PathManager
from .safe_pickle import load_weights_pickle

__all__ = ["DetectionCheckpointer"]


class DetectionCheckpointer(Checkpointer):
    """fvcore's Checkpointer plus:

    * `.pkl` files of Detectron2's model zoo (`{"model": {name: ndarray}, "__author__": ...}`)
      and of Detectron1 / Caffe2 (`{"blobs": {...}}` or a flat dict of Caffe2 names), read
      with a restricted unpickler (no code execution), renamed by suffix matching;
    * `.pth` files holding a bare state dict (e.g. converted torchvision weights);
    * atomic saves: a checkpoint is written to a temporary file, fsync'ed, then renamed, and
      `last_checkpoint` is updated the same way, so a crash never leaves a truncated file as
      the latest checkpoint;
    * in distributed runs only the main process saves.
    """

    def __init__(self, model, save_dir="", *, save_to_disk=None, **checkpointables):
        from detzoo.utils import comm

        is_main = comm.is_main_process()
        super().__init__(model, save_dir, save_to_disk=is_main if save_to_disk is None else save_to_disk,
                         **checkpointables)
        self.path_manager = PathManager
        self._parsed_url_during_load = None

    def load(self, path, *args, **kwargs):
        """Load weights from `path` (local path or URL, incl. detectron2:// and detzoo://)."""
        need_sync = False
        if path and isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            from detzoo.utils import comm

            path = self.path_manager.get_local_path(path)
            has_file = os.path.isfile(path)
            all_have = comm.all_gather(has_file)
            if not all_have[comm.get_rank()]:
                raise OSError(f"file {path} is not accessible on rank {comm.get_rank()}")
            if not all(all_have):
                need_sync = True
        if path:
            self._parsed_url_during_load = path
        result = super().load(path, *args, **kwargs)
        if need_sync:
            self.model._sync_params_and_buffers()
        return result

    def _load_file(self, filename):
        if filename.endswith(".pkl"):
            with self.path_manager.open(filename, "rb") as f:
                data = load_weights_pickle(f, source=filename)
            if not isinstance(data, dict):
                raise ValueError(f"{filename}: expected a pickled dict of weights, got {type(data).__name__}")
            if "model" in data and "__author__" in data:
                self.logger.info(f"Reading a file from '{data['__author__']}'")
                return data
            # Detectron1 / Caffe2 model zoo file.
            blobs = data.get("blobs", data)
            blobs = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
            return {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):
            # pycls checkpoints: {"model_state": ...}
            with self.path_manager.open(filename, "rb") as f:
                data = torch.load(f, map_location="cpu", weights_only=True)
            if "model_state" not in data:
                raise ValueError(f"{filename}: a .pyth checkpoint must contain 'model_state'")
            return {"model": data["model_state"], "__author__": "pycls", "matching_heuristics": True}

        loaded = self._torch_load(filename)
        if "model" not in loaded:
            loaded = {"model": loaded}
        if self._parsed_url_during_load and "matching_heuristics" in self._parsed_url_during_load:
            loaded["matching_heuristics"] = True
        return loaded

    def _torch_load(self, filename):
        with self.path_manager.open(filename, "rb") as f:
            try:
                return torch.load(f, map_location=torch.device("cpu"), weights_only=True)
            except pickle.UnpicklingError:
                # Checkpoints with optimizer / scheduler state hold plain Python objects that the
                # weights-only loader refuses; our own training checkpoints are trusted files.
                f.seek(0)
                return torch.load(f, map_location=torch.device("cpu"), weights_only=False)

    def _load_model(self, checkpoint):
        if checkpoint.get("matching_heuristics", False):
            self._convert_ndarray_to_tensor(checkpoint["model"])
            checkpoint["model"] = align_and_update_state_dicts(
                self.model.state_dict(), checkpoint["model"],
                c2_conversion=checkpoint.get("__author__", None) == "Caffe2")
        incompatible = super()._load_model(checkpoint)
        # Non-persistent buffers and anchor caches are not in Detectron2's checkpoints either.
        buffers = dict(self.model.named_buffers(recurse=False))
        for key in ("pixel_mean", "pixel_std"):
            if key in buffers and key in incompatible.missing_keys:
                incompatible.missing_keys.remove(key)
        for key in list(incompatible.unexpected_keys):
            if "anchor_generator.cell_anchors" in key:
                incompatible.unexpected_keys.remove(key)
        return incompatible

    def _convert_ndarray_to_tensor(self, state_dict):
        for key in list(state_dict.keys()):
            value = state_dict[key]
            if isinstance(value, np.ndarray):
                state_dict[key] = torch.from_numpy(np.ascontiguousarray(value))
            elif not isinstance(value, torch.Tensor):
                raise ValueError(f"checkpoint entry {key} is a {type(value).__name__}, not an array or tensor")

    # ------------------------------------------------------------------ saving
    def save(self, name, **kwargs):
        """Save model and checkpointables as `<save_dir>/<name>.pth` atomically and point
        `last_checkpoint` at it."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        if not isinstance(self.path_manager, _PathManagerClass) or not _is_local(save_file):
            # Remote storage: rely on the backend's own upload semantics.
            with self.path_manager.open(save_file, "wb") as f:
                torch.save(data, f)
        else:
            _atomic_write(save_file, lambda f: torch.save(data, f))
        self.logger.info(f"Saved checkpoint to {save_file}")
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        if _is_local(save_file):
            _atomic_write(save_file, lambda f: f.write(last_filename_basename.encode("utf-8")))
        else:
            with self.path_manager.open(save_file, "w") as f:
                f.write(last_filename_basename)


def _is_local(path):
    return "://" not in path or path.startswith("file://")


def _atomic_write(path, write):
    """Write through `write(binary_file)` into a temp file beside `path`, fsync, rename."""
    path = path[len("file://"):] if path.startswith("file://") else path
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
