// Greedy NMS of axis-aligned boxes on the CPU.
//
// Boxes are visited by decreasing score; each one still alive is kept and suppresses the
// boxes whose IoU with it is above the threshold (torchvision's rule). Two things make this
// faster than the textbook double loop over the score order:
//   * candidates live in per-coordinate arrays, compacted as boxes die, so the suppression
//     pass is a branch-free, vectorizable sweep over mostly live boxes, split across threads
//     when long;
//   * with many boxes the arrays are sorted by x1 instead: a kept box can only overlap the
//     boxes whose x1 lies in (its x1 - widest width, its x2), a range found by binary search.
//     Batched NMS moves every class to its own stretch of the x axis, so a kept box then only
//     looks at (part of) its own class.
// Both orders (by score, by x1) come from radix sorts, linear in the number of boxes.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "nms/nms.h"

namespace detzoo {
namespace {

// Below this many boxes, sorting them by x1 costs more than the pruning saves.
constexpr int64_t kSweepMinBoxes = 512;
// Suppression passes are split across threads in chunks of this many boxes; a pass shorter
// than two chunks stays on one thread. A pass is a few microseconds per thousand boxes, while
// handing work to another thread costs tens of microseconds, and far more when the machine is
// busy (a kept box per hand-off made RPN NMS of 6000 boxes 50x slower than serial), so only
// very long passes are split.
constexpr int64_t kParallelGrain = 32768;
// Compaction is not worth a pass over arrays this short.
constexpr int64_t kMinCompactSize = 256;

// A float as a uint32 with the same order, the order of torch.sort: every NaN above +inf,
// -0 equal to +0.
inline uint32_t float_sort_key(float v) {
  if (std::isnan(v)) {
    return 0xFFFFFFFFu;
  }
  if (v == 0) {
    v = 0.0f;
  }
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Positions 0..n-1 ordered by ascending key, equal keys in position order. An LSD radix sort
// (three passes of 11 bits) runs in linear time: several times faster than a comparison sort
// for the thousands of boxes NMS sees, where sorting would otherwise be a good part of the cost.
std::vector<int32_t> radix_argsort(const std::vector<uint32_t>& keys) {
  constexpr int kDigitBits = 11;
  constexpr uint32_t kDigitMask = (1u << kDigitBits) - 1;
  const int64_t n = static_cast<int64_t>(keys.size());
  // key in the high half, position in the low half: one array to move, read in sequence
  std::vector<uint64_t> items(n), buffer(n);
  for (int64_t i = 0; i < n; ++i) {
    items[i] = (static_cast<uint64_t>(keys[i]) << 32) | static_cast<uint64_t>(i);
  }
  std::vector<int64_t> start(kDigitMask + 1);
  for (int shift = 32; shift < 64; shift += kDigitBits) {
    std::fill(start.begin(), start.end(), 0);
    for (const uint64_t item : items) {
      ++start[(item >> shift) & kDigitMask];
    }
    if (*std::max_element(start.begin(), start.end()) == n) {
      continue;  // one digit value for all: this pass would not move anything
    }
    int64_t total = 0;
    for (int64_t& s : start) {
      const int64_t count = s;
      s = total;
      total += count;
    }
    for (const uint64_t item : items) {
      buffer[start[(item >> shift) & kDigitMask]++] = item;
    }
    items.swap(buffer);
  }
  std::vector<int32_t> order(n);
  for (int64_t i = 0; i < n; ++i) {
    order[i] = static_cast<int32_t>(items[i] & 0xFFFFFFFFu);
  }
  return order;
}

// Live candidates, one array per field, in either score order or x1 order.
template <typename T>
struct Candidates {
  std::vector<T> x1, y1, x2, y2, area;
  std::vector<int32_t> rank;        // position in the decreasing-score order
  std::vector<int32_t> suppressed;  // 0 or 1; int32 so that the pass vectorizes with float

  explicit Candidates(int64_t n)
      : x1(n), y1(n), x2(n), y2(n), area(n), rank(n), suppressed(n, 0) {}

  int64_t size() const { return static_cast<int64_t>(rank.size()); }

  void resize(int64_t n) {
    x1.resize(n);
    y1.resize(n);
    x2.resize(n);
    y2.resize(n);
    area.resize(n);
    rank.resize(n);
    suppressed.resize(n);
  }

  void copy_entry(int64_t to, const Candidates& from, int64_t at) {
    x1[to] = from.x1[at];
    y1[to] = from.y1[at];
    x2[to] = from.x2[at];
    y2[to] = from.y2[at];
    area[to] = from.area[at];
    rank[to] = from.rank[at];
    suppressed[to] = from.suppressed[at];
  }
};

template <typename T>
struct KeptBox {
  T x1, y1, x2, y2, area;
};

// Marks the candidates in [begin, end) that overlap `kept` above `threshold`; returns how many
// were newly marked. The IoU expression is torchvision's, operation for operation, so that
// boxes exactly at the threshold are decided identically.
template <typename T>
int64_t suppress_overlaps(Candidates<T>& c, int64_t begin, int64_t end, const KeptBox<T>& kept, T threshold) {
  const T* x1 = c.x1.data();
  const T* y1 = c.y1.data();
  const T* x2 = c.x2.data();
  const T* y2 = c.y2.data();
  const T* area = c.area.data();
  int32_t* suppressed = c.suppressed.data();
  int32_t newly = 0;
  for (int64_t j = begin; j < end; ++j) {
    const T w = std::max(static_cast<T>(0), std::min(kept.x2, x2[j]) - std::max(kept.x1, x1[j]));
    const T h = std::max(static_cast<T>(0), std::min(kept.y2, y2[j]) - std::max(kept.y1, y1[j]));
    const T inter = w * h;
    const int32_t hit = inter / (kept.area + area[j] - inter) > threshold;
    newly += hit & (suppressed[j] ^ 1);
    suppressed[j] |= hit;
  }
  return newly;
}

template <typename T>
int64_t suppress_overlaps_parallel(Candidates<T>& c, int64_t begin, int64_t end, const KeptBox<T>& kept,
                                   T threshold) {
  if (end - begin < 2 * kParallelGrain) {
    return suppress_overlaps(c, begin, end, kept, threshold);
  }
  std::atomic<int64_t> newly{0};
  at::parallel_for(begin, end, kParallelGrain, [&](int64_t chunk_begin, int64_t chunk_end) {
    newly += suppress_overlaps(c, chunk_begin, chunk_end, kept, threshold);
  });
  return newly.load();
}

// Drops the suppressed candidates and those already visited (rank <= last_rank), keeping the
// order, and updates pos_of_rank (-1 for a dropped, suppressed box).
template <typename T>
void compact(Candidates<T>& c, int32_t last_rank, std::vector<int32_t>& pos_of_rank) {
  int64_t out = 0;
  for (int64_t j = 0; j < c.size(); ++j) {
    const int32_t r = c.rank[j];
    if (r <= last_rank) {
      continue;
    }
    if (c.suppressed[j]) {
      pos_of_rank[r] = -1;
      continue;
    }
    if (out != j) {
      c.copy_entry(out, c, j);
    }
    pos_of_rank[r] = static_cast<int32_t>(out++);
  }
  c.resize(out);
}

// Copies the boxes into score order, converting to the compute type T.
template <typename scalar_t, typename T>
Candidates<T> gather_in_score_order(const at::Tensor& dets, const int64_t* order, int64_t n) {
  Candidates<T> c(n);
  const scalar_t* d = dets.data_ptr<scalar_t>();
  for (int64_t r = 0; r < n; ++r) {
    const scalar_t* box = d + 4 * order[r];
    c.x1[r] = static_cast<T>(box[0]);
    c.y1[r] = static_cast<T>(box[1]);
    c.x2[r] = static_cast<T>(box[2]);
    c.y2[r] = static_cast<T>(box[3]);
    c.area[r] = (c.x2[r] - c.x1[r]) * (c.y2[r] - c.y1[r]);
    c.rank[r] = static_cast<int32_t>(r);
  }
  return c;
}

// The x1-sweep needs finite coordinates (NaN breaks sorting) and a threshold >= 0 (with a
// negative one, even disjoint boxes, IoU 0, suppress each other).
template <typename T>
bool can_sweep(const Candidates<T>& c, double iou_threshold) {
  if (c.size() < kSweepMinBoxes || !(iou_threshold >= 0)) {
    return false;
  }
  for (int64_t j = 0; j < c.size(); ++j) {
    if (!std::isfinite(c.x1[j]) || !std::isfinite(c.x2[j])) {
      return false;
    }
  }
  return true;
}

template <typename T>
Candidates<T> sorted_by_x1(const Candidates<T>& by_score) {
  const int64_t n = by_score.size();
  std::vector<int32_t> perm;
  if constexpr (std::is_same_v<T, float>) {
    perm = nms_ascending_order_cpu(by_score.x1.data(), n);
  } else {
    perm.resize(n);
    std::iota(perm.begin(), perm.end(), 0);
    std::sort(perm.begin(), perm.end(), [&](int32_t a, int32_t b) { return by_score.x1[a] < by_score.x1[b]; });
  }
  Candidates<T> c(n);
  for (int64_t j = 0; j < n; ++j) {
    c.copy_entry(j, by_score, perm[j]);
  }
  return c;
}

// The widest box, in double and rounded up a little: a box j can only overlap box i when
// x1[j] > x1[i] - widest, and this bound must not cut off any real overlap.
template <typename T>
double widest_box(const Candidates<T>& c) {
  double widest = 0;
  for (int64_t j = 0; j < c.size(); ++j) {
    widest = std::max(widest, static_cast<double>(c.x2[j]) - static_cast<double>(c.x1[j]));
  }
  return widest * (1 + 1e-6);
}

template <typename scalar_t>
at::Tensor nms_cpu_typed(const at::Tensor& dets, const at::Tensor& scores, double iou_threshold) {
  using T = at::opmath_type<scalar_t>;
  const int64_t n = dets.size(0);
  const std::vector<int64_t> order = nms_score_order_cpu(scores);
  const int64_t* order_ptr = order.data();

  Candidates<T> c = gather_in_score_order<scalar_t, T>(dets, order_ptr, n);
  const bool sweep = can_sweep(c, iou_threshold);
  double reach = 0;
  if (sweep) {
    c = sorted_by_x1(c);
    reach = widest_box(c);
  }
  std::vector<int32_t> pos_of_rank(n);
  for (int64_t j = 0; j < n; ++j) {
    pos_of_rank[c.rank[j]] = static_cast<int32_t>(j);
  }

  const T threshold = threshold_in<T>(iou_threshold);
  std::vector<int64_t> keep;
  int64_t dead = 0;  // entries of c that are suppressed or already visited
  for (int32_t r = 0; r < n; ++r) {
    const int32_t p = pos_of_rank[r];
    if (p < 0 || c.suppressed[p]) {
      continue;
    }
    keep.push_back(order_ptr[r]);
    const KeptBox<T> kept{c.x1[p], c.y1[p], c.x2[p], c.y2[p], c.area[p]};
    int64_t begin = p + 1, end = c.size();
    if (sweep) {
      // Overlap needs x1[j] < kept.x2 and x2[j] > kept.x1, hence x1[j] > kept.x1 - reach.
      const double lowest = static_cast<double>(kept.x1) - reach;
      const auto* x1 = c.x1.data();
      begin = std::lower_bound(x1, x1 + c.size(), lowest,
                               [](T v, double key) { return static_cast<double>(v) < key; }) - x1;
      end = std::lower_bound(x1, x1 + c.size(), kept.x2) - x1;
    }
    c.suppressed[p] = 1;  // visited: the sweep below then does not count it again
    dead += 1 + suppress_overlaps_parallel(c, begin, std::max(begin, end), kept, threshold);
    if (dead * 2 > c.size() && c.size() >= kMinCompactSize) {
      compact(c, r, pos_of_rank);
      dead = 0;
    }
  }

  at::Tensor result = at::empty({static_cast<int64_t>(keep.size())}, dets.options().dtype(at::kLong));
  if (!keep.empty()) {
    std::memcpy(result.data_ptr<int64_t>(), keep.data(), keep.size() * sizeof(int64_t));
  }
  return result;
}

}  // namespace

std::vector<int32_t> nms_ascending_order_cpu(const float* keys, int64_t n) {
  std::vector<uint32_t> sort_keys(n);
  for (int64_t i = 0; i < n; ++i) {
    sort_keys[i] = float_sort_key(keys[i]);
  }
  return radix_argsort(sort_keys);
}

std::vector<int64_t> nms_score_order_cpu(const at::Tensor& scores) {
  const int64_t n = scores.numel();
  std::vector<int64_t> order(n);
  if (scores.scalar_type() == at::kDouble) {  // no 32-bit key for it: take the comparison sort
    const at::Tensor sorted = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
    std::memcpy(order.data(), sorted.data_ptr<int64_t>(), n * sizeof(int64_t));
    return order;
  }
  std::vector<uint32_t> keys(n);
  const at::Tensor scores_c = scores.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "nms_score_order_cpu", [&] {
    const scalar_t* s = scores_c.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) {
      keys[i] = ~float_sort_key(static_cast<float>(s[i]));  // complemented: descending
    }
  });
  const std::vector<int32_t> by_key = radix_argsort(keys);
  std::copy(by_key.begin(), by_key.end(), order.begin());
  return order;
}

at::Tensor nms_cpu(const at::Tensor& dets, const at::Tensor& scores, double iou_threshold) {
  TORCH_CHECK(dets.dim() == 2 && dets.size(1) == 4, "nms: dets must be (N, 4), got ", dets.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == dets.size(0), "nms: scores must be (N) with N = ",
              dets.size(0), ", got ", scores.sizes());
  TORCH_CHECK(dets.size(0) <= std::numeric_limits<int32_t>::max(), "nms: too many boxes: ", dets.size(0));
  if (dets.size(0) == 0) {
    return at::empty({0}, dets.options().dtype(at::kLong));
  }
  const at::Tensor dets_c = dets.contiguous();
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dets.scalar_type(), "nms_cpu", [&] {
    result = nms_cpu_typed<scalar_t>(dets_c, scores, iou_threshold);
  });
  return result;
}

TORCH_LIBRARY_IMPL(detzoo, CPU, m) {
  m.impl("nms", &nms_cpu);
}

}  // namespace detzoo
