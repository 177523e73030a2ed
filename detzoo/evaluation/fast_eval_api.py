"""`COCOeval_opt`: pycocotools' `COCOeval` whose `evaluate()` and `accumulate()` run in C++.

The summary metrics (`stats`, after `summarize()`) and the tables of `eval` are pycocotools'
own: boxes, masks and keypoints are matched with its arithmetic (IoU against crowd regions over
the detection's area, the 101-point interpolated precision, stable score sorting), and its
quirks are kept where they change results (see csrc/cocoeval/cocoeval.cpp).

What differs from pycocotools:

* The annotation dicts are read once, in C++, straight from `cocoGt.dataset["annotations"]` and
  `cocoDt.dataset["annotations"]` (they are not modified, unlike pycocotools' `_prepare()`).
  Mask IoU is computed on the run lengths, polygons are rasterised as pycocotools does it, and
  every (category, image) pair is matched in parallel (`num_threads`, default: every CPU this
  process may use).
* As in Detectron2, `evalImgs` and `ious` are not filled: building them is what makes
  pycocotools slow. The per-pair results live in `_evalImgs_cpp` for `accumulate()`.
"""
import copy
import datetime
import logging
import os
import time

import numpy as np
from pycocotools.cocoeval import COCOeval

__all__ = ["COCOeval_opt"]

logger = logging.getLogger(__name__)

# The codes csrc/cocoeval/cocoeval.h gives the IoU types.
_IOU_TYPES = {"bbox": 0, "segm": 1, "keypoints": 2}


def _extension():
    try:
        from detzoo import _cocoeval
    except ImportError as e:
        raise RuntimeError(
            f"detzoo's C++ COCO evaluation (detzoo._cocoeval) is not built: {e}. Build it from the "
            "repository root with `make install` (or `pip install --no-build-isolation -e .`)."
        ) from e
    return _cocoeval


def _available_cpus():
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _positions(ids):
    """{id: position of its first occurrence}, with numpy scalars turned into Python ones so
    that annotation ids of either kind find them."""
    index = {}
    for n, value in enumerate(np.asarray(ids).tolist()):
        index.setdefault(value, n)
    return index


def _image_sizes(coco, image_ids):
    """int64 [I, 2]: (height, width) of each evaluated image in `coco.imgs`, -1 where unknown
    (needed only to rasterise polygons)."""
    images = coco.imgs
    sizes = [(images.get(i) or {}).get("height", -1) for i in image_ids], \
            [(images.get(i) or {}).get("width", -1) for i in image_ids]
    return np.ascontiguousarray(np.array(sizes, dtype=np.int64).T.reshape(-1))


def _snapshot(params):
    """A copy of `params` as deep as copy.deepcopy makes it for pycocotools' Params (lists, nested
    lists, arrays), without deepcopy's cost per entry of the long id lists (their entries, ints or
    numpy scalars, are immutable and shared)."""
    snapshot = copy.copy(params)
    for name, value in vars(params).items():
        if isinstance(value, list):
            value = [list(v) if isinstance(v, list) else v for v in value]
        elif isinstance(value, (dict, np.ndarray)):
            value = copy.deepcopy(value)
        setattr(snapshot, name, value)
    return snapshot


def _float64(values):
    return np.ascontiguousarray(np.asarray(values, dtype=np.float64).reshape(-1))


def _int64(values):
    return np.ascontiguousarray(np.asarray(values, dtype=np.int64).reshape(-1))


