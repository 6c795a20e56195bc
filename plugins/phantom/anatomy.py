"""Synthetic patients: anatomy and lesions in true Hounsfield units.

A patient is drawn once from its own random stream (sizes, positions, shapes vary from one
patient to the next) and can then be rendered at any height ``z`` in any pixel grid, so
the same patient can be scanned by different scanners. Coordinates are DICOM patient
coordinates in mm: x towards the patient's left, y towards the back, z towards the head.

Tissue values follow real CT: air -1000, lung about -850, fat about -100, water 0, soft
tissue 30 to 60, cancellous bone a few hundred, cortical bone over 1000.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

BodyRegion = Literal["chest", "head", "abdomen", "water"]
BODY_REGIONS: tuple[str, ...] = ("chest", "head", "abdomen", "water")

AIR, LUNG, FAT, WATER, CSF, SOFT, BLOOD, LIVER = -1000.0, -850.0, -100.0, 0.0, 8.0, 40.0, 45.0, 60.0
BRAIN, KIDNEY, CANCELLOUS, CORTICAL = 35.0, 30.0, 300.0, 1100.0


@dataclass(frozen=True)
class Ellipse:
    """An elliptic cylinder along z, optionally tapering: its semi-axes scale with height."""

    cx: float
    cy: float
    ax: float
    ay: float
    hu: float
    z_scale: float = 0.0  # relative change of the semi-axes per 100 mm of height
    z_mid: float = 0.0

    def mask(self, x: np.ndarray, y: np.ndarray, z: float) -> np.ndarray:
        scale = max(0.05, 1.0 + self.z_scale * (z - self.z_mid) / 100.0)
        return ((x - self.cx) / (self.ax * scale)) ** 2 + (
            (y - self.cy) / (self.ay * scale)
        ) ** 2 <= 1.0


@dataclass(frozen=True)
class Tube:
    """A vessel or rib: a circle in each slice whose centre drifts linearly with z."""

    x0: float
    y0: float
    dx: float
    dy: float
    radius: float
    hu: float
    z_min: float = -math.inf
    z_max: float = math.inf

    def centre(self, z: float) -> tuple[float, float]:
        return self.x0 + self.dx * z, self.y0 + self.dy * z


@dataclass(frozen=True)
class Lesion:
    """A lesion and its class. Shape, texture and HU carry the difference between classes.

    Attributes:
        label: ``benign`` or ``malignant``.
        centre: (x, y, z) in mm.
        radius: the mean radius in mm.
        hu: the mean HU of the solid part.
        lobes: (direction, amplitude, sharpness) bumps on the surface: wide bumps make
            lobulation, narrow long ones make spicules.
        texture: the amplitude (HU) of the heterogeneous texture inside.
        calcification: (radius fraction, HU) of a calcified core, or None.
    """

    label: str
    centre: tuple[float, float, float]
    radius: float
    hu: float
    lobes: tuple[tuple[tuple[float, float, float], float, float], ...]
    texture: float
    calcification: tuple[float, float] | None
    texture_seed: int

    @property
    def reach(self) -> float:
        """The largest distance from the centre any part of the lesion reaches."""
        return self.radius * (1.0 + sum(amplitude for _, amplitude, _ in self.lobes))

    def paint(self, canvas: np.ndarray, x: np.ndarray, y: np.ndarray, z: float) -> None:
        """Draw the lesion's cross-section at height z into the canvas (in place)."""
        cx, cy, cz = self.centre
        reach = self.reach
        dz = z - cz
        if abs(dz) > reach:
            return
        xs, ys = x[0], y[:, 0]
        cols = np.nonzero(np.abs(xs - cx) <= reach)[0]
        rows = np.nonzero(np.abs(ys - cy) <= reach)[0]
        if cols.size == 0 or rows.size == 0:
            return
        window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        dx = x[window] - cx
        dy = y[window] - cy
        distance = np.sqrt(dx**2 + dy**2 + dz**2)
        safe = np.maximum(distance, 1e-6)
        surface = np.full(distance.shape, self.radius)
        for (vx, vy, vz), amplitude, sharpness in self.lobes:
            cosine = np.clip((dx * vx + dy * vy + dz * vz) / safe, 0.0, 1.0)
            surface += self.radius * amplitude * cosine**sharpness
        inside = distance <= surface
        if not inside.any():
            return
        values = np.full(distance.shape, self.hu)
        if self.texture > 0:
            values += self.texture * _texture(dx, dy, dz, self.texture_seed)
        if self.calcification is not None:
            fraction, calcium = self.calcification
            values = np.where(distance <= self.radius * fraction, calcium, values)
        region = canvas[window]
        region[inside] = values[inside]


