"""The station CA as an operator meets it: `station ca init | import | show`, passphrases, files on disk."""
import datetime
import hashlib
import os
import re
import stat
import subprocess
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from station.identity import CAError, SecretError
from station.identity.ca import StationCA
from station.identity.cli import ca as ca_group
from station.identity.idevid import IdevidProfile, host_identity
from station.identity.keys import Secret, SecretSource, ca_passphrase_source
from station.identity.ledger import Ledger

PASSPHRASE = "correct horse battery staple"
KEY_FILES = ("root.key", "issuing.key", "manifest.key")
CA_FILES = ("root.crt", "issuing.crt", "manifest.crt") + KEY_FILES


@click.group()
@click.option("--data-dir")
@click.pass_context
def station(ctx, data_dir):
    ctx.obj = {"data_dir": data_dir}


station.add_command(ca_group)


@pytest.fixture(autouse=True)
def no_os_keyring(monkeypatch):
    """The machine's own keyring must not answer for these tests."""
    import keyring

    monkeypatch.setattr(keyring, "get_password", lambda service, user: None)
    monkeypatch.delenv("STATION_CA_PASSPHRASE", raising=False)
    monkeypatch.delenv("STATION_DATA_DIR", raising=False)


def run(data: Path, *args: str, env: dict | None = None):
    env = {"STATION_CA_PASSPHRASE": PASSPHRASE} if env is None else env
    return CliRunner().invoke(station, ["--data-dir", str(data), "ca", *args], env=env, catch_exceptions=False)


def openssl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=cwd)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def data(tmp_path) -> Path:
    result = run(tmp_path / "data", "init", "--organization", "Example Devices")
    assert result.exit_code == 0, result.output
    return tmp_path / "data"


def test_init_writes_a_verifiable_chain_with_encrypted_private_files(data):
    folder = data / "ca"
    assert sorted(p.name for p in folder.iterdir()) == sorted(CA_FILES)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in CA_FILES:
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
        assert PASSPHRASE.encode() not in (folder / name).read_bytes()
    for name in KEY_FILES:
        pem = (folder / name).read_bytes()
        assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        with pytest.raises(TypeError):  # not readable as a plain PEM private key
            serialization.load_pem_private_key(pem, password=None)
        assert openssl("pkey", "-in", str(folder / name), "-passin", "pass:wrong").returncode != 0

    verify = openssl("verify", "-CAfile", "root.crt", "issuing.crt", cwd=folder)
    assert verify.returncode == 0 and "issuing.crt: OK" in verify.stdout
    verify = openssl("verify", "-purpose", "any", "-CAfile", "root.crt", "-untrusted", "issuing.crt",
                     "manifest.crt", cwd=folder)
    assert verify.returncode == 0, verify.stderr

    root = openssl("x509", "-in", "root.crt", "-text", "-noout", cwd=folder).stdout
    assert "CA:TRUE, pathlen:1" in root and "NIST CURVE: P-384" in root
    assert "Subject: O = Example Devices, CN = Example Devices IDevID Root CA" in root
    issuing = openssl("x509", "-in", "issuing.crt", "-text", "-noout", cwd=folder).stdout
    assert "CA:TRUE, pathlen:0" in issuing and "NIST CURVE: P-256" in issuing
    assert "Signature Algorithm: ecdsa-with-SHA384" in issuing  # signed by the P-384 root
    assert "Certificate Sign, CRL Sign" in issuing
    manifest = openssl("x509", "-in", "manifest.crt", "-text", "-noout", cwd=folder).stdout
    assert "CA:FALSE" in manifest and "Digital Signature" in manifest and "Certificate Sign" not in manifest
    assert "Issuer: O = Example Devices, CN = Example Devices IDevID Issuing CA" in manifest


