"""The DFU host against the project's emulated DFU devices (STM32 ROM, Spark Core, Photon) through pyusb.

Assertions are what a technician would check: the bytes in the board's memory (read through the emulator's
debugger view), the states the board ends in, and the words of each refusal.
"""
import os
import threading

import pytest
import usb.core

from station.families.dfu.errors import DfuError, DfuLayoutError
from station.families.dfu.host import DfuHost, LeaveOutcome, State
from station.families.dfu.sim.backend import EmulatedUsbBackend
from station.families.dfu.sim.device import DfuFaults, make_device

K = 1024
DNLOAD = 1


@pytest.fixture
def bus():
    return EmulatedUsbBackend()


def plug(bus, kind, faults=None):
    """An emulated board of `kind` on the bus, and the pyusb Device the host gets for it."""
    board = make_device(kind, faults=faults)
    attachment = bus.plug(board)
    return board, usb.core.find(backend=bus, bus=attachment.bus, address=attachment.address)


def fill(board, alt, address, data):
    """Put bytes into the board's memory as if an earlier batch had written them."""
    board.memories[alt].load(address, data)


@pytest.mark.parametrize("kind, alt, address, size", [
    ("stm32", "Internal Flash", 0x08020000, 5000),
    ("core", "SPI Flash : SST25x", 0x1000, 294),  # server public key
    ("core", "SPI Flash : SST25x", 0x2000, 612),  # device private key
    ("core", "Internal Flash", 0x08005000, 3000),  # user firmware, above the read-only bootloader
    ("photon", "DCT Flash", 34, 1216),  # device private key
    ("photon", "DCT Flash", 2082, 768),  # server public key
])
def test_write_then_read_back_is_equal(bus, kind, alt, address, size):
    board, device = plug(bus, kind)
    data = os.urandom(size)
    with DfuHost(device) as host:
        number = host.select(alt).number
        host.write(address, data)
        assert host.read(address, size) == data
        assert host.get_status().state == State.IDLE
    assert board.read_memory(number, address, size) == data


def test_write_reports_progress_per_block(bus):
    _, device = plug(bus, "core")
    seen = []
    with DfuHost(device) as host:
        host.select(1)
        host.write(0x3000, bytes(2500), progress=lambda done, total: seen.append((done, total)))
    assert seen == [(0, 2500), (1024, 2500), (2048, 2500), (2500, 2500)]


def test_only_the_pages_the_write_touches_are_erased(bus):
    board, device = plug(bus, "core")
    fill(board, 1, 0, b"\xa5" * (16 * K))
    key = os.urandom(294)
    with DfuHost(device) as host:
        host.select("SPI Flash : SST25x")
        host.write(0x1000, key)
    memory = board.read_memory(1, 0, 16 * K)
    assert memory[:0x1000] == b"\xa5" * 0x1000  # the page before: untouched
    assert memory[0x1000:0x1000 + 294] == key
    assert memory[0x1000 + 294:0x2000] == b"\xff" * (0x1000 - 294)  # rest of the touched 4 KB page: erased
    assert memory[0x2000:] == b"\xa5" * (16 * K - 0x2000)  # the pages after: untouched


def test_a_write_across_sectors_erases_both_and_nothing_else(bus):
    board, device = plug(bus, "stm32")
    fill(board, 0, 0x08008000, b"\x5a" * (0x08030000 - 0x08008000))
    with DfuHost(device) as host:
        host.select(0)
        host.write(0x0800FFF0, b"\x00" * 32)  # last 16 bytes of a 16 KB sector, first 16 of the 64 KB one
    assert board.read_memory(0, 0x08008000, 0x4000) == b"\x5a" * 0x4000
    assert board.read_memory(0, 0x0800C000, 0x3FF0) == b"\xff" * 0x3FF0
    assert board.read_memory(0, 0x0800FFF0, 32) == bytes(32)
    assert board.read_memory(0, 0x08010010, 0x10000 - 16) == b"\xff" * (0x10000 - 16)
    assert board.read_memory(0, 0x08020000, 0x10000) == b"\x5a" * 0x10000


