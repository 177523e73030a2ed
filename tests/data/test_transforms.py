"""Transforms and augmentations, checked on images and on the boxes, polygons, masks and
keypoints they move, against brute-force or independent computations."""
import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from detzoo.data import transforms as T
from detzoo.structures import RotatedBoxes, polygons_to_bitmask


def rasterize_centers(polygons, height, width):
    """Obviously-correct rasterizer: pixel (i, j) is set when its centre (j + .5, i + .5) is
    inside an odd number of polygon outlines (even-odd ray casting), vectorized over pixels."""
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    mask = np.zeros((height, width), dtype=bool)
    for polygon in polygons:
        points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        inside = np.zeros((height, width), dtype=bool)
        for (x0, y0), (x1, y1) in zip(points, np.roll(points, -1, axis=0)):
            if y0 == y1:
                continue
            straddles = (y0 > ys) != (y1 > ys)
            x_cross = x0 + (ys - y0) * (x1 - x0) / (y1 - y0)
            inside ^= straddles & (xs < x_cross)
        mask ^= inside
    return mask


def random_polygon(rng, width, height, num_points=9):
    """A star-shaped (hence simple) polygon inside the image, float coordinates."""
    center = rng.uniform([0.3 * width, 0.3 * height], [0.7 * width, 0.7 * height])
    angles = np.sort(rng.uniform(0, 2 * np.pi, num_points))
    radii = rng.uniform(0.1, 0.3, num_points) * min(width, height)
    return center + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def random_boxes(rng, n, high):
    """n valid XYXY boxes (x0 <= x1, y0 <= y1) with coordinates in [0, high]."""
    xs, ys = np.sort(rng.uniform(0, high, (2, n, 2)), axis=2)
    return np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1)


def distance_to_outline(points, polygon):
    """Distance of each point (ndarray[N, 2]) to the polygon's outline, brute force."""
    starts, ends = polygon, np.roll(polygon, -1, axis=0)
    edge = ends - starts
    t = ((points[:, None] - starts[None]) * edge[None]).sum(-1) / (edge ** 2).sum(-1)[None]
    nearest = starts[None] + np.clip(t, 0, 1)[..., None] * edge[None]
    return np.linalg.norm(points[:, None] - nearest, axis=-1).min(axis=1)


def box_corners(boxes):
    x0, y0, x1, y1 = boxes.T
    return np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1), np.stack([x0, y1], 1), np.stack([x1, y1], 1)], 1)


def brute_force_apply_box(tfm, boxes):
    """Axis-aligned hull of the transformed corners, one box at a time."""
    out = []
    for corners in box_corners(boxes):
        moved = tfm.apply_coords(corners.copy())
        out.append([*moved.min(axis=0), *moved.max(axis=0)])
    return np.array(out)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ------------------------------------------------------------------------- ResizeTransform
