"""Drawing the frames of a video so that each object keeps its color from frame to frame.

A `Visualizer` picks fresh random colors on every call, which makes a video flicker. The
`VideoVisualizer` remembers the instances of the previous frames and hands an instance the
color of the remembered one it overlaps most (same class, IoU above a threshold). An instance
that is not seen is remembered for a few more frames (its time-to-live), so that a detection
missed for a frame or two gets its color back.

    video_visualizer = VideoVisualizer(MetadataCatalog.get("coco_2017_val"))
    for frame_rgb in frames:
        outputs = predictor(frame_rgb[:, :, ::-1])
        vis = video_visualizer.draw_instance_predictions(frame_rgb, outputs["instances"].to("cpu"))
        vis.get_image()  # (H, W, 3) uint8 RGB
"""
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch

from detzoo.structures import Boxes, pairwise_iou

from .colormap import colormap
from .visualizer import ColorMode, Visualizer, _create_text_labels, _EmptyMetadata

__all__ = ["VideoVisualizer"]

_TTL = 8  # frames an unseen instance (or track id) keeps its color
# Boxes of one object move little between frames; masks change shape more, hence the lower bar.
_BOX_IOU_THRESHOLD = 0.6
_MASK_IOU_THRESHOLD = 0.5

Color = Tuple[float, float, float]


class _DetectedInstance:
    """What is remembered of one instance of a frame, to pass its color on.

    Attributes:
        label (int): class index.
        bbox (ndarray[4] or None): XYXY_ABS box.
        mask_rle (dict or None): COCO RLE of the mask (used when there is no box).
        color (tuple or None): RGB in [0, 1]; None until assigned.
        ttl (int): frames it is still remembered while unmatched.
    """

    __slots__ = ("label", "bbox", "mask_rle", "color", "ttl")

    def __init__(self, label, bbox, mask_rle, color, ttl):
        self.label = label
        self.bbox = bbox
        self.mask_rle = mask_rle
        self.color = color
        self.ttl = ttl


