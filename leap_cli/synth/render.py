"""Drawing the synthetic kitchen: a panorama per participant seen through a turning head-mounted camera,
objects (sprites whose shape, colour and texture differ by noun) and hands that move differently for each verb.

The panorama is the kitchen seen all round (``ppd`` pixels per degree of longitude and latitude); each frame is
what a pinhole camera of ``FOV_DEG`` turned to (yaw, pitch) sees of it (a remap: turning right moves the scene
left), so visual odometry recovers yaw and pitch at the field of view the published poses' intrinsics say.
Everything here is numpy and a few OpenCV primitives: a frame costs about 0.3 ms at 192x144.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from leap_cli.synth.plan import PlannedSegment
from leap_cli.synth.world import LOOKS, POUR_FROM, POUR_INTO, TOOLS

BASE_W = 192  # LOOKS sizes are in pixels at this width
FOV_DEG = 90.0  # horizontal field of view of the pinhole camera (EPIC's GoPro, undistorted; extract's --fov default,
# and the intrinsics of the poses the kitchen publishes)

WALLS = [(205, 195, 170), (170, 195, 215), (215, 185, 185), (190, 215, 185), (200, 200, 200), (225, 210, 160)]
COUNTERS = [(120, 95, 70), (90, 90, 95), (160, 150, 135), (70, 60, 55), (140, 110, 80), (110, 120, 110)]
SKINS = [(224, 172, 140), (198, 134, 96), (141, 85, 56), (235, 190, 160), (170, 110, 75), (210, 150, 115)]


@dataclass
class Sprite:
    rgb: np.ndarray  # [h, w, 3] uint8
    mask: np.ndarray  # [h, w] bool

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]


def _texture(canvas: np.ndarray, mask: np.ndarray, texture: str, c2: tuple[int, int, int]) -> None:
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w]
    if texture == "stripes":
        sel = (yy // 3) % 2 == 0
    elif texture == "dots":
        sel = ((yy % 6) < 2) & ((xx % 6) < 2)
    elif texture == "checker":
        sel = ((yy // 4) + (xx // 4)) % 2 == 0
    elif texture == "grain":
        sel = (np.sin(yy * 0.9 + np.sin(xx * 0.3) * 2) > 0.6)
    elif texture == "rim":
        cy, cx = (h - 1) / 2, (w - 1) / 2
        r = np.sqrt(((yy - cy) / max(cy, 1)) ** 2 + ((xx - cx) / max(cx, 1)) ** 2)
        sel = r > 0.72
    else:
        return
    canvas[sel & mask] = c2


def make_sprite(noun: str, scale: float) -> Sprite:
    """The look of a portable object (or tool) as a masked sprite."""
    look = LOOKS[noun]
    w, h = max(4, round(look.size[0] * scale)), max(4, round(look.size[1] * scale))
    pad = 0
    if look.shape == "disc" and noun == "pan":
        pad = round(w * 0.5)  # the handle
    canvas = np.zeros((h, w + pad, 3), np.uint8)
    m = np.zeros((h, w + pad), np.uint8)
    if look.shape in ("disc", "ellipse", "veg_round"):
        cv2.ellipse(m, (w // 2, h // 2), (w // 2 - 1, h // 2 - 1), 0, 0, 360, 1, -1)
        if pad:
            cv2.rectangle(m, (w - 2, h // 2 - max(1, h // 12)), (w + pad - 1, h // 2 + max(1, h // 12)), 1, -1)
    elif look.shape == "rect":
        m[:] = 1
    elif look.shape == "tall":
        m[h // 4:, :] = 1
        if noun == "bottle":
            m[:h // 4, w // 3: w - w // 3] = 1
        else:
            m[:h // 4, :] = 1
    elif look.shape == "spoon":
        cv2.ellipse(m, (w // 2, h // 6), (w // 2 - 1, h // 6), 0, 0, 360, 1, -1)
        m[h // 6:, w // 2 - max(1, w // 6): w // 2 + max(1, w // 6) + 1] = 1
    elif look.shape == "blade":
        pts = np.array([[0, h * 0.55], [w - 1, h * 0.55], [w - 1, 0], [w // 2, 0]], np.int32)
        cv2.fillPoly(m, [pts], 1)
        m[int(h * 0.55):, w // 4: w - w // 4 + 1] = 1
    elif look.shape == "veg_long":
        pts = np.array([[0, h // 2], [w - 1, 0], [w - 1, h - 1]], np.int32)
        cv2.fillPoly(m, [pts], 1)
    mask = m.astype(bool)
    canvas[mask] = look.colour
    _texture(canvas, mask, look.texture, look.colour2)
    if look.shape == "blade":  # dark handle
        hm = np.zeros_like(mask)
        hm[int(h * 0.55):] = True
        canvas[hm & mask] = look.colour2
    if noun == "bottle":  # a label band in colour2 and dark cap area
        canvas[(np.arange(h)[:, None] > h * 0.45) & (np.arange(h)[:, None] < h * 0.7) & mask] = look.colour2
        canvas[:max(2, h // 10)][mask[:max(2, h // 10)]] = (30, 30, 30)
    return Sprite(canvas, mask)


def rotate_sprite(sp: Sprite, degrees: float) -> Sprite:
    """Rotate about the sprite centre on a canvas big enough to hold it (for tilting vessels)."""
    h, w = sp.mask.shape
    d = int(math.ceil(math.hypot(w, h))) + 2
    ox, oy = (d - w) // 2, (d - h) // 2
    rgb = np.zeros((d, d, 3), np.uint8)
    msk = np.zeros((d, d), np.uint8)
    rgb[oy:oy + h, ox:ox + w] = sp.rgb
    msk[oy:oy + h, ox:ox + w] = sp.mask
    mat = cv2.getRotationMatrix2D((d / 2, d / 2), -degrees, 1.0)
    rgb = cv2.warpAffine(rgb, mat, (d, d), flags=cv2.INTER_NEAREST)
    msk = cv2.warpAffine(msk, mat, (d, d), flags=cv2.INTER_NEAREST)
    return Sprite(rgb, msk.astype(bool))


def make_hand(side: str, skin: tuple[int, int, int], scale: float) -> Sprite:
    w, h = round(22 * scale), round(26 * scale)
    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, (w // 2, int(h * 0.62)), (int(w * 0.36), int(h * 0.3)), 0, 0, 360, 1, -1)  # palm
    fw = max(2, round(2.6 * scale))
    for k in range(4):  # fingers
        x = int(w * 0.2) + k * (fw + 1)
        m[int(h * 0.12) + (2 if k in (0, 3) else 0):int(h * 0.55), x:x + fw] = 1
    tx = 0 if side == "right" else w - fw - 1  # thumb on the inner side
    m[int(h * 0.45):int(h * 0.7), tx:tx + fw + 1] = 1
    mask = m.astype(bool)
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[mask] = skin
    shade = tuple(int(c * 0.8) for c in skin)
    rgb[mask & (np.arange(h)[:, None] > h * 0.8)] = shade
    return Sprite(rgb, mask)


def make_panorama(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A participant's kitchen seen all round: tiled wall, shelves, window, a wooden counter."""
    pw, ph = width * 3, height * 2
    wall = np.array(WALLS[int(rng.integers(len(WALLS)))], np.float32)
    counter = np.array(COUNTERS[int(rng.integers(len(COUNTERS)))], np.float32)
    img = np.zeros((ph, pw, 3), np.float32)
    horizon = int(ph * 0.55)
    img[:horizon] = wall
    tile = max(8, width // 8)
    yy, xx = np.mgrid[0:horizon, 0:pw]
    grout = ((yy % tile) < 1) | ((xx % tile) < 1)
    img[:horizon][grout] = wall * 0.75
    shade = rng.uniform(0.85, 1.1, size=(horizon // tile + 1, pw // tile + 1)).astype(np.float32)
    img[:horizon] *= shade[yy // tile, xx // tile][..., None]
    yy, xx = np.mgrid[0:ph - horizon, 0:pw]
    grain = 0.9 + 0.12 * np.sin(yy * 0.7 + 3 * np.sin(xx * 0.02 + rng.uniform(0, 6)))
    img[horizon:] = counter * grain[..., None]
    img[horizon:horizon + 3] = counter * 0.5
    out = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(5, 9))):  # landmarks along the wall: shelves, windows, pictures
        kind = int(rng.integers(3))
        x = int(rng.integers(0, pw - width // 3))
        y = int(rng.integers(ph // 12, horizon - height // 4))
        colour = tuple(int(c) for c in rng.integers(20, 235, size=3))
        if kind == 0:
            cv2.rectangle(out, (x, y), (x + width // 3, y + 6), colour, -1)
            for k in range(4):
                bx = x + 4 + k * (width // 14)
                cv2.rectangle(out, (bx, y - 14), (bx + 6, y - 1), tuple(int(c) for c in rng.integers(20, 235, size=3)), -1)
        elif kind == 1:
            cv2.rectangle(out, (x, y), (x + width // 4, y + height // 4), (200, 230, 250), -1)
            cv2.rectangle(out, (x, y), (x + width // 4, y + height // 4), colour, 3)
            cv2.line(out, (x + width // 8, y), (x + width // 8, y + height // 4), colour, 2)
        else:
            cv2.circle(out, (x + 12, y + 12), 10, colour, -1)
            cv2.circle(out, (x + 12, y + 12), 4, (255, 255, 255), -1)
    return out


def paste(frame: np.ndarray, sp: Sprite, cx: float, cy: float) -> tuple[float, float, float, float] | None:
    """Draw ``sp`` centred at (cx, cy); returns its visible box in pixels (l, t, r, b) or None if off-frame."""
    H, W = frame.shape[:2]
    w, h = sp.size
    x0, y0 = int(round(cx - w / 2)), int(round(cy - h / 2))
    l, t, r, b = max(0, x0), max(0, y0), min(W, x0 + w), min(H, y0 + h)
    if r <= l or b <= t:
        return None
    m = sp.mask[t - y0:b - y0, l - x0:r - x0]
    frame[t:b, l:r][m] = sp.rgb[t - y0:b - y0, l - x0:r - x0][m]
    return (l, t, r, b)


def _lerp(a, b, u):
    return (a[0] + (b[0] - a[0]) * u, a[1] + (b[1] - a[1]) * u)


def _ramp(u: float, a: float, b: float) -> float:
    """0 before a, 1 after b, smooth in between."""
    if u <= a:
        return 0.0
    if u >= b:
        return 1.0
    x = (u - a) / (b - a)
    return x * x * (3 - 2 * x)


@dataclass
class HandPose:
    side: str
    x: float
    y: float
    contact: str | None  # object name touched/held
    stationary: bool = False  # contact with a fixture


class Renderer:
    """Renders frames of one video: ``frame(t, yaw, pitch, segment)`` -> (RGB frame, objects, hands)."""

    def __init__(self, width: int, height: int, sprites: dict[str, Sprite], rotated: dict[str, list[Sprite]],
                 hands: dict[str, Sprite], panorama: np.ndarray, noise: np.ndarray):
        self.W, self.H = width, height
        self.s = width / BASE_W
        self.f = (width / 2) / math.tan(math.radians(FOV_DEG) / 2)  # focal length, pixels
        self.ppd = self.f * math.pi / 180  # the panorama's pixels per degree: the frame's own at its centre
        self.sprites, self.rotated, self.hands = sprites, rotated, hands
        self.pano = panorama
        self.noise = noise  # [n, 3] uint8 jitter for liquids
        ph, pw = panorama.shape[:2]
        self.pcx, self.pcy = pw / 2, ph / 2
        v, u = np.mgrid[0:height, 0:width].astype(np.float32)
        self._xy = ((u + 0.5 - width / 2) / self.f, (v + 0.5 - height / 2) / self.f)  # rays at z 1: x right, y down
        self._rays: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # by whole degrees of pitch

    def _rays_at(self, pitch: float) -> tuple[np.ndarray, np.ndarray]:
        """Longitude and latitude (deg) of each pixel's ray, camera at yaw 0 looking ``pitch`` up: [H, W] each
        (a yaw adds to the longitude). Interpolated between whole degrees (at most 0.01 px off: a pitch changes in
        most frames, and working a map out costs as much as the rest of the frame)."""
        k0 = math.floor(pitch)
        w = np.float32(pitch - k0)
        (lon0, lat0), (lon1, lat1) = self._rays_of(k0), self._rays_of(k0 + 1)
        return lon0 + (lon1 - lon0) * w, lat0 + (lat1 - lat0) * w

    def _rays_of(self, key: int) -> tuple[np.ndarray, np.ndarray]:
        if key not in self._rays:
            if len(self._rays) >= 64:
                self._rays.clear()
            x, y = self._xy
            c, s = np.float32(math.cos(math.radians(key))), np.float32(math.sin(math.radians(key)))
            wy, wz = y * c - s, y * s + c  # pitched up about x
            self._rays[key] = (np.degrees(np.arctan2(x, wz)), np.degrees(np.arctan2(-wy, np.hypot(x, wz))))
        return self._rays[key]

    def view(self, yaw: float, pitch: float) -> np.ndarray:
        """The background the camera turned to (yaw, pitch) sees: [H, W, 3]."""
        lon, lat = self._rays_at(pitch)
        return cv2.remap(self.pano, self.pcx + (lon + yaw) * self.ppd - 0.5, self.pcy - lat * self.ppd - 0.5,
                         cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

    def project(self, point: tuple[float, float], yaw: float, pitch: float) -> tuple[float, float]:
        """Frame position (pixels) of panorama position ``point`` seen by the camera turned to (yaw, pitch)."""
        lon = math.radians((point[0] - self.pcx) / self.ppd - yaw)
        lat = math.radians((self.pcy - point[1]) / self.ppd)
        wx, wy, wz = math.cos(lat) * math.sin(lon), -math.sin(lat), math.cos(lat) * math.cos(lon)
        c, s = math.cos(math.radians(pitch)), math.sin(math.radians(pitch))
        y, z = wy * c + wz * s, -wy * s + wz * c
        if z <= 1e-6:  # behind the camera
            return -1e6, -1e6
        return self.W / 2 + self.f * wx / z, self.H / 2 + self.f * y / z

    def anchor(self, yaw: float, pitch: float, place: tuple[float, float]) -> tuple[float, float]:
        """World position (panorama pixels) of an action placed at ``place`` degrees from the view (yaw, pitch)."""
        return (self.pcx + (yaw + place[0]) * self.ppd, self.pcy - (pitch + place[1]) * self.ppd)

    # --- drawing helpers -------------------------------------------------------------------------------
    def _stream(self, frame, x, y0, y1, colour, t):
        H = frame.shape[0]
        w = max(2, round(3 * self.s))
        l, r = int(x - w / 2), int(x + w / 2) + 1
        t0, b = max(0, int(y0)), min(H, int(y1))
        if r <= 0 or l >= self.W or b <= t0:
            return
        l, r = max(0, l), min(self.W, r)
        k = int(t * 97) % (len(self.noise) - H)
        frame[t0:b, l:r] = np.clip(np.array(colour, np.int16)[None, None] + self.noise[k:k + b - t0, None, :] - 20,
                                   0, 255).astype(np.uint8)

    def _fixture(self, frame, noun, cx, cy, p, on):
        """Draw a fixture at (cx, cy) with open/switch state p in [0, 1]; returns its box."""
        look = LOOKS[noun]
        w, h = look.size[0] * self.s, look.size[1] * self.s
        l, t, r, b = int(cx - w / 2), int(cy - h / 2), int(cx + w / 2), int(cy + h / 2)
        body, inner = look.colour, look.colour2
        if noun in ("cupboard", "fridge"):
            cv2.rectangle(frame, (l, t), (r, b), inner, -1)  # the inside
            if noun == "fridge":
                for k in range(1, 4):
                    yy = t + k * (b - t) // 4
                    cv2.line(frame, (l + 2, yy), (r - 2, yy), (180, 180, 190), 1)
                    cv2.rectangle(frame, (l + 5 + 6 * k, yy - 8), (l + 10 + 6 * k, yy - 1), (220, 60 + 40 * k, 40), -1)
            door_r = int(r - (r - l) * 0.85 * p)
            cv2.rectangle(frame, (l, t), (max(l + 2, door_r), b), body, -1)
            cv2.rectangle(frame, (l, t), (max(l + 2, door_r), b), tuple(int(c * 0.6) for c in body), 1)
            hx, hy = max(l + 3, door_r - int(5 * self.s)), (t + b) // 2
            cv2.rectangle(frame, (hx - 1, hy - int(6 * self.s)), (hx + 1, hy + int(6 * self.s)), (60, 60, 60), -1)
            return (l, t, r, b), (hx, hy)
        if noun == "drawer":
            cv2.rectangle(frame, (l, t), (r, b), tuple(int(c * 0.7) for c in body), -1)  # carcass
            dy = int(p * h * 0.9)
            if dy > 0:
                cv2.rectangle(frame, (l + 2, t + 2), (r - 2, t + dy), inner, -1)
                for k in range(3):
                    x = l + 8 + k * (r - l) // 4
                    cv2.line(frame, (x, t + 3), (x + 6, t + dy - 1), (200, 200, 210), 1)
            cv2.rectangle(frame, (l, t + dy), (r, b + dy), body, -1)
            hx, hy = (l + r) // 2, (t + b) // 2 + dy
            cv2.rectangle(frame, (hx - int(8 * self.s), hy - 1), (hx + int(8 * self.s), hy + 1), (60, 60, 60), -1)
            return (l, t, r, b + dy), (hx, hy)
        if noun == "tap":
            cv2.rectangle(frame, (int(cx - 2 * self.s), t + int(h * 0.3)), (int(cx + 2 * self.s), b), body, -1)
            cv2.rectangle(frame, (int(cx - w / 2), t + int(h * 0.3)), (int(cx + 3 * self.s), t + int(h * 0.45)), body, -1)
            ang = (p * 60.0) * math.pi / 180
            hx, hy = cx + 6 * self.s, t + h * 0.2
            ex, ey = hx + 8 * self.s * math.cos(ang), hy - 8 * self.s * math.sin(ang)
            cv2.line(frame, (int(hx), int(hy)), (int(ex), int(ey)), (200, 40, 40), max(1, int(2 * self.s)))
            return (l, t, r, b), (int(ex), int(ey))
        if noun == "hob":
            cv2.rectangle(frame, (l, t), (r, b), body, -1)
            glow = tuple(int(40 + (c - 40) * p) for c in inner)
            for k in (0.3, 0.7):
                cv2.circle(frame, (int(l + (r - l) * k), (t + b) // 2), int(h * 0.32), glow, -1)
                cv2.circle(frame, (int(l + (r - l) * k), (t + b) // 2), int(h * 0.32), (90, 90, 90), 1)
            kx, ky = r - int(5 * self.s), b - int(5 * self.s)
            cv2.circle(frame, (kx, ky), max(2, int(3 * self.s)), (200, 200, 200), -1)
            return (l, t, r, b), (kx, ky)
        raise KeyError(noun)

    def _arm(self, mask: np.ndarray, hand: HandPose) -> None:
        base_x = hand.x + (25 * self.s if hand.side == "right" else -25 * self.s)
        cv2.line(mask, (int(hand.x), int(hand.y + 8 * self.s)), (int(base_x), int(self.H + 30 * self.s)), 1,
                 max(3, int(8 * self.s)))

    # --- one frame ------------------------------------------------------------------------------------
    def frame(self, t: float, yaw: float, pitch: float, seg: PlannedSegment | None,
              seg_anchor: tuple[float, float] | None, skin: tuple[int, int, int]):
        """Render time ``t``; returns (frame, objects [(label, box)], hands [(HandPose, box)])."""
        background = self.view(yaw, pitch)
        frame = background.copy()
        objects: list[tuple[str, tuple]] = []
        hands: list[HandPose] = []
        if seg is not None and seg_anchor is not None:
            ax, ay = self.project(seg_anchor, yaw, pitch)
            u = min(1.0, max(0.0, (t - seg.start) / max(seg.duration, 1e-3)))
            if seg.distractor:
                side = -1 if seg.index % 2 else 1
                box = paste(frame, self.sprites[seg.distractor], ax + side * 60 * self.s, ay + 8 * self.s)
                if box:
                    objects.append((seg.distractor, box))
            self._act(frame, seg, u, t - seg.start, ax, ay, objects, hands)
        rest = {"right": (0.78 * self.W, 1.08 * self.H), "left": (0.22 * self.W, 1.08 * self.H)}
        have = {h.side for h in hands}
        for side in ("left", "right"):
            if side not in have:
                hands.append(HandPose(side, *rest[side], None))
        # Arms pass behind the objects (drawn only over the background) so held tools stay visible.
        arms = np.zeros((self.H, self.W), np.uint8)
        for hand in hands:
            self._arm(arms, hand)
        ys, xs = np.nonzero(arms)
        free = (frame[ys, xs] == background[ys, xs]).all(axis=1)
        frame[ys[free], xs[free]] = tuple(int(c * 0.92) for c in skin)
        drawn = []
        for hand in hands:
            sp = self.hands[hand.side]
            box = paste(frame, sp, hand.x, hand.y)
            if box and (box[2] - box[0]) * (box[3] - box[1]) >= 0.25 * sp.size[0] * sp.size[1]:
                drawn.append((hand, box))  # a hand counts as visible when a quarter of it is in the frame
        return frame, objects, drawn

    def _act(self, frame, seg, u, dt, ax, ay, objects, hands):
        s, W, H = self.s, self.W, self.H
        verb, noun = seg.verb, seg.noun
        R = (0.78 * W, 1.08 * H)
        near = (0.6 * W, 0.8 * H)

        def put(name, x, y, sp=None):
            box = paste(frame, sp or self.sprites[name], x, y)
            if box:
                objects.append((name, box))
            return box

        if verb in ("take", "put"):
            if verb == "take":
                g = _ramp(u, 0.0, 0.35)
                hx, hy = _lerp(R, (ax, ay), g)
                ox, oy = (ax, ay) if u < 0.35 else _lerp((ax, ay), near, _ramp(u, 0.35, 1.0))
                if u >= 0.35:
                    hx, hy = ox, oy
                contact = noun if u >= 0.3 else None
            else:
                m = _ramp(u, 0.0, 0.6)
                ox, oy = _lerp(near, (ax, ay), m)
                hx, hy = (ox, oy) if u < 0.6 else _lerp((ax, ay), R, _ramp(u, 0.6, 1.0))
                contact = noun if u < 0.6 else None
            put(noun, ox, oy)
            hands.append(HandPose("right", hx + 4 * s, hy + 6 * s, contact))
        elif verb == "wash":
            tx, ty = ax, ay - 34 * s
            box, _ = self._fixture(frame, "tap", tx, ty, 1.0, True)
            objects.append(("tap", box))
            self._stream(frame, tx - 8 * s, ty - 2 * s, ay, LOOKS["water"].colour, dt)
            ox, oy = ax + 6 * s * math.cos(2 * math.pi * 2 * dt), ay + 4 * s * math.sin(2 * math.pi * 2 * dt)
            put(noun, ox, oy)
            sx, sy = ox - 6 * s * math.cos(2 * math.pi * 2 * dt), oy + 2 * s
            put("sponge", sx, sy)
            hands.append(HandPose("right", sx + 6 * s, sy + 6 * s, "sponge"))
            hands.append(HandPose("left", ox - 16 * s, oy + 6 * s, noun))
        elif verb in ("open", "close") and noun != "bottle":
            p = _ramp(u, 0.2, 0.8)
            p = p if verb == "open" else 1 - p
            cy = ay - (24 * s if noun == "cupboard" else 16 * s if noun == "fridge" else 0)
            box, (hx, hy) = self._fixture(frame, noun, ax, cy, p, False)
            objects.append((noun, box))
            if u < 0.2:
                hpos = _lerp(R, (hx, hy), _ramp(u, 0.0, 0.2))
            elif u < 0.85:
                hpos = (hx, hy)
            else:
                hpos = _lerp((hx, hy), R, _ramp(u, 0.85, 1.0))
            hands.append(HandPose("right", hpos[0], hpos[1] + 4 * s, noun if 0.15 <= u < 0.85 else None, True))
        elif verb in ("open", "close"):  # bottle: the cap comes off / goes on
            p = _ramp(u, 0.2, 0.8)
            p = p if verb == "open" else 1 - p
            box = put("bottle", ax, ay)
            top = box[1] if box else ay - 20 * s
            cx, cy = ax + p * 14 * s, top - 3 * s - p * 10 * s
            cv2.rectangle(frame, (int(cx - 3 * s), int(cy - 3 * s)), (int(cx + 3 * s), int(cy + 2 * s)), (30, 30, 30), -1)
            hands.append(HandPose("left", ax - 12 * s, ay + 6 * s, "bottle"))
            hands.append(HandPose("right", cx + 5 * s, cy + 2 * s, "bottle" if 0.1 <= u < 0.9 else None))
        elif verb in ("turn-on", "turn-off"):
            p = _ramp(u, 0.35, 0.6)
            p = p if verb == "turn-on" else 1 - p
            cy = ay - (30 * s if noun == "tap" else 0)
            box, (hx, hy) = self._fixture(frame, noun, ax, cy, p, p > 0.5)
            objects.append((noun, box))
            if noun == "tap" and p > 0.5:
                self._stream(frame, ax - 8 * s, cy - 2 * s, ay + 10 * s, LOOKS["water"].colour, dt)
            if u < 0.3:
                hpos = _lerp(R, (hx, hy), _ramp(u, 0.0, 0.3))
            elif u < 0.7:
                hpos = (hx, hy)
            else:
                hpos = _lerp((hx, hy), R, _ramp(u, 0.7, 1.0))
            hands.append(HandPose("right", hpos[0] + 3 * s, hpos[1] + 4 * s, noun if 0.3 <= u < 0.7 else None, True))
        elif verb in ("cut", "peel"):
            if verb == "cut":
                put("board:chopping", ax, ay + 4 * s)
            box = put(noun, ax, ay)
            vl, vt, vr, vb = box if box else (ax - 10, ay - 5, ax + 10, ay + 5)
            if verb == "cut":
                n_cuts = int(u * 6)
                for k in range(n_cuts):
                    x = int(vr - (k + 1) * (vr - vl) / 7)
                    cv2.line(frame, (x, int(vt)), (x, int(vb)), LOOKS["board:chopping"].colour, max(1, int(s)))
                kx = vr - (vr - vl) * (0.15 + 0.7 * u)
                # the blade tip touches the top of the vegetable at every stroke (t = k / 3 s, when it sounds)
                ky = vt + 4 * s - abs(math.sin(math.pi * 3 * dt)) * 12 * s - 20 * s
            else:
                peeled = self.sprites[f"{noun}:peeled"]
                k = int(peeled.size[0] * u)
                if k > 0:
                    part = Sprite(peeled.rgb[:, :k], peeled.mask[:, :k])
                    paste(frame, part, ax - peeled.size[0] / 2 + k / 2, ay)
                stroke = (dt * 2.0) % 1.0
                kx, ky = vl + (vr - vl) * stroke, vt - 16 * s
            box = paste(frame, self.sprites["knife:down"], kx, ky)
            if box:
                objects.append(("knife", box))
            hands.append(HandPose("right", kx + 2 * s, ky - 14 * s, "knife"))
            hands.append(HandPose("left", vl - 8 * s, ay + 4 * s, noun))
        elif verb == "pour":
            vessel = POUR_FROM[noun]
            put(POUR_INTO, ax, ay)
            level = _ramp(u, 0.3, 0.85)
            if level > 0:
                r = int(LOOKS[POUR_INTO].size[0] * s * 0.35 * level) + 1
                cv2.circle(frame, (int(ax), int(ay)), r, LOOKS[noun].colour, -1)
            tilt = 80 * _ramp(u, 0.0, 0.3) * (1 - _ramp(u, 0.85, 1.0))
            vx, vy = ax + 20 * s, ay - 30 * s
            sp = self.rotated[vessel][min(len(self.rotated[vessel]) - 1, int(round(tilt / 10)))]
            box = paste(frame, sp, vx, vy)
            if box:
                objects.append((vessel, box))
            if 0.3 <= u < 0.85:
                mouth = (vx - 12 * s, vy - 6 * s)
                self._stream(frame, mouth[0], mouth[1], ay, LOOKS[noun].colour, dt)
                objects.append((noun, (max(0, mouth[0] - 2 * s), max(0, mouth[1]), min(W, mouth[0] + 2 * s), min(H, ay))))
            hands.append(HandPose("right", vx + 6 * s, vy + 10 * s, vessel))
        elif verb == "mix":
            box = put(noun, ax, ay)
            food = (150, 90, 40) if noun == "pan" else (240, 210, 120)
            rad = int(LOOKS[noun].size[1] * s * 0.3)
            cv2.circle(frame, (int(ax), int(ay)), rad, food, -1)
            ang = 2 * math.pi * 1.5 * dt
            sx, sy = ax + rad * 0.6 * math.cos(ang), ay + rad * 0.5 * math.sin(ang) - 10 * s
            put("spoon", sx, sy)
            hands.append(HandPose("right", sx + 3 * s, sy - 14 * s, "spoon"))
            if noun == "bowl":
                hands.append(HandPose("left", ax - 22 * s, ay + 4 * s, noun))
        elif verb == "dry":
            box = put(noun, ax, ay)
            if box:
                wet = int(6 * (1 - u))
                for k in range(wet):
                    cv2.circle(frame, (int(box[0] + (k * 7) % max(1, box[2] - box[0])), int(box[1] + (k * 5) % max(1, box[3] - box[1]))),
                               max(1, int(s)), (120, 200, 255), -1)
            tx = ax + math.sin(2 * math.pi * 2 * dt) * 12 * s
            put("towel", tx, ay + 10 * s)
            hands.append(HandPose("right", tx + 4 * s, ay + 4 * s, "towel"))
            hands.append(HandPose("left", ax - 20 * s, ay + 6 * s, noun))
        elif verb == "shake":
            amp = 8 * s * math.sin(2 * math.pi * 4 * dt)
            ox, oy = (ax, ay + amp) if noun == "bottle" else (ax + amp, ay)
            put(noun, ox, oy)
            hands.append(HandPose("right", ox + (6 * s if noun == "bottle" else 26 * s), oy + 6 * s, noun))
        elif verb == "scrape":
            box = put(noun, ax, ay)
            if box:
                for k in range(int(round(5 * (1 - u)))):
                    cx = int(box[0] + (box[2] - box[0]) * (0.25 + 0.12 * k))
                    cv2.circle(frame, (cx, int((box[1] + box[3]) / 2 + (k % 2) * 4 * s)), max(2, int(3 * s)),
                               (110, 70, 30), -1)
            sx = ax + math.sin(2 * math.pi * 1.5 * dt) * 14 * s
            put(TOOLS["scrape"], sx, ay - 8 * s)
            hands.append(HandPose("right", sx + 3 * s, ay - 22 * s, TOOLS["scrape"]))
            hands.append(HandPose("left", ax - 24 * s, ay + 6 * s, noun))
        else:  # pragma: no cover - every verb of world.VERBS has a branch (tested)
            raise KeyError(verb)


def make_sprites(scale: float) -> tuple[dict[str, Sprite], dict[str, list[Sprite]]]:
    portable = [n for n, look in LOOKS.items() if look.shape not in ("fixture", "liquid")]
    sprites = {n: make_sprite(n, scale) for n in portable}
    knife = sprites["knife"]  # blade down, handle up: how a knife is held to cut
    sprites["knife:down"] = Sprite(knife.rgb[::-1].copy(), knife.mask[::-1].copy())
    for veg in ("onion", "potato", "carrot"):  # the peeled look: same shape, inner colour
        sp = sprites[veg]
        rgb = sp.rgb.copy()
        rgb[sp.mask] = LOOKS[veg].colour2
        sprites[f"{veg}:peeled"] = Sprite(rgb, sp.mask)
    rotated = {v: [rotate_sprite(sprites[v], -a) for a in range(0, 91, 10)] for v in set(POUR_FROM.values())}
    return sprites, rotated
