"""PII scrubbing for log messages and attribute values before they are stored.

`scrub_text` replaces, in this order:
- secret key/value pairs (`password=`, `pwd:`, `api_key=`, `token=`, ... including quoted
  values and query strings): the value becomes `<redacted>`, key and separator are kept;
- `Bearer <credential>`: the credential becomes `<token>`;
- email addresses -> `<email>`;
- IPv6 addresses -> `<ipv6>`, IPv4 addresses -> `<ipv4>`;
- Luhn-valid payment card numbers (13-19 digits, optionally grouped by spaces or dashes)
  -> `<card>`.

`scrub_attrs` scrubs every value and also replaces the whole value with `<redacted>` when the
attribute key names a secret (`db.password`, `x-api-key`, `authorization`, ...).

Both return their argument unchanged (the same object) when there is nothing to scrub.
"""

from __future__ import annotations

import re
import socket
from typing import Final, TypeVar

__all__ = ["scrub_attrs", "scrub_text"]

_REDACTED: Final = "<redacted>"
_TOKEN: Final = "<token>"
_EMAIL: Final = "<email>"
_IPV4: Final = "<ipv4>"
_IPV6: Final = "<ipv6>"
_CARD: Final = "<card>"

# Every key (and "bearer") starts with one of these letters. The pattern consumes that letter
# first and only then looks behind it: a leading plain character class lets the regex engine
# skip impossible positions quickly, which a leading lookbehind or IGNORECASE would prevent.
# The lookbehind admits prefixed keys (`client_secret`, `refresh_token`) but not words that
# merely end in a key (`mysecret`).
_SECRET_RE: Final = re.compile(
    r"[AaBbPpSsTt](?<![A-Za-z0-9].)(?i:"
    # "Bearer <credential>": the credential must contain a digit or token68 punctuation so
    # that prose ("bearer of bad news", "a bearer token") survives.
    r"(?<=b)earer[ \t]+(?=[a-z]*[0-9_.~+/=-])(?P<t>[a-z0-9_.~+/-]+=*)"
    # key, separator (a quote closing a JSON key belongs to it), value. A quoted value runs
    # to its closing quote, an unquoted one to whitespace , ; & or a quote.
    r"|(?:(?<=p)(?:assword|asswd|wd)|(?<=s)ecret(?:[_-]?key)?"
    r"|(?<=a)(?:pi[_-]?key|ccess_token)|(?<=t)oken)[\"']?[ \t]*[=:][ \t]*"
    r"(?:(?P<q>[\"'])(?P<qv>(?:(?!(?P=q))[^\r\n])+)(?P=q)"
    r"|[\"']?(?P<v>(?:bearer[ \t]+)?[^\s&,;\"']+))"
    r")"
)

# The lookbehind makes matching start only at the beginning of the local part, which keeps the
# scan linear on long words.
_EMAIL_RE: Final = re.compile(
    r"(?<![\w.%+-])[\w.%+-]+@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}\b",
    re.IGNORECASE,
)

# Candidates only; `is_ipv6` has the final word. Requires at least two colons, so plain
# `hh:mm` never gets here, and may end in an embedded IPv4 (`::ffff:10.0.0.1`).
_IPV6_RE: Final = re.compile(
    r"(?<![\w:.])(?:[0-9a-f]{0,4}:){2,7}(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9a-f]{1,4})?"
    r"(?![\w:]|\.[0-9])",
    re.IGNORECASE,
)

_OCTET: Final = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"

# One pass for IPv4 and cards. Every branch starts by consuming a digit and only then checks
# the character before it: a leading character class lets the regex engine skip non-digit
# positions quickly, which a leading lookbehind would prevent. Cards are restricted to the
# major-network first digits 2-6 so that epoch timestamps (which start with 1) never pass
# merely because one in ten numbers is Luhn-valid.
_NUMERIC_RE: Final = re.compile(
    r"[0-9](?<![\w.][0-9])(?:"
    # IPv4: re-validate the first octet now that its first digit has been consumed.
    r"(?P<v4>(?:(?<=1)[0-9]{0,2}|(?<=2)(?:5[0-5]|[0-4][0-9]|[0-9])?|(?<=[3-9])[0-9]?|(?<=0))"
    r"(?:\." + _OCTET + r"){3})"
    r"|(?<=[2-6])(?P<c>[0-9]{12,18}|[0-9]{3}(?P<s>[ -])[0-9]{3,6}(?:(?P=s)[0-9]{3,6}){1,4})"
    r")(?![\w]|[.-][0-9])"
)


# What every `_NUMERIC_RE` match needs, far cheaper to look for: an IPv4 address has three dots,
# a card candidate twelve digits, spaces or dashes in a row (it starts with a digit).
_CARD_HINT: Final = re.compile(r"[0-9][0-9 -]{11}")
# Each byte to b"1" if it is an ASCII digit (all that `[0-9]` matches), else to b"0".
_DIGIT_MARKS: Final = bytes(0x31 if 0x30 <= c <= 0x39 else 0x30 for c in range(256))
_CARD_MIN_DIGITS: Final = 13


def _may_hold_number(text: str) -> bool:
    """False only where `_NUMERIC_RE.sub(_numeric_sub, ...)` changes nothing: an IPv4 address
    needs three dots, and a card is replaced only with at least 13 digits. The digits are
    counted in C (encode, mark, count) at a fraction of a regex search's cost; most lines have
    far fewer. `translate` with a table and nothing to delete takes its fast loop."""
    if text.count(".") >= 3:
        return True
    digits = text.encode("utf-8", "surrogatepass").translate(_DIGIT_MARKS).count(b"1")
    return digits >= _CARD_MIN_DIGITS and _CARD_HINT.search(text) is not None


