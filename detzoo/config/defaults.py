"""Every default config key, with Detectron2's values, and `get_cfg()`.

Keys and values are Detectron2's (its `config/defaults.py`, config VERSION 2), so any
Detectron2 YAML file merges into `get_cfg()`. The layout is ours: one block per component,
in the order of the package map (model, then data, evaluation, engine, solver, utils).

Differences from Detectron2, all deliberate:
* `MODEL.DEVICE` is "cuda" when CUDA is available and "cpu" otherwise, decided each time
  `get_cfg()` runs (Detectron2 always says "cuda", which fails on a machine without it).
* Keys of ours, absent from Detectron2: `SOLVER.GRAD_ACCUM_STEPS`, `SOLVER.OPTIMIZER`,
  `SOLVER.BETAS`, `SOLVER.AMP.PRECISION`, `MODEL_EMA.*`, `TEST.VAL_LOSS_PERIOD`. Their
  defaults leave training exactly as Detectron2 runs it.

Naming convention (Detectron2's): a value that differs between training and inference comes
as a pair of keys ending in `_TRAIN` and `_TEST`.
"""
import logging

import torch

from .config import CfgNode

__all__ = ["get_cfg"]

logger = logging.getLogger(__name__)

_C = CfgNode()

# Schema version of this file. A YAML file may state the version it was written for;
# Detectron2 bumped it only on renames, and 2 is its latest.
_C.VERSION = 2

# =========================================================================== modeling
_C.MODEL = CfgNode()
# Registry name of the whole model (detzoo.modeling.meta_arch).
_C.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
# Placeholder: get_cfg() puts "cuda" here when CUDA is available (see the module docstring).
_C.MODEL.DEVICE = "cpu"
# Checkpoint to load into the model: a path or URL; "" starts from the initialization.
_C.MODEL.WEIGHTS = ""
# Per-channel normalization, in INPUT.FORMAT's channel order (BGR by default). The mean is
# ImageNet's. The std is 1 because MSRA / Detectron1 ResNet weights fold it into conv1;
# use [57.375, 57.120, 58.395] with torchvision-style backbones.
_C.MODEL.PIXEL_MEAN = [103.530, 116.280, 123.675]
_C.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]
# Read proposals from DATASETS.PROPOSAL_FILES_* instead of computing them (Fast R-CNN).
_C.MODEL.LOAD_PROPOSALS = False
# Add a mask head / a keypoint head to the ROI heads.
_C.MODEL.MASK_ON = False
_C.MODEL.KEYPOINT_ON = False

# --------------------------------------------------------------------------- backbone
_C.MODEL.BACKBONE = CfgNode()
# Registry name of the function that builds the backbone.
_C.MODEL.BACKBONE.NAME = "build_resnet_backbone"
# Number of leading stages kept frozen; the stem counts as stage 1 (0 trains everything).
_C.MODEL.BACKBONE.FREEZE_AT = 2

# -------------------------------------------------------------------- ResNet / ResNeXt
# Used by the ResNet backbone and by the res5 box head of C4 models.
_C.MODEL.RESNETS = CfgNode()
_C.MODEL.RESNETS.DEPTH = 50
# Stages to output: ["res4"] for C4 models, ["res2", "res3", "res4", "res5"] under an FPN.
_C.MODEL.RESNETS.OUT_FEATURES = ["res4"]
# 1 is a ResNet; more groups make it a ResNeXt.
_C.MODEL.RESNETS.NUM_GROUPS = 1
# "FrozenBN", "BN", "SyncBN" or "GN".
_C.MODEL.RESNETS.NORM = "FrozenBN"
# Channels per group in the first bottleneck stage; scales every bottleneck's width.
_C.MODEL.RESNETS.WIDTH_PER_GROUP = 64
# Stride 2 in the first 1x1 conv of a block (MSRA weights) rather than in the 3x3 (torchvision).
_C.MODEL.RESNETS.STRIDE_IN_1X1 = True
# 2 replaces res5's stride with a dilation (keeps res5 at stride 16).
_C.MODEL.RESNETS.RES5_DILATION = 1
# Output channels of res2; must be 64 for the basic-block R18 / R34.
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64
# Deformable 3x3 convs per stage (res2, res3, res4, res5).
_C.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, False, False]
# True: modulated deformable conv (DCNv2); False: DCNv1.
_C.MODEL.RESNETS.DEFORM_MODULATED = False
_C.MODEL.RESNETS.DEFORM_NUM_GROUPS = 1