class TestResizeTransform:
    def test_image_nearest_integer_upscale_repeats_pixels(self, rng):
        img = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
        out = T.ResizeTransform(4, 5, 8, 15, Image.NEAREST).apply_image(img)
        np.testing.assert_array_equal(out, img.repeat(2, axis=0).repeat(3, axis=1))

    def test_float_image_bilinear_matches_brute_force(self, rng):
        img = rng.random((5, 6)).astype(np.float32)
        new_h, new_w = 7, 4
        out = T.ResizeTransform(5, 6, new_h, new_w).apply_image(img)
        # align_corners=False: output pixel centre maps to (i + .5) * scale - .5, clamped
        expected = np.zeros((new_h, new_w))
        for i in range(new_h):
            for j in range(new_w):
                y = min(max((i + 0.5) * 5 / new_h - 0.5, 0), 4)
                x = min(max((j + 0.5) * 6 / new_w - 0.5, 0), 5)
                y0, x0 = int(np.floor(y)), int(np.floor(x))
                y1, x1 = min(y0 + 1, 4), min(x0 + 1, 5)
                dy, dx = y - y0, x - x0
                expected[i, j] = (img[y0, x0] * (1 - dy) * (1 - dx) + img[y0, x1] * (1 - dy) * dx
                                  + img[y1, x0] * dy * (1 - dx) + img[y1, x1] * dy * dx)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
        assert out.dtype == np.float32

    def test_single_channel_and_many_channels_keep_their_axis(self, rng):
        one = rng.integers(0, 256, (6, 4, 1), dtype=np.uint8)
        assert T.ResizeTransform(6, 4, 3, 2).apply_image(one).shape == (3, 2, 1)
        many = rng.integers(0, 256, (6, 4, 5), dtype=np.uint8)
        out = T.ResizeTransform(6, 4, 12, 8, Image.NEAREST).apply_image(many)
        np.testing.assert_array_equal(out, many.repeat(2, 0).repeat(2, 1))

    def test_coords_boxes_polygons_are_scaled(self, rng):
        tfm = T.ResizeTransform(30, 40, 45, 20)
        boxes = random_boxes(rng, 6, 30)
        np.testing.assert_allclose(tfm.apply_box(boxes), boxes * [0.5, 1.5, 0.5, 1.5])
        polygon = random_polygon(rng, 40, 30)
        (moved,) = tfm.apply_polygons([polygon.copy()])
        np.testing.assert_allclose(moved, polygon * [0.5, 1.5])

    def test_mask_resize_matches_rasterizing_the_resized_polygon(self, rng):
        polygon = random_polygon(rng, 40, 30)
        mask = rasterize_centers([polygon], 30, 40).astype(np.uint8)
        tfm = T.ResizeTransform(30, 40, 60, 80)  # x2: each output centre is inside one input pixel
        resized = tfm.apply_segmentation(mask)
        expected = rasterize_centers(tfm.apply_polygons([polygon.copy()]), 60, 80)
        assert resized.dtype == np.uint8
        assert np.mean(resized.astype(bool) != expected) < 0.02
        assert set(np.unique(resized)) <= {0, 1}

    def test_inverse_round_trip(self, rng):
        tfm = T.ResizeTransform(30, 40, 17, 53)
        points = rng.uniform(0, 30, (10, 2))
        np.testing.assert_allclose(tfm.inverse().apply_coords(tfm.apply_coords(points)), points)
        img = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        assert tfm.inverse().apply_image(tfm.apply_image(img)).shape == img.shape

    def test_rotated_boxes_match_rotated_boxes_scale(self, rng):
        boxes = np.concatenate([rng.uniform(5, 25, (5, 4)), rng.uniform(-180, 180, (5, 1))], axis=1)
        tfm = T.ResizeTransform(30, 40, 45, 20)
        reference = RotatedBoxes(torch.tensor(boxes, dtype=torch.float64).clone())
        reference.scale(0.5, 1.5)
        np.testing.assert_allclose(tfm.apply_rotated_box(boxes.copy()), reference.tensor.numpy(), rtol=1e-6, atol=1e-6)

    def test_wrong_image_size_is_a_clear_error(self):
        with pytest.raises(ValueError, match=r"shape \(30, 40\)"):
            T.ResizeTransform(30, 40, 10, 10).apply_image(np.zeros((31, 40, 3), np.uint8))


# ------------------------------------------------------------------------------ flips
class TestFlip:
    def test_hflip_polygon_mask_equals_mask_of_flipped_polygon(self, rng):
        h, w = 30, 40
        polygon = random_polygon(rng, w, h)
        tfm = T.HFlipTransform(w)
        (flipped,) = tfm.apply_polygons([polygon.copy()])
        for rasterize in (rasterize_centers, lambda p, hh, ww: polygons_to_bitmask([x.reshape(-1) for x in p], hh, ww)):
            mask = rasterize([polygon], h, w).astype(np.uint8)
            np.testing.assert_array_equal(tfm.apply_segmentation(mask), rasterize([flipped], h, w))

    def test_vflip_polygon_mask_equals_mask_of_flipped_polygon(self, rng):
        h, w = 30, 40
        polygon = random_polygon(rng, w, h)
        tfm = T.VFlipTransform(h)
        (flipped,) = tfm.apply_polygons([polygon.copy()])
        np.testing.assert_array_equal(tfm.apply_segmentation(rasterize_centers([polygon], h, w)),
                                      rasterize_centers([flipped], h, w))

    def test_hflip_boxes_image_and_rotated_boxes(self, rng):
        img = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
        tfm = T.HFlipTransform(4)
        np.testing.assert_array_equal(tfm.apply_image(img), img[:, ::-1])
        boxes = np.array([[0.5, 1.0, 2.0, 3.0]])
        np.testing.assert_allclose(tfm.apply_box(boxes), [[2.0, 1.0, 3.5, 3.0]])
        rotated = np.array([[1.0, 2.0, 2.0, 1.0, 30.0]])
        np.testing.assert_allclose(tfm.apply_rotated_box(rotated), [[3.0, 2.0, 2.0, 1.0, -30.0]])
        np.testing.assert_allclose(T.NoOpTransform().apply_rotated_box(rotated), rotated)


