// CPU kernels of ROIAlign (see roi_align.h for the op's definition).
//
// For an axis-aligned box the samples of a bin form a Cartesian grid and a bilinear weight is a
// row weight times a column weight, so a bin's average factors as
//     sum_y wy(y) * sum_x wx(x) * input[y][x].
// Per box we therefore precompute once, for all channels, the merged row and column weights of
// every bin (a pixel read by several samples becomes one entry). Each channel then costs one pass
// over the rows the box reads, taking dot products with the column weights of every output
// column, plus a small weighted sum of those rows per output row: far fewer memory reads than
// four gathers per sample, above all with adaptive sampling, where the samples of a bin crowd
// onto the same pixels. The forward pass runs in parallel over (channel, box) pairs.
//
// The backward pass is the transpose of the same two stages. It runs in parallel over the
// (image, channel) planes of the input gradient: each plane has a single writer, so there are
// no atomics and the result does not depend on the number of threads.
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

#include "roi_align/roi_align.h"

namespace detzoo {
namespace {

using roi_align_detail::box_geometry;
using roi_align_detail::check_batch_indices;
using roi_align_detail::linear_taps;
using roi_align_detail::sample_coord;

// One merged tap: a pixel index (a row position or a column) and its summed weight.
template <typename acc_t>
struct Tap {
  int32_t index;
  acc_t weight;
};

// What pooling one box needs, shared by all its channels. It is re-read for every channel, so it
// is packed into two arrays:
//   layout: where the taps of each output row start (pooled_height + 1 values), where those of
//           each output column start (pooled_width + 1), then the distinct input rows the box
//           reads, increasing;
//   taps:   the row taps (index: position in that list of rows; the weights carry the
//           1 / samples-per-bin factor), then the column taps (index: input column).
template <typename acc_t>
struct BoxWeights {
  int64_t image = 0;
  int64_t num_rows = 0;
  std::vector<int32_t> layout;
  std::vector<Tap<acc_t>> taps;
};

// Read-only view of a BoxWeights for the pooling loops.
template <typename acc_t>
struct BoxView {
  const int32_t* row_taps_begin;
  const int32_t* column_taps_begin;
  const int32_t* rows;
  int64_t num_rows;
  const Tap<acc_t>* taps;

  BoxView(const BoxWeights<acc_t>& box, int64_t pooled_height, int64_t pooled_width)
      : row_taps_begin(box.layout.data()),
        column_taps_begin(box.layout.data() + pooled_height + 1),
        rows(box.layout.data() + pooled_height + pooled_width + 2),
        num_rows(box.num_rows),
        taps(box.taps.data()) {}
};

// The taps of the bins of one box along one axis, while they are built: bin b holds taps
// [begin[b], begin[b + 1]).
template <typename acc_t>
struct AxisTaps {
  std::vector<int32_t> begin;
  std::vector<Tap<acc_t>> taps;
  std::vector<std::pair<int32_t, acc_t>> samples;  // scratch: taps of one bin before merging

  void clear() {
    begin.assign(1, 0);
    taps.clear();
  }

