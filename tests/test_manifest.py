"""Signed manifests: each record a JWS chained to the one before, a signed head; tampering is named."""
from __future__ import annotations

import base64
import hashlib
import io
import json
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from station.manifest_sign import (HEAD_TYP, RECORD_TYP, b64url, b64url_decode, canonical_json, sign_manifest,
                                   verify_command, verify_manifest)

NOW = datetime.now(timezone.utc)


def _cert(subject, key, issuer=None, issuer_key=None, *, ca, usage):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name = issuer.subject if issuer else name
    signing_key = issuer_key or key
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=365))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca and issuer else None), critical=True)
               .add_extension(usage, critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    algorithm = hashes.SHA384() if isinstance(signing_key.curve, ec.SECP384R1) else hashes.SHA256()
    return builder.sign(signing_key, algorithm)


CA_USAGE = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                         encipher_only=False, decipher_only=False)


def _usage(digital_signature):
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=not digital_signature, key_cert_sign=False,
                         crl_sign=False, encipher_only=False, decipher_only=False)


def make_pki(name="Test"):
    """root (P-384) -> issuing CA (P-256) -> manifest signer (P-256, keyUsage digitalSignature)."""
    root_key, issuing_key, signer_key = (ec.generate_private_key(ec.SECP384R1()),
                                         ec.generate_private_key(ec.SECP256R1()),
                                         ec.generate_private_key(ec.SECP256R1()))
    root = _cert(f"{name} Root", root_key, ca=True, usage=CA_USAGE)
    issuing = _cert(f"{name} Issuing CA", issuing_key, root, root_key, ca=True, usage=CA_USAGE)
    signer = _cert(f"{name} Manifest Signer", signer_key, issuing, issuing_key, ca=False, usage=_usage(True))
    return {"root": root, "issuing": issuing, "issuing_key": issuing_key, "signer": signer, "key": signer_key}


@pytest.fixture(scope="module")
def pki():
    return make_pki()


def records(n=6, batch="20250101-120000-abc123"):
    return [{"device_id": f"dev{i:02d}" + "0" * 27, "batch_id": batch, "station_id": "st-1", "port": f"1-1.{i}",
             "chip": "ESP32-C3", "mac": f"24:0a:c4:00:00:{i:02x}", "result": "pass",
             "images": [{"name": "app", "offset": 0x10000, "size": 1234, "sha256": "ab" * 32}],
             "identity": {"serial": f"SN{i:04d}", "key_origin": "device-generated",
                          "public_key": {"kty": "EC", "crv": "P-256", "x": "xx", "y": "yy"}}}
            for i in range(1, n + 1)]


def signed(pki, recs=None, **kw) -> list[str]:
    out = io.StringIO()
    recs = records() if recs is None else recs
    count = sign_manifest(recs, pki["key"], [pki["signer"], pki["issuing"], pki["root"]], out,
                          station_id="st-1", **kw)
    assert count == len(recs)
    return out.getvalue().splitlines(keepends=True)


def verify(lines, pki):
    return verify_manifest(lines, [pki["root"]])  # only the root: x5c carries the issuing CA


def decode(line):
    jws = json.loads(line)
    return jws, json.loads(b64url_decode(jws["protected"])), json.loads(b64url_decode(jws["payload"]))


def only(report, kind):
    assert not report.ok
    assert [f.kind for f in report.findings] == [kind], report.problems
    return report.findings[0].message


def test_signed_manifest_verifies_with_only_the_root(pki):
    lines = signed(pki)
    assert len(lines) == 7
    report = verify(lines, pki)
    assert report.ok, report.problems
    assert report.records == 6 and report.problems == []
    assert report.heads[0]["records"] == 6 and report.heads[0]["batch_ids"] == ["20250101-120000-abc123"]
    assert report.heads[0]["station_id"] == "st-1" and report.heads[0]["ephemeral_ca"] is False
    assert "Test Manifest Signer" in report.signers[0]
    assert "OK, 6 records" in report.text()


