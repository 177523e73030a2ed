// ROIAlign (He et al., Mask R-CNN): each output bin of a box is the average of a regular grid
// of bilinear samples of the feature map. Boxes are (R, 5) rows [batch_index, x1, y1, x2, y2] in
// input-image coordinates; `spatial_scale` maps them onto the feature map. With `aligned`, box
// coordinates are shifted by -0.5 so that pixel centres sit at integer + 0.5 (Detectron2's
// ROIAlignV2); without it, boxes are also widened to at least one pixel (the legacy rule).
//
// The per-axis sampling rules below are shared by the CPU and CUDA kernels of this op and of
// the rotated variant (csrc/roi_align_rotated/), so every kernel samples identically.
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace detzoo {

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                 int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                                 bool aligned);

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                  int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio,
                                  bool aligned);

#ifdef DETZOO_WITH_CUDA
at::Tensor roi_align_forward_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                                  bool aligned);

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                   int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                   int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio,
                                   bool aligned);
#endif

namespace roi_align_detail {

// Linear interpolation along one axis of `size` pixels at continuous coordinate `coord`.
// Returns false when the sample lies outside [-1, size] (it then contributes nothing, NaN
// included since every comparison with NaN fails); otherwise sets the two neighbouring pixel
// indices and their weights. Coordinates in [-1, 0] read pixel 0 and coordinates past the last
// pixel read the last pixel, with full weight: the border rule of Caffe2's and torchvision's
// ROIAlign, which Detectron2 inherits. A bilinear sample is the product of two such taps.
template <typename T>
C10_HOST_DEVICE inline bool linear_taps(T coord, int64_t size, int64_t* low, int64_t* high, T* w_low,
                                        T* w_high) {
  if (size <= 0 || !(coord >= T(-1) && coord <= static_cast<T>(size))) {
    return false;
  }
  if (coord < T(0)) {
    coord = T(0);
  }
  const int64_t below = static_cast<int64_t>(coord);
  if (below >= size - 1) {
    *low = *high = size - 1;
    *w_low = T(1);
    *w_high = T(0);
    return true;
  }
  *low = below;
  *high = below + 1;
  *w_high = coord - static_cast<T>(below);
  *w_low = T(1) - *w_high;
  return true;
}

// Samples per bin along one axis: `sampling_ratio` when positive, else adaptive, one sample per
// (started) pixel of the bin: ceil(extent / bins). Never negative; capped so that an absurd box
// cannot overflow the integer conversion.
template <typename T>
C10_HOST_DEVICE inline int64_t samples_per_bin(int64_t sampling_ratio, T extent, int64_t bins) {
  if (sampling_ratio > 0) {
    return sampling_ratio;
  }
  const double adaptive = ceil(static_cast<double>(extent / static_cast<T>(bins)));
  if (!(adaptive > 0)) {
    return 0;
  }
  return adaptive < 1e9 ? static_cast<int64_t>(adaptive) : static_cast<int64_t>(1e9);
}

// Coordinate of sample `i` of `grid` in bin `bin` of a box axis that starts at `start` with bins
// of `bin_size`. Evaluated in this order so that float inputs sample exactly where torchvision's
// kernels do (a sample sitting on a pixel border then takes the same neighbours).
template <typename T>
C10_HOST_DEVICE inline T sample_coord(T start, T bin_size, int64_t bin, int64_t i, int64_t grid) {
  return start + static_cast<T>(bin) * bin_size +
         static_cast<T>(static_cast<float>(i) + 0.5f) * bin_size / static_cast<T>(grid);
}

// Box geometry on the feature map, as ROIAlign defines it.
template <typename T>
struct BoxGeometry {
  T start_y, start_x, bin_h, bin_w;
  int64_t grid_h, grid_w;
};

template <typename T, typename roi_t>
C10_HOST_DEVICE inline BoxGeometry<T> box_geometry(const roi_t* roi, T spatial_scale, int64_t pooled_height,
                                                   int64_t pooled_width, int64_t sampling_ratio,
                                                   bool aligned) {
  const T offset = aligned ? T(0.5) : T(0);
  BoxGeometry<T> g;
  g.start_x = static_cast<T>(roi[1]) * spatial_scale - offset;
  g.start_y = static_cast<T>(roi[2]) * spatial_scale - offset;
  T width = static_cast<T>(roi[3]) * spatial_scale - offset - g.start_x;
  T height = static_cast<T>(roi[4]) * spatial_scale - offset - g.start_y;
  if (!aligned) {
    width = width > T(1) ? width : T(1);
    height = height > T(1) ? height : T(1);
  }
  g.bin_h = height / static_cast<T>(pooled_height);
  g.bin_w = width / static_cast<T>(pooled_width);
  g.grid_h = samples_per_bin(sampling_ratio, height, pooled_height);
  g.grid_w = samples_per_bin(sampling_ratio, width, pooled_width);
  return g;
}

// Host-side checks shared by the kernels of both ops (the Python wrappers give friendlier
// errors; these guard direct torch.ops.detzoo.* calls). `columns` is 5 or 6.
inline void check_roi_arguments(const at::Tensor& features, const char* features_name, const at::Tensor& rois,
                                int64_t columns, const char* op) {
  TORCH_CHECK(features.dim() == 4, op, ": ", features_name, " must be 4-D (N, C, H, W), got ",
              features.dim(), "-D");
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == columns, op, ": rois must have shape (R, ", columns,
              "), got ", rois.sizes());
  TORCH_CHECK(features.scalar_type() == rois.scalar_type(), op, ": rois must have the dtype of ",
              features_name, " (", features.scalar_type(), "), got ", rois.scalar_type());
  TORCH_CHECK(features.device() == rois.device(), op, ": rois must be on the device of ", features_name,
              " (", features.device(), "), got ", rois.device());
}

inline void check_pooled_size(int64_t pooled_height, int64_t pooled_width, const char* op) {
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0, op, ": pooled size must be positive, got (",
              pooled_height, ", ", pooled_width, ")");
}

// Every rois[i, 0] must index an image of the batch (a wrong one would read out of bounds).
// Checked on the host by the CPU kernels; the CUDA kernels assert it on the device.
template <typename scalar_t>
void check_batch_indices(const scalar_t* rois, int64_t num_rois, int64_t columns, int64_t batch_size,
                         const char* op) {
  for (int64_t i = 0; i < num_rois; ++i) {
    const double index = static_cast<double>(rois[i * columns]);
    TORCH_CHECK_INDEX(index >= 0 && index < static_cast<double>(batch_size), op, ": rois[", i,
                      ", 0] = ", index, " is not the index of an image in a batch of ", batch_size);
  }
}

}  // namespace roi_align_detail
}  // namespace detzoo
