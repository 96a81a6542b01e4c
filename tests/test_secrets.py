"""station.secrets: one way to name and read a secret (environment, OS keyring, prompt), and it never leaks.

The keyring tests install an in-memory backend for their duration, so the machine's own keyring is never read
or written."""
import pickle

import keyring
import keyring.errors
import pytest
from keyring.backend import KeyringBackend

from station.profiles import ProfileError, WifiSpec, resolve_psk
from station.secrets import ENV, KEYRING, Place, Secret, SecretError, SecretSpec

VALUE = "correct-horse-battery-9"


class MemoryKeyring(KeyringBackend):
    priority = 1

    def __init__(self, entries=None):
        super().__init__()
        self.entries = dict(entries or {})

    def get_password(self, service, username):
        return self.entries.get((service, username))

    def set_password(self, service, username, password):
        self.entries[(service, username)] = password

    def delete_password(self, service, username):
        self.entries.pop((service, username), None)


class LockedKeyring(MemoryKeyring):
    def get_password(self, service, username):
        raise keyring.errors.KeyringLocked("the collection is locked")


@pytest.fixture
def use_keyring():
    """Install a backend for one test; the previous one (the machine's) comes back afterwards."""
    before = keyring.get_keyring()
    yield keyring.set_keyring
    keyring.set_keyring(before)


def test_one_syntax_for_every_place():
    spec = SecretSpec.parse("cloud token", "env:CLOUD_TOKEN", "keyring:station/cloud")
    assert spec.places == (Place(ENV, "CLOUD_TOKEN"), Place(KEYRING, "station/cloud"))
    assert [str(p) for p in spec.places] == ["env:CLOUD_TOKEN", "keyring:station/cloud"]
    assert spec.describe() == "environment variable CLOUD_TOKEN, else OS keyring entry station/cloud"


@pytest.mark.parametrize("text", ["CLOUD_TOKEN", "env:", "env:A B", "keyring:station", "keyring:/user",
                                  "keyring:a/b/c", "file:/etc/token", "hunter2hunter2"])
def test_a_badly_named_place_is_refused_without_echoing_it(text):
    with pytest.raises(SecretError) as err:
        SecretSpec.parse("cloud token", text)
    # the same words whatever was written: the text is never echoed, as it might be the secret itself
    assert str(err.value) == ("Where the cloud token is kept must be written \"env:VARIABLE\" or "
                              "\"keyring:service/user\"; fix that entry (a secret itself never goes there).")


def test_the_environment_comes_first_and_names_the_origin(use_keyring):
    use_keyring(MemoryKeyring({("station", "cloud"): "from-the-keyring"}))
    spec = SecretSpec.parse("cloud token", "env:CLOUD_TOKEN", "keyring:station/cloud")
    secret = spec.resolve(environ={"CLOUD_TOKEN": VALUE})
    assert secret.reveal() == VALUE and secret.origin == "from CLOUD_TOKEN"
    assert spec.resolve(environ={}).reveal() == "from-the-keyring"


def test_keyring_entry_is_read_from_the_installed_backend(use_keyring):
    use_keyring(MemoryKeyring({("station", "cloud"): VALUE}))
    secret = SecretSpec.parse("cloud token", "keyring:station/cloud").resolve(environ={})
    assert secret.reveal() == VALUE and secret.origin == "from the OS keyring (station/cloud)"


def test_missing_everywhere_names_every_place_and_the_fix(use_keyring):
    use_keyring(MemoryKeyring())
    with pytest.raises(SecretError) as err:
        SecretSpec.parse("cloud token", "env:CLOUD_TOKEN", "keyring:station/cloud").resolve(environ={})
    assert str(err.value) == ("No cloud token: looked in environment variable CLOUD_TOKEN, else OS keyring entry "
                              "station/cloud. Set it: export CLOUD_TOKEN=…, or store it with "
                              "`keyring set station cloud`.")


def test_an_unusable_keyring_is_a_miss_that_is_named(use_keyring):
    use_keyring(LockedKeyring())
    spec = SecretSpec.parse("cloud token", "keyring:station/cloud", "env:CLOUD_TOKEN")
    assert spec.resolve(environ={"CLOUD_TOKEN": VALUE}).reveal() == VALUE  # the next place still answers
    with pytest.raises(SecretError) as err:
        spec.resolve(environ={})
    assert str(err.value) == ("No cloud token: looked in OS keyring entry station/cloud (the OS keyring is not "
                              "usable here: KeyringLocked), else environment variable CLOUD_TOKEN. Set it: "
                              "export CLOUD_TOKEN=….")
    with pytest.raises(SecretError, match="keep it in an environment variable"):
        SecretSpec.parse("cloud token", "keyring:station/cloud").resolve(environ={})


