"""Policy as code: `egressguard apply -f policy.yaml` and `egressguard validate -f`.

The policy lives in Git as a policy file (the format `policy/load.py` reads); CI runs
`validate` on every change and the deploy step runs `apply`. `apply` is idempotent: the
file is compared with the cluster's current version in canonical form (comments, key
order and spelling of equal values do not matter), so re-applying the same content makes
no version and a pipeline can run it on every push. Exit status: `validate` 0 valid,
1 rejected (one `file:line: path: reason` line per problem), 2 cannot run (unreadable
file, bad option); `apply` 0 applied or unchanged, 2 refused.
"""

from __future__ import annotations

import difflib
import getpass
import sys
from pathlib import Path
from typing import Annotated

import typer

from egressguard import config

FileOpt = Annotated[Path, typer.Option(
    "--file", "-f", help="policy file (YAML or JSON, the `cluster create --from-file` "
                         "format)")]


def _principal() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _problems(path: Path) -> tuple[list[str], bool]:
    """Every reason `path` would be refused, as `file:line: path: reason` lines, and
    whether the file could be read at all (unreadable is exit 2, not 1)."""
    from egressguard.catalog import references
    from egressguard.engine import CompileError, compile_policy
    from egressguard.policy import PolicyError, load_policy

    try:
        policy = load_policy(path)
    except PolicyError as exc:
        readable = not any(p.reason.startswith("cannot read") for p in exc.problems)
        lines = []
        for p in exc.problems:
            where = f"{path}:{p.line}" if p.line else str(path)
            lines.append(f"{where}: {p.path}: {p.reason}" if p.path else f"{where}: {p.reason}")
        return lines, readable
    try:
        compile_policy(policy, references())
    except CompileError as exc:
        return [f"{path}: {exc}"], True
    return [], True


def validate(files: Annotated[list[Path], typer.Option(
        "--file", "-f", help="policy file to check (repeatable)")]) -> None:
    """Check policy files as `apply` would, without a store (for CI). Exit 0 valid,
    1 rejected, 2 unreadable."""
    worst = 0
    for path in files:
        lines, readable = _problems(path)
        for line in lines:
            typer.echo(line, err=True)
        if lines:
            worst = max(worst, 1 if readable else 2)
        else:
            typer.echo(f"{path}: valid")
    raise typer.Exit(worst)


def apply(
    file: FileOpt,
    cluster: Annotated[str | None, typer.Option(
        "--cluster", "-n", help="cluster to apply to (default: the configured cluster; "
                                "created if missing)")] = None,
    store: Annotated[str | None, typer.Option(
        "--store", envvar="EGRESSGUARD_STORE",
        help="store URL (default the configured store, `egressguard config show`)")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="say what would happen; change nothing")] = False,
    diff: Annotated[bool, typer.Option(
        "--diff", help="print the unified diff from the current version")] = False,
) -> None:
    """Make FILE the cluster's policy: one new version if its content differs from the
    current version, none if it does not. Prints the version, or `unchanged`."""
    from sqlalchemy.exc import SQLAlchemyError

    from egressguard.policy import PolicyError, dump_policy, load_policy
    from egressguard.store import NotFound, StoreError, bus, open_store
    from egressguard.store.urls import StoreURLError

    name = config.cluster(cluster)
    try:
        policy = load_policy(file)
    except PolicyError as exc:
        raise _fail(str(exc)) from None
    body = dump_policy(policy)
    try:
        st = open_store(store)
    except StoreURLError as exc:
        raise _fail(str(exc)) from None
    except SQLAlchemyError as exc:
        raise _fail(f"cannot open the store: {exc.__class__.__name__} (is it reachable? "
                    "see `egressguard config show`)") from None
    try:
        try:
            current = st.current(name)
            old_text, old_number = current.text, current.number
        except NotFound:
            old_text, old_number = "", 0
        if body == old_text:
            typer.echo(f"cluster {name}: unchanged (version {old_number})")
            return
        if diff:
            sys.stdout.writelines(difflib.unified_diff(
                old_text.splitlines(keepends=True), body.splitlines(keepends=True),
                fromfile=f"{name}@{old_number}" if old_number else "/dev/null",
                tofile=str(file)))
        if dry_run:
            from egressguard.store import check_policy
            check_policy(policy)
            typer.echo(f"cluster {name}: would create version {old_number + 1} (dry run)")
            return
        summary = f"applied {file.name}"[:300]
        # The store announces a version on the in-process bus only when it made one: the
        # honest answer when another apply of the same content won the race.
        made: list[int] = []
        unsubscribe = bus.subscribe(st.key, lambda c, n: made.append(n) if c == name else None)
        try:
            version = st.commit(name, policy, _principal(), summary, create=old_number == 0)
        finally:
            unsubscribe()
        if made:
            typer.echo(f"cluster {name}: version {version.number}")
        else:
            typer.echo(f"cluster {name}: unchanged (version {version.number})")
    except StoreError as exc:
        raise _fail(str(exc)) from None
    except SQLAlchemyError as exc:
        raise _fail(f"store failed: {exc.__class__.__name__}") from None
    finally:
        st.close()


def register(app: typer.Typer) -> None:
    app.command()(apply)
    app.command()(validate)
