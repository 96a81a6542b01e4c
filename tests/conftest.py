"""Qt + qasync fixtures for the UI tests (PROTOCOLS §10.2, pattern (a)).

One QEventLoop(already_running=True) serves the whole pytest run; tests drive it with qtbot.waitUntil /
waitSignal, never with loop.stop() (that calls QApplication.exit() and breaks every later nested loop).
The loop is registered as the thread's running loop only while a UI test runs, so the engine tests'
asyncio.run() keep working before and after. After each UI test, tasks it left behind are cancelled and
waited for, and an exception that escaped into the loop fails the test.
"""
import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before Qt loads

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def qloop(qapp):
    import qasync

    loop = qasync.QEventLoop(qapp, already_running=True)
    executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="ui-test-io")
    loop.set_default_executor(executor)
    asyncio.events._set_running_loop(None)  # set per test by `aloop`
    yield loop
    executor.shutdown(wait=False, cancel_futures=True)
    loop.set_default_executor(None)


@pytest.fixture
def aloop(qloop, qtbot):
    """The shared loop, running for this test; leftovers cancelled and loop errors reported after it."""
    errors: list[dict] = []
    qloop.set_exception_handler(lambda _loop, context: errors.append(context))
    asyncio.set_event_loop(qloop)
    asyncio.events._set_running_loop(qloop)
    before = set(asyncio.all_tasks(qloop))
    try:
        yield qloop
    finally:
        left = [t for t in asyncio.all_tasks(qloop) if t not in before and not t.done()]
        for task in left:
            task.cancel()
        if left:
            qtbot.waitUntil(lambda: all(t.done() for t in left), timeout=10_000)
        asyncio.events._set_running_loop(None)
        asyncio.set_event_loop(None)
        qloop.set_exception_handler(None)
    assert not errors, f"errors in the asyncio loop: {[c.get('message') or c for c in errors]}"


@pytest.fixture
def arun(aloop, qtbot):
    """arun(coro, timeout=30): run a coroutine on the shared loop, driving Qt until it is done; its result."""

    def run(coro, timeout: float = 30.0):
        task = asyncio.ensure_future(coro)
        qtbot.waitUntil(task.done, timeout=int(timeout * 1000))
        return task.result()

    return run


@pytest.fixture
def stations(tmp_path, arun, qtbot):
    """stations(boards, profile, ...): a window on emulated boards served from a registry in tmp_path; every
    window and emulator opened through it is closed after the test. Returns (station, server)."""
    from station.discovery.sim_ports import SimPortSource
    from station.families.esp.sim.server import EspSimServer
    from ui.app import Station

    made = []

    def open_station(boards, profile, *, plug=True, prefix="sim-1", ca_provider=None, before_start=None, db=None):
        registry = tmp_path / "registry"
        registry.mkdir(exist_ok=True)
        server = EspSimServer(boards, registry_dir=registry, location_prefix=prefix)
        if plug:
            server.start()
        station = Station(tmp_path / "data", [SimPortSource(registry)], profile=profile, operator="tester",
                          station_id="station-t", poll_interval=0.05, idle_scan_ms=100, db=db)
        if ca_provider is not None:
            station.controller.ca_provider = ca_provider
        if before_start is not None:
            before_start(station)
        station.window.ask = False
        made.append((station, server))
        station.window.show()
        qtbot.waitExposed(station.window)
        arun(station.start())
        return station, server

    yield open_station
    for station, server in made:
        arun(station.close())
        station.window.close()
        station.window.deleteLater()
        server.stop()


@pytest.fixture(autouse=True)
def no_user_profiles(tmp_path_factory, monkeypatch):
    """The developer's own profiles (~/.config/provisioning-station/profiles) never reach a test."""
    monkeypatch.setenv("STATION_PROFILES_DIR", str(tmp_path_factory.mktemp("user-profiles")))


@pytest.fixture(scope="session")
def pg_server():
    """One real PostgreSQL server for the session (tests/pg_server.py), stopped by PID at the end."""
    from tests.pg_server import PgServer

    server = PgServer().init().start()
    try:
        server.setup_role()
        yield server
    finally:
        server.remove()


@pytest.fixture
def pg_url(pg_server, monkeypatch):
    """A fresh database on the session's server; the station's password in STATION_DB_PASSWORD."""
    from tests.pg_server import PASSWORD

    monkeypatch.setenv("STATION_DB_PASSWORD", PASSWORD)
    return pg_server.fresh_database()
