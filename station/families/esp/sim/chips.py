"""Per-chip facts the ESP emulator needs: magic values, register maps, eFuse layouts, SPI registers.

Every number here is what the stock esptool 5.6 reads or expects (esptool/targets/esp32.py, esp32c3.py,
esp8266.py); the emulator answers READ_REG from the sparse map built by `ChipFacts.registers()`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

CHIP_DETECT_MAGIC_REG = 0x40001000
MIB = 1024 * 1024


@dataclass(frozen=True)
class SpiRegs:
    """SPI0/SPI1 user-command registers esptool drives for RDID/RDSR/SFDP (`run_spiflash_command`)."""

    base: int
    usr: int
    usr1: int
    usr2: int
    w0: int
    mosi_dlen: int | None  # None on ESP8266: bit lengths live in USR1 instead
    miso_dlen: int | None
    addr_msb: bool  # address is left-aligned in SPI_ADDR_REG (ESP32, ESP8266) or not (C3)

    @property
    def cmd(self) -> int:
        return self.base

    @property
    def addr(self) -> int:
        return self.base + 4


@dataclass(frozen=True)
class ChipFacts:
    name: str  # esptool --chip spelling, e.g. "esp32c3"
    display_name: str  # esptool CHIP_NAME, e.g. "ESP32-C3"
    image_chip_id: int
    magic_value: int
    rom_status_len: int  # ESP32-and-later ROMs send 4 status bytes, ESP8266 ROM 2 (stubs always 2)
    rom_has_security_info: bool  # GET_SECURITY_INFO answered by the ROM (C3) or "invalid message" (ESP32/8266)
    rom_flash_begin_len: int  # 16 on ESP32/ESP8266 ROM, 20 (with the `encrypted` word) elsewhere
    rom_spi_attach: bool  # ESP8266 ROM has no SPI_ATTACH; esptool sends FLASH_BEGIN(0, 0) instead
    rom_has_md5_and_deflate: bool  # SPI_FLASH_MD5, FLASH_DEFL_*, READ_FLASH_SLOW, CHANGE_BAUDRATE
    rom_erase_bug: bool  # ESP8266 ROM over-erases; esptool's get_erase_size compensates
    spi: SpiRegs
    uart_clkdiv_reg: int
    uart_clock_hz: int  # clock the UART divider divides; esptool derives the crystal from it
    mac_oui: tuple[int, int, int]
    boot_log_spi: bytes  # the ROM's boot log when IO0 is high at reset: boot from SPI flash
    boot_log_download: bytes  # ... and when IO0 is low: the serial download mode
    extra_registers: dict[int, int] = field(default_factory=dict)
    bootloader_offset: int = 0x0  # where the ROM loads the second-stage bootloader from (ESP32: 0x1000)

    def clkdiv_for(self, baud: int) -> int:
        return max(1, round(self.uart_clock_hz / baud))

    def registers(self, mac: bytes) -> dict[int, int]:
        """Power-on register map: magic value, eFuse words (MAC, package, revision) and friends."""
        regs = {CHIP_DETECT_MAGIC_REG: self.magic_value}
        regs.update(self.extra_registers)
        regs.update(_EFUSE_BUILDERS[self.name](mac))
        return regs


# --- eFuse layouts -------------------------------------------------------------------------------------------------

def _crc8_maxim(data: bytes) -> int:
    # ESP32 stores a CRC8 (Dallas/Maxim, reflected 0x8C) of the MAC above it in eFuse; espefuse checks it.
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8C if crc & 1 else crc >> 1
    return crc


ESP32_EFUSE_BASE = 0x3FF5A000
# CK8M eFuse byte x RTC calibration value chosen so the ROM-computed crystal is exactly 40 MHz:
# esptool's ESP32 change_baud then sends the true baud rate, and the ESP32 stub reads 40 MHz.
ESP32_CK8M_FREQ = 0x40
ESP32_RTC_CALI_VALUE = 1600


def _esp32_efuses(mac: bytes) -> dict[int, int]:
    word = [0] * 7
    word[1] = int.from_bytes(mac[2:6], "big")
    word[2] = (_crc8_maxim(mac) << 16) | (mac[0] << 8) | mac[1]
    # word3: package 1 (D0WD) in bits 9-11, rev bit0 at 15, "CPU frequency rated" at 13 -> 240 MHz
    word[3] = (1 << 15) | (1 << 13) | (1 << 9)
    word[4] = ESP32_CK8M_FREQ  # low byte: CK8M frequency (used by change_baud), nothing else set
    word[5] = 1 << 20  # rev bit1; minor revision 0 in bits 24-25
    return {ESP32_EFUSE_BASE + 4 * n: value for n, value in enumerate(word)}


ESP32C3_EFUSE_BASE = 0x60008800
ESP32C3_MAC_REG = ESP32C3_EFUSE_BASE + 0x44


def _esp32c3_efuses(mac: bytes) -> dict[int, int]:
    block1 = ESP32C3_MAC_REG
    return {
        block1: int.from_bytes(mac[2:6], "big"),
        block1 + 4: (mac[0] << 8) | mac[1],
        block1 + 12: 4 << 18,  # word3: package 0 (QFN32), minor revision low bits = 4 -> v0.4
        block1 + 20: 0,  # word5: major revision 0
    }


ESP8266_OTP_MAC0 = 0x3FF00050


def _esp8266_efuses(mac: bytes) -> dict[int, int]:
    # esptool: MAC = OUI from OTP word 3 (when non-zero) + MAC1[15:8], MAC1[7:0], MAC0[31:24]
    return {
        ESP8266_OTP_MAC0: mac[5] << 24,
        ESP8266_OTP_MAC0 + 4: (mac[3] << 8) | mac[4],
        ESP8266_OTP_MAC0 + 8: 0,
        ESP8266_OTP_MAC0 + 12: (mac[0] << 16) | (mac[1] << 8) | mac[2],
    }


_EFUSE_BUILDERS = {"esp32": _esp32_efuses, "esp32c3": _esp32c3_efuses, "esp8266": _esp8266_efuses}

# --- the three chips -----------------------------------------------------------------------------------------------

ESP32 = ChipFacts(
    name="esp32",
    display_name="ESP32",
    image_chip_id=0,
    magic_value=0x00F01D83,
    rom_status_len=4,
    rom_has_security_info=False,
    rom_flash_begin_len=16,
    rom_spi_attach=True,
    rom_has_md5_and_deflate=True,
    rom_erase_bug=False,
    spi=SpiRegs(base=0x3FF42000, usr=0x1C, usr1=0x20, usr2=0x24, w0=0x80, mosi_dlen=0x28, miso_dlen=0x2C,
                addr_msb=True),
    uart_clkdiv_reg=0x3FF40014,
    uart_clock_hz=40_000_000,  # APB runs from the 40 MHz crystal in download mode
    mac_oui=(0x24, 0x0A, 0xC4),
    boot_log_spi=b"ets Jun  8 2016 00:22:57\r\n\r\nrst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n",
    boot_log_download=(b"ets Jun  8 2016 00:22:57\r\n\r\nrst:0x1 (POWERON_RESET),boot:0x3 "
                       b"(DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\nwaiting for download\r\n"),
    extra_registers={
        0x3FF6607C: (1 << 31) | 0x16042000,  # APB_CTL_DATE: bit 31 is revision bit 2 (-> v3.0)
        0x3FF5F06C: ESP32_RTC_CALI_VALUE << 7,  # RTCCALICFG1
    },
    bootloader_offset=0x1000,
)

ESP32C3 = ChipFacts(
    name="esp32c3",
    display_name="ESP32-C3",
    image_chip_id=5,
    magic_value=0x1B31506F,
    rom_status_len=4,
    rom_has_security_info=True,
    rom_flash_begin_len=20,
    rom_spi_attach=True,
    rom_has_md5_and_deflate=True,
    rom_erase_bug=False,
    spi=SpiRegs(base=0x60002000, usr=0x18, usr1=0x1C, usr2=0x20, w0=0x58, mosi_dlen=0x24, miso_dlen=0x28,
                addr_msb=False),
    uart_clkdiv_reg=0x60000014,
    uart_clock_hz=40_000_000,
    mac_oui=(0x30, 0xAE, 0xA4),
    boot_log_spi=(b"ESP-ROM:esp32c3-api1-20210207\r\nBuild:Feb  7 2021\r\n"
                         b"rst:0x1 (POWERON),boot:0xc (SPI_FAST_FLASH_BOOT)\r\n"),
    boot_log_download=(b"ESP-ROM:esp32c3-api1-20210207\r\nBuild:Feb  7 2021\r\n"
                       b"rst:0x1 (POWERON),boot:0x4 (DOWNLOAD(USB/UART0/1))\r\nwaiting for download\r\n"),
)

ESP8266 = ChipFacts(
    name="esp8266",
    display_name="ESP8266",
    image_chip_id=0,  # ESP8266 images carry no chip id; detection is by magic value only
    magic_value=0xFFF0C101,
    rom_status_len=2,
    rom_has_security_info=False,
    rom_flash_begin_len=16,
    rom_spi_attach=False,
    rom_has_md5_and_deflate=False,
    rom_erase_bug=True,
    spi=SpiRegs(base=0x60000200, usr=0x1C, usr1=0x20, usr2=0x24, w0=0x40, mosi_dlen=None, miso_dlen=None,
                addr_msb=True),
    uart_clkdiv_reg=0x60000014,
    uart_clock_hz=52_000_000,  # 2 x 26 MHz crystal; esptool divides by XTAL_CLK_DIVIDER=2
    mac_oui=(0x5C, 0xCF, 0x7F),
    boot_log_spi=b"\r\n ets Jan  8 2013,rst cause:1, boot mode:(3,6)\r\n\r\n",
    boot_log_download=b"\r\n ets Jan  8 2013,rst cause:1, boot mode:(1,6)\r\n\r\n",
)

CHIPS: dict[str, ChipFacts] = {chip.name: chip for chip in (ESP32, ESP32C3, ESP8266)}
MIXED_ORDER = ("esp32", "esp32c3", "esp8266")


def chip_facts(name: str) -> ChipFacts:
    key = name.lower().replace("-", "").replace("_", "")
    try:
        return CHIPS[key]
    except KeyError:
        raise ValueError(f"unknown chip {name!r}; choose from {', '.join(CHIPS)}") from None


def mac_for(chip: ChipFacts, number: int, seed: int = 0) -> bytes:
    """Stable MAC: the chip's Espressif OUI, then 24 bits from (seed, board number). Board 1, seed 0 -> ..:00:00:01."""
    nic = ((seed & 0xFF) << 16) + (number & 0xFFFF)
    return bytes(chip.mac_oui) + (nic & 0xFFFFFF).to_bytes(3, "big")


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


