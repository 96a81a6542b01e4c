"""The window's own settings, kept in the data dir as JSON (ui.json): the hub layout and a few preferences.

The hub layout is the order of the USB locations the station has seen, the names a supervisor gave them
("A1".."B4"), the one-touch allow-list and the number of columns, so the grid looks the same tomorrow.
A location once seen stays in the grid (as an empty tile) until a supervisor forgets it, so pulling a board
never reshuffles the tiles. Writes are tiny and atomic (temp file + rename).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path


def natural(key: str) -> list:
    """"sim-1.10" sorts after "sim-1.9", as the hub numbers its ports."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", key) if p]


class UiSettings:
    FILE = "ui.json"

    def __init__(self, folder: Path):
        self.path = Path(folder) / self.FILE
        self.order: list[str] = []
        self.names: dict[str, str] = {}
        self.allowed: set[str] = set()  # one-touch allow-list; the engine reads this very set while armed
        self.columns = 0  # 0: fit the window
        self.sound = False
        self.prompt_sound = True  # a board that needs a hand is heard from any tab (and any window)
        self.lot_required = False  # no batch starts without a lot
        self.profile = ""  # the last profile used
        # per USB location: [passed, failed] since the supervisor last reset the counters (a bad cable shows)
        self.yields: dict[str, list[int]] = {}
        self.yields_since = ""  # when they were reset, "YYYY-MM-DD HH:MM"
        self.load_error = ""
        self.load()

    # --- persistence -------------------------------------------------------------------------------------

    def load(self) -> None:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            self.load_error = f"{self.path}: unreadable ({exc}); starting with a fresh layout"
            return
        ports = raw.get("ports", [])
        self.order = [p["key"] for p in ports if isinstance(p, dict) and isinstance(p.get("key"), str)]
        self.names = {p["key"]: p["name"] for p in ports if isinstance(p, dict) and p.get("name")}
        self.allowed.clear()
        self.allowed.update(p["key"] for p in ports if isinstance(p, dict) and p.get("one_touch"))
        self.columns = int(raw.get("columns", 0) or 0)
        self.sound = bool(raw.get("sound", False))
        self.prompt_sound = bool(raw.get("prompt_sound", True))
        self.lot_required = bool(raw.get("lot_required", False))
        self.profile = str(raw.get("profile", "") or "")
        self.yields = {p["key"]: [int(n) for n in p["yield"][:2]] for p in ports if isinstance(p, dict)
                       and isinstance(p.get("key"), str) and isinstance(p.get("yield"), list)
                       and len(p["yield"]) >= 2 and all(isinstance(n, int) for n in p["yield"][:2])}
        self.yields_since = str(raw.get("yields_since", "") or "")

    def save(self) -> None:
        data = {
            "ports": [{"key": k, "name": self.names.get(k, ""), "one_touch": k in self.allowed,
                       "yield": self.yields.get(k, [0, 0])} for k in self.order],
            "columns": self.columns,
            "sound": self.sound,
            "prompt_sound": self.prompt_sound,
            "lot_required": self.lot_required,
            "profile": self.profile,
            "yields_since": self.yields_since,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)

    # --- the hub layout ----------------------------------------------------------------------------------

    def add_port(self, key: str) -> bool:
        """Remember a USB location; True if it is new. New ones go where the hub's numbering puts them."""
        if key in self.order:
            return False
        if self.order == sorted(self.order, key=natural):
            self.order.append(key)
            self.order.sort(key=natural)
        else:  # a supervisor arranged the tiles by hand: keep that, add at the end
            self.order.append(key)
        return True

    def name(self, key: str) -> str:
        return self.names.get(key) or key

    def rename(self, key: str, name: str) -> None:
        name = name.strip()
        if name:
            self.names[key] = name
        else:
            self.names.pop(key, None)

    def set_allowed(self, key: str, allowed: bool) -> None:
        if allowed:
            self.allowed.add(key)
        else:
            self.allowed.discard(key)

    def forget(self, key: str) -> None:
        if key in self.order:
            self.order.remove(key)
        self.names.pop(key, None)
        self.allowed.discard(key)

    def move(self, key: str, delta: int) -> None:
        i = self.order.index(key)
        j = max(0, min(len(self.order) - 1, i + delta))
        self.order.insert(j, self.order.pop(i))

    def count(self, key: str, passed: bool) -> None:
        tally = self.yields.setdefault(key, [0, 0])
        tally[0 if passed else 1] += 1

    def reset_yields(self, since: str) -> None:
        self.yields.clear()
        self.yields_since = since

    def auto_name(self, columns: int) -> None:
        """Name the tiles row by row as the grid shows them, A1 A2 … / B1 B2 …, and keep the grid at that many
        columns, so a name keeps meaning its place."""
        columns = max(1, columns)
        self.columns = columns
        for n, key in enumerate(self.order):
            row, col = divmod(n, columns)
            letters = ""
            row += 1
            while row:
                row, rem = divmod(row - 1, 26)
                letters = chr(ord("A") + rem) + letters
            self.names[key] = f"{letters}{col + 1}"
