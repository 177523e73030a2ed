// CPU kernels of rotated ROIAlign (see roi_align_rotated.h for the op's definition).
//
// A rotated sample grid does not factor by axis as the upright one does (roi_align_cpu.cpp), so
// each box gets a table, built once for all channels, of the pixels every output bin reads and
// their summed bilinear weights (with adaptive sampling, neighbouring samples share most of
// their four pixels, so merging shrinks the table several times). Each channel is then a
// weighted sum per bin. The forward pass runs in parallel over (channel, box) pairs in plane
// order; the backward pass in parallel over the (image, channel) planes of the input gradient,
// one writer per plane, so it needs no atomics and does not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <type_traits>
#include <utility>
#include <vector>

#include "roi_align_rotated/roi_align_rotated.h"

namespace detzoo {
namespace {

using roi_align_detail::check_batch_indices;
using roi_align_detail::linear_taps;
using roi_align_detail::sample_coord;
using roi_align_rotated_detail::rotate_to_image;
using roi_align_rotated_detail::rotated_box_geometry;

// A pixel (y * W + x) of the feature plane and its summed weight.
template <typename acc_t>
struct PixelTap {
  int32_t pixel;
  acc_t weight;
};

// What pooling one box needs, shared by all its channels: bin b reads taps [begin[b], begin[b + 1]).
template <typename acc_t>
struct RotatedBoxWeights {
  int64_t image = 0;
  std::vector<int32_t> begin;
  std::vector<PixelTap<acc_t>> taps;
};

struct PoolShape {
  int64_t channels, height, width, pooled_height, pooled_width, sampling_ratio;
};

// Collects the bilinear taps of one bin, then merges the taps of each pixel into one.
template <typename acc_t>
class BinTaps {
 public:
  void clear() {
    taps_.clear();
    y_min_ = x_min_ = std::numeric_limits<int64_t>::max();
    y_max_ = x_max_ = -1;
  }

  // Adds the sample at (y, x) with weight `scale`; samples outside the map add nothing.
  void add_sample(acc_t y, acc_t x, int64_t height, int64_t width, acc_t scale) {
    int64_t y_low = 0, y_high = 0, x_low = 0, x_high = 0;
    acc_t wy_low = 0, wy_high = 0, wx_low = 0, wx_high = 0;
    if (!linear_taps(y, height, &y_low, &y_high, &wy_low, &wy_high) ||
        !linear_taps(x, width, &x_low, &x_high, &wx_low, &wx_high)) {
      return;
    }
    wy_low *= scale;
    wy_high *= scale;
    add(y_low, x_low, wy_low * wx_low);
    add(y_low, x_high, wy_low * wx_high);
    add(y_high, x_low, wy_high * wx_low);
    add(y_high, x_high, wy_high * wx_high);
  }

  // Appends the merged taps, in increasing pixel order, to `out`.
  void merge_into(int64_t width, std::vector<PixelTap<acc_t>>& out) {
    if (taps_.empty()) {
      return;
    }
    const int64_t rows = y_max_ - y_min_ + 1, cols = x_max_ - x_min_ + 1;
    if (rows * cols <= 2 * static_cast<int64_t>(taps_.size()) + 64) {
      merge_dense(rows, cols, width, out);
    } else {
      merge_sorted(width, out);
    }
  }

 private:
  struct Entry {
    int64_t y, x;
    acc_t weight;
  };

  void add(int64_t y, int64_t x, acc_t weight) {
    taps_.push_back({y, x, weight});
    y_min_ = std::min(y_min_, y);
    y_max_ = std::max(y_max_, y);
    x_min_ = std::min(x_min_, x);
    x_max_ = std::max(x_max_, x);
  }