def test_line_format_header_chain_and_raw_es256_signature(pki):
    lines = signed(pki)
    prev = bytes(32)
    signer_der = pki["signer"].public_bytes(serialization.Encoding.DER)
    for seq, line in enumerate(lines, 1):
        jws, header, payload = decode(line)
        assert list(jws) == ["protected", "payload", "signature"]
        assert header["alg"] == "ES256" and header["seq"] == seq and b64url_decode(header["prev"]) == prev
        assert header["typ"] == (HEAD_TYP if seq == 7 else RECORD_TYP)
        assert header["kid"] == b64url(pki["signer"].extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier).value.digest)
        assert header["x5t#S256"] == b64url(hashlib.sha256(signer_der).digest())
        # x5c: standard base64 DER of signer and issuing CA; the root the verifier holds is not carried
        assert [base64.b64decode(c) for c in header["x5c"]] == [
            signer_der, pki["issuing"].public_bytes(serialization.Encoding.DER)]
        # RFC 7518 §3.4: 64 raw bytes r||s over ASCII(protected "." payload), checked here without the module
        raw = b64url_decode(jws["signature"])
        assert len(raw) == 64
        pki["signer"].public_key().verify(
            encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")),
            f"{jws['protected']}.{jws['payload']}".encode(), ec.ECDSA(hashes.SHA256()))
        assert b64url_decode(jws["payload"]) == canonical_json(payload)
        prev = hashlib.sha256(line.rstrip("\n").encode()).digest()
    assert payload["records"] == 6 and b64url_decode(payload["last"]) == b64url_decode(header["prev"])
    assert payload["created"].endswith("Z")


def test_an_edited_record_is_named(pki):
    lines = signed(pki)
    jws, _, payload = decode(lines[2])
    payload["result"] = "fail"
    jws["payload"] = b64url(canonical_json(payload))  # re-encoded, not re-signed
    lines[2] = json.dumps(jws, separators=(",", ":")) + "\n"
    message = only(verify(lines, pki), "edited")
    assert message.startswith("line 3 (seq 3, device_id dev03") and "mac 24:0a:c4:00:00:03" in message
    assert "edited" in message


def test_a_removed_record_is_named(pki):
    lines = signed(pki)
    del lines[3]
    report = verify(lines, pki)
    assert only(report, "removed") == "record seq 4 is missing between line 3 (seq 3) and line 4 (seq 5): removed"
    assert report.findings[0].seq == 4


def test_swapped_records_are_named_as_reordered_not_removed(pki):
    lines = signed(pki)
    lines[1], lines[2] = lines[2], lines[1]
    message = only(verify(lines, pki), "reordered")
    assert message.startswith("lines 2 and 3 are swapped")
    assert "line 2 (seq 3, device_id dev03" in message and "line 3 (seq 2, device_id dev02" in message


def test_a_moved_record_is_named_as_reordered(pki):
    lines = signed(pki)
    lines.insert(4, lines.pop(1))  # seq 2 moved after seq 5
    message = only(verify(lines, pki), "reordered")
    assert message.startswith("line 5 (seq 2, device_id dev02") and "belongs after line 1 (seq 1" in message


def test_truncation_without_the_head_is_detected(pki):
    lines = signed(pki)[:4]  # the last 2 records and the head are gone
    message = only(verify(lines, pki), "truncated")
    assert "no batch head after line 4 (seq 4" in message and "last records may have been removed" in message


def test_truncation_under_the_head_names_how_many_records_went(pki):
    lines = signed(pki)
    del lines[4:6]
    message = only(verify(lines, pki), "removed")
    assert message.startswith("the last 2 records (seq 5-6) are missing after line 4 (seq 4")
    assert "head at line 5 says 6 records" in message


def test_an_edited_head_is_detected(pki):
    lines = signed(pki)
    jws, _, payload = decode(lines[-1])
    payload["records"] = 4
    jws["payload"] = b64url(canonical_json(payload))
    lines[-1] = json.dumps(jws, separators=(",", ":")) + "\n"
    message = only(verify(lines, pki), "head")
    assert message.startswith("the batch head at line 7") and "last records may have been removed" in message


