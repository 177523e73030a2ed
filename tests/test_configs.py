"""The YAML files under configs/: they load, their bases exist, and the model-zoo ones
describe the same networks Detectron2 builds from its own copies.

The reference for the last point is independent of these files: the shared parity kit
(`../shared/parity/keys/<config>.json`, beside the repository) lists the name and shape of
every entry of the `state_dict()` that Detectron2 produced for each zoo config. Class
counts, ResNet depth and width, norms, deformable stages and head layouts can all be read
back from those shapes and compared with the merged config.
"""
import json
import math
import re
from pathlib import Path

import pytest
import yaml

from detzoo.config import get_cfg

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
KEYS_DIR = REPO.parent / "shared" / "parity" / "keys"

ALL_YAML = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml"))

# Blocks per ResNet stage (res2, res3, res4, res5) for each depth with bottleneck blocks.
BLOCKS_PER_STAGE = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


def merged_cfg(rel_path):
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIGS / rel_path))
    return cfg


def parity_names():
    if not KEYS_DIR.is_dir():
        return []
    return sorted(p.stem for p in KEYS_DIR.glob("*.json"))


def config_of(parity_name):
    """configs/-relative path of the config a parity file is named after ('__' is '/')."""
    return parity_name.replace("__", "/") + ".yaml"


def needs_parity_kit():
    if not KEYS_DIR.is_dir():
        pytest.skip(f"{KEYS_DIR} not found (the shared parity kit sits beside the repository)")


# ------------------------------------------------------------------------ every file
def test_configs_folder_is_populated():
    # 92 Detectron2 model-zoo YAML files plus detzoo's own quick tests.
    assert len(ALL_YAML) >= 92, f"only {len(ALL_YAML)} YAML files under {CONFIGS}"


@pytest.mark.parametrize("rel_path", ALL_YAML)
def test_every_config_merges_into_defaults(rel_path):
    cfg = merged_cfg(rel_path)
    assert cfg.VERSION == 2
    # Base files set the dataset; every config inherits or overrides it.
    assert len(cfg.DATASETS.TEST) >= 1, f"{rel_path} has no test dataset"


@pytest.mark.parametrize("rel_path", ALL_YAML)
def test_every_base_file_exists(rel_path):
    path = CONFIGS / rel_path
    tree = yaml.safe_load(path.read_text()) or {}
    bases = tree.get("_BASE_", [])
    for base in [bases] if isinstance(bases, str) else bases:
        target = (path.parent / base).resolve()
        assert target.is_file(), f"{rel_path}: _BASE_ {base!r} does not exist ({target})"
        assert CONFIGS.resolve() in target.parents, f"{rel_path}: _BASE_ {base!r} leaves configs/"


@pytest.mark.parametrize("rel_path", ALL_YAML)
def test_configs_need_no_unsafe_yaml(rel_path):
    # Detectron2's Base-RetinaNet.yaml builds its anchor sizes with a Python tag; ours are
    # written out so that every file loads with yaml.safe_load.
    yaml.safe_load((CONFIGS / rel_path).read_text())


def test_every_parity_config_exists():
    needs_parity_kit()
    missing = [n for n in parity_names() if not (CONFIGS / config_of(n)).is_file()]
    assert not missing, f"configs missing for parity key files: {missing}"


def test_retinanet_anchor_sizes_are_detectron2s_expression():
    # Detectron2 evaluates this expression in Base-RetinaNet.yaml; the written-out floats
    # must be the very same doubles.
    expected = [[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]]
    cfg = merged_cfg("Base-RetinaNet.yaml")
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == expected


def test_weights_are_detectron2_urls_or_empty():
    for rel_path in ALL_YAML:
        weights = merged_cfg(rel_path).MODEL.WEIGHTS
        ok = weights == "" or weights.startswith(("detectron2://", "catalog://"))
        assert ok, f"{rel_path}: unexpected MODEL.WEIGHTS {weights!r}"


# ------------------------------------------------- detzoo's own CPU quick-test configs
# `make demo`'s config trains for minutes; the others are sized for tests.
DEMO_CONFIG = "quick_schedules/detzoo/mask_rcnn_R_18_FPN_shapes_demo.yaml"
SHAPES_CONFIGS = [p for p in ALL_YAML if p.startswith("quick_schedules/detzoo/") and p != DEMO_CONFIG]


def test_demo_config_is_offline_and_bounded():
    cfg = merged_cfg(DEMO_CONFIG)
    assert cfg.MODEL.WEIGHTS == ""  # no download
    assert cfg.DATASETS.TRAIN == ("shapes_train",) and cfg.DATASETS.TEST == ("shapes_val",)
    # about 10 minutes of training on 2 cores, where `make demo` runs 2 processes of one image
    # each: a bound on the iterations and on the images per process
    assert cfg.SOLVER.MAX_ITER <= 2400 and cfg.SOLVER.IMS_PER_BATCH <= 2
    # shapes images are at most 384 px: testing at 384 (cap 640) keeps them at about native size
    assert max(cfg.INPUT.MIN_SIZE_TRAIN) <= 256 and cfg.INPUT.MIN_SIZE_TEST <= 384 and cfg.INPUT.MAX_SIZE_TEST <= 640
    assert cfg.MODEL.DEVICE == get_cfg().MODEL.DEVICE