  // Dense bins (the common case): sum into the bin's bounding rectangle.
  void merge_dense(int64_t rows, int64_t cols, int64_t width, std::vector<PixelTap<acc_t>>& out) {
    dense_.assign(rows * cols, acc_t(0));
    touched_.assign(rows * cols, 0);
    for (const auto& t : taps_) {
      const int64_t cell = (t.y - y_min_) * cols + (t.x - x_min_);
      dense_[cell] += t.weight;
      touched_[cell] = 1;
    }
    for (int64_t cell = 0; cell < rows * cols; ++cell) {
      if (touched_[cell]) {
        const int64_t pixel = (y_min_ + cell / cols) * width + x_min_ + cell % cols;
        out.push_back({static_cast<int32_t>(pixel), dense_[cell]});
      }
    }
  }

  // Sparse bins (few samples spread over a large area): sort by pixel, then sum runs.
  void merge_sorted(int64_t width, std::vector<PixelTap<acc_t>>& out) {
    std::stable_sort(taps_.begin(), taps_.end(),
                     [](const Entry& a, const Entry& b) { return a.y != b.y ? a.y < b.y : a.x < b.x; });
    const size_t first = out.size();
    for (const auto& t : taps_) {
      const auto pixel = static_cast<int32_t>(t.y * width + t.x);
      if (out.size() > first && out.back().pixel == pixel) {
        out.back().weight += t.weight;
      } else {
        out.push_back({pixel, t.weight});
      }
    }
  }

  std::vector<Entry> taps_;
  std::vector<acc_t> dense_;
  std::vector<char> touched_;
  int64_t y_min_ = 0, y_max_ = -1, x_min_ = 0, x_max_ = -1;
};

template <typename scalar_t, typename acc_t>
void rotated_box_weights(const scalar_t* roi, acc_t spatial_scale, const PoolShape& s, BinTaps<acc_t>& bin,
                         RotatedBoxWeights<acc_t>& box) {
  const auto g = rotated_box_geometry<acc_t>(roi, spatial_scale, s.pooled_height, s.pooled_width,
                                             s.sampling_ratio);
  const acc_t inv_count = acc_t(1) / static_cast<acc_t>(std::max<int64_t>(g.grid_h * g.grid_w, 1));
  box.image = static_cast<int64_t>(static_cast<acc_t>(roi[0]));
  box.begin.assign(1, 0);
  box.taps.clear();
  for (int64_t ph = 0; ph < s.pooled_height; ++ph) {
    for (int64_t pw = 0; pw < s.pooled_width; ++pw) {
      bin.clear();
      for (int64_t iy = 0; iy < g.grid_h; ++iy) {
        const acc_t dy = sample_coord(g.start_y, g.bin_h, ph, iy, g.grid_h);
        for (int64_t ix = 0; ix < g.grid_w; ++ix) {
          const acc_t dx = sample_coord(g.start_x, g.bin_w, pw, ix, g.grid_w);
          acc_t y = 0, x = 0;
          rotate_to_image(g, dy, dx, &y, &x);
          bin.add_sample(y, x, s.height, s.width, inv_count);
        }
      }
      bin.merge_into(s.width, box.taps);
      box.begin.push_back(static_cast<int32_t>(box.taps.size()));
    }
  }
}

template <typename scalar_t, typename acc_t>
std::vector<RotatedBoxWeights<acc_t>> all_box_weights(const scalar_t* rois, int64_t num_rois,
                                                      double spatial_scale, const PoolShape& s) {
  std::vector<RotatedBoxWeights<acc_t>> boxes(num_rois);
  at::parallel_for(0, num_rois, 16, [&](int64_t begin, int64_t end) {
    BinTaps<acc_t> bin;
    for (int64_t r = begin; r < end; ++r) {
      rotated_box_weights<scalar_t, acc_t>(rois + 6 * r, static_cast<acc_t>(spatial_scale), s, bin, boxes[r]);
    }
  });
  return boxes;
}

// Box indices grouped by image and, within an image, by the first pixel they read, so that
// consecutive boxes read nearby parts of a plane while those are still in cache.
template <typename acc_t>
std::vector<int64_t> boxes_in_plane_order(const std::vector<RotatedBoxWeights<acc_t>>& boxes) {
  const auto first_pixel = [&](int64_t r) { return boxes[r].taps.empty() ? 0 : boxes[r].taps.front().pixel; };
  std::vector<int64_t> order(boxes.size());
  std::iota(order.begin(), order.end(), int64_t(0));
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return boxes[a].image != boxes[b].image ? boxes[a].image < boxes[b].image : first_pixel(a) < first_pixel(b);
  });
  return order;
}

