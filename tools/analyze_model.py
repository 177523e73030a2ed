#!/usr/bin/env python
"""Print a model's flops, activations, parameter counts or structure.

    python tools/analyze_model.py --tasks parameter structure \
        --config-file configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml
    python tools/analyze_model.py --tasks flop activation --num-inputs 10 \
        --config-file configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml \
        MODEL.WEIGHTS /path/to/model_final.pth

Flops and activations depend on the input (the heads run once per proposal or detection)
and on the weights (which decide how many detections there are), so they are averaged over
`--num-inputs` images of cfg.DATASETS.TEST[0]. When that dataset cannot be loaded, or with
--synthetic, random images of the test size are used instead (the log says so).
"""
import logging
from collections import Counter
from itertools import islice

import numpy as np
import torch
from fvcore.nn import flop_count_table

from detzoo.checkpoint import DetectionCheckpointer
from detzoo.config import get_cfg
from detzoo.data import build_detection_test_loader
from detzoo.engine import default_argument_parser
from detzoo.modeling import build_model
from detzoo.utils.analysis import FlopCountAnalysis, activation_count_operators, parameter_count_table
from detzoo.utils.logger import setup_logger

logger = logging.getLogger("detzoo")


def setup(args):
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    setup_logger(name="fvcore")
    setup_logger()
    return cfg


def synthetic_inputs(cfg, num_inputs: int, seed: int = 0):
    """`num_inputs` batches of one random image, MIN_SIZE_TEST high and 4/3 as wide (capped by
    MAX_SIZE_TEST), in the model's input format (C, H, W), 0-255 values."""
    height = cfg.INPUT.MIN_SIZE_TEST
    width = min(round(height * 4 / 3), cfg.INPUT.MAX_SIZE_TEST)
    generator = torch.Generator().manual_seed(seed)
    channels = len(cfg.MODEL.PIXEL_MEAN)
    for _ in range(num_inputs):
        image = torch.rand((channels, height, width), generator=generator) * 255
        yield [{"image": image, "height": height, "width": width}]


def test_inputs(cfg, num_inputs: int, synthetic: bool):
    """Batches from the first test dataset, or synthetic ones if asked or if it fails to load."""
    if not synthetic:
        try:
            loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
            return islice(loader, num_inputs)
        except (KeyError, IndexError, OSError, RuntimeError, ValueError) as e:
            logger.warning(f"Cannot load the test dataset {tuple(cfg.DATASETS.TEST)} ({e}); "
                           "counting on synthetic random images instead")
    else:
        logger.info("Counting on synthetic random images")
    return synthetic_inputs(cfg, num_inputs)


def build_eval_model(cfg):
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model.eval()


def do_flop(cfg, args):
    model = build_eval_model(cfg)
    counts, totals = Counter(), []
    flops = None
    for idx, data in enumerate(test_inputs(cfg, args.num_inputs, args.synthetic)):
        flops = FlopCountAnalysis(model, data)
        if idx > 0:
            flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        counts += flops.by_operator()
        totals.append(flops.total())
    if flops is None:
        raise ValueError("no input to count flops on (--num-inputs must be positive)")
    logger.info("Flops table computed from only one input sample:\n" + flop_count_table(flops))
    per_operator = {op: count / len(totals) / 1e9 for op, count in counts.items()}
    logger.info(f"Average GFlops for each type of operators:\n{per_operator}")
    logger.info(f"Total GFlops: {np.mean(totals) / 1e9:.1f}±{np.std(totals) / 1e9:.1f}")


def do_activation(cfg, args):
    model = build_eval_model(cfg)
    counts, totals = Counter(), []
    for data in test_inputs(cfg, args.num_inputs, args.synthetic):
        count = activation_count_operators(model, data)
        counts += count
        totals.append(sum(count.values()))
    if not totals:
        raise ValueError("no input to count activations on (--num-inputs must be positive)")
    per_operator = {op: value / len(totals) for op, value in counts.items()}
    logger.info(f"(Million) Activations for Each Type of Operators:\n{per_operator}")
    logger.info(f"Total (Million) Activations: {np.mean(totals):.1f}±{np.std(totals):.1f}")


def do_parameter(cfg, args):
    logger.info("Parameter Count:\n" + parameter_count_table(build_model(cfg), max_depth=5))


def do_structure(cfg, args):
    logger.info(f"Model Structure:\n{build_model(cfg)}")


TASKS = {"flop": do_flop, "activation": do_activation, "parameter": do_parameter, "structure": do_structure}


def get_parser():
    parser = default_argument_parser(
        epilog="""
Examples:

Parameters of a model:
$ python tools/analyze_model.py --tasks parameter \\
    --config-file configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml

Flops and activations depend on the data and weights, so both are needed:
$ python tools/analyze_model.py --num-inputs 100 --tasks flop \\
    --config-file configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml \\
    MODEL.WEIGHTS /path/to/model.pth
"""
    )
    parser.add_argument("--tasks", choices=sorted(TASKS), required=True, nargs="+")
    parser.add_argument("-n", "--num-inputs", default=100, type=int,
                        help="number of inputs used to compute statistics for flops/activations, "
                             "both are data dependent.")
    parser.add_argument("--synthetic", action="store_true",
                        help="count on random images of the test size instead of the test dataset")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.eval_only or args.num_gpus != 1:
        raise SystemExit("analyze_model.py runs in one process: drop --eval-only and --num-gpus")
    if args.num_inputs < 1:
        raise SystemExit(f"--num-inputs must be at least 1, got {args.num_inputs}")
    cfg = setup(args)
    with torch.no_grad():
        for task in args.tasks:
            TASKS[task](cfg, args)


if __name__ == "__main__":
    main()
