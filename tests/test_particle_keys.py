"""The key material a Spark Core or Photon gets, in the forms its firmware reads (PROTOCOLS §5.2), and the
[particle] profile table that names it: what is refused, in words that say the fix."""
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from station.families.particle.keys import (
    ParticleKeyError, address_tlv, load_server_key, make_device_key, read_device_key, server_block, slot_fingerprint,
)
from station.profile_library import shipped_profiles_dir
from station.profiles import ProfileError, load_profile

SERVER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SERVER_PEM = SERVER.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)


def test_a_device_key_is_rsa_1024_pkcs1_der_with_the_header_the_firmware_reads():
    key = make_device_key()
    # PROTOCOLS §5.2: 30 82 02 5x 02 01 00 02 81 81 00, the modulus at offset 11
    assert key.der[:3] == bytes.fromhex("308202") and key.der[3] & 0xF0 == 0x50
    assert key.der[4:11] == bytes.fromhex("02010002818100")
    private = serialization.load_der_private_key(key.der, None)
    assert private.key_size == 1024 and private.public_key().public_numbers().e == 65537
    assert 600 <= len(key.der) <= 612  # fits the Core's 612-byte slot


def test_a_slot_read_back_gives_the_same_key_and_fingerprint_whatever_follows_it():
    key = make_device_key()
    slot = key.der + b"\xff" * (612 - len(key.der))
    again = read_device_key(slot)
    assert again.der == key.der and again.fingerprint == key.fingerprint
    public = serialization.load_pem_public_key(key.public_pem.encode())
    spki = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key.fingerprint == hashlib.sha256(spki).hexdigest()


@pytest.mark.parametrize("slot, says", [
    (b"\xff" * 612, "empty"),
    (b"\x00" * 612, "does not start with a DER sequence"),
])
def test_an_unusable_slot_is_named(slot, says):
    with pytest.raises(ParticleKeyError, match=says):
        read_device_key(slot)
    assert slot_fingerprint(slot).startswith(("none", "unusable"))


def test_a_pkcs8_key_is_refused_because_the_firmware_reads_fixed_offsets():
    private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pkcs8 = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    with pytest.raises(ParticleKeyError, match="not PKCS#1"):
        read_device_key(pkcs8 + b"\xff" * 100)


def test_a_2048_bit_device_key_is_refused():
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    with pytest.raises(ParticleKeyError, match="RSA-1024"):
        read_device_key(der)


def test_address_fields_for_ipv4_and_host_names():
    assert address_tlv("192.168.1.10") == bytes([0, 4, 192, 168, 1, 10])
    assert address_tlv("cloud.lan") == bytes([1, 9]) + b"cloud.lan" + b"\0"  # odd length: one 0 of padding
    assert address_tlv("spark.io") == bytes([1, 8]) + b"spark.io"
    for bad in ("::1", "not a host!", ""):
        with pytest.raises(ParticleKeyError):
            address_tlv(bad)


def test_the_server_block_holds_the_der_key_then_the_address_at_384():
    key = load_server_key(SERVER_PEM)
    block = server_block(key, "10.0.0.2", 1024)
    assert len(block) == 1024 and block[:len(key.der)] == key.der
    assert block[len(key.der):384] == b"\xff" * (384 - len(key.der))
    assert block[384:390] == bytes([0, 4, 10, 0, 0, 2]) and block[390:] == b"\xff" * (1024 - 390)
    assert load_server_key(key.der).der == key.der  # DER works as well as PEM


def test_an_ec_server_key_is_refused():
    pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ParticleKeyError, match="RSA"):
        load_server_key(pem)


# --- the [particle] table ---------------------------------------------------------------------------------------

def particle_profile(tmp_path, particle: str, cloud: str = "") -> str:
    tinker = (shipped_profiles_dir() / "firmware" / "tinker-photon" / "tinker.bin").read_bytes()
    (tmp_path / "tinker.bin").write_bytes(tinker)
    (tmp_path / "server.pem").write_bytes(SERVER_PEM)
    path = tmp_path / "p.toml"
    path.write_text(f'''
[profile]
name = "Photons"

[[firmware]]
chip = "Photon"

[[firmware.images]]
file = "tinker.bin"
address = 0x080A0000
sha256 = "{hashlib.sha256(tinker).hexdigest()}"

{particle}
{cloud}
''')
    return str(path)


KEY = f'server_key = {{ file = "server.pem", sha256 = "{hashlib.sha256(SERVER_PEM).hexdigest()}" }}'


def test_a_particle_profile_loads_with_its_cloud_key_and_address(tmp_path):
    profile = load_profile(particle_profile(tmp_path, f'[particle]\n{KEY}\nserver_address = "10.0.0.2"\n'))
    options = profile.options["particle"]
    assert options.server_address == "10.0.0.2" and options.device_key == "new"
    assert options.server_key.pem.encode() == SERVER_PEM


@pytest.mark.parametrize("table, says", [
    ("", "need a [particle] table"),
    (f'[particle]\n{KEY}\nserver_address = "::1"\n', "[particle.server_address]"),
    (f'[particle]\n{KEY}\nserver_address = "10.0.0.2"\ndevice_key = "reuse"\n', "\"new\""),
    ('[particle]\nserver_key = { file = "server.pem", sha256 = "' + "0" * 64 + '" }\nserver_address = "10.0.0.2"\n',
     "pins"),
])
def test_a_bad_particle_table_is_refused_naming_the_key(tmp_path, table, says):
    with pytest.raises(ProfileError) as err:
        load_profile(particle_profile(tmp_path, table))
    assert says in str(err.value)


def test_particle_keys_register_with_spark_server_and_not_with_the_broker(tmp_path):
    particle = f'[particle]\n{KEY}\nserver_address = "10.0.0.2"\n'
    spark = ('[cloud]\nregistrar = "spark-server"\nurl = "http://127.0.0.1:8080"\nusername = "a@b.c"\n'
             'client_secret = "env:SPARK_SECRET"\npassword = "env:SPARK_PASSWORD"\n')
    profile = load_profile(particle_profile(tmp_path, particle, spark))
    assert profile.cloud.registrar == "spark-server" and profile.identity is None
    assert profile.options["particle"].registered
    # Mosquitto admits devices by certificate: the boards are provisioned, and the plan says they are not registered
    broker = '[cloud]\nregistrar = "mosquitto"\n'
    profile = load_profile(particle_profile(tmp_path, particle, broker))
    assert not profile.options["particle"].registered
    assert "Cloud for Photon: none (their Particle (Spark Core, Photon) keys have no place on mosquitto)" in \
        profile.plan()
