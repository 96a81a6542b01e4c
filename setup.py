"""Only what pyproject.toml can't say: the Python packages under station/ and ui/, and the two data folders
kept at the top of the repository installed as packages of their own (station_profiles, station_resources),
so the installed station finds them through importlib.resources, never through a source tree."""
from setuptools import find_namespace_packages, find_packages, setup

DATA_FOLDERS = {"station_profiles": "profiles", "station_resources": "resources"}
# every folder below a data folder (firmware/..., sounds/) is a package to setuptools; all their files ship
data_packages = [f"{name}.{sub}" if sub else name for name, folder in DATA_FOLDERS.items()
                 for sub in ["", *find_namespace_packages(where=folder)]]

setup(packages=find_packages(include=["station", "station.*", "ui", "ui.*"]) + data_packages,
      package_dir=DATA_FOLDERS,
      package_data={name: ["*"] for name in data_packages})