def test_init_refuses_to_overwrite_and_force_keeps_the_old_ca(data):
    before = {name: sha(data / "ca" / name) for name in CA_FILES}
    again = run(data, "init")
    assert again.exit_code != 0
    assert f"A station CA already exists in {data / 'ca'}" in again.output
    assert "station ca init --force" in again.output
    assert {name: sha(data / "ca" / name) for name in CA_FILES} == before

    forced = run(data, "init", "--force")
    assert forced.exit_code == 0, forced.output
    assert sha(data / "ca" / "issuing.key") != before["issuing.key"]
    kept = list(data.glob("ca.replaced-*"))
    assert len(kept) == 1 and sha(kept[0] / "issuing.key") == before["issuing.key"]
    assert not list(data.glob(".ca-new-*"))  # no staging folder left behind


def test_show_prints_subject_fingerprint_validity_and_key_location(data):
    shown = run(data, "show", env={})  # needs no passphrase
    assert shown.exit_code == 0, shown.output
    for role, name in (("root", "root.crt"), ("issuing", "issuing.crt"), ("manifest", "manifest.crt")):
        fp = openssl("x509", "-in", name, "-noout", "-fingerprint", "-sha256", cwd=data / "ca").stdout
        assert fp.split("=", 1)[1].strip().replace(":", "").lower() in shown.output
        assert f"key      encrypted file {data / 'ca' / name.replace('.crt', '.key')}" in shown.output
    assert shown.output.startswith("root         O=Example Devices, CN=Example Devices IDevID Root CA")
    assert "to 9999-12-31 23:59:59 UTC" in shown.output
    pem = run(data, "show", "--pem", env={})
    assert len(x509.load_pem_x509_certificates(pem.output[pem.output.index("-----BEGIN"):].encode())) == 3


def test_load_signs_device_certificates_that_openssl_verifies(data, tmp_path):
    ca = StationCA.load(data, PASSPHRASE)
    assert not ca.is_ephemeral and [c.subject for c in ca.chain] == [ca.issuing.subject, ca.root.subject]
    key, cert = host_identity(ca, IdevidProfile(key_origin="host"), {"chip": "ESP32", "mac": "24:0a:c4:00:00:01"},
                              Ledger(tmp_path / "journal.sqlite3"))
    (tmp_path / "dev.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    verify = openssl("verify", "-CAfile", str(data / "ca" / "root.crt"), "-untrusted",
                     str(data / "ca" / "issuing.crt"), str(tmp_path / "dev.pem"))
    assert verify.returncode == 0, verify.stderr

    signer, chain = ca.manifest_signer()
    assert chain[0].subject.rfc4514_string() == "CN=Example Devices Manifest Signer,O=Example Devices"
    assert chain[1:] == ca.chain
    assert signer.public_key() != ca.issuing.public_key()  # never the CA key
    signature = signer.sign(b"manifest line", ec.ECDSA(hashes.SHA256()))
    chain[0].public_key().verify(signature, b"manifest line", ec.ECDSA(hashes.SHA256()))


def test_wrong_passphrase_is_refused_at_load_naming_its_source(data):
    with pytest.raises(SecretError) as err:
        StationCA.load(data, ca_passphrase_source(environ={"STATION_CA_PASSPHRASE": "not the passphrase"}))
    message = str(err.value)
    assert message.startswith("The CA key passphrase is wrong (from STATION_CA_PASSPHRASE)")
    assert "not the passphrase" not in message and "issuing.key" in message

    cli = run(data, "init", env={"STATION_CA_PASSPHRASE": "not the passphrase"})  # refused before any key use
    assert cli.exit_code != 0 and "already exists" in cli.output


def test_missing_ca_and_missing_passphrase_messages(tmp_path, data):
    with pytest.raises(CAError) as err:
        StationCA.load(tmp_path / "empty")
    assert str(err.value) == (f"No station CA in {tmp_path / 'empty' / 'ca'}; run `station ca init` or "
                              f"`station ca import`.")
    shown = run(tmp_path / "empty", "show")
    assert shown.exit_code != 0 and "No station CA in" in shown.output

    with pytest.raises(SecretError) as err:  # no env, empty keyring, stdin not a terminal
        StationCA.load(data, ca_passphrase_source(environ={}))
    assert "No CA key passphrase" in str(err.value) and "STATION_CA_PASSPHRASE" in str(err.value)
    assert "keyring set provisioning-station ca" in str(err.value)

    (data / "ca" / "issuing.key").unlink()
    with pytest.raises(CAError) as err:
        StationCA.load(data, PASSPHRASE)
    assert "issuing.key is missing" in str(err.value)


