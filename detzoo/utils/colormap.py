"""Colors for drawing: a fixed palette of distinct, saturated colors and random picks from it."""
import colorsys

import numpy as np

__all__ = ["colormap", "random_color", "random_colors"]


def _palette(n=80):
    """n colors spread around the hue circle by the golden ratio, alternating brightness and
    saturation so neighbours in the list are easy to tell apart. RGB in [0, 1]."""
    golden = 0.618033988749895
    colors = []
    for i in range(n):
        hue = (i * golden) % 1.0
        saturation = (0.65, 0.95, 0.8)[i % 3]
        value = (0.95, 0.75, 0.85)[(i // 3) % 3]
        colors.append(colorsys.hsv_to_rgb(hue, saturation, value))
    return np.asarray(colors, dtype=np.float32)


_COLORS = _palette()


def colormap(rgb=False, maximum=255):
    """The palette as (K, 3) float32, in RGB (or BGR) order, scaled to [0, maximum]."""
    c = _COLORS * maximum
    return c if rgb else c[:, ::-1]


def random_color(rgb=False, maximum=255):
    """One color of the palette, chosen at random (numpy's global RNG)."""
    c = _COLORS[np.random.randint(0, len(_COLORS))] * maximum
    return c if rgb else c[::-1]


def random_colors(N, rgb=False, maximum=255):
    """N distinct colors of the palette (N <= palette size), in random order."""
    index = np.random.choice(len(_COLORS), N, replace=N > len(_COLORS))
    c = _COLORS[index] * maximum
    return [x if rgb else x[::-1] for x in c]
