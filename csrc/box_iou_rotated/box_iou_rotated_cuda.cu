// Pairwise IoU of rotated boxes on the GPU, by tiles: a block stages 32 boxes of each set in
// shared memory (with their sin / cos computed once) and its 32 x 8 threads compute the
// 32 x 32 pairs, each thread one column and four rows, so that a warp writes 32 consecutive
// outputs. Blocks stride over the tiles, so any N and M fit in the grid.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "box_iou_rotated/box_iou_rotated.h"
#include "box_iou_rotated/box_iou_rotated_utils.h"

namespace detzoo {
namespace {

constexpr int kTile = 32;
constexpr int kBlockRows = 8;
constexpr int64_t kMaxBlocks = 65535;

template <typename scalar_t, typename T>
__device__ __forceinline__ rotated::PreparedBox<T> load_box(const scalar_t* box) {
  return rotated::prepare_box<T>(static_cast<T>(box[0]), static_cast<T>(box[1]), static_cast<T>(box[2]),
                                 static_cast<T>(box[3]), static_cast<T>(box[4]));
}

template <typename scalar_t>
__global__ void box_iou_rotated_kernel(int64_t num1, int64_t num2, const scalar_t* __restrict__ boxes1,
                                       const scalar_t* __restrict__ boxes2, scalar_t* __restrict__ ious) {
  using T = at::opmath_type<scalar_t>;
  __shared__ rotated::PreparedBox<T> tile1[kTile];
  __shared__ rotated::PreparedBox<T> tile2[kTile];
  const int64_t col_tiles = (num2 + kTile - 1) / kTile;
  const int64_t num_tiles = ((num1 + kTile - 1) / kTile) * col_tiles;
  const int thread = threadIdx.y * kTile + threadIdx.x;
  for (int64_t tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
    const int64_t row_begin = (tile / col_tiles) * kTile;
    const int64_t col_begin = (tile % col_tiles) * kTile;
    if (thread < kTile) {
      if (row_begin + thread < num1) {
        tile1[thread] = load_box<scalar_t, T>(boxes1 + (row_begin + thread) * 5);
      }
    } else if (thread < 2 * kTile) {
      if (col_begin + thread - kTile < num2) {
        tile2[thread - kTile] = load_box<scalar_t, T>(boxes2 + (col_begin + thread - kTile) * 5);
      }
    }
    __syncthreads();
    const int64_t col = col_begin + threadIdx.x;
    if (col < num2) {
      for (int r = threadIdx.y; r < kTile && row_begin + r < num1; r += kBlockRows) {
        ious[(row_begin + r) * num2 + col] = static_cast<scalar_t>(rotated::iou<T>(tile1[r], tile2[threadIdx.x]));
      }
    }
    __syncthreads();  // the tiles are overwritten next round
  }
}

}  // namespace

at::Tensor box_iou_rotated_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  TORCH_CHECK(boxes1.is_cuda() && boxes2.is_cuda(), "box_iou_rotated: boxes1 and boxes2 must be CUDA tensors");
  TORCH_CHECK(boxes1.device() == boxes2.device(), "box_iou_rotated: boxes1 and boxes2 must be on one device, got ",
              boxes1.device(), " and ", boxes2.device());
  TORCH_CHECK(boxes1.dim() == 2 && boxes1.size(1) == 5, "box_iou_rotated: boxes1 must be (N, 5), got ",
              boxes1.sizes());
  TORCH_CHECK(boxes2.dim() == 2 && boxes2.size(1) == 5, "box_iou_rotated: boxes2 must be (M, 5), got ",
              boxes2.sizes());
  TORCH_CHECK(boxes1.scalar_type() == boxes2.scalar_type(), "box_iou_rotated: boxes1 and boxes2 must have one dtype, got ",
              boxes1.scalar_type(), " and ", boxes2.scalar_type());
  at::Tensor ious = at::empty({boxes1.size(0), boxes2.size(0)}, boxes1.options());
  if (ious.numel() == 0) {
    return ious;
  }
  c10::cuda::CUDAGuard device_guard(boxes1.device());
  const at::Tensor boxes1_c = boxes1.contiguous();
  const at::Tensor boxes2_c = boxes2.contiguous();
  const int64_t num_tiles = ((boxes1.size(0) + kTile - 1) / kTile) * ((boxes2.size(0) + kTile - 1) / kTile);
  const dim3 grid(static_cast<unsigned>(std::min(num_tiles, kMaxBlocks)));
  const dim3 block(kTile, kBlockRows);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "box_iou_rotated_cuda", [&] {
    box_iou_rotated_kernel<scalar_t><<<grid, block, 0, at::cuda::getCurrentCUDAStream()>>>(
        boxes1.size(0), boxes2.size(0), boxes1_c.data_ptr<scalar_t>(), boxes2_c.data_ptr<scalar_t>(),
        ious.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return ious;
}

TORCH_LIBRARY_IMPL(detzoo, CUDA, m) {
  m.impl("box_iou_rotated", &box_iou_rotated_cuda);
}

}  // namespace detzoo
