"""Archive before prune (adapters/archive.py, adapters/postgres/retention.py) on the real
database: every pruned saga is in the archive, batch by batch, each line byte for byte what
`saga status --json --wide --reveal` printed for it before; a target that cannot be written
(read-only, full, gone half-way) deletes nothing it did not write; `saga run` archives its own
sweeps with SAGA_RETENTION_ARCHIVE.

The sagas are real order sagas (sagas/order.py, v4) driven through the engine on the real
database, their participants played by the test on an in-memory publisher: completed, one
reviewed by the fraud desk, compensated; a secret in a result shows the archive is unmasked.
"""

from __future__ import annotations

import asyncio
import errno
import gzip
import json
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.archive import ArchiveFailed, ArchiveUnusable, DirectoryArchive
from adapters.clock import utcnow
from adapters.memory.publisher import MemoryPublisher
from adapters.postgres.database import make_engine
from adapters.postgres.retention import prune
from adapters.postgres.store import PostgresStore
from adapters.postgres.tables import saga_instances
from adapters.rabbitmq.topology import Topology
from adapters.runtime import Orchestrator
from adapters.settings import Settings
from orchestrator.engine import Engine
from orchestrator.messages import Reply, ReplyError, SignalSaga, StartSaga
from orchestrator.registry import load_modules
from tests.fixtures.polling import eventually

KEEP = timedelta(days=30)
SECRET = "tok-a1b2c3-never-masked-here"


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url, pool_size=3)
    yield engine
    await engine.dispose()


class Shop:
    """The order saga's participants, played on the engine's in-memory publisher."""

    def __init__(self, db: AsyncEngine) -> None:
        self.publisher = MemoryPublisher()
        self.engine = Engine(
            PostgresStore(db), self.publisher, load_modules(["sagas.order"]), clock=utcnow
        )

    async def order(self, key: str, *, amount: str = "25.00") -> uuid.UUID:
        done = await self.engine.start(
            StartSaga(
                saga="order",
                key=key,
                input={
                    "order_id": key,
                    "customer_id": "c-17",
                    "amount": amount,
                    "items": [{"sku": "SKU-BOOK", "qty": 1}],
                },
            )
        )
        assert done.saga_id is not None
        return done.saga_id

    async def answer(
        self, saga_id: uuid.UUID, step: str, result: Any = None, *, kind: str = "action"
    ) -> None:
        await self._reply(saga_id, step, result, ok=True, kind=kind)

    async def fail(self, saga_id: uuid.UUID, step: str) -> None:
        await self._reply(saga_id, step, None, ok=False, kind="action")

    async def _reply(
        self, saga_id: uuid.UUID, step: str, result: Any, *, ok: bool, kind: str
    ) -> None:
        commands = [
            json.loads(m.body) for m in self.publisher.published if m.exchange == "saga.commands"
        ]
        [*_, command] = [
            c
            for c in commands
            if c["saga_id"] == str(saga_id) and c["step"] == step and c["kind"] == kind
        ]
        error = None if ok else ReplyError(type="declined", message="no", retryable=False)
        await self.engine.reply(
            Reply(
                command_id=command["command_id"],
                saga_id=saga_id,
                step=step,
                outcome="success" if ok else "failure",
                result=result if ok else None,
                error=error,
            )
        )

    async def reserve(self, saga_id: uuid.UUID) -> None:
        # A secret in a result, as a participant may answer one: the archive keeps it.
        await self.answer(saga_id, "reserve_credit", {"reservation_id": 1, "token": SECRET})
        await self.answer(saga_id, "reserve_stock", {"reservation_id": 2})

    async def complete(self, key: str, *, amount: str = "25.00") -> uuid.UUID:
        saga_id = await self.order(key, amount=amount)
        await self.reserve(saga_id)
        if float(amount) > 1000:
            await self.engine.signal(
                SignalSaga(
                    saga_id=saga_id,
                    signal="fraud_review",
                    signal_id=f"desk-{key}",
                    payload={"approved": True, "reviewer": "ann"},
                )
            )
        await self.answer(saga_id, "charge_payment", {"charge_id": 7, "charged": amount})
        await self.answer(saga_id, "notify_customer", {"sent": True})
        return saga_id

    async def compensate(self, key: str) -> uuid.UUID:
        saga_id = await self.order(key)
        await self.answer(saga_id, "reserve_credit", {"reservation_id": 3})
        await self.fail(saga_id, "reserve_stock")
        await self.answer(saga_id, "reserve_credit", {"released": True}, kind="compensation")
        return saga_id


