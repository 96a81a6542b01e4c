"""What each emulated DFU device kind looks like on the bus and inside (PROTOCOLS §2, §4.1, §5.1-5.3).

- stm32: STM32F4 system-memory bootloader (DfuSe), 0483:df11.
- core: Spark Core bootloader (STM32F103 + SST25 SPI flash on alt 1), 1d50:607f.
- photon: Photon bootloader 0200 (STM32F205, DCT on alt 1), 2b04:d006.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Callable

from station.sim.nor import NorTiming

# DFU states (DFU 1.1 §6.1.2)
DFU_IDLE, DNLOAD_SYNC, DNBUSY, DNLOAD_IDLE = 2, 3, 4, 5
MANIFEST_SYNC, MANIFEST, MANIFEST_WAIT_RESET, UPLOAD_IDLE, DFU_ERROR = 6, 7, 8, 9, 10

# Typical datasheet times
STM32F2F4_FLASH = NorTiming({16 * 1024: 0.5, 64 * 1024: 1.1, 128 * 1024: 2.0}, 16e-6 / 4)  # x32: 16 us per word
STM32F4_OTP = NorTiming({}, 16e-6 / 4)  # programmed like main flash, never erased
STM32F103_FLASH = NorTiming({1024: 0.020}, 50e-6 / 2)  # 1 KB page erase 20 ms, 50 us per half-word
SST25_FLASH = NorTiming({4096: 0.025}, 10e-6)  # 4 KB sector erase 25 ms, byte program 10 us


def st_serial(uid: bytes) -> str:
    """The USB serial ST's ROM and USB library derive from the 96-bit UID: hex(word0 + word2) + top 16 bits of word1.

    The low half of word1 is ignored, so boards that differ only there share a serial.
    """
    w0, w1, w2 = struct.unpack("<III", uid)
    return f"{(w0 + w2) & 0xFFFFFFFF:08X}{w1 >> 16:04X}"


def photon_0200_serial(uid: bytes) -> str:
    """Photon bootloader 0200 reports this fixed string, not the device id (PROTOCOLS §2)."""
    return "00000000010C"


def bootloader_bytes(kind: str, size: int) -> bytes:
    """Stand-in for the read-only bootloader pages: fixed, mostly non-0xFF bytes."""
    return hashlib.shake_256(f"{kind} bootloader".encode()).digest(size)


# STM32F4 option bytes as shipped (RM0090): RDP 0xAA, USER 0xEC and their complements; nWRP all set.
STM32F4_OPTION_BYTES = bytes.fromhex("ecaa1355ffffffffff0f00f0ffffffff")


@dataclass(frozen=True)
class AltSpec:
    layout: str
    timing: NorTiming | None  # None: the Photon DCT layer (erase no-op, writes replace)
    factory: tuple[tuple[int, bytes], ...] = ()  # (address, bytes) present from the factory


@dataclass(frozen=True)
class DfuKind:
    name: str
    vid: int
    pid: int
    bcd_device: int
    manufacturer: str
    product: str
    alts: tuple[AltSpec, ...]
    transfer_size: int
    serial_of: Callable[[bytes], str]
    dfuse_commands: bytes  # what UPLOAD block 0 (get commands) answers
    leave_state: int  # bState in the GETSTATUS after the zero-length DNLOAD, before the device resets
    uid_base: tuple[int, int, int]  # UID words of instance 0; instances vary them (see uid_for)
    pairs_share_serial: bool  # instances 2k and 2k+1 differ only in bits the serial formula ignores
    bm_attributes: int = 0x0B  # CanDnload | CanUpload | WillDetach, manifestation intolerant
    detach_timeout_ms: int = 255
    bcd_dfu: int = 0x011A
    bcd_usb: int = 0x0200
    config_attributes: int = 0xC0  # self powered
    max_power_2ma: int = 0x32  # 100 mA

    def uid_for(self, index: int) -> bytes:
        w0, w1, w2 = self.uid_base
        if self.pairs_share_serial:
            w0 += index // 2
            w1 += index % 2  # low half of word1: invisible in the serial
        else:
            w0 += index
        return struct.pack("<III", w0 & 0xFFFFFFFF, w1 & 0xFFFFFFFF, w2 & 0xFFFFFFFF)


STM32 = DfuKind(
    name="stm32", vid=0x0483, pid=0xDF11, bcd_device=0x2200,
    manufacturer="STMicroelectronics", product="STM32  BOOTLOADER",
    alts=(
        AltSpec("@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg", STM32F2F4_FLASH),
        AltSpec("@Option Bytes  /0x1FFFC000/01*016 e", STM32F4_OTP, ((0x1FFFC000, STM32F4_OPTION_BYTES),)),
        AltSpec("@OTP Memory /0x1FFF7800/01*512 e,01*016 e", STM32F4_OTP),
        AltSpec("@Device Feature/0xFFFF0000/01*004 e", STM32F4_OTP),
    ),
    transfer_size=2048, serial_of=st_serial, dfuse_commands=bytes([0x00, 0x21, 0x41, 0x92]),
    leave_state=MANIFEST, uid_base=(0x00390031, 0x34365111, 0x35353235), pairs_share_serial=True,
)

CORE = DfuKind(
    name="core", vid=0x1D50, pid=0x607F, bcd_device=0x0200,
    manufacturer="Spark Devices", product="CORE DFU",
    alts=(
        AltSpec("@Internal Flash  /0x08000000/20*001Ka,108*001Kg", STM32F103_FLASH,
                ((0x08000000, bootloader_bytes("core", 20 * 1024)),)),
        AltSpec("@SPI Flash : SST25x/0x00000000/512*04Kg", SST25_FLASH),
    ),
    transfer_size=1024, serial_of=st_serial, dfuse_commands=bytes([0x00, 0x21, 0x41]),
    leave_state=DNLOAD_IDLE, uid_base=(0x066DFF48, 0x5055527B, 0x87134B12), pairs_share_serial=False,
    config_attributes=0x80, max_power_2ma=0x32,
)

PHOTON = DfuKind(
    name="photon", vid=0x2B04, pid=0xD006, bcd_device=0x0200,
    manufacturer="Particle", product="Photon DFU Mode",
    alts=(
        AltSpec("@Internal Flash   /0x08000000/03*016Ka,01*016Kg,01*064Kg,07*128Kg", STM32F2F4_FLASH,
                ((0x08000000, bootloader_bytes("photon", 3 * 16 * 1024)),)),
        AltSpec("@DCT Flash   /0x00000000/01*016Kg", None),
    ),
    transfer_size=4096, serial_of=photon_0200_serial, dfuse_commands=bytes([0x00, 0x21, 0x41]),
    leave_state=DNLOAD_IDLE, uid_base=(0x00230037, 0x3234470E, 0x35333437), pairs_share_serial=False,
    config_attributes=0x80, max_power_2ma=0x32,
)

KINDS: dict[str, DfuKind] = {k.name: k for k in (STM32, CORE, PHOTON)}
MIXED_ORDER = ("stm32", "core", "photon")
