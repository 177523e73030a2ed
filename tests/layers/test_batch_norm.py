import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F

from detzoo.layers import CycleBatchNormList, FrozenBatchNorm2d, LayerNorm, NaiveSyncBatchNorm, get_norm
from detzoo.layers.batch_norm import SyncBatchNorm

ALL_NAMES = ["BN", "SyncBN", "FrozenBN", "GN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N", "LN"]


def _random_bn(channels=6, eps=1e-5, affine=True, cls=nn.BatchNorm2d, **kwargs):
    bn = cls(channels, eps=eps, affine=affine, **kwargs)
    with torch.no_grad():
        bn.running_mean.uniform_(-2, 2)
        bn.running_var.uniform_(0.2, 3)
        if affine:
            bn.weight.uniform_(-2, 2)
            bn.bias.uniform_(-1, 1)
    return bn


def _frozen_like(bn):
    frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    frozen.load_state_dict(
        {k: v for k, v in bn.state_dict().items() if k != "num_batches_tracked"}, strict=True
    )
    return frozen


class TestFrozenBatchNorm2d:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_equals_eval_batch_norm(self, dtype):
        bn = _random_bn(eps=1e-3).eval().to(dtype)
        frozen = _frozen_like(bn).to(dtype)
        x = torch.randn(3, 6, 7, 5, dtype=dtype)
        torch.testing.assert_close(frozen(x), bn(x))
        x.requires_grad_(True)
        torch.testing.assert_close(frozen(x), bn(x))

    def test_gradient_equals_eval_batch_norm(self):
        bn = _random_bn().eval().double()
        frozen = _frozen_like(bn).double()
        x = torch.randn(2, 6, 4, 3, dtype=torch.float64, requires_grad=True)
        (grad_frozen,) = torch.autograd.grad(frozen(x).square().sum(), x)
        (grad_bn,) = torch.autograd.grad(bn(x).square().sum(), x)
        torch.testing.assert_close(grad_frozen, grad_bn)
        assert torch.autograd.gradcheck(frozen, (x,))

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_low_precision_input_keeps_its_dtype(self, dtype):
        bn = _random_bn().eval()
        frozen = _frozen_like(bn)
        x = torch.randn(2, 6, 4, 4)
        out = frozen(x.to(dtype))
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), bn(x), atol=0.05, rtol=0.02)

    def test_empty_and_non_contiguous_input(self):
        bn = _random_bn().eval()
        frozen = _frozen_like(bn)
        assert frozen(torch.zeros(0, 6, 4, 4)).shape == (0, 6, 4, 4)
        x = torch.randn(2, 4, 5, 6).permute(0, 3, 1, 2)
        torch.testing.assert_close(frozen(x), bn(x.contiguous()))
        x = torch.randn(2, 6, 4, 5).to(memory_format=torch.channels_last)
        torch.testing.assert_close(frozen(x), bn(x))

    def test_starts_as_identity(self):
        frozen = FrozenBatchNorm2d(4)
        assert frozen.eps == 1e-5
        x = torch.randn(2, 4, 3, 3)
        torch.testing.assert_close(frozen(x), x)

    def test_buffers_not_parameters(self):
        frozen = FrozenBatchNorm2d(4)
        assert list(frozen.parameters()) == []
        assert set(frozen.state_dict()) == {"weight", "bias", "running_mean", "running_var"}
        assert "num_features=4" in repr(frozen) and "eps=1e-05" in repr(frozen)

    def test_load_caffe2_style_state_dict_without_statistics(self):
        frozen = FrozenBatchNorm2d(3)
        weight, bias = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 0.0, -0.5])
        result = frozen.load_state_dict({"weight": weight, "bias": bias}, strict=True)
        assert not result.missing_keys
        torch.testing.assert_close(frozen.running_mean, torch.zeros(3))
        torch.testing.assert_close(frozen.running_var, torch.ones(3))
        x = torch.randn(2, 3, 2, 2)
        expected = x * weight.view(1, 3, 1, 1) + bias.view(1, 3, 1, 1)
        torch.testing.assert_close(frozen(x), expected, atol=1e-4, rtol=1e-5)

    def test_current_version_state_dict_needs_statistics(self):
        state = FrozenBatchNorm2d(3).state_dict()
        del state["running_var"]
        with pytest.raises(RuntimeError, match="running_var"):
            FrozenBatchNorm2d(3).load_state_dict(state)

    def test_round_trip_through_state_dict(self):
        source = _frozen_like(_random_bn())
        target = FrozenBatchNorm2d(6)
        target.load_state_dict(source.state_dict())
        x = torch.randn(2, 6, 3, 3)
        torch.testing.assert_close(target(x), source(x))