async def finished_long_ago(db: AsyncEngine) -> dict[str, uuid.UUID]:
    """Six order sagas finished for good, aged past the retention, by key: two completed,
    one of them reviewed, and so on, each a minute older than the one before."""
    shop = Shop(db)
    sagas = {
        "a-done": await shop.complete("a-done"),
        "b-reviewed": await shop.complete("b-reviewed", amount="2500.00"),
        "c-undone": await shop.compensate("c-undone"),
        "d-done": await shop.complete("d-done"),
        "e-undone": await shop.compensate("e-undone"),
        "f-done": await shop.complete("f-done"),
    }
    long_ago = datetime.now(UTC) - timedelta(days=40)
    async with db.begin() as conn:
        for i, saga_id in enumerate(sagas.values()):
            await conn.execute(
                sa.update(saga_instances)
                .where(saga_instances.c.id == saga_id)
                .values(updated_at=long_ago + timedelta(minutes=i))
            )
        statuses = {
            row.key: row.status
            for row in await conn.execute(sa.select(saga_instances.c.key, saga_instances.c.status))
        }
    assert statuses == {
        "a-done": "completed",
        "b-reviewed": "completed",
        "c-undone": "compensated",
        "d-done": "completed",
        "e-undone": "compensated",
        "f-done": "completed",
    }
    return sagas


async def ids(db: AsyncEngine) -> set[uuid.UUID]:
    async with db.connect() as conn:
        return set((await conn.execute(sa.select(saga_instances.c.id))).scalars())


async def saga(
    database_url: str, *args: str, stdout: Any = asyncio.subprocess.PIPE, prefix: Sequence[str] = ()
) -> tuple[int, str, str]:
    """`saga ARGS` on the test's database; `stdout` may be a file; `prefix` runs it under
    another program (setpriv)."""
    env = {**os.environ, "SAGA_DATABASE_URL": database_url, "SAGA_LOG_FORMAT": "json"}
    env.pop("SAGA_API_URL", None)
    process = await asyncio.create_subprocess_exec(
        *prefix,
        sys.executable,
        "-m",
        "adapters.cli",
        *args,
        env=env,
        stdout=stdout,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=90)
    assert process.returncode is not None
    return process.returncode, (out or b"").decode(), err.decode()


def archive_lines(directory: Path) -> list[list[str]]:
    """The archive's files in name order, each as its lines."""
    return [
        gzip.decompress(path.read_bytes()).decode().splitlines()
        for path in sorted(directory.glob("sagas-*.jsonl.gz"))
    ]


