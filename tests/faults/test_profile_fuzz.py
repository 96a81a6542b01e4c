"""A seeded profile fuzzer: mutations of the shipped profiles either load or are refused with one line that
names the profile file and the table or key at fault; never a traceback, never a hang.

Each case takes a shipped profile, makes its firmware paths absolute (so the mutant can live in a temporary
directory), applies a few seeded mutations (wrong types, missing and unknown keys, odd paths, special numbers,
unicode, huge values), writes it as TOML and loads it.
"""
from __future__ import annotations

import math
import os
import random
import re
import signal
import tomllib
from contextlib import contextmanager
from pathlib import Path

import pytest

from station.profiles import Profile, ProfileError, load_profile

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
SHIPPED = sorted(PROFILES.glob("*.toml"))
CASES_PER_PROFILE = 80
HANG_GUARD_S = 60  # far beyond any load (a few ms): only turns a hang into a failure instead of a stuck run


# --- TOML out (the standard library only reads it) ---------------------------------------------------------------

def toml_string(text: str) -> str:
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        elif 0xD800 <= ord(c) <= 0xDFFF:
            out.append("\\ufffd")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def dump_toml(doc: dict) -> str:
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in doc.items())


# --- mutations ---------------------------------------------------------------------------------------------------

def containers(node, path=()):
    """Every (path, container) in the document, tables and arrays alike."""
    yield path, node
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, child in items:
        if isinstance(child, (dict, list)):
            yield from containers(child, path + (key,))


def odd_values(rng: random.Random, places: dict[str, Path]) -> list:
    return [
        0, -1, 1, 2**63 - 1, -(2**63), 0x1001, 7, 1e308, -0.0, float("nan"), float("inf"), float("-inf"), 0.5,
        True, False, "", " ", "x" * rng.choice((16, 300, 200_000)), "\u202etxt.nib", "ü/é/日本", "😀",
        "a\x00b", "\x1b[32mPASS\x1b[0m\n", "#", "devices/+", "devices/#", "$SYS", "/leading", "trailing/",
        "env:", "env:A=B", "keyring:x", "keyring:a/b", "env:STATION_FUZZ_SECRET", "https://", "http://x",
        "https://127.0.0.1:1/x", "ftp://h/", "ESP32", "ESP8266", "STM32F405", "app", "bootloader", "0" * 64,
        "g" * 64, "ab:" * 31 + "ab", "https", "mosquitto", "spark-server", "none",
        [], [1, "a"], {}, {"a": 1}, {"file": "x"},
        str(places["zero"]), str(places["fifo"]), str(places["dir"]), str(places["big"]), str(places["missing"]),
        "../../../../etc/passwd", "/proc/self/mem", "firmware\x00.bin",
    ]


def mutate(doc: dict, rng: random.Random, places: dict[str, Path]) -> None:
    spots = list(containers(doc))
    path, node = rng.choice(spots)
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    action = rng.choice(("replace", "replace", "replace", "delete", "add", "string"))
    if not keys or action == "add":
        if isinstance(node, dict):
            node[rng.choice(("bogus", "psk", "ü", "file", "timeout", "token", "chip", ""))] = \
                rng.choice(odd_values(rng, places))
        else:
            node.append(rng.choice(odd_values(rng, places)))
        return
    key = rng.choice(keys)
    if action == "delete":
        del node[key]
    elif action == "string" and isinstance(node[key], str):
        text = node[key]
        at = rng.randrange(len(text) + 1)
        node[key] = text[:at] + rng.choice(("\x00", "\n", "ü", "/", "..", "\ud800", "+", "#", " ")) + text[at:]
    else:
        node[key] = rng.choice(odd_values(rng, places))


def absolute_files(node, base: Path) -> None:
    for _, container in containers(node):
        if isinstance(container, dict) and isinstance(container.get("file"), str):
            container["file"] = str(base / container["file"])


