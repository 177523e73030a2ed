"""DefaultTrainer (resume, EMA, accumulation, AMP, validation loss), DefaultPredictor and
the job helpers, with a tiny model and loader in place of the detection ones."""
import os
import sys
import types

import numpy as np
import pytest
import torch

from detzoo.config import get_cfg
from detzoo.engine import AMPTrainer, SimpleTrainer, hooks
from detzoo.engine import defaults
from detzoo.engine.defaults import (
    DefaultPredictor,
    DefaultTrainer,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    default_writers,
)
from detzoo.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter

from . import CyclingLoader, TinyRegressor, make_batches

# 5 batches: a checkpoint after 10 iterations falls at the start of a cycle, so a resumed
# run (whose loader starts over) sees the same batches as an uninterrupted one.
_BATCHES = make_batches(5, 4)


class _Trainer(DefaultTrainer):
    @classmethod
    def build_model(cls, cfg):
        return TinyRegressor()

    @classmethod
    def build_train_loader(cls, cfg):
        return CyclingLoader(_BATCHES)

    @classmethod
    def build_val_loss_loader(cls, cfg, dataset_names):
        return make_batches(2, 4, seed=11)


def _cfg(output_dir, **solver):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.MODEL.DEVICE = "cpu"
    cfg.SOLVER.BASE_LR = 0.05
    cfg.SOLVER.MAX_ITER = 20
    cfg.SOLVER.STEPS = (12,)
    cfg.SOLVER.WARMUP_ITERS = 4
    cfg.SOLVER.CHECKPOINT_PERIOD = 10
    for key, value in solver.items():
        cfg.SOLVER[key] = value
    return cfg


class _Crash(Exception):
    pass


def _crash_at(iteration):
    def after_step(trainer):
        if trainer.iter == iteration:
            raise _Crash(f"simulated crash at iteration {iteration}")

    return hooks.CallbackHook(after_step=after_step)


def test_resume_gives_the_uninterrupted_weights(tmp_path):
    def cfg_in(name):
        cfg = _cfg(tmp_path / name)
        cfg.MODEL_EMA.ENABLED = True
        cfg.MODEL_EMA.DECAY = 0.8
        return cfg

    uninterrupted = _Trainer(cfg_in("a"))
    uninterrupted.resume_or_load(resume=False)
    uninterrupted.train()

    crashed = _Trainer(cfg_in("b"))
    crashed.resume_or_load(resume=True)  # nothing to resume yet: starts at 0
    assert crashed.start_iter == 0
    crashed.register_hooks([_crash_at(12)])
    with pytest.raises(_Crash):
        crashed.train()
    assert (tmp_path / "b" / "last_checkpoint").read_text() == "model_0000009.pth"

    resumed = _Trainer(cfg_in("b"))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 10
    resumed.train()

    for name, value in uninterrupted.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    for name, value in uninterrupted.model_ema.state.items():
        assert torch.equal(value, resumed.model_ema.state[name]), name
    assert resumed.scheduler.last_epoch == uninterrupted.scheduler.last_epoch == 20
    final = torch.load(tmp_path / "b" / "model_final.pth", weights_only=False)
    assert final["iteration"] == 19 and {"model", "trainer", "model_ema"} <= set(final)


def test_without_resume_only_the_weights_are_loaded(tmp_path):
    first = _Trainer(_cfg(tmp_path / "a", MAX_ITER=3))
    first.train()
    cfg = _cfg(tmp_path / "b")
    cfg.MODEL.WEIGHTS = str(tmp_path / "a" / "model_final.pth")
    second = _Trainer(cfg)
    second.resume_or_load(resume=False)
    assert second.start_iter == 0
    torch.testing.assert_close(second.model.linear.weight, first.model.linear.weight)
    assert not second.optimizer.state  # no optimizer state from a plain weights load


def test_step_runner_follows_the_config(tmp_path):
    trainer = _Trainer(_cfg(tmp_path, GRAD_ACCUM_STEPS=2))
    assert type(trainer._trainer) is SimpleTrainer and trainer._trainer.grad_accum_steps == 2
    cfg = _cfg(tmp_path, MAX_ITER=3)
    cfg.SOLVER.AMP.ENABLED = True
    trainer = _Trainer(cfg)
    assert isinstance(trainer._trainer, AMPTrainer) and trainer._trainer.precision == torch.bfloat16
    trainer.train()
    assert trainer.storage.latest()["total_loss"][1] == 2


def test_evaluation_uses_the_ema_weights_and_restores_the_model(tmp_path):
    seen = {}

    class Evaluated(_Trainer):
        @classmethod
        def test(cls, cfg, model, evaluators=None):
            seen["weights"] = {k: v.clone() for k, v in model.state_dict().items()}
            return {"bbox": {"AP": 1.0}}

    cfg = _cfg(tmp_path, MAX_ITER=6)
    cfg.MODEL_EMA.ENABLED = True
    cfg.MODEL_EMA.DECAY = 0.5
    trainer = Evaluated(cfg)
    assert trainer.train() == {"bbox": {"AP": 1.0}}
    for name, value in trainer.model_ema.state.items():
        torch.testing.assert_close(seen["weights"][name], value)
    assert not torch.equal(trainer.model.linear.weight, seen["weights"]["linear.weight"])
    assert trainer.storage.latest()["bbox/AP"][0] == 1.0