def _texture(dx: np.ndarray, dy: np.ndarray, dz: float, seed: int) -> np.ndarray:
    """A smooth, deterministic texture in [-1, 1] from a sum of plane waves."""
    rng = np.random.default_rng(seed)
    total = np.zeros(dx.shape)
    for _ in range(6):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        wavelength = rng.uniform(2.0, 6.0)
        phase = rng.uniform(0, 2 * math.pi)
        total += np.sin(
            2 * math.pi * (dx * direction[0] + dy * direction[1] + dz * direction[2]) / wavelength
            + phase
        )
    return total / 6 * 2


@dataclass
class Patient:
    """One synthetic patient: tissue layers painted from outside in, then lesions on top.

    Attributes:
        hosts: the organs lesions grow in (lungs, brain, liver).
        textured: organs whose parenchyma gets a fine texture (the lungs).
    """

    index: int
    body_region: str
    z_extent: tuple[float, float]
    layers: list[Ellipse | Tube] = field(default_factory=list)
    hosts: list[Ellipse] = field(default_factory=list)
    textured: list[Ellipse] = field(default_factory=list)
    texture_seed: int = 0
    lesions: list[Lesion] = field(default_factory=list)

    def render(self, x: np.ndarray, y: np.ndarray, z: float) -> np.ndarray:
        """True HU of the slice at height z on the grid (x, y) in mm."""
        canvas = np.full(x.shape, AIR, dtype=np.float64)
        for layer in self.layers:
            if isinstance(layer, Ellipse):
                canvas[layer.mask(x, y, z)] = layer.hu
            else:
                _paint_tube(canvas, x, y, z, layer)
        for organ in self.textured:
            inside = organ.mask(x, y, z) & (canvas == organ.hu)
            if inside.any():
                canvas[inside] += 25.0 * _texture(
                    x[inside] / 4, y[inside] / 4, z / 4, self.texture_seed
                )
        for lesion in self.lesions:
            lesion.paint(canvas, x, y, z)
        return canvas


def _paint_tube(canvas: np.ndarray, x: np.ndarray, y: np.ndarray, z: float, tube: Tube) -> None:
    if not tube.z_min <= z <= tube.z_max:
        return
    cx, cy = tube.centre(z)
    xs, ys = x[0], y[:, 0]
    cols = np.nonzero(np.abs(xs - cx) <= tube.radius)[0]
    rows = np.nonzero(np.abs(ys - cy) <= tube.radius)[0]
    if cols.size == 0 or rows.size == 0:
        return
    window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    inside = (x[window] - cx) ** 2 + (y[window] - cy) ** 2 <= tube.radius**2
    canvas[window][inside] = tube.hu


# --- drawing patients ------------------------------------------------------------------------


