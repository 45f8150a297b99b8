"""Hostile input for ``load``: broken, odd and adversarial City files.

Every case ends one of two ways, and the tests pin which and with what words:

* refused: the year fails with an error naming the file and line (and the field where there
  is one), and nothing of the year is stored; or
* quarantined: each bad row is in ``parking_tickets_rejected`` with file, line, field and
  reason, and every data row of the file is either loaded or quarantined (never dropped).

The property-based test at the end generates valid rows, writes them as the City would, loads
them and compares what PostgreSQL holds with what was generated, value for value.
"""

from __future__ import annotations

import codecs
import csv
import datetime
import io
import re
import tempfile
import zipfile
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest
from helpers import call
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opsbook.demo import tickets as demodata
from opsbook.toronto.tickets import YearResult

pytestmark = pytest.mark.integration

YEAR = 2016
COLUMNS = demodata.CITY_COLUMNS
HEADER = ",".join(COLUMNS)
CSV_NAME = f"Parking_Tags_Data_{YEAR}.csv"
ZIP_NAME = f"parking-tickets-{YEAR}.zip"
NOT_TEXT = f"{CSV_NAME}:1: the header is not text in utf-8 or cp1252"


def good(n: int = 1, street: str = "47 COLBORNE ST") -> str:
    """A valid City row for YEAR (ticket ``n``)."""
    return f"***{n:05d},{YEAR}0105,29,PARK PROHIBITED TIME NO PERMIT,30,935,NR,{street},,,ON"


def city(*rows: str, header: str = HEADER, eol: str = "\r\n", encoding: str = "utf-8") -> bytes:
    return (eol.join([header, *rows]) + eol).encode(encoding)


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def source(tmp_path):
    """Write one file as the year's only source file; returns a loader for it."""
    counter = iter(range(1_000_000))

    def put(data: bytes, name: str = CSV_NAME, **params) -> YearResult:
        folder = tmp_path / f"source-{next(counter)}"
        folder.mkdir()
        (folder / name).write_bytes(data)
        # every quarantined row must reach the table to be checked: no ratio limit here
        params = {"max_rejected_ratio": 1.0, "force": True} | params
        result = call("load", source=str(folder), years=str(YEAR), **params)
        return result.years[0]

    return put


