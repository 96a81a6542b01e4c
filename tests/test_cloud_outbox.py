"""The registration outbox: durable before sending, retried while the cloud is down, delivered once, and
picked up again by the next process."""
from __future__ import annotations

import asyncio
import json
import sqlite3
import threading

import pytest

from station.cloud import CloudUnavailable
from station.cloud.outbox import DELIVERED, FAILED, PENDING, Backoff, Outbox, RegistrationUpdate
from station.cloud.registrar import REGISTER, VOID, DeviceRegistration, RegistrationResult
from station.journal import Journal
from tests.test_cloud_broker import ACCEPTED, broker  # noqa: F401
from tests.test_cloud_pki import MqttDevice, make_device, open_dir, tls_refusal  # noqa: F401

FAST = Backoff(base=0.05, factor=2, cap=0.2)


class Watch:
    """Collects outbox updates (delivered on the loop thread) and lets a test wait for a condition on them."""

    def __init__(self):
        self.updates: list[RegistrationUpdate] = []
        self._changed = asyncio.Event()

    def __call__(self, update: RegistrationUpdate) -> None:
        assert threading.current_thread() is threading.main_thread()  # on the loop's thread
        self.updates.append(update)
        self._changed.set()

    async def until(self, condition, what: str, timeout: float = 20.0) -> None:
        async def wait():
            while not condition():
                self._changed.clear()
                await self._changed.wait()
        try:
            await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; updates: {self.updates}") from None

    def of(self, row_id: int, state: str) -> list[RegistrationUpdate]:
        return [u for u in self.updates if u.id == row_id and u.state == state]


def record_for(broker, open_dir, cn: str, device_id: str | None = None):
    files = make_device(broker.ca, cn, open_dir / "devices")
    return files, DeviceRegistration.from_certificate(device_id or f"board-{cn}", files.cert,
                                                      facts={"chip": "ESP32", "mac": "24:0a:c4:00:00:01"})


def test_a_registration_waits_while_the_broker_is_down_and_is_delivered_exactly_once(broker, open_dir):
    files, record = record_for(broker, open_dir, "dev-5")
    broker.down()
    watch = Watch()

    async def scenario():
        outbox = Outbox(open_dir / "journal.sqlite3", backoff=FAST, on_update=watch)
        rid = outbox.enqueue(record.device_id, "mosquitto", record)
        assert outbox.device_state(record.device_id) == PENDING  # "registration pending" from the start
        stop = asyncio.Event()
        runner = asyncio.create_task(outbox.run([broker.registrar()], stop))
        await watch.until(lambda: len(watch.of(rid, PENDING)) >= 2, "two failed attempts")
        row = outbox.get(rid)
        assert row.state == PENDING and "does not accept connections" in row.last_error
        assert "pending" in watch.of(rid, PENDING)[0].describe()

        await asyncio.to_thread(broker.up)
        await watch.until(lambda: watch.of(rid, DELIVERED), "delivery once the broker is back")
        assert outbox.enqueue(record.device_id, "mosquitto", record) == rid  # the same registration again
        stop.set()
        await runner
        return outbox, rid

    outbox, rid = asyncio.run(scenario())
    assert len(watch.of(rid, DELIVERED)) == 1
    row = outbox.get(rid)
    assert row.state == DELIVERED and row.delivered and row.attempts >= 3 and row.last_error == ""
    assert outbox.counts() == {PENDING: 0, DELIVERED: 1, FAILED: 0}
    assert outbox.device_state(record.device_id) == DELIVERED
    outbox.close()
    with broker.admin_client() as admin:
        assert admin.list_clients().count("dev-5") == 1
    device = MqttDevice(files, broker.ports.devices)
    try:
        assert device.connect().value == 0 and device.publish("devices/dev-5/boot") in ACCEPTED
    finally:
        device.close()


def test_pending_registrations_survive_the_process_and_go_out_after_a_restart(broker, open_dir):
    journal = open_dir / "journal.sqlite3"
    records = [record_for(broker, open_dir, f"dev-r{i}")[1] for i in range(3)]
    broker.down()

    first = Watch()

    async def first_life():
        # a failed attempt would wait an hour before the next: only a restart brings them back sooner
        outbox = Outbox(journal, backoff=Backoff(base=3600, cap=3600, jitter=0), on_update=first)
        ids = [outbox.enqueue(r.device_id, "mosquitto", r) for r in records]
        stop = asyncio.Event()
        runner = asyncio.create_task(outbox.run([broker.registrar()], stop))
        await first.until(lambda: all(first.of(i, PENDING) for i in ids), "one failed attempt each")
        stop.set()
        await runner
        outbox.close()  # the process is gone; only the journal file remains
        return ids

    ids = asyncio.run(first_life())
    broker.up()
    second = Watch()

    async def second_life():
        outbox = Outbox(journal, backoff=Backoff(base=3600, cap=3600, jitter=0), on_update=second)
        stop = asyncio.Event()
        runner = asyncio.create_task(outbox.run({"mosquitto": broker.registrar()}, stop))
        await second.until(lambda: all(second.of(i, DELIVERED) for i in ids), "delivery after the restart")
        stop.set()
        await runner
        return outbox

    outbox = asyncio.run(second_life())
    assert [(r.state, r.attempts) for r in outbox.rows()] == [(DELIVERED, 2)] * 3
    outbox.close()
    with broker.admin_client() as admin:
        assert sorted(c for c in admin.list_clients() if c != "admin") == ["dev-r0", "dev-r1", "dev-r2"]


