"""Synthetic machined washers on a conveyor belt, with and without defects.

Deterministic image generator used by ``tools/build_models.py``. Each image is a function of
``(seed, split, index, defect)`` only: the random stream comes from
``numpy.random.default_rng([seed, split_id, index, defect_id])``, so any single image can be
regenerated on its own, and adding images to one split never changes another.

The scene (``WIDTH`` x ``HEIGHT``, non-square on purpose so that a client's resize to the model's
square input is exercised):

- background: a dark blue-grey belt with a vertical lighting gradient and faint fabric texture;
- part: a washer (annulus) whose centre, scale, lighting direction, gain and turning-mark phase
  are jittered per image, with a chamfer ring at the outer edge and a soft contact shadow;
- sensor noise: small Gaussian noise on luminance, rounded to 8 bits.

Defects (each returns a binary mask of the pixels it changed on the part):

- ``scratch``: a thin straight line, brighter or darker than the metal, clipped to the part;
- ``spot``: a soft elliptical brown stain (oil / rust);
- ``chip``: a bite taken out of the outer rim; the belt shows through.

Only NumPy is used here; PNG writing is the caller's job (Pillow).
"""

from __future__ import annotations

import numpy as np

WIDTH = 224
HEIGHT = 176
DEFECTS = ("scratch", "spot", "chip")
SPLITS = {"train": 1, "val": 2, "test": 3, "eval": 4}

# Nominal geometry in pixels (before jitter).
_OUTER_R = 66.0
_INNER_R = 27.0
JITTER = 3.0  # centre jitter in pixels (the part sits in a loose fixture)


