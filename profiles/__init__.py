"""The shipped profiles and their demo firmware. The wheel installs this folder as the package
`station_profiles` (pyproject.toml), so an installed station finds it through importlib.resources."""
