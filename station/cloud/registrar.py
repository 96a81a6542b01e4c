"""Registrars: how a provisioned device becomes known to a cloud, and how it is taken off again.

    Registrar (protocol)   register(device) -> RegistrationResult, void(device) -> RegistrationResult
    MosquittoRegistrar     the local broker's dynamic security (a role + client per device; CRL on void)
    SparkServerRegistrar   spark-server's API: POST /oauth/token, then POST /v1/provisioning/<id>
    HttpsRegistrar         POST the device record as JSON to an HTTPS endpoint whose certificate is pinned

Registrars are called from worker threads (the outbox runs them in an executor) and block. They must be
idempotent: the outbox may deliver a registration again after a crash between "sent" and "marked delivered".
They raise `CloudUnavailable` for "try again later" and `CloudRefused` for "the cloud said no".
Each class names the [cloud] keys a profile may give it (`OPTIONS`) and checks them when the profile loads
(`check_options`, through `REGISTRARS`), so a profile that loads has options its registrar can use.
A registrar may also offer `register_many(devices)`, which the outbox uses to deliver many in one round trip.

Credentials (tokens, client secrets, passwords) come from the environment or the OS keyring, named by the
profile as "env:VARIABLE" / "keyring:service/user" (a `station.secrets.SecretSpec`); they are read on use,
never kept, never logged, never part of a message or an exception.
"""
from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import ssl
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from station.cloud import CloudError, CloudRefused, CloudUnavailable
from station.cloud.dynsec import DEFAULT_TOPIC_PREFIX, DynsecClient, check_device_name, check_topic_prefix
from station.secrets import SecretError, SecretSpec

REGISTER, VOID = "register", "void"


# --- the record -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeviceRegistration:
    """What a cloud learns about a device: public facts only (the outbox stores it as JSON)."""

    device_id: str  # the journal's device id: the outbox row's key
    common_name: str = ""  # the certificate's subject CN: the device's MQTT user name
    certificate_pem: str = ""  # the device certificate, if it has one
    public_key_pem: str = ""  # SubjectPublicKeyInfo PEM; taken from the certificate when empty
    cert_serial: int | None = None  # taken from the certificate when empty; what void puts on the CRL
    replaces_serial: int | None = None  # a re-provisioned board's previous certificate: shut out as this registers
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    facts: Mapping[str, Any] = field(default_factory=dict)  # chip, MAC, profile, batch …: public, JSON-able
    cloud_id: str = ""  # the device's own name where the cloud uses it (a Particle device ID); else device_id

    @property
    def cloud_name(self) -> str:
        return self.cloud_id or self.device_id

    def __post_init__(self):
        if not self.device_id or not isinstance(self.device_id, str):
            raise ValueError("a device registration needs a device_id")
        blob = json.dumps(asdict(self), default=str)
        if "PRIVATE KEY" in blob:
            raise ValueError(f"the registration of {self.device_id} contains a private key; only public material "
                             f"may leave the station")
        if self.certificate_pem:
            cert = self.certificate()
            if not self.public_key_pem:
                object.__setattr__(self, "public_key_pem", cert.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode())
            if self.cert_serial is None:
                object.__setattr__(self, "cert_serial", cert.serial_number)
            if not self.common_name:
                cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
                if cns:
                    object.__setattr__(self, "common_name", str(cns[0].value))

    @classmethod
    def from_certificate(cls, device_id: str, certificate: x509.Certificate, *,
                         topic_prefix: str = DEFAULT_TOPIC_PREFIX, facts: Mapping[str, Any] | None = None
                         ) -> "DeviceRegistration":
        return cls(device_id, certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
                   topic_prefix=topic_prefix, facts=dict(facts or {}))

    def certificate(self) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate(self.certificate_pem.encode())
        except ValueError as exc:
            raise ValueError(f"the certificate of device {self.device_id} is not a PEM certificate ({exc})") from None

    def public_key(self):
        try:
            return serialization.load_pem_public_key(self.public_key_pem.encode())
        except ValueError as exc:
            raise CloudRefused(f"device {self.device_id} has no usable public key ({exc})") from None

    def to_payload(self) -> dict:
        data = asdict(self)
        data["facts"] = dict(self.facts)
        return data

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> "DeviceRegistration":
        known = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        return cls(**known)


