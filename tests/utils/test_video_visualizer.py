"""VideoVisualizer: colors follow objects across frames (box IoU, mask IoU, track ids), with a
time-to-live for missed detections; drawings are frame-sized and drawn where the objects are."""
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from detzoo.data.catalog import Metadata
from detzoo.structures import Boxes, Instances
from detzoo.utils import video_visualizer as vv
from detzoo.utils.video_visualizer import VideoVisualizer
from detzoo.utils.visualizer import ColorMode, Visualizer

H, W = 64, 80


@pytest.fixture
def metadata():
    return Metadata(name="video_test", thing_classes=["circle", "triangle", "square"],
                    stuff_classes=["sky", "grass"], stuff_colors=[[135, 190, 235], [90, 160, 70]])


@pytest.fixture
def drawn_colors(monkeypatch):
    """The assigned_colors of every overlay_instances call, in order."""
    calls = []
    original = Visualizer.overlay_instances

    def spy(self, **kwargs):
        calls.append(kwargs.get("assigned_colors"))
        return original(self, **kwargs)

    monkeypatch.setattr(Visualizer, "overlay_instances", spy)
    return calls


def _frame(value=100):
    return np.full((H, W, 3), value, dtype=np.uint8)


def _instances(boxes, classes, masks=None, **fields):
    inst = Instances((H, W))
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.full((len(classes),), 0.9)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    if masks is not None:
        inst.pred_masks = masks
    for name, value in fields.items():
        inst.set(name, value)
    return inst


