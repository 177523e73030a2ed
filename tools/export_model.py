#!/usr/bin/env python
"""Export a detzoo model to TorchScript or ONNX.

    python tools/export_model.py --config-file configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml \
        --output ./output --format torchscript --export-method tracing \
        --sample-image input.jpg MODEL.WEIGHTS /path/to/model_final.pth MODEL.DEVICE cpu
    python tools/export_model.py ... --format onnx --export-method tracing

Tracing runs the model once on a sample input (--sample-image, else the first image of
cfg.DATASETS.TEST[0], else a random image of the test size) through `TracingAdapter`: the
exported graph takes the image tensor (C, H, W), 0-255, in cfg.INPUT.FORMAT, and returns a
tuple of tensors that `adapter.outputs_schema` turns back into `[{"instances": Instances}]`
(the schema is logged and written to outputs_schema.txt). R-CNN models are exported without
the final resize (`do_postprocess=False`): boxes are at the network input size and masks are
(R, 1, M, M) probabilities. Image sizes are read from the input inside the graph, so images of
any size can be fed (of one batch size: the sample's).

Scripting (--export-method scripting, TorchScript only) compiles the model with
`scripting_with_instances` into model.ts, which takes `[{"image": Tensor[C, H, W]}, ...]` and
returns one dict of tensors per image (`pred_boxes` as an (R, 4) tensor, `scores`,
`pred_classes`, `pred_masks`, ...), with the same no-resize convention; RetinaNet's boxes are
not clipped to the image either. It needs no sample image.
"""
import logging
import os

import torch

from detzoo.checkpoint import DetectionCheckpointer
from detzoo.config import get_cfg
from detzoo.data import build_detection_test_loader, detection_utils
from detzoo.data import transforms as T
from detzoo.engine import default_argument_parser
from detzoo.export import (
    DEFAULT_ONNX_OPSET,
    DEFAULT_SCRIPTING_FIELDS,
    ScriptableAdapter,
    TracingAdapter,
    export_onnx,
    save_torchscript,
    scripting_with_instances,
    tracing_inference_func,
)
from detzoo.modeling import GeneralizedRCNN, RetinaNet, build_model
from detzoo.modeling.postprocessing import detector_postprocess
from detzoo.structures import Boxes, Instances
from detzoo.utils.file_io import PathManager
from detzoo.utils.logger import setup_logger

logger = logging.getLogger("detzoo")


def setup_cfg(args):
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    return cfg


def sample_from_image(cfg, path):
    """The model input for one image file, resized as DefaultPredictor does."""
    original = detection_utils.read_image(path, format=cfg.INPUT.FORMAT)
    height, width = original.shape[:2]
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
    image = resize.get_transform(original).apply_image(original)
    image = torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
    return [{"image": image, "height": height, "width": width}]


def synthetic_sample(cfg, seed=0):
    """A random image of the test size (MIN_SIZE_TEST high, 4/3 as wide, at most MAX_SIZE_TEST)."""
    height = cfg.INPUT.MIN_SIZE_TEST
    width = min(round(height * 4 / 3), cfg.INPUT.MAX_SIZE_TEST)
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand((len(cfg.MODEL.PIXEL_MEAN), height, width), generator=generator) * 255
    return [{"image": image, "height": height, "width": width}]


def get_sample_inputs(cfg, args):
    if args.sample_image is not None:
        return sample_from_image(cfg, args.sample_image)
    try:
        return next(iter(build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])))
    except (KeyError, IndexError, OSError, RuntimeError, ValueError) as e:
        logger.warning(f"No sample image and the test dataset {tuple(cfg.DATASETS.TEST)} cannot be "
                       f"loaded ({e}); tracing on a random image of the test size")
        return synthetic_sample(cfg)


