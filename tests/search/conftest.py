"""The search tests' shared fixtures: the tiny search space as a file (its text and a real
search of it are session fixtures in tests/conftest.py), and a real PostgreSQL server for the
distributed-search tests, one per test session.

The Debian package ``postgresql-15`` (installed by ``.ci/setup-system``, which ``make test`` runs)
provides ``initdb`` and ``pg_ctl``. The fixture makes a throw-away cluster in a temporary folder,
listens only on a unix socket in that folder (no TCP port to collide with anything), and stops the
server and removes the folder at the end of the session, whether the tests passed or not.
PostgreSQL refuses to run as root, so under root the server runs as the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def space_file(tmp_path, tiny_space_text) -> Path:
    """The tiny space (study name "tiny") as a file."""
    path = tmp_path / "space.yaml"
    path.write_text(tiny_space_text())
    return path


INSTALL_HINT = ("PostgreSQL is not installed: run `sudo apt-get install -y postgresql-15` "
                "(Debian; `make test` as root installs it through .ci/setup-system)")


def _postgres_bindir() -> Path | None:
    """The folder of ``initdb``/``pg_ctl``: Debian keeps them off PATH, per major version."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def _as_server_user(argv: list[str]) -> list[str]:
    """``argv`` run as the ``postgres`` user when we are root (initdb and postgres refuse root)."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(_as_server_user(argv), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


@contextlib.contextmanager
def local_postgres_server() -> Iterator[tuple[Path, int]]:
    """Start a throw-away PostgreSQL server; yield (socket folder, port); stop and delete it."""
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip(INSTALL_HINT)
    if os.geteuid() == 0:
        try:
            server_user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as: "
                        "reinstall postgresql-15 (it creates the user) or run the tests as "
                        "another user")
    # Not under pytest's tmp_path: its folders are private to root, the server user must enter.
    root = Path(tempfile.mkdtemp(prefix="nnzip-pg-"))
    data, sockets = root / "data", root / "run"
    sockets.mkdir()
    if os.geteuid() == 0:
        for path in (root, sockets):
            os.chown(path, server_user.pw_uid, server_user.pw_gid)
    port = 5432  # only names the socket file (.s.PGSQL.5432) in our own folder: no TCP
    started = False
    try:
        # trust: only local processes can reach the socket, and it lives in a private folder.
        _run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
              "--no-sync", "--no-instructions", "-E", "UTF8"], "initdb")
        # The data is thrown away: no fsync or durable commits, so a test does not wait on disk.
        options = (f"-c listen_addresses='' -k {sockets} -p {port} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=50")
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l",
              str(root / "server.log"), "-w", "-t", "60", "start"], "pg_ctl start")
        started = True
        yield sockets, port
    finally:
        if started:
            with contextlib.suppress(Exception):
                _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                      "stop"], "pg_ctl stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[tuple[Path, int]]:
    """One PostgreSQL server for the session: (unix socket folder, port)."""
    pytest.importorskip("psycopg2", reason="the PostgreSQL tests need psycopg2: pip install "
                                           "-e '.[dev]'")
    with local_postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> str:
    """A ``postgresql+psycopg2://`` URL to a fresh, empty database on the session's server."""
    import psycopg2

    sockets, port = postgres_server
    name = "nnzip_test"
    connection = psycopg2.connect(dbname="postgres", user="postgres", host=str(sockets),
                                  port=port)
    connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name}")
    finally:
        connection.close()
    return f"postgresql+psycopg2://postgres@/{name}?host={sockets}&port={port}"
