"""Every callout command's success and error paths, against real SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest

from egressguard.control.auth import Principal
from egressguard.control.commands import CommandSyntaxError
from egressguard.control.errors import Forbidden, InvalidInput, Refused
from egressguard.control.mgmt import COLUMNS, FQDN_CALLOUT_TYPES, execute
from egressguard.engine import Kind, Request, compile_policy
from egressguard.policy import Policy
from egressguard.policy.defaults import IMMUTABLE_CALLOUT_ROWS
from egressguard.store import Store

pytestmark = pytest.mark.timeout(60)
OPERATOR = Principal("op", "operator")
SHOW = ".show cluster policy callout"


def _layers(store: Store) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    result = execute(store, "default", SHOW, Principal("v", "viewer"))
    assert result.columns == COLUMNS
    (imm, cluster) = result.rows
    assert (imm[0], imm[4], cluster[0], cluster[4]) == (
        "CalloutPolicy", "Cluster immutable policy", "CalloutPolicy", "Cluster")
    return json.loads(imm[2]), json.loads(cluster[2])


def _unrestrict(store: Store) -> None:
    store.commit("default", Policy(restrict_outbound_network_access=False), "op", "open")


def test_show_while_restricted_lists_no_immutable_entries(store: Store) -> None:
    assert _layers(store) == ([], [])


def test_show_unrestricted_lists_the_seed_000_immutable_policy(store: Store) -> None:
    _unrestrict(store)
    immutable, cluster = _layers(store)
    assert immutable == [
        {"CalloutType": t, "CalloutUriRegex": r, "CanCall": c}
        for t, r, c in IMMUTABLE_CALLOUT_ROWS]
    assert cluster == []


def test_show_lists_allowed_fqdns_escaped_without_anchors_except_webapi(store: Store) -> None:
    store.commit("default", Policy(restrict_outbound_network_access=True,
                                   allowed_fqdn_list=["adedicated.sql.azuresynapse.net"]),
                 "op", "fqdn")
    _, cluster = _layers(store)
    assert {e["CalloutType"] for e in cluster} == set(FQDN_CALLOUT_TYPES)
    assert "webapi" not in {e["CalloutType"] for e in cluster}
    assert {e["CalloutUriRegex"] for e in cluster} == {r"adedicated\.sql\.azuresynapse\.net"}


def test_alter_replaces_the_cluster_layer(store: Store) -> None:
    _unrestrict(store)
    result = execute(store, "default", ".alter cluster policy callout @'[{\"CalloutType\":"
                     "\"sql\",\"CalloutUriRegex\":\"evil\\\\.database\\\\.windows\\\\.net\","
                     "\"CanCall\":false}]'", OPERATOR)
    assert result.changed and result.version == 3
    _, cluster = _layers(store)
    assert cluster == [{"CalloutType": "sql", "CalloutUriRegex": r"evil\.database\.windows\.net",
                        "CanCall": False}]
    current = store.current("default")
    assert current.principal == "op" and current.summary.startswith(".alter cluster")
    decision = compile_policy(current.policy).decide(Request.from_url(
        "https://evil.database.windows.net", kind=Kind.CALLOUT, callout_type="sql"))
    assert not decision.allowed and "is not allowed by the callout policy" in decision.reason


def test_alter_merge_updates_can_call_of_same_entry_and_appends_the_rest(store: Store) -> None:
    _unrestrict(store)
    execute(store, "default", ".alter cluster policy callout @'[{\"CalloutType\":\"sql\","
            "\"CalloutUriRegex\":\"a\\\\.net\",\"CanCall\":true}]'", OPERATOR)
    execute(store, "default", ".alter-merge cluster policy callout @'["
            "{\"CalloutType\":\"SQL\",\"CalloutUriRegex\":\"a\\\\.net\",\"CanCall\":false},"
            "{\"CalloutType\":\"kusto\",\"CalloutUriRegex\":\"b\\\\.net\",\"CanCall\":true}]'",
            OPERATOR)
    _, cluster = _layers(store)
    assert cluster == [
        {"CalloutType": "sql", "CalloutUriRegex": r"a\.net", "CanCall": False},
        {"CalloutType": "kusto", "CalloutUriRegex": r"b\.net", "CanCall": True}]


def test_delete_empties_the_cluster_layer_only(store: Store) -> None:
    _unrestrict(store)
    execute(store, "default", ".alter cluster policy callout @'[{\"CalloutType\":\"sql\","
            "\"CalloutUriRegex\":\"a\",\"CanCall\":true}]'", OPERATOR)
    execute(store, "default", ".delete cluster policy callout", OPERATOR)
    immutable, cluster = _layers(store)
    assert cluster == [] and len(immutable) == len(IMMUTABLE_CALLOUT_ROWS)


def test_delete_is_allowed_while_restricted(store: Store) -> None:
    result = execute(store, "default", ".delete cluster policy callout", OPERATOR)
    assert not result.changed and result.version == 1


@pytest.mark.parametrize("verb", [".alter", ".alter-merge"])
def test_alter_while_restricted_is_refused_and_nothing_changes(store: Store, verb: str) -> None:
    with pytest.raises(Refused, match="restricts outbound network access"):
        execute(store, "default", f"{verb} cluster policy callout @'[]'", OPERATOR)
    assert store.current("default").number == 1


@pytest.mark.parametrize(("argument", "field"), [
    ("[{", "policy"),
    ('{"CalloutType": "sql"}', "policy"),
    ("[1]", "policy[0]"),
    ('[{"CalloutType": "sql", "CalloutUriRegex": "(a", "CanCall": true}]',
     "policy[0].CalloutUriRegex"),
    ('[{"CalloutType": "ftp", "CalloutUriRegex": "a", "CanCall": true}]',
     "policy[0].CalloutType"),
    ('[{"CalloutType": "sql", "CalloutUriRegex": "a"}]', "policy[0].CanCall"),
    ('[{"CalloutType": "sql", "CalloutUriRegex": "a", "CanCall": true, "X": 1}]', "policy[0].X"),
])
def test_bad_policy_argument_names_the_field_and_changes_nothing(
        sqlite_store: Store, argument: str, field: str) -> None:
    store = sqlite_store
    _unrestrict(store)
    escaped = argument.replace("'", "''")
    with pytest.raises(InvalidInput) as caught:
        execute(store, "default", f".alter cluster policy callout @'{escaped}'", OPERATOR)
    assert caught.value.problems[0][0] == field
    assert store.current("default").number == 2


def test_syntax_error_changes_nothing(store: Store) -> None:
    with pytest.raises(CommandSyntaxError):
        execute(store, "default", ".delete cluster policy", OPERATOR)


@pytest.mark.parametrize(("role", "command"), [
    ("viewer", ".delete cluster policy callout"),
    ("viewer", ".alter cluster policy callout @'[]'"),
    ("auditor", SHOW),
    ("auditor", ".delete cluster policy callout"),
])
def test_roles_without_the_right_are_refused(sqlite_store: Store, role: str,
                                             command: str) -> None:
    with pytest.raises(Forbidden):
        execute(sqlite_store, "default", command, Principal("x", role))


def test_unknown_cluster_is_not_found(store: Store) -> None:
    from egressguard.store import NotFound

    with pytest.raises(NotFound):
        execute(store, "nope", SHOW, OPERATOR)
