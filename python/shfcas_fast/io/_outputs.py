"""Outputs that appear whole or not at all: hidden temporary files, atomic publication, clean-up.

Example:
```python
>>> import pathlib, tempfile
>>> from shfcas_fast import io
>>> path = pathlib.Path(tempfile.mkdtemp()) / "labels.jsonl"
>>> with io.atomic_output(path) as temporary:
...     _ = temporary.write_text('{"label": 1}\\n')
>>> path.read_text()
'{"label": 1}\\n'
>>> with io.atomic_output(path) as temporary:
...     pass
Traceback (most recent call last):
FileExistsError: ... already exists

```

Every output is written to a hidden temporary file (or folder) beside its destination, named
``.NAME.HOST.PID.TOKEN.tmp`` after the output, the machine and the writing process. When the writing
succeeds it is published under its final name in one step; without ``overwrite`` that step also checks
that the name is free, so of two writers racing for one name exactly one wins and the other gets a
``FileExistsError``. Files and folders are created with the permissions the user's umask gives, like
any other program's.

A temporary that its writer can no longer publish is removed: on any exception (``KeyboardInterrupt``
included), on ``SIGTERM``, ``SIGINT`` and ``SIGHUP`` while their action is the default one (the
process then still ends by that signal), and, for a process killed outright (``SIGKILL``, a crash), by
the next writer of the same output on the same machine, which finds that the process named in the
temporary's name is gone and says so with a :class:`StaleTemporaryWarning`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import signal
import socket
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from ..errors import ShfcasValueError
from ._formats import output_format

__all__ = ["StaleTemporaryWarning", "check_output", "temporary_path", "atomic_output", "remove_stale_temporaries"]

_TEMPORARY = ".tmp"
# A folder moved aside while its replacement moves in (see _swap_folder).
_RETIRED = ".old"
_NAME = re.compile(
    r"\.(?P<output>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>[0-9]+)\.[0-9a-f]{16}(?P<kind>\.tmp|\.old)", re.DOTALL
)
# Where a file system has no hard links, the final name is claimed by an exclusive create instead.
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK}
_FOLDER_TAKEN = {errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR}
# Signals whose default action ends the process without running Python's clean-up.
_ENDING_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name)
)


class StaleTemporaryWarning(UserWarning):
    """A temporary output left by a process that is gone was removed (or, for a folder, restored)."""


def check_output(path: str | os.PathLike[str], *, overwrite: bool = False, directory: bool = False) -> None:
    """Raise unless ``path`` can be written: a known file type (unless ``directory``), an existing
    folder, and no existing file or folder there unless ``overwrite``.

    Commands call it first, so that a bad output fails before any input is read.
    """
    path = Path(path)
    if not directory:
        output_format(path)
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} already exists")
        if path.is_dir() != directory:
            wanted = "a folder" if directory else "a file"
            raise ShfcasValueError(f"{path} exists and is not {wanted}; choose another output")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {path.parent} does not exist")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "localhost"


def _temporary_name(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{_host()}.{os.getpid()}.{secrets.token_hex(8)}{kind}")


def _process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, under another user
        return False
    return False


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[str]:
    """Remove the temporaries of output ``path`` left on this machine by processes that are gone.

    Returns one note per temporary handled, and also issues each as a :class:`StaleTemporaryWarning`.
    A folder that was moved aside to be replaced, whose replacement never arrived, is moved back to
    ``path`` rather than removed. Temporaries of running processes and of other machines (on shared
    storage) are left alone.
    """
    path = Path(path)
    prefix = f".{path.name}."
    try:
        with os.scandir(path.parent) as entries:
            names = sorted(entry.name for entry in entries if entry.name.startswith(prefix))
    except OSError:  # no such folder: nothing to clean
        return []
    notes = []
    for name in names:
        found = _NAME.fullmatch(name)
        if found is None or found["output"] != path.name or found["host"] != _host():
            continue
        pid = int(found["pid"])
        if pid == os.getpid() or not _process_is_gone(pid):
            continue
        stale = path.with_name(name)
        try:
            if found["kind"] == _RETIRED and not path.exists():
                os.rename(stale, path)
                note = f"restored {path} from {stale.name}, left by process {pid} while replacing it"
            else:
                _remove(stale)
                note = f"removed {stale}, left by process {pid} which ended before finishing it"
        except OSError:  # another writer handled it first, or it is not ours to remove
            continue
        warnings.warn(note, StaleTemporaryWarning, stacklevel=2)
        notes.append(note)
    return notes


# Temporaries that this process may still publish, for the signal handler to remove.
_live: set[Path] = set()
_handled_signals: set[int] = set()


def _on_ending_signal(signum: int, frame: FrameType | None) -> None:
    """Remove the live temporaries, then end the process by the signal's default action."""
    for live in list(_live):
        _remove(live)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _in_main_thread() -> bool:
    # Only the main thread may install signal handlers.
    return threading.current_thread() is threading.main_thread()


