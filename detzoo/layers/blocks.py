"""CNN building blocks shared by backbones and heads."""
import warnings

from torch import nn

with warnings.catch_warnings():
    # fvcore.nn scripts its focal losses at import; recent torch deprecates torch.jit.script.
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
    from fvcore.nn import weight_init

from .batch_norm import FrozenBatchNorm2d, get_norm
from .wrappers import Conv2d

__all__ = ["CNNBlockBase", "DepthwiseSeparableConv2d"]


class CNNBlockBase(nn.Module):
    """Base of a block mapping (N, in_channels, H, W) to (N, out_channels, H / stride,
    W / stride). What happens inside is up to the subclass; the three attributes let the
    builder of a network chain blocks and compute output strides without running them.

    Attributes:
        in_channels (int), out_channels (int), stride (int)
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        """Subclasses take these three arguments too, and pass them on."""
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def freeze(self) -> "CNNBlockBase":
        """Make the block untrainable: every parameter gets requires_grad=False and every
        BatchNorm / SyncBatchNorm inside becomes a FrozenBatchNorm2d. Returns the block."""
        for param in self.parameters():
            param.requires_grad = False
        FrozenBatchNorm2d.convert_frozen_batchnorm(self)
        return self


class DepthwiseSeparableConv2d(nn.Module):
    """A k x k depthwise convolution (`self.depthwise`, one filter per input channel) followed
    by a 1 x 1 convolution (`self.pointwise`). Xception puts norm and activation only after the
    second; MobileNet after both: choose with norm1/activation1 and norm2/activation2.

    Input (N, in_channels, H, W) -> (N, out_channels, H', W') with H', W' set by
    kernel_size, padding and dilation (stride 1).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size=3,
        padding=1,
        dilation=1,
        *,
        norm1=None,
        activation1=None,
        norm2=None,
        activation2=None,
    ):
        """
        Args:
            norm1, norm2 (str or callable or None): `get_norm` arguments for the two convs;
                a conv followed by a norm has no bias.
            activation1, activation2 (callable or None): Tensor -> Tensor, after each conv.
        """
        super().__init__()
        self.depthwise = Conv2d(
            in_channels,
            in_channels,
            kernel_size=kernel_size,
            padding=padding,
            dilation=dilation,
            groups=in_channels,
            bias=not norm1,
            norm=get_norm(norm1, in_channels),
            activation=activation1,
        )
        self.pointwise = Conv2d(
            in_channels,
            out_channels,
            kernel_size=1,
            bias=not norm2,
            norm=get_norm(norm2, out_channels),
            activation=activation2,
        )
        # Caffe2's MSRA initialization (He normal, fan_out), Detectron2's default.
        weight_init.c2_msra_fill(self.depthwise)
        weight_init.c2_msra_fill(self.pointwise)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))
