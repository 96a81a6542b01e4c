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
    sid = _settings(data).get("station_id")
    if sid:
        return sid
    sid = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    save_setting(data, "station_id", sid)
    return sid


def _settings(data: Path) -> dict:
    file = data / "station.json"
    return json.loads(file.read_text()) if file.exists() else {}


def save_setting(data: Path, key: str, value) -> None:
    """One entry of data/station.json (beside the station id), written whole so a crash leaves the old file."""
    settings = _settings(data)
    settings[key] = value
    tmp = (data / "station.json").with_suffix(".tmp")
    tmp.write_text(json.dumps(settings, sort_keys=True))
    os.replace(tmp, data / "station.json")


def db_url(data: Path, override: str | None = None) -> str | None:
    """The factory database's URL: --db, else $STATION_DB, else the settings' "db"; None: the journal file alone.
    Never holds the password (station/pg.py refuses a URL with one)."""
    return override or os.environ.get("STATION_DB") or _settings(data).get("db") or None


def offline_boards(data: Path) -> int:
    """How many boards the station may provision while the factory database is away (serials reserved ahead)."""
    from station.serials import DEFAULT_AHEAD

    value = os.environ.get("STATION_OFFLINE_BOARDS") or _settings(data).get("offline_boards") or DEFAULT_AHEAD
    return max(0, int(value))


def operator(override: str | None = None) -> str:
    return override or os.environ.get("STATION_OPERATOR") or getpass.getuser()
