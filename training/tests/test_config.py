"""The YAML training configuration: documented, validated, unknown keys refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ctdenoise.errors import CTDenoiseError
from ctdenoise.training.config import Config, config_from_dict, documented_defaults, load_config


def test_defaults_follow_the_seed_method() -> None:
    """Every default that has a seed counterpart is the seed's; the two that differ are named and pinned."""
    c = Config()
    assert (c.optim.lr, c.optim.betas) == (2e-4, [0.5, 0.999])
    assert (c.loss.lambda_cycle, c.loss.lambda_identity) == (10.0, 5.0)
    assert (c.data.patch_size, c.data.batch_size) == (128, 4)
    assert c.optim.schedule == "step" and c.optim.gamma == 0.95
    assert c.train.image_pool == 0
    assert c.model.generator_init == "seed" and c.model.generator_args == {} and c.model.discriminator_args == {}
    assert c.data.augment is True  # the seed flips; we also rotate by 90 degrees
    # The two defaults that differ from the seed, on purpose:
    assert c.model.generator == "fast"  # the seed's full-resolution generator is 12x slower (use 'seed')
    assert (c.normalization.hu_min, c.normalization.hu_max, c.normalization.offset, c.normalization.scale) == (
        -1024.0,
        3071.0,
        0.0,
        1000.0,
    )  # the seed: hu_min -1000, no hu_max, scale 4000


def test_documented_defaults_round_trip_and_document_every_field() -> None:
    text = documented_defaults()
    assert config_from_dict(yaml.safe_load(text)) == Config()
    fields = [line for line in text.splitlines() if line.startswith("  ") and not line.startswith("  #")]
    comments = [line for line in text.splitlines() if line.startswith("  #")]
    assert len(fields) == len(comments) > 30


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"train": {"max_step": 5}}, "unknown config key train.max_step"),
        ({"trian": {}}, "unknown config key trian"),
        ({"data": {"batch_size": "4"}}, "data.batch_size must be int"),
        ({"data": {"augment": 1}}, "data.augment must be bool"),
        ({"optim": {"betas": [0.5]}}, "optim.betas"),
        ({"optim": {"schedule": "cosine"}}, "optim.schedule"),
        ({"optim": {"schedule": "linear"}}, "decay_steps"),
        ({"train": {"amp": "fp8"}}, "train.amp"),
        ({"model": {"generator_init": "zeros"}}, "model.generator_init must be one of seed, identity"),
        ({"normalization": {"scale": 0}}, "scale"),
        ({"data": []}, "section data must be a mapping"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(data: dict, message: str) -> None:
    with pytest.raises(CTDenoiseError, match=message.replace(".", r"\.")) as info:
        config_from_dict(data)
    assert "\n" not in str(info.value)


def test_load_config_resolves_cache_relative_to_file(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "run.yaml"
    path.write_text("data:\n  cache: ../cache\ntrain:\n  max_steps: 7\n  val_window: [-100, 200]\n")
    config = load_config(path)
    assert Path(config.data.cache) == (tmp_path / "cache").resolve()
    assert config.train.max_steps == 7 and config.train.val_window == [-100.0, 200.0]


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(CTDenoiseError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(CTDenoiseError, match="not valid YAML at line"):
        load_config(bad)
