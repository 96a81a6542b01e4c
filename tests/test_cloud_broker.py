"""The local broker, for real: Mosquitto 2 with dynamic security on loopback, devices with certificates."""
from __future__ import annotations

import json
import os
import pwd
import socket
import stat
from pathlib import Path

import pytest

from station.cloud import BrokerError, CloudUnavailable
from station.cloud.broker import BrokerPorts, LocalBroker, blocking_folder
from station.cloud.dynsec import AdminLoginRefused, DeviceConflict, DynsecClient, check_device_name
from station.cloud.registrar import DeviceRegistration
from tests.test_cloud_pki import MqttDevice, free_port, make_ca, make_device, open_dir, tls_refusal  # noqa: F401

ACCEPTED = (0, 16)  # PUBACK: success, or "no matching subscribers"
NOT_AUTHORIZED = 135


def new_broker(state: Path, ca=None, **kw) -> LocalBroker:
    ports = BrokerPorts(admin=free_port(), devices=free_port(), devices_host="127.0.0.1")
    return LocalBroker(state, ca or make_ca(), ports, **kw)


@pytest.fixture
def broker(open_dir):
    b = new_broker(open_dir / "cloud")
    b.up()
    yield b
    b.down()


@pytest.fixture
def devices(broker, open_dir):
    made = []

    def make(cn: str, ca=None):
        files = make_device(ca or broker.ca, cn, open_dir / "devices")
        return files

    def connect(files):
        dev = MqttDevice(files, broker.ports.devices)
        made.append(dev)
        return dev

    yield make, connect
    for dev in made:
        dev.close()


def test_registered_device_talks_on_its_own_topics_and_nowhere_else(broker, devices):
    make, connect = devices
    dev1 = make("dev-1")
    registrar = broker.registrar()
    result = registrar.register(DeviceRegistration.from_certificate("board-1", dev1.cert))
    assert result.changed and result.device_id == "board-1"

    device = connect(dev1)
    assert device.connect().value == 0
    assert device.subscribe("devices/dev-1/#") in (0, 1)  # granted QoS
    assert device.publish("devices/dev-1/x", b"21.5") in ACCEPTED
    device.wait(lambda: ("devices/dev-1/x", b"21.5") in device.messages, "its own message back")
    assert device.publish("devices/dev-2/x") == NOT_AUTHORIZED
    assert device.subscribe("devices/dev-2/#") == NOT_AUTHORIZED
    assert device.publish("elsewhere") == NOT_AUTHORIZED
    registrar.close()


def test_a_certificate_from_the_station_ca_that_was_never_registered_can_do_nothing(broker, devices):
    make, connect = devices
    device = connect(make("dev-stranger"))
    # Mosquitto 2.0.11 accepts the connection (use_identity_as_username skips the password check) ...
    assert device.connect().value == 0
    # ... but without a dynsec client the device may neither publish nor subscribe, even on "its" prefix
    assert device.publish("devices/dev-stranger/x") == NOT_AUTHORIZED
    assert device.subscribe("devices/dev-stranger/#") == NOT_AUTHORIZED


def test_a_device_certificate_from_another_ca_is_refused_at_the_handshake(broker, devices, open_dir):
    make, _ = devices
    other = make_device(make_ca("Other"), "dev-1", open_dir / "other")
    # the device trusts the station (it would otherwise refuse the broker first); the broker refuses it
    other_trusting_station = type(other)(other.cn, other.cert, other.cert_path, other.key_path,
                                         make("dev-x").ca_path)
    assert "UNKNOWN_CA" in (tls_refusal(other_trusting_station, broker.ports.devices) or "")


