"""Submitting and reading back tasks through the shell functions, as a user sees them.

Covers issue #2, part 1: ids and idempotent resubmits, tasks files, the queue table, results
(streams, exit codes, large outputs, still-running), waiting, deleting, the task format, the
environment and work dir of a task.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import select
import shlex
import signal
import subprocess
import time
import uuid

import pytest

from comrade.errors import UsageError
from comrade.model import TaskSpec
from comrade.packing import PART_BYTES
from tests.cluster import UTILITIES, Cluster, Result, peak_rss, wait_for

EXIT_TASK_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FINISHED = 5

_ROW = re.compile(
    r"^(?P<id>\S+)\s+(?P<state>queued|running|done|failed|deleted)\s+(?P<node>\S*)\s+"
    r"(?P<attempt>\d+)\s+(?P<age>\d+(?:\.\d)?[smh])  (?P<command>.*)$"
)


def queue(c: Cluster, options: str = "") -> dict[str, dict[str, str]]:
    """`leoronic_get_queue [OPTIONS]` parsed: id -> row (state, node, attempt, age, command)."""
    r = c.sh(f"leoronic_get_queue {options}")
    assert r.rc == 0, r
    lines = r.out.splitlines()
    assert lines and lines[0].split() == ["ID", "STATE", "NODE", "TRY", "AGE", "COMMAND"], r
    rows: dict[str, dict[str, str]] = {}
    for line in lines[1:]:
        m = _ROW.match(line)
        assert m, f"unparsable queue row {line!r}"
        assert m["id"] not in rows, f"task {m['id']} listed twice: {r.out}"
        rows[m["id"]] = m.groupdict()
    return rows


def state_is(c: Cluster, task_id: str, state: str) -> bool:
    row = queue(c).get(task_id)
    return row is not None and row["state"] == state


def one_line_error(r: Result, code: int) -> str:
    """Assert the command failed with `code` and one `leoronic: ...` line on stderr."""
    assert r.rc == code, r
    assert r.err.startswith("leoronic: ") and r.err.count("\n") == 1, r
    return r.err


def pgrep(marker: str) -> list[str]:
    p = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return p.stdout.split()


def test_ids_resubmit_queue_table_task_format_env_and_workdirs(cluster3: Cluster) -> None:
    c = cluster3
    # task-format explains every field, with examples.
    fmt = c.sh("leoronic_task_format")
    assert fmt.rc == 0, fmt
    for name in ("MEM", "CORES", "STORAGE", "CONCURRENT", "CONDITIONS", "FILES", "COMMAND", "ID"):
        assert re.search(rf"^\s+{name}\s", fmt.out, re.M), (name, fmt.out)
    assert "Examples (" in fmt.out and "leoronic_add_task 1024 1 1024 false" in fmt.out, fmt
    for option in ("LEORONIC_RETRIES=N", "LEORONIC_TIME_LIMIT=15m", "LEORONIC_NO_RENAME=1"):
        assert re.search(rf"^\s+{option}\s", fmt.out, re.M), (option, fmt.out)

    # No id: a fresh one is printed; an explicit id is used as is.
    r = c.sh('leoronic_add_task 1024 1 1024 false "" "" "echo anon"')
    assert r.rc == 0 and r.err == "", r
    anon = r.out.strip()
    assert re.fullmatch(r"[A-Za-z0-9._-]+", anon) and r.out.count("\n") == 1, r
    r = c.sh('leoronic_add_task 1024 1 1024 false "" "" "echo first" job-1')
    assert (r.rc, r.out, r.err) == (0, "job-1\n", ""), r

    # The same task with the same id again: accepted, queued once.
    r = c.sh('leoronic_add_task 1024 1 1024 false "" "" "echo first" job-1')
    assert (r.rc, r.out) == (0, "job-1\n"), r
    rows = queue(c)
    assert set(rows) == {anon, "job-1"}, rows

    # The same id with a different command: refused, the original is untouched.
    r = c.sh('leoronic_add_task 1024 1 1024 false "" "" "echo second" job-1')
    err = one_line_error(r, EXIT_USAGE)
    assert "job-1" in err and "already used" in err, r
    assert r.out == "", r
    w = c.sh("leoronic_wait job-1")
    assert w.rc == 0, w
    assert c.sh("leoronic_result job-1").out == "first\n"

    # The queue table: id, state, node, attempt, age, command.
    rows = queue(c)
    assert set(rows) == {anon, "job-1"}, rows
    job = rows["job-1"]
    assert job["state"] == "done" and job["command"] == "echo first", job
    assert job["node"] in {n.name for n in c.nodes} and job["attempt"] == "1", job
    assert re.fullmatch(r"\d+s", job["age"]), job

    # Environment and work dirs: pin both tasks to n2 with a tag so they share a node.
    t = c.sh("leoronic_add_tag pinned --node n2")
    assert t.rc == 0 and "n2" in t.out, t
    script = 'echo "$LEORONIC_TASK_ID $LEORONIC_NODE_NAME"; pwd; ls -A; echo mine > own.txt'
    r = c.sh(f"leoronic_add_task 1024 1 1024 true 'worker:tag pinned' '' '{script}' env1")
    assert r.rc == 0, r
    assert c.sh("leoronic_wait env1").rc == 0
    r = c.sh(f"leoronic_add_task 1024 1 1024 true 'worker:tag pinned' '' '{script}' env2")
    assert r.rc == 0, r
    assert c.sh("leoronic_wait env2").rc == 0
    n2 = next(n for n in c.nodes if n.name == "n2")
    work = os.path.realpath(os.path.join(n2.home, "work"))
    cwds = []
    for tid in ("env1", "env2"):
        res = c.sh(f"leoronic_result {tid}")
        assert res.rc == 0, res
        lines = res.out.splitlines()
        # Only the two lines: the listing of the fresh dir is empty (no own.txt of the other).
        assert len(lines) == 2, res
        assert lines[0] == f"{tid} n2", res
        cwd = os.path.realpath(lines[1])
        assert os.path.dirname(cwd) == work, (cwd, work)
        assert os.path.exists(os.path.join(cwd, "own.txt"))
        cwds.append(cwd)
    assert cwds[0] != cwds[1], cwds


def test_tasks_from_file_all_or_nothing(cluster3: Cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = cluster3
    good = tmp_path / "tasks.txt"
    good.write_text(
        "# three tasks; comments and blank lines are skipped\n"
        "\n"
        "1024 1 1024 true \"\" \"\" \"echo 'two  spaces'\" f-one\n"
        "   # an indented comment\n"
        "512M 1 1K false '' '' 'printf \"%s|\" a \"b c\"'\n"
        "\t\n"
        "1.5K 1 .5K true \"queue:after  f-one\" \"\" \"echo after; echo \\\"quoted\\\"\" f-three\n"
    )
    r = c.sh(f"leoronic_add_tasks_from_file {good}")
    assert r.rc == 0, r
    ids = r.out.split()
    assert len(ids) == 3 and ids[0] == "f-one" and ids[2] == "f-three", r
    assert set(queue(c)) == set(ids)
    w = c.sh("leoronic_wait")
    assert w.rc == 0, w
    assert c.sh("leoronic_result f-one").out == "two  spaces\n"
    assert c.sh(f"leoronic_result {ids[1]}").out == "a|b c|"
    assert c.sh("leoronic_result f-three").out == "after\nquoted\n"
    # Sizes as leoronic_nodes shows them, and an id after two spaces, were taken as meant.
    r = c.sh("leoronic_task_info --json f-three f-one")
    three, one = (json.loads(line) for line in r.out.splitlines())
    assert (three["memory"], three["storage"]) == (1536, 512), r
    assert three["result"]["start"] >= one["result"]["end"], r

    before = queue(c)
    bad = tmp_path / "bad.txt"
    bad.write_text(
        '1024 1 1024 true "" "" "echo 1" b-one\n'
        '1024 1 1024 true "" "" "echo 2" b-two\n'
        '1024 0 1024 true "" "" "echo 3" b-three\n'
        '1024 1 1024 true "" "" "echo 4" b-four\n'
    )
    r = c.sh(f"leoronic_add_tasks_from_file {bad}")
    err = one_line_error(r, EXIT_USAGE)
    assert "line 3" in err and "CORES" in err, r
    assert r.out == "", r
    assert set(queue(c)) == set(before)


def test_tasks_file_with_conflicting_id_on_line_3_queues_nothing(make_cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = make_cluster(1)
    r = c.sh('leoronic_add_task 1024 1 1024 true "" "" "echo original" taken')
    assert r.rc == 0, r
    bad = tmp_path / "bad.txt"
    bad.write_text(
        '1024 1 1024 true "" "" "echo 1" c-one\n'
        '1024 1 1024 true "" "" "echo 2" c-two\n'
        '1024 1 1024 true "" "" "echo different" taken\n'
    )
    r = c.sh(f"leoronic_add_tasks_from_file {bad}")
    assert r.rc == EXIT_USAGE and r.out == "", r
    assert set(queue(c)) == {"taken"}, "lines 1-2 were queued although line 3 was refused"
    assert "line 3: ID: task id 'taken' is already used by a different task (" in r.err, r


def test_tasks_file_impossible_line_3_names_the_line(make_cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = make_cluster(1, [["--cores", "1"]])
    bad = tmp_path / "bad.txt"
    bad.write_text(
        '1024 1 1024 true "" "" "echo 1" d-one\n'
        '1024 1 1024 true "" "" "echo 2" d-two\n'
        '1024 64 1024 true "" "" "echo 3" d-three\n'
    )
    r = c.sh(f"leoronic_add_tasks_from_file {bad}")
    err = one_line_error(r, EXIT_USAGE)
    assert "CORES" in err and "more than any node offers" in err, r
    assert queue(c) == {}, "nothing may be queued"
    assert "line 3" in err, r


def test_results_streams_exit_codes_large_output_wait_all_and_still_running(
    cluster3: Cluster,
) -> None:
    c = cluster3
    r = c.sh(
        'leoronic_add_task 1024 1 1024 true "" "" "echo fine" ok\n'
        'leoronic_add_task 1024 1 1024 true "" "" "echo out; echo err >&2; exit 7" e7\n'
        'leoronic_add_task 1024 1 1024 true "" "" "seq 1 1000000; seq 1 300000 >&2" big\n'
    )
    assert (r.rc, r.out.split()) == (0, ["ok", "e7", "big"]), r

    # No ids: waits for every task; exit 1 naming the failed one.
    w = c.sh("leoronic_wait")
    assert w.rc == EXIT_TASK_FAILED, w
    assert "1 of 3 tasks did not succeed: e7" in w.err, w
    assert {row["state"] for row in queue(c).values()} == {"done", "failed"}

    # stdout to stdout, stderr to stderr, the task's exit code.
    res = c.sh("leoronic_result e7")
    assert (res.rc, res.out, res.err) == (7, "out\n", "err\n"), res
    res = c.sh("leoronic_result ok")
    assert (res.rc, res.out, res.err) == (0, "fine\n", ""), res

    # More than 64 KiB: read in full from the node that ran it, asking another node; several
    # parts of a streamed reply (packing.PART_BYTES), stdout's and stderr's.
    expected = "".join(f"{i}\n" for i in range(1, 1000001))
    expected_err = "".join(f"{i}\n" for i in range(1, 300001))
    assert len(expected) > 6 * PART_BYTES and len(expected_err) > PART_BYTES
    ran_on = queue(c)["big"]["node"]
    other = next(n for n in c.nodes if n.name != ran_on)
    res = c.sh("leoronic_result big", node=other)
    assert res.rc == 0, res
    assert res.out == expected, f"got {len(res.out)} of {len(expected)} bytes"
    assert res.err == expected_err, f"got {len(res.err)} of {len(expected_err)} bytes"

    # A task still running: says so, exit 5.
    r = c.sh('leoronic_add_task 1024 1 1024 true "" "" "echo started; echo warming >&2; '
             'sleep 30" slow')
    assert r.rc == 0, r
    wait_for(lambda: state_is(c, "slow", "running"), 20, "slow to run")
    res = c.sh("leoronic_result slow")
    err = one_line_error(res, EXIT_NOT_FINISHED)
    assert "still running" in err and "slow" in err, res
    assert res.out == "", res
    # --partial: what it has written so far, from the node running it, then the same exit 5.
    partial = wait_for(lambda: (p := c.sh("leoronic_result --partial slow", node=other)).out
                       and p, 20, "slow's first output")
    assert (partial.rc, partial.out) == (EXIT_NOT_FINISHED, "started\n"), partial
    assert partial.err.startswith("warming\nleoronic: task slow is still running on "), partial
    assert partial.err.count("\n") == 2, partial

    # The node that ran `big` dies: what the record keeps (its last 64 KiB of each stream) is
    # shown, and the command exits 3, not the task's 0, so `result big > f && ...` stops.
    c.kill(next(n for n in c.nodes if n.name == ran_on))
    tail_bytes = 64 * 1024
    res = c.sh("leoronic_result big", node=other)
    assert res.rc == 3, res
    assert res.out == expected[-tail_bytes:], f"got {len(res.out)} bytes"
    assert res.err.startswith(expected_err[-tail_bytes:]), res
    notes = res.err[tail_bytes:].splitlines()
    assert notes[-1] == ("leoronic: task big exited 0, but only part of its output was shown "
                         "(above); `leoronic_result --partial` exits with the task's code all "
                         "the same"), res
    assert any(f"node {ran_on} cannot give it" in n and "showing the last 65536 bytes" in n
               for n in notes[:-1]), res
    res = c.sh("leoronic_result --partial big", node=other)
    assert (res.rc, res.out) == (0, expected[-tail_bytes:]), res


def test_a_huge_output_streams_through_without_the_node_holding_it(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c = make_cluster(1)
    size = 200 * 2**20
    r = c.sh(f'leoronic_add_task 1024 1 1024 true "" "" "yes leoronic | head -c {size}; '
             f'echo to-err >&2" huge')
    assert r.rc == 0, r
    w = c.sh("leoronic_wait huge", timeout=120)
    assert w.rc == 0, w
    node = c.nodes[0]
    assert node.proc is not None
    before = peak_rss(node.proc.pid)
    res = c.sh("set -o pipefail; leoronic_result huge | sha256sum", timeout=120)
    assert res.rc == 0 and res.err == "to-err\n", res
    digest = hashlib.sha256()
    line = b"leoronic\n" * (2**20 // 9)
    left = size
    while left:
        digest.update(line[:left])
        left -= min(left, len(line))
    assert res.out.split()[0] == digest.hexdigest(), res
    # Sent in parts as read: before, the node read it whole and pickled it (400 MB more).
    grew = peak_rss(node.proc.pid) - before
    assert grew < 50 * 2**20, f"the node's peak memory grew by {grew / 2**20:.0f} MiB"


def test_wait_timeout_gives_up_in_time(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c = make_cluster(1)
    r = c.sh('leoronic_add_task 1024 1 1024 true "" "" "sleep 30" slow')
    assert r.rc == 0, r
    wait_for(lambda: state_is(c, "slow", "running"), 20, "slow to run")
    started = time.monotonic()
    w = c.sh("leoronic_wait --timeout 0.5 slow")
    took = time.monotonic() - started
    err = one_line_error(w, EXIT_NOT_FINISHED)
    assert "1 of 1 tasks not finished" in err, w
    assert took < 3.0, f"--timeout 0.5 took {took:.1f} s"


class Terminal:
    """A command (utilities sourced) run with a terminal as stdin, stdout and stderr."""

    def __init__(self, c: Cluster, script: str) -> None:
        self.leader, follower = pty.openpty()
        self.proc = subprocess.Popen(["bash", "-c", f"source {UTILITIES}\n{script}"],
                                     stdin=follower, stdout=follower, stderr=follower,
                                     env=c.env(), start_new_session=True)
        os.close(follower)
        self.seen = b""  # what it wrote there so far

    def shown(self, text: bytes) -> bool:
        """Whether what the terminal got so far (read now, without waiting) holds `text`."""
        while True:
            ready, _, _ = select.select([self.leader], [], [], 0.1)
            if not ready:
                break
            try:
                chunk = os.read(self.leader, 4096)
            except OSError:  # the terminal closed: the command ended
                break
            if not chunk:
                break
            self.seen += chunk
        return text in self.seen

    def ended(self) -> bool:
        return self.shown(b"") and self.proc.poll() is not None

    def close(self) -> int:
        """Kill it if it still runs; its exit code."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        code = self.proc.wait()
        os.close(self.leader)
        return code


