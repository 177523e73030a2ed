// Non-maximum suppression of rotated boxes (detzoo::nms_rotated).
#pragma once

#include <ATen/ATen.h>

namespace detzoo {

// dets (N, 5) [x_ctr, y_ctr, width, height, angle_degrees], scores (N) -> int64 indices of the
// kept boxes by decreasing score (ties in input order). A box is suppressed by a kept,
// higher-scoring box when their rotated IoU is strictly greater than iou_threshold.
at::Tensor nms_rotated_cpu(const at::Tensor& dets, const at::Tensor& scores, double iou_threshold);

#ifdef DETZOO_WITH_CUDA
at::Tensor nms_rotated_cuda(const at::Tensor& dets, const at::Tensor& scores, double iou_threshold);
#endif

}  // namespace detzoo
