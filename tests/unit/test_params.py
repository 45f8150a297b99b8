"""Parameter models: year windows, layering, and the messages a bad value gets."""

import pytest

from opsbook.errors import UsageError
from opsbook.procedures import load
from opsbook.run.params import resolve
from opsbook.windows import Years, format_years, year_list

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def embedded_database(monkeypatch):
    """The default source is a stand-in, which only the embedded database takes without asking."""
    monkeypatch.delenv("DATABASE_URL", raising=False)


@pytest.mark.parametrize(
    ("spec", "years"),
    [
        ("2017", [2017]),
        ("2016-2018", [2016, 2017, 2018]),
        ("2011,2015-2016", [2011, 2015, 2016]),
        (" 2018 , 2016 ", [2016, 2018]),
        ("2016-2016", [2016]),
    ],
)
def test_year_list(spec, years):
    assert year_list(spec) == years


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("20x7", "'20x7' is not a year"),
        ("2018-2016", "ends before it starts"),
        ("1850", "outside 1900-2100"),
        ("", "is not a year"),
        ("2016-", "is not a year"),
    ],
)
def test_year_list_refuses(spec, message):
    with pytest.raises(ValueError, match=message):
        year_list(spec)


def test_format_years_is_the_shortest_spec():
    assert format_years([2016, 2011, 2017, 2015]) == "2011,2015-2017"
    assert year_list(format_years([2011, 2013, 2014])) == [2011, 2013, 2014]


def test_unknown_name_gets_the_closest_valid_name():
    with pytest.raises(UsageError) as caught:
        resolve(load.Params, overrides=["yeras=2017"])
    message = str(caught.value)
    assert "unknown parameter 'yeras'" in message
    assert "did you mean 'years'?" in message


def test_bad_value_names_the_parameter_and_the_value():
    with pytest.raises(UsageError) as caught:
        resolve(load.Params, overrides=["years=20x7"])
    assert "parameter 'years' (from -p)" in str(caught.value)
    assert "'20x7' is not a year" in str(caught.value)


def test_bad_boolean_is_refused():
    with pytest.raises(UsageError, match=r"parameter 'force'.*valid boolean"):
        resolve(load.Params, overrides=["force=perhaps"])


def test_unknown_dataset_suggests_the_known_one():
    with pytest.raises(UsageError, match="did you mean 'toronto_parking_tickets'"):
        resolve(load.Params, overrides=["dataset=toronto_parking_ticket"])


