"""Job specs: one YAML file per prediction use case, with its SQL and feature functions beside it."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

import yaml
from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlpipe.errors import SpecError
from mlpipe.resources import resource_dir
from mlpipe.settings import Settings

# The names mlpipe.algorithms.ALGORITHMS defines, without importing scikit-learn and XGBoost (seconds)
# for a spec that is only read (`mlpipe runs`, `models`, `jobs`); a unit test keeps the two equal.
ALGORITHM_NAMES = ("logistic_regression", "xgboost", "hist_gradient_boosting")

# Job and column names become SQL identifiers and file names: keep them plain.
_NAME = r"^[a-z][a-z0-9_]{0,40}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Entity(_Strict):
    key: Annotated[str, Field(pattern=_NAME)]
    type: Literal["bigint", "text"]


class Sources(_Strict):
    population: str = Field(description="SQL file: one column (the key) for the entities to score at as_of.")
    features: str = Field(description="SQL file: the key and every raw feature column, as of as_of.")
    labels: str = Field(description="SQL file: the key and a 0/1 label for a cutoff and a horizon.")
    outcomes: str | None = Field(
        default=None,
        description="SQL file: (key, outcome 0/1, observed_at) of outcomes that arrive from elsewhere; "
        "the monitor then uses it instead of the labels SQL for ground truth.",
    )
    shared: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,40}\.sql$")]] = Field(
        default_factory=list,
        description="SQL files every source reads as a CTE named after the file (active_customers.sql "
        "is `active_customers`), written once like a dbt staging model; they see the source's "
        "parameters (as_of always: the labels SQL gets as_of = cutoff).",
    )


class Feature(_Strict):
    kind: Literal["numeric", "categorical", "boolean"]
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    missing: Literal["impute", "zero", "reject"] = "impute"
    unknown: Literal["ignore", "reject"] = "ignore"
    monotone: Literal["increasing", "decreasing"] | None = Field(
        default=None, description="Boosted trees are constrained, and every candidate is checked, to move so."
    )
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> Feature:
        if self.kind == "categorical" and not self.categories:
            raise ValueError("a categorical feature needs its list of categories")
        if self.kind != "categorical" and self.categories:
            raise ValueError("categories are only for categorical features")
        if self.kind != "numeric" and (self.min is not None or self.max is not None):
            raise ValueError("min and max are only for numeric features")
        if self.kind == "categorical" and self.monotone:
            raise ValueError("a categorical feature cannot be monotone")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class Derived(_Strict):
    function: str = Field(description="file.py:function, beside the spec; takes the raw frame.")
    kind: Literal["numeric"] = "numeric"
    monotone: Literal["increasing", "decreasing"] | None = None
    description: str = ""

    @field_validator("function")
    @classmethod
    def _shape(cls, value: str) -> str:
        if not re.fullmatch(r"[\w./-]+\.py:[A-Za-z_]\w*", value):
            raise ValueError("expected 'file.py:function_name'")
        return value


class Training(_Strict):
    horizon_days: int = Field(default=30, ge=1, description="Label window after each cutoff.")
    cutoffs: int = Field(default=6, ge=3, description="Matured cutoffs stacked (history jobs).")
    cutoff_every_days: int = Field(default=30, ge=1)
    validation_share: float = Field(default=0.2, gt=0, lt=0.5, description="Snapshot jobs only.")
    test_share: float = Field(default=0.2, gt=0, lt=0.5, description="Snapshot jobs only.")
    seed: int = 7
    time_budget_s: float = Field(default=600, gt=0)


class Baseline(_Strict):
    feature: str = Field(
        description="A model input: a numeric, boolean or derived feature, or 'name=category'."
    )
    direction: Literal["higher_is_positive", "lower_is_positive"] = "higher_is_positive"


Param = float | int | str


class Candidate(_Strict):
    name: Annotated[str, Field(pattern=_NAME)]
    algorithm: str = Field(description="One of mlpipe.algorithms.ALGORITHMS.")
    params: dict[str, Param] = Field(default_factory=dict)
    search: dict[str, list[Param]] = Field(
        default_factory=dict, description="Values to sample from (randomized search, seeded)."
    )

    @field_validator("algorithm")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in ALGORITHM_NAMES:
            raise ValueError(f"unknown algorithm {value!r}; use one of {', '.join(ALGORITHM_NAMES)}")
        return value


class Promotion(_Strict):
    min_gain_over_baseline: float = 0.0
    min_gain_over_champion: float = 0.0
    require_behaviour: bool = Field(default=True, description="Behaviour checks must pass to promote.")


class Behaviour(_Strict):
    """Checks every candidate must pass on the test rows (direction comes from features' monotone)."""

    invariant: dict[str, float] = Field(
        default_factory=dict,
        description="feature -> largest allowed 99th-percentile score change when it is flipped or shuffled",
    )
    direction_step: float = Field(default=1.0, gt=0, description="How much a monotone feature is raised.")


class ModelSpec(_Strict):
    metric: Literal["roc_auc", "pr_auc"] = "roc_auc"
    baseline: Baseline
    candidates: list[Candidate] = Field(min_length=1)
    search_iterations: int = Field(default=1, ge=1, description="Configurations tried per candidate.")
    calibration: Literal["auto", "none"] = "auto"
    behaviour: Behaviour = Behaviour()
    promotion: Promotion = Promotion()


class RolloutGuard(_Strict):
    """Leading signals checked on every day of a step, before outcomes mature: any one crossed rolls back."""

    max_estimated_loss: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Largest fall of the challenger arm's estimated AUC below the champion arm's.",
    )
    max_score_psi: float = Field(
        default=0.25, ge=0, description="Largest PSI of the challenger arm's scores against its test scores."
    )
    max_quarantine_rate: float = Field(default=0.01, ge=0, le=1, description="Of a step day's population.")


