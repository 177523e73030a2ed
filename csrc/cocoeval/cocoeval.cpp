// detzoo._cocoeval: pycocotools' COCOeval.evaluate() / accumulate() in C++ (see cocoeval.h).
//
// Part 1 is plain C++: masks, IoU / OKS, per-(category, image) matching, precision tables.
// Part 2 reads the annotation dicts and exposes the module to Python.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "cocoeval/cocoeval.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>

namespace detzoo {
namespace cocoeval {
namespace {

// Runs fn(begin, end) over [0, n) in chunks of `grain` on up to `num_threads` threads (the
// caller's thread included). The first exception thrown by a chunk is rethrown here.
template <typename Fn>
void parallel_for(int64_t n, int64_t grain, int num_threads, const Fn& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t num_chunks = (n + grain - 1) / grain;
  const int64_t workers = std::min<int64_t>(std::max(num_threads, 1), num_chunks);
  if (workers == 1) {
    fn(0, n);
    return;
  }
  std::atomic<int64_t> next_chunk{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto work = [&]() {
    try {
      for (int64_t c = next_chunk++; c < num_chunks; c = next_chunk++) {
        fn(c * grain, std::min(n, (c + 1) * grain));
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      next_chunk = num_chunks;
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(workers - 1);
  for (int64_t w = 1; w < workers; ++w) threads.emplace_back(work);
  work();
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

// numpy's np.spacing(1): pycocotools adds it to OKS areas and precision denominators.
constexpr double kEps = std::numeric_limits<double>::epsilon();

// Adds the seconds since the last lap to a stage's total; does nothing when not profiling.
class Stopwatch {
 public:
  explicit Stopwatch(bool enabled) : enabled_(enabled) {
    if (enabled_) last_ = std::chrono::steady_clock::now();
  }
  void lap(double* total) {
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    *total += std::chrono::duration<double>(now - last_).count();
    last_ = now;
  }

 private:
  bool enabled_;
  std::chrono::steady_clock::time_point last_;
};

// Descending score, NaN last, as numpy's stable argsort of -score orders them.
inline bool higher_score(double a, double b) {
  if (std::isnan(b)) return !std::isnan(a);
  return a > b;
}

// Stable sort of annotation indices by descending score. Most (category, image) pairs hold a
// handful of detections: insertion sort (stable too) spares std::stable_sort's buffer.
void sort_by_score(std::vector<int64_t>* indices, const Buffer<double>& scores) {
  auto before = [&scores](int64_t a, int64_t b) { return higher_score(scores[a], scores[b]); };
  if (indices->size() > 32) {
    std::stable_sort(indices->begin(), indices->end(), before);
    return;
  }
  for (size_t j = 1; j < indices->size(); ++j) {
    const int64_t value = (*indices)[j];
    size_t i = j;
    for (; i > 0 && before(value, (*indices)[i - 1]); --i) (*indices)[i] = (*indices)[i - 1];
    (*indices)[i] = value;
  }
}

// ----------------------------------------------------------------------------------------------
// Masks

// Builds a Mask from its run lengths, given one at a time (zeros first, then ones, ...), into
// storage reused from mask to mask. The box follows pycocotools' rleToBbox with its unsigned
// arithmetic: the first and last pixel of each foreground run, full height when a run wraps to
// the next column, and a run start counted only if a run length follows it.
class MaskBuilder {
 public:
  void start(Mask* mask, int64_t height, int64_t width) {
    mask_ = mask;
    mask_->height = height;
    mask_->width = width;
    mask_->runs.clear();
    mask_->area = 0;
    height_ = static_cast<uint32_t>(height);
    inverse_height_ = height_ > 0 ? 1.0 / height_ : 0;
    position_ = 0;
    index_ = 0;
    x_min_ = static_cast<uint32_t>(width);
    y_min_ = height_;
    x_max_ = y_max_ = run_column_ = column_ = column_start_ = 0;
  }

  void add(uint32_t count) {
    const uint32_t run_start = position_;
    position_ += count;
    if (index_ & 1) {
      if (height_ > 0) {
        extend_box(run_start, false);
        extend_box(position_ - 1, true);
      }
      if (count > 0) {
        mask_->runs.push_back(run_start);
        mask_->runs.push_back(position_);
        mask_->area += count;
      }
    }
    ++index_;
  }

  void finish() {
    if (index_ < 2 || height_ == 0) {
      mask_->box = {0, 0, 0, 0};
    } else {
      mask_->box = {static_cast<double>(x_min_), static_cast<double>(y_min_),
                    static_cast<double>(x_max_ - x_min_ + 1), static_cast<double>(y_max_ - y_min_ + 1)};
    }
  }

 private:
  void extend_box(uint32_t pixel, bool run_end) {
    // pixel / height and pixel % height, computed only when the pixel leaves the last column,
    // by a multiplication by 1 / height corrected to the exact quotient (a division costs
    // several times more, once per run)
    if (pixel - column_start_ >= height_) {
      uint64_t column = static_cast<uint64_t>(pixel * inverse_height_);
      while (column * height_ > pixel) --column;
      while ((column + 1) * height_ <= pixel) ++column;
      column_ = static_cast<uint32_t>(column);
      column_start_ = column_ * height_;
    }
    const uint32_t x = column_;
    const uint32_t y = pixel - column_start_;
    if (!run_end) {
      run_column_ = x;
    } else if (run_column_ < x) {
      y_min_ = 0;
      y_max_ = height_ - 1;
    }
    x_min_ = std::min(x_min_, x);
    x_max_ = std::max(x_max_, x);
    y_min_ = std::min(y_min_, y);
    y_max_ = std::max(y_max_, y);
  }

  Mask* mask_ = nullptr;
  uint32_t height_ = 0, position_ = 0, index_ = 0;
  uint32_t x_min_ = 0, y_min_ = 0, x_max_ = 0, y_max_ = 0, run_column_ = 0;
  uint32_t column_ = 0, column_start_ = 0;
  double inverse_height_ = 0;
};

// Reads the compressed RLE string [text, end) one count at a time. pycocotools' format: each
// count is a little-endian series of 5-bit groups in characters offset by '0'; 0x20 flags that
// more characters follow and 0x10 on the last one makes the value negative. From the third
// count on, the stored value is the difference to the count two places before.
class CountReader {
 public:
  CountReader(const char* text, int64_t size) : p_(text), end_(text + size) {}

  // false at the end of the string (or at a NUL, where pycocotools' C string ends)
  bool next(uint32_t* count) {
    if (p_ == end_ || *p_ == '\0') return false;
    int64_t value;
    const int64_t c = static_cast<int64_t>(*p_) - 48;
    if ((c & 0x20) == 0) {  // one character: most counts of object masks
      value = (c & 0x10) ? (c & 0x1f) - 32 : (c & 0x1f);
      ++p_;
    } else {
      value = read_long();
    }
    if (index_ > 2) value += two_back_;
    *count = static_cast<uint32_t>(value);
    two_back_ = one_back_;
    one_back_ = *count;
    ++index_;
    return true;
  }

 private:
  int64_t read_long() {
    int64_t value = 0;
    int shift = 0;
    bool more = true;
    while (more && p_ != end_ && *p_ != '\0') {
      const int64_t c = static_cast<int64_t>(*p_) - 48;
      if (shift < 60) value |= (c & 0x1f) << shift;
      more = (c & 0x20) != 0;
      ++p_;
      shift += 5;
      if (!more && (c & 0x10) && shift < 63) value |= ~((int64_t{1} << shift) - 1);
    }
    return value;
  }

  const char* p_;
  const char* const end_;
  uint32_t two_back_ = 0, one_back_ = 0;
  int64_t index_ = 0;
};

void decode_string(const char* text, int64_t size, MaskBuilder* builder) {
  CountReader reader(text, size);
  uint32_t count;
  while (reader.next(&count)) builder->add(count);
}

// decode_string without the box: the runs written in place (a string holds at most one count
// per character, so size + 2 entries suffice), with MaskBuilder's arithmetic.
void decode_string_runs(const char* text, int64_t size, Mask* out) {
  out->runs.resize(static_cast<size_t>(size) + 2);
  uint32_t* run = out->runs.data();
  CountReader reader(text, size);
  uint32_t position = 0, zeros, ones;
  uint64_t area = 0;
  while (reader.next(&zeros)) {
    position += zeros;
    if (!reader.next(&ones)) break;
    if (ones > 0) {
      run[0] = position;
      run[1] = position + ones;
      run += 2;
      area += ones;
    }
    position += ones;
  }
  out->runs.resize(static_cast<size_t>(run - out->runs.data()));
  out->area = area;
}

// pycocotools' polygon rasteriser (rleFrPoly): the outline is traced on a grid 5x finer than
// the pixels, one point per step along the longer axis of each edge, each edge walked from its
// lower end so that the rounding matches. Where two consecutive points change column, the
// column, if it holds a pixel centre, toggles the mask at the first pixel centre below the
// crossing. The toggles (as column-major pixel indices) are appended to `toggles`, in no
// particular order (they are sorted afterwards).
//
// Only the point pairs that toggle are visited: within an edge that steps along x, every fifth
// pair crosses a pixel-centre column; along y, the pairs that cross one are searched for; and
// consecutive edges meet at points that pycocotools' rounding may place one column apart.
class PolygonTracer {
 public:
  static constexpr int kScale = 5;

  PolygonTracer(int64_t height, int64_t width, std::vector<uint32_t>* toggles)
      : height_(height), last_column_(kScale * (width - 1) + 2), toggles_(toggles) {}

  void trace(const double* xy, int64_t num_points) {
    if (num_points <= 0) return;
    has_last_ = false;
    const int x_first = upsample(xy[0]), y_first = upsample(xy[1]);
    int x0 = x_first, y0 = y_first;
    for (int64_t j = 0; j < num_points; ++j) {
      const bool last = j + 1 == num_points;
      const int x1 = last ? x_first : upsample(xy[2 * j + 2]);
      const int y1 = last ? y_first : upsample(xy[2 * j + 3]);
      trace_edge(x0, y0, x1, y1);
      x0 = x1;
      y0 = y1;
    }
  }

 private:
  static int upsample(double v) { return static_cast<int>(kScale * v + .5); }

  // An edge's points in pycocotools' arithmetic: point t of an edge walked from (x0, y0), its
  // lower end along the axis it steps on, with `slope` along the other axis.
  static int rounded(int start, double slope, int t) { return static_cast<int>(start + slope * t + .5); }

  void trace_edge(int x0, int y0, int x1, int y1) {
    const int dx = std::abs(x1 - x0), dy = std::abs(y1 - y0);
    if (dx == 0 && dy == 0) {
      // A repeated vertex: its neighbours on the outline share its column, so its row is never
      // read (pycocotools computes it as 0/0).
      join(x0, y0, x0, y0);
      return;
    }
    const bool along_x = dx >= dy;
    const bool reversed = along_x ? x0 > x1 : y0 > y1;
    if (reversed) {
      std::swap(x0, x1);
      std::swap(y0, y1);
    }
    if (along_x) {
      const double slope = static_cast<double>(y1 - y0) / dx;
      const int y_low = rounded(y0, slope, 0), y_high = rounded(y0, slope, dx);
      reversed ? join(x1, y_high, x0, y_low) : join(x0, y_low, x1, y_high);
      steps_along_x(x0, y0, x1, slope);
    } else {
      const double slope = static_cast<double>(x1 - x0) / dy;
      const int x_low = rounded(x0, slope, 0), x_high = rounded(x0, slope, dy);
      reversed ? join(x_high, y1, x_low, y0) : join(x_low, y0, x_high, y1);
      steps_along_y(x0, y0, y1, slope);
    }
  }

  // Points t and t + 1 lie in columns x0 + t and x0 + t + 1: only the columns of pixel centres
  // (2 mod 5 on the upsampled grid) toggle.
  void steps_along_x(int x0, int y0, int x1, double slope) {
    int column = std::max(x0, 2);
    column += ((2 - column) % kScale + kScale) % kScale;
    const int64_t end = std::min<int64_t>(x1 - 1, last_column_);
    for (; column <= end; column += kScale) {
      const int t = column - x0;
      toggle(column, std::min(rounded(y0, slope, t), rounded(y0, slope, t + 1)));
    }
  }

  // x(t) moves by at most one column per step and only one way (rounding is monotone), so the
  // points cross from column c to c + 1 once, at the first t where x(t + 1) passes c. For each
  // pixel-centre column that t is guessed from the line's equation, then settled with
  // pycocotools' rounding.
  void steps_along_y(int x0, int y0, int y1, double slope) {
    const int dy = y1 - y0;
    const int x_start = rounded(x0, slope, 0), x_end = rounded(x0, slope, dy);
    if (x_start == x_end) return;
    const bool rising = x_end > x_start;
    int column = std::max(std::min(x_start, x_end), 2);
    column += ((2 - column) % kScale + kScale) % kScale;
    const int64_t end = std::min<int64_t>(std::max(x_start, x_end) - 1, last_column_);
    for (; column <= end; column += kScale) {
      auto passed = [&](int t) {
        const int x = rounded(x0, slope, t + 1);
        return rising ? x > column : x <= column;
      };
      const double guess = std::ceil((column + .5 - x0) / slope) - 1;
      int t = static_cast<int>(std::min(std::max(guess, 0.0), dy - 1.0));
      while (t > 0 && passed(t - 1)) --t;
      while (t < dy - 1 && !passed(t)) ++t;
      toggle(column, y0 + t);
    }
  }

  // The pair formed by the last point of the previous edge and the first point (xf, yf) of
  // this one; (xl, yl) is this edge's last point.
  void join(int xf, int yf, int xl, int yl) {
    if (has_last_ && xf != last_x_) toggle(xf < last_x_ ? xf : xf - 1, std::min(yf, last_y_));
    has_last_ = true;
    last_x_ = xl;
    last_y_ = yl;
  }

  // pycocotools maps the upsampled column c to the pixel column (c + .5) / 5 - .5, kept if it is
  // a whole number in [0, width - 1], and the row r to ceil((r + .5) / 5 - .5) clamped to
  // [0, height]: in integers, c = 5 * column + 2 and the row is (r + 2) / 5.
  void toggle(int column, int row) {
    if (column < 2 || column > last_column_ || (column - 2) % kScale != 0) return;
    const int64_t pixel_row = row <= 2 ? 0 : std::min<int64_t>(height_, (row + 2) / kScale);
    toggles_->push_back(static_cast<uint32_t>((column - 2) / kScale * height_ + pixel_row));
  }

  const int64_t height_;
  const int64_t last_column_;  // the upsampled column of the last pixel centre
  std::vector<uint32_t>* toggles_;
  bool has_last_ = false;
  int last_x_ = 0, last_y_ = 0;
};

// Feeds the run lengths of one polygon: its sorted toggles plus the end of the image; a zero
// gap (two toggles on one pixel) cancels both, as in pycocotools.
void polygon_counts(std::vector<uint32_t>* toggles, int64_t height, int64_t width, MaskBuilder* builder) {
  toggles->push_back(static_cast<uint32_t>(height * width));
  std::sort(toggles->begin(), toggles->end());
  uint32_t previous = 0, pending = 0;
  bool has_pending = false, merge_next = false;
  for (size_t j = 0; j < toggles->size(); ++j) {
    const uint32_t gap = (*toggles)[j] - previous;
    previous = (*toggles)[j];
    if (j == 0 || (!merge_next && gap > 0)) {
      if (has_pending) builder->add(pending);
      pending = gap;
      has_pending = true;
    } else if (merge_next) {
      pending += gap;
      merge_next = false;
    } else {
      merge_next = true;
    }
  }
  if (has_pending) builder->add(pending);
}

void polygons_mask(const Annotations& a, const MaskSource& source, Mask* out, MaskScratch* scratch) {
  MaskBuilder builder;
  const int64_t num_polygons = source.end - source.begin;
  scratch->runs.clear();
  for (int64_t p = source.begin; p < source.end; ++p) {
    const double* xy = a.polygon_coords.data() + a.polygon_offsets[p];
    int64_t num_points = (a.polygon_offsets[p + 1] - a.polygon_offsets[p]) / 2;
    double corners[8];
    if (source.format == MaskFormat::kBoxes) {
      // pycocotools' rleFrBbox: the box's 4 corners as a polygon
      const double x0 = xy[0], y0 = xy[1], x1 = x0 + xy[2], y1 = y0 + xy[3];
      const double box_corners[8] = {x0, y0, x0, y1, x1, y1, x1, y0};
      std::copy(box_corners, box_corners + 8, corners);
      xy = corners;
      num_points = 4;
    }
    scratch->toggles.clear();
    PolygonTracer(source.height, source.width, &scratch->toggles).trace(xy, num_points);
    Mask* part = num_polygons == 1 ? out : &scratch->part;
    builder.start(part, source.height, source.width);
    polygon_counts(&scratch->toggles, source.height, source.width, &builder);
    builder.finish();
    if (num_polygons == 1) return;
    for (size_t r = 0; r < part->runs.size(); r += 2) scratch->runs.emplace_back(part->runs[r], part->runs[r + 1]);
  }
  // The parts' union (pycocotools merges them), as canonical run lengths: no empty run but
  // possibly the first.
  std::sort(scratch->runs.begin(), scratch->runs.end());
  builder.start(out, source.height, source.width);
  uint32_t position = 0;
  for (size_t j = 0; j < scratch->runs.size();) {
    const uint32_t start = scratch->runs[j].first;
    uint32_t end = scratch->runs[j].second;
    for (++j; j < scratch->runs.size() && scratch->runs[j].first <= end; ++j) {
      end = std::max(end, scratch->runs[j].second);
    }
    builder.add(start - position);
    builder.add(end - start);
    position = end;
  }
  const uint32_t total = static_cast<uint32_t>(source.height * source.width);
  if (scratch->runs.empty() || position < total) builder.add(total - position);
  builder.finish();
}

// First run of `runs` that ends after `position`.
size_t first_run_ending_after(const Buffer<uint32_t>& runs, uint32_t position) {
  size_t lo = 0, hi = runs.size() / 2;
  while (lo < hi) {
    const size_t mid = (lo + hi) / 2;
    if (runs[2 * mid + 1] > position) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

// Pixels in both masks, walking only the runs within the span both masks cover.
uint64_t intersection(const Buffer<uint32_t>& a, const Buffer<uint32_t>& b) {
  if (a.empty() || b.empty()) return 0;
  const uint32_t lo = std::max(a.front(), b.front());
  const uint32_t hi = std::min(a.back(), b.back());
  if (lo >= hi) return 0;
  const size_t na = a.size() / 2, nb = b.size() / 2;
  size_t i = first_run_ending_after(a, lo), j = first_run_ending_after(b, lo);
  uint64_t total = 0;
  while (i < na && j < nb && a[2 * i] < hi && b[2 * j] < hi) {
    const uint32_t start = std::max(a[2 * i], b[2 * j]);
    const uint32_t end = std::min(a[2 * i + 1], b[2 * j + 1]);
    if (start < end) total += end - start;
    if (a[2 * i + 1] < b[2 * j + 1]) {
      ++i;
    } else {
      ++j;
    }
  }
  return total;
}

// pycocotools' bbIou: boxes XYWH_ABS; against a crowd region the union is the detection's area.
// The operations and their order are pycocotools' so that IoUs at a threshold compare alike.
double box_iou(const double* dt, const double* gt, bool crowd) {
  const double w = std::fmin(dt[2] + dt[0], gt[2] + gt[0]) - std::fmax(dt[0], gt[0]);
  if (w <= 0) return 0;
  const double h = std::fmin(dt[3] + dt[1], gt[3] + gt[1]) - std::fmax(dt[1], gt[1]);
  if (h <= 0) return 0;
  const double inter = w * h;
  const double dt_area = dt[2] * dt[3];
  const double gt_area = gt[2] * gt[3];
  const double uni = crowd ? dt_area : dt_area + gt_area - inter;
  return inter / uni;
}

// ----------------------------------------------------------------------------------------------
// evaluate()

// Annotation indices grouped by (image, category), image-major (pairs are evaluated image by
// image: an image's annotations, which datasets keep together, stay in cache), a single category
// per image with use_cats == false. Within a group the dataset order is kept; without
// categories a group lists its annotations category by category, as pycocotools concatenates
// them.
struct Groups {
  std::vector<int64_t> order;
  std::vector<int64_t> begin;  // [I * categories_per_image + 1]
  int64_t categories_per_image = 1;

  int64_t slot(int64_t image, int64_t category) const { return image * categories_per_image + category; }
  int64_t size(int64_t slot) const { return begin[slot + 1] - begin[slot]; }
};

Groups group_annotations(const Annotations& a, const EvaluateParams& p) {
  const int64_t num_images = p.num_images, num_categories = p.num_categories;
  const int64_t num_keys = num_images * num_categories;
  std::vector<int64_t> key_begin(num_keys + 2, 0);
  auto key = [&](int64_t n) -> int64_t { return int64_t{a.image[n]} * num_categories + a.category[n]; };
  for (int64_t n = 0; n < a.size(); ++n) ++key_begin[key(n) + 2];
  for (int64_t k = 2; k < num_keys + 2; ++k) key_begin[k] += key_begin[k - 1];
  Groups groups;
  groups.order.resize(a.size());
  for (int64_t n = 0; n < a.size(); ++n) groups.order[key_begin[key(n) + 1]++] = n;
  key_begin.pop_back();  // key_begin[k] is now the start of key k
  if (p.use_cats) {
    groups.begin = std::move(key_begin);
    groups.categories_per_image = num_categories;
  } else {
    groups.begin.resize(num_images + 1);
    for (int64_t i = 0; i <= num_images; ++i) groups.begin[i] = key_begin[i * num_categories];
  }
  return groups;
}

// The lowest IoU threshold as matching uses it (pycocotools caps thresholds below 1).
double lowest_threshold(const std::vector<double>& thresholds) {
  double lowest = std::numeric_limits<double>::infinity();
  for (double t : thresholds) lowest = std::min(lowest, std::min(t, 1 - 1e-10));
  return lowest;
}

// np.sum of n doubles, in its order (numpy's pairwise_sum): one by one below 8 numbers, 8
// running sums up to 128, halves (at a multiple of 8) beyond.
double numpy_sum(const double* a, size_t n) {
  if (n < 8) {
    double total = 0;
    for (size_t i = 0; i < n; ++i) total += a[i];
    return total;
  }
  if (n <= 128) {
    double r[8];
    std::copy(a, a + 8, r);
    size_t i = 8;
    for (; i < n - n % 8; i += 8) {
      for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    }
    double total = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) total += a[i];
    return total;
  }
  size_t half = n / 2;
  half -= half % 8;
  return numpy_sum(a, half) + numpy_sum(a + half, n - half);
}

// pycocotools' vars = (sigmas * 2) ** 2
std::vector<double> oks_variances(const std::vector<double>& sigmas) {
  std::vector<double> variances(sigmas.size());
  for (size_t j = 0; j < sigmas.size(); ++j) variances[j] = (sigmas[j] * 2) * (sigmas[j] * 2);
  return variances;
}

// Evaluates (category, image) pairs, reusing its buffers from one pair to the next.
class PairEvaluator {
 public:
  PairEvaluator(const EvaluateParams& p, const Annotations& gt, const Annotations& dt,
                const Groups& gt_groups, const Groups& dt_groups,
                const std::vector<int64_t>& kept_begin, Evaluation* out)
      : p_(p), gt_(gt), dt_(dt), gt_groups_(gt_groups), dt_groups_(dt_groups),
        kept_begin_(kept_begin), out_(out) {}

  // The pair (image, category); category 0 without categories.
  void run(int64_t image, int64_t category) {
    const int64_t gt_slot = gt_groups_.slot(image, category), dt_slot = dt_groups_.slot(image, category);
    const int64_t* gt_first = gt_groups_.order.data() + gt_groups_.begin[gt_slot];
    const int64_t* dt_first = dt_groups_.order.data() + dt_groups_.begin[dt_slot];
    gts_.assign(gt_first, gt_first + gt_groups_.size(gt_slot));
    dts_.assign(dt_first, dt_first + dt_groups_.size(dt_slot));
    if (gts_.empty() && dts_.empty()) return;
    category_ = category;
    image_ = image;
    const int64_t group = category * out_->num_images + image;  // the layout of the evaluation
    Stopwatch watch(p_.stage_seconds != nullptr);
    keep_best_detections();
    store_detections(kept_begin_[group]);
    watch.lap(&seconds_.sorting);
    compute_ious(&watch);
    compute_best_ious();
    watch.lap(&seconds_.ious);
    for (size_t a = 0; a < p_.area_ranges.size(); ++a) match(a, kept_begin_[group]);
    watch.lap(&seconds_.matching);
  }

  // Stage times of the pairs run so far (when profiling).
  const StageSeconds& seconds() const { return seconds_; }

 private:
  // Stable sort by score, keep the best max_detections (pycocotools sorts with mergesort).
  void keep_best_detections() {
    sort_by_score(&dts_, dt_.score);
    if (static_cast<int64_t>(dts_.size()) > p_.max_detections) dts_.resize(p_.max_detections);
  }

  void store_detections(int64_t offset) {
    for (size_t d = 0; d < dts_.size(); ++d) {
      out_->scores[offset + d] = dt_.score[dts_[d]];
      out_->images[offset + d] = static_cast<int32_t>(image_);
      out_->ranks[offset + d] = static_cast<int32_t>(d);
    }
  }

  // ious_[d * G + g] for kept detection d and ground truth g (group order); left empty when
  // pycocotools has no IoU matrix for the pair.
  void compute_ious(Stopwatch* watch) {
    const size_t num_gt = gts_.size(), num_dt = dts_.size();
    ious_.clear();
    if (num_gt == 0 || num_dt == 0) return;
    // pycocotools' computeOks reads the (image, -1) pair without categories, which holds no
    // annotation: keypoint detections then match nothing. Kept for equal results.
    if (p_.iou_type == IouType::kKeypoints && !p_.use_cats) return;
    ious_.resize(num_dt * num_gt);
    if (p_.iou_type == IouType::kBbox) {
      for (size_t d = 0; d < num_dt; ++d) {
        for (size_t g = 0; g < num_gt; ++g) {
          ious_[d * num_gt + g] = box_iou(&dt_.box[4 * dts_[d]], &gt_.box[4 * gts_[g]], gt_.crowd[gts_[g]]);
        }
      }
    } else if (p_.iou_type == IouType::kSegm) {
      compute_mask_ious(watch);
    } else {
      compute_oks();
    }
  }

  void compute_mask_ious(Stopwatch* watch) {
    const size_t num_gt = gts_.size(), num_dt = dts_.size();
    gt_masks_.resize(num_gt);
    dt_masks_.resize(num_dt);
    const bool with_box = !one_mask_size();
    for (size_t g = 0; g < num_gt; ++g) decode_mask(gt_, gts_[g], with_box, &gt_masks_[g], &mask_scratch_);
    watch->lap(&seconds_.gt_masks);
    for (size_t d = 0; d < num_dt; ++d) {
      // The RLE strings lie all over the heap: ask for the next ones while decoding this one.
      if (d + 4 < num_dt) __builtin_prefetch(&dt_.masks[dts_[d + 4]]);
      if (d + 2 < num_dt) __builtin_prefetch(dt_.masks[dts_[d + 2]].text);
      decode_mask(dt_, dts_[d], with_box, &dt_masks_[d], &mask_scratch_);
    }
    watch->lap(&seconds_.dt_masks);
    for (size_t d = 0; d < num_dt; ++d) {
      for (size_t g = 0; g < num_gt; ++g) {
        ious_[d * num_gt + g] = mask_iou(dt_masks_[d], gt_masks_[g], gt_.crowd[gts_[g]]);
      }
    }
  }

  // Whether every mask of the pair has the size of the first: then mask_iou needs no box.
  bool one_mask_size() const {
    const MaskSource& first = gt_.masks[gts_[0]];
    auto same = [&first](const MaskSource& m) { return m.height == first.height && m.width == first.width; };
    for (int64_t n : gts_) {
      if (!same(gt_.masks[n])) return false;
    }
    for (int64_t n : dts_) {
      if (!same(dt_.masks[n])) return false;
    }
    return true;
  }

  // pycocotools' computeOks: over the labelled keypoints of the ground truth, or, when it has
  // none, over all keypoints with their distance to a box twice the size of its box. The terms
  // are summed in np.sum's order, so the OKS are pycocotools' doubles. Pairs that cannot reach
  // the lowest threshold (see oks_below_thresholds) get 0 instead of their OKS: they match
  // nothing at any threshold either way.
  void compute_oks() {
    const size_t num_gt = gts_.size(), num_dt = dts_.size();
    const size_t k = p_.oks_sigmas.size();
    for (size_t g = 0; g < num_gt; ++g) {
      const double* gk = &gt_.keypoints[3 * k * gts_[g]];
      labelled_.clear();
      for (size_t j = 0; j < k; ++j) {
        if (gk[3 * j + 2] > 0) labelled_.push_back(j);
      }
      const double scale = gt_.area[gts_[g]] + kEps;
      const bool bounded = !labelled_.empty() && prepare_oks_bound(scale);
      for (size_t d = 0; d < num_dt; ++d) {
        const double* dk = &dt_.keypoints[3 * k * dts_[d]];
        double oks = 0;
        if (!bounded || !oks_below_thresholds(gk, dk)) {
          oks = labelled_.empty() ? oks_unlabelled(&gt_.box[4 * gts_[g]], dk, scale) : oks_labelled(gk, dk, scale);
        }
        ious_[d * num_gt + g] = oks;
      }
    }
  }

  double oks_labelled(const double* gk, const double* dk, double scale) {
    const size_t n = labelled_.size();
    for (size_t i = 0; i < n; ++i) {
      const size_t j = labelled_[i];
      const double dx = dk[3 * j] - gk[3 * j], dy = dk[3 * j + 1] - gk[3 * j + 1];
      terms_[i] = std::exp(-((dx * dx + dy * dy) / variances_[j] / scale / 2));
    }
    return numpy_sum(terms_.data(), n) / static_cast<double>(n);
  }

  double oks_unlabelled(const double* box, const double* dk, double scale) {
    const size_t k = p_.oks_sigmas.size();
    const double x0 = box[0] - box[2], x1 = box[0] + box[2] * 2;
    const double y0 = box[1] - box[3], y1 = box[1] + box[3] * 2;
    for (size_t j = 0; j < k; ++j) {
      const double dx = std::max(0.0, x0 - dk[3 * j]) + std::max(0.0, dk[3 * j] - x1);
      const double dy = std::max(0.0, y0 - dk[3 * j + 1]) + std::max(0.0, dk[3 * j + 1] - y1);
      terms_[j] = std::exp(-((dx * dx + dy * dy) / variances_[j] / scale / 2));
    }
    return numpy_sum(terms_.data(), k) / static_cast<double>(k);
  }

  // An OKS is the mean of n terms exp(-e) <= 1; a term with e >= 2.99 is below kFarTerm. With
  // f such terms the OKS is at most (n - f + f * kFarTerm) / n, so more than min_far_ of them
  // keep it below the lowest threshold (a margin of 1e-9 covers the rounding of the sum). The
  // e are compared as a multiplication by the reciprocal of pycocotools' divisors (within a few
  // ulps of its e), which spares the divisions and exp() of the pairs far apart. false where
  // the reciprocals are not plain normal numbers (then every OKS is computed).
  static constexpr double kFarTerm = 0.051;  // > exp(-2.99)

  bool prepare_oks_bound(double scale) {
    const size_t n = labelled_.size();
    for (size_t i = 0; i < n; ++i) {
      const double divisor = variances_[labelled_[i]] * scale * 2;
      if (!(divisor >= std::numeric_limits<double>::min() && divisor <= std::numeric_limits<double>::max())) {
        return false;
      }
      reciprocals_[i] = 1 / divisor;
    }
    min_far_ = static_cast<double>(n) * (1 - lowest_threshold_ * (1 - 1e-9)) / (1 - kFarTerm);
    return true;
  }

  bool oks_below_thresholds(const double* gk, const double* dk) const {
    int64_t far = 0;
    for (size_t i = 0; i < labelled_.size(); ++i) {
      const size_t j = labelled_[i];
      const double dx = dk[3 * j] - gk[3 * j], dy = dk[3 * j + 1] - gk[3 * j + 1];
      far += (dx * dx + dy * dy) * reciprocals_[i] >= 3;
    }
    return static_cast<double>(far) > min_far_;
  }

  // Each detection's best IoU (+inf if one is NaN, which pycocotools would match): below a
  // threshold, the detection matches nothing there and the ground truth need not be scanned.
  // The candidates are the detections that may match at some threshold.
  void compute_best_ious() {
    const size_t num_gt = gts_.size(), num_dt = dts_.size();
    best_ious_.assign(num_dt, -std::numeric_limits<double>::infinity());
    candidates_.clear();
    if (ious_.empty()) return;
    for (size_t d = 0; d < num_dt; ++d) {
      double best = best_ious_[d];
      for (size_t g = 0; g < num_gt; ++g) {
        const double iou = ious_[d * num_gt + g];
        best = std::isnan(iou) ? std::numeric_limits<double>::infinity() : std::max(best, iou);
        if (std::isinf(best) && best > 0) break;
      }
      best_ious_[d] = best;
      if (best >= lowest_threshold_) candidates_.push_back(d);
    }
  }

  // pycocotools' evaluateImg for one area range, every IoU threshold.
  void match(size_t area_index, int64_t offset) {
    const double lo = p_.area_ranges[area_index][0], hi = p_.area_ranges[area_index][1];
    const size_t num_gt = gts_.size(), num_dt = dts_.size();
    // ground truth not ignored first, each part in group order
    gt_order_.clear();
    ignored_.clear();
    for (int pass = 0; pass < 2; ++pass) {
      for (size_t g = 0; g < num_gt; ++g) {
        const int64_t n = gts_[g];
        const bool ignored = gt_.ignore[n] || gt_.area[n] < lo || gt_.area[n] > hi;
        if (ignored == (pass == 1)) {
          gt_order_.push_back(g);
          ignored_.push_back(ignored);
        }
      }
    }
    int32_t num_valid = 0;
    for (uint8_t ignored : ignored_) num_valid += !ignored;
    const int64_t num_images = out_->num_images;
    out_->num_valid_gt[(category_ * p_.area_ranges.size() + area_index) * num_images + image_] = num_valid;

    const size_t num_thresholds = p_.iou_thresholds.size();
    const size_t stride = p_.area_ranges.size() * num_thresholds;
    uint8_t* outcomes = out_->outcomes.data() + (offset * p_.area_ranges.size() + area_index) * num_thresholds;
    // Unmatched first: ignored outside the area range, false positives inside.
    for (size_t d = 0; d < num_dt; ++d) {
      const double area = dt_.area[dts_[d]];
      std::memset(outcomes + d * stride, area < lo || area > hi ? kIgnored : kFalsePositive, num_thresholds);
    }
    if (candidates_.empty()) return;
    for (size_t t = 0; t < num_thresholds; ++t) {
      const double threshold = std::min(p_.iou_thresholds[t], 1 - 1e-10);
      taken_.assign(num_gt, 0);
      for (size_t d : candidates_) {
        if (best_ious_[d] < threshold) continue;
        const int64_t m = best_match(d, threshold);
        if (m < 0) continue;
        const int64_t gt_index = gts_[gt_order_[m]];
        // pycocotools records matches by annotation id, and id 0 reads as "no match"
        const bool matched = gt_.id[gt_index] != 0;
        taken_[m] = dt_.id[dts_[d]] > 0;
        bool ignored = ignored_[m];
        if (!matched) {
          const double area = dt_.area[dts_[d]];
          ignored = ignored || area < lo || area > hi;
        }
        outcomes[d * stride + t] = ignored ? kIgnored : (matched ? kTruePositive : kFalsePositive);
      }
    }
  }

  // The ground truth (position in gt_order_) that detection d matches at this threshold, or -1:
  // the best IoU >= threshold among free (or crowd) ground truth, regular ones before ignored
  // ones, the last of equal IoUs winning as in pycocotools.
  int64_t best_match(size_t d, double threshold) const {
    const size_t num_gt = gts_.size();
    double best = threshold;
    int64_t m = -1;
    for (size_t j = 0; j < num_gt; ++j) {
      const size_t g = gt_order_[j];
      if (taken_[j] && !gt_.crowd[gts_[g]]) continue;
      if (m > -1 && !ignored_[m] && ignored_[j]) break;
      const double iou = ious_[d * num_gt + g];
      if (iou < best) continue;
      best = iou;
      m = static_cast<int64_t>(j);
    }
    return m;
  }

  const EvaluateParams& p_;
  const Annotations& gt_;
  const Annotations& dt_;
  const Groups& gt_groups_;
  const Groups& dt_groups_;
  const std::vector<int64_t>& kept_begin_;
  Evaluation* out_;

  int64_t category_ = 0, image_ = 0;
  std::vector<int64_t> gts_, dts_;
  std::vector<double> ious_, best_ious_;
  std::vector<double> variances_ = oks_variances(p_.oks_sigmas);
  std::vector<double> terms_ = std::vector<double>(p_.oks_sigmas.size());
  std::vector<double> reciprocals_ = std::vector<double>(p_.oks_sigmas.size());
  std::vector<size_t> labelled_;
  double min_far_ = 0;
  std::vector<Mask> gt_masks_, dt_masks_;
  MaskScratch mask_scratch_;
  std::vector<size_t> gt_order_;
  std::vector<uint8_t> ignored_, taken_;
  std::vector<size_t> candidates_;
  double lowest_threshold_ = lowest_threshold(p_.iou_thresholds);
  StageSeconds seconds_;
};

// ----------------------------------------------------------------------------------------------
// accumulate()

// One category's detections of the selected images in pycocotools' order (descending score,
// ties in (image, rank) order), with their outcomes copied next to each other so that the pass
// over them reads memory in order.
struct CategoryDetections {
  std::vector<double> scores;
  std::vector<int32_t> ranks;
  std::vector<uint8_t> outcomes;  // [detection][A][T]
};

// Sort key of a score: ascending keys give descending scores, ties kept, NaN last, and -0 equal
// to +0 (numpy's argsort of -score).
inline uint64_t descending_key(double score) {
  if (std::isnan(score)) return std::numeric_limits<uint64_t>::max();
  if (score == 0) score = 0;  // -0.0 -> +0.0
  uint64_t bits;
  std::memcpy(&bits, &score, sizeof(bits));
  // IEEE order as unsigned integers, ascending, then flipped
  bits = (bits >> 63) ? ~bits : bits | (uint64_t{1} << 63);
  return ~bits;
}

// Stable LSD radix sort of (key, value) pairs by key, one byte per pass; passes where every key
// shares the byte are skipped (scores in [0, 1] share most of their high bytes).
void radix_sort(std::vector<std::pair<uint64_t, int64_t>>* items, std::vector<std::pair<uint64_t, int64_t>>* buffer) {
  const size_t n = items->size();
  if (n < 2) return;
  if (n <= 64) {
    std::stable_sort(items->begin(), items->end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    return;
  }
  buffer->resize(n);
  std::vector<uint32_t> counts(8 * 256, 0);
  for (const auto& item : *items) {
    for (int b = 0; b < 8; ++b) ++counts[b * 256 + ((item.first >> (8 * b)) & 0xff)];
  }
  for (int b = 0; b < 8; ++b) {
    uint32_t* count = counts.data() + b * 256;
    if (count[(items->front().first >> (8 * b)) & 0xff] == n) continue;
    uint32_t total = 0;
    for (int v = 0; v < 256; ++v) {
      const uint32_t c = count[v];
      count[v] = total;
      total += c;
    }
    for (const auto& item : *items) (*buffer)[count[(item.first >> (8 * b)) & 0xff]++] = item;
    items->swap(*buffer);
  }
}

// Precision / recall / score tables of one category for every (area range, max detections, IoU
// threshold), equal to pycocotools' accumulate(). pycocotools builds recall and precision at
// every detection, makes precision non-increasing from the right, then samples it at the first
// detection whose recall reaches each recall threshold. Recall only grows at true positives and
// precision only rises there, so only they are kept: the sampled detection is a true positive
// (or the first detection, for a threshold <= 0), and the maximum of precision from it onwards
// is the maximum over the true positives from it onwards. The values are computed with
// pycocotools' operations, so they are the same doubles.
class CurveBuilder {
 public:
  CurveBuilder(const Evaluation& ev, const AccumulateParams& p, double* precision, double* recall,
               double* scores)
      : ev_(ev), p_(p), precision_(precision), recall_(recall), scores_(scores) {}

  // `num_valid_gt[a]`: ground truth of area range p.areas[a] not ignored, over the selected
  // images.
  void fill(int64_t k, const CategoryDetections& category, const std::vector<int64_t>& num_valid_gt) {
    count_true_positives(category);
    const int64_t num_thresholds = ev_.num_thresholds;
    for (size_t m = 0; m < p_.max_detections.size(); ++m) {
      const std::vector<int32_t>& detections = detections_[m];
      for (size_t a = 0; a < p_.areas.size(); ++a) {
        if (num_valid_gt[a] == 0) continue;  // precision and recall stay -1
        for (int64_t t = 0; t < num_thresholds; ++t) {
          const std::vector<Hit>& hits = hits_[(m * ev_.num_areas + p_.areas[a]) * num_thresholds + t];
          fill_cell(t, k, static_cast<int64_t>(a), static_cast<int64_t>(m), category, detections, hits,
                    num_valid_gt[a]);
        }
      }
    }
  }

 private:
  struct Hit {
    int32_t position;         // in detections_[m]
    int32_t false_positives;  // up to it
  };

  // One pass over the detections for every max detections value, area range and IoU threshold
  // (a detection's outcomes are contiguous), recording the true positives. Outcomes are
  // unpredictable, so false positives are counted without branches and only detections with a
  // true positive somewhere take the slow path.
  void count_true_positives(const CategoryDetections& category) {
    const size_t num_max_dets = p_.max_detections.size();
    const int64_t row = ev_.num_areas * ev_.num_thresholds;
    hits_.resize(num_max_dets * row);
    for (auto& hits : hits_) hits.clear();
    false_positives_.assign(num_max_dets * row, 0);
    detections_.resize(num_max_dets);
    for (auto& detections : detections_) detections.clear();
    for (size_t j = 0; j < category.ranks.size(); ++j) {
      const uint8_t* outcomes = category.outcomes.data() + j * row;
      const bool any_true_positive = std::memchr(outcomes, kTruePositive, row) != nullptr;
      for (size_t m = 0; m < num_max_dets; ++m) {
        if (category.ranks[j] >= p_.max_detections[m]) continue;
        int32_t* false_positives = false_positives_.data() + m * row;
        for (int64_t x = 0; x < row; ++x) false_positives[x] += outcomes[x] == kFalsePositive;
        const int32_t position = static_cast<int32_t>(detections_[m].size());
        detections_[m].push_back(static_cast<int32_t>(j));
        if (!any_true_positive) continue;
        for (int64_t x = 0; x < row; ++x) {
          if (outcomes[x] == kTruePositive) hits_[m * row + x].push_back({position, false_positives[x]});
        }
      }
    }
  }

  void fill_cell(int64_t t, int64_t k, int64_t a, int64_t m, const CategoryDetections& category,
                 const std::vector<int32_t>& detections, const std::vector<Hit>& hit_list,
                 int64_t num_valid_gt) {
    const Hit* hits = hit_list.data();
    const size_t num_hits = hit_list.size();
    recall_[cell(t, k, a, m)] = detections.empty() ? 0 : static_cast<double>(num_hits) / num_valid_gt;
    // precision at each true positive, then its maximum from there onwards
    precisions_.resize(num_hits);
    for (size_t i = 0; i < num_hits; ++i) {
      const double tp = static_cast<double>(i + 1), fp = static_cast<double>(hits[i].false_positives);
      precisions_[i] = tp / (fp + tp + kEps);
    }
    for (size_t i = num_hits; i-- > 1;) precisions_[i - 1] = std::max(precisions_[i - 1], precisions_[i]);
    bool reached = true;
    size_t lo = 0;  // recall thresholds ascend in practice: each search starts at the last hit
    double previous_threshold = -std::numeric_limits<double>::infinity();
    for (size_t r = 0; r < p_.recall_thresholds.size(); ++r) {
      const double threshold = p_.recall_thresholds[r];
      size_t position = detections.size(), hit = num_hits;
      if (threshold <= 0) {
        position = 0;  // recall 0 already reaches it, at the first detection
        hit = 0;
      } else {
        if (!(threshold >= previous_threshold)) lo = 0;
        lo = first_reaching(threshold, num_valid_gt, lo, num_hits);
        if (lo < num_hits) {
          position = hits[lo].position;
          hit = lo;
        }
        previous_threshold = threshold;
      }
      reached = reached && position < detections.size();
      const int64_t out = cell(t, static_cast<int64_t>(r), k, a, m);
      precision_[out] = reached && hit < num_hits ? precisions_[hit] : 0;
      scores_[out] = reached ? category.scores[detections[position]] : 0;
    }
  }

  // The first true positive i in [lo, num_hits) whose recall (i + 1) / num_valid_gt reaches
  // `threshold` (recall grows with i), or num_hits: guessed from threshold * num_valid_gt, then
  // settled with pycocotools' division (numpy's searchsorted on the recall).
  static size_t first_reaching(double threshold, int64_t num_valid_gt, size_t lo, size_t num_hits) {
    auto reached = [&](size_t i) { return !(static_cast<double>(i + 1) / num_valid_gt < threshold); };
    const double guess = std::ceil(threshold * num_valid_gt) - 1;
    size_t i = !(guess > lo) ? lo : (guess >= num_hits ? num_hits : static_cast<size_t>(guess));
    while (i > lo && reached(i - 1)) --i;
    while (i < num_hits && !reached(i)) ++i;
    return i;
  }

  int64_t cell(int64_t t, int64_t k, int64_t a, int64_t m) const {
    return ((t * p_.out_categories + k) * p_.out_areas + a) * p_.out_max_detections + m;
  }
  int64_t cell(int64_t t, int64_t r, int64_t k, int64_t a, int64_t m) const {
    const int64_t num_recall = static_cast<int64_t>(p_.recall_thresholds.size());
    return (((t * num_recall + r) * p_.out_categories + k) * p_.out_areas + a) * p_.out_max_detections + m;
  }

  const Evaluation& ev_;
  const AccumulateParams& p_;
  double* precision_;
  double* recall_;
  double* scores_;
  std::vector<std::vector<int32_t>> detections_;  // per max detections: positions in the category
  std::vector<std::vector<Hit>> hits_;            // [M][A][T]: the true positives in order
  std::vector<int32_t> false_positives_;          // [M][A][T], running counts
  std::vector<double> precisions_;
};

}  // namespace

void decode_mask(const Annotations& a, int64_t index, bool with_box, Mask* out, MaskScratch* scratch) {
  const MaskSource& source = a.masks[index];
  MaskBuilder builder;
  switch (source.format) {
    case MaskFormat::kCompressedRle:
      if (!with_box) {
        out->height = source.height;
        out->width = source.width;
        decode_string_runs(source.text, source.text_size, out);
        return;
      }
      builder.start(out, source.height, source.width);
      decode_string(source.text, source.text_size, &builder);
      builder.finish();
      return;
    case MaskFormat::kUncompressedRle:
      builder.start(out, source.height, source.width);
      for (int64_t j = source.begin; j < source.end; ++j) builder.add(a.rle_counts[j]);
      builder.finish();
      return;
    case MaskFormat::kPolygons:
    case MaskFormat::kBoxes:
      polygons_mask(a, source, out, scratch);
      return;
    case MaskFormat::kNone:
      break;
  }
  throw std::invalid_argument("annotation has no mask");
}

double mask_iou(const Mask& dt, const Mask& gt, bool crowd) {
  // pycocotools computes the IoU only where the boxes overlap, and there flags masks of
  // different sizes with -1. Between masks of one size the box check changes nothing (a box
  // holds every pixel of its mask: masks whose boxes are apart do not intersect), so it is left
  // to the run intersection.
  if (dt.height != gt.height || dt.width != gt.width) {
    return box_iou(dt.box.data(), gt.box.data(), crowd) <= 0 ? 0 : -1;
  }
  const uint64_t inter = intersection(dt.runs, gt.runs);
  if (inter == 0) return 0;
  const uint64_t uni = crowd ? dt.area : dt.area + gt.area - inter;
  return static_cast<double>(inter) / static_cast<double>(uni);
}

Evaluation evaluate(const EvaluateParams& p, const Annotations& gt, const Annotations& dt) {
  StageSeconds* stages = p.stage_seconds;
  Stopwatch watch(stages != nullptr);
  const int64_t num_images = p.num_images;
  const int64_t num_categories = p.use_cats ? p.num_categories : (p.num_categories > 0 ? 1 : 0);
  const int64_t num_areas = static_cast<int64_t>(p.area_ranges.size());
  const int64_t num_thresholds = static_cast<int64_t>(p.iou_thresholds.size());
  Groups gt_groups, dt_groups;
  parallel_for(2, 1, p.num_threads, [&](int64_t begin, int64_t end) {
    for (int64_t side = begin; side < end; ++side) {
      if (side == 0) {
        gt_groups = group_annotations(gt, p);
      } else {
        dt_groups = group_annotations(dt, p);
      }
    }
  });
  const int64_t num_groups = num_categories * num_images;

  std::vector<int64_t> kept_begin(num_groups + 1, 0);
  const int64_t max_detections = std::max<int64_t>(p.max_detections, 0);
  for (int64_t g = 0; g < num_groups; ++g) {
    const int64_t count = dt_groups.size(dt_groups.slot(g % num_images, g / num_images));
    kept_begin[g + 1] = kept_begin[g] + std::min(count, max_detections);
  }
  const int64_t total = kept_begin[num_groups];

  Evaluation ev;
  ev.num_images = num_images;
  ev.num_categories = num_categories;
  ev.num_areas = num_areas;
  ev.num_thresholds = num_thresholds;
  ev.category_begin.resize(num_categories + 1);
  for (int64_t k = 0; k <= num_categories; ++k) ev.category_begin[k] = kept_begin[k * num_images];
  ev.scores.resize(total);
  ev.images.resize(total);
  ev.ranks.resize(total);
  ev.outcomes.resize(static_cast<size_t>(num_areas * num_thresholds * total));
  ev.num_valid_gt.assign(static_cast<size_t>(num_categories * num_areas * num_images), 0);

  if (stages != nullptr) watch.lap(&stages->grouping);
  std::mutex stages_mutex;
  parallel_for(num_images, 4, p.num_threads, [&](int64_t begin, int64_t end) {
    PairEvaluator pairs(p, gt, dt, gt_groups, dt_groups, kept_begin, &ev);
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t k = 0; k < num_categories; ++k) pairs.run(i, k);
    }
    if (stages == nullptr) return;
    std::lock_guard<std::mutex> lock(stages_mutex);
    stages->sorting += pairs.seconds().sorting;
    stages->gt_masks += pairs.seconds().gt_masks;
    stages->dt_masks += pairs.seconds().dt_masks;
    stages->ious += pairs.seconds().ious;
    stages->matching += pairs.seconds().matching;
  });
  if (stages != nullptr) watch.lap(&stages->pairs);
  return ev;
}

void accumulate(const Evaluation& ev, const AccumulateParams& p, double* precision, double* recall,
                double* scores) {
  std::vector<uint8_t> selected(ev.num_images, 0);
  for (int64_t i : p.images) selected[i] = 1;
  int64_t largest_max_det = 0;
  for (int64_t m : p.max_detections) largest_max_det = std::max(largest_max_det, m);
  const int64_t num_categories = static_cast<int64_t>(p.categories.size());

  parallel_for(num_categories, 1, p.num_threads, [&](int64_t begin, int64_t end) {
    CurveBuilder curves(ev, p, precision, recall, scores);
    CategoryDetections sorted;
    std::vector<std::pair<uint64_t, int64_t>> by_score, buffer;
    std::vector<int64_t> num_valid(p.areas.size());
    const int64_t row = ev.num_areas * ev.num_thresholds;
    for (int64_t k = begin; k < end; ++k) {
      const int64_t category = p.categories[k];
      bool any_valid = false;
      for (size_t a = 0; a < p.areas.size(); ++a) {
        const int32_t* valid = ev.num_valid_gt.data() + (category * ev.num_areas + p.areas[a]) * ev.num_images;
        num_valid[a] = 0;
        for (int64_t i : p.images) num_valid[a] += valid[i];
        any_valid = any_valid || num_valid[a] > 0;
      }
      if (!any_valid) continue;  // precision and recall stay -1
      // This category's detections of the selected images in score order; ties keep the
      // order (image, rank) in which pycocotools concatenates them.
      by_score.clear();
      for (int64_t n = ev.category_begin[category]; n < ev.category_begin[category + 1]; ++n) {
        if (selected[ev.images[n]] && ev.ranks[n] < largest_max_det) {
          by_score.emplace_back(descending_key(ev.scores[n]), n);
        }
      }
      radix_sort(&by_score, &buffer);
      sorted.scores.resize(by_score.size());
      sorted.ranks.resize(by_score.size());
      sorted.outcomes.resize(by_score.size() * row);
      for (size_t j = 0; j < by_score.size(); ++j) {
        // in score order the detections lie all over the evaluation: fetch ahead
        if (j + 8 < by_score.size()) {
          const int64_t ahead = by_score[j + 8].second;
          __builtin_prefetch(ev.outcomes.data() + ahead * row);
          __builtin_prefetch(ev.scores.data() + ahead);
          __builtin_prefetch(ev.ranks.data() + ahead);
        }
        const int64_t n = by_score[j].second;
        sorted.scores[j] = ev.scores[n];
        sorted.ranks[j] = ev.ranks[n];
        std::memcpy(sorted.outcomes.data() + j * row, ev.outcomes.data() + n * row, row);
      }
      curves.fill(k, sorted, num_valid);
    }
  });
}

}  // namespace cocoeval
}  // namespace detzoo

// ==============================================================================================
// Part 2: reading the annotations, and the Python module.

namespace {

using detzoo::cocoeval::Annotations;
using detzoo::cocoeval::Buffer;
using detzoo::cocoeval::Evaluation;
using detzoo::cocoeval::IouType;
using detzoo::cocoeval::MaskFormat;
using detzoo::cocoeval::MaskSource;

constexpr const char* kCapsuleName = "detzoo._cocoeval.Evaluation";

// Interned dict keys, so that each lookup hashes nothing.
struct Keys {
  PyObject* image_id;
  PyObject* category_id;
  PyObject* id;
  PyObject* area;
  PyObject* score;
  PyObject* bbox;
  PyObject* iscrowd;
  PyObject* keypoints;
  PyObject* num_keypoints;
  PyObject* segmentation;
  PyObject* counts;
  PyObject* size;
};
Keys keys;

bool intern_keys() {
  struct Entry {
    PyObject** slot;
    const char* name;
  };
  const Entry entries[] = {
      {&keys.image_id, "image_id"},   {&keys.category_id, "category_id"},
      {&keys.id, "id"},               {&keys.area, "area"},
      {&keys.score, "score"},         {&keys.bbox, "bbox"},
      {&keys.iscrowd, "iscrowd"},     {&keys.keypoints, "keypoints"},
      {&keys.num_keypoints, "num_keypoints"}, {&keys.segmentation, "segmentation"},
      {&keys.counts, "counts"},       {&keys.size, "size"},
  };
  for (const Entry& e : entries) {
    *e.slot = PyUnicode_InternFromString(e.name);
    if (*e.slot == nullptr) return false;
  }
  return true;
}

bool to_double(PyObject* obj, double* out) {
  if (PyFloat_CheckExact(obj)) {
    *out = PyFloat_AS_DOUBLE(obj);
    return true;
  }
  // ints directly: PyFloat_AsDouble would build a float object first
  const double value = PyLong_CheckExact(obj) ? PyLong_AsDouble(obj) : PyFloat_AsDouble(obj);
  if (value == -1.0 && PyErr_Occurred()) return false;
  *out = value;
  return true;
}

bool to_int64(PyObject* obj, int64_t* out) {
  const long long value = PyLong_AsLongLong(obj);
  if (value == -1 && PyErr_Occurred()) return false;
  *out = value;
  return true;
}

// Appends the numbers of a list / tuple (or any sequence) to `out` (a vector of doubles).
template <typename Vector>
bool append_numbers(PyObject* seq, Vector* out) {
  if (PyList_CheckExact(seq)) {
    const Py_ssize_t n = PyList_GET_SIZE(seq);
    for (Py_ssize_t j = 0; j < n; ++j) {
      double value;
      if (!to_double(PyList_GET_ITEM(seq, j), &value)) return false;
      out->push_back(value);
    }
    return true;
  }
  PyObject* fast = PySequence_Fast(seq, "expected a sequence of numbers");
  if (fast == nullptr) return false;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
  PyObject** items = PySequence_Fast_ITEMS(fast);
  bool ok = true;
  for (Py_ssize_t j = 0; j < n && ok; ++j) {
    double value;
    ok = to_double(items[j], &value);
    if (ok) out->push_back(value);
  }
  Py_DECREF(fast);
  return ok;
}

// Two integers from a list / tuple of length 2 (an RLE's size).
bool read_pair(PyObject* seq, int64_t* first, int64_t* second) {
  PyObject* fast = PySequence_Fast(seq, "expected [height, width]");
  if (fast == nullptr) return false;
  const bool ok = PySequence_Fast_GET_SIZE(fast) == 2 && to_int64(PySequence_Fast_GET_ITEM(fast, 0), first) &&
                  to_int64(PySequence_Fast_GET_ITEM(fast, 1), second);
  Py_DECREF(fast);
  return ok;
}

// A C-contiguous buffer of float64 ('d') or int64 ('q') items (numpy arrays).
class BufferView {
 public:
  BufferView() = default;
  BufferView(const BufferView&) = delete;
  BufferView& operator=(const BufferView&) = delete;
  ~BufferView() {
    if (acquired_) PyBuffer_Release(&view_);
  }

  bool acquire(PyObject* obj, const char* name, char kind, bool writable) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &view_, flags) != 0) return false;
    acquired_ = true;
    const char* format = view_.format ? view_.format : "B";
    while (*format == '@' || *format == '=' || *format == '<') ++format;
    const bool ok = view_.itemsize == 8 && format[1] == '\0' &&
                    (kind == 'd' ? format[0] == 'd' : (format[0] == 'q' || format[0] == 'l'));
    if (!ok) {
      PyErr_Format(PyExc_TypeError, "%s: expected a contiguous %s array, got format '%s'", name,
                   kind == 'd' ? "float64" : "int64", view_.format ? view_.format : "B");
      return false;
    }
    return true;
  }

  int64_t size() const { return view_.len / 8; }
  template <typename T>
  T* data() const {
    return static_cast<T*>(view_.buf);
  }
  template <typename T>
  std::vector<T> vector() const {
    return std::vector<T>(data<T>(), data<T>() + size());
  }

 private:
  Py_buffer view_{};
  bool acquired_ = false;
};

// Reads a `segmentation` (polygons, or RLE with string or list counts) into `out`. Polygons
// use the image's height x width, RLEs their own "size", as pycocotools' annToRLE does. On
// failure a Python error is set, with `problem` describing it when it is not a Python error.
bool read_segmentation(PyObject* segm, int64_t height, int64_t width, Annotations* out,
                       std::vector<PyObject*>* keep_alive, std::string* problem) {
  MaskSource source;
  if (PyList_Check(segm)) {
    // pycocotools' frPyObjects: a first entry of 4 numbers makes the list boxes
    const Py_ssize_t n = PyList_GET_SIZE(segm);
    Py_ssize_t first = -1;
    if (n > 0) {
      first = PyObject_Length(PyList_GET_ITEM(segm, 0));
      if (first < 0) {
        PyErr_Clear();
        *problem = "polygons must be lists of numbers";
        return false;
      }
      if (first < 4) {
        *problem = "a polygon needs at least 3 points (6 numbers)";
        return false;
      }
    }
    source.format = first == 4 ? MaskFormat::kBoxes : MaskFormat::kPolygons;
    if (n > 0 && (height < 0 || width < 0)) {
      *problem = "polygons need the height and width of their image, which has none";
      return false;
    }
    source.height = height;
    source.width = width;
    source.begin = static_cast<int64_t>(out->polygon_offsets.size()) - 1;
    for (Py_ssize_t p = 0; p < n; ++p) {
      const size_t before = out->polygon_coords.size();
      if (!append_numbers(PyList_GET_ITEM(segm, p), &out->polygon_coords)) return false;
      if (source.format == MaskFormat::kBoxes && out->polygon_coords.size() - before != 4) {
        *problem = "boxes given as segmentation need 4 numbers each";
        return false;
      }
      out->polygon_offsets.push_back(static_cast<int64_t>(out->polygon_coords.size()));
    }
    source.end = static_cast<int64_t>(out->polygon_offsets.size()) - 1;
  } else if (PyDict_Check(segm)) {
    PyObject* counts = PyDict_GetItemWithError(segm, keys.counts);
    PyObject* size = counts ? PyDict_GetItemWithError(segm, keys.size) : nullptr;
    if (counts == nullptr || size == nullptr) {
      if (!PyErr_Occurred()) *problem = "an RLE needs 'counts' and 'size'";
      return false;
    }
    if (!read_pair(size, &source.height, &source.width)) {
      PyErr_Clear();
      *problem = "an RLE's 'size' must be [height, width]";
      return false;
    }
    if (PyList_Check(counts)) {
      source.format = MaskFormat::kUncompressedRle;
      source.begin = static_cast<int64_t>(out->rle_counts.size());
      for (Py_ssize_t j = 0; j < PyList_GET_SIZE(counts); ++j) {
        const unsigned long long value = PyLong_AsUnsignedLongLong(PyList_GET_ITEM(counts, j));
        if ((value == static_cast<unsigned long long>(-1) && PyErr_Occurred()) || value > UINT32_MAX) {
          PyErr_Clear();
          *problem = "RLE counts must be integers in [0, 2**32)";
          return false;
        }
        out->rle_counts.push_back(static_cast<uint32_t>(value));
      }
      source.end = static_cast<int64_t>(out->rle_counts.size());
    } else {
      source.format = MaskFormat::kCompressedRle;
      Py_ssize_t length = 0;
      if (PyUnicode_Check(counts)) {
        source.text = PyUnicode_AsUTF8AndSize(counts, &length);
        if (source.text == nullptr) return false;
      } else if (PyBytes_Check(counts)) {
        char* text = nullptr;
        if (PyBytes_AsStringAndSize(counts, &text, &length) != 0) return false;
        source.text = text;
      } else {
        *problem = "RLE counts must be a list of run lengths or a compressed str / bytes";
        return false;
      }
      source.text_size = length;
      // the characters are read later, without the GIL
      Py_INCREF(counts);
      keep_alive->push_back(counts);
    }
  } else {
    *problem = "segmentation must be a list of polygons or an RLE dict";
    return false;
  }
  out->masks.push_back(source);
  return true;
}

// Reads the annotation dicts of one side into Annotations, skipping those whose image or
// category is not evaluated (pycocotools' getAnnIds filter).
class AnnotationReader {
 public:
  AnnotationReader(bool ground_truth, IouType iou_type, PyObject* image_index,
                   PyObject* category_index, const int64_t* image_sizes, int64_t num_keypoints,
                   Annotations* out, std::vector<PyObject*>* keep_alive)
      : ground_truth_(ground_truth), iou_type_(iou_type), image_index_(image_index),
        category_index_(category_index), image_sizes_(image_sizes),
        num_keypoints_(num_keypoints), out_(out), keep_alive_(keep_alive) {
    wanted_ = {kImageId, kCategoryId, kId, kArea, ground_truth ? kIsCrowd : kScore};
    if (iou_type == IouType::kBbox || (iou_type == IouType::kKeypoints && ground_truth)) {
      wanted_.push_back(kBbox);
    }
    if (iou_type == IouType::kKeypoints) {
      wanted_.push_back(kKeypoints);
      if (ground_truth) wanted_.push_back(kNumKeypoints);
    }
    if (iou_type == IouType::kSegm) wanted_.push_back(kSegmentation);
  }