def test_missing_source_folder_is_refused(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        resolve(load.Params, overrides=[f"source={tmp_path / 'nowhere'}"])


def test_layering_defaults_then_files_then_overrides(tmp_path):
    first = tmp_path / "a.yaml"
    first.write_text("years: 2011-2012\nforce: true\n")
    second = tmp_path / "b.yaml"
    second.write_text("years: 2013\n")
    params = resolve(load.Params, files=[first, second], overrides=["max_rejected_ratio=0.5"])
    assert params.years == Years((2013,)) and str(params.years) == "2013"  # the later file wins over the earlier
    assert params.force is True  # from the first file, untouched by the second
    assert params.max_rejected_ratio == 0.5  # -p
    assert params.dataset == "toronto_parking_tickets"  # default
    assert list(resolve(load.Params, files=[first], overrides=["years=2015"]).years) == [2015]


def test_params_file_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("years: 2016\nforce: [unclosed\n")
    with pytest.raises(UsageError, match=r"bad.yaml:\d+: not valid YAML"):
        resolve(load.Params, files=[bad])
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("yeers: 2016\n")
    with pytest.raises(UsageError, match=r"unknown parameter 'yeers' \(from .*unknown.yaml\)"):
        resolve(load.Params, files=[unknown])


def test_malformed_override_is_refused():
    with pytest.raises(UsageError, match="name=value"):
        resolve(load.Params, overrides=["years"])


@pytest.fixture
def configured_database(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://ops@db.example.org:5432/parking")


def test_a_params_file_takes_locations_from_the_environment(tmp_path, monkeypatch):
    spec = tmp_path / "load.yaml"
    spec.write_text("source: ${TICKETS_FOLDER}\nyears: 2016\n")
    monkeypatch.setenv("TICKETS_FOLDER", str(tmp_path))
    assert resolve(load.Params, files=[spec]).source == str(tmp_path)


def test_an_unset_variable_is_refused_naming_it(tmp_path, monkeypatch):
    spec = tmp_path / "load.yaml"
    spec.write_text("source: ${TICKETS_FOLDER}\nyears: 2016\n")
    monkeypatch.delenv("TICKETS_FOLDER", raising=False)
    with pytest.raises(UsageError, match="environment variable TICKETS_FOLDER, which is not set"):
        resolve(load.Params, files=[spec])
    # -p replaces the file's value: the variable is then not needed
    assert resolve(load.Params, files=[spec], overrides=[f"source={tmp_path}"]).source == str(tmp_path)


def test_a_variable_may_have_a_default(tmp_path, monkeypatch):
    spec = tmp_path / "load.yaml"
    spec.write_text(f"source: ${{TICKETS_FOLDER:-{tmp_path}}}\n")
    monkeypatch.delenv("TICKETS_FOLDER", raising=False)
    assert resolve(load.Params, files=[spec]).source == str(tmp_path)


def test_a_stand_in_source_is_refused_against_a_configured_database(configured_database):
    with pytest.raises(UsageError) as caught:
        resolve(load.Params, overrides=["source=demo"])
    message = str(caught.value)
    assert "source=demo generates stand-in data" in message and "db.example.org:5432/parking" in message
    assert "allow_demo=true" in message
    assert resolve(load.Params, overrides=["source=demo", "allow_demo=true"]).source == "demo"


def test_a_stand_in_source_is_accepted_against_the_embedded_database(monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert resolve(load.Params, overrides=["source=demo"]).source == "demo"


def test_the_runbooks_params_name_their_inputs_by_environment_variable(configured_database, monkeypatch):
    from pathlib import Path

    runbook = Path(__file__).resolve().parents[2] / "params" / "runbooks" / "toronto" / "load.yaml"
    monkeypatch.delenv("TORONTO_TICKETS_SOURCE", raising=False)
    with pytest.raises(UsageError, match="TORONTO_TICKETS_SOURCE"):
        resolve(load.Params, files=[runbook])


# --- settings files are small regular UTF-8 files, plain YAML ---------------------------------


def _params_file(tmp_path, text: str | bytes):
    path = tmp_path / "p.yaml"
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        # nine levels of nine aliases: 387 bytes asking for 9**9 list items
        (
            "a: &a [x,x,x,x,x,x,x,x,x]\n"
            + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
            + "years: *i\n",
            "anchors and aliases",
        ),
        ("dataset: toronto_parking_tickets\nyears: 2016\nyears: 2017\n", "'years' is given twice (first at line 2)"),
        ("years: [2016\n", "not valid YAML"),
        (b"years: 2016\n\x00\x00\x00", "is a binary file"),
        (b"years: \xff\xfe2016\n", "is not UTF-8 text"),
    ],
)
def test_a_params_file_is_plain_yaml(tmp_path, text, message):
    path = _params_file(tmp_path, text)
    with pytest.raises(UsageError) as err:
        resolve(load.Params, files=[path])
    assert str(path) in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_params_file_over_a_megabyte_is_refused_before_reading(tmp_path):
    path = _params_file(tmp_path, "years: 2016\n" + "#" * 1_100_000)
    with pytest.raises(UsageError, match="1,100,012 bytes; a settings file holds at most 1,000,000"):
        resolve(load.Params, files=[path])


@pytest.mark.parametrize("kind", ["folder", "fifo", "device", "long name"])
def test_a_params_path_that_is_no_regular_file_is_refused_without_blocking(tmp_path, kind):
    import os

    if kind == "folder":
        path, message = tmp_path, "is a folder"
    elif kind == "fifo":
        path, message = tmp_path / "pipe.yaml", "is not a regular file"
        os.mkfifo(path)  # opening it for reading would block until a writer comes
    elif kind == "device":
        path, message = "/dev/zero", "is not a regular file"  # reading it never ends
    else:
        path, message = tmp_path / ("x" * 300 + ".yaml"), "the path is too long"
    with pytest.raises(UsageError, match=message):
        resolve(load.Params, files=[path])
