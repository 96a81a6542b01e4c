"""The Particle emulator as a host sees it: the run-time USB serial through pyserial (particlesim://), the magic
baud rates re-enumerating the board at the same location, the DFU bootloader through pyusb and pyfu-usb, the
board booting what was flashed into it, its key slots, the buttons and the faults."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import serial
import usb.core
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import station.families.particle.sim.protocol_particlesim  # noqa: F401  (registers particlesim://)
from station.families.dfu.host import DfuHost
from station.families.dfu.sim.remote import RemoteUsbBackend, open_device
from station.families.particle.sim import firmware as fw
from station.families.particle.sim.board import ParticleBoard, ParticleFaults
from station.families.particle.sim.console import AES, TKIP, WPA2
from station.families.particle.sim.server import ParticleSimServer

LAB = {"lab-net": (WPA2, AES)}


def entry(server: ParticleSimServer, index: int = 0) -> dict:
    return json.loads(server.registry_path(index).read_text())


def console(server: ParticleSimServer, index: int = 0, baud: int = 9600) -> serial.Serial:
    return serial.serial_for_url(server.serial_url(index), baudrate=baud, timeout=2)


def ask(port: serial.Serial, command: bytes, until: bytes = b"\r\n") -> bytes:
    port.write(command)
    return port.read_until(until)


def switch(server: ParticleSimServer, index: int, baud: int) -> None:
    """What device-os's serial_switcher.py does: open at the magic rate and close; flush() returns once the board
    has heard the rate, or fails because the board left the bus for DFU mode."""
    port = console(server, index, baud)
    try:
        port.flush()
    except serial.SerialException:
        pass
    port.close()


@pytest.fixture
def serve(tmp_path):
    servers = []

    def start(*boards: ParticleBoard) -> ParticleSimServer:
        server = ParticleSimServer(boards, tmp_path / "registry").start()
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.stop()


def key_pkcs1(key) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def public_der(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


# --- the run-time USB serial ----


def test_run_time_serial_is_published_and_identifies_at_9600(serve):
    server = serve(ParticleBoard("photon", 0), ParticleBoard("core", 0), ParticleBoard("old-core", 1))
    photon, core, old = (entry(server, i) for i in range(3))
    assert (photon["vid"], photon["pid"], photon["location"]) == (0x2B04, 0xC006, "sim-3.1")
    assert (core["vid"], core["pid"]) == (old["vid"], old["pid"]) == (0x1D50, 0x607D)
    assert photon["url"] == server.serial_url(0) and photon["url"].startswith("particlesim://")
    for i, board in enumerate(server.boards):
        assert entry(server, i)["serial"] == board.device_id.upper()
        assert board.led == "blinking blue"  # no Wi-Fi credentials: the firmware starts in listening mode
    assert not server.boards[0].host_open
    with console(server, 0) as port:
        assert server.boards[0].host_open  # the board sees a host holding its serial (DTR)
        assert ask(port, b"i") == f"Your device id is {server.boards[0].device_id}\r\n".encode()
        assert ask(port, b"v", b"\n\r\n") == b"system firmware version: 2.3.1\n\r\n"
        mac = ask(port, b"m").decode() + port.read_until(b"\r\n").decode()
        assert mac == f"Your device MAC address is\r\n{server.boards[0].mac}\r\n"
        modules = json.loads(ask(port, b"s"))
        assert modules["p"] == 6 and [m["f"] for m in modules["m"]] == ["s", "s", "u"]
    assert not server.boards[0].host_open  # closing the port is seen
    with console(server, 2) as port:
        assert ask(port, b"i") == f"Your core id is {server.boards[2].device_id}\r\n".encode()
        port.write(b"vsm")  # the 2014 firmware knows only i and w
        assert ask(port, b"i") == f"Your core id is {server.boards[2].device_id}\r\n".encode()


def test_photon_before_0_7_says_its_id_in_upper_case(serve):
    server = serve(ParticleBoard("photon-0200"))
    with console(server) as port:
        assert ask(port, b"i") == f"Your device id is {server.boards[0].device_id.upper()}\r\n".encode()
    assert entry(server)["serial"] == server.boards[0].device_id.upper()


def test_one_host_at_a_time_and_no_serial_in_dfu_mode(serve):
    server = serve(ParticleBoard("photon"), ParticleBoard("photon", 1, blank=True))
    with console(server):
        with pytest.raises(serial.SerialException, match="another program has the port open"):
            console(server)
    assert server.boards[1].mode == "dfu"
    with pytest.raises(serial.SerialException, match="no USB serial now"):
        console(server, 1)
    with pytest.raises(serial.SerialException, match="expected particlesim://"):
        serial.serial_for_url("particlesim://127.0.0.1:1/x")


# --- magic baud rates and re-enumeration ----


def test_14400_resets_into_dfu_at_the_same_location(serve):
    server = serve(ParticleBoard("photon"), ParticleBoard("core"))
    for i, (dfu_pid, dfu_serial) in enumerate([(0xD006, server.boards[0].device_id.upper()),
                                               (0x607F, server.boards[1].dfu.serial)]):
        before = entry(server, i)
        switch(server, i, 14400)
        assert server.wait_mode(server.locations[i], "dfu")
        after = entry(server, i)
        assert after["location"] == before["location"] and after["url"] == server.usb_url(i)
        assert (after["pid"], after["serial"]) == (dfu_pid, dfu_serial)
        assert server.boards[i].led == "blinking yellow"
        device = open_device(after["url"])
        assert (device.idVendor, device.idProduct) == (after["vid"], after["pid"])
        assert device.serial_number == dfu_serial
    assert server.boards[1].dfu.serial != server.boards[1].device_id.upper()  # the Core's DFU serial is not its id


def test_a_host_holding_the_port_sees_the_board_go(serve):
    server = serve(ParticleBoard("photon"))
    port = console(server)
    port.baudrate = 14400  # SET_LINE_CODING on the open port
    with pytest.raises(serial.SerialException):
        port.read(1)
    port.close()
    assert server.boards[0].mode == "dfu"


def test_28800_starts_listening_mode_once_per_rate_change(serve):
    board = ParticleBoard("photon", visible=LAB)
    server = serve(board)
    with console(server) as port:
        ask(port, b"w", b"SSID: ")
        assert ask(port, b"lab-net\n", b"Password: ").endswith(b"lab-net\r\nPassword: ")
        assert ask(port, b"secret\n", b"<3 you!\r\n\r\n").endswith(b"    Particle <3 you!\r\n\r\n")
    assert not board.listening and board.led == "breathing cyan"
    switch(server, 0, 28800)
    assert board.listening and board.led == "blinking blue"
    with console(server, baud=28800) as port:  # the rate has not changed: no SET_LINE_CODING
        port.write(b"x")
        port.flush()
        assert not board.listening
        port.write(b"i")
        port.flush()
        assert port.in_waiting == 0  # the console is gone with listening mode
    switch(server, 0, 28800)
    assert not board.listening  # cdc-acm still has 28800: the firmware hears nothing
    switch(server, 0, 9600)
    switch(server, 0, 28800)
    assert board.listening and board.mode == "run"


def test_old_core_ignores_the_magic_rates_and_needs_the_mode_button(serve):
    board = ParticleBoard("old-core")
    server = serve(board)
    for rate in (14400, 28800, 9600, 14400):
        switch(server, 0, rate)
    assert board.mode == "run" and entry(server)["pid"] == 0x607D
    server.hold_mode("sim-3.1", 1.0, tap_reset=True)  # let go too early: just a reset
    assert board.mode == "run"
    server.hold_mode("sim-3.1", 3.0, tap_reset=True)
    assert board.mode == "dfu" and board.led == "blinking yellow" and entry(server)["pid"] == 0x607F
    server.press_reset("sim-3.1")
    assert board.mode == "run" and entry(server)["pid"] == 0x607D


def test_mode_button_while_running_starts_listening_and_clears_credentials(serve):
    board = ParticleBoard("core", visible=LAB)
    server = serve(board)
    with console(server) as port:
        ask(port, b"w", b"SSID: ")
        ask(port, b"lab-net\n", b"WPA2: ")  # a Core cannot scan: it always asks
        ask(port, b"3", b"TKIP: ")
        ask(port, b"1", b"Password: ")
        assert ask(port, b"pw\n", b"<3 you!\r\n\r\n").endswith(b"Particle <3 you!\r\n\r\n")
    assert board.led == "breathing cyan"
    server.hold_mode("sim-3.1", 3.5)
    assert board.listening and board.wifi
    server.press_reset("sim-3.1")
    assert not board.listening  # it has credentials
    server.hold_mode("sim-3.1", 10)
    assert board.listening and not board.wifi


# --- the listening console ----


def test_wifi_prompts_and_answers_sent_ahead_of_a_prompt_are_lost(serve):
    board = ParticleBoard("photon", visible=LAB)
    server = serve(board)
    with console(server) as port:
        assert ask(port, b"w", b"SSID: ") == b"SSID: "
        assert ask(port, b"\r", b"SSID: ") == b"\r\nSSID: "  # empty: asked again
        # not in range: security and cipher are asked; the 3 sent with the SSID is discarded
        answer = ask(port, b"elsewhere\n3\n", b"Enterprise: ")
        assert answer == b"elsewhere\r\nSecurity 0=unsecured, 1=WEP, 2=WPA, 3=WPA2, 4=WPA Enterprise, " \
                         b"5=WPA2 Enterprise: "
        assert ask(port, b"9", b"Enterprise: ").startswith(b"9\r\nSecurity")  # not a choice: asked again
        assert ask(port, b"3\n", b"AES+TKIP: ") == b"3\r\nSecurity Cipher 1=AES, 2=TKIP, 3=AES+TKIP: "
        assert ask(port, b"1", b"Password: ") == b"1\r\nPassword: "
        answer = ask(port, b"pa\x08w\n", b"<3 you!\r\n\r\n")
        assert answer.startswith(b"pa\x08w\r\nThanks! Wait while I save those credentials...\r\n\r\n"
                                 b"Awesome. Now we'll connect!\r\n\r\n")
    (saved,) = board.wifi
    assert (saved.ssid, saved.security, saved.cipher, saved.password) == ("elsewhere", 3, 1, "pw")
    assert board.led == "blinking green"  # saved, but that network is not in range


def test_legacy_core_wifi_dialog(serve):
    board = ParticleBoard("old-core")
    server = serve(board)
    with console(server) as port:
        ask(port, b"w", b"SSID: ")
        assert ask(port, b"lab\n", b"WPA2: ").endswith(b"Security 0=unsecured, 1=WEP, 2=WPA, 3=WPA2: ")
        assert ask(port, b"0", b"\r\n\r\n").startswith(b"0\r\nThanks! Wait about 7 seconds while I save")
        assert port.read_until(b"Spark <3 you!\r\n\r\n").endswith(b"    Spark <3 you!\r\n\r\n")
    assert board.wifi[0].security == 0 and not board.listening


# --- DFU mode: what is flashed is what boots ----


def dfu_host(server: ParticleSimServer, index: int = 0) -> DfuHost:
    return DfuHost(open_device(entry(server, index)["url"]))


def test_pyfu_usb_flashes_the_dfu_personality_and_the_board_boots_it(serve, tmp_path, monkeypatch):
    import pyfu_usb

    board = ParticleBoard("core")
    server = serve(board)
    switch(server, 0, 14400)
    assert server.wait_mode("sim-3.1", "dfu")
    backend = RemoteUsbBackend(entry(server)["url"])
    monkeypatch.setattr(usb.core, "find", functools.partial(usb.core.find, backend=backend))
    image = fw.core_app((0, 3, 3), name="the 2014 firmware")
    (tmp_path / "core.bin").write_bytes(image)
    pyfu_usb.download(str(tmp_path / "core.bin"), address=fw.CORE_APP_ADDRESS)  # ends with the leave request
    backend.close()
    assert server.wait_mode("sim-3.1", "run")
    assert board.read_memory(0, fw.CORE_APP_ADDRESS, len(image)) == image
    assert board.running.version == (0, 3, 3)
    with console(server) as port:  # now it is a 2014 Core: old console, no magic baud
        assert ask(port, b"i").startswith(b"Your core id is ")
    switch(server, 0, 14400)
    assert board.mode == "run"


def test_firmware_for_the_other_platform_or_cut_short_is_not_booted(serve):
    photon, blank = ParticleBoard("photon"), ParticleBoard("core", 1, blank=True)
    server = serve(photon, blank)
    assert blank.mode == "dfu" and entry(server, 1)["pid"] == 0x607F  # nothing to run: the bootloader stays
    with dfu_host(server, 1) as host:
        host.select(0)
        host.write(fw.CORE_APP_ADDRESS, fw.core_app((1, 4, 4))[:-1024])  # the last KB (and the CRC) missing
        host.leave()
    assert server.wait_mode("sim-3.2", "dfu") and blank.dfu.attachment is not None  # back, in DFU again
    with dfu_host(server, 1) as host:
        host.select(0)
        host.write(fw.CORE_APP_ADDRESS, fw.core_app((1, 4, 4)))
        host.leave()
    assert server.wait_mode("sim-3.2", "run")

    switch(server, 0, 14400)
    assert server.wait_mode("sim-3.1", "dfu")
    with dfu_host(server, 0) as host:
        host.select(0)
        host.write(fw.PHOTON_SYSTEM_PARTS[0], fw.core_app((1, 4, 4), size=16 * 1024))  # a Core image
        host.leave()
    assert server.wait_mode("sim-3.1", "dfu")


def test_photon_runs_the_device_os_of_its_system_parts(serve):
    board = ParticleBoard("photon", visible=LAB)
    server = serve(board)
    switch(server, 0, 14400)
    assert server.wait_mode("sim-3.1", "dfu")
    with dfu_host(server) as host:
        host.select(0)
        for index, address in enumerate(fw.PHOTON_SYSTEM_PARTS, start=1):
            host.write(address, fw.photon_system_part(index, (0, 6, 3)))
        host.leave()
    assert server.wait_mode("sim-3.1", "run")
    with console(server) as port:
        assert ask(port, b"v", b"\n\r\n") == b"system firmware version: 0.6.3\n\r\n"
        assert ask(port, b"i") == f"Your device id is {board.device_id.upper()}\r\n".encode()
        ask(port, b"w", b"SSID: ")
        ask(port, b"lab-net\n", b"Password: ")
        ask(port, b"pw\n", b"<3 you!\r\n\r\n")
    assert board.led == "breathing magenta"  # the factory user part was built for 2.3.1: safe mode


def write_keys(server: ParticleSimServer, device_key_slot: bytes, server_area: bytes | None = None) -> None:
    """The Core's key slots as the 2014 guide writes them: server key at 0x1000, device key at 0x2000 (alt 1)."""
    with dfu_host(server) as host:
        host.select(1)
        if server_area is not None:
            host.write(0x1000, server_area)
            assert host.read(0x1000, len(server_area)) == server_area
        host.write(0x2000, device_key_slot)
        assert host.read(0x2000, len(device_key_slot)) == device_key_slot  # read back over USB before leaving
        host.leave()


