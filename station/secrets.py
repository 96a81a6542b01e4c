"""Secrets the station reads but never keeps: from an environment variable, an OS keyring entry, or a prompt.

One syntax names where a secret is kept, in profiles and in code alike:

    env:NAME                the environment variable NAME
    keyring:service/user    the OS keyring entry (`keyring set service user` stores one)

A `SecretSpec` lists such places in the order they are tried; `resolve()` returns the first value found as a
`Secret`, else asks with the prompt the caller gives (only for a spec marked `typed`), else raises
`SecretError` naming every place tried and how to put the secret there. A `Secret`'s repr names where it came
from, never what it is, and no message here ever carries a value, so a secret can't leak through a log line,
an error or a traceback.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable, Mapping

ENV, KEYRING = "env", "keyring"
SYNTAX = "\"env:VARIABLE\" or \"keyring:service/user\""

Prompt = Callable[[str], str]  # shows the text, returns what was typed (getpass.getpass, a dialog, a test)


class SecretError(ValueError):
    """A secret is missing, empty or named wrongly. The message says where it was looked for and the fix."""


class Secret:
    """A passphrase, PIN, token or password. Its repr and str say where it came from, never what it is."""

    __slots__ = ("_value", "origin")

    def __init__(self, value: str, origin: str):
        self._value = value
        self.origin = origin  # "from STATION_CA_PASSPHRASE", "typed at the prompt": goes into messages

    def reveal(self) -> str:
        return self._value

    def encoded(self) -> bytes:
        return self._value.encode("utf-8")

    def __repr__(self) -> str:
        return f"<Secret {self.origin}>"

    __str__ = __repr__

    def __reduce__(self):  # no pickling a secret into a file or a queue by accident
        raise TypeError("a Secret can't be pickled")


@dataclass(frozen=True)
class Place:
    """One place a secret may be kept: an environment variable, or an OS keyring entry "service/user"."""

    kind: str  # ENV | KEYRING
    name: str  # the variable's name, or "service/user"

    @classmethod
    def parse(cls, text: str, what: str) -> "Place":
        """"env:NAME" or "keyring:service/user". The text is never echoed: it may be the secret itself."""
        kind, _, name = text.partition(":")
        if kind == ENV and name and not any(c in name for c in "= \t\n\0"):
            return cls(ENV, name)
        if kind == KEYRING and name.count("/") == 1 and all(name.split("/")):
            return cls(KEYRING, name)
        raise SecretError(f"Where the {what} is kept must be written {SYNTAX}; fix that entry (a secret itself "
                          f"never goes there).")

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"

    def describe(self) -> str:
        return f"environment variable {self.name}" if self.kind == ENV else f"OS keyring entry {self.name}"

    def fix(self) -> str:
        if self.kind == ENV:
            return f"export {self.name}=…"
        service, user = self.name.split("/")
        return f"store it with `keyring set {service} {user}`"


@dataclass(frozen=True)
class SecretSpec:
    """Where one secret is looked for, in order. Holds no value, so its repr is safe anywhere."""

    what: str  # "CA key passphrase", "Wi-Fi passphrase for 'lab'": names the secret in prompts and messages
    places: tuple[Place, ...] = ()
    typed: bool = False  # may be typed at a prompt when no place has it

    @classmethod
    def parse(cls, what: str, *places: str, typed: bool = False) -> "SecretSpec":
        return cls(what, tuple(Place.parse(p, what) for p in places), typed)

    def describe(self) -> str:
        """"environment variable X, else OS keyring entry s/u, else a prompt when run in a terminal"."""
        where = [p.describe() for p in self.places] + (["a prompt when run in a terminal"] if self.typed else [])
        return ", else ".join(where) or "nowhere"

    def resolve(self, *, environ: Mapping[str, str] | None = None, prompt: Prompt | None = None,
                confirm: bool = False) -> Secret:
        """The first value found, else one typed at `prompt` (if `typed`), else SecretError.

        An environment variable that is set but empty is an error, not a miss: it was surely meant to hold the
        secret. A keyring that can't be used (no backend on a headless machine, a locked one) is a miss, noted
        in the error. `confirm` asks twice at the prompt (for a new passphrase).
        """
        env = os.environ if environ is None else environ
        tried: list[str] = []
        fixes: list[str] = []
        for index, place in enumerate(self.places):
            if place.kind == ENV:
                value = env.get(place.name)
                if value == "":
                    rest = " (then the next place is tried)" if index + 1 < len(self.places) or self.typed else ""
                    raise SecretError(f"The {self.what} in environment variable {place.name} is empty; set it to "
                                      f"the real value, or unset it{rest}.")
                origin = f"from {place.name}"
            else:
                value, unusable = _keyring_lookup(place.name)
                origin = f"from the OS keyring ({place.name})"
                if unusable:
                    tried.append(f"{place.describe()} (the OS keyring is not usable here: {unusable})")
                    continue
            if value:
                return Secret(value, origin)
            tried.append(place.describe())
            fixes.append(place.fix())
        if self.typed and prompt is not None:
            return self._ask(prompt, confirm)
        if self.typed:
            tried.append("a prompt when run in a terminal")
            fixes.append("run this in a terminal and type it")
        if not tried:
            raise SecretError(f"No {self.what}: nothing says where it is kept; name a place, {SYNTAX}.")
        fix = ", or ".join(fixes) or "the OS keyring can't be used here, so keep it in an environment variable " \
                                     "and name that (\"env:VARIABLE\")"
        raise SecretError(f"No {self.what}: looked in {', else '.join(tried)}. Set it: {fix}.")

    def _ask(self, prompt: Prompt, confirm: bool) -> Secret:
        value = prompt(f"{self.what}: ")
        if confirm and prompt(f"{self.what} (again): ") != value:
            raise SecretError(f"The two {self.what} entries differ; run the command again and type the same one "
                              f"twice.")
        if not value:
            raise SecretError(f"An empty {self.what} was typed; type the real one.")
        return Secret(value, "typed at the prompt")


def _keyring_lookup(entry: str) -> tuple[str | None, str]:
    """(value or None, "" ) from the OS keyring, or (None, why) when the keyring can't be used here."""
    import keyring  # on use: a backend may start talking D-Bus
    import keyring.errors

    service, user = entry.split("/")
    try:
        return keyring.get_password(service, user), ""
    except keyring.errors.KeyringError as exc:
        return None, type(exc).__name__  # the class only: a backend's message is not ours to vouch for


def stdin_is_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):  # stdin closed or detached
        return False


__all__ = ["SecretError", "Secret", "Place", "SecretSpec", "stdin_is_terminal", "ENV", "KEYRING"]
