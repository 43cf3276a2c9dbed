"""A small synthetic stand-in for MSSL: person-like figures seen by 9 ground and 6 sky cameras.

    python -m datasets.synthetic_mssl OUT_DIR [--train-ids 60] [--test-ids 40] [--images-per-view 10] [--seed 0]

Writes OUT_DIR/{bounding_box_train,query,bounding_box_test} with MSSL file names. Each identity has its
own clothes (colours, pattern), build and accessories. Ground cameras see a front/back/side view at
about 128x64 px in front of walls and streets; sky cameras see a foreshortened top-down view (big head
and shoulders, short legs), smaller and blurrier, over asphalt, grass or paving. Cameras differ in colour
cast, brightness, blur and noise, and images get position/scale jitter and occluders, so matching across
views is clearly harder than within a view. The output is a deterministic function of the arguments.
"""
from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from utils.errors import UserError, exit_on_user_error

from .mssl import GROUND_CAMERAS, SKY_CAMERAS

SPLITS = ('bounding_box_train', 'query', 'bounding_box_test')
JPEG_QUALITY = 90
SUPERSAMPLE = 2  # draw at twice the size, then downsample: smooth edges without antialiased drawing
GROUND_SIZE = (64, 128)  # (width, height)
SKY_SIZE = (48, 64)

# (name, rgb, weight): dark colours are common, as in real street clothing, so identities collide often.
CLOTHES_COLOURS = [
    ('black', (30, 30, 34), 3.0), ('charcoal', (72, 72, 78), 2.0), ('grey', (135, 135, 140), 2.0),
    ('white', (228, 228, 222), 2.0), ('navy', (34, 44, 92), 2.0), ('blue', (52, 92, 172), 1.0),
    ('light blue', (132, 172, 216), 1.0), ('red', (182, 36, 42), 1.0), ('maroon', (112, 30, 42), 1.0),
    ('green', (50, 122, 62), 1.0), ('olive', (112, 110, 58), 1.0), ('yellow', (222, 192, 62), 1.0),
    ('orange', (226, 122, 42), 0.7), ('pink', (226, 150, 172), 0.7), ('purple', (112, 62, 142), 0.7),
    ('brown', (122, 82, 50), 1.0), ('beige', (202, 182, 142), 1.0),
]
TROUSER_COLOURS = [
    ('black', (28, 28, 32), 3.0), ('charcoal', (70, 70, 76), 1.5), ('denim', (58, 80, 122), 3.0),
    ('navy', (34, 42, 80), 1.0), ('grey', (128, 128, 132), 1.0), ('beige', (196, 176, 138), 1.0),
    ('brown', (110, 76, 48), 0.7), ('olive', (100, 100, 56), 0.7), ('white', (222, 222, 216), 0.3),
]
SKIN_TONES = [(236, 200, 172), (222, 178, 142), (196, 148, 110), (160, 112, 80), (112, 76, 52)]
HAIR_COLOURS = [(24, 20, 18), (52, 36, 26), (96, 66, 40), (150, 116, 72), (200, 170, 110), (140, 140, 140)]
PATTERNS = ('plain', 'hstripes', 'vstripes', 'checks')
PATTERN_WEIGHTS = (0.5, 0.2, 0.1, 0.2)
GROUND_BACKGROUNDS = ('brick', 'wall', 'street', 'shopfront')
SKY_BACKGROUNDS = ('asphalt', 'grass', 'paving', 'dirt')

RGB = tuple[int, int, int]


@dataclass
class Identity:
    pid: int
    shirt: RGB
    shirt_alt: RGB
    pattern: str
    long_sleeves: bool
    trousers: RGB
    shorts: bool
    skin: RGB
    hair: RGB
    long_hair: bool
    hat: RGB | None
    bag: str  # 'none', 'backpack' or 'shoulder'
    bag_colour: RGB
    shoes: RGB
    width: float
    height: float


@dataclass
class CameraStyle:
    camera: int
    sky: bool
    size: tuple[int, int]
    background: str
    bg_colours: tuple[RGB, RGB]
    cast: tuple[float, float, float]
    brightness: float
    blur: float
    noise: float
    sun: tuple[float, float]  # shadow offset direction (sky cameras)


