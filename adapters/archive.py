"""Archive before prune: each batch of sagas a prune deletes, written first as gzip-compressed
JSON Lines, one saga a line, to a directory (`saga prune --archive DIR`, SAGA_RETENTION_ARCHIVE)
or to standard output (`saga prune --archive -`).

A line is the saga as `saga status --json --wide --reveal` prints it (adapters/saga_json.py:
the saga, its steps, its wait steps' waits, its history under "history"), on one line: the
same code builds both, so `json.dumps(json.loads(line), indent=2)` is byte for byte what status
printed. Unmasked: an archive is an audit trail (SAGA_REDACT_FIELDS masks what people see, not
what is kept).

The prune calls `write` inside the transaction that locked the batch's rows and deletes them
once it returns (adapters/postgres/retention.py): when `write` raises, the batch is rolled
back and nothing of it is deleted. So `write` returns only once the batch is durable:

- to a directory, one file per batch, `sagas-<start of the run, UTC>-<run id>-<batch number>
  .jsonl.gz` (names sort in the order the batches were written, per run), written under a
  temporary name (`.<name>.tmp`), flushed and fsynced, renamed, and the directory fsynced;
  a failure removes the temporary file.
- to a stream (standard output), one gzip member per batch (a gzip file may hold many: `zcat`
  and Python's gzip read them as one), flushed, and fsynced when the stream is a regular file.
  A pipe is as durable as whatever reads it: a reader that dies makes the write fail.

The writing runs in a worker thread: a `saga run` replica's event loop keeps going meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import structlog

from adapters.saga_json import saga_json, waits_of
from orchestrator.ports import HistoryRecord
from orchestrator.registry import Registry
from orchestrator.state import SagaState

log = structlog.get_logger(__name__)

ArchivedSaga = tuple[SagaState, Sequence[HistoryRecord]]


class ArchiveUnusable(ValueError):
    """The archive's directory cannot be written: says which and what to do."""


class ArchiveFailed(RuntimeError):
    """A batch could not be archived (disk full, a read-only target, a closed pipe...): its
    prune is rolled back."""


def archive_line(state: SagaState, registry: Registry, history: Sequence[HistoryRecord]) -> bytes:
    """The saga's line: what `saga status --json --wide --reveal` prints, on one line."""
    record = saga_json(state, waits_of(registry, state), history)
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def compressed(registry: Registry, sagas: Sequence[ArchivedSaga]) -> bytes:
    """A batch as one gzip member of JSON lines, in the batch's order."""
    lines = b"".join(archive_line(state, registry, history) for state, history in sagas)
    # Level 6, zlib's default: half the time of gzip's 9 for 1% more bytes.
    return gzip.compress(lines, compresslevel=6, mtime=0)


def usable_directory(raw: str | Path) -> Path:
    """`raw` as an archive directory, checked before anything is pruned: it exists, is a
    directory and this process may create files in it."""
    path = Path(raw).expanduser()
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise ArchiveUnusable(f"archive directory {path} {what}: create it (mkdir -p {path})")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ArchiveUnusable(
            f"archive directory {path} is not writable by this process (user "
            f"{_user()}): give it write permission, or choose another"
        )
    return path.resolve()


class DirectoryArchive:
    """One file per batch in `directory` (see the module's docstring)."""

    def __init__(
        self, directory: str | Path, registry: Registry, *, now: datetime | None = None
    ) -> None:
        self.directory = usable_directory(directory)
        self._registry = registry
        started = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
        # The run id keeps two replicas (or two prunes) started the same second apart.
        self._prefix = f"sagas-{started}-{secrets.token_hex(3)}"
        self._batches = 0
        self.files: list[Path] = []

    async def write(self, sagas: Sequence[ArchivedSaga]) -> None:
        """Durable when it returns; raises ArchiveFailed when it could not be."""
        self._batches += 1
        name = f"{self._prefix}-{self._batches:06d}.jsonl.gz"
        path = await asyncio.to_thread(self._write, name, sagas)
        self.files.append(path)
        log.info("retention_archived", sagas=len(sagas), file=str(path))

    def _write(self, name: str, sagas: Sequence[ArchivedSaga]) -> Path:
        final, partial = self.directory / name, self.directory / f".{name}.tmp"
        try:
            data = compressed(self._registry, sagas)
            with partial.open("xb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            partial.rename(final)
            _fsync_directory(self.directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise ArchiveFailed(f"cannot write the archive file {final}: {_why(exc)}") from exc
        return final


class StreamArchive:
    """One gzip member per batch on `stream` (standard output's binary buffer)."""

    def __init__(self, stream: BinaryIO, registry: Registry) -> None:
        self._stream = stream
        self._registry = registry

    async def write(self, sagas: Sequence[ArchivedSaga]) -> None:
        await asyncio.to_thread(self._write, sagas)
        log.info("retention_archived", sagas=len(sagas), file="-")

    def _write(self, sagas: Sequence[ArchivedSaga]) -> None:
        try:
            self._stream.write(compressed(self._registry, sagas))
            self._stream.flush()
            with contextlib.suppress(OSError, ValueError):  # a pipe or a terminal: no fsync
                os.fsync(self._stream.fileno())
        except (OSError, ValueError) as exc:
            _discard(self._stream)
            raise ArchiveFailed(
                f"cannot write the archive to standard output: {_why(exc)}"
            ) from exc


def _discard(stream: BinaryIO) -> None:
    """Send what the refused write left buffered nowhere: flushed again at exit, it would fail
    again and turn the command's exit status 1 into Python's 120."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


def _fsync_directory(directory: Path) -> None:
    """The rename itself made durable: the directory's entry is on disk too."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
