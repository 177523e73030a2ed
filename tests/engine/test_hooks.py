"""The hooks, each on a SimpleTrainer with a tiny model."""
import json
import os

import pytest
import torch
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detzoo.checkpoint import DetectionCheckpointer
from detzoo.engine import SimpleTrainer, hooks
from detzoo.utils.events import EventWriter

from . import CyclingLoader, TinyRegressor, make_batches


def _trainer(model=None, lr=0.1, batches=None):
    model = model or TinyRegressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return SimpleTrainer(model, CyclingLoader(batches or make_batches(3, 4)), optimizer)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_callback_hook_and_iteration_timer():
    calls = []
    trainer = _trainer()
    trainer.register_hooks([
        hooks.IterationTimer(warmup_iter=2),
        hooks.CallbackHook(before_train=lambda t: calls.append("bt"), before_step=lambda t: calls.append("bs"),
                           after_step=lambda t: calls.append("as"), after_train=lambda t: calls.append("at")),
    ])
    trainer.train(0, 4)
    assert calls == ["bt"] + ["bs", "as"] * 4 + ["at"]
    timed = [itr for _, itr in trainer.storage.history("time").values()]
    assert timed == [1, 2, 3]  # the first warmup_iter - 1 iterations are not timed


def test_lr_scheduler_hook_records_the_lr_used():
    trainer = _trainer(lr=1.0)
    sched = MultiStepParamScheduler(values=[1.0, 0.1], milestones=[3], num_updates=5)
    trainer.register_hooks([hooks.LRScheduler(trainer.optimizer, sched)])
    trainer.train(0, 5)
    lrs = [value for value, _ in trainer.storage.history("lr").values()]
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 0.1, 0.1])
    assert trainer.storage.smoothing_hints()["lr"] is False


def test_lr_scheduler_hook_state_round_trip():
    trainer = _trainer()
    trainer.scheduler = torch.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=2)
    hook = hooks.LRScheduler()  # takes the trainer's optimizer and scheduler
    trainer.register_hooks([hook])
    trainer.train(0, 3)
    assert hook.state_dict()["last_epoch"] == 3
    other = _trainer()
    other.scheduler = torch.optim.lr_scheduler.StepLR(other.optimizer, step_size=2)
    other_hook = hooks.LRScheduler()
    other.register_hooks([other_hook])
    other_hook.load_state_dict(hook.state_dict())
    assert other.scheduler.last_epoch == 3


def test_best_param_group_id():
    a, b, c = (torch.nn.Parameter(torch.zeros(1)) for _ in range(3))
    many = torch.optim.SGD([{"params": [a], "lr": 1.0}, {"params": [b, c], "lr": 2.0}], lr=1.0)
    assert hooks.LRScheduler.get_best_param_group_id(many) == 1
    singles = torch.optim.SGD([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 2.0}, {"params": [c], "lr": 2.0}])
    assert hooks.LRScheduler.get_best_param_group_id(singles) == 1


def test_periodic_checkpointer_hook(tmp_path):
    trainer = _trainer()
    checkpointer = DetectionCheckpointer(trainer.model, str(tmp_path), optimizer=trainer.optimizer)
    trainer.register_hooks([hooks.PeriodicCheckpointer(checkpointer, period=2)])
    trainer.train(0, 5)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth", "model_0000003.pth",
                                            "model_final.pth"]
    saved = torch.load(tmp_path / "model_0000003.pth", weights_only=False)
    assert saved["iteration"] == 3 and "optimizer" in saved


def _metric_feeder(values, name="bbox/AP"):
    return hooks.CallbackHook(after_step=lambda t: t.storage.put_scalar(name, values[t.iter], smoothing_hint=False))


@pytest.mark.parametrize("mode, values, best", [("max", [0.3, 0.5, 0.4, 0.6, 0.55], [(0.3, 0), (0.5, 1), (0.6, 3)]),
                                                ("min", [0.3, 0.5, 0.2, 0.2, 0.1], [(0.3, 0), (0.2, 2), (0.1, 4)])])