class COCOeval_opt(COCOeval):
    """pycocotools' `COCOeval` with `evaluate()` and `accumulate()` in C++.

    Use it as `COCOeval`: `COCOeval_opt(coco_gt, coco_dt, iou_type)`, set `params`, then
    `evaluate()`, `accumulate()`, `summarize()`. `iou_type` is "bbox", "segm" (polygons,
    RLEs with string or list counts) or "keypoints" (OKS with `params.kpt_oks_sigmas`).
    """

    #: threads for evaluate() and accumulate(); None: every CPU this process may use
    num_threads = None

    def evaluate(self):
        """Match detections to ground truth for every (category, image) pair and area range.

        The results are kept in `self._evalImgs_cpp` for `accumulate()`; `self.evalImgs` is not
        filled.
        """
        tic = time.perf_counter()
        p = self._normalized_params()
        logger.info("Evaluate annotation type *%s*", p.iouType)
        image_ids = np.asarray(p.imgIds).tolist()
        iou_type = _IOU_TYPES[p.iouType]
        segm = p.iouType == "segm"
        sigmas = _float64(p.kpt_oks_sigmas) if p.iouType == "keypoints" else None
        self._evalImgs_cpp = _extension().evaluate(
            iou_type=iou_type,
            use_cats=bool(p.useCats),
            gt=self.cocoGt.dataset.get("annotations", []),
            dt=self.cocoDt.dataset.get("annotations", []),
            image_index=_positions(image_ids),
            category_index=_positions(p.catIds),
            num_categories=len(p.catIds),
            gt_image_sizes=_image_sizes(self.cocoGt, image_ids) if segm else None,
            dt_image_sizes=_image_sizes(self.cocoDt, image_ids) if segm else None,
            area_ranges=_float64(p.areaRng),
            iou_thresholds=_float64(p.iouThrs),
            max_detections=int(p.maxDets[-1]),
            oks_sigmas=sigmas,
            num_threads=self.num_threads or _available_cpus(),
        )
        self._paramsEval = _snapshot(self.params)
        logger.info("COCOeval_opt.evaluate() finished in %.2f seconds.", time.perf_counter() - tic)

    def _normalized_params(self):
        """`self.params` as pycocotools' evaluate() leaves it (unique sorted ids, sorted
        maxDets), after checking what the C++ side relies on."""
        if self.cocoGt is None or self.cocoDt is None:
            raise ValueError("COCOeval_opt needs both cocoGt and cocoDt (COCO objects) to evaluate")
        p = self.params
        if p.useSegm is not None:  # deprecated pycocotools switch, still honoured
            p.iouType = "segm" if p.useSegm == 1 else "bbox"
        if p.iouType not in _IOU_TYPES:
            raise ValueError(f"params.iouType must be one of {sorted(_IOU_TYPES)}, got {p.iouType!r}")
        p.imgIds = list(np.unique(p.imgIds))
        if p.useCats:
            p.catIds = list(np.unique(p.catIds))
        p.maxDets = sorted(p.maxDets)
        if not p.maxDets:
            raise ValueError("params.maxDets is empty; expected max detection counts such as [1, 10, 100]")
        area_ranges = np.asarray(p.areaRng, dtype=np.float64)
        if area_ranges.ndim != 2 or area_ranges.shape[1] != 2:
            raise ValueError(f"params.areaRng must be a list of [min, max] pairs, got {p.areaRng!r}")
        if p.iouType == "keypoints" and np.asarray(getattr(p, "kpt_oks_sigmas", [])).size == 0:
            raise ValueError("keypoints evaluation needs params.kpt_oks_sigmas (one sigma per keypoint)")
        self.params = p
        return p

    def accumulate(self, p=None):
        """Build `self.eval` (precision [T, R, K, A, M], recall [T, K, A, M], scores) from the
        evaluation, for `p` (default `self.params`) as pycocotools does."""
        tic = time.perf_counter()
        evaluation = getattr(self, "_evalImgs_cpp", None)
        if evaluation is None:
            raise RuntimeError("COCOeval_opt.accumulate() needs evaluate() to have run first")
        if p is None:
            p = self.params
        p.catIds = p.catIds if p.useCats == 1 else [-1]
        T, R, A, M = len(p.iouThrs), len(p.recThrs), len(p.areaRng), len(p.maxDets)
        K = len(p.catIds) if p.useCats else 1
        precision = -np.ones((T, R, K, A, M))
        recall = -np.ones((T, K, A, M))
        scores = -np.ones((T, R, K, A, M))
        k_list, a_list, m_list, i_list = self._selection(p)
        _extension().accumulate(
            evaluation=evaluation,
            categories=_int64(k_list),
            areas=_int64(a_list),
            max_detections=_int64(m_list),
            images=_int64(i_list),
            recall_thresholds=_float64(p.recThrs),
            precision=precision,
            recall=recall,
            scores=scores,
            out_categories=K,
            out_areas=A,
            out_max_detections=M,
            num_threads=self.num_threads or _available_cpus(),
        )
        self.eval = {
            "params": p,
            "counts": [T, R, K, A, M],
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
            "precision": precision,
            "recall": recall,
            "scores": scores,
        }
        logger.info("COCOeval_opt.accumulate() finished in %.2f seconds.", time.perf_counter() - tic)

    def _selection(self, p):
        """pycocotools' k_list, a_list, m_list (max detection values) and i_list: the entries of
        `p` that were evaluated. Their positions in `p` index the evaluation, as in pycocotools."""
        pe = self._paramsEval
        evaluated_cats = set(pe.catIds if pe.useCats else [-1])
        evaluated_areas = set(map(tuple, pe.areaRng))
        evaluated_max_dets = set(pe.maxDets)
        k_list = [n for n, k in enumerate(p.catIds) if k in evaluated_cats]
        a_list = [n for n, a in enumerate(map(tuple, p.areaRng)) if a in evaluated_areas]
        m_list = [m for m in p.maxDets if m in evaluated_max_dets]
        if list(p.imgIds) == list(pe.imgIds):  # the usual case: every evaluated image, in order
            return k_list, a_list, m_list, range(len(pe.imgIds))
        evaluated_images = set(pe.imgIds)
        i_list = [n for n, i in enumerate(p.imgIds) if i in evaluated_images]
        return k_list, a_list, m_list, i_list
