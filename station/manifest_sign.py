"""Signed, hash-chained manifests: one JWS per device record, then a signed batch head.

The file is JSON lines. Each line is a JWS (RFC 7515) in Flattened JSON Serialization, signed ES256
(RFC 7518: the signature is the raw 64-byte r||s, not DER):

    {"protected": B64URL(header), "payload": B64URL(canonical JSON of the record), "signature": B64URL(r||s)}

    header = {"alg": "ES256", "typ": "station-record+jws",
              "kid": B64URL(SKI of the signer cert), "x5t#S256": B64URL(SHA-256 of the signer cert DER),
              "x5c": [signer cert, issuing CA cert, ...] (standard base64 DER, RFC 7515 §4.1.6),
              "seq": N (1 for the first record), "prev": B64URL(SHA-256 of the previous line)}

"prev" of the first line is B64URL(32 zero bytes). A line's hash covers its exact bytes without the line
terminator (LF or CRLF), so each line is signed and chained to the one before it. After the records comes one
*batch head* line, signed the same way with typ "station-head+jws", seq = records + 1 and prev = the hash of the
last record line, whose payload is

    {"records": count, "last": B64URL(hash of the last record line), "batch_ids": [...],
     "station_id": ..., "created": RFC 3339 UTC, "ephemeral_ca": bool}

The head is the commit marker: a file cut short (or a signing run that stopped half-way) has no head, and a
head whose count exceeds the records present names the records removed from the end. Signed manifests can be
concatenated; each head closes the records before it.

Manifests carry public material only: `sign_manifest` refuses a record with a key named like a private key,
PSK, passphrase, password or secret, a PEM "PRIVATE KEY" block in any value, or a private JWK.

Signing only calls `private_key.sign()` and `.public_key()`, so a CA key held on a PKCS#11 token (a
cryptography `EllipticCurvePrivateKey` wrapper that cannot export its private numbers) signs manifests too.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, TextIO

import click
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.x509.verification import (Criticality, ExtensionPolicy, PolicyBuilder, Store,
                                            VerificationError)

from station.manifest import rfc3339

RECORD_TYP = "station-record+jws"
HEAD_TYP = "station-head+jws"
ALG = "ES256"
GENESIS = bytes(32)  # "prev" of the first record

# --- encoding ---------------------------------------------------------------------------------------------

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url without padding (RFC 7515 §2); ValueError otherwise."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the same record always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def line_hash(line: str) -> bytes:
    """SHA-256 of a manifest line's exact bytes, without its line terminator."""
    return hashlib.sha256(line.rstrip("\r\n").encode("utf-8")).digest()


def key_id(cert: x509.Certificate) -> str:
    """The "kid": base64url of the certificate's subject key identifier (computed when the cert has none)."""
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        ski = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    return b64url(ski)


def thumbprint(cert: x509.Certificate) -> str:
    """The "x5t#S256": base64url of SHA-256 over the certificate DER."""
    return b64url(cert.fingerprint(hashes.SHA256()))


# --- secrets never reach a manifest -----------------------------------------------------------------------

_SECRET_KEY_WORDS = ("privatekey", "privkey", "psk", "passphrase", "password", "passwd", "pswd", "secret")
_PEM_PRIVATE = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_JWK_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")


def find_secrets(obj: Any, path: str = "") -> list[str]:
    """Where `obj` holds something that looks like secret material, as "field: why" strings."""
    found: list[str] = []
    if isinstance(obj, dict):
        if "kty" in obj:  # a JWK: public members only
            found += [f"{path}.{m}: a private JWK member" if path else f"{m}: a private JWK member"
                      for m in _JWK_PRIVATE_MEMBERS if m in obj]
        for key, value in obj.items():
            here = f"{path}.{key}" if path else str(key)
            word = re.sub(r"[^a-z0-9]", "", str(key).lower())
            if any(w in word for w in _SECRET_KEY_WORDS):
                found.append(f"{here}: a field named like a private key, PSK, passphrase, password or secret")
            found += find_secrets(value, here)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            found += find_secrets(value, f"{path}[{i}]")
    elif isinstance(obj, str) and _PEM_PRIVATE.search(obj):
        found.append(f"{path or '(value)'}: a PEM PRIVATE KEY block")
    return found


def _record_name(index: int, record: Any) -> str:
    if isinstance(record, dict):
        ids = ", ".join(f"{k} {record[k]}" for k in ("device_id", "mac") if record.get(k))
        if ids:
            return f"record {index} ({ids})"
    return f"record {index}"


