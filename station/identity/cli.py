"""`station ca init | import | show`: set up, adopt and inspect the station's certificate authority.

Mounted in station/cli.py with `main.add_command(ca)`; the data dir comes from the root group's
`ctx.obj["data_dir"]` (--data-dir / STATION_DATA_DIR) through station.settings.data_dir, as everywhere else.
Secrets come from STATION_CA_PASSPHRASE / STATION_PKCS11_PIN, the OS keyring, or a prompt in a terminal.
"""
from __future__ import annotations

import os
from pathlib import Path

import click

from station.identity import IdentityError

SOFTHSM2_HINT = "/usr/lib/softhsm/libsofthsm2.so"


def _data_dir(ctx: click.Context) -> Path:
    from station.settings import data_dir

    obj = ctx.obj if isinstance(ctx.obj, dict) else {}
    return data_dir(obj.get("data_dir"))


def _when(dt) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S UTC")


def _print_ca(data: Path, pem: bool = False) -> None:
    from station.identity.ca import describe

    for info in describe(data):
        click.echo(f"{info.role:<12} {info.subject}")
        click.echo(f"{'':<12} SHA-256  {info.sha256}")
        click.echo(f"{'':<12} valid    {_when(info.not_before)} to {_when(info.not_after)}")
        click.echo(f"{'':<12} key      {info.key_location}")
        if pem:
            click.echo(info.pem, nl=False)


@click.group("ca")
def ca() -> None:
    """The station's certificate authority (root, issuing CA, manifest signing key)."""


@ca.command("init")
@click.option("--organization", default="Provisioning Station", show_default=True,
              help="Organization name in the CA certificates' subjects.")
@click.option("--pkcs11-module", type=click.Path(dir_okay=False), metavar="PATH",
              help=f"Make the keys on a PKCS#11 token instead of in encrypted files (e.g. {SOFTHSM2_HINT}).")
@click.option("--token-label", metavar="LABEL", help="Label of the PKCS#11 token (with --pkcs11-module).")
@click.option("--force", is_flag=True, help="Replace an existing CA (the old one is kept as ca.replaced-<time>/).")
@click.pass_context
def init(ctx: click.Context, organization: str, pkcs11_module: str | None, token_label: str | None,
         force: bool) -> None:
    """Create a root CA (P-384), an issuing CA (P-256) and a manifest signing key.

    Keys are stored encrypted with the CA passphrase (STATION_CA_PASSPHRASE, the OS keyring entry
    provisioning-station/ca, or a prompt), or generated on the PKCS#11 token (PIN from STATION_PKCS11_PIN,
    the keyring entry provisioning-station/pkcs11-pin, or a prompt).
    """
    from station.identity.ca import StationCA

    data = _data_dir(ctx)
    try:
        with StationCA.init(data, organization=organization, pkcs11_module=pkcs11_module,
                            token_label=token_label, force=force) as new:
            click.echo(f"Station CA created in {new.ca_dir}")
        _print_ca(data)
    except IdentityError as exc:
        raise click.ClickException(str(exc))
    click.echo("Back up this folder and keep the passphrase (or token) safe: devices identified by this CA can "
               "only be re-issued with its key.", err=True)


@ca.command("import")
@click.option("--chain", "chain_file", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Issuing CA certificate with its chain up to the root (PEM, issuing first).")
@click.option("--key", "key_file", required=True, type=click.Path(dir_okay=False, exists=True),
              help="The issuing CA's private key (PEM or DER, encrypted or not).")
@click.option("--key-passphrase-env", metavar="VAR",
              help="Environment variable with the passphrase of an encrypted --key file (default: the CA "
                   "passphrase lookup).")
@click.option("--force", is_flag=True, help="Replace an existing CA (the old one is kept as ca.replaced-<time>/).")
@click.pass_context
def import_(ctx: click.Context, chain_file: str, key_file: str, key_passphrase_env: str | None,
            force: bool) -> None:
    """Adopt an existing issuing CA; its key is stored encrypted with the CA passphrase."""
    from station.identity.ca import StationCA
    from station.identity.keys import SecretSource

    data = _data_dir(ctx)
    key_source = None
    if key_passphrase_env:
        if os.environ.get(key_passphrase_env) is None:
            raise click.ClickException(f"--key-passphrase-env names {key_passphrase_env}, which is not set; export "
                                       f"it with the passphrase of {key_file}.")
        key_source = SecretSource(f"passphrase of {key_file}", key_passphrase_env, None, interactive=False)
    try:
        with StationCA.import_chain(data, Path(chain_file).read_bytes(), Path(key_file).read_bytes(),
                                    chain_name=chain_file, key_name=key_file, key_passphrase_source=key_source,
                                    force=force) as new:
            click.echo(f"Station CA imported into {new.ca_dir}")
        _print_ca(data)
    except IdentityError as exc:
        raise click.ClickException(str(exc))


@ca.command("show")
@click.option("--pem", is_flag=True, help="Also print each certificate in PEM.")
@click.pass_context
def show(ctx: click.Context, pem: bool) -> None:
    """Print each CA certificate: subject, SHA-256 fingerprint, validity, and where its key lives."""
    try:
        _print_ca(_data_dir(ctx), pem)
    except IdentityError as exc:
        raise click.ClickException(str(exc))