# -------------------------------------------------------------------------------- FPN
_C.MODEL.FPN = CfgNode()
# Backbone outputs the FPN reads; their strides must be consecutive powers of 2.
_C.MODEL.FPN.IN_FEATURES = []
_C.MODEL.FPN.OUT_CHANNELS = 256
# "" (none) or "GN".
_C.MODEL.FPN.NORM = ""
# How a top-down feature joins the lateral one: "sum" or "avg".
_C.MODEL.FPN.FUSE_TYPE = "sum"

# ------------------------------------------------------------------- anchor generator
_C.MODEL.ANCHOR_GENERATOR = CfgNode()
_C.MODEL.ANCHOR_GENERATOR.NAME = "DefaultAnchorGenerator"
# One list per input feature map, or a single list shared by all of them.
# Sizes are sqrt(area) in input-image pixels.
_C.MODEL.ANCHOR_GENERATOR.SIZES = [[32, 64, 128, 256, 512]]
# Height / width ratios.
_C.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
# Degrees; used by rotated anchor generators only.
_C.MODEL.ANCHOR_GENERATOR.ANGLES = [[-90, 0, 90]]
# Position of the first anchor centre, as a fraction of the stride, in [0, 1).
_C.MODEL.ANCHOR_GENERATOR.OFFSET = 0.0

# ----------------------------------------------------------------- proposal generator
_C.MODEL.PROPOSAL_GENERATOR = CfgNode()
# "RPN", "RRPN" (rotated) or "PrecomputedProposals".
_C.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"
# Proposals whose width or height is below this (input-image pixels) are dropped.
_C.MODEL.PROPOSAL_GENERATOR.MIN_SIZE = 0

# -------------------------------------------------------------------------------- RPN
_C.MODEL.RPN = CfgNode()
# Registry name of the RPN head.
_C.MODEL.RPN.HEAD_NAME = "StandardRPNHead"
# Feature maps the RPN runs on, e.g. ["p2", "p3", "p4", "p5", "p6"] with an FPN.
_C.MODEL.RPN.IN_FEATURES = ["res4"]
# Anchors reaching further than this many pixels outside the image are ignored in
# training; -1 keeps them all.
_C.MODEL.RPN.BOUNDARY_THRESH = -1
# Anchor labelling by IoU with the best ground truth: < 0.3 -> 0 (background),
# [0.3, 0.7) -> -1 (ignored), >= 0.7 -> 1 (foreground).
_C.MODEL.RPN.IOU_THRESHOLDS = [0.3, 0.7]
_C.MODEL.RPN.IOU_LABELS = [0, -1, 1]
# Anchors sampled per image for the loss, and the foreground fraction aimed at.
_C.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256
_C.MODEL.RPN.POSITIVE_FRACTION = 0.5
# "smooth_l1", "giou", "diou" or "ciou".
_C.MODEL.RPN.BBOX_REG_LOSS_TYPE = "smooth_l1"
_C.MODEL.RPN.BBOX_REG_LOSS_WEIGHT = 1.0
# Scale of the (dx, dy, dw, dh) regression targets.
_C.MODEL.RPN.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
# Where smooth L1 turns from quadratic to linear; 0 makes it plain L1.
_C.MODEL.RPN.SMOOTH_L1_BETA = 0.0
# Scales both RPN losses.
_C.MODEL.RPN.LOSS_WEIGHT = 1.0
# Top-scoring proposals kept before NMS, per feature level.
_C.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 12000
_C.MODEL.RPN.PRE_NMS_TOPK_TEST = 6000
# Proposals kept after NMS, per image (with an FPN: per level, then over all levels).
# Detectron1 counted this per batch.
_C.MODEL.RPN.POST_NMS_TOPK_TRAIN = 2000
_C.MODEL.RPN.POST_NMS_TOPK_TEST = 1000
_C.MODEL.RPN.NMS_THRESH = 0.7
# Channels of the head's hidden conv(s); -1 means "as many as the input".
_C.MODEL.RPN.CONV_DIMS = [-1]