def stored(db) -> list[dict]:
    cur = db.execute(
        "SELECT * FROM parking_tickets WHERE date_of_infraction >= %s AND date_of_infraction < %s "
        "ORDER BY tag_number_masked",
        (datetime.date(YEAR, 1, 1), datetime.date(YEAR + 1, 1, 1)),
    )
    names = [c.name for c in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def quarantined(db) -> list[tuple]:
    """(file, line, field, reason, raw line) of the year's quarantined rows, in file order."""
    return db.execute(
        "SELECT source_file, line_number, field, reason, raw_line FROM parking_tickets_rejected "
        "WHERE year = %s ORDER BY source_file, line_number",
        (YEAR,),
    ).fetchall()


def assert_accounted(db, result: YearResult, loaded: int, rejected: int, data_rows: int) -> None:
    """The year loaded; ``loaded`` rows are stored and ``rejected`` quarantined, which adds up
    to the file's data rows (nothing dropped on the way)."""
    assert result.status == "loaded", result.error
    assert (result.rows, result.rejected) == (loaded, rejected)
    assert loaded + rejected == data_rows
    assert len(stored(db)) == loaded
    assert len(quarantined(db)) == rejected


def assert_refused(db, result: YearResult, message: str | re.Pattern) -> None:
    """The year failed with ``message`` (exact text, or a pattern matched from the start) and
    nothing of it is stored."""
    assert result.status == "failed"
    if isinstance(message, re.Pattern):
        assert message.match(result.error), result.error
    else:
        assert result.error == message
    assert stored(db) == []
    assert quarantined(db) == []


# --- empty and header-only files --------------------------------------------------------------


def test_empty_file_is_refused_naming_the_file_and_line_1(clean, source):
    result = source(b"")
    assert_refused(clean, result, f"{CSV_NAME}:1: the file is empty (expected a header line naming the columns)")


def test_header_only_file_is_refused_and_the_year_keeps_its_rows(clean, source):
    # Decision: refused. A header with no rows under it is an empty export far more often than
    # a year without tickets, and loading it would swap the year's rows for nothing.
    source(city(good(1), good(2)))
    result = source(city())
    assert result.status == "failed"
    assert result.error == (
        f"{CSV_NAME}:1: a header and no data rows: {YEAR} has nothing to load, "
        "and an empty year is refused rather than swapped in"
    )
    assert [r["tag_number_masked"] for r in stored(clean)] == ["***00001", "***00002"]


def test_header_and_blank_lines_only_is_refused_too(clean, source):
    result = source(city("", "  ", ""))
    assert result.error.startswith(f"{CSV_NAME}:1: a header and no data rows")
    assert stored(clean) == []


# --- byte order mark, column order, extra columns ----------------------------------------------


@pytest.mark.parametrize("container", ["csv", "zip"])
def test_utf8_bom_is_not_part_of_the_first_column_name(clean, source, container):
    data = codecs.BOM_UTF8 + city(good(1), good(2, "1 FRANÇOIS ST"))
    result = source(zipped({CSV_NAME: data}), ZIP_NAME) if container == "zip" else source(data)
    assert_accounted(clean, result, loaded=2, rejected=0, data_rows=2)
    rows = stored(clean)
    assert [r["tag_number_masked"] for r in rows] == ["***00001", "***00002"]
    assert rows[1]["location2"] == "1 FRANÇOIS ST"


def test_reordered_columns_load_by_header_name(clean, source):
    # Decision: load by name. The header names every column of the spec exactly once, so
    # which value goes where is certain; a City re-export that moves a column must not stop
    # the load. Headers that leave the mapping in doubt (a missing, unknown or repeated
    # name) are refused instead: see the next tests.
    order = list(reversed(COLUMNS))
    rows = [",".join(reversed(good(n).split(","))) for n in (1, 2)]
    result = source(city(*rows, header=",".join(order)))
    assert_accounted(clean, result, loaded=2, rejected=0, data_rows=2)
    first = stored(clean)[0]
    assert first["tag_number_masked"] == "***00001"
    assert first["date_of_infraction"] == datetime.date(YEAR, 1, 5)
    assert first["set_fine_amount"] == Decimal("30.00")
    assert first["time_of_infraction"] == datetime.time(9, 35)
    assert first["location2"] == "47 COLBORNE ST"
    assert first["province"] == "ON"


def test_an_extra_column_in_the_header_is_refused(clean, source):
    # Decision: refused. Loading the known columns would drop the extra one's values
    # without a word; the message names it so the spec can be extended on purpose.
    result = source(city(good(1) + ",BADGE 7", header=HEADER + ",officer"))
    assert_refused(
        clean,
        result,
        f"{CSV_NAME}:1: header does not match dataset 'toronto_parking_tickets': unknown column(s) 'officer' "
        f"(expected {', '.join(COLUMNS)})",
    )


def test_a_repeated_column_in_the_header_is_refused(clean, source):
    result = source(city(good(1) + ",ON", header=HEADER + ",province"))
    assert_refused(clean, result, re.compile(re.escape(f"{CSV_NAME}:1: header does not match") + r".*repeated column"))


def test_extra_and_missing_fields_in_rows_are_quarantined(clean, source):
    result = source(city(good(1), good(2) + ",EXTRA", good(3), "***00004,20160105,29", good(5)))
    assert_accounted(clean, result, loaded=3, rejected=2, data_rows=5)
    assert [(f, line, field, reason) for f, line, field, reason, _ in quarantined(clean)] == [
        (CSV_NAME, 3, None, "wrong column count: 12 fields, expected 11"),
        (CSV_NAME, 5, None, "wrong column count: 3 fields, expected 11"),
    ]


# --- ZIP archives -------------------------------------------------------------------------------


def test_truncated_zip_is_refused(clean, source):
    data = zipped({CSV_NAME: city(*(good(n) for n in range(500)))})
    result = source(data[: len(data) // 2], ZIP_NAME)
    # the central directory sits at the end of a ZIP: without it no member can be named
    assert_refused(clean, result, f"{ZIP_NAME}: not a readable ZIP archive (File is not a zip file); is it truncated?")


def test_zip_with_a_corrupt_member_is_refused_naming_member_and_line(clean, source):
    text = city(*(good(n, f"{n} QUEEN ST W") for n in range(2000)))
    data = bytearray(zipped({CSV_NAME: text}))
    middle = data.find(CSV_NAME.encode()) + len(CSV_NAME) + 200
    data[middle : middle + 64] = bytes(range(64))  # the directory is intact, the deflate stream is not
    result = source(bytes(data), ZIP_NAME)
    assert_refused(
        clean,
        result,
        re.compile(re.escape(f"{ZIP_NAME}:{CSV_NAME}:1: unreadable: ") + r"(Error -3|Bad CRC-32)"),
    )


@pytest.mark.parametrize(
    ("members", "holds"),
    [
        ({"readme.txt": b"see the portal", "tickets.xlsx": b"PK\x03\x04"}, "readme.txt, tickets.xlsx"),
        ({}, "nothing"),
    ],
)
def test_zip_without_a_csv_is_refused(clean, source, members, holds):
    result = source(zipped(members), ZIP_NAME)
    assert_refused(clean, result, f"{ZIP_NAME}: the ZIP holds no CSV file (it holds {holds})")


# --- a 100,000-character field --------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-8", "cp1252"])
def test_a_100000_character_field_loads_intact(clean, source, encoding):
    # Decision: loaded. The spec sets no length on text columns and PostgreSQL text holds it;
    # cutting it would change data silently. Both parsing paths are covered: UTF-8 takes the
    # fast one, a Windows-1252 line the exact one.
    street = "É" + "X" * 99_999
    result = source(city(good(1), good(2, street), good(3), encoding=encoding))
    assert_accounted(clean, result, loaded=3, rejected=0, data_rows=3)
    assert stored(clean)[1]["location2"] == street


def test_a_100000_character_bad_value_is_quarantined_with_a_short_reason(clean, source):
    bad = good(2).replace(f"{YEAR}0105", "9" * 100_000)
    result = source(city(good(1), bad, good(3)))
    assert_accounted(clean, result, loaded=2, rejected=1, data_rows=3)
    [(file, line, field, reason, raw)] = quarantined(clean)
    assert (file, line, field) == (CSV_NAME, 3, "date_of_infraction")
    assert reason == (
        "date_of_infraction: unparsable date '9999999999999999999999999999999999999999'... "
        "(100,000 characters) (expected YYYYMMDD)"
    )
    assert raw == bad[:10_000]  # the raw line is kept up to city_csv.MAX_RAW_CHARS


# --- binary junk and NUL bytes ------------------------------------------------------------------


def test_a_binary_file_is_refused_at_line_1(clean, source):
    result = source(bytes(range(256)) * 4)
    assert_refused(clean, result, NOT_TEXT)


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"PK\x03\x04\x14\x00\x06\x00", "a ZIP archive (an .xlsx workbook, or a .zip renamed .csv)"),
        (b"\x1f\x8b\x08\x00", "gzip-compressed data"),
    ],
)
def test_an_archive_named_csv_is_refused_saying_what_it_is(clean, source, head, kind):
    result = source(head + bytes(range(256)))
    assert_refused(
        clean, result, f"{NOT_TEXT}: the file looks like {kind}; export it as a CSV in one of those encodings"
    )


