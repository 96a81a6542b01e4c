"""Every bad profile input is refused before a board is touched, with a message naming file, key and fix."""
import hashlib
import shutil
from pathlib import Path

import pytest

from station.profile_library import shipped_profiles_dir
from station.families.esp.profile import ESP_CHIPS
from station.profiles import ProfileError, load_profile, resolve_psk
from station.families.esp.sim.firmware import make_app_image

PROFILES = shipped_profiles_dir()


@pytest.fixture
def profile_dir(tmp_path):
    shutil.copytree(PROFILES / "firmware", tmp_path / "firmware")
    shutil.copytree(PROFILES / "keys", tmp_path / "keys")
    shutil.copy(PROFILES / "demo-mixed.toml", tmp_path / "p.toml")
    return tmp_path


def edit(profile_dir: Path, old: str, new: str) -> Path:
    path = profile_dir / "p.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


def refused(path: Path) -> str:
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    return str(err.value)


def test_shipped_profiles_load():
    for path in PROFILES.glob("*.toml"):
        profile = load_profile(path)
        assert profile.firmware
        # only ESP boards take Wi-Fi here: in NVS, or by Improv where Arduino firmware (a flash layout) has no NVS
        arduino = "esp" in profile.families and profile.options["esp"].flash_layout is not None
        assert (profile.wifi is not None) == ("esp" in profile.families)
        for chip, fw in profile.firmware.items():
            if arduino:
                assert [i.kind for i in fw.images] == ["app"]  # eboot and the sketch in one .bin at 0x0
            elif chip in ESP_CHIPS:
                assert {i.kind for i in fw.images} == {"bootloader", "partition-table", "app"}
            else:  # a DFU board: every image lands somewhere
                assert fw.placements and all(p.data for p in fw.placements)


def test_unknown_key_is_named_with_where_it_is(profile_dir):
    message = refused(edit(profile_dir, 'baud = 921600', 'baud = 921600\nbuad = 115200'))
    assert "p.toml" in message and "[profile]" in message and "unknown key 'buad'" in message
    assert "allowed here: name, description, family, baud" in message


def test_wrong_type_names_key_and_expected_type(profile_dir):
    message = refused(edit(profile_dir, 'baud = 921600', 'baud = "fast"'))
    assert "[profile.baud] expected integer, got a string 'fast'" in message


def test_verify_mode_is_one_of_two_and_defaults_to_unchecked(profile_dir):
    assert load_profile(profile_dir / "p.toml").options["esp"].verify == "unchecked"
    message = refused(edit(profile_dir, 'baud = 921600', 'baud = 921600\nverify = "twice"'))
    assert "[profile.verify] verify 'twice' is not known" in message and '"all"' in message
    assert load_profile(edit(profile_dir, 'verify = "twice"', 'verify = "all"')).options["esp"].verify == "all"


def test_missing_firmware_file(profile_dir):
    (profile_dir / "firmware/mqtt-sensor-esp32/mqtt-sensor.bin").unlink()
    message = refused(profile_dir / "p.toml")
    assert "[firmware[0].images[2].file]" in message
    assert "mqtt-sensor.bin can't be read (No such file or directory)" in message and "fix the path" in message


def test_missing_profile_file(tmp_path):
    assert "profile file not found" in refused(tmp_path / "nope.toml")


def test_sha256_pin_mismatch(profile_dir):
    app = profile_dir / "firmware/mqtt-sensor-esp32/mqtt-sensor.bin"
    app.write_bytes(app.read_bytes()[:-1] + b"\x00")
    message = refused(profile_dir / "p.toml")
    assert "[firmware[0].images[2].sha256]" in message and "but the profile pins" in message


def pin(profile_dir: Path, rel: str, data: bytes) -> None:
    """Replace a firmware file and its pin, so only the image content is wrong."""
    path = profile_dir / rel
    old = hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_bytes(data)
    edit(profile_dir, old, hashlib.sha256(data).hexdigest())


