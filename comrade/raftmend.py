"""Mends for pysyncobj (0.3.17, the latest release) transport costs that grow with message size.

Measured with tasks that print 64 KiB to stdout and to stderr (text) on a 3-worker loopback
cluster, the leader's pysyncobj thread spent about 8 ms per task, and with random output far
more, because of how `TcpConnection` handles a message:

- Its write and read buffers are immutable `bytes`: every message appended copies the whole
  backlog, and so does every partial socket write and every message parsed off the front.
  With a few large messages queued that is quadratic (without compression, 60% of the
  leader's thread went to these copies). They become `bytearray`s, which append and drop
  from the front in amortized constant time.
- Every message is compressed with zlib level 3, half the leader's thread with the copies
  fixed. Level 1 compresses text output nearly as well (44.8 against 43.8 KB for 122 KB) in
  less than half the time; the receiving side reads any level.
- zlib's defaults set up about 256 KiB of state for every message: compressing a 200-byte
  one, as most Raft messages of short tasks are, took about 40 us, four times what encrypting
  it takes. Messages up to 4 KiB now get a 4 KiB window and a smaller hash table: about 7 us
  and, for such messages, the same bytes out. The window is in the stream's header, so every
  zlib reader (pysyncobj's unmended one too) inflates them. Messages up to RAW_MAX bytes
  (acknowledgements and heartbeats, seven in ten) now go uncompressed: the receiver tells a
  pickle from a zlib stream by its first byte.
- pysyncobj pickles with protocol 2, which stores bytes as Latin-1 text encoded in UTF-8: each
  byte of 128 or more takes two, and the command is pickled again inside the message, so
  random output grew about 2.5 times on the wire and in the journal. Protocol 5, which
  stores bytes as they are, is read by every Python that runs Leoronic (3.11 or newer), and
  `pickle.loads` recognizes either, so old journals and snapshots still load.
- Every message was sealed with Fernet, and a received one was decoded and authenticated
  twice: once to read its time (`extract_timestamp`, to refuse one older than the previous),
  then again by `decrypt`. Messages are now sealed with AES-GCM-SIV (`comrade.sealing`),
  and the time is read from the token `decrypt` verified.
- The leader sends entries ahead of the acknowledgements (it advances a follower's next index
  as it sends), but each acknowledgement set the next index back to just after the entry it
  acknowledged, so the following send repeated every entry still in flight, and the follower
  truncated its log and appended them again. With 2 x 64 KiB tasks the leader compressed
  935 KB per task instead of about 260 KB. An acknowledgement now never moves the next index
  back; a rejection still does (pysyncobj's `reset`), as Raft prescribes.
- A message bigger than the socket's send buffer waited for the connection's next send (the
  leader's heartbeat, every 100 ms): pysyncobj asks its poller for "writable" events only
  while connecting or after one found data left over. A send that leaves bytes behind now
  subscribes the connection to them: a task with 2 x 64 KiB of random output went from about
  170 ms to being final on every node to about 55 ms.
- A cluster of one node committed each entry only on its next tick, up to 50 ms later: the
  leader appends what was proposed at the end of a tick, then sleeps in its poller until a
  message or the tick period wakes it, and with no followers no acknowledgement comes. A
  newcomer's one-node cluster took about 50 ms to accept a task and 150 ms to run `true`
  (three nodes: 1 and 7 ms). After appending with no other node, the leader now wakes its
  own poller, so the next tick commits at once.

- Log compaction rewrote the journal in place: it marked it empty, then appended the entries
  it keeps one by one. A SIGKILL in between left a journal without the entries after the
  snapshot, some of them acknowledged to the leader as stored (with three workers, losing
  one more copy of such an entry loses a committed entry). The kept entries are now written
  to a new file, fsync'd, and renamed over the journal: a kill leaves the old journal or the
  new one, each whole.

- The journal was never synced: a power cut of a majority could lose entries already
  committed. Each appended entry is now synced before pysyncobj goes on (and so before it
  acknowledges the entry to the leader or counts it towards a commit): the record is
  written and synced first, and only then is the header's end marker that points past it
  changed and synced, so a cut at any point leaves the entry out, never a marker pointing
  at bytes not on disk. The sync is an `fdatasync` of the mapped file, not `mmap.flush`
  (msync), which holds the GIL while the disk works: on a slow disk every other thread of
  the node (the RPC server, the executor, the reaper) would stop for each entry. The term
  and vote, which pysyncobj writes to a new file renamed into place, are fsync'd before the
  rename.

- The journal is a memory-mapped file that pysyncobj grows with `ftruncate`, leaving holes: a
  write into a hole of a full filesystem raised SIGBUS and killed the worker with nothing
  logged (a task that filled $LEORONIC_HOME's disk did it). Every range is now allocated
  (`posix_fallocate`) before it is written, so a full disk is an `OSError` at that point,
  and about `JOURNAL_RESERVE` bytes beyond the journal's end are kept allocated while there
  is room: a node whose disk a task fills goes on journaling (and so learns that the task
  was deleted, and removes its files) for a few thousand entries. The term and vote file
  keeps a spare allocated file to be written in place when a new one cannot be created.
  When the journal still cannot be written (`JournalUnwritable`), nothing is acknowledged
  as stored: the entry is not in the log (the in-memory one included), the message that
  carried it gets no answer (the leader sends it again later), a leader or candidate steps
  down, a term or vote that could not be stored is not taken (no vote is sent), and a
  missed commit-index save is retried. The node logs one line and stays up; the fault is
  `journal_fault()`, which stops it claiming (`Node._heartbeat`), until a write succeeds.

These rely on pysyncobj's private names; where one is missing (another version) nothing is
changed and the log says so.
"""

