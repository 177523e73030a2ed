"""The default mapper from a dataset dict (Detectron2's dataset format) to a model input dict."""
import logging
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from detzoo.config import configurable

from . import detection_utils as utils
from . import transforms as T

__all__ = ["DatasetMapper"]


class DatasetMapper:
    """Turn one dataset dict into what the models take:

    1. read the image from "file_name" (and the label image from "sem_seg_file_name");
    2. apply the augmentations to the image and move the annotations, proposals and
       segmentation with the same transforms;
    3. return the dict with "image" (Tensor[C, H, W]), and in training "instances"
       (Instances), "sem_seg" (Tensor[H, W] int64) and "proposals" when present.

    Crowd annotations ("iscrowd": 1) are dropped in training, as in Detectron2; annotations
    are dropped entirely at inference.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: List[Union[T.Augmentation, T.Transform]],
        image_format: str,
        use_instance_mask: bool = False,
        use_keypoint: bool = False,
        instance_mask_format: str = "polygon",
        keypoint_hflip_indices: Optional[Sequence[int]] = None,
        precomputed_proposal_topk: Optional[int] = None,
        recompute_boxes: bool = False,
    ):
        """
        Args:
            is_train (bool): training (annotations are turned into Instances) or inference.
            augmentations (list[Augmentation or Transform]): applied in order.
            image_format (str): see `detection_utils.read_image`.
            use_instance_mask (bool): keep "segmentation" and build `gt_masks`.
            use_keypoint (bool): keep "keypoints" and build `gt_keypoints`.
            instance_mask_format (str): "polygon" or "bitmask".
            keypoint_hflip_indices (list[int]): see `detection_utils.create_keypoint_hflip_indices`.
            precomputed_proposal_topk (int): if set, read the dict's precomputed proposals and
                keep this many.
            recompute_boxes (bool): replace the boxes by the tight boxes of the masks (after a
                crop the clipped box is no longer tight).
        """
        if recompute_boxes and not use_instance_mask:
            raise ValueError("DatasetMapper: recompute_boxes=True needs use_instance_mask=True")
        if instance_mask_format not in ("polygon", "bitmask"):
            raise ValueError(
                f"DatasetMapper: instance_mask_format must be 'polygon' or 'bitmask', got {instance_mask_format!r}"
            )
        utils._check_format(image_format)
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.use_instance_mask = use_instance_mask
        self.instance_mask_format = instance_mask_format
        self.use_keypoint = use_keypoint
        self.keypoint_hflip_indices = keypoint_hflip_indices
        self.proposal_topk = precomputed_proposal_topk
        self.recompute_boxes = recompute_boxes
        mode = "training" if is_train else "inference"
        logging.getLogger(__name__).info(f"[DatasetMapper] Augmentations used in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict[str, Any]:
        augs = utils.build_augmentation(cfg, is_train)
        recompute_boxes = False
        if cfg.INPUT.CROP.ENABLED and is_train:
            augs.insert(0, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
            recompute_boxes = cfg.MODEL.MASK_ON
        ret = {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "use_instance_mask": cfg.MODEL.MASK_ON,
            "instance_mask_format": cfg.INPUT.MASK_FORMAT,
            "use_keypoint": cfg.MODEL.KEYPOINT_ON,
            "recompute_boxes": recompute_boxes,
        }
        if cfg.MODEL.KEYPOINT_ON:
            ret["keypoint_hflip_indices"] = utils.create_keypoint_hflip_indices(cfg.DATASETS.TRAIN)
        if cfg.MODEL.LOAD_PROPOSALS:
            datasets = cfg.DATASETS
            ret["precomputed_proposal_topk"] = (
                datasets.PRECOMPUTED_PROPOSAL_TOPK_TRAIN if is_train else datasets.PRECOMPUTED_PROPOSAL_TOPK_TEST
            )
        return ret

    def _read_image(self, dataset_dict: Dict[str, Any]) -> np.ndarray:
        file_name = dataset_dict["file_name"]
        try:
            return utils.read_image(file_name, format=self.image_format)
        except OSError as e:  # missing or undecodable file: say which record points at it
            raise type(e)(
                f"DatasetMapper: cannot read the image of image_id {dataset_dict.get('image_id', '?')} "
                f"({file_name}): {e}"
            ) from e

    def _transform_annotations(self, dataset_dict: Dict[str, Any], transforms: T.TransformList,
                               image_shape) -> None:
        annos = []
        for obj in dataset_dict.pop("annotations"):
            if obj.get("iscrowd", 0) != 0:
                continue
            if not self.use_instance_mask:
                obj.pop("segmentation", None)
            if not self.use_keypoint:
                obj.pop("keypoints", None)
            annos.append(utils.transform_instance_annotations(
                obj, transforms, image_shape, keypoint_hflip_indices=self.keypoint_hflip_indices
            ))
        instances = utils.annotations_to_instances(annos, image_shape, mask_format=self.instance_mask_format)
        # a crop clips a box to the window, which is not the tight box of the visible part
        if self.recompute_boxes and instances.has("gt_masks"):
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        dataset_dict["instances"] = utils.filter_empty_instances(instances)

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        """
        Args:
            dataset_dict (dict): one image in Detectron2's dataset format (not modified).

        Returns:
            dict: the input's keys plus "image" (Tensor[C, H, W], the transformed image in
            `image_format`), and as available "sem_seg", "proposals", "instances".
        """
        dataset_dict = _copy_for_mapping(dataset_dict)
        image = self._read_image(dataset_dict)
        utils.check_image_size(dataset_dict, image)
        sem_seg_file = dataset_dict.pop("sem_seg_file_name", None)
        sem_seg_gt = utils.read_sem_seg(sem_seg_file) if sem_seg_file is not None else None

        aug_input = T.AugInput(image, sem_seg=sem_seg_gt)
        transforms = self.augmentations(aug_input)
        image, sem_seg_gt = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]
        if image.ndim == 2:  # format=None on a single-channel file
            image = image[:, :, None]
        # tensors travel between loader workers through shared memory, not pickling
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg_gt is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg_gt.astype("long"))
        if self.proposal_topk is not None:
            utils.transform_proposals(dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk)

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict


def _copy_for_mapping(dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of a record that the mapper may change without touching the original: the
    record and each annotation dict are copied, their values are shared. The mapper only
    sets, replaces and pops keys at those two levels; the values inside (polygons, keypoints,
    boxes, RLEs, proposals) are read into new arrays before anything moves them. Copying
    everything (`copy.deepcopy`) cost a third of the mapping time of a shapes image, most of
    it spent on the floats of polygon lists."""
    copied = dict(dataset_dict)
    if "annotations" in copied:
        copied["annotations"] = [dict(obj) for obj in copied["annotations"]]
    return copied