  bool read(PyObject* annotations) {
    PyObject* fast = PySequence_Fast(annotations, "annotations must be a list of dicts");
    if (fast == nullptr) return false;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    PyObject** items = PySequence_Fast_ITEMS(fast);
    for (Py_ssize_t j = 0; j < std::min(n, kLookupAhead); ++j) look_up(items[j], &ring_[j % kRing]);
    bool ok = true;
    for (Py_ssize_t j = 0; j < n && ok; ++j) {
      prefetch(items, j, n);
      ok = read_one(ring_[j % kRing], j);
    }
    Py_DECREF(fast);
    return ok;
  }

 private:
  enum Field { kImageId, kCategoryId, kId, kArea, kScore, kIsCrowd, kNumKeypoints, kBbox, kKeypoints,
               kSegmentation, kNumFields };

  // The values of one annotation dict that are read (borrowed; nullptr where absent).
  struct Fields {
    PyObject* ann = nullptr;
    std::array<PyObject*, kNumFields> values{};
  };

  PyObject* key(Field field) const { return field_keys_[field]; }

  void look_up(PyObject* ann, Fields* fields) const {
    fields->ann = ann;
    fields->values.fill(nullptr);
    if (!PyDict_Check(ann)) return;
    for (Field field : wanted_) fields->values[field] = PyDict_GetItemWithError(ann, key(field));
    PyErr_Clear();  // a failed lookup is repeated, and reported, when the annotation is read
  }

