// Greedy NMS of rotated boxes on the CPU.
//
// Boxes are visited by decreasing score; each one still alive is kept and suppresses the
// boxes whose rotated IoU with it is above the threshold. A rotated IoU clips polygons (a few
// hundred ns), so candidates are first screened in a branch-free loop over one array per
// field: their axis-aligned bounds must touch the kept box's, and their area must be close
// enough to its area (IoU <= smaller area / larger area). Only the few that pass get an IoU,
// computed in parallel. As in nms_cpu.cpp, the arrays are compacted as boxes die and, for many
// boxes, sorted by the left bound, so that a kept box only screens the boxes whose left bound
// lies in (its left bound - widest box, its right bound): with batched NMS, its own class.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "box_iou_rotated/box_iou_rotated_utils.h"
#include "nms/nms.h"
#include "nms_rotated/nms_rotated.h"

namespace detzoo {
namespace {

// Rotated IoUs per thread task: enough to outweigh handing work to another thread.
constexpr int64_t kParallelGrain = 64;
// Below this many boxes, sorting them by their left bound costs more than it saves.
constexpr int64_t kSweepMinBoxes = 512;
// Compaction is not worth a pass over arrays this short.
constexpr int64_t kMinCompactSize = 256;
// The bounds are widened by this fraction of the box's extent and distance from the origin,
// so that rounding in them never drops a pair whose IoU, computed otherwise, is above 0.
constexpr double kBoundsMargin = 1e-5;
// Likewise, the area-ratio screen lets through pairs up to this fraction below the threshold.
constexpr double kRatioMargin = 1e-4;

// Candidates, one array per field, in score order or by left bound.
template <typename T>
struct Candidates {
  std::vector<T> x_lo, x_hi, y_lo, y_hi, area;
  std::vector<int32_t> rank;  // position in the decreasing-score order
  std::vector<uint8_t> dead;  // suppressed, or already visited

  explicit Candidates(int64_t n) : x_lo(n), x_hi(n), y_lo(n), y_hi(n), area(n), rank(n), dead(n, 0) {}

  int64_t size() const { return static_cast<int64_t>(rank.size()); }

  void resize(int64_t n) {
    x_lo.resize(n);
    x_hi.resize(n);
    y_lo.resize(n);
    y_hi.resize(n);
    area.resize(n);
    rank.resize(n);
    dead.resize(n);
  }

  void copy_entry(int64_t to, const Candidates& from, int64_t at) {
    x_lo[to] = from.x_lo[at];
    x_hi[to] = from.x_hi[at];
    y_lo[to] = from.y_lo[at];
    y_hi[to] = from.y_hi[at];
    area[to] = from.area[at];
    rank[to] = from.rank[at];
    dead[to] = from.dead[at];
  }
};

template <typename scalar_t, typename T>
std::vector<rotated::PreparedBox<T>> prepare_in_score_order(const at::Tensor& dets, const int64_t* order, int64_t n) {
  std::vector<rotated::PreparedBox<T>> boxes(n);
  const scalar_t* d = dets.data_ptr<scalar_t>();
  at::parallel_for(0, n, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* box = d + 5 * order[r];
      boxes[r] = rotated::prepare_box<T>(static_cast<T>(box[0]), static_cast<T>(box[1]), static_cast<T>(box[2]),
                                         static_cast<T>(box[3]), static_cast<T>(box[4]));
    }
  });
  return boxes;
}

// The boxes' (slightly widened) axis-aligned bounds and areas, in score order. Returns
// whether the screen may be used: not when some bound is not finite, nor for a negative
// threshold (then even boxes far apart, IoU 0, suppress each other).
template <typename T>
bool screen_fields(const std::vector<rotated::PreparedBox<T>>& boxes, double iou_threshold, Candidates<T>& c) {
  bool finite = true;
  for (int64_t r = 0; r < c.size(); ++r) {
    const rotated::PreparedBox<T>& b = boxes[r];
    const T extent_x = std::abs(b.half_w * b.cos_a) + std::abs(b.half_h * b.sin_a);
    const T extent_y = std::abs(b.half_w * b.sin_a) + std::abs(b.half_h * b.cos_a);
    const T margin = static_cast<T>(kBoundsMargin) * (std::abs(b.x_ctr) + std::abs(b.y_ctr) + extent_x + extent_y);
    c.rank[r] = static_cast<int32_t>(r);
    c.x_lo[r] = b.x_ctr - extent_x - margin;
    c.x_hi[r] = b.x_ctr + extent_x + margin;
    c.y_lo[r] = b.y_ctr - extent_y - margin;
    c.y_hi[r] = b.y_ctr + extent_y + margin;
    c.area[r] = 4 * b.half_w * b.half_h;
    finite = finite && std::isfinite(c.x_hi[r] - c.x_lo[r]) && std::isfinite(c.y_hi[r] - c.y_lo[r]) &&
             std::isfinite(c.area[r]);
  }
  return finite && iou_threshold >= 0;
}

