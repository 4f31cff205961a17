"""CycleGAN generators: the seed project's full-resolution ResNet and a fast downsampling ResNet.

Both map a (B, C, H, W) slice in network units to a slice of the same shape and end with a global
residual, ``out = x + tanh(body(x))``, so an untrained or lightly trained generator stays close to
the identity. Instance norm is never affine (as in the seed); ``norm="fixed"`` freezes it at
statistics measured on training slices (:class:`FixedNorm`).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ctdenoise.errors import CTDenoiseError
from ctdenoise.networks.filters import blur, check_sigma, gaussian_kernel

MIN_SIZE = 4
"""Smallest height and width a generator accepts (its 7x7 reflection padding needs 4 pixels)."""

NORMS = ("instance", "fixed")
"""Normalisation layers: per-slice instance norm (as trained), or its statistics frozen."""


class FixedNorm(nn.Module):
    """Instance norm with frozen statistics: ``(x - mean) / std`` with per-channel buffers.

    Instance norm normalises each slice by its own feature statistics, so the output at a pixel
    depends on the whole field of view: on a crop inside the body (no air to set the scale) the
    bundled models amplified the noise they should remove (PSNR 13 dB against 25 dB in). With the
    statistics measured once on training slices (:func:`ctdenoise.norm_calibration.fix_norms`),
    the generator is purely convolutional: a pixel's output depends on its receptive field only,
    whatever the crop, tile or padding around it.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``(x - mean) / std`` per channel."""
        return (x - self.mean[:, None, None]) / self.std[:, None, None]


def norm_layer(norm: str, channels: int) -> nn.Module:
    """The normalisation layer ``norm`` (one of :data:`NORMS`) for ``channels`` channels."""
    return nn.InstanceNorm2d(channels) if norm == "instance" else FixedNorm(channels)


def _check_norm(owner: str, norm: str) -> str:
    """Reject a normalisation that is not one of :data:`NORMS`."""
    if norm not in NORMS:
        raise CTDenoiseError(f"{owner} option norm={norm!r} is invalid: use one of {', '.join(NORMS)}")
    return norm


class ResidualBlock(nn.Module):
    """Two reflection-padded 3x3 convolutions at constant width, with an identity skip.

    ``res_block`` indices 1 and 5 are the convolutions, as in the seed's state dict.
    """

    def __init__(self, channels: int, bias: bool = True, norm: str = "instance") -> None:
        super().__init__()
        self.res_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, bias=bias),
            norm_layer(norm, channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, bias=bias),
            norm_layer(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x + block(x)``."""
        return x + self.res_block(x)


class ConvBlock(nn.Module):
    """The seed's widening block: two bias-free 3x3 stride-1 convolutions, each with IN + ReLU."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, norm: str = "instance") -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            norm_layer(norm, mid_channels),
            nn.ReLU(),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            norm_layer(norm, out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the two convolutions."""
        return self.conv(x)


class DeconvBlock(nn.Module):
    """The seed's narrowing block: two bias-free 3x3 stride-1 transposed convolutions with IN + ReLU."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, norm: str = "instance") -> None:
        super().__init__()
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            norm_layer(norm, mid_channels),
            nn.ReLU(),
            nn.ConvTranspose2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            norm_layer(norm, out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the two transposed convolutions."""
        return self.deconv(x)