  // The annotation dicts lie all over the heap and reading one is a chain of cache misses: the
  // dict, its key table, each value, a list's items. Annotations ahead of the one being read
  // are fetched stage by stage, each stage loading what the next one dereferences; their
  // values are looked up once, into a ring. This makes reading about 2x faster.
  void prefetch(PyObject** items, Py_ssize_t j, Py_ssize_t n) {
    if (j + kDictAhead < n) __builtin_prefetch(items[j + kDictAhead]);
    if (j + kKeysAhead < n && PyDict_CheckExact(items[j + kKeysAhead])) {
      prefetch_key_table(items[j + kKeysAhead]);
    }
    if (j + kLookupAhead < n) {
      Fields& fields = ring_[(j + kLookupAhead) % kRing];
      look_up(items[j + kLookupAhead], &fields);
      for (PyObject* value : fields.values) {
        if (value != nullptr) __builtin_prefetch(value);
      }
    }
    if (j + kContainersAhead < n) {
      for (PyObject* value : ring_[(j + kContainersAhead) % kRing].values) {
        if (value == nullptr) continue;
        if (PyList_CheckExact(value)) {
          PyObject** list_items = reinterpret_cast<PyListObject*>(value)->ob_item;
          for (Py_ssize_t i = 0; i < PyList_GET_SIZE(value); i += 8) __builtin_prefetch(list_items + i);
        } else if (PyDict_CheckExact(value)) {
          prefetch_key_table(value);
        }
      }
    }
    if (j + kItemsAhead < n) {
      for (PyObject* value : ring_[(j + kItemsAhead) % kRing].values) {
        if (value == nullptr) continue;
        if (PyList_CheckExact(value)) {
          for (Py_ssize_t i = 0; i < std::min<Py_ssize_t>(PyList_GET_SIZE(value), 64); ++i) {
            __builtin_prefetch(PyList_GET_ITEM(value, i));
          }
        } else if (PyDict_CheckExact(value)) {  // an RLE: its counts and size
          for (PyObject* rle_key : {keys.counts, keys.size}) {
            PyObject* item = PyDict_GetItemWithError(value, rle_key);
            if (item != nullptr) __builtin_prefetch(item);
          }
          PyErr_Clear();
        }
      }
    }
  }