def _box_mask(box):
    mask = torch.zeros(H, W, dtype=torch.bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    return mask


def test_same_object_keeps_color_new_object_gets_another(metadata, drawn_colors):
    visualizer = VideoVisualizer(metadata)
    visualizer.draw_instance_predictions(_frame(), _instances([[10, 10, 30, 30]], [0]))
    # the object moved by a pixel; a second object appears
    visualizer.draw_instance_predictions(_frame(), _instances([[50, 20, 70, 40], [11, 10, 31, 30]], [1, 0]))
    first, second = drawn_colors
    assert second[1] == first[0]
    assert second[0] != first[0]
    visualizer.draw_instance_predictions(_frame(), _instances([[12, 11, 32, 31], [50, 21, 70, 41]], [0, 1]))
    assert drawn_colors[2] == [first[0], second[0]]


def test_other_class_or_far_box_is_a_new_object(metadata, drawn_colors):
    visualizer = VideoVisualizer(metadata)
    visualizer.draw_instance_predictions(_frame(), _instances([[10, 10, 30, 30]], [0]))
    visualizer.draw_instance_predictions(_frame(), _instances([[10, 10, 30, 30]], [2]))  # same place, other class
    visualizer.draw_instance_predictions(_frame(), _instances([[22, 22, 42, 42]], [2]))  # IoU 0.22 < 0.6
    colors = [c[0] for c in drawn_colors]
    assert len(set(colors)) == 3


def test_one_old_instance_colors_at_most_one_new(metadata, drawn_colors):
    visualizer = VideoVisualizer(metadata)
    visualizer.draw_instance_predictions(_frame(), _instances([[10, 10, 30, 30]], [0]))
    # two near-duplicates of it: the better overlap inherits, the other gets its own color
    visualizer.draw_instance_predictions(_frame(), _instances([[10, 10, 32, 30], [10, 10, 30, 30]], [0, 0]))
    old, new = drawn_colors[0][0], drawn_colors[1]
    assert new[1] == old and new[0] != old


def test_missed_detection_recovers_color_within_ttl(metadata, drawn_colors):
    visualizer = VideoVisualizer(metadata)
    box = [[10, 10, 30, 30]]
    visualizer.draw_instance_predictions(_frame(), _instances(box, [0]))
    for _ in range(vv._TTL - 1):  # missed, but remembered
        visualizer.draw_instance_predictions(_frame(), _instances([], []))
    visualizer.draw_instance_predictions(_frame(), _instances(box, [0]))
    assert drawn_colors[-1] == drawn_colors[0]


def test_color_is_forgotten_after_ttl(metadata, drawn_colors):
    visualizer = VideoVisualizer(metadata)
    box = [[10, 10, 30, 30]]
    visualizer.draw_instance_predictions(_frame(), _instances(box, [0]))
    for _ in range(vv._TTL):
        visualizer.draw_instance_predictions(_frame(), _instances([], []))
    visualizer.draw_instance_predictions(_frame(), _instances(box, [0]))
    assert drawn_colors[-1] != drawn_colors[0]


def test_matching_by_masks_when_there_are_no_boxes(metadata, drawn_colors):
    def masks_only(boxes, classes):
        inst = Instances((H, W))
        inst.pred_classes = torch.tensor(classes)
        inst.pred_masks = torch.stack([_box_mask(b) for b in boxes])
        return inst

    visualizer = VideoVisualizer(metadata)
    visualizer.draw_instance_predictions(_frame(), masks_only([[10, 10, 30, 30], [40, 30, 70, 60]], [0, 1]))
    visualizer.draw_instance_predictions(_frame(), masks_only([[42, 30, 72, 60], [11, 10, 31, 30]], [1, 0]))
    first, second = drawn_colors
    assert second == [first[1], first[0]]


def test_track_ids_decide_colors(metadata, drawn_colors):
    visualizer = VideoVisualizer(metadata)
    visualizer.draw_instance_predictions(_frame(), _instances([[10, 10, 30, 30], [40, 10, 60, 30]], [0, 0],
                                                              ID=torch.tensor([7, 8])))
    # boxes swapped places: the ids, not the overlaps, carry the colors
    visualizer.draw_instance_predictions(_frame(), _instances([[10, 10, 30, 30], [40, 10, 60, 30]], [0, 0],
                                                              ID=torch.tensor([8, 7])))
    first, second = drawn_colors
    assert first[0] != first[1]
    assert second == [first[1], first[0]]


def test_short_tracks_are_not_drawn(metadata, drawn_colors):
    metadata.duration_threshold = 2
    visualizer = VideoVisualizer(metadata)
    visualizer.draw_instance_predictions(_frame(), _instances([[10, 10, 30, 30], [40, 10, 60, 30]], [0, 1],
                                                              ID=torch.tensor([1, 2]),
                                                              ID_duration=torch.tensor([5, 1])))
    assert len(drawn_colors[0]) == 1


def test_drawing_is_frame_sized_and_drawn_where_the_objects_are(metadata):
    frame = _frame(100)
    box = [16, 12, 48, 44]
    predictions = _instances([box], [2], masks=_box_mask(box)[None])
    for mode in (ColorMode.IMAGE, ColorMode.IMAGE_BW):
        out = VideoVisualizer(metadata, mode).draw_instance_predictions(frame, predictions).get_image()
        assert out.shape == frame.shape and out.dtype == np.uint8
        changed = np.abs(out.astype(int) - frame).max(axis=2) > 10
        inside = _box_mask([box[0] + 3, box[1] + 3, box[2] - 3, box[3] - 3]).numpy()
        assert changed[inside].mean() > 0.9  # the mask fill
        far_corner = np.zeros((H, W), dtype=bool)
        far_corner[H - 8:, :8] = True
        assert not changed[far_corner].any()


def test_empty_predictions_draw_the_frame(metadata):
    frame = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    out = VideoVisualizer(metadata).draw_instance_predictions(frame, _instances([], [])).get_image()
    assert out.shape == frame.shape
    assert np.abs(out.astype(int) - frame).max() <= 1


def test_panoptic_things_keep_colors_and_stuff_is_drawn(metadata, drawn_colors):
    def panoptic(offset):
        seg = np.zeros((H, W), dtype=np.int32)
        seg[:, :] = 1  # stuff: sky
        seg[40:, :] = 2  # stuff: grass
        seg[10:30, 10 + offset:30 + offset] = 3  # a circle
        seg[35:55, 50:70] = 4  # a square
        info = [{"id": 1, "category_id": 0, "isthing": False}, {"id": 2, "category_id": 1, "isthing": False},
                {"id": 3, "category_id": 0, "isthing": True}, {"id": 4, "category_id": 2, "isthing": True}]
        return torch.from_numpy(seg), info

    visualizer = VideoVisualizer(metadata)
    frame = _frame(0)
    out = visualizer.draw_panoptic_seg(frame, *panoptic(0)).get_image()
    visualizer.draw_panoptic_seg(frame, *panoptic(1))
    first, second = drawn_colors
    assert sorted(first) == sorted(second) and len(set(first)) == 2
    # things are drawn largest first; both are 20 x 20 here, so compare as a set
    sky = np.asarray(metadata.stuff_colors[0]) * 0.5  # alpha 0.5 over black
    assert np.abs(out[2, W // 2].astype(float) - sky).max() < 8


def test_sem_seg_is_drawn(metadata):
    sem_seg = torch.zeros(H, W, dtype=torch.int64)
    sem_seg[32:] = 1
    out = VideoVisualizer(metadata).draw_sem_seg(_frame(0), sem_seg).get_image()
    assert out.shape == (H, W, 3)
    assert out[50, 40].astype(int).sum() > 30


def test_unsupported_mode_is_rejected(metadata):
    with pytest.raises(ValueError, match="SEGMENTATION"):
        VideoVisualizer(metadata, ColorMode.SEGMENTATION)


def test_box_iou_matches_torchvision():
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 50, (2, 7, 2))
    boxes1 = np.concatenate([corners[0], corners[0] + rng.uniform(0, 30, (7, 2))], axis=1)
    corners2 = rng.uniform(0, 50, (5, 2))
    boxes2 = np.concatenate([corners2, corners2 + rng.uniform(0, 30, (5, 2))], axis=1)
    boxes2[0] = boxes1[0]  # identical pair: IoU exactly 1
    boxes2[1] = [5, 5, 5, 9]  # zero area
    expected = box_iou(torch.from_numpy(boxes1), torch.from_numpy(boxes2)).nan_to_num(0.0).numpy()
    # Boxes hold float32, as in Detectron2
    np.testing.assert_allclose(vv._box_iou(boxes1, boxes2), expected, rtol=1e-6, atol=1e-6)
    assert vv._box_iou(boxes1[:0], boxes2).shape == (0, 5)
