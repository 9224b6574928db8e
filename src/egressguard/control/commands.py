"""Tokenizer and parser of the Kusto-style management commands (pure, no I/O).

Grammar (keywords compare case-insensitively)::

    command  := verb 'cluster' 'policy' 'callout' [string]
    verb     := '.show' | '.alter' | '.alter-merge' | '.delete'
    string   := @'verbatim' | @"verbatim" | 'escaped' | "escaped" | ```multi-line```

Verbatim strings double their quote to include it (`@'it''s'`); escaped strings take
backslash escapes; a triple-backtick string (Kusto's multi-line form) ends at the next
three backticks and has no escapes. `.alter` and `.alter-merge` need the string; the
others refuse one.
Errors carry the offset in the command text and say what was expected there.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from egressguard.errors import InputError


class CommandSyntaxError(InputError, ValueError):
    """The command text does not parse; `position` is a 0-based offset into it."""

    def __init__(self, text: str, position: int, expected: str, found: str) -> None:
        self.text = text
        self.position = position
        self.expected = expected
        self.found = found
        super().__init__(f"syntax error at position {position}: expected {expected}, "
                         f"found {found}")

    def pointer(self) -> str:
        """The offending line with a caret under the position (for terminals)."""
        start = self.text.rfind("\n", 0, self.position) + 1
        end = self.text.find("\n", self.position)
        line = self.text[start:end if end >= 0 else len(self.text)]
        return f"{line}\n{' ' * (self.position - start)}^"


class TokenKind(enum.Enum):
    DOT_WORD = "command verb"
    WORD = "word"
    STRING = "string literal"
    END = "end of command"


@dataclass(frozen=True)
class Token:
    kind: TokenKind
    value: str
    position: int

    def describe(self) -> str:
        if self.kind is TokenKind.END:
            return "end of command"
        if self.kind is TokenKind.STRING:
            return "a string literal"
        return repr(self.value)


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "0": "\0"}


def _word_char(ch: str) -> bool:
    return ch.isalnum() or ch in "_-"


def tokenize(text: str) -> list[Token]:
    """Split a command into tokens; the list always ends with an END token."""
    tokens: list[Token] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i < n and text.startswith("//", i):  # Kusto line comment
            while i < n and text[i] != "\n":
                i += 1
            continue
        if i >= n:
            tokens.append(Token(TokenKind.END, "", n))
            return tokens
        ch, start = text[i], i
        if ch == "." and i + 1 < n and text[i + 1].isalpha():
            i += 1
            while i < n and _word_char(text[i]):
                i += 1
            tokens.append(Token(TokenKind.DOT_WORD, text[start:i].lower(), start))
        elif ch.isalpha() or ch == "_":
            while i < n and _word_char(text[i]):
                i += 1
            tokens.append(Token(TokenKind.WORD, text[start:i].lower(), start))
        elif text.startswith("```", i):  # Kusto's multi-line literal, taken verbatim
            end = text.find("```", i + 3)
            if end < 0:
                raise CommandSyntaxError(text, n, "closing ``` of the string opened at "
                                         f"position {start}", "end of command")
            tokens.append(Token(TokenKind.STRING, text[i + 3:end], start))
            i = end + 3
        elif ch == "@" and i + 1 < n and text[i + 1] in "'\"":
            value, i = _verbatim(text, i + 1)
            tokens.append(Token(TokenKind.STRING, value, start))
        elif ch in "'\"":
            value, i = _escaped(text, i)
            tokens.append(Token(TokenKind.STRING, value, start))
        else:
            raise CommandSyntaxError(text, i, "a command, a keyword or a string",
                                     f"unexpected character {ch!r}")


def _verbatim(text: str, i: int) -> tuple[str, int]:
    """A verbatim string from its opening quote at `i`: only the doubled quote is special."""
    quote, start = text[i], i
    out: list[str] = []
    i += 1
    while i < len(text):
        if text[i] == quote:
            if i + 1 < len(text) and text[i + 1] == quote:
                out.append(quote)
                i += 2
                continue
            return "".join(out), i + 1
        out.append(text[i])
        i += 1
    raise CommandSyntaxError(text, len(text), f"closing {quote} of the string opened at "
                             f"position {start - 1}", "end of command")


def _escaped(text: str, i: int) -> tuple[str, int]:
    quote, start = text[i], i
    out: list[str] = []
    i += 1
    while i < len(text):
        ch = text[i]
        if ch == quote:
            return "".join(out), i + 1
        if ch == "\n":
            break
        if ch == "\\":
            if i + 1 >= len(text):
                break
            nxt = text[i + 1]
            if nxt == "u" and i + 6 <= len(text) and _is_hex(text[i + 2:i + 6]):
                out.append(chr(int(text[i + 2:i + 6], 16)))
                i += 6
                continue
            if nxt not in _ESCAPES:
                raise CommandSyntaxError(text, i, "a valid escape (\\n \\t \\r \\\\ \\' "
                                         "\\\" \\0 \\uXXXX)", f"'\\{nxt}'")
            out.append(_ESCAPES[nxt])
            i += 2
            continue
        out.append(ch)
        i += 1
    raise CommandSyntaxError(text, i, f"closing {quote} of the string opened at position "
                             f"{start}", "end of line" if i < len(text) else "end of command")


def _is_hex(chunk: str) -> bool:
    return len(chunk) == 4 and all(c in "0123456789abcdefABCDEF" for c in chunk)


VERBS = (".show", ".alter", ".alter-merge", ".delete")
_TARGET = ("cluster", "policy", "callout")


@dataclass(frozen=True)
class Command:
    """A parsed command; `argument` is the policy text of `.alter`/`.alter-merge`."""

    verb: str
    argument: str | None = None
    argument_position: int = -1

    @property
    def writes(self) -> bool:
        return self.verb != ".show"


def parse(text: str) -> Command:
    """Parse one management command, raising `CommandSyntaxError` naming the position."""
    tokens = tokenize(text)
    head = tokens[0]
    if head.kind is not TokenKind.DOT_WORD or head.value not in VERBS:
        raise CommandSyntaxError(text, head.position, "one of " + ", ".join(VERBS),
                                 head.describe())
    pos = 1
    for keyword in _TARGET:
        token = tokens[pos]
        if token.kind is not TokenKind.WORD or token.value != keyword:
            raise CommandSyntaxError(text, token.position, repr(keyword), token.describe())
        pos += 1
    token = tokens[pos]
    argument: str | None = None
    argument_position = -1
    if head.value in (".alter", ".alter-merge"):
        if token.kind is not TokenKind.STRING:
            raise CommandSyntaxError(text, token.position,
                                     "the policy as a string literal, e.g. @'[...]'",
                                     token.describe())
        argument, argument_position = token.value, token.position
        pos += 1
        token = tokens[pos]
    if token.kind is not TokenKind.END:
        raise CommandSyntaxError(text, token.position, "end of command", token.describe())
    return Command(head.value, argument, argument_position)