  // Appends a bin: the linear taps of its `grid` samples, scaled by `scale`, with the taps that
  // read the same pixel summed into one.
  void append_bin(acc_t start, acc_t bin_size, int64_t bin, int64_t grid, int64_t size, acc_t scale) {
    samples.clear();
    for (int64_t i = 0; i < grid; ++i) {
      int64_t low = 0, high = 0;
      acc_t w_low = 0, w_high = 0;
      if (linear_taps(sample_coord(start, bin_size, bin, i, grid), size, &low, &high, &w_low, &w_high)) {
        samples.emplace_back(static_cast<int32_t>(low), w_low * scale);
        samples.emplace_back(static_cast<int32_t>(high), w_high * scale);
      }
    }
    // Samples come in increasing order unless the box has a negative size.
    const auto by_pixel = [](const auto& a, const auto& b) { return a.first < b.first; };
    if (!std::is_sorted(samples.begin(), samples.end(), by_pixel)) {
      std::stable_sort(samples.begin(), samples.end(), by_pixel);
    }
    const auto bin_begin = static_cast<size_t>(begin.back());
    for (const auto& [pixel, w] : samples) {
      if (taps.size() > bin_begin && taps.back().index == pixel) {
        taps.back().weight += w;
      } else {
        taps.push_back({pixel, w});
      }
    }
    begin.push_back(static_cast<int32_t>(taps.size()));
  }
};

// Packs the row and column taps of a box into `box` (see BoxWeights).
template <typename acc_t>
void pack_box(const AxisTaps<acc_t>& y, const AxisTaps<acc_t>& x, BoxWeights<acc_t>& box) {
  std::vector<int32_t> rows;
  rows.reserve(y.taps.size());
  for (const auto& tap : y.taps) {
    rows.push_back(tap.index);
  }
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  box.num_rows = static_cast<int64_t>(rows.size());

  const auto num_row_taps = static_cast<int32_t>(y.taps.size());
  box.layout.clear();
  box.layout.reserve(y.begin.size() + x.begin.size() + rows.size());
  box.layout.insert(box.layout.end(), y.begin.begin(), y.begin.end());
  for (const int32_t b : x.begin) {
    box.layout.push_back(b + num_row_taps);
  }
  box.layout.insert(box.layout.end(), rows.begin(), rows.end());

  box.taps.clear();
  box.taps.reserve(y.taps.size() + x.taps.size());
  for (const auto& tap : y.taps) {
    const auto position = std::lower_bound(rows.begin(), rows.end(), tap.index) - rows.begin();
    box.taps.push_back({static_cast<int32_t>(position), tap.weight});
  }
  box.taps.insert(box.taps.end(), x.taps.begin(), x.taps.end());
}

struct PoolShape {
  int64_t channels, height, width, pooled_height, pooled_width, sampling_ratio;
  bool aligned;
};

template <typename scalar_t, typename acc_t>
void box_weights(const scalar_t* roi, acc_t spatial_scale, const PoolShape& s, AxisTaps<acc_t>& y,
                 AxisTaps<acc_t>& x, BoxWeights<acc_t>& box) {
  const auto g = box_geometry<acc_t>(roi, spatial_scale, s.pooled_height, s.pooled_width, s.sampling_ratio,
                                     s.aligned);
  const acc_t inv_count = acc_t(1) / static_cast<acc_t>(std::max<int64_t>(g.grid_h * g.grid_w, 1));
  y.clear();
  for (int64_t ph = 0; ph < s.pooled_height; ++ph) {
    y.append_bin(g.start_y, g.bin_h, ph, g.grid_h, s.height, inv_count);
  }
  x.clear();
  for (int64_t pw = 0; pw < s.pooled_width; ++pw) {
    x.append_bin(g.start_x, g.bin_w, pw, g.grid_w, s.width, acc_t(1));
  }
  box.image = static_cast<int64_t>(static_cast<acc_t>(roi[0]));
  pack_box(y, x, box);
}

template <typename scalar_t, typename acc_t>
std::vector<BoxWeights<acc_t>> all_box_weights(const scalar_t* rois, int64_t num_rois, double spatial_scale,
                                               const PoolShape& s) {
  std::vector<BoxWeights<acc_t>> boxes(num_rois);
  at::parallel_for(0, num_rois, 64, [&](int64_t begin, int64_t end) {
    AxisTaps<acc_t> y, x;
    for (int64_t r = begin; r < end; ++r) {
      box_weights<scalar_t, acc_t>(rois + 5 * r, static_cast<acc_t>(spatial_scale), s, y, x, boxes[r]);
    }
  });
  return boxes;
}

template <typename acc_t>
int64_t max_rows(const std::vector<BoxWeights<acc_t>>& boxes) {
  int64_t most = 0;
  for (const auto& box : boxes) {
    most = std::max(most, box.num_rows);
  }
  return most;
}

// Box indices grouped by image and, within an image, ordered top to bottom, so that consecutive
// boxes read nearby rows of a plane while those are still in cache.
template <typename acc_t>
std::vector<int64_t> boxes_in_plane_order(const std::vector<BoxWeights<acc_t>>& boxes, int64_t pooled_height,
                                          int64_t pooled_width) {
  const auto top = [&](int64_t r) {
    const BoxView<acc_t> v(boxes[r], pooled_height, pooled_width);
    return v.num_rows > 0 ? v.rows[0] : 0;
  };
  std::vector<int64_t> order(boxes.size());
  for (size_t r = 0; r < boxes.size(); ++r) {
    order[r] = static_cast<int64_t>(r);
  }
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return boxes[a].image != boxes[b].image ? boxes[a].image < boxes[b].image : top(a) < top(b);
  });
  return order;
}

// Items per parallel chunk for items of about `work` multiply-adds each.
int64_t grain_for(int64_t work) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(work, 1));
}

