"""First end-to-end checks of the engine; the full behaviour suite lives beside it."""

from egressguard.engine import Kind, Layer, Request, Verdict, compile_policy
from egressguard.policy import load_policy_text

RESTRICTED = """
restrict_outbound_network_access: Enabled
allowed_fqdn_list: [my-eventhub.servicebus.windows.net]
application_rule_collections:
  - name: aks
    priority: 200
    rules:
      - name: mcr
        targets: [mcr.microsoft.com, '*.data.mcr.microsoft.com']
        protocols: ['https:443']
"""


def test_listed_registry_is_allowed_and_unlisted_host_is_denied_when_restricted() -> None:
    snapshot = compile_policy(load_policy_text(RESTRICTED))
    allowed = snapshot.decide(Request.from_url("https://x.data.mcr.microsoft.com/v2/"))
    denied = snapshot.decide(Request.from_url("https://evil.example/"))
    assert (allowed.verdict, allowed.layer, allowed.rule) == (
        Verdict.ALLOW, Layer.APPLICATION, "application:aks/mcr")
    assert (denied.verdict, denied.layer) == (Verdict.DENY, Layer.DEFAULT)


def test_metadata_address_is_denied_by_the_guard_in_any_encoding() -> None:
    snapshot = compile_policy(load_policy_text("{}"))
    for url in ("http://169.254.169.254/", "http://2852039166/", "http://0xa9.0xfe.0xa9.0xfe/",
                "http://[::ffff:169.254.169.254]/"):
        decision = snapshot.decide(Request.from_url(url))
        assert (decision.verdict, decision.rule) == (Verdict.DENY, "guard:link-local"), url


def test_restriction_drops_the_immutable_external_data_callout() -> None:
    open_policy = compile_policy(load_policy_text("{}"))
    closed = compile_policy(load_policy_text("restrict_outbound_network_access: true"))
    request = Request.from_url("https://attacker.blob.core.windows.net/x",
                               kind=Kind.CALLOUT, callout_type="external_data")
    assert open_policy.decide(request).layer is Layer.IMMUTABLE
    assert closed.decide(request).verdict is Verdict.DENY
    assert "is not allowed by the callout policy" in closed.decide(request).reason