from __future__ import annotations

import _socket
import errno
import logging
import os
import socket
import struct
import time
import zlib
from typing import Any

import pysyncobj.pickle as syncobj_pickle
from pysyncobj import journal, syncobj, tcp_connection, utility
from pysyncobj.monotonic import monotonic
from pysyncobj.poller import POLL_EVENT_TYPE

from comrade.sealing import Sealer

log = logging.getLogger(__name__)

# pysyncobj (tcp_connection) imports its copy of win_inet_pton, whose `if os.name == "nt"`
# covers only inet_pton: on every system it replaces socket.inet_ntop with a Windows-only
# function that raises TypeError, for the whole process (psutil's net_connections and
# zeroconf's DNSAddress repr call it). The C function is still in _socket.
if os.name != "nt" and socket.inet_ntop is not _socket.inet_ntop:
    socket.inet_ntop = _socket.inet_ntop

#: zlib level of every Raft message (pysyncobj: 3).
COMPRESS_LEVEL = 1
#: Messages up to this many bytes (pickled) are compressed with a window just big enough for
#: the whole message (512 bytes to 32 KiB, the largest) and a hash table of zlib's memLevel 5:
#: zlib's defaults set up about 256 KiB of state per call, which made compressing a 200-byte
#: message cost 40 us instead of 7, and a 4.5 KB entry of 35 claims and finishes 53 us
#: instead of 15, with the same bytes out (a window bigger than the data finds nothing more).
SMALL_MESSAGE = 32768
#: Messages up to this many bytes (pickled) go uncompressed. Seven in ten Raft messages of a
#: busy cluster of short tasks are acknowledgements and heartbeats under 256 bytes, which
#: zlib cannot shrink, and compressing each still cost the busy workers about 15 us of CPU.
#: The receiver tells them apart by the first byte: a pickle's (PROTO, 0x80) against a zlib
#: stream's (its low 4 bits are 8, deflate).
RAW_MAX = 2048
_PICKLE_PROTO = 0x80
_SMALL_MEMLEVEL = 5
#: Pickle protocol of Raft commands, messages, the journal and snapshots (pysyncobj: 2).
PICKLE_PROTOCOL = 5

_P = "_TcpConnection__"  # prefix of TcpConnection's private names
_NEEDED = ("trySendBuffer", "processSend", "processRead", "processParseMessage",
           "processConnection")
