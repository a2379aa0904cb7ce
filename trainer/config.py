"""TrainConfig: every knob of one GAT training run, validated, with a JSON/YAML round trip.

The key names are an interface (DESIGN.md): studies search over them and `GET /best` returns
them. ``lambda`` is a Python keyword, so the field is ``lam`` and the key stays ``lambda``.

Each key is declared once, as a field of :class:`TrainConfig` with its range or choices and a
line of help; :data:`FIELDS` (the rules validation, error messages and the service's
search-space checks read) and :func:`json_schema` are derived from it. The allowed
``aux_loss`` and ``dataset`` names are the keys of the registries in trainer.losses and
trainer.data.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from trainer.data import DATASETS as DATA_SOURCES
from trainer.data import dataset_source
from trainer.losses import REGULARISERS

__all__ = [
    "AUX_LOSSES",
    "DATASETS",
    "FIELDS",
    "MODELS",
    "PRDC_K",
    "PRDC_METRICS",
    "ConfigError",
    "PackReplay",
    "TrainConfig",
    "json_schema",
    "load_run",
    "load_yaml",
    "unknown_key",
    "yaml_error",
]

DATASETS = tuple(k for k, source in DATA_SOURCES.items() if not source.prefix)  # and "folder:PATH"
MODELS = ("mlp", "dcgan")
AUX_LOSSES = tuple(REGULARISERS)
FEATURE_EXTRACTORS = ("auto", "classifier", "inception", "randcnn", "raw")
DEVICES = ("cpu", "cuda", "cuda:N", "mps", "auto")
# Beside the FID, every eval measures these on the same features (trainer.metrics.prdc) with
# k-NN balls of this k (Naeem et al. 2020); here, torch-free, for the service's spec to read.
PRDC_METRICS = ("precision", "recall", "density", "coverage")
PRDC_K = 5


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
    help: str = ""

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        lo = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        hi = "" if self.high is None else f"<= {self.high:g}"
        kind = "an integer" if self.type is int else "a number"
        return f"{kind} {lo}{' and ' if lo and hi else ''}{hi}".strip()


def _key(
    default: Any,
    help: str,
    low: float | None = None,
    high: float | None = None,
    *,
    choices: tuple[str, ...] | None = None,
    low_open: bool = False,
    key: str | None = None,
) -> Any:
    """A TrainConfig field: its default, and the rule its key obeys (its type is the field's)."""
    rule = {"low": low, "high": high, "choices": choices, "low_open": low_open, "help": help}
    return dataclasses.field(default=default, metadata={"rule": rule, "key": key})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every knob of one training run. Construct with :meth:`from_dict` to get validation.

    Defaults are the digits/MLP/R1 run that DESIGN.md measures.
    """

    # "dataset" and "device" are checked by validate(): a prefix entry, cuda:N.
    dataset: str = _key("digits", "a data set of trainer.data's registry, or folder:PATH", choices=DATASETS)
    model: str = _key("mlp", "mlp (z → width → … → out), dcgan (convolutional, images)", choices=MODELS)
    z_dim: int = _key(32, "noise dimensions", 1, 4096)
    g_width: int = _key(256, "generator width", 1, 8192)
    d_width: int = _key(256, "discriminator width", 1, 8192)
    depth: int = _key(2, "hidden layers in the MLPs", 1, 16)
    aux_loss: str = _key("r1", "the regulariser L_A (trainer.losses' registry)", choices=AUX_LOSSES)
    lam: float = _key(10.0, "λ, the regulariser's weight; 0 is the plain GAN, bit for bit", 0, 1e6, key="lambda")
    lr_g: float = _key(2e-4, "generator's Adam learning rate", 0, 1.0e3, low_open=True)
    lr_d: float = _key(2e-4, "discriminator's Adam learning rate", 0, 1.0e3, low_open=True)
    beta1: float = _key(0.5, "Adam's beta1", 0, 0.9999)
    beta2: float = _key(0.999, "Adam's beta2", 0, 0.99999)
    batch_size: int = _key(64, "samples per batch", 1, 65536)
    d_steps: int = _key(1, "discriminator steps per generator step", 1, 100)
    steps: int = _key(3000, "generator steps", 1, 100_000_000)
    eval_every: int = _key(500, "FID every this many steps (and at the end)", 1, 100_000_000)
    eval_samples: int = _key(2000, "samples per FID", 2, 1_000_000)
    feature_extractor: str = _key("auto", "FID features", choices=FEATURE_EXTRACTORS)
    seed: int = _key(0, "the run's seed", 0, 2**31 - 1)
    device: str = _key("cpu", "one of " + ", ".join(DEVICES))
    image_size: int = _key(0, "resize images to this size (0: native; 32 for a folder)", 0, 1024)

    def __post_init__(self) -> None:
        validate(self.to_dict())

    # -- dict / file round trip -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The config as key → value, with the interface's key names, in a fixed order."""
        return {_KEYS[f.name]: getattr(self, f.name) for f in dataclasses.fields(self)}

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
        kwargs = {_NAMES[k]: v for k, v in merged.items()}
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
        data = _parse(text, source)
        return cls.from_dict(data if data is not None else {})

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_text(_read(path), source=str(path))

    def save(self, path: str | Path) -> None:
        """Write as JSON for a .json path, YAML otherwise."""
        path = Path(path)
        path.write_text(self.to_json() if path.suffix == ".json" else self.to_yaml())


@dataclasses.dataclass(frozen=True)
class PackReplay:
    """How a trial that trained in a pack trains again bit for bit: the ``pack`` key of its
    best config (written by the worker; trainer.packed.replay runs it). A member's numbers
    depend on which others share its batched kernels, so the whole pack trains again, each
    member joining at the pack step it joined at and leaving at the step it left at (pruned,
    its study paused or stopped)."""

    position: int  # this trial's place among the members
    members: tuple[TrainConfig, ...]
    left: tuple[int | None, ...]  # per member: the eval step it left at, None when it trained on
    exact: bool = True  # False: a member was stopped between evals, which a replay does not redo
    cpu_threads: int | None = None  # the slot's thread count (float sums depend on it)
    joined: tuple[int, ...] = ()  # per member: the pack's step when it joined (empty: all at the start)

    @classmethod
    def from_dict(cls, data: Any, config: TrainConfig) -> PackReplay:
        """Read a config file's ``pack`` key, checked against the file's config."""
        if not isinstance(data, Mapping):
            raise ConfigError("pack: a mapping with position, members and left (as GET /best writes it)")
        try:
            members = tuple(TrainConfig.from_dict(m) for m in data["members"])
            left = tuple(None if x is None else int(x) for x in data["left"])
            joined = tuple(int(x) for x in data.get("joined", ()))
            replay = cls(int(data["position"]), members, left, bool(data.get("exact", True)),
                         None if data.get("cpu_threads") is None else int(data["cpu_threads"]), joined)  # fmt: skip
        except KeyError as exc:
            raise ConfigError(f"pack: missing key {exc}") from None
        except ConfigError as exc:
            raise ConfigError(f"pack: a member: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"pack: {exc}") from None
        if not 0 <= replay.position < len(members) or len(left) != len(members):
            raise ConfigError(f"pack: position {replay.position} and {len(left)} left steps for {len(members)} members")
        if joined and (len(joined) != len(members) or min(joined) < joined[0]):
            raise ConfigError(f"pack: {len(joined)} join steps for {len(members)} members, the first member's first")
        mine = {**members[replay.position].to_dict(), "device": config.device}
        if mine != config.to_dict():
            differ = sorted(k for k, v in config.to_dict().items() if mine[k] != v)
            raise ConfigError(f"pack: member {replay.position} is not this config (differs in {', '.join(differ)})")
        return replay


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None


def _parse(text: str, source: str) -> Any:
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML or JSON: {yaml_error(exc)}") from None


def load_run(path: str | Path) -> tuple[TrainConfig, PackReplay | None]:
    """A config file, with the ``pack`` key a packed trial's best config has (else None)."""
    data = _parse(_read(path), str(path))
    pack = data.pop("pack", None) if isinstance(data, dict) else None
    config = TrainConfig.from_dict(data if data is not None else {})
    return config, None if pack is None else PackReplay.from_dict(pack, config)


_KEYS = {f.name: f.metadata["key"] or f.name for f in dataclasses.fields(TrainConfig)}  # field → key
_NAMES = {key: name for name, key in _KEYS.items()}  # key → field
_TYPES = typing.get_type_hints(TrainConfig)

# One table, so validation, error messages and the search-space checks in the service
# all read the same ranges.
FIELDS: dict[str, Field] = {
    _KEYS[f.name]: Field(_TYPES[f.name], **f.metadata["rule"]) for f in dataclasses.fields(TrainConfig)
}


def json_schema() -> dict[str, Any]:
    """JSON Schema of a (partial) trainer config: every key, its type, default and range."""
    defaults = TrainConfig().to_dict()
    properties: dict[str, Any] = {}
    for key, rule in FIELDS.items():
        kind = {int: "integer", float: "number", str: "string"}[rule.type]
        prop: dict[str, Any] = {"type": kind, "default": defaults[key], "description": rule.help}
        if key == "dataset":
            shown = [source.shown(k) for k, source in DATA_SOURCES.items()]
            prop["description"] = f"one of {', '.join(shown)}"
            prop["anyOf"] = [{"enum": list(DATASETS)}, {"pattern": "^folder:.+"}]
        elif rule.choices is not None:
            prop["enum"] = list(rule.choices)
        if key == "aux_loss":
            prop["description"] = "; ".join(f"{name}: {entry.help}" for name, entry in REGULARISERS.items())
        if rule.low is not None:
            low = int(rule.low) if rule.type is int else rule.low
            prop["exclusiveMinimum" if rule.low_open else "minimum"] = low
        if rule.high is not None:
            prop["maximum"] = int(rule.high) if rule.type is int else rule.high
        properties[key] = prop
    return {"title": "TrainConfig", "type": "object", "properties": properties, "additionalProperties": False}


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
            if dataset_source(value) is None:
                shown = ", ".join(source.shown(k) for k, source in DATA_SOURCES.items())
                raise ConfigError(f"dataset: '{value}' is not one of {shown}")
            continue
        if key == "device":
            if not (value in ("cpu", "auto", "mps") or value == "cuda" or value.startswith("cuda:")):
                raise ConfigError(f"device: '{value}' is not one of {', '.join(DEVICES)}")
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
    source = dataset_source(data["dataset"]) if isinstance(data.get("dataset"), str) else None
    points = source is not None and source.points
    if points and data.get("model") == "dcgan":
        raise ConfigError(f"model: 'dcgan' needs images; dataset '{data['dataset']}' is 2-D points, use 'mlp'")
    if points and data.get("feature_extractor") in ("classifier", "inception", "randcnn"):
        raise ConfigError(
            f"feature_extractor: '{data['feature_extractor']}' needs images; "
            f"dataset '{data['dataset']}' is 2-D points, use 'raw' or 'auto'"
        )
