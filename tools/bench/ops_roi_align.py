"""ROIAlign against torchvision.ops.roi_align: 1000 boxes pooled to 256 x 7 x 7 from one stride-4
feature map (1 x 256 x 200 x 336, the P2 level of an 800 x 1344 image), as in Mask R-CNN's box
head. Boxes are random, 16 to 320 pixels wide and tall in image coordinates, clipped to the image.
"""
import torch
import torchvision

from detzoo.layers.roi_align import roi_align

NUM_BOXES = 1000
IMAGE_H, IMAGE_W = 800, 1344
SPATIAL_SCALE = 0.25
OUTPUT_SIZE = (7, 7)


def _boxes(generator):
    size = torch.empty(NUM_BOXES, 2).uniform_(16, 320, generator=generator)
    corner = torch.rand(NUM_BOXES, 2, generator=generator) * torch.tensor([IMAGE_W, IMAGE_H])
    far = torch.minimum(corner + size, torch.tensor([IMAGE_W, IMAGE_H], dtype=torch.float32))
    return torch.cat([torch.zeros(NUM_BOXES, 1), corner, far], dim=1)


def _forward_case(Case, features, rois, sampling_ratio):
    args = (OUTPUT_SIZE, SPATIAL_SCALE, sampling_ratio, True)
    return Case(
        f"roi_align 1000 boxes x 256ch 7x7 aligned sampling_ratio={sampling_ratio}",
        lambda: roi_align(features, rois, *args),
        lambda: torchvision.ops.roi_align(features, rois, *args),
        "torchvision",
    )


def _backward_case(Case, features, rois, sampling_ratio):
    args = (OUTPUT_SIZE, SPATIAL_SCALE, sampling_ratio, True)
    features = features.detach().requires_grad_()
    grad_output = torch.randn(NUM_BOXES, features.shape[1], *OUTPUT_SIZE)

    def run(fn):
        return lambda: torch.autograd.grad(fn(features, rois, *args), features, grad_output)

    return Case(
        f"roi_align 1000 boxes x 256ch 7x7 aligned sampling_ratio={sampling_ratio} forward+backward",
        run(roi_align),
        run(torchvision.ops.roi_align),
        "torchvision",
    )


def cases(Case):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, 256, IMAGE_H // 4, IMAGE_W // 4, generator=generator)
    rois = _boxes(generator)
    return [
        _forward_case(Case, features, rois, 0),
        _forward_case(Case, features, rois, 2),
        _backward_case(Case, features, rois, 0),
        _backward_case(Case, features, rois, 2),
    ]
