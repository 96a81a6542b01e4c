"""`station cloud up | down | status`: the local Mosquitto broker the station registers boards with.

Mounted by station/cli.py (`main.add_command(cloud)`); the data dir comes from `ctx.obj["data_dir"]`.
"""
from __future__ import annotations

from pathlib import Path

import click

from station.cloud import BrokerError, CloudError
from station.cloud.broker import BrokerPorts, LocalBroker, broker_state_dir, issuing_ca_from
from station.cloud.tls import IssuingCA
from station.settings import data_dir


def load_issuing_ca(data: Path) -> IssuingCA:
    """The station CA (unlocked: env STATION_CA_PASSPHRASE, the keyring or a prompt), for the broker."""
    from station.identity.ca import StationCA

    try:
        return issuing_ca_from(StationCA.load(data))
    except (ValueError, OSError) as exc:  # CAError / SecretError are ValueErrors with plain messages
        raise click.ClickException(str(exc)) from None


def _broker(ctx: click.Context, ca: IssuingCA | None = None, ports: BrokerPorts | None = None,
            server_names: list[str] | None = None) -> LocalBroker:
    return LocalBroker(broker_state_dir(data_dir(ctx.obj["data_dir"])), ca, ports,
                       server_names=server_names or None)


@click.group()
def cloud() -> None:
    """The local cloud: a Mosquitto broker with dynamic security that devices join with their certificates."""


@cloud.command()
@click.option("--admin-port", default=1883, show_default=True, help="Admin/control listener (127.0.0.1 only).")
@click.option("--device-port", default=8883, show_default=True, help="TLS listener for devices.")
@click.option("--device-host", default="", help="Address the device listener binds (default: all interfaces).")
@click.option("--server-name", "server_names", multiple=True, metavar="NAME",
              help="Host name or address devices use to reach the broker; repeatable (default: localhost, "
                   "127.0.0.1, this host's name and NAME.local).")
@click.pass_context
def up(ctx, admin_port, device_port, device_host, server_names):
    """Start the broker (or report the one already running)."""
    data = data_dir(ctx.obj["data_dir"])
    try:
        ports = BrokerPorts(admin=admin_port, devices=device_port, devices_host=device_host)
        broker = _broker(ctx, None, ports, list(server_names))
        if broker.status().running:
            click.echo("\n".join(broker.status().lines()))
            return
        broker.ca = load_issuing_ca(data)
        status = broker.up()
    except CloudError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("\n".join(status.lines()))
    click.echo(f"state: {broker.state_dir} (log: {broker.log_path})")


@cloud.command()
@click.pass_context
def down(ctx):
    """Stop the broker (SIGTERM, then SIGKILL after 10 s)."""
    try:
        stopped = _broker(ctx).down()
    except (BrokerError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("broker stopped" if stopped else "broker was not running")


@cloud.command()
@click.pass_context
def status(ctx):
    """Is the broker running; its ports; how many devices are registered and connected. Exit 1 if stopped."""
    broker = _broker(ctx)
    state = broker.status()
    click.echo("\n".join(state.lines()))
    ctx.exit(0 if state.running else 1)


@cloud.command()
@click.pass_context
def sync(ctx):
    """Deliver what waits in the outbox for the local broker (registrations and voids) now."""
    from station.cloud.outbox import PENDING, Outbox
    from station.cloud.registrar import VOID
    from station.journal import Journal

    data = data_dir(ctx.obj["data_dir"])
    broker = _broker(ctx)
    if not broker.status().running:
        raise click.ClickException("the local broker is not running; start it with `station cloud up`")
    journal = Journal(data / "journal.sqlite3")
    outbox = Outbox(journal.path)
    try:
        if any(row.action == VOID for row in outbox.rows(PENDING)):
            broker.ca = load_issuing_ca(data)  # revoking signs a new CRL with the issuing key
        outbox.due_now(["mosquitto"])  # asked for now: the backoff is for the background runner
        attempted = outbox.deliver_due({"mosquitto": broker.registrar("mosquitto")})
        counts = outbox.counts()
    finally:
        outbox.close()
        journal.close()
    click.echo(f"{attempted} sent; {counts['pending']} pending, {counts['delivered']} delivered, "
               f"{counts['failed']} failed")
