"""The DFU emulator as hosts see it through pyusb: descriptors, the DFU 1.1 / DfuSe state machine, NOR rules,
faults, unplugging, the usbsim:// TCP path, and the third-party pyfu-usb flashing it unmodified."""
from __future__ import annotations

import errno
import functools
import json
import logging
import os
import struct
import threading

import pytest
import usb.core
import usb.util

from station.families.dfu.sim.backend import EmulatedUsbBackend
from station.families.dfu.sim.cli import build_devices, dump_memories
from station.families.dfu.sim.device import DfuFaults, make_device
from station.families.dfu.sim.remote import NoDeviceAtUrl, UsbSimUrlError, open_device, parse_url
from station.families.dfu.sim.server import DfuSimServer
from station.sim.nor import NorFlash, NorRangeError, NorTiming

IDLE, DNBUSY, DNLOAD_IDLE, MANIFEST, UPLOAD_IDLE, ERROR = 2, 4, 5, 7, 9, 10
OK, ERR_TARGET, ERR_WRITE, ERR_CHECK_ERASED, ERR_VERIFY, ERR_ADDRESS, ERR_STALLEDPKT = 0, 1, 3, 5, 7, 8, 15


# --- a minimal DfuSe host, straight from PROTOCOLS §4.1/§4.3 ----


def status(dev, timeout=1000) -> tuple[int, int, int]:
    """(bStatus, bwPollTimeout ms, bState)."""
    r = dev.ctrl_transfer(0xA1, 3, 0, 0, 6, timeout=timeout)
    return r[0], r[1] | r[2] << 8 | r[3] << 16, r[4]


def dnload(dev, block: int, data: bytes) -> None:
    dev.ctrl_transfer(0x21, 1, block, 0, data)


def command(dev, data: bytes) -> tuple[int, int]:
    """A DfuSe command: (status, state) of the GETSTATUS that executes it and of the one after."""
    dnload(dev, 0, data)
    first = status(dev)
    if first[2] != DNBUSY:
        return first[0], first[2]
    second = status(dev)
    return second[0], second[2]


def set_address(dev, address: int) -> tuple[int, int]:
    return command(dev, struct.pack("<BI", 0x21, address))


def erase(dev, address: int) -> tuple[int, int]:
    return command(dev, struct.pack("<BI", 0x41, address))


def write(dev, address: int, data: bytes, xfer: int) -> tuple[int, int]:
    for off in range(0, len(data), xfer):
        assert set_address(dev, address + off) == (OK, DNLOAD_IDLE)
        dnload(dev, 2, data[off:off + xfer])
        st = status(dev)  # dfuDNBUSY, or dfuERROR when the checks refuse the block outright
        if st[2] == DNBUSY:
            st = status(dev)
        if st[2] != DNLOAD_IDLE:
            return st[0], st[2]
    return OK, DNLOAD_IDLE


def read(dev, address: int, length: int, xfer: int) -> bytes:
    assert set_address(dev, address) == (OK, DNLOAD_IDLE)
    dev.ctrl_transfer(0x21, 6, 0, 0)  # ABORT to dfuIDLE before UPLOAD
    out = b""
    block = 2
    while len(out) < length:
        out += bytes(dev.ctrl_transfer(0xA1, 2, block, 0, min(xfer, length - len(out))))
        block += 1
    dev.ctrl_transfer(0x21, 6, 0, 0)
    return out


def find_one(be, **kw):
    dev = usb.core.find(backend=be, **kw)
    assert dev is not None
    return dev


@pytest.fixture
def bus():
    return EmulatedUsbBackend()


# --- NOR ----


def test_nor_programs_by_clearing_bits_and_reports_a_needed_erase():
    nor = NorFlash([(2, 4096), (1, 8192)], NorTiming({4096: 0.025, 8192: 0.04}, 10e-6))
    assert nor.size == 16384 and nor.read(0, 16384) == b"\xff" * 16384
    w = nor.program(10, b"\x0f\xf0")
    assert not w.conflict and w.cost_s == pytest.approx(20e-6)
    w = nor.program(10, b"\xf0\xff")  # 0x0f -> 0xf0 needs 0->1 flips
    assert w.conflict and nor.read(10, 2) == b"\x00\xf0"  # the cells hold old AND new
    assert nor.sector_at(5000) == (4096, 4096) and nor.sector_at(9000) == (8192, 8192)
    assert nor.erase_sector(11) == 0.025
    assert nor.read(0, 4096) == b"\xff" * 4096
    assert nor.erase_sector(12000) == 0.04
    with pytest.raises(NorRangeError):
        nor.program(16383, b"ab")


