// CPU kernels of deformable convolution (deform_conv.h defines the op and drives the GEMMs).
//
// Where a sample lands depends on (image, offset group, tap, output position) but not on the
// channel: every channel of an offset group reads the same positions. So im2col and col2im first
// tabulate, per (image, offset group, tap) and output position, the four neighbouring pixels and
// their weights (mask folded in), then stream over the channels reading that table; the floor and
// bounds arithmetic runs once per position instead of once per channel.
//
// Every kernel is parallel without atomics, so results do not depend on the thread count:
// im2col over rows of the column matrix; col2im over the (image, channel) planes of the input
// gradient, each written by one task; col2im_coord over (image, offset group, tap), each task
// summing over its channels in private accumulators.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "deform_conv/deform_conv.h"

namespace detzoo {
namespace {

using deform_conv_detail::Geometry;
using deform_conv_detail::Neighbours;

// Work items per parallel chunk such that a chunk holds at least ~16k inner iterations.
int64_t grain_for(int64_t work_per_item) {
  constexpr int64_t kMinChunk = 1 << 14;
  return std::max<int64_t>(1, kMinChunk / std::max<int64_t>(work_per_item, 1));
}

// One sample as im2col reads it and col2im writes it: weight = bilinear weight * mask.
template <typename T>
struct Tap {
  int64_t index[4];
  T weight[4];
  bool inside;  // false: the sample is 0 (outside the plane) and receives no gradient
};

template <typename T>
const T* mask_data(const Geometry& g, const at::Tensor& mask) {
  return g.use_mask ? mask.const_data_ptr<T>() : nullptr;
}

// First offset-tensor row (the y offsets; x follows one plane later) and mask row of
// (image, offset group, tap), where image_group = image * offset_groups + group.
inline int64_t offset_row(const Geometry& g, int64_t image_group, int64_t tap) {
  return (image_group * g.taps() + tap) * 2 * g.out_plane();
}

inline int64_t mask_row(const Geometry& g, int64_t image_group, int64_t tap) {
  return (image_group * g.taps() + tap) * g.out_plane();
}

// The taps of images [first, first + count), laid out [(b * offset_groups + group) * taps + tap]
// [output position] with b relative to `first`.
template <typename T>
std::vector<Tap<T>> tabulate(const Geometry& g, const T* offset, const T* mask, int64_t first, int64_t count) {
  const int64_t plane = g.out_plane(), taps = g.taps();
  const int64_t rows = count * g.offset_groups * taps;
  std::vector<Tap<T>> table(rows * plane);
  at::parallel_for(0, rows, grain_for(plane), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t tap = row % taps, image_group = first * g.offset_groups + row / taps;
      const T* dy = offset + offset_row(g, image_group, tap);
      const T* dx = dy + plane;
      const T* m = mask != nullptr ? mask + mask_row(g, image_group, tap) : nullptr;
      Tap<T>* out = table.data() + row * plane;
      for (int64_t p = 0; p < plane; ++p) {
        T y, x;
        deform_conv_detail::tap_origin(g, tap, p, &y, &x);
        Neighbours<T> n;
        Tap<T>& t = out[p];
        t.inside = deform_conv_detail::neighbours(y + dy[p], x + dx[p], g.height, g.width, &n) && n.interior;
        const T scale = m != nullptr ? m[p] : T(1);
        for (int q = 0; q < 4; ++q) {
          t.index[q] = t.inside ? n.index[q] : 0;
          t.weight[q] = t.inside ? n.weight[q] * scale : T(0);
        }
      }
    }
  });
  return table;
}

template <typename T>
void im2col_impl(const Geometry& g, const T* input, const std::vector<Tap<T>>& table, int64_t first,
                 int64_t count, T* columns) {
  const int64_t plane = g.out_plane(), taps = g.taps(), channels_per_group = g.channels_per_offset_group();
  at::parallel_for(0, g.column_rows(), grain_for(count * plane), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t channel = row / taps, tap = row % taps, group = channel / channels_per_group;
      T* out = columns + row * count * plane;
      for (int64_t b = 0; b < count; ++b, out += plane) {
        const T* image = input + ((first + b) * g.channels + channel) * g.in_plane();
        const Tap<T>* t = table.data() + ((b * g.offset_groups + group) * taps + tap) * plane;
        for (int64_t p = 0; p < plane; ++p) {
          const Tap<T>& s = t[p];
          out[p] = s.inside ? s.weight[0] * image[s.index[0]] + s.weight[1] * image[s.index[1]] +
                                  s.weight[2] * image[s.index[2]] + s.weight[3] * image[s.index[3]]
                            : T(0);
        }
      }
    }
  });
}

