#!/usr/bin/env python
"""Train or evaluate a detzoo model from a config, with DefaultTrainer.

    python tools/train_net.py --config-file configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml \
        --num-gpus 8 SOLVER.IMS_PER_BATCH 16
    python tools/train_net.py --config-file <cfg> --eval-only MODEL.WEIGHTS /path/to/model_final.pth
    python tools/train_net.py --config-file <cfg> --resume   # continue from OUTPUT_DIR/last_checkpoint

On a machine without GPUs, --num-gpus N runs N CPU worker processes (gloo).

It covers the standard workflow; other jobs can subclass `Trainer` (e.g. another
`build_train_loader`) or start from tools/plain_train_net.py, which spells the loop out.
"""
import logging
import os
from collections import OrderedDict

from detzoo.config import get_cfg
from detzoo.engine import DefaultTrainer, default_argument_parser, default_setup, hooks, launch
from detzoo.utils import comm


def build_evaluator(cfg, dataset_name, output_folder=None):
    """The evaluator(s) of the dataset's `evaluator_type` metadata.

    Returns:
        DatasetEvaluator
    """
    from detzoo.data import MetadataCatalog
    from detzoo import evaluation

    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    evaluators = []
    if evaluator_type in ("sem_seg", "coco_panoptic_seg"):
        evaluators.append(evaluation.SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    if evaluator_type in ("coco", "coco_panoptic_seg"):
        evaluators.append(evaluation.COCOEvaluator(dataset_name, output_dir=output_folder))
    if evaluator_type == "coco_panoptic_seg":
        evaluators.append(evaluation.COCOPanopticEvaluator(dataset_name, output_folder))
    if evaluator_type == "pascal_voc":
        return evaluation.PascalVOCDetectionEvaluator(dataset_name)
    if evaluator_type == "lvis":
        return evaluation.LVISEvaluator(dataset_name, output_dir=output_folder)
    cityscapes = {"cityscapes_instance": "CityscapesInstanceEvaluator",
                  "cityscapes_sem_seg": "CityscapesSemSegEvaluator"}
    if evaluator_type in cityscapes:
        evaluator_class = getattr(evaluation, cityscapes[evaluator_type], None)
        if evaluator_class is None:
            raise NotImplementedError(f"detzoo.evaluation has no {cityscapes[evaluator_type]} for {dataset_name}")
        return evaluator_class(dataset_name)
    if not evaluators:
        raise NotImplementedError(f"no evaluator for dataset {dataset_name!r} of evaluator_type {evaluator_type!r}")
    return evaluators[0] if len(evaluators) == 1 else evaluation.DatasetEvaluators(evaluators)


class Trainer(DefaultTrainer):
    """DefaultTrainer with the evaluators of the built-in datasets and test-time augmentation."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        from detzoo.modeling import GeneralizedRCNNWithTTA

        logging.getLogger("detzoo.trainer").info("Running inference with test-time augmentation ...")
        model = GeneralizedRCNNWithTTA(cfg, model)
        evaluators = [cls.build_evaluator(cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA"))
                      for name in cfg.DATASETS.TEST]
        results = cls.test(cfg, model, evaluators)
        if len(cfg.DATASETS.TEST) == 1:
            results = {cfg.DATASETS.TEST[0]: results}
        return OrderedDict((k + "_TTA", v) for k, v in results.items())


def setup(args):
    """The config from the file and the command line, frozen, with the job set up."""
    cfg = get_cfg()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        Trainer.load_model_for_eval(cfg, model, resume=args.resume)
        results = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process() and len(cfg.TEST.EXPECTED_RESULTS):
            from detzoo.evaluation import verify_results

            verify_results(cfg, results)
        return results

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    if cfg.TEST.AUG.ENABLED:
        trainer.register_hooks([hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))])
    return trainer.train()


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    invoke_main()
