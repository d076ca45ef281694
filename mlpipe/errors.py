"""Named errors that carry what went wrong and what to do about it."""

from __future__ import annotations


class MlpipeError(Exception):
    """Base class: every error mlpipe raises on purpose, printed to operators without a traceback."""


class SpecError(MlpipeError):
    """A job spec is missing, malformed or inconsistent."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"job spec {where}: {problem}")
        self.where = where
        self.problem = problem


class SourceError(MlpipeError):
    """A job's SQL failed or returned something the spec does not describe."""


class NoChampionError(MlpipeError):
    """Scoring was asked for a job that has no champion model yet."""


class ModelNotFoundError(MlpipeError):
    """A model version named by the operator does not exist for the job."""


class ArtifactError(MlpipeError):
    """A model artifact is missing, tampered with, or was made by incompatible library versions."""


class RunLockedError(MlpipeError):
    """Another run holds the (job, day) lock."""


class RunFailedError(MlpipeError):
    """A run stopped before publishing; the previous predictions stay live."""


class PublishTimeoutError(MlpipeError):
    """Readers held locks for longer than every publish attempt allowed."""


class UsageError(MlpipeError):
    """An operator's request cannot be carried out as given (a reversed range, a future day)."""
