// Pairwise IoU of rotated boxes (detzoo::box_iou_rotated).
#pragma once

#include <ATen/ATen.h>

namespace detzoo {

// boxes1 (N, 5), boxes2 (M, 5) [x_ctr, y_ctr, width, height, angle_degrees], same floating
// dtype -> IoU (N, M) in that dtype (computed in float for half / bfloat16).
at::Tensor box_iou_rotated_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2);

#ifdef DETZOO_WITH_CUDA
at::Tensor box_iou_rotated_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2);
#endif

}  // namespace detzoo