def test_best_checkpointer(tmp_path, mode, values, best):
    trainer = _trainer()
    checkpointer = DetectionCheckpointer(trainer.model, str(tmp_path))
    checkpointer.save("model_0000000")  # the latest periodic checkpoint
    saves = []
    original_save = checkpointer.save
    checkpointer.save = lambda name, **kw: (saves.append((name, kw["iteration"])), original_save(name, **kw))
    best_hook = hooks.BestCheckpointer(1, checkpointer, "bbox/AP", mode=mode)
    trainer.register_hooks([_metric_feeder(values), best_hook])
    trainer.train(0, 5)
    assert saves == [("model_best", itr) for _, itr in best]
    assert (best_hook.best_metric, best_hook.best_iter) == best[-1]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
    assert best_hook.state_dict() == {"best_metric": best[-1][0], "best_iter": best[-1][1]}


def test_best_checkpointer_bad_mode_and_missing_metric(tmp_path, caplog):
    trainer = _trainer()
    checkpointer = DetectionCheckpointer(trainer.model, str(tmp_path))
    with pytest.raises(ValueError, match="'max' or 'min'"):
        hooks.BestCheckpointer(1, checkpointer, "AP", mode="best")
    trainer.register_hooks([hooks.BestCheckpointer(1, checkpointer, "segm/AP")])
    trainer.train(0, 2)
    assert "'segm/AP' was not recorded" in caplog.text
    assert not os.listdir(tmp_path)


def test_eval_hook_periods_and_flattening():
    calls = []

    def evaluate():
        calls.append(trainer.iter)
        return {"bbox": {"AP": 40.0 + trainer.iter, "AP50": 60}}

    trainer = _trainer()
    trainer.register_hooks([hooks.EvalHook(2, evaluate)])
    trainer.train(0, 5)
    assert calls == [1, 3, 5]  # every 2 iterations, and after the last (trainer.iter is 5 there)
    assert trainer.storage.latest()["bbox/AP"] == (45.0, 5)
    assert trainer.storage.latest()["bbox/AP50"] == (60.0, 5)


def test_eval_hook_rejects_non_numbers_and_can_skip_the_end():
    trainer = _trainer()
    trainer.register_hooks([hooks.EvalHook(0, lambda: {"bbox": {"AP": "n/a"}})])
    with pytest.raises(ValueError, match="bbox/AP"):
        trainer.train(0, 2)
    calls = []
    trainer = _trainer()
    trainer.register_hooks([hooks.EvalHook(0, lambda: calls.append(1), eval_after_train=False)])
    trainer.train(0, 2)
    assert calls == []


def test_precise_bn_computes_the_true_mean():
    model = TinyRegressor(with_bn=True)
    data = make_batches(4, 8, seed=3)
    for x, _ in data:
        x += 5.0  # far from the initial running mean of 0
    trainer = _trainer(model, lr=0.0)
    hook = hooks.PreciseBN(0, model, CyclingLoader(data), num_iter=4)
    trainer.register_hooks([hook])
    trainer.train(0, 2)
    true_mean = torch.cat([x for x, _ in data]).mean(dim=0)
    torch.testing.assert_close(model.bn.running_mean, true_mean, rtol=1e-5, atol=1e-5)


def test_precise_bn_is_disabled_without_bn():
    hook = hooks.PreciseBN(0, TinyRegressor(), [], num_iter=4)
    hook.update_stats()  # no BN: nothing to do, the empty loader is never read


def test_periodic_writer():
    class Counting(EventWriter):
        writes = closes = 0

        def write(self):
            self.writes += 1

        def close(self):
            self.closes += 1

    writer = Counting()
    trainer = _trainer()
    trainer.register_hooks([hooks.PeriodicWriter([writer], period=2)])
    trainer.train(0, 5)
    assert (writer.writes, writer.closes) == (4, 1)  # iterations 1, 3, 4, then the final flush
    with pytest.raises(TypeError, match="EventWriter"):
        hooks.PeriodicWriter([print])


@pytest.mark.parametrize("profiler", ["torch", "autograd"])
def test_profilers_write_chrome_traces(tmp_path, profiler):
    trainer = _trainer()
    if profiler == "torch":
        hook = hooks.TorchProfiler(lambda t: t.iter == 1, str(tmp_path), save_tensorboard=False)
    else:
        hook = hooks.AutogradProfiler(lambda t: t.iter == 1, str(tmp_path), use_cuda=False)
    trainer.register_hooks([hook])
    trainer.train(0, 3)
    assert os.listdir(tmp_path) == ["profiler-trace-iter1.json"]
    with open(tmp_path / "profiler-trace-iter1.json") as f:
        assert "traceEvents" in json.load(f)


