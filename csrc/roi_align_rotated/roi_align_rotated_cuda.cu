// CUDA kernels of rotated ROIAlign (see roi_align_rotated.h for the op's definition).
//
// Forward: one thread per output element (box, channel, bin), averaging the bin's rotated
// bilinear samples. Backward: one thread per gradient element, adding each sample's four
// weighted shares into the input gradient with atomic adds, so the backward pass alerts under
// torch.use_deterministic_algorithms(True) (the CPU kernel is deterministic). Half and bfloat16
// are computed in float, and their gradient is accumulated in a float buffer rounded at the end.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "roi_align_rotated/roi_align_rotated.h"

namespace detzoo {
namespace {

using roi_align_detail::linear_taps;
using roi_align_detail::sample_coord;
using roi_align_rotated_detail::RotatedBoxGeometry;
using roi_align_rotated_detail::rotate_to_image;
using roi_align_rotated_detail::rotated_box_geometry;

constexpr int kThreads = 256;

// Blocks for `total` threads; kernels loop with a grid stride past the cap.
unsigned int blocks_for(int64_t total) {
  constexpr int64_t kMaxBlocks = int64_t(1) << 20;
  return static_cast<unsigned int>(std::min((total + kThreads - 1) / kThreads, kMaxBlocks));
}

// Shapes shared by the kernels (passed by value).
struct PoolShape {
  int64_t batch_size, channels, height, width, pooled_height, pooled_width, sampling_ratio;
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

// The four pixels and weights of one bilinear sample; false when the sample is off the map.
template <typename acc_t>
struct SampleTaps {
  int64_t y_low, y_high, x_low, x_high;
  acc_t wy_low, wy_high, wx_low, wx_high;
};

template <typename acc_t>
__device__ inline bool sample_taps(const RotatedBoxGeometry<acc_t>& g, const BinIndex& b, int64_t iy, int64_t ix,
                                   const PoolShape& s, SampleTaps<acc_t>* t) {
  const acc_t dy = sample_coord(g.start_y, g.bin_h, b.ph, iy, g.grid_h);
  const acc_t dx = sample_coord(g.start_x, g.bin_w, b.pw, ix, g.grid_w);
  acc_t y, x;
  rotate_to_image(g, dy, dx, &y, &x);
  return linear_taps(y, s.height, &t->y_low, &t->y_high, &t->wy_low, &t->wy_high) &&
         linear_taps(x, s.width, &t->x_low, &t->x_high, &t->wx_low, &t->wx_high);
}

template <typename scalar_t, typename acc_t>
__global__ void roi_align_rotated_forward_kernel(int64_t total, const scalar_t* __restrict__ input,
                                                 const scalar_t* __restrict__ rois, acc_t spatial_scale,
                                                 PoolShape s, scalar_t* __restrict__ output) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < total;
       index += stride) {
    const BinIndex b = unravel(index, s);
    const scalar_t* roi = rois + b.box * 6;
    const int64_t image = image_of<acc_t>(roi, s);
    const auto g = rotated_box_geometry<acc_t>(roi, spatial_scale, s.pooled_height, s.pooled_width,
                                               s.sampling_ratio);
    const scalar_t* plane = input + (image * s.channels + b.channel) * s.height * s.width;
    acc_t sum = 0;
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        SampleTaps<acc_t> t;
        if (!sample_taps(g, b, iy, ix, s, &t)) {
          continue;
        }
        const scalar_t* row_low = plane + t.y_low * s.width;
        const scalar_t* row_high = plane + t.y_high * s.width;
        sum += t.wy_low * (t.wx_low * static_cast<acc_t>(row_low[t.x_low]) +
                           t.wx_high * static_cast<acc_t>(row_low[t.x_high])) +
               t.wy_high * (t.wx_low * static_cast<acc_t>(row_high[t.x_low]) +
                            t.wx_high * static_cast<acc_t>(row_high[t.x_high]));
      }
    }
    const int64_t count = g.grid_h * g.grid_w > 1 ? g.grid_h * g.grid_w : 1;
    output[index] = static_cast<scalar_t>(sum / static_cast<acc_t>(count));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void roi_align_rotated_backward_kernel(int64_t total, const scalar_t* __restrict__ grad,
                                                  int64_t stride_box, int64_t stride_channel, int64_t stride_h,
                                                  int64_t stride_w, const scalar_t* __restrict__ rois,
                                                  acc_t spatial_scale, PoolShape s, acc_t* __restrict__ grad_input) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < total;
       index += stride) {
    const BinIndex b = unravel(index, s);
    const scalar_t* roi = rois + b.box * 6;
    const int64_t image = image_of<acc_t>(roi, s);
    const auto g = rotated_box_geometry<acc_t>(roi, spatial_scale, s.pooled_height, s.pooled_width,
                                               s.sampling_ratio);
    const int64_t count = g.grid_h * g.grid_w > 1 ? g.grid_h * g.grid_w : 1;
    const acc_t share = static_cast<acc_t>(grad[b.box * stride_box + b.channel * stride_channel +
                                                b.ph * stride_h + b.pw * stride_w]) /
                        static_cast<acc_t>(count);
    acc_t* plane = grad_input + (image * s.channels + b.channel) * s.height * s.width;
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        SampleTaps<acc_t> t;
        if (!sample_taps(g, b, iy, ix, s, &t)) {
          continue;
        }
        gpuAtomicAdd(plane + t.y_low * s.width + t.x_low, share * t.wy_low * t.wx_low);
        gpuAtomicAdd(plane + t.y_low * s.width + t.x_high, share * t.wy_low * t.wx_high);
        gpuAtomicAdd(plane + t.y_high * s.width + t.x_low, share * t.wy_high * t.wx_low);
        gpuAtomicAdd(plane + t.y_high * s.width + t.x_high, share * t.wy_high * t.wx_high);
      }
    }
  }
}

