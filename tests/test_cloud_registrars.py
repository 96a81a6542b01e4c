"""spark-server registrar against the spec-faithful test server, and the HTTPS registrar with a pinned
server certificate."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from station.cloud import CloudRefused, CloudUnavailable
from station.cloud.registrar import DeviceRegistration, HttpsRegistrar, PinMismatch, \
    SparkServerRegistrar
from station.cloud.spark_test_server import SparkTestServer
from station.secrets import SecretSpec
from tests.test_cloud_pki import free_port

SECRET_ENV, PASSWORD_ENV, TOKEN_ENV = "TEST_SPARK_CLIENT_SECRET", "TEST_SPARK_PASSWORD", "TEST_CLOUD_TOKEN"
PARTICLE_ID = "3a0027000547343232363230"


def pem_public(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def spark(server: SparkTestServer, client_id: str = "CLI2") -> SparkServerRegistrar:
    return SparkServerRegistrar(server.url, client_id=client_id,
                                client_secret=SecretSpec.parse("spark-server client secret", f"env:{SECRET_ENV}"),
                                username="maker@example.com",
                                password=SecretSpec.parse("spark-server password", f"env:{PASSWORD_ENV}"))


@pytest.fixture
def spark_server(tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "client_secret_here")
    monkeypatch.setenv(PASSWORD_ENV, "s3cret-maker-pass")
    server = SparkTestServer(tmp_path / "core_keys", users={"maker@example.com": "s3cret-maker-pass"}).start()
    yield server
    server.stop()


def test_spark_server_token_and_provisioning_store_the_key(spark_server, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    device = DeviceRegistration(PARTICLE_ID.upper(), public_key_pem=pem_public(key))
    result = spark(spark_server).register(device)
    assert result.changed and result.device_id == PARTICLE_ID
    assert spark_server.stored_key(PARTICLE_ID) == pem_public(key)
    registrar_file = json.loads((tmp_path / "core_keys" / f"{PARTICLE_ID}.json").read_text())
    assert registrar_file["registrar"] == "maker@example.com"
    assert ("POST", "/oauth/token") in spark_server.requests

    # like the real server, the device list is read at startup: a restart lists it
    spark_server.stop()
    restarted = SparkTestServer(tmp_path / "core_keys", users={"maker@example.com": "s3cret-maker-pass"}).start()
    try:
        registrar = spark(restarted)
        token = registrar._token_value()
        import urllib.request
        req = urllib.request.Request(f"{restarted.url}/v1/devices", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req) as resp:
            assert [d["id"] for d in json.load(resp)] == [PARTICLE_ID]
        # registering the same key again is harmless (the server overwrites it)
        assert registrar.register(device).changed
    finally:
        restarted.stop()


def test_spark_server_token_is_renewed_once_when_the_server_forgot_it(spark_server):
    registrar = spark(spark_server)
    device = DeviceRegistration("aa01", public_key_pem=pem_public(ec.generate_private_key(ec.SECP256R1())))
    registrar.register(device)
    spark_server.tokens.clear()  # the server restarted and lost its tokens
    registrar.register(device)
    assert spark_server.requests.count(("POST", "/oauth/token")) == 2


def test_spark_server_bad_client_secret_is_named_without_the_secret(spark_server, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "wrong-secret-value")
    device = DeviceRegistration("aa02", public_key_pem=pem_public(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(CloudRefused) as info:
        spark(spark_server).register(device)
    message = str(info.value)
    assert "refused the OAuth client 'CLI2'" in message and SECRET_ENV in message
    assert "wrong-secret-value" not in message


def test_spark_server_bad_password_is_named(spark_server, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "not-my-password")
    device = DeviceRegistration("aa03", public_key_pem=pem_public(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(CloudRefused, match="refused the login of 'maker@example.com'") as info:
        spark(spark_server).register(device)
    assert "not-my-password" not in str(info.value)


def test_spark_server_2014_takes_rsa_keys_and_refuses_others_with_its_reason(tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "anything-goes")
    monkeypatch.setenv(PASSWORD_ENV, "pw-2014")
    with SparkTestServer(tmp_path / "keys", flavour="2014", users={"maker@example.com": "pw-2014"}) as server:
        registrar = spark(server, client_id="particle")  # the 2014 server accepts any client pair
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ok = registrar.register(DeviceRegistration("bb01", public_key_pem=pem_public(rsa_key)))
        assert "Success!" in ok.detail
        ec_device = DeviceRegistration("bb02", public_key_pem=pem_public(ec.generate_private_key(ec.SECP256R1())))
        with pytest.raises(CloudRefused, match="refused the key of device bb02: Key error"):
            registrar.register(ec_device)
        assert server.stored_key("bb02") is None


def test_spark_server_down_is_worth_a_retry(monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "x")
    monkeypatch.setenv(PASSWORD_ENV, "y")
    registrar = SparkServerRegistrar(f"http://127.0.0.1:{free_port()}", client_id="CLI2",
                                     client_secret=SecretSpec.parse("secret", f"env:{SECRET_ENV}"), username="u",
                                     password=SecretSpec.parse("password", f"env:{PASSWORD_ENV}"))
    device = DeviceRegistration("aa04", public_key_pem=pem_public(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(CloudUnavailable, match="can't be reached"):
        registrar.register(device)


def test_a_missing_credential_names_where_it_was_looked_for(spark_server, monkeypatch):
    monkeypatch.delenv(SECRET_ENV)
    device = DeviceRegistration("aa05", public_key_pem=pem_public(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(CloudRefused, match=f"No spark-server client secret: looked in environment variable "
                                           f"{SECRET_ENV}. Set it: export {SECRET_ENV}="):
        spark(spark_server).register(device)
    with pytest.raises(ValueError, match="env:VARIABLE") as err:
        SecretSpec.parse("spark-server client secret", "SPARK_SECRET")
    assert "SPARK_SECRET" not in str(err.value)  # it might have been the secret itself


# --- HTTPS ------------------------------------------------------------------------------------------------

def self_signed(tmp_path, name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert, cert_path, key_path


class CloudApi:
    """A tiny HTTPS device API: records what it receives; answers `status`."""

    def __init__(self, cert_path, key_path):
        self.received: list[tuple[str, str, str, bytes]] = []
        self.status = 201
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                api.received.append((self.command, self.path, self.headers.get("Authorization", ""), body))
                self.send_response(api.status)
                self.send_header("Content-Type", "application/json")
                payload = json.dumps({"message": "nope"} if api.status >= 400 else {"ok": True}).encode()
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_POST = do_DELETE = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.httpd.server_address[1]}/api/devices"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def cloud_api(tmp_path, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "tok-abc-123")
    cert, cert_path, key_path = self_signed(tmp_path, "cloud")
    api = CloudApi(cert_path, key_path)
    api.cert = cert
    yield api
    api.stop()


def https(api, pin: str, pin_kind: str = "certificate") -> HttpsRegistrar:
    return HttpsRegistrar(api.url, token=SecretSpec.parse("cloud token", f"env:{TOKEN_ENV}"), pin_sha256=pin,
                          pin_kind=pin_kind)


def test_https_registrar_posts_the_record_to_the_pinned_server(cloud_api):
    pin = cloud_api.cert.fingerprint(hashes.SHA256()).hex(":")  # colons, as `openssl x509 -fingerprint` shows
    device = DeviceRegistration("board-7", common_name="dev-7", facts={"chip": "ESP32-C3"})
    result = https(cloud_api, pin).register(device)
    assert result.changed and "HTTP 201" in result.detail
    method, path, auth, body = cloud_api.received[0]
    assert (method, path, auth) == ("POST", "/api/devices", "Bearer tok-abc-123")
    assert json.loads(body)["common_name"] == "dev-7" and json.loads(body)["facts"] == {"chip": "ESP32-C3"}

    spki = hashlib.sha256(cloud_api.cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()
    assert https(cloud_api, spki, "spki").void(device).changed
    assert cloud_api.received[1][:2] == ("DELETE", "/api/devices/board-7")


def test_https_registrar_refuses_a_server_with_another_certificate_and_sends_nothing(cloud_api, tmp_path):
    other, _, _ = self_signed(tmp_path, "impostor")
    with pytest.raises(PinMismatch, match="nothing was sent") as info:
        https(cloud_api, other.fingerprint(hashes.SHA256()).hex()).register(DeviceRegistration("board-8"))
    assert cloud_api.received == []
    assert "tok-abc-123" not in str(info.value)


def test_https_registrar_tells_retryable_from_refused(cloud_api):
    pin = cloud_api.cert.fingerprint(hashes.SHA256()).hex()
    registrar = https(cloud_api, pin)
    cloud_api.status = 503
    with pytest.raises(CloudUnavailable, match="HTTP 503"):
        registrar.register(DeviceRegistration("board-9"))
    cloud_api.status = 401
    with pytest.raises(CloudRefused, match=f"refused the token from environment variable {TOKEN_ENV}"):
        registrar.register(DeviceRegistration("board-9"))
    cloud_api.status = 422
    with pytest.raises(CloudRefused, match="HTTP 422: nope"):
        registrar.register(DeviceRegistration("board-9"))
    with pytest.raises(ValueError, match="SHA-256"):
        https(cloud_api, "abcd")
