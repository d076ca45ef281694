"""Derived features of the churn job: pure functions of the raw columns, shared by training and scoring."""

import numpy as np
import pandas as pd


def session_trend(frame: pd.DataFrame) -> np.ndarray:
    """Sessions in the last 30 days relative to the 30 days before (1 = steady, <1 = fading)."""
    recent = frame["sessions_30d"].to_numpy(dtype=float)
    before = frame["sessions_prev_30d"].to_numpy(dtype=float)
    return (recent + 1.0) / (before + 1.0)


def failed_payment_share(frame: pd.DataFrame) -> np.ndarray:
    """Share of the last 90 days' payments that failed (0 with no payments)."""
    failed = frame["payments_failed_90d"].to_numpy(dtype=float)
    total = frame["payments_90d"].to_numpy(dtype=float)
    return np.divide(failed, total, out=np.zeros_like(failed), where=total > 0)