int64_t grain_for(int64_t work) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(work, 1));
}

template <typename scalar_t>
void forward_impl(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, const PoolShape& s,
                  at::Tensor& output) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t num_rois = rois.size(0);
  const auto boxes = all_box_weights<scalar_t, acc_t>(rois.const_data_ptr<scalar_t>(), num_rois, spatial_scale, s);
  const auto order = boxes_in_plane_order(boxes);
  const int64_t plane_size = s.height * s.width;
  const int64_t bins = s.pooled_height * s.pooled_width;
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, s.channels * num_rois, grain_for(16 * bins), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t channel = item / num_rois, r = order[item % num_rois];
      const auto& box = boxes[r];
      const scalar_t* plane = in + (box.image * s.channels + channel) * plane_size;
      scalar_t* box_out = out + (r * s.channels + channel) * bins;
      for (int64_t b = 0; b < bins; ++b) {
        acc_t sum = 0;
        for (int32_t t = box.begin[b]; t < box.begin[b + 1]; ++t) {
          sum += box.taps[t].weight * static_cast<acc_t>(plane[box.taps[t].pixel]);
        }
        box_out[b] = static_cast<scalar_t>(sum);
      }
    }
  });
}

template <typename scalar_t>
void backward_impl(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale, int64_t batch_size,
                   const PoolShape& s, at::Tensor& grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kAccumulateInPlace = std::is_same_v<scalar_t, acc_t>;
  const int64_t num_rois = rois.size(0);
  const auto boxes = all_box_weights<scalar_t, acc_t>(rois.const_data_ptr<scalar_t>(), num_rois, spatial_scale, s);
  const auto order = boxes_in_plane_order(boxes);
  // Boxes of image n are order[image_begin[n], image_begin[n + 1]).
  std::vector<int64_t> image_begin(batch_size + 1, 0);
  for (const auto& box : boxes) {
    ++image_begin[box.image + 1];
  }
  std::partial_sum(image_begin.begin(), image_begin.end(), image_begin.begin());
  const int64_t plane_size = s.height * s.width;
  const int64_t stride_roi = grad.stride(0), stride_c = grad.stride(1);
  const int64_t stride_h = grad.stride(2), stride_w = grad.stride(3);
  const scalar_t* grad_ptr = grad.const_data_ptr<scalar_t>();
  scalar_t* grad_input_ptr = grad_input.mutable_data_ptr<scalar_t>();
  const int64_t work = 16 * num_rois * s.pooled_height * s.pooled_width / std::max<int64_t>(batch_size, 1);
  at::parallel_for(0, batch_size * s.channels, grain_for(work), [&](int64_t begin, int64_t end) {
    // Reduced-precision gradients are summed in a float plane, rounded once at the end.
    std::vector<acc_t> plane_sum(kAccumulateInPlace ? 0 : plane_size);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t image = plane / s.channels, channel = plane % s.channels;
      scalar_t* out = grad_input_ptr + plane * plane_size;
      acc_t* target = nullptr;
      if constexpr (kAccumulateInPlace) {
        target = out;
      } else {
        std::fill(plane_sum.begin(), plane_sum.end(), acc_t(0));
        target = plane_sum.data();
      }
      for (int64_t k = image_begin[image]; k < image_begin[image + 1]; ++k) {
        const int64_t r = order[k];
        const auto& box = boxes[r];
        const scalar_t* box_grad = grad_ptr + r * stride_roi + channel * stride_c;
        for (int64_t ph = 0; ph < s.pooled_height; ++ph) {
          for (int64_t pw = 0; pw < s.pooled_width; ++pw) {
            const int64_t b = ph * s.pooled_width + pw;
            const acc_t g = static_cast<acc_t>(box_grad[ph * stride_h + pw * stride_w]);
            for (int32_t t = box.begin[b]; t < box.begin[b + 1]; ++t) {
              target[box.taps[t].pixel] += box.taps[t].weight * g;
            }
          }
        }
      }
      if constexpr (!kAccumulateInPlace) {
        std::transform(plane_sum.begin(), plane_sum.end(), out, [](acc_t v) { return static_cast<scalar_t>(v); });
      }
    }
  });
}

