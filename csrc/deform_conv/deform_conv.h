// Deformable convolution, v1 (Dai et al., "Deformable Convolutional Networks") and v2 / modulated
// (Zhu et al., "Deformable ConvNets v2"), with torchvision.ops.deform_conv2d's definition:
//
//   out[n, o, y, x] = bias[o] + sum_{c in group(o), k = (i, j)}
//       weight[o, c, i, j] * mask[n, m(c, k), y, x] * bilerp(input[n, c], py, px)
//   py = y * stride_h - pad_h + i * dilation_h + offset[n, 2 * m(c, k), y, x]
//   px = x * stride_w - pad_w + j * dilation_w + offset[n, 2 * m(c, k) + 1, y, x]
//
// where m(c, k) = (offset group of c) * kernel_h * kernel_w + k, `bilerp` reads zero outside the
// plane, and the mask is 1 for v1 (use_mask = false; the mask tensor is then ignored). A bias with
// no elements means no bias.
//
// Both devices compute it the same way: a deformable im2col gathers the samples into a
// (channels * kernel_h * kernel_w, images * out_h * out_w) column matrix, one GEMM per group
// multiplies it by the weights. The backward pass multiplies the output gradient by the
// transposed weights back into column space, then scatters it onto the input (col2im) and
// differentiates each sample with respect to its position and mask (col2im_coord). Images are
// processed in chunks so that the column matrix stays within a fixed memory budget.
//
// This header holds what the CPU and CUDA files share: argument checks, the sampling maths
// (host and device) and the chunked im2col + GEMM driver, which each file instantiates with its
// own three kernels.
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>

namespace detzoo {

at::Tensor deform_conv_forward_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
                                   const at::Tensor& mask, const at::Tensor& bias, int64_t stride_h,
                                   int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                                   int64_t dilation_w, int64_t groups, int64_t offset_groups, bool use_mask);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv_backward_cpu(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
    const at::Tensor& mask, const at::Tensor& bias, int64_t stride_h, int64_t stride_w, int64_t pad_h,
    int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t groups, int64_t offset_groups, bool use_mask);

#ifdef DETZOO_WITH_CUDA
at::Tensor deform_conv_forward_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
                                    const at::Tensor& mask, const at::Tensor& bias, int64_t stride_h,
                                    int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                                    int64_t dilation_w, int64_t groups, int64_t offset_groups, bool use_mask);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv_backward_cuda(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
    const at::Tensor& mask, const at::Tensor& bias, int64_t stride_h, int64_t stride_w, int64_t pad_h,
    int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t groups, int64_t offset_groups, bool use_mask);
#endif

namespace deform_conv_detail {

// Sizes and hyper-parameters of one call; plain data, passed by value to CUDA kernels.
struct Geometry {
  int64_t batch, channels, height, width;
  int64_t out_channels, kernel_h, kernel_w, out_h, out_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t groups, offset_groups;
  bool use_mask;