def test_a_voided_device_is_disconnected_and_can_never_connect_again(broker, devices):
    make, connect = devices
    dev3, dev4 = make("dev-3"), make("dev-4")
    registrar = broker.registrar()
    rec3 = DeviceRegistration.from_certificate("board-3", dev3.cert)
    registrar.register(rec3)
    registrar.register(DeviceRegistration.from_certificate("board-4", dev4.cert))
    session = connect(dev3)
    assert session.connect().value == 0
    assert tls_refusal(dev3, broker.ports.devices) is None

    result = registrar.void(rec3)
    assert result.changed and f"{dev3.serial:X}" in result.detail
    session.wait(lambda: session.disconnected is not None, "the broker to drop the voided device's session")
    assert "REVOKED" in (tls_refusal(dev3, broker.ports.devices) or "")
    assert tls_refusal(dev4, broker.ports.devices) is None  # the others are untouched, ACLs included
    other = connect(dev4)
    assert other.connect().value == 0 and other.publish("devices/dev-4/x") in ACCEPTED
    # voiding again is harmless, and the revocation is still there after a restart (the CRL is re-signed)
    assert registrar.void(rec3).changed is False
    registrar.close()
    broker.down()
    broker.up()
    assert "REVOKED" in (tls_refusal(dev3, broker.ports.devices) or "")
    assert tls_refusal(dev4, broker.ports.devices) is None


def test_registering_again_is_a_no_op_and_a_foreign_name_is_never_taken_over(broker):
    with broker.admin_client() as admin:
        outcomes = admin.register_devices([(f"bulk-{i}", "devices") for i in range(50)])
        assert [o.error for o in outcomes] == [None] * 50 and all(o.changed for o in outcomes)
        again = admin.register_devices([(f"bulk-{i}", "devices") for i in range(50)])
        assert [(o.changed, o.error) for o in again] == [(False, None)] * 50
        assert sorted(admin.list_clients()) == sorted(["admin"] + [f"bulk-{i}" for i in range(50)])
        role = admin.get_role("dev-bulk-7")
        assert {(a["acltype"], a["topic"]) for a in role["acls"]} == {
            (t, "devices/bulk-7/#") for t in ("publishClientSend", "publishClientReceive", "subscribePattern",
                                              "unsubscribePattern")}

        # a client of that name that someone else made (other roles) is not silently adopted
        admin.run([{"command": "createRole", "rolename": "ops"},
                   {"command": "createClient", "username": "dev-9", "roles": [{"rolename": "ops"}]}])
        with pytest.raises(DeviceConflict, match="already has a client 'dev-9'"):
            admin.register_device("dev-9")
        # same name under another topic prefix: the existing role does not match either
        with pytest.raises(DeviceConflict, match="other ACLs"):
            admin.register_device("bulk-3", "factory")
        assert admin.get_client("dev-9")["roles"] == [{"rolename": "ops"}]


def test_wrong_admin_password_is_a_clear_error_without_the_password(broker):
    wrong = "not-the-password-" + "x" * 10
    with pytest.raises(AdminLoginRefused) as info:
        DynsecClient("127.0.0.1", broker.ports.admin, wrong, timeout=5).connect()
    assert "refused the admin login for 'admin'" in str(info.value)
    assert wrong not in str(info.value) and broker.admin_password() not in str(info.value)


def test_admin_client_says_when_the_broker_is_not_there():
    with pytest.raises(CloudUnavailable, match="does not accept connections"):
        DynsecClient("127.0.0.1", free_port(), "pw", timeout=5).connect()


def test_state_survives_a_restart_and_status_counts_devices(broker, devices):
    make, connect = devices
    dev = make("dev-keep")
    with broker.admin_client() as admin:
        admin.register_device("dev-keep")
    first = broker.status()
    assert first.running and first.registered_devices == 1
    pid = first.pid
    assert broker.down() is True
    assert not broker.status().running and not Path(f"/proc/{pid}").exists()
    assert broker.down() is False

    again = LocalBroker(broker.state_dir, broker.ca)  # a new process would know only the state dir
    assert again.up().running and again.status().registered_devices == 1
    device = connect(dev)
    assert device.connect().value == 0 and device.publish("devices/dev-keep/t") in ACCEPTED
    assert again.up().pid == again.status().pid  # up twice: the same broker
    # the broker saved its changes itself, as the user it runs as (the ownership trap of §9)
    assert "Error saving" not in broker.log_path.read_text()


