"""TrainerBase / SimpleTrainer / AMPTrainer: hook order, the step, gradient accumulation,
mixed precision on CPU, NaN detection, state."""
import copy

import pytest
import torch

from detzoo.engine import AMPTrainer, HookBase, SimpleTrainer, TrainerBase
from detzoo.utils.events import EventStorage

from . import CyclingLoader, TinyRegressor, make_batches, split_batches


class _Recorder(HookBase):
    def __init__(self, log):
        self.log = log

    def before_train(self):
        self.log.append(("before_train", self.trainer.iter))

    def before_step(self):
        self.log.append(("before_step", self.trainer.iter))

    def after_backward(self):
        self.log.append(("after_backward", self.trainer.iter))

    def after_step(self):
        self.log.append(("after_step", self.trainer.iter))

    def after_train(self):
        self.log.append(("after_train", self.trainer.iter))


def _trainer(model=None, batches=None, lr=0.1, momentum=0.9, cls=SimpleTrainer, **kwargs):
    model = model or TinyRegressor()
    batches = batches or make_batches(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    return cls(model, CyclingLoader(batches), optimizer, **kwargs)


def test_hooks_run_in_order_and_iter_ends_at_max_iter():
    log = []
    trainer = _trainer()
    trainer.register_hooks([_Recorder(log), None])
    trainer.train(3, 5)
    assert log == [("before_train", 3),
                   ("before_step", 3), ("after_backward", 3), ("after_step", 3),
                   ("before_step", 4), ("after_backward", 4), ("after_step", 4),
                   ("after_train", 5)]
    assert trainer.storage.latest()["total_loss"][1] == 4


def test_after_train_runs_when_a_step_raises():
    class Failing(TrainerBase):
        def run_step(self):
            if self.iter == 2:
                raise RuntimeError("boom")

    log = []
    trainer = Failing()
    trainer.register_hooks([_Recorder(log)])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train(0, 5)
    assert log[-1] == ("after_train", 2)  # not max_iter: hooks can tell training failed


def test_register_rejects_non_hooks():
    with pytest.raises(TypeError, match="HookBase"):
        TrainerBase().register_hooks([object()])


def test_one_step_is_sgd_on_the_summed_losses():
    model = TinyRegressor()
    reference = copy.deepcopy(model)
    batch = make_batches(1, 3)[0]
    trainer = _trainer(model, [batch], lr=0.5, momentum=0.0)
    trainer.train(0, 1)
    losses = reference(batch)
    total = losses["loss_mse"] + losses["loss_abs"]
    grads = torch.autograd.grad(total, list(reference.parameters()))
    for param, ref, grad in zip(model.parameters(), reference.parameters(), grads):
        torch.testing.assert_close(param, ref - 0.5 * grad)
    latest = trainer.storage.latest()
    assert latest["total_loss"][0] == pytest.approx(total.item())
    assert {"loss_mse", "loss_abs", "data_time"} <= set(latest)


def test_gradient_accumulation_equals_the_larger_batch():
    big_batches = make_batches(3, 6)
    full = _trainer(TinyRegressor(), big_batches)
    full.train(0, 6)
    accumulated = _trainer(TinyRegressor(), split_batches(big_batches, 3), grad_accum_steps=3)
    accumulated.train(0, 6)
    for p, q in zip(full.model.parameters(), accumulated.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    # The recorded losses are those of the large batch too.
    assert accumulated.storage.latest()["loss_mse"][0] == pytest.approx(full.storage.latest()["loss_mse"][0],
                                                                        rel=1e-5)


def test_zero_grad_before_forward_and_bad_accumulation():
    trainer = _trainer(zero_grad_before_forward=True)
    trainer.train(0, 2)
    with pytest.raises(ValueError, match="grad_accum_steps"):
        _trainer(grad_accum_steps=0)


def test_model_returning_a_tensor():
    class ScalarLoss(TinyRegressor):
        def forward(self, batch):
            return super().forward(batch)["loss_mse"]

    trainer = _trainer(ScalarLoss())
    trainer.train(0, 2)
    assert "total_loss" in trainer.storage.latest()


def test_eval_mode_is_an_error():
    trainer = _trainer()
    trainer.model.eval()
    with pytest.raises(RuntimeError, match="eval mode"):
        trainer.train(0, 1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_names_the_loss_and_iteration(bad):
    class Diverging(TinyRegressor):
        def forward(self, batch):
            losses = super().forward(batch)
            if self.calls == 3:
                losses["loss_box_reg"] = torch.tensor(bad)
            else:
                losses["loss_box_reg"] = torch.tensor(0.0)
            self.calls += 1
            return losses

    model = Diverging()
    model.calls = 0
    trainer = _trainer(model)
    with pytest.raises(FloatingPointError, match=r"iteration=3: loss_box_reg=(nan|inf)"):
        trainer.train(0, 10)


def test_gather_metric_period_and_async_writes():
    trainer = _trainer(gather_metric_period=2, async_write_metrics=True)
    trainer.train(0, 5)
    iterations = [itr for _, itr in trainer.storage.history("total_loss").values()]
    assert iterations == [1, 3]


class _DtypeProbe(TinyRegressor):
    def forward(self, batch):
        x, _ = batch
        self.seen_dtype = self.linear(x).dtype
        return super().forward(batch)


@pytest.mark.parametrize("precision", [torch.bfloat16, torch.float16])
def test_amp_trainer_on_cpu(precision):
    model = _DtypeProbe()
    # The default float16 scale (2**16) overflows this model's float16 gradients, and the
    # scaler skips steps until it has come down: start lower to see steps being taken.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8) if precision == torch.float16 else None
    trainer = _trainer(model, cls=AMPTrainer, precision=precision, grad_scaler=scaler, log_grad_scaler=True)
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train(0, 3)
    assert model.seen_dtype == precision  # the forward pass ran under autocast
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay float32
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert "grad_scaler" in trainer.state_dict()
    assert "[metric]grad_scaler" in trainer.storage.latest()


@pytest.mark.parametrize("precision, enabled", [(torch.float16, True), (torch.bfloat16, False)])
def test_amp_default_grad_scaler(precision, enabled):
    trainer = _trainer(cls=AMPTrainer, precision=precision)
    assert trainer.grad_scaler.is_enabled() == enabled


def test_amp_bfloat16_tracks_float32_training():
    fp32 = _trainer(TinyRegressor())
    fp32.train(0, 5)
    bf16 = _trainer(TinyRegressor(), cls=AMPTrainer, precision=torch.bfloat16)
    bf16.train(0, 5)
    for p, q in zip(fp32.model.parameters(), bf16.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0.05, atol=0.05)


def test_amp_rejects_other_precisions():
    with pytest.raises(ValueError, match="precision"):
        _trainer(cls=AMPTrainer, precision=torch.float64)


def test_state_dict_round_trip():
    class Stateful(HookBase):
        def __init__(self):
            self.count = 0

        def after_step(self):
            self.count += 1

        def state_dict(self):
            return {"count": self.count}

        def load_state_dict(self, state):
            self.count = state["count"]

    trainer = _trainer()
    trainer.register_hooks([Stateful()])
    trainer.train(0, 3)
    state = trainer.state_dict()
    assert state["iteration"] == 3 and state["hooks"] == {Stateful.__qualname__: {"count": 3}}
    fresh = _trainer()
    fresh.register_hooks([Stateful()])
    fresh.load_state_dict(state)
    assert fresh.iter == 3 and fresh._hooks[0].count == 3
    assert fresh.optimizer.state_dict()["state"].keys() == trainer.optimizer.state_dict()["state"].keys()


def test_write_metrics_outside_training():
    with EventStorage() as storage:
        SimpleTrainer.write_metrics({"loss_a": torch.tensor(1.0), "loss_b": torch.tensor(2.0)}, 0.5, cur_iter=7)
    assert storage.latest()["total_loss"] == (3.0, 7)
    assert storage.latest()["data_time"] == (0.5, 7)