# --- descriptors ----


def test_pyusb_lists_devices_with_real_descriptors_and_strings(bus):
    for kind in ("stm32", "core", "photon"):
        bus.plug(make_device(kind, 0))
    found = list(usb.core.find(find_all=True, backend=bus))
    assert [(d.idVendor, d.idProduct, d.bcdDevice) for d in found] == [
        (0x0483, 0xDF11, 0x2200), (0x1D50, 0x607F, 0x0200), (0x2B04, 0xD006, 0x0200)]
    assert [(d.bus, d.port_numbers, d.port_number) for d in found] == [(2, (1,), 1), (2, (2,), 2), (2, (3,), 3)]
    assert len({d.address for d in found}) == 3 and all(d.speed == usb.util.SPEED_FULL for d in found)
    stm, core, photon = found
    assert (stm.manufacturer, stm.product) == ("STMicroelectronics", "STM32  BOOTLOADER")
    assert (core.manufacturer, core.product) == ("Spark Devices", "CORE DFU")
    assert (photon.manufacturer, photon.product, photon.serial_number) == ("Particle", "Photon DFU Mode",
                                                                           "00000000010C")
    assert len(stm.serial_number) == 12 and int(stm.serial_number, 16) >= 0
    assert stm.langids == (0x0409,)

    alts = [(i.bInterfaceNumber, i.bAlternateSetting, i.bInterfaceClass, i.bInterfaceSubClass,
             i.bInterfaceProtocol, usb.util.get_string(stm, i.iInterface)) for i in stm[0]]
    assert alts == [(0, 0, 0xFE, 1, 2, "@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg"),
                    (0, 1, 0xFE, 1, 2, "@Option Bytes  /0x1FFFC000/01*016 e"),
                    (0, 2, 0xFE, 1, 2, "@OTP Memory /0x1FFF7800/01*512 e,01*016 e"),
                    (0, 3, 0xFE, 1, 2, "@Device Feature/0xFFFF0000/01*004 e")]
    assert [usb.util.get_string(core, i.iInterface) for i in core[0]] == [
        "@Internal Flash  /0x08000000/20*001Ka,108*001Kg", "@SPI Flash : SST25x/0x00000000/512*04Kg"]
    assert [usb.util.get_string(photon, i.iInterface) for i in photon[0]] == [
        "@Internal Flash   /0x08000000/03*016Ka,01*016Kg,01*064Kg,07*128Kg", "@DCT Flash   /0x00000000/01*016Kg"]

    def functional(dev):
        return [bytes(i.extra_descriptors) for i in dev[0] if i.extra_descriptors]
    assert functional(stm) == [bytes.fromhex("09210bff0000081a01")]  # 2048-byte transfers, DfuSe 1.1a
    assert functional(core) == [bytes.fromhex("09210bff0000041a01")]
    assert functional(photon) == [bytes.fromhex("09210bff0000101a01")]  # PROTOCOLS §4.1 example bytes

    raw_config = stm.ctrl_transfer(0x80, 6, 0x0200, 0, 255)
    assert len(raw_config) == stm[0].wTotalLength == 9 + 4 * 9 + 9
    assert bytes(stm.ctrl_transfer(0x80, 6, 0x0100, 0, 18))[8:12] == bytes.fromhex("8304 11df")