def join_lab(server: ParticleSimServer) -> None:
    with console(server) as port:
        ask(port, b"w", b"SSID: ")
        ask(port, b"lab-net\n", b"WPA2: ")
        ask(port, b"3", b"TKIP: ")
        ask(port, b"1", b"Password: ")
        ask(port, b"pw\n", b"<3 you!\r\n\r\n")


def test_key_slots_decide_how_the_board_answers(serve):
    board = ParticleBoard("core", visible=LAB)
    server = serve(board)
    assert board.cloud.ok and board.cloud.host == "device.spark.io" and board.cloud.port == 5683
    join_lab(server)
    assert board.led == "breathing cyan"

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    switch(server, 0, 14400)
    assert server.wait_mode("sim-3.1", "dfu")
    write_keys(server, pkcs8)  # what OpenSSL 3's genrsa gives without -traditional
    assert server.wait_mode("sim-3.1", "run")
    assert board.cloud.device_public_der is None and "PKCS#1" in board.cloud.problem
    assert board.led == "flashing cyan with orange blips"

    cloud_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    area = bytearray(b"\xFF" * 1024)
    area[:294] = public_der(cloud_key)
    area[384:390] = bytes([0, 4, 10, 0, 0, 5])
    area[450:452] = (5683).to_bytes(2, "big")
    switch(server, 0, 14400)
    assert server.wait_mode("sim-3.1", "dfu")
    write_keys(server, key_pkcs1(key), bytes(area))
    assert server.wait_mode("sim-3.1", "run")
    assert board.cloud.ok and board.cloud.device_public_der == public_der(key)
    assert board.cloud.server_public_der == public_der(cloud_key) and board.cloud.host == "10.0.0.5"
    assert board.led == "breathing cyan"

    area[:294] = b"\x00" * 294  # a server key slot written wrong
    switch(server, 0, 14400)
    assert server.wait_mode("sim-3.1", "dfu")
    write_keys(server, key_pkcs1(key), bytes(area))
    assert server.wait_mode("sim-3.1", "run") and board.led == "flashing cyan with red blips"


