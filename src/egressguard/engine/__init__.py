"""The decision engine: pure matching of requests against a compiled policy."""

from egressguard.engine.normalize import Host, InvalidHost, normalize_host, parse_url
from egressguard.engine.request import Decision, Kind, Layer, Request, Verdict
from egressguard.engine.snapshot import CompileError, References, Snapshot, compile_policy

compile = compile_policy  # the name the docs use: `compile(policy) -> Snapshot`

__all__ = [
    "CompileError",
    "Decision",
    "Host",
    "InvalidHost",
    "Kind",
    "Layer",
    "References",
    "Request",
    "Snapshot",
    "Verdict",
    "compile",
    "compile_policy",
    "normalize_host",
    "parse_url",
]