def draw_patient(
    index: int,
    body_region: str,
    rng: np.random.Generator,
    z_extent: tuple[float, float],
    malignant_fraction: float = 0.5,
    difficulty: float = 0.3,
    lesions: tuple[int, int] = (1, 2),
    enhancement_hu: float = 0.0,
) -> Patient:
    """Draw one patient of a body region, with lesions of both classes.

    Args:
        index: the patient's number in its hospital.
        body_region: chest, head, abdomen, or water (a uniform water cylinder for QA).
        rng: the patient's own random stream.
        z_extent: the (lowest, highest) z in mm that will be scanned.
        malignant_fraction: the chance that a lesion is malignant.
        difficulty: 0 to 1; higher makes the classes overlap more in size, shape and texture.
        lesions: the least and most lesions per patient.
        enhancement_hu: how much denser every lesion reads with an iodinated contrast agent
            (its calcium unchanged). Without it a lesion in the brain (15 to 50 HU) is
            nearly as dense as the brain around it (35 HU); enhancing metastases on a
            contrast-enhanced head CT read 30 to 60 HU above it.
    """
    draw = {"chest": _chest, "head": _head, "abdomen": _abdomen, "water": _water}[body_region]
    patient = draw(index, rng, z_extent)
    if body_region != "water":
        count = int(rng.integers(lesions[0], lesions[1] + 1))
        for _ in range(count):
            malignant = bool(rng.random() < malignant_fraction)
            lesion = _lesion(patient, rng, malignant, difficulty)
            if enhancement_hu:
                lesion = replace(lesion, hu=lesion.hu + enhancement_hu)
            patient.lesions.append(lesion)
    return patient


def _body(ax: float, ay: float, fat: float) -> list[Ellipse]:
    return [
        Ellipse(0.0, 0.0, ax, ay, FAT),
        Ellipse(0.0, 0.0, ax - fat, ay - fat, SOFT),
    ]


def _spine(rng: np.random.Generator, ay: float) -> list[Ellipse]:
    cy = ay * rng.uniform(0.5, 0.6)
    radius = rng.uniform(14, 18)
    return [
        Ellipse(0.0, cy, radius, radius * 0.9, CORTICAL),
        Ellipse(0.0, cy, radius - 2.5, radius * 0.9 - 2.5, CANCELLOUS),
        Ellipse(0.0, cy + radius + 8, 7.0, 6.0, CSF),
    ]


def _chest(index: int, rng: np.random.Generator, z_extent: tuple[float, float]) -> Patient:
    ax, ay = rng.uniform(150, 180), rng.uniform(100, 125)
    fat = rng.uniform(8, 20)
    z_mid = sum(z_extent) / 2
    layers: list[Ellipse | Tube] = [*_body(ax, ay, fat)]
    lungs = []
    for side in (-1, 1):
        lungs.append(
            Ellipse(
                side * ax * rng.uniform(0.42, 0.48),
                -ay * rng.uniform(0.0, 0.1),
                ax * rng.uniform(0.28, 0.34),
                ay * rng.uniform(0.6, 0.7),
                LUNG,
                z_scale=rng.uniform(0.1, 0.3),
                z_mid=z_mid,
            )
        )
    layers += lungs
    # Ribs: short bony arcs just inside the body wall, stepping down as they go round.
    for k in range(int(rng.integers(10, 14))):
        angle = math.pi * (0.15 + 0.7 * k / 12) * (1 if k % 2 else -1) + math.pi / 2
        rx, ry = (ax - fat - 6) * math.cos(angle), (ay - fat - 6) * math.sin(angle)
        layers.append(
            Tube(
                rx,
                ry,
                0.0,
                0.0,
                rng.uniform(4, 6),
                CORTICAL * 0.7,
                z_min=z_mid + (k - 6) * 12 - 6,
                z_max=z_mid + (k - 6) * 12 + 6,
            )
        )
    layers.append(Ellipse(ax * 0.1, -ay * 0.15, ax * 0.22, ay * 0.3, SOFT + 5))  # heart
    layers.append(Ellipse(-ax * 0.05, ay * 0.25, 13.0, 13.0, BLOOD))  # descending aorta
    # Vessels inside the lungs, drifting as they run through the slices.
    for lung in lungs:
        for _ in range(int(rng.integers(12, 20))):
            angle, r = rng.uniform(0, 2 * math.pi), math.sqrt(rng.uniform(0, 0.7))
            layers.append(
                Tube(
                    lung.cx + r * lung.ax * math.cos(angle),
                    lung.cy + r * lung.ay * math.sin(angle),
                    rng.normal(0, 0.15),
                    rng.normal(0, 0.15),
                    rng.uniform(0.8, 2.5),
                    BLOOD,
                )
            )
    layers += _spine(rng, ay)
    return Patient(
        index,
        "chest",
        z_extent,
        layers=layers,
        hosts=lungs,
        textured=lungs,
        texture_seed=int(rng.integers(2**31)),
    )