def init_weights(module: nn.Module, std: float = 0.02) -> nn.Module:
    """Initialise as the seed does: conv and linear weights ~ N(0, std), their biases zero.

    Returns the module, changed in place.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(layer.weight, 0.0, std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


def zero_residual(model: nn.Module) -> nn.Module:
    """Zero the generator's last convolution (and its low-pass tail's), so that ``x + tanh(0) = x``: it starts as the identity.

    Training then spends no steps learning to copy its input: from the first step the
    discriminators judge real low-dose images against real full-dose ones, which is the noise
    difference the generator has to remove. Returns the module, changed in place.
    """
    convs = [layer for layer in model.modules() if isinstance(layer, nn.Conv2d)]
    if not convs:
        raise CTDenoiseError(f"{type(model).__name__} has no convolution to zero")
    tails = [convs[-1]] + ([model.tail_low[1]] if isinstance(getattr(model, "tail_low", None), nn.Sequential) else [])
    for conv in tails:
        nn.init.zeros_(conv.weight)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
    return model


def _check_channels(in_channels: int, out_channels: int) -> None:
    """Reject channel counts the global residual cannot add."""
    if in_channels != out_channels:
        raise CTDenoiseError(
            f"generator in_channels ({in_channels}) and out_channels ({out_channels}) differ: "
            "the global residual needs them equal"
        )


def _check_input(x: torch.Tensor, channels: int, min_size: int = MIN_SIZE) -> None:
    """Reject inputs that are not (B, channels, H>=min_size, W>=min_size)."""
    if x.dim() != 4 or x.shape[1] != channels or min(x.shape[-2:]) < min_size:
        raise CTDenoiseError(
            f"generator input has shape {tuple(x.shape)}: pass (batch, {channels}, H, W) "
            f"with H and W at least {min_size}"
        )


class SeedGenerator(nn.Module):
    """The seed project's generator, layer for layer and with its state-dict key names.

    Reflection pad 3 + 7x7 conv (ngf) + IN + ReLU; two 3x3 convs to 2ngf and 4ngf; residual blocks
    at 4ngf; two 3x3 transposed convs back to ngf; reflection pad 3 + 7x7 conv + tanh; plus ``x``.
    It never downsamples, so it is costly: about 1.03 TFLOP per 512x512 slice at the defaults.
    """

    def __init__(
        self, in_channels: int = 1, out_channels: int = 1, ngf: int = 32, n_res_blocks: int = 6, norm: str = "instance"
    ) -> None:
        super().__init__()
        _check_channels(in_channels, out_channels)
        _check_norm("'seed' generator", norm)
        self.in_channels = in_channels
        self.first_layer = nn.Sequential(
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, kernel_size=7),
            norm_layer(norm, ngf),
            nn.ReLU(inplace=True),
        )
        self.conv_block = ConvBlock(ngf, ngf * 2, ngf * 4, norm)
        self.res_layers = nn.Sequential(*[ResidualBlock(ngf * 4, norm=norm) for _ in range(n_res_blocks)])
        self.deconv_block = DeconvBlock(ngf * 4, ngf * 2, ngf, norm)
        self.last_layer = nn.Sequential(
            nn.ReflectionPad2d(3),
            nn.Conv2d(ngf, out_channels, kernel_size=7),
            nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x + tanh(body(x))`` at the input's size."""
        _check_input(x, self.in_channels)
        h = self.first_layer(x)
        h = self.conv_block(h)
        h = self.res_layers(h)
        h = self.deconv_block(h)
        return self.last_layer(h) + x


class FastGenerator(nn.Module):
    """A ResNet generator in the style of Zhu et al.: stride-2 downsampling, residual blocks, upsampling.

    Reflection pad 3 + 7x7 conv (ngf) + IN + ReLU; ``n_downsampling`` 3x3 stride-2 convs doubling the
    width; residual blocks; as many upsampling steps halving it; reflection pad 3 + 7x7 conv + tanh;
    plus ``x``. Upsampling is nearest-neighbour x2 followed by a 3x3 conv (Odena et al. 2016) rather
    than Zhu et al.'s stride-2 transposed conv, whose uneven kernel overlap printed a checkerboard
    on denoised CT in our first CPU training runs. Convolutions followed by instance norm carry no bias (the norm
    would cancel it). Inputs whose sides are not multiples of ``2 ** n_downsampling`` are
    reflect-padded at the bottom and right inside ``forward`` and cropped back.

    ``long_skip=True`` adds the head's full-resolution features to the last upsampling block's
    output before the tail (the outermost skip of a U-Net; it has no weights, so the state-dict keys
    are unchanged). Pixel-level noise then reaches the tail directly instead of through the 4x
    bottleneck: with paired L1 on our real CT, 300 steps cut liver noise from 23.7 HU to 16.8 HU
    with it and to 20.6 HU without.

    ``residual_highpass_sigma > 0`` subtracts from the residual its own Gaussian blur (sigma in
    pixels, reflect padding) before adding it to ``x``: the generator can then change texture
    (noise) but not the local mean, so CT numbers in homogeneous regions are kept by construction.
    A CycleGAN can otherwise shift the mean freely: G_Q2F adds c, G_F2Q subtracts it, the cycle
    loss does not see it, and a high-pass discriminator cannot either.

    ``lowpass_tail=True`` (with the high-pass on) adds a second tail on the same features whose
    residual is low-passed with the same Gaussian and added too: the first tail changes texture, the
    second the low frequencies the high-pass takes out (noise blotches wider than a few pixels).
    :func:`zero_residual` zeroes its convolution too, so a model fine-tuned from a high-pass
    generator (supervised, where the full-dose target keeps the CT numbers honest) starts as that
    generator.

    ``norm="fixed"`` uses :class:`FixedNorm` in place of instance norm (same state-dict keys, plus
    each norm's ``mean`` and ``std``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        ngf: int = 32,
        n_res_blocks: int = 6,
        n_downsampling: int = 2,
        long_skip: bool = False,
        residual_highpass_sigma: float = 0.0,
        lowpass_tail: bool = False,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        _check_channels(in_channels, out_channels)
        _check_norm("'fast' generator", norm)
        for name, value in (("long_skip", long_skip), ("lowpass_tail", lowpass_tail)):
            if not isinstance(value, bool):
                raise CTDenoiseError(f"'fast' generator option {name}={value!r} is invalid: pass true or false")
        self.in_channels = in_channels
        self.long_skip = long_skip
        self.residual_highpass_sigma = check_sigma(
            "'fast' generator", "residual_highpass_sigma", residual_highpass_sigma
        )
        if lowpass_tail and not self.residual_highpass_sigma > 0:
            raise CTDenoiseError(
                "'fast' generator option lowpass_tail needs residual_highpass_sigma > 0: "
                "it adds back the low frequencies the high-pass takes out"
            )
        self.lowpass_tail = lowpass_tail
        if self.residual_highpass_sigma > 0:
            self.register_buffer("blur_kernel", gaussian_kernel(self.residual_highpass_sigma), persistent=False)
        self.multiple = 2**n_downsampling
        self.head = nn.Sequential(
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, kernel_size=7, bias=False),
            norm_layer(norm, ngf),
            nn.ReLU(inplace=True),
        )
        down: list[nn.Module] = []
        for i in range(n_downsampling):
            width = ngf * 2**i
            down += [
                nn.Conv2d(width, width * 2, kernel_size=3, stride=2, padding=1, bias=False),
                norm_layer(norm, width * 2),
                nn.ReLU(inplace=True),
            ]
        self.down = nn.Sequential(*down)
        inner = ngf * self.multiple
        self.res_layers = nn.Sequential(*[ResidualBlock(inner, bias=False, norm=norm) for _ in range(n_res_blocks)])
        up: list[nn.Module] = []
        for i in range(n_downsampling, 0, -1):
            width = ngf * 2**i
            up += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(width, width // 2, kernel_size=3, padding=1, padding_mode="reflect", bias=False),
                norm_layer(norm, width // 2),
                nn.ReLU(inplace=True),
            ]
        self.up = nn.Sequential(*up)
        if lowpass_tail:  # registered before the tail, whose convolution stays the last one
            self.tail_low = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, kernel_size=7), nn.Tanh())
        self.tail = nn.Sequential(
            nn.ReflectionPad2d(3),
            nn.Conv2d(ngf, out_channels, kernel_size=7),
            nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x + tanh(body(x))`` at the input's size, for any H and W above 2 ** n_downsampling."""
        _check_input(x, self.in_channels, self.multiple + 1)  # the bottleneck keeps more than one pixel
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self.multiple, -width % self.multiple
        h = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else x
        head = self.head(h)
        h = self.up(self.res_layers(self.down(head)))
        features = h + head if self.long_skip else h
        h = self.tail(features)[..., :height, :width]
        if self.residual_highpass_sigma > 0:
            h = h - blur(h, self.blur_kernel)
        if self.lowpass_tail:
            h = h + blur(self.tail_low(features)[..., :height, :width], self.blur_kernel)
        return h + x


