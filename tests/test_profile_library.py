"""Profiles are found where an installed station keeps them: the shipped ones inside the package, the user's in
the user config folder; `--profile NAME` takes either, and `station profiles` lists both."""
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from station.cli import main
from station.profile_library import (available_profiles, find_profile, shipped_profiles_dir,
                                     user_profiles_dir)
from station.profiles import ProfileError, load_profile


@pytest.fixture
def user_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "config" / "profiles"
    monkeypatch.setenv("STATION_PROFILES_DIR", str(folder))
    return folder


def users_copy(user_dir: Path, shipped_name: str, as_name: str, new_title: str) -> Path:
    """A shipped profile copied into the user's folder with its firmware, under another [profile] name."""
    user_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(shipped_profiles_dir() / "firmware", user_dir / "firmware", dirs_exist_ok=True)
    shutil.copytree(shipped_profiles_dir() / "keys", user_dir / "keys", dirs_exist_ok=True)
    text = (shipped_profiles_dir() / f"{shipped_name}.toml").read_text()
    old_title = load_profile(shipped_profiles_dir() / f"{shipped_name}.toml").name
    path = user_dir / f"{as_name}.toml"
    path.write_text(text.replace(f'name = "{old_title}"', f'name = "{new_title}"', 1))
    return path


def test_shipped_profiles_come_from_the_installed_package():
    import station_profiles

    folder = shipped_profiles_dir()
    assert folder == Path(station_profiles.__file__).parent
    assert {"demo-mixed", "esp32-mqtt-sensor"} <= {p.stem for p in folder.glob("*.toml")}
    assert load_profile(folder / "demo-mixed.toml").firmware  # its firmware files ship beside it


def test_a_name_finds_the_users_profile_before_the_shipped_one(user_dir):
    assert find_profile("demo-mixed") == shipped_profiles_dir() / "demo-mixed.toml"
    mine = users_copy(user_dir, "demo-mixed", "demo-mixed", "My demo")
    assert user_profiles_dir() == user_dir
    assert find_profile("demo-mixed") == mine and find_profile("demo-mixed.toml") == mine
    entries = {(e.origin, e.name): e for e in available_profiles()}
    assert not entries["user", "demo-mixed"].shadowed and entries["shipped", "demo-mixed"].shadowed


def test_a_path_is_taken_as_it_is(tmp_path, user_dir):
    copy = users_copy(tmp_path, "esp32-mqtt-sensor", "elsewhere", "Elsewhere")
    assert find_profile(str(copy)) == copy


def test_an_unknown_name_says_where_it_looked_and_what_there_is(user_dir):
    with pytest.raises(ProfileError) as err:
        find_profile("no-such-profile")
    message = str(err.value)
    assert "no-such-profile: no such profile file" in message and str(user_dir) in message
    assert "demo-mixed" in message and "station profiles" in message


def test_station_profiles_lists_the_users_and_the_shipped(user_dir):
    empty = CliRunner().invoke(main, ["profiles"])
    assert empty.exit_code == 0
    assert f"your profiles: {user_dir}  (none yet" in empty.output
    assert f"shipped profiles: {shipped_profiles_dir()}" in empty.output
    users_copy(user_dir, "esp32-mqtt-sensor", "line-3-sensor", "Line 3 sensor")
    (user_dir / "broken.toml").write_text("[profile\n")
    listed = CliRunner().invoke(main, ["profiles"])
    assert listed.exit_code == 0
    lines = listed.output.splitlines()
    mine = lines.index(f"your profiles: {user_dir}")
    shipped = lines.index(f"shipped profiles: {shipped_profiles_dir()}")
    users = " ".join(lines[mine:shipped])
    assert "line-3-sensor" in users and "Line 3 sensor: ESP32/ESP32-C3" in users
    assert "broken" in users and "can't be used" in users and "not valid TOML" in users
    assert "demo-mixed" in " ".join(lines[shipped:])
