"""Necessary files, work dirs and garbage on a real cluster (issue #4), through the CLI.

Files are made in the test's tmp dir and submitted from there, as a user would. A node's
content store is `$home/store/<sha[:2]>/<sha>`; tasks' work dirs are `$home/work/<id>-a<N>`.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shlex
import shutil
import signal
from pathlib import Path
from typing import Any

from tests.cluster import Cluster, NodeProc, Result, peak_rss, result_out, wait_for, wait_ok

SCRIPT = "import sys\nprint(sys.argv[1])\nprint(open(sys.argv[1]).read(), end='')\n"
DATA = b"good data 123\n"
EVIL = b"EVIL DATA 666\n"  # same length: only the hash can tell

# ----- helpers ------------------------------------------------------------------------------


def add_task(cluster: Cluster, command: str, conditions: str = "", files: str = "",
             task_id: str = "", cwd: Path | None = None, node: NodeProc | None = None,
             **env: str) -> Result:
    """`cd CWD; leoronic_add_task 1024 1 1024 true CONDITIONS FILES COMMAND [ID]`."""
    fields = ["1024", "1", "1024", "true", conditions, files, command] + ([task_id] if task_id else [])
    cd = f"cd {shlex.quote(str(cwd))}\n" if cwd else ""
    return cluster.sh(cd + "leoronic_add_task " + " ".join(shlex.quote(f) for f in fields),
                      node=node, **env)


def submit(cluster: Cluster, command: str, conditions: str = "", files: str = "",
           task_id: str = "", cwd: Path | None = None, **env: str) -> str:
    r = add_task(cluster, command, conditions, files, task_id, cwd, **env)
    assert r.rc == 0, r
    return r.out.strip()


def queue_rows(cluster: Cluster) -> dict[str, dict[str, str]]:
    """Task id -> state, node, try, from `leoronic_get_queue` (fixed columns; ids <= 14 chars)."""
    r = cluster.sh("leoronic_get_queue")
    assert r.rc == 0, r
    rows = {}
    for line in r.out.splitlines()[1:]:
        if line.strip():
            rows[line[:14].strip()] = {"state": line[15:23].strip(), "node": line[24:44].strip(),
                                       "try": line[45:48].strip(), "line": line}
    return rows


def tag(cluster: Cluster, node: NodeProc, name: str) -> None:
    r = cluster.cli("add-tag", name, "--node", node.name)
    assert r.rc == 0, r


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored(node: NodeProc, digest: str) -> str:
    return os.path.join(node.home, "store", digest[:2], digest)


def holders(cluster: Cluster, digest: str) -> list[NodeProc]:
    return [n for n in cluster.nodes if os.path.exists(stored(n, digest))]


def store_entries(node: NodeProc) -> list[str]:
    return glob.glob(os.path.join(node.home, "store", "??", "*"))


def write_inputs(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir(exist_ok=True)
    (src / "script.py").write_text(SCRIPT)
    (src / "data.txt").write_bytes(DATA)
    return src


def corrupt(path: str) -> None:
    os.chmod(path, 0o644)  # stored copies are read-only
    with open(path, "r+b") as f:
        f.write(EVIL)


# ----- placing and shipping -------------------------------------------------------------------


def test_files_reach_a_node_without_the_upload_under_renamed_names(make_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = make_cluster(3, per_node_args=[["--cores", "1"]] * 3)
    n1 = cluster.nodes[0]
    src = write_inputs(tmp_path)
    digest, script_digest = sha(DATA), sha(SCRIPT.encode())

    # Upload through n1 with a task no node may run: n1 stores the files and copies them to
    # one more node; the third node (n3) did not receive them.
    submit(cluster, "true", "worker:tag nowhere", "script.py;data.txt", "holder", cwd=src)
    have = wait_for(lambda: len(holders(cluster, digest)) >= 2 and holders(cluster, digest),
                    20, "two stored copies")
    assert n1 in have and len(have) == 2
    lacking = next(n for n in cluster.nodes if n not in have)
    assert not os.path.exists(stored(lacking, script_digest))
    tag(cluster, lacking, "far")

    # Pinned there, the task gets both files from the nodes that stored them.
    t = submit(cluster, "python3 script.py data.txt", "worker:tag far", "script.py;data.txt",
               cwd=src)
    wait_ok(cluster, t)
    out = result_out(cluster, t)
    # The command was rewritten: the script got the renamed data file, and read it.
    assert out == f"lf_{digest[:12]}_data.txt\n" + DATA.decode(), out
    with open(stored(lacking, digest), "rb") as f:
        assert f.read() == DATA
    assert os.path.isfile(stored(lacking, script_digest))

    # Printing the command's arguments shows the renamed names, the original text elsewhere.
    t2 = submit(cluster, 'set -- data.txt script.py "keep data.txt.bak"; echo "$@"', "",
                "script.py;data.txt", cwd=src)
    wait_ok(cluster, t2)
    assert result_out(cluster, t2) == (
        f"lf_{digest[:12]}_data.txt lf_{script_digest[:12]}_script.py keep data.txt.bak\n")



def test_a_file_survives_losing_the_node_it_was_uploaded_to(make_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The README's promise that losing one node loses no file: uploaded through n1, which
    keeps a copy and makes one more, the file still reaches a node without a copy once n1 is
    gone (SIGKILL), from the other copy alone."""
    cluster: Cluster = make_cluster(3)
    n1 = cluster.nodes[0]
    src = write_inputs(tmp_path)
    digest = sha(DATA)
    r = add_task(cluster, "cat data.txt", "worker:tag far", "data.txt", "survivor", cwd=src)
    assert (r.rc, r.out) == (0, "survivor\n"), r
    have = wait_for(lambda: len(holders(cluster, digest)) >= 2 and holders(cluster, digest),
                    20, "two stored copies")
    assert n1 in have and len(have) == 2, have
    keeper = next(n for n in have if n is not n1)
    lacking = next(n for n in cluster.nodes if n not in have)

    cluster.kill(n1, signal.SIGKILL)
    r = cluster.cli("add-tag", "far", "--node", lacking.name, node=keeper)
    assert r.rc == 0, r
    r = cluster.sh("leoronic_wait --timeout 60 survivor", node=keeper, timeout=90)
    assert r.rc == 0, r
    r = cluster.sh("leoronic_result survivor", node=keeper)
    assert (r.rc, r.out) == (0, DATA.decode()), r
    info = cluster.sh("leoronic_task_info --json survivor", node=keeper)
    assert f'"node": "{lacking.name}"' in info.out, info
    with open(stored(lacking, digest), "rb") as f:
        assert f.read() == DATA