_ON_MESSAGE = "_SyncObj__onMessageReceived"
_CHECK_COMMANDS = "_checkCommandsToApply"
_ALONE = ("_SyncObj__otherNodes", "_SyncObj__getCurrentLogIndex", "_SyncObj__pipeNotifier")
_NEXT_INDEX = "_SyncObj__raftNextIndex"
_SET_TERM, _TERM, _VOTE = ("_SyncObj__setCurrentTerm", "_SyncObj__raftCurrentTerm",
                           "_SyncObj__votedForNodeId")
_STATE, _LEADER = "_SyncObj__setState", "_SyncObj__raftLeader"
_EVENTS = POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.WRITE | POLL_EVENT_TYPE.ERROR
_J = "_FileJournal__"  # prefix of FileJournal's private names
_JOURNAL = ("journal", "journalFile", "currentOffset", "getDefaultHeader", "setLastRecordOffset")
_installed = False
#: Whether appended journal entries are synced (`set_sync`; a worker's --no-sync-journal).
_sync = True
#: Bytes kept allocated beyond the journal's end while the disk has room, so that a node whose
#: disk fills goes on journaling for a while (entries are mostly under 2 KiB).
JOURNAL_RESERVE = 2 * 1024 * 1024
#: After a failed attempt to allocate the reserve, the next one waits this long (seconds).
RESERVE_RETRY_S = 1.0
#: Size of the spare term-and-vote file (one block holds the pickled term, vote and index).
META_SPARE = 4096
#: Why the journal cannot be written ('' while it can), and which write failed.
_fault = ""
_fault_kind = ""


class JournalUnwritable(OSError):
    """The Raft journal or its term-and-vote file could not be written (a full disk, say):
    nothing was stored, and the node must not act as if it had been."""


def journal_fault() -> str:
    """'' while the Raft journal can be written, else why this node stops claiming."""
    return _fault


def _unwritable(kind: str, exc: OSError) -> JournalUnwritable:
    """Note that `kind` ("journal", "term and vote") could not be written, logging one line
    when that is new, and the error to raise instead of `exc`."""
    global _fault, _fault_kind
    if isinstance(exc, JournalUnwritable):
        return exc
    reason = (f"not claiming: cannot write the Raft {kind} in "
              f"{os.path.dirname(getattr(exc, 'filename', None) or '') or 'its directory'}: "
              f"{exc.strerror or exc}")
    if reason != _fault:
        log.error("%s; acknowledging no Raft entry until it can", reason)
    _fault, _fault_kind = reason, kind
    return JournalUnwritable(exc.errno, reason, getattr(exc, "filename", None))


def _writable(kind: str) -> None:
    """A write of `kind` succeeded: clear a fault that `kind` had noted."""
    global _fault, _fault_kind
    if _fault and _fault_kind == kind:
        log.warning("the Raft %s can be written again", kind)
        _fault, _fault_kind = "", ""


