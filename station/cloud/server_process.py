"""What the local cloud's servers (the Mosquitto broker, the firmware update server) share as processes the
station starts: files written whole, a port checked before and probed after the start, and a PID file that any
later station process can find the server by and stop it with."""
from __future__ import annotations

import os
import pwd
import select
import signal
import socket
from pathlib import Path


def write_file(path: Path, data: bytes, mode: int, owner: pwd.struct_passwd | None = None) -> None:
    """Write next to the final name, fix mode and owner, fsync, then move into place: a reader (or a server
    started now) sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            fd = -1
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        chown(tmp, owner)
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise


def chown(path: Path, owner: pwd.struct_passwd | None) -> None:
    """Hand `path` to the unprivileged user a server started as root runs as."""
    if owner is not None and os.geteuid() == 0 and owner.pw_uid != 0:
        os.chown(path, owner.pw_uid, owner.pw_gid)


def port_taken(host: str, port: int) -> OSError | None:
    """Why a server could not listen on host:port now (None: it could), checked the way servers bind."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc
    return None


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def running_pid(pid_path: Path, marker: str) -> int | None:
    """The PID in `pid_path` if that process is alive and one of its arguments is `marker` (its config or state
    folder): a PID reused by another program since is not ours."""
    try:
        pid = int(pid_path.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError):
        return None
    return pid if state != "Z" and marker.encode() in cmdline else None


def stop(pid: int, timeout: float) -> None:
    """SIGTERM, then SIGKILL after `timeout`; returns once it is gone (waited for through a pidfd, so also a
    server another station process started), reaped when it is this process's child."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        if not select.select([pidfd], [], [], timeout)[0]:
            os.kill(pid, signal.SIGKILL)
            select.select([pidfd], [], [], timeout)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: its parent (or init) reaps it