def test_photon_keys_live_in_the_dct(serve):
    board = ParticleBoard("photon", visible=LAB)
    server = serve(board)
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    switch(server, 0, 14400)
    assert server.wait_mode("sim-3.1", "dfu")
    with dfu_host(server) as host:
        host.select(1)
        host.write(34, key_pkcs1(key))
        host.write(2082 + 384, bytes([1, 9]) + b"cloud.lan" + b"\0")
        host.leave()
    assert server.wait_mode("sim-3.1", "run")
    assert board.cloud.device_public_der == public_der(key) and board.cloud.host == "cloud.lan"


# --- faults and the cable ----


def test_vanish_mid_write_then_the_board_comes_back_in_dfu_mode(serve, tmp_path, monkeypatch):
    import pyfu_usb

    board = ParticleBoard("core", faults=ParticleFaults(unplug_after_bytes=8192))
    server = serve(board)
    switch(server, 0, 14400)
    assert server.wait_mode("sim-3.1", "dfu")
    backend = RemoteUsbBackend(entry(server)["url"])
    monkeypatch.setattr(usb.core, "find", functools.partial(usb.core.find, backend=backend))
    (tmp_path / "app.bin").write_bytes(fw.core_app((1, 4, 4)))
    with pytest.raises(usb.core.USBError):
        pyfu_usb.download(str(tmp_path / "app.bin"), address=fw.CORE_APP_ADDRESS)
    backend.close()
    assert server.wait_mode("sim-3.1", "off") and not server.registry_path(0).exists()
    board.faults = ParticleFaults()
    server.plug(0)
    assert board.mode == "dfu" and entry(server)["pid"] == 0x607F  # half an image does not boot


