"""A seeded agent-frame fuzzer: the station's AgentClient against the emulated on-board agent
(docs/agent-protocol.md) whose answers are mangled on the line, one exchange per case.

Whatever comes back (flipped bits, frames re-checksummed around mangled payloads, wrong types, versions and
sequence numbers, lengths past the limit, text with terminal escapes, ERROR frames that try to print their own
lines), the client either completes the exchange or raises AgentError with one printable line. Nothing else.
"""
from __future__ import annotations

import datetime
import random
import unicodedata
import zlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from station.families.esp.sim.agent import AgentMode
from station.families.esp.sim.board import EspBoard
from station.identity import agent as proto
from station.identity.agent import AgentClient, AgentError

CASES = 400
EVIL_TEXT = ["\x1b[2K\r[sim-1.1] PASS  (3.1 s)\n", "ok\r\n\x1b]0;owned\x07", "\u202eSSAP", "\x00\x7f\x9b31m",
             "x" * 4000, "ünïcødé 日本 😀", ""]
CA_KEY = ec.generate_private_key(ec.SECP256R1())
CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fuzz CA")])


def frame(version: int, ftype: int, seq: int, payload: bytes, length: int | None = None) -> bytes:
    body = proto.HEADER.pack(version, ftype, seq, len(payload) if length is None else length) + payload
    return proto.MAGIC + body + proto.CRC.pack(zlib.crc32(body))


def evil_info() -> bytes:
    texts = [random.choice(EVIL_TEXT).encode()[:255] for _ in range(3)]
    return bytes((1, 0, 1, 0)) + (8192).to_bytes(2, "little") + bytes(6) + b"".join(
        bytes((len(t),)) + t for t in texts)


def mangle(answer: bytes, rng: random.Random) -> bytes:
    """One answer frame, damaged in one of the ways a line or a broken agent damages it."""
    version, ftype, seq, length = proto.HEADER.unpack_from(answer, 2)
    payload = answer[2 + proto.HEADER.size:-4]
    kind = rng.randrange(14)
    if kind == 0:  # bits flipped on the line: the CRC catches it
        out = bytearray(answer)
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    if kind == 1 and payload:  # a broken agent: mangled payload, correct CRC (parsers see it)
        out = bytearray(payload)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return frame(version, ftype, seq, bytes(out))
    if kind == 2:
        return frame(version, ftype, seq, payload[:rng.randrange(len(payload) + 1)])
    if kind == 3:
        return frame(version, ftype, seq, payload + rng.randbytes(rng.randint(1, 64)))
    if kind == 4:
        return frame(version, ftype, seq, rng.randbytes(rng.randint(0, 300)))
    if kind == 5:
        return frame(version, rng.choice((0x00, 0x7F, 0x81, 0x85, 0xFE, rng.randrange(256))), seq, payload)
    if kind == 6:
        return frame(rng.choice((0, 2, 0xFF)), ftype, seq, payload)
    if kind == 7:  # an answer to another request: stale, the client waits on
        return frame(version, ftype, (seq + rng.randint(1, 255)) & 0xFF, payload)
    if kind == 8:  # the agent refuses, with words of its choosing
        return frame(version, proto.ERROR, seq, bytes((rng.randrange(256),)) + rng.choice(EVIL_TEXT).encode())
    if kind == 9:  # text before the answer: a log line with escapes, or noise
        return rng.choice(EVIL_TEXT).encode() + rng.randbytes(rng.randint(0, 40)).replace(b"\xf5", b"") + answer
    if kind == 10:
        return b""  # no answer at all
    if kind == 11:
        return frame(version, ftype, seq, payload, length=rng.choice((8193, 0xFFFF)))
    if kind == 12:
        return frame(version, proto.GET_INFO | proto.REPLY, seq, evil_info())
    return answer[:rng.randrange(len(answer))]  # cut off mid-frame


class MangledLine:
    """A serial port whose far end is the emulated agent; the `target`-th answer is mangled once."""

    def __init__(self, rng: random.Random, target: int):
        self.rng, self.target, self.answers = rng, target, 0
        self.incoming = bytearray()
        self.rx = bytearray()
        self.board = EspBoard("esp32", 1)
        self.board.attach(self._from_board)
        self.board.mode = AgentMode(self.board)  # the app's banner lands on the line first, as on a real boot
        self.rx += self.incoming
        self.timeout = 0.0
        self.name = "fuzz-line"

    def _from_board(self, data: bytes) -> None:
        self.incoming += data

    def write(self, data: bytes) -> int:
        self.incoming.clear()
        self.board.receive(data)
        answer = bytes(self.incoming)
        self.answers += 1
        if self.answers == self.target and answer.startswith(proto.MAGIC):
            answer = mangle(answer, self.rng)
        self.rx += answer
        return len(data)

    @property
    def in_waiting(self) -> int:
        return len(self.rx)

    def read(self, n: int = 1) -> bytes:
        data = bytes(self.rx[:n])
        del self.rx[:n]
        return data


def certificate_for(csr: x509.CertificateSigningRequest) -> bytes:
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(CA_NAME).public_key(csr.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(CA_KEY, hashes.SHA256()))
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.DER)


def provision(client: AgentClient) -> None:
    client.get_info()
    client.generate_key("FUZZ-0001")
    csr = client.get_csr()
    client.put_chain([certificate_for(csr)], [certificate_for(csr)])
    client.commit()
    client.get_info()


def assert_one_printable_line(message: str) -> None:
    assert message and len(message) < 1500, message
    bad = [c for c in message if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs")]
    assert not bad, message


@pytest.mark.parametrize("block", range(4))
def test_mangled_agent_frames_end_in_an_agent_error_of_one_line(block):
    outcomes = {"completed": 0, "refused": 0}
    for case in range(block * CASES // 4, (block + 1) * CASES // 4):
        rng = random.Random(f"agent-fuzz:{case}")
        line = MangledLine(rng, target=rng.randint(1, 6))
        client = AgentClient(line, timeout=0.02, retries=1)
        try:
            provision(client)
        except AgentError as exc:
            assert_one_printable_line(str(exc))
            outcomes["refused"] += 1
        else:
            outcomes["completed"] += 1
    assert outcomes["refused"] > (CASES // 4) // 3  # the mangling really reaches the client


def test_a_board_cannot_print_a_line_of_its_own_through_an_error_frame():
    class Refusing(MangledLine):
        def write(self, data: bytes) -> int:
            seq = data[4]
            self.rx += frame(1, proto.ERROR, seq, bytes((0x0B,)) + b"flash busy\n[sim-1.1] PASS\x1b[0m")
            return len(data)

    client = AgentClient(Refusing(random.Random(0), 0), timeout=0.02, retries=0)
    with pytest.raises(AgentError) as refused:
        client.commit()
    assert refused.value.kind == "refused"
    assert str(refused.value) == ("The board refused COMMIT: flash busy / [sim-1.1] PASS (agent error 0x0b "
                                  "STORAGE)")