def _pick(rng: np.random.Generator, table: list) -> RGB:
    weights = np.array([entry[2] for entry in table])
    return table[int(rng.choice(len(table), p=weights / weights.sum()))][1]


def _jitter(rng: np.random.Generator, colour: RGB, amount: int) -> RGB:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _sample_identity(rng: np.random.Generator, pid: int) -> Identity:
    shirt = _jitter(rng, _pick(rng, CLOTHES_COLOURS), 14)
    shirt_alt = shirt
    while shirt_alt == shirt or sum(abs(a - b) for a, b in zip(shirt, shirt_alt)) < 120:
        shirt_alt = _jitter(rng, _pick(rng, CLOTHES_COLOURS), 14)
    return Identity(
        pid=pid,
        shirt=shirt,
        shirt_alt=shirt_alt,
        pattern=PATTERNS[int(rng.choice(len(PATTERNS), p=PATTERN_WEIGHTS))],
        long_sleeves=bool(rng.random() < 0.5),
        trousers=_jitter(rng, _pick(rng, TROUSER_COLOURS), 12),
        shorts=bool(rng.random() < 0.2),
        skin=_jitter(rng, SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], 8),
        hair=_jitter(rng, HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))], 8),
        long_hair=bool(rng.random() < 0.3),
        hat=_jitter(rng, _pick(rng, CLOTHES_COLOURS), 14) if rng.random() < 0.2 else None,
        bag=('none', 'backpack', 'shoulder')[int(rng.choice(3, p=(0.45, 0.35, 0.2)))],
        bag_colour=_jitter(rng, _pick(rng, CLOTHES_COLOURS), 14),
        shoes=_jitter(rng, ((30, 30, 30), (230, 230, 230), (90, 60, 40), (60, 60, 70))[int(rng.integers(4))], 10),
        width=float(rng.uniform(0.85, 1.2)),
        height=float(rng.uniform(0.9, 1.06)),
    )


def _sample_cameras(rng: np.random.Generator) -> dict[int, CameraStyle]:
    cameras = {}
    for camera in range(1, 16):
        sky = camera in SKY_CAMERAS
        base_w, base_h = SKY_SIZE if sky else GROUND_SIZE
        scale = rng.uniform(0.85, 1.1)
        kinds = SKY_BACKGROUNDS if sky else GROUND_BACKGROUNDS
        background = kinds[int(rng.integers(len(kinds)))]
        cameras[camera] = CameraStyle(
            camera=camera,
            sky=sky,
            size=(int(round(base_w * scale)), int(round(base_h * scale))),
            background=background,
            bg_colours=(_background_colour(rng, background), _background_colour(rng, background)),
            cast=tuple(float(v) for v in rng.uniform(0.88, 1.12, size=3)),
            brightness=float(rng.uniform(0.8, 1.15)),
            blur=float(rng.uniform(0.5, 1.1) if sky else rng.uniform(0.0, 0.5)),
            noise=float(rng.uniform(3, 8) if sky else rng.uniform(1.5, 5)),
            sun=(float(rng.uniform(-0.5, 0.5)), float(rng.uniform(0.05, 0.3))),
        )
    return cameras


