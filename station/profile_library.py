"""Where profiles are: the shipped ones (inside the installed package `station_profiles`, found through
importlib.resources, so a wheel, pipx or the bundle work from any folder) and the user's own (the user config
folder). A profile is named by its path or by its file name without .toml; the user's shadow the shipped."""
from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

import platformdirs

from station.profiles import ProfileError
from station.settings import APP_NAME

SHIPPED_PACKAGE = "station_profiles"
USER_DIR_ENV = "STATION_PROFILES_DIR"


def shipped_profiles_dir() -> Path:
    # installed from a wheel or unpacked from the bundle the package is a folder on disk, and a profile names
    # its firmware files relative to itself, so a real path is what the loader needs
    return Path(str(resources.files(SHIPPED_PACKAGE)))


def user_profiles_dir() -> Path:
    """$STATION_PROFILES_DIR, else ~/.config/provisioning-station/profiles (not created until the user does)."""
    return Path(os.environ.get(USER_DIR_ENV) or Path(platformdirs.user_config_dir(APP_NAME)) / "profiles")


def profile_dirs() -> list[Path]:
    """The folders profiles are looked up in, the user's first."""
    return [user_profiles_dir(), shipped_profiles_dir()]


@dataclass(frozen=True)
class ProfileEntry:
    name: str  # the file name without .toml: what `--profile NAME` takes
    path: Path
    origin: str  # "user" | "shipped"
    shadowed: bool = False  # a user profile of the same name is used instead


def available_profiles(folders: Sequence[Path] | None = None) -> list[ProfileEntry]:
    """Every profile in `folders` (default: profile_dirs()), in lookup order."""
    shipped = shipped_profiles_dir()
    entries: list[ProfileEntry] = []
    seen: set[str] = set()
    for folder in profile_dirs() if folders is None else folders:
        origin = "shipped" if folder == shipped else "user"
        for path in sorted(folder.glob("*.toml")):
            entries.append(ProfileEntry(path.stem, path, origin, shadowed=path.stem in seen))
            seen.add(path.stem)
    return entries


def find_profile(name_or_path: str | os.PathLike) -> Path:
    """A path that exists is taken as it is; otherwise a name (with or without .toml) is looked up in the user's
    profiles, then the shipped ones."""
    given = Path(name_or_path).expanduser()
    if given.is_file():
        return given
    if given.name == str(name_or_path):  # a bare name, not a path
        for folder in profile_dirs():
            candidate = folder / (given.name if given.suffix == ".toml" else given.name + ".toml")
            if candidate.is_file():
                return candidate
    known = ", ".join(dict.fromkeys(e.name for e in available_profiles())) or "none"
    raise ProfileError(f"{name_or_path}: no such profile file, and no profile of that name in "
                       f"{user_profiles_dir()} or the shipped ones ({known}). `station profiles` lists them.")
