"""The DNS filter's decisions without sockets: questions and upstream answers."""

from __future__ import annotations

import textwrap

from dnslib import DNAME, QTYPE, RR, DNSLabel, DNSRecord

from egressguard.dns import CnameMode, check_answer, decide_name
from egressguard.engine import Snapshot, compile_policy
from egressguard.policy import load_policy_text


def snapshot(extra: str = "") -> Snapshot:
    return compile_policy(load_policy_text(textwrap.dedent("""\
        restrict_outbound_network_access: true
        application_rule_collections:
          - name: deny
            priority: 100
            action: deny
            rules: [{name: bad, targets: [.bad.example], protocols: ['https:443']}]
          - name: allow
            priority: 200
            action: allow
            rules: [{name: ok, targets: ['*.ok.example'], protocols: ['https:443']}]
        """) + extra, "t"))


def answer(qname: str, zone: str) -> DNSRecord:
    record = DNSRecord.question(qname).reply()
    record.add_answer(*RR.fromZone(zone))
    return record


def test_question_is_decided_on_its_normalised_name() -> None:
    result = decide_name(snapshot(), DNSLabel("WWW.OK.Example."))
    assert result.host == "www.ok.example" and result.decision.allowed


def test_label_with_a_dot_inside_is_an_invalid_host() -> None:
    result = decide_name(snapshot(), DNSLabel([b"x.ok", b"example"]))
    assert result.decision.layer == "guard" and "invalid host" in result.decision.reason


def test_out_of_chain_record_owner_is_decided_as_a_name() -> None:
    reply = answer("www.ok.example", "www.ok.example. 60 A 93.184.216.34\n"
                                     "evil.bad.example. 60 A 93.184.216.35")
    result = check_answer(snapshot(), DNSLabel("www.ok.example"), reply)
    assert not result.decision.permitted
    assert "leads to evil.bad.example" in result.decision.reason


def test_dname_target_in_a_denied_domain_is_refused() -> None:
    reply = DNSRecord.question("a.sub.ok.example").reply()
    reply.add_answer(RR("sub.ok.example", QTYPE.DNAME, ttl=60, rdata=DNAME("x.bad.example")))
    reply = DNSRecord.parse(reply.pack())  # as it arrives from the upstream
    result = check_answer(snapshot(), DNSLabel("a.sub.ok.example"), reply)
    assert not result.decision.permitted


def test_report_only_chain_refusal_is_recorded_but_permitted() -> None:
    reply = answer("www.ok.example", "www.ok.example. 60 CNAME x.bad.example.\n"
                                     "x.bad.example. 60 A 93.184.216.35")
    result = check_answer(snapshot("report_only: true\n"), DNSLabel("www.ok.example"), reply)
    assert result.decision.permitted and not result.decision.allowed
    assert "leads to x.bad.example" in result.decision.reason


def test_answer_without_addresses_keeps_the_question_decision() -> None:
    reply = DNSRecord.question("www.ok.example").reply()
    reply.header.rcode = 3
    result = check_answer(snapshot(), DNSLabel("www.ok.example"), reply, CnameMode.STRICT)
    assert result.decision.allowed and result.addresses == ()


def test_ipv6_answer_embedding_the_metadata_address_is_refused() -> None:
    reply = answer("www.ok.example", "www.ok.example. 60 AAAA 64:ff9b::a9fe:a9fe")
    result = check_answer(snapshot(), DNSLabel("www.ok.example"), reply)
    assert result.decision.layer == "guard" and "169.254.169.254" in result.decision.reason
