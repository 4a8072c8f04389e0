"""``kibitz backup`` and ``kibitz restore``: the whole appliance in one file, and back.

A backup is a gzipped tar of four members, in this order:

- ``manifest.json``: format, Kibitz version, schema revision, the slot plugins, and per
  part its size, record count and SHA-256;
- ``database.jsonl``: every row of every table (users, devices, conversations, members
  with read markers, push subscriptions, invitations, leases, and the secrets: the
  cursor key and the VAPID key pair), read in one transaction, so one snapshot;
- ``storage.bin`` and ``transport.bin``: the slots' own records (``Restorable`` in
  ``kibitz.slots``), each framed by its length.

It runs while the server serves: storage first, then the transport, then the database,
so that whatever one part names exists in the parts taken after it; when the restored
server starts, the storage follower replays the log after storage's position, as it
does after any crash. Restore checks every checksum, that the data folder is empty and
not in use, and that the database, transport and storage hold nothing, before it
writes anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import shutil
import struct
import tarfile
from collections.abc import AsyncIterator
from importlib.metadata import version
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from .database import instances, known_revisions, leases, metadata, migrate, schema_revision
from .datadir import LOCK_FILE, RESTORING, holder, lock_data_folder
from .models import now_ms, rfc3339
from .notifications import LEASE_KIND as NOTIFY_LEASE
from .progress import Progress

if TYPE_CHECKING:
    from .app import Kibitz
    from .settings import Settings

FORMAT = 1
CHUNK = 1024 * 1024
_FRAME = struct.Struct(">I")


class BackupError(Exception):
    """The backup or restore cannot be done; the message says why, in one line."""


# -- backup ---------------------------------------------------------------------------


async def backup(app: Kibitz, file: Path, progress: Progress) -> dict[str, Any]:
    """Write the backup of the running ``kibitz`` to ``file`` (which must not exist)."""
    if await asyncio.to_thread(file.exists):
        raise BackupError(f"{file} exists already; give the name of a new file")
    work = file.parent / f".{file.name}.parts"
    try:
        await asyncio.to_thread(work.mkdir, 0o700)
    except OSError as e:
        raise BackupError(f"cannot write beside {file}: {e.strerror}") from None
    try:
        parts: dict[str, dict[str, Any]] = {}
        for name, slot in (("storage", app.storage), ("transport", app.transport)):
            if not hasattr(slot, "backup"):
                raise BackupError(f"the {name} plugin {getattr(app.settings, name)!r} cannot back up")
            total, records = await slot.backup()
            parts[name] = await _write_records(work / f"{name}.bin", records, total, name, progress)
        parts["database"], schema = await _dump_database(app, work / "database.jsonl", progress)
        manifest = {
            "format": FORMAT,
            "kibitz": version("kibitz"),
            "created_at": rfc3339(now_ms()),
            "schema": schema,
            "slots": {"transport": app.settings.transport, "storage": app.settings.storage},
            "parts": parts,
        }
        await asyncio.to_thread(_pack, file, work, manifest)
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
    size = (await asyncio.to_thread(file.stat)).st_size
    return {"file": str(file), "bytes": size, "records": {k: v["records"] for k, v in parts.items()}}


async def _write_records(
    path: Path, records: AsyncIterator[bytes], total: int, part: str, progress: Progress
) -> dict[str, Any]:
    """Frame the records into ``path``; the hashing and writing run in a thread, a chunk at a time."""
    digest = hashlib.sha256()
    count = written = 0
    buffer = bytearray()
    out = await asyncio.to_thread(private_file, path)
    try:

        def flush(chunk: bytes) -> None:
            digest.update(chunk)
            out.write(chunk)

        async for record in records:
            buffer += _FRAME.pack(len(record)) + record
            count += 1
            if len(buffer) >= CHUNK:
                written += len(buffer)
                await asyncio.to_thread(flush, bytes(buffer))
                buffer.clear()
                progress(part, count, max(total, count))
        written += len(buffer)
        await asyncio.to_thread(flush, bytes(buffer))
    finally:
        await asyncio.to_thread(out.close)
    progress(part, count, count)
    return {"records": count, "bytes": written, "sha256": digest.hexdigest()}


async def _dump_database(app: Kibitz, path: Path, progress: Progress) -> tuple[dict[str, Any], str]:
    """Every row of every table, in one transaction (one snapshot), as JSON lines."""
    records = database_rows(app.engine)
    schema = orjson.loads(await anext(records))["schema"]
    return await _write_records(path, records, 0, "database", progress), schema


async def database_rows(engine: AsyncEngine) -> AsyncIterator[bytes]:
    """The schema revision, then every row (parents before children), all read in one
    transaction: what the first read sees, every later read sees."""
    async with engine.connect() as db:
        if db.dialect.name == "postgresql":
            await db.execution_options(isolation_level="REPEATABLE READ")
        else:  # pysqlite begins a transaction only before a write: begin the read here
            await db.exec_driver_sql("BEGIN")
        yield orjson.dumps({"schema": await db.run_sync(schema_revision)})
        for table in metadata.sorted_tables:
            if table is instances:  # live processes, not data: a restored server has none
                continue
            async for row in await db.stream(sa.select(table)):
                line = {"table": table.name, "row": row._asdict()}
                yield orjson.dumps(line, option=orjson.OPT_NON_STR_KEYS)  # keys: quoted_name
        await db.rollback()


def _pack(file: Path, work: Path, manifest: dict[str, Any]) -> None:
    partial = file.with_name(f".{file.name}.partial")
    try:
        with private_file(partial) as out, tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) as tar:
            data = orjson.dumps(manifest, option=orjson.OPT_INDENT_2)
            info = tarfile.TarInfo("manifest.json")
            info.size, info.mtime, info.mode = len(data), now_ms() // 1000, 0o600
            tar.addfile(info, io.BytesIO(data))
            for name in ("database.jsonl", "storage.bin", "transport.bin"):
                tar.add(work / name, arcname=name)
            tar.close()
            out.flush()
            os.fsync(out.fileno())
        partial.rename(file)
    finally:
        partial.unlink(missing_ok=True)


def private_file(path: Path) -> IO[bytes]:
    """A new file only its owner can read (it holds password hashes and keys); error if it exists."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


