"""Sprite bitmaps shared by the environment families, as `raster.Sprite`s in `[x, y]` layout.

* `agent_sprites(scale)`: the eight agent sprites (rotation 0, 45, ..., 315) drawn from the
  reference recipe (body disk, two rotated hand disks), for any agent scale.
* Fixed bitmaps (command arrows, exit, fall-off cross, default coin) as string art: one string per
  screen row, `.` transparent, letters looked up in `PALETTE`. The rotated arrows come from the
  reference's line and rotation rasteriser, whose exact pixels are simplest to keep as data.
* `tile(size, fill, border)`: a square with a 1-px border (Mortar Mayhem tiles, path tiles).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from envs.raster import Sprite, disk_offsets, fill_rect, offsets_mask, rect_border, ring_offsets, rotate_vector

PALETTE = {
    "W": (255, 255, 255),
    "o": (255, 165, 0),
    "k": (0, 0, 0),
    "g": (55, 55, 55),
    "G": (48, 141, 70),
    "R": (255, 0, 0),
}


def _art(size: tuple[int, int], at: tuple[int, int], *rows: str) -> Sprite:
    return Sprite.from_art(list(rows), PALETTE, size=size, at=at)


# ---- agent ---------------------------------------------------------------------------------

BODY_COLOUR = (250, 204, 153)
HAND_COLOUR = (250, 250, 250)
HAND_OUTLINE_COLOUR = (50, 50, 50)
AGENT_ROTATIONS = tuple(range(0, 360, 45))


def agent_radius(scale: float) -> int:
    """Body (and collision) radius of the agent at `scale`."""
    return int(25 * scale)


@lru_cache(maxsize=None)
def agent_sprites(scale: float) -> tuple[Sprite, ...]:
    """The agent facing rotation 0, 45, ..., 315 (0 = up, 90 = left, 180 = down, 270 = right).

    The surface is square, `2R + hand radius + 14` px; hands are placed by rotating their
    upright offsets from the centre by `360 - rotation` degrees and truncating to pixels.
    """
    radius = agent_radius(scale)
    hand_dx, hand_dy = int(18 * scale), int(12 * scale)
    hand_radius, outline = int(10 * scale), int(3 * scale)
    size = 2 * radius + hand_radius + 14
    centre = size // 2
    hands = [(centre - hand_dx, hand_dy + 7), (centre + hand_dx, hand_dy + 7)]
    hand_disk = disk_offsets(hand_radius)
    if outline == 0:
        # An outline of width 0 is a filled circle: the hands are solid outline colour.
        hand_rim = hand_disk
    elif outline == 1:
        hand_rim = ring_offsets(hand_radius)
    else:
        inner = offsets_mask(*disk_offsets(hand_radius - outline), 2 * hand_radius + 2, hand_radius + 1)
        outer = offsets_mask(*hand_disk, 2 * hand_radius + 2, hand_radius + 1)
        dx, dy = np.nonzero(outer & ~inner)
        hand_rim = (dx - hand_radius - 1, dy - hand_radius - 1)

    sprites = []
    for rotation in AGENT_ROTATIONS:
        colour = np.zeros((size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), dtype=bool)

        def paint(offsets, cx: int, cy: int, rgb) -> None:
            x, y = offsets[0] + cx, offsets[1] + cy
            inside = (x >= 0) & (x < size) & (y >= 0) & (y < size)
            colour[x[inside], y[inside]] = rgb
            mask[x[inside], y[inside]] = True

        paint(disk_offsets(radius), centre, centre, BODY_COLOUR)
        angle = 360 - rotation
        for hx, hy in hands:
            rx, ry = rotate_vector(float(hx - centre), float(hy - centre), angle)
            cx, cy = math.trunc(rx + centre), math.trunc(ry + centre)
            paint(hand_disk, cx, cy, HAND_COLOUR)
            paint(hand_rim, cx, cy, HAND_OUTLINE_COLOUR)
        sprites.append(Sprite(colour, mask))
    return tuple(sprites)


# ---- tiles ---------------------------------------------------------------------------------


def tile(size: int, fill, border) -> Sprite:
    """An opaque `size` x `size` square filled with `fill` and a 1-px `border`."""
    colour = np.zeros((size, size, 3), dtype=np.uint8)
    fill_rect(colour, 0, 0, size, size, fill)
    rect_border(colour, 0, 0, size, size, border)
    return Sprite(colour, np.ones((size, size), dtype=bool))


# ---- fixed bitmaps -------------------------------------------------------------------------

COMMAND_RIGHT = _art(
    (22, 22),
    (0, 0),
    "..........WW..........",
    "...........WW.........",
    "............WW........",
    ".............WW.......",
    "..............WW......",
    "...............WW.....",
    "................WW....",
    ".................WW...",
    "..................WW..",
    "...................WW.",
    "WWWWWWWWWWWWWWWWWWWWWW",
    "WWWWWWWWWWWWWWWWWWWWW.",
    "..................WW..",
    ".................WW...",
    "................WW....",
    "...............WW.....",
    "..............WW......",
    ".............WW.......",
    "............WW........",
    "...........WW.........",
    "..........WW..........",
)
COMMAND_DOWN = _art(
    (22, 22),
    (1, 0),
    ".........WW..........",
    ".........WW..........",
    ".........WW..........",
    ".........WW..........",
    ".........WW..........",
    ".........WW..........",
    ".........WW..........",
    ".........WW..........",
    ".........WW..........",
    ".........WW..........",
    "W........WW.........W",
    "WW.......WW........WW",
    ".WW......WW.......WW.",
    "..WW.....WW......WW..",
    "...WW....WW.....WW...",
    "....WW...WW....WW....",
    ".....WW..WW...WW.....",
    "......WW.WW..WW......",
    ".......WWWW.WW.......",
    "........WWWWW........",
    ".........WWW.........",
    "..........W..........",
)
COMMAND_LEFT = _art(
    (22, 22),
    (0, 1),
    "..........WW..........",
    ".........WW...........",
    "........WW............",
    ".......WW.............",
    "......WW..............",
    ".....WW...............",
    "....WW................",
    "...WW.................",
    "..WW..................",
    ".WWWWWWWWWWWWWWWWWWWWW",
    "WWWWWWWWWWWWWWWWWWWWWW",
    ".WW...................",
    "..WW..................",
    "...WW.................",
    "....WW................",
    ".....WW...............",
    "......WW..............",
    ".......WW.............",
    "........WW............",
    ".........WW...........",
    "..........WW..........",
)
COMMAND_UP = _art(
    (22, 22),
    (0, 0),
    "..........W..........",
    ".........WWW.........",
    "........WWWWW........",
    ".......WW.WWWW.......",
    "......WW..WW.WW......",
    ".....WW...WW..WW.....",
    "....WW....WW...WW....",
    "...WW.....WW....WW...",
    "..WW......WW.....WW..",
    ".WW.......WW......WW.",
    "WW........WW.......WW",
    "W.........WW........W",
    "..........WW.........",
    "..........WW.........",
    "..........WW.........",
    "..........WW.........",
    "..........WW.........",
    "..........WW.........",
    "..........WW.........",
    "..........WW.........",
    "..........WW.........",
    "..........WW.........",
)
COMMAND_STAY = _art(
    (22, 22),
    (0, 0),
    ".......WWWWWW.......",
    ".....WWWWWWWWWW.....",
    "....WWWW....WWWW....",
    "...WWW........WWW...",
    "..WW............WW..",
    ".WWW............WWW.",
    ".WW..............WW.",
    "WWW..............WWW",
    "WW................WW",
    "WWWWWWWWWWWWWWWWWWWW",
    "WWWWWWWWWWWWWWWWWWWW",
    "WW................WW",
    "WWW..............WWW",
    ".WW..............WW.",
    ".WWW............WWW.",
    "..WW............WW..",
    "...WWW........WWW...",
    "....WWWW....WWWW....",
    ".....WWWWWWWWWW.....",
    ".......WWWWWW.......",
)
COMMAND_RIGHT_DOWN = _art(
    (31, 31),
    (7, 7),
    ".W.............W.",
    "WWW.............W",
    ".WWW...........WW",
    "..WWW..........W.",
    "...WWW.........WW",
    "....WWW........WW",
    ".....WWW.......W.",
    "......WWW......WW",
    ".......WWW......W",
    "........WWW....WW",
    ".........WWW...W.",
    "..........WWW..WW",
    "...........WWW.WW",
    "............WWWW.",
    ".W..WW..W..WWWWWW",
    ".WWWWWWWWWWWWWWWW",
)
COMMAND_RIGHT_UP = _art(
    (31, 31),
    (7, 7),
    ".WW.WW.WWW.WW.WW",
    "W.WWWWWW.WWWWWWW",
    ".............WWW",
    "............WWWW",
    "...........WWWWW",
    "..........WWW.WW",
    ".........WWW...W",
    "........WWW....W",
    ".......WWW....WW",
    "......WWW......W",
    ".....WWW.......W",
    "....WWW.......WW",
    "...WWW........WW",
    "..WWW..........W",
    ".WWW...........W",
    "WWW...........WW",
    ".W..............",
)
COMMAND_LEFT_DOWN = _art(
    (31, 31),
    (8, 7),
    "..............W.",
    "WW...........WWW",
    "WW..........WWW.",
    "W..........WWW..",
    "WW........WWW...",
    "WW.......WWW....",
    "W.......WWW.....",
    "W......WWW......",
    "WW....WWW.......",
    "W....WWW........",
    "W...WWW.........",
    "WW.WWW..........",
    "WWWWW...........",
    "WWWW............",
    "WWW.............",
    "WWWWWWW.WWWWWWWW",
    "WW.WW.WWW.WW.WW.",
)
COMMAND_LEFT_UP = _art(
    (31, 31),
    (7, 8),
    "WWWWWWWWWWWWWWWW.",
    "WWWWWW..W..WW.WW.",
    ".WWWW............",
    "WW.WWW...........",
    "WW..WWW..........",
    ".W...WWW.........",
    "WW....WWW........",
    "W......WWW.......",
    "WW......WWW......",
    ".W.......WWW.....",
    "WW........WWW....",
    "WW.........WWW...",
    ".W..........WWW..",
    "WW...........WWW.",
    "WW............WWW",
    ".W.............W.",
)
COIN = _art(
    (12, 12),
    (2, 2),
    "..oo..",
    ".oooo.",
    "oooooo",
    "oooooo",
    ".oooo.",
    "..oo..",
)
EXIT_CLOSED = _art(
    (10, 10),
    (0, 0),
    "...kkkk...",
    "..kggggk..",
    ".kggggggk.",
    "kggggggggk",
    "kggggggggk",
    "kggggggggk",
    "kggggggggk",
    "kggggggggk",
    "kggggggggk",
    "kkkkkkkkkk",
)
EXIT_OPEN = _art(
    (10, 10),
    (0, 0),
    "...kkkk...",
    "..kGGGGk..",
    ".kGGGGGGk.",
    "kGGGGGGGGk",
    "kGGGGGGGGk",
    "kGGGGGGGGk",
    "kGGGGGGGGk",
    "kGGGGGGGGk",
    "kGGGGGGGGk",
    "kkkkkkkkkk",
)
FALLOFF_CROSS = _art(
    (10, 10),
    (0, 0),
    "RR......RR",
    "RRR....RRR",
    ".RRR..RRR.",
    "..RRRRRR..",
    "...RRRR...",
    "...RRRR...",
    "..RRRRRR..",
    ".RRR..RRR.",
    "RRR....RRR",
    "RR......RR",
)

COMMAND_SPRITES = {
    "right": COMMAND_RIGHT,
    "down": COMMAND_DOWN,
    "left": COMMAND_LEFT,
    "up": COMMAND_UP,
    "stay": COMMAND_STAY,
    "right_down": COMMAND_RIGHT_DOWN,
    "right_up": COMMAND_RIGHT_UP,
    "left_down": COMMAND_LEFT_DOWN,
    "left_up": COMMAND_LEFT_UP,
}
"""Command arrows by name; all are drawn with their top-left at the same screen point."""
