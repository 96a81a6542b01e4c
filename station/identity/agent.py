"""Host side of the on-board identity agent protocol (docs/agent-protocol.md): the key is made on the board.

A firmware built with the station's provisioning agent answers framed requests on its UART (115200 baud) after
its boot log: GET_INFO, GENERATE_KEY, GET_CSR, PUT_CHAIN, COMMIT. `AgentClient` speaks it over any open pyserial
port (a real tty, or espsim:// for an emulated board): one method per request, every failure an `AgentError`
in plain words. Nothing secret crosses this line: the private key never leaves the board, and this module logs
request names and sizes only.

    frame = F5 A6 | version u8 | type u8 | seq u8 | length u16 LE | payload | CRC-32 LE
            (CRC-32 = zlib.crc32 over version .. payload; payload at most 8192 bytes)
"""
from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from station.text import one_line

log = logging.getLogger(__name__)

MAGIC = b"\xF5\xA6"
VERSION = 1
HEADER = struct.Struct("<BBBH")  # version, type, seq, length (after the magic)
CRC = struct.Struct("<I")
MAX_PAYLOAD = 8192
OVERHEAD = len(MAGIC) + HEADER.size + CRC.size

GET_INFO, GENERATE_KEY, GET_CSR, PUT_CHAIN, COMMIT = 0x01, 0x02, 0x03, 0x04, 0x05
REPLY = 0x80  # an answer's type is the request's | 0x80
ERROR = 0xFF
NAMES = {GET_INFO: "GET_INFO", GENERATE_KEY: "GENERATE_KEY", GET_CSR: "GET_CSR", PUT_CHAIN: "PUT_CHAIN",
         COMMIT: "COMMIT"}

# error codes in ERROR frames
E_CRC, E_VERSION, E_UNKNOWN, E_BAD_REQUEST, E_TOO_LARGE, E_KEY_TYPE = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
E_NO_KEY, E_NO_CHAIN, E_CERT_MISMATCH, E_COMMITTED, E_STORAGE = 0x07, 0x08, 0x09, 0x0A, 0x0B
ERROR_NAMES = {E_CRC: "CRC", E_VERSION: "VERSION", E_UNKNOWN: "UNKNOWN_TYPE", E_BAD_REQUEST: "BAD_REQUEST",
               E_TOO_LARGE: "TOO_LARGE", E_KEY_TYPE: "KEY_TYPE", E_NO_KEY: "NO_KEY", E_NO_CHAIN: "NO_CHAIN",
               E_CERT_MISMATCH: "CERT_MISMATCH", E_COMMITTED: "COMMITTED", E_STORAGE: "STORAGE"}

KEY_TYPES = {"P-256": 1}  # key type byte in GENERATE_KEY; bit (1 << (n - 1)) in GET_INFO's key-type mask
STATES = {0: "fresh", 1: "keyed", 2: "committed"}
PRINTABLE = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?")  # PrintableString


def encode_frame(ftype: int, seq: int, payload: bytes = b"", version: int = VERSION) -> bytes:
    body = HEADER.pack(version, ftype, seq & 0xFF, len(payload)) + payload
    return MAGIC + body + CRC.pack(zlib.crc32(body))


def pack_str(text: str) -> bytes:
    data = text.encode()
    if len(data) > 255:
        raise ValueError(f"{text[:20]!r}… is longer than 255 bytes")
    return bytes((len(data),)) + data