class Rollout(_Strict):
    """A challenger's progressive rollout: a growing share of entities, decided by production outcomes."""

    steps: list[float] = Field(
        default=[0.05, 0.25, 0.5, 1.0],
        min_length=1,
        description="Shares of entities, increasing, in (0, 1]; passing the last step below 1 (or "
        "reaching 1) makes the challenger the champion.",
    )
    bake_days: int = Field(default=7, ge=1, description="Scored days a step must have before it may advance.")
    min_matured_outcomes: int = Field(
        default=1000, ge=1, description="Matured outcome rows each arm needs over the step's days."
    )
    max_metric_loss: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="Non-inferiority margin of ROC AUC (the monitor's interval): the lower 95% bound of "
        "challenger minus champion must stay above -max_metric_loss.",
    )
    guard: RolloutGuard = RolloutGuard()

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[float]) -> list[float]:
        outside = [s for s in steps if not 0 < s <= 1]
        if outside:
            raise ValueError(f"steps {steps}: {outside[0]} is outside (0, 1]; use shares such as 0.05 or 1.0")
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"steps {steps} must increase strictly, e.g. [0.05, 0.25, 0.5, 1.0]")
        if steps[0] >= 1:
            raise ValueError(f"steps {steps} start at 100%: begin with a share below 1, e.g. 0.05")
        return steps


class Fallback(_Strict):
    segment: str | None = Field(
        default=None,
        description="A categorical or boolean feature: an entity not scored yet gets its segment's "
        "training rate (the caller passes the segment to predictions.<job>_for) instead of the base rate.",
    )


