"""migrate_to_bucket: the local Parquet tree to the bucket (a folder, or the GCS emulator)."""

import hashlib
from pathlib import Path

import pytest
from helpers import call, run_cli

from opsbook.demo import safety as safetydata
from opsbook.errors import CheckFailed
from opsbook.stores import uri

pytestmark = pytest.mark.integration


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A copy of the demo's local tree, and an empty bucket (lake and archive in one folder)."""
    import shutil

    local = tmp_path / "parquet"
    shutil.copytree(safetydata.local_tree(), local)
    bucket = tmp_path / "bucket"
    monkeypatch.setenv("LAKE_URL", str(bucket))
    monkeypatch.setenv("ARCHIVE_URL", str(bucket))
    return local, bucket


def contents(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def expected(local: Path) -> dict[str, str]:
    """Where each local file belongs in the bucket, with its MD5."""
    found = {}
    for path in local.rglob("*.parquet"):
        relative = path.relative_to(local).as_posix()
        if path.name.startswith("bsm_"):
            day = path.name[4:14]
            relative = f"raw/bsm/{day[:4]}/{day[5:7]}/{day[8:10]}/{path.name}"
        found[relative] = hashlib.md5(path.read_bytes()).hexdigest()
    return found


def test_plan_copies_nothing_then_apply_copies_verified_and_a_rerun_skips(tree):
    local, bucket = tree
    planned = call("migrate_to_bucket", source=str(local))
    verdict = planned.verdict()
    assert verdict.status == "pass" and verdict.summary.startswith("plan only, nothing copied: 78 of 78 file(s)")
    assert not bucket.exists()
    raw = [i for i in planned.items if i.kind == "raw"]
    assert len(raw) == 48 and all("/raw/bsm/2025/10/3" in i.target for i in raw)

    done = call("migrate_to_bucket", source=str(local), apply=True)
    assert done.verdict().status == "pass", done.verdict().summary
    assert {i.status for i in done.items} == {"copied"}
    assert contents(bucket) == expected(local)  # every file, byte for byte, in the runbook's layout
    assert len(list(local.rglob("*.parquet"))) == 78  # nothing deleted locally

    again = call("migrate_to_bucket", source=str(local), apply=True)
    assert {i.status for i in again.items} == {"already there"}
    assert "copied 0 of 78" in again.verdict().summary


def test_an_object_holding_other_bytes_is_not_overwritten_unless_asked(tree):
    local, bucket = tree
    call("migrate_to_bucket", source=str(local), apply=True)
    target = bucket / "processed" / "indices" / "indices_2025-10-05.parquet"
    target.write_bytes(b"another file")
    refused = run_cli("migrate_to_bucket", "-p", f"source={local}", "-p", "apply=true", "--json")
    assert refused.code == CheckFailed.exit_code
    assert "1 of 78 file(s)" in refused.json()["summary"] and "overwrite=true" in refused.json()["summary"]
    assert target.read_bytes() == b"another file"
    replaced = call("migrate_to_bucket", source=str(local), apply=True, overwrite=True)
    assert replaced.verdict().status == "pass"
    assert contents(bucket) == expected(local)


def test_an_interrupted_copy_leaves_no_half_object_and_resumes(tree, monkeypatch):
    local, bucket = tree
    original = uri.copy_file
    calls = []

    def failing(path, target):
        calls.append(target)
        if len(calls) == 10:  # the connection drops during the tenth file
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            raise OSError("connection reset by peer")
        return original(path, target)

    monkeypatch.setattr(uri, "copy_file", failing)
    first = call("migrate_to_bucket", source=str(local), apply=True)
    assert first.verdict().status == "fail"
    failed = [i for i in first.items if i.status == "failed"]
    assert len(failed) == 1 and "connection reset by peer" in failed[0].note
    assert not Path(failed[0].target).exists()
    monkeypatch.setattr(uri, "copy_file", original)

    resumed = call("migrate_to_bucket", source=str(local), apply=True)
    statuses = [i.status for i in resumed.items]
    assert statuses.count("copied") == 1 and statuses.count("already there") == 77
    assert contents(bucket) == expected(local)


def test_delete_local_removes_only_verified_copies(tree):
    local, bucket = tree
    first = local / "processed" / "indices" / "indices_2025-10-02.parquet"
    call("migrate_to_bucket", source=str(local), apply=True)
    (bucket / "processed" / "indices" / "indices_2025-10-02.parquet").write_bytes(b"damaged copy")
    done = call("migrate_to_bucket", source=str(local), apply=True, delete_local=True)
    assert done.verdict().status == "fail"  # the damaged copy differs: named, not overwritten
    assert first.exists()  # its local file is kept
    assert sorted(p.name for p in local.rglob("*.parquet")) == [first.name]
    assert sum(i.deleted for i in done.items) == 77


def test_to_a_bucket_in_gcs(tree, gcs_emulator, monkeypatch):
    local, _ = tree
    bucket = "gs://opsbook-test/migrated"
    monkeypatch.setenv("LAKE_URL", bucket)
    monkeypatch.setenv("ARCHIVE_URL", bucket)
    done = call("migrate_to_bucket", source=str(local), apply=True)
    assert done.verdict().status == "pass", done.verdict().summary
    assert {i.status for i in done.items} == {"copied"} and all("store keeps no MD5" not in i.note for i in done.items)
    held = {o.uri.removeprefix(bucket + "/") for o in uri.listing(bucket)}
    assert held == set(expected(local))
    assert {i.status for i in call("migrate_to_bucket", source=str(local)).items} == {"already there"}


def test_a_copy_whose_md5_does_not_match_is_failed_not_copied(tree, monkeypatch):
    local, _ = tree
    monkeypatch.setattr(uri, "md5_of", lambda target: "0" * 32)  # the store reads back other bytes
    done = call("migrate_to_bucket", source=str(local), apply=True, delete_local=True)
    assert {i.status for i in done.items} == {"failed"}
    assert all("differs from the file's" in i.note for i in done.items)
    assert len(list(local.rglob("*.parquet"))) == 78  # nothing deleted locally
    assert done.verdict().status == "fail"
