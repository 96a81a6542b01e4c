"""A board's IDevID during provisioning: plan it before writing, issue it beside the flash, place it, void it.

The plan (device serial, the ledger's "already provisioned" check, where the identity lands) is made in the
check step, so a refused board is refused before its flash is touched. With the key made on the host, the key
and certificate are made while the firmware flashes and written in the same session; the key lives only in
this process's memory until it is written. A board that fails afterwards gets its certificate voided.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from station.identity.ca import StationCA
from station.identity.idevid import check_csr, host_identity, issue_idevid, public_jwk, render_serial, uses_counter
from station.identity.ledger import Ledger, serial_hex
from station.model import BoardInfo, StepFailed
from station.profiles import IdentitySpec
from station.serials import OutOfSerials


@dataclass
class IdentityPlan:
    spec: IdentitySpec
    facts: dict
    subject_serial: str
    store: str  # where the family puts it: "esp_secure_cert", "littlefs", …
    target: Any  # the family's place for it on the board (an ESP partition)
    replaces: str | None = None  # serial of the live certificate a re-provision voids
    record: dict = field(default_factory=dict)  # public facts for the journal and manifest, once issued


def board_facts(board: BoardInfo) -> dict:
    return {"mac": board.mac, "mac_hex": board.mac.replace(":", "").upper(), "chip": board.chip}


def plan_identity(spec: IdentitySpec, board: BoardInfo, ledger: Ledger, reprovision: bool, store: str,
                  target: Any, device_id: str) -> IdentityPlan:
    """`device_id`: the journal's id of this board; a {counter} number taken is recorded against it."""
    facts = board_facts(board)
    live = None
    if uses_counter(spec.certificate):  # the number names no board: the board is known by its MAC
        live = ledger.find_board(board.mac) if board.mac else None
        if live is not None and not reprovision:
            raise StepFailed(ledger.already_provisioned_message(live))
        try:
            facts["counter"] = ledger.serials.take(spec.certificate.serial_template, spec.certificate.counter_start,
                                                   device_id)
        except OutOfSerials as exc:
            raise StepFailed(str(exc)) from None
    try:
        serial = render_serial(spec.certificate, facts)
    except ValueError as exc:
        raise StepFailed(str(exc)) from exc
    if live is None and "counter" not in facts:  # a number just taken is live nowhere: no need to ask
        live = ledger.find_subject(serial)
    if live is not None and not reprovision:
        raise StepFailed(ledger.already_provisioned_message(live))
    return IdentityPlan(spec, facts, serial, store, target, replaces=live.serial_hex if live else None)


def issue_on_host(plan: IdentityPlan, ca: StationCA, ledger: Ledger, device_id: str):
    """Make the key (in memory) and its certificate, recorded in the ledger; returns (key, certificate) for the
    family to write. The key is never stored anywhere else."""
    if plan.replaces:
        ledger.void(plan.replaces, f"re-provisioned as device {device_id}")
    key, cert = host_identity(ca, plan.spec.certificate, plan.facts, ledger, device_id=device_id)
    plan.record = identity_record(plan, ca, cert)
    return key, cert


def issue_on_board(plan: IdentityPlan, ca: StationCA, ledger: Ledger, device_id: str, board: BoardInfo,
                   serial_port) -> str:
    """The key is made on the board: its provisioning agent (docs/agent-protocol.md), running in the app just
    booted, makes the key and returns a CSR; the station checks it, issues the certificate and hands back the
    chain and trust anchor; COMMIT seals it (the board refuses to re-key afterwards)."""
    from station.identity.agent import AgentClient, AgentError
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