def gave_up(c: Cluster, script: str) -> bytes:
    """What a `wait --timeout` on a terminal showed; it must give up (exit 5)."""
    term = Terminal(c, script)
    try:
        wait_for(term.ended, 30, "the wait to give up")
    finally:
        assert term.close() == EXIT_NOT_FINISHED, term.seen
    return term.seen


def test_wait_shows_progress_on_a_terminal_and_nothing_in_a_pipe(make_cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = make_cluster(1)
    gate = tmp_path / "gate"
    r = c.sh('leoronic_add_task 1024 1 1024 true "" "" "true" quick\n'
             f'leoronic_add_task 1024 1 1024 true "" "" "while [ ! -e {gate} ]; do sleep 0.05; done" gated')
    assert r.rc == 0, r
    wait_for(lambda: state_is(c, "quick", "done"), 20, "quick to finish")
    term = Terminal(c, "leoronic_wait quick gated")
    try:
        wait_for(lambda: term.shown(b" 50%"), 20, "half the tasks shown finished")
        # Giving up (--timeout) on a terminal: the bar's line ends before the error's.
        seen = gave_up(c, "leoronic_wait --timeout 1 quick gated")
        assert b" 50%" in seen and re.search(
            rb"\r?\nleoronic: 1 of 2 tasks not finished after 1 s\r?\n$", seen), seen
        gate.touch()
        wait_for(lambda: term.shown(b"100%") and term.proc.poll() is not None, 20,
                 "the bar to fill")
    finally:
        code = term.close()
    assert code == 0, term.seen
    assert b"tasks finished" in term.seen, term.seen
    piped = c.sh("leoronic_wait quick gated")
    assert (piped.rc, piped.out, piped.err) == (0, "", ""), piped
    # A held task is counted in the bar's label, and named when the wait gives up.
    r = c.sh('leoronic_add_task 1024 1 1024 true "" "" "true" paused', LEORONIC_HOLD="1")
    assert r.rc == 0, r
    seen = gave_up(c, "leoronic_wait --timeout 1 quick paused")
    assert b"tasks finished (1 held)" in seen and re.search(
        rb"\r?\nleoronic: 1 of 2 tasks not finished after 1 s \(1 of them held: "
        rb"leoronic_release starts them\)\r?\n$", seen), seen


def test_del_task_queued_running_and_finished(cluster3: Cluster) -> None:
    c = cluster3
    marker = f"60.{uuid.uuid4().int % 10**9:09d}"
    r = c.sh(
        'leoronic_add_task 1024 1 1024 true "worker:tag nosuchtag" "" "echo never" stuck\n'
        f'leoronic_add_task 1024 1 1024 true "" "" "sleep {marker}; echo woke" sleeper\n'
        'leoronic_add_task 1024 1 1024 true "" "" "echo finished" fin\n'
    )
    assert (r.rc, r.out.split()) == (0, ["stuck", "sleeper", "fin"]), r
    assert c.sh("leoronic_wait fin").rc == 0
    wait_for(lambda: state_is(c, "sleeper", "running"), 20, "sleeper to run")
    # bash -c and its sleep child, both carrying the marker.
    wait_for(lambda: len(pgrep(marker)) >= 2, 20, "the sleeper's processes")
    assert queue(c)["stuck"]["state"] == "queued"

    # Queued: removed, never runs.
    d = c.sh("leoronic_del_task stuck")
    assert d.rc == 0 and d.out.startswith("stuck deleted"), d
    # Running: its whole process group is killed.
    d = c.sh("leoronic_del_task sleeper")
    assert d.rc == 0 and d.out.startswith("sleeper deleted"), d
    wait_for(lambda: not pgrep(marker), 10, f"processes with {marker} to be killed")
    # Finished: forgotten.
    d = c.sh("leoronic_del_task fin")
    assert d.rc == 0 and d.out.startswith("fin deleted"), d

    rows = queue(c)
    assert {t: rows[t]["state"] for t in ("stuck", "sleeper", "fin")} == \
        {"stuck": "deleted", "sleeper": "deleted", "fin": "deleted"}, rows
    assert rows["stuck"]["attempt"] == "0", rows
    for tid in ("stuck", "sleeper", "fin"):
        res = c.sh(f"leoronic_result {tid}")
        assert res.rc not in (0, EXIT_NOT_FINISHED) and res.out == "", res
    # `wait` counts the two deleted before they succeeded as failed, not the finished one,
    # whose output was forgotten but not its success.
    w = c.sh("leoronic_wait fin")
    assert (w.rc, w.err) == (0, ""), w
    w = c.sh("leoronic_wait")
    assert w.rc == EXIT_TASK_FAILED and "2 of 3 tasks did not succeed: sleeper, stuck" in w.err, w

    # An unknown id: bad input.
    for cmd in ("leoronic_del_task", "leoronic_result", "leoronic_wait"):
        d = c.sh(f"{cmd} nosuchtask")
        err = one_line_error(d, EXIT_USAGE)
        assert "nosuchtask" in err, (cmd, d)


def test_task_info_shows_every_attempt_and_the_result(make_cluster) -> None:  # type: ignore[no-untyped-def]
    import json

    c = make_cluster(1)
    r = c.sh("LEORONIC_RETRIES=1 leoronic_add_task 2K 1 3K true '' '' 'echo out; exit 3' info-1")
    assert (r.rc, r.out) == (0, "info-1\n"), r
    assert c.sh("leoronic_wait info-1").rc == EXIT_TASK_FAILED
    r = c.sh("leoronic_task_info info-1 --json")
    assert r.rc == 0, r
    rec = json.loads(r.out)
    assert (rec["id"], rec["state"], rec["node"], rec["attempt"]) == ("info-1", "failed", "n1", 2)
    assert (rec["memory"], rec["cores"], rec["storage"], rec["concurrent"]) == (2048, 1, 3072, True)
    assert [(a["number"], a["node"], a["exit_code"], a["why"]) for a in rec["attempts"]] == [
        (1, "n1", 3, "exit"), (2, "n1", 3, "exit")]
    for a in rec["attempts"]:
        assert rec["submitted"] <= a["claimed"] <= a["ended"]
    res = rec["result"]
    assert (res["exit_code"], res["stdout_bytes"], res["stderr_bytes"]) == (3, 4, 0)
    assert rec["attempts"][1]["claimed"] <= res["start"] <= res["end"] <= rec["attempts"][1]["ended"]

    human = c.sh("leoronic_task_info info-1")
    assert human.rc == 0, human
    assert human.out.startswith("info-1: failed on n1, attempt 2\n"), human
    assert "  needs memory 2.0K, 1 cores, disk 3.0K; concurrent;" in human.out, human
    assert re.search(r"^  attempt 2 on n1: claimed \S+ \S+, ended \S+ \S+, exit 3, exit$", human.out,
                     re.M), human
    assert "  result: exit 3, ran " in human.out and "stdout 4 B, stderr 0 B" in human.out, human

    bad = c.sh("leoronic_task_info info-1 nope")
    assert bad.rc == EXIT_USAGE, bad
    assert bad.err.strip().splitlines() == ["leoronic: ID: no task 'nope'"], bad
    # Unknown (or forgotten) ids do not hide the others: each known one is shown, once.
    bad = c.sh("leoronic_task_info --json nope info-1 gone info-1")
    assert bad.rc == EXIT_USAGE and [json.loads(line)["id"] for line in bad.out.splitlines()] == [
        "info-1"], bad
    assert bad.err == "leoronic: ID: no task 'nope' (and 1 more)\n", bad


def test_task_info_shows_the_cpu_and_peak_memory_a_task_used(make_cluster) -> None:  # type: ignore[no-untyped-def]
    import json

    c = make_cluster(1)
    burn = ("import time; b = b'x' * (256 << 20); t = time.process_time()\n"
            "while time.process_time() - t < 0.3: pass")  # far above a node's own memory
    command = "python3 -c " + shlex.quote(burn)
    r = c.sh(f"leoronic_add_task 1G 1 1024 true '' '' {shlex.quote(command)} used-1")
    assert (r.rc, r.out) == (0, "used-1\n"), r
    assert c.sh("leoronic_wait used-1").rc == 0
    res = json.loads(c.sh("leoronic_task_info --json used-1").out)["result"]
    assert res["cpu_s"] >= 0.3, res  # the python child's, which bash waited for
    assert res["max_rss_exact"] and 256 << 20 <= res["max_rss"] < 1 << 30, res
    human = c.sh("leoronic_task_info used-1")
    assert re.search(r"^  used: cpu \d+\.\d{3} s, peak memory \d+\.\dM of 1\.0G asked ", human.out,
                     re.M), human
    r = c.sh("leoronic_add_task 1G 1 1024 true '' '' true used-2 && leoronic_wait used-2")
    assert r.rc == 0, r
    human = c.sh("leoronic_task_info used-2")  # a peak within the node's own: a bound only
    assert re.search(r"^  used: cpu \d+\.\d{3} s, peak memory at most \d+\.\dM \(no more than its "
                     r"node's own\) of 1\.0G asked ", human.out, re.M), human


def test_a_task_past_its_time_limit_is_stopped_with_its_children_and_fails(  # type: ignore[no-untyped-def]
        make_cluster, tmp_path) -> None:
    import json

    c: Cluster = make_cluster(1)
    marker = f"60.{uuid.uuid4().int % 10**9:09d}"
    r = c.sh(
        f"LEORONIC_TIME_LIMIT=1s leoronic_add_task 1024 1 1024 true '' '' "
        f"'echo started; sleep {marker} & wait' slow\n"
    )
    assert (r.rc, r.out) == (0, "slow\n"), r
    r = c.sh("LEORONIC_TIME_LIMIT=1s leoronic_add_task 1024 1 1024 true '' '' "  # exits 0 on TERM
             f"'trap \"exit 0\" TERM; sleep {marker} & wait' trapped\n")
    assert (r.rc, r.out) == (0, "trapped\n"), r
    r = c.cli("add-task", "--time-limit", "1m", "1024", "1", "1024", "true", "", "", "echo quick",
              "quick")
    assert (r.rc, r.out) == (0, "quick\n"), r
    t0 = time.monotonic()
    w = c.sh("leoronic_wait slow quick trapped", timeout=60)
    assert w.rc == EXIT_TASK_FAILED and "2 of 3 tasks did not succeed: slow, trapped" in w.err, w
    assert time.monotonic() - t0 < 30, "the limit did not stop the task"
    assert not pgrep(marker), "the task's background child outlived its time limit"

    res = c.sh("leoronic_result slow")
    assert (res.rc, res.out) == (128 + 15, "started\n"), res  # SIGTERM, as a shell reports it
    assert "leoronic: task slow was stopped after its time limit of 1s" in res.err, res
    assert c.sh("leoronic_result quick").rc == 0
    res = c.sh("leoronic_result trapped")  # stopped all the same: the signal's code, not its 0
    assert res.rc == 128 + 15 and "stopped after its time limit of 1s" in res.err, res
    assert queue(c)["slow"]["command"].endswith("[exit 143]  [stopped after its time limit of 1s]")

    rec = json.loads(c.sh("leoronic_task_info slow --json").out)
    assert (rec["state"], rec["time_limit"], rec["result"]["timed_out"]) == ("failed", 1.0, True)
    assert [a["why"] for a in rec["attempts"]] == ["time limit 1s"]
    assert 1.0 <= rec["result"]["end"] - rec["result"]["start"] < 10, rec
    human = c.sh("leoronic_task_info slow quick").out
    assert "; time limit 1s\n" in human and "; time limit 1m\n" in human, human
    assert "; stopped by its time limit" in human, human

    # Bad limits: one line naming the option, exit 2, nothing queued.
    (tmp_path / "tasks.txt").write_text("1024 1 1024 true '' '' 'echo hi' from-file\n")
    for cmd, field in (
            ("LEORONIC_TIME_LIMIT=soon leoronic_add_task 1024 1 1024 true '' '' true bad1",
             "LEORONIC_TIME_LIMIT"),  # named as it was given
            ("bash $_leoronic_here/leoronic add-task --time-limit -5 1024 1 1024 true '' '' "
             "true bad2", "--time-limit"),
            (f"leoronic_add_tasks_from_file --time-limit 400d {tmp_path / 'tasks.txt'}",
             "--time-limit")):
        err = one_line_error(c.sh(cmd), EXIT_USAGE)
        assert err.startswith(f"leoronic: {field}: "), (cmd, err)
    assert set(queue(c)) == {"slow", "quick", "trapped"}


def test_get_queue_filters_by_state_and_node_and_sums_up(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c: Cluster = make_cluster(1)
    for fields in ('"" "" "true" ok', '"" "" "exit 3" bad', '"worker:tag nowhere" "" "true" stuck'):
        r = c.sh(f"leoronic_add_task 1024 1 1024 true {fields}")
        assert r.rc == 0, r
    r = c.sh("leoronic_wait ok bad")
    assert r.rc == EXIT_TASK_FAILED, r
    node = queue(c)["ok"]["node"]
    assert set(queue(c, "--state failed")) == {"bad"}
    assert set(queue(c, "--state done --state failed")) == {"ok", "bad"}
    assert set(queue(c, "--state queued")) == {"stuck"}
    assert set(queue(c, f"--node {node}")) == {"ok", "bad"}
    assert queue(c, f"--node {node} --state queued") == {}  # a node with none of them
    err = one_line_error(c.sh("leoronic_get_queue --node elsewhere"), EXIT_USAGE)
    assert err == "leoronic: --node: unknown node 'elsewhere' (leoronic_nodes lists them)\n", err
    r = c.sh("leoronic_get_queue --summary")
    assert r.rc == 0 and r.out == "queued 1  running 0  done 1  failed 1  deleted 0  total 3\n", r
    r = c.sh("leoronic_get_queue --state failed --summary")
    assert r.rc == 0 and r.out.endswith("failed 1  deleted 0  total 1\n"), r
    err = one_line_error(c.sh("leoronic_get_queue --state finished"), EXIT_USAGE)
    assert "'--state'" in err and "'finished' is not one of" in err, err


def test_a_task_submits_tasks_to_the_cluster_that_runs_it(cluster3: Cluster) -> None:
    """Inside a task LEORONIC_NODE is the address of the worker running it, so the leoronic_*
    functions work there however the worker was started (here: each on a port of its own)."""
    script = os.path.join(cluster3.root, "fan_out.sh")
    with open(script, "w") as f:
        f.write(f'echo "$LEORONIC_NODE"\nsource {UTILITIES}\n'
                'leoronic_add_task 1024 1 1024 true "" "" "echo child of $LEORONIC_TASK_ID" '
                '"$LEORONIC_TASK_ID-child"\n')
    parents = [f"parent-{i}" for i in range(3)]
    r = cluster3.sh("".join(f'leoronic_add_task 1024 1 1024 true "" "" "bash {script}" {p}\n'
                            for p in parents) + "leoronic_wait " + " ".join(parents))
    assert r.rc == 0, r
    children = [f"{p}-child" for p in parents]
    assert cluster3.sh("leoronic_wait " + " ".join(children)).rc == 0
    rows = queue(cluster3)
    address = {n.name: n.address for n in cluster3.nodes}
    for p in parents:
        out = cluster3.sh(f"leoronic_result {p}").out.splitlines()
        assert out == [address[rows[p]["node"]], f"{p}-child"], (p, rows[p], out)
        assert cluster3.sh(f"leoronic_result {p}-child").out == f"child of {p}\n"


def test_tasks_with_large_random_output_replicate_cleanly(make_cluster) -> None:  # type: ignore[no-untyped-def]
    # Each finish carries 2 x 70,000 bytes of tails that neither compress nor pickle small:
    # a Raft entry of about 200 KB. pysyncobj's piecewise sending of such an entry used to
    # fail on every follower (a truncated pickle, a traceback in the log, a 50 ms stall).
    c = make_cluster(3)
    n = 6
    lines = "".join(
        f'1024 1 1024 true "" "" "head -c 70000 /dev/urandom | tee {c.root}/big{i}.out; '
        f'head -c 70000 /dev/urandom | tee {c.root}/big{i}.err >&2" big{i}\n' for i in range(n))
    with open(os.path.join(c.root, "big.tasks"), "w") as f:
        f.write(lines)
    r = c.sh(f"leoronic_add_tasks_from_file {c.root}/big.tasks && leoronic_wait")
    assert r.rc == 0, r
    ids = " ".join(f"big{i}" for i in range(n))
    for node in c.nodes:  # every replica has the whole record, and the full output reads back
        r = c.sh(f"leoronic_wait {ids}", node=node)  # a follower may apply a moment later
        assert r.rc == 0, (node.name, r)
        for i in range(n):
            res = c.sh(f"leoronic_result big{i} > got.out 2> got.err && cmp got.out big{i}.out "
                       f"&& cmp got.err big{i}.err", node=node)
            assert res.rc == 0, (node.name, res)
        r = c.sh("leoronic_get_queue --state done", node=node)
        assert all(f"big{i} " in r.out for i in range(n)), (node.name, r)
    for node in c.nodes:
        assert "Traceback" not in node.log(), node.log()[-3000:]


@pytest.mark.parametrize("field, conditions, command, size, hint", [
    # Linux passes at most 128 KiB as one argument: such a task could never start anywhere.
    ("COMMAND", "", "echo " + "x" * (128 * 1024), 131077, "bash -c"),
    ("CONDITIONS", "queue:after fine;" * 4000, "echo after", 68000, "all_with_cmd_done"),
])
def test_a_field_longer_than_taken_is_refused_before_anything_is_queued(  # type: ignore[no-untyped-def]
        make_cluster, field: str, conditions: str, command: str, size: int, hint: str) -> None:
    c = make_cluster(1)
    with open(os.path.join(c.root, "long.tasks"), "w") as f:
        f.write('1024 1 1024 true "" "" "echo fine" fine\n')
        f.write(f'1024 1 1024 true "{conditions}" "" "{command}" long\n')
    r = c.sh(f"leoronic_add_tasks_from_file {c.root}/long.tasks")
    err = one_line_error(r, EXIT_USAGE)
    assert f"line 2: {field}: {size} bytes" in err and hint in err, r
    assert queue(c) == {}, "nothing may be queued when one line is refused"

    client = c.client()  # the service checks it too, for Python clients
    try:
        spec = TaskSpec(task_id="long2", memory=1024, cores=1, storage=1024, concurrent=True,
                        conditions=conditions, files=(), command=command)
        with pytest.raises(UsageError, match=rf"^{field}: task long2 has {size} bytes, "):
            client.submit([spec])
    finally:
        client.close()
    assert queue(c) == {}


def test_a_finished_task_leaves_no_process_behind(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Processes a task started in the background end with it: those in its process group at
    once, those in a session of their own (setsid) at the node's next sweep."""
    c = make_cluster(1)
    marker = f"61.{uuid.uuid4().int % 10**9:09d}"
    command = (f"sleep {marker} & nohup sleep {marker} >/dev/null 2>&1 & "
               f"setsid bash -c 'touch escaped; exec sleep {marker}' & "
               "while [ ! -e escaped ]; do sleep 0.01; done; echo started")
    r = c.sh(f"leoronic_add_task 1024 1 1024 true '' '' {shlex.quote(command)} bg")
    assert r.rc == 0, r
    assert c.sh("leoronic_wait --timeout 30 bg").rc == 0
    assert c.sh("leoronic_result bg").out == "started\n"
    wait_for(lambda: not pgrep(marker), 20, f"the processes with {marker} to be killed")
