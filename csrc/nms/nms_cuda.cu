// Blocked-bitmask NMS of axis-aligned boxes on the GPU.
//
// 1. The boxes are sorted by decreasing score (stable).
// 2. nms_mask_kernel fills the "IoU above the threshold" relation between the sorted boxes,
//    64 boxes to a word: block (x, y) tests the 64 boxes of row tile y against the 64 of column
//    tile x (staged in shared memory), one thread per row box, and writes one word per row.
//    Only tiles on or above the diagonal are needed: a box is only suppressed by a better one.
// 3. nms_keep_kernel makes the greedy decisions from that mask in one block, a word (64 boxes)
//    at a time: one thread walks the word's bits, then all threads OR the rows of the boxes
//    just kept into the running "removed" words that follow.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "nms/nms.h"

namespace detzoo {
namespace {

using Word = unsigned long long;
constexpr int kWordBits = 64;
constexpr int kKeepThreads = 256;

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

__device__ __forceinline__ float mul_rn(float a, float b) {
  return __fmul_rn(a, b);
}
__device__ __forceinline__ double mul_rn(double a, double b) {
  return __dmul_rn(a, b);
}

// The CPU kernel's (and torchvision's) IoU test, with its products kept out of fused
// multiply-adds so that a box exactly at the threshold is decided as on the CPU.
template <typename T>
__device__ __forceinline__ bool iou_above(const T* a, const T* b, T threshold) {
  const T w = max(static_cast<T>(0), min(a[2], b[2]) - max(a[0], b[0]));
  const T h = max(static_cast<T>(0), min(a[3], b[3]) - max(a[1], b[1]));
  const T inter = mul_rn(w, h);
  const T area_a = mul_rn(a[2] - a[0], a[3] - a[1]);
  const T area_b = mul_rn(b[2] - b[0], b[3] - b[1]);
  return inter / (area_a + area_b - inter) > threshold;
}

template <typename T>
__global__ void nms_mask_kernel(int64_t num_boxes, const T* __restrict__ boxes, T threshold, Word* __restrict__ mask) {
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

  __shared__ T col_boxes[kWordBits * 4];
  for (int k = threadIdx.x; k < cols * 4; k += blockDim.x) {
    col_boxes[k] = boxes[col_begin * 4 + k];
  }
  __syncthreads();
  if (threadIdx.x >= rows) {
    return;
  }
  const int64_t row = row_begin + threadIdx.x;
  const T row_box[4] = {boxes[row * 4], boxes[row * 4 + 1], boxes[row * 4 + 2], boxes[row * 4 + 3]};
  const int first = (row_tile == col_tile) ? static_cast<int>(threadIdx.x) + 1 : 0;
  Word bits = 0;
  for (int k = first; k < cols; ++k) {
    if (iou_above(row_box, col_boxes + 4 * k, threshold)) {
      bits |= Word(1) << k;
    }
  }
  mask[row * num_words + col_tile] = bits;
}

__global__ void nms_keep_kernel(int64_t num_boxes, const Word* __restrict__ mask, Word* __restrict__ removed,
                                bool* __restrict__ keep) {
  const int64_t num_words = ceil_div(num_boxes, kWordBits);
  __shared__ Word own_word[kWordBits];  // row b of this word's boxes, restricted to this word
  __shared__ int kept_bits[kWordBits];
  __shared__ int num_kept;
  for (int64_t w = 0; w < num_words; ++w) {
    const int64_t base = w * kWordBits;
    const int bits = static_cast<int>(num_boxes - base < kWordBits ? num_boxes - base : kWordBits);
    // Fetch the 64 words the serial walk needs in parallel, rather than one by one.
    for (int b = threadIdx.x; b < bits; b += blockDim.x) {
      own_word[b] = mask[(base + b) * num_words + w];
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      Word dead = removed[w];
      int count = 0;
      for (int b = 0; b < bits; ++b) {
        if (!((dead >> b) & 1)) {
          keep[base + b] = true;
          kept_bits[count++] = b;
          dead |= own_word[b];
        }
      }
      num_kept = count;
    }
    __syncthreads();
    for (int k = 0; k < num_kept; ++k) {
      const Word* row = mask + (base + kept_bits[k]) * num_words;
      for (int64_t v = w + 1 + threadIdx.x; v < num_words; v += blockDim.x) {
        removed[v] |= row[v];
      }
    }
    // removed[w + 1] must be complete before thread 0 reads it, and own_word free for reuse.
    __syncthreads();
  }
}

}  // namespace

at::Tensor nms_keep_from_mask_cuda(const at::Tensor& mask, int64_t num_boxes) {
  const int64_t num_words = ceil_div(num_boxes, kWordBits);
  TORCH_CHECK(mask.is_cuda() && mask.scalar_type() == at::kLong && mask.is_contiguous() &&
                  mask.numel() == num_boxes * num_words,
              "nms_keep_from_mask_cuda: mask must be a contiguous int64 CUDA tensor of ", num_boxes, " x ",
              num_words, " words");
  c10::cuda::CUDAGuard device_guard(mask.device());
  at::Tensor removed = at::zeros({num_words}, mask.options());
  at::Tensor keep = at::zeros({num_boxes}, mask.options().dtype(at::kBool));
  if (num_boxes == 0) {
    return keep;
  }
  nms_keep_kernel<<<1, kKeepThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      num_boxes, reinterpret_cast<const Word*>(mask.data_ptr<int64_t>()),
      reinterpret_cast<Word*>(removed.data_ptr<int64_t>()), keep.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return keep;
}

at::Tensor nms_cuda(const at::Tensor& dets, const at::Tensor& scores, double iou_threshold) {
  TORCH_CHECK(dets.is_cuda() && scores.is_cuda(), "nms: dets and scores must be CUDA tensors");
  TORCH_CHECK(dets.device() == scores.device(), "nms: dets and scores must be on one device, got ", dets.device(),
              " and ", scores.device());
  TORCH_CHECK(dets.dim() == 2 && dets.size(1) == 4, "nms: dets must be (N, 4), got ", dets.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == dets.size(0), "nms: scores must be (N) with N = ",
              dets.size(0), ", got ", scores.sizes());
  const int64_t num_boxes = dets.size(0);
  if (num_boxes == 0) {
    return at::empty({0}, dets.options().dtype(at::kLong));
  }
  const int64_t num_words = ceil_div(num_boxes, kWordBits);
  TORCH_CHECK(num_words <= 65535, "nms: at most ", 65535 * kWordBits, " boxes on CUDA, got ", num_boxes);
  c10::cuda::CUDAGuard device_guard(dets.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  at::Tensor mask = at::empty({num_boxes, num_words}, dets.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dets.scalar_type(), "nms_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const at::Tensor sorted = dets.index_select(0, order).to(c10::CppTypeToScalarType<T>::value).contiguous();
    const dim3 grid(static_cast<unsigned>(num_words), static_cast<unsigned>(num_words));
    nms_mask_kernel<T><<<grid, kWordBits, 0, stream>>>(num_boxes, sorted.data_ptr<T>(), threshold_in<T>(iou_threshold),
                                                       reinterpret_cast<Word*>(mask.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return order.masked_select(nms_keep_from_mask_cuda(mask, num_boxes));
}

TORCH_LIBRARY_IMPL(detzoo, CUDA, m) {
  m.impl("nms", &nms_cuda);
}

}  // namespace detzoo
