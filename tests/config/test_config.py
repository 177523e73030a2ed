import logging
import re
import textwrap

import pytest
import torch

from detzoo.config import CfgNode, configurable, get_cfg, global_cfg, set_global_cfg


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def leaf_items(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from leaf_items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


# --------------------------------------------------------------------- defaults
# Values documented by Detectron2 (its defaults and model-zoo docs), checked by hand.
DETECTRON2_FACTS = {
    "VERSION": 2,
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.PIXEL_MEAN": [103.530, 116.280, 123.675],
    "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],
    "MODEL.BACKBONE.FREEZE_AT": 2,
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.NORM": "FrozenBN",
    "MODEL.RESNETS.STRIDE_IN_1X1": True,
    "MODEL.ANCHOR_GENERATOR.SIZES": [[32, 64, 128, 256, 512]],
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
    "MODEL.RPN.NMS_THRESH": 0.7,
    "MODEL.RPN.IOU_THRESHOLDS": [0.3, 0.7],
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": 256,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 12000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
    "MODEL.ROI_HEADS.NUM_CLASSES": 80,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 512,
    "MODEL.ROI_HEADS.POSITIVE_FRACTION": 0.25,
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.05,
    "MODEL.ROI_HEADS.NMS_THRESH_TEST": 0.5,
    "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS": (10.0, 10.0, 5.0, 5.0),
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE": "ROIAlignV2",
    "MODEL.ROI_BOX_CASCADE_HEAD.IOUS": (0.5, 0.6, 0.7),
    "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS": 17,
    "MODEL.RETINANET.FOCAL_LOSS_GAMMA": 2.0,
    "MODEL.RETINANET.FOCAL_LOSS_ALPHA": 0.25,
    "MODEL.RETINANET.PRIOR_PROB": 0.01,
    "INPUT.MIN_SIZE_TRAIN": (800,),
    "INPUT.MAX_SIZE_TRAIN": 1333,
    "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.FORMAT": "BGR",
    "SOLVER.BASE_LR": 0.001,
    "SOLVER.MOMENTUM": 0.9,
    "SOLVER.WEIGHT_DECAY": 0.0001,
    "SOLVER.STEPS": (30000,),
    "SOLVER.MAX_ITER": 40000,
    "SOLVER.IMS_PER_BATCH": 16,
    "SOLVER.WARMUP_ITERS": 1000,
    "TEST.DETECTIONS_PER_IMAGE": 100,
    "OUTPUT_DIR": "./output",
    "SEED": -1,
    "GLOBAL.HACK": 1.0,
}

OUR_NEW_KEYS = {
    "SOLVER.GRAD_ACCUM_STEPS": 1,
    "SOLVER.OPTIMIZER": "SGD",
    "SOLVER.BETAS": (0.9, 0.999),
    "SOLVER.AMP.PRECISION": "",
    "MODEL_EMA.ENABLED": False,
    "MODEL_EMA.DECAY": 0.999,
    "MODEL_EMA.DEVICE": "",
    "MODEL_EMA.USE_EMA_WEIGHTS_FOR_EVAL_ONLY": False,
    "TEST.VAL_LOSS_PERIOD": 0,
}


@pytest.mark.parametrize("key, expected", sorted({**DETECTRON2_FACTS, **OUR_NEW_KEYS}.items()))
def test_default_values(key, expected):
    leaves = dict(leaf_items(get_cfg()))
    assert leaves[key] == expected
    assert type(leaves[key]) is type(expected)


def test_detectron2_model_zoo_files_merge(tmp_path):
    # Keys as Detectron2's model-zoo files use them (Base-RCNN-FPN + a Mask R-CNN 3x file);
    # "(640, ...)" is a YAML string that must come out as a tuple.
    write(tmp_path / "Base-RCNN-FPN.yaml", """\
        MODEL:
          META_ARCHITECTURE: "GeneralizedRCNN"
          BACKBONE:
            NAME: "build_resnet_fpn_backbone"
          RESNETS:
            OUT_FEATURES: ["res2", "res3", "res4", "res5"]
          FPN:
            IN_FEATURES: ["res2", "res3", "res4", "res5"]
          ANCHOR_GENERATOR:
            SIZES: [[32], [64], [128], [256], [512]]
            ASPECT_RATIOS: [[0.5, 1.0, 2.0]]
          RPN:
            IN_FEATURES: ["p2", "p3", "p4", "p5", "p6"]
            PRE_NMS_TOPK_TRAIN: 2000
            PRE_NMS_TOPK_TEST: 1000
            POST_NMS_TOPK_TRAIN: 1000
            POST_NMS_TOPK_TEST: 1000
          ROI_HEADS:
            NAME: "StandardROIHeads"
            IN_FEATURES: ["p2", "p3", "p4", "p5"]
          ROI_BOX_HEAD:
            NAME: "FastRCNNConvFCHead"
            NUM_FC: 2
            POOLER_RESOLUTION: 7
          ROI_MASK_HEAD:
            NAME: "MaskRCNNConvUpsampleHead"
            NUM_CONV: 4
            POOLER_RESOLUTION: 14
        DATASETS:
          TRAIN: ("coco_2017_train",)
          TEST: ("coco_2017_val",)
        SOLVER:
          IMS_PER_BATCH: 16
          BASE_LR: 0.02
          STEPS: (60000, 80000)
          MAX_ITER: 90000
        INPUT:
          MIN_SIZE_TRAIN: (640, 672, 704, 736, 768, 800)
        VERSION: 2
        """)
    child = write(tmp_path / "COCO-InstanceSegmentation" / "mask_rcnn_R_50_FPN_3x.yaml", """\
        _BASE_: "../Base-RCNN-FPN.yaml"
        MODEL:
          WEIGHTS: "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
          MASK_ON: True
          RESNETS:
            DEPTH: 50
        SOLVER:
          STEPS: (210000, 250000)
          MAX_ITER: 270000
        """)
    cfg = get_cfg()
    cfg.merge_from_file(str(child))
    assert cfg.MODEL.MASK_ON is True
    assert cfg.MODEL.ROI_HEADS.NAME == "StandardROIHeads"
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[32], [64], [128], [256], [512]]
    assert cfg.INPUT.MIN_SIZE_TRAIN == (640, 672, 704, 736, 768, 800)
    assert cfg.DATASETS.TRAIN == ("coco_2017_train",)
    assert cfg.SOLVER.STEPS == (210000, 250000)
    assert cfg.SOLVER.BASE_LR == 0.02
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 80  # untouched default


