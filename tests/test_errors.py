"""The error tree: every public exception in the package descends from EgressguardError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import egressguard
from egressguard.errors import Denied, EgressguardError, InputError, Unavailable


def _package_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined in an egressguard module, by qualified name."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(egressguard.__path__, "egressguard."):
        if ".migrations" in info.name:  # alembic scripts, imported only by alembic
            continue
        try:
            module = importlib.import_module(info.name)
        except ModuleNotFoundError as exc:  # an optional third-party driver (e.g. pkcs11)
            if (exc.name or "").partition(".")[0] == "egressguard":
                raise
            continue
        for obj in vars(module).values():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__ == info.name):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


EXCEPTIONS = _package_exceptions()
PUBLIC = {name: cls for name, cls in EXCEPTIONS.items()
          if not cls.__qualname__.startswith("_")}


def test_the_walk_finds_the_known_exception_classes() -> None:
    # A guard on the walk itself: if it found nothing, the next test could not fail.
    assert len(PUBLIC) >= 30
    assert "egressguard.policy.load.PolicyError" in PUBLIC
    assert "egressguard.store.store.StoreUnavailable" in PUBLIC


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_every_public_exception_is_an_egressguard_error(name: str) -> None:
    assert issubclass(PUBLIC[name], EgressguardError), (
        f"{name} must descend from egressguard.errors.EgressguardError (InputError, "
        "Unavailable or Denied): add it to the tree in errors.py")


def test_private_control_flow_signals_stay_outside_the_tree() -> None:
    private = [cls for cls in EXCEPTIONS.values() if cls.__qualname__.startswith("_")]
    assert private, "the walk should see the private signals too"
    assert not [cls for cls in private if issubclass(cls, EgressguardError)]


@pytest.mark.parametrize(("name", "branch", "legacy"), [
    ("egressguard.policy.load.PolicyError", InputError, ValueError),
    ("egressguard.engine.snapshot.CompileError", InputError, ValueError),
    ("egressguard.config.ConfigError", InputError, ValueError),
    ("egressguard.catalog.model.CatalogError", InputError, ValueError),
    ("egressguard.store.store.NotFound", InputError, Exception),
    ("egressguard.store.store.StoreUnavailable", Unavailable, Exception),
    ("egressguard.audit.log.AuditUnavailable", Unavailable, TimeoutError),
    ("egressguard.audit.crypto.KeyError_", Unavailable, ValueError),
    ("egressguard.gateway.resolver.ResolveError", Unavailable, OSError),
    ("egressguard.firewall.nft.FirewallError", Unavailable, RuntimeError),
    ("egressguard.callout.CalloutDenied", Denied, PermissionError),
    ("egressguard.control.errors.Forbidden", Denied, Exception),
    ("egressguard.control.errors.InvalidInput", InputError, Exception),
])
def test_classes_sit_on_their_branch_and_keep_the_base_callers_catch(
        name: str, branch: type[Exception], legacy: type[Exception]) -> None:
    cls = PUBLIC[name]
    assert issubclass(cls, branch)
    assert issubclass(cls, legacy)


def test_hint_is_optional_and_carried_by_the_exception() -> None:
    assert InputError("bad port").hint is None
    exc = InputError("bad port", hint="use a number from 1 to 65535")
    assert str(exc) == "bad port"
    assert exc.hint == "use a number from 1 to 65535"


def test_an_existing_class_constructed_as_before_still_works() -> None:
    from egressguard.control.errors import InvalidInput
    from egressguard.store.store import Invalid

    exc = InvalidInput([("rules[0].host", "empty")])
    assert exc.status == 422 and str(exc) == "rules[0].host: empty" and exc.hint is None
    assert Invalid("no such tag", "rules[1]").field == "rules[1]"