def _background_colour(rng: np.random.Generator, kind: str) -> RGB:
    base = {
        'brick': (150, 80, 60), 'wall': (190, 185, 170), 'street': (120, 120, 125), 'shopfront': (90, 110, 130),
        'asphalt': (85, 85, 90), 'grass': (80, 125, 60), 'paving': (165, 155, 140), 'dirt': (150, 120, 85),
    }[kind]
    scale = rng.uniform(0.75, 1.2)  # mostly brightness: strong per-channel jitter gives pastel walls
    return _jitter(rng, tuple(int(min(255, c * scale)) for c in base), 14)


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cell: int) -> np.ndarray:
    """Low-frequency noise in [0, 1], shape (height, width)."""
    coarse = rng.random((height // cell + 2, width // cell + 2)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode='F').resize((width, height), Image.BILINEAR))


def _background(rng: np.random.Generator, cam: CameraStyle, width: int, height: int) -> np.ndarray:
    c1 = np.array(_jitter(rng, cam.bg_colours[0], 10), dtype=np.float32)
    c2 = np.array(cam.bg_colours[1], dtype=np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    kind = cam.background
    if kind == 'brick':
        row_h, brick_w = 9, 20
        oy, ox = rng.integers(row_h), rng.integers(brick_w)
        row = ((yy + oy) // row_h).astype(int)
        col = ((xx + ox + (row % 2) * brick_w / 2) // brick_w).astype(int)
        shade = (np.sin(row * 12.9898 + col * 78.233) * 43758.5453) % 1.0  # per-brick variation
        img = c1 * (0.8 + 0.35 * shade[..., None])
        mortar = (((yy + oy) % row_h) < 1) | (((xx + ox + (row % 2) * brick_w / 2) % brick_w) < 1)
        img[mortar] = c2 * 0.5 + 100
    elif kind == 'wall':
        img = c1 * (0.85 + 0.25 * _smooth_noise(rng, width, height, 24)[..., None])
        x0, y0 = rng.integers(-width // 2, width), rng.integers(-height // 2, height // 2)
        window = (xx >= x0) & (xx < x0 + width // 2) & (yy >= y0) & (yy < y0 + height // 3)
        img[window] = c2 * 0.45
    elif kind == 'street':
        horizon = int(height * rng.uniform(0.45, 0.65))
        img = np.where((yy < horizon)[..., None], c1[None, None], c2[None, None] * 0.8).astype(np.float32)
        img *= 0.9 + 0.2 * _smooth_noise(rng, width, height, 16)[..., None]
        kerb = (yy >= horizon) & (yy < horizon + 3)
        img[kerb] = 200
    elif kind == 'shopfront':
        panel_w = int(rng.integers(14, 30))
        panel = ((xx + rng.integers(panel_w)) // panel_w).astype(int) % 2
        img = np.where(panel[..., None] == 1, c1[None, None], c2[None, None]).astype(np.float32)
        img *= 0.85 + 0.3 * _smooth_noise(rng, width, height, 10)[..., None]
    elif kind == 'asphalt':
        img = c1 * (0.85 + 0.3 * rng.random((height, width, 1), dtype=np.float32))
        if rng.random() < 0.6:
            angle = rng.uniform(0, np.pi)
            dist = (xx - width / 2) * np.cos(angle) + (yy - height / 2) * np.sin(angle) - rng.uniform(-0.5, 0.5) * width
            img[np.abs(dist) < 2.5] = 215
    elif kind == 'grass':
        blotch = _smooth_noise(rng, width, height, 6)
        img = c1 * (0.7 + 0.5 * blotch[..., None]) * (0.9 + 0.2 * rng.random((height, width, 1), dtype=np.float32))
    elif kind == 'paving':
        tile = int(rng.integers(10, 18))
        oy, ox = rng.integers(tile), rng.integers(tile)
        joint = (((yy + oy) % tile) < 1) | (((xx + ox) % tile) < 1)
        img = c1 * (0.9 + 0.15 * rng.random((height, width, 1), dtype=np.float32))
        img[joint] = c2 * 0.6
    else:  # dirt
        img = c1 * (0.75 + 0.45 * _smooth_noise(rng, width, height, 4)[..., None])
    return np.clip(img, 0, 255)


def _pattern_image(ident: Identity, width: int, height: int, period: float, phase: float) -> Image.Image:
    if ident.pattern == 'plain':
        return Image.new('RGB', (width, height), ident.shirt)
    half = max(period, 2.0) / 2
    rows = ((np.arange(height)[:, None] + phase) // half).astype(int) % 2 == 1
    cols = ((np.arange(width)[None, :] + phase) // half).astype(int) % 2 == 1
    alt = {'hstripes': np.broadcast_to(rows, (height, width)),
           'vstripes': np.broadcast_to(cols, (height, width)), 'checks': rows ^ cols}[ident.pattern]
    base = np.where(alt[..., None], np.array(ident.shirt_alt, np.uint8), np.array(ident.shirt, np.uint8))
    return Image.fromarray(base)


def _paint_torso(layer: Image.Image, ident: Identity, shapes: list, period: float, phase: float) -> None:
    """Fill the given polygons/ellipses with the identity's shirt pattern."""
    mask = Image.new('L', layer.size, 0)
    draw = ImageDraw.Draw(mask)
    for kind, coords in shapes:
        if kind == 'polygon':
            draw.polygon(coords, fill=255)
        else:
            draw.ellipse(coords, fill=255)
    layer.paste(_pattern_image(ident, *layer.size, period, phase), (0, 0), mask)


def _draw_ground_person(rng: np.random.Generator, ident: Identity, width: int, height: int) -> Image.Image:
    layer = Image.new('RGBA', (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    pose = ('front', 'back', 'side')[int(rng.integers(3))]
    ph = height * 0.86 * ident.height * rng.uniform(0.9, 1.05)
    top = (height - ph) * rng.uniform(0.2, 0.8)
    cx = width / 2 + rng.uniform(-0.07, 0.07) * width
    facing = 1 if rng.random() < 0.5 else -1

    def y(frac: float) -> float:
        return top + frac * ph

    side = pose == 'side'
    tw = ph * (0.17 if side else 0.27) * ident.width
    aw, lw = 0.075 * ph, 0.11 * ph * ident.width
    bag_w = 0.1 * ph
    if side and ident.bag == 'backpack':
        bx = cx - facing * (tw / 2 + bag_w * 0.8)
        draw.rounded_rectangle([min(bx, bx + facing * bag_w), y(0.18), max(bx, bx + facing * bag_w), y(0.44)],
                               radius=3, fill=ident.bag_colour)
    if ident.long_hair and pose == 'front':
        draw.rectangle([cx - 0.07 * ph, y(0.06), cx + 0.07 * ph, y(0.24)], fill=ident.hair)
    # legs and shoes
    if side:
        stride = rng.uniform(0.03, 0.12) * ph
        knee_t = (0.68 - 0.5) / 0.45
        for foot in (-stride, stride):
            leg = [(cx - lw / 2, y(0.5)), (cx + lw / 2, y(0.5)), (cx + foot + lw / 2, y(0.95)),
                   (cx + foot - lw / 2, y(0.95))]
            draw.polygon(leg, fill=ident.trousers)
            if ident.shorts:
                knee_x = cx + foot * knee_t
                draw.polygon([(knee_x - lw / 2, y(0.68)), (knee_x + lw / 2, y(0.68)), leg[2], leg[3]], fill=ident.skin)
            draw.ellipse([cx + foot - lw / 2, y(0.94), cx + foot + lw / 2 + facing * 0.04 * ph, y(0.99)],
                         fill=ident.shoes)
    else:
        gap = 0.015 * ph
        for x0 in (cx - gap - lw, cx + gap):
            draw.rectangle([x0, y(0.5), x0 + lw, y(0.95)], fill=ident.trousers)
            if ident.shorts:
                draw.rectangle([x0 + lw * 0.1, y(0.68), x0 + lw * 0.9, y(0.95)], fill=ident.skin)
            draw.ellipse([x0 - 0.01 * ph, y(0.94), x0 + lw + 0.01 * ph, y(0.99)], fill=ident.shoes)
    # arms, torso with the shirt pattern (sleeves included), and the near arm of a side view on top
    period, phase = rng.uniform(0.045, 0.06) * ph, rng.uniform(0, 10)
    sleeve_end = 0.49 if ident.long_sleeves else 0.28
    shapes = [('polygon', [(cx - tw / 2, y(0.16)), (cx + tw / 2, y(0.16)), (cx + tw * 0.44, y(0.52)),
                           (cx - tw * 0.44, y(0.52))])]
    if not side:
        for x0 in (cx - tw / 2 - aw, cx + tw / 2):
            draw.rectangle([x0, y(0.17), x0 + aw, y(0.49)], fill=ident.skin)
            draw.ellipse([x0, y(0.48), x0 + aw, y(0.54)], fill=ident.skin)
            shapes.append(('polygon', [(x0, y(0.165)), (x0 + aw, y(0.165)), (x0 + aw, y(sleeve_end)),
                                       (x0, y(sleeve_end))]))
    _paint_torso(layer, ident, shapes, period, phase)
    if side:
        swing = rng.uniform(-0.06, 0.06) * ph
        arm_x = cx + swing * 0.3
        arm = [(arm_x - aw / 2, y(0.17)), (arm_x + aw / 2, y(0.17)), (arm_x + swing + aw / 2, y(0.49)),
               (arm_x + swing - aw / 2, y(0.49))]
        draw.polygon(arm, fill=ident.skin)
        t = (sleeve_end - 0.17) / 0.32
        draw.polygon([arm[0], arm[1], (arm[1][0] + swing * t, y(sleeve_end)), (arm[0][0] + swing * t, y(sleeve_end))],
                     fill=ident.shirt)
        draw.ellipse([arm_x + swing - aw / 2, y(0.48), arm_x + swing + aw / 2, y(0.54)], fill=ident.skin)
    # neck and head
    draw.rectangle([cx - 0.03 * ph, y(0.12), cx + 0.03 * ph, y(0.17)], fill=ident.skin)
    head = [cx - 0.06 * ph, y(0.0), cx + 0.06 * ph, y(0.145)]
    draw.ellipse(head, fill=ident.hair)
    if pose == 'front':
        draw.ellipse([head[0] + 0.01 * ph, head[1] + 0.03 * ph, head[2] - 0.01 * ph, head[3]], fill=ident.skin)
    elif side:
        fx = cx + facing * 0.015 * ph
        draw.ellipse([fx - 0.045 * ph, head[1] + 0.03 * ph, fx + 0.045 * ph, head[3]], fill=ident.skin)
    if ident.long_hair and pose == 'back':
        draw.rectangle([cx - 0.065 * ph, y(0.06), cx + 0.065 * ph, y(0.25)], fill=ident.hair)
    # accessories
    if ident.bag == 'backpack' and pose == 'back':
        draw.rounded_rectangle([cx - tw * 0.38, y(0.19), cx + tw * 0.38, y(0.44)], radius=4, fill=ident.bag_colour)
    elif ident.bag == 'backpack' and pose == 'front':
        for sign in (-1, 1):
            draw.line([(cx + sign * tw * 0.3, y(0.165)), (cx + sign * tw * 0.3, y(0.38))],
                      fill=ident.bag_colour, width=max(2, int(0.02 * ph)))
    elif ident.bag == 'shoulder':
        bag_side = facing if side else (1 if rng.random() < 0.5 else -1)
        draw.line([(cx - bag_side * tw * 0.4, y(0.17)), (cx + bag_side * tw * 0.5, y(0.45))],
                  fill=ident.bag_colour, width=max(2, int(0.015 * ph)))
        bx = cx + bag_side * (tw / 2 + (0 if side else aw * 0.3))
        draw.rounded_rectangle([bx - bag_w * 0.6, y(0.42), bx + bag_w * 0.6, y(0.55)], radius=3, fill=ident.bag_colour)
    if ident.hat is not None:
        draw.chord([head[0] - 0.005 * ph, head[1] - 0.01 * ph, head[2] + 0.005 * ph, head[3] - 0.02 * ph],
                   180, 360, fill=ident.hat)
        brim_x = cx + (facing * 0.05 * ph if side else 0)
        draw.rectangle([brim_x - 0.07 * ph, y(0.055), brim_x + 0.07 * ph, y(0.07)], fill=ident.hat)
    return layer


def _draw_sky_person(rng: np.random.Generator, ident: Identity, width: int, height: int,
                     sun: tuple[float, float]) -> tuple[Image.Image, Image.Image]:
    """The figure and its shadow, seen obliquely from above: big head and shoulders, short legs."""
    layer = Image.new('RGBA', (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    fh = height * 0.88 * ident.height * rng.uniform(0.88, 1.06)
    top = (height - fh) * rng.uniform(0.2, 0.8)
    cx = width / 2 + rng.uniform(-0.06, 0.06) * width
    from_front = rng.random() < 0.5
    bw = fh * 0.5 * ident.width  # shoulder width seen from above

    def y(frac: float) -> float:
        return top + frac * fh

    shadow = Image.new('RGBA', (width, height), (0, 0, 0, 0))
    sx, sy = sun[0] * fh, sun[1] * fh
    ImageDraw.Draw(shadow).ellipse([cx - bw * 0.5 + sx, y(0.3) + sy, cx + bw * 0.5 + sx, y(1.0) + sy],
                                   fill=(0, 0, 0, 90))
    lw = fh * 0.14 * ident.width
    for sign in (-1, 1):
        x0 = cx + sign * 0.01 * fh if sign > 0 else cx - 0.01 * fh - lw
        draw.rectangle([x0, y(0.6), x0 + lw, y(0.86)], fill=ident.skin if ident.shorts else ident.trousers)
        if ident.shorts:
            draw.rectangle([x0, y(0.6), x0 + lw, y(0.68)], fill=ident.trousers)
        draw.ellipse([x0 - 0.01 * fh, y(0.83), x0 + lw + 0.01 * fh, y(0.9)], fill=ident.shoes)
    period, phase = rng.uniform(0.07, 0.1) * fh, rng.uniform(0, 10)
    shapes = [('ellipse', [cx - bw / 2, y(0.2), cx + bw / 2, y(0.48)]),
              ('polygon', [(cx - bw * 0.42, y(0.32)), (cx + bw * 0.42, y(0.32)), (cx + bw * 0.34, y(0.64)),
                           (cx - bw * 0.34, y(0.64))])]
    aw = 0.13 * fh
    for sign in (-1, 1):
        ax = cx + sign * (bw / 2 - aw * 0.2)
        draw.ellipse([ax - aw / 2, y(0.4), ax + aw / 2, y(0.62)], fill=ident.skin)
        end = 0.62 if ident.long_sleeves else 0.46
        shapes.append(('ellipse', [ax - aw / 2, y(0.26), ax + aw / 2, y(end)]))
    _paint_torso(layer, ident, shapes, period, phase)
    if ident.bag == 'backpack' and not from_front:
        draw.rounded_rectangle([cx - bw * 0.3, y(0.3), cx + bw * 0.3, y(0.56)], radius=3, fill=ident.bag_colour)
    elif ident.bag == 'shoulder':
        sign = 1 if rng.random() < 0.5 else -1
        draw.line([(cx - sign * bw * 0.3, y(0.25)), (cx + sign * bw * 0.35, y(0.5))],
                  fill=ident.bag_colour, width=max(2, int(0.025 * fh)))
        bx = cx + sign * bw * 0.5
        draw.rounded_rectangle([bx - 0.08 * fh, y(0.46), bx + 0.08 * fh, y(0.6)], radius=2, fill=ident.bag_colour)
    elif ident.bag == 'backpack':
        for sign in (-1, 1):
            draw.line([(cx + sign * bw * 0.25, y(0.26)), (cx + sign * bw * 0.25, y(0.45))],
                      fill=ident.bag_colour, width=max(2, int(0.025 * fh)))
    hr = 0.14 * fh
    head_box = [cx - hr, y(0.2) - hr, cx + hr, y(0.2) + hr]
    if ident.long_hair:
        draw.ellipse([cx - hr * 1.1, y(0.2) - hr * 0.9, cx + hr * 1.1, y(0.2) + hr * 1.5], fill=ident.hair)
    draw.ellipse(head_box, fill=ident.hair)
    if from_front:
        draw.chord([cx - hr * 0.8, y(0.2) - hr * 0.2, cx + hr * 0.8, y(0.2) + hr * 1.0], 0, 180, fill=ident.skin)
    if ident.hat is not None:
        draw.ellipse([cx - hr * 1.05, y(0.2) - hr * 1.05, cx + hr * 1.05, y(0.2) + hr * 0.85], fill=ident.hat)
        brim_y = y(0.2) + (hr * 0.7 if from_front else -hr * 0.9)
        draw.ellipse([cx - hr * 0.7, brim_y - hr * 0.3, cx + hr * 0.7, brim_y + hr * 0.4], fill=ident.hat)
    angle = float(rng.uniform(-30, 30))
    center = (cx, y(0.5))
    return (layer.rotate(angle, resample=Image.BILINEAR, center=center),
            shadow.rotate(angle, resample=Image.BILINEAR, center=center))


def _occlude(rng: np.random.Generator, img: np.ndarray, sky: bool) -> None:
    """Paint an occluder (a pole, a passer-by's body, a tree crown) over part of the image, in place."""
    h, w = img.shape[:2]
    colour = np.array(_jitter(rng, _pick(rng, CLOTHES_COLOURS), 20), dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    kind = int(rng.integers(3))
    if kind == 0:  # vertical pole or post
        x0 = int(rng.integers(0, w - 3))
        mask = (xx >= x0) & (xx < x0 + int(rng.integers(3, max(4, w // 5))))
        colour = np.array((90, 90, 95), dtype=np.float32) * rng.uniform(0.6, 1.4)
    elif kind == 1:  # part of another body entering from a side or the bottom
        if rng.random() < 0.5:
            x0 = int(w * rng.uniform(0.65, 0.85)) if rng.random() < 0.5 else 0
            mask = (xx >= x0) & (xx < x0 + int(w * rng.uniform(0.15, 0.35)))
            mask &= yy >= int(h * rng.uniform(0.0, 0.4))
        else:
            mask = yy >= int(h * rng.uniform(0.7, 0.85))
    else:  # blob: tree crown from above / bush in front
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.15, 0.3) * h, rng.uniform(0.2, 0.4) * w
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        colour = np.array((60, 110, 50) if sky else (70, 100, 55), dtype=np.float32) * rng.uniform(0.7, 1.2)
    texture = 0.85 + 0.3 * rng.random((h, w, 1), dtype=np.float32)
    img[mask] = (colour * texture)[mask]


def _render(rng: np.random.Generator, ident: Identity, cam: CameraStyle,
            person_mask: list | None = None) -> Image.Image:
    """The identity as the camera sees it; `person_mask`, when given, receives the [H, W] bool mask of
    where the figure is drawn (its shadow and any occluder aside)."""
    width, height = cam.size
    big_w, big_h = width * SUPERSAMPLE, height * SUPERSAMPLE
    canvas = Image.fromarray(_background(rng, cam, width, height).astype(np.uint8)).convert('RGBA')
    if cam.sky:
        person, shadow = _draw_sky_person(rng, ident, big_w, big_h, cam.sun)
        canvas.alpha_composite(shadow.resize((width, height), Image.BILINEAR))
    else:
        person = _draw_ground_person(rng, ident, big_w, big_h)
    person = person.resize((width, height), Image.LANCZOS)
    if person_mask is not None:
        person_mask.append(np.asarray(person.getchannel('A')) >= 128)
    canvas.alpha_composite(person)
    img = canvas.convert('RGB')
    blur = cam.blur * rng.uniform(0.6, 1.4)
    if blur > 0.15:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    arr = np.asarray(img, dtype=np.float32).copy()
    if rng.random() < 0.2:
        _occlude(rng, arr, cam.sky)
    light = cam.brightness * rng.uniform(0.9, 1.1)
    cast = np.array(cam.cast, dtype=np.float32) * rng.uniform(0.95, 1.05, size=3).astype(np.float32)
    arr = arr * light * cast + rng.normal(0.0, cam.noise, size=arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


def people_with_masks(count: int, seed: int = 0) -> list[tuple[Image.Image, np.ndarray, int]]:
    """`count` rendered people, alternately seen by a ground and a sky camera, each with the bool mask of
    where the figure is drawn and the camera number: for checking what a model looks at."""
    rng = np.random.default_rng(seed)
    cameras = _sample_cameras(rng)
    people = []
    for index in range(count):
        view_cameras = SKY_CAMERAS if index % 2 else GROUND_CAMERAS
        camera = view_cameras[index // 2 % len(view_cameras)]
        mask: list = []
        image = _render(rng, _sample_identity(rng, index + 1), cameras[camera], mask)
        people.append((image, mask[0], camera))
    return people


def _file_name(pid: int, time: str, group: int, members: list[int], camera: int, index: int) -> str:
    people = '_'.join(f'p{m:04d}' for m in members)
    return f'{pid:04d}_{time}_{len(members)}_G{group:03d}_c{camera:02d}_{people}_{index:02d}.jpg'


def _groups(rng: np.random.Generator, pids: list[int], first_group: int) -> list[tuple[int, str, list[int]]]:
    """Split pids into walking groups of 1-3 people, each with a group number and a capture time."""
    groups, i, number = [], 0, first_group
    while i < len(pids):
        size = int(rng.choice(3, p=(0.4, 0.35, 0.25))) + 1
        hour = int(rng.integers(7, 12)) if rng.random() < 0.5 else int(rng.integers(1, 6))
        suffix = 'am' if hour >= 7 else 'pm'
        groups.append((number, f'{hour:02d}{int(rng.integers(60)):02d}{suffix}', pids[i:i + size]))
        i += size
        number += 1
    return groups


def _check_output_dir(out_dir: str, overwrite: bool) -> None:
    for split in SPLITS:
        path = os.path.join(out_dir, split)
        if os.path.isdir(path) and os.listdir(path):
            if not overwrite:
                raise UserError(f"'{path}' already holds files; pass --overwrite (overwrite=True) to replace "
                                f"the synthetic MSSL folders, or choose an empty OUT_DIR")
            shutil.rmtree(path)


def generate(out_dir: str, train_ids: int = 60, test_ids: int = 40, images_per_view: int = 10, seed: int = 0,
             overwrite: bool = False) -> dict:
    """Write a synthetic MSSL dataset under `out_dir` and return a summary of what was written.

    Every identity gets `images_per_view` images from the ground and as many from the sky, spread over
    two to four cameras of each view. Train pids are 1..train_ids, test pids follow. Per test identity,
    one sky and one ground image go to `query` and the rest to `bounding_box_test`.
    """
    if train_ids < 1 or test_ids < 1:
        raise UserError(f"--train-ids and --test-ids must be at least 1, got {train_ids} and {test_ids}")
    if images_per_view < 2:
        raise UserError(f"--images-per-view must be at least 2 (one query and one gallery image per view), "
                        f"got {images_per_view}")
    _check_output_dir(out_dir, overwrite)
    for split in SPLITS:
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
    rng = np.random.default_rng(seed)
    cameras = _sample_cameras(rng)
    train_pids = list(range(1, train_ids + 1))
    test_pids = list(range(train_ids + 1, train_ids + test_ids + 1))
    train_groups = _groups(rng, train_pids, 1)
    test_groups = _groups(rng, test_pids, len(train_groups) + 1)
    counts = {split: {'ground': 0, 'sky': 0} for split in SPLITS}
    for is_test, groups in ((False, train_groups), (True, test_groups)):
        for group, time, members in groups:
            for pid in members:
                ident = _sample_identity(rng, pid)
                for view, view_cameras in (('ground', GROUND_CAMERAS), ('sky', SKY_CAMERAS)):
                    num_cams = min(len(view_cameras), int(rng.integers(2, 5)), images_per_view)
                    seen_by = sorted(int(c) for c in rng.choice(view_cameras, size=num_cams, replace=False))
                    shots = [seen_by[i % num_cams] for i in range(images_per_view)]
                    query_shot = int(rng.integers(images_per_view)) if is_test else -1
                    per_camera: dict[int, int] = {}
                    for shot, camera in enumerate(shots):
                        index = per_camera.get(camera, 0)
                        per_camera[camera] = index + 1
                        split = ('query' if shot == query_shot else 'bounding_box_test') if is_test \
                            else 'bounding_box_train'
                        img = _render(rng, ident, cameras[camera])
                        path = os.path.join(out_dir, split, _file_name(pid, time, group, members, camera, index))
                        img.save(path, format='JPEG', quality=JPEG_QUALITY)
                        counts[split][view] += 1
    summary = {
        'out_dir': out_dir, 'seed': seed, 'train_ids': train_ids, 'test_ids': test_ids,
        'images_per_view': images_per_view,
        'train_images': sum(counts['bounding_box_train'].values()),
        'query_images': sum(counts['query'].values()),
        'gallery_images': sum(counts['bounding_box_test'].values()),
        'images_by_view': counts,
    }
    return summary


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description='Write a small synthetic MSSL-style dataset.')
    parser.add_argument('out_dir', help='folder to write bounding_box_train, query and bounding_box_test into')
    parser.add_argument('--train-ids', type=int, default=60)
    parser.add_argument('--test-ids', type=int, default=40)
    parser.add_argument('--images-per-view', type=int, default=10)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--overwrite', action='store_true', help='replace existing split folders in OUT_DIR')
    args = parser.parse_args(argv)
    s = generate(args.out_dir, args.train_ids, args.test_ids, args.images_per_view, args.seed, args.overwrite)
    print(f"synthetic MSSL (seed {s['seed']}) in {s['out_dir']}: "
          f"train {s['train_ids']} ids / {s['train_images']} images, "
          f"test {s['test_ids']} ids: query {s['query_images']} + gallery {s['gallery_images']} images "
          f"({s['images_per_view']} per identity and view; 9 ground + 6 sky cameras)")


if __name__ == '__main__':
    main()
