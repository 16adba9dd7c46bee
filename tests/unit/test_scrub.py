"""Unit tests for shared.scrub (PII scrubbing of log messages and attribute values)."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

# tests/unit has no __init__.py, so pytest's default (prepend) import mode only puts this directory
# on sys.path; make the repository root importable (a no-op when it already is).
_REPO_ROOT = str(Path(__file__).resolve().parents[2])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from shared import scrub  # noqa: E402
from shared.scrub import scrub_attrs, scrub_text  # noqa: E402

# Strings that look a bit like PII but must come back untouched (and as the same object).
NEAR_MISSES = [
    # dotted numbers longer than four parts are versions / OIDs, not addresses
    "upgraded to 1.2.3.4.5 today",
    "oid 1.3.6.1.4.1.2021 polled",
    # Decision: an IPv4-shaped run glued to a letter is a version tag, not an address.
    "deployed v10.0.0.1-beta to canary",
    "build10.0.0.1 failed",
    "octet out of range: 999.1.1.1",
    "octet out of range: 10.0.0.256",
    "leading zero is not an address: 010.0.0.1",
    "only three parts 10.0.0",
    # times and other colon-separated things
    "started at 12:30:45 and ended 2024-01-15T12:31:02.123Z",
    "window 08:00-17:00",
    "std::vector<int> resized",
    "error in Foo::Bar::baz()",
    "dead::beef is not an address we scrub (no digits, looks like a scope)",
    "mac 00:1a:2b:3c:4d:5e online",
    "a:b:c:d:e:f:g:h separators",
    # emails need a dotted domain
    "mention a@b in chat",
    "user@localhost login",
    "twitter handle @rivulet_dev",
    # digit runs failing Luhn, too short, or not card-like
    "order 4111111111111112 shipped",
    "ts=1700000000123 ok",
    "ts 1700000000123 ok",
    "ns timestamp 1700000000123456789",
    # Decision: Luhn-valid runs count as cards only with a major-network first digit (2-6), so
    # epoch ms/ns timestamps (leading 1) are never scrubbed; both of these pass Luhn.
    "ts 1700000000129 ok",
    "ns 1700000000123456786 ok",
    "id 123456789012 created",
    "phone +1 415-555-2671",
    "amount 1234.5678901234567",
    "20 digits 41111111111111111111 too long",
    # prose mentioning secrets without a value
    "user forgot password yesterday",
    "password reset requested",
    "issued a bearer token to the client",
    "bearer of bad news",
    "token refresh scheduled",
    # identifiers
    "request 123e4567-e89b-12d3-a456-426614174000 done",
    "trace 4bf92f3577b34da6a3ce929d0e0e4736 span 00f067aa0ba902b7",
    "sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    # plain text
    "",
    "GET /api/v1/items 200 12.5ms",
    "cache hit ratio 0.93 over 1000 requests",
]


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_near_misses_untouched(text: str) -> None:
    assert scrub_text(text) is text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # emails
        ("mail alice@example.com now", "mail <email> now"),
        ("to bob.smith+alerts@mail.eu.example.co.uk.", "to <email>."),
        ("<carol_99@sub.example.io>", "<<email>>"),
        ("a@b.c.io and d@e.org", "<email> and <email>"),
        # IPv4
        ("from 10.0.0.1 port 22", "from <ipv4> port 22"),
        ("peer=192.168.1.254:8080", "peer=<ipv4>:8080"),
        ("edge 255.255.255.255 and 0.0.0.0", "edge <ipv4> and <ipv4>"),
        ("ended at 172.16.0.9.", "ended at <ipv4>."),
        ("(8.8.8.8)", "(<ipv4>)"),
        ("10.0.0.1-beta", "<ipv4>-beta"),
        # IPv6
        ("client 2001:db8::1 connected", "client <ipv6> connected"),
        ("bind ::1 ok", "bind <ipv6> ok"),
        ("link fe80::1ff:fe23:4567:890a up", "link <ipv6> up"),
        ("full 2001:0db8:85a3:0000:0000:8a2e:0370:7334", "full <ipv6>"),
        ("http://[2001:db8::42]:443/x", "http://[<ipv6>]:443/x"),
        ("mapped ::ffff:192.0.2.1 seen", "mapped <ipv6> seen"),
        ("at 12:30:45 from ::1", "at 12:30:45 from <ipv6>"),
        # cards
        ("card 4111111111111111 charged", "card <card> charged"),
        ("card 4111 1111 1111 1111 charged", "card <card> charged"),
        ("card 4111-1111-1111-1111 charged", "card <card> charged"),
        ("amex 378282246310005", "amex <card>"),
        ("amex 3782 822463 10005", "amex <card>"),
        ("mc 5555555555554444, visa 4012888888881881", "mc <card>, visa <card>"),
        ("4111 1111 1111 1111 x2 items", "<card> x2 items"),
        # bearer tokens
        (
            "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
            "Authorization: Bearer <token>",
        ),
        ("Authorization: Bearer eyJhbGciOi...", "Authorization: Bearer <token>"),
        ("sent bearer abc123def", "sent bearer <token>"),
        ("BEARER dGVzdA== ok", "BEARER <token> ok"),
        # key/value secrets
        ("GET /search?api_key=abc123&page=2", "GET /search?api_key=<redacted>&page=2"),
        ('password: "hunter2"', 'password: "<redacted>"'),
        ("password=hunter2 user=bob", "password=<redacted> user=bob"),
        ("PASSWD:s3cr3t;next", "PASSWD:<redacted>;next"),
        ("pwd=x,y", "pwd=<redacted>,y"),
        ("secret='two words'", "secret='<redacted>'"),
        (
            "apikey=k1 api-key=k2 API_KEY=k3",
            "apikey=<redacted> api-key=<redacted> API_KEY=<redacted>",
        ),
        ("token=t0k access_token=a.b.c", "token=<redacted> access_token=<redacted>"),
        ("client_secret=xyz refresh_token=r1", "client_secret=<redacted> refresh_token=<redacted>"),
        ('{"password":"p@ss word","user":"bob"}', '{"password":"<redacted>","user":"bob"}'),
        ("token: Bearer abc123", "token: <redacted>"),
        ('password="it\'s mine" ok', 'password="<redacted>" ok'),
        ("Token = abc ; next", "Token = <redacted> ; next"),
        ("password=alice@example.com", "password=<redacted>"),
        # combined
        (
            "login alice@example.com from 10.1.2.3 password=pw1",
            "login <email> from <ipv4> password=<redacted>",
        ),
    ],
)
def test_scrubbed(text: str, expected: str) -> None:
    assert scrub_text(text) == expected


def test_idempotent() -> None:
    text = "alice@example.com 10.0.0.1 ::1 4111111111111111 token=abc Bearer abc.123"
    once = scrub_text(text)
    assert scrub_text(once) is once


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "db.password",
        "DB_PASSWD",
        "client_secret",
        "api_key",
        "x-api-key",
        "apikey",
        "token",
        "session.token",
        "access_token",
        "Authorization",
        "http.request.header.authorization",
    ],
)
def test_attrs_secret_key_redacted(key: str) -> None:
    attrs = {key: "plain value", "service": "checkout"}
    out = scrub_attrs(attrs)
    assert out == {key: "<redacted>", "service": "checkout"}
    assert out is not attrs
    assert attrs[key] == "plain value"  # input is not mutated


@pytest.mark.parametrize("key", ["tokens", "max_tokens", "password_policy", "secretary", "pwd"])
def test_attrs_non_secret_keys_kept(key: str) -> None:
    attrs = {key: "8"}
    assert scrub_attrs(attrs) is attrs


def test_attrs_values_scrubbed() -> None:
    attrs = {"user": "alice@example.com", "peer": "10.0.0.1", "route": "/items"}
    assert scrub_attrs(attrs) == {"user": "<email>", "peer": "<ipv4>", "route": "/items"}


def test_attrs_unchanged_returns_equal_dict() -> None:
    attrs = {"route": "/items", "version": "1.2.3.4.5", "ts": "1700000000123"}
    out = scrub_attrs(attrs)
    assert out == attrs
    assert out is attrs


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789 .-:@a=", max_size=80))
def test_attrs_values_scrub_like_text_on_every_call(value: str) -> None:
    # short values go through a cache: the first call and the repeats must agree with scrub_text
    for _ in range(2):
        assert scrub_attrs({"k": value}) == {"k": scrub_text(value)}


def test_attrs_repeated_values_return_the_callers_dict() -> None:
    for _ in range(2):
        attrs = {"route": "/items", "region": "eu-west-1"}
        assert scrub_attrs(attrs) is attrs


def test_attrs_caches_stay_bounded_and_right_when_they_refill() -> None:
    count = scrub._CACHE_ENTRIES + 10
    for i in range(count):
        out = scrub_attrs({f"k{i}": f"v{i}", f"x-{i}-token": "t", "ip": f"10.0.{i % 256}.1"})
        assert out == {f"k{i}": f"v{i}", f"x-{i}-token": "<redacted>", "ip": "<ipv4>"}
        assert len(scrub._secret_keys) <= scrub._CACHE_ENTRIES
        assert len(scrub._short_values) <= scrub._CACHE_ENTRIES


SECRETISH = st.lists(
    st.sampled_from(["token", "Passw", "PWD", "secreT", "api", "_key", "bearer ", "=", ":", " "])
    | st.sampled_from(list("aBpStTkKeEyYrRoOdDwW0123456789\"'=: \t-_.\u212a\u017f")),
    max_size=20,
).map("".join)


@settings(max_examples=1000, deadline=None)
@given(SECRETISH)
def test_the_secret_prefilter_passes_everything_the_regex_would_match(text: str) -> None:
    if scrub._SECRET_RE.search(text) is not None:
        assert scrub._may_hold_secret(text)


def test_a_key_value_line_without_secret_keys_is_left_as_is() -> None:
    line = "level=info msg=done duration=12ms status=200 path=/x"
    assert not scrub._may_hold_secret(line)
    assert scrub_text(line) is line


def test_attrs_empty() -> None:
    attrs: dict[str, str] = {}
    assert scrub_attrs(attrs) == {}


@settings(max_examples=1000, deadline=None)
@given(
    st.text(alphabet="0123456789 .-a:", max_size=40)
    | st.lists(
        st.sampled_from(["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"])
        | st.sampled_from([*"0123456789 .-_a", "٣", "\ud800", "é", "1.2.3.4"]),
        max_size=12,
    ).map("".join)
)
def test_numeric_pass_is_skipped_only_when_it_cannot_change_the_text(text: str) -> None:
    """The cheap checks in front of the IPv4/card pass must never skip a replacement."""
    if scrub._NUMERIC_RE.sub(scrub._numeric_sub, text) != text:
        assert scrub._may_hold_number(text)


# Address pieces, word characters of several scripts, and whitespace of several kinds.
_email_like = st.text(
    alphabet=st.sampled_from(
        [
            *"aZ9_.%+-@x",
            *("é", "ß", "٣", "K", ",", "("),
            *(" ", "\t", "\n", "\r", "\x0b", "\x1c", "\x1f", "\x85", "\xa0", "\u2003", "\u3000"),
            "\u200b",  # zero-width space: not whitespace to `isspace`
        ]
    ),
    max_size=60,
).map(lambda text: text + "@")


@settings(max_examples=1000, deadline=None)
@given(_email_like, st.sampled_from(["", "mail to ", "a@b.io ", "x" * 30 + " "]))
def test_emails_are_scrubbed_in_their_words_as_in_the_whole_text(text: str, prefix: str) -> None:
    """Only the words holding an `@` go through the email pattern: the same result as all of it."""
    for candidate in (text, prefix + text, text + " user@example.com.", prefix + text[::-1]):
        assert scrub._scrub_emails(candidate) == scrub._EMAIL_RE.sub("<email>", candidate)


_ipv6_like = st.text(alphabet="0123456789abcdefABCDEF:.", min_size=2, max_size=45)


@settings(max_examples=1000, deadline=None)
@given(st.one_of(_ipv6_like, st.ip_addresses(v=6).map(str), st.ip_addresses(v=6).map(repr)))
def test_is_ipv6_agrees_with_ipaddress(text: str) -> None:
    """inet_pton stands in for `ipaddress.IPv6Address` on every candidate the pattern finds."""
    for candidate in [m.group() for m in scrub._IPV6_RE.finditer(text)] + [text]:
        try:
            ipaddress.IPv6Address(candidate)
            expected = "%" not in candidate  # a scope id never comes out of the pattern
        except ValueError:
            expected = False
        assert scrub.is_ipv6(candidate) == expected, candidate