def test_vanish_on_switch_and_unplug(serve):
    board = ParticleBoard("photon", faults=ParticleFaults(vanish_on_switch=True))
    server = serve(board, ParticleBoard("photon", 1))
    switch(server, 0, 14400)
    assert server.wait_mode("sim-3.1", "off") and not server.registry_path(0).exists()
    assert board.led == "off"
    server.plug(0)
    server.hold_mode("sim-3.1", 3, tap_reset=True)  # hands work; the software switch out of DFU does not
    with dfu_host(server) as host:
        host.leave()
    assert server.wait_mode("sim-3.1", "off") and not server.registry_path(0).exists()
    port = console(server, 1)
    server.unplug(1)
    with pytest.raises(serial.SerialException):
        port.read(1)
    port.close()
    assert not server.registry_path(1).exists()
    server.plug(1)
    assert entry(server, 1)["pid"] == 0xC006


def test_faults_parse_from_cli_text():
    faults = ParticleFaults().with_fault("unplug_after_bytes", "4096").with_fault("vanish_on_switch", None)
    assert faults == ParticleFaults(unplug_after_bytes=4096, vanish_on_switch=True)
    with pytest.raises(ValueError, match="choose one of"):
        ParticleFaults().with_fault("explode", None)
    with pytest.raises(ValueError, match="needs a number"):
        ParticleFaults().with_fault("unplug_after_bytes", "lots")


