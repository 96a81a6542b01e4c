"""Installed the way a user installs it: the wheel, built from this tree, goes into a fresh virtual environment
outside the source tree, and the station runs from an empty folder with an ordinary user's environment.

The dependencies come from wherever this machine's pip gets them (its index, find-links or cache); nothing of
the running interpreter's packages is visible to the new environment (no --system-site-packages). The venv is
made without its own pip (the outer pip installs into it with --python), which saves ensurepip's seconds."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "screenshots")


def run(args: list, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kw)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_the_wheel_runs_the_demo_and_lists_profiles_from_an_empty_folder(tmp_path):
    source = tmp_path / "source"  # a copy, so no stale build/ of the working tree can slip into the wheel
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", source])
    shutil.rmtree(source)
    (wheel,) = (tmp_path / "dist").glob("provisioning_station-*.whl")

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", wheel])

    empty, home = tmp_path / "empty", tmp_path / "home"
    empty.mkdir()
    home.mkdir()
    user_env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}  # as `env -i` plus a login
    station = venv / "bin" / "station"

    where = run([venv / "bin" / "python", "-c", "import station, station_profiles, station_resources; "
                 "print(station.__file__, station_profiles.__file__, station_resources.__file__)"],
                cwd=empty, env=user_env).stdout.split()
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert all(Path(f).is_relative_to(site) for f in where), where

    demo = run([station, "demo", "--headless", "--boards", "2", "--dfu-boards", "2", "--no-throttle"],
               cwd=empty, env=user_env)
    assert "done: 4 passed, 0 failed" in demo.stdout, demo.stdout
    assert "signed manifest:" in demo.stdout

    listed = run([station, "profiles"], cwd=empty, env=user_env).stdout
    assert f"your profiles: {home}/.config/provisioning-station/profiles" in listed
    assert f"shipped profiles: {site / 'station_profiles'}" in listed
    assert "demo-mixed" in listed and "esp32-mqtt-sensor" in listed
    assert os.listdir(empty) == []  # nothing was written to the folder it ran in