# Every key `_SECRET_RE` knows, and "bearer", holds one of these words.
_SECRET_WORDS: Final = ("token", "passw", "pwd", "secret", "api", "bearer")


def _may_hold_secret(text: str) -> bool:
    """False only where `_SECRET_RE` cannot match: a key=value log line without a secret key
    skips its scan. For ASCII text a case-insensitive match is a match in lower case; beyond
    ASCII it reaches further (the Kelvin sign matches k), so the regex decides."""
    if not text.isascii():
        return True
    lowered = text.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _secret_sub(m: re.Match[str]) -> str:
    whole, start = m.group(), m.start()
    if m.group("t") is not None:
        return whole[: m.start("t") - start] + _TOKEN
    if m.group("q") is not None:
        return whole[: m.start("qv") - start] + _REDACTED + m.group("q")
    return whole[: m.start("v") - start] + _REDACTED


def _ipv6_sub(m: re.Match[str]) -> str:
    s = m.group()
    # A valid address without any decimal digit is far more likely a C++/Rust scope
    # (`a::b`, `dead::beef`) than an address.
    if not any(c.isdigit() for c in s):
        return s
    return _IPV6 if is_ipv6(s) else s


def is_ipv6(text: str) -> bool:
    """`ipaddress.IPv6Address` without a scope id, at C speed (inet_pton: ~0.2 us, not ~4)."""
    try:
        socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return False
    return True


def _numeric_sub(m: re.Match[str]) -> str:
    if m.group("v4") is not None:
        return _IPV4
    s = m.group()
    digits = s.replace(" ", "").replace("-", "") if m.group("s") else s
    if _CARD_MIN_DIGITS <= len(digits) <= 19 and _luhn_ok(digits):
        return _CARD
    return s


def _scrub_emails(text: str) -> str:
    """`_EMAIL_RE.sub` over only the words that hold an `@`: every match contains one and no
    whitespace, and a cut at whitespace leaves its lookbehind and `\\b` as they were. The regex
    tries every position it is given; a message is mostly words without an address."""
    start = text.index("@")
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    end = text.rindex("@")
    while end < len(text) and not text[end].isspace():
        end += 1
    return text[:start] + _EMAIL_RE.sub(_EMAIL, text[start:end]) + text[end:]


def scrub_text(text: str) -> str:
    """Replace PII and secrets in `text` with typed placeholders (see module docstring)."""
    out = text
    # Cheap substring tests decide which passes can possibly match.
    if ("=" in out or ":" in out or "earer" in out or "EARER" in out) and _may_hold_secret(out):
        out = _SECRET_RE.sub(_secret_sub, out)
    if "@" in out:
        out = _scrub_emails(out)
    if "::" in out or out.count(":") >= 7:
        out = _IPV6_RE.sub(_ipv6_sub, out)
    if _may_hold_number(out):
        out = _NUMERIC_RE.sub(_numeric_sub, out)
    # Rejected candidates make `sub` build an equal copy; hand back the caller's object.
    return text if out == text else out


_SECRET_KEY_SUFFIXES: Final = (
    "password",
    "passwd",
    "secret",
    "api_key",
    "api-key",
    "api.key",
    "apikey",
    "token",
    "authorization",
)


# Attribute keys, and short values (status codes, regions, routes, hosts), repeat from event to
# event far more than messages do: a cache hit skips lower() and nine endswith(), or scrub_text's
# substring tests and scans. Plain dicts: compiled, a hit costs a fraction of a call through
# `functools.lru_cache`, which packs its argument into a tuple (docs/performance.md). Bounded in
# entries (keys and values are client-chosen): a full cache is emptied and refills.
_CACHE_ENTRIES: Final = 8192
T = TypeVar("T")
_CACHED_VALUE_CHARS: Final = 64
_secret_keys: Final[dict[str, bool]] = {}
_short_values: Final[dict[str, str]] = {}


def _remember(cache: dict[str, T], key: str, value: T) -> T:
    """Store a computed value, emptying the cache first when it is full."""
    if len(cache) >= _CACHE_ENTRIES:
        cache.clear()
    cache[key] = value
    return value


def _is_secret_key(key: str) -> bool:
    known = _secret_keys.get(key)
    if known is not None:
        return known
    return _remember(_secret_keys, key, key.lower().endswith(_SECRET_KEY_SUFFIXES))


def _scrub_short_value(value: str) -> str:
    known = _short_values.get(value)
    if known is not None:
        return known
    return _remember(_short_values, value, scrub_text(value))


def scrub_attrs(attrs: dict[str, str]) -> dict[str, str]:
    """Scrub every value; redact values of secret-named keys (`db.password`, `x-api-key`).

    Returns a new dict when something changed, otherwise `attrs` itself.
    """
    out: dict[str, str] | None = None
    for key, value in attrs.items():
        if _is_secret_key(key):
            new = _REDACTED
        elif len(value) <= _CACHED_VALUE_CHARS:
            new = _scrub_short_value(value)
        else:
            new = scrub_text(value)
        if new is not value and new != value:
            if out is None:
                out = dict(attrs)
            out[key] = new
    return attrs if out is None else out
