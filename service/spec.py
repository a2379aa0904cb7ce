"""The study spec: what a user POSTs. Shapes are checked by pydantic; meaning (every config
the space allows must be a valid trainer config) by :func:`check_spec`, which names the field.

A search space maps trainer keys to distributions. A conditional entry gives one
distribution per value of a categorical key (``lambda`` per ``aux_loss``, say); in Optuna the
parameter is then named ``lambda[aux_loss=r1]``, so each case keeps its own history.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from typing import Annotated, Any, Literal

import numpy as np
import optuna
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from service.config import DataRoots
from service.errors import IncompatibleSpec
from service.pruning import FarAboveBestPruner
from trainer.config import FIELDS, PRDC_K, PRDC_METRICS, ConfigError, TrainConfig, json_schema, unknown_key

__all__ = [
    "EXAMPLE_SPEC",
    "OBJECTIVES",
    "PRUNERS",
    "SAMPLERS",
    "CategoricalParam",
    "ConditionalParam",
    "FloatParam",
    "IntParam",
    "ObjectiveName",
    "SpecIssue",
    "StudySpec",
    "WarmStart",
    "check_folders",
    "check_spec",
    "check_top_level",
    "check_values",
    "config_from_params",
    "enqueue_params",
    "enqueue_schema",
    "folder_refused",
    "load_stored_spec",
    "make_pruner",
    "make_sampler",
    "split_param_name",
    "suggest_config",
]

SAMPLERS = ("tpe", "random", "cmaes", "gp", "qmc", "nsga2")
PRUNERS = ("none", "median", "hyperband", "successive-halving", "far-above-best")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
MAX_COMBINATIONS = 4096  # categorical combinations checked one by one before creating a study
MAX_ENQUEUE = 1000  # entries of a spec's enqueue list
MAX_VALUES = 1_000_000  # values in one body, YAML aliases expanded (a 1 MB body holds fewer)
MAX_DEPTH = 32  # nesting a spec may have; a spec needs 5

Scalar = str | int | float | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FloatParam(_Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = None


class IntParam(_Strict):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1


class CategoricalParam(_Strict):
    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1, max_length=256)


Distribution = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class ConditionalParam(_Strict):
    """One distribution per value of another (categorical) key; a missing or null case
    leaves the key at its base value for trials with that value."""

    type: Literal["conditional"]
    on: str
    cases: dict[str, Distribution | None] = Field(min_length=1)


Param = Annotated[FloatParam | IntParam | CategoricalParam | ConditionalParam, Field(discriminator="type")]


_MIN, _MAX = optuna.study.StudyDirection.MINIMIZE, optuna.study.StudyDirection.MAXIMIZE
# What a study may optimise: each name is a key of every eval's metrics (trainer.train), and
# its direction.
OBJECTIVES: dict[str, optuna.study.StudyDirection] = {
    "fid": _MIN,
    "precision": _MAX,
    "recall": _MAX,
    "density": _MAX,
    "coverage": _MAX,
    "train_seconds": _MIN,
}
ObjectiveName = Literal["fid", "precision", "recall", "density", "coverage", "train_seconds"]


class WarmStart(_Strict):
    """Earlier studies to start from: their best completed trials are tried first."""

    studies: list[Annotated[str, Field(min_length=1, max_length=512)]] = Field(
        min_length=1,
        max_length=16,
        description="names of studies in this database, gat-tune's or plain Optuna's, on any data set",
    )
    top: int = Field(
        default=4,
        ge=1,
        le=64,
        description="configs to try first: the studies' best completed trials, taken from each in turn",
    )


class StudySpec(_Strict):
    """A study: fixed trainer settings, the space searched, and how it is searched."""

    name: str = Field(pattern=NAME_PATTERN, description="unique; letters, digits, _ . -")
    base: dict[str, Any] = Field(
        default_factory=dict,
        description="fixed trainer settings (a partial config)",
        json_schema_extra={k: v for k, v in json_schema().items() if k in ("properties", "additionalProperties")},
    )
    search_space: dict[str, Param] = Field(default_factory=dict)
    objective: ObjectiveName | list[ObjectiveName] = Field(
        default="fid",
        description="a metric, or a list of them without repeats for a Pareto front: fid and train_seconds "
        "minimised; precision, recall, density and coverage (on the FID's features) maximised. The first "
        "is what pruners read and what the study's best is by",
    )
    sampler: Literal["tpe", "random", "cmaes", "gp", "qmc", "nsga2"] = "tpe"
    pruner: Literal["none", "median", "hyperband", "successive-halving", "far-above-best"] = "median"
    n_trials: int = Field(default=20, ge=1)
    max_parallel: int = Field(default=2, ge=1, le=1024, description="trials running at once, at most")
    pack: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="trials a worker slot trains at once as one batched model (MLP studies); default: the "
        "worker's for its device (8 on a CPU, 16 on a GPU), capped by its --max-pack; 1: never packed. "
        "Each stays a trial of its own (reports, pruning, lease), counted in max_parallel",
    )
    max_retries: int = Field(default=2, ge=0, le=100, description="re-runs of a trial whose worker died")
    max_failures: int | None = Field(
        default=None, ge=1, description="failed trials after which the study ends as 'failed' (default: n_trials)"
    )
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    enqueue: list[dict[str, Any]] = Field(
        default_factory=list, max_length=MAX_ENQUEUE, description="configs to try first"
    )
    warm_start: WarmStart | None = Field(
        default=None,
        description="start from earlier studies: the best configs they found (the values of the keys this space "
        "searches, moved into its ranges) are tried first, before priors and enqueue",
    )
    priors: bool = Field(
        default=False,
        description="try first the settings GAN papers train with (R1 γ=10 with Adam 2e-4, TTUR, StyleGAN2-ADA's "
        "γ rule, WGAN-GP λ=10; service/priors.py), moved into the search space, before enqueue's",
    )

    @field_validator("warm_start", mode="before")
    @classmethod
    def _warm_start(cls, value: Any) -> Any:
        # Before pydantic's own "a valid dictionary or instance of WarmStart": a class name.
        if value is not None and not isinstance(value, (dict, WarmStart)):
            raise PydanticCustomError("warm_start", "warm_start: a mapping, {studies: [NAME, ...], top: N}")
        return value

    @field_validator("objective", mode="before")
    @classmethod
    def _objective(cls, value: Any) -> Any:
        # Before pydantic's own check, whose union of literals would say it twice, at length.
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise PydanticCustomError("objective", "objective: a metric name or a non-empty list of them")
        for name in names:
            if name not in OBJECTIVES:
                close = difflib.get_close_matches(name, list(OBJECTIVES), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise PydanticCustomError(
                    "objective", f"objective: unknown metric '{name}'{hint}; one of {', '.join(OBJECTIVES)}"
                )
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise PydanticCustomError("objective", f"objective: '{repeated[0]}' is named twice")
        return names

    @property
    def objectives(self) -> list[str]:
        return [self.objective] if isinstance(self.objective, str) else list(self.objective)

    @property
    def directions(self) -> list[optuna.study.StudyDirection]:
        return [OBJECTIVES[o] for o in self.objectives]


EXAMPLE_SPEC: dict[str, Any] = {
    "name": "digits-gat",
    "base": {"dataset": "digits", "model": "mlp", "steps": 600, "eval_every": 200, "eval_samples": 1000},
    "search_space": {
        "aux_loss": {"type": "categorical", "choices": ["r1", "wgan-gp", "none"]},
        "lambda": {
            "type": "conditional",
            "on": "aux_loss",
            "cases": {
                "r1": {"type": "float", "low": 0.01, "high": 100, "log": True},
                "wgan-gp": {"type": "float", "low": 0.1, "high": 20, "log": True},
            },
        },
        "lr_g": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        "lr_d": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        "g_width": {"type": "categorical", "choices": [64, 128, 256]},
    },
    "sampler": "tpe",
    "pruner": "hyperband",
    "n_trials": 12,
    "max_parallel": 2,
    "seed": 0,
    "enqueue": [{"aux_loss": "r1", "lambda": 10.0}],
}


class SpecIssue(Exception):
    """One thing wrong with a spec: where (a path into the body) and what."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


