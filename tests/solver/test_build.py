"""build_optimizer: param groups, SGD / AdamW settings, gradient clipping."""
import pytest
import torch
from torch import nn

from detzoo.config import get_cfg
from detzoo.layers import LayerNorm as ChannelsFirstLayerNorm
from detzoo.solver import build_optimizer, get_default_optimizer_params, reduce_param_groups
from detzoo.solver.build import maybe_add_gradient_clipping


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.ln = ChannelsFirstLayerNorm(4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(4, 2)
        self.shared = self.head  # the same parameters reachable twice


def _settings_by_param(model, groups):
    names = {p: n for n, p in model.named_parameters()}
    out = {}
    for group in groups:
        for p in group["params"]:
            assert names[p] not in out, f"{names[p]} appears in two groups"
            out[names[p]] = {k: v for k, v in group.items() if k != "params"}
    return out


def _cfg(**solver):
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = 0.1
    for key, value in solver.items():
        cfg.SOLVER[key] = value
    return cfg


def test_norm_and_bias_overrides():
    model = _Net()
    groups = get_default_optimizer_params(model, base_lr=0.1, weight_decay=1e-4, weight_decay_norm=0.0,
                                          bias_lr_factor=2.0, weight_decay_bias=0.5)
    settings = _settings_by_param(model, groups)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(settings) == trainable  # frozen ones excluded, shared ones once
    for name in ("bn.weight", "gn.weight", "ln.weight"):
        assert settings[name] == {"lr": 0.1, "weight_decay": 0.0}
    for name in ("conv.bias", "head.bias"):
        assert settings[name] == {"lr": 0.2, "weight_decay": 0.5}
    # Norm biases are biases too: the bias override is applied after the norm one.
    assert settings["bn.bias"] == {"lr": 0.2, "weight_decay": 0.5}
    assert settings["conv.weight"] == {"lr": 0.1, "weight_decay": 1e-4}
    assert len(groups) == 3  # merged: weights, norm weights, biases


def test_lr_factor_func_and_overrides():
    model = _Net()
    groups = get_default_optimizer_params(model, base_lr=1.0,
                                          lr_factor_func=lambda n: 0.5 if n.startswith("conv") else 1.0,
                                          overrides={"weight": {"weight_decay": 0.25}})
    settings = _settings_by_param(model, groups)
    assert settings["conv.weight"] == {"lr": 0.5, "weight_decay": 0.25}
    assert settings["conv.bias"] == {"lr": 0.5}
    assert settings["head.bias"] == {"lr": 1.0}


def test_conflicting_bias_override_is_an_error():
    with pytest.raises(ValueError, match="overrides\\['bias'\\]"):
        get_default_optimizer_params(_Net(), base_lr=0.1, weight_decay_bias=0.0, overrides={"bias": {"lr": 1.0}})
    with pytest.raises(ValueError, match="needs base_lr"):
        get_default_optimizer_params(_Net(), bias_lr_factor=2.0)


def test_reduce_param_groups_merges_and_later_groups_win():
    a, b, c = (nn.Parameter(torch.zeros(1)) for _ in range(3))
    groups = reduce_param_groups([{"params": [a, b], "lr": 0.1}, {"params": [c], "lr": 0.1},
                                  {"params": [b], "lr": 0.2}])
    assert len(groups) == 2
    assert groups[0]["lr"] == 0.1 and [id(p) for p in groups[0]["params"]] == [id(a), id(c)]
    assert groups[1]["lr"] == 0.2 and groups[1]["params"][0] is b


def test_sgd_from_config():
    opt = build_optimizer(_cfg(MOMENTUM=0.8, NESTEROV=True, WEIGHT_DECAY=1e-3, WEIGHT_DECAY_NORM=0.0), _Net())
    assert type(opt) is torch.optim.SGD
    assert all(g["momentum"] == 0.8 and g["nesterov"] for g in opt.param_groups)
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 1e-3]


