"""Detectron2's model zoo: the packaged configs and the checkpoints Detectron2 trained from them.

    from detzoo import model_zoo
    model = model_zoo.get("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml", trained=True)

Config names are paths relative to `detzoo/model_zoo/configs/` (the same names as under
Detectron2's `configs/`). A trained checkpoint is downloaded once into detzoo's cache
($DETZOO_CACHE, default ~/.torch/detzoo_cache) at `detectron2/<name>/<model id>/<file>`, the
file that `detectron2://<name>/<model id>/<file>` also resolves to, and is checked against the
md5 prefix its file name carries (`model_final_f10217.pkl`). See MODEL_ZOO.md for the table.
"""
import difflib
import hashlib
import importlib.resources
import logging
import os
import re
from pathlib import Path
from typing import List, Optional

import torch

from detzoo.checkpoint import DetectionCheckpointer
from detzoo.config import CfgNode, get_cfg
from detzoo.modeling import build_model
from detzoo.utils.file_io import DETECTRON2_URL_PREFIX, download_to_cache, get_cache_dir

__all__ = ["get_checkpoint_url", "get_config_file", "get_config", "get", "list_configs"]

logger = logging.getLogger(__name__)

# Detectron2's published files end in "_<first hex digits of their md5>.pkl".
_MD5_IN_NAME = re.compile(r"_([0-9a-f]{6,})\.(?:pkl|pth)$")