def test_an_empty_variable_is_an_error_not_a_miss(use_keyring):
    use_keyring(MemoryKeyring({("station", "cloud"): VALUE}))
    with pytest.raises(SecretError) as err:
        SecretSpec.parse("cloud token", "env:CLOUD_TOKEN", "keyring:station/cloud").resolve(
            environ={"CLOUD_TOKEN": ""})
    assert str(err.value) == ("The cloud token in environment variable CLOUD_TOKEN is empty; set it to the real "
                              "value, or unset it (then the next place is tried).")


def test_a_typed_secret_is_asked_for_only_when_a_prompt_is_given():
    spec = SecretSpec.parse("CA key passphrase", "env:CA_PASS", typed=True)
    asked = []
    secret = spec.resolve(environ={}, prompt=lambda text: asked.append(text) or VALUE)
    assert secret.reveal() == VALUE and secret.origin == "typed at the prompt" and asked == ["CA key passphrase: "]

    with pytest.raises(SecretError) as err:  # no prompt given: nobody to ask
        spec.resolve(environ={})
    assert str(err.value) == ("No CA key passphrase: looked in environment variable CA_PASS, else a prompt when "
                              "run in a terminal. Set it: export CA_PASS=…, or run this in a terminal and type it.")

    untyped = SecretSpec.parse("cloud token", "env:CLOUD_TOKEN")
    with pytest.raises(SecretError, match="No cloud token"):
        untyped.resolve(environ={}, prompt=lambda text: pytest.fail("a secret not marked typed was asked for"))


def test_prompt_confirmation_and_empty_answers():
    spec = SecretSpec("new CA key passphrase", typed=True)
    answers = iter([VALUE, VALUE])
    assert spec.resolve(prompt=lambda text: next(answers), confirm=True).reveal() == VALUE
    answers = iter([VALUE, "something else"])
    with pytest.raises(SecretError, match="The two new CA key passphrase entries differ"):
        spec.resolve(prompt=lambda text: next(answers), confirm=True)
    with pytest.raises(SecretError, match="An empty new CA key passphrase was typed"):
        spec.resolve(prompt=lambda text: "")


def test_a_spec_that_names_no_place():
    with pytest.raises(SecretError, match="No cloud token: nothing says where it is kept"):
        SecretSpec("cloud token").resolve(environ={})


def test_values_never_show_in_reprs_errors_or_pickles(use_keyring):
    use_keyring(MemoryKeyring({("station", "cloud"): VALUE}))
    spec = SecretSpec.parse("cloud token", "env:CLOUD_TOKEN", "keyring:station/cloud")
    for secret in (spec.resolve(environ={"CLOUD_TOKEN": VALUE}), spec.resolve(environ={})):
        assert VALUE not in repr(secret) and VALUE not in str(secret) and VALUE not in f"{secret}"
        assert VALUE not in repr(spec)
        with pytest.raises(TypeError):
            pickle.dumps(secret)
    assert repr(Secret(VALUE, "from CLOUD_TOKEN")) == "<Secret from CLOUD_TOKEN>"


def test_wifi_profile_keys_map_onto_the_same_lookup(use_keyring):
    use_keyring(MemoryKeyring({("station", "lab-wifi"): VALUE}))
    both = WifiSpec(ssid="lab", psk_env="LAB_PSK", psk_keyring="station/lab-wifi")
    assert resolve_psk(both, {"LAB_PSK": "from-the-env-1"}) == "from-the-env-1"
    assert resolve_psk(both, {}) == VALUE
    with pytest.raises(ProfileError) as err:
        resolve_psk(WifiSpec(ssid="lab", psk_env="LAB_PSK", psk_keyring="station/other"), {})
    assert str(err.value) == ("No Wi-Fi passphrase for 'lab': looked in environment variable LAB_PSK, else OS "
                              "keyring entry station/other. Set it: export LAB_PSK=…, or store it with "
                              "`keyring set station other`.")
    with pytest.raises(ProfileError, match="names no psk_env or psk_keyring"):
        resolve_psk(WifiSpec(ssid="lab", psk_env=None, psk_keyring=None), {})
