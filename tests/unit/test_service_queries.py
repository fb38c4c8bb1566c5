"""What a node answers from its copy of the queue: the dry run of a submit
(`leoronic_add_tasks_from_file` asks it before queueing anything: a task that asks for more
than any live node offers is named with the field and the largest node; necessary files count
in its storage), and where `leoronic_wait` for every task starts (`not_done`)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from comrade.model import NodeInfo, Outcome, Resources, TaskSpec
from comrade.queue import Queue
from comrade.service import Service

GiB = 1 << 30


def service(*offers: tuple[str, Resources], q: Queue | None = None) -> Service:
    q = q or Queue()
    for name, offered in offers:
        assert q.apply(("join", NodeInfo(name, "worker", f"{name}:1", f"{name}:2", offered)), 0.0).ok
    node = SimpleNamespace(isolation=SimpleNamespace(lock=threading.Lock(), shadow=None),
                           syncobj=None, lock=threading.Lock(), consumer=SimpleNamespace(queue=q),
                           name="n1")
    return Service(node)  # type: ignore[arg-type]


def task(tid: str, memory: int = GiB, cores: int = 1, storage: int = GiB,
         files: tuple[tuple[str, str, int], ...] = ()) -> TaskSpec:
    return TaskSpec(tid, memory, cores, storage, True, "", files, "true")


def test_tasks_that_fit_the_largest_node_pass_and_the_others_are_named() -> None:
    svc = service(("n1", Resources(4 * GiB, 2, 10 * GiB)), ("n2", Resources(8 * GiB, 4, 5 * GiB)))
    problems = svc.check([
        task("fits", memory=8 * GiB, cores=4, storage=10 * GiB),  # each at some node's most
        task("mem", memory=8 * GiB + 1),
        task("cores", cores=5),
        task("disk", storage=10 * GiB + 1),
        task("files", storage=10 * GiB - 10, files=(("a", "0" * 64, 6), ("b", "1" * 64, 5))),
        task("files-fit", storage=10 * GiB - 11, files=(("a", "0" * 64, 6), ("b", "1" * 64, 5))),
    ])
    assert problems == [
        (1, f"MEM: task mem asks for {8 * GiB + 1} bytes, more than any node offers "
            f"(largest: n2 with {8 * GiB} bytes)"),
        (2, "CORES: task cores asks for 5, more than any node offers (largest: n2 with 4)"),
        (3, f"STORAGE: task disk asks for {10 * GiB + 1} bytes, more than any node offers "
            f"(largest: n1 with {10 * GiB} bytes)"),
        (4, f"STORAGE: task files asks for {10 * GiB + 1} bytes, more than any node offers "
            f"(largest: n1 with {10 * GiB} bytes)"),
    ]


def test_before_any_node_is_known_nothing_is_too_big() -> None:
    assert service().check([task("huge", memory=1 << 60, cores=10**6)]) == []


def test_not_done_counts_the_tasks_done_and_lists_the_others() -> None:
    q = Queue()
    ops: list[tuple[object, ...]] = [("join", NodeInfo("a", "worker", "a:1", "a:2", Resources(GiB, 2, GiB)))]
    for tid in ("ok", "bad", "run", "wait", "gone-ok", "gone"):
        ops.append(("submit", task(tid)))
    for tid, code in (("ok", 0), ("bad", 3), ("gone-ok", 0)):
        ops += [("claim", tid, "a", 1), ("finish", tid, "a", 1, Outcome(code, 1.0, 2.0))]
    ops += [("claim", "run", "a", 1), ("delete", "gone-ok"), ("delete", "gone")]
    assert all(r.ok for r in q.apply_batch(ops, 1.0))
    done, rest = service(q=q).not_done()
    # Deleting a task that had succeeded forgot its output, not its success.
    assert done == 2
    assert rest == {"bad": ("failed", 3), "run": ("running", None), "wait": ("queued", None),
                    "gone": ("deleted", None)}
