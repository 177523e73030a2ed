// Blocked-bitmask NMS of rotated boxes on the GPU: the scheme of nms_cuda.cu (sort by score,
// a 64-box-per-word "IoU above the threshold" mask over tiles on or above the diagonal, then the
// greedy pass of nms_keep_from_mask_cuda), with the rotated IoU of box_iou_rotated_utils.h.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "box_iou_rotated/box_iou_rotated_utils.h"
#include "nms/nms.h"
#include "nms_rotated/nms_rotated.h"

namespace detzoo {
namespace {

using Word = unsigned long long;
constexpr int kWordBits = 64;

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

template <typename T>
__device__ __forceinline__ rotated::PreparedBox<T> load_box(const T* box) {
  return rotated::prepare_box<T>(box[0], box[1], box[2], box[3], box[4]);
}

// Block (x, y): the 64 boxes of row tile y (one per thread) against the 64 of column tile x.
template <typename T>
__global__ void nms_rotated_mask_kernel(int64_t num_boxes, const T* __restrict__ boxes, T threshold,
                                        Word* __restrict__ mask) {
  const int64_t num_words = ceil_div(num_boxes, kWordBits);
  const int64_t row_tile = blockIdx.y;
  const int64_t col_tile = blockIdx.x;
  if (col_tile < row_tile) {
    return;
  }
  const int64_t row_begin = row_tile * kWordBits;
  const int64_t col_begin = col_tile * kWordBits;
  const int rows = static_cast<int>(num_boxes - row_begin < kWordBits ? num_boxes - row_begin : kWordBits);
  const int cols = static_cast<int>(num_boxes - col_begin < kWordBits ? num_boxes - col_begin : kWordBits);

  __shared__ rotated::PreparedBox<T> col_boxes[kWordBits];
  if (threadIdx.x < cols) {
    col_boxes[threadIdx.x] = load_box(boxes + (col_begin + threadIdx.x) * 5);
  }
  __syncthreads();
  if (threadIdx.x >= rows) {
    return;
  }
  const int64_t row = row_begin + threadIdx.x;
  const rotated::PreparedBox<T> row_box = load_box(boxes + row * 5);
  const int first = (row_tile == col_tile) ? static_cast<int>(threadIdx.x) + 1 : 0;
  Word bits = 0;
  for (int k = first; k < cols; ++k) {
    // (better box, worse box): the argument order of the CPU kernel
    if (rotated::iou<T>(row_box, col_boxes[k]) > threshold) {
      bits |= Word(1) << k;
    }
  }
  mask[row * num_words + col_tile] = bits;
}

}  // namespace

at::Tensor nms_rotated_cuda(const at::Tensor& dets, const at::Tensor& scores, double iou_threshold) {
  TORCH_CHECK(dets.is_cuda() && scores.is_cuda(), "nms_rotated: dets and scores must be CUDA tensors");
  TORCH_CHECK(dets.device() == scores.device(), "nms_rotated: dets and scores must be on one device, got ",
              dets.device(), " and ", scores.device());
  TORCH_CHECK(dets.dim() == 2 && dets.size(1) == 5, "nms_rotated: dets must be (N, 5), got ", dets.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == dets.size(0), "nms_rotated: scores must be (N) with N = ",
              dets.size(0), ", got ", scores.sizes());
  const int64_t num_boxes = dets.size(0);
  if (num_boxes == 0) {
    return at::empty({0}, dets.options().dtype(at::kLong));
  }
  const int64_t num_words = ceil_div(num_boxes, kWordBits);
  TORCH_CHECK(num_words <= 65535, "nms_rotated: at most ", 65535 * kWordBits, " boxes on CUDA, got ", num_boxes);
  c10::cuda::CUDAGuard device_guard(dets.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  at::Tensor mask = at::empty({num_boxes, num_words}, dets.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dets.scalar_type(), "nms_rotated_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const at::Tensor sorted = dets.index_select(0, order).to(c10::CppTypeToScalarType<T>::value).contiguous();
    const dim3 grid(static_cast<unsigned>(num_words), static_cast<unsigned>(num_words));
    nms_rotated_mask_kernel<T><<<grid, kWordBits, 0, stream>>>(
        num_boxes, sorted.data_ptr<T>(), threshold_in<T>(iou_threshold),
        reinterpret_cast<Word*>(mask.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return order.masked_select(nms_keep_from_mask_cuda(mask, num_boxes));
}

TORCH_LIBRARY_IMPL(detzoo, CUDA, m) {
  m.impl("nms_rotated", &nms_rotated_cuda);
}

}  // namespace detzoo