def test_optimizer_and_amp_keys_merge_from_yaml(tmp_path):
    path = write(tmp_path / "adamw.yaml", """\
        SOLVER:
          OPTIMIZER: "AdamW"
          BETAS: [0.8, 0.99]
          AMP:
            ENABLED: True
            PRECISION: "bfloat16"
        """)
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    assert cfg.SOLVER.OPTIMIZER == "AdamW"
    assert cfg.SOLVER.BETAS == (0.8, 0.99)  # a YAML list becomes the default's tuple
    assert (cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.PRECISION) == (True, "bfloat16")


def test_get_cfg_returns_independent_copies():
    first, second = get_cfg(), get_cfg()
    assert first == second and first is not second
    first.MODEL.PIXEL_MEAN.append(0.0)
    first.MODEL.RPN.NMS_THRESH = 0.1
    first.SOLVER.CLIP_GRADIENTS.ENABLED = True
    assert get_cfg() == second
    assert second.MODEL.PIXEL_MEAN == [103.530, 116.280, 123.675]
    assert second.SOLVER.CLIP_GRADIENTS.ENABLED is False


@pytest.mark.parametrize("cuda_available, expected", [(True, "cuda"), (False, "cpu")])
def test_device_default_is_decided_at_get_cfg_time(monkeypatch, cuda_available, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_available)
    assert get_cfg().MODEL.DEVICE == expected


