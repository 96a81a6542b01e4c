"""The local cloud's firmware update server: HTTPS, in the protocol Arduino's ESP8266httpUpdate client speaks.

PROTOCOLS.md §11.5. The board asks `GET /ota/<channel>` with its `x-ESP8266-*` headers; the server answers

    200 + the current release (Content-Length, x-MD5)   the board runs something else
    304                                                  the board runs the current release (its
                                                         x-ESP8266-version, or its sketch MD5, matches)
    404                                                  nothing published for that channel
    403                                                  not the ESP8266 update client, or (client certificates
                                                         on) a certificate that is unknown or voided
    200 + x-version, no body                             x-ESP8266-mode: version (getAvailableVersion)

TLS: the server certificate is issued by the station CA, which the boards already trust. With client
certificates on (the default), the handshake needs a certificate of the station CA's chain, and the request is
then served only when the certificate ledger holds that very certificate, live (registered, not voided): a
voided board is refused even though its certificate still chains to the CA. The ledger is read per request, so
`station void` takes effect at once. Everything a board sends is untrusted: headers are made one safe line
before they are logged.

`UpdateService` runs the server as its own process for `station cloud up` (PID file, log, `down`), with a
minimal environment: the station's secrets never reach it. Started as root, the process gives root up (to
`nobody`) once it has opened what it reads; it never serves a request as root.
"""
from __future__ import annotations

import json
import logging
import os
import pwd
import signal
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from station.cloud import BrokerError
from station.cloud.ota import ReleaseShelf
from station.cloud.server_process import accepts, port_taken, running_pid, stop, write_file
from station.cloud.tls import IssuingCA, issue_server_certificate, server_certificate_fits
from station.identity.ledger import Ledger, serial_hex
from station.text import one_line

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0  # the ESP8266 HTTP client's own timeout is 8 s
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
CHUNK = 64 * 1024
SERVER_USER = "nobody"  # who the server runs as when the station runs as root


@dataclass(frozen=True)
class UpdateServerConfig:
    host: str  # "" = every interface
    port: int
    ota_dir: str  # published releases (station.cloud.ota)
    journal: str  # the journal file holding the certificate ledger
    client_certs: bool  # require a certificate of a registered, non-voided device


class UpdateServer(ThreadingHTTPServer):
    """Serves one process's update requests; `serve_forever` in a thread, `shutdown` + `server_close` to stop."""

    daemon_threads = True

    def __init__(self, config: UpdateServerConfig, cert_file: Path, key_file: Path, trust_pem: bytes,
                 listen: bool = True):
        self.config = config
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.minimum_version = ssl.TLSVersion.TLSv1_2  # BearSSL on the ESP8266 speaks 1.2
        self.tls.load_cert_chain(cert_file, key_file)
        if config.client_certs:
            self.tls.verify_mode = ssl.CERT_REQUIRED
            self.tls.load_verify_locations(cadata=trust_pem.decode())
        super().__init__((config.host, config.port), UpdateHandler, bind_and_activate=False)
        try:
            self.server_bind()  # `listen` False: bound now (a port below 1024 needs root), listening later
            if listen:
                self.server_activate()
            self.ledger = Ledger(config.journal)
            self.releases = ReleaseShelf(Path(config.ota_dir))
        except BaseException:
            self.socket.close()
            raise

    def finish_request(self, request, client_address) -> None:
        """The TLS handshake happens here, in the request's own thread: a slow client never holds up accept()."""
        request.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            tls = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.info("update request from %s refused in the TLS handshake: %s", client_address[0],
                     one_line(str(exc), limit=200))
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()

    def server_close(self) -> None:
        super().server_close()
        self.ledger.close()
        self.releases.close()

    def refusal(self, peer_der: bytes | None) -> str:
        """Why this peer may not have firmware ("" when it may)."""
        if not self.config.client_certs:
            return ""
        if not peer_der:
            return "no client certificate"
        cert = x509.load_der_x509_certificate(peer_der)
        record = self.ledger.get(serial_hex(cert))
        if record is None or record.certificate != peer_der:
            return f"certificate {serial_hex(cert)} is not in the station's ledger"
        if not record.live:
            return f"certificate {serial_hex(cert)} was voided ({one_line(record.void_reason or '', limit=80)})"
        return ""


class UpdateHandler(BaseHTTPRequestHandler):
    server: UpdateServer
    protocol_version = "HTTP/1.1"
    server_version = "station-ota/1"
    timeout = HANDSHAKE_TIMEOUT_S

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        mode = self.headers.get("x-ESP8266-mode", "")
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        if len(parts) != 2 or parts[0] != "ota":
            return self._answer(404, "no such path; the firmware asks /ota/<profile>")
        if not mode or "x-ESP8266-STA-MAC" not in self.headers:
            return self._answer(403, "only the ESP8266 update client (x-ESP8266-* headers) is served")
        refusal = self.server.refusal(self.connection.getpeercert(binary_form=True))
        if refusal:
            return self._answer(403, refusal)
        release = self.server.releases.current(parts[1])
        if release is None:
            return self._answer(404, f"no firmware published for {parts[1]}")
        if mode == "version":
            return self._answer(200, "", {"x-version": release.version})
        if mode != "sketch":
            return self._answer(404, f"no {mode} image is published; only sketch updates")
        if self.headers.get("x-ESP8266-version") == release.version or \
                self.headers.get("x-ESP8266-sketch-md5", "").lower() == release.sketch_md5:
            return self._answer(304, "")
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(release.size))
        self.send_header("Content-Disposition", f'attachment; filename="{release.sha256[:16]}.bin"')
        self.send_header("x-MD5", release.md5)
        self.send_header("x-version", release.version)
        self.end_headers()
        with self.server.releases.open_release(release) as data:
            while chunk := data.read(CHUNK):
                self.wfile.write(chunk)

    def _answer(self, code: int, reason: str, headers: dict[str, str] | None = None) -> None:
        body = (reason + "\n").encode() if reason and code != 304 else b""
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if code != 304:
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code="-", size="-") -> None:
        h = self.headers
        log.info("%s %s -> %s (mac %s, version %s)", self.client_address[0], one_line(self.requestline, limit=120),
                 code, one_line(h.get("x-ESP8266-STA-MAC", "-"), limit=20),
                 one_line(h.get("x-ESP8266-version", "-"), limit=64))

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        log.info("%s %s", self.client_address[0], one_line(format % args, limit=300))


