"""NVS images and partition tables: what a user relies on when credentials are written."""

import base64
import struct
import subprocess
import sys
import zlib

import pytest

from station.families.esp.payloads import PayloadError
from station.families.esp.payloads.nvs import (
    NvsValue,
    build_nvs_image,
    build_wifi_nvs,
    read_nvs,
    validate_wifi,
    wifi_namespace,
)
from station.families.esp.payloads.partition_table import (
    FLAG_ENCRYPTED,
    SUBTYPE_APP_FACTORY,
    SUBTYPE_DATA_LITTLEFS,
    SUBTYPE_DATA_NVS,
    SUBTYPE_DATA_PHY,
    TYPE_APP,
    TYPE_DATA,
    TYPE_ESP_SECURE_CERT,
    Partition,
    build_partition_table,
    find_partition,
    parse_partition_table,
)

SSID = "Büro-Netz 2.4"
PSK = "correct horse battery"
WIFI = "nvs.net80211"


# --- Wi-Fi NVS ---------------------------------------------------------------------------


def test_wifi_nvs_reads_back_with_driver_layout():
    image = build_wifi_nvs(SSID, PSK, 0x6000)
    assert len(image) == 0x6000

    values = read_nvs(image)
    ssid = SSID.encode()
    # wifi_sta_config_t.ssid[32] with a u32 length prefix; password[64]; both zero-filled
    assert values[(WIFI, "sta.ssid")] == struct.pack("<I", len(ssid)) + ssid + bytes(32 - len(ssid))
    assert values[(WIFI, "sta.pswd")] == PSK.encode() + bytes(64 - len(PSK))
    assert values[(WIFI, "opmode")] == 1
    assert values[(WIFI, "sta.lis_intval")] == 3
    assert values[(WIFI, "sta.scan_method")] == 1
    for key in ("bssid.set", "sta.sort_method", "sta.pmf_r", "sta.sae_pk_mode", "sta.ft"):
        assert values[(WIFI, key)] == 0
    # hidden entries the generator adds for the Wi-Fi driver
    assert values[(WIFI, "sta.apinfo")] == b"\xff" * 140
    assert values[(WIFI, "sta.pmk")] == bytes(32)
    assert values[(WIFI, "sta.apsw")] == bytes(2)


def test_building_prints_nothing(capfd):
    build_wifi_nvs(SSID, PSK, 0x6000)
    with pytest.raises(PayloadError):
        build_wifi_nvs(SSID, PSK, 0x1000)  # the library's own size check would sys.exit here
    assert capfd.readouterr() == ("", "")


def test_open_network_and_raw_key_are_accepted():
    open_net = read_nvs(build_wifi_nvs("guest", "", 0x3000))
    assert open_net[(WIFI, "sta.pswd")] == bytes(64)
    raw_key = "0123456789abcdef" * 4
    keyed = read_nvs(build_wifi_nvs("lab", raw_key, 0x3000))
    assert keyed[(WIFI, "sta.pswd")] == raw_key.encode()


def test_page_headers_are_valid_v2_with_crc():
    image = build_wifi_nvs(SSID, PSK, 0x6000)
    pages = [image[n : n + 0x1000] for n in range(0, len(image), 0x1000)]
    used = [p for p in pages if p[:4] != b"\xff\xff\xff\xff"]
    assert used, "no initialised page"
    for seq, page in enumerate(used):
        state, page_seq, version = struct.unpack_from("<IIB", page)
        assert state in (0xFFFFFFFE, 0xFFFFFFFC)
        assert page_seq == seq
        assert version == 0xFE  # format v2 (multi-page blobs)
        assert struct.unpack_from("<I", page, 28)[0] == zlib.crc32(page[4:28], 0xFFFFFFFF)
    assert pages[-1] == b"\xff" * 0x1000  # the reserved page stays erased


def test_profile_namespace_is_written_beside_wifi():
    extra = {"app": {"mqtt_host": NvsValue("string", "broker.lan"), "mqtt_port": NvsValue("u16", 8883)}}
    values = read_nvs(build_wifi_nvs(SSID, PSK, 0x6000, extra=extra))
    assert values[("app", "mqtt_host")] == "broker.lan"
    assert values[("app", "mqtt_port")] == 8883
    assert (WIFI, "sta.ssid") in values


