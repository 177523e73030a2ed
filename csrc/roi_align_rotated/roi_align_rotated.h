// Rotated ROIAlign (Detectron2's ROIAlignRotated, used by rotated Faster R-CNN / RRPN): ROIAlign
// over boxes (R, 6) rows [batch_index, x_center, y_center, width, height, angle], the angle in
// degrees, counter-clockwise in image coordinates (y down). The sample grid of each bin is laid
// out in the box's frame and rotated about the box centre; samples are bilinear with the same
// border rule as ROIAlign (roi_align/roi_align.h). Like Detectron2 there is no legacy mode: the
// centre always takes the -0.5 pixel shift and boxes are not widened.
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

#include "roi_align/roi_align.h"

namespace detzoo {

at::Tensor roi_align_rotated_forward_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                         int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio);

at::Tensor roi_align_rotated_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                          int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                          int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio);

#ifdef DETZOO_WITH_CUDA
at::Tensor roi_align_rotated_forward_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                          int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio);

at::Tensor roi_align_rotated_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                           int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                           int64_t channels, int64_t height, int64_t width,
                                           int64_t sampling_ratio);
#endif

namespace roi_align_rotated_detail {

// Box geometry on the feature map. Sample offsets are measured from the box centre along the
// box's own axes, starting at (start_y, start_x) = (-height / 2, -width / 2).
template <typename T>
struct RotatedBoxGeometry {
  T center_y, center_x, start_y, start_x, bin_h, bin_w, cos_angle, sin_angle;
  int64_t grid_h, grid_w;
};

template <typename T, typename roi_t>
C10_HOST_DEVICE inline RotatedBoxGeometry<T> rotated_box_geometry(const roi_t* roi, T spatial_scale,
                                                                  int64_t pooled_height, int64_t pooled_width,
                                                                  int64_t sampling_ratio) {
  constexpr double kRadiansPerDegree = 3.14159265358979323846 / 180.0;
  RotatedBoxGeometry<T> g;
  g.center_x = static_cast<T>(roi[1]) * spatial_scale - T(0.5);
  g.center_y = static_cast<T>(roi[2]) * spatial_scale - T(0.5);
  const T width = static_cast<T>(roi[3]) * spatial_scale;
  const T height = static_cast<T>(roi[4]) * spatial_scale;
  const T angle = static_cast<T>(static_cast<double>(roi[5]) * kRadiansPerDegree);
  g.cos_angle = static_cast<T>(cos(static_cast<double>(angle)));
  g.sin_angle = static_cast<T>(sin(static_cast<double>(angle)));
  g.start_y = -height / T(2);
  g.start_x = -width / T(2);
  g.bin_h = height / static_cast<T>(pooled_height);
  g.bin_w = width / static_cast<T>(pooled_width);
  g.grid_h = roi_align_detail::samples_per_bin(sampling_ratio, height, pooled_height);
  g.grid_w = roi_align_detail::samples_per_bin(sampling_ratio, width, pooled_width);
  return g;
}

// Image coordinates (y, x) of the sample at box-frame offsets (dy, dx): the offset rotated
// counter-clockwise by the box angle, then moved to the box centre.
template <typename T>
C10_HOST_DEVICE inline void rotate_to_image(const RotatedBoxGeometry<T>& g, T dy, T dx, T* y, T* x) {
  *y = dy * g.cos_angle - dx * g.sin_angle + g.center_y;
  *x = dy * g.sin_angle + dx * g.cos_angle + g.center_x;
}

// Detectron2 rejects boxes of negative size (after scaling); checked on the host by the CPU
// kernels, as Detectron2 does (its CUDA kernel does not check either).
template <typename scalar_t>
void check_box_sizes(const scalar_t* rois, int64_t num_rois, double spatial_scale, const char* op) {
  for (int64_t i = 0; i < num_rois; ++i) {
    const double width = static_cast<double>(rois[i * 6 + 3]) * spatial_scale;
    const double height = static_cast<double>(rois[i * 6 + 4]) * spatial_scale;
    TORCH_CHECK(width >= 0 && height >= 0, op, ": rois[", i, "] has width ", rois[i * 6 + 3], " and height ",
                rois[i * 6 + 4], "; both must be non-negative");
  }
}

}  // namespace roi_align_rotated_detail
}  // namespace detzoo
