"""A load never replaces a year with worse input: truncated, padded, doubled or foreign files
are refused (exit 1) naming the files and figures, and the year keeps what it held."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from helpers import ROOT, call

from opsbook.errors import CheckFailed

pytestmark = pytest.mark.integration

YEAR_FILE = "parking-tickets-2016.zip"


def run_load(source, **extra):
    return call("load", source=str(source), years="2016", **extra)


def digest(db):
    return db.execute(
        "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0) FROM parking_tickets_2016 t"
    ).fetchone()


def members(demo_dir) -> dict[str, bytes]:
    """The CSV parts of the demo's 2016 ZIP, by name."""
    with zipfile.ZipFile(demo_dir / YEAR_FILE) as archive:
        return {m.filename: archive.read(m) for m in archive.infolist()}


@pytest.fixture
def loaded(clean, demo_dir):
    """2016 loaded from the demo files; returns (db, the year's digest)."""
    result = run_load(demo_dir)
    assert result.years[0].status == "loaded"
    return clean, digest(clean)


def refused(result, *phrases, status="refused"):
    """The year was refused with exit 1 and a message holding every phrase."""
    year = result.years[0]
    assert year.status == status, (year.status, year.error)
    for phrase in phrases:
        assert phrase in year.error, (phrase, year.error)
    verdict = result.verdict()
    assert verdict.status == "fail" and issubclass(verdict.error, CheckFailed) and verdict.exit_code == 1
    return year.error


def test_a_truncated_export_does_not_replace_the_year_unless_allowed(loaded, demo_dir, tmp_path):
    db, before = loaded
    first = next(iter(members(demo_dir).values()))
    lines = first.split(b"\n")
    (tmp_path / "Parking_Tags_Data_2016.csv").write_bytes(b"\n".join(lines[:3001]) + b"\n")  # header + 3,000

    message = refused(run_load(tmp_path, force=True), "holds 3,000 good rows; the table holds", "allow_shrink=true")
    assert "Parking_Tags_Data_2016.csv" in message
    assert digest(db) == before

    result = run_load(tmp_path, force=True, allow_shrink=True)
    assert result.years[0].status == "loaded" and digest(db)[0] == 3000


def test_a_good_head_padded_with_nul_bytes_is_refused_while_reading(loaded, demo_dir, tmp_path):
    db, before = loaded
    parts = members(demo_dir)
    name, first = next(iter(parts.items()))
    (tmp_path / name).write_bytes(first + b"\0" * (3 << 20))  # megabytes of NUL, no line break
    result = run_load(tmp_path, force=True, allow_shrink=True)
    message = result.years[0].error
    assert result.years[0].status == "failed"
    assert "runs on past 1,048,576 bytes without a line break (NUL bytes" in message
    assert digest(db) == before


def test_rejected_lines_that_are_most_of_the_bytes_are_refused(loaded, demo_dir, tmp_path):
    """Four rejected lines are far under 1 % of the rows, but nearly all of the bytes."""
    db, before = loaded
    data = b"".join(members(demo_dir).values())
    header, _, body = data.partition(b"\n")
    body = body.replace(b"\n" + header + b"\n", b"\n")  # the three parts as one
    padding = (b"\0" * 900_000 + b"\n") * 4
    (tmp_path / "Parking_Tags_Data_2016.csv").write_bytes(header + b"\n" + body + padding)
    message = refused(
        run_load(tmp_path, force=True),
        "stopped reading after",
        "bytes of rejected lines already",
        status="rejected-too-many",
    )
    assert "more than 1.0% of the year's input can hold (in Parking_Tags_Data_2016.csv (" in message
    assert "the previous contents were kept" in message
    assert digest(db) == before


@pytest.mark.parametrize("layout", ["zip beside its csv", "member twice", "overlapping parts", "renamed copy"])
def test_input_holding_the_same_rows_twice_is_refused(layout, loaded, demo_dir, tmp_path):
    db, before = loaded
    parts = members(demo_dir)
    names = list(parts)
    if layout == "zip beside its csv":
        shutil.copy(demo_dir / YEAR_FILE, tmp_path / YEAR_FILE)
        (tmp_path / names[1]).write_bytes(parts[names[1]])
        expected = f"rows of {YEAR_FILE}:{names[1]} are rows of {names[1]}"
    elif layout == "member twice":
        with (
            pytest.warns(UserWarning, match="Duplicate name"),
            zipfile.ZipFile(tmp_path / YEAR_FILE, "w", zipfile.ZIP_DEFLATED) as archive,
        ):
            for name in [*names, names[0]]:
                archive.writestr(name, parts[name])
        expected = f"rows of {YEAR_FILE}:{names[0]} are rows of {YEAR_FILE}:{names[0]}"
    elif layout == "overlapping parts":
        header, _, second = parts[names[1]].partition(b"\n")
        tail = b"\n".join(parts[names[0]].rstrip(b"\n").split(b"\n")[-100:]) + b"\n"
        (tmp_path / names[0]).write_bytes(parts[names[0]])
        (tmp_path / names[1]).write_bytes(header + b"\n" + tail + second)
        expected = f" rows of {names[1]} are rows of {names[0]}"  # the 100 repeated rows (less rejects)
    else:
        shutil.copy(demo_dir / YEAR_FILE, tmp_path / YEAR_FILE)
        shutil.copy(demo_dir / YEAR_FILE, tmp_path / "parking-tickets-2016 (copy).zip")
        expected = "are rows of parking-tickets-2016"
    message = refused(run_load(tmp_path, force=True), "the input holds the same rows twice", expected)
    assert "the previous contents were kept" in message
    assert digest(db) == before