class AgentError(Exception):
    """The agent did not do what was asked. `kind`: timeout, garbage, crc, refused or protocol; `code`: the
    agent's error code when it refused (E_*), else None."""

    def __init__(self, message: str, kind: str, code: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.code = code


@dataclass(frozen=True)
class AgentInfo:
    protocol: int  # agent protocol version
    state: str  # "fresh" (no key), "keyed" (key made, not committed) or "committed"
    key_types: tuple[str, ...]  # what GENERATE_KEY accepts, e.g. ("P-256",)
    chain_stored: bool  # PUT_CHAIN has been accepted
    max_payload: int
    mac: str  # base MAC, aa:bb:cc:dd:ee:ff
    chip: str  # e.g. "ESP32-C3"
    firmware: str  # "project version" from the app, may be empty
    subject_serial: str  # what GENERATE_KEY bound the key to ("" while fresh)


class _Reader:
    """Collects bytes from the port, skips what is not a frame (boot log, noise) and cuts out frames."""

    def __init__(self):
        self.buf = bytearray()
        self.text_skipped = 0
        self.binary_skipped = 0
        self.last_text = b""

    def skip(self, n: int) -> None:
        junk = bytes(self.buf[:n])
        del self.buf[:n]
        text = sum(1 for b in junk if 0x20 <= b < 0x7F or b in (9, 10, 13))
        self.text_skipped += text
        self.binary_skipped += len(junk) - text
        if text:
            self.last_text = (self.last_text + junk)[-400:]

    def next_frame(self) -> tuple[str, int, int, int, bytes] | None:
        """("ok"|"crc", version, type, seq, payload) for the first frame in the buffer, or None for more bytes."""
        while True:
            at = self.buf.find(MAGIC)
            if at < 0:
                keep = 1 if self.buf.endswith(MAGIC[:1]) else 0  # half a magic may be at the end
                self.skip(len(self.buf) - keep)
                return None
            if at:
                self.skip(at)
            if len(self.buf) < len(MAGIC) + HEADER.size:
                return None
            version, ftype, seq, length = HEADER.unpack_from(self.buf, len(MAGIC))
            if length > MAX_PAYLOAD:  # not a frame: a magic look-alike in noise
                self.skip(1)
                continue
            end = len(MAGIC) + HEADER.size + length
            if len(self.buf) < end + CRC.size:
                return None
            body = bytes(self.buf[len(MAGIC):end])
            (crc,) = CRC.unpack_from(self.buf, end)
            if crc != zlib.crc32(body):
                del self.buf[:end + CRC.size]  # a damaged frame: dropped whole, it is not noise to count
                return "crc", version, ftype, seq, b""
            del self.buf[:end + CRC.size]
            return "ok", version, ftype, seq, body[HEADER.size:]


class AgentClient:
    """Talks to the provisioning agent on an open serial port (the caller opens and closes it).

    Each request is retried on a CRC error or a timeout, `retries` times, with the same sequence number: the agent
    answers a repeated request from its last answer instead of doing it twice (no second key, no double commit).
    """

    def __init__(self, serial_port, timeout: float = 2.0, retries: int = 2):
        self.port = serial_port
        self.timeout = timeout
        self.retries = retries
        self._seq = os.urandom(1)[0]  # a new client does not collide with the agent's memory of an old one
        self._reader = _Reader()
        self._pub: ec.EllipticCurvePublicKey | None = None

    @property
    def _where(self) -> str:
        return str(getattr(self.port, "name", None) or getattr(self.port, "port", None) or "the port")

    # --- the five requests ----------------------------------------------------------------------------------

    def get_info(self) -> AgentInfo:
        p = self._request(GET_INFO)
        try:
            protocol, state, key_mask, flags, max_payload = struct.unpack_from("<BBBBH", p)
            mac = p[6:12]
            pos, texts = 12, []
            for _ in range(3):
                n = p[pos]
                texts.append(one_line(p[pos + 1:pos + 1 + n].decode(), limit=255))  # the board's words
                pos += 1 + n
            if len(mac) != 6 or pos != len(p):
                raise ValueError("length")
        except (struct.error, IndexError, ValueError, UnicodeDecodeError):
            raise AgentError(f"The agent's GET_INFO answer is malformed ({len(p)} bytes); is the firmware's agent "
                             f"protocol {VERSION}?", "protocol") from None
        if state not in STATES:
            raise AgentError(f"The agent reports an unknown state {state}", "protocol")
        key_types = tuple(name for name, n in KEY_TYPES.items() if key_mask & (1 << (n - 1)))
        return AgentInfo(protocol, STATES[state], key_types, bool(flags & 1), max_payload,
                         ":".join(f"{b:02x}" for b in mac), *texts)

    def generate_key(self, subject_serial: str, key_type: str = "P-256") -> ec.EllipticCurvePublicKey:
        """Make a new key on the board, bound to `subject_serial` (the certificate's subject serialNumber).

        Replaces an uncommitted key; refused (AgentError kind "refused", code E_COMMITTED) after COMMIT."""
        if key_type not in KEY_TYPES:
            raise ValueError(f"key type {key_type!r} is not one the agent protocol knows ({', '.join(KEY_TYPES)})")
        if not 1 <= len(subject_serial) <= 64 or not set(subject_serial.encode()) <= PRINTABLE:
            raise ValueError(f"subject serial {subject_serial!r} must be 1-64 PrintableString characters "
                             "(letters, digits, space and '()+,-./:=?)")
        p = self._request(GENERATE_KEY, bytes((KEY_TYPES[key_type],)) + pack_str(subject_serial))
        try:
            key = serialization.load_der_public_key(p)
        except (ValueError, UnsupportedAlgorithm):
            raise AgentError("The agent's public key is not a DER SubjectPublicKeyInfo", "protocol") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise AgentError(f"The agent made a {type(key).__name__}, not the {key_type} key asked for", "protocol")
        self._pub = key
        return key

    def get_csr(self) -> x509.CertificateSigningRequest:
        """The board's PKCS#10 request for its key (subject serialNumber = the serial given to generate_key)."""
        p = self._request(GET_CSR)
        try:
            csr = x509.load_der_x509_csr(p)
            csr.public_key()  # parsed lazily: a mangled key or algorithm shows here, not later
            csr.subject
        except (ValueError, UnsupportedAlgorithm):
            raise AgentError("The agent's CSR is not a DER PKCS#10 request", "protocol") from None
        return csr

    def put_chain(self, chain: Sequence[bytes], anchors: Sequence[bytes]) -> None:
        """Store the device certificate (chain[0]), its issuing chain and the trust anchors (all DER) on the board.
        The board checks that chain[0] is for its key and subject serial."""
        if not chain or not anchors:
            raise ValueError("put_chain needs the device certificate first in `chain` and at least one trust anchor")
        if len(chain) > 255 or len(anchors) > 255:
            raise ValueError("at most 255 certificates in each list")
        payload = bytes((len(chain), len(anchors))) + b"".join(
            struct.pack("<H", len(der)) + bytes(der) for der in (*chain, *anchors))
        if len(payload) > MAX_PAYLOAD:
            raise AgentError(f"The certificates are {len(payload)} bytes together; the agent takes at most "
                             f"{MAX_PAYLOAD} in one PUT_CHAIN. Use a shorter chain.", "refused", E_TOO_LARGE)
        self._request(PUT_CHAIN, payload)

    def commit(self) -> None:
        """Seal the identity: the board stores it in its secure storage and from now on refuses a new key or chain."""
        self._request(COMMIT)

    # --- one exchange -----------------------------------------------------------------------------------------

    def _request(self, rtype: int, payload: bytes = b"") -> bytes:
        what = NAMES[rtype]
        if len(payload) > MAX_PAYLOAD:
            raise AgentError(f"{what} would carry {len(payload)} bytes; frames carry at most {MAX_PAYLOAD}",
                             "refused", E_TOO_LARGE)
        self._seq = (self._seq + 1) & 0xFF
        frame = encode_frame(rtype, self._seq, payload)
        tries = 1 + self.retries
        crc_errors = 0
        timeouts = 0
        for attempt in range(1, tries + 1):
            log.debug("agent %s: %s seq %d, %d bytes (try %d)", self._where, what, self._seq, len(payload), attempt)
            self.port.write(frame)
            outcome, ftype, answer = self._await(self._seq)
            if outcome == "crc":
                crc_errors += 1
                continue
            if outcome == "timeout":
                timeouts += 1
                continue
            if ftype == ERROR:
                code, message = (answer[0], one_line(answer[1:], limit=200)) if answer else (0, "")
                if code == E_CRC and attempt < tries:
                    crc_errors += 1  # our request arrived damaged: send it again
                    continue
                raise self._refusal(what, code, message)
            if ftype != rtype | REPLY:
                raise AgentError(f"The agent answered {what} with frame type {ftype:#04x}", "protocol")
            return answer
        raise self._failure(what, tries, crc_errors, timeouts)

    def _await(self, seq: int) -> tuple[str, int, bytes]:
        """Read until the answer to `seq` (ok), a damaged frame (crc) or the timeout."""
        deadline = time.monotonic() + self.timeout
        reader = self._reader
        while True:
            frame = reader.next_frame()
            while frame is not None:
                status, version, ftype, fseq, payload = frame
                if status == "crc":
                    return "crc", 0, b""
                if version != VERSION:
                    raise AgentError(f"The agent speaks protocol version {version}; this station speaks {VERSION}. "
                                     "Update the station or build the firmware with a matching agent.", "protocol")
                if fseq == seq:
                    return "ok", ftype, payload
                frame = reader.next_frame()  # an answer to an earlier request: stale, dropped
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout", 0, b""
            self.port.timeout = left
            waiting = self.port.in_waiting
            data = self.port.read(waiting if waiting else 1)
            reader.buf += data

    def _refusal(self, what: str, code: int, message: str) -> AgentError:
        name = ERROR_NAMES.get(code, "unknown")
        if code == E_COMMITTED:
            return AgentError(f"The board refused {what}: its identity is already committed ({message}). A committed "
                              "board keeps its key and certificate for good.", "refused", code)
        if code == E_VERSION:
            return AgentError(f"The board's agent does not speak protocol version {VERSION} ({message})", "protocol",
                              code)
        return AgentError(f"The board refused {what}: {message or 'no reason given'} (agent error {code:#04x} "
                          f"{name})", "refused", code)

    def _failure(self, what: str, tries: int, crc_errors: int, timeouts: int) -> AgentError:
        reader = self._reader
        if crc_errors and not timeouts:
            return AgentError(f"The agent's answers to {what} on {self._where} failed the CRC-32 check {crc_errors} "
                              f"times: the serial line corrupts data (cable, noise or baud rate?)", "crc")
        if reader.binary_skipped:
            return AgentError(f"Garbage on the line from {self._where}: {reader.binary_skipped} bytes that are neither "
                              f"text nor agent frames, and no answer to {what} in {tries} tries. Check the baud rate "
                              "(115200) and that the firmware runs the station's provisioning agent.", "garbage")
        seen = ""
        if reader.text_skipped:
            lines = [ln for ln in reader.last_text.decode("ascii", "replace").splitlines() if ln.strip()]
            seen = f"; the board printed text (last line: '{one_line(lines[-1], limit=80)}')" if lines else ""
        return AgentError(f"No provisioning agent answered {what} on {self._where} within {self.timeout:g} s "
                          f"({tries} tries){seen}. Is the firmware built with the station's agent, and has the board "
                          "booted into it?", "timeout")
