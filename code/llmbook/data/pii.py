"""PII redaction: e-mail, phone, IP addresses, payment cards and IBANs replaced by typed placeholders (@sec-data-pii).

Each detector is a permissive regex followed by a validator (checksums: Luhn for cards, ISO 7064 mod 97 for
IBANs; `ipaddress` for IPs; digit counts and context for phones), because regexes alone flag dates, version
numbers and ISBNs. Rule-based redaction misses names and addresses: production pipelines add NER models.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import regex

PLACEHOLDERS = {
    "EMAIL": "<EMAIL>",
    "PHONE": "<PHONE>",
    "IP_ADDRESS": "<IP_ADDRESS>",
    "CREDIT_CARD": "<CREDIT_CARD>",
    "IBAN": "<IBAN>",
}

# Letters and digits of any script: internationalised addresses (RFC 6531, josé@exämple.de) are e-mail too.
_EMAIL = regex.compile(
    r"(?<![\w.%+-])[\p{L}\p{N}](?:[\p{L}\p{M}\p{N}._%+-]{0,63})@"
    r"(?:[\p{L}\p{N}](?:[\p{L}\p{M}\p{N}-]{0,61}[\p{L}\p{M}\p{N}])?\.)+"
    r"(?!(?:png|jpe?g|gif|svg|webp|pdf|txt|py|js|css|html?)\b)(?:\p{L}[\p{L}\p{M}]{1,23}|xn--[a-z0-9-]{1,59})(?![\w-])"
)
_PHONE = regex.compile(
    r"(?<![\w+/.-])(?<!\d[ .])(?:"  # not the tail of a longer digit group ("8 045 311 447")
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,5}){1,4}"  # international +CC ...
    r"|1-\d{3}-\d{3}-\d{4}"  # US 1-800-555-0199
    r"|\(\d{3}\) ?\d{3}[ .-]\d{4}"  # US (415) 555-2671
    r"|\d{3}([.\- ])\d{3}\1\d{4}"  # US 415-555-2671, 415.555.2671, 415 555 2671
    r"|\(0\d{1,4}\) ?\d{3,4}[ -]?\d{3,4}"  # AU/UK (02) 9876 5432
    r"|0\d(?:[ .]\d{2}){4}"  # FR 01 23 45 67 89
    r"|0\d{1,4}[ -]\d{3,4}[ -]?\d{3,4}"  # UK/DE/JP 020 7946 0958, 030 12345678, 03-1234-5678
    r")(?![\w-]|[.,]\d)"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = regex.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?![\w]|\.\d)")
_IPV6 = regex.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?![\w:]|\.\d)")
_CARD = regex.compile(r"(?<![\w.-])\d(?:[ -]?\d){12,18}(?![\w]|[.-]\d)")
_IBAN = regex.compile(r"(?<![\w])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?!\w)")
_VERSION_CONTEXT = regex.compile(r"(?i)(?:version|release|v|build|firmware|kernel|section|chapter|§|isbn|doi|oid)[\s:=#-]*$")
_PACKAGE_BEFORE = regex.compile(r"(?i)\blib[\w.+-]*\s+$")  # "libfoo 1.2.3.4": a library's version
_VERSION_AFTER = regex.compile(r"(?i)^[\s,)]*(?:released|release|version|build|beta|alpha|rc\d*|final|is out|changelog)\b")


def luhn_valid(digits: str) -> bool:
    """Luhn checksum of a digit string (payment card numbers satisfy it)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616 IBAN check: move the first four characters to the end, letters to numbers, mod 97 == 1."""
    s = iban.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    rearranged = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _preceded_by_version(text: str, start: int) -> bool:
    return bool(_VERSION_CONTEXT.search(text[max(0, start - 12) : start]))


def _valid_phone(text: str, m: regex.Match) -> bool:
    digits = sum(c.isdigit() for c in m.group())
    low = 8 if m.group().startswith("+") else 7
    return low <= digits <= 15 and not _preceded_by_version(text, m.start())


def _valid_ipv4(text: str, m: regex.Match) -> bool:
    """A dotted quad that is not a version number ("v1.2.3.4", "libfoo 1.2.3.4", "1.2.3.4 released")."""
    return not (_preceded_by_version(text, m.start()) or _PACKAGE_BEFORE.search(text[max(0, m.start() - 40) : m.start()])
                or _VERSION_AFTER.match(text[m.end() : m.end() + 24]))


def _valid_ipv6(text: str, m: regex.Match) -> bool:
    """A parseable IPv6 address with at least 3 hex digits, or the loopback `::1` (but not the slice `a[::1]`)."""
    s = m.group()
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    if sum(c in "0123456789abcdefABCDEF" for c in s) >= 3:
        return True
    bracketed = text[m.start() - 1 : m.start()] == "[" and text[m.end() : m.end() + 1] == "]"
    host = text[max(0, m.start() - 3) : m.start()] == "//[" or text[m.end() : m.end() + 2] == "]:"
    return s == "::1" and (host or not bracketed)


def _valid_card(text: str, m: regex.Match) -> bool:
    s = m.group()
    digits = "".join(c for c in s if c.isdigit())
    separators = {c for c in s if not c.isdigit()}
    return (
        13 <= len(digits) <= 19
        and digits[0] in "23456"
        and len(separators) <= 1
        and luhn_valid(digits)
        and not _preceded_by_version(text, m.start())
    )


def _valid_iban(text: str, m: regex.Match) -> bool:
    return iban_valid(m.group())


# Detectors in priority order: when matches overlap, the earlier type wins.
DETECTORS: dict[str, tuple[regex.Pattern, Callable[[str, regex.Match], bool]]] = {
    "EMAIL": (_EMAIL, lambda text, m: True),
    "IBAN": (_IBAN, _valid_iban),
    "CREDIT_CARD": (_CARD, _valid_card),
    "IPV6": (_IPV6, _valid_ipv6),
    "IP_ADDRESS": (_IPV4, _valid_ipv4),
    "PHONE": (_PHONE, _valid_phone),
}


@dataclass(frozen=True)
class PIIMatch:
    """One detected span: its type (a PLACEHOLDERS key), offsets and text."""

    type: str
    start: int
    end: int
    text: str


def find_pii(text: str) -> list[PIIMatch]:
    """All non-overlapping PII spans in `text`, sorted by position (@sec-data-pii)."""
    taken: list[PIIMatch] = []
    for name, (pattern, valid) in DETECTORS.items():
        kind = "IP_ADDRESS" if name == "IPV6" else name
        for m in pattern.finditer(text):
            if not valid(text, m):
                continue
            if any(m.start() < t.end and t.start < m.end() for t in taken):
                continue
            taken.append(PIIMatch(kind, m.start(), m.end(), m.group()))
    return sorted(taken, key=lambda t: t.start)


def redact_all(obj: object) -> object:
    """A copy of a JSON-like object with every string redacted (keys included): reports and logs of a run with
    PII redaction on show no raw e-mail, phone or card number (@sec-data-pii)."""
    if isinstance(obj, str):
        return redact(obj)[0]
    if isinstance(obj, dict):
        return {redact_all(k): redact_all(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_all(v) for v in obj)
    return obj


def redact(text: str) -> tuple[str, Counter]:
    """Replace every PII span by its typed placeholder; returns the new text and counts per type."""
    matches = find_pii(text)
    out, last = [], 0
    for m in matches:
        out.append(text[last : m.start])
        out.append(PLACEHOLDERS[m.type])
        last = m.end
    out.append(text[last:])
    return "".join(out), Counter(m.type for m in matches)