class _ModelZooUrls:
    """Where Detectron2 published the checkpoint trained with each zoo config.

    A URL is S3_PREFIX + "<config name without .yaml>/" + CONFIG_PATH_TO_URL_SUFFIX[name]; the
    suffix is "<model id>/<file>", and the hex digits before ".pkl" begin the file's md5.
    """

    S3_PREFIX = DETECTRON2_URL_PREFIX

    CONFIG_PATH_TO_URL_SUFFIX = {
        # COCO detection: Faster R-CNN
        "COCO-Detection/faster_rcnn_R_50_C4_1x": "137257644/model_final_721ade.pkl",
        "COCO-Detection/faster_rcnn_R_50_DC5_1x": "137847829/model_final_51d356.pkl",
        "COCO-Detection/faster_rcnn_R_50_FPN_1x": "137257794/model_final_b275ba.pkl",
        "COCO-Detection/faster_rcnn_R_50_C4_3x": "137849393/model_final_f97cb7.pkl",
        "COCO-Detection/faster_rcnn_R_50_DC5_3x": "137849425/model_final_68d202.pkl",
        "COCO-Detection/faster_rcnn_R_50_FPN_3x": "137849458/model_final_280758.pkl",
        "COCO-Detection/faster_rcnn_R_101_C4_3x": "138204752/model_final_298dad.pkl",
        "COCO-Detection/faster_rcnn_R_101_DC5_3x": "138204841/model_final_3e0943.pkl",
        "COCO-Detection/faster_rcnn_R_101_FPN_3x": "137851257/model_final_f6e8b1.pkl",
        "COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x": "139173657/model_final_68b088.pkl",
        # COCO detection: RetinaNet (the 1903977xx re-trainings, which replaced the first ones)
        "COCO-Detection/retinanet_R_50_FPN_1x": "190397773/model_final_bfca0b.pkl",
        "COCO-Detection/retinanet_R_50_FPN_3x": "190397829/model_final_5bd44e.pkl",
        "COCO-Detection/retinanet_R_101_FPN_3x": "190397697/model_final_971ab9.pkl",
        # COCO detection: RPN alone, and Fast R-CNN on precomputed proposals
        "COCO-Detection/rpn_R_50_C4_1x": "137258005/model_final_450694.pkl",
        "COCO-Detection/rpn_R_50_FPN_1x": "137258492/model_final_02ce48.pkl",
        "COCO-Detection/fast_rcnn_R_50_FPN_1x": "137635226/model_final_e5f7ce.pkl",
        # COCO instance segmentation: Mask R-CNN
        "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x": "137259246/model_final_9243eb.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_1x": "137260150/model_final_4f86c3.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x": "137260431/model_final_a54504.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_3x": "137849525/model_final_4ce675.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_3x": "137849551/model_final_84107b.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x": "137849600/model_final_f10217.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_101_C4_3x": "138363239/model_final_a2914c.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_101_DC5_3x": "138363294/model_final_0464b7.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x": "138205316/model_final_a3ec72.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x": "139653917/model_final_2d9806.pkl",
        # COCO person keypoints: Keypoint R-CNN
        "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x": "137261548/model_final_04e291.pkl",
        "COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x": "137849621/model_final_a6e10b.pkl",
        "COCO-Keypoints/keypoint_rcnn_R_101_FPN_3x": "138363331/model_final_997cc7.pkl",
        "COCO-Keypoints/keypoint_rcnn_X_101_32x8d_FPN_3x": "139686956/model_final_5ad38f.pkl",
        # COCO panoptic segmentation: Panoptic FPN
        "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x": "139514544/model_final_dbfeb4.pkl",
        "COCO-PanopticSegmentation/panoptic_fpn_R_50_3x": "139514569/model_final_c10459.pkl",
        "COCO-PanopticSegmentation/panoptic_fpn_R_101_3x": "139514519/model_final_cafdb1.pkl",
        # LVIS v0.5 instance segmentation (no LVIS v1 checkpoint was published)
        "LVISv0.5-InstanceSegmentation/mask_rcnn_R_50_FPN_1x": "144219072/model_final_571f7c.pkl",
        "LVISv0.5-InstanceSegmentation/mask_rcnn_R_101_FPN_1x": "144219035/model_final_824ab5.pkl",
        "LVISv0.5-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_1x": "144219108/model_final_5e3439.pkl",
        # Cityscapes and Pascal VOC
        "Cityscapes/mask_rcnn_R_50_FPN": "142423278/model_final_af9cf5.pkl",
        "PascalVOC-Detection/faster_rcnn_R_50_C4": "142202221/model_final_b1acc2.pkl",
        # Other settings: deformable conv, cascade, norms, training from scratch, large models
        "Misc/mask_rcnn_R_50_FPN_1x_dconv_c3-c5": "138602867/model_final_65c703.pkl",
        "Misc/mask_rcnn_R_50_FPN_3x_dconv_c3-c5": "144998336/model_final_821d0b.pkl",
        "Misc/cascade_mask_rcnn_R_50_FPN_1x": "138602847/model_final_e9d89b.pkl",
        "Misc/cascade_mask_rcnn_R_50_FPN_3x": "144998488/model_final_480dd8.pkl",
        "Misc/mask_rcnn_R_50_FPN_3x_syncbn": "169527823/model_final_3b3c51.pkl",
        "Misc/mask_rcnn_R_50_FPN_3x_gn": "138602888/model_final_dc5d9e.pkl",
        "Misc/scratch_mask_rcnn_R_50_FPN_3x_gn": "138602908/model_final_01ca85.pkl",
        "Misc/scratch_mask_rcnn_R_50_FPN_9x_gn": "183808979/model_final_da7b4c.pkl",
        "Misc/scratch_mask_rcnn_R_50_FPN_9x_syncbn": "184226666/model_final_5ce33e.pkl",
        "Misc/panoptic_fpn_R_101_dconv_cascade_gn_3x": "139797668/model_final_be35db.pkl",
        # published from an intermediate iteration, hence not "model_final"
        "Misc/cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv": "18131413/model_0039999_e76410.pkl",
        # Detectron1 comparisons: Detectron's settings (no scale jitter, smooth L1, ...)
        "Detectron1-Comparisons/faster_rcnn_R_50_FPN_noaug_1x": "137781054/model_final_7ab50c.pkl",
        "Detectron1-Comparisons/mask_rcnn_R_50_FPN_noaug_1x": "137781281/model_final_62ca52.pkl",
        "Detectron1-Comparisons/keypoint_rcnn_R_50_FPN_1x": "137781195/model_final_cce136.pkl",
    }

    @staticmethod
    def query(config_path: str) -> Optional[str]:
        """The checkpoint URL of `config_path` ("X.yaml" or "X"), or None if none was published."""
        name = _strip_yaml(config_path)
        suffix = _ModelZooUrls.CONFIG_PATH_TO_URL_SUFFIX.get(name)
        return None if suffix is None else f"{_ModelZooUrls.S3_PREFIX}{name}/{suffix}"


# ----------------------------------------------------------------------------- configs
def _strip_yaml(config_path: str) -> str:
    return config_path[: -len(".yaml")] if config_path.endswith(".yaml") else config_path


def _config_root() -> Path:
    # A regular (non-zipped) package: files() is a real directory (setup.py sets zip_safe=False).
    return Path(str(importlib.resources.files(__package__).joinpath("configs")))


def list_configs() -> List[str]:
    """Every YAML file of the zoo, as names relative to the config root, sorted
    ("Base-RCNN-FPN.yaml", "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", ...)."""
    root = _config_root()
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.yaml"))


def _near_matches(config_path: str, names: List[str]) -> List[str]:
    """Names sharing `config_path`'s file name, then the closest spellings."""
    base = config_path.rsplit("/", 1)[-1]
    same_file = [n for n in names if n.rsplit("/", 1)[-1] == base]
    close = difflib.get_close_matches(config_path, names, n=5, cutoff=0.6)
    return list(dict.fromkeys(same_file + close))[:5]


def _suggestion(config_path: str, names: List[str]) -> str:
    matches = _near_matches(config_path, names)
    return f" Did you mean: {', '.join(matches)}?" if matches else ""


