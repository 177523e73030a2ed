// CUDA kernels of ROIAlign (see roi_align.h for the op's definition).
//
// Forward: one thread per output element (box, channel, bin), averaging the bin's bilinear
// samples. Backward: one thread per gradient element, adding each sample's four weighted shares
// into the input gradient with atomic adds; the sum order then varies between runs, so the
// backward pass alerts under torch.use_deterministic_algorithms(True) (the CPU kernel is
// deterministic). Half and bfloat16 are computed in float, and their gradient is accumulated in a
// float buffer that is rounded once at the end.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "roi_align/roi_align.h"

namespace detzoo {
namespace {

using roi_align_detail::box_geometry;
using roi_align_detail::linear_taps;
using roi_align_detail::sample_coord;

constexpr int kThreads = 256;

// Blocks for `total` threads; kernels loop with a grid stride past the cap.
unsigned int blocks_for(int64_t total) {
  constexpr int64_t kMaxBlocks = int64_t(1) << 20;
  return static_cast<unsigned int>(std::min((total + kThreads - 1) / kThreads, kMaxBlocks));
}

// Shapes shared by the kernels (passed by value).
struct PoolShape {
  int64_t batch_size, channels, height, width, pooled_height, pooled_width, sampling_ratio;
  bool aligned;
};

// Output element `index` of (R, C, pooled_height, pooled_width) as (box, channel, ph, pw).
struct BinIndex {
  int64_t box, channel, ph, pw;
};

__device__ inline BinIndex unravel(int64_t index, const PoolShape& s) {
  BinIndex b;
  b.pw = index % s.pooled_width;
  b.ph = (index / s.pooled_width) % s.pooled_height;
  b.channel = (index / (s.pooled_width * s.pooled_height)) % s.channels;
  b.box = index / (s.pooled_width * s.pooled_height * s.channels);
  return b;
}

template <typename acc_t, typename scalar_t>
__device__ inline int64_t image_of(const scalar_t* roi, const PoolShape& s) {
  const acc_t image = static_cast<acc_t>(roi[0]);
  CUDA_KERNEL_ASSERT(image >= acc_t(0) && image < static_cast<acc_t>(s.batch_size));
  return static_cast<int64_t>(image);
}

template <typename scalar_t, typename acc_t>
__global__ void roi_align_forward_kernel(int64_t total, const scalar_t* __restrict__ input,
                                         const scalar_t* __restrict__ rois, acc_t spatial_scale, PoolShape s,
                                         scalar_t* __restrict__ output) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < total;
       index += stride) {
    const BinIndex b = unravel(index, s);
    const scalar_t* roi = rois + b.box * 5;
    const int64_t image = image_of<acc_t>(roi, s);
    const auto g = box_geometry<acc_t>(roi, spatial_scale, s.pooled_height, s.pooled_width, s.sampling_ratio,
                                       s.aligned);
    const scalar_t* plane = input + (image * s.channels + b.channel) * s.height * s.width;
    acc_t sum = 0;
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      int64_t y_low, y_high;
      acc_t wy_low, wy_high;
      if (!linear_taps(sample_coord(g.start_y, g.bin_h, b.ph, iy, g.grid_h), s.height, &y_low, &y_high, &wy_low,
                       &wy_high)) {
        continue;
      }
      const scalar_t* row_low = plane + y_low * s.width;
      const scalar_t* row_high = plane + y_high * s.width;
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        int64_t x_low, x_high;
        acc_t wx_low, wx_high;
        if (!linear_taps(sample_coord(g.start_x, g.bin_w, b.pw, ix, g.grid_w), s.width, &x_low, &x_high, &wx_low,
                         &wx_high)) {
          continue;
        }
        sum += wy_low * (wx_low * static_cast<acc_t>(row_low[x_low]) +
                         wx_high * static_cast<acc_t>(row_low[x_high])) +
               wy_high * (wx_low * static_cast<acc_t>(row_high[x_low]) +
                          wx_high * static_cast<acc_t>(row_high[x_high]));
      }
    }
    const int64_t count = g.grid_h * g.grid_w > 1 ? g.grid_h * g.grid_w : 1;
    output[index] = static_cast<scalar_t>(sum / static_cast<acc_t>(count));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void roi_align_backward_kernel(int64_t total, const scalar_t* __restrict__ grad, int64_t stride_box,
                                          int64_t stride_channel, int64_t stride_h, int64_t stride_w,
                                          const scalar_t* __restrict__ rois, acc_t spatial_scale, PoolShape s,
                                          acc_t* __restrict__ grad_input) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < total;
       index += stride) {
    const BinIndex b = unravel(index, s);
    const scalar_t* roi = rois + b.box * 5;
    const int64_t image = image_of<acc_t>(roi, s);
    const auto g = box_geometry<acc_t>(roi, spatial_scale, s.pooled_height, s.pooled_width, s.sampling_ratio,
                                       s.aligned);
    const int64_t count = g.grid_h * g.grid_w > 1 ? g.grid_h * g.grid_w : 1;
    const acc_t share = static_cast<acc_t>(grad[b.box * stride_box + b.channel * stride_channel +
                                                b.ph * stride_h + b.pw * stride_w]) /
                        static_cast<acc_t>(count);
    acc_t* plane = grad_input + (image * s.channels + b.channel) * s.height * s.width;
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      int64_t y_low, y_high;
      acc_t wy_low, wy_high;
      if (!linear_taps(sample_coord(g.start_y, g.bin_h, b.ph, iy, g.grid_h), s.height, &y_low, &y_high, &wy_low,
                       &wy_high)) {
        continue;
      }
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        int64_t x_low, x_high;
        acc_t wx_low, wx_high;
        if (!linear_taps(sample_coord(g.start_x, g.bin_w, b.pw, ix, g.grid_w), s.width, &x_low, &x_high, &wx_low,
                         &wx_high)) {
          continue;
        }
        gpuAtomicAdd(plane + y_low * s.width + x_low, share * wy_low * wx_low);
        gpuAtomicAdd(plane + y_low * s.width + x_high, share * wy_low * wx_high);
        gpuAtomicAdd(plane + y_high * s.width + x_low, share * wy_high * wx_low);
        gpuAtomicAdd(plane + y_high * s.width + x_high, share * wy_high * wx_high);
      }
    }
  }
}

