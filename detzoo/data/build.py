"""Building the training and test data loaders from dataset names (or lists of dataset dicts),
a mapper and a sampler; each builder also takes a config (`@configurable`)."""
import itertools
import logging
import operator
import pickle
from collections import OrderedDict, defaultdict
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.utils.data as torchdata
from tabulate import tabulate
from termcolor import colored

from detzoo.checkpoint.safe_pickle import _WeightsUnpickler
from detzoo.config import configurable
from detzoo.structures import BoxMode
from detzoo.utils.comm import get_world_size
from detzoo.utils.env import seed_all_rng
from detzoo.utils.file_io import PathManager
from detzoo.utils.logger import log_first_n

from .catalog import DatasetCatalog, MetadataCatalog
from .common import AspectRatioGroupedDataset, DatasetFromList, MapDataset, ToIterableDataset
from .dataset_mapper import DatasetMapper
from .detection_utils import check_metadata_consistency
from .samplers import InferenceSampler, RandomSubsetTrainingSampler, RepeatFactorTrainingSampler, TrainingSampler

__all__ = [
    "build_batch_data_loader",
    "build_detection_train_loader",
    "build_detection_test_loader",
    "get_detection_dataset_dicts",
    "load_proposals_into_dataset",
    "print_instances_class_histogram",
    "trivial_batch_collator",
    "worker_init_reset_seed",
]

logger = logging.getLogger(__name__)


