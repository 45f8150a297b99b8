"""retention against a real PostgreSQL: a plan changes nothing, apply removes exactly the plan."""

import datetime as dt
import textwrap

import pytest
from helpers import call, run_cli

from opsbook.errors import CheckFailed, LockHeld, UsageError
from opsbook.ops.policy import load_policy
from opsbook.ops.retention import table_lock
from opsbook.procedures import retention
from opsbook.run import context

pytestmark = pytest.mark.notebook
AS_OF = "2026-01-08"  # safety_indices_realtime keeps 2 days: cutoff 2026-01-06 00:00 UTC
TS_CUTOFF = "2026-01-06 00:00+00"
HOURLY_CUTOFF = "2025-10-10 00:00+00"  # 90 days before AS_OF


@pytest.fixture
def safety_tables(db):
    """safety_indices_realtime (hourly readings, a partition per day, 2026-01-01..10),
    safety_indices_hourly (2025-09-01..2026-01-08, one row a day) and safety_indices_daily (one
    row a day since 2020: kept for good)."""
    db.execute("DROP TABLE IF EXISTS safety_indices_realtime, safety_indices_hourly, safety_indices_daily")
    db.execute(
        "CREATE TABLE safety_indices_realtime (intersection_id integer, timestamp timestamptz, "
        "combined_index double precision, PRIMARY KEY (intersection_id, timestamp)) PARTITION BY RANGE (timestamp)"
    )
    for day in range(1, 11):  # a partition per UTC day, as the runbook's schema has
        db.execute(
            f"CREATE TABLE safety_indices_realtime_p202601{day:02d} PARTITION OF safety_indices_realtime "
            f"FOR VALUES FROM ('2026-01-{day:02d} 00:00+00') "
            f"TO ('2026-01-{day:02d} 00:00+00'::timestamptz + interval '1 day')"
        )
    db.execute(
        "INSERT INTO safety_indices_realtime SELECT i, t, random() FROM generate_series(1001, 1003) i, "
        "generate_series('2026-01-01 00:00+00'::timestamptz, '2026-01-10 23:00+00', '1 hour') t"
    )
    db.execute("CREATE TABLE safety_indices_hourly (intersection_id integer, hour_timestamp timestamptz, avg_si real)")
    db.execute("CREATE TABLE safety_indices_daily (intersection_id integer, date date, avg_si real)")
    db.execute(
        "INSERT INTO safety_indices_daily SELECT 1001, d, 0.5 "
        "FROM generate_series('2020-01-01'::date, '2026-01-08', '1 day') d"
    )
    db.execute(
        "INSERT INTO safety_indices_hourly SELECT 1001, t, 0.5 FROM "
        "generate_series('2025-09-01 00:00+00'::timestamptz, '2026-01-08 00:00+00', '1 day') t"
    )
    yield db
    db.execute("DROP TABLE IF EXISTS safety_indices_realtime, safety_indices_hourly, safety_indices_daily")


def state(db, *tables: str) -> dict:
    """Each table's row count and a digest of its rows: equal states, equal contents."""
    found = {}
    for table in tables:
        if db.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
            found[table] = None
            continue
        found[table] = db.execute(
            f"SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {table} t"
        ).fetchone()
    return found


def count(db, query: str, *args) -> int:
    return db.execute(query, args).fetchone()[0]