template <typename T>
void col2im_impl(const Geometry& g, const T* columns, const std::vector<Tap<T>>& table, int64_t first,
                 int64_t count, T* grad_input) {
  const int64_t plane = g.out_plane(), taps = g.taps(), channels_per_group = g.channels_per_offset_group();
  at::parallel_for(0, count * g.channels, grain_for(taps * plane), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / g.channels, channel = item % g.channels, group = channel / channels_per_group;
      T* grad_image = grad_input + ((first + b) * g.channels + channel) * g.in_plane();
      for (int64_t tap = 0; tap < taps; ++tap) {
        const T* grad_column = columns + (channel * taps + tap) * count * plane + b * plane;
        const Tap<T>* t = table.data() + ((b * g.offset_groups + group) * taps + tap) * plane;
        for (int64_t p = 0; p < plane; ++p) {
          const Tap<T>& s = t[p];
          if (s.inside) {
            const T v = grad_column[p];
            for (int q = 0; q < 4; ++q) {
              grad_image[s.index[q]] += s.weight[q] * v;
            }
          }
        }
      }
    }
  });
}

// Output positions handled at once by col2im_coord: their neighbourhoods and accumulators stay in
// cache while the task streams over the channels.
constexpr int64_t kCoordBlock = 256;

template <typename T>
void col2im_coord_impl(const Geometry& g, const T* columns, const T* input, const T* offset, const T* mask,
                       int64_t first, int64_t count, T* grad_offset, T* grad_mask) {
  const int64_t plane = g.out_plane(), taps = g.taps(), channels_per_group = g.channels_per_offset_group();
  const int64_t rows = count * g.offset_groups * taps;
  at::parallel_for(0, rows, grain_for(channels_per_group * plane), [&](int64_t begin, int64_t end) {
    Neighbours<T> around[kCoordBlock];
    bool reached[kCoordBlock];
    T acc_y[kCoordBlock], acc_x[kCoordBlock], acc_mask[kCoordBlock];
    for (int64_t row = begin; row < end; ++row) {
      const int64_t tap = row % taps, b = row / (taps * g.offset_groups);
      const int64_t group = (row / taps) % g.offset_groups, image_group = first * g.offset_groups + row / taps;
      const T* dy = offset + offset_row(g, image_group, tap);
      const T* dx = dy + plane;
      const T* m = mask != nullptr ? mask + mask_row(g, image_group, tap) : nullptr;
      T* grad_dy = grad_offset + offset_row(g, image_group, tap);
      T* grad_dx = grad_dy + plane;
      T* grad_m = grad_mask != nullptr ? grad_mask + mask_row(g, image_group, tap) : nullptr;
      for (int64_t start = 0; start < plane; start += kCoordBlock) {
        const int64_t size = std::min(kCoordBlock, plane - start);
        for (int64_t i = 0; i < size; ++i) {
          T y, x;
          deform_conv_detail::tap_origin(g, tap, start + i, &y, &x);
          reached[i] = deform_conv_detail::neighbours(y + dy[start + i], x + dx[start + i], g.height, g.width,
                                                      &around[i]);
          acc_y[i] = acc_x[i] = acc_mask[i] = T(0);
        }
        for (int64_t channel = group * channels_per_group; channel < (group + 1) * channels_per_group; ++channel) {
          const T* image = input + ((first + b) * g.channels + channel) * g.in_plane();
          const T* grad_column = columns + (channel * taps + tap) * count * plane + b * plane + start;
          for (int64_t i = 0; i < size; ++i) {
            if (!reached[i]) continue;
            const Neighbours<T>& n = around[i];
            const T v[4] = {image[n.index[0]], image[n.index[1]], image[n.index[2]], image[n.index[3]]};
            const T grad = grad_column[i];
            T slope_y = 0, slope_x = 0, value = 0;
            for (int q = 0; q < 4; ++q) {
              slope_y += n.weight_dy[q] * v[q];
              slope_x += n.weight_dx[q] * v[q];
              value += n.weight[q] * v[q];
            }
            acc_y[i] += grad * slope_y;
            acc_x[i] += grad * slope_x;
            acc_mask[i] += n.interior ? grad * value : T(0);
          }
        }
        for (int64_t i = 0; i < size; ++i) {
          const T scale = m != nullptr ? m[start + i] : T(1);
          grad_dy[start + i] = scale * acc_y[i];
          grad_dx[start + i] = scale * acc_x[i];
          if (grad_m != nullptr) grad_m[start + i] = acc_mask[i];
        }
      }
    }
  });
}

