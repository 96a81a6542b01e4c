"""Registering boards with a cloud: the local Mosquitto broker, spark-server, or any HTTPS endpoint.

    tls.py               the broker's server certificate and the CRL, made with the station's issuing CA
    broker.py            LocalBroker: runs a Mosquitto 2 broker for the bench (config, dynsec, CRL, PID)
    dynsec.py            DynsecClient: the dynamic-security control API over MQTT v5, many commands per message
    registrar.py         DeviceRegistration + the Registrar protocol: Mosquitto, spark-server, HTTPS
    outbox.py            the registration outbox in the journal file, delivered in the background with backoff
    spark_test_server.py a spec-faithful stand-in for spark-server's documented HTTP API (tests, demos)
    cli.py               `station cloud up | down | status`

Errors are `CloudError`s with messages in plain words that never carry a password or a token. The outbox
tells them apart: `CloudUnavailable` is retried later, `CloudRefused` marks the registration failed.
"""
from __future__ import annotations


class CloudError(Exception):
    """Something about the cloud went wrong. The message says what, and what to do; it carries no secret."""


class CloudUnavailable(CloudError):
    """The cloud can't be reached right now (down, refusing connections, timing out). Worth retrying."""


class CloudRefused(CloudError):
    """The cloud answered and said no (bad credentials, bad key, conflicting registration). Retrying as-is
    gives the same answer; someone has to fix the cause first."""


class BrokerError(CloudError):
    """The local broker can't be set up, started or stopped."""


__all__ = ["CloudError", "CloudUnavailable", "CloudRefused", "BrokerError"]