def _track(temporary: Path) -> None:
    _live.add(temporary)
    if not _in_main_thread():
        return
    for signum in _ENDING_SIGNALS:
        # Only where nothing else handles it: Python's KeyboardInterrupt unwinds through our clean-up
        # anyway, and a handler installed by the application is its own to keep.
        if signum not in _handled_signals and signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _on_ending_signal)
            _handled_signals.add(signum)


def _untrack(temporary: Path) -> None:
    _live.discard(temporary)
    if _live or not _in_main_thread():
        return
    for signum in list(_handled_signals):
        if signal.getsignal(signum) is _on_ending_signal:
            signal.signal(signum, signal.SIG_DFL)
        _handled_signals.discard(signum)


@contextlib.contextmanager
def temporary_path(path: str | os.PathLike[str], *, directory: bool = False) -> Iterator[Path]:
    """Yield a new, empty hidden file (or folder) beside ``path``, removed at the end unless moved away.

    Stale temporaries of ``path`` are removed first (see :func:`remove_stale_temporaries`). The
    temporary is created with the permissions of the user's umask and is also removed when the
    process is ended by a signal whose action is the default one.
    """
    path = Path(path)
    remove_stale_temporaries(path)
    temporary = _temporary_name(path, _TEMPORARY)
    if directory:
        os.mkdir(temporary, 0o777)
    else:
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    _track(temporary)
    try:
        yield temporary
    finally:
        try:
            _remove(temporary)
        finally:
            _untrack(temporary)


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str], *, overwrite: bool = False, directory: bool = False, durable: bool = False
) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` that becomes ``path`` when the block succeeds.

    On any exception (including ``KeyboardInterrupt``) the temporary file or directory is removed
    and ``path`` is left as it was. An existing ``path`` is only replaced when ``overwrite`` is true.

    Without ``overwrite``, the check that ``path`` is free and the publication are one step: a file
    is hard-linked to its final name, which fails if the name exists, and the temporary name is then
    removed. On a file system without hard links the final name is first claimed by an exclusive
    create, so a reader may see an empty file there until the rename that follows. A folder is
    renamed, which fails if ``path`` is a file or a non-empty folder (an empty one is replaced).

    With ``directory=True`` the temporary path is an empty directory, e.g. for a report. With
    ``durable=True`` a file is flushed to disk before it is published and the publication itself
    after it, so that a crash of the machine cannot lose it (for small, precious files such as
    human labels).
    """
    path = Path(path)
    check_output(path, overwrite=overwrite, directory=directory)
    with temporary_path(path, directory=directory) as temporary:
        yield temporary
        if durable and not directory:
            _fsync(temporary)
        if overwrite:
            _replace(temporary, path)
        elif directory:
            _rename_folder_if_free(temporary, path)
        else:
            _link_if_free(temporary, path)
        if durable:
            _fsync(path.parent)


def _taken(path: Path) -> FileExistsError:
    return FileExistsError(f"{path} already exists")


def _link_if_free(temporary: Path, path: Path) -> None:
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise _taken(path) from None
    except OSError as err:
        if err.errno not in _NO_HARD_LINKS:
            raise
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            raise _taken(path) from None
        os.replace(temporary, path)


def _rename_folder_if_free(temporary: Path, path: Path) -> None:
    try:
        os.rename(temporary, path)
    except OSError as err:
        if err.errno in _FOLDER_TAKEN:
            raise _taken(path) from None
        raise


def _replace(source: Path, destination: Path) -> None:
    """Rename ``source`` onto ``destination``; a folder is swapped in, then the old one removed."""
    if not (source.is_dir() and destination.is_dir()):
        os.replace(source, destination)
        return
    # A process killed between the two renames leaves the old folder under a name that the next
    # writer's remove_stale_temporaries moves back.
    retired = _temporary_name(destination, _RETIRED)
    os.rename(destination, retired)
    os.rename(source, destination)
    shutil.rmtree(retired)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
