"""A board's IDevID during provisioning: plan it before writing, issue it beside the flash, place it, void it.

The plan (device serial, the ledger's "already provisioned" check, where the identity lands) is made in the
check step, so a refused board is refused before its flash is touched. With the key made on the host, the key
and certificate are made while the firmware flashes and written in the same session; the key lives only in
this process's memory until it is written. A board that fails afterwards gets its certificate voided.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from station.identity.ca import StationCA
from station.identity.idevid import check_csr, host_identity, issue_idevid, public_jwk, render_serial
from station.identity.ledger import Ledger, serial_hex
from station.model import BoardInfo, StepFailed
from station.payloads.partition_table import Partition
from station.profiles import FirmwareSet, IdentitySpec, identity_target


@dataclass
class IdentityPlan:
    spec: IdentitySpec
    facts: dict
    subject_serial: str
    store: str  # "esp_secure_cert" | "littlefs"
    partition: Partition
    replaces: str | None = None  # serial of the live certificate a re-provision voids
    record: dict = field(default_factory=dict)  # public facts for the journal and manifest, once issued


def board_facts(board: BoardInfo) -> dict:
    return {"mac": board.mac, "mac_hex": board.mac.replace(":", "").upper(), "chip": board.chip}


def plan_identity(spec: IdentitySpec, firmware: FirmwareSet, board: BoardInfo, ledger: Ledger,
                  reprovision: bool) -> IdentityPlan:
    facts = board_facts(board)
    try:
        serial = render_serial(spec.certificate, facts)
        store, partition = identity_target(spec, firmware)
    except ValueError as exc:
        raise StepFailed(str(exc)) from exc
    live = ledger.find_subject(serial)
    if live is not None and not reprovision:
        raise StepFailed(ledger.already_provisioned_message(live))
    return IdentityPlan(spec, facts, serial, store, partition, replaces=live.serial_hex if live else None)


def issue_on_host(plan: IdentityPlan, ca: StationCA, ledger: Ledger, device_id: str) -> bytes:
    """Make the key and certificate, and return the partition image that carries them (secret: holds a key)."""
    from station.payloads.littlefs import build_identity_fs, identity_files
    from station.payloads.secure_cert import build_secure_cert

    if plan.replaces:
        ledger.void(plan.replaces, f"re-provisioned as device {device_id}")
    key, cert = host_identity(ca, plan.spec.certificate, plan.facts, ledger, device_id=device_id)
    plan.record = identity_record(plan, ca, cert)
    der = cert.public_bytes(serialization.Encoding.DER)
    root_der = ca.root.public_bytes(serialization.Encoding.DER)
    if plan.store == "esp_secure_cert":
        return build_secure_cert(der, root_der, key, partition_size=plan.partition.size)
    return build_identity_fs(identity_files(der, key, [root_der]), size=plan.partition.size)


def issue_on_board(plan: IdentityPlan, ca: StationCA, ledger: Ledger, device_id: str, board: BoardInfo,
                   serial_port) -> str:
    """The key is made on the board: its provisioning agent (docs/agent-protocol.md), running in the app just
    booted, makes the key and returns a CSR; the station checks it, issues the certificate and hands back the
    chain and trust anchor; COMMIT seals it (the board refuses to re-key afterwards)."""
    from station.boards.agent import AgentClient, AgentError
    from station.identity import IdentityError

    agent = AgentClient(serial_port, timeout=5.0)
    try:
        info = agent.get_info()
        if info.mac.lower() != board.mac.lower():
            raise StepFailed(f"The provisioning agent answers with MAC {info.mac}, but the board detected on this "
                             f"port is {board.mac}; is another board on this port?")
        if info.state == "committed":
            raise StepFailed(f"The board already holds a committed identity ({info.subject_serial}) and refuses a "
                             f"new key; it needs its secure storage erased before it can be provisioned again")
        if plan.spec.certificate.key_type not in info.key_types:
            raise StepFailed(f"The board's agent makes {', '.join(info.key_types)} keys, but the profile asks for "
                             f"{plan.spec.certificate.key_type}; change [identity] key_type")
        public_key = agent.generate_key(plan.subject_serial, plan.spec.certificate.key_type)
        csr = agent.get_csr().public_bytes(serialization.Encoding.DER)
        certified = check_csr(csr, plan.spec.certificate, plan.facts, ledger)
        if certified.public_numbers() != public_key.public_numbers():
            raise StepFailed("The board's CSR is for another key than the one it just made; its agent is broken")
        if plan.replaces:
            ledger.void(plan.replaces, f"re-provisioned as device {device_id}")
        cert = issue_idevid(ca, plan.spec.certificate, certified, plan.facts, ledger, device_id=device_id)
        plan.record = identity_record(plan, ca, cert)
        der = lambda c: c.public_bytes(serialization.Encoding.DER)  # noqa: E731
        agent.put_chain([der(cert), *(der(c) for c in ca.chain[:-1])], [der(ca.root)])
        agent.commit()
        if agent.get_info().state != "committed":
            raise StepFailed("The board's agent accepted COMMIT but does not report its identity as committed")
    except (AgentError, IdentityError) as exc:
        raise StepFailed(f"On-board identity: {exc}") from exc
    return f"key made on the board; {plan.subject_serial} certified ({serial_hex(cert)}) and committed"


def read_back_certificate(plan: IdentityPlan, image: bytes) -> x509.Certificate:
    """The device certificate as the board's firmware will find it in the partition just written."""
    from station.payloads.littlefs import CLIENT_CERT_PATH, read_fs
    from station.payloads.secure_cert import DEV_CERT, read_secure_cert

    if plan.store == "esp_secure_cert":
        data = read_secure_cert(image)[(DEV_CERT, 0)]
        return x509.load_pem_x509_certificate(data.rstrip(b"\0")) if data.startswith(b"-----") \
            else x509.load_der_x509_certificate(data)
    return x509.load_der_x509_certificate(read_fs(image, 8192, 32)[CLIENT_CERT_PATH])


def identity_record(plan: IdentityPlan, ca: StationCA, cert: x509.Certificate) -> dict:
    pem = [c.public_bytes(serialization.Encoding.PEM).decode() for c in (cert, *ca.chain)]
    return {
        "subject_serial": plan.subject_serial,
        "certificate_serial": serial_hex(cert),
        "certificate": pem[0],
        "chain": pem[1:],
        "public_key": public_jwk(cert.public_key()),
        "key_origin": plan.spec.certificate.key_origin,
        "store": plan.store,
        "ephemeral_ca": ca.is_ephemeral,
        "void": False,
    }


def void_identity(plan: IdentityPlan | None, ledger: Ledger, reason: str) -> None:
    """A failed board must not leave a valid-looking identity: void its certificate if one was issued."""
    if plan is not None and plan.record and not plan.record["void"]:
        ledger.void(plan.record["certificate_serial"], reason)
        plan.record["void"] = True
