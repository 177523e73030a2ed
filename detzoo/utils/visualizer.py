"""Drawing predictions and annotations on images (matplotlib, rendered off-screen to RGB arrays).

    v = Visualizer(image_rgb, MetadataCatalog.get("coco_2017_val"))
    out = v.draw_instance_predictions(outputs["instances"].to("cpu"))
    out.save("pred.png")  # or out.get_image() -> (H, W, 3) uint8 RGB
"""
import colorsys
import math
from enum import Enum, unique

import matplotlib as mpl
import matplotlib.colors as mplc
import matplotlib.figure as mplfigure
import numpy as np
import pycocotools.mask as mask_util
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from detzoo.structures import BitMasks, Boxes, BoxMode, Keypoints, PolygonMasks, RotatedBoxes

from .colormap import random_color

__all__ = ["ColorMode", "VisImage", "Visualizer", "GenericMask", "convert_image_to_rgb"]

_SMALL_OBJECT_AREA_THRESH = 1000  # boxes smaller than this (pixels) get smaller labels
_LARGE_MASK_AREA_THRESH = 120000
_OFF_WHITE = (1.0, 1.0, 240.0 / 255)
_BLACK = (0, 0, 0)
_RED = (1.0, 0, 0)
_KEYPOINT_THRESHOLD = 0.05  # keypoints scoring below this are not drawn


@unique
class ColorMode(Enum):
    """How instances are colored."""

    IMAGE = 0  # a random color per instance, drawn half-transparent
    SEGMENTATION = 1  # one color per category (metadata.thing_colors)
    IMAGE_BW = 2  # background in grayscale, instances (with masks) in color


def convert_image_to_rgb(image, input_format):
    """A model-input image (Tensor or array, HWC, in `input_format` channel order: "BGR",
    "RGB", "L", "YUV-BT.601") -> (H, W, 3) uint8 RGB, ready to draw on."""
    from detzoo.data.detection_utils import convert_image_to_rgb as to_rgb

    image = np.asarray(to_rgb(image, input_format))
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.clip(image, 0, 255).astype(np.uint8)


