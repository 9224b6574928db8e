"""The enforcing gateway: an HTTP/1.1 forward proxy with CONNECT and TLS SNI checks."""

from egressguard.gateway.limits import Limits
from egressguard.gateway.resolver import ResolveError, Resolver, parse_hosts_file, parse_resolve
from egressguard.gateway.server import Gateway

__all__ = ["Gateway", "Limits", "ResolveError", "Resolver", "parse_hosts_file", "parse_resolve"]
