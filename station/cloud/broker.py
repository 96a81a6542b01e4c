"""LocalBroker: a Mosquitto 2 broker with dynamic security, run by the station for the bench.

Layout of the state dir (the station's own files beside the broker's):

    admin-password        the dynsec admin password (random, 0600, owned by the station's user)
    revoked.json          revoked certificate serials + CRL number: the source the CRL is re-signed from
    broker.pid            the broker's PID, written by the station
    broker.json           ports and user of the running broker (for status / down from another process)
    broker.log            the broker's stdout/stderr (the station opens it; the broker only inherits it)
    broker/               the broker's files, owned by the user the broker runs as:
        mosquitto.conf  dynamic-security.json  ca-chain.pem  server.pem  server.key  crl.pem

Ownership. Started as root, Mosquitto 2.0.11 switches to the `user` from its config (default `mosquitto`)
right after reading the config, *before* it loads certificates, the CRL or the plugin's JSON, and the
plugin rewrites its JSON as that user after every change. So: the station runs the broker as itself when it is
not root (the `user` option has no effect then); when it is root it lets Mosquitto drop to the unprivileged
`mosquitto` account and hands `broker/` to that account, after checking that the account can reach the
directory at all (a state dir under /root or a 0700 temp dir can't be reached: the error says so). The broker
never runs as root with a network listener.

The CRL is configured and present from the first start (an empty CRL signed by the issuing CA): Mosquitto
only applies a revocation when the crlfile existed at start and is later *replaced* and the broker gets SIGHUP.
`revoke()` does exactly that and waits until the broker has reloaded.
"""
from __future__ import annotations

import base64
import datetime as dt
import errno
import fcntl
import glob
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from station.cloud import BrokerError, CloudError
from station.cloud.dynsec import ADMIN_USERNAME, DynsecClient
from station.cloud.server_process import accepts, chown, port_taken, running_pid, stop, write_file
from station.cloud.tls import IssuingCA, check_issuing_ca, issue_server_certificate, make_crl, \
    server_certificate_fits

PLUGIN_NAME = "mosquitto_dynamic_security.so"
PLUGIN_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib/arm-linux-gnueabihf",
               "/usr/lib/*-linux-gnu*", "/usr/lib", "/usr/local/lib", "/usr/lib64")
DYNSEC_ITERATIONS = 101  # the admin password is 256 random bits; stretching it would only slow every login
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
SYS_INTERVAL = 2  # seconds between $SYS updates (connected-clients count for status)
LOG_MARK = "--- station: starting broker"
CRL_BACKDATE = 3600  # seconds; see _write_crl
BROKER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}  # all the broker's environment


@dataclass(frozen=True)
class BrokerPorts:
    """Where the broker listens. The admin listener is plain MQTT, so it stays on loopback."""

    admin: int = 1883
    devices: int = 8883
    admin_host: str = "127.0.0.1"
    devices_host: str = ""  # "" = every interface (boards reach the station over Wi-Fi)

    def __post_init__(self):
        if self.admin_host not in ("127.0.0.1", "::1", "localhost"):
            raise BrokerError(f"the admin listener is plain MQTT with a password; it must stay on loopback, "
                              f"not {self.admin_host}")
        for port in (self.admin, self.devices):
            if not 0 < port < 65536:
                raise BrokerError(f"port {port} is not a TCP port number (1-65535)")
        if self.admin == self.devices:
            raise BrokerError(f"the admin and device listeners need different ports (both are {self.admin})")


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None = None
    ports: BrokerPorts | None = None
    user: str = ""
    registered_devices: int | None = None  # dynsec clients other than the admin
    connected_clients: int | None = None  # $SYS/broker/clients/connected (includes the status query itself)
    note: str = ""  # why counts are missing, or where the log is

    def lines(self) -> list[str]:
        if not self.running:
            return ["broker: not running" + (f" ({self.note})" if self.note else "")]
        assert self.ports is not None
        devices_host = self.ports.devices_host or "all interfaces"
        out = [f"broker: running, pid {self.pid}, as user {self.user}",
               f"admin listener: {self.ports.admin_host}:{self.ports.admin} (plain MQTT, loopback only)",
               f"device listener: {devices_host} port {self.ports.devices} (TLS, client certificates)"]
        if self.registered_devices is not None:
            out.append(f"registered devices: {self.registered_devices}")
        if self.connected_clients is not None:
            out.append(f"connected clients: {self.connected_clients} (as of the broker's last $SYS update)")
        if self.note:
            out.append(self.note)
        return out


