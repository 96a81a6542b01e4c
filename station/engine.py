"""The octopus: watches the ports and runs one pipeline per board, many at once.

Everything runs on one asyncio loop (the GUI hosts it in Qt through qasync); blocking serial I/O runs in a
thread pool with a worker per port. A port's failure is caught inside its own pipeline, so it never stalls or
fails another port. The engine tells the world what happens only through events (station.events).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from station import events as ev
from station.discovery import Discovery
from station.families import FAMILIES
from station.cloud.outbox import Outbox, RegistrationUpdate, add_row
from station.cloud.registrar import DeviceRegistration, Registrar
from station.identity.ca import StationCA
from station.identity.ledger import Ledger, void_certificate
from station.journal import Journal, write_end, write_identity
from station.serials import void_serials
from station.model import Mode, PortInfo, PortKey, Result, StepFailed
from station.steps import DeviceContext, Session, Step
from station.profiles import Profile
from station.text import one_line
from station.voiding import identity_of, void_in_transaction

Listener = Callable[[ev.Event], None]


def _enumeration(port: PortInfo) -> tuple:
    """What changes when the device at a USB location re-enumerates as another one."""
    return port.url, port.vid, port.pid


@dataclass
class BatchSummary:
    batch_id: str
    passed: list[PortKey] = field(default_factory=list)
    failed: dict[PortKey, str] = field(default_factory=dict)  # port -> reason

    @property
    def ok(self) -> bool:
        return not self.failed


class Engine:
    def __init__(self, profile: Profile, discovery: Discovery, journal: Journal, *, operator: str,
                 station_id: str, lot: str = "", psk: str | None = None, ca: StationCA | None = None,
                 registrars: dict[str, Registrar] | None = None, reprovision: bool = False, poll_interval: float = 0.25,
                 workers: int = 64):
        self.profile = profile
        self.discovery = discovery
        self.journal = journal
        self.ca = ca
        self.ledger = Ledger(journal.path) if profile.identity else None  # certificates live in the journal file
        self.reprovision = reprovision
        # registrations wait in the journal file until the cloud confirms them, however long that takes
        self.registrars = registrars or {}  # by the name outbox rows carry (the profile's clouds' registrars)
        self.outbox = Outbox(journal.path, on_update=self._registration_update) if profile.clouds else None
        self._outbox_task: asyncio.Task | None = None
        self._outbox_stop: asyncio.Event | None = None
        self._device_keys: dict[str, PortKey] = {}
        self.operator, self.station_id, self.lot = operator, station_id, lot
        self._psk = psk
        self.poll_interval = poll_interval
        # threads start lazily, one per busy port; 64 covers the largest hubs with room for payload builders
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="port")
        self.present: dict[PortKey, PortInfo] = {}
        self._listeners: list[Listener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: dict[PortKey, asyncio.Task] = {}
        self._sessions: dict[PortKey, Session] = {}
        self._progress: dict[PortKey, int] = {}  # last percent per port, for "vanished at 62 %"
        self._step: dict[PortKey, Step] = {}  # the step each port is in
        self._last_batch: BatchSummary | None = None
        self._ports_changed: asyncio.Condition | None = None  # notified after every scan
        self.prompt_timeout = 300.0  # seconds an operator has to act on a prompt
        self.probe_interval = 1.0  # seconds between asking a prompted board whether the person has acted
        self._departures: dict[PortKey, int] = {}  # how often each port has left the bus: a re-enumeration
        self._port_waits: dict[PortKey, concurrent.futures.Future] = {}  # a step waiting for its board to return
        self._stopping: set[PortKey] = set()  # ports whose worker is being stopped: a wait it starts ends at once

    # --- events -------------------------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _publish(self, event: ev.Event) -> None:
        if isinstance(event, ev.Progress):
            self._progress[event.key] = event.percent
        for listener in list(self._listeners):
            listener(event)

    def _publish_threadsafe(self, event: ev.Event) -> None:
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            self._publish(event)
        else:
            self._loop.call_soon_threadsafe(self._publish, event)

    # --- discovery ----------------------------------------------------------------------------------------

    async def scan(self) -> tuple[list[PortInfo], list[PortKey]]:
        """Look at the ports once; publish what appeared and what went. Returns (appeared, gone)."""
        self._bind_loop()
        now = await self._loop.run_in_executor(self.pool, self.discovery.scan)
        # a board that re-enumerated between two scans (a mode switch: another USB device at the same location)
        # left and came back, as a slower one is seen to
        moved = [k for k, p in now.items() if k in self.present and _enumeration(p) != _enumeration(self.present[k])]
        appeared = [p for k, p in now.items() if k not in self.present] + [now[k] for k in moved]
        gone = [k for k in self.present if k not in now] + moved
        self.present = now
        for key in gone:
            self._departures[key] = self._departures.get(key, 0) + 1
            self._publish(ev.PortGone(key))
        for port in appeared:
            self._publish(ev.PortAppeared(port))
        async with self._ports_changed:
            self._ports_changed.notify_all()
        return appeared, gone

    def _bind_loop(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
            self._ports_changed = asyncio.Condition()
        if self.outbox is not None and self.registrars and self._outbox_task is None:
            self._outbox_stop = asyncio.Event()
            self._outbox_task = asyncio.ensure_future(
                self.outbox.run(self.registrars, self._outbox_stop))

    # --- registration -------------------------------------------------------------------------------------

    def _registration_update(self, update: RegistrationUpdate) -> None:
        if self._loop is None:
            return
        self._publish_threadsafe(ev.RegistrationChanged(self._device_keys.get(update.device_id),
                                                        update.device_id, update.state, update.describe()))

    def pending_registrations(self) -> int:
        """Registrations (and voids) waiting for this profile's clouds."""
        if self.outbox is None:
            return 0
        return self.outbox.pending_count(list(self.profile.clouds))

    async def settle_registrations(self, timeout: float) -> int:
        """Give the outbox up to `timeout` seconds to deliver what is due; returns how many are still pending.

        Only rows due now or being sent are waited for: one the cloud did not take waits out its backoff, and
        that goes out the next time the station runs, not in this grace. Nothing due: returns at once."""
        self._bind_loop()  # starts the outbox, which picks up what earlier runs left pending
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        if self.outbox is not None and self.registrars:
            names = list(self.registrars)
            while time.monotonic() < deadline:
                if not await loop.run_in_executor(self.pool, self.outbox.awaiting_attempt, names):
                    break
                await asyncio.sleep(0.1)
        return await loop.run_in_executor(self.pool, self.pending_registrations)

    # --- batches ------------------------------------------------------------------------------------------

    async def run_batch(self, only: Iterable[PortKey] | None = None, batch_id: str | None = None) -> BatchSummary:
        """BATCH: provision the boards present now (or just `only`), and finish when all are done."""
        await self.scan()
        wanted = None if only is None else set(only)
        keys = [k for k in self.present if wanted is None or k in wanted]
        batch_id = batch_id or self._start_batch(Mode.BATCH)
        summary = BatchSummary(batch_id)
        self._publish(ev.BatchStarted(batch_id, self.profile.name, Mode.BATCH.value, tuple(keys)))
        watcher = asyncio.ensure_future(self._watch())
        try:
            tasks = [self._start(self.present[k], batch_id, summary) for k in keys]
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            watcher.cancel()
        return self._finish_batch(summary)

    async def retry_failed(self) -> BatchSummary:
        """Re-run only the ports that failed in the last batch, as part of that batch."""
        if self._last_batch is None or not self._last_batch.failed:
            raise RuntimeError("No failed boards to retry")
        last = self._last_batch
        again = await self.run_batch(only=list(last.failed), batch_id=last.batch_id)
        merged = BatchSummary(last.batch_id, passed=last.passed + again.passed, failed=again.failed)
        self._last_batch = merged
        return merged

    async def run_one_touch(self, stop: asyncio.Event, allowed: set[PortKey] | None = None) -> BatchSummary:
        """ONE_TOUCH: provision every allowed board that appears, until `stop` is set.

        A board is provisioned once per plug-in: its port must go away (board pulled) before the next board
        on that port is started. Boards already plugged in when arming count as appearing now.
        """
        batch_id = self._start_batch(Mode.ONE_TOUCH)
        summary = BatchSummary(batch_id)
        self._publish(ev.BatchStarted(batch_id, self.profile.name, Mode.ONE_TOUCH.value, ()))
        self.present = {}  # so every board plugged in now is seen as appearing
        done_on: set[PortKey] = set()
        tasks: set[asyncio.Task] = set()
        while not stop.is_set():
            appeared, gone = await self.scan()
            done_on.difference_update(gone)
            for port in appeared:
                if (allowed is None or port.key in allowed) and port.key not in done_on \
                        and port.key not in self._running:
                    done_on.add(port.key)
                    tasks.add(self._start(port, batch_id, summary))
            tasks = {t for t in tasks if not t.done()}
            try:
                await asyncio.wait_for(stop.wait(), self.poll_interval)
            except asyncio.TimeoutError:
                pass
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return self._finish_batch(summary)

    def cancel(self, key: PortKey) -> None:
        """Stop one port's pipeline; the others go on."""
        task = self._running.get(key)
        if task is not None:
            task.cancel()

    def stop(self) -> None:
        for task in list(self._running.values()):
            task.cancel()

    def close(self) -> None:
        self.stop()
        for session in list(self._sessions.values()):
            session.abort()
        if self._outbox_task is not None:
            self._outbox_task.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.ledger is not None:
            self.ledger.close()
        if self.outbox is not None:
            self.outbox.close()

    def _start_batch(self, mode: Mode) -> str:
        if self.profile.identity and self.ca is None:
            raise ValueError("The profile makes device identities, but no station CA is open; run "
                             "`station ca init` (or use `station demo`, which brings its own)")
        self._bind_loop()
        return self.journal.start_batch(self.profile.name, self.profile.sha256, mode.value, self.operator,
                                        self.station_id, self.lot)

    def _finish_batch(self, summary: BatchSummary) -> BatchSummary:
        self.journal.end_batch(summary.batch_id)
        self._last_batch = summary
        self._publish(ev.BatchDone(summary.batch_id, len(summary.passed), len(summary.failed)))
        return summary

    async def _watch(self) -> None:
        """Keep discovery fresh while a batch runs, so unplugs show and vanished boards are recognised."""
        while True:
            await asyncio.sleep(self.poll_interval)
            await self.scan()

    # --- one device ---------------------------------------------------------------------------------------

    def _start(self, port: PortInfo, batch_id: str, summary: BatchSummary) -> asyncio.Task:
        task = asyncio.ensure_future(self._provision(port, batch_id, summary))
        self._running[port.key] = task
        task.add_done_callback(lambda _t, k=port.key: self._running.pop(k, None))
        return task

    async def _provision(self, port: PortInfo, batch_id: str, summary: BatchSummary) -> None:
        loop = asyncio.get_running_loop()
        key = port.key
        started = time.monotonic()
        family = FAMILIES[port.family]
        steps = family.steps(self.profile) if family.name in self.profile.families else [self._not_in_profile(port)]
        device_id = await loop.run_in_executor(self.pool, self.journal.start_device, batch_id, key,
                                               port.usb_id, port.family)
        self._progress[key] = 0
        self._device_keys[device_id] = key
        self._publish(ev.DeviceStarted(key, device_id, tuple(s.name for s in steps), tuple(s.label for s in steps),
                                       tuple(s.name for s in steps if s.verifies), any(s.leaves_bus for s in steps)))
        session = family.open_session(port, log=lambda level, msg: self._publish_threadsafe(ev.Log(key, level,
                                                                                                 one_line(msg))),
                                      progress=self._progress_reporter(key))
        self._sessions[key] = session
        ctx = DeviceContext(port=port, profile=self.profile, session=session, pool=self.pool, device_id=device_id,
                            psk=self._psk, ca=self.ca, ledger=self.ledger, reprovision=self.reprovision,
                            port_now=lambda: self.present.get(key), await_port=self._port_waiter(key))
        result, reason = Result.PASS, ""
        try:
            for index, step in enumerate(steps):
                self._step[key] = step
                await self._run_step(ctx, device_id, step, index)
                if step.identifies and ctx.board is not None:
                    self._publish(ev.BoardIdentified(key, ctx.board))
        except StepFailed as exc:
            result, reason = Result.FAIL, await self._explain_failure(key, exc.reason)
        except asyncio.CancelledError:
            result, reason = Result.INTERRUPTED, "Stopped by the operator"
        except Exception as exc:  # noqa: BLE001 - a bug in one port's pipeline must not take the others down
            result, reason = Result.FAIL, one_line(f"Internal error: {type(exc).__name__}: {exc}")
            self._publish(ev.Log(key, "error", reason))
        finally:
            session.close()
            self._sessions.pop(key, None)
        try:
            queued = await asyncio.shield(loop.run_in_executor(self.pool, self._record_end, ctx, result, reason))
        except Exception as exc:  # noqa: BLE001 - the journal refused (disk full, I/O error): its transaction rolled back
            queued, result = False, Result.FAIL
            reason = one_line(f"The board's result could not be written to the journal ({type(exc).__name__}: "
                              f"{exc}); free disk space or check the journal file, then provision this board again")
            self._publish(ev.Log(key, "error", reason))
        if result is Result.PASS:
            summary.passed.append(key)
        else:
            summary.failed[key] = reason
        self._publish(ev.DeviceDone(key, device_id, result is Result.PASS, reason, time.monotonic() - started,
                                    interrupted=result is Result.INTERRUPTED, registering=queued))

    def _not_in_profile(self, port: PortInfo) -> Step:
        """A board of a family the profile has no firmware for is refused at once, in plain words."""
        title = FAMILIES[port.family].title

        def refuse(_ctx: DeviceContext) -> str:
            raise StepFailed(f"Wrong board: profile '{self.profile.name}' is for {'/'.join(self.profile.chips)}; "
                             f"this is a {title} board ({port.description or port.usb_id})")

        return Step("detect", "Detecting", refuse, identifies=True)

    def _record_end(self, ctx: DeviceContext, result: Result, reason: str) -> bool:
        """The device's last journal entries, in one transaction: a failed board's certificate voided, its
        identity record, a passed board's registration in the outbox, and its result. So a crash can't leave a
        board registered that the journal calls interrupted, nor one ended with a live certificate. True if a
        registration was queued."""
        if ctx.payloads is not None:
            concurrent.futures.wait([ctx.payloads])  # a certificate issued beside a failed flash must be voided too
        plan = ctx.identity
        cloud = self.profile.cloud_for(ctx.port.family) if self.outbox is not None else None
        queued = False
        with self.journal.transaction() as db:
            if self.ledger is not None and result is not Result.PASS:
                void_serials(db, ctx.device_id)  # a failed board's {counter} number is recorded void, never reissued
            if plan is not None and plan.record:
                if result is not Result.PASS and not plan.record["void"]:
                    void_certificate(db, plan.record["certificate_serial"], reason or result.value)
                    plan.record["void"] = True
                write_identity(db, ctx.device_id, plan.record)
                registers = result is Result.PASS and cloud is not None
                if plan.replaces:
                    self._retire_replaced(db, plan.replaces, ctx.device_id, shut_out_by_registration=registers)
                if registers:
                    registration = DeviceRegistration(
                        ctx.device_id, certificate_pem=plan.record["certificate"],
                        topic_prefix=cloud.topic_prefix,
                        facts={"subject_serial": plan.subject_serial, **plan.facts},
                        replaces_serial=int(plan.replaces, 16) if plan.replaces else None)
                    add_row(db, ctx.device_id, cloud.registrar, registration)
                    queued = True
            if ctx.key_record is not None:
                write_identity(db, ctx.device_id, ctx.key_record)
                if result is Result.PASS and ctx.registration is not None and cloud is not None:
                    add_row(db, ctx.device_id, cloud.registrar, ctx.registration)
                    queued = True
            write_end(db, ctx.device_id, result, reason)
        if queued:
            self.outbox.kick()
        return queued

    def _retire_replaced(self, db, serial: str, device_id: str, shut_out_by_registration: bool) -> None:
        """The certificate a re-provision replaced (voided in the ledger when the new one was issued): its board's
        journal record says void too. The cloud shuts it out with the new registration when there is one (same
        CN, so the order matters and one row keeps it); otherwise its own void rows do."""
        old = self.ledger.get(serial) if self.ledger is not None else None
        if old is None or old.device_id is None or old.device_id == device_id:
            return
        identity = identity_of(db, old.device_id)
        if shut_out_by_registration:
            write_identity(db, old.device_id, {**identity, "void": True})
        elif identity:
            void_in_transaction(db, old.device_id, identity, serial, f"re-provisioned as device {device_id}")

    async def _run_step(self, ctx: DeviceContext, device_id: str, step: Step, index: int) -> None:
        policy = self.profile.steps[ctx.port.family][step.name]
        key = ctx.port.key
        attempt = 0
        while True:
            attempt += 1
            self._publish(ev.StepStarted(key, step.name, index, attempt))
            began = time.monotonic()
            try:
                detail = await self._in_worker(ctx, device_id, step, attempt, policy.timeout)
            except StepFailed as exc:
                self._publish(ev.StepDone(key, step.name, False, exc.reason, time.monotonic() - began))
                if exc.operator_prompt:
                    await self._wait_for_operator(ctx, step.name, exc)
                    attempt -= 1  # a person fixing the board is not a failed attempt
                    continue
                if attempt > policy.retries or not exc.retryable:  # a refusal (wrong chip) is not a glitch
                    raise
                self._publish(ev.Log(key, "warning", f"{step.name} failed ({exc.reason}); retrying"))
                continue
            self._publish(ev.StepDone(key, step.name, True, detail, time.monotonic() - began))
            if step.identifies and ctx.board is not None:
                await asyncio.get_running_loop().run_in_executor(
                    self.pool, self.journal.set_board, device_id, ctx.board.chip, ctx.board.mac,
                    {"description": ctx.board.description, "flash_size": ctx.board.flash_size,
                     "features": ctx.board.features})
            if ctx.written:
                await asyncio.get_running_loop().run_in_executor(
                    self.pool, self.journal.set_images, device_id, [i.record() for i in ctx.written])
            return

    async def _wait_for_operator(self, ctx: DeviceContext, step: str, failure: StepFailed) -> None:
        """Show the prompt and wait until the board is ready: its probe answers yes (asked about every second
        while it is on the bus), or it leaves and comes back at the same USB location.

        The board may come back under another tty name (a mode change re-enumerates it), so the port is
        looked up again by its location.
        """
        key = ctx.port.key
        self._publish(ev.OperatorPrompt(key, step, failure.operator_prompt or "", failure.reason))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.prompt_timeout
        departures = self._departures.get(key, 0)
        next_probe = loop.time()
        while True:
            if self._departures.get(key, 0) != departures:
                if key in self.present:  # re-enumerated
                    ctx.port = self.present[key]
                    ctx.session.url = ctx.port.url
                    return
            elif key in self.present and loop.time() >= next_probe:
                if await self._probe(ctx, failure.probe, max(deadline - loop.time(), self.probe_interval)):
                    return
                next_probe = loop.time() + self.probe_interval
            left = deadline - loop.time()
            if left <= 0:
                raise StepFailed(f"{failure.reason}; nobody acted on \"{failure.operator_prompt}\" within "
                                 f"{self.prompt_timeout:g} s")
            await self._port_change(min(left, self.probe_interval))

    async def _probe(self, ctx: DeviceContext, probe: Callable[[], bool], timeout: float) -> bool:
        """One probe in the port's worker; a probe that hangs is stopped like a step that does."""
        try:
            return await self._in_port_worker(ctx, probe, timeout)
        except asyncio.TimeoutError:
            return False

    async def _in_port_worker(self, ctx: DeviceContext, work: Callable[[], Any], timeout: float) -> Any:
        """`work()` in the port's worker thread, within `timeout` seconds. A timeout or a Stop closes the board's
        session, which unblocks the worker, and waits for it, so nothing of this port runs on behind the record.
        Raises asyncio.TimeoutError on a timeout."""
        future = asyncio.get_running_loop().run_in_executor(self.pool, work)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            key = ctx.port.key
            self._stopping.add(key)
            ctx.session.abort()
            waiting = self._port_waits.get(key)
            if waiting is not None:
                waiting.cancel()
            await asyncio.gather(future, return_exceptions=True)
            self._stopping.discard(key)
            raise

    def _port_waiter(self, key: PortKey) -> Callable[[Callable[[PortInfo], bool], float], PortInfo | None]:
        """DeviceContext.await_port for the board at `key`: called in the port's worker, waits on the loop."""

        def wait(wanted: Callable[[PortInfo], bool], timeout: float) -> PortInfo | None:
            assert self._loop is not None
            future = asyncio.run_coroutine_threadsafe(self._await_port(key, wanted, timeout), self._loop)
            self._port_waits[key] = future
            if key in self._stopping:  # stopped just before the wait began
                future.cancel()
            try:
                return future.result()
            except concurrent.futures.CancelledError:
                raise StepFailed("Stopped while waiting for the board to come back") from None
            finally:
                self._port_waits.pop(key, None)

        return wait

    async def _await_port(self, key: PortKey, wanted: Callable[[PortInfo], bool], timeout: float
                          ) -> PortInfo | None:
        """The board at `key` once a scan shows it as `wanted`; None after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            port = self.present.get(key)
            if port is not None and wanted(port):
                return port
            left = deadline - loop.time()
            if left <= 0:
                return None
            await self._port_change(left)

    async def _port_change(self, timeout: float) -> None:
        """Return after the next scan of the ports, or after `timeout` seconds."""
        assert self._ports_changed is not None
        async with self._ports_changed:
            try:
                await asyncio.wait_for(self._ports_changed.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    async def _in_worker(self, ctx: DeviceContext, device_id: str, step: Step, attempt: int,
                         timeout: float) -> str:
        """Run one attempt in the port's worker thread, journaled there so the loop never waits on fsync."""

        def work() -> str:
            step_id = self.journal.start_step(device_id, step.name, attempt)
            try:
                detail = step.run(ctx)
            except StepFailed as exc:
                self.journal.end_step(step_id, False, exc.reason)
                raise
            except Exception as exc:
                self.journal.end_step(step_id, False, f"{type(exc).__name__}: {exc}")
                raise
            detail = one_line(detail)  # a board's own words (its description, an agent's serial) are in it
            self.journal.end_step(step_id, True, detail)
            return detail

        try:
            return await self._in_port_worker(ctx, work, timeout)
        except asyncio.TimeoutError:
            raise StepFailed(f"{step.name} took longer than {timeout:g} s and was stopped", retryable=True) from None

    def _progress_reporter(self, key: PortKey) -> Callable[[int, int], None]:
        start = [time.monotonic()]

        def report(done: int, total: int) -> None:
            now = time.monotonic()
            if done == 0:  # a new transfer begins
                start[0] = now
            rate = done / (now - start[0]) if now > start[0] else 0.0
            step = self._step.get(key)
            self._publish_threadsafe(ev.Progress(key, step.name if step else "", done, total, rate))

        return report

    async def _explain_failure(self, key: PortKey, reason: str) -> str:
        """A board that is no longer on the hub did not fail on its own: say it vanished, and when."""
        await self.scan()
        if key in self.present:
            return reason
        step = self._step.get(key)
        at = f" at {self._progress.get(key, 0)} %" if step is not None and step.transfers else ""
        return f"Board vanished during {step.name if step else 'start'}{at} ({reason})"