def test_binary_junk_after_the_header_is_quarantined_line_by_line(clean, source):
    # three junk lines, each with a byte that neither UTF-8 nor Windows-1252 defines (0x81)
    junk = [b"\x81\xfe\x00\x07" + bytes(range(0x90, 0xFF)), b"\x8d\x81junk\xc3", b"\x9d" * 40]
    data = city(good(1)) + b"\r\n".join(junk) + b"\r\n" + city(good(2), header="").lstrip(b"\r\n")
    result = source(data)
    assert_accounted(clean, result, loaded=2, rejected=3, data_rows=5)
    assert [(line, field, reason) for _, line, field, reason, _ in quarantined(clean)] == [
        (3, None, "bytes not valid in utf-8 or cp1252"),
        (4, None, "bytes not valid in utf-8 or cp1252"),
        (5, None, "bytes not valid in utf-8 or cp1252"),
    ]


def test_binary_junk_without_a_final_newline_is_quarantined(clean, source):
    # the last line of a part has no newline: it once crashed the non-ASCII scan (IndexError)
    result = source(city(good(1)) + b"\x81\x82\x83 junk")
    assert_accounted(clean, result, loaded=1, rejected=1, data_rows=2)
    assert quarantined(clean)[0][1:4] == (3, None, "bytes not valid in utf-8 or cp1252")