  static void prefetch_key_table(PyObject* dict) {
    const char* table = reinterpret_cast<const char*>(reinterpret_cast<PyDictObject*>(dict)->ma_keys);
    for (int line = 0; line < 6; ++line) __builtin_prefetch(table + 64 * line);
  }

  bool read_one(const Fields& fields, Py_ssize_t position) {
    position_ = position;
    id_obj_ = Py_None;
    ann_ = fields.ann;
    if (!PyDict_Check(ann_)) return fail("is not a dict");
    int64_t image, category;
    int found = lookup_index(fields, kImageId, image_index_, &image);
    if (found <= 0) return found == 0;
    found = lookup_index(fields, kCategoryId, category_index_, &category);
    if (found <= 0) return found == 0;

    id_obj_ = require(fields, kId);
    if (id_obj_ == nullptr) return false;
    int64_t id;
    if (!to_int64(id_obj_, &id)) return fail("'id' must be an integer");
    double area;
    PyObject* area_obj = require(fields, kArea);
    if (area_obj == nullptr) return false;
    if (!to_double(area_obj, &area)) return fail("'area' must be a number");

    out_->id.push_back(id);
    out_->image.push_back(static_cast<int32_t>(image));
    out_->category.push_back(static_cast<int32_t>(category));
    out_->area.push_back(area);
    if (ground_truth_) {
      if (!read_ground_truth_flags(fields)) return false;
    } else {
      PyObject* score_obj = require(fields, kScore);
      double score;
      if (score_obj == nullptr) return false;
      if (!to_double(score_obj, &score)) return fail("'score' must be a number");
      out_->score.push_back(score);
    }
    const bool needs_box = iou_type_ == IouType::kBbox || (iou_type_ == IouType::kKeypoints && ground_truth_);
    if (needs_box && !read_box(fields)) return false;
    if (iou_type_ == IouType::kKeypoints && !read_keypoints(fields)) return false;
    if (iou_type_ == IouType::kSegm) {
      PyObject* segm = require(fields, kSegmentation);
      if (segm == nullptr) return false;
      const int64_t height = image_sizes_ ? image_sizes_[2 * image] : -1;
      const int64_t width = image_sizes_ ? image_sizes_[2 * image + 1] : -1;
      std::string problem;
      if (!read_segmentation(segm, height, width, out_, keep_alive_, &problem)) {
        return fail(problem.empty() ? "unreadable 'segmentation'" : problem.c_str());
      }
    }
    return true;
  }

