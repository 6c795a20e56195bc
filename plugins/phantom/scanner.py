"""Simulated CT scanners: presets, and what a scanner does to the true HU of a slice.

The model works in the image domain, as CT image-quality physics describes a
filtered-back-projection scanner (docs/phantom.md says why not the projection domain):

- **Resolution**: the reconstruction kernel sets the modulation transfer function,
  modelled as a Gaussian, ``MTF(f) = exp(-2 pi^2 sigma^2 f^2)`` with a kernel-specific
  ``sigma`` in mm. Sharper kernels have a smaller ``sigma``.
- **Noise**: quantum noise after filtered back-projection has the noise power spectrum
  ``NPS(f) = C |f| MTF(f)^2 / (dose x slice thickness)``: the ramp filter's ``|f|``, shaped
  by the kernel. The noise standard deviation is the square root of the NPS integrated up
  to the Nyquist frequency, so it follows ``1 / sqrt(dose)``, ``1 / sqrt(thickness)``, and
  rises with a sharper kernel, as on a real scanner.
- **Slice thickness**: each slice is the average of the true anatomy over its thickness
  (partial-volume averaging), computed by the anatomy module from sub-slices.
- **Calibration**: an HU offset (water reads as the offset instead of 0), as a scanner off
  its calibration does.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medadapt.engine import did_you_mean

#: Kernel name -> MTF sigma in mm. Names are the vendors' own; the sigma places each kernel
#: on one scale from smooth (soft tissue) to very sharp (lung, bone).
KERNELS: dict[str, float] = {
    # Siemens
    "B30f": 0.95,
    "B45f": 0.70,
    "B60f": 0.45,
    "B70f": 0.32,
    # GE
    "SOFT": 1.00,
    "STANDARD": 0.72,
    "LUNG": 0.40,
    "BONE": 0.30,
    # Philips
    "A": 1.00,
    "B": 0.75,
    "C": 0.55,
    "L": 0.35,
    # Canon / Toshiba
    "FC13": 0.90,
    "FC18": 0.65,
    "FC52": 0.38,
}

#: The noise a standard kernel (sigma 0.72 mm) gives at 10 mGy, 2.5 mm slices, 0.7 mm pixels.
_REFERENCE_NOISE_HU = 12.0
_REFERENCE = {"sigma": 0.72, "dose": 10.0, "thickness": 2.5, "pixel": 0.7, "size": 512}


class ScannerPreset(BaseModel):
    """One site's scanner and protocol, written into every DICOM header it produces."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    manufacturer: str
    model: str
    kernel: str
    ctdi_vol_mgy: float = Field(gt=0, description="dose, as CTDIvol in mGy")
    kvp: float = Field(gt=0)
    slice_thickness_mm: float = Field(gt=0)
    field_of_view_mm: float = Field(gt=0, description="reconstruction field of view")
    hu_offset: float = Field(default=0.0, description="what water reads instead of 0 HU")
    pixel_spacing_mm: float | None = Field(
        default=None, gt=0, description="overrides field_of_view_mm / image size"
    )

    def pixel_spacing(self, size: int) -> float:
        """The pixel size for images of ``size`` x ``size``."""
        return self.pixel_spacing_mm or self.field_of_view_mm / size

    @property
    def mtf_sigma_mm(self) -> float:
        """The Gaussian MTF width of this preset's kernel."""
        return KERNELS[self.kernel]


PRESETS: dict[str, ScannerPreset] = {
    preset.name: preset
    for preset in (
        ScannerPreset(
            name="siemens-smooth-standard-dose",
            manufacturer="SIEMENS",
            model="SOMATOM Definition AS",
            kernel="B30f",
            ctdi_vol_mgy=12.0,
            kvp=120,
            slice_thickness_mm=2.0,
            field_of_view_mm=360.0,
        ),
        ScannerPreset(
            name="ge-sharp-low-dose",
            manufacturer="GE MEDICAL SYSTEMS",
            model="LightSpeed VCT",
            kernel="LUNG",
            ctdi_vol_mgy=1.5,
            kvp=120,
            slice_thickness_mm=1.25,
            field_of_view_mm=380.0,
            hu_offset=8.0,
        ),
        ScannerPreset(
            name="philips-standard",
            manufacturer="Philips",
            model="Brilliance 64",
            kernel="B",
            ctdi_vol_mgy=6.0,
            kvp=120,
            slice_thickness_mm=2.5,
            field_of_view_mm=350.0,
            hu_offset=-6.0,
        ),
        ScannerPreset(
            name="canon-smooth-thick-100kv",
            manufacturer="TOSHIBA",
            model="Aquilion ONE",
            kernel="FC13",
            ctdi_vol_mgy=8.0,
            kvp=100,
            slice_thickness_mm=5.0,
            field_of_view_mm=400.0,
            hu_offset=15.0,
        ),
    )
}