# ------------------------------------------------------------------------------- crop
class TestCrop:
    def test_clipped_polygon_mask_equals_cropped_mask(self, rng):
        h, w = 40, 50
        crop = T.CropTransform(12, 9, 20, 17, w, h)
        for _ in range(5):
            polygon = random_polygon(rng, w, h, num_points=12)
            full = rasterize_centers([polygon], h, w)
            clipped = crop.apply_polygons([polygon.copy()])
            np.testing.assert_array_equal(rasterize_centers(clipped, 17, 20), crop.apply_segmentation(full))

    def test_concave_polygon_split_by_the_crop(self):
        # a U: the window [0, 10] x [0, 4] keeps the two arms, joined only along its border
        u_shape = np.array([[1, 1], [3, 1], [3, 8], [7, 8], [7, 1], [9, 1], [9, 10], [1, 10]], dtype=float)
        crop = T.CropTransform(0, 0, 10, 4, 12, 12)
        (clipped,) = crop.apply_polygons([u_shape])
        full = rasterize_centers([u_shape], 12, 12)
        np.testing.assert_array_equal(rasterize_centers([clipped], 4, 10), full[:4, :10])
        x, y = clipped[:, 0], clipped[:, 1]
        area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
        assert area == pytest.approx(2 * 2 * 3)  # two 2 x 3 arms
        bitmask = polygons_to_bitmask([clipped.reshape(-1)], 4, 10)
        np.testing.assert_array_equal(bitmask, polygons_to_bitmask([u_shape.reshape(-1)], 12, 12)[:4, :10])

    def test_polygons_outside_or_degenerate_are_dropped(self):
        crop = T.CropTransform(0, 0, 10, 10)
        outside = np.array([[20, 20], [30, 20], [30, 30]], dtype=float)
        on_border = np.array([[10, 0], [20, 0], [20, 5], [10, 5]], dtype=float)
        inside = np.array([[1, 1], [5, 1], [5, 5]], dtype=float)
        result = crop.apply_polygons([outside, on_border, inside])
        assert len(result) == 1
        np.testing.assert_allclose(result[0], inside)

    def test_crop_pad_inverse_round_trip(self, rng):
        img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
        crop = T.CropTransform(5, 3, 12, 10, 30, 20)
        cropped = crop.apply_image(img)
        np.testing.assert_array_equal(cropped, img[3:13, 5:17])
        restored = crop.inverse().apply_image(cropped)
        assert restored.shape == img.shape
        np.testing.assert_array_equal(restored[3:13, 5:17], cropped)
        points = rng.uniform(0, 20, (5, 2))
        np.testing.assert_allclose(crop.inverse().apply_coords(crop.apply_coords(points.copy())), points)