def test_dct_bytes_beside_the_write_survive(bus):
    board, device = plug(bus, "photon")
    fill(board, 1, 0, b"\x11" * (16 * K))
    key = os.urandom(768)
    with DfuHost(device) as host:
        host.select("dct flash")  # names match regardless of case and spacing
        host.write(2082, key)
    memory = board.read_memory(1, 0, 16 * K)
    assert memory[:2082] == b"\x11" * 2082 and memory[2082 + 768:] == b"\x11" * (16 * K - 2082 - 768)
    assert memory[2082:2082 + 768] == key


def test_mass_erase_only_when_asked(bus):
    board, device = plug(bus, "core")
    fill(board, 1, 0x100000, b"\x33" * 64)
    with DfuHost(device) as host:
        host.select(1)
        host.write(0x1000, b"key")
        assert board.read_memory(1, 0x100000, 64) == b"\x33" * 64
        host.write(0x1000, b"key", mass_erase=True)
    assert board.read_memory(1, 0x100000, 64) == b"\xff" * 64
    assert board.read_memory(1, 0x1000, 3) == b"key"


@pytest.mark.parametrize("kind, alt, address, size, words", [
    ("core", 1, 0x200000, 16, "starts outside \"SPI Flash : SST25x\""),
    ("core", 0, 0x08004F00, 0x200, "read-only"),  # the bootloader's last page
    ("photon", 1, 0, 16 * K + 1, "larger than \"DCT Flash\": only 16384 bytes fit"),
    ("stm32", 0, 0x080FF000, 0x2000, "larger than \"Internal Flash\""),
])
def test_refusals_leave_the_memory_untouched(bus, kind, alt, address, size, words):
    board, device = plug(bus, kind)
    before = board.snapshot(alt)
    with DfuHost(device) as host:
        host.select(alt)
        with pytest.raises(DfuLayoutError, match=words):
            host.write(address, b"\x00" * size)
        assert host.get_status().state == State.IDLE
    assert board.snapshot(alt) == before


def test_unknown_alt_names_what_the_board_offers(bus):
    _, device = plug(bus, "core")
    with DfuHost(device) as host, pytest.raises(DfuError, match=r"no DFU alt setting 'DCT Flash'; it offers "
                                                               r"0 \"Internal Flash\", 1 \"SPI Flash : SST25x\""):
        host.select("DCT Flash")


def test_descriptor_and_dfuse_commands(bus):
    _, device = plug(bus, "photon")
    with DfuHost(device) as host:
        assert (host.functional.transfer_size, host.functional.dfu_version) == (4096, 0x011A)
        assert host.functional.can_download and host.functional.can_upload and host.functional.will_detach
        assert not host.functional.manifestation_tolerant
        assert [(a.number, a.name) for a in host.alts] == [(0, "Internal Flash"), (1, "DCT Flash")]
        assert host.dfuse_commands() == b"\x00\x21\x41"


def test_the_boards_own_address_refusal_is_in_words(bus):
    _, device = plug(bus, "core")
    with DfuHost(device) as host:
        host.select(1)
        with pytest.raises(DfuError, match=r"setting the address to 0x00300000 failed: the board refused the "
                                           r"address.*\(errADDRESS\)"):
            host.set_address(0x300000)
        assert host.get_status().state == State.IDLE  # the error was cleared for the next attempt


@pytest.mark.parametrize("kind, outcome", [("stm32", LeaveOutcome.MANIFEST), ("core", LeaveOutcome.DNLOAD_IDLE),
                                           ("photon", LeaveOutcome.DNLOAD_IDLE)])
def test_leave_outcomes(bus, kind, outcome):
    board, device = plug(bus, kind)
    host = DfuHost(device)
    host.select(0)
    assert host.leave() == outcome
    assert board.attachment is None  # it reset into its firmware


def test_leave_when_the_board_resets_without_answering(bus):
    board, device = plug(bus, "core", DfuFaults(vanish_on_leave=True))
    host = DfuHost(device)
    host.select(1)
    host.write(0x1000, b"key")
    assert host.leave() == LeaveOutcome.VANISHED
    assert board.attachment is None


