"""Loading weights whose names differ from the model's: Caffe2 / Detectron1 names
(`res2_0_branch2a_w`, `fpn_inner_res2_2_sum_lateral_w`, ...) and ImageNet backbones whose keys
lack the model's prefixes (`res2.0.conv1.weight` for `backbone.bottom_up.res2.0.conv1.weight`).
"""
import logging
import re
from typing import Dict, List

import torch
from tabulate import tabulate

__all__ = ["convert_basic_c2_names", "convert_c2_detectron_names", "align_and_update_state_dicts"]

logger = logging.getLogger(__name__)

# Applied in order to every name after "_" became ".": (regex, replacement).
_BASIC_RULES = [
    (r"\.b$", ".bias"),
    (r"\.w$", ".weight"),
    # BatchNorm (affine-channel) and GroupNorm parameters all become `norm.*`.
    (r"bn\.s$", "norm.weight"),
    (r"bn\.bias$", "norm.bias"),
    (r"bn\.rm", "norm.running_mean"),
    (r"bn\.running\.mean$", "norm.running_mean"),
    (r"bn\.riv$", "norm.running_var"),
    (r"bn\.running\.var$", "norm.running_var"),
    (r"bn\.gamma$", "norm.weight"),
    (r"bn\.beta$", "norm.bias"),
    (r"gn\.s$", "norm.weight"),
    (r"gn\.bias$", "norm.bias"),
    # The stem: its norm is `res_conv1_bn_*` in Caffe2.
    (r"^res\.conv1\.norm\.", "conv1.norm."),
    (r"^conv1\.", "stem.conv1."),
    # Residual blocks.
    (r"\.branch1\.", ".shortcut."),
    (r"\.branch2a\.", ".conv1."),
    (r"\.branch2b\.", ".conv2."),
    (r"\.branch2c\.", ".conv3."),
    # DensePose heads.
    (r"^body\.conv\.fcn", "body_conv_fcn"),
    (r"AnnIndex\.lowres", "ann_index_lowres"),
    (r"Index\.UV\.lowres", "index_uv_lowres"),
    (r"U\.lowres", "u_lowres"),
    (r"V\.lowres", "v_lowres"),
]

# Detection-head names of Detectron1, applied after the basic rules.
_DETECTRON_RULES = [
    # The RPN conv is defined on FPN level 2 and shared ("fpn2"), or unsuffixed without FPN.
    (r"conv\.rpn\.fpn2", "proposal_generator.rpn_head.conv"),
    (r"conv\.rpn", "proposal_generator.rpn_head.conv"),
    (r"rpn\.bbox\.pred\.fpn2", "proposal_generator.rpn_head.anchor_deltas"),
    (r"rpn\.cls\.logits\.fpn2", "proposal_generator.rpn_head.objectness_logits"),
    (r"rpn\.bbox\.pred", "proposal_generator.rpn_head.anchor_deltas"),
    (r"rpn\.cls\.logits", "proposal_generator.rpn_head.objectness_logits"),
    # Fast R-CNN head.
    (r"^bbox\.pred", "bbox_pred"),
    (r"^cls\.score", "cls_score"),
    (r"^fc6\.", "box_head.fc1."),
    (r"^fc7\.", "box_head.fc2."),
    (r"^head\.conv", "box_head.conv"),
]

_MASK_KEYPOINT_RULES = [
    (r"\.\[mask\]\.fcn", "mask_head.mask_fcn"),
    (r"^\.mask\.fcn", "mask_head.mask_fcn"),
    (r"mask\.fcn\.logits", "mask_head.predictor"),
    (r"conv5\.mask", "mask_head.deconv"),  # the C4 (Res5ROIHeads) mask head
    (r"conv\.fcn", "roi_heads.keypoint_head.conv_fcn"),
    (r"kps\.score\.lowres", "roi_heads.keypoint_head.score_lowres"),
    (r"kps\.score\.", "roi_heads.keypoint_head.score."),
]


def _apply(rules, name):
    for pattern, replacement in rules:
        name = re.sub(pattern, replacement, name)
    return name


def convert_basic_c2_names(original_keys: List[str]) -> List[str]:
    """Caffe2 backbone names -> Detectron2 names (same order and count)."""
    renamed = []
    for key in original_keys:
        key = {"pred_b": "linear_b", "pred_w": "linear_w"}.get(key, key)
        renamed.append(_apply(_BASIC_RULES, key.replace("_", ".")))
    return renamed


def _fpn_name(name):
    """`fpn.inner.res2.2.sum.lateral.weight` -> `fpn_lateral2.weight`, and
    `fpn.res2.2.sum.weight` -> `fpn_output2.weight` (keeping a `.norm` part)."""
    parts = name.split(".")
    norm = ".norm" if "norm" in parts else ""
    if name.startswith("fpn.inner."):
        return f"fpn_lateral{int(parts[2][len('res'):])}{norm}.{parts[-1]}"
    if name.startswith("fpn.res"):
        return f"fpn_output{int(parts[1][len('res'):])}{norm}.{parts[-1]}"
    return name