def test_nul_bytes_are_quarantined_naming_the_field(clean, source):
    data = city(good(1)) + good(2).encode().replace(b"COLBORNE", b"COL\x00BORNE") + b"\r\n" + good(3).encode()
    result = source(data)
    assert_accounted(clean, result, loaded=2, rejected=1, data_rows=3)
    [(file, line, field, reason, raw)] = quarantined(clean)
    assert (file, line, field) == (CSV_NAME, 3, "location2")
    assert reason == "location2: contains a NUL byte (0x00), which a PostgreSQL text value cannot hold"
    assert "COL\\0BORNE" in raw  # stored visibly: PostgreSQL text cannot hold the NUL itself


# --- encodings that guess wrong -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "kind"),
    [
        ("utf-16", "UTF-16 (its byte order mark)"),
        ("utf-16-le", "UTF-16 little-endian without a byte order mark (a NUL byte after every character)"),
        ("utf-16-be", "UTF-16 big-endian without a byte order mark (a NUL byte before every character)"),
    ],
)
def test_a_utf16_file_is_refused_saying_so(clean, source, encoding, kind):
    # Decision: refused, not decoded: the spec names its encodings (utf-8, cp1252), and a
    # file in another one means the export changed; say which, so it is fixed at the source.
    result = source(city(good(1), encoding=encoding))
    assert_refused(
        clean, result, f"{NOT_TEXT}: the file looks like {kind}; export it as a CSV in one of those encodings"
    )


def test_utf8_decoded_as_cp1252_and_saved_again_is_quarantined_as_mojibake(clean, source):
    # "O’CONNOR DR" opened as Windows-1252 and saved as UTF-8 reads "Oâ€™CONNOR DR": valid
    # UTF-8, wrong text. Decision: quarantined, not repaired, so a person sees the source is
    # damaged; the raw line keeps the value.
    mojibake = "O’CONNOR DR".encode().decode("cp1252")
    assert mojibake == "Oâ€™CONNOR DR"
    result = source(city(good(1, "O’CONNOR DR"), good(2, mojibake), good(3, "CÔTÉ CRT")))
    assert_accounted(clean, result, loaded=2, rejected=1, data_rows=3)
    assert quarantined(clean)[0][:4] == (
        CSV_NAME,
        3,
        "location2",
        "location2: 'Oâ€™CONNOR DR' reads as UTF-8 text decoded as Windows-1252 (mojibake)",
    )
    assert [r["location2"] for r in stored(clean)] == ["O’CONNOR DR", "CÔTÉ CRT"]


