"""ARM-shaped resource JSON <-> `Policy` (pure).

A cluster reads and writes like an Azure resource: `{"name", "properties": {...}}` with
camelCase property names (`restrictOutboundNetworkAccess`, `allowedFqdnList`,
`calloutPolicies`, `applicationRuleCollections`, ...). `PUT` replaces every property,
`PATCH` replaces only the properties it names. Unknown names are refused, naming the field.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from egressguard.control.errors import InvalidInput
from egressguard.policy import CalloutRule, Policy
from egressguard.policy.load import policy_to_data
from egressguard.store import Version

RESOURCE_TYPE = "egressguard/clusters"
# ARM property -> Policy field.
PROPERTIES = {
    "restrictOutboundNetworkAccess": "restrict_outbound_network_access",
    "allowedFqdnList": "allowed_fqdn_list",
    "reportOnly": "report_only",
    "calloutPolicies": "callouts",
    "applicationRuleCollections": "application_rule_collections",
    "networkRuleCollections": "network_rule_collections",
    "serviceEndpointPolicies": "service_endpoint_policies",
    "trustedRanges": "trusted_ranges",
    "assertions": "assertions",
    "budgets": "budgets",
    "calloutEnforcement": "callout_enforcement",
    "endpoints": "endpoints",
    "routes": "routes",
}
# Properties holding lists of objects whose member names are camelCase in ARM.
NESTED = ("application_rule_collections", "network_rule_collections",
          "service_endpoint_policies", "endpoints", "routes", "budgets")
FIELDS = {v: k for k, v in PROPERTIES.items()}
READ_ONLY = frozenset({"provisioningState", "version", "state", "stateReason", "keyInUse"})
KEY_PROPERTY = "keyVaultProperties"  # stored beside the policy: keys.clusterkeys
TOP_LEVEL = frozenset({"id", "name", "type", "properties", "systemData", "tags", "location",
                       "sku", "kind", "etag"})
# ARM resource types whose bodies the seeds show -> the cluster kind they stand for.
TYPE_KINDS = {RESOURCE_TYPE: None, "microsoft.devices/iothubs": "iothub",
              "microsoft.kusto/clusters": "dataexplorer"}
# IoT Hub's SKU names: a new cluster PUT with one of them (seed 001's body names no type
# or kind) is an IoT Hub.
IOTHUB_SKUS = frozenset({"F1", "B1", "B2", "B3", "S1", "S2", "S3"})
# The properties whose change can bring allowedFqdnList and calloutPolicies together.
CONFLICTING = frozenset({"restrictOutboundNetworkAccess", "allowedFqdnList", "calloutPolicies"})
# Callout entries: ARM names (outboundAccess Allow|Deny) and Kusto names both accepted.
_CALLOUT_IN = {"calloutType": "callout_type", "calloutUriRegex": "uri_regex",
               "CalloutType": "callout_type", "CalloutUriRegex": "uri_regex",
               "CanCall": "can_call", "canCall": "can_call"}
_CALLOUT_OUT = {"callout_type": "calloutType", "uri_regex": "calloutUriRegex",
                "can_call": "outboundAccess"}


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _keys(value: Any, convert: Any) -> Any:
    if isinstance(value, dict):
        return {convert(k) if isinstance(k, str) else k: _keys(v, convert)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_keys(v, convert) for v in value]
    return value


def to_arm(version: Version) -> dict[str, Any]:
    """The cluster as an ARM resource (what GET answers)."""
    policy = version.policy
    data = policy_to_data(policy)
    restricted = policy.restrict_outbound_network_access
    props: dict[str, Any] = {
        "provisioningState": "Succeeded",
        "version": version.number,
        # IoT Hub's API takes and answers a boolean, Data Explorer's Enabled/Disabled.
        "restrictOutboundNetworkAccess": restricted if policy.kind == "iothub" else
            "Enabled" if restricted else "Disabled",
        "allowedFqdnList": list(policy.allowed_fqdn_list),
        "reportOnly": policy.report_only,
        "calloutPolicies": callouts_to_arm(policy),
        "calloutEnforcement": policy.callout_enforcement,
        "trustedRanges": list(policy.trusted_ranges),
        "assertions": data.get("assertions", []),
    }
    for field in NESTED:
        props[FIELDS[field]] = _keys(data.get(field, []), camel)
    resource: dict[str, Any] = {"id": f"/v1/clusters/{version.cluster}",
                                "name": version.cluster, "type": RESOURCE_TYPE,
                                "kind": policy.kind}
    if policy.sku is not None:
        resource["sku"] = policy.sku.model_dump(exclude_none=True)
    return {**resource, "properties": props,
            "systemData": {"lastModifiedBy": version.principal,
                           "lastModifiedAt": version.created_at.isoformat(),
                           "lastModifiedSummary": version.summary}}


def callout_id(rule: CalloutRule) -> str:
    """Data Explorer's id of a callout policy entry: `<regex>_<type>`."""
    return f"{rule.uri_regex}_{rule.callout_type}"


