"""Normalization layers and `get_norm`, the one place a norm name from a config becomes a module.

Names accepted by `get_norm` (Detectron2's): "BN", "SyncBN", "FrozenBN", "GN", "nnSyncBN",
"naiveSyncBN", "naiveSyncBN_N", "LN"; "" or None mean no norm.
"""
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from .wrappers import BatchNorm2d

__all__ = [
    "CycleBatchNormList",
    "FrozenBatchNorm2d",
    "LayerNorm",
    "NaiveSyncBatchNorm",
    "SyncBatchNorm",
    "get_norm",
]


def _world_size(group=None) -> int:
    """Processes in `group` (default: all); 1 when torch.distributed is not in use."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


class _AllReduceSum(torch.autograd.Function):
    """Sum of a tensor over the processes of a group, with the gradient summed the same way
    (each process's loss depends on every process's statistics)."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total

    @staticmethod
    def backward(ctx, grad):
        total = grad.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return total, None


def _channel_view(vector: torch.Tensor, ndim: int) -> torch.Tensor:
    """(C,) -> (1, C, 1, ..., 1), broadcastable against an `ndim`-d (N, C, ...) input."""
    return vector.reshape([1, -1] + [1] * (ndim - 2))


def _reduce_dims(x: torch.Tensor):
    return [0] + list(range(2, x.dim()))


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine terms: y = (x - mean) / sqrt(var + eps) * w + b.

    All four tensors are buffers (`weight`, `bias`, `running_mean`, `running_var`), so no
    optimizer touches them and checkpoints keep Detectron2's names. They start as the identity:
    `running_var` is 1 - eps, so that var + eps is 1. Caffe2-converted checkpoints
    carry only `weight` and `bias` (the statistics already folded in); loading one leaves the
    statistics at the identity.

    Input (N, C, ...) -> output of the same shape and dtype; N may be 0.
    """

    # Version 2 added running_mean / running_var; version 3 puts var + eps (not var) under the
    # square root. State dicts older than version 2 get identity statistics on load; version-2
    # ones load unchanged, as in current Detectron2.
    _version = 3

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def _scale_and_shift(self):
        """The fused affine transform, y = x * scale + shift; both (C,) float tensors."""
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return scale, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self._scale_and_shift()
        scale = _channel_view(scale, x.dim()).to(x.dtype)
        shift = _channel_view(shift, x.dim()).to(x.dtype)
        return torch.addcmul(shift, x, scale)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        version = local_metadata.get("version", None)
        if version is None or version < 2:
            # Old and Caffe2-converted checkpoints have no statistics: fill in the identity
            # rather than reporting them missing.
            state_dict.setdefault(prefix + "running_mean", torch.zeros_like(self.running_mean))
            state_dict.setdefault(prefix + "running_var", torch.ones_like(self.running_var))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, eps={self.eps}"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Replace every BatchNorm2d / SyncBatchNorm (subclasses included) in `module` by a
        FrozenBatchNorm2d with the same statistics, affine terms and eps.

        Returns:
            a new FrozenBatchNorm2d if `module` itself is a batch norm; otherwise `module`,
            whose children were converted in place.
        """
        if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            return cls._from_batch_norm(module)
        for name, child in module.named_children():
            new_child = cls.convert_frozen_batchnorm(child)
            if new_child is not child:
                module.add_module(name, new_child)
        return module

    @classmethod
    def _from_batch_norm(cls, bn: nn.Module) -> "FrozenBatchNorm2d":
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(
                f"convert_frozen_batchnorm: {bn} has track_running_stats=False, so it has no "
                f"statistics to freeze"
            )
        frozen = cls(bn.num_features, eps=bn.eps)
        frozen.to(device=bn.running_mean.device, dtype=bn.running_mean.dtype)
        frozen.running_mean = bn.running_mean.detach().clone()
        frozen.running_var = bn.running_var.detach().clone()
        if bn.affine:
            frozen.weight = bn.weight.detach().clone()
            frozen.bias = bn.bias.detach().clone()
        return frozen


