"""A stand-in for spark-server's HTTP API, faithful to its documented behaviour (PROTOCOLS.md §6.1/§6.2).

The real spark-server can't be installed today (its npm dependencies fail: spark-protocol pulls a git URL and
ursa does not build on Node 20), so tests and demos talk to this instead. It implements what the station
uses and the rules around it, in two flavours:

  "2014"      spark/spark-server 0.1.x: any OAuth client id/secret pair is accepted (id must match
              ^[a-z0-9-_]{3,40}$), keys must be RSA (ursa), provisioning answers "Success!".
  "brewskey"  the Brewskey fork: OAuth clients are checked (CLI2/client_secret_here, particle-collider,
              spark-server), RSA or EC keys, provisioning answers the device as JSON.

Endpoints: POST /v1/users, POST /oauth/token (form-encoded only, grant_type=password), POST
/v1/provisioning/<id> (token required; the path id is ignored, deviceID comes from the body), GET /v1/devices
(filled at startup from core_keys/, as the real server does: a new device is listed after a restart).
Tokens: exactly one of `Authorization: Bearer`, `?access_token=`, or a form-body `access_token` (not on GET);
an unknown token is 400 invalid_grant. Keys are written to core_keys/<deviceID>.pub.pem + <deviceID>.json.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

CLIENT_ID_RE = re.compile(r"^[a-z0-9-_]{3,40}$")
TOKEN_LIFETIME = 7776000  # 90 days, as spark-server
BREWSKEY_CLIENTS = {"CLI2": "client_secret_here", "particle-collider": "particle-collider",
                    "spark-server": "spark-server"}
PBKDF2_ITERATIONS = 30000


class SparkTestServer:
    def __init__(self, core_keys_dir: Path | str, *, flavour: str = "brewskey", users: dict[str, str] | None = None,
                 clients: dict[str, str] | None = None, host: str = "127.0.0.1", port: int = 0):
        if flavour not in ("2014", "brewskey"):
            raise ValueError("flavour is '2014' or 'brewskey'")
        self.flavour = flavour
        self.core_keys = Path(core_keys_dir)
        self.core_keys.mkdir(parents=True, exist_ok=True)
        self.clients = clients if clients is not None else (BREWSKEY_CLIENTS if flavour == "brewskey" else None)
        self._lock = threading.Lock()
        self.users: dict[str, dict] = {}
        for name, password in (users or {}).items():
            self.add_user(name, password)
        self.tokens: dict[str, tuple[str, float]] = {}  # token -> (username, expires)
        self.requests: list[tuple[str, str]] = []  # (method, path) seen, for tests
        self._all_ids = self._scan_ids()  # like _allIDs: filled at startup only
        self._httpd = ThreadingHTTPServer((host, port), _handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "SparkTestServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="spark-test-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join()

    def __enter__(self) -> "SparkTestServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def add_user(self, username: str, password: str) -> None:
        salt = os.urandom(64)
        digest = hashlib.pbkdf2_hmac("sha1", password.encode(), salt, PBKDF2_ITERATIONS, 64)
        with self._lock:
            self.users[username] = {"_id": secrets.token_hex(12), "username": username,
                                    "password_hash": base64.b64encode(digest).decode(),
                                    "salt": base64.b64encode(salt).decode(), "access_tokens": []}

    def _check_user(self, username: str, password: str) -> bool:
        user = self.users.get(username)
        if not user:
            return False
        digest = hashlib.pbkdf2_hmac("sha1", password.encode(), base64.b64decode(user["salt"]),
                                     PBKDF2_ITERATIONS, 64)
        return secrets.compare_digest(base64.b64encode(digest).decode(), user["password_hash"])

    def _scan_ids(self) -> list[str]:
        ids = {p.name.split(".")[0] for p in self.core_keys.iterdir() if p.name.endswith((".pem", ".json"))}
        return sorted(ids)

    def stored_key(self, device_id: str) -> str | None:
        path = self.core_keys / f"{device_id}.pub.pem"
        return path.read_text() if path.exists() else None


def _handler(server: SparkTestServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: tests read `server.requests`
            pass

        # --- plumbing -----------------------------------------------------------------------------------

        def _send(self, status: int, body, content_type: str = "application/json") -> None:
            data = (json.dumps(body) if content_type == "application/json" else str(body)).encode()
            self.send_response(status)
            self.send_header("Content-Type", f"{content_type}; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _oauth_error(self, status: int, error: str, description: str) -> None:
            self._send(status, {"code": status, "error": error, "error_description": description})

        def _body(self) -> tuple[str, dict]:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype == "application/json":
                try:
                    data = json.loads(raw or b"{}")
                    return ctype, data if isinstance(data, dict) else {}
                except ValueError:
                    return ctype, {}
            if ctype == "application/x-www-form-urlencoded":
                return ctype, {k: v[-1] for k, v in urllib.parse.parse_qs(raw.decode()).items()}
            return ctype, {}

        def _token_user(self, query: dict, form: dict) -> str | None:
            """Exactly one token method; sends the error and returns None when it is wrong."""
            found = []
            auth = self.headers.get("Authorization") or ""
            if auth.lower().startswith("bearer "):
                found.append(auth[7:].strip())
            if "access_token" in query:
                found.append(query["access_token"])
            if self.command != "GET" and "access_token" in form:
                found.append(form["access_token"])
            if not found:
                self._oauth_error(400, "invalid_request", "The access token was not found")
                return None
            if len(found) > 1:
                self._oauth_error(400, "invalid_request",
                                  "Only one method may be used to authenticate at a time (Auth header, GET or POST).")
                return None
            with server._lock:
                entry = server.tokens.get(found[0])
            if entry is None or entry[1] < time.time():
                self._oauth_error(400, "invalid_grant", "The access token provided is invalid.")
                return None
            return entry[0]

        # --- routes -------------------------------------------------------------------------------------

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
            server.requests.append(("GET", url.path))
            if url.path == "/v1/access_tokens":
                with server._lock:
                    self._send(200, [{"token": t, "expires": e, "client": "user"}
                                     for t, (_, e) in server.tokens.items()])
                return
            if url.path == "/v1/devices":
                if self._token_user(query, {}) is None:
                    return
                self._send(200, [{"id": i, "name": None, "last_app": None, "last_heard": None, "connected": False}
                                 for i in server._all_ids])
                return
            self._send(404, {"error": "Not found"})

        def do_POST(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
            server.requests.append(("POST", url.path))
            ctype, form = self._body()
            if url.path == "/oauth/token":
                return self._token(ctype, form)
            if url.path == "/v1/users":
                username, password = form.get("username"), form.get("password")
                if not username or not password:
                    return self._send(200, {"ok": False, "errors": ["username and password are required"]})
                server.add_user(username, password)  # no duplicate check: overwrites, as the real one
                return self._send(200, {"ok": True})
            match = re.fullmatch(r"/v1/provisioning/([^/]+)", url.path)
            if match:
                user = self._token_user(query, form)
                if user is None:
                    return
                return self._provision(user, form)
            self._send(404, {"error": "Not found"})

        def _token(self, ctype: str, form: dict) -> None:
            if ctype != "application/x-www-form-urlencoded":
                return self._oauth_error(400, "invalid_request",
                                         "Method must be POST with application/x-www-form-urlencoded encoding")
            client_id, client_secret = form.get("client_id"), form.get("client_secret")
            auth = self.headers.get("Authorization") or ""
            if auth.lower().startswith("basic "):
                try:
                    client_id, _, client_secret = base64.b64decode(auth[6:]).decode().partition(":")
                except ValueError:
                    return self._oauth_error(400, "invalid_client", "Invalid client credentials")
            if form.get("grant_type") != "password":
                return self._oauth_error(400, "invalid_request", "Invalid or missing grant_type parameter")
            if not client_id or not client_secret or not CLIENT_ID_RE.match(client_id.lower()):
                return self._oauth_error(400, "invalid_client", "Invalid or missing client_id parameter")
            if server.clients is not None and server.clients.get(client_id) != client_secret:
                return self._oauth_error(400, "invalid_client", "Client credentials are invalid")
            username, password = form.get("username"), form.get("password")
            if not username or not password:
                return self._oauth_error(400, "invalid_client",
                                         "Missing parameters. \"username\" and \"password\" are required")
            if not server._check_user(username, password):
                return self._oauth_error(400, "invalid_grant", "User credentials are invalid")
            token = secrets.token_hex(20)
            with server._lock:
                server.tokens[token] = (username, time.time() + TOKEN_LIFETIME)
                server.users[username]["access_tokens"].append(token)
            self._send(200, {"token_type": "bearer", "access_token": token, "expires_in": TOKEN_LIFETIME})

        def _provision(self, user: str, form: dict) -> None:
            device_id = form.get("deviceID")
            if not device_id:
                return self._send(400, {"error": "No deviceID provided"})
            if not re.fullmatch(r"[0-9A-Za-z]{1,64}", device_id):
                return self._send(400, {"error": "Key error invalid deviceID"})
            pem = form.get("publicKey") or ""
            try:
                key = serialization.load_pem_public_key(pem.encode())
            except (ValueError, TypeError) as exc:
                return self._send(400, {"error": f"Key error {exc}"})
            allowed = (rsa.RSAPublicKey,) if server.flavour == "2014" else (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)
            if not isinstance(key, allowed):
                return self._send(400, {"error": f"Key error unsupported key type {type(key).__name__}"})
            (server.core_keys / f"{device_id}.pub.pem").write_text(pem)
            (server.core_keys / f"{device_id}.json").write_text(
                json.dumps({"registrar": user, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())}))
            if server.flavour == "2014":
                return self._send(200, "Success!", "text/html")
            self._send(200, {"id": device_id, "name": None, "connected": False, "last_heard": None,
                             "last_ip_address": None, "platform_id": None, "product_id": None, "status": "normal"})

    return Handler