def _coverage(signed_dist: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of the region ``signed_dist < 0`` (1 px linear ramp)."""
    return np.clip(0.5 - signed_dist, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid, bilinearly upsampled."""
    gh, gw = h // cell + 2, w // cell + 2
    grid = rng.uniform(-1.0, 1.0, size=(gh, gw))
    ys = np.arange(h) / cell
    xs = np.arange(w) / cell
    y0 = np.floor(ys).astype(int)
    x0 = np.floor(xs).astype(int)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def render(seed: int, split: str, index: int, defect: str | None = None):
    """Render one image.

    Returns ``(rgb, mask)``: ``rgb`` is uint8 ``[HEIGHT, WIDTH, 3]``; ``mask`` is uint8
    ``[HEIGHT, WIDTH]`` with 0/255 (all zero for good parts).
    """
    defect_id = 0 if defect is None else 1 + DEFECTS.index(defect)
    rng = np.random.default_rng([seed, SPLITS[split], index, defect_id])
    h, w = HEIGHT, WIDTH
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)

    # --- pose and lighting jitter -------------------------------------------------------
    cx = w / 2 + rng.uniform(-JITTER, JITTER)
    cy = h / 2 + rng.uniform(-JITTER, JITTER)
    scale = rng.uniform(0.97, 1.03)
    outer_r = _OUTER_R * scale
    inner_r = _INNER_R * scale
    light_dir = rng.uniform(-0.5, 0.5) + np.pi * 0.75  # light from the upper left
    gain = rng.uniform(0.92, 1.08)
    tint = 1.0 + rng.uniform(-0.02, 0.02, size=3)
    ring_phase = rng.uniform(0, 2 * np.pi, size=3)

    # --- background belt ----------------------------------------------------------------
    belt = np.array([46.0, 52.0, 62.0])
    vert = 1.0 + 0.18 * (0.5 - yy / h)
    fabric = 1.0 + 0.04 * _smooth_noise(rng, h, w, 6)
    img = belt[None, None, :] * (vert * fabric)[:, :, None]

    dx = xx - cx
    dy = yy - cy
    r = np.hypot(dx, dy)
    theta = np.arctan2(-dy, dx)

    # Contact shadow: offset, blurred disc, darkens the belt.
    rs = np.hypot(dx - 4.0, dy - 5.0)
    shadow = np.clip((outer_r + 6.0 - rs) / 10.0, 0.0, 1.0)
    img *= (1.0 - 0.45 * shadow)[:, :, None]

    # --- the washer ---------------------------------------------------------------------
    part = _coverage(r - outer_r) * (1.0 - _coverage(r - inner_r))
    metal = np.array([178.0, 174.0, 166.0]) * tint
    turning = (
        0.035 * np.sin(2 * np.pi * r / 3.1 + ring_phase[0])
        + 0.025 * np.sin(2 * np.pi * r / 7.3 + ring_phase[1])
        + 0.02 * np.sin(2 * np.pi * r / 17.0 + ring_phase[2])
    )
    shade = 1.0 + 0.16 * np.cos(theta - light_dir) * (r / outer_r)
    chamfer = np.clip((r - (outer_r - 5.0)) / 5.0, 0.0, 1.0)
    chamfer_light = 1.0 - 0.25 * chamfer + 0.35 * chamfer * np.cos(theta - light_dir)
    inner_chamfer = np.clip((inner_r + 3.0 - r) / 3.0, 0.0, 1.0)
    inner_light = 1.0 - 0.3 * inner_chamfer * np.cos(theta - light_dir)
    lum = (1.0 + turning) * shade * chamfer_light * inner_light
    metal_img = metal[None, None, :] * lum[:, :, None]

    mask = np.zeros((h, w), dtype=bool)
    if defect == "chip":
        # A bite out of the outer rim: the belt shows through, with a bright fracture edge.
        ang = rng.uniform(0, 2 * np.pi)
        br = rng.uniform(8.0, 13.0)
        bx = cx + (outer_r + br * 0.25) * np.cos(ang)
        by = cy - (outer_r + br * 0.25) * np.sin(ang)
        # Irregular outline: radius modulated by angle around the bite centre.
        phi = np.arctan2(yy - by, xx - bx)
        k = rng.uniform(0, 2 * np.pi, size=2)
        br_map = br * (1.0 + 0.18 * np.sin(3 * phi + k[0]) + 0.1 * np.sin(5 * phi + k[1]))
        d_bite = np.hypot(xx - bx, yy - by) - br_map
        bite = _coverage(d_bite)
        edge = np.clip(1.0 - np.abs(d_bite) / 1.5, 0.0, 1.0) * (1.0 - bite)
        metal_img = metal_img * (1.0 + 0.35 * edge)[:, :, None]
        # The shadow under the missing piece stays (the belt is darker there) -- realistic enough.
        mask = (bite * part) > 0.5
        part = part * (1.0 - bite)

    img = img * (1.0 - part[:, :, None]) + metal_img * part[:, :, None]

    if defect == "scratch":
        # A thin line segment inside the annulus.
        for _ in range(20):
            rad = rng.uniform(inner_r + 6, outer_r - 8)
            ang = rng.uniform(0, 2 * np.pi)
            px = cx + rad * np.cos(ang)
            py = cy - rad * np.sin(ang)
            length = rng.uniform(22.0, 45.0)
            dirn = rng.uniform(0, np.pi)
            qx = px + length * np.cos(dirn)
            qy = py - length * np.sin(dirn)
            if np.hypot(qx - cx, qy - cy) < outer_r - 6 and np.hypot(qx - cx, qy - cy) > inner_r + 4:
                break
        width = rng.uniform(0.9, 1.6)
        # Distance from each pixel to the segment p-q.
        vx, vy = qx - px, qy - py
        t = np.clip(((xx - px) * vx + (yy - py) * vy) / (vx * vx + vy * vy), 0.0, 1.0)
        dseg = np.hypot(xx - (px + t * vx), yy - (py + t * vy))
        line = _coverage(dseg - width / 2) * part
        bright = rng.uniform() < 0.5
        delta = rng.uniform(55.0, 80.0) * (1.0 if bright else -1.0)
        img = img + (delta * line)[:, :, None]
        mask = _coverage(dseg - width / 2 - 1.0) * part > 0.5

    if defect == "spot":
        rad = rng.uniform(inner_r + 10, outer_r - 10)
        ang = rng.uniform(0, 2 * np.pi)
        sx = cx + rad * np.cos(ang)
        sy = cy - rad * np.sin(ang)
        ax = rng.uniform(4.0, 8.0)
        ay = ax * rng.uniform(0.6, 1.0)
        rot = rng.uniform(0, np.pi)
        ux = (xx - sx) * np.cos(rot) + (yy - sy) * np.sin(rot)
        uy = -(xx - sx) * np.sin(rot) + (yy - sy) * np.cos(rot)
        e = np.hypot(ux / ax, uy / ay)
        alpha = np.clip(1.3 - e, 0.0, 1.0) ** 0.7 * part
        stain = np.array([92.0, 70.0, 48.0]) * gain
        strength = rng.uniform(0.55, 0.8)
        a = (strength * alpha)[:, :, None]
        img = img * (1.0 - a) + stain[None, None, :] * a
        mask = (alpha > 0.25) & (part > 0.5)

    img = img * gain
    noise = rng.normal(0.0, 1.6, size=(h, w))
    img = img + noise[:, :, None]
    rgb = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return rgb, (mask.astype(np.uint8) * 255)