def filter_images_with_only_crowd_annotations(dataset_dicts: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Drop images without a non-crowd annotation (COCO's usual training filter)."""
    kept = [d for d in dataset_dicts if any(ann.get("iscrowd", 0) == 0 for ann in d["annotations"])]
    logger.info(f"Removed {len(dataset_dicts) - len(kept)} images with no usable annotations. {len(kept)} images left.")
    return kept


def filter_images_with_few_keypoints(dataset_dicts: List[Dict[str, Any]], min_keypoints_per_image: int):
    """Drop images with fewer than `min_keypoints_per_image` labelled keypoints (v > 0)."""

    def num_visible(d: Dict[str, Any]) -> int:
        annotations = [ann for ann in d["annotations"] if "keypoints" in ann]
        return sum(int((np.asarray(ann["keypoints"][2::3]) > 0).sum()) for ann in annotations)

    kept = [d for d in dataset_dicts if num_visible(d) >= min_keypoints_per_image]
    logger.info(f"Removed {len(dataset_dicts) - len(kept)} images with fewer than {min_keypoints_per_image} keypoints.")
    return kept


class _ProposalUnpickler(_WeightsUnpickler):
    """Proposal files are pickles of numpy arrays and lists, plus the BoxMode enum that
    Detectron2's writers store; nothing else is rebuilt (no code from the file runs)."""

    def find_class(self, module, name):
        if name == "BoxMode" and module in ("detectron2.structures.boxes", "detzoo.structures.boxes"):
            return BoxMode
        return super().find_class(module, name)


def _read_proposal_file(proposal_file: str) -> Dict[str, Any]:
    with PathManager.open(proposal_file, "rb") as f:
        try:
            proposals = _ProposalUnpickler(f, proposal_file).load()
        except (pickle.UnpicklingError, EOFError) as e:
            raise ValueError(f"cannot read the proposal file {proposal_file}: {e}") from e
    # Detectron1 files name the fields differently
    for old, new in (("indexes", "ids"), ("scores", "objectness_logits")):
        if old in proposals:
            proposals[new] = proposals.pop(old)
    missing = {"ids", "boxes", "objectness_logits"} - set(proposals)
    if missing:
        raise ValueError(f"proposal file {proposal_file} lacks the keys {sorted(missing)}")
    return proposals


def load_proposals_into_dataset(dataset_dicts: List[Dict[str, Any]], proposal_file: str) -> List[Dict[str, Any]]:
    """Attach precomputed proposals (Fast R-CNN) to each dataset dict, in place.

    The file is a pickled dict: "ids" (image ids), "boxes" (per image ndarray[R, 4]),
    "objectness_logits" (per image ndarray[R]), optionally "bbox_mode" (default XYXY_ABS).
    Each record gets "proposal_boxes", "proposal_objectness_logits" (sorted by decreasing
    score) and "proposal_bbox_mode".

    Returns:
        list[dict]: `dataset_dicts`.
    """
    logger.info(f"Loading proposals from: {proposal_file}")
    proposals = _read_proposal_file(proposal_file)
    wanted = {str(record["image_id"]) for record in dataset_dicts}
    index_of_id = {str(i): k for k, i in enumerate(proposals["ids"]) if str(i) in wanted}
    bbox_mode = BoxMode(proposals["bbox_mode"]) if "bbox_mode" in proposals else BoxMode.XYXY_ABS
    for record in dataset_dicts:
        key = str(record["image_id"])
        if key not in index_of_id:
            raise KeyError(f"proposal file {proposal_file} has no proposals for image_id {record['image_id']}")
        i = index_of_id[key]
        boxes = np.asarray(proposals["boxes"][i])
        logits = np.asarray(proposals["objectness_logits"][i])
        order = logits.argsort()[::-1]
        record["proposal_boxes"] = boxes[order]
        record["proposal_objectness_logits"] = logits[order]
        record["proposal_bbox_mode"] = bbox_mode
    return dataset_dicts


def _class_histogram(dataset_dicts: List[Dict[str, Any]], num_classes: int) -> np.ndarray:
    classes = np.asarray(
        [ann["category_id"] for d in dataset_dicts for ann in d["annotations"] if not ann.get("iscrowd", 0)],
        dtype=np.int64,
    )
    if len(classes) and (classes.min() < 0 or classes.max() >= num_classes):
        bad = classes.min() if classes.min() < 0 else classes.max()
        raise ValueError(f"got category_id {bad}, outside [0, {num_classes}) for a dataset of {num_classes} classes")
    return np.bincount(classes, minlength=num_classes)


def print_instances_class_histogram(dataset_dicts: List[Dict[str, Any]], class_names: Sequence[str]) -> None:
    """Log a table of the number of (non-crowd) instances of each class.

    Args:
        dataset_dicts (list[dict]): Detectron2's dataset format, contiguous category ids.
        class_names (list[str]): zero-indexed class names.
    """
    num_classes = len(class_names)
    histogram = _class_histogram(dataset_dicts, num_classes)
    num_cols = min(6, num_classes * 2)
    cells = []
    for name, count in zip(class_names, histogram):
        cells += [name if len(name) <= 13 else name[:11] + "..", int(count)]
    cells += [None] * (-len(cells) % num_cols)
    if num_classes > 1:
        cells += ["total", int(histogram.sum())]
    rows = itertools.zip_longest(*[cells[i::num_cols] for i in range(num_cols)])
    table = tabulate(rows, headers=["category", "#instances"] * (num_cols // 2), tablefmt="pipe",
                     numalign="left", stralign="center")
    log_first_n(logging.INFO, f"Distribution of instances among all {num_classes} categories:\n"
                + colored(table, "cyan"), key="message")


def _load_dataset(name: str) -> Any:
    dicts = DatasetCatalog.get(name)
    if not isinstance(dicts, torchdata.Dataset) and len(dicts) == 0:
        raise ValueError(f"dataset {name!r} is empty: its registered loader returned no records")
    return dicts


def get_detection_dataset_dicts(names: Union[str, Sequence[str]], filter_empty: bool = True, min_keypoints: int = 0,
                                proposal_files: Optional[Sequence[str]] = None,
                                check_consistency: bool = True) -> Union[List[Dict[str, Any]], torchdata.Dataset]:
    """Load, concatenate and filter the dataset dicts of registered datasets.

    Args:
        names (str or list[str]): names registered in DatasetCatalog.
        filter_empty (bool): drop images without non-crowd annotations.
        min_keypoints (int): drop images with fewer labelled keypoints (0: keep all).
        proposal_files (list[str]): one precomputed-proposal file per dataset in `names`.
        check_consistency (bool): require equal `thing_classes` metadata, and log the class
            histogram.

    Returns:
        list[dict] in Detectron2's dataset format (or the torch Dataset the catalog holds).
    """
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("get_detection_dataset_dicts: no dataset names given")
    unknown = [n for n in names if n not in DatasetCatalog.keys()]
    if unknown:
        raise KeyError(f"datasets {unknown} are not registered in DatasetCatalog; registered: "
                       f"{', '.join(sorted(DatasetCatalog.keys()))}")
    dataset_dicts = [_load_dataset(name) for name in names]
    if isinstance(dataset_dicts[0], torchdata.Dataset):
        return torchdata.ConcatDataset(dataset_dicts) if len(dataset_dicts) > 1 else dataset_dicts[0]

    if proposal_files is not None:
        if len(proposal_files) != len(names):
            raise ValueError(f"{len(proposal_files)} proposal files for {len(names)} datasets {names}; give one each")
        dataset_dicts = [load_proposals_into_dataset(dicts, f) for dicts, f in zip(dataset_dicts, proposal_files)]
    dataset_dicts = list(itertools.chain.from_iterable(dataset_dicts))

    has_instances = "annotations" in dataset_dicts[0]
    if filter_empty and has_instances:
        dataset_dicts = filter_images_with_only_crowd_annotations(dataset_dicts)
    if min_keypoints > 0 and has_instances:
        dataset_dicts = filter_images_with_few_keypoints(dataset_dicts, min_keypoints)
    if check_consistency and has_instances and dataset_dicts:
        metadata = MetadataCatalog.get(names[0])
        if hasattr(metadata, "thing_classes"):
            check_metadata_consistency("thing_classes", names)
            print_instances_class_histogram(dataset_dicts, metadata.thing_classes)
    if not dataset_dicts:
        raise ValueError(f"no usable images left in {', '.join(names)} after filtering (filter_empty="
                         f"{filter_empty}, min_keypoints={min_keypoints})")
    return dataset_dicts


def _per_process_batch_size(total_batch_size: int) -> int:
    world_size = get_world_size()
    if total_batch_size <= 0 or total_batch_size % world_size != 0:
        raise ValueError(
            f"the total batch size (SOLVER.IMS_PER_BATCH = {total_batch_size}) must be a positive multiple "
            f"of the number of processes ({world_size})"
        )
    return total_batch_size // world_size


def build_batch_data_loader(dataset, sampler, total_batch_size: int, *, aspect_ratio_grouping: bool = False,
                            num_workers: int = 0, collate_fn: Optional[Callable] = None, drop_last: bool = True,
                            single_gpu_batch_size: Optional[int] = None, seed: Optional[int] = None, **kwargs):
    """A loader of batches (lists of mapped elements) for this process.

    Args:
        dataset: map-style (read in `sampler` order) or iterable dataset.
        sampler: index sampler for a map-style dataset; None for an iterable one.
        total_batch_size (int): batch size summed over processes (divided by the world size).
        aspect_ratio_grouping (bool): batch landscape and portrait images separately.
        num_workers (int): loader worker processes.
        collate_fn (callable): batch -> output; default returns the list as it is.
        drop_last (bool): drop the last incomplete batch (grouping always does).
        single_gpu_batch_size (int): the per-process batch size, instead of total_batch_size.
        seed (int): seed of the loader's base RNG (worker seeds derive from it).
        **kwargs: passed to torch.utils.data.DataLoader.

    Returns:
        an iterable of lists of per-process batch size.
    """
    if single_gpu_batch_size:
        if total_batch_size:
            raise ValueError("give either total_batch_size or single_gpu_batch_size, not both")
        batch_size = single_gpu_batch_size
    else:
        batch_size = _per_process_batch_size(total_batch_size)
    logger.info(f"Making batched data loader with batch_size={batch_size}")

    if isinstance(dataset, torchdata.IterableDataset):
        if sampler is not None:
            raise ValueError("sampler must be None when the dataset is an IterableDataset")
    else:
        dataset = ToIterableDataset(dataset, sampler, shard_chunk_size=batch_size)
    generator = None
    if seed is not None:
        generator = torch.Generator()
        generator.manual_seed(seed)

    if aspect_ratio_grouping:
        if not drop_last:
            raise ValueError("aspect ratio grouping always drops incomplete batches; drop_last=False is not possible")
        loader = torchdata.DataLoader(dataset, num_workers=num_workers, collate_fn=operator.itemgetter(0),
                                      worker_init_fn=worker_init_reset_seed, generator=generator, **kwargs)
        loader = AspectRatioGroupedDataset(loader, batch_size)
        return loader if collate_fn is None else MapDataset(loader, collate_fn)
    return torchdata.DataLoader(dataset, batch_size=batch_size, drop_last=drop_last, num_workers=num_workers,
                                collate_fn=trivial_batch_collator if collate_fn is None else collate_fn,
                                worker_init_fn=worker_init_reset_seed, generator=generator, **kwargs)


def _train_dataset_dicts(cfg, names: Sequence[str]):
    return get_detection_dataset_dicts(
        names,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )


def _cfg_value(node, key: str, owner: str):
    if key not in node:
        raise KeyError(f"{owner} needs the config key {key}, which this config does not define")
    return node[key]


def _build_weighted_sampler(cfg, enable_category_balance: bool = False) -> RepeatFactorTrainingSampler:
    """Per-dataset repeat factors (DATASETS.TRAIN_REPEAT_FACTOR: [[name, factor], ...]),
    optionally multiplied by the category-frequency factors of each dataset."""
    pairs = _cfg_value(cfg.DATASETS, "TRAIN_REPEAT_FACTOR", "WeightedTrainingSampler")
    dataset_factor = defaultdict(lambda: 1.0, {name: float(factor) for name, factor in pairs})
    unknown = set(dataset_factor) - set(cfg.DATASETS.TRAIN)
    if unknown:
        raise ValueError(f"DATASETS.TRAIN_REPEAT_FACTOR names datasets not in DATASETS.TRAIN: {sorted(unknown)}")
    dicts_per_dataset = OrderedDict((name, _train_dataset_dicts(cfg, [name])) for name in cfg.DATASETS.TRAIN)
    factors = torch.tensor([dataset_factor[name] for name, dicts in dicts_per_dataset.items() for _ in dicts])
    if enable_category_balance:
        category_factors = torch.cat([
            RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
                dicts, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=cfg.DATALOADER.REPEAT_SQRT)
            for dicts in dicts_per_dataset.values()
        ])
        factors = factors * category_factors
        factors = factors / factors.min()
    logger.info(f"Using weighted training sampler with repeat factors {pairs}")
    return RepeatFactorTrainingSampler(factors)


def _train_sampler_from_config(cfg, dataset):
    name = cfg.DATALOADER.SAMPLER_TRAIN
    logger.info(f"Using training sampler {name}")
    if name == "TrainingSampler":
        return TrainingSampler(len(dataset))
    if name == "RepeatFactorTrainingSampler":
        factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            dataset, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=cfg.DATALOADER.REPEAT_SQRT)
        return RepeatFactorTrainingSampler(factors)
    if name == "RandomSubsetTrainingSampler":
        ratio = _cfg_value(cfg.DATALOADER, "RANDOM_SUBSET_RATIO", "RandomSubsetTrainingSampler")
        return RandomSubsetTrainingSampler(len(dataset), ratio)
    if name == "WeightedTrainingSampler":
        return _build_weighted_sampler(cfg)
    if name == "WeightedCategoryTrainingSampler":
        return _build_weighted_sampler(cfg, enable_category_balance=True)
    raise ValueError(
        f"unknown DATALOADER.SAMPLER_TRAIN {name!r}; use TrainingSampler, RepeatFactorTrainingSampler, "
        "RandomSubsetTrainingSampler, WeightedTrainingSampler or WeightedCategoryTrainingSampler"
    )


def _train_loader_from_config(cfg, mapper=None, *, dataset=None, sampler=None):
    if dataset is None:
        dataset = _train_dataset_dicts(cfg, cfg.DATASETS.TRAIN)
    if mapper is None:
        mapper = DatasetMapper(cfg, True)
    if sampler is None and not isinstance(dataset, torchdata.IterableDataset):
        sampler = _train_sampler_from_config(cfg, dataset)
    return {
        "dataset": dataset,
        "sampler": sampler,
        "mapper": mapper,
        "total_batch_size": cfg.SOLVER.IMS_PER_BATCH,
        "aspect_ratio_grouping": cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        "num_workers": cfg.DATALOADER.NUM_WORKERS,
    }


@configurable(from_config=_train_loader_from_config)
def build_detection_train_loader(dataset, *, mapper, sampler=None, total_batch_size: int,
                                 aspect_ratio_grouping: bool = True, num_workers: int = 0,
                                 collate_fn: Optional[Callable] = None, **kwargs):
    """The training loader: an infinite iterable of batches (lists of mapped dicts) for this
    process, `total_batch_size / world_size` per batch.

    Args:
        dataset (list or torch Dataset): dataset dicts (e.g. from `get_detection_dataset_dicts`),
            or a map-style or iterable dataset.
        mapper (callable): dataset dict -> model input; with a cfg, `DatasetMapper(cfg, True)`.
        sampler (Sampler): indices for a map-style dataset; default `TrainingSampler`. Must be
            None for an iterable dataset.
        total_batch_size (int): batch size summed over all processes.
        aspect_ratio_grouping (bool): batch landscape and portrait images separately (the
            mapped dicts need "width" and "height").
        num_workers (int): loader worker processes.
        collate_fn (callable): batch -> output; default returns the list.
        **kwargs: see `build_batch_data_loader`.
    """
    if isinstance(dataset, list):
        dataset = DatasetFromList(dataset, copy=False)
    if mapper is not None:
        dataset = MapDataset(dataset, mapper)
    if isinstance(dataset, torchdata.IterableDataset):
        if sampler is not None:
            raise ValueError("sampler must be None when the dataset is an IterableDataset")
    else:
        if sampler is None:
            sampler = TrainingSampler(len(dataset))
        if not isinstance(sampler, torchdata.Sampler):
            raise TypeError(f"sampler must be a torch Sampler, got {type(sampler).__name__}")
    return build_batch_data_loader(dataset, sampler, total_batch_size, aspect_ratio_grouping=aspect_ratio_grouping,
                                   num_workers=num_workers, collate_fn=collate_fn, **kwargs)


def _test_loader_from_config(cfg, dataset_name: Union[str, Sequence[str]], mapper=None):
    """Takes the dataset name as an argument rather than from cfg.DATASETS.TEST, since each
    test set is evaluated on its own."""
    names = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name)
    proposal_files = None
    if cfg.MODEL.LOAD_PROPOSALS:
        test_names = list(cfg.DATASETS.TEST)
        missing = [n for n in names if n not in test_names]
        if missing:
            raise ValueError(f"datasets {missing} are not in DATASETS.TEST, so their PROPOSAL_FILES_TEST are unknown")
        proposal_files = [cfg.DATASETS.PROPOSAL_FILES_TEST[test_names.index(n)] for n in names]
    dataset = get_detection_dataset_dicts(names, filter_empty=False, proposal_files=proposal_files)
    return {
        "dataset": dataset,
        "mapper": DatasetMapper(cfg, False) if mapper is None else mapper,
        "num_workers": cfg.DATALOADER.NUM_WORKERS,
        "sampler": None if isinstance(dataset, torchdata.IterableDataset) else InferenceSampler(len(dataset)),
    }


