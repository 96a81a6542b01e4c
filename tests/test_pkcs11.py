"""The CA key on a PKCS#11 token (SoftHSM2, a real token in a temp dir): made there, never extractable,
certificates signed through it verify with openssl, and every token mistake is named before a board."""
import shutil
import subprocess
import uuid
from pathlib import Path

import click
import pkcs11
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, ObjectClass

from station.identity import SecretError, TokenError
from station.identity.ca import StationCA
from station.identity.cli import ca as ca_group
from station.identity.idevid import IdevidProfile, check_csr, host_identity, issue_idevid
from station.identity.keys import SecretSource, pkcs11_pin_source
from station.identity.ledger import Ledger
from station.identity.pkcs11 import SOFTHSM2_MODULE, Token

PIN = "8642-user"
SO_PIN = "97531-so"
SOFTHSM2_UTIL = shutil.which("softhsm2-util")
assert SOFTHSM2_UTIL and Path(SOFTHSM2_MODULE).exists(), \
    "SoftHSM2 is missing: apt-get install softhsm2 (packaging/setup-debian.sh installs it)"


@click.group()
@click.option("--data-dir")
@click.pass_context
def station(ctx, data_dir):
    ctx.obj = {"data_dir": data_dir}


station.add_command(ca_group)


@pytest.fixture
def token_label(tmp_path, monkeypatch) -> str:
    """A fresh SoftHSM2 token in this test's temp dir; SOFTHSM2_CONF points at it."""
    import keyring

    monkeypatch.setattr(keyring, "get_password", lambda service, user: None)
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    label = f"station-{uuid.uuid4().hex[:8]}"
    subprocess.run([SOFTHSM2_UTIL, "--init-token", "--free", "--label", label, "--pin", PIN, "--so-pin", SO_PIN],
                   check=True, capture_output=True)
    return label


def init_on_token(data: Path, label: str, pin: str = PIN):
    return CliRunner().invoke(station, ["--data-dir", str(data), "ca", "init", "--organization", "Token Factory",
                                        "--pkcs11-module", SOFTHSM2_MODULE, "--token-label", label],
                              env={"STATION_PKCS11_PIN": pin, "STATION_CA_PASSPHRASE": None})


def test_ca_on_token_signs_certificates_openssl_verifies(tmp_path, token_label):
    data = tmp_path / "data"
    done = init_on_token(data, token_label)
    assert done.exit_code == 0, done.output
    files = sorted(p.name for p in (data / "ca").iterdir())
    assert files == ["issuing.crt", "manifest.crt", "root.crt", "token.json"]  # no key files at all
    assert PIN not in (data / "ca" / "token.json").read_text()
    assert f"PKCS#11 token '{token_label}' ({SOFTHSM2_MODULE}), key 'station-issuing-" in done.output

    with StationCA.load(data, pin_source=SecretSource.fixed(PIN)) as ca:
        ledger = Ledger(tmp_path / "journal.sqlite3")
        _, host_cert = host_identity(ca, IdevidProfile(key_origin="host"),
                                     {"chip": "ESP32", "mac": "24:0a:c4:00:00:01"}, ledger)
        board_key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
               .sign(board_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
        facts = {"chip": "ESP32", "mac": "24:0a:c4:00:00:02"}
        board_cert = issue_idevid(ca, IdevidProfile(key_origin="board"),
                                  check_csr(csr, IdevidProfile(key_origin="board"), facts, ledger), facts, ledger)
        signer, chain = ca.manifest_signer()
        signature = signer.sign(b"record", ec.ECDSA(hashes.SHA256()))
        chain[0].public_key().verify(signature, b"record", ec.ECDSA(hashes.SHA256()))
        with pytest.raises(TokenError, match="non-extractable on the token"):
            signer.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    for name, cert in (("host.pem", host_cert), ("board.pem", board_cert)):
        (tmp_path / name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(data / "ca" / "root.crt"), "-untrusted",
                                 str(data / "ca" / "issuing.crt"), str(tmp_path / name)], capture_output=True,
                                text=True)
        assert verify.returncode == 0 and verify.stdout.strip().endswith(f"{name}: OK"), verify.stderr
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(data / "ca" / "root.crt"),
                             str(data / "ca" / "issuing.crt")], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr  # the root key (also on the token) signed the issuing CA

    shown = CliRunner().invoke(station, ["--data-dir", str(data), "ca", "show"])
    assert shown.output.count(f"key      PKCS#11 token '{token_label}'") == 3