# ------------------------------------------------------------------------------------ EMA
def test_model_ema_math():
    model = torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = hooks.ModelEMA(model, decay=0.75)
    for value, count in ((5.0, 3), (9.0, 7)):
        with torch.no_grad():
            model.weight.fill_(value)
            model.num_batches_tracked.fill_(count)
        ema.update(model)
    expected = 0.75 * (0.75 * 1.0 + 0.25 * 5.0) + 0.25 * 9.0
    torch.testing.assert_close(ema.state["weight"], torch.full((2,), expected))
    assert ema.state["num_batches_tracked"].item() == 7  # integers are copied, not averaged

    with ema.apply_to(model):
        torch.testing.assert_close(model.weight, torch.full((2,), expected))
    torch.testing.assert_close(model.weight, torch.full((2,), 9.0))


def test_model_ema_checkpoint_state():
    model = TinyRegressor()
    ema = hooks.ModelEMA(model, decay=0.9)
    other = hooks.ModelEMA(TinyRegressor(seed=5), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.loaded_from_checkpoint
    torch.testing.assert_close(other.state["linear.weight"], model.linear.weight)
    with pytest.raises(KeyError, match="missing"):
        other.load_state_dict({})
    with pytest.raises(ValueError, match="DECAY"):
        hooks.ModelEMA(model, decay=1.0)


def test_ema_hook_follows_each_step():
    model = TinyRegressor()
    trainer = _trainer(model, lr=0.2)
    ema = hooks.ModelEMA(TinyRegressor(seed=9), decay=0.5)  # built from other weights...
    history = []
    trainer.register_hooks([hooks.EMAHook(model, ema),
                            hooks.CallbackHook(before_train=lambda t: history.append(_weights(model)),
                                               after_step=lambda t: history.append(_weights(model)))])
    trainer.train(0, 4)
    # ...but restarted from the model at the start of training.
    expected = history[0]
    for weights in history[1:]:
        expected = {k: 0.5 * expected[k] + 0.5 * weights[k] for k in expected}
    for name, value in expected.items():
        torch.testing.assert_close(ema.state[name], value)


# ------------------------------------------------------------------------- validation loss
def test_validation_loss_hook():
    model = TinyRegressor()
    val_batches = make_batches(3, 5, seed=7)
    trainer = _trainer(model, lr=0.0)  # frozen weights: the validation loss is a fixed number
    trainer.register_hooks([hooks.ValidationLoss(2, model, val_batches)])
    trainer.train(0, 5)
    with torch.no_grad():
        per_batch = [model(b) for b in val_batches]
    expected_mse = sum(float(l["loss_mse"]) for l in per_batch) / 3
    expected_abs = sum(float(l["loss_abs"]) for l in per_batch) / 3
    history = trainer.storage.history("val_loss_mse").values()
    assert [itr for _, itr in history] == [1, 3, 4]
    assert history[-1][0] == pytest.approx(expected_mse)
    assert trainer.storage.latest()["val_total_loss"][0] == pytest.approx(expected_mse + expected_abs)
    assert model.training


def test_validation_loss_keeps_the_rng_and_model_mode():
    class Noisy(TinyRegressor):
        def forward(self, batch):
            torch.rand(3)  # e.g. random proposal sampling
            return super().forward(batch)

    model = Noisy().eval()
    hook = hooks.ValidationLoss(1, model, make_batches(2, 2), num_batches=1)
    hook.trainer = type("T", (), {"iter": 0})()
    torch.manual_seed(123)
    expected = torch.rand(2)
    torch.manual_seed(123)
    losses = hook.compute()
    assert torch.equal(torch.rand(2), expected)
    assert not model.training
    assert set(losses) == {"val_loss_mse", "val_loss_abs", "val_total_loss"}


def test_validation_loss_bad_period():
    with pytest.raises(ValueError, match="period"):
        hooks.ValidationLoss(0, TinyRegressor(), [])


def test_no_final_evaluation_after_a_failed_last_iteration():
    calls = []

    def fail_at_last(trainer):
        if trainer.iter == trainer.max_iter - 1:
            raise RuntimeError("diverged")

    trainer = _trainer()
    trainer.register_hooks([hooks.CallbackHook(after_step=fail_at_last),
                            hooks.EvalHook(0, lambda: calls.append(trainer.iter))])
    with pytest.raises(RuntimeError, match="diverged"):
        trainer.train(0, 3)
    assert calls == []