def test_cp1252_bytes_that_are_also_valid_utf8_read_as_utf8(clean, source):
    # A Windows-1252 line is almost never valid UTF-8: that needs an accented capital right
    # before a symbol such as ©, ’ or «. When it is ("CAFÃ©" is C3 A9), the bytes are read
    # as UTF-8 ("CAFé"). Decision: keep that, because the Windows-1252 reading is itself
    # mojibake, so UTF-8 is what the writer meant. A line that is not valid UTF-8 as a whole
    # is Windows-1252, and then the same value is quarantined as mojibake.
    ambiguous = good(2, "1 CAFÃ© ST").encode("cp1252")
    assert ambiguous.decode("utf-8").endswith("1 CAFé ST,,,ON")
    mixed = good(3, "1 CAFÃ© ST").replace(",,,ON", ",AT,CÔTÉ CRT,ON").encode("cp1252")  # Ô: not UTF-8
    data = city(good(1)) + ambiguous + b"\r\n" + mixed + b"\r\n"
    result = source(data)
    assert_accounted(clean, result, loaded=2, rejected=1, data_rows=3)
    assert stored(clean)[1]["location2"] == "1 CAFé ST"
    assert quarantined(clean)[0][1:4] == (
        4,
        "location2",
        "location2: '1 CAFÃ© ST' reads as UTF-8 text decoded as Windows-1252 (mojibake)",
    )


# --- quoting and line ends ----------------------------------------------------------------------


def test_a_stray_quote_does_not_swallow_the_lines_after_it(clean, source):
    stray = good(2).replace("PARK PROHIBITED", '"PARK PROHIBITED')
    result = source(city(good(1), stray, good(3), good(4)))
    assert_accounted(clean, result, loaded=3, rejected=1, data_rows=4)
    assert quarantined(clean)[0][:5] == (
        CSV_NAME,
        3,
        None,
        "malformed CSV: a quoted field opened on this line is never closed",
        stray,
    )


def test_a_stray_quote_closed_by_a_later_line_quarantines_only_its_own_line(clean, source):
    stray = good(2).replace("PARK PROHIBITED", '"PARK PROHIBITED')
    closing = good(4).replace("COLBORNE ST", 'COLBORNE ST"')  # closes it, 7 fields short of a row
    result = source(city(good(1), stray, good(3), closing, good(5)))
    assert_accounted(clean, result, loaded=4, rejected=1, data_rows=5)
    assert quarantined(clean)[0][1:4] == (
        3,
        None,
        "malformed CSV: a quoted field opened on this line runs on over 2 more line(s) without making a row "
        "of 11 fields (this line alone has 4)",
    )


def test_cr_only_line_ends_are_refused(clean, source):
    result = source(city(good(1), good(2), eol="\r"))
    assert_refused(
        clean,
        result,
        f"{CSV_NAME}:1: the header line holds a carriage return: lines must end in LF or CRLF, not CR alone",
    )


# --- property: any valid rows load exactly ---------------------------------------------------------

# Street-name alphabet: ASCII, the accents Toronto names carry, the typographic apostrophe,
# and the characters CSV must quote. Every one of them exists in Windows-1252.
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz0123456789/-.&',\"ÉÈÊÀÔÎÇÜéèêàôîçü’"
# Left out: an accented capital directly before "’" (e.g. "É’"). Its Windows-1252 bytes are
# valid UTF-8 too, the one thing line-by-line decoding cannot tell apart (see
# test_cp1252_bytes_that_are_also_valid_utf8_read_as_utf8).
AMBIGUOUS = re.compile("[\u00c2-\u00f4]’")


def text(max_size: int = 24, extra: str = ""):
    return st.text(alphabet=ALPHABET + extra, max_size=max_size).filter(lambda v: not AMBIGUOUS.search(v))