# --- signing ----------------------------------------------------------------------------------------------

def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def _check_signer(private_key: Any, chain: list[x509.Certificate]) -> None:
    if not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"the manifest signing key is a {type(private_key).__name__}; ES256 needs an EC P-256 "
                         f"private key (a cryptography EllipticCurvePrivateKey, or a PKCS#11 wrapper of one)")
    if not chain:
        raise ValueError("the signer chain is empty; pass [signer cert, issuing CA cert, ...]")
    signer = chain[0]
    public = signer.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(public.curve, ec.SECP256R1):
        raise ValueError(f"the signer certificate {signer.subject.rfc4514_string()} has no P-256 key; ES256 "
                         f"needs a P-256 manifest signer: issue one")
    pem = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if private_key.public_key().public_bytes(*pem) != public.public_bytes(*pem):
        raise ValueError(f"the signing key does not belong to the signer certificate "
                         f"{signer.subject.rfc4514_string()}; pass that certificate's own key (chain[0] must be "
                         f"the signer)")
    try:
        usage = signer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is None or not usage.digital_signature:
        raise ValueError(f"the signer certificate {signer.subject.rfc4514_string()} lacks keyUsage "
                         f"digitalSignature; issue the manifest signer with it")
    now = datetime.now(timezone.utc)
    for cert in chain:
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise ValueError(f"the certificate {cert.subject.rfc4514_string()} is not valid now (valid "
                             f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}); "
                             f"renew it before signing")
    for child, parent in zip(chain, chain[1:]):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise ValueError(f"the signer chain is out of order: {child.subject.rfc4514_string()} was not issued "
                             f"by {parent.subject.rfc4514_string()}; pass [signer, issuing CA, ..., root]") from None


class _Signer:
    def __init__(self, private_key: ec.EllipticCurvePrivateKey, chain: list[x509.Certificate]):
        _check_signer(private_key, chain)
        self.key = private_key
        # the root is what the verifier holds; x5c carries the rest (RFC 7515 §4.1.6: standard base64 DER)
        carried = [c for c in chain if not _is_self_signed(c)] or chain[:1]
        self.fixed = {"alg": ALG, "kid": key_id(chain[0]), "x5t#S256": thumbprint(chain[0]),
                      "x5c": [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in carried]}

    def line(self, typ: str, seq: int, prev: bytes, payload: bytes) -> str:
        protected = b64url(canonical_json({**self.fixed, "typ": typ, "seq": seq, "prev": b64url(prev)}))
        body = b64url(payload)
        r, s = decode_dss_signature(self.key.sign(f"{protected}.{body}".encode("ascii"), ec.ECDSA(hashes.SHA256())))
        signature = b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        return json.dumps({"protected": protected, "payload": body, "signature": signature}, separators=(",", ":"))


def sign_manifest(records: Iterable[dict], private_key: ec.EllipticCurvePrivateKey, chain: list[x509.Certificate],
                  out: TextIO, *, station_id: str, ephemeral_ca: bool = False) -> int:
    """Write `records` as signed, chained JSON lines followed by the signed batch head; return the record count.

    chain[0] is the manifest signer certificate (P-256, keyUsage digitalSignature, matching `private_key`),
    then its issuing CA; the root may end the list or be left out (it is not written: the verifier holds it).
    Raises ValueError, naming the record and field, when a record carries secret material. Lines are written
    as they are signed: after an error the output has no head and will not verify; discard it.
    """
    signer = _Signer(private_key, chain)
    prev, count, batch_ids = GENESIS, 0, []
    for record in records:
        where = _record_name(count + 1, record)
        if not isinstance(record, dict):
            raise ValueError(f"{where} is a {type(record).__name__}, not a dict; pass device records as dicts")
        secrets = find_secrets(record)
        if secrets:
            raise ValueError(f"{where} carries secret material, refused: {'; '.join(secrets)}. Manifests carry "
                             f"public material only; drop the field from the record before signing")
        try:
            payload = canonical_json(record)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where} cannot be written as JSON ({exc}); convert the value to a string, number, "
                             f"list or dict first") from None
        count += 1
        line = signer.line(RECORD_TYP, count, prev, payload)
        out.write(line + "\n")
        prev = line_hash(line)
        batch = record.get("batch_id")
        if batch and batch not in batch_ids:
            batch_ids.append(batch)
    head = {"records": count, "last": b64url(prev), "batch_ids": batch_ids, "station_id": station_id,
            "created": rfc3339(time.time()), "ephemeral_ca": bool(ephemeral_ca)}
    out.write(signer.line(HEAD_TYP, count + 1, prev, canonical_json(head)) + "\n")
    return count