def test_plan_changes_nothing_and_counts_match_an_independent_count(safety_tables):
    db = safety_tables
    before = state(db, "safety_indices_realtime", "safety_indices_hourly")
    vacuums = count(db, "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'safety_indices_hourly'")
    result = call("retention", policy="trafficsafety", as_of=AS_OF, max_rows=1)  # the limit binds only on apply
    plan = result.plan

    rules = {r.table: r for r in plan.rules}
    assert "safety_indices_daily" not in rules  # the runbook keeps daily roll-ups for good
    realtime = rules["safety_indices_realtime"]
    old = count(db, "SELECT count(*) FROM safety_indices_realtime WHERE timestamp < %s", TS_CUTOFF)
    assert old == 3 * 5 * 24  # 2026-01-01..05
    assert (realtime.remove_rows, realtime.rows, realtime.kept_rows) == (old, 3 * 10 * 24, 3 * 5 * 24)
    assert realtime.cutoff == dt.datetime(2026, 1, 6, tzinfo=dt.UTC)
    assert 0 < realtime.remove_bytes < realtime.table_bytes
    hourly = rules["safety_indices_hourly"]
    assert hourly.remove_rows == count(
        db, "SELECT count(*) FROM safety_indices_hourly WHERE hour_timestamp < %s", HOURLY_CUTOFF
    )
    assert hourly.remove_rows == 39  # 2025-09-01 .. 2025-10-09
    verdict = result.verdict()
    assert verdict.status == "pass" and "plan only, nothing changed" in verdict.summary
    assert f"would remove {old + 39:,} rows" in verdict.summary
    assert result.applied == [] and "apply=true" in retention.show_applied(result).text
    assert state(db, "safety_indices_realtime", "safety_indices_hourly") == before
    assert count(db, "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'safety_indices_hourly'") == vacuums


def test_apply_deletes_exactly_the_planned_rows_and_vacuums(safety_tables):
    db = safety_tables
    kept_before = state(db, "safety_indices_realtime")  # digest of the rows that must stay, taken below
    daily_before = state(db, "safety_indices_daily")
    assert daily_before["safety_indices_daily"][0] > 2000
    kept_digest = db.execute(
        "SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM safety_indices_realtime t WHERE timestamp >= %s",
        (TS_CUTOFF,),
    ).fetchone()[0]
    result = call("retention", policy="trafficsafety", as_of=AS_OF, apply=True)

    applied = {a.table: a for a in result.applied}
    assert applied["safety_indices_realtime"].status == "removed"
    assert applied["safety_indices_realtime"].removed_rows == applied["safety_indices_realtime"].planned_rows == 360
    assert applied["safety_indices_hourly"].removed_rows == 39
    assert "safety_indices_daily" not in applied and state(db, "safety_indices_daily") == daily_before
    assert count(db, "SELECT count(*) FROM safety_indices_realtime") == kept_before["safety_indices_realtime"][0] - 360
    assert count(db, "SELECT count(*) FROM safety_indices_realtime WHERE timestamp < %s", TS_CUTOFF) == 0
    assert (
        db.execute("SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM safety_indices_realtime t").fetchone()[0]
        == kept_digest
    )
    assert count(db, "SELECT min(hour_timestamp) = %s::timestamptz FROM safety_indices_hourly", HOURLY_CUTOFF)
    assert applied["safety_indices_realtime"].dropped == [f"safety_indices_realtime_p2026010{d}" for d in range(1, 6)]
    assert applied["safety_indices_realtime"].maintenance == "ANALYZE"  # partitions dropped whole: nothing to vacuum
    assert applied["safety_indices_hourly"].maintenance == "VACUUM ANALYZE"
    assert count(db, "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'safety_indices_hourly'") >= 1
    verdict = result.verdict()
    assert verdict.status == "pass" and "removed 399 rows" in verdict.summary, verdict.summary

    again = call("retention", as_of=AS_OF, apply=True)
    assert {a.table: a.status for a in again.applied} == {
        "safety_indices_realtime": "nothing to remove",
        "safety_indices_hourly": "nothing to remove",
    }


def test_over_max_rows_is_refused_before_anything_is_touched(safety_tables):
    db = safety_tables
    before = state(db, "safety_indices_realtime", "safety_indices_hourly")
    result = call("retention", as_of=AS_OF, apply=True, max_rows=100)
    verdict = result.verdict()
    assert verdict.status == "fail" and verdict.error is CheckFailed
    assert "removes 399 rows, more than max_rows=100" in verdict.summary
    assert "-p max_rows=399" in verdict.summary
    assert result.applied == []
    assert state(db, "safety_indices_realtime", "safety_indices_hourly") == before


