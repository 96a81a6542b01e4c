"""USB discovery through pyusb, against the emulated USB bus: keys are physical locations, never serials."""
import errno
import re

import pytest
import usb.backend.libusb0
import usb.backend.libusb1
import usb.backend.openusb
import usb.core

from station.discovery.usb_devices import UsbDeviceSource, UsbOpenError, open_usb, register_scheme, usb_error_reason
from station.families.dfu.host import DfuHost
from station.families.dfu.sim.backend import EmulatedUsbBackend
from station.families.dfu.sim.device import make_device

IDS = {(0x0483, 0xDF11): ("dfu", "STM32 ROM bootloader"), (0x1D50, 0x607F): ("dfu", "Spark Core DFU")}


@pytest.fixture
def bus():
    return EmulatedUsbBackend(bus=3)


def test_known_devices_are_listed_by_location(bus):
    bus.plug(make_device("stm32"), port=1)
    bus.plug(make_device("photon"), port=2)  # not in this source's table
    bus.plug(make_device("core"), port=4)
    ports = UsbDeviceSource(IDS, backend=bus).scan()
    assert [(p.key, p.url, p.family, p.usb_id, p.description) for p in ports] == [
        ("3-1", "usb://3-1", "dfu", "0483:df11", "STM32 ROM bootloader"),
        ("3-4", "usb://3-4", "dfu", "1d50:607f", "Spark Core DFU"),
    ]
    assert all(p.serial is None for p in ports)  # never read, never a key


def test_boards_with_the_same_serial_get_their_own_ports(bus):
    first, second = make_device("stm32", 0), make_device("stm32", 1)
    assert first.serial == second.serial  # the STM32 ROM collision (PROTOCOLS §2)
    bus.plug(first, port=1)
    bus.plug(second, port=2)
    ports = UsbDeviceSource(IDS, backend=bus).scan()
    assert [p.key for p in ports] == ["3-1", "3-2"]
    with DfuHost(open_usb(ports[1].url, backend=bus)) as host:
        host.select(0)
        host.write(0x08020000, b"second")
    assert second.read_memory(0, 0x08020000, 6) == b"second"
    assert first.read_memory(0, 0x08020000, 6) == b"\xff" * 6


def test_each_scan_sees_plugging_and_unplugging(bus):
    source = UsbDeviceSource(IDS, backend=bus)
    assert source.scan() == []
    board = make_device("core")
    bus.plug(board, port=2)
    assert [p.key for p in source.scan()] == ["3-2"]
    bus.unplug(board)
    assert source.scan() == []
    bus.plug(make_device("stm32"), port=5)
    bus.plug(board, port=2)
    assert [(p.key, p.usb_id) for p in source.scan()] == [("3-2", "1d50:607f"), ("3-5", "0483:df11")]


def test_a_custom_scheme_carries_its_own_urls(bus):
    bus.plug(make_device("core"), port=1)
    assert [p.url for p in UsbDeviceSource(IDS, backend=bus, scheme="usbsim").scan()] == ["usbsim://3-1"]


def test_no_libusb_lists_nothing_and_says_why(monkeypatch):
    for module in (usb.backend.libusb1, usb.backend.openusb, usb.backend.libusb0):
        monkeypatch.setattr(module, "get_backend", lambda *args, **kwargs: None)  # as on a PC without libusb
    source = UsbDeviceSource(IDS)
    assert source.scan() == []
    assert source.problem is not None and "no libusb" in source.problem and "libusb-1.0-0" in source.problem
    with pytest.raises(UsbOpenError, match="no libusb"):
        open_usb("usb://1-2.3")


def test_open_usb_finds_the_device_by_bus_and_port(bus):
    board = make_device("core")
    bus.plug(board, port=3)
    device = open_usb("usb://3-3", backend=bus)
    assert (device.idVendor, device.idProduct, device.bus, device.port_numbers) == (0x1D50, 0x607F, 3, (3,))


def test_open_usb_on_an_empty_port(bus):
    with pytest.raises(UsbOpenError, match="^no USB device at 3-7 — unplugged\\?$"):
        open_usb("usb://3-7", backend=bus)


@pytest.mark.parametrize("url", ["3-1", "usb://3", "usb://x-1", "usb://3-1.y"])
def test_malformed_urls_are_refused(url):
    with pytest.raises(UsbOpenError, match="is not a USB url like usb://1-2.3"):
        open_usb(url)


def test_registered_scheme_gets_its_urls(bus):
    bus.plug(make_device("photon"), port=1)
    asked = []

    def opener(url):
        asked.append(url)
        return usb.core.find(backend=bus, idVendor=0x2B04)

    register_scheme("usbsim-test", opener)
    device = open_usb("usbsim-test://sim-1.1")
    assert asked == ["usbsim-test://sim-1.1"] and device.idProduct == 0xD006


def test_unknown_scheme_is_named():
    with pytest.raises(UsbOpenError, match="no opener for nosuch:// urls"):
        open_usb("nosuch://1-1")


@pytest.mark.parametrize("code, words", [
    (errno.EACCES, "no permission .* install the udev rules with `sudo station setup`.* replug the board"),
    (errno.ENODEV, "the board vanished during writing"),
    (errno.EPIPE, "the board refused writing \\(USB stall\\)"),
    (errno.EBUSY, "another program holds the board"),
    (errno.ETIMEDOUT, "stopped answering during writing \\(USB timeout\\)"),
])
def test_usb_errors_in_words(code, words):
    assert re.search(words, usb_error_reason(usb.core.USBError("libusb says", errno=code), "writing"))
