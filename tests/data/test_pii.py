import pytest

from tuneloop.data.pii import find_pii, redact


def kinds(text: str, region: str = "US") -> list[str]:
    return [f.kind for f in find_pii(text, region)]


@pytest.mark.parametrize(("text", "kind"), [
    ("write to jane.doe+news@mail.example.co.uk today", "EMAIL"),
    ("call (415) 555-2671 now", "PHONE"),
    ("call 415-555-2671.", "PHONE"),
    ("ring +44 20 7946 0958", "PHONE"),
    ("card 4111 1111 1111 1111 expires", "CREDIT_CARD"),
    ("card 4012-8888-8888-1881", "CREDIT_CARD"),
    ("pay to DE89 3704 0044 0532 0130 00 please", "IBAN"),
    ("pay to GB82WEST12345698765432", "IBAN"),
    ("server 192.168.10.254 is down", "IP"),
    ("host 2001:db8::8a2e:370:7334 answers", "IP"),
    ("ssn 536-22-1234 on file", "SSN"),
])
def test_true_positives(text: str, kind: str) -> None:
    assert kinds(text) == [kind]


@pytest.mark.parametrize("text", [
    "the meeting is on 2024-01-15 at 10:30",
    "dated 12/05/2023",
    "Order #4155552671 has shipped",
    "order number 4155552671 has shipped",
    "invoice 2023-11-29-0042",
    "ISBN 978-3-16-148410-0",
    "card 4111 1111 1111 1112 fails Luhn",
    "DE89 3704 0044 0532 0130 01 fails mod-97",
    "version 1.2.3.4.5 and 300.1.2.3",
    "time 10:30:00 and std::vector",
    "ssn 000-12-3456 and 666-12-3456 are never issued",
    "a user@localhost is not a routable address",
    "population 1,234,567 in 2005",
])
def test_false_positives_are_left_alone(text: str) -> None:
    assert kinds(text) == []


def test_phone_region_decides_numbers_without_country_code() -> None:
    assert kinds("call 030 12345678", "US") == []
    assert kinds("call 030 12345678", "DE") == ["PHONE"]


def test_redact_puts_typed_placeholders_and_overlaps_resolve_to_one() -> None:
    text = "Mail a@b.com, card 4111111111111111, IP 10.0.0.1."
    found = find_pii(text)
    assert redact(text, found) == "Mail [EMAIL], card [CREDIT_CARD], IP [IP]."
    assert kinds("DE89370400440532013000") == ["IBAN"]  # its digit run is no phone number too