template <typename T>
Candidates<T> sorted_by_left_bound(const Candidates<T>& by_score) {
  const int64_t n = by_score.size();
  std::vector<int32_t> perm;
  if constexpr (std::is_same_v<T, float>) {
    perm = nms_ascending_order_cpu(by_score.x_lo.data(), n);
  } else {
    perm.resize(n);
    std::iota(perm.begin(), perm.end(), 0);
    std::sort(perm.begin(), perm.end(), [&](int32_t a, int32_t b) { return by_score.x_lo[a] < by_score.x_lo[b]; });
  }
  Candidates<T> c(n);
  for (int64_t j = 0; j < n; ++j) {
    c.copy_entry(j, by_score, perm[j]);
  }
  return c;
}

// The widest bounds, in double and rounded up a little: box j's bounds can only touch box
// i's when x_lo[j] > x_lo[i] - widest.
template <typename T>
double widest_bounds(const Candidates<T>& c) {
  double widest = 0;
  for (int64_t j = 0; j < c.size(); ++j) {
    widest = std::max(widest, static_cast<double>(c.x_hi[j]) - static_cast<double>(c.x_lo[j]));
  }
  return widest * (1 + 1e-6);
}

// Positions in [begin, end) of the live candidates that pass the screen against candidate p.
template <typename T>
void screen(const Candidates<T>& c, int64_t p, int64_t begin, int64_t end, T min_area_ratio,
            std::vector<uint8_t>& pass, std::vector<int32_t>& passing) {
  const T x_lo = c.x_lo[p], x_hi = c.x_hi[p], y_lo = c.y_lo[p], y_hi = c.y_hi[p], area = c.area[p];
  const T* xl = c.x_lo.data();
  const T* xh = c.x_hi.data();
  const T* yl = c.y_lo.data();
  const T* yh = c.y_hi.data();
  const T* a = c.area.data();
  const uint8_t* dead = c.dead.data();
  uint8_t* out = pass.data();
  for (int64_t k = begin; k < end; ++k) {
    const bool bounds_touch = (xl[k] <= x_hi) & (xh[k] >= x_lo) & (yl[k] <= y_hi) & (yh[k] >= y_lo);
    const bool areas_close = std::min(a[k], area) >= min_area_ratio * std::max(a[k], area);
    out[k] = bounds_touch & areas_close & (dead[k] == 0);
  }
  passing.clear();
  for (int64_t k = begin; k < end; ++k) {
    if (out[k]) {
      passing.push_back(static_cast<int32_t>(k));
    }
  }
}

// Drops the dead candidates, keeping the order, and updates pos_of_rank (-1 when dropped).
template <typename T>
void compact(Candidates<T>& c, std::vector<int32_t>& pos_of_rank) {
  int64_t out = 0;
  for (int64_t j = 0; j < c.size(); ++j) {
    if (c.dead[j]) {
      pos_of_rank[c.rank[j]] = -1;
      continue;
    }
    if (out != j) {
      c.copy_entry(out, c, j);
    }
    pos_of_rank[c.rank[j]] = static_cast<int32_t>(out++);
  }
  c.resize(out);
}

