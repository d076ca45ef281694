"""A synthetic subscription business with real causal signal, generated with numpy and loaded by COPY.

Each customer has hidden traits (engagement, payment risk, annoyance). Those traits set a daily
churn hazard; in the weeks before a cancellation sessions thin out and support tickets pile up.
A model that reads recent activity and payment history can therefore beat a one-feature rule.
Everything is deterministic given (entities, seed, end day).

An optional `DriftScenario` plants two changes from a known day: a new acquisition channel brings a
burst of customers with far fewer sessions (an input drifts), and a price rise makes one plan churn
much more, abruptly and without the usual fading first (the relationship changes, the inputs do not
show it). Without a scenario the world is exactly the default one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import psycopg
import pyarrow as pa

from mlpipe.copyio import copy_in_csv
from mlpipe.errors import UsageError

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

# Covering indexes: a chunk of the churn features reads events and payments by customer range and
# time window, and the kind/status it counts come from the index (index-only scans, once vacuumed).
_INDEXES = """
create index events_customer_at_idx on demo.events (customer_id, event_at) include (kind);
create index payments_customer_at_idx on demo.payments (customer_id, charged_at) include (status);
create index customers_signup_idx on demo.customers (signup_at);
-- A chunk's features read customers by key range and anti-join them to cancellations: alone, that
-- is a merge join in key order; a parallel hash join over all cancellations took longer with three
-- processes (EXPLAIN ANALYZE, 1M customers, a 250k-key chunk), and chunks already run side by side.
alter table demo.customers set (parallel_workers = 0);
alter table demo.cancellations set (parallel_workers = 0);
analyze demo.customers; analyze demo.events; analyze demo.payments; analyze demo.cancellations;
"""
# The visibility map of freshly loaded tables is empty: without a vacuum every index-only scan still
# fetches each row from the heap (until autovacuum comes by, if it does before the first run).
_VACUUM = "vacuum (analyze) demo.customers, demo.events, demo.payments, demo.cancellations"


@dataclass(frozen=True)
class DriftScenario:
    """A world that changes on `shift_day` (the first day whose label window starts after the price
    rise; its population sees the channel's first customers the day after).

    The scenario's business was founded `founded_days` ago with the default world's signup rate, so
    that its population is stationary before the shift (in the default world, founded two years ago,
    tenure keeps drifting as the first customers age); customers who left before the last two years
    are not kept, since no query of the job looks that far back."""

    shift_day: date
    founded_days: int = 3650
    channel_share: float = 0.3  # channel customers, as a share of `entities`
    channel_days: float = 2.0  # they sign up uniformly over this many days from shift_day
    channel_activity: float = 0.15  # their sessions per day relative to the world's customers
    price_plan: str = "premium"  # the plan the model learned is the most loyal
    price_hazard: float = 0.008  # extra daily cancellation chance of that plan from shift_day

    def offset(self, start: datetime) -> float:
        """shift_day in days since the world's start."""
        return float((self.shift_day - start.date()).days)


@dataclass(frozen=True)
class WorldSummary:
    entities: int
    events: int
    payments: int
    cancellations: int
    end: date


def generate(
    conn: psycopg.Connection,
    entities: int,
    *,
    seed: int = 42,
    end: date | None = None,
    scenario: DriftScenario | None = None,
) -> WorldSummary:
    """Replace the demo schema with a world of `entities` customers whose history ends at `end`.
    With a scenario, `entities` customers signed up over the last two years (the same signup rate),
    and the channel's customers come on top."""
    end = end or date.today()
    history = HISTORY_DAYS if scenario is None else max(scenario.founded_days, HISTORY_DAYS)
    start = datetime.combine(end - timedelta(days=history), datetime.min.time(), tzinfo=UTC)
    if scenario is not None and not history - HISTORY_DAYS < scenario.offset(start) < history:
        raise UsageError(f"the scenario's shift day {scenario.shift_day} is outside the world's history")
    rng = np.random.default_rng(seed)
    totals = dict(events=0, payments=0, cancellations=0)
    with conn.transaction():
        conn.execute(_DDL)
        for tables in _blocks(rng, entities, start, history, scenario):
            for name, table in tables.items():
                copy_in_csv(conn, "demo", name, table)
                if name != "customers":
                    totals[name] += table.num_rows
        conn.execute(_INDEXES)
    _vacuum(conn)
    customers = conn.execute("select count(*) from demo.customers").fetchone()[0]
    log.info("demo world: %s customers, %s", customers, totals)
    return WorldSummary(entities=customers, end=end, **totals)


def _vacuum(conn: psycopg.Connection) -> None:
    """Vacuum the demo tables; VACUUM runs outside a transaction only, so not inside the caller's."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        log.warning("demo world: not vacuumed (the connection is inside a transaction)")
        return
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        conn.execute(_VACUUM)
    finally:
        conn.autocommit = autocommit


def _blocks(rng: np.random.Generator, entities: int, start: datetime, history: int, scenario):
    """The tables of each block: the world's customers, then the scenario's channel."""
    everyone = entities if scenario is None else int(round(entities * history / HISTORY_DAYS))
    # The price rise draws from its own stream, so the world before the shift never depends on it.
    price_rng = None if scenario is None else rng.spawn(1)[0]
    for first in range(1, everyone + 1, BLOCK):
        count = min(BLOCK, everyone + 1 - first)
        yield _block(rng, first, count, start, history, scenario, price_rng=price_rng)
    if scenario is not None:
        channel = int(round(entities * scenario.channel_share))
        for first in range(everyone + 1, everyone + channel + 1, BLOCK):
            count = min(BLOCK, everyone + channel + 1 - first)
            yield _block(rng, first, count, start, history, scenario, channel=True, price_rng=price_rng)


def _signups(rng: np.random.Generator, n: int, history: int, scenario, start, channel: bool) -> np.ndarray:
    """Signup days since start: uniform over the history, or the channel's burst from the shift."""
    if not channel:
        return rng.uniform(0, history - 1, n)
    days = scenario.offset(start) + rng.uniform(0, scenario.channel_days, n)
    return np.minimum(days, history - 1e-3)


def _block(
    rng: np.random.Generator,
    first: int,
    n: int,
    start: datetime,
    history: int = HISTORY_DAYS,
    scenario: DriftScenario | None = None,
    *,
    channel: bool = False,
    price_rng: np.random.Generator | None = None,
) -> dict[str, pa.Table]:
    ids = np.arange(first, first + n, dtype=np.int64)
    signup = _signups(rng, n, history, scenario, start, channel)  # in days since start
    plan = rng.choice(len(PLANS), n, p=PLAN_SHARE)
    engagement = rng.gamma(2.0, 0.04, n)  # sessions per day
    if channel:
        engagement = engagement * scenario.channel_activity
    pay_risk = rng.beta(1.0, 12.0, n)  # chance a monthly payment fails
    annoyance = rng.gamma(1.0, 0.01, n)  # support tickets per day

    log_hazard = (
        np.log(0.0025)
        - 0.9 * np.log(engagement / 0.08)
        + 12.0 * (pay_risk - 0.077)
        + 30.0 * (annoyance - 0.01)
        + PLAN_HAZARD[plan]
    )
    faded_at = signup + rng.exponential(1.0 / np.exp(log_hazard))  # the usual churn, faded before
    if scenario is None:
        churn_at = faded_at
    else:
        churn_at = _price_rise(price_rng, scenario, start, signup, plan, faded_at)
        # Customers gone before the recorded two years: no query of the job reaches them (the price
        # rise comes later, so it never changes who is kept).
        keep = faded_at >= history - HISTORY_DAYS
        ids, signup, plan, engagement, pay_risk, annoyance, faded_at, churn_at = (
            a[keep] for a in (ids, signup, plan, engagement, pay_risk, annoyance, faded_at, churn_at)
        )
    customers = Customers(ids, signup, plan, engagement, pay_risk, annoyance, faded_at, churn_at)
    return _tables(rng, customers, start, history, signup_session=channel)


@dataclass(frozen=True)
class Customers:
    ids: np.ndarray
    signup: np.ndarray  # days since the world's start
    plan: np.ndarray  # index into PLANS
    engagement: np.ndarray
    pay_risk: np.ndarray
    annoyance: np.ndarray
    faded_at: np.ndarray  # the usual churn day: activity fades in the weeks before it
    churn_at: np.ndarray  # the day they cancel (earlier than faded_at after a price rise)


def _tables(rng, c: Customers, start: datetime, history: int, *, signup_session: bool) -> dict[str, pa.Table]:
    """The four tables of a block of customers."""
    ids, signup, plan, churn_at, n = c.ids, c.signup, c.plan, c.churn_at, len(c.ids)
    churned = churn_at < history
    alive_until = np.minimum(churn_at, history)

    sessions = _point_process(rng, ids, signup, alive_until, c.faded_at, c.engagement, decay_to=0.15)
    support = _point_process(rng, ids, signup, alive_until, c.faded_at, c.annoyance, decay_to=3.0)
    if signup_session:  # signing up in the app is a session: every one of them has one
        sessions = (np.concatenate([ids, sessions[0]]), np.concatenate([signup, sessions[1]]))
    events_id = np.concatenate([sessions[0], support[0]])
    events_day = np.concatenate([sessions[1], support[1]])
    kind = np.concatenate([np.full(len(sessions[0]), "session"), np.full(len(support[0]), "support")])

    months = np.floor((alive_until - signup) / 30.0).astype(np.int64) + 1
    pay_id = np.repeat(ids, months)
    offset = np.arange(months.sum()) - np.repeat(np.cumsum(months) - months, months)
    pay_day = np.repeat(signup, months) + 30.0 * offset
    failed = rng.random(len(pay_id)) < np.repeat(c.pay_risk, months)

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
                "reason": np.where(
                    (churn_at < c.faded_at)[churned],
                    "price",
                    rng.choice(["price", "not_using", "switched", "other"], int(churned.sum())),
                ),
            }
        ),
    }


def _price_rise(rng, scenario: DriftScenario, start: datetime, signup, plan, faded_at) -> np.ndarray:
    """Churn days after the price rise: customers of the plan still there at the shift may leave
    abruptly from then on (no fading first), whichever comes sooner."""
    shift = scenario.offset(start)
    hit = plan == int(np.flatnonzero(PLANS == scenario.price_plan)[0])
    leave_at = np.maximum(signup, shift) + rng.exponential(1.0 / scenario.price_hazard, len(signup))
    return np.where(hit & (leave_at < faded_at), leave_at, faded_at)


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
