// CUDA kernels of deformable convolution (deform_conv.h defines the op and drives the GEMMs,
// which run on cuBLAS through at::mm).
//
// im2col gives each thread one (channel, image, output position) and loops over the kernel taps.
// col2im gives each thread one entry of the column gradient and scatters it onto the four
// neighbouring input pixels with atomic adds, since nearby samples share pixels. col2im_coord
// gives each thread one (image, offset group, tap, output position) and sums over the group's
// channels itself, so the offset and mask gradients need no atomics. All loops are grid-stride,
// with 64-bit indices.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "deform_conv/deform_conv.h"

namespace detzoo {
namespace {

using deform_conv_detail::Geometry;
using deform_conv_detail::Neighbours;

constexpr int kThreads = 256;

// Enough blocks to cover `n` items once, capped: the grid-stride loops do the rest.
unsigned int blocks_for(int64_t n) {
  constexpr int64_t kMaxBlocks = int64_t(1) << 16;
  return static_cast<unsigned int>(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
}

__device__ inline int64_t first_item() { return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }

__device__ inline int64_t item_stride() { return static_cast<int64_t>(blockDim.x) * gridDim.x; }

// columns[(channel * taps + tap) * count * plane + b * plane + p]: sample of `tap` at output
// position p of image first + b, mask applied.
template <typename T>
__global__ void im2col_kernel(Geometry g, const T* __restrict__ input, const T* __restrict__ offset,
                              const T* __restrict__ mask, int64_t first, int64_t count, T* __restrict__ columns) {
  const int64_t plane = g.out_plane(), taps = g.taps(), total = g.channels * count * plane;
  for (int64_t item = first_item(); item < total; item += item_stride()) {
    const int64_t p = item % plane, b = (item / plane) % count, channel = item / (plane * count);
    const int64_t image = first + b;
    const int64_t image_group = image * g.offset_groups + channel / g.channels_per_offset_group();
    const T* pixels = input + (image * g.channels + channel) * g.in_plane();
    const T* dy = offset + image_group * taps * 2 * plane + p;
    const T* m = mask != nullptr ? mask + image_group * taps * plane + p : nullptr;
    T* out = columns + channel * taps * count * plane + b * plane + p;
    for (int64_t tap = 0; tap < taps; ++tap) {
      T y, x;
      deform_conv_detail::tap_origin(g, tap, p, &y, &x);
      Neighbours<T> n;
      T value = 0;
      if (deform_conv_detail::neighbours(y + dy[2 * tap * plane], x + dy[(2 * tap + 1) * plane], g.height,
                                         g.width, &n) &&
          n.interior) {
        for (int q = 0; q < 4; ++q) {
          value += n.weight[q] * pixels[n.index[q]];
        }
        if (m != nullptr) value *= m[tap * plane];
      }
      out[tap * count * plane] = value;
    }
  }
}

template <typename T>
__global__ void col2im_kernel(Geometry g, const T* __restrict__ columns, const T* __restrict__ offset,
                              const T* __restrict__ mask, int64_t first, int64_t count, T* __restrict__ grad_input) {
  const int64_t plane = g.out_plane(), taps = g.taps(), total = g.column_rows() * count * plane;
  for (int64_t item = first_item(); item < total; item += item_stride()) {
    const int64_t p = item % plane, b = (item / plane) % count, row = item / (plane * count);
    const int64_t channel = row / taps, tap = row % taps, image = first + b;
    const int64_t image_group = image * g.offset_groups + channel / g.channels_per_offset_group();
    const T* dy = offset + (image_group * taps + tap) * 2 * plane + p;
    T y, x;
    deform_conv_detail::tap_origin(g, tap, p, &y, &x);
    Neighbours<T> n;
    if (!deform_conv_detail::neighbours(y + dy[0], x + dy[plane], g.height, g.width, &n) || !n.interior) {
      continue;
    }
    T grad = columns[item];
    if (mask != nullptr) grad *= mask[(image_group * taps + tap) * plane + p];
    T* grad_pixels = grad_input + (image * g.channels + channel) * g.in_plane();
    for (int q = 0; q < 4; ++q) {
      if (n.weight[q] != T(0)) {
        gpuAtomicAdd(grad_pixels + n.index[q], n.weight[q] * grad);
      }
    }
  }
}

template <typename T>
__global__ void col2im_coord_kernel(Geometry g, const T* __restrict__ columns, const T* __restrict__ input,
                                    const T* __restrict__ offset, const T* __restrict__ mask, int64_t first,
                                    int64_t count, T* __restrict__ grad_offset, T* __restrict__ grad_mask) {
  const int64_t plane = g.out_plane(), taps = g.taps(), total = count * g.offset_groups * taps * plane;
  const int64_t channels_per_group = g.channels_per_offset_group();
  for (int64_t item = first_item(); item < total; item += item_stride()) {
    const int64_t p = item % plane, tap = (item / plane) % taps, local_group = item / (plane * taps);
    const int64_t b = local_group / g.offset_groups, group = local_group % g.offset_groups;
    const int64_t image = first + b, image_group = first * g.offset_groups + local_group;
    const int64_t dy_index = (image_group * taps + tap) * 2 * plane + p;
    const int64_t mask_index = (image_group * taps + tap) * plane + p;
    T y, x;
    deform_conv_detail::tap_origin(g, tap, p, &y, &x);
    Neighbours<T> n;
    if (!deform_conv_detail::neighbours(y + offset[dy_index], x + offset[dy_index + plane], g.height, g.width, &n)) {
      continue;  // the gradients were zero-initialized
    }
    T acc_y = 0, acc_x = 0, acc_mask = 0;
    for (int64_t channel = group * channels_per_group; channel < (group + 1) * channels_per_group; ++channel) {
      const T* pixels = input + (image * g.channels + channel) * g.in_plane();
      const T grad = columns[((channel * taps + tap) * count + b) * plane + p];
      T slope_y = 0, slope_x = 0, value = 0;
      for (int q = 0; q < 4; ++q) {
        const T v = pixels[n.index[q]];
        slope_y += n.weight_dy[q] * v;
        slope_x += n.weight_dx[q] * v;
        value += n.weight[q] * v;
      }
      acc_y += grad * slope_y;
      acc_x += grad * slope_x;
      acc_mask += grad * value;
    }
    const T scale = mask != nullptr ? mask[mask_index] : T(1);
    grad_offset[dy_index] = scale * acc_y;
    grad_offset[dy_index + plane] = scale * acc_x;
    if (grad_mask != nullptr && n.interior) grad_mask[mask_index] = acc_mask;
  }
}

template <typename T>
const T* mask_data(const Geometry& g, const at::Tensor& mask) {
  return g.use_mask ? mask.const_data_ptr<T>() : nullptr;
}

struct CudaKernels {
  static void im2col(const Geometry& g, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                     int64_t first, int64_t count, const at::Tensor& columns) {
    const int64_t total = g.channels * count * g.out_plane();
    if (total == 0) return;
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv_im2col_cuda", [&] {
      im2col_kernel<scalar_t><<<blocks_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          g, input.const_data_ptr<scalar_t>(), offset.const_data_ptr<scalar_t>(), mask_data<scalar_t>(g, mask),
          first, count, columns.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void col2im(const Geometry& g, const at::Tensor& columns, const at::Tensor& offset, const at::Tensor& mask,
                     int64_t first, int64_t count, const at::Tensor& grad_input) {
    const int64_t total = g.column_rows() * count * g.out_plane();
    if (total == 0) return;
    AT_DISPATCH_FLOATING_TYPES(columns.scalar_type(), "deform_conv_col2im_cuda", [&] {
      col2im_kernel<scalar_t><<<blocks_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          g, columns.const_data_ptr<scalar_t>(), offset.const_data_ptr<scalar_t>(), mask_data<scalar_t>(g, mask),
          first, count, grad_input.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void col2im_coord(const Geometry& g, const at::Tensor& columns, const at::Tensor& input,
                           const at::Tensor& offset, const at::Tensor& mask, int64_t first, int64_t count,
                           const at::Tensor& grad_offset, const at::Tensor& grad_mask) {
    const int64_t total = count * g.offset_groups * g.taps() * g.out_plane();
    if (total == 0) return;
    AT_DISPATCH_FLOATING_TYPES(columns.scalar_type(), "deform_conv_col2im_coord_cuda", [&] {
      col2im_coord_kernel<scalar_t><<<blocks_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          g, columns.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(), offset.const_data_ptr<scalar_t>(),
          mask_data<scalar_t>(g, mask), first, count, grad_offset.mutable_data_ptr<scalar_t>(),
          g.use_mask ? grad_mask.mutable_data_ptr<scalar_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

void check_cuda(const at::Tensor& input, const char* op) {
  TORCH_CHECK(input.is_cuda(), op, ": expected CUDA tensors, got input on ", input.device());
}

}  // namespace

at::Tensor deform_conv_forward_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
                                    const at::Tensor& mask, const at::Tensor& bias, int64_t stride_h,
                                    int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                                    int64_t dilation_w, int64_t groups, int64_t offset_groups, bool use_mask) {
  check_cuda(input, "deform_conv");
  const c10::cuda::CUDAGuard device_guard(input.device());
  return deform_conv_detail::forward<CudaKernels>(input, weight, offset, mask, bias, stride_h, stride_w, pad_h,
                                                  pad_w, dilation_h, dilation_w, groups, offset_groups, use_mask,
                                                  "deform_conv");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv_backward_cuda(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
    const at::Tensor& mask, const at::Tensor& bias, int64_t stride_h, int64_t stride_w, int64_t pad_h,
    int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t groups, int64_t offset_groups, bool use_mask) {
  check_cuda(input, "_deform_conv_backward");
  const c10::cuda::CUDAGuard device_guard(input.device());
  return deform_conv_detail::backward<CudaKernels>(grad, input, weight, offset, mask, bias, stride_h, stride_w,
                                                   pad_h, pad_w, dilation_h, dilation_w, groups, offset_groups,
                                                   use_mask, "_deform_conv_backward");
}

TORCH_LIBRARY_IMPL(detzoo, CUDA, m) {
  m.impl("deform_conv", &deform_conv_forward_cuda);
  m.impl("_deform_conv_backward", &deform_conv_backward_cuda);
}

}  // namespace detzoo