  // pycocotools overwrites `ignore` with `iscrowd` (and, for keypoints, num_keypoints == 0).
  bool read_ground_truth_flags(const Fields& fields) {
    PyObject* crowd_obj = fields.values[kIsCrowd];
    const int crowd = crowd_obj ? PyObject_IsTrue(crowd_obj) : 0;
    if (crowd < 0) return fail("'iscrowd' must be 0 or 1");
    bool ignore = crowd != 0;
    if (iou_type_ == IouType::kKeypoints) {
      PyObject* num_obj = require(fields, kNumKeypoints);
      double num;
      if (num_obj == nullptr) return false;
      if (!to_double(num_obj, &num)) return fail("'num_keypoints' must be a number");
      ignore = ignore || num == 0;
    }
    out_->crowd.push_back(static_cast<uint8_t>(crowd != 0));
    out_->ignore.push_back(static_cast<uint8_t>(ignore));
    return true;
  }

  bool read_box(const Fields& fields) {
    PyObject* box = require(fields, kBbox);
    if (box == nullptr) return false;
    const size_t before = out_->box.size();
    if (!append_numbers(box, &out_->box) || out_->box.size() - before != 4) {
      return fail("'bbox' must be 4 numbers [x, y, width, height]");
    }
    return true;
  }

  bool read_keypoints(const Fields& fields) {
    PyObject* kp = require(fields, kKeypoints);
    if (kp == nullptr) return false;
    const size_t before = out_->keypoints.size();
    if (!append_numbers(kp, &out_->keypoints)) return fail("'keypoints' must be numbers");
    if (static_cast<int64_t>(out_->keypoints.size() - before) != 3 * num_keypoints_) {
      PyErr_Format(PyExc_ValueError,
                   "%s annotation #%zd (id %R): 'keypoints' has %zd numbers, but "
                   "params.kpt_oks_sigmas has %lld keypoints (3 numbers each expected)",
                   side(), position_, id_obj_, static_cast<Py_ssize_t>(out_->keypoints.size() - before),
                   static_cast<long long>(num_keypoints_));
      return false;
    }
    return true;
  }

  // 1: found, with its index; 0: not evaluated (skip); -1: error.
  int lookup_index(const Fields& fields, Field field, PyObject* index, int64_t* out) {
    PyObject* value = require(fields, field);
    if (value == nullptr) return -1;
    PyObject* position = PyDict_GetItemWithError(index, value);
    if (position == nullptr) {
      if (!PyErr_Occurred()) return 0;
      fail("unhashable image or category id");
      return -1;
    }
    *out = PyLong_AsLongLong(position);
    return PyErr_Occurred() ? -1 : 1;
  }

  // The value of a required key; if it was not found, the lookup is repeated to raise its
  // error, or KeyError.
  PyObject* require(const Fields& fields, Field field) {
    if (fields.values[field] != nullptr) return fields.values[field];
    PyObject* value = PyDict_GetItemWithError(ann_, key(field));
    if (value == nullptr && !PyErr_Occurred()) {
      PyErr_Format(PyExc_KeyError, "%s annotation #%zd (id %R) has no %R", side(), position_,
                   id_obj_, key(field));
    }
    return value;
  }