class LayerNorm(nn.Module):
    """Layer norm over the channel dimension of an (N, C, H, W) tensor, separately at every
    position (the ConvNeXt variant), with a per-channel affine transform."""

    def __init__(self, normalized_shape: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.normalized_shape = (normalized_shape,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).square().mean(1, keepdim=True)
        normalized = (x - mean) * torch.rsqrt(var + self.eps)
        return normalized * _channel_view(self.weight, x.dim()) + _channel_view(self.bias, x.dim())


def _momentum_for_this_step(bn: nn.modules.batchnorm._BatchNorm):
    """The running-average factor of this training step, counting the step as torch's
    batch norms do (momentum None means a cumulative average)."""
    if not bn.track_running_stats:
        return 0.0
    bn.num_batches_tracked.add_(1)
    if bn.momentum is None:
        return 1.0 / float(bn.num_batches_tracked.item())
    return bn.momentum


def _apply_global_stats(bn, x, mean, var, momentum, var_correction=1.0):
    """Normalize `x` (N, C, ...) with the (C,) batch statistics `mean` and biased `var`, and
    move `bn`'s running averages towards them (the variance times `var_correction`)."""
    scale = torch.rsqrt(var + bn.eps)
    if bn.affine:
        scale = bn.weight * scale
    shift = (bn.bias if bn.affine else 0.0) - mean * scale
    if bn.track_running_stats:
        with torch.no_grad():
            bn.running_mean += momentum * (mean.detach() - bn.running_mean)
            bn.running_var += momentum * (var.detach() * var_correction - bn.running_var)
    return x * _channel_view(scale, x.dim()) + _channel_view(shift, x.dim())


class NaiveSyncBatchNorm(BatchNorm2d):
    """BatchNorm2d whose training statistics are averaged over all processes with all_reduce.

    One process (or eval mode) is plain BatchNorm2d. Over several processes the per-process
    mean and mean of squares are combined:

    - stats_mode "": each process weighs the same. That is the exact batch statistic when
      every process has the same (N, H, W); a process with N = 0 is an error.
    - stats_mode "N": each process weighs by its N. Exact when every process has the same
      (H, W); processes with N = 0 are allowed (if all have 0, running stats do not move).

    The running variance is the biased batch variance (BatchNorm2d uses the unbiased one).
    Half inputs are reduced in float32.
    """

    def __init__(self, *args, stats_mode: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        if stats_mode not in ("", "N"):
            raise ValueError(f'NaiveSyncBatchNorm: stats_mode must be "" or "N", got {stats_mode!r}')
        self._stats_mode = stats_mode

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or _world_size() == 1:
            return super().forward(input)
        x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
        if self._stats_mode == "":
            mean, var, momentum = self._equal_weight_stats(x)
        else:
            mean, var, momentum = self._batch_weighted_stats(x)
        return _apply_global_stats(self, x, mean, var, momentum).to(input.dtype)

    def _equal_weight_stats(self, x):
        if x.shape[0] == 0:
            raise ValueError(
                'NaiveSyncBatchNorm(stats_mode=""): got an empty batch; use stats_mode="N" '
                '(get_norm("naiveSyncBN_N")) when a process may have no samples'
            )
        dims = _reduce_dims(x)
        moments = torch.cat([x.mean(dims), x.square().mean(dims)])
        moments = _AllReduceSum.apply(moments, None) / _world_size()
        mean, mean_sq = moments.split(x.shape[1])
        return mean, mean_sq - mean * mean, _momentum_for_this_step(self)

    def _batch_weighted_stats(self, x):
        batch, channels = x.shape[0], x.shape[1]
        if batch == 0:
            # Zeros that still depend on x, so that backward reaches this process's input.
            weighted = x.sum() * 0.0 + x.new_zeros(2 * channels + 1)
        else:
            dims = _reduce_dims(x)
            ones = x.new_ones(1)
            weighted = torch.cat([x.mean(dims), x.square().mean(dims), ones]) * batch
        weighted = _AllReduceSum.apply(weighted, None)
        total_batch = weighted[-1].detach()
        mean, mean_sq = (weighted[:-1] / total_batch.clamp(min=1)).split(channels)
        # A zero total batch must leave the running statistics where they are.
        momentum = total_batch.clamp(max=1) * _momentum_for_this_step(self)
        return mean, mean_sq - mean * mean, momentum


class SyncBatchNorm(nn.SyncBatchNorm):
    """`torch.nn.SyncBatchNorm` that also runs where torch's refuses to.

    - No process group, or a group of one process (CPU or GPU): exactly BatchNorm2d
      (torch's raises for a CPU input as soon as any process group exists).
    - Several processes, input on an accelerator: torch's SyncBatchNorm, unchanged.
    - Several processes, input on CPU (gloo): the statistics are summed over the group with
      all_reduce, each process weighing by its number of elements, which gives the same
      exact batch statistics as torch's GPU path (running variance unbiased, likewise).

    The state dict is BatchNorm2d's, and `isinstance(m, nn.SyncBatchNorm)` holds.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        world_size = _world_size(self.process_group)
        if world_size == 1:
            return nn.modules.batchnorm._BatchNorm.forward(self, input)
        if self.training and input.device.type == "cpu":
            return self._cpu_sync_forward(input)
        return super().forward(input)

    def _cpu_sync_forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
        channels, count = x.shape[1], x.numel() // max(x.shape[1], 1)
        dims = _reduce_dims(x)
        sums = torch.cat([x.sum(dims), x.square().sum(dims), x.new_full((1,), float(count))])
        sums = _AllReduceSum.apply(sums, self.process_group)
        total = sums[-1].detach()
        if total.item() <= 1:
            raise ValueError(
                f"SyncBatchNorm: expected more than 1 value per channel over all processes, got "
                f"{int(total.item())}"
            )
        mean, mean_sq = (sums[:-1] / total).split(channels)
        # torch keeps the unbiased variance as running_var.
        unbiased = total / (total - 1)
        out = _apply_global_stats(
            self, x, mean, mean_sq - mean * mean, _momentum_for_this_step(self), unbiased
        )
        return out.to(input.dtype)


class CycleBatchNormList(nn.ModuleList):
    """`length` batch norms used in turn, one per forward call, sharing one affine transform.

    For a norm that sees several input domains (e.g. feature levels) in a fixed cycle, each
    domain keeps its own test-time statistics. The caller must call it a multiple of `length`
    times per iteration, or the statistics get mixed.
    """

    def __init__(self, length: int, bn_class=nn.BatchNorm2d, **kwargs):
        """
        Args:
            length: number of batch norms in the cycle.
            bn_class: their class; `kwargs` (e.g. num_features) go to it.
        """
        self._affine = kwargs.pop("affine", True)
        super().__init__([bn_class(**kwargs, affine=False) for _ in range(length)])
        if self._affine:
            channels = self[0].num_features
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
        self._pos = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self[self._pos](x)
        self._pos = (self._pos + 1) % len(self)
        if not self._affine:
            return out
        return out * _channel_view(self.weight, x.dim()) + _channel_view(self.bias, x.dim())

    def extra_repr(self) -> str:
        return f"affine={self._affine}"


_NORMS = {
    "BN": BatchNorm2d,
    "SyncBN": SyncBatchNorm,
    "FrozenBN": FrozenBatchNorm2d,
    # 32 groups, as in the GroupNorm paper and every Detectron2 GN config.
    "GN": lambda channels: nn.GroupNorm(32, channels),
    "nnSyncBN": nn.SyncBatchNorm,
    "naiveSyncBN": NaiveSyncBatchNorm,
    "naiveSyncBN_N": lambda channels: NaiveSyncBatchNorm(channels, stats_mode="N"),
    "LN": LayerNorm,
}


def get_norm(norm, out_channels: int) -> Optional[nn.Module]:
    """The normalization layer for `out_channels` channels.

    Args:
        norm (str or callable or None): one of "BN", "SyncBN", "FrozenBN", "GN" (32 groups),
            "nnSyncBN" (torch's SyncBatchNorm as is), "naiveSyncBN", "naiveSyncBN_N" (see
            NaiveSyncBatchNorm), "LN" (channel LayerNorm); or a callable taking the channel
            count and returning a module; "" or None for no normalization.
        out_channels (int): channels of the tensor to normalize.

    Returns:
        nn.Module or None
    """
    if norm is None or norm == "":
        return None
    if isinstance(norm, str):
        if norm not in _NORMS:
            raise ValueError(f"get_norm: unknown norm {norm!r}; expected one of {sorted(_NORMS)}, '' or None")
        norm = _NORMS[norm]
    elif not callable(norm):
        raise TypeError(
            f"get_norm: norm must be a name, a callable or None, got {type(norm).__name__}"
        )
    return norm(out_channels)
