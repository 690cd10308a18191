"""Rasterising primitives shared by every environment family, bit-exact with Memory Gym.

Every image here is stored the way the observations are: indexed `[x, y, channel]` (column
first), uint8 RGB. Batched screens are `(num_envs, width, height, 3)`.

What lives here:

* number rules: `rhaz` (rectangle centre rounding), `rotate_vector` (the exact quarter-turn-aware
  vector rotation used for agent hands and spotlights);
* shapes: `disk_offsets` (the midpoint filled-circle span scan), `ring_offsets`, rectangle fill
  and 1-px border, the integer alpha blend;
* `Sprite`: a colour-keyed bitmap; `blit` draws one onto one image (clipped);
* `SpriteSheet`: sprites of one size packed for batched drawing; `SpriteSheet.blit` draws one
  sprite per env at per-env positions with a single fancy-indexed assignment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

# ---- numbers -----------------------------------------------------------------------------


def rhaz(value):
    """Round half away from zero (how a float centre becomes an integer rectangle position)."""
    value = np.asarray(value, dtype=np.float64)
    rounded = np.sign(value) * np.floor(np.abs(value) + 0.5)
    return rounded.astype(np.int64) if rounded.ndim else int(rounded)


_QUARTER = math.pi / 2
_EPSILON = 1e-6


def rotate_vector(x: float, y: float, degrees: float) -> tuple[float, float]:
    """Rotate (x, y) by `degrees` (clockwise on screen, y down), exactly as the reference does.

    Multiples of 90 degrees are exact swaps/negations; any other angle goes through libm's
    sin/cos on doubles (kept scalar: `math` matches the reference bit for bit).
    """
    angle = math.fmod(degrees * math.pi / 180.0, 2 * math.pi)
    if angle < 0:
        angle += 2 * math.pi
    if math.fmod(angle + _EPSILON, _QUARTER) < 2 * _EPSILON:
        quarter = int((angle + _EPSILON) / _QUARTER)
        if quarter in (0, 4):
            return x, y
        if quarter == 1:
            return -y, x
        if quarter == 2:
            return -x, -y
        return y, -x
    cos, sin = math.cos(angle), math.sin(angle)
    return cos * x - sin * y, sin * x + cos * y


# ---- shapes ------------------------------------------------------------------------------


def disk_offsets(radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel offsets (dx, dy) of a filled circle of integer `radius` around an integer centre.

    The midpoint span scan of the reference: the disk covers columns -r..r-1 and rows -r..r-1
    (a 2r x 2r disk centred half a pixel up-left of the given centre). Radius < 1 is empty.
    """
    radius = int(radius)
    mask = np.zeros((2 * max(radius, 0), 2 * max(radius, 0)), dtype=bool)
    if radius < 1:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)

    def span(x0: int, x1: int, row: int) -> None:
        x0, x1 = min(x0, x1), max(x0, x1)
        mask[x0 + radius : x1 + radius + 1, row + radius] = True

    f, ddx, ddy, x, y = 1 - radius, 0, -2 * radius, 0, radius
    while x < y:
        if f >= 0:
            y -= 1
            ddy += 2
            f += ddy
        x += 1
        ddx += 2
        f += ddx + 1
        if f >= 0:
            span(-x, x - 1, y - 1)
            span(-x, x - 1, -y)
        span(-y, y - 1, x - 1)
        span(-y, y - 1, -x)
    dx, dy = np.nonzero(mask)
    return dx - radius, dy - radius


def offsets_mask(dx: np.ndarray, dy: np.ndarray, size: int, centre: int) -> np.ndarray:
    """The `(size, size)` boolean `[x, y]` mask of pixel offsets placed around `centre`."""
    mask = np.zeros((size, size), dtype=bool)
    x, y = dx + centre, dy + centre
    inside = (x >= 0) & (x < size) & (y >= 0) & (y < size)
    mask[x[inside], y[inside]] = True
    return mask


