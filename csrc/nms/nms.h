// Non-maximum suppression of axis-aligned boxes (detzoo::nms), and what the CPU and CUDA
// kernels of nms and nms_rotated share.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <vector>

namespace detzoo {

// dets (N, 4) XYXY, scores (N), any floating dtypes -> int64 indices of the kept boxes, by
// decreasing score (ties in the order of the input). A box is suppressed by a kept,
// higher-scoring box when their IoU is strictly greater than iou_threshold.
at::Tensor nms_cpu(const at::Tensor& dets, const at::Tensor& scores, double iou_threshold);

// Positions of scores (N), any floating dtype, by decreasing score, ties in input order: the
// order of scores.sort(stable=true, descending=true), NaN first, computed faster (radix sort).
std::vector<int64_t> nms_score_order_cpu(const at::Tensor& scores);

// Positions 0..n-1 of `keys` by increasing value, ties in position order (radix sort).
std::vector<int32_t> nms_ascending_order_cpu(const float* keys, int64_t n);

#ifdef DETZOO_WITH_CUDA
at::Tensor nms_cuda(const at::Tensor& dets, const at::Tensor& scores, double iou_threshold);

// The greedy pass of the blocked-bitmask NMS, on the device. `mask` is int64 (N, ceil(N / 64)):
// bit b of word w in row i is set when box i (in score order) overlaps box 64 * w + b above the
// threshold; only words w >= i / 64 are read. Returns bool (N): whether each box is kept.
at::Tensor nms_keep_from_mask_cuda(const at::Tensor& mask, int64_t num_boxes);
#endif

// The threshold as a T that decides like the double one: for every T x,
// (x > result) == (static_cast<double>(x) > threshold). Rounding 0.3 to float rounds up, so a
// float IoU equal to float(0.3) is not above 0.3; stepping down one ulp keeps that so.
template <typename T>
inline T threshold_in(double threshold) {
  T rounded = static_cast<T>(threshold);
  if (static_cast<double>(rounded) > threshold) {
    rounded = std::nextafter(rounded, -std::numeric_limits<T>::infinity());
  }
  return rounded;
}

}  // namespace detzoo