def test_passphrase_from_keyring_then_prompt_only_on_a_terminal(monkeypatch, data):
    import keyring

    monkeypatch.setattr(keyring, "get_password",
                        lambda service, user: PASSPHRASE if (service, user) == ("provisioning-station", "ca") else None)
    source = ca_passphrase_source(environ={})
    StationCA.load(data, source)
    assert source.get().origin == "from the OS keyring (provisioning-station/ca)"

    monkeypatch.setattr(keyring, "get_password", lambda service, user: None)
    typed = []
    prompted = SecretSource("CA key passphrase", "STATION_CA_PASSPHRASE", "ca", environ={}, interactive=True,
                            prompt=lambda text: typed.append(text) or PASSPHRASE)
    StationCA.load(data, prompted)
    assert typed == ["CA key passphrase: "]
    mismatch = iter(["one passphrase", "another one"])
    with pytest.raises(SecretError, match="The two CA key passphrase entries differ"):
        SecretSource("CA key passphrase", None, None, interactive=True, prompt=lambda t: next(mismatch)).get(
            confirm=True)


def test_secrets_never_show_in_reprs_or_errors(data):
    secret = Secret(PASSPHRASE, "from STATION_CA_PASSPHRASE")
    assert PASSPHRASE not in repr(secret) and PASSPHRASE not in str(secret)
    source = SecretSource.fixed(PASSPHRASE)
    assert PASSPHRASE not in repr(source)
    ca = StationCA.load(data, source)
    assert PASSPHRASE not in repr(ca)
    with pytest.raises(TypeError):
        import pickle
        pickle.dumps(secret)


def test_new_passphrase_must_be_long_enough(tmp_path):
    short = run(tmp_path / "d", "init", env={"STATION_CA_PASSPHRASE": "1234"})
    assert short.exit_code != 0 and "shorter than 8 characters" in short.output
    assert not (tmp_path / "d" / "ca").exists()


def test_ephemeral_ca_works_without_a_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "home" / "share"))
    ca = StationCA.ephemeral()
    assert ca.is_ephemeral and ca.ca_dir is None
    key, cert = host_identity(ca, IdevidProfile(key_origin="host"), {"chip": "ESP32", "mac": "24:0a:c4:00:00:02"},
                              Ledger(":memory:"))
    for name, c in (("root.pem", ca.root), ("issuing.pem", ca.issuing), ("dev.pem", cert)):
        (tmp_path / name).write_bytes(c.public_bytes(serialization.Encoding.PEM))
    verify = openssl("verify", "-CAfile", "root.pem", "-untrusted", "issuing.pem", "dev.pem", cwd=tmp_path)
    assert verify.returncode == 0, verify.stderr
    assert "ephemeral" in ca.root.subject.rfc4514_string()
    assert not (tmp_path / "home").exists()  # nothing written anywhere


def _openssl_ca(folder: Path, passphrase: str | None) -> tuple[Path, Path]:
    """An outside PKI made with the openssl CLI: root (P-384) -> issuing (P-256), issuing key maybe encrypted."""
    folder.mkdir()
    steps = [
        ["ecparam", "-name", "secp384r1", "-genkey", "-noout", "-out", "root.key"],
        ["req", "-x509", "-new", "-key", "root.key", "-subj", "/O=Outside PKI/CN=Outside Root", "-days", "3650",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         "-out", "root.crt"],
        ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "issuing.key"]
        + (["-aes256", "-pass", f"pass:{passphrase}"] if passphrase else []),
        ["req", "-new", "-key", "issuing.key", "-subj", "/O=Outside PKI/CN=Outside Issuing"]
        + (["-passin", f"pass:{passphrase}"] if passphrase else []) + ["-out", "issuing.csr"],
    ]
    for args in steps:
        done = openssl(*args, cwd=folder)
        assert done.returncode == 0, done.stderr
    (folder / "ext.cnf").write_text("basicConstraints=critical,CA:TRUE,pathlen:0\n"
                                    "keyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n")
    done = openssl("x509", "-req", "-in", "issuing.csr", "-CA", "root.crt", "-CAkey", "root.key",
                   "-CAcreateserial", "-days", "3650", "-extfile", "ext.cnf", "-out", "issuing.crt", cwd=folder)
    assert done.returncode == 0, done.stderr
    (folder / "chain.pem").write_bytes((folder / "issuing.crt").read_bytes() + (folder / "root.crt").read_bytes())
    return folder / "chain.pem", folder / "issuing.key"