@st.composite
def ticket(draw) -> dict:
    """A valid City row: the strings as written, and the values PostgreSQL must hold."""
    day = draw(st.dates(datetime.date(YEAR, 1, 1), datetime.date(YEAR, 12, 31)))
    code = draw(st.none() | st.integers(0, 2**31 - 1))
    cents = draw(st.integers(0, 10**12 - 1))
    whole = cents % 100 == 0 and draw(st.booleans())
    fine = str(cents // 100) if whole else f"{cents // 100}.{cents % 100:02d}"
    clock = draw(st.none() | st.tuples(st.integers(0, 23), st.integers(0, 59)))
    hhmm = "" if clock is None else str(clock[0] * 100 + clock[1])  # the City drops leading zeros
    values = {
        "tag_number_masked": draw(text(10)),
        "date_of_infraction": day.strftime("%Y%m%d"),
        "infraction_code": "" if code is None else str(code),
        "infraction_description": draw(text(40, extra="\n")),  # a quoted line break now and then
        "set_fine_amount": fine,
        "time_of_infraction": hhmm,
        "location1": draw(st.sampled_from(["NR", "OPP", "AT", "S/S", ""])),
        "location2": draw(text()),
        "location3": draw(text(8)),
        "location4": draw(text()),
        "province": draw(st.sampled_from(["ON", "QC", "NY", ""])),
    }
    typed = {name: (value or None) for name, value in values.items()}  # empty text is NULL
    typed |= {
        "date_of_infraction": day,
        "infraction_code": code,
        "set_fine_amount": Decimal(cents) / 100,
        "time_of_infraction": None if clock is None else datetime.time(*clock),
    }
    return {"written": [values[c] for c in COLUMNS], "typed": tuple(typed[c] for c in COLUMNS)}


@st.composite
def city_year(draw) -> dict:
    """Rows for one year, each in UTF-8 or Windows-1252 (City files mix them line by line),
    written as a bare CSV, a ZIP of one part or a ZIP of two, with CRLF or LF line ends."""
    rows = draw(st.lists(ticket(), min_size=1, max_size=30))
    encodings = draw(st.lists(st.sampled_from(["utf-8", "cp1252"]), min_size=len(rows), max_size=len(rows)))
    eol = draw(st.sampled_from(["\r\n", "\n"]))
    layout = draw(st.sampled_from(["csv", "zip", "zip of two parts"]))
    bom = draw(st.booleans())

    def part(chunk: list[tuple[dict, str]]) -> bytes:
        out = (codecs.BOM_UTF8 if bom else b"") + (HEADER + eol).encode()
        for row, encoding in chunk:
            line = io.StringIO()
            csv.writer(line, lineterminator=eol).writerow(row["written"])
            out += line.getvalue().encode(encoding)
        return out

    pairs = list(zip(rows, encodings, strict=True))
    if layout == "csv":
        files = {CSV_NAME: part(pairs)}
    else:
        cut = len(pairs) // 2 if layout == "zip of two parts" else len(pairs)
        chunks = [c for c in (pairs[:cut], pairs[cut:]) if c]
        # a part may be empty (header only) as long as the year has rows
        parts = {f"Parking_Tags_Data_{YEAR}_{k}.csv": part(c) for k, c in enumerate(chunks, 1)}
        files = {ZIP_NAME: zipped(parts)}
    return {"files": files, "rows": [r["typed"] for r in rows]}


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,  # the same examples on every run (seeded, like the rest of the suite)
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=city_year())
def test_any_valid_rows_load_exactly(clean, tmp_path, case):
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    for name, data in case["files"].items():
        (folder / name).write_bytes(data)
    # each example replaces the last one's year, however many rows it has
    result = call("load", source=str(folder), years=str(YEAR), force=True, allow_shrink=True)
    year = result.years[0]
    assert year.status == "loaded", year.error
    assert quarantined(clean) == []
    assert (year.rows, year.rejected) == (len(case["rows"]), 0)
    got = [tuple(r[c] for c in COLUMNS) for r in stored(clean)]
    assert Counter(got) == Counter(case["rows"])
