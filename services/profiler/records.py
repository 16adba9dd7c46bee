"""Parsed profiles to storable records and back (pure: no I/O).

Input: a raw profile entry and its `ParsedProfile` (services.profiler.pprof).
Output: a `CleanProfile` (shared.schemas): the profile row's fields, its functions (deduplicated
by hash), its distinct stacks (by `pprof.stack_id`) and, per stack, the sum of each sample type
over the profile's samples. Back: `stored_profile` turns (stack hash, summed value) pairs plus the
stack and function rows into a `ParsedProfile` that `services.profiler.report` reads.

Guarantee: for any profile P, every report over `stored_profile(...)` of P's record equals the
same report over P itself — `top`, `format_top` (any granularity, `noinlines`), `folded`,
`flamegraph_svg`, `diff` — because a report depends only on the frames of each stack and the
summed value per stack:
- a frame keeps its function name, system name, file, start line, line and inline flag; frames
  without a function name also keep their mapping file and address (the only frames whose report
  identity and stack hash use them);
- samples on one stack are summed per sample type. pprof's total is the sum of |value| over
  samples, so the two agree whenever the samples of one stack do not mix signs, which holds for
  every profile a runtime writes (only `pprof -diff_base` output mixes them). Sample labels are
  not kept per stack; the original protobuf is stored beside the rows for anything else.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import msgspec

from services.profiler.pprof import (
    GZIP_MAGIC,
    Frame,
    InvalidProfile,
    ParsedProfile,
    Sample,
    Stack,
    ValueType,
)
from services.profiler.pprof import Mapping as PprofMapping
from shared.events import MAX_TS_NS
from shared.schemas import CleanProfile, ProfileFunction, ProfileStack, RawProfileEntry

INT64_MAX: Final = 2**63 - 1


def profile_id(tenant: str, body: bytes) -> str:
    """The id of a profile the client gave none: a resent profile is a duplicate."""
    digest = hashlib.sha256()
    digest.update(tenant.encode())
    digest.update(b"\0")
    digest.update(body)
    return digest.hexdigest()[:32]


def function_hash(name: str, system_name: str, filename: str, start_line: int) -> int:
    """Stable 64-bit identity of a function (same fields, same hash, in any process)."""
    text = f"{name}\x1f{system_name}\x1f{filename}\x1f{start_line}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def gzipped(body: bytes) -> bytes:
    """The protobuf gzipped (as pprof writes it); already gzipped bytes are kept as they are."""
    return body if body[:2] == GZIP_MAGIC else gzip.compress(body, compresslevel=6, mtime=0)


def profile_time(time_nanos: int, received_at: int) -> int:
    """When the profile was taken: its own time if storable, else its arrival."""
    return time_nanos if 0 < time_nanos < MAX_TS_NS else received_at


def to_clean_profile(entry: RawProfileEntry, parsed: ParsedProfile) -> CleanProfile:
    """Raises InvalidProfile when a summed value does not fit a signed 64-bit integer."""
    n_types = len(parsed.sample_types)
    functions: list[ProfileFunction] = []
    function_ids: dict[tuple[str, str, str, int], int] = {}
    stack_index: dict[int, int] = {}
    stacks: list[ProfileStack] = []
    sums: list[list[int]] = []
    for sample in parsed.samples:
        stack = sample.stack
        index = stack_index.get(stack.id)
        if index is None:
            index = stack_index[stack.id] = len(stacks)
            hashes: list[int] = []
            for frame in stack.frames:
                key = (frame.function, frame.system_name, frame.filename, frame.start_line)
                fid = function_ids.get(key)
                if fid is None:
                    fid = function_ids[key] = function_hash(*key)
                    functions.append(ProfileFunction(fid, *key))
                hashes.append(fid)
            named = [bool(f.function) for f in stack.frames]
            stacks.append(
                ProfileStack(
                    hash=stack.id,
                    functions=tuple(hashes),
                    lines=tuple(f.line for f in stack.frames),
                    inlined=tuple(f.inlined for f in stack.frames),
                    mappings=tuple(
                        "" if n else f.mapping for f, n in zip(stack.frames, named, strict=True)
                    ),
                    addresses=tuple(
                        0 if n else f.address for f, n in zip(stack.frames, named, strict=True)
                    ),
                )
            )
            sums.append([0] * n_types)
        row = sums[index]
        for j, value in enumerate(sample.values):
            row[j] += value
    for row in sums:
        if any(not -INT64_MAX - 1 <= v <= INT64_MAX for v in row):
            raise InvalidProfile("summed sample values do not fit in 64 bits")
    first_mapping = parsed.mappings[0] if parsed.mappings else None
    return CleanProfile(
        tenant=entry.tenant,
        id=entry.id,
        ts=profile_time(parsed.time_nanos, entry.received_at),
        received_at=entry.received_at,
        service=entry.service,
        type=entry.type,
        sample_types=tuple(vt.type for vt in parsed.sample_types),
        sample_units=tuple(vt.unit for vt in parsed.sample_types),
        stacks=tuple(stacks),
        values=tuple(tuple(row) for row in sums),
        functions=tuple(functions),
        labels=entry.labels,
        default_sample_type=parsed.default_sample_type,
        period_type=parsed.period_type.type if parsed.period_type else "",
        period_unit=parsed.period_type.unit if parsed.period_type else "",
        period=parsed.period,
        time_nanos=parsed.time_nanos,
        duration_nanos=parsed.duration_nanos,
        samples=len(parsed.samples),
        comments=parsed.comments,
        doc_url=parsed.doc_url,
        main_binary=first_mapping.filename if first_mapping else "",
        build_id=first_mapping.build_id if first_mapping else "",
        size=entry.size or len(entry.body),
        pprof=gzipped(entry.body),
    )


def first_index_per_type(sample_types: Sequence[str]) -> list[int]:
    """Positions of the first sample type of each name: the only ones a report can select
    (`report` matches a chosen type by name, first match)."""
    seen: set[str] = set()
    out: list[int] = []
    for i, name in enumerate(sample_types):
        if name not in seen:
            seen.add(name)
            out.append(i)
    return out


# --- back: stored rows to a ParsedProfile -----------------------------------------------------


class StoredHeader(msgspec.Struct, frozen=True):
    """Profile-level facts of the stored profiles a report covers (merged like report does)."""

    time_nanos: int = 0  # earliest
    duration_nanos: int = 0  # summed
    comments: tuple[str, ...] = ()
    doc_url: str = ""
    main_binary: str = ""
    build_id: str = ""
    default_sample_type: str = ""
    period_type: ValueType | None = None
    period: int = 0


class MissingStoredData(ValueError):
    """A sample refers to a stack or function the store does not hold (expired or not yet
    written)."""


def _frames(stack: ProfileStack, functions: Mapping[int, ProfileFunction]) -> tuple[Frame, ...]:
    frames: list[Frame] = []
    for fid, line, inlined, mapping, address in zip(
        stack.functions, stack.lines, stack.inlined, stack.mappings, stack.addresses, strict=True
    ):
        fn = functions.get(fid)
        if fn is None:
            raise MissingStoredData(f"function {fid} of stack {stack.hash} is not stored")
        frames.append(
            Frame(
                function=fn.name,
                system_name=fn.system_name,
                filename=fn.filename,
                line=line,
                start_line=fn.start_line,
                inlined=bool(inlined),
                mapping=mapping,
                address=address,
            )
        )
    return tuple(frames)


def stored_profile(
    sample_type: ValueType,
    sums: Iterable[tuple[int, int]],
    stacks: Mapping[int, ProfileStack],
    functions: Mapping[int, ProfileFunction],
    header: StoredHeader | None = None,
) -> ParsedProfile:
    """One ParsedProfile with one sample per (stack hash, summed value), of one sample type."""
    header = header or StoredHeader()
    samples: list[Sample] = []
    built: dict[int, Stack] = {}
    for stack_hash, value in sums:
        stack = built.get(stack_hash)
        if stack is None:
            row = stacks.get(stack_hash)
            if row is None:
                raise MissingStoredData(f"stack {stack_hash} is not stored")
            stack = built[stack_hash] = Stack(id=stack_hash, frames=_frames(row, functions))
        samples.append(Sample(stack=stack, values=(value,)))
    mappings: tuple[PprofMapping, ...] = ()
    if header.main_binary or header.build_id:
        mappings = (
            PprofMapping(
                id=1,
                memory_start=0,
                memory_limit=0,
                file_offset=0,
                filename=header.main_binary,
                build_id=header.build_id,
                has_functions=True,
                has_filenames=True,
                has_line_numbers=True,
                has_inline_frames=True,
            ),
        )
    return ParsedProfile(
        sample_types=(sample_type,),
        samples=tuple(samples),
        period_type=header.period_type,
        period=header.period,
        time_nanos=header.time_nanos,
        duration_nanos=header.duration_nanos,
        default_sample_type=sample_type.type,
        doc_url=header.doc_url,
        comments=header.comments,
        mappings=mappings,
    )


def record_as_stored(
    record: CleanProfile, sample_index: int
) -> tuple[ValueType, list[tuple[int, int]], dict[int, ProfileStack], dict[int, ProfileFunction]]:
    """What the store would return for one record and one sample type (for tests and tools)."""
    vt = ValueType(record.sample_types[sample_index], record.sample_units[sample_index])
    sums = [
        (stack.hash, values[sample_index])
        for stack, values in zip(record.stacks, record.values, strict=True)
        if values[sample_index] != 0
    ]
    return (
        vt,
        sums,
        {s.hash: s for s in record.stacks},
        {f.hash: f for f in record.functions},
    )