@contextmanager
def hang_guard(what: str):
    def hung(_signum, _frame):
        raise AssertionError(f"loading {what} hung")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(HANG_GUARD_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("odd-files")
    fifo = root / "fifo"
    os.mkfifo(fifo)
    big = root / "big.bin"
    with big.open("wb") as f:  # sparse: huge to a reader, nothing on disk
        f.truncate(1 << 34)
    return {"zero": Path("/dev/zero"), "fifo": fifo, "dir": root, "big": big, "missing": root / "missing.bin"}


def assert_usable(profile: Profile, data: Path) -> None:
    """What a loaded profile promises: bounded step timeouts, and a cloud table its registrar accepts."""
    from station.cloud.connect import registrar_for
    from station.cloud.dynsec import check_topic_prefix

    assert isinstance(profile, Profile)
    for policy in (policy for own in profile.steps.values() for policy in own.values()):
        assert math.isfinite(policy.timeout) and policy.timeout > 0
    if profile.cloud is not None:
        if profile.cloud.registrar == "mosquitto":
            check_topic_prefix(profile.cloud.topic_prefix)
        else:
            registrar_for(profile.cloud, data)


KEY_IN_MESSAGE = re.compile(r"\[[^\]]+\]|'[^']*'")  # [table.key], or a top-level key by name


@pytest.mark.parametrize("shipped", SHIPPED, ids=lambda p: p.stem)
def test_mutated_profiles_load_or_are_refused_in_one_line(shipped, places, tmp_path, monkeypatch):
    monkeypatch.setenv("STATION_FUZZ_SECRET", "fuzz")
    base = tomllib.loads(shipped.read_text())
    absolute_files(base, shipped.parent)
    rng = random.Random(f"profile-fuzz:{shipped.name}")
    outcomes = {"loaded": 0, "refused": 0}
    for case in range(CASES_PER_PROFILE):
        doc = tomllib.loads(dump_toml(base))  # a deep copy
        for _ in range(rng.choice((1, 1, 2, 3))):
            mutate(doc, rng, places)
        file = tmp_path / f"{shipped.stem}-{case}.toml"
        file.write_text(dump_toml(doc), encoding="utf-8")
        with hang_guard(file.name):
            try:
                loaded = load_profile(file)
            except ProfileError as exc:
                message = str(exc)
                assert "\n" not in message and "\r" not in message, message
                assert message.startswith(f"{file}: "), message
                assert KEY_IN_MESSAGE.search(message[len(str(file)):]), message  # the table or key at fault
                outcomes["refused"] += 1
                continue
        assert_usable(loaded, tmp_path)
        outcomes["loaded"] += 1
    assert outcomes["refused"] > CASES_PER_PROFILE // 2  # the mutations really bite


@pytest.mark.parametrize("name, file_value", [
    ("a NUL byte", "firmware\x00.bin"), ("/dev/zero", "/dev/zero"), ("a FIFO", "fifo"), ("a directory", "dir"),
    ("a huge file", "big"),
])
def test_a_firmware_file_that_is_not_a_small_regular_file_is_refused(name, file_value, places, tmp_path):
    doc = tomllib.loads((PROFILES / "esp32-mqtt-sensor.toml").read_text())
    absolute_files(doc, PROFILES)
    doc["firmware"][0]["images"][0]["file"] = str(places.get(file_value, file_value))
    file = tmp_path / "p.toml"
    file.write_text(dump_toml(doc), encoding="utf-8")
    with hang_guard(name), pytest.raises(ProfileError) as refused:
        load_profile(file)
    assert "[firmware[0].images[0].file]" in str(refused.value)


HTTPS = {"registrar": "https", "url": "https://cloud.example/devices", "token": "env:TOKEN", "pin_sha256": "ab" * 32}
SPARK = {"registrar": "spark-server", "url": "http://127.0.0.1:8080", "client_secret": "env:SECRET",
         "username": "station@example.com", "password": "env:PASSWORD"}


@pytest.mark.parametrize("where, change, key", [
    ("cloud", {**HTTPS, "token": None}, "cloud.token"),
    ("cloud", {**HTTPS, "pin_sha256": "not-a-pin"}, "cloud.pin_sha256"),
    ("cloud", {**HTTPS, "pin_sha256": None}, "cloud.pin_sha256"),
    ("cloud", {**HTTPS, "url": "http://cloud.example/devices"}, "cloud.url"),
    ("cloud", {**HTTPS, "token": "env:"}, "cloud.token"),
    ("cloud", {**SPARK, "client_secret": None}, "cloud.client_secret"),
    ("cloud", {**SPARK, "password": None}, "cloud.password"),
    ("cloud", {**SPARK, "url": "spark"}, "cloud.url"),
    ("cloud", {"registrar": "mosquitto", "topic_prefix": "#"}, "cloud.topic_prefix"),
    ("cloud", {"registrar": "mosquitto", "topic_prefix": "devices/+/x"}, "cloud.topic_prefix"),
    ("wifi", {"ssid": "lab", "psk_env": "A=B"}, "wifi.psk_env"),
    ("wifi", {"ssid": "lab", "psk_env": ""}, "wifi.psk_env"),
    ("steps", {"flash": {"timeout": float("nan")}}, "steps.flash"),
    ("steps", {"flash": {"timeout": float("inf")}}, "steps.flash"),
    ("steps", {"flash": {"timeout": 1e308}}, "steps.flash"),
])
def test_hand_made_bad_profiles_are_refused_naming_the_key(where, change, key, tmp_path):
    doc = tomllib.loads((PROFILES / "esp32-mqtt-sensor.toml").read_text())
    absolute_files(doc, PROFILES)
    doc[where] = {k: v for k, v in change.items() if v is not None}
    file = tmp_path / "p.toml"
    file.write_text(dump_toml(doc), encoding="utf-8")
    with pytest.raises(ProfileError) as refused:
        load_profile(file)
    message = str(refused.value)
    assert message.startswith(f"{file}: [{key}")
    assert "\n" not in message


@pytest.mark.parametrize("cloud", [HTTPS, SPARK], ids=["https", "spark-server"])
def test_good_registrar_options_load(cloud, tmp_path):
    doc = tomllib.loads((PROFILES / "esp32-mqtt-sensor.toml").read_text())
    absolute_files(doc, PROFILES)
    doc["cloud"] = cloud
    file = tmp_path / "p.toml"
    file.write_text(dump_toml(doc), encoding="utf-8")
    assert load_profile(file).cloud.registrar == cloud["registrar"]


def test_a_profile_file_that_is_a_fifo_or_a_device_is_refused(places):
    for target in (places["fifo"], places["zero"], places["dir"]):
        with hang_guard(str(target)), pytest.raises(ProfileError, match="can't be read"):
            load_profile(target)