class TestConvertFrozenBatchNorm:
    def _nested(self):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            _random_bn(8),
            nn.Sequential(nn.Conv2d(8, 8, 1), _random_bn(8, eps=1e-3, affine=False), nn.ReLU()),
            _random_bn(8, cls=nn.SyncBatchNorm),
            _random_bn(8, cls=NaiveSyncBatchNorm),
            _random_bn(8, cls=SyncBatchNorm),
            nn.GroupNorm(4, 8),
            nn.BatchNorm1d(8).eval(),
        )

    def test_nested_module(self):
        model = self._nested().eval()
        model_children = [model[1], model[2][1], model[3], model[4], model[5]]
        x = torch.randn(2, 3, 5, 5)
        with torch.no_grad():
            expected = model[:7](x)
        converted = FrozenBatchNorm2d.convert_frozen_batchnorm(model)
        assert converted is model
        for index in (1, 3, 4, 5):
            assert isinstance(model[index], FrozenBatchNorm2d)
        assert isinstance(model[2][1], FrozenBatchNorm2d)
        assert model[2][1].eps == 1e-3
        assert isinstance(model[6], nn.GroupNorm)
        assert isinstance(model[7], nn.BatchNorm1d)  # only 2-d batch norms are converted
        torch.testing.assert_close(model[:7](x), expected)
        # The frozen statistics are copies, not views of the old modules' tensors.
        model_children[0].running_mean.add_(100)
        torch.testing.assert_close(model[:7](x), expected)

    def test_batch_norm_itself_returns_new_module(self):
        bn = _random_bn().eval()
        frozen = FrozenBatchNorm2d.convert_frozen_batchnorm(bn)
        assert isinstance(frozen, FrozenBatchNorm2d) and frozen is not bn
        x = torch.randn(2, 6, 3, 3)
        torch.testing.assert_close(frozen(x), bn(x))

    def test_keeps_dtype(self):
        frozen = FrozenBatchNorm2d.convert_frozen_batchnorm(_random_bn(affine=False).double())
        assert all(b.dtype == torch.float64 for b in frozen.buffers())

    def test_without_running_stats_is_an_error(self):
        with pytest.raises(ValueError, match="track_running_stats"):
            FrozenBatchNorm2d.convert_frozen_batchnorm(nn.BatchNorm2d(4, track_running_stats=False))


class TestGetNorm:
    @pytest.mark.parametrize(
        "name, cls",
        [
            ("BN", nn.BatchNorm2d),
            ("SyncBN", nn.SyncBatchNorm),
            ("FrozenBN", FrozenBatchNorm2d),
            ("GN", nn.GroupNorm),
            ("nnSyncBN", nn.SyncBatchNorm),
            ("naiveSyncBN", NaiveSyncBatchNorm),
            ("naiveSyncBN_N", NaiveSyncBatchNorm),
            ("LN", LayerNorm),
        ],
    )
    def test_every_name(self, name, cls):
        norm = get_norm(name, 64)
        assert isinstance(norm, cls)
        x = torch.randn(2, 64, 3, 3)
        assert norm.train()(x).shape == x.shape

    def test_details(self):
        assert get_norm("GN", 64).num_groups == 32
        assert get_norm("naiveSyncBN_N", 8)._stats_mode == "N"
        assert get_norm("naiveSyncBN", 8)._stats_mode == ""
        assert type(get_norm("nnSyncBN", 8)) is nn.SyncBatchNorm
        assert isinstance(get_norm("SyncBN", 8), SyncBatchNorm)
        assert get_norm("BN", 8).num_features == 8

    def test_none_and_empty(self):
        assert get_norm(None, 8) is None
        assert get_norm("", 8) is None

    def test_callable(self):
        norm = get_norm(lambda channels: nn.GroupNorm(2, channels), 8)
        assert isinstance(norm, nn.GroupNorm) and norm.num_channels == 8

    def test_unknown_name_lists_valid_ones(self):
        with pytest.raises(ValueError) as info:
            get_norm("BatchNorm", 8)
        message = str(info.value)
        assert "'BatchNorm'" in message
        assert all(repr(name) in message for name in ALL_NAMES)

    def test_not_a_name_or_callable(self):
        with pytest.raises(TypeError, match="int"):
            get_norm(3, 8)


def test_layer_norm_normalizes_channels_per_position():
    norm = LayerNorm(5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 5, 3, 4) * 3 + 1
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (5,), norm.weight, norm.bias, eps=1e-6)
    torch.testing.assert_close(norm(x), expected.permute(0, 3, 1, 2))


def test_cycle_batch_norm_list():
    cycle = CycleBatchNormList(2, num_features=3)
    first, second = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2) * 5 + 2
    cycle(first), cycle(second)
    reference = nn.BatchNorm2d(3, affine=False)
    reference(first)
    torch.testing.assert_close(cycle[0].running_mean, reference.running_mean)
    assert not torch.allclose(cycle[1].running_mean, reference.running_mean)
    with torch.no_grad():
        cycle.weight.fill_(2.0)
    cycle.eval()
    torch.testing.assert_close(cycle(first), cycle[0](first) * 2)
    assert cycle._pos == 1


