"""The pysyncobj transport mend: a message bigger than the socket buffer goes out as the peer
reads, without waiting for the connection's next send."""

from __future__ import annotations

import errno
import os
import pickle
import socket
import zlib
from typing import Any

import pytest
from pysyncobj import SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.poller import createPoller
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection

from comrade import raftmend
from comrade.sealing import Sealer
from tests.cluster import free_port_pair, wait_for


class Pair:
    """Two mended pysyncobj connections over a socket pair on one poller; `received` collects
    what the second one gets. Only the poller runs, as in pysyncobj's tick loop."""

    def __init__(self) -> None:
        assert raftmend.mend()
        self.poller = createPoller("auto")
        a, b = socket.socketpair()
        a.setblocking(False)  # as pysyncobj's server and connect() leave them
        b.setblocking(False)
        self.received: list[Any] = []
        self.sender = TcpConnection(self.poller, socket=a)
        self.receiver = TcpConnection(self.poller, socket=b,
                                      onMessageReceived=self.received.append)

    def poll_until(self, count: int, polls: int) -> None:
        """Run the poller until `count` messages arrived, at most `polls` times."""
        for _ in range(polls):
            if len(self.received) >= count:
                return
            self.poller.poll(0.01)

    def close(self) -> None:
        self.sender.disconnect()
        self.receiver.disconnect()


def test_a_message_bigger_than_the_socket_buffer_arrives_without_another_send() -> None:
    assert raftmend.mend()
    assert raftmend.mend()  # installing twice is harmless
    pair = Pair()
    try:
        pair.poll_until(1, 3)  # both connected and idle: the first writable events are handled
        payload = os.urandom(4 << 20)  # incompressible, far beyond the socket's buffer
        pair.sender.send({"type": "append_entries", "data": payload})
        # Nothing else is sent from here on; without the mend the message stops at what the
        # first write took.
        pair.poll_until(1, 500)
        assert len(pair.received) == 1, "the message stalled in the sender's buffer"
        assert pair.received[0]["data"] == payload
    finally:
        pair.close()


def test_messages_queued_behind_a_big_one_arrive_whole_and_in_order() -> None:
    pair = Pair()
    try:
        sent = [{"n": i, "data": os.urandom(i * 1000)} for i in range(40)]
        sent.insert(10, {"n": "big", "data": os.urandom(3 << 20)})
        for message in sent:
            pair.sender.send(message)
        pair.poll_until(len(sent), 1000)
        assert pair.received == sent
    finally:
        pair.close()


