"""LR schedules against closed-form values written out in the test."""
import math

import pytest
import torch
from fvcore.common.param_scheduler import CosineParamScheduler, MultiStepParamScheduler

from detzoo.config import get_cfg
from detzoo.solver import LRMultiplier, WarmupCosineLR, WarmupMultiStepLR, WarmupParamScheduler, build_lr_scheduler

BASE_LR = 0.1
MAX_ITER = 20
WARMUP_ITERS = 5
WARMUP_FACTOR = 0.1


def _optimizer(lr=BASE_LR):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr, momentum=0.9)


def _cfg(name, **solver):
    cfg = get_cfg()
    cfg.SOLVER.LR_SCHEDULER_NAME = name
    cfg.SOLVER.BASE_LR = BASE_LR
    cfg.SOLVER.MAX_ITER = MAX_ITER
    cfg.SOLVER.WARMUP_ITERS = WARMUP_ITERS
    cfg.SOLVER.WARMUP_FACTOR = WARMUP_FACTOR
    for key, value in solver.items():
        cfg.SOLVER[key] = value
    return cfg


def _lrs(optimizer, scheduler, n=MAX_ITER):
    """The lr used at iterations 0..n-1 (the trainer steps the scheduler after each one)."""
    lrs = []
    for _ in range(n):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def _linear_warmup(i, value_at_end):
    """Linear from WARMUP_FACTOR * BASE_LR at 0 to `value_at_end` at WARMUP_ITERS."""
    start = WARMUP_FACTOR * BASE_LR
    return start + (value_at_end - start) * i / WARMUP_ITERS


def test_multistep_with_linear_warmup():
    opt = _optimizer()
    lrs = _lrs(opt, build_lr_scheduler(_cfg("WarmupMultiStepLR", STEPS=(10, 15), GAMMA=0.5), opt))
    expected = [_linear_warmup(i, BASE_LR) if i < WARMUP_ITERS
                else BASE_LR * 0.5 ** sum(i >= s for s in (10, 15)) for i in range(MAX_ITER)]
    assert lrs == pytest.approx(expected, rel=1e-9)


def test_multistep_with_constant_warmup_and_ignored_late_step(caplog):
    opt = _optimizer()
    cfg = _cfg("WarmupMultiStepLR", STEPS=(12, 400), GAMMA=0.1, WARMUP_METHOD="constant")
    lrs = _lrs(opt, build_lr_scheduler(cfg, opt))
    expected = [BASE_LR * WARMUP_FACTOR if i < WARMUP_ITERS else BASE_LR * (0.1 if i >= 12 else 1.0)
                for i in range(MAX_ITER)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert "beyond SOLVER.MAX_ITER" in caplog.text


@pytest.mark.parametrize("lr_end", [0.0, 0.01])
def test_cosine_with_base_lr_end(lr_end):
    opt = _optimizer()
    lrs = _lrs(opt, build_lr_scheduler(_cfg("WarmupCosineLR", BASE_LR_END=lr_end), opt))

    def cosine(i):
        return lr_end + 0.5 * (BASE_LR - lr_end) * (1 + math.cos(math.pi * i / MAX_ITER))

    expected = [_linear_warmup(i, cosine(WARMUP_ITERS)) if i < WARMUP_ITERS else cosine(i) for i in range(MAX_ITER)]
    assert lrs == pytest.approx(expected, rel=1e-9)


def test_cosine_with_rescaled_interval():
    opt = _optimizer()
    lrs = _lrs(opt, build_lr_scheduler(_cfg("WarmupCosineLR", RESCALE_INTERVAL=True), opt))
    # After warmup the cosine restarts from BASE_LR and spans the remaining iterations.
    decay_len = MAX_ITER - WARMUP_ITERS

    def cosine(i):
        return 0.5 * BASE_LR * (1 + math.cos(math.pi * (i - WARMUP_ITERS) / decay_len))

    expected = [_linear_warmup(i, BASE_LR) if i < WARMUP_ITERS else cosine(i) for i in range(MAX_ITER)]
    assert lrs == pytest.approx(expected, rel=1e-9)


def test_step_with_fixed_gamma():
    opt = _optimizer()
    cfg = _cfg("WarmupStepWithFixedGammaLR", GAMMA=0.5, NUM_DECAYS=3, WARMUP_ITERS=2)
    lrs = _lrs(opt, build_lr_scheduler(cfg, opt))
    # NUM_DECAYS=3 -> 4 equal phases of MAX_ITER / 4 = 5 iterations each.
    expected = [BASE_LR * 0.5 ** (i // 5) for i in range(MAX_ITER)]
    expected[0] = BASE_LR * WARMUP_FACTOR
    expected[1] = BASE_LR * (WARMUP_FACTOR + (1 - WARMUP_FACTOR) / 2)
    assert lrs == pytest.approx(expected, rel=1e-9)


def test_param_groups_keep_their_ratio():
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p1], "lr": 0.2}, {"params": [p2], "lr": 0.05}], lr=0.2)
    sched = LRMultiplier(opt, CosineParamScheduler(1.0, 0.0), max_iter=10)
    for _ in range(4):
        opt.step()
        sched.step()
    first, second = (g["lr"] for g in opt.param_groups)
    assert first / second == pytest.approx(4.0)
    assert first == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 4 / 10)))


