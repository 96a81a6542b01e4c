"""The PySide6 front end. See ui/app.py for how it starts and ui/bridge.py for how engine events reach it."""
