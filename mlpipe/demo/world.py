"""A synthetic subscription business with real causal signal, generated with numpy and loaded by COPY.

Each customer has hidden traits (engagement, payment risk, annoyance). Those traits set a daily
churn hazard; in the weeks before a cancellation sessions thin out and support tickets pile up.
A model that reads recent activity and payment history can therefore beat a one-feature rule.
Everything is deterministic given (entities, seed, end day).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import psycopg
import pyarrow as pa

from mlpipe.copyio import copy_in_csv

log = logging.getLogger(__name__)

HISTORY_DAYS = 730
PLANS = np.array(["basic", "standard", "premium"])
PLAN_SHARE = [0.5, 0.35, 0.15]
PLAN_PRICE_CENTS = np.array([999, 1499, 2499])
PLAN_HAZARD = np.array([0.3, 0.0, -0.4])
COUNTRIES = np.array(["de", "fr", "nl", "es", "it", "pl"])  # no effect on churn, on purpose
BLOCK = 50_000  # customers generated and copied at a time: bounds memory at any size

_DDL = """
drop schema if exists demo cascade;
create schema demo;
create table demo.customers (
    customer_id bigint primary key,
    signup_at timestamptz not null,
    plan text not null,
    country text not null,
    is_marketing_opt_in boolean not null
);
create table demo.events (
    customer_id bigint not null,
    event_at timestamptz not null,
    kind text not null check (kind in ('session', 'support'))
);
create table demo.payments (
    customer_id bigint not null,
    charged_at timestamptz not null,
    amount_cents integer not null,
    status text not null check (status in ('paid', 'failed'))
);
create table demo.cancellations (
    customer_id bigint primary key,
    canceled_at timestamptz not null,
    reason text not null
);
"""

_INDEXES = """
create index events_customer_at_idx on demo.events (customer_id, event_at);
create index payments_customer_at_idx on demo.payments (customer_id, charged_at);
create index customers_signup_idx on demo.customers (signup_at);
analyze demo.customers; analyze demo.events; analyze demo.payments; analyze demo.cancellations;
"""


@dataclass(frozen=True)
class WorldSummary:
    entities: int
    events: int
    payments: int
    cancellations: int
    end: date


def generate(
    conn: psycopg.Connection, entities: int, *, seed: int = 42, end: date | None = None
) -> WorldSummary:
    """Replace the demo schema with a world of `entities` customers whose history ends at `end`."""
    end = end or date.today()
    start = datetime.combine(end - timedelta(days=HISTORY_DAYS), datetime.min.time(), tzinfo=UTC)
    rng = np.random.default_rng(seed)
    totals = dict(events=0, payments=0, cancellations=0)
    with conn.transaction():
        conn.execute(_DDL)
        for first in range(1, entities + 1, BLOCK):
            count = min(BLOCK, entities + 1 - first)
            tables = _block(rng, first, count, start)
            for name, table in tables.items():
                copy_in_csv(conn, "demo", name, table)
                if name != "customers":
                    totals[name] += table.num_rows
        conn.execute(_INDEXES)
    log.info("demo world: %s customers, %s", entities, totals)
    return WorldSummary(entities=entities, end=end, **totals)


def _block(rng: np.random.Generator, first: int, n: int, start: datetime) -> dict[str, pa.Table]:
    ids = np.arange(first, first + n, dtype=np.int64)
    signup = rng.uniform(0, HISTORY_DAYS - 1, n)  # in days since start
    plan = rng.choice(len(PLANS), n, p=PLAN_SHARE)
    engagement = rng.gamma(2.0, 0.04, n)  # sessions per day
    pay_risk = rng.beta(1.0, 12.0, n)  # chance a monthly payment fails
    annoyance = rng.gamma(1.0, 0.01, n)  # support tickets per day

    log_hazard = (
        np.log(0.0025)
        - 0.9 * np.log(engagement / 0.08)
        + 12.0 * (pay_risk - 0.077)
        + 30.0 * (annoyance - 0.01)
        + PLAN_HAZARD[plan]
    )
    churn_at = signup + rng.exponential(1.0 / np.exp(log_hazard))
    churned = churn_at < HISTORY_DAYS
    alive_until = np.minimum(churn_at, HISTORY_DAYS)

    sessions = _point_process(rng, ids, signup, alive_until, churn_at, engagement, decay_to=0.15)
    support = _point_process(rng, ids, signup, alive_until, churn_at, annoyance, decay_to=3.0)
    events_id = np.concatenate([sessions[0], support[0]])
    events_day = np.concatenate([sessions[1], support[1]])
    kind = np.concatenate([np.full(len(sessions[0]), "session"), np.full(len(support[0]), "support")])

    months = np.floor((alive_until - signup) / 30.0).astype(np.int64) + 1
    pay_id = np.repeat(ids, months)
    offset = np.arange(months.sum()) - np.repeat(np.cumsum(months) - months, months)
    pay_day = np.repeat(signup, months) + 30.0 * offset
    failed = rng.random(len(pay_id)) < np.repeat(pay_risk, months)

    return {
        "customers": pa.table(
            {
                "customer_id": ids,
                "signup_at": _timestamps(start, signup),
                "plan": PLANS[plan],
                "country": COUNTRIES[rng.integers(0, len(COUNTRIES), n)],
                "is_marketing_opt_in": rng.random(n) < 0.4,
            }
        ),
        "events": pa.table(
            {"customer_id": events_id, "event_at": _timestamps(start, events_day), "kind": kind}
        ),
        "payments": pa.table(
            {
                "customer_id": pay_id,
                "charged_at": _timestamps(start, pay_day),
                "amount_cents": np.repeat(PLAN_PRICE_CENTS[plan], months).astype(np.int32),
                "status": np.where(failed, "failed", "paid"),
            }
        ),
        "cancellations": pa.table(
            {
                "customer_id": ids[churned],
                "canceled_at": _timestamps(start, churn_at[churned]),
                "reason": rng.choice(["price", "not_using", "switched", "other"], int(churned.sum())),
            }
        ),
    }


def _point_process(rng, ids, begin, end, churn_at, rate, *, decay_to: float):
    """Events at `rate` per day between begin and end; within 45 days of churn the rate drifts to
    rate * decay_to (sessions thin out, support tickets pile up)."""
    counts = rng.poisson(rate * np.maximum(end - begin, 0) * max(1.0, decay_to))
    who = np.repeat(np.arange(len(ids)), counts)
    day = np.repeat(begin, counts) + rng.random(len(who)) * np.repeat(end - begin, counts)
    closeness = np.clip((churn_at[who] - day) / 45.0, 0.0, 1.0)  # 1 far from churn, 0 at churn
    multiplier = closeness + (1.0 - closeness) * decay_to
    keep = rng.random(len(who)) < multiplier / max(1.0, decay_to)
    return ids[who[keep]], day[keep]


def _timestamps(start: datetime, days: np.ndarray) -> pa.Array:
    micros = np.int64(start.timestamp() * 1_000_000) + (days * 86_400_000_000).astype(np.int64)
    return pa.array(micros, type=pa.timestamp("us", tz="UTC"))
