"""TrainConfig: every knob of one GAT training run, validated, with a JSON/YAML round trip.

The key names are an interface (DESIGN.md): studies search over them and `GET /best` returns
them. ``lambda`` is a Python keyword, so the field is ``lam`` and the key stays ``lambda``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "AUX_LOSSES",
    "DATASETS",
    "FIELDS",
    "MODELS",
    "ConfigError",
    "TrainConfig",
    "load_yaml",
    "unknown_key",
    "yaml_error",
]

DATASETS = ("digits", "ring8", "grid25", "mnist", "fashion-mnist", "cifar10")
MODELS = ("mlp", "dcgan")
AUX_LOSSES = ("r1", "r2", "wgan-gp", "consensus", "none")
FEATURE_EXTRACTORS = ("auto", "classifier", "inception", "raw")


class ConfigError(ValueError):
    """A bad training configuration; the message is one line that names the key."""


@dataclasses.dataclass(frozen=True)
class Field:
    """The rule for one key: its type and its allowed range or choices."""

    type: type
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    low_open: bool = False  # True: the value must be strictly greater than `low`

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        lo = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        hi = "" if self.high is None else f"<= {self.high:g}"
        kind = "an integer" if self.type is int else "a number"
        return f"{kind} {lo}{' and ' if lo and hi else ''}{hi}".strip()


# One table, so validation, error messages and the search-space checks in the service
# all read the same ranges.
FIELDS: dict[str, Field] = {
    "dataset": Field(str, choices=DATASETS),  # or "folder:PATH"
    "model": Field(str, choices=MODELS),
    "z_dim": Field(int, 1, 4096),
    "g_width": Field(int, 1, 8192),
    "d_width": Field(int, 1, 8192),
    "depth": Field(int, 1, 16),
    "aux_loss": Field(str, choices=AUX_LOSSES),
    "lambda": Field(float, 0, 1e6),
    "lr_g": Field(float, 0, 1.0e3, low_open=True),
    "lr_d": Field(float, 0, 1.0e3, low_open=True),
    "beta1": Field(float, 0, 0.9999),
    "beta2": Field(float, 0, 0.99999),
    "batch_size": Field(int, 1, 65536),
    "d_steps": Field(int, 1, 100),
    "steps": Field(int, 1, 100_000_000),
    "eval_every": Field(int, 1, 100_000_000),
    "eval_samples": Field(int, 2, 1_000_000),
    "feature_extractor": Field(str, choices=FEATURE_EXTRACTORS),
    "seed": Field(int, 0, 2**31 - 1),
    "device": Field(str),  # "cpu", "cuda", "cuda:N", "mps", "auto"
    "image_size": Field(int, 0, 1024),  # 0: the data set's own size
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every knob of one training run. Construct with :meth:`from_dict` to get validation.

    Defaults are the digits/MLP/R1 run that DESIGN.md measures.
    """

    dataset: str = "digits"
    model: str = "mlp"
    z_dim: int = 32
    g_width: int = 256
    d_width: int = 256
    depth: int = 2
    aux_loss: str = "r1"
    lam: float = 10.0
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    batch_size: int = 64
    d_steps: int = 1
    steps: int = 3000
    eval_every: int = 500
    eval_samples: int = 2000
    feature_extractor: str = "auto"
    seed: int = 0
    device: str = "cpu"
    image_size: int = 0

    def __post_init__(self) -> None:
        validate(self.to_dict())

    # -- dict / file round trip -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The config as key → value, with the interface's key names, in a fixed order."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            out["lambda" if f.name == "lam" else f.name] = getattr(self, f.name)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build a config from key → value; missing keys take defaults.

        Raises:
            ConfigError: an unknown key, a value of the wrong type or out of range.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"config: expected a mapping of key: value, got {type(data).__name__}")
        merged = cls().to_dict()
        for key, value in data.items():
            if key not in FIELDS:
                raise ConfigError(_unknown_key(str(key)))
            merged[key] = _coerce(key, value)
        validate(merged)
        kwargs = {("lam" if k == "lambda" else k): v for k, v in merged.items()}
        return cls(**kwargs)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some keys changed (interface names, so ``**{"lambda": 1.0}`` works)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_text(cls, text: str, *, source: str = "config") -> TrainConfig:
        """Parse YAML or JSON text (JSON is YAML, so one parser reads both)."""
        try:
            data = load_yaml(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML or JSON: {yaml_error(exc)}") from None
        return cls.from_dict(data if data is not None else {})

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
        return cls.from_text(text, source=str(path))

    def save(self, path: str | Path) -> None:
        """Write as JSON for a .json path, YAML otherwise."""
        path = Path(path)
        path.write_text(self.to_json() if path.suffix == ".json" else self.to_yaml())


def unknown_key(key: str, allowed: Iterable[str]) -> str:
    """The message for a key that is not allowed: the closest allowed one, and the list."""
    allowed = list(allowed)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown key '{key}'{hint}; allowed keys: {', '.join(allowed)}"


def _unknown_key(key: str) -> str:
    return unknown_key(key, FIELDS)


_BOOL_TAG, _STR_TAG = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:str"


class _Loader(yaml.SafeLoader):
    """Safe YAML as people write configs and specs: a plain mapping key that YAML 1.1 reads
    as a boolean (``on:``, ``off:``, ``yes:``, ``no:``) stays the string written, and an
    integer Python refuses to convert (over 4,300 digits) is an error with its place."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _BOOL_TAG:
                key_node.tag = _STR_TAG
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        try:
            return int(super().construct_yaml_int(node))
        except ValueError:
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {len(node.value)} characters is too long for a number", node.start_mark
            ) from None

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError as exc:  # 2026-13-45: a date by its shape, not by its values
            raise yaml.constructor.ConstructorError(
                None, None, f"'{node.value}' is not a valid date ({exc}); quote it", node.start_mark
            ) from None


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_yaml_timestamp)


def load_yaml(text: str) -> Any:
    """Parse YAML (or JSON, which is YAML) with :class:`_Loader`'s rules.

    Raises:
        yaml.YAMLError: with its place; :func:`yaml_error` makes it one line.
    """
    return yaml.load(text, Loader=_Loader)  # a SafeLoader


def yaml_error(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: what, and the line and column it was found at."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "syntax error"
        if mark is not None:
            return f"{what} at line {mark.line + 1}, column {mark.column + 1}"
        return what
    if isinstance(exc, yaml.reader.ReaderError):
        return f"{exc.reason} (character #x{exc.character:04x}) at character {exc.position + 1}"
    return str(exc).splitlines()[0] if str(exc) else "syntax error"


def _coerce(key: str, value: Any) -> Any:
    """Check the type of one value; ints are accepted where floats are expected."""
    rule = FIELDS[key]
    if rule.type is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected {rule.describe()}, got {value!r}")
    if rule.type is int:
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key}: expected {rule.describe()}, got {value!r}")
        return int(value)
    try:
        return float(value)
    except OverflowError:
        raise ConfigError(f"{key}: expected {rule.describe()}, got an integer too large for a number") from None


def validate(data: Mapping[str, Any]) -> None:
    """Check every key's range or choices and the rules that tie keys together.

    Raises:
        ConfigError: naming the first offending key and what is allowed.
    """
    for key, value in data.items():
        rule = FIELDS[key]
        value = _coerce(key, value)
        if key == "dataset":
            if not (value in DATASETS or (value.startswith("folder:") and len(value) > 7)):
                raise ConfigError(f"dataset: '{value}' is not one of {', '.join(DATASETS)}, folder:PATH")
            continue
        if key == "device":
            if not (value in ("cpu", "auto", "mps") or value == "cuda" or value.startswith("cuda:")):
                raise ConfigError(f"device: '{value}' is not one of cpu, cuda, cuda:N, mps, auto")
            continue
        if rule.choices is not None:
            if value not in rule.choices:
                raise ConfigError(f"{key}: '{value}' is not {rule.describe()}")
            continue
        if rule.type is float and not math.isfinite(value):
            raise ConfigError(f"{key}: must be finite, got {value!r}")
        too_low = rule.low is not None and (value <= rule.low if rule.low_open else value < rule.low)
        too_high = rule.high is not None and value > rule.high
        if too_low or too_high:
            raise ConfigError(f"{key}: {value!r} is out of range; expected {rule.describe()}")
    points = data.get("dataset") in ("ring8", "grid25")
    if points and data.get("model") == "dcgan":
        raise ConfigError(f"model: 'dcgan' needs images; dataset '{data['dataset']}' is 2-D points, use 'mlp'")
    if points and data.get("feature_extractor") in ("classifier", "inception"):
        raise ConfigError(
            f"feature_extractor: '{data['feature_extractor']}' needs images; "
            f"dataset '{data['dataset']}' is 2-D points, use 'raw' or 'auto'"
        )
