"""The pure part of necessary files: the field, the names, the command rewrite.

Nothing here touches the disk or the clock.  :mod:`comrade.files` re-exports
every public name, so callers import from there.

A task's "necessary files" field is a ``;``-separated list of paths on the
submitting machine.  Each file is placed in the task's work dir under a new
name (see :func:`unique_name`) and the command is rewritten so that every
occurrence of the name exactly as written in the field becomes the new name
(see :func:`rewrite_command`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "FileError",
    "FileRef",
    "parse_files_field",
    "unique_name",
    "rename_plan",
    "rewrite_command",
]

# Longest file name most Linux file systems accept, in bytes.
_NAME_MAX = 255

# Characters that make a neighbouring match part of a longer word or path.
_WORD_CHARS = r"A-Za-z0-9_.\-/"


class FileError(ValueError):
    """A necessary file cannot be used; the one-line message names the file and the reason."""


@dataclass(frozen=True)
class FileRef:
    """What replicates in the task record for one necessary file (small, picklable).

    ``name`` is the path exactly as written in the field, ``sha256`` the
    lowercase hex digest of the content, ``size`` the content length in bytes.
    """

    name: str
    sha256: str
    size: int


def parse_files_field(field: str) -> list[str]:
    """Split a necessary-files field into names, in order.

    Segments are separated by ``;``; whitespace around each is stripped and
    empty segments are skipped, so ``""`` gives ``[]``.  Duplicates are kept
    (the caller decides what to do with them).

    Raises :class:`FileError` ("necessary file 'PATH': name must not contain
    NUL or newline") for a name containing NUL, ``\\n`` or ``\\r``.
    """
    names: list[str] = []
    for segment in field.split(";"):
        name = segment.strip()
        if not name:
            continue
        if "\0" in name or "\n" in name or "\r" in name:
            raise FileError(f"necessary file {name!r}: name must not contain NUL or newline")
        names.append(name)
    return names


def _basename(name: str) -> str:
    """The last path component of ``name``; raises :class:`FileError` when there is none."""
    base = os.path.basename(name)
    if base in ("", ".", ".."):
        raise FileError(f"necessary file {name!r}: does not name a file")
    return base


def _fit(prefix: str, base: str) -> str:
    """``prefix + base``, the stem of ``base`` (never its extension) cut to fit NAME_MAX bytes."""
    full = prefix + base
    if len(full.encode()) <= _NAME_MAX:
        return full
    stem, ext = os.path.splitext(base)
    room = _NAME_MAX - len(prefix.encode()) - len(ext.encode())
    if room <= 0:  # an absurd extension: plain cut
        return full.encode()[:_NAME_MAX].decode(errors="ignore")
    return prefix + stem.encode()[:room].decode(errors="ignore") + ext


def unique_name(ref: FileRef) -> str:
    """The name ``ref`` gets in the work dir: ``lf_<first 12 hex of sha256>_<basename>``.

    Unique per content and keeps the extension.  A basename too long for the
    file system (255 bytes with the prefix) has its stem shortened.  Raises
    :class:`FileError` when ``ref.name`` has no basename (``""``, ``"."``,
    ``"dir/"``).
    """
    return _fit(f"lf_{ref.sha256[:12]}_", _basename(ref.name))


def rename_plan(refs: Sequence[FileRef], rename: bool = True) -> dict[str, str]:
    """Map each name as written in the field to its name in the work dir.

    With ``rename`` the new name is :func:`unique_name`; without it, the
    basename (original names kept).  Several refs may land on the same name
    only when their contents are equal.

    Raises :class:`FileError`: "necessary files 'a/x' and 'b/x' would both be
    placed as 'x'; turn renaming on or rename one" when two different contents
    would share a placed name, or when a name has no basename.
    """
    plan: dict[str, str] = {}
    placed: dict[str, FileRef] = {}
    for ref in refs:
        new = unique_name(ref) if rename else _basename(ref.name)
        other = placed.get(new)
        if other is not None and other.sha256 != ref.sha256:
            hint = "rename one" if rename else "turn renaming on or rename one"
            raise FileError(
                f"necessary files {other.name!r} and {ref.name!r} would both be placed as "
                f"{new!r}; {hint}"
            )
        placed.setdefault(new, ref)
        plan[ref.name] = new
    return plan


def rewrite_command(command: str, mapping: dict[str, str]) -> str:
    """Replace every occurrence of each old name in ``command`` with its new name, in one pass.

    An occurrence counts only when the character before it (if any) and the
    character after it (if any) are not one of ``[A-Za-z0-9_.-/]``: with
    ``data.txt``, ``cat data.txt`` and ``cat 'data.txt'`` are rewritten while
    ``mydata.txt``, ``data.txt.bak`` and ``dir/data.txt`` are not.  Longer
    names are tried first and replaced text is never looked at again.
    Entries whose old name equals the new one, or is empty, are skipped.

    Caveat (documented behaviour): a file named like a word of the command,
    e.g. ``cat``, renames that word too (``cat cat`` becomes ``NEW NEW``).
    """
    live = {old: new for old, new in mapping.items() if old and old != new}
    if not live:
        return command
    names = sorted(live, key=lambda n: (-len(n), n))
    pattern = re.compile(
        rf"(?<![{_WORD_CHARS}])(?:{'|'.join(re.escape(n) for n in names)})(?![{_WORD_CHARS}])"
    )
    return pattern.sub(lambda m: live[m.group(0)], command)
