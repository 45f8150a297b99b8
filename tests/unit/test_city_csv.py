"""The City-format reader: encodings, headers, malformed rows, line numbers, typed values."""

import datetime
import io
from decimal import Decimal

import pytest

from opsbook import datasets
from opsbook.errors import SourceError
from opsbook.sources import city_csv

pytestmark = pytest.mark.unit

HEADER = (
    "tag_number_masked,date_of_infraction,infraction_code,infraction_description,"
    "set_fine_amount,time_of_infraction,location1,location2,location3,location4,province"
)
GOOD = "***00001,20160105,29,PARK PROHIBITED TIME NO PERMIT,30,35,NR,47 COLBORNE ST,,,ON"


@pytest.fixture(scope="module")
def spec():
    return datasets.get("toronto_parking_tickets")


def read(spec, data: bytes, year=2016, block_bytes=city_csv.BLOCK_BYTES):
    stats = city_csv.PartStats("part.csv")
    batches = list(city_csv.read_part(io.BytesIO(data), "part.csv", spec, year, stats, block_bytes))
    rows = [r for b in batches for r in b.rows.to_pylist()]
    rejects = [r for b in batches for r in b.rejects]
    return rows, rejects, stats


def lines(*rows, header=HEADER, eol="\r\n", encoding="utf-8") -> bytes:
    return (eol.join([header, *rows]) + eol).encode(encoding)


def test_good_row_is_typed(spec):
    rows, rejects, stats = read(spec, lines(GOOD))
    assert rejects == []
    assert rows == [
        {
            "tag_number_masked": "***00001",
            "date_of_infraction": datetime.date(2016, 1, 5),
            "infraction_code": 29,
            "infraction_description": "PARK PROHIBITED TIME NO PERMIT",
            "set_fine_amount": Decimal("30.00"),
            "time_of_infraction": datetime.time(0, 35),  # leading zeros dropped: 35 is 00:35
            "location1": "NR",
            "location2": "47 COLBORNE ST",
            "location3": None,
            "location4": None,
            "province": "ON",
        }
    ]
    assert stats.rows == 1 and stats.lines == 1


def test_empty_time_is_null(spec):
    rows, _, _ = read(spec, lines(GOOD.replace(",35,", ",,")))
    assert rows[0]["time_of_infraction"] is None


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        (GOOD.replace("20160105", "20160231"), "date_of_infraction", "impossible date '20160231'"),
        (GOOD.replace("20160105", "20150229"), "date_of_infraction", "impossible date '20150229'"),
        (GOOD.replace("20160105", "2016-01-05"), "date_of_infraction", "unparsable date '2016-01-05'"),
        (GOOD.replace("20160105", ""), "date_of_infraction", "missing"),
        (GOOD.replace("20160105", "20170105"), "date_of_infraction", "outside the file's year 2016"),
        (GOOD.replace(",30,", ",N/A,"), "set_fine_amount", "not a number: 'N/A'"),
        (GOOD.replace(",30,", ",12.345,"), "set_fine_amount", "does not fit numeric(12,2)"),
        (GOOD.replace(",35,", ",2575,"), "time_of_infraction", "impossible time '2575'"),
        (GOOD.replace(",35,", ",12:30,"), "time_of_infraction", "unparsable time '12:30'"),
        (GOOD.replace(",29,", ",2x9,"), "infraction_code", "not an integer: '2x9'"),
        (GOOD.replace(",29,", ",99999999999,"), "infraction_code", "integer out of range"),
    ],
)
def test_malformed_value_is_quarantined_with_its_reason(spec, row, field, reason):
    rows, rejects, _ = read(spec, lines(GOOD, row, GOOD))
    assert len(rows) == 2
    assert len(rejects) == 1
    reject = rejects[0]
    assert reject.field == field
    assert reason in reject.reason
    assert reject.line_number == 3  # header is line 1
    assert reject.raw == row
    assert reject.source_file == "part.csv"


def test_leap_day_is_a_date(spec):
    rows, rejects, _ = read(spec, lines(GOOD.replace("20160105", "20160229")))
    assert rejects == [] and rows[0]["date_of_infraction"] == datetime.date(2016, 2, 29)


def test_wrong_column_count_is_quarantined(spec):
    short = "***00003,20160410,29,PARK,30,0915,NR,4645 JANE ST,ON"
    long = GOOD + ",EXTRA"
    rows, rejects, _ = read(spec, lines(GOOD, short, GOOD, long))
    assert len(rows) == 2
    assert [(r.line_number, r.reason) for r in rejects] == [
        (3, "wrong column count: 9 fields, expected 11"),
        (5, "wrong column count: 12 fields, expected 11"),
    ]


