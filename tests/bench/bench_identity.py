#!/usr/bin/env python3
"""Identity benchmark: IDevID issuance per board, host-made vs board-made keys, file-key CA vs SoftHSM2 token.

    python tests/bench/bench_identity.py [--count N] [--rounds R]

Not a pytest test. Every number comes from ONE run, measured side by side: the eight configurations run in
R rounds of N/R boards each, in a rotating order, so machine noise spreads over all of them alike.

Configurations (P-256 device keys, the issuing CA is P-256 in both CA kinds)
  mode   host   the station makes the key:   P-256 keygen + certificate build + sign + DER
         board  the board made the key:      CSR parse + proof-of-possession verify + build + sign + DER
                (the CSRs are made beforehand, as the boards would; that time is not counted)
  CA     file   `station ca init` with encrypted key files, opened with StationCA.load (key in memory)
         token  `station ca init --pkcs11-module libsofthsm2.so`: every signature is a PKCS#11 call
  path   crypto the cryptographic work only (the numbers above)
         ledger the public API as the pipeline calls it (host_identity / check_csr + issue_idevid), which
                also records each certificate in the ledger (SQLite WAL, synchronous=FULL: one fsync
                per certificate, on the temp dir's disk)

Target: host-side issuance under 2 ms per board (file CA). Exit status 0 target met, 1 missed, 2 setup failed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from station.identity import idevid  # noqa: E402
from station.identity.ca import StationCA  # noqa: E402
from station.identity.keys import SecretSource  # noqa: E402
from station.identity.ledger import Ledger  # noqa: E402
from station.identity.pkcs11 import SOFTHSM2_MODULE  # noqa: E402

PASSPHRASE = "bench passphrase, not secret"
PIN = "bench-pin-1234"
TARGET_MS = 2.0


def setup(tmp: Path) -> dict[str, StationCA]:
    tokens = tmp / "tokens"
    tokens.mkdir()
    conf = tmp / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    util = shutil.which("softhsm2-util")
    if not util or not Path(SOFTHSM2_MODULE).exists():
        raise SystemExit("bench: SoftHSM2 is missing (apt-get install softhsm2)")
    subprocess.run([util, "--init-token", "--free", "--label", "bench", "--pin", PIN, "--so-pin", "so-" + PIN],
                   check=True, capture_output=True)
    StationCA.init(tmp / "file", organization="Bench", passphrase_source=SecretSource.fixed(PASSPHRASE)).close()
    StationCA.init(tmp / "token", organization="Bench", pkcs11_module=SOFTHSM2_MODULE, token_label="bench",
                   pin_source=SecretSource.fixed(PIN)).close()
    return {"file": StationCA.load(tmp / "file", SecretSource.fixed(PASSPHRASE)),
            "token": StationCA.load(tmp / "token", pin_source=SecretSource.fixed(PIN))}


def facts(n: int) -> dict:
    return {"chip": "ESP32", "mac": f"24:0a:{n >> 24 & 255:02x}:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}"}


def make_csrs(count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        out.append(x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
                   .public_bytes(serialization.Encoding.DER))
    return out


class Config:
    def __init__(self, mode: str, ca_kind: str, path: str, ca: StationCA, ledger: Ledger | None):
        self.mode, self.ca_kind, self.path, self.ca, self.ledger = mode, ca_kind, path, ca, ledger
        self.profile = idevid.IdevidProfile(key_origin=mode)
        self.times: list[float] = []

    def run(self, first: int, csrs: list[bytes]) -> None:
        ca, profile, ledger = self.ca, self.profile, self.ledger
        clock = time.perf_counter
        for i, csr in enumerate(csrs):
            f = facts(first + i)
            t0 = clock()
            if self.path == "crypto":
                if self.mode == "host":
                    public_key = idevid.generate_device_key(profile).public_key()
                else:
                    request = x509.load_der_x509_csr(csr)
                    if not request.is_signature_valid:
                        raise SystemExit("bench: a CSR failed to verify")
                    public_key = request.public_key()
                builder, _ = idevid._builder(profile, public_key, f)
                cert = ca.sign_certificate(builder.serial_number(x509.random_serial_number()))
                cert.public_bytes(serialization.Encoding.DER)
            elif self.mode == "host":
                _, cert = idevid.host_identity(ca, profile, f, ledger)
                cert.public_bytes(serialization.Encoding.DER)
            else:
                public_key = idevid.check_csr(csr, profile, f, ledger)
                idevid.issue_idevid(ca, profile, public_key, f, ledger).public_bytes(serialization.Encoding.DER)
            self.times.append(clock() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="boards per configuration (default 2000)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    args = parser.parse_args()
    per_round = max(1, args.count // args.rounds)

    tmp = Path(tempfile.mkdtemp(prefix="bench-identity-"))
    try:
        try:
            cas = setup(tmp)
        except Exception as exc:  # noqa: BLE001 - report any setup failure plainly
            print(f"bench: setup failed: {exc}", file=sys.stderr)
            return 2
        configs = []
        for mode in ("host", "board"):
            for kind in ("file", "token"):
                for path in ("crypto", "ledger"):
                    ledger = Ledger(tmp / f"{mode}-{kind}" / "journal.sqlite3") if path == "ledger" else None
                    configs.append(Config(mode, kind, path, cas[kind], ledger))
        csrs = make_csrs(per_round * args.rounds * 2)  # board configs each need fresh keys (the ledger checks)
        serial = 0
        for r in range(args.rounds):
            order = configs[r % len(configs):] + configs[:r % len(configs)]
            for cfg in order:
                base = serial
                serial += per_round
                chunk = csrs[:per_round] if cfg.path == "crypto" else None
                if cfg.mode == "board" and cfg.path == "ledger":
                    offset = (0 if cfg.ca_kind == "file" else args.rounds) * per_round + r * per_round
                    chunk = csrs[offset:offset + per_round]
                cfg.run(base, chunk if chunk is not None else [b""] * per_round)

        print(f"IDevID issuance, P-256 device keys, {per_round * args.rounds} boards per row "
              f"({args.rounds} interleaved rounds); cryptography {__import__('cryptography').__version__}")
        print(f"{'mode':<6} {'CA':<6} {'path':<7} {'median ms':>10} {'mean ms':>8} {'p95 ms':>7} {'boards/s':>9} "
              f"{'vs file':>8}")
        medians = {}
        for cfg in configs:
            ms = sorted(t * 1000 for t in cfg.times)
            med = statistics.median(ms)
            medians[(cfg.mode, cfg.ca_kind, cfg.path)] = med
            rate = len(ms) / (sum(ms) / 1000)
            ratio = med / medians[(cfg.mode, "file", cfg.path)] if cfg.ca_kind == "token" else 1.0
            print(f"{cfg.mode:<6} {cfg.ca_kind:<6} {cfg.path:<7} {med:>10.3f} {statistics.fmean(ms):>8.3f} "
                  f"{ms[int(len(ms) * 0.95)]:>7.3f} {rate:>9.0f} {ratio:>7.2f}x")
        worst = max(medians[("host", "file", "crypto")], medians[("host", "file", "ledger")])
        ok = worst < TARGET_MS
        print(f"target: host-side issuance < {TARGET_MS} ms per board (file CA): {worst:.3f} ms "
              f"{'MET' if ok else 'MISSED'}")
        for cfg in configs:
            if cfg.ledger:
                cfg.ledger.close()
        for ca in cas.values():
            ca.close()
        return 0 if ok else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