void check_cuda(const at::Tensor& features, const at::Tensor& rois, const char* op) {
  TORCH_CHECK(features.is_cuda() && rois.is_cuda(), op, ": expected CUDA tensors, got ", features.device(),
              " and ", rois.device());
}

}  // namespace

at::Tensor roi_align_forward_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                                  bool aligned) {
  roi_align_detail::check_roi_arguments(input, "input", rois, 5, "roi_align");
  roi_align_detail::check_pooled_size(pooled_height, pooled_width, "roi_align");
  check_cuda(input, rois, "roi_align");
  const c10::cuda::CUDAGuard device_guard(input.device());
  const PoolShape shape{input.size(0), input.size(1), input.size(2), input.size(3), pooled_height, pooled_width,
                        sampling_ratio, aligned};
  at::Tensor output = at::empty({rois.size(0), shape.channels, pooled_height, pooled_width}, input.options());
  const int64_t total = output.numel();
  if (total == 0) {
    return output;
  }
  const at::Tensor input_c = input.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    roi_align_forward_kernel<scalar_t, acc_t><<<blocks_for(total), kThreads, 0, stream>>>(
        total, input_c.const_data_ptr<scalar_t>(), rois_c.const_data_ptr<scalar_t>(),
        static_cast<acc_t>(spatial_scale), shape, output.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                   int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                   int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio,
                                   bool aligned) {
  roi_align_detail::check_roi_arguments(grad, "grad", rois, 5, "_roi_align_backward");
  check_cuda(grad, rois, "_roi_align_backward");
  TORCH_CHECK(grad.sizes() == at::IntArrayRef({rois.size(0), channels, pooled_height, pooled_width}),
              "_roi_align_backward: grad must have shape (", rois.size(0), ", ", channels, ", ", pooled_height,
              ", ", pooled_width, "), got ", grad.sizes());
  at::globalContext().alertNotDeterministic("_roi_align_backward (CUDA)");
  const c10::cuda::CUDAGuard device_guard(grad.device());
  const at::ScalarType acc_type = at::toOpMathType(grad.scalar_type());
  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, grad.options().dtype(acc_type));
  const int64_t total = grad.numel();
  if (total == 0 || grad_input.numel() == 0) {
    return grad_input.to(grad.scalar_type());
  }
  const PoolShape shape{batch_size, channels, height, width, pooled_height, pooled_width, sampling_ratio, aligned};
  const at::Tensor rois_c = rois.contiguous();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    roi_align_backward_kernel<scalar_t, acc_t><<<blocks_for(total), kThreads, 0, stream>>>(
        total, grad.const_data_ptr<scalar_t>(), grad.stride(0), grad.stride(1), grad.stride(2), grad.stride(3),
        rois_c.const_data_ptr<scalar_t>(), static_cast<acc_t>(spatial_scale), shape,
        grad_input.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input.to(grad.scalar_type());
}

TORCH_LIBRARY_IMPL(detzoo, CUDA, m) {
  m.impl("roi_align", &roi_align_forward_cuda);
  m.impl("_roi_align_backward", &roi_align_backward_cuda);
}

}  // namespace detzoo