def test_windows_1252_is_read_without_mojibake(spec):
    row = GOOD.replace("47 COLBORNE ST", "1400 O’CONNOR DR").replace(",,,ON", ",AT,CÔTÉ CRT,ON")
    rows, rejects, stats = read(spec, lines(GOOD, row, encoding="cp1252"))
    assert rejects == []
    assert rows[1]["location2"] == "1400 O’CONNOR DR"
    assert rows[1]["location4"] == "CÔTÉ CRT"
    assert stats.encoding == "cp1252"


def test_mixed_encodings_are_decoded_line_by_line(spec):
    utf8 = GOOD.replace("47 COLBORNE ST", "1 FRANÇOIS ST").encode("utf-8")
    cp1252 = GOOD.replace("47 COLBORNE ST", "2 FRANÇOIS ST").encode("cp1252")
    data = HEADER.encode() + b"\r\n" + utf8 + b"\r\n" + cp1252 + b"\r\n"
    rows, rejects, stats = read(spec, data)
    assert rejects == []
    assert [r["location2"] for r in rows] == ["1 FRANÇOIS ST", "2 FRANÇOIS ST"]
    assert stats.encodings == {"utf-8": 1, "cp1252": 1}


def test_bytes_valid_in_no_encoding_are_quarantined(spec):
    junk = GOOD.encode().replace(b"COLBORNE", b"COL\x81\x8dBORNE")  # undefined in cp1252 too
    rows, rejects, _ = read(spec, HEADER.encode() + b"\n" + GOOD.encode() + b"\n" + junk + b"\n")
    assert len(rows) == 1
    assert rejects[0].line_number == 3
    assert "not valid in utf-8 or cp1252" in rejects[0].reason


def test_bom_and_reordered_columns(spec):
    names = HEADER.split(",")
    order = [names[i] for i in (10, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9)]
    values = GOOD.split(",")
    row = ",".join(values[i] for i in (10, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9))
    data = b"\xef\xbb\xbf" + lines(row, header=",".join(order))
    rows, rejects, _ = read(spec, data)
    assert rejects == []
    assert rows[0]["province"] == "ON" and rows[0]["tag_number_masked"] == "***00001"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the file is empty"),
        (lines(GOOD, header=HEADER.replace(",province", "")), "missing column(s) province"),
        (lines(GOOD + ",x", header=HEADER + ",extra"), "unknown column(s) 'extra'"),
        (b"\x00\x01\x02binary\xff\xfe", "the header is not text"),
    ],
)
def test_unreadable_part_names_the_file_and_line(spec, data, message):
    with pytest.raises(SourceError) as caught:
        read(spec, data)
    assert caught.value.args[0].startswith("part.csv")
    assert message in str(caught.value)


def test_header_only_part_has_no_rows(spec):
    rows, rejects, stats = read(spec, lines())
    assert rows == [] and rejects == [] and stats.rows == 0


def test_line_numbers_survive_blank_lines_and_quoted_line_breaks(spec):
    quoted = GOOD.replace("PARK PROHIBITED TIME NO PERMIT", '"PARK\nPROHIBITED"')
    bad = GOOD.replace("20160105", "20161301")
    data = lines(GOOD, "", quoted, bad, GOOD, eol="\n")
    rows, rejects, stats = read(spec, data)
    assert len(rows) == 3
    assert rows[1]["infraction_description"] == "PARK\nPROHIBITED"
    assert [(r.line_number, r.field) for r in rejects] == [(6, "date_of_infraction")]
    assert stats.blank_lines == 1


def test_nul_bytes_are_quarantined(spec):
    data = HEADER.encode() + b"\n" + GOOD.encode() + b"\n" + GOOD.encode().replace(b"NR", b"N\x00R") + b"\n"
    rows, rejects, _ = read(spec, data)
    assert len(rows) == 1
    assert rejects[0].line_number == 3 and "NUL" in rejects[0].reason


def test_blocks_give_the_same_answer_as_one_pass(spec):
    """Small blocks split the input anywhere; rows, rejects and line numbers must not change."""
    body = []
    for i in range(300):
        row = GOOD.replace("***00001", f"***{i:05d}")
        if i % 37 == 0:
            row = row.replace(",30,", ",bad,")
        if i % 53 == 0:
            row = row.replace("47 COLBORNE ST", "O’CONNOR DR")
        body.append(row)
    data = lines(*body, encoding="cp1252")
    whole = read(spec, data)
    pieces = read(spec, data, block_bytes=997)
    assert whole[0] == pieces[0]
    assert [(r.line_number, r.reason) for r in whole[1]] == [(r.line_number, r.reason) for r in pieces[1]]
    assert len(whole[1]) == len(range(0, 300, 37))
