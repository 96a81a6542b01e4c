"""IDevID certificates (RFC 8995 §2.3 / IEEE 802.1AR profile) for the boards the station provisions.

A product profile's `[identity]` table says how a board's identity is made:

    [identity]
    key_origin = "board"                      # "host": the station makes the key in memory and writes it;
                                              # "board": the board makes it and returns a CSR (key never leaves)
    key_type = "P-256"                        # or "RSA-2048" for legacy boards
    serial_template = "{chip}-{mac_hex}"      # the device serial (subject serialNumber), over board facts
    common_name = "sensor-{mac_hex}"          # optional subject CN (Mosquitto / Azure DPS use the CN)
    organization = "Example Devices Ltd"      # optional subject O
    hw_module_type_oid = "1.3.6.1.4.1.99999.1"  # optional: SAN otherName hardwareModuleName (RFC 4108)
    masa_url = "masa.example.com:443"         # optional: id-pe-masa-url extension (RFC 8995 §2.3.2)
    lifetime_days = 3650                      # optional; absent = notAfter 99991231235959Z (RFC 8995 §2.6.2)
    key_usage = ["digitalSignature"]          # optional; absent = no keyUsage (RFC 8995 recommends none)
    extended_key_usage = ["clientAuth"]       # optional; absent = no EKU

Board facts a template may use: mac ("aa:bb:cc:dd:ee:ff"), mac_hex ("AABBCCDDEEFF"), chip ("ESP32"),
chip_id (text), device_id (text, e.g. a Particle device id), counter (integer; format it, e.g.
"SN{counter:06d}"). Templates are checked against these names, and rendered with sample values, when the
profile is parsed, so a typo is refused before any board is touched.

Every certificate: subject serialNumber (PrintableString), random 159-bit serial from the CSPRNG, SKI + AKI,
basicConstraints CA:FALSE (critical), signed by the station's issuing CA, and recorded in the ledger before
it is returned.
"""
from __future__ import annotations

import base64
import datetime
import re
import string
from dataclasses import dataclass, fields
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from station.identity import CsrError, IdentityError, IdentityProfileError, LedgerError
from station.identity.ca import FOREVER, StationCA
from station.identity.ledger import DuplicateSerialError, Ledger

FACTS = ("mac", "mac_hex", "chip", "chip_id", "device_id", "counter")
KEY_ORIGINS = ("host", "board")
KEY_TYPES = ("P-256", "RSA-2048")
SAMPLE_FACTS: dict[str, Any] = {"mac": "00:00:5e:00:53:01", "mac_hex": "00005E005301", "chip": "ESP32-C3",
                                "chip_id": "00ab12cd", "device_id": "0123456789abcdef01234567", "counter": 42}
KEY_USAGES = {"digitalSignature": "digital_signature", "contentCommitment": "content_commitment",
              "nonRepudiation": "content_commitment", "keyEncipherment": "key_encipherment",
              "dataEncipherment": "data_encipherment", "keyAgreement": "key_agreement"}
EKU_NAMES = {"clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH, "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
             "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING,
             "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
             "timeStamping": ExtendedKeyUsageOID.TIME_STAMPING, "OCSPSigning": ExtendedKeyUsageOID.OCSP_SIGNING}
ID_PE_MASA_URL = ObjectIdentifier("1.3.6.1.5.5.7.1.32")
ID_ON_HARDWARE_MODULE_NAME = ObjectIdentifier("1.3.6.1.5.5.7.8.4")
PRINTABLE = set(string.ascii_letters + string.digits + " '()+,-./:=?")
SERIAL_MAX = 64  # ub-serial-number (RFC 5280)
_OID_RE = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_ISSUE_ATTEMPTS = 5