# --- `station sim particle` ----


def test_cli_boards_commands_and_dump(serve, tmp_path):
    import click

    from station.families.particle.sim.cli import build_boards, dump_memories, parse_network, run_command

    visible = dict([parse_network("lab-net:wpa2")])
    assert visible == LAB
    with pytest.raises(click.BadParameter, match="SSID:SECURITY"):
        parse_network("lab-net")
    boards = build_boards("mixed", 3, False, visible, ("3:vanish_on_switch",))
    assert [b.kind.name for b in boards] == ["core", "photon", "core"]
    assert len({b.device_id for b in boards}) == 3 and boards[2].faults.vanish_on_switch
    server = serve(*boards)
    assert run_command(server, "dfu sim-3.1") == "ok sim-3.1 mode=dfu led=blinking-yellow"
    assert run_command(server, "reset sim-3.1") == "ok sim-3.1 mode=run led=blinking-blue"
    assert run_command(server, "unplug sim-3.2") == "ok sim-3.2 mode=off led=off"
    assert run_command(server, "plug sim-3.2") == "ok sim-3.2 mode=run led=blinking-blue"
    assert run_command(server, "mode sim-3.2 3") == "ok sim-3.2 mode=run led=blinking-blue"
    assert run_command(server, "led sim-3.9").startswith("error: sim-3.9 is not a port")
    assert run_command(server, "mode sim-3.2 long") == "error: 'long' is not a number of seconds"
    assert run_command(server, "jump").startswith("error: 'jump': expected")
    dump_memories(server, tmp_path / "dump")
    alt0 = (tmp_path / "dump" / "sim-3.1.alt0.bin").read_bytes()
    assert alt0[0x5000:0x5000 + 0x40] == boards[0].read_memory(0, fw.CORE_APP_ADDRESS, 0x40)
    assert sorted(p.name for p in (tmp_path / "dump").iterdir())[:2] == ["sim-3.1.alt0.bin", "sim-3.1.alt1.bin"]


