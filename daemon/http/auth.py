"""API bearer tokens with scopes. `manage` implies `view`. Tokens are compared in
constant time and never logged."""
from __future__ import annotations

import enum
import hmac
import ipaddress


class Scope(str, enum.Enum):
    VIEW = "view"
    MANAGE = "manage"



def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False



def scope_of(tokens: dict[str, Scope], presented: str) -> Scope | None:
    """The scope of a presented token, comparing against every known token in constant time."""
    found: Scope | None = None
    p = presented.encode()
    for token, scope in tokens.items():
        if hmac.compare_digest(token.encode(), p):
            found = scope
    return found


def allows(have: Scope, need: Scope) -> bool:
    return have is Scope.MANAGE or need is Scope.VIEW
