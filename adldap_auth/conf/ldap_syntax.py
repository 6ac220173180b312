"""LDAP filter (RFC 4515) and DN syntax, checked locally so that a typo in a setting is reported
before a run rather than as a server error in the middle of one."""

from __future__ import annotations

import re

import ldap.dn

_DESCR = r"[A-Za-z][A-Za-z0-9-]*"
_OID = r"[0-9]+(?:\.[0-9]+)+"
_ATTRIBUTE_RE = re.compile(rf"(?:{_DESCR}|{_OID})(?:;[A-Za-z0-9-]+)*\Z")
_RULE_RE = re.compile(rf"(?:{_DESCR}|{_OID})\Z")
_HEX = frozenset("0123456789abcdefABCDEF")


class _FilterSyntaxError(ValueError):
    pass


def filter_problem(text: str) -> str | None:
    """Why ``text`` is not an RFC 4515 search filter, or None if it is one.

    Checks what libldap would refuse to encode: balanced parentheses, ``&``/``|``/``!``
    composition, attribute descriptions, extensible matches (``attr:dn:rule:=value``) and
    escapes in values. Whitespace between components is tolerated, as libldap does.
    """
    stripped = text.strip()
    if not stripped:
        return "it is empty"
    if not stripped.startswith("("):
        return "it must be enclosed in parentheses"
    try:
        end = _parse_filter(stripped, 0)
    except _FilterSyntaxError as error:
        return str(error)
    except RecursionError:
        return "it is nested too deeply"
    if end != len(stripped):
        return f"unexpected {stripped[end:]!r} after the closing parenthesis"
    return None


def _skip_spaces(text: str, i: int) -> int:
    while i < len(text) and text[i] == " ":
        i += 1
    return i


def _parse_filter(text: str, i: int) -> int:
    """Parse ``( ... )`` starting at ``text[i] == "("``; return the index after ``)``."""
    i = _skip_spaces(text, i + 1)
    if i >= len(text):
        raise _FilterSyntaxError("unbalanced parentheses: a ')' is missing")
    if text[i] in "&|":
        i = _skip_spaces(text, i + 1)
        while i < len(text) and text[i] == "(":
            i = _skip_spaces(text, _parse_filter(text, i))
    elif text[i] == "!":
        i = _skip_spaces(text, i + 1)
        if i >= len(text) or text[i] != "(":
            raise _FilterSyntaxError("'!' must be followed by one filter in parentheses")
        i = _skip_spaces(text, _parse_filter(text, i))
    elif text[i] == ")":
        raise _FilterSyntaxError(f"empty parentheses at position {i}")
    else:
        i = _parse_item(text, i)
    if i >= len(text):
        raise _FilterSyntaxError("unbalanced parentheses: a ')' is missing")
    if text[i] != ")":
        raise _FilterSyntaxError(f"unexpected {text[i]!r} at position {i + 1}")
    return i + 1


def _parse_item(text: str, i: int) -> int:
    """Check the item ``attr op value`` at ``text[i:]``; return the index of its ``)``."""
    j = i
    while j < len(text) and text[j] != ")":
        if text[j] == "\\":
            j += 1
        elif text[j] == "(":
            raise _FilterSyntaxError(f"unescaped '(' at position {j + 1}")
        j += 1
    item = text[i:j]
    left, equals, value = item.partition("=")
    if not equals:
        raise _FilterSyntaxError(f"{item!r} has no '='")
    if left.endswith(("~", "<", ">")):
        _check_attribute(left[:-1])
    elif left.endswith(":"):
        _check_extensible(left[:-1])
    else:
        _check_attribute(left)
    _check_value(value)
    return j


def _check_attribute(name: str) -> None:
    if not _ATTRIBUTE_RE.match(name):
        raise _FilterSyntaxError(f"{name!r} is not an attribute name")


def _check_extensible(spec: str) -> None:
    attribute, *rest = spec.split(":")
    if attribute:
        _check_attribute(attribute)
    if rest and rest[0].lower() == "dn":
        rest = rest[1:]
    if len(rest) > 1 or (rest and not _RULE_RE.match(rest[0])):
        raise _FilterSyntaxError(f"{spec + ':='!r} is not an extensible match")
    if not attribute and not rest:
        raise _FilterSyntaxError("an extensible match needs an attribute or a matching rule")


def _check_value(value: str) -> None:
    k = 0
    while k < len(value):
        if value[k] == "\\":
            pair = value[k + 1 : k + 3]
            if len(pair) == 2 and set(pair) <= _HEX:
                k += 3
                continue
            if pair[:1] and pair[0] in "()*\\":  # the older RFC 1960 escapes libldap accepts
                k += 2
                continue
            raise _FilterSyntaxError(f"bad escape {value[k : k + 3]!r} in value {value!r}")
        k += 1


def is_dn(value: str) -> bool:
    """True for a non-empty, syntactically valid DN (parsed locally by libldap)."""
    return bool(value.strip()) and ldap.dn.is_dn(value)