  C10_HOST_DEVICE int64_t taps() const { return kernel_h * kernel_w; }
  C10_HOST_DEVICE int64_t in_plane() const { return height * width; }
  C10_HOST_DEVICE int64_t out_plane() const { return out_h * out_w; }
  C10_HOST_DEVICE int64_t channels_per_offset_group() const { return channels / offset_groups; }
  // Rows of the column matrix: one per (input channel, kernel tap).
  C10_HOST_DEVICE int64_t column_rows() const { return channels * kernel_h * kernel_w; }
};

// Where kernel tap `tap` (0 <= tap < taps, row-major over (i, j)) of output position `out_index`
// (a flat index into the out_h x out_w plane) samples the input, before the learned offset.
template <typename T>
C10_HOST_DEVICE inline void tap_origin(const Geometry& g, int64_t tap, int64_t out_index, T* y, T* x) {
  const int64_t i = tap / g.kernel_w, j = tap % g.kernel_w;
  const int64_t out_y = out_index / g.out_w, out_x = out_index % g.out_w;
  *y = static_cast<T>(out_y * g.stride_h - g.pad_h + i * g.dilation_h);
  *x = static_cast<T>(out_x * g.stride_w - g.pad_w + j * g.dilation_w);
}

// The four pixels around a continuous point of a height x width plane, in the order
// (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1) with y0 = floor(y), x0 = floor(x).
// `index` is always a valid plane offset (coordinates clamped into the plane), so kernels may read
// it without a branch; a pixel outside the plane has every coefficient zero instead.
template <typename T>
struct Neighbours {
  int64_t index[4];
  T weight[4];     // bilinear interpolation weights
  T weight_dy[4];  // their derivatives with respect to y and to x (floor(y), floor(x) held fixed)
  T weight_dx[4];
  bool interior;   // the point lies strictly inside (-1, height) x (-1, width)
};

// Fills `n` for the point (y, x). Returns false when the point is outside [-1, height) x
// [-1, width), or NaN: no pixel around it is in the plane, so its value and every derivative are 0.
//
// Zero-padded bilinear interpolation is continuous but not differentiable on pixel rows and
// columns; like torchvision we take the derivative of the cell whose top-left corner is
// (floor(y), floor(x)), i.e. the right-hand derivative. That includes the edge y = -1 (or x = -1),
// where the value is 0 but the right-hand derivative is not: a zero offset with padding lands
// exactly there, so this choice matters for grad_offset. The value itself is taken as 0 outside
// the open interior (`interior` false), exactly as torchvision's forward does.
template <typename T>
C10_HOST_DEVICE inline bool neighbours(T y, T x, int64_t height, int64_t width, Neighbours<T>* n) {
  if (height <= 0 || width <= 0 ||
      !(y >= T(-1) && y < static_cast<T>(height) && x >= T(-1) && x < static_cast<T>(width))) {
    return false;
  }
  const T y_floor = floor(y), x_floor = floor(x);
  const int64_t y0 = static_cast<int64_t>(y_floor), x0 = static_cast<int64_t>(x_floor);
  const T fy = y - y_floor, fx = x - x_floor;
  const T gy = T(1) - fy, gx = T(1) - fx;
  const bool row_in[2] = {y0 >= 0, y0 + 1 < height};
  const bool col_in[2] = {x0 >= 0, x0 + 1 < width};
  const int64_t rows[2] = {row_in[0] ? y0 : 0, row_in[1] ? y0 + 1 : height - 1};
  const int64_t cols[2] = {col_in[0] ? x0 : 0, col_in[1] ? x0 + 1 : width - 1};
  const T row_weight[2] = {gy, fy}, col_weight[2] = {gx, fx};
  const T row_slope[2] = {T(-1), T(1)}, col_slope[2] = {T(-1), T(1)};
  for (int r = 0; r < 2; ++r) {
    for (int c = 0; c < 2; ++c) {
      const int q = 2 * r + c;
      const bool in = row_in[r] && col_in[c];
      n->index[q] = rows[r] * width + cols[c];
      n->weight[q] = in ? row_weight[r] * col_weight[c] : T(0);
      n->weight_dy[q] = in ? row_slope[r] * col_weight[c] : T(0);
      n->weight_dx[q] = in ? row_weight[r] * col_slope[c] : T(0);
    }
  }
  n->interior = y > T(-1) && x > T(-1);
  return true;
}

// Host-side checks for direct torch.ops.detzoo.* calls (the Python wrappers check the same with
// friendlier errors). Returns the call's geometry.
inline Geometry check_arguments(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
                                const at::Tensor& mask, const at::Tensor& bias, int64_t stride_h,
                                int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                                int64_t dilation_w, int64_t groups, int64_t offset_groups, bool use_mask,
                                const char* op) {
  TORCH_CHECK(input.dim() == 4, op, ": input must be 4-D (N, C, H, W), got shape ", input.sizes());
  TORCH_CHECK(weight.dim() == 4, op, ": weight must be 4-D (C_out, C / groups, kh, kw), got shape ",
              weight.sizes());
  TORCH_CHECK(offset.dim() == 4, op, ": offset must be 4-D, got shape ", offset.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), op, ": input must be floating point, got ",
              input.scalar_type());
  const auto same = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.scalar_type() == input.scalar_type(), op, ": ", name, " must have the dtype of input (",
                input.scalar_type(), "), got ", t.scalar_type());
    TORCH_CHECK(t.device() == input.device(), op, ": ", name, " must be on the device of input (",
                input.device(), "), got ", t.device());
  };
  same(weight, "weight");
  same(offset, "offset");
  if (use_mask) same(mask, "mask");
  if (bias.numel() > 0) same(bias, "bias");
  TORCH_CHECK(stride_h > 0 && stride_w > 0, op, ": stride must be positive, got (", stride_h, ", ", stride_w, ")");
  TORCH_CHECK(pad_h >= 0 && pad_w >= 0, op, ": padding must be non-negative, got (", pad_h, ", ", pad_w, ")");
  TORCH_CHECK(dilation_h > 0 && dilation_w > 0, op, ": dilation must be positive, got (", dilation_h, ", ",
              dilation_w, ")");
  TORCH_CHECK(groups > 0 && offset_groups > 0, op, ": groups and offset_groups must be positive, got ", groups,
              " and ", offset_groups);

  Geometry g{};
  g.batch = input.size(0);
  g.channels = input.size(1);
  g.height = input.size(2);
  g.width = input.size(3);
  g.out_channels = weight.size(0);
  g.kernel_h = weight.size(2);
  g.kernel_w = weight.size(3);
  g.stride_h = stride_h;
  g.stride_w = stride_w;
  g.pad_h = pad_h;
  g.pad_w = pad_w;
  g.dilation_h = dilation_h;
  g.dilation_w = dilation_w;
  g.groups = groups;
  g.offset_groups = offset_groups;
  g.use_mask = use_mask;
  g.out_h = (g.height + 2 * pad_h - dilation_h * (g.kernel_h - 1) - 1) / stride_h + 1;
  g.out_w = (g.width + 2 * pad_w - dilation_w * (g.kernel_w - 1) - 1) / stride_w + 1;

  TORCH_CHECK(g.kernel_h > 0 && g.kernel_w > 0, op, ": weight must have a non-empty kernel, got shape ",
              weight.sizes());
  TORCH_CHECK(g.channels % groups == 0 && weight.size(1) * groups == g.channels, op,
              ": weight must have shape (C_out, ", g.channels, " / groups = ", g.channels / groups, ", kh, kw) for groups = ", groups, ", got ",
              weight.sizes());
  TORCH_CHECK(g.out_channels % groups == 0, op, ": weight.size(0) = ", g.out_channels,
              " must be divisible by groups = ", groups);
  TORCH_CHECK(g.channels % offset_groups == 0, op, ": input channels (", g.channels,
              ") must be divisible by offset_groups = ", offset_groups);
  TORCH_CHECK(g.out_h > 0 && g.out_w > 0, op, ": input of size ", g.height, " x ", g.width,
              " is too small for this kernel, padding and dilation (output would be ", g.out_h, " x ", g.out_w,
              ")");
  const int64_t taps = g.taps();
  TORCH_CHECK(offset.sizes() == at::IntArrayRef({g.batch, 2 * offset_groups * taps, g.out_h, g.out_w}), op,
              ": offset must have shape (", g.batch, ", ", 2 * offset_groups * taps, ", ", g.out_h, ", ", g.out_w,
              "), got ", offset.sizes());
  if (use_mask) {
    TORCH_CHECK(mask.sizes() == at::IntArrayRef({g.batch, offset_groups * taps, g.out_h, g.out_w}), op,
                ": mask must have shape (", g.batch, ", ", offset_groups * taps, ", ", g.out_h, ", ", g.out_w,
                "), got ", mask.sizes());
  }
  TORCH_CHECK(bias.numel() == 0 || (bias.dim() == 1 && bias.size(0) == g.out_channels), op,
              ": bias must be empty or have shape (", g.out_channels, "), got ", bias.sizes());
  return g;
}