# --- verification -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Finding:
    """One problem. `kind`: edited (signature fails or line damaged), removed, reordered, duplicated, appended
    (after/beyond the head), chain (signed line whose bytes or manifest differ from what the next line chains
    to), untrusted (signer not under a trusted root), truncated (no head), head (bad head), secret.
    `message` names the line(s), seq, and device_id/mac when the payload is readable."""

    kind: str
    message: str
    line: int | None = None
    seq: int | None = None

    def __str__(self) -> str:
        return self.message


@dataclass
class VerifyReport:
    records: int = 0  # record lines read (whether or not they verified)
    findings: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    heads: list[dict] = field(default_factory=list)  # payloads of the batch heads that verified
    signers: list[str] = field(default_factory=list)  # subjects of the trusted signer certificates

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def problems(self) -> list[str]:
        return [f.message for f in self.findings]

    def text(self, name: str = "manifest") -> str:
        if self.ok:
            heads = "; ".join(f"batch {', '.join(h['batch_ids']) or '(none)'} from station {h['station_id']}, "
                              f"signed {h['created']}" for h in self.heads)
            lines = [f"{name}: OK, {self.records} records, every signature and link verified; "
                     f"signed by {', '.join(self.signers) or '(nobody)'}; {heads}"]
        else:
            lines = [f"{name}: {len(self.findings)} problem{'s' if len(self.findings) != 1 else ''} "
                     f"in {self.records} records"] + [f"  - {f.message}" for f in self.findings]
        return "\n".join(lines + [f"  warning: {w}" for w in self.warnings])


@dataclass
class _Line:
    lineno: int
    digest: bytes
    typ: str | None = None
    seq: int | None = None
    prev: bytes | None = None
    payload: Any = None
    chain: tuple[str, ...] | None = None
    bad: str | None = None  # why the line cannot be trusted: its signature or header failed
    untrusted: bool = False  # the signature holds, but its signer does not chain to a trusted root

    @property
    def trusted(self) -> bool:
        return self.bad is None and not self.untrusted

    def where(self) -> str:
        parts = [f"seq {self.seq}"] if self.seq is not None else []
        if isinstance(self.payload, dict):
            parts += [f"{k} {self.payload[k]}" for k in ("device_id", "mac") if self.payload.get(k)]
        return f"line {self.lineno}" + (f" ({', '.join(parts)})" if parts else "")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError(f"duplicate member {sorted(k for k in keys if keys.count(k) > 1)[0]!r}")
    return dict(pairs)


def _strict_json(data: bytes | str) -> Any:
    return json.loads(data, object_pairs_hook=_no_duplicate_keys)


class _Signers:
    """x5c chains seen in the file: parsed once, checked against the trusted roots once."""

    def __init__(self) -> None:
        self.parsed: dict[tuple[str, ...], tuple[list[x509.Certificate], str, str] | str] = {}

    def get(self, x5c: tuple[str, ...]) -> tuple[list[x509.Certificate], str, str] | str:
        if x5c not in self.parsed:
            try:
                certs = [x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in x5c]
                self.parsed[x5c] = (certs, key_id(certs[0]), thumbprint(certs[0]))
            except (ValueError, TypeError, binascii.Error) as exc:
                self.parsed[x5c] = f"its x5c certificates do not parse ({exc})"
        return self.parsed[x5c]


