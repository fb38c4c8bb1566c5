"""The content-addressed store and placing files in a work dir."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from comrade.files import (
    FileError,
    FileRef,
    FileStore,
    HashMismatch,
    place_files,
    sha256_file,
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(str(tmp_path / "store"))


def tmp_leftovers(store: FileStore) -> list[str]:
    return os.listdir(os.path.join(store.root, "tmp"))


def test_put_bytes_has_path_verify(store: FileStore) -> None:
    data = b"hello\n"
    digest = store.put_bytes(data)
    assert digest == sha(data)
    assert store.has(digest)
    assert store.path(digest) == os.path.join(store.root, digest[:2], digest)
    assert Path(store.path(digest)).read_bytes() == data
    assert store.verify(digest)
    assert store.list() == [digest]
    assert store.total_bytes() == len(data)
    assert b"".join(store.read_chunks(digest, chunk=2)) == data
    assert tmp_leftovers(store) == []


def test_put_bytes_with_expected_hash(store: FileStore) -> None:
    data = b"abc"
    assert store.put_bytes(data, expected_sha256=sha(data)) == sha(data)
    assert store.has(sha(data))


def test_put_bytes_mismatch_stores_nothing(store: FileStore) -> None:
    wrong = sha(b"other")
    with pytest.raises(HashMismatch) as info:
        store.put_bytes(b"abc", expected_sha256=wrong)
    assert str(info.value) == f"file {wrong}: content hash is {sha(b'abc')}, expected {wrong}"
    assert isinstance(info.value, FileError)
    assert store.list() == []
    assert tmp_leftovers(store) == []


def test_put_file(store: FileStore, tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    data = os.urandom(3 * (1 << 20) + 17)  # more than one chunk
    src.write_bytes(data)
    got = store.put_file(str(src))
    assert (got.sha256, got.size) == (sha(data), len(data))
    assert sha256_file(str(src)) == (sha(data), len(data))
    assert store.verify(got.sha256)
    assert b"".join(store.read_chunks(got.sha256)) == data


def test_put_is_idempotent(store: FileStore) -> None:
    a = store.put_bytes(b"same")
    b = store.put_bytes(b"same")
    assert a == b and store.list() == [a]


def test_corrupted_copy_detected_and_removed(store: FileStore) -> None:
    digest = store.put_bytes(b"good content")
    path = store.path(digest)
    os.chmod(path, 0o644)
    Path(path).write_bytes(b"bad content!")
    assert not store.verify(digest)
    assert not store.has(digest)
    assert not os.path.exists(path)
    assert not store.verify(digest)  # missing: still False, no error


def test_writer_streams_and_publishes(store: FileStore) -> None:
    parts = [b"part one, ", b"part two, ", b"part three"]
    digest = sha(b"".join(parts))
    with store.writer(digest) as w:
        for p in parts:
            w.write(p)
    assert w.size == sum(map(len, parts))
    assert store.has(digest) and store.verify(digest)
    assert tmp_leftovers(store) == []


def test_writer_rejects_wrong_hash_and_leaves_nothing(store: FileStore) -> None:
    wrong = sha(b"expected")
    with pytest.raises(HashMismatch) as info:
        with store.writer(wrong) as w:
            w.write(b"something else")
    assert str(info.value) == (
        f"file {wrong}: content hash is {sha(b'something else')}, expected {wrong}"
    )
    assert not store.has(wrong)
    assert store.list() == []
    assert tmp_leftovers(store) == []


def test_writer_error_inside_block_leaves_nothing(store: FileStore) -> None:
    digest = sha(b"x")
    with pytest.raises(RuntimeError):
        with store.writer(digest) as w:
            w.write(b"x")
            raise RuntimeError("transfer broke")
    assert not store.has(digest)
    assert tmp_leftovers(store) == []


def test_remove(store: FileStore) -> None:
    digest = store.put_bytes(b"gone")
    store.remove(digest)
    assert not store.has(digest)
    store.remove(digest)  # removing twice is fine


def test_read_chunks_missing(store: FileStore) -> None:
    with pytest.raises(FileError):
        store.read_chunks(sha(b"never stored"))


def test_gc_keeps_referenced_and_recent(store: FileStore) -> None:
    old_kept = store.put_bytes(b"old but referenced")
    old_dropped = store.put_bytes(b"old and unreferenced")
    recent = store.put_bytes(b"recent and unreferenced")
    now = 1_000_000.0
    for digest in (old_kept, old_dropped):
        os.utime(store.path(digest), (now - 7200, now - 7200))
    os.utime(store.path(recent), (now - 10, now - 10))
    stale_tmp = os.path.join(store.root, "tmp", "in-stale")
    Path(stale_tmp).write_bytes(b"half")
    os.utime(stale_tmp, (now - 7200, now - 7200))

    removed = store.gc(keep={old_kept}, older_than_s=3600, now=now)

    assert removed == [old_dropped]
    assert sorted(store.list()) == sorted([old_kept, recent])
    assert not os.path.exists(stale_tmp)


def test_list_ignores_foreign_entries(store: FileStore) -> None:
    digest = store.put_bytes(b"real")
    os.makedirs(os.path.join(store.root, "zz"))
    Path(store.root, "zz", "notes.txt").write_text("x")
    Path(store.root, digest[:2], "README").write_text("x")
    assert store.list() == [digest]


BAD_SHAS = [
    "",
    "abc",
    "A" * 64,
    "g" * 64,
    "a" * 63,
    "a" * 65,
    "../" + "a" * 61,
    "a" * 62 + "/.",
    "/etc/passwd",
    " " + "a" * 63,
]


@pytest.mark.parametrize("bad", BAD_SHAS)
def test_bad_sha_rejected(store: FileStore, bad: str) -> None:
    with pytest.raises(FileError):
        store.path(bad)
    with pytest.raises(FileError):
        store.has(bad)
    with pytest.raises(FileError):
        store.writer(bad)
    with pytest.raises(FileError):
        store.put_bytes(b"x", expected_sha256=bad)
    with pytest.raises(FileError):
        store.verify(bad)
    with pytest.raises(FileError):
        store.remove(bad)
    assert store.list() == []


def test_place_files_renamed(store: FileStore, tmp_path: Path) -> None:
    a, b = store.put_bytes(b"AAA"), store.put_bytes(b"BBBB")
    refs = [FileRef("in/a.txt", a, 3), FileRef("b.csv", b, 4)]
    work = tmp_path / "work"
    plan = place_files(store, str(work), refs)
    assert plan == {"in/a.txt": f"lf_{a[:12]}_a.txt", "b.csv": f"lf_{b[:12]}_b.csv"}
    assert (work / plan["in/a.txt"]).read_bytes() == b"AAA"
    assert (work / plan["b.csv"]).read_bytes() == b"BBBB"
    assert sorted(os.listdir(work)) == sorted(plan.values())
    mode = os.stat(work / plan["b.csv"]).st_mode
    assert not mode & 0o022  # nobody else can write it


def test_place_files_keep_names(store: FileStore, tmp_path: Path) -> None:
    a = store.put_bytes(b"AAA")
    work = tmp_path / "work"
    work.mkdir()
    (work / "a.txt").write_text("stale")
    plan = place_files(store, str(work), [FileRef("in/a.txt", a, 3)], rename=False)
    assert plan == {"in/a.txt": "a.txt"}
    assert (work / "a.txt").read_bytes() == b"AAA"


def test_place_files_missing_from_store(store: FileStore, tmp_path: Path) -> None:
    missing = sha(b"not there")
    with pytest.raises(FileError):
        place_files(store, str(tmp_path / "work"), [FileRef("x.txt", missing, 9)])


def test_place_files_basename_clash(store: FileStore, tmp_path: Path) -> None:
    a, b = store.put_bytes(b"1"), store.put_bytes(b"2")
    refs = [FileRef("a/x", a, 1), FileRef("b/x", b, 1)]
    with pytest.raises(FileError):
        place_files(store, str(tmp_path / "work"), refs, rename=False)


def test_a_file_confirmed_present_is_kept_for_a_whole_period(store: FileStore) -> None:
    """A client asks which files are missing, is told this one is not, and submits without
    uploading it: collection must not take it in between, however old it was."""
    digest = store.put_bytes(b"uploaded long ago, unreferenced since")
    old = time.time() - 7200
    os.utime(store.path(digest), (old, old))
    assert store.keep_alive(digest)
    assert store.gc(keep=set(), older_than_s=3600, now=time.time()) == []
    assert store.has(digest)
    assert not store.keep_alive("0" * 64)
