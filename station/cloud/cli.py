"""`station cloud up | down | status`: the local Mosquitto broker the station registers boards with, and the
firmware update server beside it; `station ota publish`: a signed firmware becomes a profile's current release.

Mounted by station/cli.py (`main.add_command(cloud)`, `main.add_command(ota)`); the data dir comes from
`ctx.obj["data_dir"]`.
"""
from __future__ import annotations

from pathlib import Path

import click

from station.cloud import BrokerError, CloudError
from station.cloud.broker import BrokerPorts, LocalBroker, broker_state_dir, default_server_names, issuing_ca_from
from station.cloud.tls import IssuingCA
from station.cloud.update_server import UpdateServerConfig, UpdateService
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


def _updates(ctx: click.Context, config: UpdateServerConfig | None = None, ca: IssuingCA | None = None,
             server_names: list[str] | None = None) -> UpdateService:
    return UpdateService(data_dir(ctx.obj["data_dir"]) / "cloud" / "update-server", config, ca,
                         server_names or default_server_names())


@click.group()
def cloud() -> None:
    """The local cloud: a Mosquitto broker with dynamic security that devices join with their certificates, and
    an HTTPS firmware update server for the ESP8266 update client."""


@cloud.command()
@click.option("--admin-port", default=1883, show_default=True, help="Admin/control listener (127.0.0.1 only).")
@click.option("--device-port", default=8883, show_default=True, help="TLS listener for devices.")
@click.option("--device-host", default="", help="Address the device listener binds (default: all interfaces).")
@click.option("--server-name", "server_names", multiple=True, metavar="NAME",
              help="Host name or address devices use to reach the broker and the update server; repeatable "
                   "(default: localhost, 127.0.0.1, this host's name and NAME.local).")
@click.option("--ota-port", default=8443, show_default=True, type=click.IntRange(1, 65535),
              help="HTTPS port of the firmware update server (on --device-host).")
@click.option("--ota-client-certs/--no-ota-client-certs", default=True, show_default=True,
              help="Serve updates only to boards showing their certificate, registered and not voided.")
@click.pass_context
def up(ctx, admin_port, device_port, device_host, server_names, ota_port, ota_client_certs):
    """Start the broker and the update server (or report those already running)."""
    data = data_dir(ctx.obj["data_dir"])
    config = UpdateServerConfig(device_host, ota_port, str(data / "ota"), str(data / "journal.sqlite3"),
                                ota_client_certs)
    try:
        ports = BrokerPorts(admin=admin_port, devices=device_port, devices_host=device_host)
        broker = _broker(ctx, None, ports, list(server_names))
        updates = _updates(ctx, config, None, list(server_names))
        if broker.status().running and updates.running_pid() is not None:
            click.echo("\n".join(broker.status().lines() + [updates.status_line()]))
            return
        ca = load_issuing_ca(data)
        broker.ca = updates.ca = ca
        status = broker.up()
        line = updates.up()
    except CloudError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("\n".join(status.lines() + [line]))
    click.echo(f"state: {broker.state_dir} (log: {broker.log_path}); update server log: {updates.log_path}")


@cloud.command()
@click.pass_context
def down(ctx):
    """Stop the broker and the update server (SIGTERM, then SIGKILL after 10 s)."""
    try:
        stopped = _broker(ctx).down()
        updates_stopped = _updates(ctx).down()
    except (BrokerError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("broker stopped" if stopped else "broker was not running")
    click.echo("update server stopped" if updates_stopped else "update server was not running")


@cloud.command()
@click.pass_context
def status(ctx):
    """Is the broker running; its ports; how many devices are registered and connected. Exit 1 if stopped."""
    broker = _broker(ctx)
    state = broker.status()
    click.echo("\n".join(state.lines() + [_updates(ctx).status_line()]))
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


@click.group()
def ota() -> None:
    """Firmware updates the local cloud serves (`station cloud up`) to boards running the ESP8266 update client."""


@ota.command()
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option("--profile", "profile_name", required=True, help="The profile (name or file) whose boards update.")
@click.option("--version", "version", required=True, help="The release's version, as the firmware reports it "
                                                         "(x-ESP8266-version), e.g. 2.2.0.")
@click.pass_context
def publish(ctx, file, profile_name, version):
    """Check FILE's signature under the profile's signing key and make it the profile's current release."""
    from station.cloud.ota import MAX_RELEASE_BYTES, OtaError, channel_of, ota_dir, signing_key_of
    from station.cloud.ota import publish as publish_release
    from station.profile_library import find_profile
    from station.profiles import ProfileError, load_profile, read_regular_file

    try:
        profile = load_profile(find_profile(profile_name))
        channel = channel_of(profile.path)
        key = signing_key_of(profile)
        data = read_regular_file(Path(file), MAX_RELEASE_BYTES)
        release = publish_release(ota_dir(data_dir(ctx.obj["data_dir"])), channel, data, key, version,
                                  Path(file).name)
    except (ProfileError, OtaError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{file} can't be read ({exc.strerror}); name the signed firmware file") from None
    click.echo(f"published {release.file_name} as version {release.version} of {channel}: {release.size} bytes, "
               f"MD5 {release.md5}, signed by key {release.signer[:16]}…")
    click.echo(f"boards ask https://<station>:<ota port>/ota/{channel}")