class Outputs(_Strict):
    threshold: float = Field(default=0.5, ge=0, le=1, description="decision = score >= threshold")
    history_days: int = Field(default=400, ge=1)
    max_quarantine_rate: float = Field(default=0.01, ge=0, le=1)
    max_score_psi: float = Field(
        default=0.25,
        ge=0,
        description="Largest score distribution shift (PSI) from the previous published day.",
    )
    shadow: bool = Field(
        default=False, description="The challenger also scores into predictions.<job>_shadow."
    )
    challenger_share: float = Field(
        default=0.0,
        ge=0,
        le=0.5,
        description="Batch A/B: this share of entities gets the challenger's score.",
    )
    reasons: int = Field(
        default=0,
        ge=0,
        le=10,
        description="Top features behind each score, written to the reasons column (0: off).",
    )
    rollout: Rollout | None = Field(
        default=None, description="How `mlpipe models rollout start` rolls a challenger out (none: none)."
    )
    fallback: Fallback = Fallback()


class Threshold(_Strict):
    warn: float = Field(ge=0)
    fail: float = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Threshold:
        if self.warn > self.fail:
            raise ValueError(f"warn ({self.warn}) must not be above fail ({self.fail})")
        return self


class Monitoring(_Strict):
    drift: Threshold = Field(
        default=Threshold(warn=0.1, fail=0.25),
        description="PSI of an input (or the score) against the model's training reference.",
    )
    performance_drop: Threshold = Field(
        default=Threshold(warn=0.05, fail=0.1),
        description="How far the realized metric of a matured day may fall below the model's test figure.",
    )
    block_publish_on_drift: bool = Field(
        default=False,
        description="A fail-level drift stops the scoring run before publish (the previous day stays live); "
        "otherwise the monitor alerts.",
    )


class JobSpec(_Strict):
    """A validated job spec; `folder` is where its SQL and Python files live."""

    name: Annotated[str, Field(pattern=_NAME)]
    description: str = ""
    entity: Entity
    history: bool = Field(default=True, description="False: a snapshot source without event times.")
    sources: Sources
    features: dict[str, Feature] = Field(min_length=1)
    derived: dict[str, Derived] = Field(default_factory=dict)
    training: Training = Training()
    model: ModelSpec
    outputs: Outputs = Outputs()
    monitoring: Monitoring = Monitoring()
    folder: Path = Field(exclude=True)

    @model_validator(mode="after")
    def _names(self) -> JobSpec:
        for name in [*self.features, *self.derived]:
            if not re.fullmatch(_NAME, name):
                raise ValueError(f"feature name {name!r} must match {_NAME}")
        clash = set(self.features) & set(self.derived)
        if clash or self.entity.key in self.features:
            raise ValueError(f"names used twice: {sorted(clash or {self.entity.key})}")
        known = set(self.derived) | {
            f"{name}={category}" if category else name
            for name, feature in self.features.items()
            for category in (feature.categories or [None])
        }
        if self.model.baseline.feature not in known:
            raise ValueError(
                f"baseline feature {self.model.baseline.feature!r} is not one of {sorted(known)}"
            )
        if len({c.name for c in self.model.candidates}) != len(self.model.candidates):
            raise ValueError("candidate names must be unique")
        raw = {n for n, f in self.features.items() if f.kind != "categorical"}
        unknown = set(self.model.behaviour.invariant) - raw
        if unknown:
            raise ValueError(f"behaviour.invariant names {sorted(unknown)}: not numeric or boolean features")
        self._check_fallback_segment()
        return self

    def _check_fallback_segment(self) -> None:
        segment = self.outputs.fallback.segment
        if segment is None:
            return
        kinds = {name: f.kind for name, f in self.features.items() if f.kind != "numeric"}
        if segment not in kinds:
            raise ValueError(
                f"outputs.fallback.segment {segment!r} is not a categorical or boolean feature of the job "
                f"(it has {', '.join(sorted(kinds)) or 'none'}): name one of those, or remove the segment"
            )

    def monotone_columns(self) -> dict[str, int]:
        """Matrix column -> +1 (increasing) or -1 (decreasing), for constraints and checks."""
        signs = {"increasing": 1, "decreasing": -1}
        declared = {**self.features, **self.derived}
        return {name: signs[f.monotone] for name, f in declared.items() if f.monotone}

    def sql(self, source: Literal["population", "features", "labels", "outcomes"]) -> str:
        """The query of one of the job's SQL files, with the shared pieces it may read as CTEs."""
        if getattr(self.sources, source) is None:
            raise SpecError(self.name, f"sources.{source} is not declared")
        text = self._sql_file(f"sources.{source}", getattr(self.sources, source))
        if not self.sources.shared:
            return text
        # Only the job's own files, trusted like code, are composed here; values stay parameters.
        # NOT MATERIALIZED: the planner inlines each piece, so a chunk's key range still reaches it.
        ctes = sql.SQL(",\n").join(
            sql.SQL("{} as not materialized (\n{}\n)").format(
                sql.Identifier(Path(file).stem), sql.SQL(self._sql_file("sources.shared", file))
            )
            for file in self.sources.shared
        )
        return sql.SQL("with {}\nselect * from (\n{}\n) as source").format(ctes, sql.SQL(text)).as_string()

    def _sql_file(self, field: str, file: str) -> str:
        path = self.folder / file
        if not path.is_file():
            raise SpecError(self.name, f"{field}: file {path} not found")
        return path.read_text()

    @cached_property
    def derived_functions(self) -> dict[str, Callable]:
        """Derived feature functions loaded from the files beside the spec."""
        return {name: _load_function(self, d.function) for name, d in self.derived.items()}

    def check_as_of(self, as_of: date) -> date:
        """Refuse days in the future: features as of a day not yet finished would be incomplete."""
        if as_of > date.today():
            raise SpecError(self.name, f"as_of {as_of} is in the future; use today or an earlier day")
        return as_of


