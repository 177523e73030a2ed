"""Building blocks and op wrappers: thin, validated Python faces of torch.ops.detzoo.* and the
small modules (convs, norms, losses) that models are made of. Nothing here imports
detzoo.structures."""
# Each module adds its public names below (one import line per module).
from .wrappers import BatchNorm2d, Conv2d, ConvTranspose2d, Linear, cat, cross_entropy, empty_input_loss_func_wrapper, interpolate, move_device_like, nonzero_tuple, shapes_to_tensor  # noqa: E501
from .batch_norm import CycleBatchNormList, FrozenBatchNorm2d, LayerNorm, NaiveSyncBatchNorm, get_norm
from .shape_spec import ShapeSpec
from .blocks import CNNBlockBase, DepthwiseSeparableConv2d
from .mask_ops import paste_masks_in_image
from .losses import ciou_loss, diou_loss, giou_loss, smooth_l1_loss
from .nms import batched_nms, batched_nms_rotated, nms, nms_rotated
from .rotated_boxes import pairwise_iou_rotated
from .deform_conv import DeformConv, ModulatedDeformConv, deform_conv, modulated_deform_conv
from .roi_align import ROIAlign, roi_align
from .roi_align_rotated import ROIAlignRotated, roi_align_rotated
