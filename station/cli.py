"""`station`: the command-line front end of the engine."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import click

from station import services
from station.cloud import CloudError
from station.cloud.cli import cloud, ota
from station.db_cli import db
from station.discovery import Discovery, PortSource, hub_sources
from station.discovery.static_ports import StaticPortSource
from station.engine import BatchSummary, Engine
from station.identity import IdentityError
from station.identity.ca import StationCA
from station.identity.cli import ca
from station.journal import Journal
from station.manifest_sign import verify_command
from station.profile_library import available_profiles, find_profile, shipped_profiles_dir, user_profiles_dir
from station.profiles import Profile, ProfileError, load_profile, resolve_psk
from station.secrets import SecretError
from station.settings import data_dir, db_url, offline_boards, operator, station_id
from station.sim.cli import sim
from station.store import StoreError
from station.terminal import TerminalReport
from station.udev import GROUP

DEMO_PROFILE = "demo-mixed"  # shipped (station_profiles)


class StationGroup(click.Group):
    """A journal file that can't be used, or a secret that can't be found, ends any command with its one-line
    message (which names the file or the place and the fix), never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (StoreError, SecretError) as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=StationGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="STATION_DATA_DIR",
              help="Where the journal lives (default: the user data dir; env STATION_DATA_DIR).")
@click.option("--db", "db_url", metavar="postgresql://USER@HOST[:PORT]/DB", envvar="STATION_DB",
              help="The factory's shared database (env STATION_DB, else `station db init --url`); the password "
                   "comes from STATION_DB_PASSWORD or the keyring, never the URL.")
@click.pass_context
def main(ctx: click.Context, data_dir: str | None, db_url: str | None) -> None:
    """USB provisioning station: many boards at once, every step journaled."""
    ctx.obj = {"data_dir": data_dir, "db": db_url}


main.add_command(sim)
main.add_command(ca)
main.add_command(cloud)
main.add_command(ota)
main.add_command(db)


@main.group()
def manifest() -> None:
    """Signed manifests: check one you received or exported."""


manifest.add_command(verify_command)


def _open_journal(ctx: click.Context, sub: str = "") -> tuple[Journal, Path]:
    base = data_dir(ctx.obj["data_dir"])
    journal, interrupted = services.open_journal(base / sub if sub else base)
    for dev in interrupted:
        click.echo(f"note: board on {dev.port} (batch {dev.batch_id}, {dev.chip or 'chip unknown'}) was interrupted "
                   f"last time; it needs provisioning again.", err=True)
    return journal, base


def _open_record(ctx: click.Context) -> Journal:
    """What `devices` and `export` read: every station's record on the factory database, else this journal."""
    base = data_dir(ctx.obj["data_dir"])
    url = db_url(base, ctx.obj["db"])
    if not url:
        return _open_journal(ctx)[0]
    return services.open_record(base, url, _echo_note)


def _load(name_or_path: str) -> tuple[Profile, str | None]:
    try:
        profile = load_profile(find_profile(name_or_path))
        psk = resolve_psk(profile.wifi) if profile.wifi else None
    except ProfileError as exc:
        raise click.ClickException(str(exc))
    return profile, psk


def _open_ca(ctx: click.Context) -> StationCA:
    """The station CA, unlocked now: a wrong passphrase or a missing token stops us before any board."""
    try:
        return services.open_station_ca(data_dir(ctx.obj["data_dir"]))
    except IdentityError as exc:
        raise click.ClickException(str(exc))


REGISTRATION_GRACE = 15.0  # seconds the command line waits for the cloud after the last board
REPLICATION_GRACE = 15.0  # seconds it waits for the factory database to take the batch's records


async def _run(engine: Engine, one_touch: bool, allowed: set[str] | None) -> BatchSummary:
    if not one_touch:
        summary = await engine.run_batch()
    else:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        click.echo("one-touch armed: plug boards in; Ctrl-C to stop")
        summary = await engine.run_one_touch(stop, allowed)
    if engine.outbox is not None:
        pending = await engine.settle_registrations(REGISTRATION_GRACE)
        if pending:
            click.echo(f"registration pending for {pending} board(s): the cloud did not confirm yet; they stay in "
                       f"the journal and go out the next time the station runs", err=True)
    return summary


