"""Bad input to any `leoronic` command, worker or ghost is one line on stderr naming what is
wrong, and exit 2, at once: never a traceback, a hang, or a write outside where it was asked.
Each case runs the real `leoronic` program the way a user types it; none needs a cluster (the
client commands point at a port nothing listens on: reaching it would be exit 3, not 2)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.cluster import LEORONIC, free_port_pair, process_gone, wait_for

LONG = "a" * 300  # longer than a file name may be (255)


def leoronic(tmp: Path, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    cookie = tmp / "cookie"
    if not cookie.exists():
        cookie.write_text("secret\n")
    full = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "LEORONIC_RETRY_S": "0",
            "LEORONIC_NODE": "127.0.0.1:1", "LEORONIC_COOKIE": str(cookie),
            "LEORONIC_DISCOVERY": "0", **env}
    return subprocess.run(["bash", LEORONIC, *args], capture_output=True, text=True,
                          timeout=timeout, env=full)


def refused(r: subprocess.CompletedProcess[str], start: str) -> None:
    """Exit 2 with exactly one line, `leoronic: START...`, and nothing on stdout."""
    assert r.returncode == 2, r
    assert r.stdout == "", r
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"leoronic: {start}"), r
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args, start", [
    (["get-files", "t1", ""], "DEST: empty"),
    (["get-files", "t1", " "], "DEST: empty"),
    (["get-all-files", ""], "DEST: empty"),
    (["get-files", "t1", "/proc/1/x"], "DEST: cannot make '/proc/1/x'"),
    (["get-all-files", "/proc/1/x"], "DEST: cannot make '/proc/1/x'"),
    (["get-all-files", LONG], f"DEST: cannot make '{LONG}': File name too long"),
    (["wait", "--timeout", "nan"], "Invalid value for '--timeout': 'nan' is not a number of seconds"),
    (["wait", "--timeout", "inf"], "Invalid value for '--timeout': 'inf' is not a number of seconds"),
    (["wait", "--timeout", "1e400"], "Invalid value for '--timeout': '1e400' is not a number of seconds"),
    (["wait", "--timeout", "２"], "Invalid value for '--timeout': '２' is not a number of seconds"),
    (["wait", "--timeout", "1_000"], "Invalid value for '--timeout': '1_000' is not a number of seconds"),
    (["drain", "--wait", "--timeout", "٢"], "Invalid value for '--timeout': '٢' is not a number of seconds"),
    (["wait", "--timeout", "-1"], "--timeout: -1 is not a number of seconds >= 0"),
    (["add-tasks-from-file", "/dev/zero"], "FILE: /dev/zero is not a regular file or a pipe"),
    (["add-task", "--retries", "1001", "--", "1", "1", "1", "true", "", "", "true"],
     "--retries: must be 0 to 1000, got 1001"),
    (["add-task", "--", "1", "1", "1", "true", "", "", "true", "-x"], "ID: task id '-x' is not valid"),
    (["add-task", "--", "1", "1", "1", "true", "", "", "true", ".."], "ID: task id '..' is not valid"),
    (["add-task", "--", "1", "1", "1", "true", "", "", "true", "a\nb"], "ID: task id 'a\\nb' is not"),
    (["add-task", "--", "１", "1", "1", "true", "", "", "true"], "MEM: '１' is not a number of bytes"),
    (["add-task", "--retries", "２", "--", "1", "1", "1", "true", "", "", "true"],
     "Invalid value for '--retries': '２' is not a whole number"),
    (["add-task", "--", "1", "1", "1", "true", "worker:tag a\x01", "", "true"],
     "CONDITIONS: must not contain control characters (found '\\x01')"),
    (["add-tag", "gpu\x1b[2J"], "TAG: tag 'gpu\\x1b[2J' is not valid: must not contain control"),
    (["add-tag", "a b"], "TAG: tag 'a b' is not valid: must not contain spaces"),
    (["add-tag", ""], "TAG: empty tag"),
    (["add-tag", "--node", "", "gpu"], "--node: empty; give a node name"),
    (["add-task", "--time-limit", "", "--", "1", "1", "1", "true", "", "", "true"],
     "--time-limit: '' is not a duration"),
    (["add-task", "--priority", "", "--", "1", "1", "1", "true", "", "", "true"],
     "--priority: '' is not a whole number"),
    (["drain", "--node", " "], "--node: empty; give a node name"),
    (["resume", "--node", ""], "--node: empty; give a node name"),
    (["get-queue", "--node", ""], "--node: empty; give a node name"),
])
def test_bad_client_input_is_one_line_and_exit_2_before_any_cluster(
        tmp_path: Path, args: list[str], start: str) -> None:
    refused(leoronic(tmp_path, *args), start)


@pytest.mark.parametrize("env, start", [
    ({"LEORONIC_RETRY_S": "abc"}, "LEORONIC_RETRY_S: 'abc' is not a number of seconds >= 0"),
    ({"LEORONIC_RETRY_S": "nan"}, "LEORONIC_RETRY_S: 'nan' is not a number of seconds >= 0"),
    ({"LEORONIC_RETRY_S": "２"}, "LEORONIC_RETRY_S: '２' is not a number of seconds >= 0"),
    ({"LEORONIC_RETRY_S": "1_000"}, "LEORONIC_RETRY_S: '1_000' is not a number of seconds >= 0"),
    ({"LEORONIC_NODE": "", "LEORONIC_PORT": "x"}, "LEORONIC_PORT: 'x' is not a whole number"),
    ({"LEORONIC_NODE": "", "LEORONIC_PORT": "70000"}, "LEORONIC_PORT: '70000' is not a port number"),
    ({"LEORONIC_NODE": "nowhere"}, "LEORONIC_NODE: 'nowhere' is not HOST:PORT"),
])
def test_bad_client_settings_are_one_line_and_exit_2(tmp_path: Path, env: dict[str, str],
                                                       start: str) -> None:
    refused(leoronic(tmp_path, "get-queue", **env), start)


@pytest.mark.parametrize("env, start", [
    ({"LEORONIC_RETRIES": "x"}, "LEORONIC_RETRIES: 'x' is not a whole number"),
    ({"LEORONIC_HOLD": "2"}, "LEORONIC_HOLD: '2' is not a valid boolean (give 1 or 0, true or "
                             "false, yes or no, on or off)"),
])
def test_bad_task_options_set_by_variables_are_named_by_them(tmp_path: Path, env: dict[str, str],
                                                             start: str) -> None:
    refused(leoronic(tmp_path, "add-task", "--", "1", "1", "1", "true", "", "", "true", **env),
            start)


def test_a_folder_given_as_tasks_file_is_refused_naming_file(tmp_path: Path) -> None:
    refused(leoronic(tmp_path, "add-tasks-from-file", str(tmp_path)),
            f"FILE: cannot read {tmp_path}: Is a directory")


def test_a_tasks_file_that_is_not_utf8_names_the_file_and_line(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.txt"
    tasks.write_bytes(b'1 1 1 true "" "" true\n\n1 1 1 true "" "" "echo \xff"\n')
    refused(leoronic(tmp_path, "add-tasks-from-file", str(tasks)), f"FILE: {tasks} line 3: not UTF-8")


def test_a_tasks_file_may_be_a_pipe(tmp_path: Path) -> None:
    # `add-tasks-from-file <(generate)`: a pipe is read; here its line 1 is refused as bad
    # input, which shows it was read (and nothing reached the cluster).
    r = subprocess.run(["bash", "-c", f'bash {LEORONIC} add-tasks-from-file <(echo "x 1 1 true")'],
                       capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "LEORONIC_NODE": "127.0.0.1:1"})
    refused(r, "line 1: expected 7 fields")


def test_a_huge_field_is_not_echoed_whole(tmp_path: Path) -> None:
    r = leoronic(tmp_path, "add-task", "--", "9" * 100_000 + "x", "1", "1", "true", "", "", "true")
    refused(r, "MEM: '999")
    assert len(r.stderr) < 700 and r.stderr.rstrip().endswith("more characters)"), r


@pytest.mark.parametrize("make, start", [
    (lambda tmp: str(tmp), "LEORONIC_COOKIE: {} cannot be read: Is a directory"),
    (lambda tmp: str(tmp / "no" / "cookie"), "LEORONIC_COOKIE: {} does not exist"),
    (lambda tmp: str(tmp / "empty"), "LEORONIC_COOKIE: {} is empty"),
    (lambda tmp: "/dev/zero", "LEORONIC_COOKIE: {} is not a regular file"),  # it never ends
    (lambda tmp: str(tmp / "fifo"), "LEORONIC_COOKIE: {} is not a regular file"),  # no writer
    (lambda tmp: str(tmp / "big"), "LEORONIC_COOKIE: {} is over 4096 bytes"),
])
def test_a_cookie_that_cannot_be_used_names_leoronic_cookie(tmp_path: Path, make, start) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "empty").write_text("\n")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "big").write_text("x" * 5000)
    path = make(tmp_path)
    refused(leoronic(tmp_path, "get-queue", LEORONIC_COOKIE=path), start.format(path))


def test_a_worker_refuses_a_bad_home_name_and_address(tmp_path: Path) -> None:
    port = free_port_pair()
    worker = ["--bind", "127.0.0.1", "--port", str(port)]
    (tmp_path / "file").write_text("")
    refused(leoronic(tmp_path, *worker, "--home", str(tmp_path / "file")),
            f"--home: cannot use '{tmp_path / 'file'}': Not a directory")
    refused(leoronic(tmp_path, *worker, "--home", "/proc/leoronic"), "--home: cannot use '/proc/leoronic'")
    refused(leoronic(tmp_path, *worker, "--home", ""), "--home: empty")
    refused(leoronic(tmp_path, "ghost", *worker, "--home", " "), "--home: empty")
    home = str(tmp_path / "home")
    refused(leoronic(tmp_path, *worker, "--home", home, "--name", "../../escape"),
            "--name: '../../escape' is not a node name")
    refused(leoronic(tmp_path, *worker, "--home", home, "--advertise", "a b"),
            "--advertise: 'a b' is not a host name or address")
    refused(leoronic(tmp_path, *worker, "--home", home, "--peer", "a/b:7341"),
            "--peer: 'a/b:7341' is not HOST:PORT")
    refused(leoronic(tmp_path, "--home", home, "--bind", "192.0.2.1", "--port", str(port)),
            "--bind: 192.0.2.1 is not an address of this machine")  # TEST-NET: never this box's


@pytest.mark.parametrize("busy, start", [
    (0, "--port: {} is already in use on 127.0.0.1"),
    (1, "--port (Raft uses PORT+1): {} is already in use on 127.0.0.1"),
])
def test_a_worker_whose_port_or_raft_port_is_taken_is_refused_at_once(
        tmp_path: Path, busy: int, start: str) -> None:
    port = free_port_pair()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port + busy))
        taken.listen()
        r = leoronic(tmp_path, "--home", str(tmp_path / "home"), "--bind", "127.0.0.1",
                     "--port", str(port))
    refused(r, start.format(port + busy))


@pytest.mark.parametrize("args, start", [
    (["--port", "70000"], "--port: 70000 is not a port number"),
    (["--port", "0"], "--port: 0 is not a port number"),
    (["--cores", "0"], "--cores: must be a positive number, got 0"),
    (["--cores", "-1"], "--cores: must be a positive number, got -1"),
    (["--cores", "１"], "Invalid value for '--cores': '１' is not a whole number"),
    (["--memory", "0"], "--memory: must be a positive number, got 0"),
    (["--name", "a/b"], "--name: 'a/b' is not a node name"),
    (["--advertise", "a\tb"], "--advertise: 'a\\tb' is not a host name or address"),
    (["nowhere"], "TARGET: 'nowhere' is not an integer or HOST:PORT"),
    (["--peer", "nowhere"], "--peer: 'nowhere' is not HOST:PORT"),
])
def test_a_ghost_refuses_bad_options(tmp_path: Path, args: list[str], start: str) -> None:
    refused(leoronic(tmp_path, "ghost", "--home", str(tmp_path / "home"), "--bind", "127.0.0.1",
                     *args), start)


def test_a_ghost_whose_port_is_taken_is_refused_and_one_without_a_worker_exits_3(tmp_path: Path) -> None:
    port = free_port_pair()
    home = str(tmp_path / "home")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        r = leoronic(tmp_path, "ghost", "--home", home, "--bind", "127.0.0.1", "--port", str(port))
    refused(r, f"--port: {port} is already in use on 127.0.0.1")
    # Nothing answers at the worker it names: the cluster is unreachable (3), not bad input.
    r = leoronic(tmp_path, "ghost", f"127.0.0.1:{free_port_pair()}", "--home", home,
                 "--bind", "127.0.0.1", "--port", str(port))
    assert r.returncode == 3 and "no worker answered" in r.stderr.splitlines()[-1], r


def test_a_worker_joining_an_unreachable_peer_stops_at_once_on_sigterm(tmp_path: Path) -> None:
    port = free_port_pair()
    env = {**os.environ, "LEORONIC_COOKIE": str(tmp_path / "cookie"), "LEORONIC_DISCOVERY": "0"}
    (tmp_path / "cookie").write_text("secret\n")
    log = tmp_path / "node.err"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            ["bash", LEORONIC, "--home", str(tmp_path / "home"), "--bind", "127.0.0.1",
             "--port", str(port), "--peer", f"127.0.0.1:{free_port_pair()}"],
            stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        # It is asking its peer for the members (for up to 30 s) once its port answers.
        wait_for(lambda: _listening(port), 30, "the worker's port")
        asked = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: process_gone(proc.pid), 10, "the worker to stop on SIGTERM")
        assert proc.wait(5) == 0 and time.monotonic() - asked < 5, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_necessary_files_no_node_could_place_are_refused_at_submit(tmp_path: Path) -> None:
    """Both were queued, and then claimed and given back five times over about 50 s before
    failing with a Python message ('surrogates not allowed')."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "d.txt").write_text(folder)
    refused(leoronic(tmp_path, "add-task", "--no-rename", "--", "1", "1", "1", "true", "",
                     f"{tmp_path}/a/d.txt;{tmp_path}/b/d.txt", "cat d.txt"),
            f"FILES: necessary files '{tmp_path}/a/d.txt' and '{tmp_path}/b/d.txt' would both be "
            "placed as 'd.txt'; turn renaming on or rename one")
    odd = os.path.join(os.fsencode(tmp_path), b"caf\xe9.txt")
    with open(odd, "wb") as f:
        f.write(b"x")
    name = os.fsdecode(odd)
    refused(leoronic(tmp_path, "add-task", "--", "1", "1", "1", "true", "", name, "cat x"),
            f"FILES: necessary file {name!r}: its name is not UTF-8 text; rename it".replace(
                "\udce9", "\\udce9"))


def test_a_home_of_another_cluster_is_refused_until_its_mark_is_removed(tmp_path: Path) -> None:
    """A home remembers its cluster's cookie (by fingerprint): started with another cookie, the
    worker would rejoin the old cluster's members and could run the old queue's tasks."""
    port = free_port_pair()
    home = tmp_path / "home"
    args = ["--bind", "127.0.0.1", "--port", str(port), "--home", str(home)]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LEORONIC_DISCOVERY": "0",
           "LEORONIC_COOKIE": str(tmp_path / "cookie")}
    (tmp_path / "cookie").write_text("first secret\n")
    worker = subprocess.Popen(["bash", LEORONIC, *args], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: (home / "raft" / "cluster").exists(), 30, "the home's cluster mark")
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    (tmp_path / "cookie").write_text("another secret\n")
    r = leoronic(tmp_path, *args)
    refused(r, f"--home: {home} holds the replicated state of another cluster (made with another "
               f"cookie): start it with that cluster's cookie, or with a fresh --home; if this "
               f"cluster's cookie was changed on purpose, delete {home}/raft/cluster")
    assert (home / "raft" / "cluster").exists()