def test_small_messages_go_uncompressed_and_both_kinds_arrive(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Acknowledgements and heartbeats (most messages) gain nothing from zlib; the receiver
    # tells a pickle from a zlib stream by the first byte.
    compressed: list[int] = []
    real = raftmend.compress

    def counting(data: bytes) -> bytes:
        compressed.append(len(data))
        return real(data)

    monkeypatch.setattr(raftmend, "compress", counting)
    sealer = Sealer("the cookie")
    for encryptor in (None, sealer):
        compressed.clear()
        pair = Pair()
        try:
            for conn in (pair.sender, pair.receiver):
                conn.encryptor = encryptor
            sent = [{"type": "ack", "n": 1}, {"type": "x", "data": b"a" * (raftmend.RAW_MAX + 1)},
                    {"type": "x", "data": b""}, {"type": "x", "data": os.urandom(50_000)}]
            for message in sent:
                pair.sender.send(message)
            pair.poll_until(len(sent), 200)
            assert pair.received == sent
            assert len(compressed) == 2 and min(compressed) > raftmend.RAW_MAX, compressed
        finally:
            pair.close()


def test_sealed_messages_arrive_and_old_forged_or_foreign_ones_drop_the_connection() -> None:
    """With the cluster's password, each message is sealed (comrade.sealing) with a time that
    must not go back: the receiver reads the time only from a token `decrypt` verified. A
    replayed older token, a forged time (the token's bytes changed), a foreign key or a
    Fernet token (a worker of an older version) each drop the connection, as pysyncobj does
    with anything wrong in a message."""
    from cryptography.fernet import Fernet

    sealer = Sealer("the cookie")

    def frame(token: bytes) -> bytes:
        return len(token).to_bytes(4, "little", signed=True) + token

    def message(n: int) -> bytes:
        return zlib.compress(pickle.dumps({"type": "x", "n": n}))

    cases = {
        "older": [sealer.encrypt_at_time(message(0), 200), sealer.encrypt_at_time(message(1), 100)],
        "forged time": [sealer.encrypt_at_time(message(0), 100)],
        "foreign key": [Sealer("another cookie").encrypt_at_time(message(0), 100)],
        "fernet": [Fernet(Fernet.generate_key()).encrypt_at_time(message(0), 100)],
    }
    forged = bytearray(cases["forged time"][0])
    forged[8] ^= 0x01  # the time field's last byte: 100 -> 101
    cases["forged time"] = [bytes(forged)]
    for case, tokens in [("in order", [sealer.encrypt_at_time(message(n), 100 + n)
                                        for n in range(3)]), *cases.items()]:
        pair = Pair()
        try:
            for conn in (pair.sender, pair.receiver):
                conn.encryptor = sealer
            pair.poll_until(1, 3)  # connected and idle
            sock = pair.sender._TcpConnection__socket  # type: ignore[attr-defined]  # noqa: SLF001
            sock.sendall(b"".join(frame(t) for t in tokens))
            want = len(tokens) if case == "in order" else len(tokens) - 1
            pair.poll_until(want + 1, 50)
            assert [m["n"] for m in pair.received] == list(range(want)), (case, pair.received)
            state = pair.receiver._TcpConnection__state  # type: ignore[attr-defined]  # noqa: SLF001
            assert (state == CONNECTION_STATE.CONNECTED) == (case == "in order"), case
        finally:
            pair.close()


def test_every_connection_of_the_process_seals_with_the_cookie() -> None:
    # A worker's own connections and its utility's (the leadership hand-over as it leaves)
    # must seal alike, or the worker it hands over to drops the connection.
    from pysyncobj import syncobj, utility

    assert raftmend.mend()
    assert syncobj.getEncryptor is Sealer and utility.getEncryptor is Sealer


def test_messages_get_a_window_just_big_enough_that_any_zlib_reader_inflates() -> None:
    windows = {0: 512, 200: 512, 513: 1024, 3000: 4096, 4096: 8192, 20_000: 32768,
               raftmend.SMALL_MESSAGE: 32768, raftmend.SMALL_MESSAGE + 1: 32768, 100_000: 32768}
    for size, expected in windows.items():
        data = bytes(range(256)) * (size // 256) + os.urandom(size % 256)
        packed = raftmend.compress(data)
        assert zlib.decompress(packed) == data  # as pysyncobj's own reader does
        window = 1 << ((packed[0] >> 4) + 8)  # from the zlib header (RFC 1950)
        assert window == expected, size
        assert len(packed) < size / 10 + 300  # still compressed
        if 0 < size <= raftmend.SMALL_MESSAGE:  # as small as zlib's defaults make it
            assert len(packed) <= len(zlib.compress(data, raftmend.COMPRESS_LEVEL)) + 8


def test_an_acknowledgement_never_moves_a_followers_next_index_back() -> None:
    # pysyncobj's leader raises a follower's next index as it sends; its handler set it back to
    # just after each acknowledged entry, so every entry still in flight was sent again.
    class Leader:
        def __init__(self) -> None:
            self._SyncObj__raftNextIndex = {"f": 11}

        def on_message(self, node: str, message: dict[str, Any]) -> None:  # as pysyncobj does
            if message["reset"] or message["success"]:
                self._SyncObj__raftNextIndex[node] = message["next_node_idx"]

    handle = raftmend._keep_next_index(Leader.on_message)
    leader = Leader()
    ack = {"type": "next_node_idx", "next_node_idx": 8, "success": True, "reset": False}
    handle(leader, "f", ack)
    assert leader._SyncObj__raftNextIndex["f"] == 11  # entries 8-10 are in flight: not again
    handle(leader, "f", dict(ack, next_node_idx=14))
    assert leader._SyncObj__raftNextIndex["f"] == 14  # acknowledged past what it had
    handle(leader, "f", dict(ack, next_node_idx=5, success=False, reset=True))
    assert leader._SyncObj__raftNextIndex["f"] == 5  # a rejection still rewinds


class Counter(SyncObjConsumer):
    """A replicated counter: the state of a one-node pysyncobj."""

    def __init__(self) -> None:
        super().__init__()
        self.value = 0

    @replicated
    def add(self, n: int) -> int:
        self.value += n
        return self.value


def _destroy(node: SyncObj) -> None:
    """Stop a SyncObj and wait until its tick thread has ended: `destroy` only asks it to, and
    the thread then closes (and syncs) its journal, which a test after this one must not see."""
    node.destroy()
    wait_for(lambda: not node.tick_thread_alive(), timeout=10, what="the node's tick thread to end",
             interval=0.01)


def test_a_cluster_of_one_commits_without_waiting_for_its_next_tick(tmp_path: Any) -> None:
    # The leader appends proposals at the end of a tick and then sleeps in its poller for the
    # tick period; with no follower to acknowledge, nothing woke it before the mend. With a
    # 2 s period, a commit that waited for the tick would miss the 1 s timeout below.
    assert raftmend.mend()

    counter = Counter()
    port = free_port_pair()
    conf = SyncObjConf(autoTickPeriod=2.0, appendEntriesUseBatch=False, password="secret",
                       journalFile=str(tmp_path / "journal"), fullDumpFile=str(tmp_path / "dump"))
    node = SyncObj(f"127.0.0.1:{port}", [], conf=conf, consumers=[counter])
    try:
        # A lone node elects itself after its election timeout, on a tick.
        wait_for(node._getLeader, timeout=15, what="the node to become leader", interval=0.01)
        for expected in (1, 2, 3):
            assert counter.add(1, sync=True, timeout=1.0) == expected
    finally:
        _destroy(node)



def _journal_entries(path: str) -> list[tuple[bytes, int, int]]:
    """The entries a fresh pysyncobj reads back from a journal file."""
    from pysyncobj.journal import FileJournal

    j = FileJournal(path)
    try:
        return [(bytes(c), i, t) for c, i, t in (j[n] for n in range(len(j)))]
    finally:
        j._destroy()


def test_log_compaction_rewrites_the_journal_whole_or_not_at_all(tmp_path: Any, monkeypatch: Any) -> None:
    from pysyncobj.journal import FileJournal

    from comrade import journal_check

    assert raftmend.mend()
    path = str(tmp_path / "journal")
    j = FileJournal(path)
    entries = [(b"\0" + pickle.dumps(("op", i, "x" * (i % 7 * 50))), i, 1 + i // 10)
               for i in range(1, 41)]  # as pysyncobj journals a regular command
    for entry in entries:
        j.add(*entry)
    j.deleteEntriesTo(25)  # what compaction keeps: the entries after the snapshot
    assert [(bytes(c), i, t) for c, i, t in (j[n] for n in range(len(j)))] == entries[25:]
    after = (b"\0" + pickle.dumps(("op", 41)), 41, 5)
    j.add(*after)  # and the journal goes on where the rewrite ended
    j._destroy()
    assert _journal_entries(path) == entries[25:] + [after]
    assert journal_check.check_journal(path) == 16
    assert not os.path.exists(path + ".compacting")

    # Killed before the rename (the rewrite is the slow part): the old journal is there whole.
    j = FileJournal(path)
    before = _journal_entries(path)

    def killed(*_: Any) -> None:
        raise KeyboardInterrupt("SIGKILL")
    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        j.deleteEntriesTo(10)
    assert _journal_entries(path) == before and len(before) == 16


def test_a_node_restarted_after_log_compactions_has_every_entry(tmp_path: Any) -> None:
    # A one-node pysyncobj compacting every few entries (snapshot, then the mended rewrite of
    # its journal), restarted from its files: the state is that of every entry applied.
    assert raftmend.mend()

    def start(counter: Counter, port: int) -> SyncObj:
        conf = SyncObjConf(password="secret", journalFile=str(tmp_path / "journal"),
                           fullDumpFile=str(tmp_path / "dump"), logCompactionMinEntries=5,
                           logCompactionMinTime=0.05)
        node = SyncObj(f"127.0.0.1:{port}", [], conf=conf, consumers=[counter])
        wait_for(node._getLeader, timeout=15, what="the node to become leader", interval=0.01)
        return node

    port = free_port_pair()
    counter = Counter()
    node = start(counter, port)
    try:
        for n in range(1, 31):
            counter.add(n, sync=True, timeout=5.0)
            if n % 10 == 0:  # let a compaction (a forked snapshot, then the rewrite) happen
                wait_for(lambda: node.getStatus()["log_len"] < 10, timeout=10,
                         what="a log compaction")
    finally:
        _destroy(node)
    again = Counter()
    node = start(again, port)
    try:
        wait_for(lambda: again.value == sum(range(1, 31)), timeout=10, what="the replayed state")
    finally:
        _destroy(node)


def test_each_journal_entry_is_synced_before_its_end_marker(tmp_path: Any, monkeypatch: Any) -> None:
    """What a power cut would test: an appended entry is written and synced (fdatasync of the
    journal file, which lets go of the GIL, unlike msync), and only then is the header's end
    marker moved past it and synced; the journal reads back the same; without
    --sync-journal, nothing is synced."""
    from pysyncobj.journal import LAST_RECORD_OFFSET_OFFSET, FileJournal

    assert raftmend.mend()
    path = str(tmp_path / "journal")
    j = FileJournal(path)
    mm = lambda: j._FileJournal__journalFile._ResizableFile__mm  # noqa: E731
    # Each sync: (the file synced, the end marker then, the bytes then up to the journal's end)
    seen: list[tuple[str, int, bytes]] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced = os.readlink(f"/proc/self/fd/{fd}")
        if synced == path:  # (only this journal's: nothing else of this process counts here)
            marker = int.from_bytes(mm()[LAST_RECORD_OFFSET_OFFSET:LAST_RECORD_OFFSET_OFFSET + 4],
                                    "little")
            seen.append((synced, marker, bytes(mm()[:j._FileJournal__currentOffset + 10000])))
        real(fd)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    try:
        big = b"\0" + pickle.dumps("x" * 5000)  # crosses a page boundary
        for idx, command in enumerate([b"\0" + pickle.dumps(1), big, b"\0" + pickle.dumps(3)], 1):
            before = j._FileJournal__currentOffset
            count = len(seen)
            j.add(command, idx, 1)
            after = j._FileJournal__currentOffset
            record = bytes(mm()[before:after])
            assert command in record
            assert [(f, m) for f, m, _ in seen[count:]] == [(path, before), (path, after)]
            # The end marker moves past the record only after the record was synced.
            assert seen[count][2][before:after] == record
        count = len(seen)
        j.deleteEntriesFrom(2)  # a follower dropping entries its leader does not have
        assert [(f, m) for f, m, _ in seen[count:]] == [(path, j._FileJournal__currentOffset)]
        assert _journal_entries(path) == [(b"\0" + pickle.dumps(1), 1, 1), (big, 2, 1)]
        raftmend.set_sync(False)
        count = len(seen)
        j.add(b"\0" + pickle.dumps(4), 2, 2)
        assert len(seen) == count  # not synced
    finally:
        raftmend.set_sync(True)
        j._destroy()


def test_the_term_and_vote_are_fsynced_before_they_replace_the_old(tmp_path: Any,
                                                                   monkeypatch: Any) -> None:
    from pysyncobj.journal import FileJournal

    assert raftmend.mend()
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        if name.startswith(str(tmp_path)):  # (this test's files only)
            synced.append(name)
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    path = str(tmp_path / "journal")
    j = FileJournal(path)
    try:
        j.setCurrentTerm(7, "127.0.0.1:7342")
        assert synced == [path + ".meta.tmp"]
    finally:
        j._destroy()
    again = FileJournal(path)
    try:
        assert (again.getCurrentTerm(), again.getVotedForNodeId()) == (7, "127.0.0.1:7342")
    finally:
        again._destroy()


def test_a_worker_started_with_no_sync_journal_leaves_its_journal_unsynced(
        tmp_path: Any, monkeypatch: Any) -> None:
    # The worker option reaches the mend: `make_syncobj(sync=...)` is how a Node starts Raft
    # (Config.sync_journal, from --sync-journal/--no-sync-journal).
    from comrade import replication

    made: list[Any] = []
    monkeypatch.setattr(replication, "SyncObj", lambda *args, **kwargs: made.append(kwargs["conf"]))
    try:
        replication.make_syncobj("127.0.0.1:1", [], None, str(tmp_path), "secret",  # type: ignore[arg-type]
                                 sync=False)
        assert raftmend._sync is False and len(made) == 1
        replication.make_syncobj("127.0.0.1:1", [], None, str(tmp_path), "secret")  # type: ignore[arg-type]
        assert raftmend._sync is True
    finally:
        raftmend.set_sync(True)


def test_socket_inet_ntop_is_the_c_one_again_after_pysyncobj_is_imported() -> None:
    """pysyncobj's win_inet_pton replaced it on Linux with a Windows-only function."""
    import socket

    import pysyncobj.tcp_connection  # noqa: F401 - the import that replaced it
    assert socket.inet_ntop(socket.AF_INET, b"\x7f\x00\x00\x01") == "127.0.0.1"
    assert socket.inet_ntop(socket.AF_INET6, b"\x00" * 15 + b"\x01") == "::1"


class _Disk:
    """os.posix_fallocate that raises ENOSPC while `full`: the disk as the journal sees it."""

    def __init__(self, monkeypatch: Any) -> None:
        self.full = False
        self.real = os.posix_fallocate
        monkeypatch.setattr(os, "posix_fallocate", self)

    def __call__(self, fd: int, offset: int, length: int) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.real(fd, offset, length)


def test_an_entry_that_cannot_be_journaled_is_not_in_the_log(tmp_path: Any, monkeypatch: Any) -> None:
    """A full disk is an error at the write, not SIGBUS; the entry is then in neither the
    journal file nor the in-memory log, the fault is noted once, and cleared by a write."""
    from pysyncobj.journal import FileJournal

    assert raftmend.mend()
    monkeypatch.setattr(raftmend, "JOURNAL_RESERVE", 0)
    disk = _Disk(monkeypatch)
    path = str(tmp_path / "journal")
    j = FileJournal(path)
    try:
        j.add(b"\0one", 1, 1)
        offset = j._FileJournal__currentOffset
        disk.full = True
        with pytest.raises(raftmend.JournalUnwritable):
            j.add(b"\0" + b"x" * 5000, 2, 1)  # past the first page: the file grows
        assert len(j) == 1 and j._FileJournal__currentOffset == offset
        assert raftmend.journal_fault().startswith("not claiming: cannot write the Raft journal")
        assert _journal_entries(path) == [(b"\0one", 1, 1)]
        disk.full = False
        j.add(b"\0two", 2, 1)
        assert raftmend.journal_fault() == ""
        assert [e[1] for e in (j[0], j[1])] == [1, 2]
    finally:
        j._destroy()
    assert _journal_entries(path) == [(b"\0one", 1, 1), (b"\0two", 2, 1)]


def test_the_journal_keeps_a_reserve_for_when_the_disk_fills(tmp_path: Any, monkeypatch: Any) -> None:
    from pysyncobj.journal import FileJournal

    assert raftmend.mend()
    monkeypatch.setattr(raftmend, "JOURNAL_RESERVE", 64 * 1024)
    disk = _Disk(monkeypatch)
    j = FileJournal(str(tmp_path / "journal"))
    try:
        j.add(b"\0first", 1, 1)
        assert os.stat(tmp_path / "journal").st_blocks * 512 >= 64 * 1024  # allocated, no hole
        disk.full = True
        idx = 2
        with pytest.raises(raftmend.JournalUnwritable):
            while idx < 1000:
                j.add(b"\0" + b"y" * 1000, idx, 1)
                idx += 1
        assert 32 < idx - 2 <= 64  # about the reserve's worth of 1 KB entries went on
        assert len(j) == idx - 1
    finally:
        j._destroy()
        disk.full = False
        raftmend._writable("journal")


def test_a_term_and_vote_that_cannot_be_stored_are_not_taken(tmp_path: Any, monkeypatch: Any) -> None:
    from pysyncobj.journal import FileJournal

    assert raftmend.mend()
    path = str(tmp_path / "journal")
    j = FileJournal(path)
    real_open = open

    def full_open(name: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if str(name).endswith((".meta.tmp", ".meta.spare")) and "w" in mode:  # no new file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(name))
        return real_open(name, mode, *args, **kwargs)
    try:
        j.setCurrentTerm(3, "a")
        assert os.path.exists(path + ".meta.spare")  # allocated while there was room
        monkeypatch.setattr("builtins.open", full_open)
        j.setCurrentTerm(4, "b")  # a new file cannot be made: the spare is written in place
        assert not os.path.exists(path + ".meta.spare")
        with pytest.raises(raftmend.JournalUnwritable):
            j.setCurrentTerm(5, "c")  # no spare left
        assert (j.getCurrentTerm(), j.getVotedForNodeId()) == (4, "b")
        assert not os.path.exists(path + ".meta.tmp")
        j.setRaftCommitIndex(9)
        j.onOneSecondTimer()  # a commit index that cannot be saved waits for the next second
        monkeypatch.setattr("builtins.open", real_open)
        j.onOneSecondTimer()
        assert raftmend.journal_fault() == ""
    finally:
        j._destroy()
    again = FileJournal(path)
    try:
        assert (again.getCurrentTerm(), again.getVotedForNodeId(), again.getRaftCommitIndex()) \
            == (4, "b", 9)
    finally:
        again._destroy()


def test_a_follower_that_cannot_journal_does_not_acknowledge(tmp_path: Any, monkeypatch: Any) -> None:
    assert raftmend.mend()
    monkeypatch.setattr(raftmend, "JOURNAL_RESERVE", 0)
    disk = _Disk(monkeypatch)
    port, other = free_port_pair(), free_port_pair()
    conf = SyncObjConf(autoTick=False, appendEntriesUseBatch=False, password="secret",
                       journalFile=str(tmp_path / "journal"), fullDumpFile=str(tmp_path / "dump"))
    node = SyncObj(f"127.0.0.1:{port}", [f"127.0.0.1:{other}"], conf=conf)
    sent: list[dict[str, Any]] = []
    node._SyncObj__transport.send = lambda to, message: sent.append(message)
    leader = next(iter(node._SyncObj__otherNodes))
    entry = (b"\0" + b"z" * 5000, 2, 1)
    append = {"type": "append_entries", "term": 1, "commit_index": 2, "prevLogIdx": 1,
              "prevLogTerm": 0, "entries": [entry]}
    try:
        disk.full = True
        node._SyncObj__onMessageReceived(leader, append)
        assert sent == [] and node._getRaftLogSize() == 1  # not stored: not acknowledged
        vote = {"type": "request_vote", "term": 2, "last_log_index": 9, "last_log_term": 1}
        meta = node._SyncObj__raftLog._FileJournal__metaStorer
        monkeypatch.setattr(meta, "storeMeta", lambda m: (_ for _ in ()).throw(
            raftmend.JournalUnwritable(errno.ENOSPC, "full")))
        node._SyncObj__onMessageReceived(leader, vote)
        assert sent == [] and node._getTerm() == 1  # no vote, the term not taken
        monkeypatch.undo()
        node._SyncObj__transport.send = lambda to, message: sent.append(message)
        node._SyncObj__onMessageReceived(leader, append)
        assert sent[-1]["success"] and sent[-1]["next_node_idx"] == 3
        assert node._getRaftLogSize() == 2
    finally:
        _destroy(node)


def test_a_leader_that_cannot_journal_steps_down_and_commits_once_it_can(
        tmp_path: Any, monkeypatch: Any) -> None:
    from pysyncobj import SyncObjException

    assert raftmend.mend()
    monkeypatch.setattr(raftmend, "JOURNAL_RESERVE", 0)
    disk = _Disk(monkeypatch)
    counter = Counter()
    conf = SyncObjConf(appendEntriesUseBatch=False, password="secret",
                       journalFile=str(tmp_path / "journal"), fullDumpFile=str(tmp_path / "dump"))
    node = SyncObj(f"127.0.0.1:{free_port_pair()}", [], conf=conf, consumers=[counter])
    try:
        wait_for(node._getLeader, timeout=15, what="the node to become leader", interval=0.01)
        assert counter.add(1, sync=True, timeout=2.0) == 1
        disk.full = True
        with pytest.raises(SyncObjException):
            counter.add(1000, sync=True, timeout=1.0)  # "a" * 1000: the file must grow
        assert raftmend.journal_fault() and counter.value == 1
        disk.full = False
        wait_for(lambda: _try_add(counter) is not None, timeout=15, what="a commit")
        assert raftmend.journal_fault() == ""
    finally:
        _destroy(node)


def _try_add(counter: Counter) -> int | None:
    from pysyncobj import SyncObjException
    try:
        return int(counter.add(1, sync=True, timeout=1.0))
    except SyncObjException:
        return None


FILL_SCRIPT = """
import errno, os, sys
from pysyncobj.journal import FileJournal
from comrade import raftmend
from comrade.sealing import Sealer
assert raftmend.mend()
raftmend.JOURNAL_RESERVE = 64 * 1024
d = sys.argv[1]
j = FileJournal(os.path.join(d, "journal"))
j.add(b"\\0first", 1, 1)
j.setCurrentTerm(1, None)
fd = os.open(os.path.join(d, "fill"), os.O_WRONLY | os.O_CREAT)
try:
    while True:
        os.write(fd, b"x" * 4096)
except OSError as e:
    assert e.errno == errno.ENOSPC
j.setCurrentTerm(2, "b")  # the spare, written in place
idx = 2
try:
    while idx < 100000:
        j.add(b"\\0" + b"y" * 1000, idx, 1)
        idx += 1
except raftmend.JournalUnwritable as e:
    print("unwritable after", idx - 2, e.errno == errno.ENOSPC, flush=True)
os.unlink(os.path.join(d, "fill"))
j.add(b"\\0again", idx, 1)
print("fault", repr(raftmend.journal_fault()), len(j))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs, which needs root")
def test_a_journal_on_a_full_tmpfs_is_an_error_not_sigbus(tmp_path: Any) -> None:
    """pysyncobj's journal on a filesystem a task filled: before the mend, the first write
    into the grown mapping killed the process with SIGBUS (exit 135, nothing logged)."""
    import subprocess
    import sys

    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mnt)], check=True)
    try:
        done = subprocess.run([sys.executable, "-c", FILL_SCRIPT, str(mnt)], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, (done.returncode, done.stderr)
        lines = done.stdout.splitlines()
        count, enospc = lines[0].split()[2:]
        assert 32 < int(count) <= 72 and enospc == "True"  # the reserve (in whole pages) went on
        assert lines[1] == f"fault '' {int(count) + 2}"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