def _head(index: int, rng: np.random.Generator, z_extent: tuple[float, float]) -> Patient:
    ax, ay = rng.uniform(68, 78), rng.uniform(88, 100)
    skull = rng.uniform(5, 8)
    z_mid = sum(z_extent) / 2
    brain = Ellipse(0.0, 0.0, ax - 3 - skull, ay - 3 - skull, BRAIN, z_scale=-0.2, z_mid=z_mid)
    layers: list[Ellipse | Tube] = [
        Ellipse(0.0, 0.0, ax, ay, SOFT, z_scale=-0.2, z_mid=z_mid),
        Ellipse(0.0, 0.0, ax - 3, ay - 3, CORTICAL * 1.1, z_scale=-0.2, z_mid=z_mid),
        brain,
    ]
    for side in (-1, 1):
        layers.append(
            Ellipse(
                side * rng.uniform(5, 9),
                rng.uniform(-12, -4),
                rng.uniform(3, 6),
                rng.uniform(14, 22),
                CSF,
                z_scale=-0.8,
                z_mid=z_mid + rng.uniform(-5, 5),
            )
        )
    return Patient(index, "head", z_extent, layers=layers, hosts=[brain])


def _abdomen(index: int, rng: np.random.Generator, z_extent: tuple[float, float]) -> Patient:
    ax, ay = rng.uniform(150, 190), rng.uniform(110, 140)
    fat = rng.uniform(15, 35)
    z_mid = sum(z_extent) / 2
    layers: list[Ellipse | Tube] = [*_body(ax, ay, fat)]
    liver = Ellipse(
        -ax * rng.uniform(0.3, 0.4),
        -ay * 0.1,
        ax * rng.uniform(0.35, 0.45),
        ay * rng.uniform(0.45, 0.55),
        LIVER,
        z_scale=0.3,
        z_mid=z_mid,
    )
    layers.append(liver)
    for side in (-1, 1):
        layers.append(
            Ellipse(
                side * ax * 0.35,
                ay * 0.35,
                25.0,
                35.0,
                KIDNEY,
                z_scale=-0.4,
                z_mid=z_mid + rng.uniform(-10, 10),
            )
        )
    for _ in range(int(rng.integers(3, 7))):
        layers.append(
            Tube(
                rng.uniform(0, ax * 0.5),
                rng.uniform(-ay * 0.4, ay * 0.2),
                rng.normal(0, 0.2),
                rng.normal(0, 0.2),
                rng.uniform(5, 12),
                AIR,
            )
        )
    layers += _spine(rng, ay)
    return Patient(index, "abdomen", z_extent, layers=layers, hosts=[liver])


def _water(index: int, rng: np.random.Generator, z_extent: tuple[float, float]) -> Patient:
    radius = 100.0
    return Patient(index, "water", z_extent, layers=[Ellipse(0.0, 0.0, radius, radius, WATER)])