def test_an_upload_is_answered_only_once_a_second_worker_holds_the_file(
        make_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The node that received the upload is SIGKILLed the moment the submit returns: the task
    still runs from the other copy. It answered before copying, and a file of some size was
    then on that node alone: the task failed after five starts ("no node could supply it")."""
    cluster: Cluster = make_cluster(3)
    receiver, other = cluster.nodes[0], cluster.nodes[1]
    data = os.urandom(32 << 20)
    (tmp_path / "big.bin").write_bytes(data)
    r = add_task(cluster, "sha256sum < big.bin", "", "big.bin", "copied", cwd=tmp_path)
    assert (r.rc, r.out) == (0, "copied\n"), r
    assert len(holders(cluster, sha(data))) == 2  # at once: no waiting for the copy
    cluster.kill(receiver, signal.SIGKILL)
    r = cluster.sh("leoronic_wait --timeout 60 copied", node=other, timeout=90)
    assert r.rc == 0, r
    r = cluster.sh("leoronic_result copied", node=other)
    assert (r.rc, r.out.split()[0]) == (0, sha(data)), r


def test_no_rename_keeps_the_original_basenames(cluster3: Cluster, tmp_path: Path) -> None:
    src = write_inputs(tmp_path)
    # LEORONIC_NO_RENAME=1 with relative names.
    t1 = submit(cluster3, "python3 script.py data.txt; ls", "", "script.py;data.txt", cwd=src,
                LEORONIC_NO_RENAME="1")
    # `leoronic add-task --no-rename` with absolute names: placed under their basenames.
    r = cluster3.cli("add-task", "--no-rename", "--", "1024", "1", "1024", "true", "",
                     f"{src}/script.py;{src}/data.txt", "python3 script.py data.txt")
    assert r.rc == 0, r
    t2 = r.out.strip()
    wait_ok(cluster3, t1, t2)
    assert result_out(cluster3, t1) == "data.txt\n" + DATA.decode() + "data.txt\nscript.py\n"
    assert result_out(cluster3, t2) == "data.txt\n" + DATA.decode()


def test_one_file_for_twenty_tasks_is_stored_once_per_node(cluster3: Cluster, tmp_path: Path) -> None:
    src = write_inputs(tmp_path)
    digest = sha(DATA)
    # 16 tasks from one tasks file, and 4 submitted at the same time by separate commands.
    lines = [f'1024 1 1024 true "" "data.txt" "cat data.txt" f{i}' for i in range(16)]
    (src / "tasks.txt").write_text("\n".join(lines) + "\n")
    r = cluster3.sh(
        f"cd {shlex.quote(str(src))}\n"
        "leoronic_add_tasks_from_file tasks.txt > ids.txt\n"
        "for i in 16 17 18 19; do\n"
        '  leoronic_add_task 1024 1 1024 true "" "data.txt" "cat data.txt" f$i >> ids.txt &\n'
        "done\nwait\ncat ids.txt"
    )
    assert r.rc == 0 and sorted(r.out.split()) == sorted(f"f{i}" for i in range(20)), r
    ids = [f"f{i}" for i in range(20)]
    wait_ok(cluster3, *ids)
    assert all(result_out(cluster3, t) == DATA.decode() for t in ids)

    assert len(holders(cluster3, digest)) >= 2  # the receiving node and one more
    for node in cluster3.nodes:
        entries = store_entries(node)
        assert entries in ([], [stored(node, digest)]), (node.name, entries)
        assert os.listdir(os.path.join(node.home, "store", "tmp")) == [], node.name


#: Runs a command and prints, last on stderr, the largest peak memory of its descendants.
PEAK_OF = ("import resource, subprocess, sys\n"
           "rc = subprocess.call(sys.argv[1:])\n"
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, file=sys.stderr)\n"
           "sys.exit(rc)")


def test_a_huge_file_is_uploaded_and_copied_in_parts(make_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = make_cluster(2)
    src = tmp_path / "src"
    src.mkdir()
    size = 200 * 2**20
    digest = hashlib.sha256()
    with open(src / "big.bin", "wb") as f:
        for _ in range(size // 2**20):
            block = os.urandom(2**20)
            digest.update(block)
            f.write(block)
    before = {n.name: peak_rss(n.proc.pid) for n in cluster.nodes if n.proc is not None}

    # Submitted through n1 (which stores it and copies it to n2), with a task no node may run.
    r = cluster.sh(f"cd {shlex.quote(str(src))}\n"
                   f"python3 -c {shlex.quote(PEAK_OF)} bash \"$_leoronic_here/leoronic\" add-task -- "
                   "1024 1 1024 true "
                   "'worker:tag nowhere' big.bin 'sha256sum big.bin' holder",
                   timeout=120, LEORONIC_MAX_FILE_BYTES=str(300 * 2**20))
    assert r.rc == 0 and r.out == "holder\n", r
    have = wait_for(lambda: len(holders(cluster, digest.hexdigest())) == 2, 60, "two stored copies")
    assert have
    for node in cluster.nodes:
        with open(stored(node, digest.hexdigest()), "rb") as f:
            assert hashlib.file_digest(f, "sha256").hexdigest() == digest.hexdigest(), node.name

    # Sent and written in parts: before, the CLI read it whole and pickled it, and each node
    # held it whole while storing it (and n1 again while copying it): 400 MB more, or worse.
    cli_peak = int(r.err.split()[-1])
    assert cli_peak < 100 * 2**20, f"the CLI's peak memory was {cli_peak / 2**20:.0f} MiB"
    for node in cluster.nodes:
        assert node.proc is not None
        grew = peak_rss(node.proc.pid) - before[node.name]
        assert grew < 50 * 2**20, f"{node.name}'s peak memory grew by {grew / 2**20:.0f} MiB"

    # And the task that uses it runs where it may, on the copy it has there.
    tag(cluster, cluster.nodes[1], "nowhere")
    wait_ok(cluster, "holder")
    assert result_out(cluster, "holder") == f"{digest.hexdigest()}  lf_{digest.hexdigest()[:12]}_big.bin\n"


def test_tasks_starting_together_share_one_fetched_copy(cluster3: Cluster, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(32 << 20)  # big enough that fetching it outlasts the second claim
    (src / "big.bin").write_bytes(data)
    digest = sha(data)
    submit(cluster3, "true", "worker:tag nowhere", "big.bin", "holder", cwd=src)
    have = wait_for(lambda: len(holders(cluster3, digest)) >= 2 and holders(cluster3, digest),
                    20, "two stored copies")
    lacking = next(n for n in cluster3.nodes if n not in have)
    tag(cluster3, lacking, "far")
    ids = [f"k{i}" for i in range(6)]
    (src / "tasks.txt").write_text("".join(
        f'1024 1 1024 true "worker:tag far" "big.bin" "wc -c < big.bin" {t}\n' for t in ids))
    r = cluster3.sh(f"cd {shlex.quote(str(src))}; leoronic_add_tasks_from_file tasks.txt")
    assert r.rc == 0, r
    wait_ok(cluster3, *ids)
    assert all(result_out(cluster3, t).strip() == str(len(data)) for t in ids)
    # Work dirs link the node's one stored copy instead of holding their own.
    placed = glob.glob(os.path.join(lacking.home, "work", "k*", f"lf_{digest[:12]}_big.bin"))
    assert len(placed) == len(ids)
    inode = os.stat(stored(lacking, digest)).st_ino
    assert {os.stat(p).st_ino for p in placed} == {inode}


def _upload_then_corrupt(cluster: Cluster, src: Path, everywhere: bool) -> list[NodeProc]:
    """Upload data.txt with a task no node may run, wait for both copies, corrupt the stored
    copies (all of them, or only n1's); return the nodes that hold a copy."""
    digest = sha(DATA)
    submit(cluster, "cat data.txt", "worker:tag nowhere", "data.txt", "holder", cwd=src)
    have = wait_for(lambda: len(holders(cluster, digest)) >= 2 and holders(cluster, digest),
                    20, "two stored copies")
    for node in have if everywhere else [cluster.nodes[0]]:
        corrupt(stored(node, digest))
    return have


def test_a_file_no_node_can_supply_fails_the_task_without_running_it(
        cluster3: Cluster, tmp_path: Path) -> None:
    src = write_inputs(tmp_path)
    digest = sha(DATA)
    _upload_then_corrupt(cluster3, src, everywhere=True)

    # Every stored copy fails the hash check: the task is tried, never run, and fails with a
    # reason naming the file; the nodes keep running other tasks meanwhile.
    t = submit(cluster3, "cat data.txt", "", "data.txt", "needs-data", cwd=src)
    plain = submit(cluster3, "echo still working")
    wait_ok(cluster3, plain, timeout=10)
    r = cluster3.sh(f"leoronic_wait --timeout 40 {t}", timeout=90)
    assert r.rc == 1 and "1 of 1 tasks did not succeed: needs-data" in r.err, r
    row = queue_rows(cluster3)[t]
    assert row["state"] == "failed" and "could not start" in row["line"], row
    r = cluster3.sh(f"leoronic_result {t}")
    assert r.rc == 1 and r.out == "", r
    assert "could not start" in r.err and f"file {digest[:12]}" in r.err, r
    assert EVIL.decode() not in r.err, r
    # No node kept, fetched or placed a corrupted copy.
    for node in cluster3.nodes:
        path = stored(node, digest)
        if os.path.exists(path):
            with open(path, "rb") as f:
                assert f.read() == DATA, node.name
        for placed in glob.glob(os.path.join(node.home, "work", f"{t}-a*", "*")):
            with open(placed, "rb") as f:
                assert f.read() != EVIL, placed


def test_a_corrupted_local_copy_is_replaced_before_use(cluster3: Cluster, tmp_path: Path) -> None:
    src = write_inputs(tmp_path)
    n1 = cluster3.nodes[0]
    have = _upload_then_corrupt(cluster3, src, everywhere=False)
    assert n1 in have and len(have) >= 2
    tag(cluster3, n1, "here")
    t = submit(cluster3, "cat data.txt", "worker:tag here", "data.txt", cwd=src)
    r = cluster3.sh(f"leoronic_wait --timeout 20 {t}; leoronic_result {t}", timeout=60)
    assert r.rc == 0 and r.out == DATA.decode(), r


# ----- refused at submit ----------------------------------------------------------------------


def test_unusable_files_are_refused_at_submit(cluster3: Cluster, tmp_path: Path) -> None:
    src = write_inputs(tmp_path)
    (src / "adir").mkdir()
    (src / "big.bin").write_bytes(b"x" * 11)
    (src / "fits.bin").write_bytes(b"x" * 10)
    cases = [
        ("missing.txt", {}, "necessary file 'missing.txt': no such file"),
        ("data.txt;adir", {}, "necessary file 'adir': is a directory"),
        ("big.bin", {"LEORONIC_MAX_FILE_BYTES": "10"},
         "necessary file 'big.bin': 11 bytes is over the limit of 10 bytes"),
    ]
    for files, env, message in cases:
        r = add_task(cluster3, "cat x", "", files, cwd=src, **env)
        assert r.rc == 2 and r.out == "", (files, r)
        assert r.err.count("\n") == 1 and r.err.startswith(f"leoronic: FILES: {message}"), \
            (files, r)
    # In a tasks file the error names the line too, and nothing of the file is queued.
    (src / "three.tasks").write_text('1024 1 1024 true "" data.txt "cat data.txt"\n'
                                     '1024 1 1024 true "" "" true\n'
                                     '1024 1 1024 true "" missing.txt "cat missing.txt"\n')
    r = cluster3.sh(f"cd {shlex.quote(str(src))}\nleoronic_add_tasks_from_file three.tasks")
    assert (r.rc, r.out, r.err) == (
        2, "", "leoronic: line 3: FILES: necessary file 'missing.txt': no such file\n"), r
    assert queue_rows(cluster3) == {}
    # Exactly at the limit is fine.
    t = submit(cluster3, "wc -c < fits.bin", "", "fits.bin", cwd=src, LEORONIC_MAX_FILE_BYTES="10")
    wait_ok(cluster3, t)
    assert result_out(cluster3, t).strip() == "10"
    assert list(queue_rows(cluster3)) == [t]


# ----- bringing work dirs back ----------------------------------------------------------------


def test_get_all_files_and_get_files_bring_work_dirs_back(cluster3: Cluster, tmp_path: Path) -> None:
    ids = {}
    for node in cluster3.nodes:
        tag(cluster3, node, f"on-{node.name}")
        ids[node.name] = submit(
            cluster3, 'echo "from $LEORONIC_NODE_NAME" > "out_$LEORONIC_NODE_NAME.txt"',
            f"worker:tag on-{node.name}")
    wait_ok(cluster3, *ids.values())

    dest = tmp_path / "all"
    r = cluster3.sh(f"leoronic_get_all_files {dest}")
    assert r.rc == 0 and r.err == "", r
    for name, t in ids.items():
        assert f"{name}: {dest}/{name}" in r.out, r
        assert (dest / name / f"{t}-a1" / f"out_{name}.txt").read_text() == f"from {name}\n"
        assert [p.name for p in (dest / name).glob("*/out_*.txt")] == [f"out_{name}.txt"]

    one = tmp_path / "one"
    r = cluster3.sh(f"leoronic_get_files {ids['n2']} {one}")
    assert r.rc == 0 and r.out == f"n2: {one}\n", r
    assert sorted(p.name for p in one.iterdir()) == [f"{ids['n2']}-a1"]
    assert (one / f"{ids['n2']}-a1" / "out_n2.txt").read_text() == "from n2\n"
    # A task that left nothing: its empty work dir was reused, and that is what is said.
    quiet = submit(cluster3, "true")
    wait_ok(cluster3, quiet)
    ran_on = queue_rows(cluster3)[quiet]["node"]
    r = cluster3.sh(f"leoronic_get_files {quiet} {tmp_path / 'quiet'}")
    assert r.rc == 0 and r.err == "", r
    assert r.out == f"{ran_on}: nothing: task {quiet} left its work dir empty\n", r

    cluster3.kill(cluster3.nodes[2], signal.SIGKILL)
    partial = tmp_path / "partial"
    r = cluster3.sh(f"leoronic_get_all_files {partial}", timeout=90)
    assert r.rc == 3, r
    assert re.search(r"node n3 \(127\.0\.0\.1:\d+\): not reachable", r.err), r
    assert r.err.count("\n") == 1, r  # only n3 is reported
    assert f"n1: {partial}/n1" in r.out and f"n2: {partial}/n2" in r.out, r
    assert (partial / "n1" / f"{ids['n1']}-a1" / "out_n1.txt").read_text() == "from n1\n"
    assert (partial / "n2" / f"{ids['n2']}-a1" / "out_n2.txt").read_text() == "from n2\n"
    assert not (partial / "n3").exists()
    # One task's dirs from a node that is down: said in one line, exit 3 (it said the node was
    # unknown and exited 0 when the node had left, and stopped at the first unreachable one).
    r = cluster3.sh(f"leoronic_get_files {ids['n3']} {tmp_path / 'from-n3'}", timeout=90,
                    LEORONIC_RETRY_S="2")
    assert r.rc == 3 and r.out == "" and r.err.startswith("leoronic: node n3: "), r
    assert r.err.count("\n") == 1, r
    assert not (tmp_path / "from-n3").exists(), "the DEST made for nothing was left behind"


def test_get_files_of_a_retried_task_that_left_its_work_dirs_empty(make_cluster: Any,
                                                                  tmp_path: Path) -> None:
    """`false` with one retry: both attempts ran on the one node and left their dirs empty, so
    the node reused both. get_files says there is nothing (as for a task run once), where it
    failed with the node's 'no work dir' error (each attempt now records whether its dir was
    kept; the outcome tells only of the last)."""
    cluster = make_cluster(1)
    r = cluster.cli("add-task", "--retries", "1", "--", "1024", "1", "1024", "true", "", "",
                    "false", "twice")
    assert r.rc == 0, r
    r = cluster.sh("leoronic_wait --timeout 30 twice", timeout=60)
    assert r.rc == 1, r  # it failed twice
    info = cluster.sh("leoronic_task_info twice")
    assert info.rc == 0 and "failed" in info.out and "attempt 2" in info.out, info
    r = cluster.sh(f"leoronic_get_files twice {tmp_path / 'got'}")
    assert r.rc == 0 and r.out == "n1: nothing: task twice left its work dir empty\n", r


def test_get_files_names_a_node_without_the_tasks_dir_and_copies_the_rest(make_cluster: Any,
                                                                         tmp_path: Path) -> None:
    """A task failed on one node and ran again on the other: the first node's dir is gone (as
    after the retention time). get_files copies the second node's dir, names the first in one
    line, and exits 2; it stopped at the first node's error before, copying nothing."""
    cluster = make_cluster(2)
    r = cluster.cli("add-task", "--retries", "1", "--", "1024", "1", "1024", "true", "", "",
                    'echo "$LEORONIC_ATTEMPT" > at.txt; [ "$LEORONIC_ATTEMPT" = 2 ]', "again")
    assert r.rc == 0, r
    r = cluster.sh("leoronic_wait --timeout 30 again", timeout=60)
    assert r.rc == 0, r
    dirs = {n.name: os.path.join(n.home, "work", f"again-a{a}")
            for n in cluster.nodes for a in (1, 2)
            if os.path.isdir(os.path.join(n.home, "work", f"again-a{a}"))}
    assert len(dirs) == 2, f"both attempts on one node (the retry avoids the one it failed on): {dirs}"
    first = next(name for name, d in dirs.items() if d.endswith("-a1"))
    second = next(name for name in dirs if name != first)
    shutil.rmtree(dirs[first])
    r = cluster.sh(f"leoronic_get_files again {tmp_path / 'got'}")
    assert r.rc == 2, r
    assert r.out == f"{second}: {tmp_path / 'got'}\n", r
    assert r.err.startswith(f"leoronic: node {first}: ID: no work dir of task 'again' on {first}"), r
    assert r.err.count("\n") == 1, r
    with open(tmp_path / "got" / "again-a2" / "at.txt") as f:
        assert f.read() == "2\n"
    shutil.rmtree(dirs[second])  # none left anywhere: DEST is not left behind either
    r = cluster.sh(f"leoronic_get_files again {tmp_path / 'none'}")
    assert r.rc == 2 and r.out == "" and r.err.count("\n") == 2, r
    assert not (tmp_path / "none").exists(), "the DEST made for nothing was left behind"


# ----- garbage --------------------------------------------------------------------------------


def test_deleted_and_expired_work_dirs_are_collected(make_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gc = ["--gc-every", "0.5", "--file-gc", "0", "--retention", "0"]
    cluster: Cluster = make_cluster(3, per_node_args=[gc] * 3)
    homes = {n.name: n.home for n in cluster.nodes}
    gate = tmp_path / "gate"

    def workdir_of(task_id: str) -> str:
        row = wait_for(lambda: (queue_rows(cluster).get(task_id, {}).get("state") == "running"
                                and queue_rows(cluster)[task_id]), 20, f"{task_id} to run")
        return os.path.join(homes[row["node"]], "work", f"{task_id}-a1")

    # A deleted (running) task's work dir goes.
    long = submit(cluster, f"echo partial > partial.txt; while [ ! -e {gate} ]; do sleep 0.05; done",
                  task_id="long")
    wd = workdir_of(long)
    wait_for(lambda: os.path.exists(os.path.join(wd, "partial.txt")), 20, "the task to write")
    r = cluster.sh(f"leoronic_del_task {long}")
    assert r.rc == 0 and r.out.startswith(f"{long} deleted"), r
    wait_for(lambda: not os.path.exists(wd), 20, "the deleted task's work dir to go")
    outputs = os.path.join(os.path.dirname(os.path.dirname(wd)), "outputs")
    wait_for(lambda: not [f for f in os.listdir(outputs) if f.startswith(f"{long}.")], 20,
             "the deleted task's output files to go")

    # A finished task's work dir goes after the retention (0 s); its result stays readable.
    done = submit(cluster, "echo kept > result.txt; echo finished", task_id="done")
    wait_ok(cluster, done)
    ran_on = queue_rows(cluster)[done]["node"]
    wd = os.path.join(homes[ran_on], "work", f"{done}-a1")
    wait_for(lambda: not os.path.exists(wd), 20, "the finished task's work dir to go")
    outputs = os.path.join(homes[ran_on], "outputs")
    wait_for(lambda: not [f for f in os.listdir(outputs) if f.startswith(f"{done}.")], 20,
             "the finished task's output files to go")
    assert result_out(cluster, done) == "finished\n"  # from the replicated tail
    r = cluster.sh(f"leoronic_get_files {done} {tmp_path / 'gone'}")
    assert r.rc != 0 and done in r.err, r


def test_finished_records_are_forgotten_after_forget_after(make_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """With `--forget-after 1` the cluster forgets a finished task's record (every node's copy)
    and each node then removes its work dir and outputs (the files' own retention is a week);
    a task still waiting on it by `queue:after_ok` keeps it until it has run."""
    keep = ["--gc-every", "0.5", "--forget-after", "1"]
    cluster: Cluster = make_cluster(3, per_node_args=[keep] * 3)
    homes = {n.name: n.home for n in cluster.nodes}
    gate = tmp_path / "gate"
    first = submit(cluster, "echo first", task_id="first")
    wait_ok(cluster, first)
    ran_on = queue_rows(cluster)[first]["node"]
    later = submit(cluster, f"while [ ! -e {gate} ]; do sleep 0.05; done", task_id="blocker")
    waiting = submit(cluster, "echo waited", conditions=f"queue:after_ok {first}; queue:after {later}",
                     task_id="waiting")

    gone = submit(cluster, "echo gone", task_id="gone")
    wait_ok(cluster, gone)
    gone_on = queue_rows(cluster)[gone]["node"]
    wait_for(lambda: gone not in queue_rows(cluster), 30, "the finished task to be forgotten")
    r = cluster.sh(f"leoronic_result {gone}")
    assert r.rc == 2 and r.err.strip() == f"leoronic: ID: no task '{gone}'", r
    for node in cluster.nodes:  # every node's copy forgot it
        r = cluster.sh(f"LEORONIC_NODE={node.address} leoronic_task_info {gone}")
        assert r.rc == 2 and "no task" in r.err, (node.name, r)
    outputs = os.path.join(homes[gone_on], "outputs")
    wait_for(lambda: not [f for f in os.listdir(outputs) if f.startswith(f"{gone}.")], 20,
             "the forgotten task's output files to go")
    assert not os.path.exists(os.path.join(homes[gone_on], "work", f"{gone}-a1"))

    # "first" is kept while "waiting" depends on it, then forgotten once that has run.
    assert queue_rows(cluster)[first]["state"] == "done"
    assert [f for f in os.listdir(os.path.join(homes[ran_on], "outputs")) if f.startswith("first.")]
    gate.touch()
    wait_ok(cluster, waiting)
    assert result_out(cluster, waiting) == "waited\n"
    wait_for(lambda: not {first, later, waiting} & set(queue_rows(cluster)), 30,
             "every finished task to be forgotten")
