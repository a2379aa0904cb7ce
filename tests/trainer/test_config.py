from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.config import FIELDS, ConfigError, TrainConfig, json_schema


def test_defaults_cover_every_interface_key() -> None:
    keys = set(TrainConfig().to_dict())
    design = {
        "dataset", "model", "z_dim", "g_width", "d_width", "depth", "aux_loss", "lambda", "lr_g", "lr_d",
        "beta1", "beta2", "batch_size", "d_steps", "steps", "eval_every", "eval_samples",
        "feature_extractor", "seed", "device",
    }  # fmt: skip
    assert design <= keys
    assert keys == set(FIELDS)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip_is_identical(tmp_path: Path, suffix: str) -> None:
    config = TrainConfig.from_dict({"lambda": 0.5, "aux_loss": "wgan-gp", "g_width": 64, "dataset": "ring8"})
    first = tmp_path / f"a{suffix}"
    config.save(first)
    loaded = TrainConfig.load(first)
    assert loaded == config
    second = tmp_path / f"b{suffix}"
    loaded.save(second)
    assert first.read_text() == second.read_text()
    if suffix == ".json":
        assert json.loads(first.read_text())["lambda"] == 0.5


def test_ints_accepted_for_floats_and_integral_floats_for_ints() -> None:
    config = TrainConfig.from_dict({"lambda": 1, "steps": 100.0})
    assert config.lam == 1.0 and isinstance(config.lam, float)
    assert config.steps == 100 and isinstance(config.steps, int)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"lamda": 1.0}, "unknown key 'lamda' (did you mean 'lambda'?)"),
        ({"lambda": -1}, "lambda: -1.0 is out of range; expected a number >= 0"),
        ({"lr_g": 0}, "lr_g: 0.0 is out of range; expected a number > 0"),
        ({"steps": 0}, "steps: 0 is out of range; expected an integer >= 1"),
        ({"steps": 1.5}, "steps: expected an integer"),
        ({"batch_size": "64"}, "batch_size: expected an integer"),
        ({"beta1": True}, "beta1: expected a number"),
        ({"lambda": float("nan")}, "lambda: must be finite"),
        ({"aux_loss": "r3"}, "aux_loss: 'r3' is not one of r1, r2, wgan-gp, consensus, none"),
        ({"dataset": "imagenet"}, "dataset: 'imagenet' is not one of digits, ring8, grid25"),
        ({"device": "tpu"}, "device: 'tpu' is not one of cpu, cuda, cuda:N"),
        ({"dataset": "ring8", "model": "dcgan"}, "model: 'dcgan' needs images"),
        ({"dataset": "grid25", "feature_extractor": "classifier"}, "feature_extractor: 'classifier' needs images"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(data)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_bad_yaml_and_non_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML or JSON"):
        TrainConfig.load(bad)
    with pytest.raises(ConfigError, match="expected a mapping"):
        TrainConfig.from_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="cannot read"):
        TrainConfig.load(tmp_path / "missing.yaml")


def test_cli_bad_config_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lambda: 1\nwidth: 3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "train", "--config", str(cfg)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown key 'width'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_yaml_syntax_error_gives_line_and_column() -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_text("lambda: 1\nsteps: [1,\n", source="c.yaml")
    assert str(info.value) == (
        "c.yaml: not valid YAML or JSON: expected the node content, but found '<stream end>' at line 3, column 1"
    )


def test_the_allowed_names_are_the_registries_keys() -> None:
    from trainer.data import DATASETS
    from trainer.losses import REGULARISERS

    assert FIELDS["aux_loss"].choices == tuple(REGULARISERS)
    assert set(FIELDS["dataset"].choices or ()) == {k for k, s in DATASETS.items() if not s.prefix}
    for name in REGULARISERS:
        assert TrainConfig.from_dict({"aux_loss": name}).aux_loss == name


def test_the_config_and_its_registries_load_without_torch() -> None:
    # `gat-tune train --help` and the service's API process read the names, not PyTorch.
    code = "import sys, trainer.config; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_json_schema_lists_every_key_with_its_rule() -> None:
    schema = json_schema()
    assert list(schema["properties"]) == list(FIELDS) == list(TrainConfig().to_dict())
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    assert props["lambda"] == {
        "type": "number",
        "default": 10.0,
        "description": "λ, the regulariser's weight; 0 is the plain GAN, bit for bit",
        "minimum": 0,
        "maximum": 1e6,
    }
    assert props["lr_g"]["exclusiveMinimum"] == 0
    assert props["steps"]["type"] == "integer" and props["steps"]["minimum"] == 1
    assert props["aux_loss"]["enum"] == list(FIELDS["aux_loss"].choices or ())
    assert "folder:PATH" in props["dataset"]["description"]
    json.dumps(schema)  # JSON-able as it is


def test_the_readme_table_lists_the_registries() -> None:
    from trainer.data import DATASETS
    from trainer.losses import REGULARISERS

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| [^|]* \| (.*) \|$", readme, re.M)}
    assert re.findall(r"`([^`]+)`", rows["aux_loss"]) == list(REGULARISERS)
    shown = [source.shown(key) for key, source in DATASETS.items()]
    assert [name for name in re.findall(r"`([^`]+)`", rows["dataset"]) if name != "vision"] == shown