// Pools one channel `plane` (H x W) of the image of `box` into `out` (pooled_height x
// pooled_width). `row_sums` holds box.num_rows x pooled_width values, `bin_row` pooled_width.
template <typename scalar_t, typename acc_t>
void pool_plane(const BoxView<acc_t>& box, const scalar_t* plane, const PoolShape& s, acc_t* row_sums,
                acc_t* bin_row, scalar_t* out) {
  const int64_t pooled_width = s.pooled_width;
  const Tap<acc_t>* taps = box.taps;
  for (int64_t r = 0; r < box.num_rows; ++r) {
    const scalar_t* row = plane + static_cast<int64_t>(box.rows[r]) * s.width;
    acc_t* sums = row_sums + r * pooled_width;
    for (int64_t pw = 0; pw < pooled_width; ++pw) {
      acc_t sum = 0;
      for (int32_t t = box.column_taps_begin[pw]; t < box.column_taps_begin[pw + 1]; ++t) {
        sum += taps[t].weight * static_cast<acc_t>(row[taps[t].index]);
      }
      sums[pw] = sum;
    }
  }
  for (int64_t ph = 0; ph < s.pooled_height; ++ph) {
    std::fill(bin_row, bin_row + pooled_width, acc_t(0));
    for (int32_t t = box.row_taps_begin[ph]; t < box.row_taps_begin[ph + 1]; ++t) {
      const acc_t w = taps[t].weight;
      const acc_t* sums = row_sums + static_cast<int64_t>(taps[t].index) * pooled_width;
      for (int64_t pw = 0; pw < pooled_width; ++pw) {
        bin_row[pw] += w * sums[pw];
      }
    }
    for (int64_t pw = 0; pw < pooled_width; ++pw) {
      out[ph * pooled_width + pw] = static_cast<scalar_t>(bin_row[pw]);
    }
  }
}

// Adds the gradient of one box and channel, `grad` (pooled_height x pooled_width with strides
// `stride_h`, `stride_w`), to the input-gradient `plane` (H x W). `row_grads` holds
// box.num_rows x pooled_width values.
template <typename scalar_t, typename acc_t>
void unpool_plane(const BoxView<acc_t>& box, const scalar_t* grad, int64_t stride_h, int64_t stride_w,
                  const PoolShape& s, acc_t* row_grads, acc_t* plane) {
  const int64_t pooled_width = s.pooled_width;
  const Tap<acc_t>* taps = box.taps;
  std::fill(row_grads, row_grads + box.num_rows * pooled_width, acc_t(0));
  for (int64_t ph = 0; ph < s.pooled_height; ++ph) {
    const scalar_t* grad_row = grad + ph * stride_h;
    for (int32_t t = box.row_taps_begin[ph]; t < box.row_taps_begin[ph + 1]; ++t) {
      const acc_t w = taps[t].weight;
      acc_t* target = row_grads + static_cast<int64_t>(taps[t].index) * pooled_width;
      for (int64_t pw = 0; pw < pooled_width; ++pw) {
        target[pw] += w * static_cast<acc_t>(grad_row[pw * stride_w]);
      }
    }
  }
  for (int64_t r = 0; r < box.num_rows; ++r) {
    acc_t* row = plane + static_cast<int64_t>(box.rows[r]) * s.width;
    const acc_t* source = row_grads + r * pooled_width;
    for (int64_t pw = 0; pw < pooled_width; ++pw) {
      const acc_t g = source[pw];
      for (int32_t t = box.column_taps_begin[pw]; t < box.column_taps_begin[pw + 1]; ++t) {
        row[taps[t].index] += taps[t].weight * g;
      }
    }
  }
}