def test_the_broker_drops_root_and_its_secrets_are_private(broker):
    status = broker.status()
    uid = int(next(line for line in Path(f"/proc/{status.pid}/status").read_text().splitlines()
                   if line.startswith("Uid:")).split()[1])
    expected = "mosquitto" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    assert status.user == expected and pwd.getpwuid(uid).pw_name == expected
    assert stat.S_IMODE(broker.password_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((broker.broker_dir / "server.key").stat().st_mode) == 0o600
    assert (broker.broker_dir / "dynamic-security.json").stat().st_uid == uid
    conf = broker.conf_path.read_text()
    for line in ("per_listener_settings false", "allow_anonymous false", "require_certificate true",
                 "use_identity_as_username true", f"crlfile {broker.crl_path}",
                 f"listener {broker.ports.admin} 127.0.0.1"):
        assert line in conf.splitlines()
    assert broker.admin_password() not in conf + broker.log_path.read_text()
    dynsec = json.loads(broker.dynsec_path.read_text())
    assert broker.admin_password() not in json.dumps(dynsec)


def test_a_folder_the_broker_user_cannot_enter_is_named(open_dir):
    locked = open_dir / "locked"
    (locked / "state").mkdir(parents=True)
    os.chmod(locked, 0o700)
    nobody = pwd.getpwnam("nobody")
    assert blocking_folder(locked / "state" / "broker", nobody) == locked
    os.chmod(locked, 0o711)
    assert blocking_folder(locked / "state" / "broker", nobody) is None


def test_mosquitto_missing_is_a_clear_error(open_dir):
    b = new_broker(open_dir / "cloud", mosquitto=str(open_dir / "no-such" / "mosquitto"))
    with pytest.raises(BrokerError, match="mosquitto is not installed: apt-get install mosquitto"):
        b.up()


def test_a_busy_port_is_named(open_dir):
    b = new_broker(open_dir / "cloud")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", b.ports.devices))
        squatter.listen()
        with pytest.raises(BrokerError, match=f"port {b.ports.devices} is busy"):
            b.up()
    assert not b.status().running


def test_a_broker_that_dies_at_start_shows_its_log(open_dir):
    b = new_broker(open_dir / "cloud", plugin="/etc/hostname")  # not a plugin: Mosquitto gives up
    with pytest.raises(BrokerError, match="stopped at start") as info:
        b.up()
    assert "plugin" in str(info.value).lower()
    assert not b.status().running and not b.pid_path.exists()


def test_up_needs_the_station_ca(open_dir):
    b = LocalBroker(open_dir / "cloud", None, BrokerPorts(admin=free_port(), devices=free_port()))
    with pytest.raises(BrokerError, match="station ca init"):
        b.up()


@pytest.mark.parametrize("name", ["", "a/b", "+", "#", "dev-#", "$SYS", "admin", " dev"])
def test_names_that_would_widen_an_acl_are_refused(name):
    with pytest.raises(ValueError):
        check_device_name(name)


def test_the_plain_admin_listener_lets_no_device_in_without_its_certificate(broker):
    """A passwordless device client must not be usable from the loopback listener by just naming it."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    with broker.admin_client() as admin:
        admin.register_device("dev-1")
    for user, password in (("dev-1", None), ("dev-1", "guess"), ("admin", None), (None, None)):
        answered = threading.Event()
        got = {}
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if user:
            client.username_pw_set(user, password)
        client.on_connect = lambda _c, _u, _f, reason, _p: (got.setdefault("reason", reason), answered.set())
        client.on_disconnect = lambda *_a: answered.set()
        client.connect("127.0.0.1", broker.ports.admin)
        client.loop_start()
        try:
            assert answered.wait(10)
            assert got["reason"].value == NOT_AUTHORIZED, (user, password)
        finally:
            client.disconnect()
            client.loop_stop()