def test_a_reformatted_line_breaks_the_chain(pki):
    lines = signed(pki)
    lines[1] = json.dumps(json.loads(lines[1])) + "\n"  # same JWS, signature still holds, bytes differ
    message = only(verify(lines, pki), "chain")
    assert message.startswith("line 3 (seq 3") and "does not chain to line 2 (seq 2)" in message


def test_a_record_from_another_root_is_rejected(pki):
    rogue = make_pki("Rogue")
    lines = signed(pki)
    forged = records()
    forged[2]["result"] = "pass-forged"
    lines[2] = signed(rogue, forged)[2]
    report = verify(lines, pki)
    assert [f.kind for f in report.findings] == ["untrusted"], report.problems
    assert report.problems[0].startswith("line 3 (seq 3, device_id dev03") and "Rogue Manifest Signer" in \
        report.problems[0]
    whole = verify(signed(rogue), pki)
    assert not whole.ok and whole.problems[0].startswith("lines 1-7: signed by CN=Rogue Manifest Signer, whose")


@pytest.mark.parametrize("field, value, named", [
    ("psk", "hunter2hunter2", "psk"),
    ("identity", {"wifi": {"Passphrase": "x"}}, "identity.wifi.Passphrase"),
    ("steps", [{"detail": "ok"}, {"detail": "-----BEGIN EC PRIVATE KEY-----\nMHc...\n-----END EC PRIVATE KEY-----"}],
     "steps[1].detail: a PEM PRIVATE KEY block"),
    ("identity", {"public_key": {"kty": "EC", "crv": "P-256", "x": "a", "y": "b", "d": "c"}},
     "identity.public_key.d: a private JWK member"),
])
def test_secret_material_is_refused_at_signing(pki, field, value, named):
    recs = records(3)
    recs[1][field] = value
    out = io.StringIO()
    with pytest.raises(ValueError) as caught:
        sign_manifest(recs, pki["key"], [pki["signer"], pki["issuing"]], out, station_id="st-1")
    assert "record 2 (device_id dev02" in str(caught.value) and named in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert HEAD_TYP not in "".join(decode(ln)[1]["typ"] for ln in out.getvalue().splitlines())  # never verifies


def test_x5c_carries_the_issuing_ca_so_the_root_alone_suffices(pki):
    out = io.StringIO()
    sign_manifest(records(2), pki["key"], [pki["signer"]], out, station_id="st-1")  # issuing CA left out
    lines = out.getvalue().splitlines()
    report = verify(lines, pki)
    assert [f.kind for f in report.findings] == ["untrusted"] and "lines 1-3" in report.problems[0]
    assert verify_manifest(lines, [pki["root"], pki["issuing"]]).ok


def test_signer_without_digital_signature_or_with_another_key_is_refused(pki):
    no_sign = _cert("Not a signer", pki["key"], pki["issuing"], pki["issuing_key"], ca=False, usage=_usage(False))
    with pytest.raises(ValueError, match="lacks keyUsage digitalSignature"):
        sign_manifest(records(1), pki["key"], [no_sign, pki["issuing"]], io.StringIO(), station_id="st-1")
    with pytest.raises(ValueError, match="does not belong to the signer certificate"):
        sign_manifest(records(1), ec.generate_private_key(ec.SECP256R1()), [pki["signer"], pki["issuing"]],
                      io.StringIO(), station_id="st-1")
    with pytest.raises(ValueError, match="out of order"):
        sign_manifest(records(1), pki["key"], [pki["signer"], pki["root"]], io.StringIO(), station_id="st-1")


def test_concatenated_manifests_crlf_and_ephemeral_ca(pki):
    first = signed(pki, records(2, "batch-a"))
    second = signed(pki, records(3, "batch-b"), ephemeral_ca=True)
    report = verify([ln.replace("\n", "\r\n") for ln in first + second], pki)
    assert report.ok, report.problems
    assert report.records == 5 and [h["batch_ids"] for h in report.heads] == [["batch-a"], ["batch-b"]]
    assert len(report.warnings) == 1 and "ephemeral" in report.warnings[0]