template <typename scalar_t>
void forward_impl(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, const PoolShape& s,
                  at::Tensor& output) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t num_rois = rois.size(0);
  const auto boxes = all_box_weights<scalar_t, acc_t>(rois.const_data_ptr<scalar_t>(), num_rois, spatial_scale, s);
  const auto order = boxes_in_plane_order(boxes, s.pooled_height, s.pooled_width);
  const int64_t rows = max_rows(boxes);
  const int64_t plane_size = s.height * s.width;
  const int64_t bins = s.pooled_height * s.pooled_width;
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  // Items run channel by channel and, within a channel, in plane order, so that consecutive
  // items read the same feature plane while it is in cache (box-major order would stream every
  // box's region of all channels from memory).
  at::parallel_for(0, s.channels * num_rois, grain_for(4 * bins), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row_sums(rows * s.pooled_width), bin_row(s.pooled_width);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t channel = item / num_rois, r = order[item % num_rois];
      const BoxView<acc_t> box(boxes[r], s.pooled_height, s.pooled_width);
      const scalar_t* plane = in + (boxes[r].image * s.channels + channel) * plane_size;
      pool_plane(box, plane, s, row_sums.data(), bin_row.data(), out + (r * s.channels + channel) * bins);
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
  const auto order = boxes_in_plane_order(boxes, s.pooled_height, s.pooled_width);
  // Boxes of image n are order[image_begin[n], image_begin[n + 1]).
  std::vector<int64_t> image_begin(batch_size + 1, 0);
  for (const auto& box : boxes) {
    ++image_begin[box.image + 1];
  }
  std::partial_sum(image_begin.begin(), image_begin.end(), image_begin.begin());
  const int64_t rows = max_rows(boxes);
  const int64_t plane_size = s.height * s.width;
  const int64_t stride_roi = grad.stride(0), stride_c = grad.stride(1);
  const int64_t stride_h = grad.stride(2), stride_w = grad.stride(3);
  const scalar_t* grad_ptr = grad.const_data_ptr<scalar_t>();
  scalar_t* grad_input_ptr = grad_input.mutable_data_ptr<scalar_t>();
  const int64_t work = 4 * num_rois * s.pooled_height * s.pooled_width / std::max<int64_t>(batch_size, 1);
  at::parallel_for(0, batch_size * s.channels, grain_for(work), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row_grads(rows * s.pooled_width);
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
        const BoxView<acc_t> box(boxes[r], s.pooled_height, s.pooled_width);
        const scalar_t* box_grad = grad_ptr + r * stride_roi + channel * stride_c;
        unpool_plane(box, box_grad, stride_h, stride_w, s, row_grads.data(), target);
      }
      if constexpr (!kAccumulateInPlace) {
        std::transform(plane_sum.begin(), plane_sum.end(), out, [](acc_t v) { return static_cast<scalar_t>(v); });
      }
    }
  });
}

// Pixel indices are stored as int32 to keep the per-box tables small.
void check_plane_size(int64_t height, int64_t width, const char* op) {
  TORCH_CHECK(height < std::numeric_limits<int32_t>::max() && width < std::numeric_limits<int32_t>::max(), op,
              ": feature maps of ", height, " x ", width, " pixels are too large");
}

}  // namespace

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                 int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                                 bool aligned) {
  roi_align_detail::check_roi_arguments(input, "input", rois, 5, "roi_align");
  roi_align_detail::check_pooled_size(pooled_height, pooled_width, "roi_align");
  TORCH_CHECK(input.device().is_cpu(), "roi_align: expected CPU tensors, got ", input.device());
  check_plane_size(input.size(2), input.size(3), "roi_align");
  const PoolShape shape{input.size(1), input.size(2), input.size(3), pooled_height, pooled_width, sampling_ratio,
                        aligned};
  at::Tensor output = at::empty({rois.size(0), shape.channels, pooled_height, pooled_width}, input.options());
  if (output.numel() == 0) {
    return output;
  }
  const at::Tensor input_c = input.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_forward_cpu", [&] {
    check_batch_indices(rois_c.const_data_ptr<scalar_t>(), rois_c.size(0), 5, input.size(0), "roi_align");
    forward_impl<scalar_t>(input_c, rois_c, spatial_scale, shape, output);
  });
  return output;
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                  int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio,
                                  bool aligned) {
  roi_align_detail::check_roi_arguments(grad, "grad", rois, 5, "_roi_align_backward");
  TORCH_CHECK(grad.device().is_cpu(), "_roi_align_backward: expected CPU tensors, got ", grad.device());
  check_plane_size(height, width, "_roi_align_backward");
  TORCH_CHECK(grad.sizes() == at::IntArrayRef({rois.size(0), channels, pooled_height, pooled_width}),
              "_roi_align_backward: grad must have shape (", rois.size(0), ", ", channels, ", ", pooled_height,
              ", ", pooled_width, "), got ", grad.sizes());
  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, grad.options());
  if (grad.numel() == 0 || grad_input.numel() == 0) {
    return grad_input;
  }
  const PoolShape shape{channels, height, width, pooled_height, pooled_width, sampling_ratio, aligned};
  const at::Tensor rois_c = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cpu", [&] {
    check_batch_indices(rois_c.const_data_ptr<scalar_t>(), rois_c.size(0), 5, batch_size, "_roi_align_backward");
    backward_impl<scalar_t>(grad, rois_c, spatial_scale, batch_size, shape, grad_input);
  });
  return grad_input;
}

TORCH_LIBRARY_IMPL(detzoo, CPU, m) {
  m.impl("roi_align", &roi_align_forward_cpu);
  m.impl("_roi_align_backward", &roi_align_backward_cpu);
}

}  // namespace detzoo