def export_tracing(model, inputs, args):
    """Trace `model` on the first sample image; returns a callable with the model's interface
    (for --run-eval) when the format is TorchScript, else None."""
    image = inputs[0]["image"]
    adapter = TracingAdapter(model, [{"image": image}], tracing_inference_func(model))
    if args.format == "torchscript":
        traced = torch.jit.trace(adapter, (image,))
        path = save_torchscript(traced, args.output)
    else:
        path = os.path.join(args.output, "model.onnx")
        with PathManager.open(path, "wb") as f:
            export_onnx(adapter, f, opset_version=args.opset)
        traced = None
    logger.info(f"Saved {path}")
    logger.info(f"Inputs schema: {adapter.inputs_schema}")
    logger.info(f"Outputs schema: {adapter.outputs_schema}")
    with PathManager.open(os.path.join(args.output, "outputs_schema.txt"), "w") as f:
        f.write(f"{adapter.outputs_schema}\n")
    if traced is None or not isinstance(model, (GeneralizedRCNN, RetinaNet)):
        return None

    def run_exported(batch):
        # The exported graph stops before the resize to the original size; evaluation needs it.
        inputs = batch[0]
        instances = adapter.outputs_schema(traced(inputs["image"]))[0]["instances"]
        return [{"instances": detector_postprocess(instances, inputs["height"], inputs["width"])}]

    return run_exported


def export_scripting(model, args):
    """Script `model` into model.ts; returns a callable with the model's interface (for
    --run-eval) for R-CNN and RetinaNet models, else None."""
    try:
        scripted = scripting_with_instances(ScriptableAdapter(model), DEFAULT_SCRIPTING_FIELDS)
    except Exception as e:  # the TorchScript frontend raises many exception types
        message = str(e).strip().splitlines()
        raise SystemExit(
            f"{type(model).__name__} could not be scripted (try --export-method tracing). The "
            f"TorchScript compiler stopped at:\n" + "\n".join(message[:12])
        ) from e
    path = save_torchscript(scripted, args.output)
    logger.info(f"Saved {path}")
    if not isinstance(model, (GeneralizedRCNN, RetinaNet)):
        return None

    def run_exported(batch):
        inputs = batch[0]
        fields = scripted([{"image": inputs["image"]}])[0]
        instances = Instances(tuple(inputs["image"].shape[-2:]))
        for name, value in fields.items():
            instances.set(name, Boxes(value) if DEFAULT_SCRIPTING_FIELDS[name] is Boxes else value)
        return [{"instances": detector_postprocess(instances, inputs["height"], inputs["width"])}]

    return run_exported


def get_parser():
    parser = default_argument_parser()
    parser.description = "Export a model for deployment."
    parser.add_argument("--format", choices=["onnx", "torchscript"], default="torchscript", help="output format")
    parser.add_argument("--export-method", choices=["tracing", "scripting"], default="tracing",
                        help="method to export models")
    parser.add_argument("--sample-image", default=None, type=str, help="sample image for input")
    parser.add_argument("--run-eval", action="store_true",
                        help="evaluate the exported TorchScript model on cfg.DATASETS.TEST[0]")
    parser.add_argument("--output", required=True, help="output directory for the converted model")
    parser.add_argument("--opset", type=int, default=DEFAULT_ONNX_OPSET, help="ONNX opset (>= 16)")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.export_method == "scripting" and args.format != "torchscript":
        raise SystemExit(f"--export-method scripting produces TorchScript only: use --format torchscript "
                         f"(got --format {args.format}), or --export-method tracing for ONNX")
    setup_logger()
    logger.info(f"Command line arguments: {args}")
    PathManager.mkdirs(args.output)
    cfg = setup_cfg(args)

    model = build_model(cfg)
    DetectionCheckpointer(model).resume_or_load(cfg.MODEL.WEIGHTS)
    model.eval()

    if args.export_method == "scripting":
        exported = export_scripting(model, args)
    else:
        exported = export_tracing(model, get_sample_inputs(cfg, args), args)

    if args.run_eval:
        run_eval(cfg, exported, args)


def run_eval(cfg, exported, args):
    from detzoo.evaluation import COCOEvaluator, inference_on_dataset, print_csv_format

    if exported is None:
        raise SystemExit(f"--run-eval needs --format torchscript and an R-CNN or RetinaNet model "
                         f"(got {args.export_method}, {args.format})")
    logger.info("Running evaluation ... this takes a long time if you export to CPU.")
    dataset = cfg.DATASETS.TEST[0]
    loader = build_detection_test_loader(cfg, dataset)
    evaluator = COCOEvaluator(dataset, output_dir=args.output)
    print_csv_format(inference_on_dataset(exported, loader, evaluator))


if __name__ == "__main__":
    main()