def test_an_empty_batch_signs_a_head_alone(pki):
    lines = signed(pki, [])
    assert len(lines) == 1 and verify(lines, pki).ok
    assert not verify_manifest([], [pki["root"]]).ok


def test_verify_command_reports_and_exits_1_on_problems(pki, tmp_path):
    root = tmp_path / "root.crt"
    root.write_bytes(pki["root"].public_bytes(serialization.Encoding.PEM))
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    lines = signed(pki)
    good.write_text("".join(lines))
    bad.write_text("".join(lines[:3] + lines[4:]))
    runner = CliRunner()
    result = runner.invoke(verify_command, [str(good), "--root", str(root)])
    assert result.exit_code == 0 and "OK, 6 records" in result.output
    result = runner.invoke(verify_command, [str(bad), "--root", str(root)])
    assert result.exit_code == 1 and "record seq 4 is missing between line 3 (seq 3) and line 4" in result.output
    result = runner.invoke(verify_command, [str(good)])
    assert result.exit_code == 2 and "--root" in result.output


def test_duplicated_appended_and_moved_head_are_named(pki):
    lines = signed(pki)
    lines.insert(3, lines[2])
    message = only(verify(lines, pki), "duplicated")
    assert message.startswith("line 4 (seq 3, device_id dev03") and "repeats line 3" in message

    lines = signed(pki) + [signed(pki, records(7))[6]]  # seq 7 from a longer signing run, after the head
    message = only(verify(lines, pki), "appended")
    assert message.startswith("line 8 (seq 7, device_id dev07") and "beyond the 6 records" in message

    lines = signed(pki)
    lines.insert(3, lines.pop())
    message = only(verify(lines, pki), "reordered")
    assert message == ("the batch head at line 4 is not the last line of its manifest: it belongs after line 7: "
                       "reordered")


def test_the_verifier_rejects_a_signer_without_digital_signature(pki, monkeypatch):
    import station.manifest_sign as manifest_sign
    no_sign = _cert("Not a signer", pki["key"], pki["issuing"], pki["issuing_key"], ca=False, usage=_usage(False))
    monkeypatch.setattr(manifest_sign, "_check_signer", lambda *_: None)  # a signer that skipped the sign-time check
    out = io.StringIO()
    sign_manifest(records(2), pki["key"], [no_sign, pki["issuing"]], out, station_id="st-1")
    message = only(verify(out.getvalue().splitlines(), pki), "untrusted")
    assert message.startswith("lines 1-3: signed by CN=Not a signer") and "lacks keyUsage digitalSignature" in message


def test_removing_only_the_last_record_is_named(pki):
    lines = signed(pki)
    del lines[5]
    message = only(verify(lines, pki), "removed")
    assert message.startswith("the last record (seq 6) is missing after line 5 (seq 5, device_id dev05")


class TokenLikeKey(ec.EllipticCurvePrivateKey):
    """Like a PKCS#11 key: it signs, and refuses to give up its private value."""

    def __init__(self, key):
        self._key = key

    curve = property(lambda self: self._key.curve)
    key_size = property(lambda self: self._key.key_size)

    def public_key(self):
        return self._key.public_key()

    def sign(self, data, signature_algorithm):
        return self._key.sign(data, signature_algorithm)

    def exchange(self, algorithm, peer_public_key):
        raise NotImplementedError("the token does not do ECDH")

    def private_numbers(self):
        raise NotImplementedError("the token never exports a private key")

    def private_bytes(self, encoding, format, encryption_algorithm):
        raise NotImplementedError("the token never exports a private key")

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


def test_a_key_that_cannot_be_exported_signs(pki):
    out = io.StringIO()
    sign_manifest(records(2), TokenLikeKey(pki["key"]), [pki["signer"], pki["issuing"]], out, station_id="st-1")
    assert verify(out.getvalue().splitlines(), pki).ok