def callouts_to_arm(policy: Policy) -> list[dict[str, Any]]:
    """The cluster layer as `calloutPolicies` entries (what listCalloutPolicies answers)."""
    return [{"calloutId": callout_id(r), "calloutType": r.callout_type,
             "calloutUriRegex": r.uri_regex, "outboundAccess": "Allow" if r.can_call
             else "Deny"} for r in policy.callouts]


def collection_to_arm(policy: Policy, field: str, name: str) -> dict[str, Any] | None:
    for item in policy_to_data(policy).get(field, []):
        if item["name"] == name:
            return dict(_keys(item, camel))
    return None


def _callout_in(entry: Any, where: str) -> Any:
    if not isinstance(entry, dict):
        raise InvalidInput([(where, "each callout policy must be a JSON object")])
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if key in ("outboundAccess", "OutboundAccess"):
            if value not in ("Allow", "Deny"):
                raise InvalidInput([(f"{where}.{key}", "expected Allow or Deny")])
            out["can_call"] = value == "Allow"
        elif key in ("calloutId",):
            continue  # ARM's read-only id of an entry
        else:
            out[_CALLOUT_IN.get(str(key), str(key))] = value  # unknown: fails validation
    return out


def _property_in(name: str, value: Any) -> Any:
    field = PROPERTIES[name]
    if field == "callouts":
        if not isinstance(value, list):
            raise InvalidInput([(f"properties.{name}", "expected an array")])
        return [_callout_in(e, f"properties.{name}[{i}]") for i, e in enumerate(value)]
    if field in NESTED:
        return _keys(value, snake)
    return value


def _out_name(key: str | int, trail: list[str | int]) -> str:
    if not isinstance(key, str):
        return str(key)
    if not trail:
        return FIELDS.get(key, key)
    if trail[0] == "callouts":
        return _CALLOUT_OUT.get(key, key)
    return camel(key)


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        # kind and sku are top-level members of the resource, the rest properties.
        path = "" if err["loc"] and err["loc"][0] in ("kind", "sku") else "properties"
        trail: list[str | int] = []
        for key in err["loc"]:
            path += f"[{key}]" if isinstance(key, int) else (
                f".{_out_name(key, trail)}" if path else str(key))
            trail.append(key)
        out.append((path, err["msg"].removeprefix("Value error, ")))
    return out


def _validate(data: dict[str, Any]) -> Policy:
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(_problems(exc)) from None
    except RecursionError:  # a pathological value must be a refusal, not a crash
        raise InvalidInput([("properties", "the input could not be validated "
                                           "(too deeply nested or pathological)")]) from None


def _kind_of(body: dict[str, Any], keep: str | None) -> str | None:
    """The kind a body asks for: `kind`, else its `type`, else (creating) an IoT Hub SKU,
    else `keep` (the cluster's kind stays unless the body names another)."""
    if "kind" in body:
        return body["kind"]  # validated with the policy (one of generic, iothub, ...)
    rtype = body.get("type")
    if isinstance(rtype, str):
        if rtype.lower() not in TYPE_KINDS:
            raise InvalidInput([("type", f"unknown resource type {rtype!r}; expected "
                                 f"{RESOURCE_TYPE}, Microsoft.Devices/IotHubs or "
                                 "Microsoft.Kusto/clusters")])
        found = TYPE_KINDS[rtype.lower()]
        if found is not None:
            return found
    elif rtype is not None:
        raise InvalidInput([("type", "expected a string")])
    sku = body.get("sku")
    if keep is None and isinstance(sku, dict) and sku.get("name") in IOTHUB_SKUS:
        return "iothub"
    return keep


def conflict(policy: Policy) -> InvalidInput | None:
    """The refusal of a restricted cluster given both allowedFqdnList and calloutPolicies
    (semantics §4 step 3), whichever of them was set first."""
    if policy.restrict_outbound_network_access and policy.allowed_fqdn_list \
            and policy.callouts:
        return InvalidInput([("properties.calloutPolicies",
                              "a restricted cluster takes either allowedFqdnList or "
                              "calloutPolicies, not both: remove one of them first")])
    return None