def test_adamw_matches_torch():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    reference = nn.Linear(3, 2)
    reference.load_state_dict(model.state_dict())
    cfg = _cfg(WEIGHT_DECAY=0.05)
    cfg.SOLVER.OPTIMIZER = "AdamW"  # an optional key: configs without it get SGD
    cfg.SOLVER.BETAS = (0.8, 0.99)
    opt = build_optimizer(cfg, model)
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=0.1, betas=(0.8, 0.99), weight_decay=0.05)
    x = torch.randn(5, 3)
    for _ in range(3):
        for m, o in ((model, opt), (reference, ref_opt)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    assert isinstance(opt, torch.optim.AdamW)
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("name", ["SGD", "AdamW"])
def test_fused_step_matches_torch_and_clipping_turns_it_off(name):
    torch.manual_seed(0)
    model, reference = nn.Linear(4, 3), nn.Linear(4, 3)
    reference.load_state_dict(model.state_dict())
    cfg = _cfg(WEIGHT_DECAY=0.01, MOMENTUM=0.9, NESTEROV=True)
    cfg.SOLVER.OPTIMIZER = name
    opt = build_optimizer(cfg, model)
    assert opt.defaults["fused"] is True
    if name == "SGD":
        ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    else:
        ref_opt = torch.optim.AdamW(reference.parameters(), lr=0.1, weight_decay=0.01)
    x = torch.randn(6, 4)
    for _ in range(4):
        for m, o in ((model, opt), (reference, ref_opt)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    assert not build_optimizer(cfg, model).defaults["fused"]


def test_unknown_optimizer_and_empty_model():
    cfg = _cfg()
    cfg.SOLVER.OPTIMIZER = "Lion"
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER is 'Lion'"):
        build_optimizer(cfg, nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(_cfg(), nn.ReLU())


def _one_clipped_step(clip_type, grads, clip_value=1.0, norm_type=2.0):
    """Apply one plain SGD step (lr 1) with the given gradients; return the updates."""
    params = [nn.Parameter(torch.zeros_like(g)) for g in grads]
    model = nn.Module()
    for i, p in enumerate(params):
        model.register_parameter(f"p{i}", p)
    cfg = _cfg(BASE_LR=1.0, MOMENTUM=0.0, WEIGHT_DECAY=0.0)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = clip_value
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = norm_type
    opt = build_optimizer(cfg, model)
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()
    return [-p.detach() for p in params]


def test_clip_by_value():
    grads = [torch.tensor([3.0, -0.5, -7.0]), torch.tensor([0.2])]
    updates = _one_clipped_step("value", grads)
    torch.testing.assert_close(updates[0], torch.tensor([1.0, -0.5, -1.0]))
    torch.testing.assert_close(updates[1], torch.tensor([0.2]))


def test_clip_by_norm_per_parameter():
    grads = [torch.tensor([3.0, 4.0]), torch.tensor([0.3, 0.4])]  # norms 5 and 0.5
    updates = _one_clipped_step("norm", grads, clip_value=1.0)
    torch.testing.assert_close(updates[0], torch.tensor([0.6, 0.8]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(updates[1], torch.tensor([0.3, 0.4]))


def test_clip_full_model_norm():
    grads = [torch.tensor([3.0, 0.0]), torch.tensor([4.0])]  # joint L2 norm 5
    updates = _one_clipped_step("full_model", grads, clip_value=2.5)
    torch.testing.assert_close(updates[0], torch.tensor([1.5, 0.0]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(updates[1], torch.tensor([2.0]), rtol=1e-5, atol=1e-6)


def test_clipping_an_existing_instance_and_bad_type():
    cfg = _cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    p = nn.Parameter(torch.zeros(1))
    opt = maybe_add_gradient_clipping(cfg, torch.optim.SGD([p], lr=1.0))
    assert isinstance(opt, torch.optim.SGD) and type(opt).__name__ == "SGDWithGradientClip"
    p.grad = torch.tensor([10.0])
    opt.step()
    assert p.item() == pytest.approx(-1.0)
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "percentile"
    with pytest.raises(ValueError, match="CLIP_TYPE is 'percentile'"):
        build_optimizer(cfg, nn.Linear(2, 2))


def test_clipping_disabled_returns_the_type_unchanged():
    assert maybe_add_gradient_clipping(_cfg(), torch.optim.SGD) is torch.optim.SGD


def test_adamw_from_a_yaml_file(tmp_path):
    path = tmp_path / "adamw.yaml"
    path.write_text("SOLVER:\n  OPTIMIZER: AdamW\n  BETAS: [0.85, 0.95]\n  BASE_LR: 0.0003\n")
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    opt = build_optimizer(cfg, _Net())
    assert type(opt) is torch.optim.AdamW
    assert {(g["lr"], g["betas"]) for g in opt.param_groups} == {(0.0003, (0.85, 0.95))}


def test_default_config_builds_sgd():
    opt = build_optimizer(get_cfg(), nn.Linear(2, 2))
    assert type(opt) is torch.optim.SGD and opt.param_groups[0]["momentum"] == 0.9