def _provision(ctx: click.Context, profile: Profile, psk: str | None, ca: StationCA | None,
               sources: list[PortSource], one_touch: bool, allowed: set[str] | None, operator_name: str | None,
               lot: str, verbose: bool, reprovision: bool = False, journal_sub: str = "",
               broker=None, spark=None) -> BatchSummary:
    journal, base = _open_journal(ctx, journal_sub)
    url = None if journal_sub else db_url(base, ctx.obj["db"])  # the demo's journal is kept apart
    replica = None
    try:
        if url:
            replica = services.open_replica(base, url, station_id(base))
            if not replica.online:
                click.echo(f"warning: {replica.last_error}; provisioning on, the records wait in the journal file",
                           err=True)
        engine = services.build_engine(profile, Discovery(sources), journal, data=base,
                                       operator=operator(operator_name), station_id=station_id(base), lot=lot,
                                       psk=psk, ca=ca, broker=broker, spark=spark, reprovision=reprovision,
                                       replica=replica,
                                       offline_boards=offline_boards(base))
    except (CloudError, ValueError, OSError, StoreError) as exc:  # say why, touch no board
        journal.close()
        if replica is not None:
            replica.close()
        raise click.ClickException(str(exc)) from None
    engine.subscribe(TerminalReport(verbose=verbose))
    click.echo(f"profile: {profile.summary()}")
    try:
        summary = asyncio.run(_run(engine, one_touch, allowed))
    finally:
        engine.close()
        journal.close()
        if replica is not None:
            _hand_in(replica)
    for key, reason in summary.failed.items():
        click.echo(f"FAILED {key}: {reason}", err=True)
    return summary


def _hand_in(replica, grace: float = REPLICATION_GRACE) -> None:
    """Give the factory database a moment to take what the batch wrote; say what still waits, then stop."""
    try:
        left = replica.flush(grace)
    finally:
        replica.close()
    if left:
        click.echo(f"{left} journal entries wait for the station database ({replica.last_error or 'not reached'}); "
                   f"they go out with `station db sync` or the next time the station runs", err=True)


@main.command()
@click.option("--profile", "profile_path", required=True, metavar="NAME|PATH",
              help="Product profile: a TOML file, or the name of one `station profiles` lists.")
@click.option("--port", "ports", multiple=True, metavar="URL",
              help="Only these ports (tty path, socket://host:port, usb://BUS-PORT.PORT); repeatable. Default: "
                   "every known board on USB.")
@click.option("--one-touch", is_flag=True, help="Provision every allowed board that is plugged in, until Ctrl-C.")
@click.option("--allow", "allowed", multiple=True, metavar="LOCATION",
              help="One-touch: only these USB locations act (repeatable).")
@click.option("--sim-registry", type=click.Path(file_okay=False), envvar="STATION_SIM_REGISTRY",
              help="Also find emulated boards served by `station sim esp --registry DIR`.")
@click.option("--operator", "operator_name", help="Who runs the batch (default: $STATION_OPERATOR or login).")
@click.option("--lot", default="", help="Lot / batch label recorded with every board.")
@click.option("--reprovision", is_flag=True,
              help="Give boards that already have an identity a new one (the old certificate is voided).")
@click.option("-v", "--verbose", is_flag=True, help="Show every log line from every port.")
@click.pass_context
def provision(ctx, profile_path, ports, one_touch, allowed, sim_registry, operator_name, lot, reprovision, verbose):
    """Provision the boards on the hub with a profile. Exit code 1 when any board failed."""
    profile, psk = _load(profile_path)
    ca_ = _open_ca(ctx) if profile.identity else None
    sources: list[PortSource]
    if ports:
        try:
            sources = [StaticPortSource(list(ports))]
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--port")
    else:
        sources = hub_sources(Path(sim_registry) if sim_registry else None)
    summary = _provision(ctx, profile, psk, ca_, sources, one_touch, set(allowed) or None, operator_name, lot,
                         verbose, reprovision)
    sys.exit(0 if summary.ok else 1)


@main.command()
@click.option("--boards", default=8, show_default=True, help="How many emulated ESP boards (ESP32, C3, ESP8266 mix).")
@click.option("--dfu-boards", default=4, show_default=True,
              help="How many emulated USB DFU boards (STM32, Spark Core, Photon mix).")
@click.option("--headless", is_flag=True, help="Terminal only, no window.")
@click.option("--faults/--no-faults", default=False, help="Make one board vanish mid-flash, to see a failure.")
@click.option("--throttle/--no-throttle", default=True, show_default=True,
              help="Pace the emulated boards to their real line rate.")