# --- SPI NOR flash identity ----------------------------------------------------------------------------------------

WINBOND = 0xEF
SPI_FLASH_SIZES = {2**n: n for n in range(18, 28)}  # 256 KiB .. 128 MiB; RDID capacity byte = log2(size)


def parse_flash_size(text: str | int) -> int:
    if isinstance(text, int):
        size = text
    else:
        t = text.strip().upper().removesuffix("B")
        units = {"K": 1024, "M": MIB}
        size = int(t[:-1]) * units[t[-1]] if t and t[-1] in units else int(t, 0)
    if size not in SPI_FLASH_SIZES:
        raise ValueError(f"flash size {text!r} is not a power of two between 256KB and 128MB")
    return size


def rdid_bytes(flash_size: int) -> bytes:
    """JEDEC ID as it comes out on MISO: manufacturer, memory type, capacity (EF 40 16 = 4 MiB W25Q32)."""
    return bytes((WINBOND, 0x40, SPI_FLASH_SIZES[flash_size]))


def sfdp_table(flash_size: int) -> bytes:
    """A small JESD216 SFDP area: header, basic parameter header + table (density), 4-byte-address header."""
    table = bytearray(b"\xff" * 256)
    table[0x00:0x08] = b"SFDP" + bytes((0x06, 0x01, 0x01, 0xFF))  # rev 1.6, two parameter headers
    table[0x08:0x10] = bytes((0x00, 0x06, 0x01, 0x10, 0x80, 0x00, 0x00, 0xFF))  # basic table at 0x80, 16 dwords
    table[0x10:0x18] = bytes((0x84, 0x00, 0x01, 0x02, 0xD0, 0x00, 0x00, 0xFF))  # 4-byte address table at 0xD0
    table[0x80:0x84] = bytes((0xE5, 0x20, 0xF9, 0xFF))  # 4K erase 0x20, fast read modes
    table[0x84:0x88] = (flash_size * 8 - 1).to_bytes(4, "little")  # density in bits - 1
    return bytes(table)
