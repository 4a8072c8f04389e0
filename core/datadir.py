"""The data folder: checked before anything starts, and locked for the life of the process.

Two processes on one data folder would each start their own nats-server and redis-server
on the same files and each show a different history. So ``kibitz serve`` (and anything
else that writes the folder) holds an exclusive ``flock`` on ``kibitz.lock`` inside it,
with its process id written there, until it exits; the kernel lets go of the lock when
the process dies, however it dies, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

LOCK_FILE = "kibitz.lock"
RESTORING = "restore-incomplete"  # there while kibitz restore writes the folder


class DataFolderError(Exception):
    """The data folder cannot be used; the message says why, naming the folder, in one line."""


def lock_data_folder(folder: Path) -> IO[str]:
    """Make ``folder`` if missing, check it can be written, and lock it.

    Returns the open lock file: the lock lasts as long as it stays open. Raises
    ``DataFolderError`` when the folder is a file, cannot be made or written, or another
    process holds it.
    """
    folder = folder.absolute()
    if folder.exists() and not folder.is_dir():
        raise DataFolderError(f"the data folder {folder} is a file, not a folder")
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # it holds hashes and keys
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        lock = open(folder / LOCK_FILE, "a+")  # noqa: SIM115  # held open for the life of the process
    except OSError as e:
        raise DataFolderError(
            f"cannot use the data folder {folder}: {(e.strerror or type(e).__name__).lower()}"
        ) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise DataFolderError(
            f"the data folder {folder} is in use by process {holder} (another kibitz); stop it first"
        ) from None
    if (folder / RESTORING).exists():
        lock.close()
        raise DataFolderError(
            f"the data folder {folder} holds a restore that did not finish: empty it (and, with external "
            "services, the database, stream and Redis it filled), then run kibitz restore again"
        )
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def holder(folder: Path) -> str | None:
    """The process id of the process that holds ``folder``'s lock, or None; changes nothing."""
    try:
        lock = open(folder / LOCK_FILE)  # noqa: SIM115  # closed below, lock and all
    except OSError:
        return None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return lock.read().strip() or "unknown"
        return None