def mend() -> bool:
    """Install the mends (once per process); False if this pysyncobj lacks what they need."""
    global _installed
    if _installed:
        return True
    cls: Any = tcp_connection.TcpConnection
    missing = [name for name in _NEEDED if not hasattr(cls, _P + name)]
    missing += [name for name in (_ON_MESSAGE, _CHECK_COMMANDS, _ALONE[1])
                if not hasattr(syncobj.SyncObj, name)]
    missing += [_J + name for name in _JOURNAL[3:] if not hasattr(journal.FileJournal, _J + name)]
    missing += [name for name in (_SET_TERM, _STATE, "_onTick")
                if not hasattr(syncobj.SyncObj, name)]
    missing += [name for name in ("FIRST_RECORD_OFFSET", "LAST_RECORD_OFFSET_OFFSET", "ResizableFile",
                                  "MetaStorer", "dumps")
                if not hasattr(journal, name)]
    if missing or not hasattr(syncobj_pickle, "__protocol"):
        log.warning("pysyncobj internals changed (%s missing): its transport is used unmended",
                    ", ".join(missing) or "__protocol")
        return False
    setattr(syncobj_pickle, "__protocol", PICKLE_PROTOCOL)  # noqa: B010 - a module global
    syncobj.getEncryptor = utility.getEncryptor = Sealer  # every connection's: see sealing
    cls.send = _send
    setattr(cls, _P + "processSend", _process_send)
    setattr(cls, _P + "processRead", _process_read)
    setattr(cls, _P + "processParseMessage", _process_parse_message)
    setattr(syncobj.SyncObj, _ON_MESSAGE, _drop_unstored(
        _keep_next_index(getattr(syncobj.SyncObj, _ON_MESSAGE))))
    setattr(syncobj.SyncObj, _CHECK_COMMANDS,
            _commit_alone_at_once(getattr(syncobj.SyncObj, _CHECK_COMMANDS)))
    setattr(syncobj.SyncObj, _SET_TERM, _term_if_stored(getattr(syncobj.SyncObj, _SET_TERM)))
    syncobj.SyncObj._onTick = _tick_unstored(syncobj.SyncObj._onTick)
    journal.ResizableFile.write = _allocated_write
    journal.FileJournal.deleteEntriesTo = _delete_entries_to
    journal.FileJournal.add = _synced_add
    journal.FileJournal.deleteEntriesFrom = _synced_header(journal.FileJournal.deleteEntriesFrom)
    journal.FileJournal.setCurrentTerm = _meta_if_stored(journal.FileJournal.setCurrentTerm)
    journal.FileJournal.onOneSecondTimer = _retry_meta(journal.FileJournal.onOneSecondTimer)
    journal.MetaStorer.storeMeta = _store_meta
    _installed = True
    return True


def _keep_next_index(on_message: Any) -> Any:
    """Wrap SyncObj's message handler so that an acknowledgement (next_node_idx, success, no
    reset) never lowers the follower's next index, which the leader raised as it sent."""
    def handle(self: Any, node: Any, message: Any) -> None:
        if not (isinstance(message, dict) and message.get("type") == "next_node_idx"
                and message.get("success") and not message.get("reset")):
            on_message(self, node, message)
            return
        next_index = getattr(self, _NEXT_INDEX)
        before = next_index.get(node)
        on_message(self, node, message)
        if before is not None and next_index.get(node, before) < before:
            next_index[node] = before
    return handle


def _commit_alone_at_once(check_commands: Any) -> Any:
    """Wrap SyncObj's `_checkCommandsToApply` (which appends proposed commands to the leader's
    log at the end of a tick): when it appended something and the node has no other member,
    wake the poller, so the next tick commits it now rather than after the tick period."""
    others, last_index, notifier = _ALONE

    def check(self: Any) -> None:
        before = getattr(self, last_index)()
        check_commands(self)
        if not getattr(self, others) and getattr(self, last_index)() != before:
            pipe = getattr(self, notifier, None)  # absent where pysyncobj has no pipe notifier
            if pipe is not None:
                pipe.notify()
    return check


def _step_down(self: Any) -> None:
    """A leader or candidate that could not store its log or term becomes a follower without
    a leader, as pysyncobj's own `leaderFallbackTimeout` does: the others elect a leader that
    can (this node votes for none until it can store the vote)."""
    if getattr(self, "_SyncObj__raftState", 0) != syncobj._RAFT_STATE.FOLLOWER:
        getattr(self, _STATE)(syncobj._RAFT_STATE.FOLLOWER)
        setattr(self, _LEADER, None)


def _drop_unstored(on_message: Any) -> Any:
    """Wrap SyncObj's message handler: a message whose entries, term or vote could not be
    stored gets no answer (the leader sends the entries again later; a candidate gets no
    vote), where pysyncobj's tick would fail with a traceback."""
    def handle(self: Any, node: Any, message: Any) -> None:
        try:
            on_message(self, node, message)
        except JournalUnwritable:
            _step_down(self)
    return handle


