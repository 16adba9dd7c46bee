"""Pure normalization: raw entry -> clean event, and a batch of raw deliveries -> what the
normalizer commits (`process_batch`). No I/O; lookups are injected.

Steps, in order: validate and canonicalise (shared.events), enrich (GeoIP from the client IP the
gateway captured for RUM, or from a client-IP attribute on logs; user agent for RUM), then scrub
PII from free text and attribute values. Enrichment runs before scrubbing because the IP that
feeds GeoIP is itself scrubbed from the stored attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import msgspec

from services.normalizer.enrich import GeoLookup, UserAgentLookup
from shared.apikeys import IP_POLICY_ATTR, ORIGIN_ATTR, TRUNCATED_IP_ATTR, truncate_ip
from shared.entries import (
    Delivery,
    MalformedEntry,
    StageCommit,
    decode_raw_fields,
    salvage_dead_letter,
)
from shared.events import InvalidEvent, parse_event
from shared.schemas import (
    CleanEntry,
    CleanEvent,
    DeadLetter,
    Kind,
    Log,
    Metric,
    RawEntry,
    Rum,
    Span,
)
from shared.scrub import scrub_attrs, scrub_text

CLIENT_IP_ATTRIBUTES: Final = ("client_ip", "client.address", "http.client_ip", "ip")
_encoder: Final = msgspec.json.Encoder()
# Bound once: compiled, `msgspec.structs.replace` is two module attribute lookups per call.
_replace: Final = msgspec.structs.replace


@dataclass(frozen=True)
class Enrichment:
    geo: GeoLookup
    user_agent: UserAgentLookup


def normalize(kind: Kind, entry: RawEntry, enrichment: Enrichment) -> CleanEvent:
    """Raises shared.events.InvalidEvent when the event can never be stored."""
    # Without a receive time, parse_event hands back the event it built whenever the client gave
    # an id; the one copy below then sets the id, the time and the scrubbed fields together.
    event = parse_event(kind, entry.body, entry.tenant)
    ident, received_at = entry.id or event.id, entry.received_at
    if isinstance(event, Log):
        attrs = event.attrs
        ip = _client_ip(attrs)
        return _replace(
            event,
            id=ident,
            received_at=received_at,
            message=scrub_text(event.message),
            attrs=scrub_attrs(attrs),
            geo=enrichment.geo(ip) if ip else event.geo,
        )
    if isinstance(event, Rum):
        return _replace(
            event,
            id=ident,
            received_at=received_at,
            url=scrub_text(event.url),
            referrer=scrub_text(event.referrer),
            error=scrub_attrs(event.error),
            attrs=_browser_attrs(event.attrs, entry.ip),
            geo=enrichment.geo(entry.ip) if entry.ip else event.geo,
            user_agent=enrichment.user_agent(entry.ua),
        )
    if isinstance(event, Span):
        return _replace(
            event,
            id=ident,
            received_at=received_at,
            status_message=scrub_text(event.status_message),
            attrs=scrub_attrs(event.attrs),
        )
    assert isinstance(event, Metric)
    return _replace(
        event,
        id=ident,
        received_at=received_at,
        labels=scrub_attrs(event.labels),
        attrs=scrub_attrs(event.attrs),
    )


def _client_ip(attrs: dict[str, str]) -> str:
    """The first client-IP attribute present, or ""."""
    for name in CLIENT_IP_ATTRIBUTES:
        value = attrs.get(name)
        if value is not None:
            return value
    return ""


def _browser_attrs(attrs: dict[str, str], ip: str) -> dict[str, str]:
    """Scrubbed attributes; for events of browser keys (the gateway set IP_POLICY_ATTR) the
    checked page origin is kept as is and the client IP, already used for GeoIP, is stored
    truncated (/24, /48) or not at all, as the key says."""
    scrubbed = scrub_attrs(attrs)
    policy = attrs.get(IP_POLICY_ATTR)
    if policy is None:
        return scrubbed
    out = {k: v for k, v in scrubbed.items() if k != IP_POLICY_ATTR}
    if ORIGIN_ATTR in attrs:
        out[ORIGIN_ATTR] = attrs[ORIGIN_ATTR]
    if policy == "truncate" and (network := truncate_ip(ip)):
        out[TRUNCATED_IP_ATTR] = network
    return out


def to_clean_entry(event: CleanEvent, kind: Kind) -> CleanEntry:
    return CleanEntry(
        tenant=event.tenant,
        kind=kind,
        id=event.id,
        received_at=event.received_at,
        body=_encoder.encode(event),
    )


def process_batch(
    kind: Kind, deliveries: Sequence[Delivery], enrichment: Enrichment, max_deliveries: int
) -> StageCommit:
    """Pure: what a batch of raw deliveries becomes."""
    outputs: list[CleanEntry] = []
    dead: list[DeadLetter] = []
    # Each handler binds its own name: mypyc gives a name one type, so an `exc` shared by two
    # handlers fails at run time when the second binds another exception class to it.
    for delivery in deliveries:
        try:
            entry = decode_raw_fields(delivery.flat)
        except MalformedEntry as malformed:
            reason = f"malformed raw entry: {malformed}"
            dead.append(
                salvage_dead_letter(
                    delivery.fields, kind, "normalizer", reason, delivery.deliveries
                )
            )
            continue
        reason = ""
        if delivery.deliveries > max_deliveries:
            reason = f"delivered {delivery.deliveries} times without being processed"
        else:
            try:
                outputs.append(to_clean_entry(normalize(kind, entry, enrichment), kind))
            except InvalidEvent as invalid:
                reason = f"invalid event: {invalid}"
            except Exception as error:  # a bug must not wedge the stream: park the event, go on
                reason = f"normalizer error: {type(error).__name__}: {error}"
        if reason:
            dead.append(
                DeadLetter(
                    tenant=entry.tenant,
                    kind=kind,
                    id=entry.id,
                    received_at=entry.received_at,
                    body=entry.body,
                    reason=reason,
                    stage="normalizer",
                    attempts=delivery.deliveries,
                    ip=entry.ip,
                    ua=entry.ua,
                )
            )
    return StageCommit(acked=[d.id for d in deliveries], outputs=outputs, dead_letters=dead)