def test_reader_and_builder_agree_with_the_library_cli(tmp_path):
    """An image made by the generator's own CSV command reads back to the CSV values, and the
    in-memory builder produces the same bytes."""
    big = bytes(range(256)) * 20  # 5120 bytes: a v2 blob split over two pages
    rows = [
        ("app", "namespace", "", ""),
        ("flag", "data", "u8", "200"),
        ("offset", "data", "i8", "-7"),
        ("port", "data", "u16", "1883"),
        ("delta", "data", "i32", "-100000"),
        ("serial", "data", "u64", str(2**40 + 3)),
        ("epoch", "data", "i64", str(-(2**35))),
        ("host", "data", "string", "mqtt.example.net"),
        ("note", "data", "string", "grüße"),
        ("cert", "data", "base64", base64.b64encode(big).decode()),
        ("cfg", "namespace", "", ""),
        ("mac", "data", "hex2bin", "a4cf12345678"),
    ]
    csv = tmp_path / "in.csv"
    csv.write_text("key,type,encoding,value\n" + "".join(",".join(r) + "\n" for r in rows))
    out = tmp_path / "out.bin"
    subprocess.run(
        [sys.executable, "-m", "esp_idf_nvs_partition_gen", "generate", str(csv), str(out), "0x6000"],
        check=True, capture_output=True,
    )
    library_image = out.read_bytes()

    expected = {
        ("app", "flag"): 200, ("app", "offset"): -7, ("app", "port"): 1883,
        ("app", "delta"): -100000, ("app", "serial"): 2**40 + 3, ("app", "epoch"): -(2**35),
        ("app", "host"): "mqtt.example.net", ("app", "note"): "grüße", ("app", "cert"): big,
        ("cfg", "mac"): bytes.fromhex("a4cf12345678"),
    }
    assert read_nvs(library_image) == expected

    ours = build_nvs_image(
        {
            "app": {
                "flag": NvsValue("u8", 200), "offset": NvsValue("i8", -7),
                "port": NvsValue("u16", 1883), "delta": NvsValue("i32", -100000),
                "serial": NvsValue("u64", 2**40 + 3), "epoch": NvsValue("i64", -(2**35)),
                "host": NvsValue("string", "mqtt.example.net"), "note": NvsValue("string", "grüße"),
                "cert": NvsValue("binary", big),
            },
            "cfg": {"mac": NvsValue("binary", bytes.fromhex("a4cf12345678"))},
        },
        0x6000,
    )
    assert ours == library_image


@pytest.mark.parametrize("ssid", ["x" * 33, "€" * 11])  # both 33 bytes in UTF-8
def test_long_ssid_is_refused_with_the_limit(ssid):
    with pytest.raises(PayloadError) as err:
        build_wifi_nvs(ssid, PSK, 0x6000)
    msg = str(err.value)
    assert "SSID" in msg and "33 bytes" in msg and "32 bytes" in msg


def test_empty_ssid_is_refused():
    with pytest.raises(PayloadError, match="SSID is empty"):
        validate_wifi("", PSK)


@pytest.mark.parametrize(
    "psk, expected",
    [
        ("s3cr3t!", ["PSK", "7 characters", "8-63"]),
        ("Z" * 64, ["PSK", "64 characters", "hex"]),
        ("y" * 70, ["PSK", "70 characters", "8-63"]),
        ("tab\there-is-bad", ["PSK", "printable ASCII"]),
    ],
)
def test_bad_psk_is_refused_without_echoing_it(psk, expected):
    with pytest.raises(PayloadError) as err:
        build_wifi_nvs(SSID, psk, 0x6000)
    msg = str(err.value)
    for part in expected:
        assert part in msg
    assert psk not in msg
    assert psk not in repr(err.value)


def test_psk_is_hidden_in_repr():
    namespace = wifi_namespace(SSID, PSK)
    assert PSK not in repr(namespace)
    assert "<secret>" in repr(namespace["sta.pswd"])
    assert SSID in repr(namespace["sta.ssid"])


@pytest.mark.parametrize(
    "size, message",
    [(0x2000, "at least 0x3000"), (0x3800, "multiple of 4096")],
)
def test_bad_partition_size_is_refused_not_exited(size, message):
    with pytest.raises(PayloadError, match=message):
        build_wifi_nvs(SSID, PSK, size)


def test_values_that_do_not_fit_are_refused():
    huge = {"app": {"blob": NvsValue("binary", bytes(12000))}}
    with pytest.raises(PayloadError, match="do not fit in the 0x3000-byte NVS partition"):
        build_nvs_image(huge, 0x3000)