def get_config_file(config_path: str) -> str:
    """The absolute path of the zoo config `config_path`.

    Args:
        config_path: file name relative to the zoo's config root, as in Detectron2's
            `configs/`, e.g. "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml".

    Raises:
        RuntimeError: the zoo has no such file; the message lists the nearest names.
    """
    root = _config_root()
    path = Path(os.path.normpath(root / config_path))
    if path.is_file() and path.is_relative_to(root):
        return str(path)
    raise RuntimeError(f"{config_path!r} is not in the model zoo (no file {path})."
                       + _suggestion(config_path, list_configs()))


# ----------------------------------------------------------------------------- checkpoints
def get_checkpoint_url(config_path: str) -> str:
    """The URL of the checkpoint Detectron2 trained with the zoo config `config_path`.

    Args:
        config_path: e.g. "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml".

    Raises:
        RuntimeError: no checkpoint was published for this config (or it is not a zoo config).
    """
    url = _ModelZooUrls.query(config_path)
    if url is not None:
        return url
    if f"{_strip_yaml(config_path)}.yaml" in list_configs():
        raise RuntimeError(f"Detectron2 published no trained checkpoint for {config_path!r}; "
                           "train it with tools/train_net.py, or pick a config that has one (MODEL_ZOO.md).")
    published = [f"{name}.yaml" for name in _ModelZooUrls.CONFIG_PATH_TO_URL_SUFFIX]
    raise RuntimeError(f"{config_path!r} is not a model-zoo config with a trained checkpoint."
                       + _suggestion(f"{_strip_yaml(config_path)}.yaml", published))


def _md5_prefix_in_name(path: str) -> Optional[str]:
    match = _MD5_IN_NAME.search(os.path.basename(path))
    return match.group(1) if match else None


def _md5(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify_md5_prefix(local: str, url: str) -> None:
    """Check `local` against the md5 prefix in its name; delete it and raise if it differs."""
    expected = _md5_prefix_in_name(local)
    if expected is None:
        return
    actual = _md5(local)[: len(expected)]
    if actual != expected:
        os.remove(local)
        raise RuntimeError(f"{url}: the cached copy {local} has md5 prefix {actual}, expected {expected} "
                           "(the prefix in its name): the file is corrupt or incomplete and was deleted; "
                           "run again to download it anew.")


def _cached_checkpoint(url: str) -> str:
    """The local copy of the zoo checkpoint at `url` (under S3_PREFIX), downloaded if needed.

    Cached at <cache>/detectron2/<path after the prefix>, shared with `detectron2://` names.
    A fresh download is md5-checked by download_to_cache; a file already in the cache (e.g.
    put there by hand) is checked here.
    """
    relative = url[len(_ModelZooUrls.S3_PREFIX):]
    cache_relative = os.path.join("detectron2", *relative.split("/"))
    was_cached = os.path.isfile(os.path.join(get_cache_dir(), cache_relative))
    local = download_to_cache(url, cache_relative)
    if was_cached:
        _verify_md5_prefix(local, url)
    return local


def _local_weights(weights: str) -> str:
    """Zoo checkpoint URLs go through the shared cache; any other path is left to the checkpointer."""
    if weights.startswith(_ModelZooUrls.S3_PREFIX):
        return _cached_checkpoint(weights)
    return weights


# ----------------------------------------------------------------------------- configs and models
def get_config(config_path: str, trained: bool = False) -> CfgNode:
    """The zoo config `config_path` merged into detzoo's defaults.

    Args:
        config_path: e.g. "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml".
        trained: if True, MODEL.WEIGHTS is set to the URL of Detectron2's checkpoint trained
            with this config. If False, MODEL.WEIGHTS stays what the file says: usually an
            ImageNet-pretrained backbone, the rest of the model starting from random init.
    """
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file(config_path))
    if trained:
        cfg.MODEL.WEIGHTS = get_checkpoint_url(config_path)
    return cfg


def _best_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def get(config_path: str, trained: bool = False, device: Optional[str] = None) -> torch.nn.Module:
    """Build the model of the zoo config `config_path` and load its weights.

    Args:
        config_path: e.g. "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml".
        trained: see :func:`get_config`: True loads Detectron2's trained checkpoint (downloaded
            once into the cache), False the config's own MODEL.WEIGHTS (if any).
        device: where the model lives; default "cuda" when available, else "cpu".

    Returns:
        The model, in training mode (call `.eval()` before inference).
    """
    cfg = get_config(config_path, trained)
    cfg.MODEL.DEVICE = device or _best_device()
    weights = _local_weights(cfg.MODEL.WEIGHTS)  # before building: an offline machine fails at once
    logger.info(f"model zoo: building {config_path} on {cfg.MODEL.DEVICE}, "
                f"weights {cfg.MODEL.WEIGHTS or 'none (random init)'}")
    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    return model