def test_token_keys_are_sensitive_and_not_extractable(tmp_path, token_label):
    assert init_on_token(tmp_path / "data", token_label).exit_code == 0
    # looked at with python-pkcs11 directly, not through the station's wrapper
    lib = pkcs11.lib(SOFTHSM2_MODULE)
    with lib.get_token(token_label=token_label).open(user_pin=PIN) as session:
        keys = list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}))
        assert sorted(k.label.split("-")[1] for k in keys) == ["issuing", "manifest", "root"]
        for key in keys:
            assert key[Attribute.EXTRACTABLE] is False
            assert key[Attribute.SENSITIVE] is True
            assert key[Attribute.NEVER_EXTRACTABLE] is True
            with pytest.raises(pkcs11.exceptions.AttributeSensitive):
                key[Attribute.VALUE]


def test_missing_token_is_named_before_any_board(tmp_path, token_label):
    assert init_on_token(tmp_path / "data", token_label).exit_code == 0
    token_json = tmp_path / "data" / "ca" / "token.json"
    token_json.write_text(token_json.read_text().replace(token_label, "unplugged-token"))
    with pytest.raises(TokenError) as err:
        StationCA.load(tmp_path / "data", pin_source=SecretSource.fixed(PIN))
    assert str(err.value).startswith(f"No PKCS#11 token labelled 'unplugged-token' in {SOFTHSM2_MODULE} (tokens "
                                     f"present: '{token_label}')")
    assert "fix --token-label" in str(err.value)

    refused = init_on_token(tmp_path / "other", "no-such-token")
    assert refused.exit_code != 0 and "No PKCS#11 token labelled 'no-such-token'" in refused.output
    assert not (tmp_path / "other" / "ca").exists()


def test_wrong_pin_is_named_with_its_source(tmp_path, token_label):
    assert init_on_token(tmp_path / "data", token_label).exit_code == 0
    with pytest.raises(SecretError) as err:
        StationCA.load(tmp_path / "data", pin_source=pkcs11_pin_source(environ={"STATION_PKCS11_PIN": "0000"}))
    assert str(err.value).startswith(f"The PKCS#11 PIN for token '{token_label}' is wrong (from STATION_PKCS11_PIN)")
    assert "0000" not in str(err.value).replace(token_label, "")  # the random label may hold those digits

    refused = init_on_token(tmp_path / "other", token_label, pin="1111")
    assert refused.exit_code != 0 and "PIN for token" in refused.output and "is wrong" in refused.output

    with StationCA.load(tmp_path / "data", pin_source=SecretSource.fixed(PIN)):
        with pytest.raises(SecretError, match="is wrong"):  # logged in already: a second, wrong PIN still fails
            StationCA.load(tmp_path / "data", pin_source=SecretSource.fixed("2222"))


def test_missing_module_and_missing_pin(tmp_path, token_label):
    with pytest.raises(TokenError, match="PKCS#11 module /nonexistent/libpkcs11.so not found"):
        Token("/nonexistent/libpkcs11.so", token_label, SecretSource.fixed(PIN))
    with pytest.raises(SecretError, match="No PKCS#11 user PIN: looked in environment variable STATION_PKCS11_PIN"):
        Token(SOFTHSM2_MODULE, token_label, pkcs11_pin_source(environ={}, interactive=False))
    half = CliRunner().invoke(station, ["--data-dir", str(tmp_path), "ca", "init", "--token-label", token_label])
    assert half.exit_code != 0 and "needs both --pkcs11-module and --token-label" in half.output