def test_a_rule_that_does_not_fit_the_database_fails_the_plan(db, tmp_path):
    db.execute("DROP TABLE IF EXISTS retention_events")
    db.execute("CREATE TABLE retention_events (id integer, created text)")
    policy = tmp_path / "events.yaml"
    policy.write_text(
        "name: events\nrules:\n"
        "  - {table: retention_events, action: delete_rows, column: created_at, keep_days: 3}\n"
        "  - {table: retention_events_b, action: drop_partitions, keep_days: 3}\n"
    )
    result = call("retention", policy=str(policy), apply=True)
    verdict = result.verdict()
    assert verdict.status == "fail" and "retention_events has no column 'created_at'" in verdict.summary
    assert result.applied == []
    db.execute("DROP TABLE retention_events")


def test_dropped_partitions_leave_the_ledger_so_a_later_load_reloads_them(db, demo_dir, tmp_path):
    db.execute("DROP TABLE IF EXISTS parking_tickets, parking_tickets_rejected CASCADE")
    db.execute("DROP SCHEMA IF EXISTS opsbook CASCADE")
    call("load", source=str(demo_dir), years="2015-2017")
    policy = tmp_path / "tickets_ten_years.yaml"
    policy.write_text(
        "name: tickets_ten_years\nrules:\n  - {table: parking_tickets, action: drop_partitions, keep_days: 3653}\n"
    )
    per_year = dict(
        db.execute(
            "SELECT extract(year FROM date_of_infraction)::int, count(*) FROM parking_tickets GROUP BY 1"
        ).fetchall()
    )
    # ten years of 3653 days before 2027-01-02 is 2017-01-01: 2016 ends on the cutoff, 2017 after it
    ctx = context.make("retention", policy=str(policy), as_of="2027-01-02", apply=True, max_rows=10_000_000)
    plan = retention.plan(ctx)
    (rule,) = plan.rules
    assert rule.cutoff == dt.date(2017, 1, 1)
    assert {p.name: p.drop for p in rule.partitions} == {
        "parking_tickets_2015": True,
        "parking_tickets_2016": True,
        "parking_tickets_2017": False,
    }
    assert {p.name: p.rows for p in rule.partitions} == {f"parking_tickets_{y}": n for y, n in per_year.items()}
    assert rule.remove_rows == per_year[2015] + per_year[2016]
    assert [p.ledger for p in rule.dropping] == [
        [("toronto_parking_tickets", "2015", "load")],
        [("toronto_parking_tickets", "2016", "load")],
    ]

    load_lock = "opsbook.load:toronto_parking_tickets:2016"  # a load of 2016 is running
    db.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (load_lock,))
    try:
        with pytest.raises(LockHeld, match=load_lock):
            retention.run(ctx, plan)
    finally:
        db.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (load_lock,))
    assert count(db, "SELECT count(*) FROM parking_tickets") == sum(per_year.values())

    result = retention.run(ctx, plan)
    (done,) = result.applied
    assert done.dropped == ["parking_tickets_2015", "parking_tickets_2016"]
    assert done.removed_rows == rule.remove_rows and done.maintenance == "ANALYZE"
    assert done.bytes_after < done.bytes_before
    assert db.execute("SELECT to_regclass('parking_tickets_2015'), to_regclass('parking_tickets_2016')").fetchone() == (
        None,
        None,
    )
    assert count(db, "SELECT count(*) FROM parking_tickets") == per_year[2017]
    ledger = db.execute("SELECT partition FROM opsbook.partitions WHERE step = 'load' ORDER BY 1").fetchall()
    assert ledger == [("2017",)]
    assert result.verdict().status == "pass"

    reloaded = call("load", source=str(demo_dir), years="2016-2017")
    assert {y.year: y.status for y in reloaded.years} == {2016: "loaded", 2017: "unchanged"}
    assert count(db, "SELECT count(*) FROM parking_tickets_2016") == per_year[2016]