def preset(name: str, **overrides: float | str | None) -> ScannerPreset:
    """A preset by name, with some protocol settings changed.

    Raises:
        ValueError: an unknown preset or kernel name, with the known ones.

    Example:
        >>> preset("ge-sharp-low-dose", ctdi_vol_mgy=3.0).ctdi_vol_mgy
        3.0
    """
    if name not in PRESETS:
        raise ValueError(
            f"unknown scanner preset {name!r}{did_you_mean(name, PRESETS)}; "
            f"presets: {', '.join(PRESETS)}"
        )
    changes = {key: value for key, value in overrides.items() if value is not None}
    if "kernel" in changes:
        check_kernel(str(changes["kernel"]))
    return PRESETS[name].model_copy(update=changes) if changes else PRESETS[name]


def check_kernel(kernel: str) -> str:
    """The kernel name, if the simulator knows it.

    Raises:
        ValueError: an unknown kernel, with the close and the known names.
    """
    if kernel not in KERNELS:
        raise ValueError(
            f"unknown reconstruction kernel {kernel!r}{did_you_mean(kernel, KERNELS)}; "
            f"kernels: {', '.join(KERNELS)}"
        )
    return kernel


def _radial_frequency(size: int, pixel_mm: float) -> np.ndarray:
    """|f| in cycles/mm on the grid of a real 2D FFT of a size x size image."""
    fy = np.fft.fftfreq(size, d=pixel_mm)[:, np.newaxis]
    fx = np.fft.rfftfreq(size, d=pixel_mm)[np.newaxis, :]
    return np.sqrt(fx**2 + fy**2)


def mtf(frequency: np.ndarray, sigma_mm: float) -> np.ndarray:
    """The kernel's modulation transfer function at spatial frequencies in cycles/mm."""
    return np.exp(-2.0 * math.pi**2 * sigma_mm**2 * frequency**2)


def _nps_integral(sigma_mm: float, pixel_mm: float, size: int) -> float:
    """Integral of |f| MTF(f)^2 over the image's frequency band (full plane), in mm^-3."""
    f = _radial_frequency(size, pixel_mm)
    step = 1.0 / (size * pixel_mm)
    return float(_full_plane(f * mtf(f, sigma_mm) ** 2, size).sum() * step * step)


@functools.cache
def _noise_constant() -> float:
    """C in NPS(f) = C |f| MTF^2 / (dose x thickness), set by the reference protocol."""
    r = _REFERENCE
    integral = _nps_integral(r["sigma"], r["pixel"], int(r["size"]))
    return _REFERENCE_NOISE_HU**2 * r["dose"] * r["thickness"] / integral


def noise_sd(preset: ScannerPreset, pixel_mm: float, size: int) -> float:
    """The noise standard deviation (HU) the preset gives in a uniform region.

    Example:
        >>> round(noise_sd(preset("ge-sharp-low-dose"), 0.7, 512))
        103
    """
    integral = _nps_integral(preset.mtf_sigma_mm, pixel_mm, size)
    variance = _noise_constant() * integral / (preset.ctdi_vol_mgy * preset.slice_thickness_mm)
    return math.sqrt(variance)


def acquire(
    truth: np.ndarray, preset: ScannerPreset, pixel_mm: float, rng: np.random.Generator
) -> np.ndarray:
    """What the scanner reconstructs from the true HU of one or more slices.

    Args:
        truth: true HU, (rows, columns) or (slices, rows, columns), already averaged over
            each slice's thickness.
        preset: the scanner and protocol.
        pixel_mm: the pixel size.
        rng: the source of quantum noise.

    Returns:
        Reconstructed HU, float32, same shape.
    """
    size = truth.shape[-1]
    if truth.shape[-2] != size:
        raise ValueError(f"slices must be square, got {truth.shape[-2:]}")
    f = _radial_frequency(size, pixel_mm)
    transfer = mtf(f, preset.mtf_sigma_mm)
    blurred = np.fft.irfft2(np.fft.rfft2(truth) * transfer, s=truth.shape[-2:])
    white = rng.standard_normal(truth.shape)
    shaped = np.fft.irfft2(np.fft.rfft2(white) * np.sqrt(f) * transfer, s=truth.shape[-2:])
    # The filtered white noise has variance mean(|f| MTF^2); scale it to the NPS integral.
    unit = math.sqrt(float(np.mean(_full_plane(f * transfer**2, size))))
    noise = shaped * (noise_sd(preset, pixel_mm, size) / unit)
    return (blurred + noise + preset.hu_offset).astype(np.float32)


def _full_plane(half: np.ndarray, size: int) -> np.ndarray:
    """The full-plane values of a real-FFT half plane (for means over all frequencies)."""
    mirrored = half[:, 1 : size - size // 2]
    return np.concatenate([half, mirrored], axis=1)