@pytest.mark.parametrize(
    "namespaces, message",
    [
        ({"app": {"port": NvsValue("u16", 70000)}}, r"app/port \(u16\) must be an integer 0..65535"),
        ({"app": {"a_key_that_is_too_long": NvsValue("u8", 1)}}, "1-15 printable ASCII"),
        ({"namespace_too_long": {"k": NvsValue("u8", 1)}}, "namespace 'namespace_too_long'"),
        ({"app": {"k": NvsValue("float", 1)}}, "unknown encoding"),
    ],
)
def test_bad_profile_values_are_refused(namespaces, message):
    with pytest.raises(PayloadError, match=message):
        build_nvs_image(namespaces, 0x6000)


def test_corrupt_entry_is_detected():
    image = bytearray(build_wifi_nvs(SSID, PSK, 0x6000))
    image[64 + 32 * 3 + 10] ^= 0x01  # a key byte of the fourth entry
    with pytest.raises(PayloadError, match="CRC mismatch"):
        read_nvs(bytes(image))


def test_corrupt_page_header_is_detected():
    image = bytearray(build_wifi_nvs(SSID, PSK, 0x6000))
    image[4] ^= 0x01  # sequence number
    with pytest.raises(PayloadError, match="page 0 header CRC"):
        read_nvs(bytes(image))


def test_truncated_nvs_image_is_detected():
    with pytest.raises(PayloadError, match="not a whole number of 4096-byte pages"):
        read_nvs(build_wifi_nvs(SSID, PSK, 0x6000)[:5000])


# --- partition tables ----------------------------------------------------------------------

PARTS = [
    Partition("nvs", TYPE_DATA, SUBTYPE_DATA_NVS, 0x9000, 0x4000),
    Partition("esp_secure_cert", TYPE_ESP_SECURE_CERT, 0, 0xD000, 0x2000, FLAG_ENCRYPTED),
    Partition("phy_init", TYPE_DATA, SUBTYPE_DATA_PHY, 0xF000, 0x1000),
    Partition("factory", TYPE_APP, SUBTYPE_APP_FACTORY, 0x10000, 0x180000),
    Partition("littlefs", TYPE_DATA, SUBTYPE_DATA_LITTLEFS, 0x190000, 0x70000),
]


def test_partition_table_round_trips():
    table = build_partition_table(PARTS)
    assert len(table) == 0xC00
    assert table[:2] == b"\xaa\x50"
    assert parse_partition_table(table) == PARTS
    # also when read back from flash with the rest of the sector
    assert parse_partition_table(table + b"\xff" * 0x400) == PARTS


def test_find_partition():
    assert find_partition(PARTS, name="factory").offset == 0x10000
    assert find_partition(PARTS, type=TYPE_DATA, subtype=SUBTYPE_DATA_NVS).name == "nvs"
    assert find_partition(PARTS, type=TYPE_ESP_SECURE_CERT).offset == 0xD000
    assert find_partition(PARTS, name="nvs", type=TYPE_APP) is None


def test_corrupted_md5_is_refused():
    table = bytearray(build_partition_table(PARTS))
    md5_row = 32 * len(PARTS)
    assert table[md5_row : md5_row + 2] == b"\xeb\xeb"
    table[md5_row + 20] ^= 0xFF
    with pytest.raises(PayloadError, match="MD5 mismatch"):
        parse_partition_table(bytes(table))


def test_changed_entry_is_caught_by_md5():
    table = bytearray(build_partition_table(PARTS))
    table[32 * 3 + 8] ^= 0x01  # factory partition size
    with pytest.raises(PayloadError, match="MD5 mismatch"):
        parse_partition_table(bytes(table))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x00" * 0xC00, "instead of aa 50"),
        (b"\xff" * 0xC00, "no entries"),
        (None, "truncated"),
    ],
)
def test_malformed_tables_are_refused(data, message):
    if data is None:  # rows without MD5 row or end marker
        data = build_partition_table(PARTS)[: 32 * len(PARTS)]
    with pytest.raises(PayloadError, match=message):
        parse_partition_table(data)


@pytest.mark.parametrize(
    "parts, message",
    [
        ([Partition("app", TYPE_APP, 0, 0x18000, 0x10000)], "not aligned to 0x10000"),
        (
            [Partition("a", TYPE_DATA, 1, 0x9000, 0x6000), Partition("b", TYPE_DATA, 2, 0xE000, 0x1000)],
            "overlaps 'a'",
        ),
        ([Partition("x" * 17, TYPE_DATA, 1, 0x9000, 0x1000)], "1-16 ASCII"),
        (
            [Partition("a", TYPE_DATA, 1, 0x9000, 0x1000), Partition("a", TYPE_DATA, 1, 0xA000, 0x1000)],
            "appears twice",
        ),
    ],
)
def test_bad_partition_lists_are_refused(parts, message):
    with pytest.raises(PayloadError, match=message):
        build_partition_table(parts)