@dataclass(frozen=True)
class IdevidProfile:
    """How a board's IDevID is made. Build it with `parse_identity_table` from a profile's [identity]."""

    key_origin: str = "host"
    key_type: str = "P-256"
    serial_template: str = "{chip}-{mac_hex}"
    common_name: str | None = None
    organization: str | None = None
    hw_module_type_oid: str | None = None
    masa_url: str | None = None
    lifetime_days: int | None = None
    key_usage: tuple[str, ...] | None = None
    extended_key_usage: tuple[str, ...] | None = None
    counter_start: int = 1  # the first {counter} number (station/serials.py)

    def __post_init__(self) -> None:
        for name in ("key_usage", "extended_key_usage"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        _check_values(self, "IdevidProfile")


# --- the [identity] table ---------------------------------------------------------------------------------------

def parse_identity_table(raw: dict, where: str) -> IdevidProfile:
    """Validate a profile's [identity] table. `where` locates it for messages, e.g. "profiles/x.toml [identity]".

    Raises IdentityProfileError (a ValueError) naming the key and the fix.
    """
    if not isinstance(raw, dict):
        raise IdentityProfileError(f"{where}: expected a table, got {_kind(raw)}; write it as [identity] with "
                                   f"key = value lines.")
    allowed = tuple(f.name for f in fields(IdevidProfile))
    for key in raw:
        if key not in allowed:
            raise IdentityProfileError(f"{where}: unknown key '{key}'; allowed here: {', '.join(allowed)}. Remove "
                                       f"it or fix its spelling.")
    if "key_origin" not in raw:
        raise IdentityProfileError(f"{where}: missing required key 'key_origin'; add key_origin = \"host\" (the "
                                   f"station makes the key and writes it) or \"board\" (the board makes it and "
                                   f"returns a CSR).")
    values: dict[str, Any] = {}
    for key in ("key_origin", "key_type", "serial_template", "common_name", "organization", "hw_module_type_oid",
                "masa_url"):
        if key in raw:
            values[key] = _typed(raw, key, str, where)
    for key in ("lifetime_days", "counter_start"):
        if key in raw:
            values[key] = _typed(raw, key, int, where)
    for key in ("key_usage", "extended_key_usage"):
        if key in raw:
            items = _typed(raw, key, list, where)
            for item in items:
                if not isinstance(item, str):
                    raise IdentityProfileError(f"{where}: '{key}' must list strings, but holds {_kind(item)} "
                                               f"{item!r}; write e.g. {key} = [\"digitalSignature\"].")
            values[key] = tuple(items)
    probe = {f.name: f.default for f in fields(IdevidProfile)} | values
    _check_values(_Values(probe), where)
    return IdevidProfile(**values)


class _Values:
    def __init__(self, values: dict):
        self.__dict__.update(values)


def _typed(raw: dict, key: str, kind: type, where: str) -> Any:
    value = raw[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        names = {str: "a string", int: "an integer", list: "an array"}
        raise IdentityProfileError(f"{where}: '{key}' must be {names[kind]}, got {_kind(value)} {value!r}; "
                                   f"fix its value.")
    return value


def _kind(value: Any) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number"}.get(type(value), type(value).__name__)


def _check_values(p, where: str) -> None:
    def fail(key: str, message: str) -> None:
        raise IdentityProfileError(f"{where}: '{key}' {message}")

    if p.key_origin not in KEY_ORIGINS:
        fail("key_origin", f"is {p.key_origin!r}; use \"host\" (the station makes the key) or \"board\" (the "
                           f"board makes it and returns a CSR).")
    if p.key_type not in KEY_TYPES:
        fail("key_type", f"is {p.key_type!r}; use \"P-256\" (default) or \"RSA-2048\" (legacy boards only).")
    _check_template(p.serial_template, "serial_template", where, serial=True)
    if p.common_name is not None:
        _check_template(p.common_name, "common_name", where, serial=False)
    if p.organization is not None and not 1 <= len(p.organization) <= 64:
        fail("organization", "must be 1 to 64 characters; shorten it or leave it out.")
    if p.hw_module_type_oid is not None:
        _check_oid(p.hw_module_type_oid, "hw_module_type_oid", where)
    if p.masa_url is not None:
        url = p.masa_url
        if not url or not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
            fail("masa_url", f"{url!r} must be printable ASCII without spaces (it is an IA5String), e.g. "
                             f"\"masa.example.com:443\".")
        if "://" in url and not url.startswith("https://"):
            fail("masa_url", f"{url!r} uses a scheme other than https; write the authority only "
                             f"(\"masa.example.com:443\") or a full https:// URI.")
    if p.lifetime_days is not None and not 1 <= p.lifetime_days <= 100 * 366:
        fail("lifetime_days", f"is {p.lifetime_days}; give 1 to 36600 days, or leave it out for notAfter "
                              f"99991231235959Z (no expiry, RFC 8995 §2.6.2).")
    if p.key_usage is not None:
        if not p.key_usage:
            fail("key_usage", "is an empty list; leave it out for no keyUsage, or list e.g. \"digitalSignature\".")
        for name in p.key_usage:
            if name not in KEY_USAGES:
                fail("key_usage", f"has {name!r}, which is not a key usage for a device; use "
                                  f"{', '.join(KEY_USAGES)}.")
    if p.extended_key_usage is not None:
        if not p.extended_key_usage:
            fail("extended_key_usage", "is an empty list; leave it out for no EKU, or list e.g. \"clientAuth\".")
        for name in p.extended_key_usage:
            if name not in EKU_NAMES and not _OID_RE.match(name):
                fail("extended_key_usage", f"has {name!r}; use {', '.join(EKU_NAMES)} or a dotted OID such as "
                                           f"\"1.3.6.1.4.1.45605.1\".")


def _check_oid(oid: str, key: str, where: str) -> None:
    bad = not _OID_RE.match(oid)
    if not bad:
        arcs = [int(a) for a in oid.split(".")]
        bad = arcs[0] < 2 and arcs[1] > 39
    if not bad:
        try:
            ObjectIdentifier(oid)
        except ValueError:
            bad = True
    if bad:
        raise IdentityProfileError(f"{where}: '{key}' is {oid!r}, which is not a dotted object identifier; use "
                                   f"your organisation's OID for this hardware type, e.g. \"1.3.6.1.4.1.<your "
                                   f"IANA PEN>.1\".")


def _template_fields(template: str) -> list[str]:
    names = []
    for _, name, spec, _ in string.Formatter().parse(template):
        if name is not None:
            names.append(name)
        if spec and "{" in spec:
            names += _template_fields(spec)
    return names


def _check_template(template: str, key: str, where: str, *, serial: bool) -> None:
    known = ", ".join(FACTS)
    try:
        names = _template_fields(template)
    except ValueError as exc:
        raise IdentityProfileError(f"{where}: '{key}' {template!r} is not a valid template ({exc}); write facts "
                                   f"in braces, e.g. \"{{chip}}-{{mac_hex}}\", and double a literal brace.") from None
    for name in names:
        root = re.split(r"[.\[]", name, maxsplit=1)[0]
        if name == "" or name.isdigit():
            raise IdentityProfileError(f"{where}: '{key}' {template!r} has a positional '{{}}'; name the fact, "
                                       f"one of {known}.")
        if root not in FACTS:
            raise IdentityProfileError(f"{where}: '{key}' {template!r} uses '{{{name}}}', which is not a board "
                                       f"fact; use one of {known}.")
        if root != name:
            raise IdentityProfileError(f"{where}: '{key}' {template!r} uses '{{{name}}}'; only plain fact names "
                                       f"with an optional format spec are allowed, e.g. {{counter:06d}}.")
    try:
        sample = template.format(**SAMPLE_FACTS)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise IdentityProfileError(f"{where}: '{key}' {template!r} can't be rendered ({exc}); check each format "
                                   f"spec against the fact's type (counter is an integer, the others are "
                                   f"text).") from None
    if serial:
        if not names:
            raise IdentityProfileError(f"{where}: '{key}' {template!r} uses no board fact, so every board would "
                                       f"get the same serial; include e.g. {{mac_hex}} or {{counter:06d}}.")
        bad = sorted({c for c in sample if c not in PRINTABLE})
        if bad:
            raise IdentityProfileError(f"{where}: '{key}' {template!r} gives {sample!r}, which has characters a "
                                       f"subject serialNumber (PrintableString) can't hold: {''.join(bad)!r}. Use "
                                       f"letters, digits, space and ' ( ) + , - . / : = ?")
    if len(sample) > SERIAL_MAX:
        raise IdentityProfileError(f"{where}: '{key}' {template!r} gives {len(sample)} characters for a sample "
                                   f"board, over the 64 allowed; shorten it.")


# --- rendering and issuing --------------------------------------------------------------------------------------

def complete_facts(facts: dict) -> dict:
    """Facts with mac/mac_hex derived from each other when only one is known."""
    out = dict(facts)
    if out.get("mac") and not out.get("mac_hex"):
        out["mac_hex"] = str(out["mac"]).replace(":", "").replace("-", "").upper()
    if out.get("mac_hex") and not out.get("mac"):
        h = str(out["mac_hex"]).lower()
        out["mac"] = ":".join(h[i:i + 2] for i in range(0, len(h), 2))
    return out


def _render(template: str, key: str, facts: dict) -> str:
    facts = complete_facts(facts)
    for name in _template_fields(template):
        if facts.get(name) in (None, ""):
            have = ", ".join(sorted(k for k, v in facts.items() if v not in (None, ""))) or "none"
            raise IdentityError(f"The {key} template {template!r} needs the board fact '{name}', which this board "
                                f"did not report (it has: {have}). Use a template over facts this board family "
                                f"reports.")
    try:
        return template.format(**facts)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"The {key} template {template!r} can't be rendered with this board's facts ({exc}); "
                            f"check the format specs against the facts' types.") from None


def uses_counter(profile: IdevidProfile) -> bool:
    """The serial template numbers boards with the station's counter ({counter}): see station/serials.py."""
    return "counter" in _template_fields(profile.serial_template)


def render_serial(profile: IdevidProfile, facts: dict) -> str:
    """The device serial (subject serialNumber) for a board."""
    serial = _render(profile.serial_template, "serial_template", facts)
    bad = sorted({c for c in serial if c not in PRINTABLE})
    if bad or not serial or len(serial) > SERIAL_MAX:
        raise IdentityError(f"The device serial {serial!r} from template {profile.serial_template!r} is not a "
                            f"PrintableString of 1-64 characters (bad: {''.join(bad)!r}); the board reported an "
                            f"unusual fact, or the template needs changing.")
    return serial


def _subject(profile: IdevidProfile, facts: dict, serial: str) -> x509.Name:
    attrs = []
    if profile.organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, profile.organization))
    if profile.common_name:
        cn = _render(profile.common_name, "common_name", facts)
        if not 1 <= len(cn) <= 64:
            raise IdentityError(f"The common name {cn!r} is longer than 64 characters; shorten the common_name "
                                f"template.")
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    return x509.Name(attrs)


