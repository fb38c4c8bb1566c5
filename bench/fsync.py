"""What would an fsync per Raft entry cost? pysyncobj's journal never syncs; measure it.

Appends N entries of a typical size to a pysyncobj FileJournal, (a) as pysyncobj does (mmap
write, no sync) and (b) with an msync (mmap.flush) after each entry, and (c) with an os.fsync of
the journal file after each entry. Prints the median and p99 per entry in microseconds and
entries per second. Run: .venv/bin/python -m bench.fsync [--entries 2000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import statistics
import tempfile
import time

from pysyncobj.journal import FileJournal


def run(directory: str, entries: int, mode: str) -> list[float]:
    path = os.path.join(directory, f"journal-{mode}")
    journal = FileJournal(path)
    payload = b"\x00" + pickle.dumps((0, ([("heartbeat", "n1", (1, 2, 3), "")], time.time())))
    fd = os.open(path, os.O_RDWR)
    times = []
    try:
        for i in range(entries):
            t0 = time.perf_counter()
            journal.add(payload, i + 1, 1)
            if mode == "msync":
                journal.flush()
            elif mode == "fsync":
                os.fsync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        journal._destroy()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=2000)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        print(f"# {time.strftime('%Y-%m-%d')} {platform.machine()} {os.cpu_count()} cores, "
              f"python {platform.python_version()}, dir {d}")
        for mode in ("none", "msync", "fsync"):
            t = sorted(run(d, args.entries, mode))
            med, p99 = statistics.median(t) * 1e6, t[int(len(t) * 0.99)] * 1e6
            print(f"journal append, sync={mode:5}: median {med:8.1f} us, p99 {p99:8.1f} us, "
                  f"{len(t) / sum(t):9.0f} entries/s")


if __name__ == "__main__":
    main()
