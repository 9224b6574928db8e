"""The enforcing gateway: an HTTP/1.1 forward proxy with CONNECT and TLS SNI checks."""

from egressguard.gateway.limits import Limits
from egressguard.gateway.reload import PolicyFile, load_active
from egressguard.gateway.resolver import ResolveError, Resolver, parse_hosts_file, parse_resolve
from egressguard.gateway.server import Gateway

__all__ = ["Gateway", "Limits", "PolicyFile", "ResolveError", "Resolver", "load_active",
           "parse_hosts_file", "parse_resolve"]