  // Raises ValueError naming the annotation, with the pending Python error (if any) appended.
  bool fail(const char* what) {
    PyObject *type = nullptr, *value = nullptr, *traceback = nullptr;
    PyErr_Fetch(&type, &value, &traceback);
    if (value != nullptr) {
      PyErr_Format(PyExc_ValueError, "%s annotation #%zd (id %R): %s (%S)", side(), position_,
                   id_obj_, what, value);
    } else {
      PyErr_Format(PyExc_ValueError, "%s annotation #%zd (id %R): %s", side(), position_, id_obj_,
                   what);
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    return false;
  }

  const char* side() const { return ground_truth_ ? "ground-truth" : "detection"; }

  // Prefetch distances (annotations ahead of the one read) of the stages, and the ring of
  // looked-up values (longer than the lookup distance).
  static constexpr Py_ssize_t kDictAhead = 20, kKeysAhead = 14, kLookupAhead = 8,
                              kContainersAhead = 4, kItemsAhead = 2, kRing = 16;

  const bool ground_truth_;
  const IouType iou_type_;
  PyObject* const image_index_;
  PyObject* const category_index_;
  const int64_t* const image_sizes_;
  const int64_t num_keypoints_;
  Annotations* const out_;
  std::vector<PyObject*>* const keep_alive_;
  const std::array<PyObject*, kNumFields> field_keys_ = {
      keys.image_id, keys.category_id, keys.id, keys.area, keys.score, keys.iscrowd,
      keys.num_keypoints, keys.bbox, keys.keypoints, keys.segmentation};
  std::vector<Field> wanted_;
  std::array<Fields, kRing> ring_;
  PyObject* ann_ = nullptr;
  Py_ssize_t position_ = 0;
  PyObject* id_obj_ = Py_None;
};

// ----------------------------------------------------------------------------------------------
// Parallel reading of plain annotations.
//
// Reading the dicts is bound by memory latency (each annotation is a dozen objects spread over
// the heap), so the common case is read by several threads at once: dicts with str keys
// holding floats, ints, lists, tuples and str. This thread keeps the GIL meanwhile, so no
// Python code runs and nothing is freed or changed; the threads only read object memory (no
// reference count, allocation or exception), and only through operations that are plain reads:
// type checks, PyDict_Next, list / tuple items, float values, small ints, the characters of
// compact ASCII str. Anything else (numpy scalars other than float64, a missing key, a
// malformed value) makes the whole list go to AnnotationReader, which handles every case and
// names the problem.

// Positions of the evaluated image or category ids when they are all Python ints.
class IdIndex {
 public:
  // false if some id is not an int
  bool build(PyObject* index) {
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    std::vector<std::pair<int64_t, int32_t>> entries;
    while (PyDict_Next(index, &pos, &key, &value)) {
      int overflow = 0;
      if (!PyLong_CheckExact(key) || !PyLong_CheckExact(value)) return false;
      const long long id = PyLong_AsLongLongAndOverflow(key, &overflow);
      if (overflow != 0) return false;
      entries.emplace_back(id, static_cast<int32_t>(PyLong_AsLong(value)));
    }
    if (PyErr_Occurred()) return false;
    std::sort(entries.begin(), entries.end());
    if (!entries.empty() && entries.back().first - entries.front().first < 4 * static_cast<int64_t>(entries.size()) + 1024) {
      first_ = entries.front().first;
      dense_.assign(entries.back().first - first_ + 1, -1);
      for (const auto& e : entries) dense_[e.first - first_] = e.second;
    } else {
      for (const auto& e : entries) {
        ids_.push_back(e.first);
        positions_.push_back(e.second);
      }
    }
    return true;
  }

  // The position of `id`, or -1 if it is not evaluated.
  int32_t find(int64_t id) const {
    if (!dense_.empty() || ids_.empty()) {
      const int64_t offset = id - first_;
      return offset >= 0 && offset < static_cast<int64_t>(dense_.size()) ? dense_[offset] : -1;
    }
    const auto it = std::lower_bound(ids_.begin(), ids_.end(), id);
    return it != ids_.end() && *it == id ? positions_[it - ids_.begin()] : -1;
  }

 private:
  int64_t first_ = 0;
  std::vector<int32_t> dense_;
  std::vector<int64_t> ids_;
  std::vector<int32_t> positions_;
};

// numpy's scalar types (pycocotools' loadRes stores mask areas as numpy.uint32), looked up on
// the main thread. A numpy scalar object is its PyObject header followed by the value.
enum class ScalarKind { kInt8, kInt16, kInt32, kInt64, kUInt8, kUInt16, kUInt32, kUInt64, kFloat32, kBool };

struct NumpyScalarTypes {
  std::vector<std::pair<PyTypeObject*, ScalarKind>> types;

  // Empty if numpy is not imported; leaves no Python error set. The types live as long as
  // numpy stays imported, which it does for the call that looked them up.
  void look_up() {
    types.clear();
    PyObject* numpy = PyDict_GetItemString(PyImport_GetModuleDict(), "numpy");
    if (numpy == nullptr) return;
    const std::pair<const char*, ScalarKind> names[] = {
        {"int8", ScalarKind::kInt8},     {"int16", ScalarKind::kInt16},   {"int32", ScalarKind::kInt32},
        {"int64", ScalarKind::kInt64},   {"uint8", ScalarKind::kUInt8},   {"uint16", ScalarKind::kUInt16},
        {"uint32", ScalarKind::kUInt32}, {"uint64", ScalarKind::kUInt64}, {"float32", ScalarKind::kFloat32},
        {"bool_", ScalarKind::kBool}};
    for (const auto& name : names) {
      PyObject* type = PyObject_GetAttrString(numpy, name.first);
      if (type != nullptr && PyType_Check(type)) {
        types.emplace_back(reinterpret_cast<PyTypeObject*>(type), name.second);
      }
      Py_XDECREF(type);
    }
    PyErr_Clear();
  }
};

template <typename T>
struct ScalarObject {
  PyObject header;
  T value;
};

template <typename T>
T scalar_value(PyObject* obj) {
  return reinterpret_cast<ScalarObject<T>*>(obj)->value;
}

NumpyScalarTypes numpy_scalars;

// Calls `use` with the value of a numpy scalar in its own C type (bool for numpy.bool_) and
// returns what `use` returns; false if `obj` is no numpy scalar read here.
template <typename Use>
bool visit_numpy_scalar(PyObject* obj, Use&& use) {
  for (const auto& entry : numpy_scalars.types) {
    if (Py_TYPE(obj) != entry.first) continue;
    switch (entry.second) {
      case ScalarKind::kInt8: return use(scalar_value<int8_t>(obj));
      case ScalarKind::kInt16: return use(scalar_value<int16_t>(obj));
      case ScalarKind::kInt32: return use(scalar_value<int32_t>(obj));
      case ScalarKind::kInt64: return use(scalar_value<int64_t>(obj));
      case ScalarKind::kUInt8: return use(scalar_value<uint8_t>(obj));
      case ScalarKind::kUInt16: return use(scalar_value<uint16_t>(obj));
      case ScalarKind::kUInt32: return use(scalar_value<uint32_t>(obj));
      case ScalarKind::kUInt64: return use(scalar_value<uint64_t>(obj));
      case ScalarKind::kBool: return use(scalar_value<uint8_t>(obj) != 0);
      case ScalarKind::kFloat32: return use(scalar_value<float>(obj));
    }
  }
  return false;
}

// The value of a numpy scalar as a double, or false if `obj` is no numpy scalar read here.
bool numpy_scalar(PyObject* obj, double* out) {
  return visit_numpy_scalar(obj, [out](auto value) {
    *out = static_cast<double>(value);
    return true;
  });
}

// A Python int, or a numpy integer scalar, that fits int64. pycocotools would not take a
// float or bool as an id either.
bool plain_int64(PyObject* obj, int64_t* out) {
  if (PyLong_CheckExact(obj)) {
    int overflow = 0;
    *out = PyLong_AsLongLongAndOverflow(obj, &overflow);
    return overflow == 0;
  }
  return visit_numpy_scalar(obj, [out](auto value) {
    using T = decltype(value);
    if constexpr (std::is_same_v<T, bool> || std::is_floating_point_v<T>) {
      return false;
    } else {
      if constexpr (std::is_same_v<T, uint64_t>) {
        if (value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
      }
      *out = static_cast<int64_t>(value);
      return true;
    }
  });
}

// float (numpy.float64 included: it subclasses float), int or numpy number, as pycocotools'
// float() reads them
bool plain_double(PyObject* obj, double* out) {
  if (PyFloat_Check(obj)) {
    *out = PyFloat_AS_DOUBLE(obj);
    return true;
  }
  if (PyLong_CheckExact(obj)) {
    int64_t value;
    if (!plain_int64(obj, &value)) return false;
    *out = static_cast<double>(value);
    return true;
  }
  return numpy_scalar(obj, out);
}

bool plain_truth(PyObject* obj, bool* out) {
  if (obj == Py_True || obj == Py_False) {
    *out = obj == Py_True;
    return true;
  }
  double value;
  if (!plain_double(obj, &value)) return false;
  *out = value != 0;
  return true;
}

// The items of an exact list or tuple.
bool plain_items(PyObject* obj, PyObject* const** items, Py_ssize_t* size) {
  if (PyList_CheckExact(obj)) {
    *items = reinterpret_cast<PyListObject*>(obj)->ob_item;
    *size = PyList_GET_SIZE(obj);
    return true;
  }
  if (PyTuple_CheckExact(obj)) {
    *items = reinterpret_cast<PyTupleObject*>(obj)->ob_item;
    *size = PyTuple_GET_SIZE(obj);
    return true;
  }
  return false;
}

// Exactly `expected` numbers into out[0, expected).
bool plain_numbers(PyObject* obj, Py_ssize_t expected, double* out) {
  PyObject* const* items;
  Py_ssize_t size;
  if (!plain_items(obj, &items, &size) || size != expected) return false;
  for (Py_ssize_t j = 0; j < size; ++j) {
    if (!plain_double(items[j], &out[j])) return false;
  }
  return true;
}

// Any number of numbers, appended to `out`.
bool plain_numbers(PyObject* obj, Buffer<double>* out) {
  PyObject* const* items;
  Py_ssize_t size;
  if (!plain_items(obj, &items, &size)) return false;
  const size_t before = out->size();
  out->resize(before + static_cast<size_t>(size));
  return plain_numbers(obj, size, out->data() + before);
}

class PlainReader {
 public:
  enum Field { kImageId, kCategoryId, kId, kArea, kScore, kIsCrowd, kNumKeypoints, kBbox,
               kKeypoints, kSegmentation, kCounts, kSize, kNumFields };

  PlainReader(bool ground_truth, IouType iou_type, const IdIndex& images, const IdIndex& categories,
              const int64_t* image_sizes, int64_t num_keypoints)
      : ground_truth_(ground_truth), iou_type_(iou_type), images_(images), categories_(categories),
        image_sizes_(image_sizes), num_keypoints_(num_keypoints) {}

  // Calls fn(array, width) on each array of Annotations this reader fills with `width` entries
  // per annotation (the mask buffers, of any length, aside).
  template <typename Fn>
  void for_each_row_array(Annotations* a, const Fn& fn) const {
    fn(&a->id, 1);
    fn(&a->image, 1);
    fn(&a->category, 1);
    fn(&a->area, 1);
    if (ground_truth_) {
      fn(&a->crowd, 1);
      fn(&a->ignore, 1);
    } else {
      fn(&a->score, 1);
    }
    if (needs_box()) fn(&a->box, 4);
    if (iou_type_ == IouType::kKeypoints) fn(&a->keypoints, 3 * static_cast<size_t>(num_keypoints_));
    if (iou_type_ == IouType::kSegm) fn(&a->masks, 1);
  }

  // Reads items[begin, end) into the rows of `out` from `begin` on (sized beforehand; threads
  // write rows of their own), the mask buffers into `masks`, the RLE count objects to keep alive
  // into `strings`. Returns the number of rows written (annotations not evaluated are skipped),
  // or -1 if an annotation is not plain (nothing is reported: the serial reader will).
  int64_t read(PyObject* const* items, int64_t begin, int64_t end, Annotations* out, Annotations* masks,
               std::vector<PyObject*>* strings) const {
    // Annotations ahead are fetched stage by stage (dict, key table, values, list items), each
    // stage loading what the next dereferences; their scanned values wait in a ring.
    constexpr int64_t kDict = 20, kKeyTable = 14, kScan = 8, kLists = 4, kListItems = 2, kRing = 16;
    int64_t row = begin;
    PyObject* ring[kRing][kNumFields];
    bool scanned[kRing];
    for (int64_t j = begin; j < std::min(end, begin + kScan); ++j) scanned[j % kRing] = scan(items[j], ring[j % kRing]);
    for (int64_t j = begin; j < end; ++j) {
      if (j + kDict < end) __builtin_prefetch(items[j + kDict]);
      if (j + kKeyTable < end && PyDict_CheckExact(items[j + kKeyTable])) {
        const char* table = reinterpret_cast<const char*>(reinterpret_cast<PyDictObject*>(items[j + kKeyTable])->ma_keys);
        for (int line = 0; line < 6; ++line) __builtin_prefetch(table + 64 * line);
      }
      if (j + kScan < end) {
        PyObject** values = ring[(j + kScan) % kRing];
        scanned[(j + kScan) % kRing] = scan(items[j + kScan], values);
        for (int f = 0; f < kNumFields; ++f) {
          if (values[f] != nullptr) __builtin_prefetch(values[f]);
        }
      }
      if (j + kLists < end) prefetch_lists(ring[(j + kLists) % kRing], false);
      if (j + kListItems < end) prefetch_lists(ring[(j + kListItems) % kRing], true);
      if (!scanned[j % kRing] || !read_one(ring[j % kRing], &row, out, masks, strings)) return -1;
    }
    return row - begin;
  }

 private:
  bool needs_box() const {
    return iou_type_ == IouType::kBbox || (iou_type_ == IouType::kKeypoints && ground_truth_);
  }

  // The item arrays of the list values read, or (items) the objects they hold.
  void prefetch_lists(PyObject* const* values, bool items) const {
    const bool reads[3] = {needs_box(), iou_type_ == IouType::kKeypoints, iou_type_ == IouType::kSegm};
    const Field fields[3] = {kBbox, kKeypoints, kSegmentation};
    for (int f = 0; f < 3; ++f) {
      PyObject* value = values[fields[f]];
      if (!reads[f] || value == nullptr || !PyList_CheckExact(value)) continue;
      PyObject** list_items = reinterpret_cast<PyListObject*>(value)->ob_item;
      const Py_ssize_t size = PyList_GET_SIZE(value);
      if (!items) {
        for (Py_ssize_t i = 0; i < size; i += 8) __builtin_prefetch(list_items + i);
        continue;
      }
      const bool positions_only = fields[f] == kKeypoints && !ground_truth_;
      for (Py_ssize_t i = 0; i < std::min<Py_ssize_t>(size, 64); ++i) {
        if (!positions_only || i % 3 != 2) __builtin_prefetch(list_items[i]);
      }
    }
  }

  // The values of the keys read (nullptr where absent); false if a key cannot be told apart
  // from ours without Python (a str that is not compact).
  static bool scan(PyObject* dict, PyObject** values) {
    if (!PyDict_CheckExact(dict)) return false;
    std::fill(values, values + kNumFields, nullptr);
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(dict, &pos, &key, &value)) {
      const int field = field_of(key);
      if (field == -2) return false;
      if (field >= 0) values[field] = value;
    }
    return true;
  }

  // Field of a dict key; -1: not one we read; -2: undecidable here.
  static int field_of(PyObject* key) {
    static const char* const names[kNumFields] = {
        "image_id", "category_id", "id", "area", "score", "iscrowd", "num_keypoints",
        "bbox", "keypoints", "segmentation", "counts", "size"};
    PyObject* const interned[kNumFields] = {
        keys.image_id, keys.category_id, keys.id, keys.area, keys.score, keys.iscrowd,
        keys.num_keypoints, keys.bbox, keys.keypoints, keys.segmentation, keys.counts, keys.size};
    for (int f = 0; f < kNumFields; ++f) {
      if (key == interned[f]) return f;
    }
    // a str subclass may compare equal to one of ours through its own __eq__
    if (!PyUnicode_CheckExact(key)) return PyUnicode_Check(key) ? -2 : -1;
    if (!PyUnicode_IS_COMPACT_ASCII(key)) return PyUnicode_IS_COMPACT(key) ? -1 : -2;
    const char* text = static_cast<const char*>(PyUnicode_DATA(key));
    const Py_ssize_t length = PyUnicode_GET_LENGTH(key);
    for (int f = 0; f < kNumFields; ++f) {
      if (static_cast<Py_ssize_t>(std::strlen(names[f])) == length && std::memcmp(names[f], text, length) == 0) {
        return f;
      }
    }
    return -1;
  }

  bool read_one(PyObject* const* v, int64_t* row, Annotations* out, Annotations* masks,
                std::vector<PyObject*>* strings) const {
    int64_t image_id, category_id, id;
    double area;
    if (!v[kImageId] || !v[kCategoryId] || !plain_int64(v[kImageId], &image_id) ||
        !plain_int64(v[kCategoryId], &category_id)) {
      return false;
    }
    const int32_t image = images_.find(image_id), category = categories_.find(category_id);
    if (image < 0 || category < 0) return true;  // not evaluated
    if (!v[kId] || !v[kArea] || !plain_int64(v[kId], &id) || !plain_double(v[kArea], &area)) return false;
    const int64_t r = *row;
    if (ground_truth_) {
      bool crowd = false, ignore;
      if (v[kIsCrowd] && !plain_truth(v[kIsCrowd], &crowd)) return false;
      ignore = crowd;
      if (iou_type_ == IouType::kKeypoints) {
        double num;
        if (!v[kNumKeypoints] || !plain_double(v[kNumKeypoints], &num)) return false;
        ignore = ignore || num == 0;
      }
      out->crowd[r] = crowd;
      out->ignore[r] = ignore;
    } else if (!v[kScore] || !plain_double(v[kScore], &out->score[r])) {
      return false;
    }
    if (needs_box() && (!v[kBbox] || !plain_numbers(v[kBbox], 4, &out->box[4 * r]))) return false;
    const int64_t k3 = 3 * num_keypoints_;
    if (iou_type_ == IouType::kKeypoints && !read_keypoints(v[kKeypoints], &out->keypoints[k3 * r])) return false;
    if (iou_type_ == IouType::kSegm &&
        (!v[kSegmentation] || !read_mask(v[kSegmentation], image, &out->masks[r], masks, strings))) {
      return false;
    }
    out->id[r] = id;
    out->image[r] = image;
    out->category[r] = category;
    out->area[r] = area;
    ++*row;
    return true;
  }

  // x, y, visibility of each keypoint; a detection's visibilities, which pycocotools never
  // reads, are neither read nor checked (stored as 0).
  bool read_keypoints(PyObject* keypoints, double* out) const {
    const Py_ssize_t k3 = 3 * num_keypoints_;
    if (keypoints == nullptr) return false;
    if (ground_truth_) return plain_numbers(keypoints, k3, out);
    PyObject* const* items;
    Py_ssize_t size;
    if (!plain_items(keypoints, &items, &size) || size != k3) return false;
    for (Py_ssize_t j = 0; j < k3; j += 3) {
      if (!plain_double(items[j], &out[j]) || !plain_double(items[j + 1], &out[j + 1])) return false;
      out[j + 2] = 0;
    }
    return true;
  }

  // Reads a segmentation into `source`, its run lengths or polygons into `out`.
  bool read_mask(PyObject* segm, int32_t image, MaskSource* mask, Annotations* out, std::vector<PyObject*>* strings) const {
    MaskSource source;
    PyObject* const* polygons;
    Py_ssize_t num_polygons;
    if (plain_items(segm, &polygons, &num_polygons) && PyList_CheckExact(segm)) {
      source.height = image_sizes_[2 * image];
      source.width = image_sizes_[2 * image + 1];
      if (num_polygons > 0 && (source.height < 0 || source.width < 0)) return false;
      source.begin = static_cast<int64_t>(out->polygon_offsets.size()) - 1;
      for (Py_ssize_t p = 0; p < num_polygons; ++p) {
        if (!plain_numbers(polygons[p], &out->polygon_coords)) return false;
        out->polygon_offsets.push_back(static_cast<int64_t>(out->polygon_coords.size()));
        const int64_t length = out->polygon_offsets.back() - out->polygon_offsets[out->polygon_offsets.size() - 2];
        if (p == 0) source.format = length == 4 ? MaskFormat::kBoxes : MaskFormat::kPolygons;
        if (length < 4 || (source.format == MaskFormat::kBoxes && length != 4)) return false;
      }
      if (num_polygons == 0) source.format = MaskFormat::kPolygons;
      source.end = static_cast<int64_t>(out->polygon_offsets.size()) - 1;
    } else {
      PyObject* values[kNumFields];
      PyObject* const* size;
      Py_ssize_t size_length;
      if (!scan(segm, values) || !values[kCounts] || !values[kSize] ||
          !plain_items(values[kSize], &size, &size_length) || size_length != 2 ||
          !plain_int64(size[0], &source.height) || !plain_int64(size[1], &source.width)) {
        return false;
      }
      PyObject* counts = values[kCounts];
      if (PyList_CheckExact(counts)) {
        source.format = MaskFormat::kUncompressedRle;
        source.begin = static_cast<int64_t>(out->rle_counts.size());
        for (Py_ssize_t j = 0; j < PyList_GET_SIZE(counts); ++j) {
          int64_t value;
          if (!plain_int64(PyList_GET_ITEM(counts, j), &value) || value < 0 || value > UINT32_MAX) return false;
          out->rle_counts.push_back(static_cast<uint32_t>(value));
        }
        source.end = static_cast<int64_t>(out->rle_counts.size());
      } else if (PyUnicode_CheckExact(counts) && PyUnicode_IS_COMPACT_ASCII(counts)) {
        source.format = MaskFormat::kCompressedRle;
        source.text = static_cast<const char*>(PyUnicode_DATA(counts));
        source.text_size = PyUnicode_GET_LENGTH(counts);
        strings->push_back(counts);
      } else if (PyBytes_CheckExact(counts)) {
        source.format = MaskFormat::kCompressedRle;
        source.text = PyBytes_AS_STRING(counts);
        source.text_size = PyBytes_GET_SIZE(counts);
        strings->push_back(counts);
      } else {
        return false;
      }
    }
    *mask = source;
    return true;
  }

  const bool ground_truth_;
  const IouType iou_type_;
  const IdIndex& images_;
  const IdIndex& categories_;
  const int64_t* const image_sizes_;
  const int64_t num_keypoints_;
};

// Copies `field` of every part, one after the other, after the entries of `all` (the first
// `skip` of each part left out), each part by a thread of its own; shift(part, value) is the
// value stored.
template <typename T, typename Shift>
void concatenate_field(const std::vector<Annotations>& parts, Buffer<T> Annotations::*field, size_t skip,
                       int num_threads, Annotations* all, const Shift& shift) {
  std::vector<size_t> starts(parts.size() + 1, (all->*field).size());
  for (size_t p = 0; p < parts.size(); ++p) starts[p + 1] = starts[p] + (parts[p].*field).size() - skip;
  (all->*field).resize(starts.back());
  detzoo::cocoeval::parallel_for(static_cast<int64_t>(parts.size()), 1, num_threads, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const Buffer<T>& from = parts[p].*field;
      T* to = (all->*field).data() + starts[p] - skip;
      for (size_t j = skip; j < from.size(); ++j) to[j] = shift(p, from[j]);
    }
  });
}

// Appends the mask buffers of the parts read by threads to those of `all`, and shifts the
// references of each part's masks (its rows [start, start + count) of all->masks) to match.
void concatenate_masks(const std::vector<Annotations>& parts, const std::vector<int64_t>& start,
                       const std::vector<int64_t>& count, int num_threads, Annotations* all) {
  // where each part's RLE counts, polygon coordinates and polygons start
  std::vector<int64_t> rle_base(parts.size()), coord_base(parts.size()), polygon_base(parts.size());
  int64_t rles = static_cast<int64_t>(all->rle_counts.size());
  int64_t coords = static_cast<int64_t>(all->polygon_coords.size());
  int64_t polygons = static_cast<int64_t>(all->polygon_offsets.size()) - 1;
  for (size_t p = 0; p < parts.size(); ++p) {
    rle_base[p] = rles;
    coord_base[p] = coords;
    polygon_base[p] = polygons;
    rles += static_cast<int64_t>(parts[p].rle_counts.size());
    coords += static_cast<int64_t>(parts[p].polygon_coords.size());
    polygons += static_cast<int64_t>(parts[p].polygon_offsets.size()) - 1;
  }
  const auto same = [](int64_t, const auto& value) { return value; };
  concatenate_field(parts, &Annotations::rle_counts, 0, num_threads, all, same);
  concatenate_field(parts, &Annotations::polygon_coords, 0, num_threads, all, same);
  concatenate_field(parts, &Annotations::polygon_offsets, 1, num_threads, all,
                    [&](int64_t p, int64_t offset) { return offset + coord_base[p]; });
  if (all->masks.empty()) return;
  detzoo::cocoeval::parallel_for(static_cast<int64_t>(parts.size()), 1, num_threads, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      for (int64_t r = start[p]; r < start[p] + count[p]; ++r) {
        MaskSource& source = all->masks[r];
        const int64_t base = source.format == MaskFormat::kUncompressedRle ? rle_base[p]
                             : source.format == MaskFormat::kCompressedRle ? 0 : polygon_base[p];
        source.begin += base;
        source.end += base;
      }
    }
  });
}

