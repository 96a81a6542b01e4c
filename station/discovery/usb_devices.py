"""USB devices seen through pyusb (DFU bootloaders), keyed by physical location like the serial ports.

The key is `BUS-PORT.PORT`, the string pyserial's `ListPortInfo.location` has before its ":1.0" interface
suffix and dfu-util's `-p` takes, so a board keeps its tile when it switches between run-time (serial) and
DFU mode. Never the USB serial: STM32 ROM bootloaders derive theirs from part of the chip UID and collide
(PROTOCOLS §2). Hot-plug is polling: `scan()` enumerates afresh, or with a NodeWatch only after the host's USB
device nodes changed.

`open_usb(url)` turns a port's url back into a `usb.core.Device`. Schemes other than `usb://` (an emulator's,
say) register an opener here, so the station core never imports them.
"""
from __future__ import annotations

import errno
import logging
from collections.abc import Callable

import usb.core

from station.discovery.node_watch import NodeWatch
from station.model import PortInfo

log = logging.getLogger(__name__)

UDEV_FIX = ("install the udev rules with `sudo station setup` (it says what it changed), then unplug and replug "
            "the board")
NO_LIBUSB = ("USB boards cannot be listed: pyusb found no libusb on this computer; install it (Debian/Ubuntu: "
             "sudo apt install libusb-1.0-0) and restart the station")


class UsbOpenError(Exception):
    """A USB url that cannot be opened, with the reason in plain words."""


Opener = Callable[[str], usb.core.Device]
_OPENERS: dict[str, Opener] = {}


def register_scheme(scheme: str, opener: Opener) -> None:
    """Let `open_usb` open `scheme://…` urls with `opener(url)`."""
    _OPENERS[scheme] = opener


def location_of(device: usb.core.Device) -> str | None:
    """`BUS-PORT.PORT` for a device on a physical port; None for a root hub or a backend that cannot tell."""
    if device.bus is None or not device.port_numbers:
        return None
    return f"{device.bus}-{'.'.join(map(str, device.port_numbers))}"


class UsbDeviceSource:
    """Lists the USB devices whose VID:PID is in `ids` ((vid, pid) -> (family, description))."""

    def __init__(self, ids: dict[tuple[int, int], tuple[str, str]], backend=None, scheme: str = "usb",
                 watch: NodeWatch | None = None):
        self.ids = ids
        self.backend = backend
        self.scheme = scheme  # the url scheme `open_usb` will be given back for these devices
        self.watch = watch  # the host's device nodes: enumerate again only when they changed
        self.problem: str | None = None  # why nothing can be listed, once known
        self._ports: list[PortInfo] = []

    def scan(self) -> list[PortInfo]:
        if self.watch is None or self.watch.changed():
            self._ports = self._enumerate()
        return list(self._ports)

    def _enumerate(self) -> list[PortInfo]:
        try:
            devices = list(usb.core.find(find_all=True, backend=self.backend))
        except usb.core.NoBackendError:
            if self.problem is None:
                log.warning(NO_LIBUSB)
            self.problem = NO_LIBUSB
            return []
        ports = []
        for device in devices:
            known = self.ids.get((device.idVendor, device.idProduct))
            location = location_of(device)
            if known is None or location is None:
                continue
            family, description = known
            # the serial number stays unread: reading it opens the device under a running session, and it
            # identifies nothing reliably anyway
            ports.append(PortInfo(key=location, url=f"{self.scheme}://{location}", family=family,
                                  vid=device.idVendor, pid=device.idProduct, description=description))
        return ports


def open_usb(url: str, backend=None) -> usb.core.Device:
    """The device a port url names: `usb://1-2.3` by bus and port path, other schemes by their opener."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise UsbOpenError(f"{url!r} is not a USB url like usb://1-2.3")
    if scheme != "usb":
        if scheme not in _OPENERS:
            raise UsbOpenError(f"no opener for {scheme}:// urls ({url!r}); is its emulator or plug-in loaded?")
        return _OPENERS[scheme](url)
    bus_text, dash, ports_text = rest.partition("-")
    try:
        bus, ports = int(bus_text), tuple(int(p) for p in ports_text.split("."))
    except ValueError:
        raise UsbOpenError(f"{url!r} is not a USB url like usb://1-2.3 (bus-port.port)") from None
    if not dash:
        raise UsbOpenError(f"{url!r} is not a USB url like usb://1-2.3 (bus-port.port)")
    try:
        device = usb.core.find(backend=backend, bus=bus, port_numbers=ports)
    except usb.core.NoBackendError:
        raise UsbOpenError(NO_LIBUSB) from None
    except usb.core.USBError as error:
        raise UsbOpenError(usb_error_reason(error, f"looking for the board at {rest}")) from None
    if device is None:
        raise UsbOpenError(f"no USB device at {rest} — unplugged?")
    return device


def usb_error_reason(error: usb.core.USBError, what: str) -> str:
    """A pyusb error in words a technician can act on; `what` names the operation ("writing 0x08020000")."""
    if error.errno == errno.ENODEV:
        return f"the board vanished during {what} (unplugged, or it reset); plug it in again and retry"
    if error.errno == errno.EACCES:
        return f"no permission to use the USB device during {what}: {UDEV_FIX}"
    if error.errno == errno.EPIPE:
        return f"the board refused {what} (USB stall)"
    if error.errno == errno.EBUSY:
        return f"another program holds the board during {what} (dfu-util? a serial monitor?); close it and retry"
    if isinstance(error, usb.core.USBTimeoutError) or error.errno == errno.ETIMEDOUT:
        return f"the board stopped answering during {what} (USB timeout); unplug and replug it"
    return f"USB error during {what}: {error.strerror or error}"
