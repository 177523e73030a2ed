from .cascade_rcnn import CascadeROIHeads
from .box_head import ROI_BOX_HEAD_REGISTRY, FastRCNNConvFCHead, build_box_head
from .fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference
from .keypoint_head import (
    ROI_KEYPOINT_HEAD_REGISTRY,
    BaseKeypointRCNNHead,
    KRCNNConvDeconvUpsampleHead,
    build_keypoint_head,
)
from .mask_head import ROI_MASK_HEAD_REGISTRY, BaseMaskRCNNHead, MaskRCNNConvUpsampleHead, build_mask_head
from .roi_heads import (
    ROI_HEADS_REGISTRY,
    ROIHeads,
    Res5ROIHeads,
    StandardROIHeads,
    build_roi_heads,
    select_foreground_proposals,
)

__all__ = [k for k in globals() if not k.startswith("_")]
