"""Find personal data in text and replace it with typed placeholders (`[EMAIL]`, `[PHONE]`, ...).

Candidates come from patterns; each is then checked the way the number itself is defined, so
that look-alikes are left alone: phone numbers with Google's libphonenumber (`phonenumbers`, which
already skips dates, times and numbers invalid for the region), card numbers with the Luhn
checksum, IBANs with their country format and mod-97 checksum, US SSNs with the SSA's rules
(`python-stdnum`), IP addresses with `ipaddress`.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass

import phonenumbers
from stdnum import iban, luhn
from stdnum.us import ssn

# When two findings overlap, the earlier kind in this order wins (an IBAN holds digit runs that
# could pass for a phone number; an e-mail's domain may hold an IP).
KINDS = ("EMAIL", "IBAN", "CREDIT_CARD", "SSN", "IP", "PHONE")

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}\b"
)
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_SSN = re.compile(r"(?<![\d-])\d{3}([- ])\d{2}\1\d{4}(?![\d-])")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.]*\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_DIGIT = re.compile(r"\d")
# Cheap gate before the (slow) phone matcher: seven digits with little in between.
_PHONE_GATE = re.compile(r"\d(?:[^\d\n]{0,3}\d){6}")
# A bare digit run right after these words is an identifier, not a phone number.
_ID_CONTEXT = re.compile(
    r"(?:\b(?:order|invoice|ref|reference|ticket|tracking|account|acct|customer|id|sku|serial|isbn)|#)"
    r"[\s.:#-]*(?:no\.?|num(?:ber)?\.?)?[\s.:#-]*$",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One piece of personal data: its kind (one of `KINDS`) and where it is in the text."""

    kind: str
    start: int
    end: int


def find_pii(text: str, region: str = "US") -> list[Finding]:
    """All personal data in `text`, without overlaps, in order of position.

    Args:
        text: The text to scan.
        region: Two-letter country code for phone numbers written without a `+` country code.

    >>> [f.kind for f in find_pii("Mail ann@example.com or call (415) 555-2671.")]
    ['EMAIL', 'PHONE']
    """
    found: list[Finding] = []
    if "@" in text:
        found += [Finding("EMAIL", m.start(), m.end()) for m in _EMAIL.finditer(text)]
    if "." in text or ":" in text:
        found += _ips(text)
    if _DIGIT.search(text):
        found += _ibans(text) + _cards(text) + _ssns(text)
        if _PHONE_GATE.search(text):
            found += _phones(text, region)
    return _without_overlaps(found) if found else found


def _ibans(text: str) -> list[Finding]:
    out = []
    for m in _IBAN.finditer(text):
        candidate = m.group()
        # The pattern may run on into a following upper-case word; shorten by whole groups.
        while candidate and not iban.is_valid(candidate):
            candidate = candidate.rpartition(" ")[0]
        if candidate:
            out.append(Finding("IBAN", m.start(), m.start() + len(candidate)))
    return out


def _cards(text: str) -> list[Finding]:
    out = []
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and luhn.is_valid(digits):
            out.append(Finding("CREDIT_CARD", m.start(), m.end()))
    return out


def _ssns(text: str) -> list[Finding]:
    return [Finding("SSN", m.start(), m.end()) for m in _SSN.finditer(text) if ssn.is_valid(m.group().replace(" ", "-"))]


def _ips(text: str) -> list[Finding]:
    out = []
    for pattern in (_IPV4, _IPV6):
        for m in pattern.finditer(text):
            if sum(c.isalnum() for c in m.group()) < 2:
                continue  # "::" alone is a valid address but in text it is punctuation
            try:
                ipaddress.ip_address(m.group())
            except ValueError:
                continue
            out.append(Finding("IP", m.start(), m.end()))
    return out


def _phones(text: str, region: str) -> list[Finding]:
    out = []
    for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
        if m.raw_string.isdigit() and _ID_CONTEXT.search(text, 0, m.start):
            continue
        out.append(Finding("PHONE", m.start, m.end))
    return out


def _without_overlaps(found: list[Finding]) -> list[Finding]:
    kept: list[Finding] = []
    for f in sorted(found, key=lambda f: (KINDS.index(f.kind), f.start)):
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)


def redact(text: str, findings: list[Finding]) -> str:
    """Replace each finding with its placeholder, e.g. `[EMAIL]`.

    >>> redact("ann@example.com", find_pii("ann@example.com"))
    '[EMAIL]'
    """
    for f in reversed(findings):  # from the end, so earlier offsets stay valid
        text = f"{text[: f.start]}[{f.kind}]{text[f.end :]}"
    return text


def count(findings: list[Finding]) -> Counter[str]:
    """How many findings of each kind."""
    return Counter(f.kind for f in findings)