@configurable(from_config=_test_loader_from_config)
def build_detection_test_loader(dataset: Union[List[Any], torchdata.Dataset], *,
                                mapper: Callable[[Dict[str, Any]], Any],
                                sampler: Optional[torchdata.Sampler] = None, batch_size: int = 1,
                                num_workers: int = 0, collate_fn: Optional[Callable[[List[Any]], Any]] = None,
                                **kwargs) -> torchdata.DataLoader:
    """The inference loader: every element exactly once over all processes
    (`InferenceSampler`), in batches (lists) of `batch_size`, default 1.

    Args:
        dataset (list or torch Dataset): dataset dicts or a dataset.
        mapper (callable): dataset dict -> model input; with a cfg, `DatasetMapper(cfg, False)`.
        sampler (Sampler): default InferenceSampler; None for an iterable dataset.
        batch_size (int): images per batch.
        num_workers (int): loader worker processes.
        collate_fn (callable): batch -> output; default returns the list.
        **kwargs: passed to torch.utils.data.DataLoader.

    Example::

        loader = build_detection_test_loader(cfg, "coco_2017_val")
        loader = build_detection_test_loader(DatasetCatalog.get("my_test"), mapper=DatasetMapper(...))
    """
    if isinstance(dataset, list):
        dataset = DatasetFromList(dataset, copy=False)
    if mapper is not None:
        dataset = MapDataset(dataset, mapper)
    if isinstance(dataset, torchdata.IterableDataset):
        if sampler is not None:
            raise ValueError("sampler must be None when the dataset is an IterableDataset")
    elif sampler is None:
        sampler = InferenceSampler(len(dataset))
    return torchdata.DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=False,
                                num_workers=num_workers,
                                collate_fn=trivial_batch_collator if collate_fn is None else collate_fn, **kwargs)


def trivial_batch_collator(batch: List[Any]) -> List[Any]:
    """The batch as it is: a list of mapped elements."""
    return batch


def worker_init_reset_seed(worker_id: int) -> None:
    """Seed python, numpy and torch in each loader worker from torch's per-worker seed, so
    workers draw different augmentations (forked workers would otherwise share numpy's
    state)."""
    seed_all_rng(torch.initial_seed() % 2**31 + worker_id)
