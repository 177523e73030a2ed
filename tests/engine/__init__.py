"""Small fixtures shared by the engine tests: a linear model that returns a loss dict, and
a loader cycling over fixed batches (everything seeded with its own generator)."""
import torch
from torch import nn


class TinyRegressor(nn.Module):
    """y_hat = W x + b; training returns {"loss_mse": mean squared error, "loss_abs": mean |error| / 10}.

    Batches are (x [N, 4], y [N, 1]) tuples; both losses are means over the batch.
    """

    def __init__(self, seed: int = 0, with_bn: bool = False):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.linear = nn.Linear(4, 1)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(1, 4, generator=gen))
            self.linear.bias.copy_(torch.randn(1, generator=gen))
        self.bn = nn.BatchNorm1d(4) if with_bn else None

    def forward(self, batch):
        x, y = batch
        if self.bn is not None:
            x = self.bn(x)
        error = self.linear(x) - y
        return {"loss_mse": error.square().mean(), "loss_abs": error.abs().mean() / 10}


def make_batches(num_batches: int, batch_size: int, seed: int = 1):
    """A list of `num_batches` (x [batch_size, 4], y [batch_size, 1]) tuples."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_batches, batch_size, 4, generator=gen)
    y = torch.randn(num_batches, batch_size, 1, generator=gen)
    return [(x[i], y[i]) for i in range(num_batches)]


class CyclingLoader:
    """Iterates over `batches` again and again; each iter() starts from the first."""

    def __init__(self, batches):
        self.batches = list(batches)

    def __iter__(self):
        while True:
            yield from self.batches


def split_batches(batches, parts: int):
    """Each batch cut into `parts` consecutive smaller batches (for accumulation / DDP)."""
    return [(x.chunk(parts)[i], y.chunk(parts)[i])
            for x, y in batches for i in range(parts)]