def _where(loc: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in loc) or "body"


def check_values(data: Any, loc: tuple[str | int, ...] = ()) -> None:
    """Every number in a body is finite and fits in 64 bits, and no string holds a NUL
    (PostgreSQL refuses it in text and jsonb); the first offender is named.

    Raises:
        SpecIssue: at the offending value's place.
    """
    seen = 0
    stack: list[tuple[tuple[str | int, ...], Any]] = [(loc, data)]
    while stack:
        where, value = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise SpecIssue(loc, f"the body holds more than {MAX_VALUES} values (YAML aliases expanded)")
        if len(where) - len(loc) > MAX_DEPTH:  # also ends a YAML alias that contains itself, fast
            raise SpecIssue(where[: len(loc) + 3], f"the body nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and "\x00" in key:
                    raise SpecIssue(where, f"{_where(where)}: a key holds a NUL character (\\u0000); remove it")
                stack.append(((*where, key), item))
        elif isinstance(value, list):
            stack.extend(((*where, i), item) for i, item in enumerate(value))
        elif isinstance(value, str):
            if "\x00" in value:
                raise SpecIssue(where, f"{_where(where)}: holds a NUL character (\\u0000); remove it")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise SpecIssue(where, f"{_where(where)}: {value} is not a finite number; use a finite value")
        elif isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            raise SpecIssue(where, f"{_where(where)}: the integer is out of range (a spec's numbers fit in 64 bits)")


def check_top_level(data: dict[str, Any]) -> None:
    """An unknown top-level key, named with the closest allowed one and the list.

    Raises:
        SpecIssue: at the unknown key.
    """
    for key in data:
        if key not in StudySpec.model_fields:
            raise SpecIssue((str(key),), unknown_key(str(key), StudySpec.model_fields))


def load_stored_spec(name: str, data: Any) -> StudySpec:
    """A study's spec as stored in gt_studies. One that no longer validates was stored by
    another version of gat-tune: that is no fault of the request that reads it.

    Raises:
        IncompatibleSpec: naming the study and the first thing this version refuses.
    """
    try:
        spec = StudySpec.model_validate(data)
        TrainConfig.from_dict(spec.base)
        return spec
    except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        errors = getattr(exc, "errors", None)
        if callable(errors):
            first = errors(include_url=False, include_input=False)[0]
            reason = f"{_where(first['loc'])}: {first['msg']}"
        else:
            reason = str(exc).splitlines()[0]
        raise IncompatibleSpec(
            f"study '{name}' was stored by an incompatible version of gat-tune ({reason}); "
            "read it with that version, or create the study again"
        ) from None


def enqueue_schema() -> dict[str, Any]:
    """JSON Schema of one enqueued config (POST /studies/{name}/enqueue and the spec's
    enqueue items): search_space keys → values."""
    keys = [k for k in FIELDS if k not in ("device", "seed")]
    return {
        "title": "EnqueueConfig",
        "description": "search_space keys → values (a partial trainer config) to try first",
        "type": "object",
        "minProperties": 1,
        "maxProperties": len(keys),
        "propertyNames": {"enum": keys},
        "additionalProperties": {"anyOf": [{"type": "string"}, {"type": "number"}]},
        "example": {"aux_loss": "r1", "lambda": 1.0},
    }


def _param_name(key: str, on: str | None = None, case: str | None = None) -> str:
    return key if on is None else f"{key}[{on}={case}]"


_CONDITIONAL_NAME = re.compile(r"^(?P<key>[a-z_0-9]+)\[(?P<on>[a-z_0-9]+)=(?P<case>.*)\]$")


def split_param_name(param_name: str) -> tuple[str, str | None, str | None]:
    """(search_space key, the key it is conditional on, the case) of an Optuna parameter
    name; (name, None, None) for a plain one."""
    m = _CONDITIONAL_NAME.match(param_name)
    return (m.group("key"), m.group("on"), m.group("case")) if m else (param_name, None, None)


def _config_error(loc: tuple[str | int, ...], data: dict[str, Any]) -> None:
    try:
        TrainConfig.from_dict(data)
    except ConfigError as exc:
        raise SpecIssue(loc, str(exc)) from None


def _check_distribution(loc: tuple[str | int, ...], key: str, dist: FloatParam | IntParam | CategoricalParam) -> None:
    rule = FIELDS[key]
    if isinstance(dist, CategoricalParam):
        for i, choice in enumerate(dist.choices):
            _config_error((*loc, "choices", i), {key: choice})
        if len({str(c) for c in dist.choices}) != len(dist.choices):
            raise SpecIssue((*loc, "choices"), f"{key}: choices must be distinct")
        return
    if rule.type is str:
        raise SpecIssue((*loc, "type"), f"{key}: takes {rule.describe()}; use type 'categorical'")
    if isinstance(dist, FloatParam) and rule.type is int:
        raise SpecIssue((*loc, "type"), f"{key}: takes an integer; use type 'int'")
    if not (math.isfinite(dist.low) and math.isfinite(dist.high)):
        raise SpecIssue((*loc, "low"), f"{key}: low and high must be finite")
    if dist.low > dist.high:
        raise SpecIssue((*loc, "low"), f"{key}: low ({dist.low:g}) is greater than high ({dist.high:g})")
    if dist.log and dist.low <= 0:
        raise SpecIssue((*loc, "low"), f"{key}: a log range needs low > 0 (got {dist.low:g})")
    if dist.step is not None:
        if dist.step <= 0:
            raise SpecIssue((*loc, "step"), f"{key}: step must be > 0 (got {dist.step:g})")
        if dist.log and not (isinstance(dist, IntParam) and dist.step == 1):
            raise SpecIssue((*loc, "step"), f"{key}: step cannot be combined with log")
    for bound in ("low", "high"):
        _config_error((*loc, bound), {key: getattr(dist, bound)})


def _flat(spec: StudySpec) -> list[tuple[str, str | None, str | None, FloatParam | IntParam | CategoricalParam]]:
    """(key, on, case, distribution) for every distribution in the space."""
    out: list[tuple[str, str | None, str | None, FloatParam | IntParam | CategoricalParam]] = []
    for key, param in spec.search_space.items():
        if isinstance(param, ConditionalParam):
            out += [(key, param.on, case, d) for case, d in param.cases.items() if d is not None]
        else:
            out.append((key, None, None, param))
    return out


def check_spec(spec: StudySpec, *, max_trials: int, data_roots: DataRoots | None = None) -> list[dict[str, Any]]:
    """Check that the spec means something and every trial it allows is a valid config.

    Args:
        data_roots: where a ``folder:`` dataset may lie; None: anywhere.

    Returns:
        The entries to enqueue as Optuna parameters (:func:`enqueue_params`), in order: the
        GAN priors when the spec asks for them, then its enqueue list.

    Raises:
        SpecIssue: the first problem, with its location in the request body.
    """
    if spec.n_trials > max_trials:
        raise SpecIssue(("n_trials",), f"n_trials: {spec.n_trials} is over this server's limit of {max_trials}")
    if data_roots is not None:
        check_folders(spec, data_roots)
    for key in spec.base:
        if key not in FIELDS:
            _config_error(("base", key), {key: spec.base[key]})
    _config_error(("base",), spec.base)
    for key in spec.search_space:
        if key not in FIELDS:
            _config_error(("search_space", key), {key: None})
        if key in ("device", "seed"):
            raise SpecIssue(("search_space", key), f"{key}: is not a hyperparameter; set it in base")
    for key, param in spec.search_space.items():
        loc: tuple[str | int, ...] = ("search_space", key)
        if isinstance(param, ConditionalParam):
            target = spec.search_space.get(param.on)
            if not isinstance(target, CategoricalParam):
                raise SpecIssue(
                    (*loc, "on"), f"{key}: 'on' must name a categorical key of search_space, not '{param.on}'"
                )
            choices = {str(c) for c in target.choices}
            for case, dist in param.cases.items():
                if case not in choices:
                    raise SpecIssue(
                        (*loc, "cases", case), f"{key}: case '{case}' is not a choice of {param.on} ({sorted(choices)})"
                    )
                if dist is not None:
                    _check_distribution((*loc, "cases", case), key, dist)
        else:
            _check_distribution(loc, key, param)
    multi = len(spec.objectives) > 1
    if multi and spec.sampler == "cmaes":
        raise SpecIssue(("sampler",), "sampler: 'cmaes' optimises one objective; use tpe, nsga2, random or qmc")
    if multi and spec.pruner != "none":
        raise SpecIssue(("pruner",), "pruner: Optuna cannot prune multi-objective studies; use 'none'")
    _check_corners(spec)
    from service.priors import gan_priors  # it reads this module's models

    priors = [enqueue_params(spec, params, loc=("priors",)) for params in gan_priors(spec)] if spec.priors else []
    return [*priors, *(enqueue_params(spec, params, loc=("enqueue", i)) for i, params in enumerate(spec.enqueue))]


def check_folders(spec: StudySpec, roots: DataRoots, values: dict[str, Any] | None = None) -> None:
    """Every ``folder:PATH`` dataset the spec (or an enqueued config, ``values``) can train on
    lies under one of the roots. The message names the roots, never whether the path exists.

    Raises:
        SpecIssue: a folder outside the roots, with its location in the request body.
    """
    places: list[tuple[tuple[str | int, ...], Any]]
    if values is not None:
        places = [(("dataset",), values.get("dataset"))]
    else:
        places = [(("base", "dataset"), spec.base.get("dataset"))]
        param = spec.search_space.get("dataset")
        if isinstance(param, CategoricalParam):
            places += [(("search_space", "dataset", "choices", i), c) for i, c in enumerate(param.choices)]
        elif isinstance(param, ConditionalParam):
            for case, dist in param.cases.items():
                if isinstance(dist, CategoricalParam):
                    loc: tuple[str | int, ...] = ("search_space", "dataset", "cases", case, "choices")
                    places += [((*loc, i), c) for i, c in enumerate(dist.choices)]
        places += [(("enqueue", i, "dataset"), e.get("dataset")) for i, e in enumerate(spec.enqueue)]
    for loc, value in places:
        refused = folder_refused(value, roots)
        if refused:
            raise SpecIssue(loc, refused)


def folder_refused(dataset: Any, roots: DataRoots) -> str | None:
    """Why a ``folder:PATH`` dataset outside the roots may not be read (None: it may, or it
    is no folder). The API checks at submit time; a worker checks again before it reads, as
    its working directory and the links under a root may differ from the API's."""
    if not (isinstance(dataset, str) and dataset.startswith("folder:")) or roots.admits(dataset[len("folder:") :]):
        return None
    listed = ", ".join(str(r) for r in roots.allowed)
    return (
        f"dataset: '{dataset}' is not under an allowed data root ({listed}); put the images in a "
        "folder under one of them, or add a root to GAT_TUNE_DATA_ROOTS"
    )


def _check_corners(spec: StudySpec) -> None:
    """Every categorical combination × (all numbers at low, all at high) is a valid config.

    The trainer's rules are ranges per key plus cross-key rules on categorical keys only, so
    the corners stand for the whole space.
    """
    neighbours = [o for o in spec.objectives if o in PRDC_METRICS]
    categorical = {k: p.choices for k, p in spec.search_space.items() if isinstance(p, CategoricalParam)}
    combos = itertools.product(*categorical.values())
    for combo in itertools.islice(combos, MAX_COMBINATIONS):
        chosen = dict(zip(categorical, combo, strict=True))
        for bound in ("low", "high"):
            data = {**spec.base, **chosen}
            for key, param in spec.search_space.items():
                dist = param
                if isinstance(param, ConditionalParam):
                    dist = param.cases.get(str(chosen.get(param.on)))  # type: ignore[assignment]
                if isinstance(dist, (FloatParam, IntParam)):
                    data[key] = getattr(dist, bound)
                elif isinstance(dist, CategoricalParam) and isinstance(param, ConditionalParam):
                    data[key] = dist.choices[0 if bound == "low" else -1]
            where = ", ".join(f"{k}={v}" for k, v in chosen.items())
            try:
                config = TrainConfig.from_dict(data)
            except ConfigError as exc:
                raise SpecIssue(("search_space",), f"{exc} (when {where})" if where else str(exc)) from None
            if neighbours and config.eval_samples <= PRDC_K:  # the k-NN radii need k + 1 samples
                raise SpecIssue(
                    ("objective",),
                    f"objective: {neighbours[0]} needs eval_samples > {PRDC_K}; "
                    f"it can be {config.eval_samples}" + (f" (when {where})" if where else ""),
                )


def _suggest(trial: optuna.trial.BaseTrial, name: str, dist: FloatParam | IntParam | CategoricalParam) -> Any:
    if isinstance(dist, FloatParam):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, IntParam):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
    return trial.suggest_categorical(name, dist.choices)


