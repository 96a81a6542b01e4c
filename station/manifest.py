"""Export of the journal: one record per device, as JSON lines or CSV.

A record carries public facts only (board, image hashes, steps, who/when/where); secrets never reach it.
`write_jsonl` and `write_csv` are the unsigned exports; `station.manifest_sign` signs the same records as
hash-chained JWS lines and verifies them.
"""
from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from typing import IO, Callable, Iterator

from station.journal import Journal


def rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def device_records(journal: Journal, batch_id: str | None = None,
                   registration: Callable[[str], str | None] | None = None) -> Iterator[dict]:
    """One record per device; `registration(device_id)` gives its cloud registration state when there is one."""
    batches = {b.id: b for b in journal.batches()}
    for dev in journal.devices(batch_id):
        batch = batches[dev.batch_id]
        yield {
            "device_id": dev.id,
            "batch_id": dev.batch_id,
            "lot": batch.lot,
            "profile": batch.profile,
            "profile_sha256": batch.profile_sha256,
            "station_id": batch.station_id,
            "operator": batch.operator,
            "port": dev.port,
            "usb_id": dev.usb_id,
            "family": dev.family,
            "chip": dev.chip,
            "mac": dev.mac,
            "board": dev.board,
            "images": dev.images,
            **({"identity": dev.identity} if dev.identity else {}),
            **({"registration": state} if registration and (state := registration(dev.id)) else {}),
            "result": dev.result,
            "reason": dev.reason,
            "started": rfc3339(dev.started),
            "ended": rfc3339(dev.ended),
            "steps": [{"name": s.name, "attempt": s.attempt, "started": rfc3339(s.started),
                       "ended": rfc3339(s.ended), "result": s.result, "detail": s.detail}
                      for s in journal.steps(dev.id)],
        }


def write_jsonl(records: Iterator[dict], out: IO[str]) -> int:
    count = 0
    for record in records:
        out.write(json.dumps(record, sort_keys=True) + "\n")
        count += 1
    return count


CSV_COLUMNS = ("device_id", "batch_id", "lot", "profile", "station_id", "operator", "port", "usb_id", "chip",
               "mac", "result", "reason", "started", "ended", "images", "steps")


def write_csv(records: Iterator[dict], out: IO[str]) -> int:
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    count = 0
    for record in records:
        row = dict(record)
        row["images"] = " ".join(f"{i['name']}@{i['offset']:#x}:{i.get('sha256', 'secret')}" for i in record["images"])
        row["steps"] = " ".join(f"{s['name']}={s['result']}" for s in record["steps"])
        writer.writerow(row)
        count += 1
    return count