class GenericMask:
    """A mask given as polygons, a COCO RLE dict, or an (H, W) binary array; converts lazily
    between polygon and bitmap forms."""

    def __init__(self, mask_or_polygons, height, width):
        self._mask = self._polygons = self._has_holes = None
        self.height, self.width = height, width
        m = mask_or_polygons
        if isinstance(m, dict):  # COCO RLE
            if isinstance(m["counts"], list):
                m = mask_util.frPyObjects(m, *m["size"])
            self._mask = mask_util.decode(m)[:, :]
            return
        if isinstance(m, list):  # polygons
            self._polygons = [np.asarray(x).reshape(-1) for x in m]
            return
        if isinstance(m, torch.Tensor):
            m = m.cpu().numpy()
        m = np.asarray(m)
        if m.shape != (height, width):
            raise ValueError(f"mask of shape {m.shape} does not match the image ({height}, {width})")
        self._mask = m.astype(np.uint8)

    @property
    def mask(self):
        if self._mask is None:
            self._mask = self._polygons_to_mask(self._polygons)
        return self._mask

    @property
    def polygons(self):
        if self._polygons is None:
            self._polygons, self._has_holes = self._mask_to_polygons(self._mask)
        return self._polygons

    @property
    def has_holes(self):
        if self._has_holes is None:
            if self._mask is not None:
                self._polygons, self._has_holes = self._mask_to_polygons(self._mask)
            else:
                self._has_holes = False  # polygons are taken as simple
        return self._has_holes

    def _mask_to_polygons(self, mask):
        import cv2

        mask = np.ascontiguousarray(mask)
        contours, hierarchy = cv2.findContours(mask.astype("uint8"), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        if hierarchy is None:
            return [], False
        has_holes = (hierarchy.reshape(-1, 4)[:, 3] >= 0).sum() > 0
        # cv2 gives pixel indices; +0.5 puts the outline on pixel centres as in COCO polygons.
        polygons = [c.reshape(-1) + 0.5 for c in contours]
        return [p for p in polygons if len(p) >= 6], has_holes

    def _polygons_to_mask(self, polygons):
        rle = mask_util.merge(mask_util.frPyObjects([list(map(float, p)) for p in polygons], self.height, self.width))
        return mask_util.decode(rle)

    def area(self):
        return int(self.mask.sum())

    def bbox(self):
        """XYXY box of the polygons."""
        rle = mask_util.merge(mask_util.frPyObjects([list(map(float, p)) for p in self.polygons], self.height,
                                                    self.width))
        x, y, w, h = mask_util.toBbox(rle)
        return np.array([x, y, x + w, y + h])


class VisImage:
    """An image with a matplotlib figure of the same size to draw on."""

    def __init__(self, img, scale=1.0):
        self.img = img
        self.scale = scale
        self.width, self.height = img.shape[1], img.shape[0]
        self._setup_figure(img)

    def _setup_figure(self, img):
        fig = mplfigure.Figure(frameon=False)
        self.dpi = fig.get_dpi()
        # Small epsilon: matplotlib rounds the canvas size down otherwise.
        fig.set_size_inches((self.width * self.scale + 1e-2) / self.dpi, (self.height * self.scale + 1e-2) / self.dpi)
        self.canvas = FigureCanvasAgg(fig)
        ax = fig.add_axes([0.0, 0.0, 1.0, 1.0])
        ax.axis("off")
        self.fig, self.ax = fig, ax
        self.reset_image(img)

    def reset_image(self, img):
        img = img.astype("uint8")
        self.ax.imshow(img, extent=(0, self.width, self.height, 0), interpolation="nearest")

    def save(self, filepath):
        """Write the drawing (PNG/JPEG by extension) at the image's size times `scale`."""
        self.fig.savefig(filepath)

    def get_image(self):
        """(H, W, 3) uint8 RGB of the drawing, at the image's size times `scale`."""
        self.canvas.draw()
        buffer = np.asarray(self.canvas.buffer_rgba())
        return buffer[:, :, :3].astype("uint8")


def _create_text_labels(classes, scores, class_names, is_crowd=None):
    """'name 97%' labels (names from class_names if given)."""
    labels = None
    if classes is not None:
        if class_names is not None and len(class_names) > 0:
            labels = [class_names[i] for i in classes]
        else:
            labels = [str(i) for i in classes]
    if scores is not None:
        if labels is None:
            labels = [f"{s * 100:.0f}%" for s in scores]
        else:
            labels = [f"{label} {s * 100:.0f}%" for label, s in zip(labels, scores)]
    if labels is not None and is_crowd is not None:
        labels = [label + ("|crowd" if crowd else "") for label, crowd in zip(labels, is_crowd)]
    return labels


class _EmptyMetadata:
    """Stand-in when no metadata is given: every lookup returns the default."""

    def get(self, name, default=None):
        return default

    def __getattr__(self, name):
        raise AttributeError(f"no metadata given, so no '{name}'")


class Visualizer:
    """Draws on an RGB image. Methods return the VisImage (`.output`), so calls can chain."""

    def __init__(self, img_rgb, metadata=None, scale=1.0, instance_mode=ColorMode.IMAGE):
        """
        Args:
            img_rgb: (H, W, 3) or (H, W) image, RGB, values 0-255.
            metadata: dataset Metadata (thing_classes, thing_colors, stuff_classes, keypoint
                names and connection rules...), or None.
            scale: output scale.
            instance_mode: a ColorMode.
        """
        if isinstance(img_rgb, torch.Tensor):
            img_rgb = img_rgb.cpu().numpy()
        self.img = np.asarray(img_rgb).clip(0, 255).astype(np.uint8)
        if self.img.ndim == 2:
            self.img = np.repeat(self.img[:, :, None], 3, axis=2)
        self.metadata = metadata if metadata is not None else _EmptyMetadata()
        self.output = VisImage(self.img, scale=scale)
        self.cpu_device = torch.device("cpu")
        # Text size that stays readable on small images.
        self._default_font_size = max(np.sqrt(self.output.height * self.output.width) // 90, 10 // scale)
        self._instance_mode = instance_mode
        self.keypoint_threshold = _KEYPOINT_THRESHOLD

    # ------------------------------------------------------------ high level
    def draw_instance_predictions(self, predictions, jittering=True):
        """Draw an Instances of predictions: pred_boxes, scores, pred_classes, pred_masks,
        pred_keypoints (whichever are present)."""
        boxes = predictions.pred_boxes if predictions.has("pred_boxes") else None
        scores = predictions.scores if predictions.has("scores") else None
        classes = predictions.pred_classes.tolist() if predictions.has("pred_classes") else None
        labels = _create_text_labels(classes, scores, self.metadata.get("thing_classes", None))
        keypoints = predictions.pred_keypoints if predictions.has("pred_keypoints") else None
        masks = None
        if predictions.has("pred_masks"):
            masks = [GenericMask(m, self.output.height, self.output.width)
                     for m in np.asarray(predictions.pred_masks.cpu() if isinstance(predictions.pred_masks, torch.Tensor)
                                         else predictions.pred_masks)]
        colors, alpha = self._instance_colors(classes, len(predictions), jittering), 0.5
        if self._instance_mode == ColorMode.IMAGE_BW:
            if masks is not None:
                self.output.reset_image(self._create_grayscale_image(
                    (np.asarray(predictions.pred_masks).any(axis=0) > 0) if len(predictions) else None))
            alpha = 0.3
        self.overlay_instances(masks=masks, boxes=boxes, labels=labels, keypoints=keypoints, assigned_colors=colors,
                               alpha=alpha)
        return self.output

    def _instance_colors(self, classes, count, jittering):
        if self._instance_mode == ColorMode.SEGMENTATION and self.metadata.get("thing_colors") and classes is not None:
            base = [[x / 255 for x in self.metadata.thing_colors[c]] for c in classes]
            return [self._jitter(c) for c in base] if jittering else base
        return [random_color(rgb=True, maximum=1) for _ in range(count)]

    def draw_sem_seg(self, sem_seg, area_threshold=None, alpha=0.8):
        """Draw a semantic segmentation: (H, W) label map (or (C, H, W) logits -> argmax)."""
        if isinstance(sem_seg, torch.Tensor):
            sem_seg = sem_seg.cpu().numpy()
        sem_seg = np.asarray(sem_seg)
        if sem_seg.ndim == 3:
            sem_seg = sem_seg.argmax(axis=0)
        labels, areas = np.unique(sem_seg, return_counts=True)
        stuff_classes = self.metadata.get("stuff_classes", None)
        stuff_colors = self.metadata.get("stuff_colors", None)
        for label in labels[np.argsort(-areas)]:
            if stuff_classes is not None and label >= len(stuff_classes):
                continue  # ignore label (e.g. 255)
            color = [x / 255 for x in stuff_colors[label]] if stuff_colors else random_color(rgb=True, maximum=1)
            text = stuff_classes[label] if stuff_classes else str(label)
            self.draw_binary_mask((sem_seg == label).astype(np.uint8), color=color, edge_color=_OFF_WHITE, text=text,
                                  alpha=alpha, area_threshold=area_threshold)
        return self.output

    def draw_panoptic_seg(self, panoptic_seg, segments_info, area_threshold=None, alpha=0.7):
        """Draw a panoptic segmentation: (H, W) segment ids and their segments_info dicts
        (id, category_id, isthing, score...); segments_info None means ids are category ids
        (stuff only, as in the "panoptic_seg" ground truth of semantic datasets)."""
        if isinstance(panoptic_seg, torch.Tensor):
            panoptic_seg = panoptic_seg.cpu().numpy()
        panoptic_seg = np.asarray(panoptic_seg)
        if segments_info is None:
            segments_info = [{"id": int(i), "category_id": int(i), "isthing": False}
                             for i in np.unique(panoptic_seg) if i >= 0]
        if self._instance_mode == ColorMode.IMAGE_BW:
            self.output.reset_image(self._create_grayscale_image(panoptic_seg > 0))
        stuff_classes = self.metadata.get("stuff_classes", None)
        stuff_colors = self.metadata.get("stuff_colors", None)
        things, thing_masks = [], []
        for seg in segments_info:
            mask = panoptic_seg == seg["id"]
            if not mask.any():
                continue
            if seg.get("isthing", False):
                things.append(seg)
                thing_masks.append(mask)
                continue
            cat = seg["category_id"]
            color = [x / 255 for x in stuff_colors[cat]] if stuff_colors and cat < len(stuff_colors) else \
                random_color(rgb=True, maximum=1)
            text = stuff_classes[cat] if stuff_classes and cat < len(stuff_classes) else str(cat)
            self.draw_binary_mask(mask.astype(np.uint8), color=color, edge_color=_OFF_WHITE, text=text, alpha=alpha,
                                  area_threshold=area_threshold)
        if things:
            classes = [s["category_id"] for s in things]
            scores = [s["score"] for s in things] if all("score" in s for s in things) else None
            labels = _create_text_labels(classes, scores, self.metadata.get("thing_classes", None),
                                         [s.get("iscrowd", 0) for s in things])
            colors = self._instance_colors(classes, len(things), True)
            self.overlay_instances(masks=[GenericMask(m, *m.shape) for m in thing_masks], labels=labels,
                                   assigned_colors=colors, alpha=alpha)
        return self.output

    def draw_dataset_dict(self, dic):
        """Draw a dataset dict's annotations (boxes, polygons/RLE, keypoints), sem_seg_file_name
        and pan_seg_file_name (read from disk)."""
        annotations = dic.get("annotations", None)
        if annotations:
            masks = [a["segmentation"] for a in annotations] if "segmentation" in annotations[0] else None
            keypoints = None
            if "keypoints" in annotations[0]:
                keypoints = np.array([a["keypoints"] for a in annotations]).reshape(len(annotations), -1, 3)
            boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) if len(a["bbox"]) == 4
                     else a["bbox"] for a in annotations]
            classes = [a["category_id"] for a in annotations]
            colors = self._instance_colors(classes, len(classes), True) \
                if self._instance_mode == ColorMode.SEGMENTATION else None
            names = self.metadata.get("thing_classes", None)
            labels = _create_text_labels(classes, None, names, [a.get("iscrowd", 0) for a in annotations])
            self.overlay_instances(labels=labels, boxes=boxes, masks=masks, keypoints=keypoints, assigned_colors=colors)
        if dic.get("sem_seg_file_name"):
            import cv2

            self.draw_sem_seg(cv2.imread(dic["sem_seg_file_name"], cv2.IMREAD_UNCHANGED), area_threshold=0, alpha=0.5)
        if dic.get("pan_seg_file_name"):
            import cv2

            rgb = cv2.imread(dic["pan_seg_file_name"])[:, :, ::-1].astype(np.int64)
            ids = rgb[:, :, 0] + 256 * rgb[:, :, 1] + 256 * 256 * rgb[:, :, 2]
            self.draw_panoptic_seg(ids, dic["segments_info"], area_threshold=0, alpha=0.5)
        return self.output

    # ------------------------------------------------------------ primitives
    def overlay_instances(self, *, boxes=None, labels=None, masks=None, keypoints=None, assigned_colors=None,
                          alpha=0.5):
        """Draw boxes (Boxes, (N, 4) XYXY array, or RotatedBoxes (N, 5)), masks (BitMasks,
        PolygonMasks, arrays, polygons or GenericMasks), keypoints ((N, K, 3) x, y, score) and
        labels; instances are drawn largest first so small ones stay visible."""
        if boxes is not None and (isinstance(boxes, RotatedBoxes) or np.asarray(_as_array(boxes)).shape[-1] == 5):
            return self.overlay_rotated_instances(boxes=boxes, labels=labels, assigned_colors=assigned_colors)
        boxes = None if boxes is None else _as_array(boxes)
        masks = None if masks is None else self._convert_masks(masks)
        keypoints = None if keypoints is None else _as_array(keypoints)
        counts = [len(x) for x in (boxes, masks, keypoints) if x is not None]
        num = counts[0] if counts else 0
        if any(c != num for c in counts) or (labels is not None and len(labels) != num):
            raise ValueError(f"overlay_instances: boxes/masks/keypoints/labels disagree in count: {counts}, "
                             f"{None if labels is None else len(labels)} labels")
        if num == 0:
            return self.output
        if assigned_colors is None:
            assigned_colors = [random_color(rgb=True, maximum=1) for _ in range(num)]
        if boxes is not None:
            order = np.argsort(-np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)).tolist()
        elif masks is not None:
            order = np.argsort([-m.area() for m in masks]).tolist()
        else:
            order = list(range(num))
        for i in order:
            color = assigned_colors[i]
            if boxes is not None:
                self.draw_box(boxes[i], edge_color=color)
            if masks is not None:
                for segment in masks[i].polygons:
                    self.draw_polygon(segment.reshape(-1, 2), color, alpha=alpha)
            if labels is not None:
                self._draw_instance_label(labels[i], color, None if boxes is None else boxes[i],
                                          None if masks is None else masks[i])
        if keypoints is not None:
            for points in keypoints:
                self.draw_and_connect_keypoints(points)
        return self.output

    def _draw_instance_label(self, label, color, box, mask):
        if box is not None:
            x0, y0, x1, y1 = box
            position, align = (x0, y0), "left"
            height = y1 - y0
        elif mask is not None and len(mask.polygons):
            x0, y0, x1, y1 = mask.bbox()
            position, align = ((x0 + x1) / 2, (y0 + y1) / 2), "center"
            height = y1 - y0
        else:
            return
        area = height * (x1 - x0)
        if area < _SMALL_OBJECT_AREA_THRESH * self.output.scale or height < 40 * self.output.scale:
            position = (x0, y1 + 2) if y1 < self.output.height - 20 else (x1, y0)
        size_ratio = np.clip((height / np.sqrt(self.output.height * self.output.width) - 0.02) / 0.08 + 1, 1.2, 2)
        self.draw_text(label, position, color=self._change_color_brightness(color, 0.7),
                       horizontal_alignment=align, font_size=size_ratio * 0.5 * self._default_font_size)

    def overlay_rotated_instances(self, boxes=None, labels=None, assigned_colors=None):
        """Draw rotated boxes (N, 5) [cx, cy, w, h, angle_degrees] with labels."""
        boxes = _as_array(boxes)
        if assigned_colors is None:
            assigned_colors = [random_color(rgb=True, maximum=1) for _ in range(len(boxes))]
        for i in np.argsort(-boxes[:, 2] * boxes[:, 3]).tolist():
            self.draw_rotated_box_with_label(boxes[i], edge_color=assigned_colors[i],
                                             label=None if labels is None else labels[i])
        return self.output

    def draw_and_connect_keypoints(self, keypoints):
        """Draw one instance's keypoints (K, 3) above the threshold and the skeleton of
        metadata.keypoint_connection_rules; adds COCO's mid-shoulder/nose/hip lines when the
        names are COCO's."""
        visible = {}
        names = self.metadata.get("keypoint_names", None)
        for idx, (x, y, prob) in enumerate(keypoints):
            if prob > self.keypoint_threshold:
                self.draw_circle((x, y), color=_RED)
                if names:
                    visible[names[idx]] = (x, y)
        for a, b, color in self.metadata.get("keypoint_connection_rules", None) or []:
            if a in visible and b in visible:
                (x0, y0), (x1, y1) = visible[a], visible[b]
                self.draw_line([x0, x1], [y0, y1], color=tuple(c / 255.0 for c in color))
        shoulders = ("left_shoulder", "right_shoulder")
        if all(s in visible for s in shoulders):
            mid = np.mean([visible[s] for s in shoulders], axis=0)
            if "nose" in visible:
                self.draw_line([visible["nose"][0], mid[0]], [visible["nose"][1], mid[1]], color=_RED)
            hips = ("left_hip", "right_hip")
            if all(h in visible for h in hips):
                mid_hip = np.mean([visible[h] for h in hips], axis=0)
                self.draw_line([mid_hip[0], mid[0]], [mid_hip[1], mid[1]], color=_RED)
        return self.output

    def draw_text(self, text, position, *, font_size=None, color="g", horizontal_alignment="center", rotation=0):
        """Text at `position` (x, y) with a dark translucent box behind it."""
        font_size = font_size or self._default_font_size
        color = np.maximum(list(mplc.to_rgb(color)), 0.2)
        color[np.argmax(color)] = max(0.8, np.max(color))  # keep text readable
        x, y = position
        self.output.ax.text(x, y, text, size=font_size * self.output.scale, family="sans-serif",
                            bbox={"facecolor": "black", "alpha": 0.8, "pad": 0.7, "edgecolor": "none"},
                            verticalalignment="top", horizontalalignment=horizontal_alignment, color=color,
                            zorder=10, rotation=rotation)
        return self.output

    def draw_box(self, box_coord, alpha=0.5, edge_color="g", line_style="-"):
        """An XYXY box outline."""
        x0, y0, x1, y1 = box_coord
        width = max(self._default_font_size / 4, 1)
        self.output.ax.add_patch(mpl.patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=edge_color,
                                                       linewidth=width * self.output.scale, alpha=alpha,
                                                       linestyle=line_style))
        return self.output

    def draw_rotated_box_with_label(self, rotated_box, alpha=0.5, edge_color="g", line_style="-", label=None):
        """A rotated box [cx, cy, w, h, angle (degrees, counter-clockwise)] with an optional label."""
        cx, cy, w, h, angle = rotated_box
        theta = angle * math.pi / 180.0
        c, s = math.cos(theta), math.sin(theta)
        corners = [(-w / 2, h / 2), (-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2)]
        # Counter-clockwise in image coordinates (y down) is a clockwise rotation matrix.
        points = [(s * yy + c * xx + cx, c * yy - s * xx + cy) for (xx, yy) in corners]
        for k in range(4):
            (x0, y0), (x1, y1) = points[k], points[(k + 1) % 4]
            self.draw_line([x0, x1], [y0, y1], color=edge_color, linestyle="--" if k == 1 else line_style)
        if label is not None:
            self.draw_text(label, points[1], color=self._change_color_brightness(edge_color, 0.7),
                           font_size=self._default_font_size, rotation=angle)
        return self.output

    def draw_circle(self, circle_coord, color, radius=3):
        self.output.ax.add_patch(mpl.patches.Circle(circle_coord, radius=radius, fill=True, color=color))
        return self.output

    def draw_line(self, x_data, y_data, color, linestyle="-", linewidth=None):
        linewidth = linewidth or max(self._default_font_size / 3, 1)
        self.output.ax.add_line(mpl.lines.Line2D(x_data, y_data, linewidth=linewidth * self.output.scale,
                                                 color=color, linestyle=linestyle))
        return self.output

    def draw_binary_mask(self, binary_mask, color=None, *, edge_color=None, text=None, alpha=0.5,
                         area_threshold=10):
        """Fill a (H, W) 0/1 mask (outline only for tiny components) with an optional label at
        its largest component's centre."""
        color = random_color(rgb=True, maximum=1) if color is None else color
        color = mplc.to_rgb(color)
        binary_mask = np.asarray(binary_mask).astype("uint8")
        mask = GenericMask(binary_mask, self.output.height, self.output.width)
        if not mask.has_holes:
            for segment in mask.polygons:
                area = mask_util.area(mask_util.frPyObjects([list(map(float, segment))], self.output.height,
                                                            self.output.width))
                if area_threshold is not None and area < area_threshold:
                    continue
                self.draw_polygon(segment.reshape(-1, 2), color=color, edge_color=edge_color, alpha=alpha)
        else:
            rgba = np.zeros(binary_mask.shape + (4,), dtype="float32")
            rgba[:, :, :3] = color
            rgba[:, :, 3] = (binary_mask == 1).astype("float32") * alpha
            self.output.ax.imshow(rgba, extent=(0, self.output.width, self.output.height, 0))
        if text is not None and binary_mask.any():
            self._draw_text_in_mask(binary_mask, text, self._change_color_brightness(color, 0.7))
        return self.output

    def draw_soft_mask(self, soft_mask, color=None, *, text=None, alpha=0.5):
        """Overlay a (H, W) mask of values in [0, 1] as transparency."""
        color = mplc.to_rgb(random_color(rgb=True, maximum=1) if color is None else color)
        rgba = np.zeros(soft_mask.shape + (4,), dtype="float32")
        rgba[:, :, :3] = color
        rgba[:, :, 3] = soft_mask * alpha
        self.output.ax.imshow(rgba, extent=(0, self.output.width, self.output.height, 0))
        if text is not None:
            self._draw_text_in_mask((soft_mask > 0.5).astype("uint8"), text, self._change_color_brightness(color, 0.7))
        return self.output

    def draw_polygon(self, segment, color, edge_color=None, alpha=0.5):
        """Fill a polygon (K, 2) with `color` at `alpha`, outlined with a darker edge."""
        if edge_color is None:
            edge_color = self._change_color_brightness(color, -0.7) if alpha > 0.8 else color
        edge_color = mplc.to_rgb(edge_color) + (1,)
        self.output.ax.add_patch(mpl.patches.Polygon(segment, fill=True, facecolor=mplc.to_rgb(color) + (alpha,),
                                                     edgecolor=edge_color,
                                                     linewidth=max(self._default_font_size // 15 * self.output.scale,
                                                                   1)))
        return self.output

    def get_output(self):
        return self.output

    # ------------------------------------------------------------ helpers
    def _jitter(self, color):
        """A slightly different shade, so instances of one class are told apart."""
        vec = np.random.rand(3)
        vec = vec / np.linalg.norm(vec) * 0.5
        return tuple(np.clip(vec + np.asarray(color), 0, 1))

    def _create_grayscale_image(self, mask=None):
        gray = self.img.astype("f4").mean(axis=2)
        gray = np.stack([gray] * 3, axis=2)
        if mask is not None:
            gray[mask] = self.img[mask]
        return gray

    def _change_color_brightness(self, color, brightness_factor):
        """Lighter (factor > 0) or darker (< 0) version of `color`, factor in [-1, 1]."""
        if not -1.0 <= brightness_factor <= 1.0:
            raise ValueError(f"brightness_factor must be in [-1, 1], got {brightness_factor}")
        h, l, s = colorsys.rgb_to_hls(*mplc.to_rgb(color))
        l = min(max(l + brightness_factor * l, 0.0), 1.0)  # noqa: E741 (HLS lightness)
        return colorsys.hls_to_rgb(h, l, s)

    def _convert_masks(self, masks):
        if isinstance(masks, PolygonMasks):
            masks = masks.polygons
        elif isinstance(masks, BitMasks):
            masks = masks.tensor.numpy()
        elif isinstance(masks, torch.Tensor):
            masks = masks.cpu().numpy()
        return [m if isinstance(m, GenericMask) else GenericMask(m, self.output.height, self.output.width)
                for m in masks]

    def _draw_text_in_mask(self, binary_mask, text, color):
        import cv2

        count, labels, stats, centroids = cv2.connectedComponentsWithStats(binary_mask, 8)
        if stats[1:, -1].size == 0:
            return
        largest = np.argmax(stats[1:, -1]) + 1
        self.draw_text(text, centroids[largest], color=color)


def _as_array(x):
    if isinstance(x, (Boxes, RotatedBoxes)):
        return x.tensor.detach().cpu().numpy()
    if isinstance(x, Keypoints):
        return x.tensor.detach().cpu().numpy()
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)