# -------------------------------------------------------------------------- ROI heads
_C.MODEL.ROI_HEADS = CfgNode()
# Registry name: "Res5ROIHeads" (C4), "StandardROIHeads" (FPN), "CascadeROIHeads", ...
_C.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
# Foreground classes only (background is added by the heads).
_C.MODEL.ROI_HEADS.NUM_CLASSES = 80
# Feature maps pooled by every ROI head (box, mask, keypoint).
_C.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
# Proposal labelling: IoU < 0.5 -> background (0), >= 0.5 -> foreground (1).
_C.MODEL.ROI_HEADS.IOU_THRESHOLDS = [0.5]
_C.MODEL.ROI_HEADS.IOU_LABELS = [0, 1]
# Proposals sampled per training image (x SOLVER.IMS_PER_BATCH per step) and the
# foreground fraction aimed at.
_C.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512
_C.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25
# Inference: detections scoring below this are dropped before NMS (0.0 gains a little AP
# at a large cost in speed).
_C.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
# Inference: per-class NMS IoU threshold.
_C.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5
# Add the ground-truth boxes to the proposals before sampling (training).
_C.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT = True

# -------------------------------------------------------------------------- box head
_C.MODEL.ROI_BOX_HEAD = CfgNode()
# Registry name, e.g. "FastRCNNConvFCHead"; C4 models use res5 instead and leave it "".
_C.MODEL.ROI_BOX_HEAD.NAME = ""
# "smooth_l1", "giou", "diou" or "ciou".
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE = "smooth_l1"
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT = 1.0
# Scale of the (dx, dy, dw, dh) targets, chosen to give them roughly unit variance.
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
_C.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = 0.0
_C.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 14
# Sampling points per bin side in ROIAlign; 0 adapts it to the box size.
_C.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 0
# "ROIAlignV2" (aligned, half-pixel corrected), "ROIAlign", "ROIPool" or "ROIAlignRotated".
_C.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
_C.MODEL.ROI_BOX_HEAD.NUM_FC = 0
_C.MODEL.ROI_BOX_HEAD.FC_DIM = 1024
_C.MODEL.ROI_BOX_HEAD.NUM_CONV = 0
_C.MODEL.ROI_BOX_HEAD.CONV_DIM = 256
# "" (none), "GN" or "SyncBN".
_C.MODEL.ROI_BOX_HEAD.NORM = ""
# One box regression shared by all classes instead of one per class.
_C.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False
# Mask / keypoint heads train on the boxes the box head predicts, not on the proposals.
_C.MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES = False
# Federated loss (for LVIS): a sigmoid loss over a sampled subset of classes, drawn with
# probability proportional to image_count ** FREQ_WEIGHT_POWER.
_C.MODEL.ROI_BOX_HEAD.USE_FED_LOSS = False
_C.MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE = False
_C.MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT_POWER = 0.5
_C.MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES = 50

# ------------------------------------------------------------------ cascade box head
# One entry per cascade stage: the number of stages is the length of these two keys.
_C.MODEL.ROI_BOX_CASCADE_HEAD = CfgNode()
_C.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS = (
    (10.0, 10.0, 5.0, 5.0),
    (20.0, 20.0, 10.0, 10.0),
    (30.0, 30.0, 15.0, 15.0),
)
# Foreground IoU threshold of each stage.
_C.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = (0.5, 0.6, 0.7)

# ------------------------------------------------------------------------- mask head
_C.MODEL.ROI_MASK_HEAD = CfgNode()
_C.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
_C.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14
_C.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = 0
# 3x3 convs before the upsampling deconv.
_C.MODEL.ROI_MASK_HEAD.NUM_CONV = 0
_C.MODEL.ROI_MASK_HEAD.CONV_DIM = 256
# "" (none), "GN" or "SyncBN".
_C.MODEL.ROI_MASK_HEAD.NORM = ""
# One mask for all classes instead of one per class.
_C.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = False
_C.MODEL.ROI_MASK_HEAD.POOLER_TYPE = "ROIAlignV2"

# --------------------------------------------------------------------- keypoint head
_C.MODEL.ROI_KEYPOINT_HEAD = CfgNode()
_C.MODEL.ROI_KEYPOINT_HEAD.NAME = "KRCNNConvDeconvUpsampleHead"
_C.MODEL.ROI_KEYPOINT_HEAD.POOLER_RESOLUTION = 14
_C.MODEL.ROI_KEYPOINT_HEAD.POOLER_SAMPLING_RATIO = 0
# Channels of each conv before the deconv: eight of 512.
_C.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS = (512,) * 8
# COCO's person keypoints.
_C.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS = 17
# Training images with fewer visible keypoints than this are skipped.
_C.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE = 1
# True: divide the loss by the visible keypoints in the batch. False: by every keypoint
# the batch could hold, so a batch with few visible keypoints weighs less.
_C.MODEL.ROI_KEYPOINT_HEAD.NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS = True
# Detectron2 advises 1.0 with the normalization above on, 4.0 with it off.
_C.MODEL.ROI_KEYPOINT_HEAD.LOSS_WEIGHT = 1.0
_C.MODEL.ROI_KEYPOINT_HEAD.POOLER_TYPE = "ROIAlignV2"