def test_a_refused_registration_is_failed_not_retried_until_asked(broker, open_dir):
    _, record = record_for(broker, open_dir, "dev-9")
    with broker.admin_client() as admin:  # someone else's client already uses the name
        admin.run([{"command": "createRole", "rolename": "ops"},
                   {"command": "createClient", "username": "dev-9", "roles": [{"rolename": "ops"}]}])
    watch = Watch()

    async def scenario():
        outbox = Outbox(open_dir / "journal.sqlite3", backoff=FAST, on_update=watch)
        rid = outbox.enqueue(record.device_id, "mosquitto", record)
        stop = asyncio.Event()
        runner = asyncio.create_task(outbox.run([broker.registrar()], stop))
        await watch.until(lambda: watch.of(rid, FAILED), "the refusal")
        assert "already has a client 'dev-9'" in outbox.get(rid).last_error
        assert outbox.device_state(record.device_id) == FAILED
        with broker.admin_client() as admin:  # the operator removes the stray client, then retries
            admin.run([{"command": "deleteClient", "username": "dev-9"}])
        assert outbox.retry_failed() == 1
        await watch.until(lambda: watch.of(rid, DELIVERED), "delivery after the retry")
        stop.set()
        await runner
        assert len(watch.of(rid, FAILED)) == 1 and outbox.get(rid).attempts == 2
        outbox.close()

    asyncio.run(scenario())


def test_void_after_register_is_sent_in_order_and_shuts_the_device_out(broker, open_dir):
    files, record = record_for(broker, open_dir, "dev-v")
    watch = Watch()

    async def scenario():
        outbox = Outbox(open_dir / "journal.sqlite3", backoff=FAST, on_update=watch)
        reg = outbox.enqueue(record.device_id, "mosquitto", record)
        void = outbox.enqueue_void(record, "mosquitto")  # e.g. the board failed verify after registering
        stop = asyncio.Event()
        runner = asyncio.create_task(outbox.run([broker.registrar()], stop))
        await watch.until(lambda: watch.of(void, DELIVERED), "the void")
        stop.set()
        await runner
        order = [(u.id, u.state) for u in watch.updates]
        assert order == [(reg, DELIVERED), (void, DELIVERED)]
        outbox.close()

    asyncio.run(scenario())
    assert "REVOKED" in (tls_refusal(files, broker.ports.devices) or "")
    with broker.admin_client() as admin:
        assert "dev-v" not in admin.list_clients()


def test_enqueue_is_durable_before_any_send_and_public_only(open_dir):
    journal_path = open_dir / "journal.sqlite3"
    journal = Journal(journal_path)  # the station's journal and the outbox share the file
    batch = journal.start_batch("p", "0" * 64, "batch", "op", "st")
    outbox = Outbox(journal_path)
    record = DeviceRegistration("board-1", common_name="dev-1", facts={"mac": "aa:bb"})
    rid = outbox.enqueue("board-1", "mosquitto", record)
    journal.start_device(batch, "1-1", "10c4:ea60", "esp")

    other = sqlite3.connect(journal_path)  # another process sees the row at once: committed before send
    (state, payload) = other.execute("SELECT state, payload FROM registrations WHERE id = ?", (rid,)).fetchone()
    assert state == PENDING and json.loads(payload)["common_name"] == "dev-1"
    assert other.execute("SELECT COUNT(*) FROM devices").fetchone() == (1,)
    other.close()

    assert outbox.enqueue("board-1", "mosquitto", record.to_payload()) == rid
    assert outbox.enqueue("board-1", "spark-server", record) != rid
    with pytest.raises(ValueError, match="private key"):
        DeviceRegistration("board-2", common_name="dev-2",
                           facts={"key": "-----BEGIN PRIVATE KEY-----\nMII...\n-----END PRIVATE KEY-----"})
    with pytest.raises(ValueError, match="not board-1"):
        outbox.enqueue("board-1", "mosquitto", DeviceRegistration("board-3", common_name="dev-3"))
    outbox.close()
    journal.close()


def test_registrars_run_off_the_loop_and_a_broken_one_does_not_stop_the_others(open_dir):
    calls: list[tuple[str, str]] = []

    class Flaky:
        name = "flaky"

        def __init__(self):
            self.failures = 2

        def register(self, device):
            calls.append((threading.current_thread().name, device.device_id))
            if self.failures:
                self.failures -= 1
                raise CloudUnavailable("cloud is napping")
            return RegistrationResult(self.name, device.device_id, REGISTER, True)

        def void(self, device):
            return RegistrationResult(self.name, device.device_id, VOID, True)

    class Broken:
        name = "broken"

        def register(self, device):
            raise RuntimeError("a bug")

        void = register

    watch = Watch()

    async def scenario():
        outbox = Outbox(open_dir / "journal.sqlite3", backoff=FAST, on_update=watch)
        ok = outbox.enqueue("b1", "flaky", DeviceRegistration("b1", common_name="c1"))
        bad = outbox.enqueue("b2", "broken", DeviceRegistration("b2", common_name="c2"))
        stop = asyncio.Event()
        runner = asyncio.create_task(outbox.run([Flaky(), Broken()], stop))
        await watch.until(lambda: watch.of(ok, DELIVERED) and len(watch.of(bad, PENDING)) >= 3, "progress")
        stop.set()
        await runner
        assert outbox.get(bad).state == PENDING and "RuntimeError: a bug" in outbox.get(bad).last_error
        outbox.close()

    asyncio.run(scenario())
    assert len(calls) == 3 and all(name.startswith("outbox") for name, _ in calls)


def test_backoff_grows_is_capped_and_jittered():
    import random

    backoff = Backoff(base=1, factor=2, cap=10, jitter=0.5)
    rng = random.Random(7)
    for attempts, top in ((1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (30, 10)):
        delays = {backoff.delay(attempts, rng) for _ in range(20)}
        assert all(top / 2 <= d <= top for d in delays) and len(delays) > 1