struct CpuKernels {
  static void im2col(const Geometry& g, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                     int64_t first, int64_t count, const at::Tensor& columns) {
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv_im2col_cpu", [&] {
      const auto table = tabulate<scalar_t>(g, offset.const_data_ptr<scalar_t>(), mask_data<scalar_t>(g, mask),
                                            first, count);
      im2col_impl<scalar_t>(g, input.const_data_ptr<scalar_t>(), table, first, count,
                            columns.mutable_data_ptr<scalar_t>());
    });
  }

  static void col2im(const Geometry& g, const at::Tensor& columns, const at::Tensor& offset, const at::Tensor& mask,
                     int64_t first, int64_t count, const at::Tensor& grad_input) {
    AT_DISPATCH_FLOATING_TYPES(columns.scalar_type(), "deform_conv_col2im_cpu", [&] {
      const auto table = tabulate<scalar_t>(g, offset.const_data_ptr<scalar_t>(), mask_data<scalar_t>(g, mask),
                                            first, count);
      col2im_impl<scalar_t>(g, columns.const_data_ptr<scalar_t>(), table, first, count,
                            grad_input.mutable_data_ptr<scalar_t>());
    });
  }

  static void col2im_coord(const Geometry& g, const at::Tensor& columns, const at::Tensor& input,
                           const at::Tensor& offset, const at::Tensor& mask, int64_t first, int64_t count,
                           const at::Tensor& grad_offset, const at::Tensor& grad_mask) {
    AT_DISPATCH_FLOATING_TYPES(columns.scalar_type(), "deform_conv_col2im_coord_cpu", [&] {
      col2im_coord_impl<scalar_t>(g, columns.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
                                  offset.const_data_ptr<scalar_t>(), mask_data<scalar_t>(g, mask), first, count,
                                  grad_offset.mutable_data_ptr<scalar_t>(),
                                  g.use_mask ? grad_mask.mutable_data_ptr<scalar_t>() : nullptr);
    });
  }
};

void check_cpu(const at::Tensor& input, const char* op) {
  TORCH_CHECK(input.device().is_cpu(), op, ": expected CPU tensors, got input on ", input.device());
}

}  // namespace

at::Tensor deform_conv_forward_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
                                   const at::Tensor& mask, const at::Tensor& bias, int64_t stride_h,
                                   int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                                   int64_t dilation_w, int64_t groups, int64_t offset_groups, bool use_mask) {
  check_cpu(input, "deform_conv");
  return deform_conv_detail::forward<CpuKernels>(input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w,
                                                 dilation_h, dilation_w, groups, offset_groups, use_mask,
                                                 "deform_conv");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv_backward_cpu(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
    const at::Tensor& mask, const at::Tensor& bias, int64_t stride_h, int64_t stride_w, int64_t pad_h,
    int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t groups, int64_t offset_groups, bool use_mask) {
  check_cpu(input, "_deform_conv_backward");
  return deform_conv_detail::backward<CpuKernels>(grad, input, weight, offset, mask, bias, stride_h, stride_w, pad_h,
                                                  pad_w, dilation_h, dilation_w, groups, offset_groups, use_mask,
                                                  "_deform_conv_backward");
}

TORCH_LIBRARY_IMPL(detzoo, CPU, m) {
  m.impl("deform_conv", &deform_conv_forward_cpu);
  m.impl("_deform_conv_backward", &deform_conv_backward_cpu);
}

}  // namespace detzoo