def _key_kind(public_key) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(public_key.curve.name,
                                                                                    public_key.curve.name)
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA-{public_key.key_size}"
    return type(public_key).__name__.replace("PublicKey", "").lstrip("_")


def _check_key_type(profile: IdevidProfile, public_key, error: type[IdentityError]) -> None:
    kind = _key_kind(public_key)
    if kind != profile.key_type:
        raise error(f"The board's key is {kind}, but the profile's [identity] key_type is {profile.key_type}; "
                    f"update the board's agent, or set key_type to match.")


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(content)) + content


def _oid_der(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


def hardware_module_name(hw_type_oid: str, hw_serial: bytes) -> x509.OtherName:
    """SAN otherName id-on-hardwareModuleName: SEQUENCE { hwType OID, hwSerialNum OCTET STRING } (RFC 4108)."""
    inner = _tlv(0x30, _tlv(0x06, _oid_der(hw_type_oid)) + _tlv(0x04, hw_serial))
    return x509.OtherName(ID_ON_HARDWARE_MODULE_NAME, inner)


def masa_url_extension(url: str) -> x509.UnrecognizedExtension:
    """id-pe-masa-url (1.3.6.1.5.5.7.1.32), MASAURLSyntax ::= IA5String."""
    return x509.UnrecognizedExtension(ID_PE_MASA_URL, _tlv(0x16, url.encode("ascii")))


def _builder(profile: IdevidProfile, public_key, facts: dict) -> tuple[x509.CertificateBuilder, str]:
    serial = render_serial(profile, facts)
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    not_after = FOREVER if profile.lifetime_days is None else now + datetime.timedelta(days=profile.lifetime_days)
    builder = (x509.CertificateBuilder()
               .subject_name(_subject(profile, facts, serial)).public_key(public_key)
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
    if profile.key_usage is not None:
        chosen = {KEY_USAGES[n] for n in profile.key_usage}
        flags = {attr: attr in chosen for attr in ("digital_signature", "content_commitment", "key_encipherment",
                                                   "data_encipherment", "key_agreement")}
        builder = builder.add_extension(x509.KeyUsage(**flags, key_cert_sign=False, crl_sign=False,
                                                      encipher_only=False, decipher_only=False), critical=True)
    if profile.extended_key_usage is not None:
        oids = [EKU_NAMES.get(n) or ObjectIdentifier(n) for n in profile.extended_key_usage]
        builder = builder.add_extension(x509.ExtendedKeyUsage(oids), critical=False)
    if profile.hw_module_type_oid is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [hardware_module_name(profile.hw_module_type_oid, serial.encode("ascii"))]), critical=False)
    if profile.masa_url is not None:
        builder = builder.add_extension(masa_url_extension(profile.masa_url), critical=False)
    return builder, serial