def test_stm32_serials_collide_when_uids_differ_only_where_st_formula_ignores(bus):
    a, b = make_device("stm32", 0), make_device("stm32", 1)
    assert a.uid != b.uid and a.uid[4:6] != b.uid[4:6] and a.uid[:4] + a.uid[6:] == b.uid[:4] + b.uid[6:]
    bus.plug(a)
    bus.plug(b)
    same = list(usb.core.find(find_all=True, backend=bus, serial_number=a.serial))
    assert len(same) == 2 and same[0].port_numbers != same[1].port_numbers
    assert make_device("stm32", 2).serial != a.serial
    assert make_device("core", 0).serial != make_device("core", 0).device_id  # the Core's serial is not its id


# --- state machine ----


def test_busy_rule_write_and_upload_on_stm32(bus):
    device = make_device("stm32")
    bus.plug(device)
    dev = find_one(bus)
    assert status(dev) == (OK, 0, IDLE)
    dnload(dev, 0, struct.pack("<BI", 0x21, 0x08004000))
    assert dev.ctrl_transfer(0xA1, 5, 0, 0, 1)[0] == 3  # GETSTATE: dfuDNLOAD-SYNC, nothing executed yet
    assert status(dev)[2] == DNBUSY  # the command runs on this GETSTATUS
    assert status(dev) == (OK, 0, DNLOAD_IDLE)
    image = os.urandom(5000)
    assert write(dev, 0x08004000, image, 2048) == (OK, DNLOAD_IDLE)
    assert read(dev, 0x08004000, len(image), 2048) == image
    assert device.read_memory(0, 0x08004000, len(image)) == image
    # DfuSe block numbers address (wBlockNum - 2) * wTransferSize from the pointer
    assert set_address(dev, 0x08004000 - 2048) == (OK, DNLOAD_IDLE)
    dev.ctrl_transfer(0x21, 6, 0, 0)
    assert bytes(dev.ctrl_transfer(0xA1, 2, 3, 0, 16)) == image[:16]
    assert status(dev)[2] == UPLOAD_IDLE
    dev.ctrl_transfer(0x21, 6, 0, 0)
    assert bytes(dev.ctrl_transfer(0xA1, 2, 0, 0, 64)) == bytes([0x00, 0x21, 0x41, 0x92])  # get commands
    assert status(dev)[2] == IDLE  # that short frame ended the upload


def test_programming_unerased_flash_fails_after_busy_and_erase_fixes_it(bus):
    bus.plug(make_device("stm32"))
    dev = find_one(bus)
    assert write(dev, 0x08000000, b"\x00" * 16, 2048) == (OK, DNLOAD_IDLE)
    assert set_address(dev, 0x08000000) == (OK, DNLOAD_IDLE)
    dnload(dev, 2, b"\xff" * 16)
    assert status(dev) == (OK, 0, DNBUSY)  # the checks pass; the flash itself fails the program
    assert status(dev) == (ERR_CHECK_ERASED, 0, ERROR)
    dev.ctrl_transfer(0x21, 4, 0, 0)  # CLRSTATUS
    assert status(dev) == (OK, 0, IDLE)
    assert erase(dev, 0x08000010) == (OK, DNLOAD_IDLE)  # erases the whole 16 KB sector holding the address
    assert read(dev, 0x08000000, 16, 2048) == b"\xff" * 16
    assert write(dev, 0x08000000, b"\x5a" * 16, 2048) == (OK, DNLOAD_IDLE)


def test_address_and_permission_errors(bus):
    bus.plug(make_device("core"))
    dev = find_one(bus)
    assert set_address(dev, 0x08020000) == (ERR_ADDRESS, ERROR)  # past the 128 KB internal flash
    dev.ctrl_transfer(0x21, 4, 0, 0)
    bootloader = read(dev, 0x08000000, 64, 1024)
    assert bootloader != b"\xff" * 64  # read-only bootloader pages hold code
    assert write(dev, 0x08000000, b"\x00" * 4, 1024) == (ERR_WRITE, ERROR)
    dev.ctrl_transfer(0x21, 4, 0, 0)
    assert erase(dev, 0x08000400) == (ERR_TARGET, ERROR)  # 'a' pages are not erasable
    dev.ctrl_transfer(0x21, 4, 0, 0)
    assert read(dev, 0x08000000, 64, 1024) == bootloader