def from_arm(body: Any, base: Policy | None = None, *, keep_kind: str | None = None
             ) -> Policy:
    """The policy an ARM body describes; with `base` (PATCH) unnamed properties keep their
    values. `keep_kind`: the kind of the cluster a PUT replaces (kept unless the body
    names one). Raises `InvalidInput` naming each bad field."""
    if not isinstance(body, dict):
        raise InvalidInput([("", "the body must be a JSON object")])
    unknown = [k for k in body if k not in TOP_LEVEL]
    if unknown:
        raise InvalidInput([(k, "unknown top-level member; expected properties")
                            for k in unknown])
    props = body.get("properties", {})
    if not isinstance(props, dict):
        raise InvalidInput([("properties", "expected a JSON object")])
    problems = [(f"properties.{k}", "unknown property; expected one of "
                 + ", ".join([*PROPERTIES, KEY_PROPERTY])) for k in props
                if k not in PROPERTIES and k not in READ_ONLY and k != KEY_PROPERTY]
    if problems:
        raise InvalidInput(problems)
    data: dict[str, Any] = {} if base is None else base.model_dump(mode="python")
    kind = _kind_of(body, base.kind if base is not None else keep_kind)
    if kind is not None:
        data["kind"] = kind
    if "sku" in body:
        data["sku"] = body["sku"]
    for name, value in props.items():
        if name in PROPERTIES:
            data[PROPERTIES[name]] = _property_in(name, value)
    policy = _validate(data)
    found = conflict(policy)
    if found is not None and (base is None or CONFLICTING & set(props)):
        raise found
    return policy


def add_callouts(policy: Policy, body: Any) -> Policy:
    """addCalloutPolicies: `{"value": [entries]}`; an entry with the id of an existing
    one replaces it (its outboundAccess changes), the others are appended."""
    if not isinstance(body, dict) or set(body) != {"value"} \
            or not isinstance(body["value"], list):
        raise InvalidInput([("value", "expected {\"value\": [callout policy entries]}")])
    if len(body["value"]) > 1000:
        raise InvalidInput([("value", "at most 1000 entries at once")])
    added = _validate({**policy.model_dump(mode="python"), "callouts": [
        _callout_in(e, f"value[{i}]") for i, e in enumerate(body["value"])]})
    merged = list(policy.callouts)
    for rule in added.callouts:
        at = next((i for i, r in enumerate(merged) if callout_id(r) == callout_id(rule)),
                  None)
        if at is None:
            merged.append(rule)
        else:
            merged[at] = rule
    updated = policy.model_copy(update={"callouts": merged})
    found = conflict(updated)
    if found is not None:
        raise found
    return updated


def remove_callout(policy: Policy, body: Any) -> Policy | None:
    """removeCalloutPolicy: `{"calloutId": "<regex>_<type>"}`; None if no entry has it."""
    if not isinstance(body, dict) or set(body) != {"calloutId"} \
            or not isinstance(body["calloutId"], str):
        raise InvalidInput([("calloutId", "expected {\"calloutId\": \"<regex>_<type>\"}")])
    kept = [r for r in policy.callouts if callout_id(r) != body["calloutId"]]
    if len(kept) == len(policy.callouts):
        return None
    return policy.model_copy(update={"callouts": kept})


def collection_from_arm(body: Any, field: str, name: str, policy: Policy) -> Policy:
    """`policy` with the named rule collection created or replaced by `body`."""
    if not isinstance(body, dict):
        raise InvalidInput([("", "the body must be a JSON object")])
    item = _keys(body, snake)
    if item.setdefault("name", name) != name:
        raise InvalidInput([("name", f"must equal the collection name in the path ({name!r})")])
    data = policy.model_dump(mode="python")
    items = [c for c in data[field] if c["name"] != name]
    position = next((i for i, c in enumerate(data[field]) if c["name"] == name), len(items))
    items.insert(position, item)
    data[field] = items
    try:
        return _validate(data)
    except InvalidInput as exc:
        problems = []
        for where, reason in exc.problems:
            prefix = f"properties.{FIELDS[field]}[{position}]"
            problems.append((where.replace(prefix, "", 1).lstrip(".") or "body", reason)
                            if where.startswith(prefix) else (where, reason))
        raise InvalidInput(problems) from None


def without_collection(policy: Policy, field: str, name: str) -> Policy | None:
    """`policy` without the named collection, or None if it has no such collection."""
    items = getattr(policy, field)
    kept = [c for c in items if c.name != name]
    if len(kept) == len(items):
        return None
    return policy.model_copy(update={field: kept})