@dataclass(frozen=True)
class RegistrationResult:
    registrar: str
    device_id: str
    action: str  # "register" | "void"
    changed: bool  # False when the cloud already had exactly this (a repeat delivery)
    detail: str = ""


@runtime_checkable
class Registrar(Protocol):
    name: str

    def register(self, device: DeviceRegistration) -> RegistrationResult: ...

    def void(self, device: DeviceRegistration) -> RegistrationResult: ...


# --- options, checked when a profile loads ----------------------------------------------------------------

class RegistrarOptionError(ValueError):
    """A registrar can't work with an option as a profile writes it; `key` names the option."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _required(options: Mapping[str, str], key: str, what: str) -> str:
    if not options.get(key):
        raise RegistrarOptionError(key, f"missing {key}: {what}")
    return options[key]


def _secret_place(options: Mapping[str, str], key: str, what: str) -> SecretSpec:
    try:
        return SecretSpec.parse(what, _required(options, key, f"where the {what} is kept, \"env:VARIABLE\" or "
                                                               f"\"keyring:service/user\""))
    except SecretError as exc:
        raise RegistrarOptionError(key, str(exc)) from None


def _base_url(url: str, *, pinned: bool) -> None:
    try:  # the same checks the registrar's HTTP client makes; a placeholder pin asks for its https rule
        _Http(url, timeout=1.0, pin="0" * 64 if pinned else None)
    except ValueError as exc:
        raise RegistrarOptionError("url", str(exc)) from None


# --- credentials ------------------------------------------------------------------------------------------

def reveal(spec: SecretSpec) -> str:
    """A credential's value, read on use and never kept; a missing one is the cloud refusing until it is set."""
    try:
        return spec.resolve().reveal()
    except SecretError as exc:
        raise CloudRefused(str(exc)) from None


# --- Mosquitto --------------------------------------------------------------------------------------------

class MosquittoRegistrar:
    """Registers devices with a Mosquitto broker's dynamic security. Void also revokes the certificate when
    the client factory's DynsecClient can (LocalBroker.admin_client does)."""

    OPTIONS = ("topic_prefix",)

    def __init__(self, client_factory: Callable[[], DynsecClient], name: str = "mosquitto"):
        self.name = name
        self._factory = client_factory
        self._client: DynsecClient | None = None
        self._lock = threading.Lock()

    def _call(self, fn: Callable[[DynsecClient], Any]) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._factory()
            client = self._client
            try:
                return fn(client)
            except CloudError:
                client.close()  # a fresh connection next time (the broker may have restarted)
                raise

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    @staticmethod
    def check_options(url: str, topic_prefix: str, options: Mapping[str, str]) -> None:
        try:
            check_topic_prefix(topic_prefix)
        except ValueError as exc:
            raise RegistrarOptionError("topic_prefix", str(exc)) from None

    @staticmethod
    def _check(device: DeviceRegistration) -> None:
        try:
            check_device_name(device.common_name)
            check_topic_prefix(device.topic_prefix)
        except ValueError as exc:
            raise CloudRefused(f"device {device.device_id}: {exc}") from None

    def register(self, device: DeviceRegistration) -> RegistrationResult:
        result = self.register_many([device])[0]
        if isinstance(result, CloudError):
            raise result
        return result

    def register_many(self, devices: Iterable[DeviceRegistration]) -> list[RegistrationResult | CloudError]:
        devices = list(devices)
        results: list[RegistrationResult | CloudError | None] = [None] * len(devices)
        todo = []
        for i, device in enumerate(devices):
            try:
                self._check(device)
                todo.append(i)
            except CloudRefused as exc:
                results[i] = exc
        for i in list(todo):  # the old certificate has the same CN: off the broker and on the CRL first
            old = devices[i].replaces_serial
            if old is not None:
                try:
                    self._call(lambda c, d=devices[i]: c.void_device(d.common_name, old))
                except CloudError as exc:
                    results[i] = exc
                    todo.remove(i)
        outcomes = self._call(lambda c: c.register_devices(
            [(devices[i].common_name, devices[i].topic_prefix) for i in todo])) if todo else []
        for i, outcome in zip(todo, outcomes):
            d = devices[i]
            results[i] = outcome.error or RegistrationResult(
                self.name, d.device_id, REGISTER, outcome.changed,
                f"MQTT user {d.common_name} may use {d.topic_prefix}/{d.common_name}/#"
                + ("" if outcome.changed else " (was already registered)"))
        return results  # type: ignore[return-value]

    def void(self, device: DeviceRegistration) -> RegistrationResult:
        self._check(device)
        changed = self._call(lambda c: c.void_device(device.common_name, device.cert_serial))
        serial = f"; certificate {device.cert_serial:X} revoked" if device.cert_serial is not None else ""
        return RegistrationResult(self.name, device.device_id, VOID, changed,
                                  f"MQTT user {device.common_name} removed{serial}")


