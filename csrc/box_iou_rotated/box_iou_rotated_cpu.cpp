// Pairwise IoU of rotated boxes on the CPU: every (i, j) pair is independent, so the N x M
// pairs are split across threads; each box's sin / cos is computed once beforehand.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "box_iou_rotated/box_iou_rotated.h"
#include "box_iou_rotated/box_iou_rotated_utils.h"

namespace detzoo {
namespace {

// Pairs per thread task; a pair costs from a few ns (far apart) to a few hundred (clipping).
constexpr int64_t kPairsGrain = 1024;

template <typename scalar_t, typename T>
std::vector<rotated::PreparedBox<T>> prepare_boxes(const at::Tensor& boxes) {
  const int64_t n = boxes.size(0);
  std::vector<rotated::PreparedBox<T>> prepared(n);
  const scalar_t* b = boxes.data_ptr<scalar_t>();
  at::parallel_for(0, n, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* box = b + 5 * i;
      prepared[i] = rotated::prepare_box<T>(static_cast<T>(box[0]), static_cast<T>(box[1]), static_cast<T>(box[2]),
                                            static_cast<T>(box[3]), static_cast<T>(box[4]));
    }
  });
  return prepared;
}

template <typename scalar_t>
void box_iou_rotated_cpu_typed(const at::Tensor& boxes1, const at::Tensor& boxes2, at::Tensor& ious) {
  using T = at::opmath_type<scalar_t>;
  const std::vector<rotated::PreparedBox<T>> prepared1 = prepare_boxes<scalar_t, T>(boxes1);
  const std::vector<rotated::PreparedBox<T>> prepared2 = prepare_boxes<scalar_t, T>(boxes2);
  const int64_t num2 = boxes2.size(0);
  scalar_t* out = ious.data_ptr<scalar_t>();
  at::parallel_for(0, ious.numel(), kPairsGrain, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      out[k] = static_cast<scalar_t>(rotated::iou<T>(prepared1[k / num2], prepared2[k % num2]));
    }
  });
}

}  // namespace

at::Tensor box_iou_rotated_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2) {
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
  const at::Tensor boxes1_c = boxes1.contiguous();
  const at::Tensor boxes2_c = boxes2.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "box_iou_rotated_cpu", [&] {
    box_iou_rotated_cpu_typed<scalar_t>(boxes1_c, boxes2_c, ious);
  });
  return ious;
}

TORCH_LIBRARY_IMPL(detzoo, CPU, m) {
  m.impl("box_iou_rotated", &box_iou_rotated_cpu);
}

}  // namespace detzoo