def test_the_toronto_policy_keeps_every_ticket_year_and_purges_what_is_unused(db, demo_dir):
    """The Toronto runbook loads the full history: its purge drops a killed load's staging table
    (not a running load's) and the yearly rows of a year no longer loaded, never a ticket year."""
    db.execute("DROP TABLE IF EXISTS parking_tickets, parking_tickets_rejected, parking_tickets_2015_load CASCADE")
    db.execute("DROP TABLE IF EXISTS parking_tickets_2016_load, parking_ticket_yearly_locations CASCADE")
    db.execute("DROP SCHEMA IF EXISTS opsbook CASCADE")
    call("load", source=str(demo_dir), years="2015-2017")
    call("aggregate", years="2015-2017", cameras="")
    db.execute(
        "INSERT INTO parking_ticket_yearly_locations (year, location, ticket_count, total_revenue) "
        "VALUES (2009, 'GONE ST', 3, 90), (2009, 'ALSO GONE AVE', 1, 30)"
    )
    db.execute("CREATE TABLE parking_tickets_2015_load (LIKE parking_tickets)")  # a killed load's leftover
    db.execute("INSERT INTO parking_tickets_2015_load SELECT * FROM parking_tickets_2015 LIMIT 10")
    db.execute("CREATE TABLE parking_tickets_2016_load (LIKE parking_tickets)")  # a load of 2016 running now
    tickets = state(db, "parking_tickets")
    yearly_kept = count(db, "SELECT count(*) FROM parking_ticket_yearly_locations WHERE year <> 2009")

    ctx = context.make("retention", policy="toronto", apply=True)
    plan = retention.plan(ctx)
    staging, orphans = plan.rules
    assert [p.name for p in staging.partitions] == ["parking_tickets_2015_load", "parking_tickets_2016_load"]
    assert staging.remove_rows == 10 and orphans.remove_rows == 2 and orphans.years == [2015, 2016, 2017]
    load_lock = "opsbook.load:toronto_parking_tickets:2016"
    db.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (load_lock,))
    try:
        result = retention.run(ctx, plan)
    finally:
        db.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (load_lock,))
    dropped, deleted = result.applied
    assert dropped.dropped == ["parking_tickets_2015_load"] and "parking_tickets_2016_load" in dropped.note
    assert db.execute("SELECT to_regclass('parking_tickets_2016_load') IS NOT NULL").fetchone()[0]
    assert deleted.removed_rows == 2
    assert count(db, "SELECT count(*) FROM parking_ticket_yearly_locations WHERE year = 2009") == 0
    assert count(db, "SELECT count(*) FROM parking_ticket_yearly_locations") == yearly_kept
    assert state(db, "parking_tickets") == tickets, "no ticket year is touched"
    db.execute("DROP TABLE parking_tickets_2016_load")