@pytest.mark.parametrize("use_ema", [True, False])
def test_load_model_for_eval(tmp_path, use_ema):
    cfg = _cfg(tmp_path, MAX_ITER=4)
    cfg.MODEL_EMA.ENABLED = True
    cfg.MODEL_EMA.DECAY = 0.5
    trainer = _Trainer(cfg)
    trainer.train()
    cfg.MODEL.WEIGHTS = str(tmp_path / "model_final.pth")
    cfg.MODEL_EMA.USE_EMA_WEIGHTS_FOR_EVAL_ONLY = use_ema
    model = TinyRegressor(seed=3)
    _Trainer.load_model_for_eval(cfg, model)
    expected = trainer.model_ema.state if use_ema else trainer.model.state_dict()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[name])


def test_validation_loss_hook_is_registered(tmp_path):
    cfg = _cfg(tmp_path, MAX_ITER=4)
    cfg.DATASETS.TEST = ("held_out",)
    cfg.TEST.VAL_LOSS_PERIOD = 2

    class NoEval(_Trainer):
        @classmethod
        def test(cls, cfg, model, evaluators=None):
            return {}

    trainer = NoEval(cfg)
    trainer.train()
    assert [itr for _, itr in trainer.storage.history("val_total_loss").values()] == [1, 3]


def test_metrics_and_checkpoints_are_written(tmp_path):
    trainer = _Trainer(_cfg(tmp_path, MAX_ITER=3))
    trainer.train()
    files = set(os.listdir(tmp_path))
    assert {"metrics.json", "model_final.pth", "last_checkpoint"} <= files
    assert any(f.startswith("events.out.tfevents") for f in files)


def test_test_checks_the_evaluator_count():
    cfg = get_cfg()
    cfg.DATASETS.TEST = ("a", "b")
    with pytest.raises(ValueError, match="1 evaluators for 2 test datasets"):
        DefaultTrainer.test(cfg, TinyRegressor(), evaluators=[object()])
    cfg.DATASETS.TEST = ()
    assert DefaultTrainer.test(cfg, TinyRegressor()) == {}


def test_auto_scale_workers():
    cfg = get_cfg()
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 8
    cfg.SOLVER.IMS_PER_BATCH = 16
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.MAX_ITER = 5000
    cfg.SOLVER.STEPS = (4000,)
    cfg.SOLVER.WARMUP_ITERS = 100
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    cfg.TEST.EVAL_PERIOD = 500
    cfg.freeze()
    scaled = DefaultTrainer.auto_scale_workers(cfg, 16)
    assert (scaled.SOLVER.IMS_PER_BATCH, scaled.SOLVER.BASE_LR, scaled.SOLVER.MAX_ITER) == (32, 0.2, 2500)
    assert scaled.SOLVER.STEPS == (2000,) and scaled.SOLVER.WARMUP_ITERS == 50
    assert (scaled.SOLVER.CHECKPOINT_PERIOD, scaled.TEST.EVAL_PERIOD) == (500, 250)
    assert scaled.SOLVER.REFERENCE_WORLD_SIZE == 16 and scaled.is_frozen()
    assert cfg.SOLVER.IMS_PER_BATCH == 16  # the original is untouched
    assert DefaultTrainer.auto_scale_workers(cfg, 8) is cfg
    bad = cfg.clone()
    bad.defrost()
    bad.SOLVER.IMS_PER_BATCH = 12
    with pytest.raises(ValueError, match="not a multiple of SOLVER.REFERENCE_WORLD_SIZE"):
        DefaultTrainer.auto_scale_workers(bad, 4)


def test_argument_parser():
    args = default_argument_parser().parse_args(
        ["--config-file", "a.yaml", "--resume", "--num-gpus", "2", "--num-machines", "3", "--machine-rank", "1",
         "--dist-url", "tcp://10.0.0.1:1234", "SOLVER.MAX_ITER", "4", "OUTPUT_DIR", "/tmp/x"])
    assert args.config_file == "a.yaml" and args.resume and not args.eval_only
    assert (args.num_gpus, args.num_machines, args.machine_rank) == (2, 3, 1)
    assert args.dist_url == "tcp://10.0.0.1:1234"
    assert args.opts == ["SOLVER.MAX_ITER", "4", "OUTPUT_DIR", "/tmp/x"]
    defaults_ = default_argument_parser().parse_args([])
    assert (defaults_.num_gpus, defaults_.dist_url, defaults_.opts) == (1, "auto", [])