@click.option("--profile", "profile_path", default=DEMO_PROFILE, show_default=True, metavar="NAME|PATH",
              help="A TOML file, or the name of one `station profiles` lists.")
@click.option("-v", "--verbose", is_flag=True)
@click.pass_context
def demo(ctx, boards, dfu_boards, headless, faults, throttle, profile_path, verbose):
    """Provision emulated boards: the whole station with no hardware. Its journal is kept apart (demo/).

    Without a station CA the demo brings an ephemeral one, held in memory for this run; the signed manifest
    it writes at the end says so, and its root certificate is written beside it for `station manifest verify`.
    """
    import secrets

    from station.sim.demo_hub import DemoHub

    # the demo network's passphrase is made up per run unless given; it is never printed
    os.environ.setdefault(services.DEMO_PSK_ENV, secrets.token_urlsafe(16))
    profile, psk = _load(profile_path)
    base = data_dir(ctx.obj["data_dir"])
    if not headless:
        from ui.demo import run_demo  # the window; imported here so the engine never needs Qt

        # the window always shows one board that fails and one that needs a hand, unless --no-faults is given
        with_faults = faults or ctx.get_parameter_source("faults") is click.core.ParameterSource.DEFAULT
        sys.exit(run_demo(data=base / "demo", station_id=station_id(base), boards=boards, dfu_boards=dfu_boards,
                          faults=with_faults, throttle=throttle, profile=profile.path,
                          listeners=[TerminalReport(verbose=verbose)]))
    try:
        ca_ = services.demo_ca(base)
    except IdentityError as exc:
        raise click.ClickException(str(exc))
    with DemoHub.mixed(boards, dfu_boards, faults=faults, throttle=throttle) as hub, \
            services.demo_broker(ca_, _echo_note) as broker, services.demo_spark_server(profile, _echo_note) as spark:
        # the same emulated boards come back every run: each run re-provisions them, as the window's demo does
        summary = _provision(ctx, profile, psk, ca_, hub.sources(), False, None, None, "demo", verbose,
                             reprovision=True, journal_sub="demo", broker=broker, spark=spark)
    out = services.write_demo_manifest(base / "demo", summary.batch_id, ca_, station_id(base))
    click.echo(f"signed manifest: {out}\n  check it: station manifest verify {out} --root {out.parent / 'root.crt'}")
    sys.exit(0 if summary.ok or faults else 1)


@main.command()
def profiles():
    """List the profiles: yours (the user config folder) and the shipped ones; `--profile NAME` takes either."""
    entries = available_profiles()
    for origin, title, folder in (("user", "your profiles", user_profiles_dir()),
                                  ("shipped", "shipped profiles", shipped_profiles_dir())):
        these = [e for e in entries if e.origin == origin]
        click.echo(f"{title}: {folder}" + ("" if these else "  (none yet: copy a shipped one there to change it)"))
        for entry in these:
            try:
                what = load_profile(entry.path).summary()
            except ProfileError as exc:
                what = f"can't be used: {exc}"
            click.echo(f"  {entry.name:<22} {what}" + ("  (yours of the same name is used)" if entry.shadowed else ""))


def _station_command() -> str:
    """How the desktop entry starts this very installation: the bundle's executable or the `station` script."""
    if getattr(sys, "frozen", False):  # PyInstaller sets it
        return sys.executable
    script = Path(sys.argv[0]).absolute()
    return str(script) if script.name == "station" else f"{sys.executable} -m station.cli"


@main.command()
@click.option("--remove", is_flag=True, help="Undo what setup changed (it keeps a record).")
@click.option("--user", help="Who gets access to the boards (default: the user who ran sudo).")
@click.option("--root", "root_dir", default="/", show_default=True, type=click.Path(file_okay=False),
              envvar="STATION_SETUP_ROOT", help="Install under this folder instead (an image being built).")
def setup(remove, user, root_dir):
    """Once per computer, as root: udev rules for the boards, the user in their group, the menu entry."""
    from station.host_setup import SetupError, install, uninstall

    root = Path(root_dir).absolute()
    if root == Path("/") and os.geteuid() != 0:
        line = f"sudo {_station_command()} setup" + (" --remove" if remove else "")
        raise click.ClickException(f"setup changes the system (udev rules, the '{GROUP}' group, the menu "
                                   f"entry) and needs root; run:\n  {line}")
    try:
        said = uninstall(root) if remove else install(root, user or os.environ.get("SUDO_USER"), _station_command())
    except SetupError as exc:
        raise click.ClickException(str(exc))
    for line in said:
        click.echo(line)


