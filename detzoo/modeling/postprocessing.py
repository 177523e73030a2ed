"""Rescaling model outputs from the network's input resolution to the requested output size."""
import torch
from torch.nn import functional as F

from detzoo.structures import Instances, ROIMasks

__all__ = ["detector_postprocess", "sem_seg_postprocess"]


def detector_postprocess(results: Instances, output_height: int, output_width: int, mask_threshold: float = 0.5):
    """Resize detections to (output_height, output_width), usually the original image size.

    Boxes (pred_boxes or proposal_boxes) are scaled and clipped, empty ones dropped; the
    M x M mask probabilities `pred_masks` (R, 1, M, M) become full-image boolean masks
    (R, H, W) by pasting into the boxes; keypoints are scaled.

    Args:
        results: detections of one image at the network input size `results.image_size`.
        output_height, output_width: the wanted size (ints, or 0-dim tensors when tracing).
        mask_threshold: probability above which a mask pixel is on.
    Returns:
        Instances at the new size.
    """
    if isinstance(output_width, torch.Tensor):
        out_w, out_h = output_width.float(), output_height.float()
        new_size = torch.stack([output_height, output_width])
    else:
        out_w, out_h = output_width, output_height
        new_size = (output_height, output_width)
    scale_x, scale_y = out_w / results.image_size[1], out_h / results.image_size[0]
    results = Instances(new_size, **results.get_fields())

    if results.has("pred_boxes"):
        boxes = results.pred_boxes
    elif results.has("proposal_boxes"):
        boxes = results.proposal_boxes
    else:
        raise ValueError(f"detector_postprocess needs pred_boxes or proposal_boxes; the results have "
                         f"{sorted(results.get_fields())}")
    boxes.scale(scale_x, scale_y)
    boxes.clip(results.image_size)
    results = results[boxes.nonempty()]

    if results.has("pred_masks"):
        masks = results.pred_masks
        roi_masks = masks if isinstance(masks, ROIMasks) else ROIMasks(masks[:, 0, :, :])
        results.pred_masks = roi_masks.to_bitmasks(results.pred_boxes, output_height, output_width,
                                                   mask_threshold).tensor
    if results.has("pred_keypoints"):
        results.pred_keypoints[:, :, 0] *= scale_x
        results.pred_keypoints[:, :, 1] *= scale_y
    return results


def sem_seg_postprocess(result: torch.Tensor, img_size, output_height: int, output_width: int):
    """Crop the padding off semantic logits and resize them bilinearly.

    Args:
        result (Tensor[C, Hp, Wp]): logits of the padded batch image.
        img_size (tuple): (h, w) of the image before padding.
    Returns:
        Tensor[C, output_height, output_width].
    """
    cropped = result[:, : img_size[0], : img_size[1]].expand(1, -1, -1, -1)
    return F.interpolate(cropped, size=(output_height, output_width), mode="bilinear", align_corners=False)[0]