def test_verify_error_shows_in_the_read_back_and_at_leave(bus):
    board, device = plug(bus, "core", DfuFaults(err_verify=True))
    data = b"\xff\x01" * 100
    host = DfuHost(device)
    host.select(1)
    host.write(0x2000, data)
    assert host.read(0x2000, len(data)) != data
    with pytest.raises(DfuError, match=r"did not leave DFU mode: the written bytes did not read back the same "
                                       r"\(verify failed\) \(errVERIFY\)"):
        host.leave()


def test_stall_is_reported_in_words(bus):
    board, device = plug(bus, "core", DfuFaults(stall_on_request=DNLOAD))
    before = board.snapshot(1)
    with DfuHost(device) as host:
        host.select(1)
        with pytest.raises(DfuError, match=r"the board refused erasing the page at 0x00001000 \(USB stall\)"):
            host.write(0x1000, b"key")
        host.write(0x1000, b"key")  # the stall was one-off: the host gets the board back to idle and goes on
    assert board.snapshot(1) != before and board.read_memory(1, 0x1000, 3) == b"key"


def test_board_vanishing_mid_write(bus):
    board, device = plug(bus, "photon", DfuFaults(unplug_after_bytes=8 * K))
    with DfuHost(device) as host:
        host.select(0)
        with pytest.raises(DfuError, match=r"the board vanished during .* \(unplugged, or it reset\)"):
            host.write(0x080A0000, os.urandom(32 * K))
    assert board.attachment is None


def test_board_stuck_in_error(bus):
    _, device = plug(bus, "stm32", DfuFaults(stuck_in_error=True))
    with DfuHost(device) as host:
        host.select(0)
        with pytest.raises(DfuError, match=r"stuck in dfuERROR \(the board reported an unknown error "
                                           r"\(errUNKNOWN\)\) and does not return to idle; unplug it"):
            host.write(0x08020000, b"x")


def test_board_gone_before_open(bus):
    board, device = plug(bus, "core")
    bus.unplug(board)
    with pytest.raises(DfuError, match="the board vanished during opening the board"):
        DfuHost(device)


def test_cancel_from_another_thread_stops_between_blocks(bus):
    board, device = plug(bus, "core")
    host = DfuHost(device)
    host.select(1)
    reached, cancelled = threading.Event(), threading.Event()

    def progress(done, total):
        if done == 2 * K:
            reached.set()
            cancelled.wait(10)

    def operator():
        reached.wait(10)
        host.cancel("Stop pressed")
        cancelled.set()

    stopper = threading.Thread(target=operator)
    stopper.start()
    with pytest.raises(DfuError, match="Stop pressed: the DFU transfer was abandoned part-way"):
        host.write(0x4000, b"\x00" * (8 * K), progress=progress)
    stopper.join()
    assert board.read_memory(1, 0x4000, 2 * K) == bytes(2 * K)  # the blocks before Stop
    assert board.read_memory(1, 0x4000 + 2 * K, 6 * K) == b"\xff" * (6 * K)  # nothing after it


def test_two_boards_in_parallel_threads(bus):
    boards = [plug(bus, "stm32") for _ in range(2)]  # STM32 ROM serials of instance pairs may collide
    images = [os.urandom(40 * K), os.urandom(40 * K)]
    errors = []

    def flash(device, image):
        try:
            with DfuHost(device) as host:
                host.select(0)
                host.write(0x08040000, image)
        except DfuError as error:
            errors.append(error)

    threads = [threading.Thread(target=flash, args=(device, image)) for (_, device), image in zip(boards, images)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [board.read_memory(0, 0x08040000, 40 * K) for board, _ in boards] == images


def test_the_same_host_drives_a_board_served_over_the_emulators_socket(tmp_path):
    from station.discovery.usb_devices import open_usb, register_scheme
    from station.families.dfu.sim import remote
    from station.families.dfu.sim.server import DfuSimServer

    register_scheme(remote.SCHEME, remote.open_device)
    board = make_device("core")
    key = os.urandom(612)
    with DfuSimServer([board], tmp_path) as server:
        device = open_usb(server.urls[0])
        host = DfuHost(device)
        host.select("SPI Flash : SST25x")
        host.write(0x2000, key)
        assert host.read(0x2000, len(key)) == key
        assert host.leave() == LeaveOutcome.DNLOAD_IDLE
        device.backend.close()  # the emulator's socket outlives pyusb's handle
    assert board.read_memory(1, 0x2000, len(key)) == key