def test_import_an_outside_chain_with_an_encrypted_key(tmp_path):
    chain, key = _openssl_ca(tmp_path / "pki", "outside-secret")
    data = tmp_path / "data"
    env = {"STATION_CA_PASSPHRASE": PASSPHRASE, "OUTSIDE_KEY_PASS": "outside-secret"}
    done = run(data, "import", "--chain", str(chain), "--key", str(key), "--key-passphrase-env", "OUTSIDE_KEY_PASS",
               env=env)
    assert done.exit_code == 0, done.output
    assert "Outside Issuing" in done.output and "root.key" not in os.listdir(data / "ca")
    stored = (data / "ca" / "issuing.key").read_bytes()
    assert stored.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") and b"outside-secret" not in stored

    ca = StationCA.load(data, PASSPHRASE)  # now opened with the station passphrase
    _, cert = host_identity(ca, IdevidProfile(key_origin="host"), {"chip": "ESP32", "mac": "24:0a:c4:00:00:03"},
                            Ledger(tmp_path / "j.sqlite3"))
    (tmp_path / "dev.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    verify = openssl("verify", "-CAfile", str(tmp_path / "pki" / "root.crt"), "-untrusted",
                     str(tmp_path / "pki" / "issuing.crt"), str(tmp_path / "dev.pem"))
    assert verify.returncode == 0, verify.stderr
    shown = run(data, "show", env={})
    assert "root         O=Outside PKI, CN=Outside Root" in shown.output
    assert "not on this station" in shown.output  # the root's key stays with its owner


def test_import_refuses_a_wrong_key_a_broken_chain_and_a_non_ca(tmp_path):
    chain, key = _openssl_ca(tmp_path / "pki", None)
    other = tmp_path / "other.key"
    assert openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(other)).returncode == 0
    data = tmp_path / "data"

    wrong = run(data, "import", "--chain", str(chain), "--key", str(other))
    assert wrong.exit_code != 0 and f"The key in {other} does not match any certificate in {chain}" in wrong.output

    only_issuing = tmp_path / "issuing-only.pem"
    only_issuing.write_bytes((tmp_path / "pki" / "issuing.crt").read_bytes())
    broken = run(data, "import", "--chain", str(only_issuing), "--key", str(key))
    assert broken.exit_code != 0
    assert "stops at 'Outside Issuing'" in broken.output and "self-signed root" in broken.output

    leaf_key = ec.generate_private_key(ec.SECP256R1())
    root_key = serialization.load_pem_private_key((tmp_path / "pki" / "root.key").read_bytes(), None)
    root = x509.load_pem_x509_certificate((tmp_path / "pki" / "root.crt").read_bytes())
    now = datetime.datetime.now(datetime.timezone.utc)
    leaf = (x509.CertificateBuilder().subject_name(x509.Name.from_rfc4514_string("CN=a server"))
            .issuer_name(root.subject).public_key(leaf_key.public_key()).serial_number(7)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(root_key, hashes.SHA384()))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM)
                                        + root.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.key").write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM,
                                                               serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
    not_ca = run(data, "import", "--chain", str(tmp_path / "leaf.pem"), "--key", str(tmp_path / "leaf.key"))
    assert not_ca.exit_code != 0 and "'a server'" in not_ca.output and "is not a CA certificate" in not_ca.output
    assert not (data / "ca").exists()  # nothing half-written


def test_a_key_file_in_clear_is_refused(data):
    key = ec.generate_private_key(ec.SECP256R1())
    (data / "ca" / "issuing.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(CAError, match=re.escape("is not encrypted; the station never keeps a CA key in clear")):
        StationCA.load(data, PASSPHRASE)