# ------------------------------------------------------------ semantic segmentation head
_C.MODEL.SEM_SEG_HEAD = CfgNode()
_C.MODEL.SEM_SEG_HEAD.NAME = "SemSegFPNHead"
_C.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["p2", "p3", "p4", "p5"]
# Ground-truth label that takes no loss.
_C.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255
# 53 COCO stuff classes + 1 for "thing" in panoptic FPN.
_C.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 54
# Channels of the head's 3x3 convs.
_C.MODEL.SEM_SEG_HEAD.CONVS_DIM = 128
# Stride every level is upsampled to before the sum.
_C.MODEL.SEM_SEG_HEAD.COMMON_STRIDE = 4
# "" (none) or "GN".
_C.MODEL.SEM_SEG_HEAD.NORM = "GN"
_C.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 1.0

# ---------------------------------------------------------------------- panoptic FPN
_C.MODEL.PANOPTIC_FPN = CfgNode()
# Scales every loss of the instance branch (RPN and ROI heads).
_C.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT = 1.0
# Merging instance and semantic outputs into one panoptic output at inference.
# COMBINE.ENABLED is kept for old files; Detectron2 no longer reads it.
_C.MODEL.PANOPTIC_FPN.COMBINE = CfgNode({"ENABLED": True})
# Instances overlapping already-placed ones by more than this fraction are dropped.
_C.MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH = 0.5
# Stuff segments smaller than this many pixels are dropped.
_C.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 4096
_C.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = 0.5

# ------------------------------------------------------------------------- RetinaNet
_C.MODEL.RETINANET = CfgNode()
# Foreground classes only.
_C.MODEL.RETINANET.NUM_CLASSES = 80
_C.MODEL.RETINANET.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
# Convs in each of the class and box towers, not counting the final prediction conv.
_C.MODEL.RETINANET.NUM_CONVS = 4
# Anchor labelling: IoU < 0.4 -> background, [0.4, 0.5) -> ignored, >= 0.5 -> foreground.
_C.MODEL.RETINANET.IOU_THRESHOLDS = [0.4, 0.5]
_C.MODEL.RETINANET.IOU_LABELS = [0, -1, 1]
# Initial foreground probability; sets the classifier bias so the rare foreground does
# not destabilise early training.
_C.MODEL.RETINANET.PRIOR_PROB = 0.01
# Inference: anchors scoring below this are skipped (for speed).
_C.MODEL.RETINANET.SCORE_THRESH_TEST = 0.05
# Inference: candidates kept per level before NMS.
_C.MODEL.RETINANET.TOPK_CANDIDATES_TEST = 1000
_C.MODEL.RETINANET.NMS_THRESH_TEST = 0.5
_C.MODEL.RETINANET.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
_C.MODEL.RETINANET.FOCAL_LOSS_GAMMA = 2.0
_C.MODEL.RETINANET.FOCAL_LOSS_ALPHA = 0.25
_C.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA = 0.1
# "smooth_l1", "giou", "diou" or "ciou".
_C.MODEL.RETINANET.BBOX_REG_LOSS_TYPE = "smooth_l1"
# Norm after each tower conv: "" (none) or "GN"; the towers are shared by all levels,
# which suits batch-statistics norms poorly.
_C.MODEL.RETINANET.NORM = ""

# =============================================================================== data
_C.INPUT = CfgNode()
# Training resize (ResizeShortestEdge): the short side becomes one of MIN_SIZE_TRAIN
# ("choice"), or a value drawn from the range [MIN_SIZE_TRAIN[0], MIN_SIZE_TRAIN[1]]
# ("range"), unless that makes the long side exceed MAX_SIZE_TRAIN.
_C.INPUT.MIN_SIZE_TRAIN = (800,)
_C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
_C.INPUT.MAX_SIZE_TRAIN = 1333
# Inference resize; MIN_SIZE_TEST = 0 disables it.
_C.INPUT.MIN_SIZE_TEST = 800
_C.INPUT.MAX_SIZE_TEST = 1333
# Training flip: "horizontal", "vertical" or "none".
_C.INPUT.RANDOM_FLIP = "horizontal"
# Training random crop, applied before the resize.
_C.INPUT.CROP = CfgNode({"ENABLED": False})
# "relative" / "relative_range": SIZE is a fraction of (H, W), fixed or drawn up to 1;
# "absolute" / "absolute_range": SIZE is in pixels, fixed or drawn in [SIZE[0], SIZE[1]].
_C.INPUT.CROP.TYPE = "relative_range"
_C.INPUT.CROP.SIZE = [0.9, 0.9]
# Channel order the model takes: "BGR", or a PIL mode such as "RGB", "L", "YUV-BT.601".
_C.INPUT.FORMAT = "BGR"
# Instance mask annotations as "polygon" or "bitmask".
_C.INPUT.MASK_FORMAT = "polygon"