class TestSingleProcessSync:
    @pytest.mark.parametrize("stats_mode", ["", "N"])
    def test_naive_sync_equals_batch_norm_in_training(self, stats_mode):
        torch.manual_seed(0)
        naive, bn = NaiveSyncBatchNorm(4, stats_mode=stats_mode), nn.BatchNorm2d(4)
        naive.load_state_dict(_random_bn(4).state_dict())
        bn.load_state_dict(naive.state_dict())
        for _ in range(3):
            x = torch.randn(3, 4, 5, 5, requires_grad=True) * 2 + 1
            torch.testing.assert_close(naive(x), bn(x))
        torch.testing.assert_close(naive.state_dict(), bn.state_dict())
        naive.eval(), bn.eval()
        torch.testing.assert_close(naive(x), bn(x))

    def test_naive_sync_bad_stats_mode(self):
        with pytest.raises(ValueError, match="stats_mode"):
            NaiveSyncBatchNorm(4, stats_mode="HW")

    @pytest.mark.parametrize("name", ["SyncBN", "nnSyncBN"])
    def test_sync_bn_without_process_group_is_batch_norm(self, name):
        sync, bn = get_norm(name, 4), nn.BatchNorm2d(4)
        bn.load_state_dict(sync.state_dict())
        x = torch.randn(3, 4, 5, 5)
        torch.testing.assert_close(sync(x), bn(x))
        torch.testing.assert_close(sync.state_dict(), bn.state_dict())

    def test_sync_bn_with_single_process_group_on_cpu(self, tmp_path):
        dist.init_process_group(
            "gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1
        )
        try:
            sync, bn = get_norm("SyncBN", 4), nn.BatchNorm2d(4)
            x = torch.randn(3, 4, 5, 5)
            torch.testing.assert_close(sync(x), bn(x))
            naive = get_norm("naiveSyncBN", 4)
            torch.testing.assert_close(naive(x), bn(x))
            # torch's own refuses CPU input as soon as a process group exists.
            with pytest.raises(ValueError, match="GPU"):
                nn.SyncBatchNorm(4)(x)
        finally:
            dist.destroy_process_group()


# --- Two processes (gloo on CPU): synced statistics equal those of the whole batch. ---

_WORLD = 2
_SPLITS = {"equal": (2, 2), "unequal": (3, 1), "empty": (4, 0)}


def _whole_batch_reference(x, loss_weight, momentum, unbiased_running_var):
    """Output, input gradient and running stats of BatchNorm2d over the whole batch."""
    bn = nn.BatchNorm2d(x.shape[1], momentum=momentum).double()
    x = x.clone().requires_grad_(True)
    y = bn(x)
    (grad,) = torch.autograd.grad((y * loss_weight).sum(), x)
    running_var = bn.running_var
    if not unbiased_running_var:
        running_var = (1 - momentum) + momentum * x.detach().var(dim=(0, 2, 3), unbiased=False)
    return y.detach(), grad, bn.running_mean, running_var


def _check_rank(rank, make_norm, split, unbiased_running_var):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 6, dtype=torch.float64) * 2 + 1
    loss_weight = torch.randn_like(x)
    start = sum(split[:rank])
    local = slice(start, start + split[rank])
    y_ref, grad_ref, mean_ref, var_ref = _whole_batch_reference(x, loss_weight, 0.1, unbiased_running_var)

    norm = make_norm().double().train()
    x_local = x[local].clone().requires_grad_(True)
    y = norm(x_local)
    (grad,) = torch.autograd.grad((y * loss_weight[local]).sum(), x_local, allow_unused=False)
    torch.testing.assert_close(y, y_ref[local])
    torch.testing.assert_close(grad, grad_ref[local])
    torch.testing.assert_close(norm.running_mean, mean_ref)
    torch.testing.assert_close(norm.running_var, var_ref)


def _two_process_worker(rank, store_path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, _WORLD), rank=rank, world_size=_WORLD)
    try:
        cases = [
            (lambda: NaiveSyncBatchNorm(3), "equal", False),
            (lambda: NaiveSyncBatchNorm(3, stats_mode="N"), "equal", False),
            (lambda: NaiveSyncBatchNorm(3, stats_mode="N"), "unequal", False),
            (lambda: NaiveSyncBatchNorm(3, stats_mode="N"), "empty", False),
            (lambda: SyncBatchNorm(3), "unequal", True),
            (lambda: SyncBatchNorm(3), "empty", True),
        ]
        for make_norm, split, unbiased in cases:
            _check_rank(rank, make_norm, _SPLITS[split], unbiased)
        # Refused before any communication, so no rank waits on another.
        with pytest.raises(ValueError, match="empty batch"):
            NaiveSyncBatchNorm(3)(torch.zeros(0, 3, 2, 2))
    finally:
        dist.destroy_process_group()


def test_two_process_sync_equals_whole_batch(tmp_path):
    store_path = str(tmp_path / "store")
    mp.spawn(_two_process_worker, args=(store_path,), nprocs=_WORLD, join=True)