def test_image_for_the_wrong_chip(profile_dir):
    pin(profile_dir, "firmware/mqtt-sensor-esp32/mqtt-sensor.bin", make_app_image("ESP32-C3", "x", "1"))
    message = refused(profile_dir / "p.toml")
    assert "is built for ESP32-C3 but the board is ESP32" in message and "[firmware[0].images[2].file]" in message


def test_truncated_image(profile_dir):
    rel = "firmware/mqtt-sensor-esp32/mqtt-sensor.bin"
    pin(profile_dir, rel, (profile_dir / rel).read_bytes()[:100_000])
    assert "truncated" in refused(profile_dir / "p.toml")


def test_overlapping_images(profile_dir):
    message = refused(edit(profile_dir, "offset = 0x8000", "offset = 0x2000"))
    assert "bootloader.bin at 0x1000 (27440 bytes) overlaps partition-table.bin at 0x2000" in message


def test_passphrase_in_profile_is_refused(profile_dir):
    message = refused(edit(profile_dir, 'ssid = "station-demo"', 'ssid = "station-demo"\npsk = "hunter2hunter2"'))
    assert "must never be written in a profile" in message and "hunter2" not in message


def test_ssid_over_32_bytes(profile_dir):
    message = refused(edit(profile_dir, 'ssid = "station-demo"', f'ssid = "{"x" * 33}"'))
    assert "[wifi.ssid]" in message and "33 bytes" in message and "32" in message


def test_nvs_value_of_the_wrong_type(profile_dir):
    message = refused(edit(profile_dir, 'port = { type = "u16", value = 8883 }',
                           'port = { type = "u16", value = 70000 }'))
    assert "70000" in message and "u16" in message


@pytest.mark.parametrize("psk, why", [("short", "8"), ("x" * 64, "64"), ("", "is empty")])
def test_passphrase_out_of_range_is_refused_without_echoing_it(psk, why):
    profile = load_profile(PROFILES / "demo-mixed.toml")
    with pytest.raises(ProfileError) as err:
        resolve_psk(profile.wifi, {"STATION_DEMO_WIFI_PSK": psk})
    assert "STATION_DEMO_WIFI_PSK" in str(err.value) and why in str(err.value)
    if psk:
        assert psk not in str(err.value)


def test_missing_passphrase_names_the_variable():
    profile = load_profile(PROFILES / "demo-mixed.toml")
    with pytest.raises(ProfileError, match="export STATION_DEMO_WIFI_PSK="):
        resolve_psk(profile.wifi, {})


def test_each_family_keeps_its_own_step_defaults_until_steps_names_one(profile_dir):
    mixed = load_profile(profile_dir / "p.toml")  # ESP, DFU and Particle boards: each has a "check" step
    assert mixed.steps["esp"]["check"].timeout == 10 and mixed.steps["particle"]["check"].timeout == 30

    text = (profile_dir / "p.toml").read_text()
    (profile_dir / "p.toml").write_text(text + "\n[steps.check]\ntimeout = 45\n")
    told = load_profile(profile_dir / "p.toml")
    assert {family: own["check"].timeout for family, own in told.steps.items()} == {"esp": 45, "dfu": 45,
                                                                                   "particle": 45}
    assert told.steps["esp"]["flash"] == mixed.steps["esp"]["flash"]  # what [steps] does not name stays


def test_a_family_can_have_its_own_cloud_and_one_registrar_serves_one_cloud(profile_dir):
    mixed = load_profile(profile_dir / "p.toml")  # [cloud] on the local broker, [cloud.particle] on spark-server
    assert mixed.cloud_for("esp").registrar == "mosquitto" and mixed.cloud_for("particle").registrar == "spark-server"
    assert set(mixed.clouds) == {"mosquitto", "spark-server"}

    text = (profile_dir / "p.toml").read_text()
    (profile_dir / "p.toml").write_text(text + '\n[cloud.esp]\nregistrar = "spark-server"\nurl = "http://10.0.0.9"\n'
                                               'username = "a@b.c"\nclient_secret = "env:S"\npassword = "env:P"\n')
    message = refused(profile_dir / "p.toml")
    assert "[cloud." in message and "a second spark-server cloud" in message