def ring_offsets(radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Offsets of the 1-px outline of `disk_offsets(radius)`: its pixels with a 4-neighbour outside it."""
    size = 2 * radius + 2
    disk = offsets_mask(*disk_offsets(radius), size, radius + 1)
    padded = np.pad(disk, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    dx, dy = np.nonzero(disk & ~interior)
    return dx - radius - 1, dy - radius - 1


def fill_rect(image: np.ndarray, x: int, y: int, w: int, h: int, colour) -> None:
    """Fill [x, x+w) x [y, y+h) of an `[x, y, c]` image (or batch `[..., x, y, c]`), clipped."""
    width, height = image.shape[-3], image.shape[-2]
    x0, y0 = max(int(x), 0), max(int(y), 0)
    x1, y1 = min(int(x) + int(w), width), min(int(y) + int(h), height)
    if x0 < x1 and y0 < y1:
        image[..., x0:x1, y0:y1, :] = colour


def rect_border(image: np.ndarray, x: int, y: int, w: int, h: int, colour) -> None:
    """Draw the 1-px outline on the outermost pixels of the rectangle [x, x+w) x [y, y+h)."""
    fill_rect(image, x, y, w, 1, colour)
    fill_rect(image, x, y + h - 1, w, 1, colour)
    fill_rect(image, x, y, 1, h, colour)
    fill_rect(image, x + w - 1, y, 1, h, colour)


def alpha_blend(dst: np.ndarray, src, alpha) -> np.ndarray:
    """`dst + trunc((src - dst) * A / 255)` per channel, A clamped to 0..255 (integer, exact).

    `alpha` may be an array broadcasting against `dst` (e.g. one value per env).
    """
    alpha = np.clip(np.asarray(alpha, dtype=np.int32), 0, 255)
    diff = (np.asarray(src, dtype=np.int32) - dst.astype(np.int32)) * alpha
    step = np.where(diff >= 0, diff // 255, -((-diff) // 255))
    return (dst + step).astype(np.uint8)


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Pixel replication of an `(h, w, c)` image by an integer `factor` along both axes."""
    return np.ascontiguousarray(image).repeat(factor, axis=0).repeat(factor, axis=1)


# ---- sprites -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sprite:
    """A colour-keyed bitmap in `[x, y]` layout: `colour` (w, h, 3) uint8, `mask` (w, h) opaque pixels."""

    colour: np.ndarray
    mask: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        return self.mask.shape

    @classmethod
    def from_art(cls, rows: list[str], palette: dict[str, tuple[int, int, int]], size=None, at=(0, 0)) -> Sprite:
        """Build from string art (one string per screen row, '.' transparent), placed at column/row
        `at` inside a surface of `size` (w, h) (default: the art's own size)."""
        art_h, art_w = len(rows), max(len(row) for row in rows)
        w, h = size or (art_w, art_h)
        colour = np.zeros((w, h, 3), dtype=np.uint8)
        mask = np.zeros((w, h), dtype=bool)
        for row_index, row in enumerate(rows):
            for col_index, char in enumerate(row):
                if char != ".":
                    x, y = at[0] + col_index, at[1] + row_index
                    colour[x, y] = palette[char]
                    mask[x, y] = True
        return cls(colour, mask)


def blit(image: np.ndarray, sprite: Sprite, x: int, y: int) -> None:
    """Copy the opaque pixels of `sprite` with its top-left at (x, y) onto an `[x, y, c]` image, clipped."""
    width, height = image.shape[0], image.shape[1]
    w, h = sprite.size
    x0, y0 = max(int(x), 0), max(int(y), 0)
    x1, y1 = min(int(x) + w, width), min(int(y) + h, height)
    if x0 >= x1 or y0 >= y1:
        return
    sx, sy = x0 - int(x), y0 - int(y)
    region = image[x0:x1, y0:y1]
    mask = sprite.mask[sx : sx + x1 - x0, sy : sy + y1 - y0]
    region[mask] = sprite.colour[sx : sx + x1 - x0, sy : sy + y1 - y0][mask]


PIXEL = np.dtype((np.void, 3))
"""An RGB pixel as one opaque 3-byte element (for scatters into `[..., x, y, 3]` uint8 images)."""


@numba.njit(cache=True)
def _draw_unclipped(screen_bytes, corner, index, offsets, counts, colour):
    """Write sprite `index[k]`'s own pixels at flat pixel `corner[k]` onward, in order, so a later sprite covers an
    earlier one; the padding (a repeat of a sprite's first pixel) is skipped. Every index is checked: numba does not."""
    for k in range(corner.shape[0]):
        sprite, start = index[k], corner[k]
        if sprite < 0 or sprite >= counts.shape[0]:
            raise IndexError("sprite index out of range")
        for p in range(counts[sprite]):
            at = (start + offsets[sprite, p]) * 3
            if at < 0 or at + 2 >= screen_bytes.shape[0]:
                raise IndexError("sprite pixel outside the screens")
            screen_bytes[at] = colour[sprite, p, 0]
            screen_bytes[at + 1] = colour[sprite, p, 1]
            screen_bytes[at + 2] = colour[sprite, p, 2]


class SpriteSheet:
    """Sprites packed for batched drawing: each sprite's opaque pixels as (dx, dy, colour) lists.

    Lists shorter than the longest repeat their first pixel, so padding entries rewrite an
    already drawn pixel with its own colour and no per-pixel mask is needed when nothing clips.
    Fully transparent sprites draw nothing.
    """

    def __init__(self, sprites: list[Sprite]):
        counts = [int(s.mask.sum()) for s in sprites]
        longest = max(max(counts), 1)
        k = len(sprites)
        self.dx = np.zeros((k, longest), dtype=np.int64)
        self.dy = np.zeros((k, longest), dtype=np.int64)
        self.colour = np.zeros((k, longest, 3), dtype=np.uint8)
        self.counts = np.array(counts, dtype=np.int64)  # each sprite's own pixels, before the padding
        self.empty = self.counts == 0
        self.any_empty = bool(self.empty.any())
        for index, sprite in enumerate(sprites):
            xs, ys = np.nonzero(sprite.mask)
            if len(xs) == 0:
                continue
            pad = longest - len(xs)
            self.dx[index] = np.concatenate([xs, np.full(pad, xs[0])])
            self.dy[index] = np.concatenate([ys, np.full(pad, ys[0])])
            self.colour[index] = sprite.colour[self.dx[index], self.dy[index]]
        # One 3-byte element per pixel: a scatter of whole pixels is several times faster than
        # a scatter of (pixel, channel) rows.
        self.pixels = self.colour.view(PIXEL)[..., 0]
        # Opaque bounding box of all sprites, to tell cheaply that no placement clips.
        self.low = int(min(self.dx.min(), self.dy.min()))
        self.high = int(max(self.dx.max(), self.dy.max()))
        self._flat_cache: dict[int, np.ndarray] = {}

    def _flat_offsets(self, height: int) -> np.ndarray:
        if height not in self._flat_cache:
            self._flat_cache[height] = self.dx * height + self.dy
        return self._flat_cache[height]

    def blit(self, screens: np.ndarray, env: np.ndarray, index: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        """Draw sprite `index[k]` with top-left (`x[k]`, `y[k]`) onto `screens[env[k]]`, for every k.

        `screens` is a C-contiguous `(num_envs, width, height, 3)` batch; sprites are clipped
        to the screen.
        """
        env, index, x, y = np.asarray(env), np.asarray(index), np.asarray(x), np.asarray(y)
        if self.any_empty:
            keep = ~self.empty[index]
            env, index, x, y = env[keep], index[keep], x[keep], y[keep]
        if len(env) == 0:
            return
        if not screens.flags.c_contiguous:  # drawn through a flat view, which only a contiguous batch has
            raise ValueError("screens must be a C-contiguous (num_envs, width, height, 3) array")
        n, width, height = screens.shape[:3]
        corner = ((env * width + x) * height + y).astype(np.int64, copy=False)  # each sprite's top-left pixel, flat
        index = index.astype(np.int64, copy=False)
        low, high = min(x.min(), y.min()) + self.low, max(x.max(), y.max()) + self.high
        if low < 0 or high >= min(width, height):
            # Some sprites clip: mask their pixels individually (drawn first), the others go as they are.
            clipped = (np.minimum(x, y) + self.low < 0) | (np.maximum(x, y) + self.high >= min(width, height))
            rows, whole = np.flatnonzero(clipped), np.flatnonzero(~clipped)
            px = x[rows, None] + self.dx[index[rows]]
            py = y[rows, None] + self.dy[index[rows]]
            keep = (px >= 0) & (px < width) & (py >= 0) & (py < height)
            flat = corner[rows, None] + self._flat_offsets(height)[index[rows]]
            flat_screens = screens.reshape(n * width * height, 3).view(PIXEL)[:, 0]
            flat_screens[flat[keep]] = self.pixels[index[rows]][keep]
            corner, index = corner[whole], index[whole]
        _draw_unclipped(screens.reshape(-1), corner, index, self._flat_offsets(height), self.counts, self.colour)