# --- HTTP plumbing ----------------------------------------------------------------------------------------

def _normalise_pin(pin: str) -> str:
    hexdigits = pin.replace(":", "").replace(" ", "").lower()
    if len(hexdigits) != 64 or any(c not in "0123456789abcdef" for c in hexdigits):
        raise ValueError("a certificate pin must be a SHA-256 in hex (64 digits, colons allowed)")
    return hexdigits


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def text(self, limit: int = 200) -> str:
        text = self.body.decode(errors="replace").strip()
        return text if len(text) <= limit else text[:limit] + "…"


class _Http:
    """One request per connection over http.client; optional SHA-256 pin checked before a byte is sent."""

    def __init__(self, base_url: str, *, timeout: float, pin: str | None = None, pin_kind: str = "certificate"):
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"'{base_url}' is not an http(s) URL")
        if pin is not None and url.scheme != "https":
            raise ValueError(f"a pinned server needs an https URL, not '{base_url}'")
        if pin_kind not in ("certificate", "spki"):
            raise ValueError(f"pin_kind must be 'certificate' or 'spki', not {pin_kind!r}")
        self.url = url
        self.base_path = url.path.rstrip("/")
        self.timeout = timeout
        self.pin = _normalise_pin(pin) if pin is not None else None
        self.pin_kind = pin_kind

    @property
    def where(self) -> str:
        return f"{self.url.scheme}://{self.url.netloc}"

    def _connection(self) -> http.client.HTTPConnection:
        host, port = self.url.hostname, self.url.port
        if self.url.scheme == "http":
            return http.client.HTTPConnection(host, port, timeout=self.timeout)
        context = ssl.create_default_context()
        if self.pin is not None:  # the pin is the trust anchor: the server's certificate may be self-signed
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return http.client.HTTPSConnection(host, port, timeout=self.timeout, context=context)

    def _check_pin(self, conn: http.client.HTTPConnection) -> None:
        if self.pin is None:
            return
        der = conn.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
        if not der:
            raise CloudRefused(f"{self.where} presented no certificate; nothing was sent")
        if self.pin_kind == "spki":
            spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            got = hashlib.sha256(spki).hexdigest()
        else:
            got = hashlib.sha256(der).hexdigest()
        if not hmac.compare_digest(got, self.pin):
            raise PinMismatch(f"{self.where} presented a certificate whose {self.pin_kind} SHA-256 is {got[:16]}…, "
                              f"but the profile pins {self.pin[:16]}…; nothing was sent. If the server's "
                              f"certificate was renewed on purpose, update the pin in the profile.")

    def request(self, method: str, path: str, *, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> _Response:
        conn = self._connection()
        try:
            try:
                conn.connect()
            except ssl.SSLError as exc:
                raise CloudUnavailable(f"TLS with {self.where} failed ({exc.reason or exc})") from None
            except OSError as exc:
                raise CloudUnavailable(f"{self.where} can't be reached ({exc.strerror or exc})") from None
            self._check_pin(conn)
            try:
                conn.request(method, self.base_path + path, body=body, headers=dict(headers or {}))
                resp = conn.getresponse()
                return _Response(resp.status, resp.read())
            except (OSError, http.client.HTTPException) as exc:
                raise CloudUnavailable(f"{self.where} dropped the request ({type(exc).__name__})") from None
        finally:
            conn.close()


class PinMismatch(CloudRefused):
    """The server's certificate is not the one the profile pins."""


def _error_text(resp: _Response) -> str:
    data = resp.json()
    if isinstance(data, dict):
        for key in ("error_description", "error", "message", "errors"):
            if data.get(key):
                value = data[key]
                return "; ".join(map(str, value)) if isinstance(value, list) else str(value)
    return resp.text() or f"HTTP {resp.status}"


# --- spark-server -----------------------------------------------------------------------------------------

class SparkServerRegistrar:
    """spark-server (2014 spark/spark-server and the Brewskey fork): a device is its public key on the server.

    Token: POST /oauth/token (form-encoded, grant_type=password, client id + secret in the form), cached until
    it expires or the server refuses it. Registration: POST /v1/provisioning/<id> with
    {deviceID, publicKey (PEM), order, filename, algorithm} and the bearer token. Re-posting the same key is
    harmless (the server overwrites core_keys/<id>.pub.pem), so repeats are safe.
    """

    OPTIONS = ("url", "client_id", "client_secret", "username", "password")

    @staticmethod
    def check_options(url: str, topic_prefix: str, options: Mapping[str, str]) -> None:
        _base_url(url, pinned=False)
        _required(options, "username", "the spark-server account that provisions devices")
        _secret_place(options, "client_secret", "spark-server client secret")
        _secret_place(options, "password", "spark-server password")

    def __init__(self, base_url: str, *, client_id: str, client_secret: SecretSpec, username: str,
                 password: SecretSpec, name: str = "spark-server", timeout: float = 15.0):
        self.name = name
        self.http = _Http(base_url, timeout=timeout)
        self.client_id = client_id
        self.client_secret = client_secret
        self.username = username
        self.password = password
        self._token: tuple[str, float] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SparkServerRegistrar({self.http.where}, client {self.client_id}, user {self.username})"

    def _fetch_token(self) -> str:
        form = urllib.parse.urlencode({
            "grant_type": "password", "username": self.username, "password": reveal(self.password),
            "client_id": self.client_id, "client_secret": reveal(self.client_secret)}).encode()
        resp = self.http.request("POST", "/oauth/token", body=form,
                                 headers={"Content-Type": "application/x-www-form-urlencoded",
                                          "Accept": "application/json"})
        data = resp.json()
        if resp.status == 200 and isinstance(data, dict) and data.get("access_token"):
            expires = float(data.get("expires_in") or 3600)
            self._token = (str(data["access_token"]), time.monotonic() + expires * 0.9)
            return self._token[0]
        code = data.get("error") if isinstance(data, dict) else None
        if resp.status >= 500:
            raise CloudUnavailable(f"spark-server at {self.http.where} could not issue a token right now "
                                   f"(HTTP {resp.status}: {_error_text(resp)})")
        if code == "invalid_client":
            raise CloudRefused(f"spark-server at {self.http.where} refused the OAuth client '{self.client_id}': "
                               f"the client id or secret (from {self.client_secret.describe()}) is wrong")
        if code == "invalid_grant":
            raise CloudRefused(f"spark-server at {self.http.where} refused the login of '{self.username}': the "
                               f"user name or the password (from {self.password.describe()}) is wrong")
        raise CloudRefused(f"spark-server at {self.http.where} refused the token request "
                           f"(HTTP {resp.status}: {_error_text(resp)})")

    def _token_value(self, fresh: bool = False) -> str:
        with self._lock:
            if not fresh and self._token and self._token[1] > time.monotonic():
                return self._token[0]
            return self._fetch_token()

    @staticmethod
    def _algorithm(device: DeviceRegistration) -> str:
        key = device.public_key()
        if isinstance(key, rsa.RSAPublicKey):
            return "rsa"
        if isinstance(key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
            return "ecc"
        raise CloudRefused(f"device {device.device_id}: spark-server takes RSA or EC keys, not "
                           f"{type(key).__name__}")

    def register(self, device: DeviceRegistration) -> RegistrationResult:
        if not device.public_key_pem:
            raise CloudRefused(f"device {device.device_id} has no public key to give spark-server")
        device_id = device.cloud_name.lower()  # as particle-cli sends it
        body = json.dumps({"deviceID": device_id, "publicKey": device.public_key_pem,
                           "order": f"manual_{int(time.time() * 1000)}", "filename": "cli",
                           "algorithm": self._algorithm(device)}).encode()
        path = f"/v1/provisioning/{urllib.parse.quote(device_id, safe='')}"
        for attempt in (0, 1):
            token = self._token_value(fresh=attempt == 1)
            resp = self.http.request("POST", path, body=body,
                                     headers={"Content-Type": "application/json", "Accept": "application/json",
                                              "Authorization": f"Bearer {token}"})
            data = resp.json()
            expired = resp.status in (400, 401) and isinstance(data, dict) and data.get("error") == "invalid_grant"
            if expired and attempt == 0:
                continue  # the cached token expired or the server restarted: get a new one, once
            break
        if 200 <= resp.status < 300:
            return RegistrationResult(self.name, device_id, REGISTER, True,
                                      f"key stored on spark-server ({resp.text(60) or 'ok'})")
        if resp.status >= 500:
            raise CloudUnavailable(f"spark-server at {self.http.where} failed to store the key of {device_id} "
                                   f"(HTTP {resp.status}); will retry")
        raise CloudRefused(f"spark-server at {self.http.where} refused the key of device {device_id}: "
                           f"{_error_text(resp)}")

    def void(self, device: DeviceRegistration) -> RegistrationResult:
        raise CloudRefused(f"spark-server has no API to remove a device key: on the server delete "
                           f"core_keys/{device.cloud_name.lower()}.pub.pem (and .json) and restart it")


# --- generic HTTPS ----------------------------------------------------------------------------------------

class HttpsRegistrar:
    """POST the device record (DeviceRegistration.to_payload() as JSON) to `url` with a bearer token; void is
    DELETE `url`/<device_id>. The server's certificate is pinned by SHA-256 (of the certificate, or of its
    SubjectPublicKeyInfo with pin_kind="spki", which survives a renewal with the same key); the pin is checked
    right after the handshake, before the token or the record is sent."""

    OPTIONS = ("url", "token", "pin_sha256", "pin_kind")

    @staticmethod
    def check_options(url: str, topic_prefix: str, options: Mapping[str, str]) -> None:
        _base_url(url, pinned=True)
        _secret_place(options, "token", "registration API token")
        try:
            _normalise_pin(_required(options, "pin_sha256", "the SHA-256 of the server's certificate (or key)"))
        except ValueError as exc:
            raise RegistrarOptionError("pin_sha256", str(exc)) from None
        if options.get("pin_kind", "certificate") not in ("certificate", "spki"):
            raise RegistrarOptionError("pin_kind", "pin_kind must be 'certificate' or 'spki'")

    def __init__(self, url: str, *, token: SecretSpec, pin_sha256: str, pin_kind: str = "certificate",
                 name: str = "https", timeout: float = 15.0):
        self.name = name
        self.http = _Http(url, timeout=timeout, pin=pin_sha256, pin_kind=pin_kind)
        self.token = token

    def __repr__(self) -> str:
        return f"HttpsRegistrar({self.http.where}{self.http.base_path})"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {reveal(self.token)}", "Content-Type": "application/json",
                "Accept": "application/json"}

    def _fail(self, resp: _Response, doing: str) -> CloudError:
        if resp.status in (408, 425, 429) or resp.status >= 500:
            return CloudUnavailable(f"{self.http.where} could not {doing} now (HTTP {resp.status}); will retry")
        if resp.status in (401, 403):
            return CloudRefused(f"{self.http.where} refused the token from {self.token.describe()} "
                                f"(HTTP {resp.status}) while trying to {doing}")
        return CloudRefused(f"{self.http.where} refused to {doing} (HTTP {resp.status}: {_error_text(resp)})")

    def register(self, device: DeviceRegistration) -> RegistrationResult:
        body = json.dumps(device.to_payload()).encode()
        resp = self.http.request("POST", "", body=body, headers=self._headers())
        if 200 <= resp.status < 300:
            return RegistrationResult(self.name, device.device_id, REGISTER, True,
                                      f"accepted by {self.http.where} (HTTP {resp.status})")
        raise self._fail(resp, f"register device {device.device_id}")

    def void(self, device: DeviceRegistration) -> RegistrationResult:
        resp = self.http.request("DELETE", "/" + urllib.parse.quote(device.device_id, safe=""),
                                 headers=self._headers())
        if 200 <= resp.status < 300 or resp.status in (404, 410):
            return RegistrationResult(self.name, device.device_id, VOID, resp.status not in (404, 410),
                                      f"removed from {self.http.where} (HTTP {resp.status})")
        raise self._fail(resp, f"void device {device.device_id}")


# a profile's [cloud] registrar = "…" -> the class that checks its options when the profile loads
REGISTRARS = {"mosquitto": MosquittoRegistrar, "spark-server": SparkServerRegistrar, "https": HttpsRegistrar}

__all__ = ["DeviceRegistration", "RegistrationResult", "Registrar", "MosquittoRegistrar",
           "SparkServerRegistrar", "HttpsRegistrar", "PinMismatch", "REGISTER", "VOID", "REGISTRARS",
           "RegistrarOptionError"]

