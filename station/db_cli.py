"""`station db init|migrate|status|sync`: the factory's shared PostgreSQL database (station/replica.py)."""
from __future__ import annotations

import time

import click

from station.settings import data_dir, db_url, save_setting, station_id
from station.store import StoreError


def _url(ctx: click.Context) -> str:
    url = db_url(data_dir(ctx.find_root().obj["data_dir"]), ctx.find_root().obj["db"])
    if not url:
        raise click.ClickException("No station database is set; pass --db postgresql://USER@HOST/DB (or set "
                                   "STATION_DB, or `station db init --url …` to keep it in this station's settings).")
    return url


@click.group()
def db() -> None:
    """The factory's shared database: every station's devices, certificates and serial numbers."""


@db.command()
@click.option("--url", metavar="postgresql://USER@HOST[:PORT]/DB",
              help="Keep this URL in the station's settings (no password in it) and set its tables up.")
@click.option("--offline-boards", type=click.IntRange(0, 10_000),
              help="How many boards this station may provision while the database is away (default 10).")
@click.pass_context
def init(ctx, url, offline_boards):
    """Set up the tables on the database (and remember its URL for this station)."""
    from station.pg import check_url, redact
    from station.replica import migrate_all

    base = data_dir(ctx.find_root().obj["data_dir"])
    if url:
        check_url(url)
    target = url or _url(ctx)
    ran = migrate_all(target)
    if url:
        save_setting(base, "db", url)
    if offline_boards is not None:
        save_setting(base, "offline_boards", offline_boards)
    click.echo(f"station database {redact(target)} ready ({sum(ran.values())} migration steps run); this station "
               f"is {station_id(base)}")


@db.command()
@click.pass_context
def migrate(ctx):
    """Bring the database's tables up to this station's version."""
    from station.pg import redact
    from station.replica import migrate_all

    url = _url(ctx)
    ran = migrate_all(url)
    done = ", ".join(f"{name} +{n}" for name, n in ran.items() if n) or "nothing to do"
    click.echo(f"{redact(url)}: {done}")


@db.command()
@click.pass_context
def status(ctx):
    """Versions, stations and what waits in this station's spool. Exit code 1 when the database can't be used."""
    from station.pg import redact
    from station.replica import status as db_status

    url = _url(ctx)
    base = data_dir(ctx.find_root().obj["data_dir"])
    spool = _spooled(base)
    try:
        info = db_status(url)
    except StoreError as exc:
        click.echo(f"{exc}\nthis station: {spool} journal entries wait in its spool")
        raise SystemExit(1)
    behind = [name for name, v in info["expected"].items() if info["versions"].get(name, 0) < v]
    click.echo(f"database: {redact(url)}")
    click.echo("tables: " + ("up to date" if not behind else f"not up to date ({', '.join(behind)}): run "
                                                              f"`station db migrate`"))
    for sid, updated, devices in info.get("stations", []):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(updated))
        click.echo(f"station {sid}: {devices} devices, last record {when}")
    click.echo(f"this station ({station_id(base)}): {spool} journal entries wait in its spool")
    for serial in info.get("twice_live", []):
        click.echo(f"warning: device serial {serial} has a live certificate from two stations (provisioned while "
                   f"the database was away); void one with `station void`")
    raise SystemExit(1 if behind else 0)


@db.command()
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the database.")
@click.pass_context
def sync(ctx, timeout):
    """Send what waits in this station's spool to the database now."""
    from station.services import JOURNAL_FILE, open_replica

    base = data_dir(ctx.find_root().obj["data_dir"])
    replica = open_replica(base, _url(ctx), station_id(base))
    try:
        left = replica.flush(timeout)
    finally:
        replica.close()
    if left:
        raise click.ClickException(f"{left} journal entries still wait ({replica.last_error or 'database not reached'});"
                                   f" they stay in {base / JOURNAL_FILE}")
    click.echo(f"{replica.sent} journal entries sent; nothing waits")


def _spooled(base) -> int:
    import sqlite3
    from contextlib import closing

    from station.services import JOURNAL_FILE

    path = base / JOURNAL_FILE
    if not path.exists():
        return 0
    with closing(sqlite3.connect(path)) as conn:
        try:
            return conn.execute("SELECT COUNT(*) FROM spool").fetchone()[0]
        except sqlite3.OperationalError:  # never pointed at a database: no spool
            return 0