class VideoVisualizer:
    """Draws predictions on video frames, with colors that follow the objects."""

    def __init__(self, metadata, instance_mode=ColorMode.IMAGE):
        """
        Args:
            metadata (Metadata): the dataset's metadata (thing_classes, stuff_classes,
                stuff_colors...), or None.
            instance_mode (ColorMode): IMAGE or IMAGE_BW (SEGMENTATION colors by class,
                which leaves nothing to track).
        """
        if instance_mode not in (ColorMode.IMAGE, ColorMode.IMAGE_BW):
            raise ValueError(f"VideoVisualizer supports ColorMode.IMAGE and ColorMode.IMAGE_BW, got {instance_mode}")
        self.metadata = metadata if metadata is not None else _EmptyMetadata()
        self._instance_mode = instance_mode
        self._old_instances: List[_DetectedInstance] = []
        self._id_colors: Dict[int, _DetectedInstance] = {}  # track id -> its color (label unused)
        # The palette in a random order; new instances take the next color no one is using.
        palette = colormap(rgb=True, maximum=1)
        self._palette = [tuple(float(v) for v in palette[i]) for i in np.random.permutation(len(palette))]
        self._next_palette_index = 0

    # ------------------------------------------------------------------ drawing
    def draw_instance_predictions(self, frame, predictions):
        """Draw an Instances of one frame.

        Args:
            frame (ndarray[H, W, 3]): the frame, RGB, values in [0, 255].
            predictions (Instances): on the CPU; fields used when present: pred_boxes
                (XYXY_ABS), scores, pred_classes, pred_masks (Tensor[N, H, W]),
                pred_keypoints, and from a tracker: ID (track ids: colors follow them instead
                of the overlap), COLOR (given colors), ID_duration (frames each track has
                lasted; tracks not longer than metadata.duration_threshold are not drawn).

        Returns:
            VisImage: the drawing.
        """
        frame_visualizer = Visualizer(frame, self.metadata)
        if len(predictions) == 0:
            self._assign_colors([])  # ages the remembered instances
            return frame_visualizer.output
        boxes = _as_numpy(predictions.pred_boxes) if predictions.has("pred_boxes") else None
        scores = predictions.scores if predictions.has("scores") else None
        classes = predictions.pred_classes.tolist() if predictions.has("pred_classes") else None
        keypoints = predictions.pred_keypoints if predictions.has("pred_keypoints") else None
        masks = _as_numpy(predictions.pred_masks) if predictions.has("pred_masks") else None
        colors = self._instance_colors(predictions, classes, boxes, masks)
        labels = _create_text_labels(classes, scores, self.metadata.get("thing_classes", None))

        alpha = 0.5
        if self._instance_mode == ColorMode.IMAGE_BW:
            foreground = masks.any(axis=0) if masks is not None else None
            frame_visualizer.output.reset_image(frame_visualizer._create_grayscale_image(foreground))
            alpha = 0.3
        visible = self._visible(predictions)
        frame_visualizer.overlay_instances(
            # with masks, the boxes are mostly clutter
            boxes=None if boxes is None or masks is not None else boxes[visible],
            masks=None if masks is None else masks[visible],
            labels=None if labels is None else _select(labels, visible),
            keypoints=None if keypoints is None else _as_numpy(keypoints)[visible],
            assigned_colors=_select(colors, visible),
            alpha=alpha,
        )
        return frame_visualizer.output

    def draw_sem_seg(self, frame, sem_seg, area_threshold=None):
        """Draw a semantic segmentation: sem_seg (ndarray or Tensor [H, W]) of class indices
        on the RGB frame (stuff colors come from the metadata, so nothing is tracked)."""
        frame_visualizer = Visualizer(frame, self.metadata)
        frame_visualizer.draw_sem_seg(sem_seg, area_threshold=area_threshold)
        return frame_visualizer.output

    def draw_panoptic_seg(self, frame, panoptic_seg, segments_info, area_threshold=None, alpha=0.5):
        """Draw a panoptic segmentation; the thing segments keep their colors across frames
        (matched by mask IoU).

        Args:
            frame (ndarray[H, W, 3]): RGB.
            panoptic_seg (ndarray or Tensor[H, W]): segment id per pixel.
            segments_info (list[dict] or None): per segment "id", "category_id" (contiguous,
                into thing_classes or stuff_classes), "isthing". None: the ids are stuff
                category ids.
        """
        frame_visualizer = Visualizer(frame, self.metadata)
        panoptic_seg = _as_numpy(panoptic_seg)
        segments = _present_segments(panoptic_seg, segments_info)
        if self._instance_mode == ColorMode.IMAGE_BW:
            foreground = np.isin(panoptic_seg, [s["id"] for s in segments])
            frame_visualizer.output.reset_image(frame_visualizer._create_grayscale_image(foreground))
        for segment in (s for s in segments if not s.get("isthing", False)):
            self._draw_stuff(frame_visualizer, panoptic_seg == segment["id"], segment["category_id"], alpha,
                             area_threshold)
        things = [s for s in segments if s.get("isthing", False)]
        if not things:
            self._assign_colors([])
            return frame_visualizer.output
        masks = np.stack([panoptic_seg == s["id"] for s in things])
        rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
        detected = [_DetectedInstance(s["category_id"], None, rle, None, _TTL) for s, rle in zip(things, rles)]
        colors = self._assign_colors(detected)
        class_names = self.metadata.get("thing_classes", None)
        labels = _create_text_labels([s["category_id"] for s in things], None, class_names)
        frame_visualizer.overlay_instances(masks=masks, labels=labels, assigned_colors=colors, alpha=alpha)
        return frame_visualizer.output

    def _draw_stuff(self, frame_visualizer, mask, category_id, alpha, area_threshold):
        stuff_colors = self.metadata.get("stuff_colors", None)
        stuff_classes = self.metadata.get("stuff_classes", None)
        color = None
        if stuff_colors is not None and category_id < len(stuff_colors):
            color = [c / 255 for c in stuff_colors[category_id]]
        text = stuff_classes[category_id] if stuff_classes is not None and category_id < len(stuff_classes) \
            else str(category_id)
        frame_visualizer.draw_binary_mask(mask.astype(np.uint8), color=color, text=text, alpha=alpha,
                                          area_threshold=area_threshold)

    # ------------------------------------------------------------------ colors
    def _instance_colors(self, predictions, classes, boxes, masks) -> List[Color]:
        if predictions.has("COLOR"):
            return list(predictions.COLOR)
        if predictions.has("ID"):
            return self._assign_colors_by_id(predictions.ID)
        num = len(predictions)
        labels = classes if classes is not None else [0] * num
        rles = [None] * num
        if boxes is None and masks is not None:
            rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
        detected = [_DetectedInstance(labels[i], None if boxes is None else boxes[i], rles[i], None, _TTL)
                    for i in range(num)]
        return self._assign_colors(detected)

    def _visible(self, predictions) -> np.ndarray:
        """Which instances to draw: bool[N]."""
        if not predictions.has("ID_duration"):
            return np.ones(len(predictions), dtype=bool)
        threshold = self.metadata.get("duration_threshold", 0)
        return np.asarray([int(d) > threshold for d in predictions.ID_duration], dtype=bool)

    def _assign_colors(self, instances: List[_DetectedInstance]) -> List[Color]:
        """Give each new instance the color of the remembered instance it matches (same label,
        IoU above the threshold; greedy, best overlaps first, one-to-one), or an unused
        palette color; then remember this frame's instances plus the unmatched old ones
        whose ttl has not run out.

        Returns:
            list[tuple]: RGB colors in [0, 1], one per instance.
        """
        old = self._old_instances
        ious, threshold = self._pairwise_iou(old, instances)
        same_label = np.asarray([[o.label == n.label for n in instances] for o in old], dtype=bool)
        ious = np.where(same_label.reshape(ious.shape), ious, 0.0)
        matched_old = np.zeros(len(old), dtype=bool)
        for flat in np.argsort(-ious, axis=None, kind="stable"):
            old_index, new_index = np.unravel_index(flat, ious.shape)
            if ious[old_index, new_index] <= threshold:
                break
            if matched_old[old_index] or instances[new_index].color is not None:
                continue
            instances[new_index].color = old[old_index].color
            matched_old[old_index] = True
        survivors = []
        for instance, matched in zip(old, matched_old):
            if not matched:
                instance.ttl -= 1
                if instance.ttl > 0:
                    survivors.append(instance)
        taken = {inst.color for inst in survivors} | {inst.color for inst in instances if inst.color is not None}
        for instance in instances:
            if instance.color is None:
                instance.color = self._unused_color(taken)
                taken.add(instance.color)
        self._old_instances = list(instances) + survivors
        return [inst.color for inst in instances]

    def _assign_colors_by_id(self, track_ids) -> List[Color]:
        """Colors of a tracker's ids: an id keeps its color while it is seen, and for _TTL
        frames after it was last seen."""
        track_ids = [int(i) for i in _as_numpy(track_ids).reshape(-1)]
        current = set(track_ids)
        for track_id in list(self._id_colors):
            if track_id not in current:
                self._id_colors[track_id].ttl -= 1
                if self._id_colors[track_id].ttl <= 0:
                    del self._id_colors[track_id]
        taken = {entry.color for entry in self._id_colors.values()}
        for track_id in track_ids:
            if track_id not in self._id_colors:
                color = self._unused_color(taken)
                taken.add(color)
                self._id_colors[track_id] = _DetectedInstance(None, None, None, color, _TTL)
            self._id_colors[track_id].ttl = _TTL
        return [self._id_colors[i].color for i in track_ids]

    def _unused_color(self, taken: Set[Color]) -> Color:
        """The next palette color not in `taken` (cycling through the palette, so a color
        that was just released is not reused at once); any palette color once all are taken."""
        for _ in range(len(self._palette)):
            color = self._palette[self._next_palette_index]
            self._next_palette_index = (self._next_palette_index + 1) % len(self._palette)
            if color not in taken:
                return color
        return self._palette[np.random.randint(len(self._palette))]

    @staticmethod
    def _pairwise_iou(old: Sequence[_DetectedInstance], new: Sequence[_DetectedInstance]):
        """IoU[len(old), len(new)] by boxes when all instances have one, else by masks; pairs
        that cannot be compared get 0. Returns (ious, the match threshold for that kind)."""
        if not old or not new:
            return np.zeros((len(old), len(new))), _BOX_IOU_THRESHOLD
        if all(x.bbox is not None for x in (*old, *new)):
            return _box_iou(np.stack([o.bbox for o in old]), np.stack([n.bbox for n in new])), _BOX_IOU_THRESHOLD
        if all(x.mask_rle is not None for x in (*old, *new)):
            ious = mask_util.iou([o.mask_rle for o in old], [n.mask_rle for n in new], [0] * len(new))
            return np.asarray(ious, dtype=np.float64).reshape(len(old), len(new)), _MASK_IOU_THRESHOLD
        return np.zeros((len(old), len(new))), _BOX_IOU_THRESHOLD


def _box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU of (M, 4) and (N, 4) XYXY_ABS boxes: (M, N), computed in float32 (`Boxes`)."""
    return pairwise_iou(Boxes(torch.as_tensor(boxes1)), Boxes(torch.as_tensor(boxes2))).numpy()


def _present_segments(panoptic_seg: np.ndarray, segments_info: Optional[List[dict]]) -> List[dict]:
    """The segments that own at least one pixel, largest first; without segments_info, one
    stuff segment per id (the id being its category)."""
    ids, areas = np.unique(panoptic_seg, return_counts=True)
    area_of = dict(zip(ids.tolist(), areas.tolist()))
    if segments_info is None:
        segments_info = [{"id": i, "category_id": i, "isthing": False} for i in area_of if i >= 0]
    present = [s for s in segments_info if area_of.get(s["id"], 0) > 0]
    return sorted(present, key=lambda s: -area_of[s["id"]])


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if hasattr(x, "tensor"):  # BitMasks, Keypoints, Boxes
        return x.tensor.detach().cpu().numpy()
    return np.asarray(x)


def _select(items, keep: np.ndarray) -> list:
    return [item for item, k in zip(items, keep) if k]