def test_station_sim_particle_serves_until_terminated(tmp_path):
    """The command as another process runs it: ready lines, registry files, a button over stdin."""
    proc = subprocess.Popen([sys.executable, "-c", "from station.families.particle.sim.cli import particle; "
                             "particle()", "--kind", "old-core", "--registry", str(tmp_path / "reg")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ready = proc.stdout.readline().split()
        assert ready[:3] == ["ready", "sim-3.1", "old-core"] and ready[3].startswith("particlesim://")
        assert json.loads((tmp_path / "reg" / "sim-3.1.json").read_text())["pid"] == 0x607D
        proc.stdin.write("dfu sim-3.1\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "ok sim-3.1 mode=dfu led=blinking-yellow\n"
        assert json.loads((tmp_path / "reg" / "sim-3.1.json").read_text())["pid"] == 0x607F
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    assert not (tmp_path / "reg" / "sim-3.1.json").exists()


def test_the_console_on_a_pty(serve):
    board = ParticleBoard("photon")
    server = serve(board)
    path = server.open_pty(0)
    for _ in range(2):  # a program may open and close it again
        with serial.Serial(path, 9600, timeout=2) as port:
            assert ask(port, b"i") == f"Your device id is {board.device_id}\r\n".encode()


# --- the third-party proof: particle-cli, unmodified ----

PARTICLE_CLI = Path(__file__).parent / "tools" / "particle-cli" / "node_modules" / ".bin" / "particle"


def particle_cli(tmp_path: Path, server: ParticleSimServer, index: int, *args: str) -> str:
    """Run particle-cli with the board's console on a pty that udev (a stand-in `udevadm info -e`, which is how
    its serialport library lists ports on Linux) describes as the board's USB serial."""
    assert PARTICLE_CLI.exists(), "particle-cli is not installed; run `bash packaging/setup-debian.sh`"
    board, tty = server.boards[index], tmp_path / "dev" / "ttyACM0"
    if not tty.exists():
        tty.parent.mkdir()
        tty.symlink_to(server.open_pty(index))
        record = (f"P: /devices/sim/{server.locations[index]}/tty/ttyACM0\nN: ttyACM0\nE: DEVNAME={tty}\n"
                  f"E: SUBSYSTEM=tty\nE: ID_VENDOR_ENC={board.kind.run_manufacturer}\n"
                  f"E: ID_VENDOR_ID={board.kind.run_vid:04x}\nE: ID_MODEL_ID={board.kind.run_pid:04x}\n"
                  f"E: ID_SERIAL_SHORT={board.device_id.upper()}\n\n")
        (tmp_path / "udev.txt").write_text(record)
        (tmp_path / "bin").mkdir()
        (tmp_path / "bin" / "udevadm").write_text(f"#!/bin/sh\ncat {tmp_path / 'udev.txt'}\n")
        (tmp_path / "bin" / "udevadm").chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", HOME=str(tmp_path))
    done = subprocess.run([str(PARTICLE_CLI), *args, "--no-update-check"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_particle_cli_serial_identify_and_wifi(serve, tmp_path):
    board = ParticleBoard("photon", visible=LAB)
    server = serve(board)
    said = particle_cli(tmp_path, server, 0, "serial", "identify")
    assert f"Your device id is {board.device_id}" in said
    assert "Your system firmware version is 2.3.1" in said
    (tmp_path / "wifi.json").write_text(json.dumps({"network": "lab-net", "security": "WPA2_AES",
                                                    "password": "s3cret"}))
    said = particle_cli(tmp_path, server, 0, "serial", "wifi", "--file", str(tmp_path / "wifi.json"))
    assert "Done! Your device should now restart." in said  # particle-cli saw "Particle <3 you!"
    (saved,) = board.wifi
    assert (saved.ssid, saved.security, saved.cipher, saved.password) == ("lab-net", WPA2, AES, "s3cret")
    assert board.led == "breathing cyan"


def test_particle_cli_answers_a_cores_security_prompts(serve, tmp_path):
    board = ParticleBoard("core", visible=LAB)
    server = serve(board)
    (tmp_path / "wifi.json").write_text(json.dumps({"network": "lab-net", "security": "WPA2_TKIP",
                                                    "password": "s3cret"}))
    said = particle_cli(tmp_path, server, 0, "serial", "wifi", "--file", str(tmp_path / "wifi.json"))
    assert "Done! Your device should now restart." in said
    (saved,) = board.wifi  # the Core cannot scan: particle-cli answered the security and cipher prompts
    assert (saved.ssid, saved.security, saved.cipher, saved.password) == ("lab-net", WPA2, TKIP, "s3cret")


def test_a_throttled_board_advertises_the_real_erase_time(serve):
    board = ParticleBoard("core", throttle=True)
    server = serve(board)
    switch(server, 0, 14400)
    assert server.wait_mode("sim-3.1", "dfu")
    device = open_device(entry(server)["url"])
    device.set_interface_altsetting(0, 1)  # the SST25 SPI flash
    device.ctrl_transfer(0x21, 1, 0, 0, bytes([0x41]) + (0x2000).to_bytes(4, "little"))  # DfuSe erase page
    status = device.ctrl_transfer(0xA1, 3, 0, 0, 6)
    assert (status[4], status[1] | status[2] << 8 | status[3] << 16) == (4, 25)  # dfuDNBUSY, 25 ms sector erase
