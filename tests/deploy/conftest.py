"""Shared by the deploy tests: the options each `egressguard` command really has, so that
manifests, units and docs can be checked against them."""

from __future__ import annotations

import functools
from typing import Any

import typer.main

from egressguard.cli.main import build_app


@functools.cache
def _root() -> Any:
    return typer.main.get_command(build_app())


def command_at(path: tuple[str, ...]) -> Any:
    command = _root()
    for name in path:
        command = command.commands[name]
    return command


@functools.cache
def cli_options(path: tuple[str, ...]) -> frozenset[str]:
    """Every option spelling (`--x`, `--no-x`, `-f`) of `egressguard <path...>`."""
    return frozenset(opt for p in command_at(path).params
                     for opt in (*p.opts, *p.secondary_opts))