def test_unexpected_request_stalls_and_clrstatus_recovers(bus):
    device = make_device("photon")
    bus.plug(device)
    dev = find_one(bus)
    assert set_address(dev, 0x080A0000) == (OK, DNLOAD_IDLE)
    with pytest.raises(usb.core.USBError) as e:
        dev.ctrl_transfer(0xA1, 2, 2, 0, 64)  # UPLOAD while in dfuDNLOAD-IDLE
    assert e.value.errno == errno.EPIPE
    assert status(dev) == (ERR_STALLEDPKT, 0, ERROR)
    dev.ctrl_transfer(0x21, 4, 0, 0)
    assert status(dev) == (OK, 0, IDLE)
    with pytest.raises(usb.core.USBError) as e:
        dev.ctrl_transfer(0x21, 0, 1000, 0)  # DETACH is a run-time request
    assert e.value.errno == errno.EPIPE and status(dev)[2] == ERROR

    dev.ctrl_transfer(0x21, 4, 0, 0)
    device.faults.stall_on_request = 3
    with pytest.raises(usb.core.USBError) as e:
        status(dev)
    assert e.value.errno == errno.EPIPE
    assert status(dev) == (ERR_STALLEDPKT, 0, ERROR)  # once only
    dev.ctrl_transfer(0x21, 4, 0, 0)
    assert status(dev)[2] == IDLE


def test_alt_settings_reach_the_other_memories(bus):
    core, photon = make_device("core"), make_device("photon")
    bus.plug(core)
    bus.plug(photon)
    dev = find_one(bus, idVendor=0x1D50)
    dev.set_interface_altsetting(0, 1)
    key = os.urandom(1024)
    assert erase(dev, 0x2000) == (OK, DNLOAD_IDLE)
    assert write(dev, 0x2000, key, 1024) == (OK, DNLOAD_IDLE)
    assert core.read_memory(1, 0x2000, 1024) == key and core.read_memory(0, 0x08005000, 4) == b"\xff" * 4
    assert erase(dev, 0x2FFF) == (OK, DNLOAD_IDLE)  # the SST25 4 KB sector erase is real
    assert read(dev, 0x2000, 1024, 1024) == b"\xff" * 1024

    dev = find_one(bus, idVendor=0x2B04)
    dev.set_interface_altsetting(0, 1)
    assert write(dev, 34, b"\x00" * 8, 4096) == (OK, DNLOAD_IDLE)
    assert erase(dev, 0) == (OK, DNLOAD_IDLE)  # DCT erase is a no-op on the real bootloader
    assert read(dev, 34, 8, 4096) == b"\x00" * 8
    assert write(dev, 34, b"\xab" * 8, 4096) == (OK, DNLOAD_IDLE)  # DCT writes replace, no erase needed
    assert photon.read_memory(1, 34, 8) == b"\xab" * 8
    assert set_address(dev, 0x4000) == (ERR_ADDRESS, ERROR)


# --- leave and the bus ----


def leave(dev, address: int) -> tuple[int, int]:
    assert set_address(dev, address) == (OK, DNLOAD_IDLE)
    dnload(dev, 2, b"")  # dfu-util's zero-length DNLOAD (wValue 2)
    st = status(dev)
    return st[0], st[2]


def test_leave_resets_the_device_off_the_bus_and_replug_is_a_new_enumeration(bus):
    stm, photon = make_device("stm32"), make_device("photon")
    bus.plug(stm)
    bus.plug(photon)
    dev = find_one(bus, idVendor=0x0483)
    assert write(dev, 0x08000000, b"app!", 2048) == (OK, DNLOAD_IDLE)
    assert leave(dev, 0x08000000) == (OK, MANIFEST)
    with pytest.raises(usb.core.USBError) as e:
        status(dev)
    assert e.value.errno == errno.ENODEV
    assert [d.idVendor for d in usb.core.find(find_all=True, backend=bus)] == [0x2B04]

    pdev = find_one(bus, idVendor=0x2B04)
    assert write(pdev, 0x080A0000, b"user", 4096) == (OK, DNLOAD_IDLE)
    assert leave(pdev, 0x080A0000) == (OK, DNLOAD_IDLE)  # Particle Gen2 "pleases dfu-util" (§4.4)
    assert usb.core.find(find_all=True, backend=bus) is not None
    assert list(usb.core.find(find_all=True, backend=bus)) == []

    old_address = dev.address
    bus.plug(stm)
    again = find_one(bus)
    assert again.address != old_address and again.port_numbers == dev.port_numbers
    assert status(again) == (OK, 0, IDLE)
    assert read(again, 0x08000000, 4, 2048) == b"app!"  # flash survives the reset
    with pytest.raises(usb.core.USBError) as e:
        status(dev)  # the old enumeration stays dead
    assert e.value.errno == errno.ENODEV