def test_a_backup_in_a_subfolder_is_not_picked_up(loaded, demo_dir, tmp_path):
    db, before = loaded
    shutil.copy(demo_dir / YEAR_FILE, tmp_path / YEAR_FILE)
    (tmp_path / "old").mkdir()
    shutil.copy(demo_dir / YEAR_FILE, tmp_path / "old" / "parking-tickets-2016-backup.zip")
    result = run_load(tmp_path, force=True)
    assert result.years[0].status == "loaded" and result.years[0].files == [YEAR_FILE]
    assert digest(db) == before


def test_changed_content_with_the_same_size_and_mtime_is_loaded(loaded, demo_dir, tmp_path):
    """cp -p, rsync -t and unzip keep size and mtime: only the content tells."""
    db, _ = loaded
    part = next(iter(members(demo_dir).values()))
    path = tmp_path / "Parking_Tags_Data_2016.csv"
    path.write_bytes(part)
    assert run_load(tmp_path, force=True, allow_shrink=True).years[0].status == "loaded"
    before = digest(db)
    stat = path.stat()
    # one digit of the first row's last field changes; size and modification time stay
    position = part.index(b"\n", part.index(b"\n") + 1) - 1
    while not chr(part[position]).isdigit():
        position -= 1
    changed = part[:position] + (b"8" if part[position : position + 1] == b"9" else b"9") + part[position + 1 :]
    path.write_bytes(changed)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    again = run_load(tmp_path)
    assert again.years[0].status == "loaded", again.years[0]
    assert digest(db) != before and digest(db)[0] == before[0]


# the peak is this process's VmHWM: ru_maxrss would keep the forking parent's (pytest's) size
JUNK_SCRIPT = """
import json, re, sys
sys.path.insert(0, {tests!r})
from helpers import call
result = call("load", source={source!r}, years="2016", force=True)
year = result.years[0]
status = open("/proc/self/status").read()
peak_kb = int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
print(json.dumps({{"status": year.status, "error": year.error, "peak_mb": peak_kb / 1024}}))
"""


@pytest.mark.parametrize("junk", ["lines", "one line"])
def test_a_gigabyte_of_junk_is_refused_early_in_bounded_memory(junk, loaded, demo_dir, tmp_path, database_url):
    """1 GB of junk (a few MB zipped) after a good head: reading stops long before the end, and
    the process's peak memory stays under 600 MB."""
    import json

    db, before = loaded
    header_and_head = next(iter(members(demo_dir).values()))
    chunk = (b"JUNK,NOT,A,TICKET\n" if junk == "lines" else b"J" * 18) * (1 << 16)
    with (
        zipfile.ZipFile(tmp_path / YEAR_FILE, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
        archive.open("Parking_Tags_Data_2016.csv", "w", force_zip64=True) as member,
    ):
        member.write(header_and_head)
        for _ in range((1 << 30) // len(chunk)):
            member.write(chunk)
    assert (tmp_path / YEAR_FILE).stat().st_size < 20 << 20
    script = JUNK_SCRIPT.format(tests=str(ROOT / "tests"), source=str(tmp_path))
    env = dict(os.environ, DATABASE_URL=database_url)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    if junk == "lines":
        assert outcome["status"] == "rejected-too-many"
        assert "stopped reading after" in outcome["error"]
        read, total = (
            int(n.replace(",", "")) for n in outcome["error"].split("after ")[1].split(" bytes")[0].split(" of ")
        )
        assert total > 1 << 30 and read < total // 10
    else:
        assert outcome["status"] == "failed" and "runs on past 1,048,576 bytes" in outcome["error"]
    assert outcome["peak_mb"] < 600, outcome
    assert digest(db) == before


def test_the_staging_tables_and_spool_are_gone_after_a_refusal(loaded, demo_dir, tmp_path):
    db, _ = loaded
    shutil.copy(demo_dir / YEAR_FILE, tmp_path / YEAR_FILE)
    shutil.copy(demo_dir / YEAR_FILE, tmp_path / "parking-tickets-2016-b.zip")
    run_load(tmp_path, force=True)
    assert db.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE '%%_load'").fetchone()[0] == 0
    entry = db.execute(
        "SELECT status FROM opsbook.partitions WHERE dataset = 'toronto_parking_tickets' AND partition = '2016'"
    ).fetchone()
    assert entry == ("failed",)


def test_a_missing_year_names_what_the_folder_holds_instead(clean, demo_dir, tmp_path):
    from opsbook.errors import SourceError

    for year in (2016, 2017):
        shutil.copy(demo_dir / f"parking-tickets-{year}.zip", tmp_path)
    (tmp_path / "README.txt").write_text("City of Toronto open data")
    with pytest.raises(SourceError) as refused_year:
        call("load", source=str(tmp_path), years="2019")
    assert str(refused_year.value).endswith(
        "nothing was loaded. The folder holds 2 file(s) for the years 2016-2017: parking-tickets-2016.zip, "
        "parking-tickets-2017.zip; other files there: README.txt"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.md").write_text("")
    with pytest.raises(SourceError) as nothing:
        call("load", source=str(empty), years="2019")
    assert "The folder holds no Toronto parking tickets file of any year; other files there: notes.md" in str(
        nothing.value
    )