def test_shapes_configs_exist():
    assert SHAPES_CONFIGS, "no configs under configs/quick_schedules/detzoo/"


@pytest.mark.parametrize("rel_path", SHAPES_CONFIGS)
def test_shapes_configs_are_small_and_offline(rel_path):
    cfg = merged_cfg(rel_path)
    assert cfg.MODEL.WEIGHTS == ""
    assert cfg.DATASETS.TRAIN == ("shapes_train",) and cfg.DATASETS.TEST == ("shapes_val",)
    # shapes images are at most 384 px: testing at 384 (cap 640) keeps them at about native size
    assert max(cfg.INPUT.MIN_SIZE_TRAIN) <= 256 and cfg.INPUT.MIN_SIZE_TEST <= 384 and cfg.INPUT.MAX_SIZE_TEST <= 640
    assert cfg.DATALOADER.NUM_WORKERS == 0
    assert cfg.SOLVER.MAX_ITER <= 100 and cfg.SOLVER.IMS_PER_BATCH <= 2
    assert all(step < cfg.SOLVER.MAX_ITER for step in cfg.SOLVER.STEPS)
    assert cfg.MODEL.DEVICE == get_cfg().MODEL.DEVICE  # left to get_cfg()'s choice


# ------------------------------------------ agreement with Detectron2's state dicts
def load_keys(name):
    with open(KEYS_DIR / f"{name}.json") as f:
        return {k: tuple(shape) for k, (shape, _dtype) in json.load(f)["keys"].items()}


def shape_of(keys, pattern):
    """Shape of the one key matching the regex `pattern`; None if no key matches."""
    found = [k for k in keys if re.search(pattern, k)]
    if len(found) > 1:
        raise AssertionError(f"{pattern!r} matches several keys: {found[:4]}")
    return keys[found[0]] if found else None


def has_key(keys, pattern):
    return any(re.search(pattern, k) for k in keys)


def blocks_per_stage(keys):
    counts = []
    for stage in (2, 3, 4, 5):
        block = re.compile(rf"\bres{stage}\.(\d+)\.")
        indices = {int(m.group(1)) for m in map(block.search, keys) if m}
        counts.append(max(indices) + 1 if indices else 0)
    return counts


def norm_kind(keys, prefix_regex):
    """"FrozenBN", "BN" (includes SyncBN), "GN" or "" for the norm below `prefix_regex`."""
    names = [k for k in keys if re.search(prefix_regex + r"\.norm\.", k)]
    if not names:
        return ""
    if any(k.endswith("num_batches_tracked") for k in names):
        return "BN"
    if any(k.endswith("running_mean") for k in names):
        return "FrozenBN"
    return "GN"


def canonical_norm(cfg_norm):
    return {"SyncBN": "BN", "naiveSyncBN": "BN", "nnSyncBN": "BN"}.get(cfg_norm, cfg_norm)


def check_backbone(cfg, keys):
    res = cfg.MODEL.RESNETS
    # A C4 ProposalNetwork has no res5 at all (no box head to hold it): compare the
    # stages that exist.
    present = [(n, ref) for n, ref in zip(blocks_per_stage(keys), BLOCKS_PER_STAGE[res.DEPTH]) if n]
    assert len(present) >= 3 and all(n == ref for n, ref in present), "ResNet depth"
    conv2 = shape_of(keys, r"\bres2\.0\.conv2\.weight$")
    assert conv2[0] == res.NUM_GROUPS * res.WIDTH_PER_GROUP, "bottleneck width"
    assert conv2[1] == res.WIDTH_PER_GROUP, "channels per group"
    assert norm_kind(keys, r"\bstem\.conv1") == canonical_norm(res.NORM), "backbone norm"
    for stage, deform in zip((2, 3, 4, 5), res.DEFORM_ON_PER_STAGE):
        assert has_key(keys, rf"\bres{stage}\.\d+\.conv2_offset\.") == deform, f"res{stage} deform"
    if cfg.MODEL.FPN.IN_FEATURES and has_key(keys, r"fpn_lateral"):
        assert norm_kind(keys, r"fpn_lateral\d") == canonical_norm(cfg.MODEL.FPN.NORM), "FPN norm"


def anchors_per_location(cfg):
    gen = cfg.MODEL.ANCHOR_GENERATOR
    return len(gen.SIZES[0]) * len(gen.ASPECT_RATIOS[0])


def check_rpn(cfg, keys):
    rpn_out = shape_of(keys, r"rpn_head\.objectness_logits\.weight$")
    if cfg.MODEL.PROPOSAL_GENERATOR.NAME == "PrecomputedProposals":
        assert rpn_out is None, "precomputed proposals but an RPN in the state dict"
    else:
        assert rpn_out is not None, "an RPN in the config but none in the state dict"
        assert rpn_out[0] == anchors_per_location(cfg), "RPN anchors per location"