// Pixels are stored as int32 (y * W + x) to keep the per-box tables small.
void check_plane_size(int64_t height, int64_t width, const char* op) {
  TORCH_CHECK(height * width < std::numeric_limits<int32_t>::max(), op, ": feature maps of ", height, " x ",
              width, " pixels are too large");
}

}  // namespace

at::Tensor roi_align_rotated_forward_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                         int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio) {
  roi_align_detail::check_roi_arguments(input, "input", rois, 6, "roi_align_rotated");
  roi_align_detail::check_pooled_size(pooled_height, pooled_width, "roi_align_rotated");
  TORCH_CHECK(input.device().is_cpu(), "roi_align_rotated: expected CPU tensors, got ", input.device());
  check_plane_size(input.size(2), input.size(3), "roi_align_rotated");
  const PoolShape shape{input.size(1), input.size(2), input.size(3), pooled_height, pooled_width, sampling_ratio};
  at::Tensor output = at::empty({rois.size(0), shape.channels, pooled_height, pooled_width}, input.options());
  if (output.numel() == 0) {
    return output;
  }
  const at::Tensor input_c = input.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_rotated_forward_cpu", [&] {
    const scalar_t* rois_ptr = rois_c.const_data_ptr<scalar_t>();
    check_batch_indices(rois_ptr, rois_c.size(0), 6, input.size(0), "roi_align_rotated");
    roi_align_rotated_detail::check_box_sizes(rois_ptr, rois_c.size(0), spatial_scale, "roi_align_rotated");
    forward_impl<scalar_t>(input_c, rois_c, spatial_scale, shape, output);
  });
  return output;
}

at::Tensor roi_align_rotated_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                          int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                          int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio) {
  const char* op = "_roi_align_rotated_backward";
  roi_align_detail::check_roi_arguments(grad, "grad", rois, 6, op);
  TORCH_CHECK(grad.device().is_cpu(), op, ": expected CPU tensors, got ", grad.device());
  check_plane_size(height, width, op);
  TORCH_CHECK(grad.sizes() == at::IntArrayRef({rois.size(0), channels, pooled_height, pooled_width}), op,
              ": grad must have shape (", rois.size(0), ", ", channels, ", ", pooled_height, ", ", pooled_width,
              "), got ", grad.sizes());
  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, grad.options());
  if (grad.numel() == 0 || grad_input.numel() == 0) {
    return grad_input;
  }
  const PoolShape shape{channels, height, width, pooled_height, pooled_width, sampling_ratio};
  const at::Tensor rois_c = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_rotated_backward_cpu", [&] {
    const scalar_t* rois_ptr = rois_c.const_data_ptr<scalar_t>();
    check_batch_indices(rois_ptr, rois_c.size(0), 6, batch_size, op);
    roi_align_rotated_detail::check_box_sizes(rois_ptr, rois_c.size(0), spatial_scale, op);
    backward_impl<scalar_t>(grad, rois_c, spatial_scale, batch_size, shape, grad_input);
  });
  return grad_input;
}

TORCH_LIBRARY_IMPL(detzoo, CPU, m) {
  m.impl("roi_align_rotated", &roi_align_rotated_forward_cpu);
  m.impl("_roi_align_rotated_backward", &roi_align_rotated_backward_cpu);
}

}  // namespace detzoo
