"""Parallel-beam X-ray transform and filtered back-projection in torch (CPU or GPU).

Conventions (shared by every function here):

- Images are ``[B, H, W]`` tensors indexed ``[row, column]``; ``spacing = (row, column)`` is the
  pixel size in mm. With the default spacing 1 every length is in pixel lengths.
- Coordinates are centred on the image: ``x = (j - (W - 1) / 2) * spacing[1]`` for column ``j`` and
  ``y = (i - (H - 1) / 2) * spacing[0]`` for row ``i`` (y grows with the row index).
- A view at angle ``theta`` integrates along the direction ``(-sin theta, cos theta)``; its detector
  coordinate is ``t = x cos theta + y sin theta``, sampled at bin centres
  ``t_k = (k - (D - 1) / 2) * detector_spacing``. ``detector_spacing`` defaults to the smaller pixel
  size and ``D`` to the odd count that covers the image diagonal, so every view sees every pixel.
- Line integrals have the unit image value x mm. Outside the image the value is zero (air).
- Filtered back-projection expects views spread evenly over ``[0, pi)`` (:func:`parallel_angles`)
  and inverts :func:`forward_project`: ``filtered_backprojection(forward_project(mu, a), a, (H, W))``
  is approximately ``mu``.

Method: both operators use the Fourier slice theorem. The image is treated as band-limited samples
(pixel ``i, j`` is a point of weight value x pixel area); the 2-D spectrum on a twice-oversampled grid
is interpolated onto the polar samples ``omega (cos theta, sin theta)`` of every view with a
Kaiser-Bessel kernel (a non-uniform FFT; relative accuracy about 1e-5), and a 1-D inverse FFT per
view gives the projections. :func:`back_project` is the exact adjoint chain (1-D FFT per view,
spreading onto the grid, inverse 2-D FFT), i.e. the band-limited interpolation of each view at
``t(x, y)`` summed over views. The interpolation weights form a sparse matrix built once per geometry
and cached, so a batch of 512 x 512 slices costs a few 2-D FFTs and two sparse products per slice,
about linear in the number of views instead of ``views x pixels`` interpolations.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Dict, Sequence, Tuple

import torch

from ctdenoise.errors import CTDenoiseError

Spacing = Tuple[float, float]

_KERNEL_WIDTH = 6  # Kaiser-Bessel taps per dimension
_OVERSAMPLING = 2  # spectral grid size / image size
_KB_BETA = math.pi * math.sqrt((_KERNEL_WIDTH / _OVERSAMPLING) ** 2 * (_OVERSAMPLING - 0.5) ** 2 - 0.8)

FILTERS: Tuple[str, ...] = ("ramp", "shepp-logan", "cosine", "hamming", "hann")
"""Windows accepted by :func:`filter_sinogram` and :func:`filtered_backprojection`."""


def gaussian_window(sigma: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``exp(-f^2 / (2 sigma^2))``, ``f`` and ``sigma`` in cycles per bin: a smooth kernel's roll-off.

    Smooth clinical kernels (B30, STANDARD) roll the ramp off gradually; the low-dose simulation fits
    ``sigma`` to an image's own noise texture (:func:`ctdenoise.physics.lowdose.match_kernel`).
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise CTDenoiseError(f"Gaussian window width {sigma!r} must be a positive number of cycles per bin")
    return lambda f: torch.exp(-0.5 * (f / sigma) ** 2)


def _ramp_window(name: str | float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The apodisation window for filter ``name`` (or a Gaussian of that width) in cycles per bin."""
    if isinstance(name, (int, float)) and not isinstance(name, bool):
        return gaussian_window(float(name))
    windows: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "ramp": torch.ones_like,
        "shepp-logan": torch.sinc,
        "cosine": lambda f: torch.cos(math.pi * f),
        "hamming": lambda f: 0.54 + 0.46 * torch.cos(2.0 * math.pi * f),
        "hann": lambda f: 0.5 + 0.5 * torch.cos(2.0 * math.pi * f),
    }
    if name not in windows:
        raise CTDenoiseError(f"unknown reconstruction filter {name!r}: choose one of {', '.join(FILTERS)}")
    return windows[name]


