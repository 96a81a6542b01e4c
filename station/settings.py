"""Where the station keeps its data, and who and where it is (station id, operator)."""
from __future__ import annotations

import getpass
import json
import os
import socket
import uuid
from pathlib import Path

import platformdirs

APP_NAME = "provisioning-station"


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """--data-dir, else $STATION_DATA_DIR, else the user data dir (~/.local/share/provisioning-station)."""
    chosen = override or os.environ.get("STATION_DATA_DIR") or platformdirs.user_data_dir(APP_NAME)
    path = Path(chosen).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def station_id(data: Path) -> str:
    """A stable id for this station, made once: hostname plus a random suffix (hostnames repeat in labs)."""
    file = data / "station.json"
    if file.exists():
        return json.loads(file.read_text())["station_id"]
    sid = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    tmp = file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"station_id": sid}))
    os.replace(tmp, file)
    return sid


def operator(override: str | None = None) -> str:
    return override or os.environ.get("STATION_OPERATOR") or getpass.getuser()
