"""A client for Mosquitto's dynamic-security control API (MQTT v5), sending many commands per message.

Commands go to `$CONTROL/dynamic-security/v1` as `{"commands": [...]}`; the plugin answers on
`$CONTROL/dynamic-security/v1/response` with `{"responses": [...]}`, one entry per command, each carrying the
`correlationData` we gave it. Every command we send has a unique correlation id, so answers are matched to
commands even when several admin clients share the response topic.

A registered device is (Mosquitto 2.0.11, see PROTOCOLS.md §9):
  * a role `dev-<cn>` whose ACLs allow publishClientSend, publishClientReceive, subscribePattern and
    unsubscribePattern on `<prefix>/<cn>/#` and nothing else (2.0.x has no %u in ACLs: one role per device);
  * a passwordless client named `<cn>`: with `use_identity_as_username` the certificate's subject CN is the
    MQTT username, and the broker skips the password check for certificate logins;
  * the role attached to the client.
Registering is two commands per device (createRole with its ACLs inline, createClient with its role inline),
so 1,000 devices are one round trip of 2,000 commands (mosquitto_ctrl needs seven, one process each).
Re-registering is a no-op: "already exists" counts as success only after the existing role/client is read
back and matches exactly.

The plugin rebuilds and rewrites its whole JSON file after every changing command (2.0.11), so a change costs
the broker time in proportion to everything already registered: at 1,000 devices (about 650 KB of JSON) each
command costs it ~5 ms. That cost is the same whichever client sends the command; fewer commands is the only
lever a client has.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from station.cloud import CloudRefused, CloudUnavailable

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
DEVICE_ACL_TYPES = ("publishClientSend", "publishClientReceive", "subscribePattern", "unsubscribePattern")
DEFAULT_TOPIC_PREFIX = "devices"
ADMIN_USERNAME = "admin"
COMMANDS_PER_MESSAGE = 500  # a few hundred KB per message; chunks are pipelined, not waited on one by one
_FORBIDDEN_IN_NAMES = ("/", "+", "#", "\x00")


class DynsecError(CloudRefused):
    """The broker answered a command with an error."""

    def __init__(self, message: str, command: str = "", error: str = ""):
        super().__init__(message)
        self.command = command
        self.error = error


class AdminLoginRefused(CloudRefused):
    """The broker refused the admin login (wrong user name or password, or no access to $CONTROL)."""


class DeviceConflict(DynsecError):
    """A client or role with the device's name exists on the broker but is not what registering would make."""


def role_name(cn: str) -> str:
    return f"dev-{cn}"


