"""From a profile's [cloud] table to a working registrar."""
from __future__ import annotations

from pathlib import Path

from station.cloud.registrar import HttpsRegistrar, Registrar, SparkServerRegistrar
from station.profiles import CloudSpec
from station.secrets import SecretSpec


def registrar_for(spec: CloudSpec, data: Path, ca=None, broker=None) -> Registrar:
    """The registrar a profile asks for. "mosquitto" means the station's own broker (`station cloud up`, or the
    one `broker` the caller runs); a broker that is down only delays registrations (the outbox retries)."""
    if spec.registrar == "mosquitto":
        if broker is None:
            from station.cloud.broker import station_broker

            broker = station_broker(data, ca)  # with the CA's issuing key: a void signs the new CRL
        return broker.registrar("mosquitto")
    opts = spec.options
    if spec.registrar == "spark-server":
        return SparkServerRegistrar(spec.url, client_id=opts.get("client_id", "particle"),
                                    client_secret=SecretSpec.parse("spark-server client secret", opts["client_secret"]),
                                    username=opts.get("username", ""),
                                    password=SecretSpec.parse("spark-server password", opts["password"]))
    return HttpsRegistrar(spec.url, token=SecretSpec.parse("registration API token", opts["token"]),
                          pin_sha256=opts["pin_sha256"], pin_kind=opts.get("pin_kind", "certificate"))
