"""Scratch PostgreSQL databases for the store measures, created before and dropped after.

They live on the server the machine provides (127.0.0.1:5432, user postgres, trust auth), the
same one the tests use; the benchmark never touches any database but its own. The scale-out
measure runs a server of its own instead (`private_cluster`), whose cores it can choose.
"""

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil

from bench.processes import READY_SECONDS, Processes, free_port, pinned

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASE = "chatkeep_bench"
CONNECT_SECONDS = 5


@contextmanager
def scratch_database(admin_url: str = ADMIN_URL, name: str = DATABASE) -> Iterator[str]:
    """The URL of a fresh, empty database `name`, dropped when the block ends.

    Raises OSError or asyncpg.PostgresError when the server cannot be reached or refuses.
    """
    drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    asyncio.run(_execute(admin_url, drop, f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rpartition("/")[0] + "/" + name
    finally:
        asyncio.run(_execute(admin_url, drop))


async def _execute(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(url, timeout=CONNECT_SECONDS)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


class NoCluster(OSError):
    """PostgreSQL's server programs are not installed here, or the cluster would not start."""


@dataclass(frozen=True)
class Cluster:
    admin_url: str
    pid: int  # the postmaster's: its children (backends, WAL writer...) are the server's other processes

    def pin(self, cores: Collection[int]) -> None:
        """Move the server's processes to `cores`; backends started later inherit the postmaster's."""
        postmaster = psutil.Process(self.pid)
        for process in [postmaster, *postmaster.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.cpu_affinity(sorted(cores))


@contextmanager
def private_cluster(processes: Processes, cores: Collection[int]) -> Iterator[Cluster]:
    """A PostgreSQL server of the benchmark's own (initdb in a scratch directory, default
    settings, trust on 127.0.0.1), its processes pinned to `cores` until `Cluster.pin` moves
    them: the machine's server cannot be pinned without pinning everyone else's databases.
    As root it runs as the `postgres` user, which PostgreSQL requires. Raises NoCluster."""
    bindir = _bindir()
    as_owner = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="chatkeep-bench-pg-"))
    try:
        if as_owner:
            shutil.chown(root, "postgres", "postgres")
        data = root / "data"
        initdb = [*as_owner, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"]
        done = subprocess.run(initdb, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise NoCluster(f"initdb failed: {done.stderr.strip()[-300:]}")
        port = free_port()
        options = ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={root}"]
        argv = pinned(cores, [*as_owner, str(bindir / "postgres"), "-D", str(data), "-p", str(port), *options])
        with (root / "server.log").open("wb") as log:
            server = processes.popen(argv, stdout=log)
        try:
            url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
            _wait_ready(url, server)
            yield Cluster(url, server.pid)
        finally:
            processes.stop(server)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    on_path = shutil.which("initdb")
    initdb = Path(on_path) if on_path else found[-1] if found else None
    if initdb is None or not (initdb.parent / "postgres").exists():
        raise NoCluster("PostgreSQL's server programs (initdb, postgres) are not installed")
    return initdb.parent


def _wait_ready(url: str, server: "subprocess.Popen[bytes]") -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise NoCluster(f"postgres exited with status {server.returncode}")
        try:
            asyncio.run(_execute(url, "SELECT 1"))
            return
        except (OSError, asyncpg.PostgresError):
            time.sleep(0.2)
    raise NoCluster(f"postgres did not answer within {READY_SECONDS:g} s")