def device_topic(cn: str, topic_prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    return f"{topic_prefix}/{cn}/#"


def check_device_name(cn: str) -> None:
    """A CN becomes an MQTT user name and part of an ACL topic, so wildcards or '/' would widen the ACL."""
    if not isinstance(cn, str) or not cn:
        raise ValueError("the device's certificate needs a subject common name (CN): it is the device's MQTT "
                         "user name. Set common_name in the profile's [identity] table.")
    if len(cn) > 64:
        raise ValueError(f"device name '{cn[:20]}…' is longer than 64 characters (the X.509 limit for a CN)")
    bad = [c for c in _FORBIDDEN_IN_NAMES if c in cn]
    if bad or cn.startswith("$") or cn != cn.strip():
        raise ValueError(f"device name {cn!r} can't be used as an MQTT user name and topic level: no '/', '+', "
                         f"'#', leading '$' or surrounding spaces")
    if cn == ADMIN_USERNAME:
        raise ValueError("device name 'admin' is the broker's admin account; give the device another CN")


def check_topic_prefix(prefix: str) -> None:
    if (not prefix or prefix.startswith(("/", "$")) or prefix.endswith("/") or "+" in prefix or "#" in prefix
            or "\x00" in prefix):
        raise ValueError(f"topic prefix {prefix!r} must be a plain topic like 'devices' (no wildcards, no "
                         f"leading '$' or '/', no trailing '/')")


def _expected_acls(cn: str, topic_prefix: str) -> list[dict]:
    topic = device_topic(cn, topic_prefix)
    return [{"acltype": t, "topic": topic, "allow": True} for t in DEVICE_ACL_TYPES]


def _acl_set(acls: Iterable[dict]) -> set[tuple]:
    return {(a.get("acltype"), a.get("topic"), bool(a.get("allow"))) for a in acls}


@dataclass(frozen=True)
class DeviceOutcome:
    """What registering or removing one device did. `error` is None on success."""

    cn: str
    changed: bool  # False when the broker already had exactly this (or, for removal, nothing)
    error: DynsecError | None = None


class DynsecClient:
    """One admin connection to the broker. Thread-safe: calls from several threads are serialised."""

    def __init__(self, host: str, port: int, password: str, *, username: str = ADMIN_USERNAME,
                 timeout: float = 30.0, revoke: Callable[[int], None] | None = None):
        self.host, self.port, self.username = host, port, username
        self._password = password
        self.timeout = timeout
        self._revoke = revoke  # adds a serial to the broker's CRL and makes the broker apply it (LocalBroker)
        self._lock = threading.Lock()  # one execute() at a time
        self._cond = threading.Condition()
        self._answers: dict[str, dict] = {}
        self._waiting: set[str] = set()
        self._client: mqtt.Client | None = None
        self._lost: str | None = None
        self._retained: dict[str, str | None] = {}

    def __repr__(self) -> str:  # never shows the password
        return f"DynsecClient({self.username}@{self.host}:{self.port})"

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    # --- connection ---------------------------------------------------------------------------------------

    def __enter__(self) -> "DynsecClient":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._client is not None and self._lost is None

    def connect(self) -> None:
        if self.connected:
            return
        self.close()
        connack: dict = {}
        suback: dict = {}
        done = threading.Event()
        subscribed = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"station-admin-{uuid.uuid4().hex[:12]}",
                             protocol=mqtt.MQTTv5)
        client.username_pw_set(self.username, self._password)

        def on_connect(_c, _u, _flags, reason: ReasonCode, _props):
            connack["reason"] = reason
            done.set()

        def on_subscribe(_c, _u, _mid, reasons, _props):
            suback["reasons"] = reasons
            subscribed.set()

        def on_disconnect(_c, _u, _flags, reason, _props):
            with self._cond:
                self._lost = f"the broker closed the admin connection ({reason})"
                self._cond.notify_all()
            done.set()
            subscribed.set()

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_disconnect = on_disconnect
        client.on_message = self._on_message
        try:
            client.connect(self.host, self.port, keepalive=60)
        except (ConnectionRefusedError, OSError) as exc:
            raise CloudUnavailable(f"the broker's admin port {self.where} does not accept connections "
                                   f"({exc.strerror or exc}); is the broker running? (`station cloud status`)"
                                   ) from None
        self._lost = None
        client.loop_start()
        self._client = client
        if not done.wait(self.timeout) or "reason" not in connack:
            self.close()
            raise CloudUnavailable(f"the broker at {self.where} did not answer the admin login within "
                                   f"{self.timeout:.0f} s")
        reason: ReasonCode = connack["reason"]
        if reason.is_failure:
            self.close()
            if reason.value in (134, 135):  # Bad user name or password / Not authorized
                raise AdminLoginRefused(f"the broker at {self.where} refused the admin login for "
                                        f"'{self.username}' ({reason}); the admin password the station has does "
                                        f"not match the broker's. Check the admin-password file of this broker, "
                                        f"or re-create the broker's state with `station cloud up --reset`.")
            raise CloudUnavailable(f"the broker at {self.where} refused the admin connection ({reason})")
        client.subscribe(RESPONSE_TOPIC, qos=1)
        if not subscribed.wait(self.timeout) or "reasons" not in suback:
            self.close()
            raise CloudUnavailable(f"the broker at {self.where} did not confirm the control subscription")
        if any(r.is_failure for r in suback["reasons"]):
            self.close()
            raise AdminLoginRefused(f"the admin account '{self.username}' may not read {RESPONSE_TOPIC} on "
                                    f"{self.where}; its role must allow the $CONTROL/dynamic-security topics")

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.disconnect()
            finally:
                client.loop_stop()
        with self._cond:
            self._answers.clear()
            self._waiting.clear()

    def _on_message(self, _c, _u, msg) -> None:
        if msg.topic != RESPONSE_TOPIC:
            with self._cond:
                if msg.topic in self._retained:
                    self._retained[msg.topic] = msg.payload.decode(errors="replace")
                    self._cond.notify_all()
            return
        try:
            responses = json.loads(msg.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            return
        with self._cond:
            for resp in responses:
                corr = resp.get("correlationData")
                if corr in self._waiting:
                    self._answers[corr] = resp
            self._cond.notify_all()

    # --- commands -----------------------------------------------------------------------------------------

    def execute(self, commands: list[dict]) -> list[dict]:
        """Send `commands` (pipelined, COMMANDS_PER_MESSAGE per message) and return the broker's answers in
        the same order: each `{"command", "error"?, "data"?}`. Errors are returned, not raised."""
        if not commands:
            return []
        with self._lock:
            self.connect()
            assert self._client is not None
            batch = uuid.uuid4().hex[:16]
            ids = [f"{batch}-{i}" for i in range(len(commands))]
            tagged = [dict(cmd, correlationData=cid) for cmd, cid in zip(commands, ids)]
            with self._cond:
                self._waiting.update(ids)
            try:
                for start in range(0, len(tagged), COMMANDS_PER_MESSAGE):
                    payload = json.dumps({"commands": tagged[start:start + COMMANDS_PER_MESSAGE]})
                    info = self._client.publish(CONTROL_TOPIC, payload, qos=1)
                    if info.rc != mqtt.MQTT_ERR_SUCCESS:
                        self._lost = f"publishing failed ({mqtt.error_string(info.rc)})"
                        break
                # each changing command makes the broker rewrite its JSON (ms each at 1,000 devices): the
                # deadline grows with the batch
                budget = self.timeout + len(commands) / 50
                deadline = time.monotonic() + budget
                with self._cond:
                    while not all(i in self._answers for i in ids):
                        left = deadline - time.monotonic()
                        if self._lost or left <= 0:
                            break
                        self._cond.wait(min(left, 1.0))
                    answers = [self._answers.pop(i, None) for i in ids]
                    self._waiting.difference_update(ids)
            except BaseException:
                with self._cond:
                    self._waiting.difference_update(ids)
                raise
            missing = sum(a is None for a in answers)
            if missing:
                lost = self._lost
                self.close()
                raise CloudUnavailable(f"the broker at {self.where} answered {len(ids) - missing} of {len(ids)} "
                                       f"control commands" + (f"; {lost}" if lost else f" within {budget:.0f} s"))
            return answers  # type: ignore[return-value]

    def run(self, commands: list[dict]) -> list[dict]:
        """Like execute(), but raise DynsecError for the first command the broker refused."""
        answers = self.execute(commands)
        for cmd, ans in zip(commands, answers):
            if ans.get("error"):
                raise _error(cmd, ans)
        return answers

    # --- devices ------------------------------------------------------------------------------------------

    def register_devices(self, devices: Iterable[tuple[str, str]]) -> list[DeviceOutcome]:
        """Register (cn, topic_prefix) pairs in one round trip (plus one more only for names that existed).

        Returns one outcome per device, in order; `changed` is False for a device that was already registered
        exactly so. A name taken by something different is a DeviceConflict outcome, never overwritten.
        """
        devices = list(devices)
        for cn, prefix in devices:
            check_device_name(cn)
            check_topic_prefix(prefix)
        roles = [{"command": "createRole", "rolename": role_name(cn), "acls": _expected_acls(cn, prefix)}
                 for cn, prefix in devices]
        clients = [{"command": "createClient", "username": cn, "roles": [{"rolename": role_name(cn)}]}
                   for cn, _ in devices]
        # role, client, role, client …: the plugin rewrites its whole JSON after each command, and this order
        # keeps the file smallest on average (roles first would carry every role through all client saves)
        answers = self.execute([cmd for pair in zip(roles, clients) for cmd in pair])
        role_ans, client_ans = answers[0::2], answers[1::2]

        # names that already existed: read them back and compare
        checks: list[tuple[int, str]] = []
        for i, (ra, ca) in enumerate(zip(role_ans, client_ans)):
            if ra.get("error") == "Role already exists":
                checks.append((i, "role"))
            if ca.get("error") == "Client already exists":
                checks.append((i, "client"))
        got: dict[tuple[int, str], dict] = {}
        if checks:
            cmds = [{"command": "getRole", "rolename": role_name(devices[i][0])} if kind == "role" else
                    {"command": "getClient", "username": devices[i][0]} for i, kind in checks]
            got = dict(zip(checks, self.execute(cmds)))

        outcomes = []
        for i, (cn, prefix) in enumerate(devices):
            ra, ca = role_ans[i], client_ans[i]
            error: DynsecError | None = None
            for kind, ans, cmd in (("role", ra, roles[i]), ("client", ca, clients[i])):
                if not ans.get("error"):
                    continue
                if (i, kind) in got:
                    error = error or self._compare_existing(cn, prefix, kind, got[(i, kind)])
                else:
                    error = error or _error(cmd, ans)
            changed = not ra.get("error") or not ca.get("error")
            outcomes.append(DeviceOutcome(cn, changed and error is None, error))
        return outcomes

    def _compare_existing(self, cn: str, prefix: str, kind: str, ans: dict) -> DynsecError | None:
        if ans.get("error"):
            return _error({"command": "getRole" if kind == "role" else "getClient"}, ans)
        data = ans.get("data") or {}
        if kind == "role":
            acls = (data.get("role") or {}).get("acls") or []
            if _acl_set(acls) != _acl_set(_expected_acls(cn, prefix)):
                topics = sorted({a.get("topic", "?") for a in acls}) or ["none"]
                return DeviceConflict(f"the broker already has a role '{role_name(cn)}' with other ACLs (topics "
                                      f"{', '.join(topics)}), not {device_topic(cn, prefix)}; void the old "
                                      f"device '{cn}' first or give this one another name",
                                      "createRole", "Role already exists")
            return None
        client = data.get("client") or {}
        roles = [r.get("rolename") for r in client.get("roles") or []]
        groups = client.get("groups") or []
        if roles != [role_name(cn)] or groups or client.get("clientid"):
            return DeviceConflict(f"the broker already has a client '{cn}' that is not this station's device "
                                  f"registration (roles {roles or 'none'}{', groups' if groups else ''}); "
                                  f"void the old device first or give this one another name",
                                  "createClient", "Client already exists")
        return None

    def register_device(self, cn: str, topic_prefix: str = DEFAULT_TOPIC_PREFIX) -> bool:
        """Register one device; True if anything was created, False if it was already registered."""
        outcome = self.register_devices([(cn, topic_prefix)])[0]
        if outcome.error:
            raise outcome.error
        return outcome.changed

    def remove_devices(self, cns: Iterable[str]) -> list[DeviceOutcome]:
        """deleteClient (which also disconnects it) + deleteRole; a name that is already gone is success."""
        cns = list(cns)
        for cn in cns:
            check_device_name(cn)
        cmds = ([{"command": "deleteClient", "username": cn} for cn in cns]
                + [{"command": "deleteRole", "rolename": role_name(cn)} for cn in cns])
        answers = self.execute(cmds)
        n = len(cns)
        outcomes = []
        for i, cn in enumerate(cns):
            error = None
            changed = False
            for cmd, ans, gone in ((cmds[i], answers[i], "Client not found"),
                                   (cmds[n + i], answers[n + i], "Role not found")):
                if not ans.get("error"):
                    changed = True
                elif ans["error"] != gone and error is None:
                    error = _error(cmd, ans)
            outcomes.append(DeviceOutcome(cn, changed and error is None, error))
        return outcomes

    def void_device(self, cn: str, cert_serial: int | None) -> bool:
        """Take a device off the broker for good: its client and role go (a connected session is kicked) and
        its certificate serial goes on the CRL the broker checks at the TLS handshake, so it can't connect.

        Returns True if anything changed on the broker. Repeating it is harmless.
        """
        outcome = self.remove_devices([cn])[0]
        if outcome.error:
            raise outcome.error
        if cert_serial is not None:
            if self._revoke is None:
                raise CloudRefused(f"device '{cn}' was removed from the broker at {self.where}, but this station "
                                   f"does not manage that broker's CRL, so its certificate still passes TLS; "
                                   f"revoke serial {cert_serial:X} on that broker")
            self._revoke(cert_serial)
        return outcome.changed

    def read_retained(self, topic: str, timeout: float = 5.0) -> str | None:
        """The retained value of `topic` (e.g. a $SYS counter), or None if none arrives within `timeout`."""
        with self._lock:
            self.connect()
            assert self._client is not None
            with self._cond:
                self._retained[topic] = None
            self._client.subscribe(topic, qos=0)
            deadline = time.monotonic() + timeout
            try:
                with self._cond:
                    while self._retained.get(topic) is None and not self._lost:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    return self._retained.get(topic)
            finally:
                with self._cond:
                    self._retained.pop(topic, None)
                if self._client is not None:
                    self._client.unsubscribe(topic)

    # --- reads --------------------------------------------------------------------------------------------

    def list_clients(self) -> list[str]:
        names: list[str] = []
        offset = 0
        while True:
            ans = self.run([{"command": "listClients", "verbose": False, "count": 1000, "offset": offset}])[0]
            data = ans.get("data") or {}
            page = data.get("clients") or []
            names += [c if isinstance(c, str) else c.get("username") for c in page]
            total = data.get("totalCount", len(names))
            offset += len(page)
            if not page or offset >= total:
                return names

    def get_client(self, username: str) -> dict | None:
        ans = self.execute([{"command": "getClient", "username": username}])[0]
        if ans.get("error") == "Client not found":
            return None
        if ans.get("error"):
            raise _error({"command": "getClient"}, ans)
        return (ans.get("data") or {}).get("client")

    def get_role(self, rolename: str) -> dict | None:
        ans = self.execute([{"command": "getRole", "rolename": rolename}])[0]
        if ans.get("error") == "Role not found":
            return None
        if ans.get("error"):
            raise _error({"command": "getRole"}, ans)
        return (ans.get("data") or {}).get("role")


_PLAIN = {
    "Client already exists": "a client with this name already exists",
    "Role already exists": "a role with this name already exists",
    "Client not found": "no such client",
    "Role not found": "no such role (or the role it refers to does not exist)",
    "Invalid ACL topic": "the ACL topic is not a valid MQTT topic filter",
    "Internal error": "the broker reported an internal error (out of memory, or its JSON file can't be written)",
}


def _error(cmd: dict, ans: dict) -> DynsecError:
    err = str(ans.get("error"))
    name = cmd.get("username") or cmd.get("rolename") or ""
    what = f"{cmd.get('command', ans.get('command', '?'))} {name}".strip()
    return DynsecError(f"the broker refused '{what}': {_PLAIN.get(err, err)}", cmd.get("command", ""), err)
