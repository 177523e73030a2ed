"""The standard training / evaluation workflow, for scripts like tools/train_net.py:
command-line parsing, job set-up, the default writers, DDP wrapping, `DefaultPredictor`
(one image in, predictions out) and `DefaultTrainer` (model, data, solver, checkpoints and
hooks from a config).

These make many assumptions about the job; research code that outgrows them should
subclass `DefaultTrainer`, use `SimpleTrainer` with its own hooks, or write its own loop
(see tools/plain_train_net.py).

The data and evaluation packages are imported where they are used, so that a process that
only trains a custom model on a custom loader does not load them.
"""
import argparse
import contextlib
import logging
import os
import sys
import weakref
from collections import OrderedDict
from typing import Optional

import torch
from fvcore.nn.precise_bn import get_bn_modules
from torch.nn.parallel import DistributedDataParallel

from detzoo.checkpoint import DetectionCheckpointer
from detzoo.config import CfgNode
from detzoo.modeling import build_model
from detzoo.solver import build_lr_scheduler, build_optimizer
from detzoo.utils import comm
from detzoo.utils.collect_env import collect_env_info
from detzoo.utils.env import seed_all_rng
from detzoo.utils.events import (
    CommonMetricPrinter,
    JSONWriter,
    MLflowWriter,
    TensorboardXWriter,
    WandbWriter,
)
from detzoo.utils.file_io import PathManager
from detzoo.utils.logger import setup_logger

from . import hooks
from .train_loop import AMPTrainer, SimpleTrainer, TrainerBase

__all__ = ["create_ddp_model", "default_argument_parser", "default_setup", "default_writers",
           "DefaultPredictor", "DefaultTrainer"]

logger = logging.getLogger(__name__)


def create_ddp_model(model: torch.nn.Module, *, fp16_compression: bool = False, **kwargs) -> torch.nn.Module:
    """Wrap `model` in DistributedDataParallel when there is more than one process.

    Args:
        model: the model, already on its device.
        fp16_compression (bool): all-reduce gradients in float16 (less traffic, some precision lost).
        kwargs: passed to DistributedDataParallel; `device_ids` defaults to this process's
            local GPU for a CUDA model, and to None (what gloo needs) for a CPU one.
    """
    if comm.get_world_size() == 1:
        return model
    if "device_ids" not in kwargs:
        on_cuda = any(p.device.type == "cuda" for p in model.parameters())
        kwargs["device_ids"] = [comm.get_local_rank()] if on_cuda else None
    ddp = DistributedDataParallel(model, **kwargs)
    if fp16_compression:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp


