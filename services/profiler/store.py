"""Reading stored profiles back for reports: SQL (pure builders) and the loader (I/O injected).

Input: a `Selection` and a sample index; a `query` coroutine that runs read-only SQL and returns
JSON lines (`rivulet query`'s route: the chdb owner's loopback port, or a ClickHouse server).
Output: `ParsedProfile`s (one per unit of the chosen sample type, usually one) that every
`services.profiler.report` function reads, as if the stored profiles had been merged by pprof.

How a report is read (four queries, each narrowed by the tables' sort keys):
1. `profiles` rows of the selection, oldest first: the chosen sample type is resolved on the
   first one as pprof's -sample_index does, and every profile must have it (as `report` demands);
2. `profile_samples`: the summed value per stack hash and unit, for that sample type, over the
   tenant/service/type/time range — only of profiles whose row is stored, so a profile still
   being written is never half counted;
3. `profile_stacks` for those hashes; 4. `profile_functions` for their frames.
Tenancy: `tenant` None reads every tenant (operator view); stack and function rows are keyed by
content hashes, so one tenant's row serves another's equal stack.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec

from services.profiler.pprof import ParsedProfile, ValueType, sample_type_index
from services.profiler.records import StoredHeader, stored_profile
from services.profiler.selection import Selection, SelectionError
from shared.schemas import ProfileFunction, ProfileStack

QueryFn = Callable[[str], Awaitable[bytes]]


class ProfileMeta(msgspec.Struct, frozen=True):
    """One `profiles` row without its protobuf (what `rivulet profile list` prints)."""

    tenant: str
    id: str
    service: str
    type: str
    ts_ns: int  # when the profile was taken (its time_nanos, else its arrival)
    received_ns: int
    sample_types: list[str]
    sample_units: list[str]
    default_sample_type: str = ""
    period_type: str = ""
    period_unit: str = ""
    period: int = 0
    time_nanos: int = 0
    duration_ns: int = 0
    samples: int = 0
    stacks: int = 0
    size: int = 0
    comments: list[str] = []
    doc_url: str = ""
    main_binary: str = ""
    build_id: str = ""
    labels: dict[str, str] = {}


class _SumRow(msgspec.Struct, frozen=True):
    h: int
    u: str
    v: int


class _StackRow(msgspec.Struct, frozen=True):
    h: int
    f: list[int]
    l: list[int]  # noqa: E741
    i: list[int]
    m: list[str]
    a: list[int]


class _FunctionRow(msgspec.Struct, frozen=True):
    h: int
    n: str
    s: str
    f: str
    l: int  # noqa: E741


class _PprofRow(msgspec.Struct, frozen=True):
    pprof: str  # base64


_meta_decoder: Final = msgspec.json.Decoder(ProfileMeta, strict=False)
_sum_decoder: Final = msgspec.json.Decoder(_SumRow, strict=False)
_stack_decoder: Final = msgspec.json.Decoder(_StackRow, strict=False)
_function_decoder: Final = msgspec.json.Decoder(_FunctionRow, strict=False)
_pprof_decoder: Final = msgspec.json.Decoder(_PprofRow, strict=False)


class NoProfiles(LookupError):
    """The selection holds no stored profile."""


# --- SQL -----------------------------------------------------------------------------------------


def quote(text: str) -> str:
    """A ClickHouse string literal: quotes, backslashes and control characters escaped."""
    out = ["'"]
    for ch in text:
        if ch in "\\'":
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append("'")
    return "".join(out)


def _ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _conditions(sel: Selection, id_column: str) -> list[str]:
    conds: list[str] = []
    if sel.tenant is not None:
        conds.append(f"tenant = {quote(sel.tenant)}")
    if sel.service is not None:
        conds.append(f"service = {quote(sel.service)}")
    if sel.type is not None:
        conds.append(f"type = {quote(sel.type)}")
    if sel.window is not None:
        conds.append(
            f"ts >= fromUnixTimestamp64Nano(toInt64({int(sel.window.start_ns)})) "
            f"AND ts < fromUnixTimestamp64Nano(toInt64({int(sel.window.end_ns)}))"
        )
    if sel.profile_id is not None:
        conds.append(f"{id_column} = {quote(sel.profile_id)}")
    return conds or ["1"]


def _where(sel: Selection, id_column: str) -> str:
    return " AND ".join(_conditions(sel, id_column))


META_COLUMNS: Final = (
    "tenant, id, service, type, toUnixTimestamp64Nano(ts) AS ts_ns, "
    "toUnixTimestamp64Nano(received_at) AS received_ns, sample_types, sample_units, "
    "default_sample_type, period_type, period_unit, period, time_nanos, duration_ns, samples, "
    "stacks, size, comments, doc_url, main_binary, build_id, labels"
)


def meta_sql(db: str, sel: Selection, limit: int = 0) -> str:
    tail = f" LIMIT {int(limit)}" if limit > 0 else ""
    return (
        f"SELECT {META_COLUMNS} FROM {_ident(db)}.profiles WHERE {_where(sel, 'id')} "
        f"ORDER BY ts, tenant, id{tail}"
    )


def exact(meta: ProfileMeta) -> Selection:
    """The selection of exactly one stored profile, by its full sort key."""
    return Selection(
        tenant=meta.tenant,
        service=meta.service,
        type=meta.type,
        window=None,
        profile_id=meta.id,
    )


def _samples_where(db: str, sel: Selection, sample_type: str, ts_ns: int | None) -> str:
    conds = _conditions(sel, "profile_id")
    conds.append(f"sample_type = {quote(sample_type)}")
    if ts_ns is not None:
        conds.append(f"ts = fromUnixTimestamp64Nano(toInt64({int(ts_ns)}))")
    else:
        conds.append(
            f"(tenant, profile_id) IN (SELECT tenant, id FROM {_ident(db)}.profiles "
            f"WHERE {_where(sel, 'id')})"
        )
    return " AND ".join(conds)


def sums_sql(db: str, sel: Selection, sample_type: str, ts_ns: int | None = None) -> str:
    """Summed value per stack and unit. `ts_ns`: the time of the one profile `sel` names."""
    return (
        "SELECT toString(stack_hash) AS h, sample_unit AS u, toString(sum(value)) AS v "
        f"FROM {_ident(db)}.profile_samples WHERE {_samples_where(db, sel, sample_type, ts_ns)} "
        "GROUP BY stack_hash, sample_unit HAVING sum(value) != 0"
    )


def _tenant_cond(sel: Selection) -> str:
    return f"tenant = {quote(sel.tenant)} AND " if sel.tenant is not None else ""


def _stack_hashes_sql(db: str, sel: Selection, sample_type: str, ts_ns: int | None) -> str:
    return (
        f"SELECT stack_hash FROM {_ident(db)}.profile_samples "
        f"WHERE {_samples_where(db, sel, sample_type, ts_ns)}"
    )


def stacks_sql(db: str, sel: Selection, sample_type: str, ts_ns: int | None = None) -> str:
    return (
        "SELECT toString(stack_hash) AS h, arrayMap(x -> toString(x), function_hashes) AS f, "
        "arrayMap(x -> toString(x), lines) AS l, inlined AS i, mappings AS m, "
        "arrayMap(x -> toString(x), addresses) AS a "
        f"FROM {_ident(db)}.profile_stacks WHERE {_tenant_cond(sel)}stack_hash IN "
        f"({_stack_hashes_sql(db, sel, sample_type, ts_ns)}) LIMIT 1 BY stack_hash"
    )


def functions_sql(db: str, sel: Selection, sample_type: str, ts_ns: int | None = None) -> str:
    stacks = (
        f"SELECT arrayJoin(function_hashes) FROM {_ident(db)}.profile_stacks "
        f"WHERE {_tenant_cond(sel)}stack_hash IN "
        f"({_stack_hashes_sql(db, sel, sample_type, ts_ns)})"
    )
    return (
        "SELECT toString(function_hash) AS h, name AS n, system_name AS s, filename AS f, "
        "toString(start_line) AS l "
        f"FROM {_ident(db)}.profile_functions WHERE {_tenant_cond(sel)}function_hash IN "
        f"({stacks}) LIMIT 1 BY function_hash"
    )


def pprof_sql(db: str, meta: ProfileMeta) -> str:
    return (
        f"SELECT base64Encode(pprof) AS pprof FROM {_ident(db)}.profiles "
        f"WHERE {_where(exact(meta), 'id')} "
        f"AND ts = fromUnixTimestamp64Nano(toInt64({int(meta.ts_ns)})) LIMIT 1"
    )


# --- merging -------------------------------------------------------------------------------------


def chosen_sample_type(metas: list[ProfileMeta], sample_index: int | str | None) -> str:
    """The sample type name pprof's -sample_index picks on the first profile; every profile
    must have it (ValueError otherwise, as `report` raises)."""
    first = metas[0]
    probe = ParsedProfile(
        sample_types=tuple(
            ValueType(t, u) for t, u in zip(first.sample_types, first.sample_units, strict=True)
        ),
        samples=(),
        default_sample_type=first.default_sample_type,
    )
    name = first.sample_types[sample_type_index(probe, sample_index)]
    lacking = [m.id for m in metas if name not in m.sample_types]
    if lacking:
        raise ValueError(
            f"a profile has no sample type {name!r} (e.g. {lacking[0]}): "
            "narrow the selection (--type) or choose another --sample-index"
        )
    return name


def header(metas: list[ProfileMeta]) -> StoredHeader:
    """What report's header would say about these profiles merged (first profile's binary)."""
    first = metas[0]
    comments: list[str] = []
    for m in metas:
        comments.extend(c for c in m.comments if c not in comments)
    times = [m.time_nanos for m in metas if m.time_nanos]
    return StoredHeader(
        time_nanos=min(times) if times else 0,
        duration_nanos=sum(m.duration_ns for m in metas),
        comments=tuple(comments),
        doc_url=first.doc_url,
        main_binary=first.main_binary,
        build_id=first.build_id,
        period_type=ValueType(first.period_type, first.period_unit) if first.period_type else None,
        period=first.period,
    )


# --- loading -------------------------------------------------------------------------------------


class ProfileStore:
    def __init__(self, query: QueryFn, database: str) -> None:
        self.query = query
        self.database = database

    async def profiles(self, sel: Selection, limit: int = 0) -> list[ProfileMeta]:
        data = await self.query(meta_sql(self.database, sel, limit))
        return _meta_decoder.decode_lines(data) if data.strip() else []

    async def _one(self, sel: Selection) -> ProfileMeta:
        metas = await self.profiles(sel)
        if not metas:
            raise NoProfiles(f"no stored profile with id {sel.profile_id!r}")
        if len({m.tenant for m in metas}) > 1:
            raise SelectionError(
                f"profile id {sel.profile_id!r} exists for several tenants: give the tenant"
            )
        return metas[0]

    async def load(
        self, sel: Selection, sample_index: int | str | None
    ) -> tuple[list[ParsedProfile], list[ProfileMeta]]:
        """The selection's profiles merged per unit of the chosen sample type (usually one)."""
        if sel.profile_id is not None:
            meta = await self._one(sel)
            metas, narrowed, ts_ns = [meta], exact(meta), meta.ts_ns
        else:
            metas = await self.profiles(sel)
            narrowed, ts_ns = sel, None
            if not metas:
                raise NoProfiles("no stored profile matches the selection")
        name = chosen_sample_type(metas, sample_index)
        db = self.database
        sums_data = await self.query(sums_sql(db, narrowed, name, ts_ns))
        stacks_data = await self.query(stacks_sql(db, narrowed, name, ts_ns))
        functions_data = await self.query(functions_sql(db, narrowed, name, ts_ns))
        sums = _sum_decoder.decode_lines(sums_data) if sums_data.strip() else []
        stacks = {
            r.h: ProfileStack(
                hash=r.h,
                functions=tuple(r.f),
                lines=tuple(r.l),
                inlined=tuple(bool(x) for x in r.i),
                mappings=tuple(r.m),
                addresses=tuple(r.a),
            )
            for r in (_stack_decoder.decode_lines(stacks_data) if stacks_data.strip() else [])
        }
        functions = {
            r.h: ProfileFunction(hash=r.h, name=r.n, system_name=r.s, filename=r.f, start_line=r.l)
            for r in (
                _function_decoder.decode_lines(functions_data) if functions_data.strip() else []
            )
        }
        units: dict[str, list[tuple[int, int]]] = {}
        for row in sums:
            units.setdefault(row.u, []).append((row.h, row.v))
        first_unit = metas[0].sample_units[metas[0].sample_types.index(name)]
        if not units:
            units[first_unit] = []
        ordered = sorted(units, key=lambda u: (u != first_unit, u))
        head = header(metas)  # once: report merges headers by summing durations
        profiles = [
            stored_profile(
                ValueType(name, unit),
                sorted(units[unit]),
                stacks,
                functions,
                head if k == 0 else StoredHeader(),
            )
            for k, unit in enumerate(ordered)
        ]
        return profiles, metas

    async def pprof(self, sel: Selection) -> bytes:
        """The original protobuf (gzipped) of the one profile `sel.profile_id` names."""
        meta = await self._one(sel)
        data = await self.query(pprof_sql(self.database, meta))
        rows = _pprof_decoder.decode_lines(data) if data.strip() else []
        if not rows:
            raise NoProfiles(f"no stored profile with id {sel.profile_id!r}")
        return base64.b64decode(rows[0].pprof)