def _lesion(
    patient: Patient, rng: np.random.Generator, malignant: bool, difficulty: float
) -> Lesion:
    organ = patient.hosts[len(patient.lesions) % len(patient.hosts)]
    lo, hi = patient.z_extent
    # Large, lobulated and heterogeneous: most malignant lesions, and the benign hamartomas.
    large = rng.uniform(6.0 - 3.0 * difficulty, 13.0 - 3.0 * difficulty)
    lobulation = tuple(
        (_unit(rng), rng.uniform(0.15, 0.35) * (1 - 0.6 * difficulty), rng.uniform(2, 4))
        for _ in range(int(rng.integers(2, 5)))
    )
    heterogeneous = 30.0 * (1 - 0.6 * difficulty)
    if malignant:
        radius, texture, calcification = large, heterogeneous, None
        spicules = tuple(
            (_unit(rng), rng.uniform(0.6, 1.4) * (1 - 0.6 * difficulty), rng.uniform(40, 90))
            for _ in range(int(rng.integers(3, 9)))
        )
        # Some malignant lesions are lobulated without spicules: then only the absence of
        # calcium tells them from a hamartoma.
        lobes = lobulation + (spicules if rng.random() < 0.6 else ())
        hu = rng.uniform(25, 50)
    elif rng.random() < 0.35 * (1 - 0.5 * difficulty):
        # A hamartoma: benign, yet large and lobulated like a malignant lesion; its
        # "popcorn" calcification, an absolute-HU feature, is what shows it is benign.
        radius, lobes, texture = large, lobulation, heterogeneous
        hu = rng.uniform(25, 50)
        calcification = (rng.uniform(0.5, 0.8), rng.uniform(300, 600))
    else:
        radius = rng.uniform(2.5, 6.0 + 4.0 * difficulty)
        lobes = tuple(
            (_unit(rng), rng.uniform(0.0, 0.1) + 0.2 * difficulty, 2.0)
            for _ in range(int(rng.integers(0, 2)))
        )
        hu = rng.uniform(15, 40)
        texture = 3.0 + 15.0 * difficulty
        calcification = (
            (rng.uniform(0.4, 1.0), rng.uniform(250, 600))
            if rng.random() < 0.4 * (1 - difficulty)
            else None
        )
    margin = radius * 1.5 + 4
    angle, r = rng.uniform(0, 2 * math.pi), math.sqrt(rng.uniform(0, 1))
    room_x = max(organ.ax - margin, 1.0)
    room_y = max(organ.ay - margin, 1.0)
    centre = (
        organ.cx + r * room_x * math.cos(angle),
        organ.cy + r * room_y * math.sin(angle),
        rng.uniform(lo + (hi - lo) * 0.25, hi - (hi - lo) * 0.25),
    )
    return Lesion(
        label="malignant" if malignant else "benign",
        centre=centre,
        radius=float(radius),
        hu=float(hu),
        lobes=lobes,
        texture=float(texture),
        calcification=calcification,
        texture_seed=int(rng.integers(2**31)),
    )


def _unit(rng: np.random.Generator) -> tuple[float, float, float]:
    v = rng.normal(size=3)
    v /= np.linalg.norm(v)
    return float(v[0]), float(v[1]), float(v[2])


def render_volume(
    patient: Patient,
    pixel_mm: float,
    size: int,
    slice_positions: np.ndarray,
    thickness_mm: float,
) -> np.ndarray:
    """True HU averaged over each slice's thickness: (slices, size, size), float64.

    Each slice averages sub-slices spread over its thickness (partial-volume averaging), one
    per millimetre or so, at least one and at most five.
    """
    half = (size - 1) / 2 * pixel_mm
    coords = np.linspace(-half, half, size)
    x, y = np.meshgrid(coords, coords)
    samples = int(min(5, max(1, round(thickness_mm / 1.0))))
    offsets = (np.arange(samples) + 0.5) / samples * thickness_mm - thickness_mm / 2
    volume = np.empty((len(slice_positions), size, size))
    for k, z in enumerate(slice_positions):
        volume[k] = np.mean([patient.render(x, y, float(z + dz)) for dz in offsets], axis=0)
    return volume