async def test_every_pruned_saga_is_archived_as_status_showed_it(
    db: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    sagas = await finished_long_ago(db)
    young = await Shop(db).complete("g-young")  # ended now: stays, and stays out
    shown = await asyncio.gather(
        *(saga(database_url, "status", key, "--json", "--wide", "--reveal") for key in sagas)
    )
    assert all(code == 0 for code, _, _ in shown), [err for _, _, err in shown]
    status = {key: out for key, (_, out, _) in zip(sagas, shown, strict=True)}

    code, out, err = await saga(
        database_url, "prune", "--older-than", "30d", "--batch", "4", "--archive", str(tmp_path)
    )

    assert code == 0, err
    assert "deleted 6 sagas and 0 held cancels in 2 batches" in out
    assert f"archived 6 sagas in 2 files in {tmp_path}" in out
    assert await ids(db) == {young}
    files = archive_lines(tmp_path)
    assert [len(lines) for lines in files] == [4, 2]  # the batches, in the order deleted
    lines = [line for batch in files for line in batch]
    archived = [json.loads(line) for line in lines]
    # Every pruned saga once; within its batch, the longest finished first.
    assert sorted(a["key"] for a in archived) == list(sagas)
    assert {a["saga_id"] for a in archived} == {str(s) for s in sagas.values()}
    for batch in files:
        keys = [json.loads(line)["key"] for line in batch]
        assert keys == sorted(keys)
    for line, record in zip(lines, archived, strict=True):
        # Byte for byte: the line, indented as status indents, is what status printed.
        assert json.dumps(record, indent=2) + "\n" == status[record["key"]], record["key"]
        assert json.dumps(record, separators=(",", ":")) == line  # compact, one line
    [reviewed] = [a for a in archived if a["key"] == "b-reviewed"]
    [review] = [s for s in reviewed["steps"] if s["name"] == "fraud_review"]
    assert review["wait"]["stage"] == "taken" and review["result"]["reviewer"] == "ann"
    assert [h["event"] for h in reviewed["history"]][:1] == ["saga_started"]
    assert {"wait_started", "wait_finished"} <= {h["event"] for h in reviewed["history"]}
    # Unmasked: an archive is an audit trail.
    [done] = [a for a in archived if a["key"] == "a-done"]
    assert done["steps"][0]["result"]["token"] == SECRET
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # noqa: ASYNC240


async def test_the_archive_on_standard_output_is_one_gzip_stream(
    db: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    sagas = await finished_long_ago(db)
    target = tmp_path / "sagas.jsonl.gz"
    with target.open("wb") as out_file:
        code, out, err = await saga(
            database_url,
            "prune",
            "--older-than",
            "30d",
            "--batch",
            "4",
            "--archive",
            "-",
            stdout=out_file,
        )
    assert code == 0, err
    assert out == ""  # the summary goes to standard error
    assert "deleted 6 sagas and 0 held cancels in 2 batches" in err
    with gzip.open(target, "rt") as archive:  # two members, read as one stream
        keys = [json.loads(line)["key"] for line in archive]
    assert sorted(keys) == list(sagas)
    assert await ids(db) == set()


async def test_a_full_target_deletes_nothing(db: AsyncEngine, database_url: str) -> None:
    """`--archive -` to /dev/full: the first batch's write fails with ENOSPC, its
    transaction rolls back, and the prune stops there."""
    sagas = await finished_long_ago(db)
    with open("/dev/full", "wb") as full:  # noqa: ASYNC230
        code, _, err = await saga(
            database_url, "prune", "--older-than", "30d", "--batch", "4", "--archive", "-",
            stdout=full,
        )  # fmt: skip
    assert code == 1, err
    assert "cannot write the archive to standard output: No space left on device" in err
    assert "that batch was not deleted; the prune stopped after deleting 0 sagas" in err
    assert await ids(db) == set(sagas.values())


async def test_a_read_only_directory_deletes_nothing(
    db: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    """Checked before anything is pruned. Root writes anywhere, so as root the command runs
    without the capabilities that let it (setpriv)."""
    sagas = await finished_long_ago(db)
    target = tmp_path / "archive"
    target.mkdir()
    target.chmod(0o555)
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root without setpriv: a read-only directory cannot be made")
        dropped = "-dac_override,-dac_read_search"
        prefix = [setpriv, f"--bounding-set={dropped}", f"--inh-caps={dropped}"]
    code, out, err = await saga(
        database_url, "prune", "--older-than", "30d", "--archive", str(target), prefix=prefix
    )
    assert code == 2, err
    assert f"error: --archive: archive directory {target} is not writable" in err
    assert out == ""
    assert await ids(db) == set(sagas.values())
    missing = await saga(database_url, "prune", "--older-than", "30d", "--archive", "/nonexistent")
    assert missing[0] == 2
    assert "archive directory /nonexistent does not exist: create it" in missing[2]
    assert await ids(db) == set(sagas.values())


async def test_a_target_that_fails_half_way_keeps_the_batch_it_could_not_write(
    db: AsyncEngine, tmp_path: Path
) -> None:
    """The directory goes away after the first batch (a disk unmounted, say): the second
    batch's write fails, it is rolled back, and its sagas stay; the first batch is deleted
    and in its file."""
    sagas = await finished_long_ago(db)
    target = tmp_path / "archive"
    target.mkdir()
    archive = DirectoryArchive(target, load_modules(["sagas.order"]))
    deleted: list[int] = []

    def gone_after_the_first(n: int) -> None:
        deleted.append(n)
        target.rename(tmp_path / "elsewhere")

    with pytest.raises(ArchiveFailed, match="No such file or directory"):
        await prune(db, KEEP, batch=4, archive=archive, on_batch=gone_after_the_first)
    assert deleted == [4]
    [first] = archive_lines(tmp_path / "elsewhere")
    archived = {uuid.UUID(json.loads(line)["saga_id"]) for line in first}
    assert len(archived) == 4
    assert await ids(db) == set(sagas.values()) - archived
    assert [p.name for p in (tmp_path / "elsewhere").iterdir()] == [archive.files[0].name]


async def test_a_write_that_fails_leaves_no_file_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db: AsyncEngine
) -> None:
    """The data written but not made durable (fsync fails, as on a full disk): the temporary
    file is removed, no archive file appears, and the batch stays."""
    sagas = await finished_long_ago(db)
    archive = DirectoryArchive(tmp_path, load_modules(["sagas.order"]))

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("adapters.archive.os.fsync", full)
    with pytest.raises(ArchiveFailed, match="No space left on device"):
        await prune(db, KEEP, batch=4, archive=archive)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []  # noqa: ASYNC240
    assert await ids(db) == set(sagas.values())


async def test_saga_run_archives_what_its_retention_sweeps(
    database_url: str, db: AsyncEngine, topology: Topology, amqp_url: str, tmp_path: Path
) -> None:
    sagas = await finished_long_ago(db)
    settings = Settings(
        database_url=database_url,
        amqp_url=amqp_url,
        amqp_prefix=topology.prefix,
        http_bind="",
        retention=KEEP,
        retention_archive=str(tmp_path),
    )
    async with Orchestrator(settings):
        await eventually(
            lambda: _none_left(db), timeout=15, message="the sweep deleted the old sagas"
        )
    [batch] = archive_lines(tmp_path)
    assert [json.loads(line)["key"] for line in batch] == list(sagas)  # one batch, by age


async def _none_left(db: AsyncEngine) -> bool:
    return await ids(db) == set()


async def test_saga_run_refuses_an_archive_directory_it_cannot_write(
    database_url: str, amqp_url: str, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=database_url,
        amqp_url=amqp_url,
        http_bind="",
        retention=KEEP,
        retention_archive=str(tmp_path / "missing"),
    )
    with pytest.raises(ArchiveUnusable, match="does not exist: create it"):
        await Orchestrator(settings).start()


def test_the_archive_setting_is_a_directory_and_needs_retention() -> None:
    with pytest.raises(ValidationError, match="must be a directory"):
        Settings(retention="30d", retention_archive="-")
    with pytest.raises(ValidationError, match="SAGA_RETENTION_ARCHIVE is set but SAGA_RETENTION"):
        Settings(retention_archive="/var/lib/saga/archive")
    assert Settings(retention_archive="").retention_archive is None
