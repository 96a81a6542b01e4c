"""The on-board identity agent, as an emulated firmware runs it (docs/agent-protocol.md).

An app image *declares* the agent by containing the agent library's banner string `STATION-AGENT/1` (a C
string constant in its rodata, `make_app_image(..., identity_agent=True)`). When the board boots from flash,
`agent_for_flash` looks for it in the app the bootloader would boot (factory, else ota_0, from the partition
table at 0x8000) and, if it is there, the board's UART belongs to `AgentMode` after the app's boot log.

The key is made here with `cryptography` and kept in the board object (`board.identity`, the firmware's secure
storage); it is never sent. COMMIT stores the identity in the `esp_secure_cert` partition when the flashed
partition table has one (esp_secure_cert_mgr TLV format, as a firmware keeping its key in its own secure storage
would) and sets the committed flag, which like an eFuse survives resets and re-flashing.

This is a separate implementation of the protocol from the station's (`station.identity.agent`), written from the
document, so the tests check the two against each other rather than one against itself.
"""
from __future__ import annotations

import logging
import struct
import zlib
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from station.families.esp.sim.board import EspBoard, FlashRangeError

log = logging.getLogger(__name__)

AGENT_MARKER = b"STATION-AGENT/1\0"  # the declaration: the agent library's banner, NUL-terminated in rodata
BANNER = "STATION-AGENT/1"
MAGIC = b"\xF5\xA6"
VERSION = 1
MAX_PAYLOAD = 8192
_HEAD = struct.Struct("<BBBH")  # version, type, seq, length
GET_INFO, GENERATE_KEY, GET_CSR, PUT_CHAIN, COMMIT, ERROR = 0x01, 0x02, 0x03, 0x04, 0x05, 0xFF
E_CRC, E_VERSION, E_UNKNOWN, E_BAD_REQUEST, E_TOO_LARGE, E_KEY_TYPE = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
E_NO_KEY, E_NO_CHAIN, E_CERT_MISMATCH, E_COMMITTED, E_STORAGE = 0x07, 0x08, 0x09, 0x0A, 0x0B
KEY_P256 = 1
PRINTABLE = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?")
GARBAGE = bytes(range(0x80, 0xF0, 3)) * 3  # what a wrong-baud or broken agent puts out: no text, no frames
SCAN_LIMIT = 0x100000  # without a partition table, look this far into flash for the declaration
_APP_DESC_MAGIC = 0xABCD5432


@dataclass
class AgentIdentity:
    """What the agent keeps in the board's secure storage."""

    key: ec.EllipticCurvePrivateKey | None = field(default=None, repr=False)
    subject_serial: str = ""
    chain: list[bytes] = field(default_factory=list)  # device certificate first, then its issuers
    anchors: list[bytes] = field(default_factory=list)
    committed: bool = False  # "no new key, no new IDevID": kept like an eFuse


