"""`station cloud up | status | down` as an operator uses them."""
from __future__ import annotations

import click
from click.testing import CliRunner

import station.cloud.cli as cloud_cli
from tests.test_cloud_pki import free_port, make_ca, open_dir  # noqa: F401


def station_cli(data_dir) -> click.Group:
    @click.group()
    @click.pass_context
    def main(ctx):
        ctx.obj = {"data_dir": str(data_dir)}

    main.add_command(cloud_cli.cloud)
    return main


def test_up_status_down(open_dir, monkeypatch):
    ca = make_ca()
    monkeypatch.setattr(cloud_cli, "load_issuing_ca", lambda data: ca)
    cli, runner = station_cli(open_dir), CliRunner()
    admin, device, ota = free_port(), free_port(), free_port()

    stopped = runner.invoke(cli, ["cloud", "status"])
    assert stopped.exit_code == 1 and "broker: not running" in stopped.output

    started = runner.invoke(cli, ["cloud", "up", "--admin-port", str(admin), "--device-port", str(device),
                                  "--device-host", "127.0.0.1", "--ota-port", str(ota)])
    assert started.exit_code == 0, started.output
    assert "update server: running" in started.output and f"127.0.0.1 port {ota} (HTTPS" in started.output
    assert "broker: running" in started.output and f"127.0.0.1 port {device}" in started.output
    assert "registered devices: 0" in started.output

    status = runner.invoke(cli, ["cloud", "status"])
    assert status.exit_code == 0 and f"admin listener: 127.0.0.1:{admin}" in status.output
    password = (open_dir / "cloud" / "admin-password").read_text().strip()
    assert password not in started.output + status.output

    # the update server process (which gave up root if it had it) reads the ledger and the published release
    assert_update_served(open_dir, ca, ota)

    again = runner.invoke(cli, ["cloud", "up"])  # already running: says so, starts nothing
    assert again.exit_code == 0 and f"admin listener: 127.0.0.1:{admin}" in again.output

    down = runner.invoke(cli, ["cloud", "down"])
    assert down.exit_code == 0 and "broker stopped" in down.output and "update server stopped" in down.output
    assert "not running" in runner.invoke(cli, ["cloud", "down"]).output
    assert "update server: not running" in runner.invoke(cli, ["cloud", "status"]).output


def assert_update_served(data, ca, port: int) -> None:
    import hashlib
    import http.client
    import ssl

    from cryptography.hazmat.primitives.asymmetric import rsa

    from station.cloud.ota import publish
    from station.families.esp.signed_image import sign_image
    from station.families.esp.sim.firmware import make_app_image
    from station.identity.ledger import Ledger
    from tests.test_cloud_pki import make_device

    device = make_device(ca, "relay-1", data / "device")
    with Ledger(data / "journal.sqlite3") as ledger:
        ledger.record_issue(device.cert, subject_serial="SN-relay-1", key_origin="host")
    signing = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    firmware = sign_image(make_app_image("ESP8266", "relay", "1.1.0", size=8192, arduino=True), signing)
    publish(data / "ota", "relay", firmware, signing.public_key(), "1.1.0", "relay.bin.signed")

    context = ssl.create_default_context(cafile=device.ca_path)
    context.load_cert_chain(device.cert_path, device.key_path)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    conn.request("GET", "/ota/relay", headers={"User-Agent": "ESP8266-http-Update", "x-ESP8266-mode": "sketch",
                                               "x-ESP8266-STA-MAC": "5C:CF:7F:00:00:01",
                                               "x-ESP8266-version": "1.0.0"})
    answer = conn.getresponse()
    assert (answer.status, answer.read()) == (200, firmware)
    assert answer.getheader("x-MD5") == hashlib.md5(firmware).hexdigest()
    conn.close()


def test_up_without_a_station_ca_says_what_to_do(open_dir):
    result = CliRunner().invoke(station_cli(open_dir), ["cloud", "up", "--admin-port", str(free_port()),
                                                        "--device-port", str(free_port())])
    assert result.exit_code == 1
    assert "CA" in result.output and "Traceback" not in result.output


def test_the_station_ca_runs_the_broker_and_its_device_certificates_get_in(open_dir):
    """The real StationCA (P-384 root, P-256 issuing CA) through the same hand-over `station cloud up` uses."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from station.cloud.broker import BrokerPorts, LocalBroker, issuing_ca_from
    from station.identity.ca import StationCA
    from tests.test_cloud_pki import DeviceFiles, MqttDevice

    station_ca = StationCA.ephemeral("Bench line 1")
    ca = issuing_ca_from(station_ca)
    broker = LocalBroker(open_dir / "cloud", ca, BrokerPorts(admin=free_port(), devices=free_port(),
                                                             devices_host="127.0.0.1"))
    broker.up()
    try:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        cert = station_ca.sign_certificate(
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sensor-17")]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=30)))
        folder = open_dir / "sensor"
        folder.mkdir()
        (folder / "d.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / "d.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
        (folder / "ca.pem").write_bytes(ca.trust_pem())
        with broker.admin_client() as admin:
            admin.register_device("sensor-17")
        device = MqttDevice(DeviceFiles("sensor-17", cert, folder / "d.crt", folder / "d.key", folder / "ca.pem"),
                            broker.ports.devices)
        try:
            assert device.connect().value == 0
            assert device.publish("devices/sensor-17/temp") in (0, 16)
        finally:
            device.close()
    finally:
        broker.down()
