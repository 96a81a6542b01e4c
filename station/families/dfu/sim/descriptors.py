"""Standard USB descriptors of an emulated DFU device, as pyusb's backend API wants them and as wire bytes.

Field names are the USB spec's (and pyusb's), so a backend can hand these objects to pyusb unchanged. Like the
real bootloaders, the configuration carries one DFU interface whose alternate settings are the memories, followed
by the DFU functional descriptor; a host parsing the configuration (libusb) therefore finds the functional
descriptor among the extra bytes of the last alternate setting.
"""
from __future__ import annotations

import struct
from dataclasses import asdict, dataclass, field

DFU_FUNCTIONAL = 0x21


@dataclass
class DeviceDescriptor:
    bcdUSB: int
    idVendor: int
    idProduct: int
    bcdDevice: int
    iManufacturer: int
    iProduct: int
    iSerialNumber: int
    bLength: int = 18
    bDescriptorType: int = 1
    bDeviceClass: int = 0
    bDeviceSubClass: int = 0
    bDeviceProtocol: int = 0
    bMaxPacketSize0: int = 64
    bNumConfigurations: int = 1

    def to_bytes(self) -> bytes:
        return struct.pack("<BBHBBBBHHHBBBB", self.bLength, self.bDescriptorType, self.bcdUSB, self.bDeviceClass,
                           self.bDeviceSubClass, self.bDeviceProtocol, self.bMaxPacketSize0, self.idVendor,
                           self.idProduct, self.bcdDevice, self.iManufacturer, self.iProduct, self.iSerialNumber,
                           self.bNumConfigurations)


@dataclass
class InterfaceDescriptor:
    bInterfaceNumber: int
    bAlternateSetting: int
    iInterface: int
    extra_descriptors: list[int] = field(default_factory=list)
    bLength: int = 9
    bDescriptorType: int = 4
    bNumEndpoints: int = 0
    bInterfaceClass: int = 0xFE  # application specific
    bInterfaceSubClass: int = 0x01  # DFU
    bInterfaceProtocol: int = 0x02  # DFU mode

    def to_bytes(self) -> bytes:
        return struct.pack("<BBBBBBBBB", self.bLength, self.bDescriptorType, self.bInterfaceNumber,
                           self.bAlternateSetting, self.bNumEndpoints, self.bInterfaceClass,
                           self.bInterfaceSubClass, self.bInterfaceProtocol, self.iInterface) + bytes(
            self.extra_descriptors)


@dataclass
class ConfigurationDescriptor:
    wTotalLength: int
    bmAttributes: int
    bMaxPower: int
    bLength: int = 9
    bDescriptorType: int = 2
    bNumInterfaces: int = 1
    bConfigurationValue: int = 1
    iConfiguration: int = 0
    extra_descriptors: list[int] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        return struct.pack("<BBHBBBBB", self.bLength, self.bDescriptorType, self.wTotalLength, self.bNumInterfaces,
                           self.bConfigurationValue, self.iConfiguration, self.bmAttributes, self.bMaxPower)


def dfu_functional(bm_attributes: int, detach_timeout_ms: int, transfer_size: int, bcd_dfu: int) -> bytes:
    return struct.pack("<BBBHHH", 9, DFU_FUNCTIONAL, bm_attributes, detach_timeout_ms, transfer_size, bcd_dfu)


def string_descriptor(text: str) -> bytes:
    body = text.encode("utf-16-le")
    return bytes([2 + len(body), 3]) + body


LANGID_EN_US = bytes([4, 3, 0x09, 0x04])


@dataclass
class Descriptors:
    """Everything a host can read about the device without talking DFU."""

    device: DeviceDescriptor
    configuration: ConfigurationDescriptor
    interfaces: list[InterfaceDescriptor]  # the one DFU interface's alternate settings, in order
    strings: dict[int, str]  # index -> text; index 0 (LANGIDs) is implied

    def configuration_bytes(self) -> bytes:
        return self.configuration.to_bytes() + b"".join(i.to_bytes() for i in self.interfaces)

    def string_bytes(self, index: int) -> bytes:
        """KeyError for an index the device does not have."""
        return LANGID_EN_US if index == 0 else string_descriptor(self.strings[index])

    def to_dict(self) -> dict:
        return {"device": asdict(self.device), "configuration": asdict(self.configuration),
                "interfaces": [asdict(i) for i in self.interfaces],
                "strings": {str(k): v for k, v in self.strings.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "Descriptors":
        return cls(DeviceDescriptor(**d["device"]), ConfigurationDescriptor(**d["configuration"]),
                   [InterfaceDescriptor(**i) for i in d["interfaces"]],
                   {int(k): v for k, v in d["strings"].items()})
