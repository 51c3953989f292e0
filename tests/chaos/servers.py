"""The harness's own PostgreSQL cluster and RabbitMQ node, on free loopback ports under a
temporary directory: the harness restarts and kills them, so it must never touch the machine's
shared servers on 5432/5672 (other people's tests run there at the same time).

PostgreSQL refuses to run as root (`initdb` says so), so as root every PostgreSQL command runs
as the `postgres` system user (`runuser -u postgres --`) in directories it owns. RabbitMQ runs
as whoever runs the harness, with HOME in the temporary directory: its Erlang cookie is then
a fresh one of its own, which `rabbitmqctl` (given the same HOME) reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

PG_BIN = Path(os.environ.get("CHAOS_PG_BIN", "/usr/lib/postgresql/15/bin"))
RABBIT_BIN = Path(os.environ.get("CHAOS_RABBIT_BIN", "/usr/lib/rabbitmq/bin"))
PG_USER = "postgres"


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def port_open(port: int, timeout: float = 60.0) -> None:
    """Return once something accepts TCP connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on port {port} after {timeout}s") from None
            await asyncio.sleep(0.1)
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return


async def run(
    args: list[str],
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
    output: Path | None = None,
) -> str:
    """Run a command without blocking the event loop (the proxy and relay live on it).

    `output`: a file for the command's output instead of a pipe, for a command that leaves a
    daemon behind holding its stdout (`pg_ctl start`: a pipe would never see its end)."""
    sink = output.open("ab") if output is not None else None
    try:
        process = await asyncio.create_subprocess_exec(
            *args,
            env=env,
            stdout=sink or asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
        )
        if output is None:
            out, _ = await asyncio.wait_for(process.communicate(), timeout)
            text = out.decode(errors="replace")
        else:
            await asyncio.wait_for(process.wait(), timeout)
            text = (await asyncio.to_thread(output.read_text, errors="replace"))[-2000:]
    finally:
        if sink is not None:
            sink.close()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {process.returncode}: {text[-2000:]}")
    return text


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *args] if os.geteuid() == 0 else args


@dataclass
class OwnPostgres:
    """A PostgreSQL cluster in `root`, fsync on, listening on 127.0.0.1:`port` only."""

    root: Path
    port: int = field(default_factory=free_port)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str, port: int | None = None) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{port or self.port}/{database}"

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # The parent must be traversable by the postgres user, the cluster owned by it.
            os.chmod(self.root.parent, 0o755)
            shutil.chown(self.root, PG_USER)
        await run(
            _as_postgres(
                [
                    *(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust"),
                    *("-U", "postgres", "-E", "UTF8", "--no-instructions"),
                ]
            )
        )
        # In postgresql.conf rather than on pg_ctl's command line: every restart reads them.
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "max_connections": "300",
            "log_min_messages": "warning",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# chaos harness\n")
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())
        await self._pg_ctl("start")
        log.info("chaos_postgres_started", port=self.port, data=str(self.data))

    async def restart(self, mode: str) -> None:
        """`pg_ctl restart -m fast|immediate`: immediate is a crash (recovery from WAL)."""
        await self._pg_ctl("restart", "-m", mode)

    async def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                await self._pg_ctl("stop", "-m", "immediate")

    async def _pg_ctl(self, *args: str) -> None:
        await run(
            _as_postgres(
                [
                    *(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_file)),
                    *("-w", "-t", "120", *args),
                ]
            ),
            output=self.root.parent / "pg_ctl.out",
        )
        if os.geteuid() == 0 and self.log_file.exists():
            shutil.chown(self.log_file, PG_USER)


@dataclass
class OwnRabbit:
    """A RabbitMQ node `chaos-<id>@localhost` with its data, logs and cookie in `root`, no
    plugins, AMQP on 127.0.0.1:`port`."""

    root: Path
    node_id: str
    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    process: asyncio.subprocess.Process | None = None
    starts: int = 0
    # The broker's consumer timeout in ms (None: RabbitMQ's 30 minutes), checked every 100 ms.
    consumer_timeout: int | None = None

    @property
    def node(self) -> str:
        return f"chaos-{self.node_id}@localhost"

    def url(self, port: int | None = None) -> str:
        return f"amqp://guest:guest@127.0.0.1:{port or self.port}/"

    def env(self) -> dict[str, str]:
        home = self.root / "home"
        return {
            **os.environ,
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_PID_FILE": str(self.root / "beam.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            # Files that do not exist: nothing of the machine's /etc/rabbitmq is read.
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.root / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            # Erlang distribution on loopback too, as the AMQP listener.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    async def start(self) -> None:
        (self.root / "home").mkdir(parents=True, exist_ok=True)
        (self.root / "enabled_plugins").write_text("[].\n")
        if self.consumer_timeout is not None:
            (self.root / "advanced.config").write_text(
                f"[{{rabbit, [{{consumer_timeout, {self.consumer_timeout}}}, "
                "{channel_tick_interval, 100}]}].\n"
            )
        await self._boot()
        log.info("chaos_rabbitmq_started", node=self.node, port=self.port)

    async def _boot(self) -> None:
        self.starts += 1
        with (self.root / "server.out").open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                str(RABBIT_BIN / "rabbitmq-server"),
                env=self.env(),
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,  # our signals (Ctrl-C) are the harness's to handle
            )
        # The AMQP listener opens at the end of the boot, once the node can take work.
        await port_open(self.port, timeout=120)

    async def ctl(self, *args: str) -> str:
        """rabbitmqctl on the node; tried again when it could not reach the node (exit 69,
        EX_UNAVAILABLE: its own Erlang VM starts slowly on a loaded machine)."""
        command = [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, *args]
        for attempt in range(3):
            try:
                return await run(command, self.env())
            except RuntimeError as exc:
                if " exited 69:" not in str(exc) or attempt == 2:
                    raise
                log.warning("chaos_rabbitmqctl_retry", args=args, error=str(exc)[:300])
        raise AssertionError("unreachable")

    async def stop_app(self) -> None:
        await self.ctl("stop_app")

    async def start_app(self) -> None:
        await self.ctl("start_app")
        await port_open(self.port)

    def beam_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.root / "beam.pid").read_text().strip())
        return None

    async def kill9_and_start(self, down_for: float) -> None:
        """SIGKILL the node's Erlang VM, as a crash would, then boot it again."""
        pid = self.beam_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            await asyncio.wait_for(self.process.wait(), 30)
        await asyncio.sleep(down_for)  # the chaos schedule: how long the broker stays dead
        await self._boot()

    async def stop(self) -> None:
        pid = self.beam_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.process.wait(), 30)