# --- the process `station cloud up` runs ---------------------------------------------------------------------------


class UpdateService:
    """Start, stop and query the update server process whose files live in `state_dir`."""

    def __init__(self, state_dir: Path, config: UpdateServerConfig | None = None, ca: IssuingCA | None = None,
                 server_names: list[str] | None = None):
        self.state_dir = Path(state_dir).absolute()
        self.config = config
        self.ca = ca
        self.server_names = server_names or []

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "server.pid"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "server.log"

    def check_port_free(self) -> None:
        exc = port_taken(self.config.host, self.config.port)
        if exc is not None:
            raise BrokerError(f"the update server can't listen on {self.config.host or 'all interfaces'} port "
                              f"{self.config.port} ({exc.strerror}): another program listens there; stop it or "
                              f"choose another --ota-port")

    def up(self) -> str:
        """Start the server (or leave a running one alone); a line saying where it listens."""
        if self.running_pid() is not None:
            return self.status_line()
        if self.config is None or self.ca is None or self.ca.key is None:
            raise BrokerError("the update server needs its settings and the station CA (for its server certificate)")
        self.check_port_free()
        self._prepare_files()
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",  # none of the station's secrets
               "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        with open(self.log_path, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "station.cloud.update_server", str(self.state_dir)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, close_fds=True)
        self.pid_path.write_text(f"{proc.pid}\n")
        host = self.config.host if self.config.host not in ("", "0.0.0.0") else "127.0.0.1"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not accepts(host, self.config.port):
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                self.pid_path.unlink(missing_ok=True)
                tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-8:])
                raise BrokerError(f"the update server did not start; the last lines of {self.log_path}:\n{tail}")
            time.sleep(0.02)  # polling the port, bounded by the deadline above
        return self.status_line()

    def down(self) -> bool:
        pid = self.running_pid()
        if pid is not None:
            stop(pid, STOP_TIMEOUT_S)
        self.pid_path.unlink(missing_ok=True)
        return pid is not None

    def running_pid(self) -> int | None:
        return running_pid(self.pid_path, str(self.state_dir))

    def status_line(self) -> str:
        pid = self.running_pid()
        if pid is None:
            return "update server: not running"
        config = _load_config(self.state_dir)
        certs = "client certificates of registered, non-voided devices" if config.client_certs \
            else "no client certificates asked"
        return (f"update server: running, pid {pid}, {config.host or 'all interfaces'} port {config.port} "
                f"(HTTPS, {certs}; boards ask /ota/<profile>)")

    def _prepare_files(self) -> None:
        assert self.config is not None and self.ca is not None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = self.state_dir / "server.pem", self.state_dir / "server.key"
        try:
            have = x509.load_pem_x509_certificates(cert_path.read_bytes())[0] if key_path.exists() else None
        except (OSError, ValueError):
            have = None
        if have is None or not server_certificate_fits(have, self.ca.certificate, self.server_names):
            key, cert = issue_server_certificate(self.ca.certificate, self.ca.key, self.server_names)
            write_file(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()), 0o600)
            write_file(cert_path, cert.public_bytes(serialization.Encoding.PEM)
                       + self.ca.certificate.public_bytes(serialization.Encoding.PEM), 0o644)
        write_file(self.state_dir / "ca-chain.pem", self.ca.trust_pem(), 0o644)
        write_file(self.state_dir / "server.json", json.dumps(asdict(self.config)).encode(), 0o644)


def _load_config(state_dir: Path) -> UpdateServerConfig:
    return UpdateServerConfig(**json.loads((state_dir / "server.json").read_text()))





def drop_root() -> None:
    """Started as root, the server gives root up before it hears a request: everything it reads is open by then
    (the listening socket, its key in the TLS context, the journal and its WAL files, the ota folder)."""
    if os.geteuid() != 0:
        return
    try:
        user = pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise SystemExit(f"the update server gives up root for user '{SERVER_USER}', which does not exist; "
                         f"run the station as a normal user") from None
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)


def serve(state_dir: Path) -> int:
    """The process's main: serve until SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    config = _load_config(state_dir)
    try:
        server = UpdateServer(config, state_dir / "server.pem", state_dir / "server.key",
                              (state_dir / "ca-chain.pem").read_bytes(), listen=False)
    except OSError as exc:  # the port was taken since `up` checked it, or a file went missing
        log.error("the update server can't start: %s", exc)
        return 1
    server.ledger.count()  # a first read opens the journal's WAL and shared-memory files while they can be
    drop_root()
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.server_activate()  # `cloud up` waits for the port to accept: by then root is given up
    log.info("serving firmware updates on %s port %d", config.host or "all interfaces", config.port)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(serve(Path(sys.argv[1])))