def test_unplug_gives_enodev(bus):
    device = make_device("core")
    bus.plug(device)
    dev = find_one(bus)
    bus.unplug(device)
    with pytest.raises(usb.core.USBError) as e:
        status(dev)
    assert e.value.errno == errno.ENODEV
    assert usb.core.find(backend=bus) is None


def test_mass_erase_and_read_unprotect_on_stm32(bus):
    device = make_device("stm32")
    bus.plug(device)
    dev = find_one(bus)
    assert write(dev, 0x08000000, b"\x00" * 64, 2048) == (OK, DNLOAD_IDLE)
    assert write(dev, 0x080E0000, b"\x00" * 64, 2048) == (OK, DNLOAD_IDLE)
    assert command(dev, b"\x41") == (OK, DNLOAD_IDLE)  # mass erase
    assert device.snapshot(0) == b"\xff" * (1024 * 1024)
    assert write(dev, 0x08000000, b"\x00" * 64, 2048) == (OK, DNLOAD_IDLE)
    dnload(dev, 0, b"\x92")
    assert status(dev)[2] == DNBUSY  # AN3156: erases everything, then resets
    assert device.attachment is None and device.read_memory(0, 0x08000000, 64) == b"\xff" * 64


# --- faults ----


def test_fault_unplug_after_bytes(bus):
    device = make_device("stm32", faults=DfuFaults(unplug_after_bytes=4096))
    bus.plug(device)
    dev = find_one(bus)
    with pytest.raises(usb.core.USBError) as e:
        write(dev, 0x08000000, os.urandom(8192), 2048)
    assert e.value.errno == errno.ENODEV
    assert device.attachment is None
    assert device.read_memory(0, 0x08000800, 2048) == b"\xff" * 2048  # the block that crossed K never landed


def test_fault_vanish_on_leave_and_err_verify(bus):
    gone = make_device("stm32", 0, faults=DfuFaults(vanish_on_leave=True))
    bad = make_device("core", 0, faults=DfuFaults(err_verify=True))
    bus.plug(gone)
    bus.plug(bad)
    dev = find_one(bus, idVendor=0x0483)
    assert set_address(dev, 0x08000000) == (OK, DNLOAD_IDLE)
    dnload(dev, 0, b"")
    with pytest.raises(usb.core.USBError) as e:
        status(dev)
    assert e.value.errno == errno.ENODEV and gone.attachment is None

    dev = find_one(bus, idVendor=0x1D50)
    image = b"\xa5" * 1024
    assert write(dev, 0x08005000, image, 1024) == (OK, DNLOAD_IDLE)
    assert read(dev, 0x08005000, 1024, 1024) != image
    assert leave(dev, 0x08005000) == (ERR_VERIFY, ERROR)
    assert bad.attachment is not None


def test_fault_stuck_in_error(bus):
    device = make_device("photon", faults=DfuFaults(stuck_in_error=True))
    bus.plug(device)
    dev = find_one(bus)
    for _ in range(3):
        assert status(dev)[2] == ERROR
        dev.ctrl_transfer(0x21, 4, 0, 0)
    assert status(dev)[2] == ERROR


def test_faults_parse_from_cli_text():
    devices = build_devices("mixed", 4, False, ("2:unplug_after_bytes=4096", "4:stuck_in_error"))
    assert [d.kind.name for d in devices] == ["stm32", "core", "photon", "stm32"]
    assert devices[1].faults.unplug_after_bytes == 4096 and devices[3].faults.stuck_in_error
    assert devices[0].serial == devices[3].serial  # the second stm32 collides with the first on purpose
    with pytest.raises(ValueError, match="needs a number"):
        DfuFaults().with_fault("unplug_after_bytes", "many")


