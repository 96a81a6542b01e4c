"""The window's style sheet, sounds and icon. The wheel installs this folder as the package `station_resources`
(pyproject.toml), so an installed station finds it through importlib.resources."""