def _parse(lineno: int, text: str, signers: _Signers) -> _Line:
    line = _Line(lineno, line_hash(text))
    try:
        jws = _strict_json(text)
        if not isinstance(jws, dict) or set(jws) - {"protected", "header", "payload", "signature"} \
                or not all(isinstance(jws.get(k), str) for k in ("protected", "payload", "signature")):
            raise ValueError("not a flattened JWS (protected, payload, signature)")
        header = _strict_json(b64url_decode(jws["protected"]))
        if not isinstance(header, dict):
            raise ValueError("the protected header is not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        line.bad = f"not a signed manifest line ({exc})"
        return line
    if isinstance(header.get("seq"), int) and not isinstance(header.get("seq"), bool):
        line.seq = header["seq"]
    line.typ = header.get("typ")
    try:
        line.payload = _strict_json(b64url_decode(jws["payload"]))
    except (ValueError, UnicodeDecodeError):
        line.payload = None
    x5c = header.get("x5c")
    if not isinstance(x5c, list) or not x5c or not all(isinstance(c, str) for c in x5c):
        line.bad = "no x5c signer certificate chain in its header, so its signature cannot be checked"
        return line
    parsed = signers.get(tuple(x5c))
    if isinstance(parsed, str):
        line.bad = parsed
        return line
    certs, kid, x5t = parsed
    line.chain = tuple(x5c)
    public = certs[0].public_key()
    try:
        raw = b64url_decode(jws["signature"])
        if len(raw) != 64:
            raise ValueError(f"an ES256 signature is 64 bytes (r||s), this one is {len(raw)}")
        if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(public.curve, ec.SECP256R1):
            raise ValueError("the x5c signer certificate has no P-256 key")
        signature = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        public.verify(signature, f"{jws['protected']}.{jws['payload']}".encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except (ValueError, UnicodeEncodeError, InvalidSignature) as exc:
        line.bad = "its signature does not verify" + (f" ({exc})" if str(exc) else "")
        return line
    # the signature holds: the header is as the x5c signer wrote it
    wrong = []
    if header.get("alg") != ALG:
        wrong.append(f"alg {header.get('alg')!r} (only {ALG} is accepted)")
    if "crit" in header:
        wrong.append(f"crit {header['crit']!r} (no critical extensions are understood)")
    if header.get("kid") != kid:
        wrong.append("kid does not match the SKI of the x5c signer certificate")
    if header.get("x5t#S256") != x5t:
        wrong.append("x5t#S256 does not match the x5c signer certificate")
    if line.typ not in (RECORD_TYP, HEAD_TYP):
        wrong.append(f"typ {line.typ!r} (expected {RECORD_TYP} or {HEAD_TYP})")
    if line.seq is None or line.seq < 1:
        wrong.append("no positive integer seq")
    try:
        line.prev = b64url_decode(header.get("prev"))
        if len(line.prev) != 32:
            raise ValueError
    except ValueError:
        line.prev = None
        wrong.append("prev is not a base64url SHA-256 hash")
    if not isinstance(line.payload, dict):
        wrong.append("the payload is not a JSON object")
    if wrong:
        line.bad = "its header is not a station manifest header: " + "; ".join(wrong)
    return line


def _chain_problem(certs: list[x509.Certificate], store: Store, at: datetime) -> str | None:
    def digital_signature(_policy, _cert, usage: x509.KeyUsage) -> None:
        if not usage.digital_signature:
            raise ValueError("the signer certificate lacks keyUsage digitalSignature")

    def not_a_ca(_policy, _cert, constraints: x509.BasicConstraints | None) -> None:
        if constraints is not None and constraints.ca:
            raise ValueError("the signer certificate is a CA certificate")

    # Not a TLS leaf: no EKU or SAN required of the signer, but it must be allowed to sign. The CAs above it
    # get the standard (RFC 5280 / CA/B) checks, bar the EKU-on-CA rule that only makes sense for TLS.
    ee = (ExtensionPolicy.permit_all()
          .require_present(x509.KeyUsage, Criticality.AGNOSTIC, digital_signature)
          .may_be_present(x509.BasicConstraints, Criticality.AGNOSTIC, not_a_ca))
    ca = ExtensionPolicy.webpki_defaults_ca().may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, None)
    verifier = PolicyBuilder().store(store).time(at).extension_policies(ca_policy=ca, ee_policy=ee) \
        .build_client_verifier()
    try:
        verifier.verify(certs[0], certs[1:])
    except VerificationError as exc:
        top = certs[-1]
        return (f"its chain ends at {top.subject.rfc4514_string()}, issued by {top.issuer.rfc4514_string()}; "
                f"the verifier says: {exc}")
    return None


def _ranges(numbers: list[int]) -> str:
    numbers, spans = sorted(numbers), []
    for n in numbers:
        if spans and spans[-1][1] == n - 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _longest_increasing(values: list[int]) -> set[int]:
    """Indices of one longest strictly increasing subsequence of `values`."""
    tails: list[int] = []  # tails[k] = index of the smallest tail of an increasing run of length k+1
    tail_values: list[int] = []
    parent = [-1] * len(values)
    for i, v in enumerate(values):
        k = bisect_left(tail_values, v)
        parent[i] = tails[k - 1] if k else -1
        if k == len(tails):
            tails.append(i)
            tail_values.append(v)
        else:
            tails[k], tail_values[k] = i, v
    keep, i = set(), tails[-1] if tails else -1
    while i != -1:
        keep.add(i)
        i = parent[i]
    return keep


def _check_segment(lines: list[_Line], head: _Line | None, report: VerifyReport) -> None:
    """Order, gaps and links of the record lines of one manifest, closed by its head (or by none)."""
    add = report.findings.append
    records = [ln for ln in lines if ln.typ == RECORD_TYP and ln.seq is not None]
    by_seq: dict[int, list[_Line]] = defaultdict(list)
    for ln in records:
        by_seq[ln.seq].append(ln)

    # duplicates: keep the copy the chain points to
    first: dict[int, _Line] = {}
    for seq, copies in sorted(by_seq.items()):
        chosen = copies[0]
        if len(copies) > 1:
            after = by_seq.get(seq + 1, [head] if head and head.seq == seq + 1 else [])
            linked = [c for c in copies if any(a is not None and a.prev == c.digest for a in after)]
            chosen = linked[0] if linked else copies[0]
            for other in copies:
                if other is chosen:
                    continue
                same = other.digest == chosen.digest
                add(Finding("duplicated", f"{other.where()} {'repeats' if same else 'has the same seq as'} "
                            f"line {chosen.lineno}: a duplicated record"
                            + ("" if same else " (one of the two comes from another manifest)"),
                            other.lineno, seq))
        first[seq] = chosen

    # how many records the head says there are
    count = max(first, default=0)
    if head is not None and head.trusted:
        count = head.payload.get("records") if isinstance(head.payload.get("records"), int) else count
        for seq in sorted(s for s in first if s > count):
            add(Finding("appended", f"{first[seq].where()} lies beyond the {count} records the batch head at line "
                        f"{head.lineno} covers: added after signing", first[seq].lineno, seq))
        below_head = [first[s].lineno for s in first if s <= count and first[s].lineno > head.lineno]
        if below_head:
            add(Finding("reordered", f"the batch head at line {head.lineno} is not the last line of its manifest: "
                        f"it belongs after line {max(below_head)}: reordered", head.lineno, head.seq))

    # removed: seqs that should be there and are not
    missing = [s for s in range(1, count + 1) if s not in first]
    spans: list[list[int]] = []
    for s in missing:
        if spans and spans[-1][1] == s - 1:
            spans[-1][1] = s
        else:
            spans.append([s, s])
    for a, b in spans:
        what = f"record seq {a} is" if a == b else f"records seq {a}-{b} are"
        before, after = first.get(a - 1), first.get(b + 1)
        if after is None and head is not None:
            n = b - a + 1
            tail = f"after {before.where()}" if before else "(all of them)"
            span = f"record (seq {a}) is" if n == 1 else f"{n} records (seq {a}-{b}) are"
            add(Finding("removed", f"the last {span} missing {tail}: "
                        f"removed, the batch head at line {head.lineno} says {count} records", head.lineno, a))
        elif before is None:
            add(Finding("removed", f"{what} missing before {after.where()}: removed", after.lineno, a))
        else:
            add(Finding("removed", f"{what} missing between line {before.lineno} (seq {a - 1}) and line "
                        f"{after.lineno} (seq {b + 1}): removed", after.lineno, a))

    # reordered: the seqs present, in file order, against their sorted order
    order = [ln for ln in records if first.get(ln.seq) is ln]
    seqs = [ln.seq for ln in order]
    rank = {s: i for i, s in enumerate(sorted(seqs))}
    swapped: set[int] = set()
    for i, s in enumerate(seqs):
        j = rank[s]
        if j > i and rank[seqs[j]] == i and i not in swapped and j not in swapped:
            swapped |= {i, j}
            add(Finding("reordered", f"lines {order[i].lineno} and {order[j].lineno} are swapped: "
                        f"{order[i].where()} holds what belongs at line {order[j].lineno}, and "
                        f"{order[j].where()} what belongs at line {order[i].lineno}: reordered",
                        order[i].lineno, s))
    rest = [i for i in range(len(order)) if i not in swapped]
    keep = {rest[k] for k in _longest_increasing([seqs[i] for i in rest])}
    for i in rest:
        if i not in keep:
            s = seqs[i]
            below = [ln for ln in order if ln.seq < s and ln is not order[i]]
            place = f"after {max(below, key=lambda ln: ln.seq).where()}" if below else "at the start"
            add(Finding("reordered", f"{order[i].where()} is out of order: it belongs {place}: reordered",
                        order[i].lineno, s))

    # links: in seq order each record must chain to the one before it (edited lines already reported)
    for seq, ln in sorted(first.items()):
        before = first.get(seq - 1) if seq > 1 else None
        if not ln.trusted or ln.prev is None or seq > count or (seq > 1 and (before is None or not before.trusted)):
            continue
        expected = before.digest if before else GENESIS
        if ln.prev != expected:
            whom = f"line {before.lineno} (seq {seq - 1})" if before else "the start of the manifest"
            add(Finding("chain", f"{ln.where()} does not chain to {whom}: "
                        + (f"line {before.lineno} differs from the bytes that were signed (re-formatted), or one of "
                           f"the two comes from another manifest" if before else
                           "it was signed as part of another manifest"), ln.lineno, seq))

    # the head closes the chain at the last record
    if head is None:
        tail = f"after {records[-1].where()}" if records else "(no records either)"
        add(Finding("truncated", f"no batch head {tail}: the manifest was cut short, so the last records may have "
                    f"been removed (the signed head that states how many records there are is missing)",
                    records[-1].lineno if records else None, None))
        return
    if not head.trusted:
        return  # reported with the line problems
    last = first.get(count)
    if head.seq != count + 1 or head.payload.get("last") != b64url(head.prev or b""):
        add(Finding("head", f"the batch head at line {head.lineno} is inconsistent (seq {head.seq} for {count} "
                    f"records, or its 'last' differs from its prev): it was not written by a station",
                    head.lineno, head.seq))
    elif last is not None and last.trusted and head.prev != last.digest:
        add(Finding("chain", f"the batch head at line {head.lineno} does not chain to {last.where()}: that line "
                    f"differs from the one that was signed, or comes from another manifest", last.lineno, count))
    elif count == 0 and head.prev != GENESIS:
        add(Finding("head", f"the batch head at line {head.lineno} says 0 records but chains to one",
                    head.lineno, head.seq))
    named = set(head.payload.get("batch_ids") or [])
    for ln in order:
        batch = ln.payload.get("batch_id") if isinstance(ln.payload, dict) else None
        if ln.trusted and batch and batch not in named:
            add(Finding("head", f"{ln.where()} has batch_id {batch}, which the batch head at line {head.lineno} "
                        f"does not list", ln.lineno, ln.seq))


def verify_manifest(lines: Iterable[str], trusted_roots: list[x509.Certificate]) -> VerifyReport:
    """Check every line's ES256 signature, kid and x5t#S256, its signer chain up to one of `trusted_roots`,
    the seq numbers and hash links between lines, and the batch head. Blank lines are ignored.

    Problems name the line, seq and device, and say whether a record was edited, removed or reordered; a
    missing or short head means records were cut from the end.
    """
    if not trusted_roots:
        raise ValueError("no trusted root certificate given; pass the manufacturer root CA you hold (not one "
                         "taken from the manifest)")
    report = VerifyReport()
    signers = _Signers()
    parsed = [_parse(n, text, signers) for n, text in enumerate(lines, 1) if text.strip()]
    report.records = sum(1 for ln in parsed if ln.typ != HEAD_TYP)
    if not parsed:
        report.findings.append(Finding("truncated", "the manifest is empty: no records and no batch head"))
        return report

    # trust: each distinct chain once, as of the signing time the head states (now when there is none)
    heads = [ln for ln in parsed if ln.typ == HEAD_TYP and ln.bad is None]
    created = next((h.payload.get("created") for h in reversed(heads) if isinstance(h.payload.get("created"), str)),
                   None)
    try:
        at = datetime.fromisoformat(created.replace("Z", "+00:00")) if created else datetime.now(timezone.utc)
    except ValueError:
        at = datetime.now(timezone.utc)
    store = Store(list(trusted_roots))
    roots = [r.subject.rfc4514_string() for r in trusted_roots]
    verdicts: dict[tuple[str, ...], str | None] = {}
    for ln in parsed:
        if ln.bad is None and ln.chain is not None:
            if ln.chain not in verdicts:
                certs = signers.get(ln.chain)[0]
                verdicts[ln.chain] = _chain_problem(certs, store, at)
                if verdicts[ln.chain] is None:
                    report.signers.append(certs[0].subject.rfc4514_string())
            ln.untrusted = verdicts[ln.chain] is not None

    for ln in parsed:
        label = "the batch head at " + ln.where() if ln.typ == HEAD_TYP else ln.where()
        if ln.bad and ln.bad.startswith("its signature"):
            tail = ("the record count it states cannot be trusted: the last records may have been removed"
                    if ln.typ == HEAD_TYP else "the record was changed after signing")
            report.findings.append(Finding("edited" if ln.typ != HEAD_TYP else "head",
                                           f"{label}: edited, {ln.bad}; {tail}", ln.lineno, ln.seq))
        elif ln.bad:
            report.findings.append(Finding("edited", f"{label}: {ln.bad}; it was edited, damaged or inserted",
                                           ln.lineno, ln.seq))
    untrusted: dict[tuple[str, ...], list[_Line]] = defaultdict(list)
    for ln in parsed:
        if ln.untrusted:
            untrusted[ln.chain].append(ln)
    for chain, group in untrusted.items():
        subject = signers.get(chain)[0][0].subject.rfc4514_string()
        where = group[0].where() if len(group) == 1 else f"lines {_ranges([ln.lineno for ln in group])}"
        report.findings.append(Finding("untrusted", f"{where}: signed by {subject}, whose certificate chain is not "
                                       f"accepted under the trusted roots ({', '.join(roots)}): {verdicts[chain]}. "
                                       f"Rejected: not from this manufacturer (or pass the root it was issued "
                                       f"under)",
                                       group[0].lineno, group[0].seq))

    # manifests, each closed by its head (concatenated files verify one by one)
    segment: list[_Line] = []
    head: _Line | None = None
    for ln in parsed:
        if ln.typ == HEAD_TYP and head is not None and ln.digest == head.digest:
            report.findings.append(Finding("duplicated", f"the batch head at line {ln.lineno} repeats the one at "
                                           f"line {head.lineno}", ln.lineno, ln.seq))
            continue
        # after a head, a seq-1 record starts the next manifest unless this one's seq 2 chains to it
        if head is not None and (ln.typ == HEAD_TYP or (ln.seq == 1 and not any(
                other.seq == 2 and other.prev == ln.digest for other in segment))):
            _check_segment(segment, head, report)
            segment, head = [], None
        if ln.typ == HEAD_TYP:
            head = ln
            if ln.trusted:
                report.heads.append(ln.payload)
                if ln.payload.get("ephemeral_ca"):
                    report.warnings.append(f"the batch head at line {ln.lineno} says these records were signed "
                                           f"under an ephemeral (demo) CA: they do not trace to a lasting "
                                           f"manufacturer CA")
        else:
            segment.append(ln)
    _check_segment(segment, head, report)

    for ln in parsed:  # a verified record holding secrets is still a leak worth naming
        if ln.trusted and ln.typ == RECORD_TYP:
            for secret in find_secrets(ln.payload):
                report.findings.append(Finding("secret", f"{ln.where()} carries secret material: {secret}",
                                               ln.lineno, ln.seq))
    report.findings.sort(key=lambda f: (f.line if f.line is not None else 1 << 30))
    return report


# --- CLI: `station manifest verify FILE --root root.crt` ---------------------------------------------------

def load_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file (one or more) or a DER file."""
    data = Path(path).read_bytes()
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise click.BadParameter(f"{path} holds no readable certificate ({exc}); pass the root CA certificate as "
                                 f"PEM or DER", param_hint="--root") from None


@click.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--root", "roots", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A trusted root CA certificate (PEM or DER), the one you hold; repeat for several.")
def verify_command(file: Path, roots: tuple[Path, ...]) -> None:
    """Check a signed manifest: every record's signature and signer chain, the hash chain, the batch head.

    Names each record that was edited, removed or reordered; exits 1 when there is any problem.
    """
    if not roots:
        raise click.UsageError("no trusted root given: pass --root ROOT.crt, the manufacturer root CA certificate "
                               "you hold (a root taken from the manifest itself proves nothing)")
    trusted = [cert for path in roots for cert in load_certificates(path)]
    with open(file, encoding="utf-8", errors="replace", newline="") as lines:
        report = verify_manifest(lines, trusted)
    click.echo(report.text(str(file)))
    if not report.ok:
        raise SystemExit(1)