@main.command()
@click.pass_context
def doctor(ctx):
    """Check what a bench needs (port access, ModemManager, brltty, Mosquitto, display, token, libusb)."""
    from station.doctor import diagnose, gather_facts

    found = diagnose(gather_facts(data_dir(ctx.obj["data_dir"])))
    for name, problems in found.items():
        if not problems:
            click.echo(f"ok       {name}")
        for problem in problems:
            click.echo(f"PROBLEM  {problem.what}\n         fix: {problem.fix}")
    sys.exit(1 if any(found.values()) else 0)


@main.command(add_help_option=False, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def gui(ctx):
    """The station's window over the real USB hub (options: station gui --help)."""
    from ui.app import main as window  # imported here so the engine never needs Qt

    data = ["--data-dir", ctx.obj["data_dir"]] if ctx.obj["data_dir"] else []
    sys.exit(window(data + ctx.args))


def _echo_note(text: str, level: str) -> None:
    click.echo(text, err=level != "info")


@main.command()
@click.argument("device_id")
@click.option("--reason", required=True, help="Why (recorded with the voided certificate).")
@click.pass_context
def void(ctx, device_id, reason):
    """Void a provisioned board: its certificate is voided, and the cloud removes and revokes it."""
    from station.voiding import VoidError, void_device

    journal, _ = _open_journal(ctx)
    try:
        done = void_device(journal, device_id, reason)
    except VoidError as exc:
        raise click.ClickException(str(exc))
    finally:
        journal.close()
    click.echo(done + " (delivered now by `station cloud sync`, or the next time the station runs)")


@main.command()
@click.option("--batch", "batch_id", help="Only this batch.")
@click.pass_context
def devices(ctx, batch_id):
    """List provisioned devices from the journal (every station's, with a factory database)."""
    journal = _open_record(ctx)
    rows = journal.devices(batch_id)
    width = max([len(d.station_id) for d in rows] + [7])
    click.echo(f"{'device id':<32} {'result':<12} {'station':<{width}} {'port':<14} {'chip':<10} {'mac':<18} "
               f"{'batch':<24} reason")
    for d in rows:  # the device id is what `station void` takes (or enough of its start to be unique)
        click.echo(f"{d.id:<32} {d.result:<12} {d.station_id:<{width}} {d.port:<14} {d.chip:<10} {d.mac:<18} "
                   f"{d.batch_id:<24} {d.reason}")
    click.echo(f"{len(rows)} devices")
    journal.close()


@main.command()
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True,
              help="jsonl: the signed, hash-chained manifest; csv: a plain table for spreadsheets.")
@click.option("--batch", "batch_id", help="Only this batch.")
@click.option("--unsigned", is_flag=True, help="JSON lines without signatures (no CA needed).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="File to write (default: stdout).")
@click.pass_context
def export(ctx, fmt, batch_id, unsigned, output):
    """Export device records: identity, board facts, image hashes, steps, who/when/where."""
    from functools import partial

    from station.cloud.outbox import Outbox
    from station.manifest import device_records, write_csv, write_jsonl
    from station.manifest_sign import sign_manifest

    base = data_dir(ctx.obj["data_dir"])
    journal = _open_record(ctx)
    outbox = Outbox(journal.path)
    try:
        states = outbox.device_states()  # each record carries its registration state, as the window's export does
    finally:
        outbox.close()
    if fmt == "csv":
        write = write_csv
    elif unsigned:
        write = write_jsonl
    else:
        ca_ = _open_ca(ctx)
        key, chain = ca_.manifest_signer()
        write = partial(sign_manifest, private_key=key, chain=chain, station_id=station_id(base),
                        ephemeral_ca=ca_.is_ephemeral)
    if output:
        tmp = Path(output).with_suffix(Path(output).suffix + ".part")
        with open(tmp, "w", newline="") as out:
            count = write(device_records(journal, batch_id, registration=states.get), out=out)
        os.replace(tmp, output)  # a failed export never leaves a half-written file under the real name
        click.echo(f"{count} records written to {output}", err=True)
    else:
        write(device_records(journal, batch_id, registration=states.get), out=sys.stdout)
    journal.close()


if __name__ == "__main__":
    main()
