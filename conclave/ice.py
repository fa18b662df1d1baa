"""Which local addresses aiortc offers as ICE host candidates.

aioice leaves out 127.0.0.1, which a single-machine cluster needs, and offers
every interface, which a relay behind a firewall must not. Both ends call
`use_host_addresses` once at start-up, before any peer connection exists.
"""

from __future__ import annotations

import os

import aioice.ice

ENV_VAR = "CONCLAVE_ICE_ADDRESSES"
_system_host_addresses = aioice.ice.get_host_addresses


def use_host_addresses(addresses: list[str] | None, include_loopback: bool = True) -> None:
    """Offer exactly `addresses` (IPv4/IPv6 literals), or, when None, the system's
    addresses plus 127.0.0.1 if `include_loopback`."""

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        if addresses is not None:
            return [a for a in addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]
        found = _system_host_addresses(use_ipv4, use_ipv6)
        if include_loopback and use_ipv4 and "127.0.0.1" not in found:
            found.insert(0, "127.0.0.1")
        return found

    aioice.ice.get_host_addresses = host_addresses


def addresses_from_env() -> list[str] | None:
    """`CONCLAVE_ICE_ADDRESSES=127.0.0.1,::1` restricts candidates (tests, dev)."""
    value = os.environ.get(ENV_VAR, "").strip()
    return [a.strip() for a in value.split(",") if a.strip()] or None