def check_box_head(cfg, keys):
    heads = cfg.MODEL.ROI_HEADS
    box = cfg.MODEL.ROI_BOX_HEAD
    # the first (or only) box predictor; cascade heads number theirs 0, 1, 2
    cls_score = shape_of(keys, r"box_predictor(\.0)?\.cls_score\.weight$")
    assert cls_score[0] == heads.NUM_CLASSES + 1, "box classes (+1 for background)"
    bbox_pred = shape_of(keys, r"box_predictor(\.0)?\.bbox_pred\.weight$")
    per_class = 1 if box.CLS_AGNOSTIC_BBOX_REG else heads.NUM_CLASSES
    assert bbox_pred[0] == 4 * per_class, "box regression outputs"
    if heads.NAME == "CascadeROIHeads":
        n_stages = len({k.split(".")[2] for k in keys if k.startswith("roi_heads.box_predictor.")})
        assert n_stages == len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS), "cascade stages"
    if heads.NAME != "Res5ROIHeads":
        head0 = r"roi_heads\.box_head\.(0\.)?"
        n_conv = len({k for k in keys if re.search(head0 + r"conv\d+\.weight$", k)})
        n_fc = len({k for k in keys if re.search(head0 + r"fc\d+\.weight$", k)})
        assert (n_conv, n_fc) == (box.NUM_CONV, box.NUM_FC), "box head convs and fcs"


def check_mask_and_keypoint_heads(cfg, keys):
    assert has_key(keys, r"^roi_heads\.mask_head\.") == cfg.MODEL.MASK_ON, "MASK_ON"
    assert has_key(keys, r"^roi_heads\.keypoint_head\.") == cfg.MODEL.KEYPOINT_ON, "KEYPOINT_ON"
    if cfg.MODEL.MASK_ON:
        masks = shape_of(keys, r"mask_head\.predictor\.weight$")[0]
        agnostic = cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK
        assert masks == (1 if agnostic else cfg.MODEL.ROI_HEADS.NUM_CLASSES), "mask classes"
        if cfg.MODEL.ROI_HEADS.NAME != "Res5ROIHeads":
            n_conv = len([k for k in keys if re.search(r"mask_fcn\d+\.weight$", k)])
            assert n_conv == cfg.MODEL.ROI_MASK_HEAD.NUM_CONV, "mask head convs"
    if cfg.MODEL.KEYPOINT_ON:
        score = shape_of(keys, r"keypoint_head\.score_lowres\.weight$")
        # a transposed conv: [in, out, k, k]
        assert score[1] == cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS, "keypoints"


def check_heads(cfg, keys):
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch == "RetinaNet":
        cls_score = shape_of(keys, r"^head\.cls_score\.weight$")
        expected = anchors_per_location(cfg) * cfg.MODEL.RETINANET.NUM_CLASSES
        assert cls_score[0] == expected, "RetinaNet outputs (anchors x classes)"
        return
    if arch in ("SemanticSegmentor", "PanopticFPN"):
        predictor = shape_of(keys, r"^sem_seg_head\.predictor\.weight$")
        assert predictor[0] == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, "semantic classes"
    if arch == "SemanticSegmentor":
        return
    check_rpn(cfg, keys)
    if arch == "ProposalNetwork":
        assert not has_key(keys, r"^roi_heads\."), "ProposalNetwork with ROI heads"
        return
    check_box_head(cfg, keys)
    check_mask_and_keypoint_heads(cfg, keys)


@pytest.mark.parametrize("name", parity_names() or ["<parity kit missing>"])
def test_config_matches_detectron2_state_dict(name):
    needs_parity_kit()
    cfg = merged_cfg(config_of(name))
    keys = load_keys(name)
    check_backbone(cfg, keys)
    check_heads(cfg, keys)


def test_state_dict_checks_catch_a_wrong_class_count():
    """The checks above are not vacuous: a config with the wrong NUM_CLASSES fails them."""
    needs_parity_kit()
    name = "COCO-InstanceSegmentation__mask_rcnn_R_50_FPN_1x"
    cfg = merged_cfg(config_of(name))
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 81
    with pytest.raises(AssertionError, match="box classes"):
        check_heads(cfg, load_keys(name))


def test_state_dict_checks_catch_a_wrong_depth():
    needs_parity_kit()
    name = "COCO-Detection__faster_rcnn_R_101_FPN_3x"
    cfg = merged_cfg(config_of(name))
    cfg.MODEL.RESNETS.DEPTH = 50
    with pytest.raises(AssertionError, match="ResNet depth"):
        check_backbone(cfg, load_keys(name))


def test_schedules_keep_steps_inside_training():
    for rel_path in ALL_YAML:
        solver = merged_cfg(rel_path).SOLVER
        assert list(solver.STEPS) == sorted(solver.STEPS), f"{rel_path}: unsorted STEPS"
        assert all(s < solver.MAX_ITER for s in solver.STEPS), f"{rel_path}: step after MAX_ITER"
        assert math.isfinite(solver.BASE_LR) and solver.BASE_LR > 0