template <typename scalar_t>
at::Tensor nms_rotated_cpu_typed(const at::Tensor& dets, const at::Tensor& scores, double iou_threshold) {
  using T = at::opmath_type<scalar_t>;
  const int64_t n = dets.size(0);
  const std::vector<int64_t> order = nms_score_order_cpu(scores);
  const std::vector<rotated::PreparedBox<T>> boxes = prepare_in_score_order<scalar_t, T>(dets, order.data(), n);
  const T threshold = threshold_in<T>(iou_threshold);

  Candidates<T> c(n);
  const bool use_screen = screen_fields(boxes, iou_threshold, c);
  // Without the screen, bounds that touch everything and equal areas let every pair through.
  const T min_area_ratio = use_screen ? static_cast<T>(iou_threshold * (1 - kRatioMargin)) : static_cast<T>(0);
  if (!use_screen) {
    const T inf = std::numeric_limits<T>::infinity();
    std::fill(c.x_lo.begin(), c.x_lo.end(), -inf);
    std::fill(c.y_lo.begin(), c.y_lo.end(), -inf);
    std::fill(c.x_hi.begin(), c.x_hi.end(), inf);
    std::fill(c.y_hi.begin(), c.y_hi.end(), inf);
    std::fill(c.area.begin(), c.area.end(), static_cast<T>(1));
  }
  const bool sweep = use_screen && n >= kSweepMinBoxes;
  double reach = 0;
  if (sweep) {
    c = sorted_by_left_bound(c);
    reach = widest_bounds(c);
  }
  std::vector<int32_t> pos_of_rank(n);
  for (int64_t j = 0; j < n; ++j) {
    pos_of_rank[c.rank[j]] = static_cast<int32_t>(j);
  }

  std::vector<uint8_t> pass(n), overlaps(n);
  std::vector<int32_t> passing;
  std::vector<int64_t> keep;
  int64_t num_dead = 0;
  for (int32_t r = 0; r < n; ++r) {
    const int32_t p = pos_of_rank[r];
    if (p < 0 || c.dead[p]) {
      continue;
    }
    keep.push_back(order[r]);
    c.dead[p] = 1;
    int64_t begin = p + 1, end = c.size();
    if (sweep) {
      const double lowest = static_cast<double>(c.x_lo[p]) - reach;
      const T* x_lo = c.x_lo.data();
      begin = std::lower_bound(x_lo, x_lo + c.size(), lowest,
                               [](T v, double key) { return static_cast<double>(v) < key; }) - x_lo;
      end = std::upper_bound(x_lo, x_lo + c.size(), c.x_hi[p]) - x_lo;
    }
    screen(c, p, begin, std::max(begin, end), min_area_ratio, pass, passing);
    const rotated::PreparedBox<T>& kept = boxes[r];
    const int64_t num_passing = static_cast<int64_t>(passing.size());
    at::parallel_for(0, num_passing, kParallelGrain, [&](int64_t chunk_begin, int64_t chunk_end) {
      for (int64_t i = chunk_begin; i < chunk_end; ++i) {
        overlaps[i] = rotated::iou<T>(kept, boxes[c.rank[passing[i]]]) > threshold;
      }
    });
    num_dead += 1;
    for (int64_t i = 0; i < num_passing; ++i) {
      c.dead[passing[i]] |= overlaps[i];
      num_dead += overlaps[i];
    }
    if (num_dead * 2 > c.size() && c.size() >= kMinCompactSize) {
      compact(c, pos_of_rank);
      num_dead = 0;
    }
  }

  at::Tensor result = at::empty({static_cast<int64_t>(keep.size())}, dets.options().dtype(at::kLong));
  std::memcpy(result.data_ptr<int64_t>(), keep.data(), keep.size() * sizeof(int64_t));
  return result;
}

}  // namespace

at::Tensor nms_rotated_cpu(const at::Tensor& dets, const at::Tensor& scores, double iou_threshold) {
  TORCH_CHECK(dets.dim() == 2 && dets.size(1) == 5, "nms_rotated: dets must be (N, 5), got ", dets.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == dets.size(0), "nms_rotated: scores must be (N) with N = ",
              dets.size(0), ", got ", scores.sizes());
  TORCH_CHECK(dets.size(0) <= std::numeric_limits<int32_t>::max(), "nms_rotated: too many boxes: ", dets.size(0));
  if (dets.size(0) == 0) {
    return at::empty({0}, dets.options().dtype(at::kLong));
  }
  const at::Tensor dets_c = dets.contiguous();
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dets.scalar_type(), "nms_rotated_cpu", [&] {
    result = nms_rotated_cpu_typed<scalar_t>(dets_c, scores, iou_threshold);
  });
  return result;
}

TORCH_LIBRARY_IMPL(detzoo, CPU, m) {
  m.impl("nms_rotated", &nms_rotated_cpu);
}

}  // namespace detzoo