def convert_c2_detectron_names(weights: Dict[str, object]):
    """Rename a Detectron1 (Caffe2) model's weights to Detectron2 names.

    Class-specific box / mask predictors lose their background entry (Detectron2 has none),
    and the classifier's background row moves from index 0 to the end.

    Returns:
        dict: new name -> tensor
        dict: new name -> original name
    """
    original_keys = sorted(weights.keys())
    renamed = [_apply(_MASK_KEYPOINT_RULES, _fpn_name(_apply(_DETECTRON_RULES, k)))
               for k in convert_basic_c2_names(original_keys)]
    if len(set(renamed)) != len(renamed):
        duplicates = sorted({k for k in renamed if renamed.count(k) > 1})
        raise ValueError(f"renaming Caffe2 weights produced duplicate names: {duplicates[:10]}")
    new_weights, new_to_original = {}, {}
    for original, new in zip(original_keys, renamed):
        new_to_original[new] = original
        value = weights[original]
        if new.startswith("bbox_pred.") or new.startswith("mask_head.predictor."):
            start = 4 if new.startswith("bbox_pred.") else 1
            value = value[start:]
            logger.info(f"Removed the background-class prediction of {new}: shape {tuple(weights[original].shape)} "
                        f"-> {tuple(value.shape)}")
        elif new.startswith("cls_score."):
            value = torch.cat([torch.as_tensor(value[1:]), torch.as_tensor(value[:1])])
            logger.info(f"Moved the background-class weights of {new} from index 0 to {value.shape[0] - 1}")
        new_weights[new] = value
    return new_weights, new_to_original


def _is_suffix(model_key, ckpt_key):
    """A checkpoint key matches a model key it equals or ends it at a '.' boundary
    (`backbone.bottom_up.res2.0.conv1.weight` matches `res2.0.conv1.weight`, but
    `whatever_conv1.weight` does not match `conv1.weight`)."""
    return model_key == ckpt_key or model_key.endswith("." + ckpt_key)


def align_and_update_state_dicts(model_state_dict, ckpt_state_dict, c2_conversion=True):
    """Rename checkpoint keys to the model's by suffix matching (longest match wins).

    Args:
        model_state_dict: the model's state dict (for names and shapes).
        ckpt_state_dict: the checkpoint's weights.
        c2_conversion: first apply the Caffe2 / Detectron1 renaming.
    Returns:
        dict: the checkpoint with matched keys renamed; unmatched keys are kept as they are
        (they are reported as unexpected when loading); shape mismatches are skipped with a
        warning.
    """
    model_keys = sorted(model_state_dict.keys())
    if c2_conversion:
        ckpt_state_dict, original_keys = convert_c2_detectron_names(ckpt_state_dict)
    else:
        original_keys = {k: k for k in ckpt_state_dict}
    ckpt_keys = sorted(ckpt_state_dict.keys())

    # Index checkpoint keys by every dotted suffix a model key could end with, so each model
    # key looks up its candidates instead of scanning all checkpoint keys.
    ckpt_set = set(ckpt_keys)
    result, matched = {}, {}
    for model_key in model_keys:
        parts = model_key.split(".")
        best = None
        for start in range(len(parts)):
            candidate = ".".join(parts[start:])
            if candidate in ckpt_set:
                best = candidate  # the first hit is the longest suffix
                break
        if best is None:
            continue
        value = ckpt_state_dict[best]
        model_shape = tuple(model_state_dict[model_key].shape)
        if tuple(value.shape) != model_shape:
            logger.warning(f"Shape of {best} in checkpoint is {tuple(value.shape)}, while shape of {model_key} in "
                           f"model is {model_shape}; {best} will not be loaded.")
            continue
        if best in matched:
            raise ValueError(f"checkpoint key {best} matches two model keys, {matched[best]} and {model_key}; "
                             "cannot decide which one to load it into")
        result[model_key] = value
        matched[best] = model_key

    _log_matches(model_state_dict, matched, original_keys)
    for key in ckpt_keys:
        if key not in matched:
            result[key] = ckpt_state_dict[key]
    return result


def _log_matches(model_state_dict, matched, original_keys):
    rows = []
    for ckpt_key, model_key in sorted(matched.items(), key=lambda kv: kv[1]):
        rows.append((model_key, original_keys[ckpt_key], str(tuple(model_state_dict[model_key].shape))))
    if rows:
        logger.info("Weights matched by name heuristics:\n" + tabulate(
            rows, tablefmt="pipe", headers=["Names in Model", "Names in Checkpoint", "Shapes"]))