// Images per im2col chunk: as many as fit a column matrix of about 2^24 elements (64 MiB in
// float), and at least one.
inline int64_t images_per_chunk(const Geometry& g) {
  constexpr int64_t kColumnBudget = int64_t(1) << 24;
  const int64_t per_image = std::max<int64_t>(g.column_rows() * g.out_plane(), 1);
  return std::clamp<int64_t>(kColumnBudget / per_image, 1, std::max<int64_t>(g.batch, 1));
}

// The first `count` images' share of the column buffer, as (groups, rows per group, count * plane).
inline at::Tensor column_matrix(const at::Tensor& buffer, const Geometry& g, int64_t count) {
  const int64_t columns = count * g.out_plane();
  return buffer.narrow(0, 0, g.column_rows() * columns).view({g.groups, g.column_rows() / g.groups, columns});
}

inline bool is_reduced_float(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

// `Kernels` provides, for images [first, first + count) of contiguous tensors and a contiguous
// (column_rows, count * out_h * out_w) column matrix whose row is channel * taps + tap:
//   im2col(g, input, offset, mask, first, count, columns)        fills `columns`
//   col2im(g, columns, offset, mask, first, count, grad_input)   adds into grad_input
//   col2im_coord(g, columns, input, offset, mask, first, count, grad_offset, grad_mask)
//                                                                writes those images' rows
// `mask` is never read when !g.use_mask.
template <typename Kernels>
at::Tensor forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
                   const at::Tensor& mask, const at::Tensor& bias, int64_t stride_h, int64_t stride_w,
                   int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t groups,
                   int64_t offset_groups, bool use_mask, const char* op) {
  const Geometry g = check_arguments(input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w,
                                     dilation_h, dilation_w, groups, offset_groups, use_mask, op);
  if (is_reduced_float(input.scalar_type())) {
    // Half / bfloat16 samples and GEMMs are computed in float.
    const auto f = [](const at::Tensor& t) { return t.to(at::kFloat); };
    return forward<Kernels>(f(input), f(weight), f(offset), f(mask), f(bias), stride_h, stride_w, pad_h, pad_w,
                            dilation_h, dilation_w, groups, offset_groups, use_mask, op)
        .to(input.scalar_type());
  }
  const at::Tensor input_c = input.contiguous(), weight_c = weight.contiguous();
  const at::Tensor offset_c = offset.contiguous(), mask_c = use_mask ? mask.contiguous() : mask;
  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());
  if (g.batch == 0) {
    return output;
  }
  const int64_t plane = g.out_plane(), out_per_group = g.out_channels / groups;
  const int64_t rows_per_group = g.column_rows() / groups, step = images_per_chunk(g);
  const at::Tensor weights = weight_c.view({groups, out_per_group, rows_per_group});
  at::Tensor buffer = at::empty({g.column_rows() * step * plane}, input.options());
  for (int64_t first = 0; first < g.batch; first += step) {
    const int64_t count = std::min(step, g.batch - first);
    const at::Tensor columns = column_matrix(buffer, g, count);
    Kernels::im2col(g, input_c, offset_c, mask_c, first, count, columns);
    at::Tensor out = output.narrow(0, first, count).view({count, groups, out_per_group, plane});
    for (int64_t grp = 0; grp < groups; ++grp) {
      if (count == 1) {
        at::Tensor out_group = out.select(0, 0).select(0, grp);
        at::mm_out(out_group, weights[grp], columns[grp]);
      } else {
        const at::Tensor product = at::mm(weights[grp], columns[grp]);
        out.select(1, grp).copy_(product.view({out_per_group, count, plane}).transpose(0, 1));
      }
    }
  }
  if (bias.numel() > 0) {
    output.add_(bias.view({1, g.out_channels, 1, 1}));
  }
  return output;
}