def issue_idevid(ca: StationCA, profile: IdevidProfile, public_key, facts: dict, ledger: Ledger, *,
                 device_id: str | None = None) -> x509.Certificate:
    """Sign an IDevID for `public_key` and record it in `ledger` (durably) before returning it.

    `device_id` is the journal's devices.id of the board (for "already provisioned at PORT" messages).
    A serial-number collision is retried with a fresh random serial; a public key certified before raises
    DuplicateKeyError; a device serial with a live certificate raises AlreadyProvisionedError.
    """
    _check_key_type(profile, public_key, IdentityError)
    builder, subject_serial = _builder(profile, public_key, facts)
    for _ in range(_ISSUE_ATTEMPTS):
        cert = ca.sign_certificate(builder.serial_number(x509.random_serial_number()))
        try:
            ledger.record_issue(cert, subject_serial=subject_serial, key_origin=profile.key_origin,
                                device_id=device_id, issuer_sha256=ca.issuing_sha256)
        except DuplicateSerialError:
            continue  # this certificate is dropped unseen; sign again with a new serial
        return cert
    raise LedgerError(f"{_ISSUE_ATTEMPTS} random certificate serials in a row were already in the ledger; the "
                      f"station's random number generator is broken. Stop provisioning and check the machine.")


def generate_device_key(profile: IdevidProfile):
    if profile.key_type == "RSA-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def host_identity(ca: StationCA, profile: IdevidProfile, facts: dict, ledger: Ledger, *,
                  device_id: str | None = None):
    """(private key, certificate) for a board whose key the station makes. The key exists in memory only:
    write it to the board and drop it; nothing here stores it."""
    key = generate_device_key(profile)
    return key, issue_idevid(ca, profile, key.public_key(), facts, ledger, device_id=device_id)


