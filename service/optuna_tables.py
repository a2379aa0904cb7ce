"""SQL on Optuna's own tables (trials, trial_*, studies, study_*) that the queue and the
studies service share, so that a rule about them is written once."""

from __future__ import annotations

__all__ = ["finished_trials", "study_completed"]


def finished_trials(t: str = "t") -> str:
    """An aggregate over a study's trials (rows of ``trials`` named ``t``): how many have
    finished, which is what counts toward n_trials (COMPLETE and PRUNED, not FAIL)."""
    return f"count(*) FILTER (WHERE {t}.state IN ('COMPLETE', 'PRUNED'))"


def study_completed(n_trials: str, t: str = "t") -> str:
    """The rule "a study is completed when COMPLETE + PRUNED >= n_trials": a boolean
    aggregate over the study's trials (rows of ``trials`` named ``t``), ``n_trials`` an SQL
    expression. The claim, the release of a finished trial and the study's summary use it."""
    return f"({finished_trials(t)} >= {n_trials})"