// Reads `annotations` with `num_threads` threads if they are all plain; false (nothing read, no
// error set) otherwise. Each thread writes its annotations straight into the arrays of `out`,
// sized for all of them; the rows of annotations not evaluated are closed up afterwards.
bool read_plain(PyObject* annotations, const PlainReader& reader, int num_threads, Annotations* out,
                std::vector<PyObject*>* keep_alive) {
  if (!PyList_CheckExact(annotations)) return false;
  PyObject* const* items = reinterpret_cast<PyListObject*>(annotations)->ob_item;
  const int64_t n = PyList_GET_SIZE(annotations);
  const int64_t num_parts = std::max<int64_t>(1, std::min<int64_t>(num_threads, n / 2048));
  std::vector<Annotations> parts(num_parts);  // mask buffers
  std::vector<std::vector<PyObject*>> strings(num_parts);
  std::vector<int64_t> first(num_parts + 1), count(num_parts, 0);
  for (int64_t p = 0; p <= num_parts; ++p) first[p] = n * p / num_parts;
  std::atomic<bool> plain{true};
  try {
    reader.for_each_row_array(out, [n](auto* array, size_t width) { array->resize(static_cast<size_t>(n) * width); });
    detzoo::cocoeval::parallel_for(num_parts, 1, num_threads, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end && plain; ++p) {
        count[p] = reader.read(items, first[p], first[p + 1], out, &parts[p], &strings[p]);
        if (count[p] < 0) plain = false;
      }
    });
  } catch (const std::bad_alloc&) {
    plain = false;
  }
  if (!plain) {
    reader.for_each_row_array(out, [](auto* array, size_t) { array->clear(); });
    return false;
  }
  std::vector<int64_t> start(num_parts);
  int64_t total = 0;
  for (int64_t p = 0; p < num_parts; ++p) {
    start[p] = total;
    if (first[p] != total) {
      reader.for_each_row_array(out, [&](auto* array, size_t width) {
        const auto from = array->begin() + first[p] * width;
        std::copy(from, from + count[p] * width, array->begin() + total * width);
      });
    }
    total += count[p];
  }
  reader.for_each_row_array(out, [total](auto* array, size_t width) { array->resize(static_cast<size_t>(total) * width); });
  concatenate_masks(parts, start, count, num_threads, out);
  for (int64_t p = 0; p < num_parts; ++p) {
    for (PyObject* obj : strings[p]) {
      Py_INCREF(obj);
      keep_alive->push_back(obj);
    }
  }
  return true;
}

// Drops the references taken on compressed RLE strings.
struct KeepAlive {
  std::vector<PyObject*> objects;
  ~KeepAlive() {
    for (PyObject* obj : objects) Py_DECREF(obj);
  }
};

// Runs `fn` without the GIL; a C++ exception becomes ValueError / MemoryError.
template <typename Fn>
bool run_without_gil(const Fn& fn) {
  std::string error;
  bool out_of_memory = false;
  Py_BEGIN_ALLOW_THREADS
  try {
    fn();
  } catch (const std::bad_alloc&) {
    out_of_memory = true;
  } catch (const std::exception& e) {
    error = e.what();
    if (error.empty()) error = "unknown error";
  }
  Py_END_ALLOW_THREADS
  if (out_of_memory) {
    PyErr_NoMemory();
    return false;
  }
  if (!error.empty()) {
    PyErr_SetString(PyExc_ValueError, error.c_str());
    return false;
  }
  return true;
}

// DETZOO_COCOEVAL_TIMING=1: print where evaluate() and accumulate() spend their time.
bool profiling() {
  const char* value = std::getenv("DETZOO_COCOEVAL_TIMING");
  return value != nullptr && value[0] != '\0' && std::strcmp(value, "0") != 0;
}

void destroy_evaluation(PyObject* capsule) {
  delete static_cast<Evaluation*>(PyCapsule_GetPointer(capsule, kCapsuleName));
}

bool check_sizes(const BufferView& sizes, const char* name, int64_t num_images) {
  if (sizes.size() != 2 * num_images) {
    PyErr_Format(PyExc_ValueError, "%s: expected %lld values (height, width per image), got %lld",
                 name, static_cast<long long>(2 * num_images), static_cast<long long>(sizes.size()));
    return false;
  }
  return true;
}