def default_argument_parser(epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """The command-line arguments of detzoo's tools: --config-file, --resume, --eval-only,
    --num-gpus, --num-machines, --machine-rank, --dist-url, then KEY VALUE config overrides."""
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "train_net.py"
    epilog = epilog or f"""
Examples:

One machine, 8 GPUs (or 8 CPU worker processes on a machine without GPUs):
    $ {script} --num-gpus 8 --config-file cfg.yaml

Change config options:
    $ {script} --config-file cfg.yaml MODEL.WEIGHTS /path/to/weight.pth SOLVER.BASE_LR 0.001

Two machines:
    (machine0)$ {script} --machine-rank 0 --num-machines 2 --dist-url tcp://<machine0 ip>:<port> [...]
    (machine1)$ {script} --machine-rank 1 --num-machines 2 --dist-url tcp://<machine0 ip>:<port> [...]

Under torchrun or SLURM (srun) the process layout comes from their environment variables.
"""
    parser = argparse.ArgumentParser(epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to the config file")
    parser.add_argument("--resume", action="store_true",
                        help="resume from the last checkpoint in OUTPUT_DIR if there is one "
                             "(see DefaultTrainer.resume_or_load)")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate MODEL.WEIGHTS")
    parser.add_argument("--num-gpus", type=int, default=1,
                        help="processes per machine: one per GPU, or CPU workers (gloo) without GPUs")
    parser.add_argument("--num-machines", type=int, default=1, help="number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="rank of this machine, from 0")
    # "auto" picks a free port, so that several jobs can share a machine; several machines
    # need an explicit tcp://<machine 0 address>:<port>.
    parser.add_argument("--dist-url", default="auto",
                        help="rendezvous URL of torch.distributed (tcp://host:port, env://, or auto)")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="config overrides as KEY VALUE pairs, e.g. SOLVER.MAX_ITER 100 "
                             "(a path: MODEL.WEIGHTS /x.pth; a tuple: SOLVER.STEPS '(10, 20)')")
    return parser


def default_setup(cfg: CfgNode, args) -> None:
    """Set up a job: output directory, logging (a file per rank), the environment report,
    the config (logged and saved as OUTPUT_DIR/config.yaml), seeding (SEED + rank, so
    processes differ but runs repeat), cudnn benchmark and float32 matmul precision.

    Args:
        cfg: the full config.
        args (argparse.Namespace): the parsed command line, logged as it is.
    """
    output_dir = cfg.OUTPUT_DIR
    if comm.is_main_process() and output_dir:
        PathManager.mkdirs(output_dir)
    rank = comm.get_rank()
    setup_logger(output_dir, distributed_rank=rank, name="fvcore")
    setup_logger(output_dir, distributed_rank=rank)
    logger.info(f"Rank of current process: {rank}. World size: {comm.get_world_size()}")
    logger.info("Environment info:\n" + collect_env_info())
    logger.info(f"Command line arguments: {args}")
    config_file = getattr(args, "config_file", "")
    if config_file:
        with PathManager.open(config_file, "r") as f:
            logger.info(f"Contents of args.config_file={config_file}:\n{f.read()}")
    logger.info(f"Running with full config:\n{cfg.dump()}")
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        with PathManager.open(path, "w") as f:
            f.write(cfg.dump())
        logger.info(f"Full config saved to {os.path.abspath(path)}")
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    # Benchmarking pays off for the fixed sizes of training, not for a short evaluation.
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK
    if cfg.FLOAT32_PRECISION:
        logger.info(f"torch.set_float32_matmul_precision({cfg.FLOAT32_PRECISION!r})")
        torch.set_float32_matmul_precision(cfg.FLOAT32_PRECISION)


def default_writers(output_dir: str, max_iter: Optional[int] = None):
    """The writers of a training job: the console printer, `output_dir/metrics.json` and
    tensorboard files in `output_dir`; plus W&B when `wandb` imports and $WANDB_PROJECT is
    set, and MLflow when `mlflow` imports and $MLFLOW_TRACKING_URI or
    $MLFLOW_EXPERIMENT_NAME is set (both need somewhere to send the metrics, and neither
    should start a run just because the package happens to be installed).

    Returns:
        list[EventWriter]
    """
    PathManager.mkdirs(output_dir)
    writers = [
        CommonMetricPrinter(max_iter),
        JSONWriter(os.path.join(output_dir, "metrics.json")),
        TensorboardXWriter(output_dir),
    ]
    if os.environ.get("WANDB_PROJECT") and _importable("wandb"):
        writers.append(WandbWriter(dir=output_dir))
    if (os.environ.get("MLFLOW_TRACKING_URI") or os.environ.get("MLFLOW_EXPERIMENT_NAME")) and _importable("mlflow"):
        writers.append(MLflowWriter())
    return writers


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


class DefaultPredictor:
    """The model of a config with its weights (cfg.MODEL.WEIGHTS), applied to one image.

    It resizes the image to the test size and returns the model's output for it, in the
    original image's coordinates.

    Attributes:
        metadata (Metadata): of the first test dataset (cfg.DATASETS.TEST[0]), if any.

    Example::

        predictor = DefaultPredictor(cfg)
        outputs = predictor(cv2.imread("input.jpg"))  # {"instances": Instances, ...}
    """

    def __init__(self, cfg: CfgNode):
        from detzoo.data import MetadataCatalog
        from detzoo.data import transforms as T

        self.cfg = cfg.clone()  # the model may modify its config
        self.model = build_model(self.cfg)
        self.model.eval()
        if len(cfg.DATASETS.TEST):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        DetectionCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"DefaultPredictor reads RGB or BGR images; INPUT.FORMAT is {self.input_format!r}")

    def __call__(self, original_image):
        """
        Args:
            original_image (np.ndarray[H, W, 3]): uint8 image in BGR order (as cv2 reads it).

        Returns:
            dict: the model's output for the image (e.g. {"instances": Instances}).
        """
        with torch.no_grad():
            if self.input_format == "RGB":
                original_image = original_image[:, :, ::-1]
            height, width = original_image.shape[:2]
            image = self.aug.get_transform(original_image).apply_image(original_image)
            image = torch.as_tensor(image.astype("float32").transpose(2, 0, 1)).to(self.cfg.MODEL.DEVICE)
            return self.model([{"image": image, "height": height, "width": width}])[0]


class DefaultTrainer(TrainerBase):
    """Training as configured, with standard features:

    1. builds the model, optimizer, LR scheduler and data loader from the config
       (`build_*` class methods, to override one piece at a time), wraps the model in DDP
       with several processes, and trains with mixed precision if `SOLVER.AMP.ENABLED`
       (float16 on CUDA, bfloat16 on CPU);
    2. accumulates gradients over `SOLVER.GRAD_ACCUM_STEPS` batches per step;
    3. loads `MODEL.WEIGHTS` or resumes from the last checkpoint (`resume_or_load`);
    4. registers hooks: iteration timer, LR scheduler, model EMA (`MODEL_EMA.ENABLED`;
       evaluation then uses the averaged weights), precise BN, periodic checkpoints,
       validation loss (`TEST.VAL_LOSS_PERIOD`), evaluation, writers.

    Example::

        trainer = DefaultTrainer(cfg)
        trainer.resume_or_load()  # the last checkpoint of OUTPUT_DIR, else MODEL.WEIGHTS
        trainer.train()

    Attributes:
        scheduler: the LR scheduler.
        checkpointer (DetectionCheckpointer): saves the model and the trainer's state.
        model_ema (hooks.ModelEMA or None): the weight average, with MODEL_EMA.ENABLED.
        cfg (CfgNode): the config (after `auto_scale_workers`).
    """

    def __init__(self, cfg: CfgNode):
        super().__init__()
        if not logging.getLogger("detzoo").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        self.model_ema = self.build_model_ema(cfg, model)
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = self._build_step_runner(cfg, model, data_loader, optimizer)
        # The step runner signals the end of the backward pass: pass it on to our hooks
        # (through a weak reference, like hooks hold the trainer).
        outer = weakref.proxy(self)
        self._trainer.after_backward = lambda: outer.after_backward()
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        checkpointables = {"trainer": weakref.proxy(self)}
        if self.model_ema is not None:
            checkpointables["model_ema"] = self.model_ema
        # Checkpoints go with the logs and metrics.
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, **checkpointables)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @staticmethod
    def _build_step_runner(cfg, model, data_loader, optimizer) -> SimpleTrainer:
        accum = cfg.SOLVER.GRAD_ACCUM_STEPS
        if not cfg.SOLVER.AMP.ENABLED:
            return SimpleTrainer(model, data_loader, optimizer, grad_accum_steps=accum)
        # SOLVER.AMP.PRECISION "" (or absent, in a config made without get_cfg): float16 on
        # CUDA, bfloat16 (CPU autocast's type) otherwise.
        on_cuda = any(p.device.type == "cuda" for p in model.parameters())
        precision = cfg.SOLVER.AMP.get("PRECISION") or ("float16" if on_cuda else "bfloat16")
        if precision not in ("float16", "bfloat16"):
            raise ValueError(f"SOLVER.AMP.PRECISION is {precision!r}; expected 'float16' or 'bfloat16'")
        return AMPTrainer(model, data_loader, optimizer, precision=getattr(torch, precision), grad_accum_steps=accum)

    # ------------------------------------------------------------------ resume
    def resume_or_load(self, resume: bool = True):
        """With `resume` and a checkpoint in OUTPUT_DIR (its `last_checkpoint`), restore the
        model, optimizer, scheduler, grad scaler, EMA, hook states and iteration, and continue
        from the next iteration. Otherwise load only the model weights of MODEL.WEIGHTS and
        start at iteration 0.
        """
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            # The checkpoint holds the iteration that had just finished.
            self.start_iter = self.iter + 1

    @classmethod
    def load_model_for_eval(cls, cfg: CfgNode, model: torch.nn.Module, resume: bool = False) -> None:
        """Load weights for evaluation: MODEL.WEIGHTS, or with `resume` the last checkpoint of
        OUTPUT_DIR if there is one. With MODEL_EMA.ENABLED and
        MODEL_EMA.USE_EMA_WEIGHTS_FOR_EVAL_ONLY, the checkpoint's averaged weights are used.
        """
        model_ema = cls.build_model_ema(cfg, model)
        use_ema = model_ema is not None and cfg.MODEL_EMA.USE_EMA_WEIGHTS_FOR_EVAL_ONLY
        checkpointables = {"model_ema": model_ema} if use_ema else {}
        checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR, **checkpointables)
        if resume and checkpointer.has_checkpoint():
            checkpointer.load(checkpointer.get_checkpoint_file(), checkpointables=list(checkpointables))
        else:
            checkpointer.load(cfg.MODEL.WEIGHTS, checkpointables=list(checkpointables))
        if not use_ema:
            return
        if model_ema.loaded_from_checkpoint:
            model_ema.copy_to(model)
            logger.info("Evaluating with the EMA weights of the checkpoint")
        else:
            logger.warning("MODEL_EMA.USE_EMA_WEIGHTS_FOR_EVAL_ONLY is set but the checkpoint has no EMA weights "
                           "('model_ema'); evaluating its model weights")

    # ------------------------------------------------------------------ hooks
    def build_hooks(self):
        """The default hooks: timer, LR scheduler, EMA, precise BN, checkpointer, validation
        loss, evaluation, writers (in this order).

        Returns:
            list[HookBase]
        """
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.DATALOADER.NUM_WORKERS = 0  # the extra loaders of precise BN need no workers
        result = [
            hooks.IterationTimer(),
            hooks.LRScheduler(),
            hooks.EMAHook(self.model, self.model_ema) if self.model_ema is not None else None,
            hooks.PreciseBN(
                # As often as evaluation, and before it.
                cfg.TEST.EVAL_PERIOD,
                self.model,
                # Its own loader, so that the training data order is untouched.
                self.build_train_loader(cfg),
                cfg.TEST.PRECISE_BN.NUM_ITER,
            ) if cfg.TEST.PRECISE_BN.ENABLED and get_bn_modules(self.model) else None,
        ]
        # After precise BN, which changes the weights a checkpoint saves; before evaluation,
        # so that a failing evaluation can be debugged from the checkpoint.
        if comm.is_main_process():
            result.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))
        if cfg.TEST.VAL_LOSS_PERIOD > 0 and len(cfg.DATASETS.TEST):
            result.append(hooks.ValidationLoss(cfg.TEST.VAL_LOSS_PERIOD, self.model,
                                               self.build_val_loss_loader(cfg, list(cfg.DATASETS.TEST))))

        def test_and_save_results():
            with self._eval_weights():
                self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results

        result.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
        if comm.is_main_process():
            # Last, so that the evaluation results of this iteration are written too.
            result.append(hooks.PeriodicWriter(self.build_writers(), period=20))
        return result

    def _eval_weights(self):
        """Evaluation runs with the EMA weights when there is an EMA."""
        if self.model_ema is None:
            return contextlib.nullcontext()
        return self.model_ema.apply_to(self.model)

    def build_writers(self):
        """The writers of `PeriodicWriter`: `default_writers(OUTPUT_DIR, max_iter)`.

        Returns:
            list[EventWriter]
        """
        return default_writers(self.cfg.OUTPUT_DIR, self.max_iter)

    # ------------------------------------------------------------------ training
    def train(self):
        """Train from `start_iter` to `max_iter`.

        Returns:
            OrderedDict: the last evaluation's results, if there was an evaluation.
        """
        super().train(self.start_iter, self.max_iter)
        if len(self.cfg.TEST.EXPECTED_RESULTS) and comm.is_main_process():
            from detzoo.evaluation import verify_results

            if not hasattr(self, "_last_eval_results"):
                raise RuntimeError("TEST.EXPECTED_RESULTS is set but no evaluation ran")
            verify_results(self.cfg, self._last_eval_results)
        return getattr(self, "_last_eval_results", None)

    def run_step(self):
        self._trainer.iter = self.iter
        self._trainer.run_step()

    def after_train(self):
        super().after_train()
        self._trainer._finish_background_work()

    def state_dict(self):
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._trainer.load_state_dict(state_dict["_trainer"])

    @property
    def model(self):
        return self._trainer.model

    @model.setter
    def model(self, value):
        self._trainer.model = value

    @property
    def data_loader(self):
        return self._trainer.data_loader

    @data_loader.setter
    def data_loader(self, value):
        self._trainer.data_loader = value

    @property
    def optimizer(self):
        return self._trainer.optimizer

    @optimizer.setter
    def optimizer(self, value):
        self._trainer.optimizer = value

    # ------------------------------------------------------------------ builders
    @classmethod
    def build_model(cls, cfg):
        """`detzoo.modeling.build_model(cfg)`; override for another model.

        Returns:
            torch.nn.Module
        """
        model = build_model(cfg)
        logger.info(f"Model:\n{model}")
        return model

    @classmethod
    def build_model_ema(cls, cfg, model):
        """A `hooks.ModelEMA` of `model` if MODEL_EMA.ENABLED, else None."""
        if not cfg.MODEL_EMA.ENABLED:
            return None
        return hooks.ModelEMA(model, decay=cfg.MODEL_EMA.DECAY, device=cfg.MODEL_EMA.DEVICE)

    @classmethod
    def build_optimizer(cls, cfg, model):
        """`detzoo.solver.build_optimizer(cfg, model)`; override for another optimizer.

        Returns:
            torch.optim.Optimizer
        """
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        """`detzoo.solver.build_lr_scheduler(cfg, optimizer)`; override for another schedule."""
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        """`detzoo.data.build_detection_train_loader(cfg)`; override for other training data.

        Returns:
            iterable of batches
        """
        from detzoo.data import build_detection_train_loader

        return build_detection_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """`detzoo.data.build_detection_test_loader(cfg, dataset_name)`.

        Returns:
            iterable of batches
        """
        from detzoo.data import build_detection_test_loader

        return build_detection_test_loader(cfg, dataset_name)

    @classmethod
    def build_val_loss_loader(cls, cfg, dataset_names):
        """Batches of `dataset_names` with annotations, for `hooks.ValidationLoss`: the test
        loader with the training mapper but the test-time (deterministic) resizing."""
        from detzoo.data import DatasetMapper, build_detection_test_loader
        from detzoo.data.detection_utils import build_augmentation

        mapper = DatasetMapper(cfg, is_train=True, augmentations=build_augmentation(cfg, is_train=False))
        return build_detection_test_loader(cfg, dataset_names, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name):
        """The evaluator of `dataset_name`; not implemented here (see tools/train_net.py).

        Returns:
            DatasetEvaluator or None
        """
        raise NotImplementedError(
            "DefaultTrainer has no default evaluator: implement build_evaluator() in a subclass "
            "(tools/train_net.py has one), or pass evaluators to DefaultTrainer.test()"
        )

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate `model` on every dataset of cfg.DATASETS.TEST.

        Args:
            cfg (CfgNode):
            model (nn.Module):
            evaluators (DatasetEvaluator or list): one per test dataset; None calls
                `build_evaluator` for each.

        Returns:
            dict: {dataset name: results}, or the results alone for a single dataset.
        """
        if evaluators is not None and not isinstance(evaluators, (list, tuple)):
            evaluators = [evaluators]
        if evaluators is not None and len(evaluators) != len(cfg.DATASETS.TEST):
            raise ValueError(f"{len(evaluators)} evaluators for {len(cfg.DATASETS.TEST)} test datasets "
                             f"{tuple(cfg.DATASETS.TEST)}")
        results = OrderedDict()
        for idx, dataset_name in enumerate(cfg.DATASETS.TEST):
            results[dataset_name] = cls._test_one(cfg, model, dataset_name,
                                                  None if evaluators is None else evaluators[idx])
        return next(iter(results.values())) if len(results) == 1 else results

    @classmethod
    def _test_one(cls, cfg, model, dataset_name, evaluator):
        from detzoo.evaluation import inference_on_dataset, print_csv_format

        data_loader = cls.build_test_loader(cfg, dataset_name)
        if evaluator is None:
            try:
                evaluator = cls.build_evaluator(cfg, dataset_name)
            except NotImplementedError:
                logger.warning("No evaluator found: implement DefaultTrainer.build_evaluator() or pass "
                               "DefaultTrainer.test(evaluators=...); skipping the evaluation")
                return {}
        result = inference_on_dataset(model, data_loader, evaluator)
        if comm.is_main_process():
            if not isinstance(result, dict):
                raise TypeError(f"the evaluator of {dataset_name} must return a dict on the main process, "
                                f"got {type(result).__name__}: {result!r}")
            logger.info(f"Evaluation results for {dataset_name} in csv format:")
            print_csv_format(result)
        return result

    @staticmethod
    def auto_scale_workers(cfg: CfgNode, num_workers: int) -> CfgNode:
        """Rescale the config for `num_workers` processes when SOLVER.REFERENCE_WORLD_SIZE
        (the count it was written for) is non-zero and different, by the linear scaling
        rule: IMS_PER_BATCH and BASE_LR scale with the worker count; MAX_ITER, WARMUP_ITERS,
        STEPS and the periods (EVAL_PERIOD, VAL_LOSS_PERIOD, CHECKPOINT_PERIOD) inversely.

        Example: REFERENCE_WORLD_SIZE 8, IMS_PER_BATCH 16, BASE_LR 0.1, MAX_ITER 5000 run on
        16 workers becomes IMS_PER_BATCH 32, BASE_LR 0.2, MAX_ITER 2500.

        Returns:
            CfgNode: a rescaled copy (frozen if `cfg` was), or `cfg` itself.
        """
        reference = cfg.SOLVER.REFERENCE_WORLD_SIZE
        if reference == 0 or reference == num_workers:
            return cfg
        if cfg.SOLVER.IMS_PER_BATCH % reference != 0:
            raise ValueError(f"SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) is not a multiple of "
                             f"SOLVER.REFERENCE_WORLD_SIZE ({reference})")
        cfg = cfg.clone()
        frozen = cfg.is_frozen()
        cfg.defrost()
        scale = num_workers / reference
        solver = cfg.SOLVER
        solver.IMS_PER_BATCH = int(round(solver.IMS_PER_BATCH * scale))
        solver.BASE_LR = solver.BASE_LR * scale
        solver.MAX_ITER = int(round(solver.MAX_ITER / scale))
        solver.WARMUP_ITERS = int(round(solver.WARMUP_ITERS / scale))
        solver.STEPS = tuple(int(round(step / scale)) for step in solver.STEPS)
        solver.CHECKPOINT_PERIOD = int(round(solver.CHECKPOINT_PERIOD / scale))
        cfg.TEST.EVAL_PERIOD = int(round(cfg.TEST.EVAL_PERIOD / scale))
        cfg.TEST.VAL_LOSS_PERIOD = int(round(cfg.TEST.VAL_LOSS_PERIOD / scale))
        solver.REFERENCE_WORLD_SIZE = num_workers  # the config now describes this many workers
        logger.info(f"Auto-scaling the config to {num_workers} workers: IMS_PER_BATCH={solver.IMS_PER_BATCH}, "
                    f"BASE_LR={solver.BASE_LR}, MAX_ITER={solver.MAX_ITER}, WARMUP_ITERS={solver.WARMUP_ITERS}, "
                    f"STEPS={solver.STEPS}, CHECKPOINT_PERIOD={solver.CHECKPOINT_PERIOD}, "
                    f"EVAL_PERIOD={cfg.TEST.EVAL_PERIOD}")
        if frozen:
            cfg.freeze()
        return cfg
