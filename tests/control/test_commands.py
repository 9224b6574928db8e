"""The Kusto-style command parser: strings, keywords, and errors naming the position."""

from __future__ import annotations

import pytest

from egressguard.control.commands import CommandSyntaxError, parse, tokenize


@pytest.mark.parametrize("verb", [".show", ".delete"])
def test_commands_without_argument_parse(verb: str) -> None:
    command = parse(f"  {verb}   cluster\n policy callout  // trailing comment")
    assert (command.verb, command.argument) == (verb, None)


def test_verbatim_string_doubles_its_quote() -> None:
    command = parse(".alter cluster policy callout @'[{\"a\": \"it''s\\\\d\"}]'")
    assert command.verb == ".alter"
    assert command.argument == '[{"a": "it\'s\\\\d"}]'
    assert command.argument_position == 30


def test_regular_string_takes_backslash_escapes() -> None:
    command = parse('.alter-merge cluster policy callout "[\\"x\\\\.y\\"] \\u0041"')
    assert command.argument == '["x\\.y"] A'


def test_keywords_are_case_insensitive() -> None:
    assert parse(".SHOW Cluster POLICY callout").verb == ".show"


@pytest.mark.parametrize(("text", "position", "expected"), [
    ("", 0, "one of .show"),
    ("show cluster policy callout", 0, "one of .show"),
    (".drop cluster policy callout", 0, "one of .show"),
    (".show database policy callout", 6, "'cluster'"),
    (".show cluster polcy callout", 14, "'policy'"),
    (".show cluster policy", 20, "'callout'"),
    (".show cluster policy callout extra", 29, "end of command"),
    (".delete cluster policy callout @'[]'", 31, "end of command"),
    (".alter cluster policy callout", 29, "the policy as a string literal"),
    (".alter cluster policy callout callout", 30, "the policy as a string literal"),
    (".alter cluster policy callout @'[]' x", 36, "end of command"),
    (".alter cluster policy callout @'[", 33, "closing '"),
    (".alter cluster policy callout '[\n]'", 32, "closing '"),
    (".alter cluster policy callout '\\q'", 31, "a valid escape"),
    (".show cluster policy callout;", 28, "a command, a keyword or a string"),
])
def test_errors_name_the_position_and_what_was_expected(text: str, position: int,
                                                         expected: str) -> None:
    with pytest.raises(CommandSyntaxError) as caught:
        parse(text)
    assert caught.value.position == position
    assert expected in caught.value.expected
    assert f"position {position}" in str(caught.value)
    assert caught.value.pointer().splitlines()[-1].endswith("^")


def test_tokenizer_always_ends_with_end_token() -> None:
    assert tokenize("   ")[-1].kind.name == "END"