template <typename Kernels>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
    const at::Tensor& mask, const at::Tensor& bias, int64_t stride_h, int64_t stride_w, int64_t pad_h,
    int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t groups, int64_t offset_groups, bool use_mask,
    const char* op) {
  const Geometry g = check_arguments(input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w,
                                     dilation_h, dilation_w, groups, offset_groups, use_mask, op);
  TORCH_CHECK(grad.sizes() == at::IntArrayRef({g.batch, g.out_channels, g.out_h, g.out_w}), op,
              ": grad must have the output's shape (", g.batch, ", ", g.out_channels, ", ", g.out_h, ", ", g.out_w,
              "), got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == input.scalar_type() && grad.device() == input.device(), op,
              ": grad must have the dtype and device of input");
  if (is_reduced_float(input.scalar_type())) {
    const auto f = [](const at::Tensor& t) { return t.to(at::kFloat); };
    const auto grads = backward<Kernels>(f(grad), f(input), f(weight), f(offset), f(mask), f(bias), stride_h,
                                         stride_w, pad_h, pad_w, dilation_h, dilation_w, groups, offset_groups,
                                         use_mask, op);
    const auto back = [&](const at::Tensor& t, const at::Tensor& like) { return t.to(like.scalar_type()); };
    return {back(std::get<0>(grads), input), back(std::get<1>(grads), weight), back(std::get<2>(grads), offset),
            back(std::get<3>(grads), mask), back(std::get<4>(grads), bias)};
  }
  const at::Tensor grad_c = grad.contiguous(), input_c = input.contiguous(), weight_c = weight.contiguous();
  const at::Tensor offset_c = offset.contiguous(), mask_c = use_mask ? mask.contiguous() : mask;
  at::Tensor grad_input = at::zeros_like(input_c);
  at::Tensor grad_weight = at::zeros_like(weight_c);
  at::Tensor grad_offset = at::zeros_like(offset_c);
  at::Tensor grad_mask = at::zeros_like(mask, at::TensorOptions(), at::MemoryFormat::Contiguous);
  at::Tensor grad_bias = bias.numel() > 0 ? grad_c.sum({0, 2, 3}) : at::zeros_like(bias);
  if (g.batch == 0) {
    return {grad_input, grad_weight, grad_offset, grad_mask, grad_bias};
  }
  const int64_t plane = g.out_plane(), out_per_group = g.out_channels / groups;
  const int64_t rows_per_group = g.column_rows() / groups, step = images_per_chunk(g);
  const at::Tensor weights = weight_c.view({groups, out_per_group, rows_per_group});
  at::Tensor grad_weights = grad_weight.view({groups, out_per_group, rows_per_group});
  at::Tensor buffer = at::empty({g.column_rows() * step * plane}, input.options());
  for (int64_t first = 0; first < g.batch; first += step) {
    const int64_t count = std::min(step, g.batch - first);
    const at::Tensor columns = column_matrix(buffer, g, count);
    // (groups, out_per_group, count * plane): the output gradient in column order.
    const at::Tensor grad_out = grad_c.narrow(0, first, count)
                                    .view({count, groups, out_per_group, plane})
                                    .permute({1, 2, 0, 3})
                                    .reshape({groups, out_per_group, count * plane});
    Kernels::im2col(g, input_c, offset_c, mask_c, first, count, columns);
    for (int64_t grp = 0; grp < groups; ++grp) {
      grad_weights[grp].addmm_(grad_out[grp], columns[grp].t());
    }
    // The buffer now receives the gradient of the columns.
    for (int64_t grp = 0; grp < groups; ++grp) {
      at::Tensor grad_columns = columns[grp];
      at::mm_out(grad_columns, weights[grp].t(), grad_out[grp]);
    }
    Kernels::col2im(g, columns, offset_c, mask_c, first, count, grad_input);
    Kernels::col2im_coord(g, columns, input_c, offset_c, mask_c, first, count, grad_offset, grad_mask);
  }
  return {grad_input, grad_weight, grad_offset, grad_mask, grad_bias};
}

}  // namespace deform_conv_detail
}  // namespace detzoo
