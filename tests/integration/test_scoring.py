"""Daily scoring against a real PostgreSQL through the real Prefect flow."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from mlpipe import publish
from mlpipe.db import connection
from mlpipe.errors import (
    ArtifactError,
    ModelNotFoundError,
    PublishTimeoutError,
    RunFailedError,
    RunLockedError,
    UsageError,
)
from mlpipe.score import ScoringRun
from mlpipe.settings import Settings
from mlpipe.spec import load_job
from tests.helpers import days_ago, history_days, population, published, score

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def test_score_publishes_every_active_entity_once(conn):
    day = days_ago(2)
    result = score("churn", day)

    expected = population(conn, day)
    assert result["population"] == expected > 0
    assert result["rows_scored"] == expected and result["rows_quarantined"] == 0
    assert result["chunks"] > 1, "the test settings cut the population into several chunks"
    rows = published(conn)
    assert len(rows) == expected
    assert {r[4] for r in rows.values()} == {day}
    assert {r[5] for r in rows.values()} == {result["run_id"]}
    assert all(0.0 <= r[0] <= 1.0 and 0.0 <= r[2] <= 100.0 for r in rows.values())
    threshold = load_job("churn", Settings()).outputs.threshold
    assert all(r[1] == (r[0] >= threshold) for r in rows.values())
    run = conn.execute(
        "select status, population, rows_scored, chunks, score_histogram from mlpipe.runs where run_id = %s",
        [result["run_id"]],
    ).fetchone()
    assert run[:4] == ("published", expected, expected, result["chunks"])
    assert sum(run[4]["counts"]) == expected
    chunk_rows = conn.execute(
        "select sum(rows_scored), count(*) from mlpipe.run_chunks where run_id = %s", [result["run_id"]]
    ).fetchone()
    assert chunk_rows == (expected, result["chunks"])


def test_lookup_by_key_uses_the_primary_key_index(conn):
    score("churn", days_ago(1))
    some_id = next(iter(published(conn)))
    plan = "\n".join(
        r[0] for r in conn.execute("explain select * from predictions.churn where entity_id = %s", [some_id])
    )
    assert "Index Scan" in plan or "Index Only Scan" in plan, plan


def test_rescoring_a_day_replaces_it(conn):
    day = days_ago(3)
    first = score("churn", day)
    second = score("churn", day)

    expected = population(conn, day)
    assert history_days(conn) == {day: expected}
    partitions = conn.execute(
        "select count(*) from pg_inherits where inhparent = 'predictions.churn_history'::regclass"
    ).fetchone()[0]
    assert partitions == 1
    dupes = conn.execute(
        "select count(*) from (select entity_id from predictions.churn_history group by entity_id, as_of "
        "having count(*) > 1) d"
    ).fetchone()[0]
    assert dupes == 0
    assert {r[5] for r in published(conn).values()} == {second["run_id"]}
    first_table = "select to_regclass(%s)", [f"mlpipe_data.churn_r{first['run_id']}"]
    # Out of history at once; a lookup whose snapshot predates the re-run may still read it until
    # the next publish, which drops it.
    assert conn.execute(*first_table).fetchone()[0] is not None
    score("churn", days_ago(2))
    assert conn.execute(*first_table).fetchone()[0] is None, "the replaced day's table is dropped"


def test_an_older_day_goes_to_history_without_moving_the_view(conn):
    newest = score("churn", days_ago(1))
    older = score("churn", days_ago(5))

    assert newest["view_moved"] and not older["view_moved"]
    assert {r[5] for r in published(conn).values()} == {newest["run_id"]}
    assert set(history_days(conn)) == {days_ago(1), days_ago(5)}


def test_second_run_of_the_same_day_fails_fast_naming_the_holder(db_url, conn):
    settings = Settings()
    spec = load_job("churn", settings)
    holder = ScoringRun.begin(db_url, settings, spec, days_ago(1))
    try:
        with pytest.raises(RunLockedError, match=f"run {holder.run_id} "):
            score("churn", days_ago(1))
        other_day = score("churn", days_ago(2))  # another day is not blocked
        assert other_day["rows_scored"] > 0
    finally:
        holder.close()
    assert score("churn", days_ago(1))["rows_scored"] > 0


def test_quarantine_keeps_unscorable_rows_with_their_reason(conn):
    day = days_ago(1)
    bad_ids = [
        r[0]
        for r in conn.execute(
            """update demo.customers set plan = 'platinum' where customer_id in (
               select customer_id from demo.customers where signup_at < now() - interval '30 days'
               order by customer_id limit 3) returning customer_id"""
        )
    ]
    # Allow up to 1% (the job's limit); 3 rows of ~1,200 stay below it.
    result = score("churn", day)

    assert result["rows_quarantined"] >= 1
    assert result["rows_scored"] + result["rows_quarantined"] == population(conn, day)
    quarantined = conn.execute(
        "select entity_id, reason from mlpipe.quarantine where run_id = %s", [result["run_id"]]
    ).fetchall()
    active = {str(i) for i in bad_ids} & {q[0] for q in quarantined}
    assert active and all(q[1] == "plan: unknown category platinum" for q in quarantined)
    assert not {int(i) for i in active} & set(published(conn)), "quarantined rows are not published"


def test_too_many_bad_rows_stop_the_run_before_publish(conn):
    before = score("churn", days_ago(2))
    snapshot = published(conn)
    conn.execute("update demo.customers set plan = 'platinum' where customer_id % 10 = 0")

    rate = r"quarantine rate [0-9.]+% \(\d+ of [0-9,]+\) is above the job's 1.0%"
    with pytest.raises(RunFailedError, match=rate):
        score("churn", days_ago(1))

    assert published(conn) == snapshot
    assert set(history_days(conn)) == {days_ago(2)}
    failed = conn.execute(
        "select status, error from mlpipe.runs where kind = 'score' and run_id > %s", [before["run_id"]]
    ).fetchone()
    assert failed[0] == "failed" and "previous predictions stay live" in failed[1]
    leftovers = conn.execute(
        "select count(*) from pg_tables where schemaname = 'mlpipe_data' and tablename <> all(%s)",
        [[f"churn_r{before['run_id']}", "churn_live"]],  # the job's live parent stays
    ).fetchone()[0]
    assert leftovers == 0, "a failed run drops its table"


def test_a_tampered_artifact_is_refused(conn):
    conn.execute(
        """update mlpipe.models set artifact_sha256 = repeat('0', 64)
           where model_id = (
               select model_id from mlpipe.model_aliases where job = 'churn' and alias = 'champion')"""
    )
    with pytest.raises(ArtifactError, match="does not match its registered sha256"):
        score("churn", days_ago(1))
    assert conn.execute("select to_regclass('predictions.churn')").fetchone()[0] is None


def test_a_named_model_version_scores_instead_of_the_champion(conn):
    result = score("churn", days_ago(1), model_version="churn-v1")
    assert result["model_version"] == "churn-v1"
    with pytest.raises(ModelNotFoundError, match="has no model churn-v99"):
        score("churn", days_ago(1), model_version="churn-v99")


def test_a_reader_holding_the_view_delays_publish_but_never_sees_a_mix(db_url, conn, monkeypatch):
    day = days_ago(1)
    first = score("churn", day)
    before = published(conn)
    monkeypatch.setenv("MLPIPE_LOCK_TIMEOUT_MS", "20")
    monkeypatch.setenv("MLPIPE_PUBLISH_RETRIES", "3")

    with connection(db_url) as reader:
        reader.execute("select count(*) from predictions.churn")  # holds its lock until the end
        with pytest.raises(PublishTimeoutError, match="previous predictions are still live"):
            score("churn", day)
        assert {r[5] for r in published(reader).values()} == {first["run_id"]}
        reader.rollback()

    assert published(conn) == before
    again = score("churn", day)
    assert {r[5] for r in published(conn).values()} == {again["run_id"]}


def test_a_reader_in_an_open_transaction_does_not_delay_a_new_day_and_lookups_never_see_a_mix(
    db_url, conn, monkeypatch
):
    first = score("churn", days_ago(2))
    keys = sorted(published(conn))[:50]
    # One attempt of 20 ms: a publish that waited for the reader below would fail.
    monkeypatch.setenv("MLPIPE_LOCK_TIMEOUT_MS", "20")
    monkeypatch.setenv("MLPIPE_PUBLISH_RETRIES", "1")
    seen, failures, stop = [], [], threading.Event()

    def look_up() -> None:
        with connection(db_url, autocommit=True) as reader:
            while not stop.is_set():
                try:
                    seen.append(
                        reader.execute(
                            "select run_id, count(*) from predictions.churn "
                            "where entity_id = any(%s) group by 1",
                            [keys],
                        ).fetchall()
                    )
                except psycopg.Error as exc:
                    failures.append(exc)

    with connection(db_url) as holder:
        holder.execute("select count(*) from predictions.churn")  # holds the view and the live day
        looker = threading.Thread(target=look_up)
        looker.start()
        try:
            second = score("churn", days_ago(1))
            time.sleep(0.3)  # lookups after the publish too
        finally:
            stop.set()
            looker.join()
        assert second["view_moved"]
        live = "select count(*) from pg_inherits where inhparent = 'mlpipe_data.churn_live'::regclass"
        assert conn.execute(live).fetchone()[0] == 2, "the held table waits, hidden, to leave"
        holder.rollback()

    assert not failures
    answers = {tuple(rows) for rows in seen}
    assert answers == {((first["run_id"], 50),), ((second["run_id"], 50),)}, "old or new, never a mix"
    publish.retire_live_tables(conn, load_job("churn", Settings()))
    assert conn.execute(live).fetchone()[0] == 1
    assert {r[5] for r in published(conn).values()} == {second["run_id"]}


def test_retention_drops_days_older_than_the_spec_keeps(conn, tmp_path):
    import shutil

    import yaml

    folder = tmp_path / "churn"
    shutil.copytree(load_job("churn", Settings()).folder, folder)
    spec = yaml.safe_load((folder / "job.yaml").read_text())
    spec["outputs"]["history_days"] = 3
    (folder / "job.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    job = str(folder / "job.yaml")

    for n in (7, 6, 5):
        score(job, days_ago(n))
    assert set(history_days(conn)) == {days_ago(7), days_ago(6), days_ago(5)}
    result = score(job, days_ago(3))

    assert set(history_days(conn)) == {days_ago(5), days_ago(3)}, "days <= newest - 3 are dropped"
    assert result["timings"]["retention_dropped_days"] == 2
    tables = conn.execute(
        "select count(*) from pg_tables where schemaname = 'mlpipe_data' and tablename like 'churn\\_r%'"
    ).fetchone()[0]
    assert tables == 2
    with pytest.raises(UsageError, match="outside the 3-day history"):
        score(job, days_ago(6))  # it would be dropped as soon as it was published
    assert set(history_days(conn)) == {days_ago(5), days_ago(3)}


def test_a_lookup_whose_snapshot_predates_a_publish_still_finds_the_old_day(db_url, conn):
    first = score("churn", days_ago(2))
    key = min(published(conn))
    with connection(db_url) as reader:
        reader.execute("begin isolation level repeatable read")
        reader.execute("select count(*) from mlpipe.live_views").fetchone()  # the snapshot, not the view
        second = score("churn", days_ago(1))
        # Its snapshot still names the previous day's table: that table must still be a child of
        # <job>_live (it leaves at the next publish), or this lookup would find nothing at all.
        row = reader.execute("select run_id from predictions.churn where entity_id = %s", [key]).fetchone()
        assert row == (first["run_id"],)
        reader.rollback()
    assert {r[5] for r in published(conn).values()} == {second["run_id"]}
    third = score("churn", days_ago(0))
    live = "select count(*) from pg_inherits where inhparent = 'mlpipe_data.churn_live'::regclass"
    assert conn.execute(live).fetchone()[0] == 2, "the live day and the one before it, no older"
    assert {r[5] for r in published(conn).values()} == {third["run_id"]}