def test_cli_drops_by_catalog_bounds_refuses_over_limit_and_respects_locks(db, tmp_path):
    """Partition names lie here on purpose: only the bounds in the catalog decide."""
    db.execute("DROP TABLE IF EXISTS retention_events")
    db.execute("CREATE TABLE retention_events (id integer, at timestamptz NOT NULL) PARTITION BY RANGE (at)")
    partitions = {
        "retention_events_new": "FROM ('2019-01-01 00:00+00') TO ('2020-01-01 00:00+00')",
        "retention_events_2019": "FROM ('2025-01-01 00:00+00') TO ('2026-01-01 00:00+00')",
        "retention_events_future": "FROM ('2026-01-01 00:00+00') TO (MAXVALUE)",
    }
    for name, bound in partitions.items():
        db.execute(f"CREATE TABLE {name} PARTITION OF retention_events FOR VALUES {bound}")
    db.execute("CREATE TABLE retention_events_other PARTITION OF retention_events DEFAULT")
    db.execute(
        "INSERT INTO retention_events SELECT g, t FROM generate_series(1, 4) g, "
        "unnest(ARRAY['2019-06-01', '2025-03-01', '2026-02-01', '2018-01-01']::timestamptz[]) t"
    )
    policy = tmp_path / "events.yaml"
    policy.write_text("name: events\nrules:\n  - {table: retention_events, action: drop_partitions, keep_days: 365}\n")
    args = ("retention", "-p", f"policy={policy}", "-p", "as_of=2026-06-01", "--json")

    planned = run_cli(*args)
    assert planned.code == 0, planned.stderr
    assert count(db, "SELECT count(*) FROM retention_events") == 16

    refused = run_cli(*args, "-p", "apply=true", "-p", "max_rows=3")
    assert refused.code == 1, refused.stderr
    assert "-p max_rows=4" in refused.stdout + refused.stderr
    assert count(db, "SELECT count(*) FROM retention_events") == 16

    db.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (table_lock("retention_events"),))
    try:
        held = run_cli(*args, "-p", "apply=true")
        assert held.code == 4, held.stderr
    finally:
        db.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (table_lock("retention_events"),))
    assert count(db, "SELECT count(*) FROM retention_events") == 16

    applied = run_cli(*args, "-p", "apply=true")
    assert applied.code == 0, applied.stderr
    left = db.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'retention_events'::regclass ORDER BY 1"
    ).fetchall()
    assert left == [("retention_events_2019",), ("retention_events_future",), ("retention_events_other",)]
    assert count(db, "SELECT count(*) FROM retention_events") == 12  # the 2019-06-01 rows went
    assert count(db, "SELECT count(*) FROM retention_events WHERE at = '2018-01-01'") == 4  # default partition stays
    db.execute("DROP TABLE retention_events")


BAD_POLICY = """\
name: broken
rules:
  - table: safety_indices
    action: delete_rows
    column: timestamp
    keep_days: 2
  - table: safety_indices_hourly
    action: delete_rows
    column: hour_timestamp
    keep_days: -90
  - table: safety_indices_daily
    action: delete_rows
    keep_days: 730
  - table: parking_tickets
    action: drop_partitions
    keep_dayz: 730
"""


def test_a_bad_policy_file_names_the_file_line_and_field(tmp_path, database_url):
    path = tmp_path / "broken.yaml"
    path.write_text(BAD_POLICY)
    with pytest.raises(UsageError) as raised:
        load_policy(str(path))
    message = str(raised.value)
    assert f"{path}:10: rules[1].keep_days: Input should be greater than or equal to 1" in message
    assert f"{path}:11: rules[2]: delete_rows needs a column" in message
    assert f"{path}:14: rules[3].keep_days: Field required" in message
    assert f"{path}:16: rules[3].keep_dayz: Extra inputs are not permitted" in message

    done = run_cli("retention", "-p", f"policy={path}")
    assert done.code == 2
    assert f"{path}:10: rules[1].keep_days" in done.stderr

    path.write_text(textwrap.dedent("name: x\nrules:\n  - table: [unclosed\n"))
    with pytest.raises(UsageError, match=rf"{path}:\d+: not valid YAML"):
        load_policy(str(path))
    with pytest.raises(UsageError, match=r"policies: .*toronto.*trafficsafety"):
        load_policy("nosuch")


def test_apply_behind_an_open_transaction_exits_4_naming_it_and_keeps_every_row(safety_tables, monkeypatch):
    """A delete that cannot get its lock in OPSBOOK_LOCK_TIMEOUT stops the run (exit 4) naming
    the session in its way; the rule's transaction is rolled back, nothing is half-deleted."""
    from opsbook.errors import LockHeld
    from opsbook.stores import postgres

    db = safety_tables
    before = state(db, "safety_indices_realtime", "safety_indices_hourly")
    monkeypatch.setenv("OPSBOOK_LOCK_TIMEOUT", "1s")
    with postgres.connection(purpose="migration") as other:
        other.execute("LOCK TABLE safety_indices_realtime IN SHARE MODE")
        pid = other.info.backend_pid
        with pytest.raises(LockHeld, match=rf"lock on public\.safety_indices_realtime held by PostgreSQL pid {pid} \("):
            call("retention", policy="trafficsafety", as_of=AS_OF, apply=True)
        other.rollback()
    assert state(db, "safety_indices_realtime", "safety_indices_hourly") == before
    held = "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database WHERE l.locktype = 'advisory'"
    assert count(db, held + " AND d.datname = current_database()") == 0