# -- restore ----------------------------------------------------------------------------


async def restore(settings: Settings, file: Path, progress: Progress) -> dict[str, Any]:
    """Restore ``file`` into the empty data folder (and empty services) of ``settings``."""
    from .app import Kibitz

    manifest = await asyncio.to_thread(_verify, file, progress)
    _check_compatible(manifest, settings)
    folder = settings.data_dir.absolute()
    lock = await asyncio.to_thread(_lock_empty_folder, folder)
    app = Kibitz(settings)
    started: list[Any] = []
    finished = False
    try:
        await asyncio.to_thread((folder / RESTORING).write_text, f"restore of {file} not finished\n")
        if await _database_holds_data(app):
            raise BackupError("the database already holds data; restore needs an empty one")
        for name, slot in (("transport", app.transport), ("storage", app.storage)):
            await slot.start(app)
            started.append(slot)
            if not await slot.is_empty():
                raise BackupError(f"the {name} ({getattr(settings, name)}) already holds data")
        with tarfile.open(file, "r:gz") as tar:
            await migrate(app.engine, manifest["schema"])
            await _load_database(app, _records(tar, "database.jsonl"), manifest, progress)
            await migrate(app.engine)
            for name, slot in (("storage", app.storage), ("transport", app.transport)):
                await slot.restore(_counted(_records(tar, f"{name}.bin"), name, manifest, progress))
            end = await app.transport.now()
        async with app.engine.begin() as db:  # no pushes for what was sent before the backup
            await db.execute(leases.update().where(leases.c.kind == NOTIFY_LEASE).values(high_water=end + 1))
        finished = True
    finally:
        await _close(started, app)  # the embedded servers stop before their files go
        if finished:
            await asyncio.to_thread((folder / RESTORING).unlink)
        else:  # what the restore wrote goes, marker and all
            await asyncio.to_thread(_empty, folder)
        lock.close()
    return {"folder": str(folder), "records": {k: v["records"] for k, v in manifest["parts"].items()}}


def _lock_empty_folder(folder: Path) -> IO[str]:
    """Lock ``folder`` (made if missing) for the restore; refuse it if in use or not empty."""
    process = holder(folder)
    if process is not None:
        raise BackupError(f"the data folder {folder} is in use by process {process}; stop it first")
    entries = {entry.name for entry in folder.iterdir()} if folder.is_dir() else set()
    if RESTORING in entries:
        raise BackupError(f"the data folder {folder} holds a restore that did not finish: empty it first")
    if entries - {LOCK_FILE}:
        raise BackupError(f"the data folder {folder} is not empty; restore needs an empty one")
    return lock_data_folder(folder)  # DataFolderError when another process holds it


