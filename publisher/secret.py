"""A secret value that cannot leak by accident through repr, str, logs or msgspec encoding."""

from __future__ import annotations


class Secret:
    """Holds a credential; only :meth:`reveal` gives the value.

    `str()` and `repr()` show a mask, so a secret inside an f-string, a log call or an exception
    message prints as `***`. Equality compares values so config reloads can be compared.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        """The secret itself; call only where it is handed to a signer or a client library."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("secrets are not picklable")
