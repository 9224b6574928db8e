"""Workload identities: who is calling the gateway.

Pure parts (no I/O): `model` (an identity as the store keeps it), `secrets` (proxy
secrets, hashed), `tokens` (signed workload tokens verified offline), `directory` (every
way to prove an identity, resolved to a name). I/O: `store` (the identities table) and
`follow` (keeps a gateway's directory in step with the store).
"""

from egressguard.identity.directory import Anonymous, Directory, IdentityHolder, Refused
from egressguard.identity.model import StoredIdentity
from egressguard.identity.tokens import JwtConfig, TokenError

__all__ = ["Anonymous", "Directory", "IdentityHolder", "JwtConfig", "Refused",
           "StoredIdentity", "TokenError"]
