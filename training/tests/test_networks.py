"""Tests of the generators, the PatchGAN discriminator and their complexity figures."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from ctdenoise.errors import CTDenoiseError
from ctdenoise.networks import (
    GENERATOR_PRESETS,
    FastGenerator,
    PatchDiscriminator,
    SeedGenerator,
    build_discriminator,
    build_generator,
    count_flops,
    count_parameters,
    init_weights,
    model_summary_rows,
    receptive_field,
    zero_residual,
)
from ctdenoise.normalization import HUNormalization

DATA = Path(__file__).resolve().parents[2] / "data"

SEED_KEYS = sorted(
    [
        "first_layer.1.weight",
        "first_layer.1.bias",
        "conv_block.conv.0.weight",
        "conv_block.conv.3.weight",
        "res_layers.0.res_block.1.weight",
        "res_layers.0.res_block.1.bias",
        "res_layers.0.res_block.5.weight",
        "res_layers.0.res_block.5.bias",
        "res_layers.1.res_block.1.weight",
        "res_layers.1.res_block.1.bias",
        "res_layers.1.res_block.5.weight",
        "res_layers.1.res_block.5.bias",
        "res_layers.2.res_block.1.weight",
        "res_layers.2.res_block.1.bias",
        "res_layers.2.res_block.5.weight",
        "res_layers.2.res_block.5.bias",
        "res_layers.3.res_block.1.weight",
        "res_layers.3.res_block.1.bias",
        "res_layers.3.res_block.5.weight",
        "res_layers.3.res_block.5.bias",
        "res_layers.4.res_block.1.weight",
        "res_layers.4.res_block.1.bias",
        "res_layers.4.res_block.5.weight",
        "res_layers.4.res_block.5.bias",
        "res_layers.5.res_block.1.weight",
        "res_layers.5.res_block.1.bias",
        "res_layers.5.res_block.5.weight",
        "res_layers.5.res_block.5.bias",
        "deconv_block.deconv.0.weight",
        "deconv_block.deconv.3.weight",
        "last_layer.1.weight",
        "last_layer.1.bias",
    ]
)


@pytest.fixture(scope="module")
def seed_generator() -> SeedGenerator:
    torch.manual_seed(0)
    return build_generator("seed")


@pytest.fixture(scope="module")
def fast_generator() -> FastGenerator:
    torch.manual_seed(0)
    return build_generator("fast")


def test_seed_generator_state_dict_keys_match_the_seed(seed_generator: SeedGenerator) -> None:
    assert sorted(seed_generator.state_dict()) == SEED_KEYS
    state = seed_generator.state_dict()
    assert tuple(state["first_layer.1.weight"].shape) == (32, 1, 7, 7)
    assert tuple(state["conv_block.conv.3.weight"].shape) == (128, 64, 3, 3)
    assert tuple(state["res_layers.5.res_block.5.weight"].shape) == (128, 128, 3, 3)
    assert tuple(state["deconv_block.deconv.0.weight"].shape) == (128, 64, 3, 3)  # transposed: (in, out, k, k)
    assert tuple(state["last_layer.1.weight"].shape) == (1, 32, 7, 7)


def test_parameter_counts(seed_generator: SeedGenerator, fast_generator: FastGenerator) -> None:
    assert count_parameters(seed_generator) == 1_958_497
    assert count_parameters(build_discriminator()) == 2_761_728
    # head 49*32, down 9*32*64 + 9*64*128, 12 res convs 9*128*128, up 9*128*64 + 9*64*32, tail 49*32 + 1
    assert count_parameters(fast_generator) == 1568 + 18432 + 73728 + 12 * 147456 + 73728 + 18432 + 1569


def test_instance_norm_is_not_affine(seed_generator: SeedGenerator, fast_generator: FastGenerator) -> None:
    norms = [m for g in (seed_generator, fast_generator) for m in g.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and not any(m.affine or m.track_running_stats for m in norms)


@pytest.mark.parametrize("preset", ["seed", "fast"])
@pytest.mark.parametrize("size", [(32, 48), (97, 131)])
def test_generator_keeps_shape(preset: str, size: tuple[int, int]) -> None:
    model = build_generator(preset, ngf=8, n_res_blocks=2)
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("preset", ["seed", "fast"])
def test_global_residual_makes_a_zeroed_last_conv_the_identity(preset: str) -> None:
    model = zero_residual(build_generator(preset, ngf=8, n_res_blocks=1))
    x = torch.randn(1, 1, 45, 62)
    with torch.no_grad():
        assert torch.equal(model(x), x)


def test_fast_generator_on_a_real_ct_slice(fast_generator: FastGenerator) -> None:
    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "totalsegmentator" / "example_ct_sm.nii.gz")))
    hu = volume[volume.shape[0] // 2].astype(np.float32)  # 101 x 122: neither side a multiple of 4
    norm = HUNormalization.seed()
    x = torch.from_numpy(norm.normalize(hu))[None, None]
    with torch.no_grad():
        y = fast_generator(x)
        identity = zero_residual(copy.deepcopy(fast_generator))(x)
    assert y.shape == x.shape == (1, 1, 101, 122)
    assert torch.isfinite(y).all()
    assert not torch.equal(y, x)
    back = norm.denormalize(identity[0, 0].numpy())
    np.testing.assert_allclose(back, np.clip(hu, -1000, None), atol=1e-3)


def test_fast_generator_reflect_pads_and_crops() -> None:
    """On a 93x125 slice the output is that of its bottom/right reflect-padded 96x128 version, cropped."""
    torch.manual_seed(1)
    fast_generator = build_generator("fast", ngf=8, n_res_blocks=2)
    x = torch.randn(1, 1, 93, 125)
    padded = torch.nn.functional.pad(x, (0, 3, 0, 3), mode="reflect")
    with torch.no_grad():
        out = fast_generator(x)
        reference = fast_generator(padded)[..., :93, :125]
        zero_padded = fast_generator(torch.nn.functional.pad(x, (0, 3, 0, 3)))[..., :93, :125]
    torch.testing.assert_close(out, reference)
    assert not torch.allclose(out, zero_padded)


def test_seed_state_dict_round_trip(seed_generator: SeedGenerator) -> None:
    fresh = SeedGenerator()
    fresh.load_state_dict(seed_generator.state_dict(), strict=True)
    x = torch.randn(1, 1, 24, 24)
    with torch.no_grad():
        assert torch.equal(fresh(x), seed_generator(x))


def test_flops(seed_generator: SeedGenerator, fast_generator: FastGenerator) -> None:
    seed_flops = count_flops(seed_generator)
    macs_per_pixel = 49 * 32 + 9 * 32 * 64 + 9 * 64 * 128 + 12 * 9 * 128 * 128 + 9 * 128 * 64 + 9 * 64 * 32 + 49 * 32
    assert seed_flops == 2 * 512 * 512 * macs_per_pixel
    assert abs(seed_flops - 1.03e12) / 1.03e12 < 0.05
    fast_flops = count_flops(fast_generator)
    assert fast_flops / seed_flops <= 0.1
    assert count_flops(seed_generator, 256, 256) * 4 == seed_flops
    assert next(seed_generator.parameters()).device.type == "cpu"  # counting left the model alone


def test_model_summary_rows() -> None:
    rows = {row["name"]: row for row in model_summary_rows()}
    assert set(rows) == {*GENERATOR_PRESETS, "patchgan"}
    assert rows["seed"]["parameters"] == 1_958_497
    assert rows["seed"]["ratio_to_seed"] == 1.0
    assert 1000 < rows["seed"]["gflops"] < 1060
    assert rows["fast"]["ratio_to_seed"] <= 0.1
    assert rows["patchgan"]["role"] == "discriminator"
    assert rows["patchgan"]["parameters"] == 2_761_728


def test_discriminator_output_shape_and_keys() -> None:
    model = build_discriminator()
    with torch.no_grad():
        out = model(torch.randn(3, 1, 128, 128))
    assert out.shape == (3, 1, 8, 8)
    assert sorted(model.state_dict()) == [f"discriminator.{i}.weight" for i in (0, 11, 2, 5, 8)]


def test_discriminator_receptive_field_is_70() -> None:
    model = PatchDiscriminator(ndf=8)
    assert receptive_field(model) == 70
    # Instance norm couples all positions through its statistics; without it, one score must depend
    # on exactly the 70x70 window at (8 * row, 8 * col).
    for i, layer in enumerate(model.discriminator):
        if isinstance(layer, nn.InstanceNorm2d):
            model.discriminator[i] = nn.Identity()
    x = torch.randn(1, 1, 128, 128, requires_grad=True)
    model(x)[0, 0, 2, 3].backward()
    rows, cols = torch.nonzero(x.grad[0, 0], as_tuple=True)
    assert (rows.min().item(), rows.max().item()) == (16, 16 + 69)
    assert (cols.min().item(), cols.max().item()) == (24, 24 + 69)


def test_discriminator_options_keep_the_seed_keys_and_parameters() -> None:
    seed = build_discriminator()
    variant = build_discriminator(norm="none", highpass_sigma=1.0)
    assert sorted(variant.state_dict()) == sorted(seed.state_dict())
    assert count_parameters(variant) == count_parameters(seed)
    assert not any(isinstance(m, nn.InstanceNorm2d) for m in variant.modules())
    variant.load_state_dict(seed.state_dict())


def test_highpass_discriminator_ignores_smooth_content() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 1, 96, 96)
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    offset = (0.7 + 0.0 * yy)[None, None]
    with torch.no_grad():
        highpass = build_discriminator(norm="none", highpass_sigma=1.0)
        assert torch.allclose(highpass(x + offset), highpass(x), atol=1e-5)
        plain = build_discriminator(norm="none")
        assert not torch.allclose(plain(x + offset), plain(x), atol=1e-3)
        # a smooth ramp is removed only approximately (the blur of a line is the line, away from the border)
        ramp = (xx / 96.0)[None, None]
        assert (highpass(x + ramp) - highpass(x)).abs().max() < 0.05 * highpass(x).abs().max()


def test_energy_discriminator_sees_noise_level_as_an_offset() -> None:
    torch.manual_seed(0)
    model = build_discriminator(norm="none", highpass_sigma=1.0, energy_sigma=2.0)
    assert sorted(model.state_dict()) == sorted(build_discriminator().state_dict())
    seen: list[torch.Tensor] = []
    model.discriminator[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    noise = 0.02 * torch.randn(1, 1, 80, 80)  # 20 HU at the default scale
    with torch.no_grad():
        model(noise + 0.3)
        model(2 * noise + 0.3)  # twice the noise: quarter dose against full dose
    shift = seen[1] - seen[0]
    assert torch.allclose(shift, torch.full_like(shift, math.log(4.0)), atol=0.01)
    assert abs(float(seen[0].mean())) < 1.5  # 20 HU noise lands near 0


def test_discriminator_option_errors_are_one_line() -> None:
    with pytest.raises(CTDenoiseError, match="norm 'batch' is unknown: use one of instance, none"):
        build_discriminator(norm="batch")
    for bad in (-1.0, float("nan"), "1", True):
        with pytest.raises(CTDenoiseError, match="highpass_sigma must be a number >= 0"):
            build_discriminator(highpass_sigma=bad)
    with pytest.raises(CTDenoiseError, match="ndf=0"):
        build_discriminator(ndf=0)
    with pytest.raises(CTDenoiseError, match="energy_sigma needs highpass_sigma > 0"):
        build_discriminator(energy_sigma=2.0)
    with pytest.raises(CTDenoiseError, match="energy_sigma must be a number >= 0"):
        build_discriminator(highpass_sigma=1.0, energy_sigma=-1.0)


def test_long_skip_adds_the_head_features_without_new_weights() -> None:
    torch.manual_seed(0)
    plain = build_generator("fast", ngf=8, n_res_blocks=1)
    skip = build_generator("fast", ngf=8, n_res_blocks=1, long_skip=True)
    assert sorted(skip.state_dict()) == sorted(plain.state_dict())
    skip.load_state_dict(plain.state_dict())
    x = torch.randn(1, 1, 45, 62)
    with torch.no_grad():
        head = plain.head(torch.nn.functional.pad(x, (0, 2, 0, 3), mode="reflect"))
        up = plain.up(plain.res_layers(plain.down(head)))
        expected = plain.tail(up + head)[..., :45, :62] + x
        assert torch.allclose(skip(x), expected, atol=1e-6)
        assert not torch.allclose(skip(x), plain(x), atol=1e-4)
    with pytest.raises(CTDenoiseError, match="long_skip='yes' is invalid: pass true or false"):
        build_generator("fast", long_skip="yes")


def test_highpass_residual_cannot_shift_the_mean() -> None:
    torch.manual_seed(0)
    model = build_generator("fast", ngf=8, n_res_blocks=1, residual_highpass_sigma=2.0)
    last = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
    x = torch.randn(1, 1, 64, 80)
    with torch.no_grad():
        assert abs(float((model(x) - x).mean())) < 0.02 * float((model(x) - x).abs().mean())
        last.weight.zero_()
        last.bias.fill_(1.0)  # the residual branch now outputs the constant tanh(1) = 0.76
        assert torch.allclose(model(x), x, atol=1e-3)
        plain = build_generator("fast", ngf=8, n_res_blocks=1)
        plain.load_state_dict(model.state_dict())
        assert torch.allclose(plain(x) - x, torch.full_like(x, float(torch.tanh(torch.tensor(1.0)))), atol=1e-6)
    for bad in (-1.0, float("inf"), "2", True):
        with pytest.raises(
            CTDenoiseError, match="'fast' generator residual_highpass_sigma must be a number >= 0 \\(0: off\\)"
        ):
            build_generator("fast", residual_highpass_sigma=bad)


def test_init_weights_matches_the_seed() -> None:
    model = init_weights(SeedGenerator(), std=0.02)
    weight = model.res_layers[0].res_block[1].weight
    assert abs(weight.mean().item()) < 1e-3
    assert abs(weight.std().item() - 0.02) < 5e-4
    assert all(not m.bias.any() for m in model.modules() if isinstance(m, nn.Conv2d) and m.bias is not None)


def test_build_errors_name_the_choices() -> None:
    with pytest.raises(CTDenoiseError, match="fast.*seed"):
        build_generator("unet")
    with pytest.raises(CTDenoiseError, match="unknown 'seed' generator option.*'ngf'"):
        build_generator("seed", n_downsampling=3)
    with pytest.raises(CTDenoiseError, match="ngf=0"):
        build_generator("fast", ngf=0)
    with pytest.raises(
        CTDenoiseError, match="valid options are \\['in_channels', 'ndf', 'norm', 'highpass_sigma', 'energy_sigma'\\]"
    ):
        build_discriminator(ngf=64)
    with pytest.raises(CTDenoiseError, match="global residual"):
        build_generator("seed", out_channels=2)


def test_preset_overrides_apply() -> None:
    model = build_generator("fast", n_res_blocks=0, n_downsampling=1)
    assert isinstance(model, FastGenerator)
    assert count_parameters(model) == 1568 + 9 * 32 * 64 + 9 * 64 * 32 + 1569


def test_bad_inputs_raise_one_line_errors(seed_generator: SeedGenerator) -> None:
    with pytest.raises(CTDenoiseError, match="at least 4"):
        seed_generator(torch.zeros(1, 1, 3, 16))
    with pytest.raises(CTDenoiseError, match=r"\(batch, 1, H, W\)"):
        seed_generator(torch.zeros(1, 2, 16, 16))
    with pytest.raises(CTDenoiseError, match="at least 70"):
        build_discriminator()(torch.zeros(1, 1, 64, 128))


def test_lowpass_tail_starts_silent_and_adds_only_low_frequencies() -> None:
    torch.manual_seed(0)
    plain = build_generator("fast", ngf=8, n_res_blocks=1, residual_highpass_sigma=2.0)
    two = build_generator("fast", ngf=8, n_res_blocks=1, residual_highpass_sigma=2.0, lowpass_tail=True)
    assert two.state_dict().keys() - plain.state_dict().keys() == {"tail_low.1.weight", "tail_low.1.bias"}
    two.load_state_dict(plain.state_dict(), strict=False)
    zero_residual(two.tail_low)
    x = torch.randn(1, 1, 45, 62)
    with torch.no_grad():
        assert torch.allclose(two(x), plain(x), atol=1e-6)
        two.tail_low[1].bias.fill_(1.0)  # a constant low-pass residual moves the mean, unlike the high-passed tail
        shift = two(x) - plain(x)
        assert torch.allclose(shift, torch.full_like(x, float(torch.tanh(torch.tensor(1.0)))), atol=1e-4)
        zero_residual(two)
        assert torch.equal(two(x), x)
    with pytest.raises(CTDenoiseError, match="lowpass_tail needs residual_highpass_sigma > 0"):
        build_generator("fast", lowpass_tail=True)
    with pytest.raises(CTDenoiseError, match="lowpass_tail=1 is invalid: pass true or false"):
        build_generator("fast", residual_highpass_sigma=2.0, lowpass_tail=1)
