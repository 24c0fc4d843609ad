"""Writing files so that nothing a learner made is ever half-written.

A file written with :func:`atomic_write` is either the old one or the complete new one, whatever
moment the process dies (SIGKILL, a full disk, a second Ctrl-C): the bytes go to a temporary file
in the same folder, are flushed to the disk (``fsync``), and only then renamed over the target
with ``os.replace``, which POSIX and Windows both make atomic within one folder. The folder itself
is fsynced afterwards so that the rename survives a power cut.

Temporary files are named ``.NAME.tmp-PID-RANDOM``; a process that dies leaves one behind, and
:func:`remove_stale_temporaries` (called by the checkpoint code at start) deletes those whose
process no longer runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
           "fsync_folder", "temporary_name", "remove_stale_temporaries"]

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")


def temporary_name(path: Path) -> Path:
    """``folder/NAME`` -> ``folder/.NAME.tmp-PID-RANDOM`` (same folder, so the rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename or a new file in it) to the disk; a no-op where unsupported."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], mode: int = 0o644) -> Path:
    """Call ``write(temporary_path)``, then move the complete file onto ``path`` in one rename.

    :param path: the file to (re)place; its folder must exist
    :param write: writes the whole file to the path it is given (e.g. ``lambda p: save_file(t, p)``)
    :param mode: permission bits of the new file (safetensors writes owner-only files)
    :return: ``path`` as a Path
    """
    path = Path(path)
    temporary = temporary_name(path)
    try:
        write(temporary)
        with open(temporary, "rb+") as file:   # flush the bytes, whoever wrote them
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    fsync_folder(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda temporary: temporary.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data) -> Path:
    """Write ``data`` as indented JSON (a newline at the end) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _process_runs(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:    # it runs, as another user
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (and folders) in ``folder`` left by processes that no longer run.

    :return: the paths removed
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TEMPORARY.match(entry.name)
        if match is None or _process_runs(int(match.group("pid"))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            for child in sorted(entry.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                child.rmdir() if child.is_dir() and not child.is_symlink() else child.unlink()
            entry.rmdir()
        else:
            entry.unlink()
        removed.append(entry)
    return removed