GENERATOR_CLASSES: dict[str, type[nn.Module]] = {"seed": SeedGenerator, "fast": FastGenerator}

GENERATOR_PRESETS: dict[str, dict[str, Any]] = {
    "seed": {"in_channels": 1, "out_channels": 1, "ngf": 32, "n_res_blocks": 6},
    "fast": {"in_channels": 1, "out_channels": 1, "ngf": 32, "n_res_blocks": 6, "n_downsampling": 2},
}
"""Default constructor arguments per preset; ``seed`` reproduces the seed project's generator."""


def validate_kwargs(owner: str, cls: type[nn.Module], kwargs: dict[str, Any]) -> None:
    """Raise a one-line error for an unknown constructor argument or an integer option below its minimum.

    Options whose default is not an integer are left to the constructor to check.
    """
    parameters = {name: p for name, p in inspect.signature(cls.__init__).parameters.items() if name != "self"}
    valid = list(parameters)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise CTDenoiseError(f"unknown {owner} option(s) {unknown}: valid options are {valid}")
    for name, value in kwargs.items():
        default = parameters[name].default
        if isinstance(default, bool) or not isinstance(default, int):
            continue
        minimum = 0 if name in ("n_res_blocks", "n_downsampling") else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise CTDenoiseError(f"{owner} option {name}={value!r} is invalid: pass an integer >= {minimum}")


def build_generator(preset: str, **overrides: Any) -> nn.Module:
    """Build a generator from a preset name plus keyword overrides.

    The weights are initialised as in the seed (:func:`init_weights`).

    Raises:
        CTDenoiseError: unknown preset, unknown option or invalid option value.
    """
    if preset not in GENERATOR_PRESETS:
        raise CTDenoiseError(f"unknown generator preset {preset!r}: choose one of {sorted(GENERATOR_PRESETS)}")
    cls = GENERATOR_CLASSES[preset]
    kwargs = {**GENERATOR_PRESETS[preset], **overrides}
    validate_kwargs(f"'{preset}' generator", cls, kwargs)
    return init_weights(cls(**kwargs))