def _tick_unstored(on_tick: Any) -> Any:
    """Wrap SyncObj._onTick: when the leader cannot append to its log (or a candidate store its
    new term), step down and wait as pysyncobj does after a failed tick, without its
    traceback every tick."""
    def tick(self: Any, timeToWait: float = 0.0) -> None:  # noqa: N803 - pysyncobj's name
        try:
            on_tick(self, timeToWait)
        except JournalUnwritable:
            _step_down(self)
            time.sleep(timeToWait)
    return tick


def _term_if_stored(set_current_term: Any) -> Any:
    """Wrap SyncObj.__setCurrentTerm: a term and vote that could not be stored are not taken
    (pysyncobj sets them in memory first, so a node that failed to store its vote would act
    on a vote a restart forgets)."""
    def set_term(self: Any, term: int, voted_for: Any) -> None:
        before = getattr(self, _TERM), getattr(self, _VOTE)
        try:
            set_current_term(self, term, voted_for)
        except JournalUnwritable:
            setattr(self, _TERM, before[0])
            setattr(self, _VOTE, before[1])
            raise
    return set_term


def _meta_if_stored(set_current_term: Any) -> Any:
    """Wrap FileJournal.setCurrentTerm: its in-memory copy is left as it was when the term and
    vote could not be stored (a later commit-index save must not store them)."""
    def set_term(self: Any, term: int, voted_for: Any) -> None:
        meta = getattr(self, _J + "meta")
        before = dict(meta)
        try:
            set_current_term(self, term, voted_for)
        except JournalUnwritable:
            meta.clear()
            meta.update(before)
            raise
    return set_term


def _retry_meta(one_second: Any) -> Any:
    """Wrap FileJournal.onOneSecondTimer (which saves the commit index when it changed): a save
    that could not be written is tried again the next second. The saved commit index only
    spares a restarted node some catching up; the entries are in the journal."""
    def each_second(self: Any) -> None:
        try:
            one_second(self)
        except JournalUnwritable:
            pass
    return each_second


def _allocate(f: Any, fd: int, start: int, end: int) -> None:
    """posix_fallocate [start, end) of `f`'s file, ENOSPC and all as an OSError."""
    try:
        os.posix_fallocate(fd, start, end - start)
    except OSError as exc:
        exc.filename = f._ResizableFile__fileName
        raise


def _allocated_write(self: Any, offset: int, values: bytes) -> None:
    """ResizableFile.write with every byte written into the mapping allocated first, and a
    best-effort reserve of JOURNAL_RESERVE bytes beyond: pysyncobj grows the file with
    `ftruncate` (mmap.resize), which leaves a hole, and a write into a hole of a full
    filesystem raises SIGBUS, which kills the process. The mapping grows to the file's size
    and never shrinks it (a resize truncates to its size, which would drop the reserve)."""
    end = offset + len(values)
    allocated = getattr(self, "_leoronic_allocated", 0)  # [0, allocated) has no hole
    fd = self._ResizableFile__f.fileno()
    try:
        if end > allocated:
            _allocate(self, fd, allocated, end)  # the first time: any hole of an old journal
            allocated = end
            self._leoronic_allocated = allocated
        if (end + JOURNAL_RESERVE // 2 > allocated
                and time.monotonic() >= getattr(self, "_leoronic_retry", 0.0)):
            try:
                _allocate(self, fd, allocated, end + JOURNAL_RESERVE)
                self._leoronic_allocated = end + JOURNAL_RESERVE
            except OSError:
                self._leoronic_retry = time.monotonic() + RESERVE_RETRY_S
    except OSError as exc:
        raise _unwritable("journal", exc) from exc
    mm = self._ResizableFile__mm
    if end > len(mm):  # the mapping's length (mm.size() is the file's, with the reserve)
        mm.resize(max(os.fstat(fd).st_size, end))
    mm[offset:end] = values


def _record(command: Any, idx: int, term: int) -> bytes:
    """One journal record as pysyncobj frames it: size, index, term, command, size."""
    data = struct.pack("<QQ", idx, term) + syncobj_pickle.to_bytes(command)
    size = struct.pack("<I", len(data))
    return size + data + size