class _Refused(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


# --- is the agent in the flashed app? ------------------------------------------------------------------------------


def _app_region(board: EspBoard) -> tuple[int, int]:
    app = board.app_partition()
    if app is not None:
        return app
    return 0, min(board.flash.size, SCAN_LIMIT)  # no partition table (ESP8266 Arduino layout): the image at 0


def app_declares_agent(board: EspBoard) -> bool:
    offset, size = _app_region(board)
    return board.flash.data.find(AGENT_MARKER, offset, offset + size) >= 0


def agent_for_flash(board: EspBoard) -> "AgentMode | None":
    """The agent, if the app the board just booted declares it."""
    return AgentMode(board) if app_declares_agent(board) else None


def _app_description(board: EspBoard) -> tuple[str, str]:
    """(project name, version) from the app's esp_app_desc_t (right after the image and segment headers)."""
    offset, _ = _app_region(board)
    try:
        desc = board.flash.read(offset + 0x20, 0x50)
    except FlashRangeError:
        return "", ""
    if int.from_bytes(desc[:4], "little") != _APP_DESC_MAGIC:
        return "", ""

    def text(raw: bytes) -> str:
        return raw.split(b"\0", 1)[0].decode("ascii", "replace")

    return text(desc[48:80]), text(desc[16:48])


# --- the agent ------------------------------------------------------------------------------------------------------


class AgentMode:
    """Owns the board's UART after an agent-declaring app boots: prints the app's log, then answers frames."""

    def __init__(self, board: EspBoard):
        self.board = board
        if not isinstance(board.identity, AgentIdentity):
            board.identity = AgentIdentity()
        self.identity: AgentIdentity = board.identity
        self._buf = bytearray()
        self._last: tuple[int, int, int] | None = None  # (seq, type, CRC) of the last request answered
        self._last_answer = b""
        self.project, self.version = _app_description(board)
        state = self._state_name()
        board.send((f"I (312) app_init: Project name:     {self.project}\r\n"
                    f"I (318) app_init: App version:      {self.version}\r\n"
                    f"I (402) station-agent: {BANNER} ready ({state}), 115200 8N1\r\n").encode())

    def _state_name(self) -> str:
        return "committed" if self.identity.committed else "keyed" if self.identity.key else "fresh"

    # framing

    def receive(self, data: bytes) -> None:
        if self.board.faults.agent_silent:
            return  # hung: the app declares the agent, but the task never runs
        self._buf += data
        while True:
            at = self._buf.find(MAGIC)
            if at < 0:
                del self._buf[:max(0, len(self._buf) - 1)]  # keep a possible half magic
                return
            del self._buf[:at]
            if len(self._buf) < 2 + _HEAD.size:
                return
            version, rtype, seq, length = _HEAD.unpack_from(self._buf, 2)
            if length > MAX_PAYLOAD:
                del self._buf[:1]  # not a frame
                continue
            end = 2 + _HEAD.size + length
            if len(self._buf) < end + 4:
                return
            body = bytes(self._buf[2:end])
            crc = int.from_bytes(self._buf[end:end + 4], "little")
            del self._buf[:end + 4]
            if crc != zlib.crc32(body):
                self._send(ERROR, seq, bytes((E_CRC,)) + b"request failed its CRC-32 check")
                continue
            if version != VERSION:
                self._send(ERROR, seq, bytes((E_VERSION,)) + f"this agent speaks version {VERSION}".encode())
                continue
            self._request(rtype, seq, body[_HEAD.size:], crc)

    def _send(self, rtype: int, seq: int, payload: bytes) -> bytes:
        body = _HEAD.pack(VERSION, rtype, seq, len(payload)) + payload
        crc = zlib.crc32(body)
        if self.board.faults.agent_bad_crc:
            crc ^= 0xFFFFFFFF
        frame = MAGIC + body + crc.to_bytes(4, "little")
        self.board.send(frame)
        return frame

    def _request(self, rtype: int, seq: int, payload: bytes, crc: int) -> None:
        if self.board.faults.agent_garbage:
            self.board.send(GARBAGE)
            return
        if self._last == (seq, rtype, crc):  # the host retried: answer again, do not do it twice
            self.board.send(self._last_answer)
            return
        handler = {GET_INFO: self._get_info, GENERATE_KEY: self._generate_key, GET_CSR: self._get_csr,
                   PUT_CHAIN: self._put_chain, COMMIT: self._commit}.get(rtype)
        try:
            if handler is None:
                raise _Refused(E_UNKNOWN, f"unknown request type {rtype:#04x}")
            answer = self._send(rtype | 0x80, seq, handler(payload))
        except _Refused as refusal:
            answer = self._send(ERROR, seq, bytes((refusal.code,)) + str(refusal).encode())
        self._last, self._last_answer = (seq, rtype, crc), answer

    # requests

    def _get_info(self, payload: bytes) -> bytes:
        state = 2 if self.identity.committed else 1 if self.identity.key else 0
        flags = 1 if self.identity.chain else 0
        firmware = f"{self.project} {self.version}".strip()
        return (struct.pack("<BBBBH", VERSION, state, 1 << (KEY_P256 - 1), flags, MAX_PAYLOAD) + self.board.mac
                + b"".join(bytes((len(t),)) + t for t in (self.board.chip.display_name.encode(), firmware.encode(),
                                                             self.identity.subject_serial.encode())))

    def _generate_key(self, payload: bytes) -> bytes:
        if self.identity.committed:
            raise _Refused(E_COMMITTED, "identity committed; no new key")
        if len(payload) < 2 or len(payload) != 2 + payload[1]:
            raise _Refused(E_BAD_REQUEST, "GENERATE_KEY wants key type, then the subject serial")
        if payload[0] != KEY_P256:
            raise _Refused(E_KEY_TYPE, f"key type {payload[0]} not supported; this agent makes P-256 keys (1)")
        serial = payload[2:]
        if not 1 <= len(serial) <= 64 or not set(serial) <= PRINTABLE:
            raise _Refused(E_BAD_REQUEST, "subject serial must be 1-64 PrintableString characters")
        self.identity.key = ec.generate_private_key(ec.SECP256R1())
        self.identity.subject_serial = serial.decode()
        self.identity.chain, self.identity.anchors = [], []
        log.info("%s: agent made a P-256 key for %s", self.board.name, self.identity.subject_serial)
        return self.identity.key.public_key().public_bytes(serialization.Encoding.DER,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo)

    def _get_csr(self, payload: bytes) -> bytes:
        key = self._key()
        subject = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, self.identity.subject_serial)])
        csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
        return csr.public_bytes(serialization.Encoding.DER)

    def _put_chain(self, payload: bytes) -> bytes:
        if self.identity.committed:
            raise _Refused(E_COMMITTED, "identity committed; the certificate chain is sealed")
        key = self._key()
        try:
            n_chain, n_anchors = payload[0], payload[1]
            pos, certs = 2, []
            for _ in range(n_chain + n_anchors):
                (n,) = struct.unpack_from("<H", payload, pos)
                if pos + 2 + n > len(payload):
                    raise ValueError
                certs.append(payload[pos + 2:pos + 2 + n])
                pos += 2 + n
            if pos != len(payload) or not n_chain or not n_anchors:
                raise ValueError
            parsed = [x509.load_der_x509_certificate(der) for der in certs]
        except (IndexError, struct.error, ValueError):
            raise _Refused(E_BAD_REQUEST, "PUT_CHAIN wants counts, then length-prefixed DER certificates "
                                          "(a device certificate and at least one trust anchor)") from None
        device = parsed[0]
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if device.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
            raise _Refused(E_CERT_MISMATCH, "the device certificate is not for this board's key")
        serials = device.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
        if [a.value for a in serials] != [self.identity.subject_serial]:
            raise _Refused(E_CERT_MISMATCH, f"the device certificate's subject serialNumber is not "
                                            f"{self.identity.subject_serial}")
        self.identity.chain, self.identity.anchors = certs[:n_chain], certs[n_chain:]
        return b""

    def _commit(self, payload: bytes) -> bytes:
        if self.identity.committed:
            raise _Refused(E_COMMITTED, "identity already committed")
        key = self._key()
        if not self.identity.chain:
            raise _Refused(E_NO_CHAIN, "no certificate chain stored; send PUT_CHAIN first")
        if self.board.faults.agent_commit_refused:
            raise _Refused(E_STORAGE, "secure storage write failed")
        self._store(key)
        self.identity.committed = True
        log.info("%s: agent committed the identity of %s", self.board.name, self.identity.subject_serial)
        return b""

    def _key(self) -> ec.EllipticCurvePrivateKey:
        if self.identity.key is None:
            raise _Refused(E_NO_KEY, "no key yet; send GENERATE_KEY first")
        return self.identity.key

    def _store(self, key: ec.EllipticCurvePrivateKey) -> None:
        """Write esp_secure_cert (device cert, trust anchor, the key) when the partition table has the partition."""
        from station.families.esp.payloads import PayloadError
        from station.families.esp.payloads.partition_table import (
            TABLE_MAX_LENGTH, TABLE_OFFSET, TYPE_ESP_SECURE_CERT, parse_partition_table,
        )
        from station.families.esp.payloads.secure_cert import build_secure_cert

        try:
            parts = parse_partition_table(self.board.flash.read(TABLE_OFFSET, TABLE_MAX_LENGTH))
        except PayloadError:
            return  # no partition table: the identity lives in the agent's own storage only
        part = next((p for p in parts if p.type == TYPE_ESP_SECURE_CERT or p.name == "esp_secure_cert"), None)
        if part is None:
            return
        try:
            image = build_secure_cert(self.identity.chain[0], self.identity.anchors[0], key, partition_size=part.size)
            self.board.flash.erase(part.offset, part.size)
            self.board.flash.program(part.offset, image)
        except (PayloadError, FlashRangeError) as exc:
            raise _Refused(E_STORAGE, f"could not write esp_secure_cert: {exc}") from None