def test_default_setup(tmp_path):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.SEED = 1234
    args = types.SimpleNamespace(config_file="", eval_only=False)
    default_setup(cfg, args)
    assert (tmp_path / "config.yaml").read_text() == cfg.dump()
    assert torch.initial_seed() == 1234  # SEED + rank 0


def test_default_writers_and_optional_ones(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    writers = default_writers(str(tmp_path), max_iter=10)
    assert [type(w) for w in writers] == [CommonMetricPrinter, JSONWriter, TensorboardXWriter]

    class FakeRun:
        def log(self, data, step):
            pass

        def finish(self):
            pass

    fake_wandb = types.ModuleType("wandb")
    fake_wandb.run = None
    fake_wandb.init = lambda **kwargs: FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # not installed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:/nowhere")
    assert len(default_writers(str(tmp_path))) == 3  # wandb installed but no project; mlflow missing
    monkeypatch.setenv("WANDB_PROJECT", "detzoo-tests")
    assert type(default_writers(str(tmp_path))[-1]).__name__ == "WandbWriter"


def test_create_ddp_model_in_one_process():
    model = TinyRegressor()
    assert create_ddp_model(model) is model


def test_default_predictor(monkeypatch, tmp_path):
    seen = {}

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, inputs):
            seen["inputs"] = inputs
            return [{"instances": "ok"}]

    monkeypatch.setattr(defaults, "build_model", lambda cfg: Recorder())
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.INPUT.MIN_SIZE_TEST = 20
    cfg.INPUT.MAX_SIZE_TEST = 100
    cfg.INPUT.FORMAT = "RGB"
    predictor = DefaultPredictor(cfg)
    image = np.zeros((10, 30, 3), dtype=np.uint8)
    image[..., 0] = 255  # blue in BGR
    assert predictor(image) == {"instances": "ok"}
    (inputs,) = seen["inputs"]
    assert (inputs["height"], inputs["width"]) == (10, 30)
    assert inputs["image"].shape == (3, 20, 60) and inputs["image"].dtype == torch.float32
    assert inputs["image"][2].min() == 255 and inputs["image"][0].max() == 0  # flipped to RGB
    cfg.INPUT.FORMAT = "L"
    with pytest.raises(ValueError, match="INPUT.FORMAT is 'L'"):
        DefaultPredictor(cfg)


def test_hooks_see_after_backward_and_are_checkpointed_once(tmp_path):
    seen = []

    class Probe(hooks.CallbackHook):
        def after_backward(self):
            grad = self.trainer.model.linear.weight.grad
            seen.append(grad is not None and bool(grad.abs().sum() > 0))

    trainer = _Trainer(_cfg(tmp_path, MAX_ITER=2))
    trainer.register_hooks([Probe()])
    trainer.train()
    assert seen == [True, True]
    state = trainer.state_dict()
    assert "LRScheduler" in state["hooks"] and "hooks" not in state["_trainer"]


# The scaler skips the optimizer step of overflowing iterations, which torch mistakes for a
# scheduler stepped before its optimizer.
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")
def test_resume_restores_the_grad_scaler(tmp_path):
    cfg = _cfg(tmp_path, MAX_ITER=3, CHECKPOINT_PERIOD=100)
    cfg.SOLVER.AMP.ENABLED = True
    cfg.SOLVER.AMP.PRECISION = "float16"  # an optional key; float16 has an active scaler
    trainer = _Trainer(cfg)
    trainer.train()
    scale = trainer._trainer.grad_scaler.get_scale()
    assert scale != 2.0**16  # the default float16 scale overflowed and was lowered
    cfg.SOLVER.MAX_ITER = 5
    resumed = _Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3
    assert resumed._trainer.grad_scaler.get_scale() == scale
    cfg.SOLVER.AMP.PRECISION = "float8"
    with pytest.raises(ValueError, match="AMP.PRECISION is 'float8'"):
        _Trainer(cfg)


def test_bfloat16_amp_from_yaml_trains_under_cpu_autocast(tmp_path):
    seen = []

    class Probe(TinyRegressor):
        def forward(self, batch):
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            return super().forward(batch)

    class Trainer(_Trainer):
        @classmethod
        def build_model(cls, cfg):
            return Probe()

    path = tmp_path / "amp.yaml"
    path.write_text("SOLVER:\n  AMP:\n    ENABLED: True\n    PRECISION: bfloat16\n")
    cfg = _cfg(tmp_path, MAX_ITER=1)
    cfg.merge_from_file(str(path))
    trainer = Trainer(cfg)
    before = trainer.model.linear.weight.detach().clone()
    trainer.train()
    assert seen == [(True, torch.bfloat16)]
    assert trainer._trainer.precision == torch.bfloat16 and not trainer._trainer.grad_scaler.is_enabled()
    assert torch.isfinite(torch.tensor(trainer.storage.latest()["total_loss"][0]))
    assert not torch.equal(trainer.model.linear.weight, before)  # the step was taken
