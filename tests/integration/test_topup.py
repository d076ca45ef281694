"""Intraday top-up (`mlpipe score --new-only`): entities that appeared after the day's run get rows in
the live day, under the top-up's own run id; nothing else changes, readers never wait, a second top-up
does nothing, and a SIGKILL before its one transaction commits leaves the day as it was."""

from __future__ import annotations

import signal
import threading

import psycopg
import pytest
from psycopg import sql

from flows.score import score_flow
from mlpipe.db import connection
from mlpipe.monitor import key_figures
from mlpipe.settings import Settings
from mlpipe.spec import load_job
from tests.fixtures.processes import DONE_ALL, killed_at_the_end, start_cli, wait_for
from tests.helpers import TODAY, history_days, published, run_cli, score

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def new_customers(conn: psycopg.Connection, count: int) -> list[int]:
    """Customers who signed up a moment ago: after today's run (as of midnight), before a top-up."""
    first = conn.execute("select max(customer_id) + 1 from demo.customers").fetchone()[0]
    conn.execute(
        """insert into demo.customers (customer_id, signup_at, plan, country, is_marketing_opt_in)
           select %s + g, now() - interval '1 second', 'basic', 'DE', false from generate_series(0, %s) g""",
        [first, count - 1],
    )
    return list(range(first, first + count))


def day_table(conn: psycopg.Connection) -> str:
    return conn.execute(
        "select table_name from mlpipe.partitions where job = 'churn' and kind = 'published' and as_of = %s",
        [TODAY],
    ).fetchone()[0]


def test_topup_adds_new_entities_to_the_live_day_and_a_second_does_nothing(conn):
    day = score("churn", TODAY)
    before = published(conn)
    new = new_customers(conn, 7)
    spec = load_job("churn", Settings())
    assert key_figures(conn, spec, TODAY)["entities_without_row"] == 7  # what the monitor reports

    topup = score_flow(job="churn", new_only=True)

    after = published(conn)
    assert set(after) - set(before) == set(new)
    assert {k: after[k] for k in before} == before  # existing rows untouched
    for key in new:
        _, _, _, model_version, as_of, run_id = after[key]
        assert (model_version, as_of, run_id) == (day["model_version"], TODAY, topup["run_id"])
    assert topup["population"] == 7 and topup["timings"]["rows_inserted"] == 7
    kind, status, as_of, source_as_of, started = conn.execute(
        "select kind, status, as_of, source_as_of, started_at from mlpipe.runs where run_id = %s",
        [topup["run_id"]],
    ).fetchone()
    assert (kind, status, as_of) == ("topup", "published", TODAY)
    assert source_as_of.date() == TODAY and source_as_of <= started  # read as of now, stored under the day
    assert not conn.execute(
        "select count(*) from pg_tables where schemaname = 'mlpipe_data' and tablename ~ %s",
        [f"^churn_[rk]{topup['run_id']}$"],
    ).fetchone()[0], "the top-up's own tables are dropped"

    again = score_flow(job="churn", new_only=True)
    assert again["population"] == 0 and again["timings"]["rows_inserted"] == 0
    assert published(conn) == after
    assert history_days(conn)[TODAY] == len(after)
    assert key_figures(conn, spec, TODAY)["entities_without_row"] == 0


def test_readers_never_wait_for_a_topup(db_url, conn):
    score("churn", TODAY)
    new = new_customers(conn, 5)
    some_key = next(iter(published(conn)))
    # A reader transaction holds the view and the day's partition open for the whole top-up.
    with connection(db_url) as reader:
        reader.execute("select count(*) from predictions.churn").fetchone()
        stop, slowest, errors = threading.Event(), [0.0], []

        def lookups() -> None:
            with connection(db_url, autocommit=True) as c:
                c.execute("set statement_timeout = '5s'")
                while not stop.is_set():
                    try:
                        timed = c.execute(
                            "select clock_timestamp() - statement_timestamp(), * "
                            "from predictions.churn_for(%s)",
                            [some_key],
                        ).fetchone()
                        slowest[0] = max(slowest[0], timed[0].total_seconds())
                    except psycopg.Error as exc:
                        errors.append(exc)

        looker = threading.Thread(target=lookups)
        looker.start()
        try:
            topup = score_flow(job="churn", new_only=True)
        finally:
            stop.set()
            looker.join()
        assert reader.execute(
            "select score from predictions.churn where entity_id = %s", [some_key]
        ).fetchone()
        reader.commit()
    assert not errors
    assert slowest[0] < 1.0, f"a lookup waited {slowest[0]:.3f}s during the top-up"
    assert topup["timings"]["rows_inserted"] == 5
    assert topup["timings"]["insert_s"] < 1.0, "the insert never waited for the open reader"
    assert set(new) <= set(published(conn))


def test_sigkill_mid_topup_leaves_the_day_as_it_was(db_url, conn, prefect_api):
    score("churn", TODAY)
    new = new_customers(conn, 4)
    before, partitions = published(conn), conn.execute("select * from mlpipe.partitions").fetchall()
    # A lock that the top-up's insert must wait for: it scores every chunk, then cannot commit.
    with connection(db_url) as blocker:
        blocker.execute(
            sql.SQL("lock table {} in share mode").format(sql.Identifier("mlpipe_data", day_table(conn)))
        )
        proc = start_cli(db_url, prefect_api, ["score", "--job", "churn", "--new-only"])
        with killed_at_the_end(proc):
            wait_for(conn, DONE_ALL, [], proc)
        blocker.rollback()
    assert proc.returncode == -signal.SIGKILL
    assert published(conn) == before
    assert conn.execute("select * from mlpipe.partitions").fetchall() == partitions
    dead = conn.execute(
        "select run_id from mlpipe.runs where kind = 'topup' and status = 'running'"
    ).fetchone()[0]

    topup = score_flow(job="churn", new_only=True)

    assert (
        conn.execute("select status from mlpipe.runs where run_id = %s", [dead]).fetchone()[0] == "abandoned"
    )
    assert not conn.execute(
        "select count(*) from pg_tables where schemaname = 'mlpipe_data' and tablename ~ %s",
        [f"^churn_[rk]{dead}$"],
    ).fetchone()[0], "the next top-up drops what the dead one left"
    after = published(conn)
    assert set(after) - set(before) == set(new) and {after[k][5] for k in new} == {topup["run_id"]}


def test_new_only_with_nothing_published_is_one_line(conn):
    out = run_cli("score", "--job", "churn", "--new-only")
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "nothing of churn is published yet" in lines[0], out.stderr
    assert "mlpipe score --job churn" in lines[0]
    assert not conn.execute("select count(*) from mlpipe.runs where kind = 'topup'").fetchone()[0]
