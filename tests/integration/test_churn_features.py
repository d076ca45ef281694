"""The churn job's set-based features SQL: what each feature means, computed again in pandas from the raw
tables, chunk by chunk as scoring reads it, and the chunk's key range reaching every table it reads."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, time, timedelta

import numpy as np
import pandas as pd
import pytest
from psycopg import sql

from mlpipe.extract import _params, features_query, plan_chunks, read_features
from mlpipe.settings import Settings
from mlpipe.spec import load_job
from tests.helpers import days_ago

pytestmark = [pytest.mark.integration]


def _expected(conn, day) -> pd.DataFrame:
    """Each feature from its definition, in pandas, over the raw demo tables."""
    as_of = pd.Timestamp(datetime.combine(day, time.min, tzinfo=UTC))

    def frame(query: str) -> pd.DataFrame:
        cur = conn.execute(query)
        return pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description])

    customers = frame("select customer_id, signup_at, plan, is_marketing_opt_in from demo.customers")
    canceled = frame("select customer_id, canceled_at from demo.cancellations")
    events = frame("select customer_id, event_at, kind from demo.events")
    payments = frame("select customer_id, charged_at, status from demo.payments")
    gone = canceled.customer_id[canceled.canceled_at < as_of]
    out = customers[(customers.signup_at < as_of) & ~customers.customer_id.isin(gone)].set_index(
        "customer_id"
    )
    events = events[events.event_at < as_of]
    sessions = events[events.kind == "session"]
    support = events[events.kind == "support"]
    payments = payments[(payments.charged_at < as_of) & (payments.charged_at >= as_of - timedelta(days=90))]

    def count(rows: pd.DataFrame) -> pd.Series:
        return rows.groupby("customer_id").size().reindex(out.index, fill_value=0)

    day_s = 86400.0
    out["tenure_days"] = (as_of - out.signup_at).dt.total_seconds() / day_s
    out["sessions_30d"] = count(sessions[sessions.event_at >= as_of - timedelta(days=30)])
    out["sessions_prev_30d"] = count(
        sessions[
            (sessions.event_at >= as_of - timedelta(days=60))
            & (sessions.event_at < as_of - timedelta(days=30))
        ]
    )
    last = sessions.groupby("customer_id").event_at.max().reindex(out.index)
    out["days_since_last_session"] = (as_of - last).dt.total_seconds() / day_s
    out["support_tickets_30d"] = count(support[support.event_at >= as_of - timedelta(days=30)])
    out["payments_90d"] = count(payments)
    out["payments_failed_90d"] = count(payments[payments.status == "failed"])
    return out.drop(columns="signup_at").reset_index()


def _plant_edges(conn, day) -> list[int]:
    """Customers at the edges: a last session long before the 60-day window, a session exactly on a
    window's bound, rows at the first instant of as_of (not seen); returns their ids."""
    midnight = datetime.combine(day, time.min, tzinfo=UTC)
    ids = [
        row[0]
        for row in conn.execute(
            """select customer_id from demo.customers
               where signup_at < %s - interval '200 days'
                   and customer_id not in (select customer_id from demo.cancellations)
               order by customer_id limit 3""",
            [midnight],
        )
    ]
    old, edge, late = ids
    conn.execute(
        "delete from demo.events where customer_id = %s and event_at >= %s - interval '60 days'",
        [old, midnight],
    )
    conn.execute("insert into demo.events values (%s, %s - interval '100 days', 'session')", [old, midnight])
    for kind, ago in [("session", "30 days"), ("session", "60 days"), ("support", "30 days")]:
        conn.execute(
            "insert into demo.events values (%s, %s - %s::interval, %s)", [edge, midnight, ago, kind]
        )
    conn.execute(
        "insert into demo.events values (%s, %s, 'session'), (%s, %s, 'support')", [late, midnight] * 2
    )
    conn.execute("insert into demo.payments values (%s, %s, 999, 'failed')", [late, midnight])
    return ids


def test_chunked_features_are_each_feature_as_defined(conn):
    spec = load_job("churn", Settings())
    day = days_ago(3)
    planted = _plant_edges(conn, day)
    _, chunks = plan_chunks(conn, spec, day, 300)
    assert len(chunks) > 3

    read = pd.concat([read_features(conn, spec, day, chunk) for chunk in chunks], ignore_index=True)

    expected = _expected(conn, day)
    assert set(planted) <= set(read.customer_id)
    got = read.sort_values("customer_id").reset_index(drop=True)
    want = expected.sort_values("customer_id").reset_index(drop=True)[list(got.columns)]
    assert list(got.customer_id) == list(want.customer_id)
    for column in got.columns:
        if column == "plan":
            assert (got[column] == want[column]).all(), column
        else:
            values, wanted = got[column].to_numpy(dtype=float), want[column].to_numpy(dtype=float)
            assert np.allclose(values, wanted, rtol=1e-12, equal_nan=True), column


def _scans(plan: dict) -> list[dict]:
    found = [plan] if plan.get("Relation Name") else []
    for child in plan.get("Plans", []):
        found += _scans(child)
    return found


def test_a_chunks_key_range_reaches_every_table_it_reads(conn):
    spec = load_job("churn", Settings())
    day = days_ago(3)
    _, chunks = plan_chunks(conn, spec, day, 300)
    middle = chunks[len(chunks) // 2]

    plan = conn.execute(
        sql.SQL("explain (format json) {}").format(features_query(spec, middle)), _params(day, middle)
    ).fetchone()[0]

    scans = _scans((plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"])
    by_table = {}
    for scan in scans:
        conditions = " ".join(str(scan.get(k, "")) for k in ("Index Cond", "Recheck Cond", "Filter"))
        by_table.setdefault(scan["Relation Name"], []).append(conditions)
    # customer_id >= '1488'::smallint: the bounds as the plan prints them
    low, high = (
        rf"customer_id {op} '?{bound}\b" for op, bound in ((">=", middle.key_lo), ("<", middle.key_hi))
    )
    for table in ("customers", "events", "payments"):
        ranged = [c for c in by_table[table] if re.search(low, c) and re.search(high, c)]
        assert ranged, f"demo.{table} is read without the chunk's key range: {by_table[table]}"


def test_a_chunk_reads_events_and_payments_from_the_index_alone(conn):
    # The demo world's covering indexes hold what the features count (kind, status), and the world is
    # vacuumed once loaded: a chunk then reads no heap page of either table.
    spec = load_job("churn", Settings())
    day = days_ago(3)
    _, chunks = plan_chunks(conn, spec, day, 300)
    middle = chunks[len(chunks) // 2]
    conn.execute("set enable_seqscan = off")  # the test world is small enough for a sequential scan

    plan = conn.execute(
        sql.SQL("explain (analyze, format json) {}").format(features_query(spec, middle)),
        _params(day, middle),
    ).fetchone()[0]

    scans = _scans((plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"])
    for table in ("events", "payments"):
        read = [scan for scan in scans if scan["Relation Name"] == table]
        assert read, f"demo.{table} is not read"
        for scan in read:
            assert scan["Node Type"] == "Index Only Scan", f"demo.{table}: {scan['Node Type']}"
            assert scan["Heap Fetches"] == 0, f"demo.{table}: {scan['Heap Fetches']} heap fetches"