def default_server_names() -> list[str]:
    host = socket.gethostname()
    return list(dict.fromkeys(["localhost", "127.0.0.1", host, f"{host.split('.')[0]}.local"]))


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a broker that only lives as long as one run)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


SBIN = "/usr/local/sbin:/usr/sbin"  # where Debian puts mosquitto; not on an ordinary user's PATH


def find_mosquitto(name: str = "mosquitto") -> str | None:
    return shutil.which(name) or shutil.which(name, path=SBIN)


class LocalBroker:
    """Set up, start, stop and query one Mosquitto broker whose files live in `state_dir`."""

    def __init__(self, state_dir: Path | str, ca: IssuingCA | None = None, ports: BrokerPorts | None = None, *,
                 mosquitto: str = "mosquitto", plugin: str | None = None, server_names: list[str] | None = None,
                 run_as: str | None = None):
        self.state_dir = Path(state_dir).absolute()
        self.ca = ca
        self._ports = ports
        self.mosquitto = mosquitto
        self.plugin = plugin
        self.server_names = server_names or default_server_names()
        self._run_as = run_as
        self._proc: subprocess.Popen | None = None  # when this process started the broker
        self._lock = threading.Lock()

    # --- paths --------------------------------------------------------------------------------------------

    @property
    def broker_dir(self) -> Path:
        return self.state_dir / "broker"

    @property
    def conf_path(self) -> Path:
        return self.broker_dir / "mosquitto.conf"

    @property
    def dynsec_path(self) -> Path:
        return self.broker_dir / "dynamic-security.json"

    @property
    def crl_path(self) -> Path:
        return self.broker_dir / "crl.pem"

    @property
    def password_path(self) -> Path:
        return self.state_dir / "admin-password"

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "broker.pid"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "broker.log"

    @property
    def ports(self) -> BrokerPorts:
        """A running broker's own ports; else the ports given; else those it last ran with; else defaults."""
        saved = self._saved_state()
        if saved and (self._ports is None or self._running_pid() is not None):
            return BrokerPorts(**saved["ports"])
        return self._ports or BrokerPorts()

    def _saved_state(self) -> dict | None:
        try:
            return json.loads((self.state_dir / "broker.json").read_text())
        except (OSError, ValueError):
            return None

    # --- public API ---------------------------------------------------------------------------------------

    def up(self) -> BrokerStatus:
        """Start the broker (or leave a running one alone) and return its status once it accepts logins."""
        with self._lock:
            binary = self._find_binary()
            pid = self._running_pid()
            if pid is not None:
                return self.status()
            if self.ca is None or self.ca.key is None:
                raise BrokerError("the broker needs the station CA (issuing certificate and key) to make its "
                                  "server certificate and CRL; run `station ca init` first")
            check_issuing_ca(self.ca.certificate)
            plugin = self._find_plugin()
            ports = self.ports
            user = self._broker_user()
            self._check_port_free(ports.admin_host, ports.admin)
            self._check_port_free(ports.devices_host or "0.0.0.0", ports.devices)
            self._prepare_files(plugin, ports, user)
            self._start(binary, ports, user)
            return self.status()

    def down(self) -> bool:
        """Stop the broker by its PID (SIGTERM, then SIGKILL). False when it was not running."""
        with self._lock:
            pid = self._running_pid()
            if pid is None:
                self.pid_path.unlink(missing_ok=True)
                return False
            stop(pid, STOP_TIMEOUT)
            self.pid_path.unlink(missing_ok=True)
            self._proc = None
            return True

    def status(self) -> BrokerStatus:
        pid = self._running_pid()
        if pid is None:
            return BrokerStatus(False, note=f"state in {self.state_dir}")
        saved = self._saved_state() or {}
        ports = self.ports
        registered = connected = None
        note = ""
        try:
            with self.admin_client(timeout=5) as admin:
                registered = sum(1 for c in admin.list_clients() if c != ADMIN_USERNAME)
                value = admin.read_retained("$SYS/broker/clients/connected", timeout=SYS_INTERVAL + 3)
                connected = int(value) if value is not None and value.strip().isdigit() else None
        except CloudError as exc:
            note = f"counts unavailable: {exc}"
        return BrokerStatus(True, pid, ports, saved.get("user", ""), registered, connected, note)

    def admin_password(self) -> str:
        try:
            return self.password_path.read_text().strip()
        except FileNotFoundError:
            raise BrokerError(f"no admin password in {self.password_path}: this broker was never set up here; "
                              f"run `station cloud up`") from None

    def admin_client(self, timeout: float = 30.0) -> DynsecClient:
        """A dynsec admin client for this broker; `void_device` on it also revokes through this broker."""
        ports = self.ports
        return DynsecClient(ports.admin_host, ports.admin, self.admin_password(), timeout=timeout,
                            revoke=self.revoke)

    def registrar(self, name: str = "mosquitto"):
        from station.cloud.registrar import MosquittoRegistrar

        return MosquittoRegistrar(lambda: self.admin_client(), name=name)

    def revoke(self, serial: int) -> None:
        """Put a certificate serial on the broker's CRL and make the running broker apply it.

        The new CRL is written beside the old one, moved over it (os.replace) and the broker gets SIGHUP; this
        returns once the broker has reloaded (its log says so and it has answered a control command since).
        A broker that is not running applies it at its next start.
        """
        if self.ca is None or self.ca.key is None:
            raise BrokerError("revoking a certificate needs the station CA's issuing key (to sign the CRL)")
        with self._state_lock():
            revoked = self._revoked()
            if any(r["serial"] == serial for r in revoked["serials"]):
                crl_written = False
            else:
                revoked["serials"].append({"serial": serial, "when": _now().isoformat()})
                self._write_crl(revoked, self._broker_user())
                crl_written = True
        pid = self._running_pid()
        if pid is None or not crl_written:
            return
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + START_TIMEOUT
        while "Reloading config." not in self._log_since(offset):
            if time.monotonic() > deadline or self._running_pid() is None:
                raise BrokerError(f"the broker did not reload after SIGHUP; its log says:\n{self._log_tail(offset)}")
            time.sleep(0.02)  # polling the broker's log for the reload line, bounded by the deadline
        with self.admin_client(timeout=10) as admin:  # the reload ran in the loop iteration before this answer
            admin.execute([{"command": "getDefaultACLAccess"}])
        after = self._log_since(offset)
        if "revocation" in after and "Error" in after:
            raise BrokerError(f"the broker could not load the new CRL:\n{self._log_tail(offset)}")

    # --- setup --------------------------------------------------------------------------------------------

    def _find_binary(self) -> str:
        found = find_mosquitto(self.mosquitto)
        if found is None:
            raise BrokerError(f"mosquitto is not installed: apt-get install mosquitto "
                              f"(looked for '{self.mosquitto}')")
        return found

    def _find_plugin(self) -> str:
        if self.plugin:
            if not Path(self.plugin).is_file():
                raise BrokerError(f"the dynamic-security plugin {self.plugin} does not exist")
            return self.plugin
        for folder in PLUGIN_DIRS:
            for candidate in sorted(glob.glob(os.path.join(folder, PLUGIN_NAME))):
                return candidate
        raise BrokerError(f"the Mosquitto dynamic-security plugin ({PLUGIN_NAME}) is not installed; on Debian it "
                          f"ships in the mosquitto package: apt-get install mosquitto")

    def _broker_user(self) -> pwd.struct_passwd:
        """Who the broker runs as: ourselves, or `mosquitto` when we are root (see the module docstring)."""
        if os.geteuid() != 0:
            me = pwd.getpwuid(os.geteuid())
            if self._run_as not in (None, me.pw_name):
                raise BrokerError(f"only root can run the broker as '{self._run_as}'; it will run as {me.pw_name}")
            return me
        name = self._run_as or "mosquitto"
        if name == "root":
            raise BrokerError("the station does not run the broker as root: its device listener faces the "
                              "network. Leave run_as unset (the broker drops to 'mosquitto') or run the station "
                              "as a normal user.")
        try:
            return pwd.getpwnam(name)
        except KeyError:
            raise BrokerError(f"the broker should drop root privileges to user '{name}', which does not exist; "
                              f"install Debian's mosquitto package (it creates the user) or run the station "
                              f"as a normal user") from None

    def _check_reachable(self, user: pwd.struct_passwd) -> None:
        folder = blocking_folder(self.broker_dir, user)
        if folder is not None:
            raise BrokerError(
                f"the broker runs as user '{user.pw_name}' (Mosquitto drops root privileges before it reads "
                f"its certificates), and that user can't enter {folder} (mode "
                f"{stat.S_IMODE(folder.stat().st_mode):04o}), so it can't reach {self.broker_dir}. Keep the "
                f"broker's state where '{user.pw_name}' can reach it (e.g. under /var/lib) or run the station as "
                f"a normal user.")

    def _check_port_free(self, host: str, port: int) -> None:
        exc = port_taken(host, port)
        if exc is None:
            return
        if exc.errno == errno.EADDRINUSE:
            raise BrokerError(f"port {port} is busy on {host or 'all interfaces'}: another program "
                              f"(another broker?) listens there; stop it or choose another port")
        raise BrokerError(f"can't listen on {host}:{port}: {exc.strerror}")

    def _prepare_files(self, plugin: str, ports: BrokerPorts, user: pwd.struct_passwd) -> None:
        assert self.ca is not None
        dropping = user.pw_uid != os.geteuid()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if dropping:  # the broker's user must be able to pass through the state dir (not read it)
            os.chmod(self.state_dir, stat.S_IMODE(self.state_dir.stat().st_mode) | stat.S_IXOTH)
        self.broker_dir.mkdir(mode=0o700, exist_ok=True)
        self._check_reachable(user)
        chown(self.broker_dir, user)
        os.chmod(self.broker_dir, 0o700)

        password = self._ensure_admin_password()
        self._ensure_dynsec(password, user)

        trust = self.ca.trust_pem()
        write_file(self.broker_dir / "ca-chain.pem", trust, 0o644, user)
        cert_path, key_path = self.broker_dir / "server.pem", self.broker_dir / "server.key"
        current = None
        if cert_path.exists() and key_path.exists():
            try:
                current = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
            except ValueError:
                current = None
        if current is None or not server_certificate_fits(current, self.ca.certificate, self.server_names):
            key, cert = issue_server_certificate(self.ca.certificate, self.ca.key, self.server_names)
            write_file(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()), 0o600, user)
            chain = cert.public_bytes(serialization.Encoding.PEM) + \
                self.ca.certificate.public_bytes(serialization.Encoding.PEM)
            write_file(cert_path, chain, 0o644, user)
        with self._state_lock():
            self._write_crl(self._revoked(), user, fresh=True)  # new dates every start: an expired CRL refuses all

        lines = [
            "# written by the provisioning station (station/cloud/broker.py); rewritten at every start",
            f"user {user.pw_name}",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
            f"sys_interval {SYS_INTERVAL}",
            "set_tcp_nodelay true",
            "# dynsec is global, so listener settings are shared",
            "per_listener_settings false",
            "allow_anonymous false",
            f"plugin {plugin}",
            f"plugin_opt_config_file {self.dynsec_path}",
            "# admin / control listener (username + password), loopback only",
            f"listener {ports.admin} {ports.admin_host}",
            "# device listener: TLS with client certificates from the station CA",
            f"listener {ports.devices}" + (f" {ports.devices_host}" if ports.devices_host else ""),
            f"cafile {self.broker_dir / 'ca-chain.pem'}",
            f"certfile {cert_path}",
            f"keyfile {key_path}",
            "require_certificate true",
            "# the client certificate's subject CN becomes the user name, i.e. the dynsec client name",
            "use_identity_as_username true",
            "# present from the first start: only a replaced crlfile + SIGHUP applies new revocations",
            f"crlfile {self.crl_path}",
        ]
        for line in lines:
            if any(c in line for c in "\n\r"):
                raise BrokerError(f"a path in the broker config contains a line break: {line!r}")
        write_file(self.conf_path, ("\n".join(lines) + "\n").encode(), 0o644, user)

    def _ensure_admin_password(self) -> str:
        if self.password_path.exists():
            password = self.password_path.read_text().strip()
            if password:
                return password
        password = secrets.token_urlsafe(32)
        write_file(self.password_path, password.encode(), 0o600, None)
        return password

    def _ensure_dynsec(self, password: str, user: pwd.struct_passwd) -> None:
        """The plugin's JSON with an admin client whose password is ours (what `mosquitto_ctrl dynsec init`
        writes, made here so the password never appears on a command line). An existing file keeps its
        devices; only the admin entry is brought in line with the station's password file."""
        if self.dynsec_path.exists():
            try:
                config = json.loads(self.dynsec_path.read_text())
                if not isinstance(config, dict):
                    raise ValueError("not an object")
            except ValueError:
                raise BrokerError(
                    f"{self.dynsec_path} is damaged (Mosquitto 2.0.11 rewrites it in place, so a broker killed "
                    f"mid-save can leave it cut short). Move it aside and run `station cloud up` again; the "
                    f"registrations in the station's journal can then be delivered again.") from None
        else:
            config = {
                "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": True,
                                     "subscribe": False, "unsubscribe": True},
                "clients": [], "groups": [], "roles": [],
            }
        admin = next((c for c in config.setdefault("clients", []) if c.get("username") == ADMIN_USERNAME), None)
        if admin is None or not _password_matches(admin, password):
            salt = os.urandom(12)
            digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, DYNSEC_ITERATIONS, 64)
            entry = {"username": ADMIN_USERNAME, "textname": "station admin",
                     "roles": [{"rolename": "admin"}], "password": base64.b64encode(digest).decode(),
                     "salt": base64.b64encode(salt).decode(), "iterations": DYNSEC_ITERATIONS}
            config["clients"] = [c for c in config["clients"] if c.get("username") != ADMIN_USERNAME] + [entry]
        roles = config.setdefault("roles", [])
        if not any(r.get("rolename") == "admin" for r in roles):
            allow = [("publishClientSend", "$CONTROL/dynamic-security/#"),
                     ("publishClientReceive", "$CONTROL/dynamic-security/#"),
                     ("subscribePattern", "$CONTROL/dynamic-security/#"),
                     ("publishClientReceive", "$SYS/#"), ("subscribePattern", "$SYS/#"),
                     ("publishClientReceive", "#"), ("subscribePattern", "#"), ("unsubscribePattern", "#")]
            roles.append({"rolename": "admin", "acls": [{"acltype": t, "topic": p, "allow": True}
                                                        for t, p in allow]})
        write_file(self.dynsec_path, json.dumps(config, indent=2).encode(), 0o600, user)

    # --- CRL ----------------------------------------------------------------------------------------------

    @contextmanager
    def _state_lock(self):
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _revoked(self) -> dict:
        try:
            data = json.loads((self.state_dir / "revoked.json").read_text())
        except FileNotFoundError:
            data = {}
        data.setdefault("serials", [])
        data.setdefault("crl_number", 0)
        data.setdefault("last_update", None)
        return data

    def _write_crl(self, revoked: dict, user: pwd.struct_passwd, *, fresh: bool = False) -> None:
        """Sign and install a CRL. OpenSSL uses, of all the CRLs a listener has loaded, the one with the latest
        lastUpdate, and ignores one dated in the future; so each CRL is dated one second after the previous
        one, starting an hour back at every broker start (`fresh`), and never after now."""
        assert self.ca is not None
        now = _now()
        last = now - dt.timedelta(seconds=CRL_BACKDATE)
        if revoked["last_update"] and not fresh:
            last = max(last, dt.datetime.fromisoformat(revoked["last_update"]) + dt.timedelta(seconds=1))
        while last > _now():  # more than one revocation per second for an hour: wait for the clock
            time.sleep(0.05)
        revoked["crl_number"] += 1
        revoked["last_update"] = last.isoformat()
        crl = make_crl(self.ca.certificate, self.ca.key,
                       [(r["serial"], dt.datetime.fromisoformat(r["when"])) for r in revoked["serials"]],
                       number=revoked["crl_number"], last_update=last)
        self.broker_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_file(self.crl_path, crl.public_bytes(serialization.Encoding.PEM), 0o644, user)
        write_file(self.state_dir / "revoked.json", json.dumps(revoked, indent=1).encode(), 0o644, None)

    # --- process ------------------------------------------------------------------------------------------

    def _start(self, binary: str, ports: BrokerPorts, user: pwd.struct_passwd) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"{LOG_MARK} {_now().isoformat()} ---\n".encode())
            offset = log.tell()
            proc = subprocess.Popen([binary, "-c", str(self.conf_path)], stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                    env=BROKER_ENV)  # none of the station's secrets (STATION_CA_PASSPHRASE, …)
        self._proc = proc
        write_file(self.pid_path, f"{proc.pid}\n".encode(), 0o644, None)
        deadline = time.monotonic() + START_TIMEOUT
        devices_host = ports.devices_host if ports.devices_host not in ("", "0.0.0.0") else "127.0.0.1"
        try:
            pending = [(ports.admin_host, ports.admin), (devices_host, ports.devices)]
            while pending:
                if proc.poll() is not None:
                    raise BrokerError(f"the broker stopped at start (exit code {proc.returncode}); the last lines "
                                      f"of {self.log_path}:\n{self._log_tail(offset)}")
                if time.monotonic() > deadline:
                    raise BrokerError(f"the broker did not open its ports within {START_TIMEOUT:.0f} s; the last "
                                      f"lines of {self.log_path}:\n{self._log_tail(offset)}")
                if accepts(*pending[0]):
                    pending.pop(0)
                else:
                    time.sleep(0.02)  # polling the port, bounded by the deadline above
            try:
                with self.admin_client(timeout=10) as admin:  # proves the plugin is active and the password works
                    admin.execute([{"command": "getDefaultACLAccess"}])
            except CloudError as exc:
                raise BrokerError(f"the broker started but the admin login failed ({exc}); the last lines of "
                                  f"{self.log_path}:\n{self._log_tail(offset)}") from None
        except BaseException:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            self._proc = None
            self.pid_path.unlink(missing_ok=True)
            raise
        state = {"pid": proc.pid, "ports": asdict(ports), "user": user.pw_name, "started": time.time()}
        write_file(self.state_dir / "broker.json", json.dumps(state).encode(), 0o644, None)

    def _running_pid(self) -> int | None:
        """The broker's PID if the PID file names a live Mosquitto started with this state dir's config."""
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None  # our child died: reaped
        return running_pid(self.pid_path, str(self.conf_path))

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _log_tail(self, offset: int = 0, lines: int = 12) -> str:
        text = self._log_since(offset).strip().splitlines()
        return "\n".join("  " + line for line in text[-lines:]) or "  (the log is empty)"