_C.DATASETS = CfgNode()
# Names registered in DatasetCatalog; several training sets are concatenated.
_C.DATASETS.TRAIN = ()
# Precomputed proposal files, one per dataset in DATASETS.TRAIN (with MODEL.LOAD_PROPOSALS).
_C.DATASETS.PROPOSAL_FILES_TRAIN = ()
# How many of the top-scoring precomputed proposals to keep per image.
_C.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN = 2000
_C.DATASETS.TEST = ()
_C.DATASETS.PROPOSAL_FILES_TEST = ()
_C.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST = 1000

_C.DATALOADER = CfgNode()
# Worker processes per data loader.
_C.DATALOADER.NUM_WORKERS = 4
# Batch landscape images with landscape ones and portrait with portrait (less padding).
_C.DATALOADER.ASPECT_RATIO_GROUPING = True
# "TrainingSampler", "RepeatFactorTrainingSampler" (LVIS-style class rebalancing) or
# "RandomSubsetTrainingSampler".
_C.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"
# RepeatFactorTrainingSampler: images with a class rarer than this frequency are repeated.
_C.DATALOADER.REPEAT_THRESHOLD = 0.0
# RepeatFactorTrainingSampler: repeat factor sqrt(threshold / frequency) if True, else
# threshold / frequency.
_C.DATALOADER.REPEAT_SQRT = True
# Drop training images that have no instance annotations.
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True

# ========================================================================= evaluation
_C.TEST = CfgNode()
# Accuracy checks for end-to-end runs: [[task, metric, expected value, tolerance], ...],
# e.g. [["bbox", "AP", 38.5, 0.2]].
_C.TEST.EXPECTED_RESULTS = []
# Evaluate every this many training iterations; 0 only at the end.
_C.TEST.EVAL_PERIOD = 0
# Ours: compute the loss on DATASETS.TEST every this many iterations; 0 turns it off.
_C.TEST.VAL_LOSS_PERIOD = 0
# Per-keypoint OKS sigmas for keypoint AP; [] uses COCO's 17.
_C.TEST.KEYPOINT_OKS_SIGMAS = []
# Detections kept per image (COCO's evaluation reads at most 100).
_C.TEST.DETECTIONS_PER_IMAGE = 100
# Test-time augmentation: several short-side sizes, optionally with flips.
_C.TEST.AUG = CfgNode({"ENABLED": False})
_C.TEST.AUG.MIN_SIZES = (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)
_C.TEST.AUG.MAX_SIZE = 4000
_C.TEST.AUG.FLIP = True
# Recompute BatchNorm statistics on NUM_ITER training batches before each evaluation.
_C.TEST.PRECISE_BN = CfgNode({"ENABLED": False})
_C.TEST.PRECISE_BN.NUM_ITER = 200

# ============================================================================= engine
_C.OUTPUT_DIR = "./output"
# Negative: a different random seed each run; otherwise this seed (reproducible, but not
# bit-exact with parallel data loading or nondeterministic kernels).
_C.SEED = -1
# torch.backends.cudnn.benchmark: pays off when input sizes repeat, costs when they vary.
_C.CUDNN_BENCHMARK = False
# torch.set_float32_matmul_precision: "highest" (no TF32), "high" or "medium"; "" leaves
# PyTorch's setting alone.
_C.FLOAT32_PRECISION = ""
# Log visualizations of training inputs and proposals every this many iterations; 0 never.
_C.VIS_PERIOD = 0

# Ours: an exponential moving average of the weights, updated after each optimizer step.
_C.MODEL_EMA = CfgNode()
_C.MODEL_EMA.ENABLED = False
# ema = DECAY * ema + (1 - DECAY) * weights.
_C.MODEL_EMA.DECAY = 0.999
# Device holding the average; "" means the model's device.
_C.MODEL_EMA.DEVICE = ""
# True: train with the raw weights but evaluate with the averaged ones.
_C.MODEL_EMA.USE_EMA_WEIGHTS_FOR_EVAL_ONLY = False

