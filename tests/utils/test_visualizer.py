"""Visualizer: what it draws lands where the inputs say, and only there."""
import numpy as np
import pytest
import torch

from detzoo.data.catalog import Metadata
from detzoo.structures import Boxes, BoxMode, Instances
from detzoo.utils.visualizer import ColorMode, Visualizer, convert_image_to_rgb

H, W = 120, 160


def _changed(before, after, threshold=8):
    """(H, W) bool: pixels whose color moved by more than `threshold` in any channel."""
    return np.abs(after.astype(np.int32) - before.astype(np.int32)).max(axis=2) > threshold


def _predictions(mask_box=(40, 30, 80, 70)):
    x0, y0, x1, y1 = mask_box
    masks = torch.zeros(1, H, W, dtype=torch.bool)
    masks[0, y0:y1, x0:x1] = True
    inst = Instances((H, W))
    inst.pred_boxes = Boxes(torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32))
    inst.scores = torch.tensor([0.9])
    inst.pred_classes = torch.tensor([1])
    inst.pred_masks = masks
    return inst


def test_instances_are_drawn_inside_their_region_only():
    image = np.zeros((H, W, 3), np.uint8)
    out = Visualizer(image, Metadata(name="t", thing_classes=["a", "b"])).draw_instance_predictions(_predictions())
    drawn = out.get_image()
    assert drawn.shape == (H, W, 3) and drawn.dtype == np.uint8
    changed = _changed(image, drawn)
    assert changed[45:65, 45:75].mean() > 0.9  # the mask is filled
    # nothing beyond the box, apart from its label (drawn above or inside the box)
    assert not changed[85:, :].any() and not changed[:, 100:].any()


def test_image_bw_mode_grays_the_background_and_keeps_instance_color():
    image = np.zeros((H, W, 3), np.uint8)
    image[..., 0] = 200  # saturated red everywhere
    out = Visualizer(image, instance_mode=ColorMode.IMAGE_BW).draw_instance_predictions(_predictions()).get_image()
    background = out[90:, 110:].astype(np.int32)
    assert np.abs(background[..., 0] - background[..., 1]).max() <= 2  # gray: R == G == B
    inside = out[50, 60].astype(np.int32)
    assert inside.max() - inside.min() > 20  # the instance keeps color


def test_sem_seg_uses_the_metadata_colors():
    labels = np.zeros((H, W), np.int64)
    labels[:, W // 2:] = 1
    meta = Metadata(name="t", stuff_classes=["sky", "grass"], stuff_colors=[[0, 0, 255], [0, 255, 0]])
    image = np.zeros((H, W, 3), np.uint8)
    out = Visualizer(image, meta).draw_sem_seg(labels, alpha=0.8).get_image().astype(np.int32)
    left, right = out[H // 2, 10], out[H // 2, W - 10]
    assert left[2] > 150 and left[1] < 60  # blue half
    assert right[1] > 150 and right[2] < 60  # green half


def test_dataset_dict_polygons_and_keypoints():
    image = np.zeros((H, W, 3), np.uint8)
    polygon = [20.0, 20.0, 60.0, 20.0, 60.0, 60.0, 20.0, 60.0]
    keypoints = [100, 80, 2, 130, 90, 2, 0, 0, 0]
    record = {"height": H, "width": W, "annotations": [
        {"bbox": [20, 20, 40, 40], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "segmentation": [polygon],
         "keypoints": [0, 0, 0] * 3},
        {"bbox": [95, 75, 40, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "segmentation": [
            [95.0, 75.0, 135.0, 75.0, 135.0, 95.0]], "keypoints": keypoints},
    ]}
    meta = Metadata(name="t", thing_classes=["thing"], keypoint_names=["a", "b", "c"],
                    keypoint_connection_rules=[("a", "b", (255, 0, 0))])
    drawn = Visualizer(image, meta).draw_dataset_dict(record).get_image()
    changed = _changed(image, drawn)
    assert changed[30:50, 30:50].mean() > 0.9  # the square polygon is filled
    assert changed[80, 100] and changed[90, 130]  # both visible keypoints drawn
    assert not changed[110:, :20].any()


@pytest.mark.parametrize("fmt", ["BGR", "RGB", "L"])
def test_convert_image_to_rgb(fmt):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(4, 5, 1 if fmt == "L" else 3)).astype(np.float32)
    rgb = convert_image_to_rgb(torch.from_numpy(image), fmt)
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8
    expected = {"BGR": image[:, :, ::-1], "RGB": image, "L": np.repeat(image, 3, axis=2)}[fmt]
    np.testing.assert_array_equal(rgb, expected.astype(np.uint8))