void check_cuda(const at::Tensor& features, const at::Tensor& rois, const char* op) {
  TORCH_CHECK(features.is_cuda() && rois.is_cuda(), op, ": expected CUDA tensors, got ", features.device(),
              " and ", rois.device());
}

}  // namespace

at::Tensor roi_align_rotated_forward_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                          int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio) {
  roi_align_detail::check_roi_arguments(input, "input", rois, 6, "roi_align_rotated");
  roi_align_detail::check_pooled_size(pooled_height, pooled_width, "roi_align_rotated");
  check_cuda(input, rois, "roi_align_rotated");
  const c10::cuda::CUDAGuard device_guard(input.device());
  const PoolShape shape{input.size(0), input.size(1), input.size(2), input.size(3), pooled_height, pooled_width,
                        sampling_ratio};
  at::Tensor output = at::empty({rois.size(0), shape.channels, pooled_height, pooled_width}, input.options());
  const int64_t total = output.numel();
  if (total == 0) {
    return output;
  }
  const at::Tensor input_c = input.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_rotated_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    roi_align_rotated_forward_kernel<scalar_t, acc_t><<<blocks_for(total), kThreads, 0, stream>>>(
        total, input_c.const_data_ptr<scalar_t>(), rois_c.const_data_ptr<scalar_t>(),
        static_cast<acc_t>(spatial_scale), shape, output.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

at::Tensor roi_align_rotated_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                           int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                           int64_t channels, int64_t height, int64_t width,
                                           int64_t sampling_ratio) {
  const char* op = "_roi_align_rotated_backward";
  roi_align_detail::check_roi_arguments(grad, "grad", rois, 6, op);
  check_cuda(grad, rois, op);
  TORCH_CHECK(grad.sizes() == at::IntArrayRef({rois.size(0), channels, pooled_height, pooled_width}), op,
              ": grad must have shape (", rois.size(0), ", ", channels, ", ", pooled_height, ", ", pooled_width,
              "), got ", grad.sizes());
  at::globalContext().alertNotDeterministic("_roi_align_rotated_backward (CUDA)");
  const c10::cuda::CUDAGuard device_guard(grad.device());
  const at::ScalarType acc_type = at::toOpMathType(grad.scalar_type());
  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, grad.options().dtype(acc_type));
  const int64_t total = grad.numel();
  if (total == 0 || grad_input.numel() == 0) {
    return grad_input.to(grad.scalar_type());
  }
  const PoolShape shape{batch_size, channels, height, width, pooled_height, pooled_width, sampling_ratio};
  const at::Tensor rois_c = rois.contiguous();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_rotated_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    roi_align_rotated_backward_kernel<scalar_t, acc_t><<<blocks_for(total), kThreads, 0, stream>>>(
        total, grad.const_data_ptr<scalar_t>(), grad.stride(0), grad.stride(1), grad.stride(2), grad.stride(3),
        rois_c.const_data_ptr<scalar_t>(), static_cast<acc_t>(spatial_scale), shape,
        grad_input.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input.to(grad.scalar_type());
}

TORCH_LIBRARY_IMPL(detzoo, CUDA, m) {
  m.impl("roi_align_rotated", &roi_align_rotated_forward_cuda);
  m.impl("_roi_align_rotated_backward", &roi_align_rotated_backward_cuda);
}

}  // namespace detzoo