# ============================================================================= solver
_C.SOLVER = CfgNode()
# "WarmupMultiStepLR", "WarmupCosineLR" or "WarmupStepWithFixedGammaLR".
_C.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
_C.SOLVER.MAX_ITER = 40000
_C.SOLVER.BASE_LR = 0.001
# Learning rate reached at MAX_ITER by WarmupCosineLR.
_C.SOLVER.BASE_LR_END = 0.0
# Ours: "SGD" (Detectron2's only optimizer) or "AdamW" (decoupled weight decay).
_C.SOLVER.OPTIMIZER = "SGD"
# SGD only.
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.NESTEROV = False
# Ours: AdamW's (beta1, beta2), torch's defaults; SGD ignores them.
_C.SOLVER.BETAS = (0.9, 0.999)
_C.SOLVER.WEIGHT_DECAY = 0.0001
# Weight decay of normalization layers' affine parameters.
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0
# Multiplier of the learning rate at each step of a step schedule.
_C.SOLVER.GAMMA = 0.1
# Iterations at which WarmupMultiStepLR multiplies the learning rate by GAMMA.
_C.SOLVER.STEPS = (30000,)
# Evenly spaced decays of WarmupStepWithFixedGammaLR.
_C.SOLVER.NUM_DECAYS = 3
# Learning rate starts at BASE_LR * WARMUP_FACTOR and rises over WARMUP_ITERS iterations,
# "linear"ly or as a "constant" factor.
_C.SOLVER.WARMUP_FACTOR = 1.0 / 1000
_C.SOLVER.WARMUP_ITERS = 1000
_C.SOLVER.WARMUP_METHOD = "linear"
# Stretch the schedule after warmup so it still spans MAX_ITER.
_C.SOLVER.RESCALE_INTERVAL = False
_C.SOLVER.CHECKPOINT_PERIOD = 5000
# Images per iteration summed over all workers (16 workers at 32 -> 2 each).
_C.SOLVER.IMS_PER_BATCH = 16
# Number of workers the batch size and learning rate were tuned for. When non-zero and
# different from the actual count, DefaultTrainer rescales IMS_PER_BATCH, BASE_LR,
# STEPS, MAX_ITER and the periods linearly; 0 disables that.
_C.SOLVER.REFERENCE_WORLD_SIZE = 0
# Detectron1 trained biases with 2x the learning rate and no weight decay; these two keys
# only exist to reproduce that. None means WEIGHT_DECAY.
_C.SOLVER.BIAS_LR_FACTOR = 1.0
_C.SOLVER.WEIGHT_DECAY_BIAS = None
# Ours: gradients of this many consecutive batches are summed before each optimizer step
# (the effective batch becomes IMS_PER_BATCH x GRAD_ACCUM_STEPS); 1 is Detectron2's behaviour.
_C.SOLVER.GRAD_ACCUM_STEPS = 1
# Gradient clipping: "value" clips each element to [-CLIP_VALUE, CLIP_VALUE]; "norm" scales
# each parameter's gradient to an L-NORM_TYPE norm of at most CLIP_VALUE (.inf for max-norm).
_C.SOLVER.CLIP_GRADIENTS = CfgNode({"ENABLED": False})
_C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
_C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
_C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
# Mixed precision in training only; inference precision is unchanged.
_C.SOLVER.AMP = CfgNode({"ENABLED": False})
# Ours: autocast dtype, "float16" (with a loss-scaling GradScaler) or "bfloat16" (no scaling).
# "" picks float16 on CUDA, Detectron2's only AMP mode, and bfloat16 on CPU, the type CPU
# autocast is fast in.
_C.SOLVER.AMP.PRECISION = ""

# ============================================================================== utils
# Scratch space for quick experiments, read anywhere via detzoo.config.global_cfg after
# set_global_cfg(cfg). Not for committed code.
_C.GLOBAL = CfgNode()
_C.GLOBAL.HACK = 1.0


def get_cfg() -> CfgNode:
    """A fresh, independent copy of the default config.

    `MODEL.DEVICE` is "cuda" if `torch.cuda.is_available()` and "cpu" otherwise.
    """
    cfg = _C.clone()
    cfg.MODEL.DEVICE = _default_device()
    return cfg


def _default_device() -> str:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    logger.debug(f"MODEL.DEVICE defaults to {device!r}")
    return device