# ------------------------------------------------------------------ YAML and _BASE_
def test_base_chain_relative_paths_lists_and_precedence(tmp_path):
    write(tmp_path / "root.yaml", """\
        VERSION: 2
        MODEL:
          RPN:
            NMS_THRESH: 0.6
            POST_NMS_TOPK_TEST: 500
          ROI_HEADS:
            NUM_CLASSES: 10
        SOLVER:
          BASE_LR: 0.01
        """)
    write(tmp_path / "shared" / "mid.yaml", """\
        _BASE_: ../root.yaml
        MODEL:
          RPN:
            NMS_THRESH: 0.65
        INPUT:
          MIN_SIZE_TRAIN: (512, 640)
        """)
    write(tmp_path / "shared" / "extra.yaml", """\
        SOLVER:
          BASE_LR: 0.05
          MAX_ITER: 100
        """)
    child = write(tmp_path / "experiments" / "run" / "child.yaml", f"""\
        _BASE_: ["../../shared/mid.yaml", "{tmp_path / 'shared' / 'extra.yaml'}"]
        MODEL:
          ROI_HEADS:
            NUM_CLASSES: 3
        SOLVER:
          MAX_ITER: 200
        """)
    cfg = get_cfg()
    cfg.merge_from_file(str(child))
    assert cfg.MODEL.RPN.NMS_THRESH == 0.65  # mid overrides root
    assert cfg.MODEL.RPN.POST_NMS_TOPK_TEST == 500  # inherited from root through mid
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3  # child overrides root
    assert cfg.SOLVER.BASE_LR == 0.05  # later base (absolute path) overrides earlier one
    assert cfg.SOLVER.MAX_ITER == 200
    assert cfg.INPUT.MIN_SIZE_TRAIN == (512, 640)
    # load_yaml_with_base gives the merged plain dict without the _BASE_ key
    merged = CfgNode.load_yaml_with_base(str(child))
    assert "_BASE_" not in merged
    assert merged["MODEL"]["RPN"] == {"NMS_THRESH": 0.65, "POST_NMS_TOPK_TEST": 500}