def check_csr(csr_data: bytes, profile: IdevidProfile, facts: dict, ledger: Ledger):
    """Check a board's CSR and return the public key to certify.

    Refuses: a CSR that does not parse or whose signature does not verify (no proof of possession), a key
    of another type than the profile's, a public key the ledger has seen before, and a subject
    serialNumber (when the CSR has one) other than the serial the station expects for this board.
    """
    try:
        if csr_data.lstrip().startswith(b"-----BEGIN"):
            csr = x509.load_pem_x509_csr(csr_data)
        else:
            csr = x509.load_der_x509_csr(csr_data)
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CsrError(f"The board's CSR is not a valid PKCS#10 request ({exc}); its identity agent sent something "
                       f"else. Check the board's firmware and provision it again.") from None
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        raise CsrError("The CSR's signature does not verify: the board did not prove it holds the private key "
                       "(proof of possession failed). Don't trust this board's agent; re-flash it and provision "
                       "it again.")
    _check_key_type(profile, public_key, CsrError)
    seen = ledger.find_key(public_key)
    if seen is not None:
        raise CsrError(ledger.key_seen_message(seen))
    expected = render_serial(profile, facts)
    asked = csr.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    if asked and asked[0].value != expected:
        raise CsrError(f"The CSR asks for device serial {asked[0].value!r}, but this board's facts give "
                       f"{expected!r} (template {profile.serial_template!r}); the board's agent reports another "
                       f"identity. Check that the right firmware is on this board.")
    return public_key


def public_jwk(public_key) -> dict:
    """The public key as a JWK (RFC 7517/7518): EC kty/crv/x/y, RSA kty/n/e, Ed25519/Ed448 kty OKP."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

    if isinstance(public_key, ec.EllipticCurvePublicKey):
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(public_key.curve.name)
        if crv is None:
            raise IdentityError(f"curve {public_key.curve.name} has no JWK name; use P-256, P-384 or P-521.")
        size = (public_key.curve.key_size + 7) // 8
        nums = public_key.public_numbers()
        return {"kty": "EC", "crv": crv, "x": b64(nums.x.to_bytes(size, "big")),
                "y": b64(nums.y.to_bytes(size, "big"))}
    if isinstance(public_key, rsa.RSAPublicKey):
        nums = public_key.public_numbers()
        return {"kty": "RSA", "n": b64(nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big")),
                "e": b64(nums.e.to_bytes((nums.e.bit_length() + 7) // 8, "big"))}
    if isinstance(public_key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        crv = "Ed25519" if isinstance(public_key, ed25519.Ed25519PublicKey) else "Ed448"
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": crv, "x": b64(raw)}
    raise IdentityError(f"{type(public_key).__name__} has no JWK form here; use an EC or RSA key.")