def suggest_config(trial: optuna.trial.BaseTrial, spec: StudySpec) -> dict[str, Any]:
    """Ask the trial for every parameter; the complete trainer config (base + params).

    Unconditional keys first, so a conditional key knows its case.
    """
    config = TrainConfig.from_dict(spec.base).to_dict()
    for key, param in spec.search_space.items():
        if not isinstance(param, ConditionalParam):
            config[key] = _suggest(trial, key, param)
    for key, param in spec.search_space.items():
        if isinstance(param, ConditionalParam):
            case = str(config[param.on])
            dist = param.cases.get(case)
            if dist is not None:
                config[key] = _suggest(trial, _param_name(key, param.on, case), dist)
    return config


def config_from_params(spec: StudySpec, params: dict[str, Any]) -> dict[str, Any]:
    """The complete trainer config of a finished trial: base + its parameters."""
    config = TrainConfig.from_dict(spec.base).to_dict()
    for name, value in params.items():
        config[split_param_name(name)[0]] = value
    return TrainConfig.from_dict(config).to_dict()


def enqueue_params(spec: StudySpec, values: dict[str, Any], *, loc: tuple[str | int, ...] = ()) -> dict[str, Any]:
    """Optuna parameter names → values for a partial config to try first.

    Raises:
        SpecIssue: a key not in the search space, or a value the trainer refuses.
    """
    if not isinstance(values, dict) or not values:
        raise SpecIssue(loc, "expected a non-empty mapping of search_space keys to values")
    base = {**spec.base}
    for key, value in values.items():
        if key not in spec.search_space:
            raise SpecIssue((*loc, key), f"{key}: not in search_space, so a trial cannot set it")
        base[key] = value
    try:
        config = TrainConfig.from_dict(base).to_dict()
    except ConfigError as exc:
        raise SpecIssue(loc, str(exc)) from None
    params: dict[str, Any] = {}
    for key, value in values.items():
        param = spec.search_space[key]
        if isinstance(param, ConditionalParam):
            case = str(base[param.on] if param.on in base else config[param.on])
            params[_param_name(key, param.on, case)] = value
        else:
            params[key] = value
    return params


def make_sampler(spec: StudySpec, *, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler. TPE runs with constant_liar so parallel workers see running trials.

    Workers build a fresh sampler for each trial; ``offset`` (the study's trial count) moves
    the seed along so that a seeded study does not draw the same random point every time.
    QMC keeps its seed: its sequence is indexed by trial number already.
    """
    seed = spec.seed
    if seed is not None and spec.sampler != "qmc":
        # SeedSequence, not seed + offset: Mersenne Twister streams from nearby integer
        # seeds start out nearly equal (RandomState(0) and (3) both open with 0.55).
        seed = int(np.random.SeedSequence([seed, offset]).generate_state(1)[0]) % 2**31
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if spec.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if spec.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.NSGAIISampler(seed=seed)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The spec's pruner; its resource is the training step at which an FID was reported."""
    config = TrainConfig.from_dict(spec.base)
    if spec.pruner == "none":
        return optuna.pruners.NopPruner()
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=config.eval_every)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=config.eval_every,
            max_resource="auto" if "steps" in spec.search_space else config.steps,
            reduction_factor=3,
        )
    if spec.pruner == "far-above-best":
        return FarAboveBestPruner()
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=config.eval_every, reduction_factor=3)
