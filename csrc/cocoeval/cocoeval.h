// COCO evaluation (pycocotools' COCOeval.evaluate() and accumulate()) in C++.
//
// The Python side (detzoo/evaluation/fast_eval_api.py) hands the annotation dicts over once;
// they are read into the flat arrays of `Annotations`, then every (category, image) pair is
// matched in parallel and the precision / recall tables are built in parallel over categories.
// IoU, mask IoU (on run lengths) and OKS follow pycocotools' arithmetic, so the summary metrics
// are pycocotools' own, ties at an IoU threshold included.
//
// This is not a tensor op: it is a plain CPython extension (detzoo._cocoeval) that needs neither
// torch nor numpy headers; arrays travel through the buffer protocol.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

namespace detzoo {
namespace cocoeval {

// std::allocator whose resize() leaves new elements of trivial types uninitialised: the large
// arrays below are written in full by worker threads, so zero-filling them first would only
// cost a serial pass over memory.
template <typename T>
struct UninitializedAllocator : std::allocator<T> {
  template <typename U>
  struct rebind {
    using other = UninitializedAllocator<U>;
  };
  UninitializedAllocator() = default;
  template <typename U>
  UninitializedAllocator(const UninitializedAllocator<U>&) noexcept {}
  template <typename U>
  void construct(U* p) noexcept(std::is_nothrow_default_constructible<U>::value) {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

template <typename T>
using Buffer = std::vector<T, UninitializedAllocator<T>>;

enum class IouType : int { kBbox = 0, kSegm = 1, kKeypoints = 2 };

// The forms of `segmentation` that pycocotools' COCO.annToRLE accepts.
enum class MaskFormat : uint8_t {
  kNone,             // no mask read (bbox / keypoints evaluation)
  kCompressedRle,    // {"size": [h, w], "counts": "string of 6-bit chars"}
  kUncompressedRle,  // {"size": [h, w], "counts": [run lengths]}
  kPolygons,         // [[x0, y0, x1, y1, ...], ...] in an image of height x width
  kBoxes,            // [[x, y, w, h], ...]: a list whose first entry has 4 numbers (frPyObjects)
};

struct MaskSource {
  MaskFormat format = MaskFormat::kNone;
  int64_t height = 0;
  int64_t width = 0;
  // kCompressedRle: the characters, owned by a Python str / bytes that the caller keeps alive.
  const char* text = nullptr;
  int64_t text_size = 0;
  // kUncompressedRle: [begin, end) in Annotations::rle_counts.
  // kPolygons / kBoxes: polygons [begin, end) of Annotations::polygon_offsets.
  int64_t begin = 0;
  int64_t end = 0;
};

// The annotations of one side (ground truth or detections) that take part in the evaluation,
// one entry per annotation in the order of the dataset.
struct Annotations {
  Buffer<int64_t> id;
  Buffer<int32_t> image;     // index into the evaluated image ids
  Buffer<int32_t> category;  // index into the evaluated category ids
  Buffer<double> area;
  Buffer<double> score;      // detections
  Buffer<double> box;        // 4 per annotation, XYWH_ABS (bbox and keypoints evaluation)
  Buffer<uint8_t> crowd;     // ground truth
  Buffer<uint8_t> ignore;    // ground truth: crowd, or (keypoints) num_keypoints == 0
  Buffer<double> keypoints;  // 3 * num_keypoints per annotation: x, y, visibility
  Buffer<MaskSource> masks;  // segm evaluation
  Buffer<uint32_t> rle_counts;
  Buffer<double> polygon_coords;          // x0 y0 x1 y1 ... of every polygon
  Buffer<int64_t> polygon_offsets = {0};  // polygon p: [offsets[p], offsets[p + 1])

  int64_t size() const { return static_cast<int64_t>(id.size()); }
};

// Where evaluate() spends its time (DETZOO_COCOEVAL_TIMING=1 prints it): seconds summed over
// threads, except `grouping` and `pairs` (wall clock).
struct StageSeconds {
  double grouping = 0;   // annotations grouped by (image, category)
  double pairs = 0;      // every pair evaluated
  double sorting = 0;    // detections sorted by score and stored
  double gt_masks = 0;   // ground-truth masks decoded (polygons rasterised)
  double dt_masks = 0;   // detection masks decoded
  double ious = 0;       // IoU / OKS matrices
  double matching = 0;   // greedy matching for every area range and threshold
};

struct EvaluateParams {
  IouType iou_type = IouType::kBbox;
  bool use_cats = true;
  int64_t num_images = 0;
  // Evaluated category ids (p.catIds); with use_cats == false they are one group, concatenated
  // in this order as pycocotools does.
  int64_t num_categories = 0;
  std::vector<std::array<double, 2>> area_ranges;
  std::vector<double> iou_thresholds;
  int64_t max_detections = 100;     // p.maxDets[-1]
  std::vector<double> oks_sigmas;   // keypoints
  int num_threads = 1;
  // When set, evaluate() adds the seconds each stage took, summed over threads, into it.
  StageSeconds* stage_seconds = nullptr;
};

// What accumulate() needs of evaluate(). The kept detections (the best `max_detections` of each
// (category, image) pair) are stored grouped by category, then image, then score rank.
struct Evaluation {
  int64_t num_images = 0;
  int64_t num_categories = 0;  // 1 with use_cats == false
  int64_t num_areas = 0;
  int64_t num_thresholds = 0;
  std::vector<int64_t> category_begin;  // [K + 1]
  Buffer<double> scores;                // [N]
  Buffer<int32_t> images;               // [N]
  Buffer<int32_t> ranks;                // [N] rank by score within its (category, image)
  Buffer<uint8_t> outcomes;             // [N][A][T], values of Outcome
  std::vector<int32_t> num_valid_gt;    // [K][A][I] ground truth not ignored in that area range
};

enum Outcome : uint8_t { kFalsePositive = 0, kTruePositive = 1, kIgnored = 2 };

// pycocotools' accumulate(p): k_list, a_list, m_list (max detection values) and i_list index the
// layout of the evaluation; results go to position n of each list in the output tables.
struct AccumulateParams {
  std::vector<int64_t> categories;
  std::vector<int64_t> areas;
  std::vector<int64_t> max_detections;
  std::vector<int64_t> images;
  std::vector<double> recall_thresholds;
  int64_t out_categories = 0;  // K, A, M of the output tables
  int64_t out_areas = 0;
  int64_t out_max_detections = 0;
  int num_threads = 1;
};

// Throws std::invalid_argument on malformed input (a polygon of an image without a size).
Evaluation evaluate(const EvaluateParams& params, const Annotations& gt, const Annotations& dt);

// Writes into tables pre-filled with -1: precision and scores [T, R, K, A, M], recall
// [T, K, A, M] (C order).
void accumulate(const Evaluation& evaluation, const AccumulateParams& params, double* precision,
                double* recall, double* scores);

// A decoded mask: foreground runs [start, end) in column-major pixel order, its area and, when
// decoded with it, the bounding box pycocotools derives from its run lengths (its overlap
// pre-check, which decides only between masks of different sizes: see mask_iou).
struct Mask {
  int64_t height = 0;
  int64_t width = 0;
  Buffer<uint32_t> runs;  // start0, end0, start1, end1, ...
  uint64_t area = 0;
  std::array<double, 4> box = {0, 0, 0, 0};
};

// Buffers reused by decode_mask() from one mask to the next.
struct MaskScratch {
  std::vector<uint32_t> toggles;
  std::vector<std::pair<uint32_t, uint32_t>> runs;
  Mask part;
};

// Decodes the mask of annotation `index` into `out` (its storage reused); its box only if
// `with_box` (compressed RLEs decode faster without).
void decode_mask(const Annotations& annotations, int64_t index, bool with_box, Mask* out,
                 MaskScratch* scratch);

// pycocotools' mask IoU: -1 for masks of different sizes whose boxes overlap (their boxes must
// have been decoded), and intersection / area(dt) against a crowd region.
double mask_iou(const Mask& dt, const Mask& gt, bool crowd);

}  // namespace cocoeval
}  // namespace detzoo