def test_dump_writes_one_file_per_alt(tmp_path):
    devices = build_devices("core", 1, False, ())
    with DfuSimServer(devices, tmp_path / "registry") as server:
        dev = open_device(server.urls[0])
        dev.set_interface_altsetting(0, 1)
        assert write(dev, 0x1000, b"server key", 1024) == (OK, DNLOAD_IDLE)
    dump_memories(server, tmp_path / "dump")
    assert sorted(p.name for p in (tmp_path / "dump").iterdir()) == ["sim-2.1.alt0.bin", "sim-2.1.alt1.bin"]
    spi = (tmp_path / "dump" / "sim-2.1.alt1.bin").read_bytes()
    assert len(spi) == 2 * 1024 * 1024 and spi[0x1000:0x100A] == b"server key"


# --- timing ----


def test_throttled_device_advertises_real_times_and_stays_busy(bus):
    device = make_device("stm32", throttle=True)
    bus.plug(device)
    dev = find_one(bus)
    dnload(dev, 0, struct.pack("<BI", 0x41, 0x08020000))  # a 128 KB sector
    assert status(dev) == (OK, 2000, DNBUSY)
    with pytest.raises(usb.core.USBError) as e:
        status(dev, timeout=1)  # still erasing: the request times out
    assert e.value.errno == errno.ETIMEDOUT
    device.throttle = False  # skip the rest of the wait
    assert status(dev) == (OK, 0, DNLOAD_IDLE)
    device.throttle = True
    dnload(dev, 0, struct.pack("<BI", 0x41, 0x08000000))
    assert status(dev)[1:] == (500, DNBUSY)  # a 16 KB sector
    device.throttle = False
    status(dev)
    device.throttle = True
    assert set_address(dev, 0x08000000) == (OK, DNLOAD_IDLE)
    dnload(dev, 2, b"\x00" * 2048)
    assert status(dev)[1:] == (9, DNBUSY)  # 512 words x 16 us, rounded up


def test_a_busy_device_does_not_hold_up_others_and_unplug_wakes_it(bus):
    slow, fast = make_device("stm32", 0, throttle=True), make_device("stm32", 2)
    bus.plug(slow)
    bus.plug(fast)
    slow_dev, fast_dev = list(usb.core.find(find_all=True, backend=bus))
    dnload(slow_dev, 0, b"\x41")  # mass erase: about 17 s of real work
    assert status(slow_dev)[2] == DNBUSY
    outcome: list[int] = []
    waiter = threading.Thread(target=lambda: outcome.append(_errno_of(lambda: status(slow_dev, timeout=0))))
    waiter.start()
    image = os.urandom(4096)
    assert write(fast_dev, 0x08000000, image, 2048) == (OK, DNLOAD_IDLE)
    assert read(fast_dev, 0x08000000, 4096, 2048) == image
    assert waiter.is_alive()  # still waiting on the erase while the other device was flashed
    bus.unplug(slow)
    waiter.join()
    assert outcome == [errno.ENODEV]


def _errno_of(fn) -> int:
    try:
        fn()
    except usb.core.USBError as e:
        return e.errno
    return 0


# --- over TCP ----


