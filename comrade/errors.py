"""The exception tree and the exit codes every command uses.

LeoronicError
  UsageError         bad input from the user (exit 2); nothing was queued or changed
    NotFound         what was asked for is not (or no longer) on the node asked (exit 2)
  ClusterError       the cluster could not be reached or has no quorum (exit 3)
    NotChanged       ... and the change was refused before it was proposed (exit 3)
    AuthError        the cookie was refused (exit 4)
  TaskFailed         a waited-for task failed (exit 1); carries no traceback
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_USAGE = 2
EXIT_CLUSTER = 3
EXIT_AUTH = 4


class LeoronicError(Exception):
    """Root of every error Leoronic raises on purpose. `exit_code` is what the CLI exits with."""

    exit_code = EXIT_CLUSTER


class UsageError(LeoronicError):
    """Raised for bad input: a field is malformed or impossible. The message names the field."""

    exit_code = EXIT_USAGE


class NotFound(UsageError):
    """Raised by a node asked for something it does not hold (a task's work dir removed after
    the retention time); a client asking several nodes names that one and goes on."""


class ClusterError(LeoronicError):
    """Raised when no node answers, or the cluster has no quorum to commit a change."""

    exit_code = EXIT_CLUSTER


class NotChanged(ClusterError):
    """Raised when a node refuses a change before proposing it (it is isolated): unlike a
    ClusterError after a proposal, the outcome is known, nothing was changed."""


class AuthError(ClusterError):
    """Raised when a node refuses our cookie ("authentication failed")."""

    exit_code = EXIT_AUTH


class TaskFailed(LeoronicError):
    """Raised by waiting commands when a task ended with a non-zero exit or was deleted."""

    exit_code = EXIT_TASK_FAILED


class RemoteError(LeoronicError):
    """A node answered a request with an error; `kind` is the remote error's class name."""

    def __init__(self, kind: str, message: str, exit_code: int = EXIT_CLUSTER) -> None:
        super().__init__(message)
        self.kind = kind
        self.exit_code = exit_code