def blocking_folder(path: Path, user: pwd.struct_passwd) -> Path | None:
    """The first existing parent of `path` that `user` can't pass through (no execute bit), or None."""
    if user.pw_uid == os.geteuid() or user.pw_uid == 0:
        return None
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for folder in reversed(Path(path).absolute().parents):
        try:
            st = folder.stat()
        except FileNotFoundError:
            return None  # created later by us, with a mode the broker can pass
        if st.st_uid == user.pw_uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return folder
    return None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _password_matches(entry: dict, password: str) -> bool:
    try:
        salt = base64.b64decode(entry["salt"])
        want = base64.b64decode(entry["password"])
        iterations = int(entry.get("iterations", DYNSEC_ITERATIONS))
    except (KeyError, ValueError, TypeError):
        return False
    got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, len(want))
    return secrets.compare_digest(got, want)





ROOT_FALLBACK = Path("/var/lib/provisioning-station")


def broker_state_dir(data: Path) -> Path:
    """<data>/cloud, unless the station runs as root and the unprivileged broker user can't reach it (a data
    dir under /root): then /var/lib/provisioning-station/cloud-<hash of the data dir>."""
    preferred = data / "cloud"
    if os.geteuid() != 0 or (preferred / "broker.json").exists():
        return preferred
    digest = hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:12]
    fallback = ROOT_FALLBACK / f"cloud-{digest}"
    if (fallback / "broker.json").exists():
        return fallback
    try:
        user = pwd.getpwnam("mosquitto")
    except KeyError:
        return preferred  # LocalBroker explains what is missing
    return preferred if blocking_folder(preferred / "broker", user) is None else fallback


def issuing_ca_from(ca) -> IssuingCA:
    """What the broker needs from a StationCA: the issuing certificate, its signing key and the chain."""
    return IssuingCA(ca.issuing, ca.issuing_key, tuple(ca.chain))


def station_broker(data: Path, ca=None) -> LocalBroker:
    """The station's own broker (`station cloud up`), for the data dir `data`; `ca` (a StationCA) only to start it."""
    return LocalBroker(broker_state_dir(data), issuing_ca_from(ca) if ca is not None else None)
