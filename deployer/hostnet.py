"""Whether a service's `bind` address belongs to this host: Docker publishes a port only on an
address the host has, and learns that it does not only after creating the container."""

from __future__ import annotations

import errno
import socket

from deployer.errors import ProfileError
from deployer.plan import WILDCARD_BINDS, DeploymentPlan


def is_local_address(address: str) -> bool:
    """True when a socket can bind `address` here (port 0: nothing is held)."""
    if address in WILDCARD_BINDS:
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError as exc:
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EINVAL, errno.EAFNOSUPPORT):
                return False
            raise
    return True


def check_binds_here(plan: DeploymentPlan) -> None:
    """ProfileError for the first service (or the gateway) whose bind address this host does
    not have."""
    binds = [(f"services.{s.name}.bind", s.bind) for s in plan.services]
    if plan.gateway is not None:
        binds.append(("gateway.bind", plan.gateway.bind))
    for where, bind in binds:
        try:
            local = is_local_address(bind)
        except (OSError, OverflowError, UnicodeError):
            local = False
        if not local:
            raise ProfileError(
                f"{plan.profile_source}: {where}: {bind} is not an "
                "address of this host, so Docker could not publish the port",
                hint="use 127.0.0.1, 0.0.0.0 or an address `ip -4 addr` lists; nothing was written",
            )