def _load_function(spec: JobSpec, ref: str) -> Callable:
    file_name, func_name = ref.split(":")
    path = (spec.folder / file_name).resolve()
    if not path.is_file():
        raise SpecError(spec.name, f"derived function file {path} not found")
    module_spec = importlib.util.spec_from_file_location(f"mlpipe_job_{spec.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    func = getattr(module, func_name, None)
    if not callable(func):
        raise SpecError(spec.name, f"{path} has no function {func_name}")
    return func


def job_folders(settings: Settings) -> list[Path]:
    """Where job names are looked up, first match wins: MLPIPE_JOBS_PATH, ./jobs, bundled jobs."""
    folders = [*settings.jobs_path, Path.cwd() / "jobs", resource_dir("jobs")]
    return list(dict.fromkeys(folder.resolve() for folder in folders))


def _read_yaml(path: Path) -> object:
    """The parsed file; a syntax error is one line naming file:line:column, as editors jump to."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        start = exc.context_mark
        context = ""
        if exc.problem and start:
            context = f" ({exc.context} started at {start.line + 1}:{start.column + 1})"
        raise SpecError(where, f"not valid YAML: {exc.problem or exc.context}{context}") from None
    except yaml.YAMLError as exc:
        raise SpecError(str(path), f"not valid YAML: {' '.join(str(exc).split())}") from None


def load_job(name_or_path: str | Path, settings: Settings) -> JobSpec:
    """Load a job spec by name (searched in job_folders) or by path to a YAML file or its folder."""
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "job.yaml"
    if not path.is_file():
        if not re.fullmatch(_NAME, str(name_or_path)):
            raise SpecError(str(name_or_path), "no such file, and not a valid job name")
        candidates = [folder / str(name_or_path) / "job.yaml" for folder in job_folders(settings)]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            searched = ", ".join(str(c.parent.parent) for c in candidates)
            raise SpecError(str(name_or_path), f"no job of that name in {searched}")
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise SpecError(str(path), "expected a mapping at the top level")
    try:
        return JobSpec(**raw, folder=path.parent.resolve())
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'spec'}: {err['msg']}" for err in exc.errors()
        )
        raise SpecError(str(path), problems) from None