def test_bucket_lifecycle_rules_are_planned_then_set_keeping_the_buckets_own(db, gcs_emulator, monkeypatch):
    """The trafficsafety policy's bucket rules (Task 2.1) on a bucket in the GCS emulator: the plan
    counts what GCS would act on and sets nothing; apply adds the rules, a rule set by hand stays."""
    import datetime as dt

    from opsbook.stores import gcs, uri

    root = "gs://opsbook-test/lifecycle"
    monkeypatch.setenv("LAKE_URL", root)
    monkeypatch.setenv("ARCHIVE_URL", root)
    uri.write_bytes(f"{root}/processed/indices/indices_2025-01-01.parquet", b"x" * 10)
    uri.write_bytes(f"{root}/raw/bsm/2025/01/01/bsm_2025-01-01_000000.parquet", b"y" * 20)
    bucket = gcs.client().get_bucket("opsbook-test")
    by_hand = {"action": {"type": "Delete"}, "condition": {"age": 9999, "matchesPrefix": ["elsewhere/"]}}
    bucket.lifecycle_rules = [by_hand]
    bucket.patch()
    later = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=800)).isoformat()  # every object is older then

    planned = call("retention", policy="trafficsafety", as_of=later)
    buckets = {(b.prefix, b.rule.age_days): b for b in planned.plan.buckets}
    assert {k: b.status for k, b in buckets.items()} == {
        ("lifecycle/raw/", 30): "to set",
        ("lifecycle/raw/", 365): "to set",
        ("lifecycle/processed/", 730): "to set",
    }
    assert buckets[("lifecycle/processed/", 730)].objects == 1 and buckets[("lifecycle/raw/", 365)].bytes == 20
    assert "bucket lifecycle: 3 rule(s) to set (GCS would then act on 3 object(s))" in planned.verdict().summary
    assert [dict(r) for r in gcs.client().get_bucket("opsbook-test").lifecycle_rules] == [by_hand]

    done = call("retention", policy="trafficsafety", as_of=later, apply=True)
    assert {b.status for b in done.plan.buckets} == {"set"}
    held = [dict(r) for r in gcs.client().get_bucket("opsbook-test").lifecycle_rules]
    assert held[0] == by_hand and len(held) == 4
    assert {"action": {"type": "Delete"}, "condition": {"age": 730, "matchesPrefix": ["lifecycle/processed/"]}} in held
    assert {
        "action": {"type": "SetStorageClass", "storageClass": "COLDLINE"},
        "condition": {"age": 365, "matchesPrefix": ["lifecycle/raw/"]},
    } in held
    assert uri.exists(f"{root}/raw/bsm/2025/01/01/bsm_2025-01-01_000000.parquet")  # GCS acts, opsbook deletes nothing
    again = call("retention", policy="trafficsafety", as_of=later)
    assert {b.status for b in again.plan.buckets} == {"set"}


def test_bucket_rules_on_a_folder_are_not_applicable(db, tmp_path, monkeypatch):
    monkeypatch.setenv("LAKE_URL", str(tmp_path / "lake"))
    monkeypatch.setenv("ARCHIVE_URL", str(tmp_path / "archive"))
    planned = call("retention", policy="trafficsafety")
    assert {b.status for b in planned.plan.buckets} == {"not a bucket"}
    assert "bucket lifecycle" not in planned.verdict().summary