PyObject* py_evaluate(PyObject*, PyObject* args, PyObject* kwargs) {
  static const char* kwlist[] = {"iou_type", "use_cats", "gt", "dt", "image_index", "category_index",
                                 "num_categories", "gt_image_sizes", "dt_image_sizes", "area_ranges",
                                 "iou_thresholds", "max_detections", "oks_sigmas", "num_threads",
                                 nullptr};
  int iou_type, use_cats, num_threads;
  long long num_categories, max_detections;
  PyObject *gt_list, *dt_list, *image_index, *category_index, *gt_sizes_obj, *dt_sizes_obj;
  PyObject *area_obj, *thresholds_obj, *sigmas_obj;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "ipOOO!O!LOOOOLOi", const_cast<char**>(kwlist),
                                   &iou_type, &use_cats, &gt_list, &dt_list, &PyDict_Type,
                                   &image_index, &PyDict_Type, &category_index, &num_categories,
                                   &gt_sizes_obj, &dt_sizes_obj, &area_obj, &thresholds_obj,
                                   &max_detections, &sigmas_obj, &num_threads)) {
    return nullptr;
  }
  if (iou_type < 0 || iou_type > 2) {
    PyErr_Format(PyExc_ValueError, "iou_type must be 0 (bbox), 1 (segm) or 2 (keypoints), got %d", iou_type);
    return nullptr;
  }
  detzoo::cocoeval::EvaluateParams params;
  params.iou_type = static_cast<IouType>(iou_type);
  params.use_cats = use_cats != 0;
  params.num_images = PyDict_GET_SIZE(image_index);
  params.num_categories = num_categories;
  params.max_detections = max_detections;
  params.num_threads = num_threads;

  BufferView areas, thresholds, sigmas, gt_sizes, dt_sizes;
  if (!areas.acquire(area_obj, "area_ranges", 'd', false) ||
      !thresholds.acquire(thresholds_obj, "iou_thresholds", 'd', false)) {
    return nullptr;
  }
  if (areas.size() % 2 != 0) {
    PyErr_SetString(PyExc_ValueError, "area_ranges must hold (min, max) pairs");
    return nullptr;
  }
  for (int64_t a = 0; a < areas.size() / 2; ++a) {
    params.area_ranges.push_back({areas.data<double>()[2 * a], areas.data<double>()[2 * a + 1]});
  }
  params.iou_thresholds = thresholds.vector<double>();
  if (params.iou_type == IouType::kKeypoints) {
    if (!sigmas.acquire(sigmas_obj, "oks_sigmas", 'd', false)) return nullptr;
    params.oks_sigmas = sigmas.vector<double>();
  }
  const int64_t* gt_image_sizes = nullptr;
  const int64_t* dt_image_sizes = nullptr;
  if (params.iou_type == IouType::kSegm) {
    if (!gt_sizes.acquire(gt_sizes_obj, "gt_image_sizes", 'q', false) ||
        !dt_sizes.acquire(dt_sizes_obj, "dt_image_sizes", 'q', false) ||
        !check_sizes(gt_sizes, "gt_image_sizes", params.num_images) ||
        !check_sizes(dt_sizes, "dt_image_sizes", params.num_images)) {
      return nullptr;
    }
    gt_image_sizes = gt_sizes.data<int64_t>();
    dt_image_sizes = dt_sizes.data<int64_t>();
  }

  const bool timing = profiling();
  detzoo::cocoeval::StageSeconds stages;
  if (timing) params.stage_seconds = &stages;
  double read_seconds[2] = {0, 0};
  auto tic = std::chrono::steady_clock::now();

  KeepAlive keep_alive;
  Annotations gt, dt;
  const int64_t num_keypoints = static_cast<int64_t>(params.oks_sigmas.size());
  numpy_scalars.look_up();
  IdIndex image_ids, category_ids;
  const bool plain_ids = image_ids.build(image_index) && category_ids.build(category_index);
  PyErr_Clear();
  for (bool ground_truth : {true, false}) {
    PyObject* list = ground_truth ? gt_list : dt_list;
    Annotations* out = ground_truth ? &gt : &dt;
    const int64_t* sizes = ground_truth ? gt_image_sizes : dt_image_sizes;
    const PlainReader plain(ground_truth, params.iou_type, image_ids, category_ids, sizes, num_keypoints);
    const bool plain_read = plain_ids && read_plain(list, plain, num_threads, out, &keep_alive.objects);
    if (!plain_read) {
      AnnotationReader reader(ground_truth, params.iou_type, image_index, category_index, sizes,
                              num_keypoints, out, &keep_alive.objects);
      if (!reader.read(list)) return nullptr;
    }
    const auto now = std::chrono::steady_clock::now();
    read_seconds[ground_truth ? 0 : 1] = std::chrono::duration<double>(now - tic).count();
    tic = now;
    if (timing) {
      std::fprintf(stderr, "detzoo._cocoeval: read %lld %s annotations (%s) in %.3f s\n",
                   static_cast<long long>(out->size()), ground_truth ? "ground-truth" : "detection",
                   plain_read ? "plain, threaded" : "serial", read_seconds[ground_truth ? 0 : 1]);
    }
  }
  for (const Annotations* side : {&gt, &dt}) {
    for (int64_t n = 0; n < side->size(); ++n) {
      if (side->image[n] < 0 || side->image[n] >= params.num_images || side->category[n] < 0 ||
          side->category[n] >= params.num_categories) {
        PyErr_SetString(PyExc_ValueError, "image_index / category_index hold out-of-range positions");
        return nullptr;
      }
    }
  }

  auto* evaluation = new (std::nothrow) Evaluation();
  if (evaluation == nullptr) return PyErr_NoMemory();
  if (!run_without_gil([&] { *evaluation = detzoo::cocoeval::evaluate(params, gt, dt); })) {
    delete evaluation;
    return nullptr;
  }
  PyObject* capsule = PyCapsule_New(evaluation, kCapsuleName, destroy_evaluation);
  if (capsule == nullptr) delete evaluation;
  if (timing) {
    std::fprintf(stderr,
                 "detzoo._cocoeval: evaluate: grouping %.3f s, pairs %.3f s (wall); summed over "
                 "threads: sorting %.3f s, masks decoded %.3f s (ground truth) + %.3f s (detections), IoU "
                 "%.3f s, matching %.3f s\n",
                 stages.grouping, stages.pairs, stages.sorting, stages.gt_masks, stages.dt_masks,
                 stages.ious, stages.matching);
  }
  return capsule;
}

bool check_indices(const std::vector<int64_t>& values, int64_t limit, const char* name) {
  for (int64_t v : values) {
    if (v < 0 || v >= limit) {
      PyErr_Format(PyExc_ValueError, "%s: index %lld is outside the evaluated range [0, %lld)", name,
                   static_cast<long long>(v), static_cast<long long>(limit));
      return false;
    }
  }
  return true;
}

PyObject* py_accumulate(PyObject*, PyObject* args, PyObject* kwargs) {
  static const char* kwlist[] = {"evaluation", "categories", "areas", "max_detections", "images",
                                 "recall_thresholds", "precision", "recall", "scores",
                                 "out_categories", "out_areas", "out_max_detections",
                                 "num_threads", nullptr};
  PyObject *capsule, *categories_obj, *areas_obj, *max_det_obj, *images_obj, *recall_thr_obj;
  PyObject *precision_obj, *recall_obj, *scores_obj;
  long long out_categories, out_areas, out_max_detections;
  int num_threads;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOOOLLLi", const_cast<char**>(kwlist),
                                   &capsule, &categories_obj, &areas_obj, &max_det_obj, &images_obj,
                                   &recall_thr_obj, &precision_obj, &recall_obj, &scores_obj,
                                   &out_categories, &out_areas, &out_max_detections, &num_threads)) {
    return nullptr;
  }
  const auto* ev = static_cast<const Evaluation*>(PyCapsule_GetPointer(capsule, kCapsuleName));
  if (ev == nullptr) return nullptr;
  BufferView categories, areas, max_dets, images, recall_thr, precision, recall, scores;
  if (!categories.acquire(categories_obj, "categories", 'q', false) ||
      !areas.acquire(areas_obj, "areas", 'q', false) ||
      !max_dets.acquire(max_det_obj, "max_detections", 'q', false) ||
      !images.acquire(images_obj, "images", 'q', false) ||
      !recall_thr.acquire(recall_thr_obj, "recall_thresholds", 'd', false) ||
      !precision.acquire(precision_obj, "precision", 'd', true) ||
      !recall.acquire(recall_obj, "recall", 'd', true) ||
      !scores.acquire(scores_obj, "scores", 'd', true)) {
    return nullptr;
  }
  detzoo::cocoeval::AccumulateParams params;
  params.categories = categories.vector<int64_t>();
  params.areas = areas.vector<int64_t>();
  params.max_detections = max_dets.vector<int64_t>();
  params.images = images.vector<int64_t>();
  params.recall_thresholds = recall_thr.vector<double>();
  params.out_categories = out_categories;
  params.out_areas = out_areas;
  params.out_max_detections = out_max_detections;
  params.num_threads = num_threads;
  if (!check_indices(params.categories, ev->num_categories, "categories") ||
      !check_indices(params.areas, ev->num_areas, "areas") ||
      !check_indices(params.images, ev->num_images, "images")) {
    return nullptr;
  }
  const int64_t T = ev->num_thresholds, R = static_cast<int64_t>(params.recall_thresholds.size());
  const int64_t cells = out_categories * out_areas * out_max_detections;
  if (static_cast<int64_t>(params.categories.size()) > out_categories ||
      static_cast<int64_t>(params.areas.size()) > out_areas ||
      static_cast<int64_t>(params.max_detections.size()) > out_max_detections ||
      precision.size() != T * R * cells || scores.size() != T * R * cells ||
      recall.size() != T * cells) {
    PyErr_SetString(PyExc_ValueError,
                    "accumulate: the output tables do not match the evaluation (the number of IoU "
                    "thresholds must be the one evaluate() used)");
    return nullptr;
  }
  double* precision_data = precision.data<double>();
  double* recall_data = recall.data<double>();
  double* scores_data = scores.data<double>();
  const auto tic = std::chrono::steady_clock::now();
  if (!run_without_gil([&] {
        detzoo::cocoeval::accumulate(*ev, params, precision_data, recall_data, scores_data);
      })) {
    return nullptr;
  }
  if (profiling()) {
    std::fprintf(stderr, "detzoo._cocoeval: accumulate %.3f s\n",
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - tic).count());
  }
  Py_RETURN_NONE;
}

// Test helpers: a segmentation's canonical run-length counts, and the IoU matrix of two lists
// of segmentations, as pycocotools' annToRLE + mask.iou would give them.
bool read_masks(PyObject* list, int64_t height, int64_t width, Annotations* out,
                std::vector<PyObject*>* keep_alive) {
  PyObject* fast = PySequence_Fast(list, "expected a list of segmentations");
  if (fast == nullptr) return false;
  bool ok = true;
  for (Py_ssize_t j = 0; j < PySequence_Fast_GET_SIZE(fast) && ok; ++j) {
    std::string problem;
    ok = read_segmentation(PySequence_Fast_GET_ITEM(fast, j), height, width, out, keep_alive, &problem);
    if (!ok && !PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, problem.c_str());
  }
  Py_DECREF(fast);
  return ok;
}

PyObject* py_mask_counts(PyObject*, PyObject* args) {
  PyObject* segm;
  long long height, width;
  if (!PyArg_ParseTuple(args, "OLL", &segm, &height, &width)) return nullptr;
  KeepAlive keep_alive;
  Annotations a;
  PyObject* one = PyList_New(1);
  if (one == nullptr) return nullptr;
  Py_INCREF(segm);
  PyList_SET_ITEM(one, 0, segm);
  const bool ok = read_masks(one, height, width, &a, &keep_alive.objects);
  Py_DECREF(one);
  if (!ok) return nullptr;
  detzoo::cocoeval::Mask mask;
  detzoo::cocoeval::MaskScratch scratch;
  detzoo::cocoeval::decode_mask(a, 0, false, &mask, &scratch);  // the runs are all it returns
  std::vector<uint32_t> counts;
  uint32_t position = 0;
  for (size_t r = 0; r < mask.runs.size(); r += 2) {
    counts.push_back(mask.runs[r] - position);
    counts.push_back(mask.runs[r + 1] - mask.runs[r]);
    position = mask.runs[r + 1];
  }
  const uint32_t total = static_cast<uint32_t>(mask.height * mask.width);
  if (counts.empty() || position < total) counts.push_back(total - position);
  PyObject* out = PyList_New(static_cast<Py_ssize_t>(counts.size()));
  for (size_t j = 0; out != nullptr && j < counts.size(); ++j) {
    PyObject* item = PyLong_FromUnsignedLong(counts[j]);
    if (item == nullptr) {
      Py_CLEAR(out);
      break;
    }
    PyList_SET_ITEM(out, static_cast<Py_ssize_t>(j), item);
  }
  return out;
}

PyObject* py_mask_iou(PyObject*, PyObject* args) {
  PyObject *dt_list, *gt_list, *crowd_list;
  long long height, width;
  if (!PyArg_ParseTuple(args, "OOOLL", &dt_list, &gt_list, &crowd_list, &height, &width)) return nullptr;
  KeepAlive keep_alive;
  Annotations dt, gt;
  std::vector<double> crowd;
  if (!read_masks(dt_list, height, width, &dt, &keep_alive.objects) ||
      !read_masks(gt_list, height, width, &gt, &keep_alive.objects) || !append_numbers(crowd_list, &crowd)) {
    return nullptr;
  }
  if (crowd.size() != gt.masks.size()) {
    PyErr_SetString(PyExc_ValueError, "iscrowd must have one flag per ground-truth segmentation");
    return nullptr;
  }
  std::vector<detzoo::cocoeval::Mask> dt_masks(dt.masks.size()), gt_masks(gt.masks.size());
  detzoo::cocoeval::MaskScratch scratch;
  for (size_t d = 0; d < dt_masks.size(); ++d) detzoo::cocoeval::decode_mask(dt, d, true, &dt_masks[d], &scratch);
  for (size_t g = 0; g < gt_masks.size(); ++g) detzoo::cocoeval::decode_mask(gt, g, true, &gt_masks[g], &scratch);
  PyObject* out = PyList_New(static_cast<Py_ssize_t>(dt_masks.size()));
  for (size_t d = 0; out != nullptr && d < dt_masks.size(); ++d) {
    PyObject* row = PyList_New(static_cast<Py_ssize_t>(gt_masks.size()));
    if (row == nullptr) {
      Py_CLEAR(out);
      break;
    }
    PyList_SET_ITEM(out, d, row);
    for (size_t g = 0; g < gt_masks.size(); ++g) {
      PyObject* value = PyFloat_FromDouble(detzoo::cocoeval::mask_iou(dt_masks[d], gt_masks[g], crowd[g] != 0));
      if (value == nullptr) {
        Py_CLEAR(out);
        break;
      }
      PyList_SET_ITEM(row, g, value);
    }
  }
  return out;
}

PyMethodDef methods[] = {
    {"evaluate", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(py_evaluate)),
     METH_VARARGS | METH_KEYWORDS,
     "Match detections to ground truth per (category, image) pair; returns an opaque evaluation."},
    {"accumulate", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(py_accumulate)),
     METH_VARARGS | METH_KEYWORDS,
     "Fill precision [T,R,K,A,M], recall [T,K,A,M] and scores tables from an evaluation."},
    {"mask_counts", py_mask_counts, METH_VARARGS,
     "mask_counts(segmentation, height, width) -> canonical run-length counts (test helper)."},
    {"mask_iou", py_mask_iou, METH_VARARGS,
     "mask_iou(dt_segms, gt_segms, iscrowd, height, width) -> IoU rows per detection (test helper)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_cocoeval",
                          "detzoo's C++ COCO evaluation (used by detzoo.evaluation.fast_eval_api).",
                          -1, methods, nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__cocoeval(void) {
  if (!intern_keys()) return nullptr;
  return PyModule_Create(&module_def);
}
