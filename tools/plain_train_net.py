#!/usr/bin/env python
"""The job of tools/train_net.py written as a plain training loop, without DefaultTrainer
and hooks: a place to read what training does, and to start from when a project needs a
loop of its own.

It does less than train_net.py (no mixed precision, gradient accumulation, EMA, precise BN,
validation loss or best-model checkpoint) and resuming continues from the checkpoint's
iteration but restarts the data stream.

    python tools/plain_train_net.py --config-file <cfg> --num-gpus 2 SOLVER.MAX_ITER 100
"""
import logging
import math
import os
from collections import OrderedDict

from detzoo.checkpoint import DetectionCheckpointer, PeriodicCheckpointer
from detzoo.config import get_cfg
from detzoo.data import build_detection_test_loader, build_detection_train_loader
from detzoo.engine import create_ddp_model, default_argument_parser, default_setup, default_writers, launch
from detzoo.evaluation import inference_on_dataset, print_csv_format, verify_results
from detzoo.modeling import build_model
from detzoo.solver import build_lr_scheduler, build_optimizer
from detzoo.utils import comm
from detzoo.utils.events import EventStorage

# The evaluators of the built-in datasets are chosen as in train_net.py (same folder).
from train_net import build_evaluator

logger = logging.getLogger("detzoo")


def do_test(cfg, model):
    """Evaluate `model` on each dataset of cfg.DATASETS.TEST.

    Returns:
        dict: results per dataset (the results alone for a single dataset).
    """
    results = OrderedDict()
    for dataset_name in cfg.DATASETS.TEST:
        data_loader = build_detection_test_loader(cfg, dataset_name)
        evaluator = build_evaluator(cfg, dataset_name, os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name))
        results[dataset_name] = inference_on_dataset(model, data_loader, evaluator)
        if comm.is_main_process():
            logger.info(f"Evaluation results for {dataset_name} in csv format:")
            print_csv_format(results[dataset_name])
    return next(iter(results.values())) if len(results) == 1 else results


def do_train(cfg, model, resume=False):
    model.train()
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, optimizer=optimizer, scheduler=scheduler)
    # A checkpoint holds the iteration that had finished; a fresh start has none (-1).
    start_iter = checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume).get("iteration", -1) + 1
    max_iter = cfg.SOLVER.MAX_ITER
    periodic_checkpointer = PeriodicCheckpointer(checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, max_iter=max_iter)
    writers = default_writers(cfg.OUTPUT_DIR, max_iter) if comm.is_main_process() else []
    data_loader = build_detection_train_loader(cfg)

    logger.info(f"Starting training from iteration {start_iter}")
    with EventStorage(start_iter) as storage:
        for data, iteration in zip(data_loader, range(start_iter, max_iter)):
            storage.iter = iteration

            loss_dict = model(data)
            losses = sum(loss_dict.values())
            _raise_if_not_finite(loss_dict, iteration)
            # Averaged over processes, for logging only (each process back-propagates its own).
            reduced = {name: value.item() for name, value in comm.reduce_dict(loss_dict).items()}
            if comm.is_main_process():
                storage.put_scalars(total_loss=sum(reduced.values()), **reduced)

            optimizer.zero_grad()
            losses.backward()
            optimizer.step()
            storage.put_scalar("lr", optimizer.param_groups[0]["lr"], smoothing_hint=False)
            scheduler.step()

            is_last = iteration == max_iter - 1
            if cfg.TEST.EVAL_PERIOD > 0 and (iteration + 1) % cfg.TEST.EVAL_PERIOD == 0 and not is_last:
                do_test(cfg, model)
                comm.synchronize()
            if (iteration + 1) % 20 == 0 or is_last:
                for writer in writers:
                    writer.write()
            periodic_checkpointer.step(iteration)
    for writer in writers:
        writer.close()


def _raise_if_not_finite(loss_dict, iteration):
    bad = {name: value.item() for name, value in loss_dict.items() if not math.isfinite(value.item())}
    if bad:
        raise FloatingPointError(f"Loss became infinite or NaN at iteration={iteration}: {bad}")


def setup(args):
    cfg = get_cfg()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    model = build_model(cfg)
    logger.info(f"Model:\n{model}")
    if args.eval_only:
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return do_test(cfg, model)

    model = create_ddp_model(model, broadcast_buffers=False)
    do_train(cfg, model, resume=args.resume)
    results = do_test(cfg, model)
    if comm.is_main_process() and len(cfg.TEST.EXPECTED_RESULTS):
        verify_results(cfg, results)
    return results


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    invoke_main()