def parallel_angles(views: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``views`` angles in radians spread evenly over ``[0, pi)`` (float32)."""
    if views < 1:
        raise CTDenoiseError(f"the number of views must be at least 1, got {views}")
    return torch.arange(views, dtype=torch.float64, device=device).mul(math.pi / views).float()


def _detector_spacing(spacing: Spacing, detector_spacing: float | None) -> float:
    """The detector bin width in mm: ``detector_spacing`` or, when not given, the smaller pixel size."""
    return float(detector_spacing or min(spacing))


def default_detector_count(
    shape: Sequence[int], spacing: Spacing = (1.0, 1.0), detector_spacing: float | None = None
) -> int:
    """The odd number of detector bins that covers the diagonal of an image of ``shape`` (H, W)."""
    dt = _detector_spacing(spacing, detector_spacing)
    diagonal = math.hypot(shape[0] * spacing[0], shape[1] * spacing[1])
    count = int(math.ceil(diagonal / dt)) + 1
    return count + 1 - count % 2


def _fast_length(n: int) -> int:
    """The smallest ``2^a 3^b 5^c`` that is at least ``n`` (sizes the FFTs handle fastest)."""
    best = 1 << max(0, (n - 1).bit_length())
    power5 = 1
    while power5 < best:
        power3 = power5
        while power3 < best:
            size = power3
            while size < n:
                size *= 2
            best = min(best, size)
            power3 *= 3
        power5 *= 5
    return best


def _kaiser_bessel(x: torch.Tensor) -> torch.Tensor:
    """The interpolation kernel on ``|x| <= width / 2`` grid cells (zero outside)."""
    z = 1.0 - (2.0 * x / _KERNEL_WIDTH) ** 2
    return torch.where(z >= 0, torch.special.i0(_KB_BETA * z.clamp(min=0).sqrt()), torch.zeros_like(x))


def _kaiser_bessel_spectrum(xi: torch.Tensor) -> torch.Tensor:
    """Fourier transform of :func:`_kaiser_bessel` at ``xi`` cycles per grid cell (|xi| < beta / (pi W))."""
    a = torch.sqrt(_KB_BETA**2 - (math.pi * _KERNEL_WIDTH * xi) ** 2)
    return _KERNEL_WIDTH * torch.sinh(a) / a


@dataclass(frozen=True)
class _FourierOperator:
    """Everything the Fourier projector needs for one geometry (see the module docstring)."""

    grid: Tuple[int, int]  # oversampled spectral grid Gy, Gx
    views: int
    detectors: int
    padded: int  # 1-D FFT length per view (>= detectors)
    rows: torch.Tensor  # [H] grid row of each image row: (i - H // 2) mod Gy
    cols: torch.Tensor  # [W] grid column of each image column
    deapodisation: torch.Tensor  # [H, W] real: 1 / kernel spectrum at each pixel
    phase: torch.Tensor  # [V, K] complex: centring phases, band mask and scale of the forward map
    interpolation: torch.Tensor  # sparse CSR [V * K, Gy * Gx]
    spreading: torch.Tensor  # its transpose, sparse CSR [Gy * Gx, V * K]

    @property
    def frequencies(self) -> int:
        """Non-negative frequencies K per view."""
        return self.padded // 2 + 1


def _interpolation_matrices(u: torch.Tensor, grid: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Kaiser-Bessel weights from grid ``[Gy, Gx]`` to points ``u`` ``[M, 2]`` (grid units, y then x).

    Returns the ``[M, Gy*Gx]`` matrix and its transpose, both CSR with int32 indices.
    """
    points, taps = u.shape[0], torch.arange(_KERNEL_WIDTH, device=u.device, dtype=u.dtype)
    first = torch.floor(u - _KERNEL_WIDTH / 2.0) + 1.0  # [M, 2]
    cells = first[:, :, None] + taps  # [M, 2, W]
    weight = _kaiser_bessel(u[:, :, None] - cells)
    index = cells.long()
    cols = (index[:, 0, :, None] % grid[0]) * grid[1] + index[:, 1, None, :] % grid[1]
    vals = (weight[:, 0, :, None] * weight[:, 1, None, :]).float()
    cols, order = cols.reshape(points, -1).sort(dim=1)
    vals = vals.reshape(points, -1).gather(1, order).reshape(-1)
    cols = cols.reshape(-1)
    per_row = _KERNEL_WIDTH**2
    size = grid[0] * grid[1]
    crow = torch.arange(points + 1, device=u.device, dtype=torch.int64) * per_row
    order = torch.argsort(cols, stable=True)
    crow_t = torch.zeros(size + 1, device=u.device, dtype=torch.int64)
    crow_t[1:] = torch.bincount(cols, minlength=size).cumsum(0)
    rows = torch.arange(points, device=u.device).repeat_interleave(per_row)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        forward = torch.sparse_csr_tensor(crow.int(), cols.int(), vals, (points, size), check_invariants=False)
        adjoint = torch.sparse_csr_tensor(
            crow_t.int(), rows[order].int(), vals[order], (size, points), check_invariants=False
        )
    return forward, adjoint


@lru_cache(maxsize=2)
def _operator(
    shape: Tuple[int, int],
    spacing: Spacing,
    detector_spacing: float,
    detectors: int,
    angles: Tuple[float, ...],
    device: str,
) -> _FourierOperator:
    """Build (on the CPU, in float64) and cache the Fourier projector for one geometry."""
    f64 = torch.float64
    grid = (_OVERSAMPLING * shape[0], _OVERSAMPLING * shape[1])
    # The 1-D period must hold the longest projection (the diagonal) whatever the detector count.
    padded = _fast_length(max(detectors, default_detector_count(shape, spacing, detector_spacing)))
    # Pixel offsets a = index - n // 2 lie in [-G/4, G/4); delta: that origin's distance from the centre.
    offsets = [torch.arange(n, dtype=f64) - n // 2 for n in shape]
    delta = [n // 2 - (n - 1) / 2.0 for n in shape]
    deapod_y = 1.0 / _kaiser_bessel_spectrum(offsets[0] / grid[0])
    deapod_x = 1.0 / _kaiser_bessel_spectrum(offsets[1] / grid[1])

    theta = torch.tensor(angles, dtype=f64)[:, None]
    m = torch.arange(padded // 2 + 1, dtype=f64)[None, :]
    omega = m / (padded * detector_spacing)  # cycles per mm
    nu_y = omega * torch.sin(theta) * spacing[0]  # cycles per pixel, [V, K]
    nu_x = omega * torch.cos(theta) * spacing[1]
    inside = (nu_y.abs() <= 0.5) & (nu_x.abs() <= 0.5)  # band limit of the pixel grid
    centre = (detectors - 1) / 2.0
    angle = -2.0 * math.pi * (m * centre / padded + nu_y * delta[0] + nu_x * delta[1])
    scale = spacing[0] * spacing[1] / detector_spacing
    phase = torch.polar(inside.to(f64) * scale, angle).to(torch.complex64)

    u = torch.stack((nu_y * grid[0], nu_x * grid[1]), dim=-1).reshape(-1, 2)
    interpolation, spreading = _interpolation_matrices(u, grid)
    dev = torch.device(device)
    return _FourierOperator(
        grid=grid,
        views=len(angles),
        detectors=detectors,
        padded=padded,
        rows=(offsets[0] % grid[0]).long().to(dev),
        cols=(offsets[1] % grid[1]).long().to(dev),
        deapodisation=(deapod_y[:, None] * deapod_x[None, :]).float().to(dev),
        phase=phase.to(dev),
        interpolation=interpolation.to(dev),
        spreading=spreading.to(dev),
    )


def _get_operator(
    shape: Sequence[int],
    angles: torch.Tensor,
    spacing: Spacing,
    detector_spacing: float | None,
    detectors: int | None,
    device: torch.device,
) -> _FourierOperator:
    """Normalise the geometry arguments into a cache key and fetch the operator."""
    if min(spacing) <= 0:
        raise CTDenoiseError(f"pixel spacing must be positive, got {tuple(spacing)}")
    height, width = int(shape[0]), int(shape[1])
    spacing = (float(spacing[0]), float(spacing[1]))
    dt = _detector_spacing(spacing, detector_spacing)
    n_det = int(detectors or default_detector_count((height, width), spacing, dt))
    key_angles = tuple(float(a) for a in angles.detach().cpu().double().reshape(-1))
    return _operator((height, width), spacing, dt, n_det, key_angles, str(device))


def _apply_real(matrix: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``matrix @ values`` for complex ``values`` ``[B, N]`` and a real sparse matrix: ``[B, M]``."""
    batch = values.shape[0]
    stacked = torch.view_as_real(values.transpose(0, 1).contiguous()).reshape(values.shape[1], 2 * batch)
    product = (matrix @ stacked).reshape(-1, batch, 2)
    return torch.view_as_complex(product.contiguous()).transpose(0, 1)


def forward_project(
    mu: torch.Tensor,
    angles: torch.Tensor,
    *,
    spacing: Spacing = (1.0, 1.0),
    detector_spacing: float | None = None,
    detectors: int | None = None,
) -> torch.Tensor:
    """Line integrals of ``mu`` ``[B, H, W]`` along parallel rays: ``[B, views, detectors]``.

    Units are ``mu`` x mm (pixel lengths with the default spacing); see the module conventions.
    """
    if mu.ndim != 3:
        raise ValueError(f"forward_project expects [B, H, W], got shape {tuple(mu.shape)}")
    op = _get_operator(mu.shape[-2:], angles, spacing, detector_spacing, detectors, mu.device)
    batch, (gy, gx) = mu.shape[0], op.grid
    padded_image = torch.zeros(batch, gy, gx, dtype=torch.float32, device=mu.device)
    padded_image[:, op.rows[:, None], op.cols[None, :]] = mu.to(torch.float32) * op.deapodisation
    spectrum = torch.fft.fft2(padded_image).reshape(batch, -1)
    polar = _apply_real(op.interpolation, spectrum).reshape(batch, op.views, op.frequencies)
    return torch.fft.irfft(polar * op.phase, n=op.padded, dim=-1)[..., : op.detectors]


def back_project(
    sino: torch.Tensor,
    angles: torch.Tensor,
    out_shape: Sequence[int],
    *,
    spacing: Spacing = (1.0, 1.0),
    detector_spacing: float | None = None,
) -> torch.Tensor:
    """Sum over views of ``sino`` ``[B, views, detectors]`` interpolated at each pixel's ``t``: ``[B, H, W]``.

    Each view is interpolated band-limited (zero beyond its bins); no angular weight is applied.
    """
    if sino.ndim != 3:
        raise ValueError(f"back_project expects [B, views, detectors], got shape {tuple(sino.shape)}")
    batch, n_views, n_det = sino.shape
    op = _get_operator(out_shape, angles, spacing, detector_spacing, n_det, sino.device)
    if op.views != n_views:
        raise ValueError(f"sinogram has {n_views} views but {op.views} angles were given")
    (gy, gx), padded = op.grid, op.padded
    spectrum = torch.fft.rfft(sino.to(torch.float32), n=padded, dim=-1)
    # Hermitian half-spectrum: the real part of the one-sided sum counts each frequency twice,
    # except zero and, for an even length, the Nyquist bin, which have no mirror image.
    weight = torch.full((op.frequencies,), 2.0 / padded, device=sino.device)
    weight[0] = 1.0 / padded
    if padded % 2 == 0:
        weight[-1] = 1.0 / padded
    coefficients = (spectrum * op.phase.conj() * weight).reshape(batch, -1)
    spread = _apply_real(op.spreading, coefficients).reshape(batch, gy, gx)
    image = torch.fft.ifft2(spread) * (gy * gx)
    image = image.index_select(1, op.rows).index_select(2, op.cols)
    scale = _detector_spacing(spacing, detector_spacing) / (spacing[0] * spacing[1])
    return image.real * op.deapodisation * scale


def ramp_filter_response(
    padded_length: int, filter_name: str | float = "ramp", device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Frequency response (``rfft`` layout, unit detector spacing) of a windowed ramp filter.

    The ramp is the spectrum of the band-limited spatial kernel (h[0] = 1/4, h[n odd] = -1/(pi n)^2,
    h[n even] = 0), which keeps the right DC level, multiplied by the named window (a number: the
    width of a :func:`gaussian_window`).
    """
    window = _ramp_window(filter_name)
    n = torch.arange(padded_length, device=device, dtype=torch.float64)
    n = torch.minimum(n, padded_length - n)  # circular distance to bin 0
    kernel = torch.where(n % 2 == 1, -1.0 / (math.pi * n.clamp(min=1)) ** 2, torch.zeros_like(n))
    kernel[0] = 0.25
    response = torch.fft.rfft(kernel).real
    freq = torch.fft.rfftfreq(padded_length, device=device, dtype=torch.float64)
    return (response * window(freq)).to(torch.float32)


def filter_sinogram(
    sino: torch.Tensor, filter_name: str | float = "ramp", detector_spacing: float = 1.0
) -> torch.Tensor:
    """Convolve each view of ``sino`` ``[..., detectors]`` with the windowed ramp (units: per mm).

    Zero-padding to a power of two of at least twice the detector count avoids circular wrap-around.
    """
    n_det = sino.shape[-1]
    padded = 1 << int(math.ceil(math.log2(2 * n_det)))
    response = ramp_filter_response(padded, filter_name, sino.device)
    spectrum = torch.fft.rfft(sino.to(torch.float32), n=padded, dim=-1) * response
    return torch.fft.irfft(spectrum, n=padded, dim=-1)[..., :n_det] / detector_spacing


def filtered_backprojection(
    sino: torch.Tensor,
    angles: torch.Tensor,
    out_shape: Sequence[int],
    filter_name: str | float = "ramp",
    *,
    spacing: Spacing = (1.0, 1.0),
    detector_spacing: float | None = None,
) -> torch.Tensor:
    """Reconstruct ``[B, H, W]`` from ``sino`` ``[B, views, detectors]`` taken evenly over ``[0, pi)``.

    Units: sinogram units per mm (per pixel length with the default spacing), so it inverts
    :func:`forward_project` with the same geometry.
    """
    dt = _detector_spacing(spacing, detector_spacing)
    filtered = filter_sinogram(sino, filter_name, dt)
    image = back_project(filtered, angles, out_shape, spacing=spacing, detector_spacing=dt)
    return image * (math.pi / sino.shape[1])
