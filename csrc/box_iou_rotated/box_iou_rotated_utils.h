// Geometry of rotated rectangles, shared by the CPU (.cpp) and CUDA (.cu) kernels of
// box_iou_rotated and nms_rotated: the same code runs on both sides, so they agree.
//
// A rotated box is [x_ctr, y_ctr, width, height, angle] with the angle in degrees,
// counter-clockwise in image space (y points down), as in Detectron2: the point (u, v) of the
// box's own frame lies at (x_ctr + u cos(a) + v sin(a), y_ctr - u sin(a) + v cos(a)).
//
// The intersection of two boxes is computed in the frame of the second one, where it is the
// axis-aligned rectangle [-w/2, w/2] x [-h/2, h/2]: the first box's four corners are clipped
// against its four sides (Sutherland-Hodgman), which yields the intersection polygon already
// in order, and the shoelace formula gives its area. Working relative to a box centre also
// keeps the precision when both boxes sit far from the origin (e.g. offset by batched NMS).
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define DETZOO_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DETZOO_HOST_DEVICE inline
#endif

namespace detzoo {
namespace rotated {

// Math functions that resolve to the float or double overload on both host and device (on the
// host, unqualified cos(float) would silently compute in double).
#if defined(__CUDA_ARCH__)
#define DETZOO_MATH(fn) ::fn
#else
#define DETZOO_MATH(fn) std::fn
#endif

// A box with its trigonometry computed once, so that pairs cost no sin/cos.
template <typename T>
struct PreparedBox {
  T x_ctr, y_ctr, half_w, half_h, cos_a, sin_a;
};

template <typename T>
struct Point {
  T x, y;
};

// Clipping a convex quadrilateral by four half-planes adds at most one vertex per plane
// (8 in all); the extra room absorbs rounding on nearly collinear vertices, where a clip may
// see more sign changes than exact arithmetic would.
constexpr int kMaxPolygon = 16;

// Areas below this are treated as empty boxes, whose IoU with anything is 0.
constexpr double kMinArea = 1e-14;

template <typename T>
DETZOO_HOST_DEVICE PreparedBox<T> prepare_box(T x_ctr, T y_ctr, T width, T height, T angle_deg) {
  const T radians = angle_deg * static_cast<T>(0.017453292519943295);  // pi / 180
  PreparedBox<T> box;
  box.x_ctr = x_ctr;
  box.y_ctr = y_ctr;
  box.half_w = width * static_cast<T>(0.5);
  box.half_h = height * static_cast<T>(0.5);
  box.cos_a = DETZOO_MATH(cos)(radians);
  box.sin_a = DETZOO_MATH(sin)(radians);
  return box;
}

// Keeps the part of polygon `in` (n vertices) where nx * x + ny * y <= limit; returns the
// number of vertices written to `out`. (nx, ny) is an axis direction, (+-1, 0) or (0, +-1).
template <typename T>
DETZOO_HOST_DEVICE int clip_half_plane(const Point<T>* in, int n, Point<T>* out, T nx, T ny, T limit) {
  int m = 0;
  for (int k = 0; k < n; ++k) {
    const Point<T> p = in[k];
    const Point<T> q = in[(k + 1 == n) ? 0 : k + 1];
    const T dp = nx * p.x + ny * p.y - limit;
    const T dq = nx * q.x + ny * q.y - limit;
    const bool p_inside = dp <= 0;
    const bool q_inside = dq <= 0;
    if (p_inside && m < kMaxPolygon) {
      out[m++] = p;
    }
    if (p_inside != q_inside && m < kMaxPolygon) {
      const T t = dp / (dp - dq);
      out[m++] = Point<T>{p.x + t * (q.x - p.x), p.y + t * (q.y - p.y)};
    }
  }
  return m;
}

template <typename T>
DETZOO_HOST_DEVICE T polygon_area(const Point<T>* poly, int n) {
  T twice_area = 0;
  for (int k = 0; k < n; ++k) {
    const Point<T> p = poly[k];
    const Point<T> q = poly[(k + 1 == n) ? 0 : k + 1];
    twice_area += p.x * q.y - q.x * p.y;
  }
  return DETZOO_MATH(fabs)(twice_area) * static_cast<T>(0.5);
}

// Area of the intersection of boxes a and b.
template <typename T>
DETZOO_HOST_DEVICE T intersection_area(const PreparedBox<T>& a, const PreparedBox<T>& b) {
  // a's centre in b's frame (the inverse of b's rotation is its transpose).
  const T dx = a.x_ctr - b.x_ctr;
  const T dy = a.y_ctr - b.y_ctr;
  const T cx = b.cos_a * dx - b.sin_a * dy;
  const T cy = b.sin_a * dx + b.cos_a * dy;

  // a's bounding circle misses b's rectangle: nothing to clip.
  const T radius = DETZOO_MATH(sqrt)(a.half_w * a.half_w + a.half_h * a.half_h);
  if (DETZOO_MATH(fabs)(cx) > b.half_w + radius || DETZOO_MATH(fabs)(cy) > b.half_h + radius) {
    return 0;
  }

  // a's rotation relative to b: cos and sin of (angle_a - angle_b).
  const T cos_r = a.cos_a * b.cos_a + a.sin_a * b.sin_a;
  const T sin_r = a.sin_a * b.cos_a - a.cos_a * b.sin_a;
  // a's corners in b's frame, in order around the box.
  const T ux = a.half_w * cos_r, uy = -a.half_w * sin_r;  // a's local +x half-axis
  const T vx = a.half_h * sin_r, vy = a.half_h * cos_r;   // a's local +y half-axis
  Point<T> poly[kMaxPolygon];
  Point<T> clipped[kMaxPolygon];
  poly[0] = Point<T>{cx + ux + vx, cy + uy + vy};
  poly[1] = Point<T>{cx - ux + vx, cy - uy + vy};
  poly[2] = Point<T>{cx - ux - vx, cy - uy - vy};
  poly[3] = Point<T>{cx + ux - vx, cy + uy - vy};

  int n = clip_half_plane<T>(poly, 4, clipped, 1, 0, b.half_w);
  n = clip_half_plane<T>(clipped, n, poly, -1, 0, b.half_w);
  n = clip_half_plane<T>(poly, n, clipped, 0, 1, b.half_h);
  n = clip_half_plane<T>(clipped, n, poly, 0, -1, b.half_h);
  return n < 3 ? static_cast<T>(0) : polygon_area<T>(poly, n);
}

// IoU of boxes a and b; 0 when either is empty (area below kMinArea).
template <typename T>
DETZOO_HOST_DEVICE T iou(const PreparedBox<T>& a, const PreparedBox<T>& b) {
  const T area_a = 4 * a.half_w * a.half_h;
  const T area_b = 4 * b.half_w * b.half_h;
  if (area_a < static_cast<T>(kMinArea) || area_b < static_cast<T>(kMinArea)) {
    return 0;
  }
  const T inter = intersection_area<T>(a, b);
  return inter / (area_a + area_b - inter);
}

}  // namespace rotated
}  // namespace detzoo
