"""A real PostgreSQL server for the tests: Debian's `postgresql` binaries, initdb + pg_ctl in a temporary folder,
run as an unprivileged user on a loopback port, stopped (or killed) by the PID in its postmaster.pid.

A role `station` with a password and one database per test (`fresh_database`), as a factory would set it up.
"""
from __future__ import annotations

import os
import pwd
import select
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg

PG_BIN = Path("/usr/lib/postgresql/15/bin")
RUN_AS = "postgres"  # made by Debian's postgresql package; an unprivileged system user
ROLE, PASSWORD = "station", "station-db-password-for-tests"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self) -> None:
        self.user = pwd.getpwnam(RUN_AS)
        self.folder = Path(tempfile.mkdtemp(prefix="station-pg-"))
        os.chown(self.folder, self.user.pw_uid, self.user.pw_gid)
        self.data = self.folder / "data"
        self.port = free_port()
        self._count = 0

    def _as_user(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", RUN_AS, "--", *args], check=True, capture_output=True, timeout=120)

    def init(self) -> "PgServer":
        pwfile = self.folder / "pw"
        pwfile.write_text("superuser-password\n")
        os.chown(pwfile, self.user.pw_uid, self.user.pw_gid)
        self._as_user(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--no-sync",
                      "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}")
        return self

    def start(self) -> "PgServer":
        """Started and accepting connections when this returns (pg_ctl -w waits for that)."""
        self._as_user(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"), "-w", "-o",
                      f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.folder}"
                      f" -c max_connections=300", "start")
        return self

    @property
    def pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def _signal_and_wait(self, sig: int) -> None:
        pid = self.pid
        fd = os.pidfd_open(pid)
        try:
            os.kill(pid, sig)
            select.select([fd], [], [], 60)
        finally:
            os.close(fd)

    def kill(self) -> None:
        """Immediate shutdown (SIGQUIT): no checkpoint, every connection dropped; the next start recovers."""
        self._signal_and_wait(signal.SIGQUIT)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._signal_and_wait(signal.SIGINT)  # fast shutdown

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(host=str(self.folder), port=self.port, user="postgres", dbname="postgres",
                               autocommit=True)

    def setup_role(self) -> None:
        with self.admin() as db:
            db.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")

    def fresh_database(self) -> str:
        """A new empty database owned by the station role; its URL (no password: that is in the environment)."""
        self._count += 1
        name = f"factory{self._count}"
        with self.admin() as db:
            db.execute(f"CREATE DATABASE {name} OWNER {ROLE}")
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{name}"