def _verify(file: Path, progress: Progress) -> dict[str, Any]:
    """The manifest, once every part's checksum and size are checked."""
    try:
        with tarfile.open(file, "r:gz") as tar:
            manifest: dict[str, Any] = orjson.loads(_member(tar, "manifest.json").read())
            if manifest.get("format") != FORMAT:
                raise BackupError(
                    f"{file}: backup format {manifest.get('format')!r} is not one this Kibitz reads"
                )
            for name, part in manifest["parts"].items():
                digest, size = hashlib.sha256(), 0
                member = _member(tar, f"{name}.{'jsonl' if name == 'database' else 'bin'}")
                while chunk := member.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    progress(f"checking {name}", size, part["bytes"])
                if digest.hexdigest() != part["sha256"] or size != part["bytes"]:
                    raise BackupError(f"{file}: the {name} part is damaged (its checksum differs)")
    except (OSError, tarfile.TarError, EOFError, ValueError, KeyError) as e:
        raise BackupError(f"{file}: not a readable Kibitz backup ({type(e).__name__}: {e})") from None
    return manifest


def _member(tar: tarfile.TarFile, name: str) -> IO[bytes]:
    member = tar.extractfile(name)
    if member is None:
        raise KeyError(name)
    return member


def _check_compatible(manifest: dict[str, Any], settings: Settings) -> None:
    if manifest["schema"] not in known_revisions():
        raise BackupError(
            f"the backup's schema {manifest['schema']} is from a newer Kibitz ({manifest['kibitz']}); "
            "restore it with that version or newer"
        )
    for slot, name in manifest["slots"].items():
        if getattr(settings, slot) != name:
            raise BackupError(
                f"the backup's {slot} is {name!r} but this configuration's is {getattr(settings, slot)!r}"
            )


async def _database_holds_data(app: Kibitz) -> bool:
    async with app.engine.connect() as db:
        tables = await db.run_sync(lambda sync: sa.inspect(sync).get_table_names())
        if "users" not in tables:
            return False
        return bool(
            (await db.execute(sa.select(sa.func.count()).select_from(metadata.tables["users"]))).scalar()
        )


async def _records(tar: tarfile.TarFile, name: str) -> AsyncIterator[bytes]:
    """The framed records of one member, read a chunk at a time in a thread."""
    member = _member(tar, name)
    buffer = b""
    while chunk := await asyncio.to_thread(member.read, CHUNK):
        buffer += chunk
        offset = 0
        while len(buffer) - offset >= _FRAME.size:
            (length,) = _FRAME.unpack_from(buffer, offset)
            if len(buffer) - offset - _FRAME.size < length:
                break
            yield buffer[offset + _FRAME.size : offset + _FRAME.size + length]
            offset += _FRAME.size + length
        buffer = buffer[offset:]


async def _counted(
    records: AsyncIterator[bytes], part: str, manifest: dict[str, Any], progress: Progress
) -> AsyncIterator[bytes]:
    total = manifest["parts"][part]["records"]
    done = 0
    async for record in records:
        yield record
        done += 1
        if done % 1000 == 0 or done == total:
            progress(part, done, total)


async def _load_database(
    app: Kibitz, records: AsyncIterator[bytes], manifest: dict[str, Any], progress: Progress
) -> None:
    """Insert the rows, table by table; leases come back free, for any instance to take."""
    batch: list[dict[str, Any]] = []
    table = ""
    async with app.engine.begin() as db:
        async for record in _counted(records, "database", manifest, progress):
            line = orjson.loads(record)
            if line["table"] != table or len(batch) == 500:
                if batch:
                    await db.execute(metadata.tables[table].insert(), batch)
                table, batch = line["table"], []
            row = line["row"]
            if table == "leases":
                row = {**row, "holder": "", "expires_ms": 0}
            batch.append(row)
        if batch:
            await db.execute(metadata.tables[table].insert(), batch)
        if db.dialect.name == "postgresql":  # ids were given: move each sequence past them
            for name, t in metadata.tables.items():
                if "id" in t.c and t.c.id.autoincrement is True:
                    await db.execute(
                        sa.text(
                            f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                            f"COALESCE((SELECT MAX(id) FROM {name}), 0) + 1, false)"
                        )
                    )


async def _close(started: list[Any], app: Kibitz) -> None:
    for slot in reversed(started):
        with contextlib.suppress(Exception):
            await slot.close()
    with contextlib.suppress(Exception):
        await app.engine.dispose()


def _empty(folder: Path) -> None:
    """Take out what a failed restore wrote into the (formerly empty) data folder."""
    for entry in folder.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