def test_legacy_schedulers_match_formulas():
    opt = _optimizer()
    legacy = WarmupMultiStepLR(opt, milestones=[10, 15], gamma=0.5, warmup_factor=WARMUP_FACTOR,
                               warmup_iters=WARMUP_ITERS)
    expected = [_linear_warmup(i, BASE_LR) if i < WARMUP_ITERS else BASE_LR * 0.5 ** sum(i >= s for s in (10, 15))
                for i in range(MAX_ITER)]
    assert _lrs(opt, legacy) == pytest.approx(expected, rel=1e-9)

    opt = _optimizer()
    legacy = WarmupCosineLR(opt, max_iters=MAX_ITER, warmup_factor=WARMUP_FACTOR, warmup_iters=WARMUP_ITERS,
                            warmup_method="constant")
    expected = [(WARMUP_FACTOR if i < WARMUP_ITERS else 1.0) * 0.5 * BASE_LR * (1 + math.cos(math.pi * i / MAX_ITER))
                for i in range(MAX_ITER)]
    assert _lrs(opt, legacy) == pytest.approx(expected, rel=1e-9)


def test_state_dict_resumes_the_schedule():
    cfg = _cfg("WarmupMultiStepLR", STEPS=(10, 15))
    opt = _optimizer()
    sched = build_lr_scheduler(cfg, opt)
    full = _lrs(opt, sched)

    opt = _optimizer()
    sched = build_lr_scheduler(cfg, opt)
    _lrs(opt, sched, n=7)
    opt_state, sched_state = opt.state_dict(), sched.state_dict()
    assert set(sched_state) == {"base_lrs", "last_epoch"}
    opt2 = _optimizer(lr=123.0)  # a fresh optimizer whose lr the checkpoint overrides
    sched2 = build_lr_scheduler(cfg, opt2)
    opt2.load_state_dict(opt_state)
    sched2.load_state_dict(sched_state)
    assert _lrs(opt2, sched2, n=MAX_ITER - 7) == pytest.approx(full[7:], rel=1e-12)


def test_warmup_param_scheduler_directly():
    main = MultiStepParamScheduler(values=[1.0, 0.1], milestones=[50], num_updates=100)
    sched = WarmupParamScheduler(main, warmup_factor=0.01, warmup_length=0.1)
    assert sched(0.0) == pytest.approx(0.01)
    assert sched(0.05) == pytest.approx(0.01 + 0.99 * 0.5)
    assert sched(0.2) == pytest.approx(1.0)
    assert sched(0.6) == pytest.approx(0.1)


@pytest.mark.parametrize("solver, message", [
    ({"LR_SCHEDULER_NAME": "Cyclic"}, "LR_SCHEDULER_NAME is 'Cyclic'"),
    ({"LR_SCHEDULER_NAME": "WarmupCosineLR", "BASE_LR_END": 0.5}, "BASE_LR_END"),
    ({"WARMUP_METHOD": "exp"}, "unknown warmup method 'exp'"),
    ({"STEPS": (15, 10)}, "must be increasing"),
    ({"MAX_ITER": 0}, "MAX_ITER must be positive"),
])
def test_bad_config_is_a_clear_error(solver, message):
    cfg = _cfg(solver.pop("LR_SCHEDULER_NAME", "WarmupMultiStepLR"), **solver)
    with pytest.raises(ValueError, match=message):
        build_lr_scheduler(cfg, _optimizer())


def test_multiplier_must_be_a_param_scheduler():
    with pytest.raises(TypeError, match="ParamScheduler"):
        LRMultiplier(_optimizer(), lambda where: 1.0, max_iter=10)
