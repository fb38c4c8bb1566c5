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
from tests.cluster import Cluster, wait_for


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


def test_full_disk_stops_claiming_says_why_and_recovers(small_home: Path, tmp_path: Path) -> None:
    cluster = Cluster(str(tmp_path / "c"))
    try:
        n1 = cluster.start_node()
        small = cluster.start_node(peer=n1, name="small", wait=False)
        # Move the second node's home onto the tmpfs before it starts for real.
        cluster.kill(small)
        shutil.rmtree(small.home, ignore_errors=True)
        small.home = str(small_home / "home")
        small.args[small.args.index("--home") + 1] = small.home
        cluster.launch(small)
        cluster.wait_registered(small)
        assert cluster.cli("add-tag", "tiny", "--node", "small").rc == 0

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