def test_served_device_is_found_in_the_registry_and_flashed_over_tcp(tmp_path):
    registry = tmp_path / "registry"
    devices = [make_device("stm32"), make_device("photon")]
    with DfuSimServer(devices, registry) as server:
        entries = sorted((json.loads(p.read_text()) for p in registry.glob("*.json")),
                         key=lambda e: e["location"])
        assert [set(e) for e in entries] == [{"location", "url", "vid", "pid", "serial", "description",
                                              "manufacturer"}] * 2
        assert [(e["location"], e["vid"], e["pid"]) for e in entries] == [("sim-2.1", 0x0483, 0xDF11),
                                                                          ("sim-2.2", 0x2B04, 0xD006)]
        assert entries[1]["url"] == f"usbsim://127.0.0.1:{server.port}/2" == server.urls[1]

        dev = open_device(entries[1]["url"])
        assert (dev.idVendor, dev.product, dev.port_numbers) == (0x2B04, "Photon DFU Mode", (2,))
        dev.set_interface_altsetting(0, 1)
        dct = os.urandom(4258)
        assert write(dev, 0, dct, 4096) == (OK, DNLOAD_IDLE)
        assert read(dev, 0, len(dct), 4096) == dct
        assert devices[1].read_memory(1, 0, len(dct)) == dct

        server.unplug(1)
        assert not server.is_plugged(1) and not server.registry_path(1).exists()
        with pytest.raises(usb.core.USBError) as e:
            status(dev)
        assert e.value.errno == errno.ENODEV
        with pytest.raises(NoDeviceAtUrl, match="sim dfu"):
            open_device(entries[1]["url"])
        server.plug(1)
        assert server.registry_path(1).exists()
        assert status(open_device(entries[1]["url"])) == (OK, 0, IDLE)

        stm = open_device(server.urls[0])
        assert leave(stm, 0x08000000) == (OK, MANIFEST)
        assert not server.registry_path(0).exists()  # reset off the bus: its file goes too
    assert list(registry.glob("*.json")) == []
    with pytest.raises(usb.core.USBError) as e:
        status(dev)  # the whole emulator is gone
    assert e.value.errno == errno.ENODEV


def test_bad_usbsim_urls_are_refused_with_the_expected_form():
    assert parse_url("usbsim://127.0.0.1:4000/3") == ("127.0.0.1", 4000, 3)
    for bad in ("usbsim://127.0.0.1/3", "espsim://127.0.0.1:4000/3", "usbsim://127.0.0.1:4000/x",
                "usbsim://127.0.0.1:4000/0"):
        with pytest.raises(UsbSimUrlError, match="usbsim://HOST:PORT/N"):
            parse_url(bad)


# --- the third-party proof: pyfu-usb, unmodified ----


def test_pyfu_usb_lists_and_flashes_emulated_devices(bus, monkeypatch, tmp_path, caplog):
    import pyfu_usb

    stm, core = make_device("stm32"), make_device("core")
    bus.plug(stm)
    bus.plug(core)
    monkeypatch.setattr(usb.core, "find", functools.partial(usb.core.find, backend=bus))
    caplog.set_level(logging.INFO, logger="pyfu_usb")
    pyfu_usb.list_devices()
    assert "ID 0483:df11" in caplog.text and "ID 1d50:607f" in caplog.text
    assert "0x8020000  7 pages of 128K bytes" in caplog.text and "0x8005000 108 pages of 1024 bytes" in caplog.text

    image = os.urandom(40000)
    firmware = tmp_path / "app.bin"
    firmware.write_bytes(image)
    pyfu_usb.download(str(firmware), vid=0x0483, pid=0xDF11, address=0x08000000)
    pyfu_usb.download(str(firmware), vid=0x1D50, pid=0x607F, address=0x08005000)
    assert stm.attachment is None and core.attachment is None  # both reset after the leave

    bus.plug(stm)
    bus.plug(core)
    dev = find_one(bus, idVendor=0x0483)
    assert read(dev, 0x08000000, len(image), 2048) == image
    dev = find_one(bus, idVendor=0x1D50)
    assert read(dev, 0x08005000, len(image), 1024) == image


def test_pyfu_usb_flashes_a_device_served_over_tcp(tmp_path, monkeypatch):
    import pyfu_usb

    from station.families.dfu.sim.remote import RemoteUsbBackend

    device = make_device("photon")
    with DfuSimServer([device], tmp_path / "registry") as server:
        backend = RemoteUsbBackend(server.urls[0])
        monkeypatch.setattr(usb.core, "find", functools.partial(usb.core.find, backend=backend))
        image = os.urandom(10000)
        firmware = tmp_path / "user.bin"
        firmware.write_bytes(image)
        pyfu_usb.download(str(firmware), address=0x080A0000)
        assert not server.is_plugged(0)
        assert device.read_memory(0, 0x080A0000, len(image)) == image
        backend.close()
