// The schemas of every detzoo operator, declared once. Kernels are registered per dispatch key
// next to their implementation (csrc/<op>/<op>_cpu.cpp, <op>_cuda.cu); autograd and fake
// (meta) kernels are registered from Python (detzoo/layers/*.py), as torchvision does.
#include <torch/library.h>

TORCH_LIBRARY(detzoo, m) {
  // ROIAlign (Mask R-CNN); rois are (R, 5): batch index, x1, y1, x2, y2 in input coordinates.
  m.def("roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height, "
        "int pooled_width, int sampling_ratio, bool aligned) -> Tensor");
  m.def("_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, "
        "int pooled_width, int batch_size, int channels, int height, int width, int sampling_ratio, "
        "bool aligned) -> Tensor");
  // Rotated ROIAlign; rois are (R, 6): batch index, x_ctr, y_ctr, w, h, angle (degrees, CCW).
  m.def("roi_align_rotated(Tensor input, Tensor rois, float spatial_scale, int pooled_height, "
        "int pooled_width, int sampling_ratio) -> Tensor");
  m.def("_roi_align_rotated_backward(Tensor grad, Tensor rois, float spatial_scale, "
        "int pooled_height, int pooled_width, int batch_size, int channels, int height, int width, "
        "int sampling_ratio) -> Tensor");
  // Non-maximum suppression; returns kept indices (int64) sorted by decreasing score.
  m.def("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor");
  m.def("nms_rotated(Tensor dets, Tensor scores, float iou_threshold) -> Tensor");
  // Pairwise IoU of rotated boxes (N, 5) x (M, 5) -> (N, M).
  m.def("box_iou_rotated(Tensor boxes1, Tensor boxes2) -> Tensor");
  // Deformable convolution v1 (use_mask=false) and v2 / modulated (use_mask=true).
  m.def("deform_conv(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
        "int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, "
        "int groups, int offset_groups, bool use_mask) -> Tensor");
  m.def("_deform_conv_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, "
        "Tensor mask, Tensor bias, int stride_h, int stride_w, int pad_h, int pad_w, "
        "int dilation_h, int dilation_w, int groups, int offset_groups, bool use_mask) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
