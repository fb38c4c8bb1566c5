"""A full disk in $LEORONIC_HOME: the node stops claiming and says why, then recovers; its
journal stays readable (issue #5, faults that are not crashes). Needs root for a small tmpfs."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from comrade.journal_check import check_journal
from tests.cluster import Cluster, NodeProc, wait_for


@pytest.fixture
def small_home(tmp_path: Path) -> Iterator[Path]:
    """A 96 MiB tmpfs to play a nearly full disk; unmounted afterwards."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def start_small(cluster: Cluster, small_home: Path, *args: str) -> NodeProc:
    """A first worker, then a second one named `small`, tagged `tiny`, whose home is on the
    tmpfs (moved there before it starts for real)."""
    n1 = cluster.start_node()
    small = cluster.start_node(*args, peer=n1, name="small", wait=False)
    cluster.kill(small)
    shutil.rmtree(small.home, ignore_errors=True)
    small.home = str(small_home / "home")
    small.args[small.args.index("--home") + 1] = small.home
    cluster.launch(small)
    cluster.wait_registered(small)
    assert cluster.cli("add-tag", "tiny", "--node", "small").rc == 0
    return small


def test_full_disk_stops_claiming_says_why_and_recovers(small_home: Path, tmp_path: Path) -> None:
    cluster = Cluster(str(tmp_path / "c"))
    try:
        small = start_small(cluster, small_home)

        filler = small_home / "filler"
        with open(filler, "wb") as f:  # leave ~30 MiB: under the 64 MiB floor
            f.write(b"\0" * (66 * 1024 * 1024))

        def note() -> str:
            """The `note:` line of node `small` in leoronic_nodes ('' if none)."""
            out = cluster.cli("nodes").out
            block = out.split("small  ", 1)[1] if "small  " in out else ""
            return next((line.strip() for line in block.splitlines() if "note:" in line), "")
        shown = wait_for(note, 30, "the node to report a full disk")
        assert shown.startswith("note: not claiming: disk full"), shown

        r = cluster.sh('leoronic_add_task 1024 1 1024 true "worker:tag tiny" "" "echo ran" t-full')
        assert r.rc == 0, r
        # It stays queued while the disk is full (the only node that may run it does not claim).
        assert cluster.sh("leoronic_result t-full").rc == 5
        r = cluster.sh("leoronic_wait --timeout 3 t-full")
        assert r.rc == 5, r

        filler.unlink()  # free space again: the node resumes
        assert cluster.sh("leoronic_wait --timeout 40 t-full").rc == 0
        assert cluster.sh("leoronic_result t-full").out == "ran\n"
        wait_for(lambda: "disk full" not in cluster.cli("nodes").out, 30, "the note to clear")

        cluster.kill(small)
        assert check_journal(os.path.join(small.home, "raft", "journal")) > 0
    finally:
        cluster.stop()


def test_a_task_that_fills_the_disk_does_not_kill_its_worker(small_home: Path,
                                                             tmp_path: Path) -> None:
    """Audit finding: the journal is memory-mapped, and its growth into a full filesystem raised
    SIGBUS (exit 135, nothing logged). The worker now stays up, stops claiming while its disk
    is full, and claims again once the task is deleted and its files are gone."""
    cluster = Cluster(str(tmp_path / "c"))
    try:
        # Deleted tasks' work dirs go at the next garbage collection: every 2 s here.
        small = start_small(cluster, small_home, "--gc-every", "2")
        r = cluster.sh('leoronic_add_task 1024 1 1024 true "worker:tag tiny" "" '
                       '"dd if=/dev/zero of=fill bs=1M count=200; sleep 60" t-fill')
        assert r.rc == 0, r
        wait_for(lambda: shutil.disk_usage(small_home).free < 1024 * 1024, 30, "the disk to fill")
        wait_for(lambda: "disk full" in cluster.cli("nodes").out, 30, "the node to say why")
        for i in range(10):  # Raft entries keep coming: the full node must journal them
            assert cluster.sh(f'leoronic_add_task 64 1 64 true "" "" "true" t-more-{i}').rc == 0
        assert cluster.sh("leoronic_wait --timeout 30 " + " ".join(
            f"t-more-{i}" for i in range(10))).rc == 0
        assert small.proc is not None and small.proc.poll() is None, small.log()
        assert cluster.sh("leoronic_del_task t-fill").rc == 0
        wait_for(lambda: "disk full" not in cluster.cli("nodes").out, 40, "the note to clear")
        r = cluster.sh('leoronic_add_task 64 1 64 true "worker:tag tiny" "" "echo ran" t-after')
        assert r.rc == 0, r
        assert cluster.sh("leoronic_wait --timeout 30 t-after").rc == 0
        assert cluster.sh("leoronic_result t-after").out == "ran\n"
        assert small.proc.poll() is None, small.log()
    finally:
        cluster.stop()
