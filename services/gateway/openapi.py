"""The gateway's OpenAPI 3.1 document, served at `GET /openapi.json`.

Built from the wire Structs (msgspec's JSON Schema), so the document cannot drift from what the
gateway actually validates. Answers and headers follow CONTRACT.md, "HTTP".
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from shared.schemas import KINDS, WIRE_TYPES, ErrorAnswer, IngestAnswer

_SIGNED_HEADERS: Final = [
    {
        "name": "X-Rivulet-Key",
        "in": "header",
        "required": True,
        "schema": {"type": "string", "maxLength": 64},
    },
    {
        "name": "X-Rivulet-Timestamp",
        "in": "header",
        "required": True,
        "description": "unix seconds; refused when more than 300 s from the server clock",
        "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"},
    },
    {
        "name": "X-Rivulet-Signature",
        "in": "header",
        "required": True,
        "description": 'hex HMAC-SHA256(secret, "{ts}.{METHOD}.{path_with_query}.{sha256(body)}")',
        "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
    },
    {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "maxLength": 1024},
    },
    {
        "name": "Content-Encoding",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "enum": ["gzip", "identity"]},
    },
]


def _error(description: str, retry_after: bool = False) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorAnswer"}}},
    }
    if retry_after:
        answer["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    return answer


def build_openapi() -> dict[str, Any]:
    types = [WIRE_TYPES[kind] for kind in KINDS]
    (schemas, components) = msgspec.json.schema_components(
        [*types, IngestAnswer, ErrorAnswer], ref_template="#/components/schemas/{name}"
    )
    paths: dict[str, Any] = {}
    for kind, schema in zip(KINDS, schemas, strict=False):
        paths[f"/v1/ingest/{kind}"] = {
            "post": {
                "summary": f"Ingest {kind}",
                "operationId": f"ingest_{kind}",
                "parameters": _SIGNED_HEADERS,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["events"],
                                "properties": {"events": {"type": "array", "items": schema}},
                            }
                        },
                        "application/x-ndjson": {"schema": {"type": "string"}},
                    },
                },
                "responses": {
                    "202": {
                        "description": "accepted (possibly partially: see rejected)",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/IngestAnswer"}
                            }
                        },
                    },
                    "400": _error("malformed headers"),
                    "401": _error("missing/unknown key, bad signature, timestamp out of window"),
                    "409": _error("replayed signature"),
                    "413": _error("body too large"),
                    "415": _error("unsupported content type or encoding"),
                    "422": _error("not a valid batch"),
                    "429": _error("tenant over its rate limit", retry_after=True),
                    "503": _error("backpressure or storage unavailable", retry_after=True),
                },
            }
        }
    for path, summary in (
        ("/healthz", "process alive"),
        ("/readyz", "Redis reachable and not shedding"),
    ):
        paths[path] = {
            "get": {
                "summary": summary,
                "responses": {"200": {"description": "ok"}, "503": _error("not ready")},
            }
        }
    paths["/metrics"] = {
        "get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "ok"}}}
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Rivulet gateway", "version": "1"},
        "paths": paths,
        "components": {"schemas": components},
    }


OPENAPI_JSON: Final = msgspec.json.encode(build_openapi())