def test_base_cycle_is_reported(tmp_path):
    write(tmp_path / "a.yaml", "_BASE_: b.yaml\n")
    write(tmp_path / "b.yaml", "_BASE_: a.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        get_cfg().merge_from_file(str(tmp_path / "a.yaml"))


def test_missing_base_names_both_files(tmp_path):
    child = write(tmp_path / "child.yaml", "_BASE_: nowhere.yaml\n")
    with pytest.raises(FileNotFoundError) as info:
        get_cfg().merge_from_file(str(child))
    assert "nowhere.yaml" in str(info.value) and str(child) in str(info.value)


def test_yaml_is_loaded_safely_unless_allowed(tmp_path):
    path = write(tmp_path / "tagged.yaml", "INPUT:\n  MIN_SIZE_TRAIN: !!python/tuple [600, 700]\n")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        get_cfg().merge_from_file(str(path))
    cfg = get_cfg()
    cfg.merge_from_file(str(path), allow_unsafe=True)
    assert cfg.INPUT.MIN_SIZE_TRAIN == (600, 700)


def test_malformed_files_name_the_file(tmp_path):
    not_mapping = write(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        get_cfg().merge_from_file(str(not_mapping))
    broken = write(tmp_path / "broken.yaml", "MODEL: [unclosed\n")
    with pytest.raises(ValueError, match=re.escape(str(broken))):
        get_cfg().merge_from_file(str(broken))
    empty = write(tmp_path / "empty.yaml", "")
    cfg = get_cfg()
    cfg.merge_from_file(str(empty))
    assert cfg == get_cfg()


def test_unknown_key_in_base_file_names_key_and_that_file(tmp_path):
    base = write(tmp_path / "base.yaml", "MODEL:\n  ROI_HEADS:\n    NUM_CLASSEZ: 3\n")
    child = write(tmp_path / "child.yaml", "_BASE_: base.yaml\nSOLVER:\n  MAX_ITER: 5\n")
    with pytest.raises(KeyError) as info:
        get_cfg().merge_from_file(str(child))
    message = str(info.value)
    assert "MODEL.ROI_HEADS.NUM_CLASSEZ" in message
    assert str(base) in message
    assert str(child) not in message  # the key came from the base, not the child
    assert "did you mean MODEL.ROI_HEADS.NUM_CLASSES" in message


def test_unknown_section_names_full_key_and_file(tmp_path):
    path = write(tmp_path / "cfg.yaml", "MODEL:\n  RPNN:\n    NMS_THRESH: 0.5\n")
    with pytest.raises(KeyError) as info:
        get_cfg().merge_from_file(str(path))
    assert "MODEL.RPNN" in str(info.value) and str(path) in str(info.value)


def test_type_mismatch_names_key_expected_type_and_file(tmp_path):
    path = write(tmp_path / "cfg.yaml", "MODEL:\n  ROI_HEADS:\n    NUM_CLASSES: many\n")
    with pytest.raises(ValueError) as info:
        get_cfg().merge_from_file(str(path))
    message = str(info.value)
    assert "MODEL.ROI_HEADS.NUM_CLASSES" in message
    assert "expected int" in message and "got str 'many'" in message
    assert str(path) in message


def test_int_for_float_is_rejected_with_a_hint(tmp_path):
    # Detectron2 (yacs) rejects `BASE_LR: 1`; so do we, but say how to fix it.
    path = write(tmp_path / "cfg.yaml", "SOLVER:\n  BASE_LR: 1\n")
    with pytest.raises(ValueError, match=r"SOLVER\.BASE_LR.*expected float.*write 1\.0"):
        get_cfg().merge_from_file(str(path))


def test_version_handling(tmp_path, caplog):
    newer = write(tmp_path / "newer.yaml", "VERSION: 3\n")
    with pytest.raises(ValueError, match="newer"):
        get_cfg().merge_from_file(str(newer))
    older = write(tmp_path / "older.yaml", "VERSION: 1\nSEED: 7\n")
    cfg = get_cfg()
    with caplog.at_level(logging.WARNING, logger="detzoo.config.config"):
        cfg.merge_from_file(str(older))
    assert "VERSION 1" in caplog.text
    assert cfg.SEED == 7 and cfg.VERSION == 2


# ---------------------------------------------------------------------- merge_from_list
def test_merge_from_list_parses_and_coerces_values():
    cfg = get_cfg()
    cfg.merge_from_list([
        "MODEL.RPN.NMS_THRESH", "0.5",
        "MODEL.ROI_HEADS.NUM_CLASSES", 3,
        "INPUT.MIN_SIZE_TRAIN", "[600, 700]",
        "DATASETS.TRAIN", "('a', 'b')",
        "OUTPUT_DIR", "/tmp/out dir",
        "SOLVER.WEIGHT_DECAY_BIAS", "0.0",
        "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS", "[[1.0, 1.0, 1.0, 1.0]]",
    ])
    assert cfg.MODEL.RPN.NMS_THRESH == 0.5
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3
    assert cfg.INPUT.MIN_SIZE_TRAIN == (600, 700)  # list -> the default's tuple
    assert cfg.DATASETS.TRAIN == ("a", "b")
    assert cfg.OUTPUT_DIR == "/tmp/out dir"
    assert cfg.SOLVER.WEIGHT_DECAY_BIAS == 0.0  # None default takes any leaf type
    assert cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS == ((1.0, 1.0, 1.0, 1.0),)


def test_merge_from_list_errors():
    cfg = get_cfg()
    with pytest.raises(KeyError) as info:
        cfg.merge_from_list(["MODEL.ROI_HEADS.NUM_CLASSEZ", "3"])
    assert "MODEL.ROI_HEADS.NUM_CLASSEZ" in str(info.value)
    assert "override list" in str(info.value)
    with pytest.raises(KeyError, match=r"MODEL\.DEVICE\.X"):  # path through a leaf
        cfg.merge_from_list(["MODEL.DEVICE.X", "1"])
    with pytest.raises(ValueError, match=r"MODEL\.RPN\.NMS_THRESH.*expected float.*str"):
        cfg.merge_from_list(["MODEL.RPN.NMS_THRESH", "high"])
    with pytest.raises(ValueError, match="odd number"):
        cfg.merge_from_list(["SEED"])
    with pytest.raises(KeyError, match="_BASE_"):
        cfg.merge_from_list(["_BASE_", "x.yaml"])
    assert cfg == get_cfg()  # nothing was half-applied by the failing calls


def test_failed_merges_change_nothing(tmp_path):
    cfg = get_cfg()
    path = write(tmp_path / "cfg.yaml", "MODEL:\n  RPN:\n    NMS_THRESH: 0.1\n  RPNN: {}\n")
    with pytest.raises(KeyError):
        cfg.merge_from_file(str(path))
    with pytest.raises(ValueError):
        cfg.merge_from_list(["SEED", "3", "MODEL.RPN.NMS_THRESH", "high"])
    assert cfg == get_cfg()


def test_merge_keeps_nodes_in_place(tmp_path):
    cfg = get_cfg()
    rpn = cfg.MODEL.RPN
    cfg.merge_from_file(str(write(tmp_path / "cfg.yaml", "MODEL:\n  RPN:\n    NMS_THRESH: 0.1\n")))
    assert cfg.MODEL.RPN is rpn and rpn.NMS_THRESH == 0.1


def test_merge_from_other_cfg():
    cfg = get_cfg()
    cfg.merge_from_other_cfg(CfgNode({"MODEL": {"RPN": {"NMS_THRESH": 0.4}}}))
    assert cfg.MODEL.RPN.NMS_THRESH == 0.4
    with pytest.raises(KeyError, match=r"MODEL\.RPN\.NMS"):
        cfg.merge_from_other_cfg(CfgNode({"MODEL": {"RPN": {"NMS": 0.4}}}))
    other = CfgNode({"MODEL": {"RPN": {"IN_FEATURES": ["p2"]}}})
    cfg.merge_from_other_cfg(other)
    other.MODEL.RPN.IN_FEATURES.append("p3")  # the merged value is a copy
    assert cfg.MODEL.RPN.IN_FEATURES == ["p2"]


def test_new_allowed_nodes_accept_new_keys(tmp_path):
    cfg = get_cfg()
    cfg.CUSTOM = CfgNode(new_allowed=True)
    path = write(tmp_path / "cfg.yaml", "CUSTOM:\n  ANYTHING: 3\n")
    cfg.merge_from_file(str(path))
    assert cfg.CUSTOM.ANYTHING == 3


# ------------------------------------------------------------ freeze, setattr, dump
def test_freeze_and_setattr():
    cfg = get_cfg()
    cfg.NEW_KEY = 5  # unfrozen nodes accept new keys by assignment
    assert cfg.NEW_KEY == 5
    cfg.freeze()
    assert cfg.is_frozen() and cfg.MODEL.RPN.is_frozen()
    with pytest.raises(AttributeError):
        cfg.MODEL.RPN.NMS_THRESH = 0.1
    with pytest.raises(AttributeError, match="frozen"):
        cfg.merge_from_list(["SEED", "1"])
    with pytest.raises(AttributeError, match="frozen"):
        cfg.merge_from_other_cfg(CfgNode({"SEED": 1}))
    cfg.COMPUTED_SCALE = 2  # COMPUTED_ keys may be added to a frozen config ...
    cfg.COMPUTED_SCALE = 2  # ... and set again to the same value ...
    with pytest.raises(KeyError, match="COMPUTED_SCALE"):
        cfg.COMPUTED_SCALE = 3  # ... but never changed
    cfg.defrost()
    cfg.MODEL.RPN.NMS_THRESH = 0.1
    assert cfg.MODEL.RPN.NMS_THRESH == 0.1
    with pytest.raises(AttributeError):
        cfg.NOT_A_KEY  # noqa: B018


def test_dump_and_reload_round_trip(tmp_path):
    cfg = get_cfg()
    cfg.MODEL.RPN.NMS_THRESH = 0.55
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS = ((1.0, 2.0, 3.0, 4.0), (5.0, 6.0, 7.0, 8.0))
    cfg.INPUT.MIN_SIZE_TRAIN = (480, 512)
    cfg.DATASETS.TRAIN = ("coco_2017_train",)
    cfg.SOLVER.WEIGHT_DECAY_BIAS = 0.0
    cfg.MODEL_EMA.ENABLED = True
    path = tmp_path / "dumped.yaml"
    path.write_text(cfg.dump())
    reloaded = get_cfg()
    reloaded.merge_from_file(str(path))
    assert reloaded == cfg
    # and the untouched defaults survive a round trip too (tuples of tuples included)
    default_path = tmp_path / "defaults.yaml"
    default_path.write_text(get_cfg().dump())
    again = get_cfg()
    again.merge_from_file(str(default_path))
    assert again == get_cfg()


# -------------------------------------------------------------------------- global cfg
def test_set_global_cfg_updates_the_imported_object():
    cfg = get_cfg()
    cfg.GLOBAL.HACK = 2.5
    try:
        set_global_cfg(cfg)
        assert global_cfg.GLOBAL.HACK == 2.5
        assert global_cfg.MODEL.ROI_HEADS.NUM_CLASSES == 80
    finally:
        set_global_cfg(CfgNode())
    assert "GLOBAL" not in global_cfg


# ------------------------------------------------------------------------ configurable
def small_cfg():
    return CfgNode({"A": 1, "B": 2, "SCALE": 10})


class Head:
    @configurable
    def __init__(self, a, b=20, c=30, *, input_shape=None):
        self.a, self.b, self.c, self.input_shape = a, b, c, input_shape

    @classmethod
    def from_config(cls, cfg, input_shape=None):
        return {"a": cfg.A, "b": cfg.B, "input_shape": input_shape}


def test_configurable_class_call_styles():
    cfg = small_cfg()
    plain = Head(1, 2, 3)
    assert (plain.a, plain.b, plain.c) == (1, 2, 3)
    keywords = Head(a=4, c=6)
    assert (keywords.a, keywords.b, keywords.c) == (4, 20, 6)
    from_cfg = Head(cfg)
    assert (from_cfg.a, from_cfg.b, from_cfg.c) == (1, 2, 30)
    from_cfg_kw = Head(cfg=cfg)
    assert (from_cfg_kw.a, from_cfg_kw.b) == (1, 2)
    overridden = Head(cfg, b=7, c=8)  # b replaces from_config's value, c goes to __init__
    assert (overridden.a, overridden.b, overridden.c) == (1, 7, 8)
    with_shape = Head(cfg, "shape")  # extra positional argument goes to from_config
    assert with_shape.input_shape == "shape"
    with_shape_kw = Head(cfg, input_shape="shape")
    assert with_shape_kw.input_shape == "shape"


def test_configurable_class_keeps_metadata():
    assert Head.__init__.__name__ == "__init__"


def test_configurable_function_call_styles():
    @configurable(from_config=lambda cfg, scale=1: {"a": cfg.A * scale, "b": cfg.B})
    def build(a, b=2, c=3):
        return a, b, c

    cfg = small_cfg()
    assert build(5, 6) == (5, 6, 3)
    assert build(a=5) == (5, 2, 3)
    assert build(cfg) == (1, 2, 3)
    assert build(cfg=cfg) == (1, 2, 3)
    assert build(cfg, c=9) == (1, 2, 9)
    assert build(cfg, b=0) == (1, 0, 3)
    assert build(cfg, scale=4) == (4, 2, 3)
    assert build(cfg, 3) == (3, 2, 3)
    assert build.from_config(cfg) == {"a": 1, "b": 2}
    assert build.__name__ == "build"


def test_configurable_from_config_with_var_kwargs_gets_everything():
    def translate(cfg, **extra):
        return {"a": cfg.A, **extra}

    @configurable(from_config=translate)
    def build(a, b=2):
        return a, b

    assert build(small_cfg(), b=5) == (1, 5)


def test_configurable_empty_parentheses_is_the_same_decorator():
    class Thing:
        @configurable()
        def __init__(self, a):
            self.a = a

        @classmethod
        def from_config(cls, cfg):
            return {"a": cfg.A}

    assert Thing(small_cfg()).a == 1 and Thing(a=3).a == 3


def test_configurable_errors():
    cfg = small_cfg()

    class NoFromConfig:
        @configurable
        def __init__(self, a=1):
            self.a = a

    assert NoFromConfig().a == 1  # fine without a config
    with pytest.raises(AttributeError, match="from_config"):
        NoFromConfig(cfg)

    class StaticFromConfig:
        @configurable
        def __init__(self, a=1):
            pass

        @staticmethod
        def from_config(cfg):
            return {}

    with pytest.raises(TypeError, match="classmethod"):
        StaticFromConfig(cfg)

    class WrongFirstArgument:
        @configurable
        def __init__(self, a=1):
            pass

        @classmethod
        def from_config(cls, config):
            return {}

    with pytest.raises(TypeError, match=r"WrongFirstArgument\.from_config must take 'cfg'"):
        WrongFirstArgument(cfg)

    with pytest.raises(TypeError, match=r"Head\.from_config\(cfg, input_shape=None\)"):
        Head(cfg, "shape", "one too many")

    class NotADict:
        @configurable
        def __init__(self, a=1):
            pass

        @classmethod
        def from_config(cls, cfg):
            return [cfg.A]

    with pytest.raises(TypeError, match="must return a dict"):
        NotADict(cfg)

    with pytest.raises(TypeError, match="__init__"):
        @configurable
        def not_an_init(a):
            return a

    with pytest.raises(TypeError, match="needs a function"):
        configurable(from_config="not callable")
