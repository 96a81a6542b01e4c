"""The PySide6 front end. See ui/app.py for how it starts and ui/bridge.py for how engine events reach it."""
from ui.qtfix import guard_singletons

guard_singletons()  # before any Qt call: PySide6 6.12.0 on CPython 3.11 leaks references to None (see qtfix)