def _delete_entries_to(self: Any, entry_to: int) -> None:
    """FileJournal.deleteEntriesTo (log compaction: drop the entries before `entry_to`, now in
    the snapshot) as a new file renamed over the journal, so a kill leaves one of the two."""
    kept = getattr(self, _J + "journal")[entry_to:]
    old = getattr(self, _J + "journalFile")
    path = old._ResizableFile__fileName
    records = [_record(command, idx, term) for command, idx, term in kept]
    offset = journal.FIRST_RECORD_OFFSET + sum(len(r) for r in records)
    header = getattr(self, _J + "getDefaultHeader")()
    at = journal.LAST_RECORD_OFFSET_OFFSET
    header = header[:at] + struct.pack("<I", offset) + header[at + 4:]
    tmp = path + ".compacting"
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            f.writelines(records)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:  # a full disk: the journal stays as it was, without the tmp file
        _unlink(tmp)
        raise _unwritable("journal", exc) from exc
    old._destroy()  # flushes and unmaps the old journal
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)
    setattr(self, _J + "journalFile", journal.ResizableFile(path, defaultContent=header))
    setattr(self, _J + "journal", list(kept))
    setattr(self, _J + "currentOffset", offset)


def set_sync(on: bool) -> None:
    """Sync each appended journal entry to disk (the default), or leave it to the kernel."""
    global _sync
    _sync = on


def _sync_file(journal_: Any) -> None:
    """Write the journal file's dirty pages to disk. `os.fdatasync` on the mapped file's
    descriptor does what `msync` does on Linux (both write back the file's dirty page-cache
    pages, the mapping's included) but lets go of the GIL while the disk works, where
    `mmap.flush` holds it: the node's other threads (the executor starting tasks, the RPC
    server) no longer stop for every journal write."""
    os.fdatasync(journal_._FileJournal__journalFile._ResizableFile__f.fileno())


def _synced_add(self: Any, command: Any, idx: int, term: int) -> None:
    """FileJournal.add as pysyncobj writes it, with (syncing on) a sync between its two writes,
    so the header's end marker is changed only once the record it points past is on disk
    (the kernel may write a dirty page back at any time: had both been written first, the
    marker could reach the disk ahead of the record). An entry that could not be written
    (JournalUnwritable, a full disk) is not in the log afterwards, in memory either: it was
    never stored, and must not be acknowledged or counted as such."""
    record = _record(command, idx, term)
    start = getattr(self, _J + "currentOffset")
    end = start + len(record)
    set_end = getattr(self, _J + "setLastRecordOffset")
    try:
        getattr(self, _J + "journalFile").write(start, record)
        if _sync:
            _sync_file(self)  # the record first ...
        set_end(end)
        if _sync:
            _sync_file(self)  # ... then the end marker that points past it
    except OSError as exc:
        try:
            set_end(start)  # in the header's first page, which is never a hole
        except OSError:
            pass
        raise _unwritable("journal", exc) from exc
    setattr(self, _J + "currentOffset", end)
    getattr(self, _J + "journal").append((command, idx, term))
    _writable("journal")


def _synced_header(delete_from: Any) -> Any:
    """Wrap FileJournal.deleteEntriesFrom (a follower dropping entries that conflict with its
    leader's): its new end marker reaches the disk before the entries that replace them."""
    def delete_synced(self: Any, entry_from: int) -> None:
        delete_from(self, entry_from)
        if _sync:
            _sync_file(self)
    return delete_synced


def _store_meta(self: Any, meta: dict[str, Any]) -> None:
    """MetaStorer.storeMeta (the term, the vote, the commit index) as pysyncobj does it, a new
    file renamed into place, with the new file fsync'd first. When the new file cannot be
    written (a full disk) the spare file, allocated while there was room, is renamed to be
    the new one and written in place; the replaced file's block is then free for the next
    save. What still cannot be written raises JournalUnwritable, the old file in place."""
    path = self._MetaStorer__path
    tmp, spare = path + ".tmp", path + ".spare"
    data = journal.dumps(meta)
    try:
        try:
            _write_synced(tmp, data, "wb")
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not os.path.exists(spare):
                raise
            _unlink(tmp)
            os.replace(spare, tmp)
            _write_synced(tmp, data, "r+b")
        os.replace(tmp, path)
    except OSError as exc:
        _unlink(tmp)
        raise _unwritable("term and vote", exc) from exc
    _writable("term and vote")
    if not os.path.exists(spare):
        try:
            with open(spare, "wb") as f:
                os.posix_fallocate(f.fileno(), 0, META_SPARE)
        except OSError:
            _unlink(spare)  # no room now: tried again at the next save