# --------------------------------------------------------------------------- rotation
class TestRotation:
    @pytest.mark.parametrize("angle", [17.0, -63.5, 90.0, 200.0])
    def test_points_match_cv2_rotation_matrix(self, rng, angle):
        h, w = 30, 40
        center = (13.0, 21.0)
        tfm = T.RotationTransform(h, w, angle, expand=False, center=center)
        points = rng.uniform(0, 30, (20, 2))
        reference = cv2.transform(points[:, None, :], cv2.getRotationMatrix2D(center, angle, 1.0))[:, 0]
        np.testing.assert_allclose(tfm.apply_coords(points), reference, atol=1e-9)

    @pytest.mark.parametrize("angle", [17.0, -63.5, 135.0])
    def test_expand_fits_the_whole_image(self, angle):
        h, w = 30, 40
        tfm = T.RotationTransform(h, w, angle, expand=True)
        corners = tfm.apply_coords(np.array([[0, 0], [w, 0], [0, h], [w, h]], dtype=float))
        # the rotated corners span the output up to the rounding of its size
        np.testing.assert_allclose(corners.min(axis=0), [0, 0], atol=0.5)
        np.testing.assert_allclose(corners.max(axis=0), [tfm.bound_w, tfm.bound_h], atol=0.5)
        theta = np.deg2rad(angle)
        centre = tfm.apply_coords(np.array([[w / 2, h / 2]]))[0]
        np.testing.assert_allclose(centre, [tfm.bound_w / 2, tfm.bound_h / 2])
        # a CCW rotation in y-down image coordinates: (1, 0) goes to (cos, -sin)
        direction = tfm.apply_coords(np.array([[w / 2 + 1, h / 2]]))[0] - centre
        np.testing.assert_allclose(direction, [np.cos(theta), -np.sin(theta)], atol=1e-12)

    def test_quarter_turn_image_equals_rot90(self, rng):
        img = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
        tfm = T.RotationTransform(5, 7, 90, expand=True, interp=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(tfm.apply_image(img), np.rot90(img, 1))
        mask = rng.integers(0, 2, (5, 7), dtype=np.uint8)
        np.testing.assert_array_equal(tfm.apply_segmentation(mask), np.rot90(mask, 1))
        half = T.RotationTransform(5, 7, 180, expand=False, interp=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(half.apply_image(img), img[::-1, ::-1])

    def test_rotated_mask_matches_rasterized_rotated_polygon(self, rng):
        h, w = 60, 80
        polygon = random_polygon(rng, w, h)
        tfm = T.RotationTransform(h, w, 33.0, expand=True)
        rotated_mask = tfm.apply_segmentation(rasterize_centers([polygon], h, w).astype(np.uint8)).astype(bool)
        (rotated_polygon,) = tfm.apply_polygons([polygon.copy()])
        expected = rasterize_centers([rotated_polygon], tfm.bound_h, tfm.bound_w)
        # nearest-neighbour sampling reads a source pixel whose centre is within sqrt(2)/2 of
        # the exact source point, so only pixels that close to the outline may differ
        ys, xs = np.nonzero(rotated_mask != expected)
        centres = np.stack([xs + 0.5, ys + 0.5], axis=1)
        assert distance_to_outline(centres, rotated_polygon).max(initial=0) <= np.sqrt(0.5) + 1e-6
        assert len(xs) < 0.2 * expected.sum()

    def test_boxes_are_the_hull_of_rotated_corners(self, rng):
        tfm = T.RotationTransform(30, 40, 25.0, expand=True)
        boxes = random_boxes(rng, 6, 30)
        np.testing.assert_allclose(tfm.apply_box(boxes), brute_force_apply_box(tfm, boxes), atol=1e-9)

    @pytest.mark.parametrize("h,w,angle", [(30, 40, 30.0), (31, 40, 30.0), (25, 25, -45.0)])
    def test_inverse_round_trip(self, rng, h, w, angle):
        tfm = T.RotationTransform(h, w, angle, expand=True)
        points = rng.uniform(0, 25, (10, 2))
        inverse = tfm.inverse()
        rotate_back, crop = inverse.transforms
        back = inverse.apply_coords(tfm.apply_coords(points))
        # the inverse crops at an integer offset, off by half a pixel when the parities of the
        # original and re-expanded sizes differ
        offset = [(rotate_back.bound_w - w) / 2 - crop.x0, (rotate_back.bound_h - h) / 2 - crop.y0]
        np.testing.assert_allclose(back - points, np.broadcast_to(offset, points.shape), atol=1e-9)
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        assert inverse.apply_image(tfm.apply_image(img)).shape == img.shape

    def test_no_inverse_without_expand(self):
        with pytest.raises(NotImplementedError, match="expand=False"):
            T.RotationTransform(30, 40, 10.0, expand=False).inverse()


# -------------------------------------------------------------------- extent and colour
def test_extent_transform_integer_window_is_a_crop(rng):
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    tfm = T.ExtentTransform((5, 4, 15, 12), output_size=(8, 10), interp=Image.NEAREST)
    np.testing.assert_array_equal(tfm.apply_image(img), img[4:12, 5:15])
    np.testing.assert_allclose(tfm.apply_coords(np.array([[5.0, 4.0], [15.0, 12.0]])), [[0, 0], [10, 8]])
    scaled = T.ExtentTransform((0, 0, 30, 20), output_size=(40, 60))
    np.testing.assert_allclose(scaled.apply_coords(np.array([[3.0, 7.0]])), [[6.0, 14.0]])
    assert scaled.apply_segmentation(img[:, :, 0]).shape == (40, 60)


def test_color_transforms_change_pixels_only(rng):
    img = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    color = T.ColorTransform(lambda x: 255 - x)
    np.testing.assert_array_equal(color.apply_image(img), 255 - img)
    points = rng.uniform(0, 5, (3, 2))
    np.testing.assert_array_equal(color.apply_coords(points), points)
    assert isinstance(color.inverse(), T.NoOpTransform)
    pil = T.PILColorTransform(lambda im: ImageEnhance.Brightness(im).enhance(0.5))
    expected = np.asarray(ImageEnhance.Brightness(Image.fromarray(img)).enhance(0.5))
    np.testing.assert_array_equal(pil.apply_image(img), expected)
    np.testing.assert_array_equal(pil.apply_segmentation(img[:, :, 0]), img[:, :, 0])
    with pytest.raises(ValueError, match="callable"):
        T.ColorTransform(3)


# ----------------------------------------------------------------------- augmentations
class TestResizeShortestEdge:
    def test_output_shape_formula(self):
        for h, w in [(480, 640), (640, 480), (100, 1000), (333, 333)]:
            for size, max_size in [(800, 1333), (600, 1000), (32, 10**6)]:
                new_h, new_w = T.ResizeShortestEdge.get_output_shape(h, w, size, max_size)
                scale = min(size / min(h, w), max_size / max(h, w))
                assert (new_h, new_w) == (int(h * scale + 0.5), int(w * scale + 0.5))
                assert max(new_h, new_w) <= max_size

    def test_choice_and_range_sampling(self):
        image = np.zeros((48, 64, 3), np.uint8)
        np.random.seed(0)
        choice = T.ResizeShortestEdge([16, 24, 32], max_size=1000, sample_style="choice")
        sizes = {choice.get_transform(image).new_h for _ in range(60)}
        assert sizes == {16, 24, 32}
        ranged = T.ResizeShortestEdge([10, 13], sample_style="range")
        sizes = {ranged.get_transform(image).new_h for _ in range(100)}
        assert sizes == {10, 11, 12, 13}  # both ends included
        assert isinstance(T.ResizeShortestEdge(0).get_transform(image), T.NoOpTransform)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="sample_style"):
            T.ResizeShortestEdge(800, sample_style="uniform")
        with pytest.raises(ValueError, match=r"\[min, max\]"):
            T.ResizeShortestEdge([1, 2, 3], sample_style="range")


def test_resize_and_random_resize():
    image = np.zeros((20, 30, 3), np.uint8)
    tfm = T.Resize((7, 9)).get_transform(image)
    assert (tfm.h, tfm.w, tfm.new_h, tfm.new_w) == (20, 30, 7, 9)
    assert T.Resize(5).get_transform(image).new_w == 5
    shapes = {(T.RandomResize([(4, 5), (6, 7)]).get_transform(image).new_h) for _ in range(40)}
    assert shapes == {4, 6}


def test_random_flip():
    image = np.zeros((20, 30, 3), np.uint8)
    assert isinstance(T.RandomFlip(1.0).get_transform(image), T.HFlipTransform)
    vflip = T.RandomFlip(1.0, horizontal=False, vertical=True).get_transform(image)
    assert isinstance(vflip, T.VFlipTransform) and vflip.height == 20
    assert isinstance(T.RandomFlip(0.0).get_transform(image), T.NoOpTransform)
    with pytest.raises(ValueError, match="exactly one"):
        T.RandomFlip(horizontal=True, vertical=True)


class TestRandomCrop:
    @pytest.mark.parametrize("crop_type,crop_size,check", [
        ("relative", (0.5, 0.25), lambda h, w: (h, w) == (25, 20)),
        ("relative_range", (0.5, 0.25), lambda h, w: 25 <= h <= 50 and 20 <= w <= 80),
        ("absolute", (30, 100), lambda h, w: (h, w) == (30, 80)),
        ("absolute_range", (10, 60), lambda h, w: 10 <= h <= 50 and 10 <= w <= 60),
    ])
    def test_crop_sizes_and_windows(self, crop_type, crop_size, check):
        image = np.zeros((50, 80, 3), np.uint8)
        aug = T.RandomCrop(crop_type, crop_size)
        for _ in range(30):
            tfm = aug.get_transform(image)
            assert check(tfm.h, tfm.w)
            assert 0 <= tfm.x0 <= 80 - tfm.w and 0 <= tfm.y0 <= 50 - tfm.h
            assert tfm.apply_image(image).shape == (tfm.h, tfm.w, 3)

    def test_bad_crop_type(self):
        with pytest.raises(ValueError, match="crop_type"):
            T.RandomCrop("fraction", (0.5, 0.5))

    def test_category_area_constraint(self):
        sem_seg = np.zeros((40, 40), np.uint8)
        sem_seg[:, 30:] = 1  # category 0 covers 75% of the image
        image = np.zeros((40, 40, 3), np.uint8)
        aug = T.RandomCrop_CategoryAreaConstraint("absolute", (20, 20), single_category_max_area=0.9)
        np.random.seed(0)
        for _ in range(20):
            tfm = aug.get_transform(image, sem_seg)
            _, counts = np.unique(tfm.apply_segmentation(sem_seg), return_counts=True)
            # 10 tries find a window with both categories whenever one exists with probability ~1
            assert len(counts) == 2 and counts.max() < 0.9 * counts.sum()
        result = T.AugmentationList([aug])(T.AugInput(image, sem_seg=sem_seg))
        assert isinstance(result[0], T.CropTransform)


def test_photometric_augmentations_match_their_formulas(rng):
    img = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    bright = T.RandomBrightness(1.5, 1.5).get_transform(img).apply_image(img)
    np.testing.assert_array_equal(bright, np.clip(img.astype(np.float32) * 1.5, 0, 255).astype(np.uint8))
    contrast = T.RandomContrast(0.5, 0.5).get_transform(img).apply_image(img)
    expected = np.clip(0.5 * img.mean() + 0.5 * img.astype(np.float32), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(contrast, expected)
    saturation = T.RandomSaturation(0.0, 0.0).get_transform(img).apply_image(img)
    grey = 0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2]
    np.testing.assert_array_equal(saturation, np.clip(np.repeat(grey[..., None], 3, 2), 0, 255).astype(np.uint8))
    imgf = img.astype(np.float64) / 255
    lit = T.RandomLighting(0.5).get_transform(imgf).apply_image(imgf)
    offset = lit - imgf
    np.testing.assert_allclose(offset, np.broadcast_to(offset[0, 0], offset.shape), atol=1e-12)
    np.testing.assert_array_equal(T.RandomLighting(0.0).get_transform(imgf).apply_image(imgf), imgf)
    with pytest.raises(ValueError, match="RGB"):
        T.RandomSaturation(0.5, 1.5).get_transform(img[:, :, 0])


def test_random_rotation_sampling():
    image = np.zeros((20, 30, 3), np.uint8)
    assert isinstance(T.RandomRotation([0, 0]).get_transform(image), T.NoOpTransform)
    for _ in range(20):
        tfm = T.RandomRotation([-10, 10], expand=False, center=[[0.2, 0.2], [0.4, 0.4]]).get_transform(image)
        assert -10 <= tfm.angle <= 10
        assert 6 <= tfm.center[0] <= 12 and 4 <= tfm.center[1] <= 8
        choice = T.RandomRotation([30, 60], expand=False, center=[(0.0, 0.0), (1.0, 1.0)], sample_style="choice")
        tfm = choice.get_transform(image)
        assert tfm.angle in (30, 60) and tuple(tfm.center) in {(0.0, 0.0), (30.0, 20.0)}


def test_large_scale_jitter_resize_scale_and_fixed_size_crop(rng):
    target = (64, 96)
    for shape in [(48, 80), (200, 120)]:
        image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        sem_seg = np.ones(shape, np.uint8)
        box = np.array([[0.0, 0.0, shape[1], shape[0]]])  # the whole image
        aug_input = T.AugInput(image, boxes=box, sem_seg=sem_seg)
        tfms = T.AugmentationList([T.ResizeScale(0.5, 2.0, *target), T.FixedSizeCrop(target)])(aug_input)
        assert aug_input.image.shape == (*target, 3) and aug_input.sem_seg.shape == target
        resized = tfms[0]
        assert resized.new_h <= 2.0 * target[0] + 1 and resized.new_w <= 2.0 * target[1] + 1
        # the image content ends where the moved box says; beyond it is padding
        x1, y1 = np.minimum(aug_input.boxes[0, 2:], [target[1], target[0]]).astype(int)
        assert (aug_input.sem_seg[:y1, :x1] == 1).all()
        assert (aug_input.sem_seg[y1:, :] == 255).all() and (aug_input.sem_seg[:, x1:] == 255).all()
        if y1 < target[0]:
            assert (aug_input.image[y1:] == 128).all()
        points = rng.uniform(0, 40, (5, 2))
        np.testing.assert_allclose(tfms.inverse().apply_coords(tfms.apply_coords(points.copy())), points, atol=1e-9)


def test_random_extent_output_size():
    image = np.zeros((20, 40, 3), np.uint8)
    tfm = T.RandomExtent(scale_range=(0.5, 0.5), shift_range=(0, 0)).get_transform(image)
    assert tfm.output_size == (10, 20)
    assert tfm.apply_image(image).shape == (10, 20, 3)


def test_random_apply():
    image = np.zeros((10, 10, 3), np.uint8)
    flip = T.HFlipTransform(10)
    assert isinstance(T.RandomApply(flip, 0.0)(T.AugInput(image)), T.NoOpTransform)
    assert T.RandomApply(flip, 1.0)(T.AugInput(image)) is flip
    assert isinstance(T.RandomApply(T.RandomFlip(1.0), 1.0).get_transform(image), T.HFlipTransform)
    with pytest.raises(ValueError, match="prob"):
        T.RandomApply(flip, 1.5)


class TestAugInput:
    def test_augmentation_list_moves_image_boxes_and_sem_seg(self, rng):
        image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
        sem_seg = rng.integers(0, 5, (20, 30), dtype=np.uint8)
        boxes = np.array([[1.0, 2.0, 10.0, 12.0]])
        aug_input = T.StandardAugInput(image, boxes=boxes, sem_seg=sem_seg)
        tfms = aug_input.apply_augmentations([T.Resize((40, 60)), T.HFlipTransform(60)])
        assert isinstance(tfms, T.TransformList) and len(tfms) == 2
        assert aug_input.image.shape == (40, 60, 3)
        np.testing.assert_allclose(aug_input.boxes, [[60 - 20.0, 4.0, 60 - 2.0, 24.0]])
        np.testing.assert_array_equal(aug_input.sem_seg, sem_seg.repeat(2, 0).repeat(2, 1)[:, ::-1])

    def test_apply_augmentations_on_array(self, rng):
        image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
        out, tfms = T.apply_augmentations([T.HFlipTransform(30)], image)
        np.testing.assert_array_equal(out, image[:, ::-1])
        assert T.apply_transform_gens is T.apply_augmentations and T.TransformGen is T.Augmentation

    def test_missing_input_is_named(self):
        aug = T.RandomCrop_CategoryAreaConstraint("absolute", (5, 5), 0.5)
        aug_input = T.AugInput(np.zeros((10, 10, 3), np.uint8))
        aug_input.__dict__.pop("sem_seg")
        with pytest.raises(AttributeError, match="sem_seg"):
            aug(aug_input)

    def test_bad_images(self):
        with pytest.raises(TypeError, match="uint8"):
            T.AugInput(np.zeros((4, 4), np.int32))
        with pytest.raises(TypeError, match="numpy"):
            T.AugInput(torch.zeros(4, 4))
        with pytest.raises(ValueError, match="shape"):
            T.AugInput(np.zeros((2, 4, 4, 3), np.uint8))

    def test_repr(self):
        assert repr(T.ResizeShortestEdge([640, 800], 1333, "choice")) == (
            "ResizeShortestEdge(short_edge_length=[640, 800], max_size=1333, sample_style='choice')")
        assert repr(T.AugmentationList([T.RandomFlip()])) == "AugmentationList[RandomFlip()]"
