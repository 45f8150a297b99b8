"""Hostile names and values: identifiers from specs and parameters are validated before any SQL
is built (and quoted when it is), values are always bound."""

import pytest
from helpers import run_cli
from pydantic import ValidationError

from opsbook import checks, datasets
from opsbook.checks import spec as s
from opsbook.datasets import Column, DatasetSpec, Partition
from opsbook.errors import UsageError
from opsbook.ops.policy import Rule, load_policy
from opsbook.procedures import load
from opsbook.windows import Years

HOSTILE = [
    'tickets"; DROP TABLE parking_tickets; --',
    "tickets; DROP TABLE parking_tickets",
    'a"b',
    "Tickets",
    "1tickets",
    "tickets--",
    "t" * 64,
    "tïckets",
    "",
    "public.tickets",
]


def spec(**overrides) -> dict:
    base = {
        "name": "hostile",
        "table": "tickets",
        "partition": {"column": "day"},
        "columns": [{"name": "day", "type": "date"}, {"name": "amount", "type": "numeric", "scale": 2}],
        "key": ["day"],
    }
    return {**base, **overrides}


@pytest.mark.unit
@pytest.mark.parametrize("name", HOSTILE)
def test_a_dataset_spec_refuses_hostile_table_column_and_partition_names(name):
    with pytest.raises(ValidationError, match="table"):
        DatasetSpec(**spec(table=name))
    with pytest.raises(ValidationError, match="column"):
        DatasetSpec(**spec(columns=[{"name": name, "type": "date"}], key=[], partition={"column": "day"}))
    with pytest.raises(ValidationError, match="partition column"):
        Partition(column=name)


@pytest.mark.unit
@pytest.mark.parametrize("name", HOSTILE[:4])
def test_check_suites_and_retention_policies_refuse_hostile_names(name, tmp_path):
    for make in (
        lambda: s.NotNull(name="nn", type="not_null", columns=[name]),
        lambda: s.RowCount(name="n", type="row_count", column=name),
        lambda: s.Coverage(name="c", type="coverage", column=name),
        lambda: s.RowCount(name="n", type="row_count", table=name),
        lambda: s.NotNull(name=name, type="not_null", columns=["day"]),
        lambda: Rule(table=name, action="drop_partitions", keep_days=30),
        lambda: Rule(table="t", action="delete_rows", column=name, keep_days=30),
    ):
        with pytest.raises(ValidationError):
            make()
    policy = tmp_path / "hostile.yaml"
    policy.write_text(
        f"rules:\n  - table: '{name.replace(chr(39), chr(39) * 2)}'\n    action: drop_partitions\n    keep_days: 30\n"
    )
    with pytest.raises(UsageError, match=rf"{policy}:2: rules\[0\]\.table"):
        load_policy(str(policy))


@pytest.mark.unit
@pytest.mark.parametrize("name", ["../../etc/passwd", "toronto_parking_tickets; DROP TABLE x", "Toronto"])
def test_a_dataset_parameter_names_a_spec_never_a_path(name):
    with pytest.raises(ValueError, match="unknown dataset"):
        datasets.get(name)
    done = run_cli("validate", "-p", f"dataset={name}")
    assert done.code == 2 and "unknown dataset" in done.stderr


@pytest.mark.integration
def test_hostile_values_are_data_and_reserved_words_are_quoted(db):
    """A table and columns named like SQL keywords, values written like SQL: checks run, nothing else does."""
    db.execute('DROP TABLE IF EXISTS "order", canary')
    db.execute("CREATE TABLE canary (id int)")
    db.execute('CREATE TABLE "order" ("select" text, "user" date, "from" numeric(10,2))')
    hostile = ["'); DROP TABLE canary; --", "O'Brien\" OR 1=1 --", "$$; DROP TABLE canary; $$", "\\'; SELECT 1; --"]
    for i, value in enumerate(hostile):
        db.execute('INSERT INTO "order" VALUES (%s, %s, %s)', (value, f"2016-01-0{i + 1}", 1))
    order = DatasetSpec(
        name="order",
        table="order",
        partition=Partition(column="user"),
        columns=[Column(name="select"), Column(name="user", type="date"), Column(name="from", type="numeric", scale=2)],
    )
    suite = s.Suite(
        dataset="order",
        checks=[
            s.AcceptedValues(name="accepted", type="accepted_values", column="select", values=hostile[:3]),
            s.NotNull(name="nn", type="not_null", columns=["from"]),
            s.Unique(name="uq", type="unique", columns=["select", "user"]),
            s.RowCount(name="rows", type="row_count", min=4, max=4),
        ],
        sample_columns=["select", "user"],
    )
    results = {r.name: r for r in checks.run_suite(db, order, suite, Years((2016,)), None).results}
    assert results["accepted"].status == "fail" and results["accepted"].failing_count == 1
    assert results["accepted"].failing[0]["select"] == hostile[3]
    assert [results[n].status for n in ("nn", "uq", "rows")] == ["pass", "pass", "pass"]
    assert db.execute("SELECT to_regclass('canary')").fetchone()[0] is not None
    db.execute('DROP TABLE "order", canary')


@pytest.mark.unit
def test_a_hostile_years_value_is_refused_by_its_type():
    with pytest.raises(UsageError, match="parameter 'years'"):
        from opsbook.run import params

        params.resolve(load.Params, [], ["years=2016; DROP TABLE parking_tickets"])