def _write_synced(path: str, data: bytes, mode: str) -> None:
    with open(path, mode) as f:
        f.write(data)
        f.truncate()  # "r+b", the spare: its allocated block holds `data`, the rest goes
        f.flush()
        os.fsync(f.fileno())


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _buffer(conn: Any, name: str) -> bytearray:
    """The connection's read or write buffer as a bytearray (pysyncobj resets them to bytes)."""
    buf = getattr(conn, _P + name)
    if not isinstance(buf, bytearray):
        buf = bytearray(buf)
        setattr(conn, _P + name, buf)
    return buf


def compress(data: bytes) -> bytes:
    """A zlib stream of `data` that any `zlib.decompress` reads (pysyncobj's included: a
    smaller window is recorded in the stream's header)."""
    if len(data) > SMALL_MESSAGE:
        return zlib.compress(data, COMPRESS_LEVEL)
    # A window that holds all of `data` (deflate looks back the window less 262 bytes).
    wbits = min(15, max(9, (len(data) + 262).bit_length()))
    z = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, wbits, _SMALL_MEMLEVEL)
    return z.compress(data) + z.flush()


def _send(self: Any, message: Any) -> None:
    if self.sendRandKey:
        message = (self.sendRandKey, message)
    data = syncobj_pickle.dumps(message)
    if len(data) > RAW_MAX:
        data = compress(data)
    if self.encryptor:
        data = self.encryptor.encrypt_at_time(data, int(monotonic()))
    buf = _buffer(self, "writeBuffer")
    buf += struct.pack("i", len(data))
    buf += data
    getattr(self, _P + "trySendBuffer")()
    fileno = getattr(self, _P + "fileno")
    if getattr(self, _P + "writeBuffer") and fileno is not None:
        getattr(self, _P + "poller").subscribe(fileno, getattr(self, _P + "processConnection"),
                                              _EVENTS)


def _process_send(self: Any) -> bool:
    buf = _buffer(self, "writeBuffer")
    if not buf:
        return False
    try:
        res = getattr(self, _P + "socket").send(buf)
        if res < 0:
            self.disconnect()
            return False
        if res == 0:
            return False
        del buf[:res]
        return True
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
            self.disconnect()
        return False


def _process_read(self: Any) -> bool:
    sock = getattr(self, _P + "socket")
    try:
        incoming = sock.recv(getattr(self, _P + "recvBufferSize"))
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
            self.disconnect()
        return False
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
        self.disconnect()
        return False
    if not incoming:
        self.disconnect()
        return False
    _buffer(self, "readBuffer").extend(incoming)
    return True


def _process_parse_message(self: Any) -> Any:
    buf = _buffer(self, "readBuffer")
    if len(buf) < 4:
        return None
    length = struct.unpack_from("i", buf)[0]
    if len(buf) - 4 < length:
        return None
    data = bytes(buf[4 : 4 + length])
    try:
        if self.encryptor:
            token = data
            data = self.encryptor.decrypt(token)  # verifies the whole token, its time too
            timestamp = self.encryptor.token_time(token)
            if timestamp < self.recvLastTimestamp:
                raise ValueError("message older than the previous one")
            self.recvLastTimestamp = timestamp
        message = syncobj_pickle.loads(data if data[0] == _PICKLE_PROTO else zlib.decompress(data))
        if self.recvRandKey:
            rand_key, message = message
            if rand_key != self.recvRandKey:
                raise ValueError("wrong connection key")
    except Exception:  # as pysyncobj: anything wrong with a message drops the connection
        self.disconnect()
        return None
    del buf[: 4 + length]
    return message
