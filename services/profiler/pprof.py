"""Decode a pprof profile into validated, self-contained stacks (pure: no I/O).

Contract of `parse_profile(data, limits)`:
- `data` is a pprof `profile.proto` message, gzipped (magic 1f8b, concatenated members allowed)
  or plain. Gunzip is bounded: more than `limits.max_bytes` decompressed bytes (a gzip bomb) is
  refused without inflating the rest, and so is a plain message larger than that.
- Every failure is an `InvalidProfile` whose `reason` says what is wrong: not gzip / not a
  protobuf / truncated, `string_table[0]` not empty, a string index out of range, an id that is 0
  or repeated, a sample pointing at a missing location, a location at a missing mapping, a line at
  a missing function (or at none: function_id 0), a sample whose value count differs from the
  sample type count, more than `limits.max_samples` samples, a stack deeper than
  `limits.max_stack_depth` frames, or a drop_frames/keep_frames regexp RE2 cannot compile.
  Deep stacks are rejected, not truncated: a truncated stack would silently move cost to the
  wrong root, and pprof never truncates either. Depth counts frames as sent (inlined frames
  included, before drop_frames pruning).
- Kept: every sample type, period type and period, time and duration, default sample type,
  doc URL, comments, mappings, drop/keep regexps, and per sample its values and labels (string
  labels, and numeric labels with their unit). Labels follow pprof's decoding: a nonzero `str`
  makes a string label, else a nonzero `num` or `num_unit` makes a numeric one, else the label
  carries nothing and is skipped.
- Stacks are leaf first. A Location with several Lines becomes several frames in Line order
  (callee first); every frame but the Location's last is `inlined`. A Location without Lines
  becomes one frame with an empty function name (its mapping file and address tell what it is).
- drop_frames is applied as pprof's `Profile.RemoveUninteresting`/`Prune` do, before anything is
  attributed: a function name (leading "." and any "(args)" suffix trimmed, except
  "(anonymous namespace)") fully matching `^(drop_frames)$` and not `^(keep_frames)$` marks a
  frame; that frame and everything it called (toward the leaf) leave the stack. Frames at the
  root before the first unmarked frame are never pruned, so no stack becomes empty. Regexps are
  RE2 (pprof's dialect, linear time: a hostile regexp cannot stall the parser).
- `Stack.id` is a 64-bit BLAKE2b of the frames (function, file, line, inline flag; start line,
  mapping file and address for frames without a function name): equal stacks get equal ids in
  every profile, so they dedupe across profiles. Within one profile, equal stacks share one
  `Stack` object.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Sequence
from typing import Final

import msgspec
import re2
from google.protobuf.message import DecodeError

from services.profiler import profile_pb2

MIB: Final = 1024 * 1024
GZIP_MAGIC: Final = b"\x1f\x8b"
_INDEX: Final = re.compile(r"[+-]?[0-9]+")


class InvalidProfile(Exception):
    """The bytes are not a usable pprof profile; `reason` is meant for the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProfileLimits(msgspec.Struct, frozen=True):
    """Bounds on what one profile may cost to parse.

    Defaults: 16 MiB of protobuf after gunzip, 1,000,000 samples, 1024 frames per stack.
    """

    max_bytes: int = 16 * MIB
    max_samples: int = 1_000_000
    max_stack_depth: int = 1024


DEFAULT_LIMITS: Final = ProfileLimits()


class ValueType(msgspec.Struct, frozen=True):
    type: str
    unit: str


class Label(msgspec.Struct, frozen=True):
    """A sample label: exactly one of `str_value` / `num` is set; `num_unit` only with `num`."""

    key: str
    str_value: str | None = None
    num: int | None = None
    num_unit: str = ""


class Mapping(msgspec.Struct, frozen=True):
    id: int
    memory_start: int
    memory_limit: int
    file_offset: int
    filename: str
    build_id: str
    has_functions: bool
    has_filenames: bool
    has_line_numbers: bool
    has_inline_frames: bool


class Frame(msgspec.Struct, frozen=True):
    """One function activation. `inlined`: compiled into its caller (the next frame rootward)."""

    function: str
    system_name: str
    filename: str
    line: int
    start_line: int
    inlined: bool
    mapping: str = ""  # file of the Location's mapping, "" when none
    address: int = 0


class Stack(msgspec.Struct, frozen=True):
    id: int  # stable 64-bit identity of `frames`
    frames: tuple[Frame, ...]  # leaf first


class Sample(msgspec.Struct, frozen=True):
    stack: Stack
    values: tuple[int, ...]  # one per ParsedProfile.sample_types
    labels: tuple[Label, ...] = ()


class ParsedProfile(msgspec.Struct, frozen=True):
    sample_types: tuple[ValueType, ...]
    samples: tuple[Sample, ...]
    period_type: ValueType | None = None
    period: int = 0
    time_nanos: int = 0
    duration_nanos: int = 0
    default_sample_type: str = ""
    doc_url: str = ""
    comments: tuple[str, ...] = ()
    mappings: tuple[Mapping, ...] = ()
    drop_frames: str = ""
    keep_frames: str = ""


def sample_type_index(profile: ParsedProfile, which: int | str | None) -> int:
    """Resolve a sample index the way pprof's `-sample_index` does.

    None: the profile's default_sample_type if it names a type, else the last type. An int, or a
    string of digits, is a position. Any other string is a type name, "inuse_" prefix optional.
    """
    types = profile.sample_types
    if not types:
        raise ValueError("profile has no sample types")
    if which is None or which == "":
        if profile.default_sample_type:
            for i, vt in enumerate(types):
                if vt.type == profile.default_sample_type:
                    return i
        return len(types) - 1
    if isinstance(which, str) and _INDEX.fullmatch(which):
        which = int(which)
    if isinstance(which, int):
        if not 0 <= which < len(types):
            raise ValueError(f"sample_index {which} is outside the range [0..{len(types) - 1}]")
        return which
    bare = which.removeprefix("inuse_")
    for i, vt in enumerate(types):
        if vt.type in (which, bare):
            return i
    names = [vt.type for vt in types]
    raise ValueError(f"sample_index {which!r} must be one of: {names}")


def parse_profile(data: bytes, limits: ProfileLimits = DEFAULT_LIMITS) -> ParsedProfile:
    """Decode and validate one profile (see the module docstring for the rules)."""
    raw = _gunzip(data, limits.max_bytes) if data[:2] == GZIP_MAGIC else data
    if len(raw) > limits.max_bytes:
        raise InvalidProfile(f"profile larger than {limits.max_bytes} bytes")
    msg = profile_pb2.Profile()
    try:
        msg.ParseFromString(raw)
    except DecodeError as exc:
        raise InvalidProfile(f"not a valid pprof protobuf (truncated or garbage): {exc}") from None
    return _Decoder(msg, limits).decode()


def stack_id(frames: Sequence[Frame]) -> int:
    """Stable 64-bit identity of a stack: same frames, same id, in any profile or process."""
    parts = []
    for f in frames:
        part = f"{f.function}\x1f{f.filename}\x1f{f.line}\x1f{int(f.inlined)}"
        if not f.function:
            part += f"\x1f{f.start_line}\x1f{f.mapping}\x1f{f.address}"
        parts.append(part)
    digest = hashlib.blake2b("\x1e".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _gunzip(data: bytes, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    remaining = data
    while remaining:  # concatenated gzip members are one gzip stream (RFC 1952)
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = inflater.decompress(remaining, limit + 1 - size)
        except zlib.error as exc:
            raise InvalidProfile(f"not valid gzip: {exc}") from None
        size += len(out)
        if size > limit or inflater.unconsumed_tail:
            raise InvalidProfile(f"profile larger than {limit} bytes after gunzip")
        if not inflater.eof:
            raise InvalidProfile("not valid gzip: truncated stream")
        chunks.append(out)
        remaining = inflater.unused_data
    return b"".join(chunks)


class _Location(msgspec.Struct, frozen=True):
    frames: tuple[Frame, ...]  # leaf first, after drop_frames trimming
    depth: int  # frames as sent, before trimming
    prune: bool  # the whole location matched drop_frames
    prune_beneath: bool  # some line matched: everything leafward of it goes


class _Decoder:
    def __init__(self, msg: profile_pb2.Profile, limits: ProfileLimits) -> None:
        self.msg = msg
        self.limits = limits
        self.strings: list[str] = list(msg.string_table)

    def s(self, index: int, what: str) -> str:
        if 0 <= index < len(self.strings):
            return self.strings[index]
        raise InvalidProfile(
            f"{what}: string index {index} out of range (string_table has {len(self.strings)})"
        )

    def value_type(self, vt: profile_pb2.ValueType, what: str) -> ValueType:
        return ValueType(type=self.s(vt.type, f"{what} type"), unit=self.s(vt.unit, f"{what} unit"))

    def decode(self) -> ParsedProfile:
        msg = self.msg
        if not self.strings or self.strings[0] != "":
            raise InvalidProfile('string_table[0] must be ""')
        if len(msg.sample) > self.limits.max_samples:
            raise InvalidProfile(
                f"{len(msg.sample)} samples: more than the limit of {self.limits.max_samples}"
            )
        sample_types = tuple(self.value_type(vt, "sample_type") for vt in msg.sample_type)
        if msg.sample and not sample_types:
            raise InvalidProfile("samples without sample types")
        mappings = self.mappings()
        locations = self.locations({m.id: m for m in mappings})
        samples = self.samples(locations, len(sample_types))
        return ParsedProfile(
            sample_types=sample_types,
            samples=samples,
            period_type=(
                self.value_type(msg.period_type, "period_type")
                if msg.HasField("period_type")
                else None
            ),
            period=msg.period,
            time_nanos=msg.time_nanos,
            duration_nanos=msg.duration_nanos,
            default_sample_type=self.s(msg.default_sample_type, "default_sample_type"),
            doc_url=self.s(msg.doc_url, "doc_url"),
            comments=tuple(self.s(i, "comment") for i in msg.comment),
            mappings=mappings,
            drop_frames=self.s(msg.drop_frames, "drop_frames"),
            keep_frames=self.s(msg.keep_frames, "keep_frames"),
        )

    def mappings(self) -> tuple[Mapping, ...]:
        out: list[Mapping] = []
        seen: set[int] = set()
        for m in self.msg.mapping:
            if m.id == 0:
                raise InvalidProfile("mapping with reserved id 0")
            if m.id in seen:
                raise InvalidProfile(f"mapping id {m.id} appears twice")
            seen.add(m.id)
            out.append(
                Mapping(
                    id=m.id,
                    memory_start=m.memory_start,
                    memory_limit=m.memory_limit,
                    file_offset=m.file_offset,
                    filename=self.s(m.filename, f"mapping {m.id} filename"),
                    build_id=self.s(m.build_id, f"mapping {m.id} build_id"),
                    has_functions=m.has_functions,
                    has_filenames=m.has_filenames,
                    has_line_numbers=m.has_line_numbers,
                    has_inline_frames=m.has_inline_frames,
                )
            )
        return tuple(out)

    def functions(self) -> dict[int, tuple[str, str, str, int]]:
        out: dict[int, tuple[str, str, str, int]] = {}
        for f in self.msg.function:
            if f.id == 0:
                raise InvalidProfile("function with reserved id 0")
            if f.id in out:
                raise InvalidProfile(f"function id {f.id} appears twice")
            what = f"function {f.id}"
            out[f.id] = (
                self.s(f.name, f"{what} name"),
                self.s(f.system_name, f"{what} system_name"),
                self.s(f.filename, f"{what} filename"),
                f.start_line,
            )
        return out

    def prune_regexps(self) -> tuple[re2._Regexp[str] | None, re2._Regexp[str] | None]:
        drop = self.s(self.msg.drop_frames, "drop_frames")
        if not drop:
            return None, None  # pprof ignores keep_frames without drop_frames
        keep = self.s(self.msg.keep_frames, "keep_frames")
        options = re2.Options()
        options.log_errors = False
        options.max_mem = 8 * MIB
        try:
            drop_rx = re2.compile(f"^({drop})$", options)
            keep_rx = re2.compile(f"^({keep})$", options) if keep else None
        except re2.error as exc:
            detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
            raise InvalidProfile(
                f"drop_frames/keep_frames is not a valid regexp: {detail}"
            ) from None
        return drop_rx, keep_rx

    def locations(self, mappings: dict[int, Mapping]) -> dict[int, _Location]:
        functions = self.functions()
        drop_rx, keep_rx = self.prune_regexps()
        out: dict[int, _Location] = {}
        for loc in self.msg.location:
            if loc.id == 0:
                raise InvalidProfile("location with reserved id 0")
            if loc.id in out:
                raise InvalidProfile(f"location id {loc.id} appears twice")
            mapping = ""
            if loc.mapping_id:
                m = mappings.get(loc.mapping_id)
                if m is None:
                    raise InvalidProfile(
                        f"location {loc.id} refers to missing mapping {loc.mapping_id}"
                    )
                mapping = m.filename
            frames: list[Frame] = []
            last = len(loc.line) - 1
            for i, ln in enumerate(loc.line):
                fn = functions.get(ln.function_id)
                if fn is None:
                    raise InvalidProfile(
                        f"location {loc.id} has a line at missing function {ln.function_id}"
                    )
                name, system_name, filename, start_line = fn
                frames.append(
                    Frame(
                        function=name,
                        system_name=system_name,
                        filename=filename,
                        line=ln.line,
                        start_line=start_line,
                        inlined=i != last,
                        mapping=mapping,
                        address=loc.address,
                    )
                )
            if not frames:
                frames.append(
                    Frame("", "", "", 0, 0, inlined=False, mapping=mapping, address=loc.address)
                )
            out[loc.id] = _prune_location(tuple(frames), drop_rx, keep_rx)
        return out

    def labels(self, sample: profile_pb2.Sample) -> tuple[Label, ...]:
        out: list[Label] = []
        for lab in sample.label:
            key = self.s(lab.key, "label key")
            if lab.str:
                out.append(Label(key=key, str_value=self.s(lab.str, f"label {key!r} value")))
            elif lab.num or lab.num_unit:
                unit = self.s(lab.num_unit, f"label {key!r} unit")
                out.append(Label(key=key, num=lab.num, num_unit=unit))
        return tuple(out)

    def samples(self, locations: dict[int, _Location], n_types: int) -> tuple[Sample, ...]:
        max_depth = self.limits.max_stack_depth
        by_ids: dict[tuple[int, ...], Stack] = {}
        by_hash: dict[int, Stack] = {}
        out: list[Sample] = []
        for index, s in enumerate(self.msg.sample):
            values = tuple(s.value)
            if len(values) != n_types:
                raise InvalidProfile(
                    f"sample {index} has {len(values)} values for {n_types} sample types"
                )
            ids = tuple(s.location_id)
            stack = by_ids.get(ids)
            if stack is None:
                if len(ids) > max_depth:
                    raise InvalidProfile(
                        f"sample {index} is {len(ids)} frames deep: more than {max_depth}"
                    )
                try:
                    locs = [locations[i] for i in ids]
                except KeyError as exc:
                    raise InvalidProfile(
                        f"sample {index} refers to missing location {exc.args[0]}"
                    ) from None
                depth = sum(loc.depth for loc in locs)
                if depth > max_depth:
                    raise InvalidProfile(
                        f"sample {index} is {depth} frames deep: more than {max_depth}"
                    )
                frames = tuple(f for loc in _prune_sample(locs) for f in loc.frames)
                new = Stack(id=stack_id(frames), frames=frames)
                stack = by_hash.setdefault(new.id, new)
                by_ids[ids] = stack
            labels = self.labels(s) if s.label else ()
            out.append(Sample(stack=stack, values=values, labels=labels))
        return tuple(out)


def _prunable_name(name: str) -> str:
    """The function name pprof matches drop_frames against."""
    name = name.removeprefix(".")  # PPC ELF v1 ABI
    paren = name.find("(")
    if paren > 0 and not name.startswith("(anonymous namespace)", paren):
        name = name[:paren]
    return name


def _prune_location(
    frames: tuple[Frame, ...],
    drop_rx: re2._Regexp[str] | None,
    keep_rx: re2._Regexp[str] | None,
) -> _Location:
    depth = len(frames)
    if drop_rx is None:
        return _Location(frames=frames, depth=depth, prune=False, prune_beneath=False)
    # Scan from the caller (last) inward: the outermost matching line decides.
    for i in range(len(frames) - 1, -1, -1):
        name = frames[i].function
        if not name:
            continue
        name = _prunable_name(name)
        if drop_rx.search(name) and (keep_rx is None or not keep_rx.search(name)):
            if i == len(frames) - 1:
                return _Location(frames=frames, depth=depth, prune=True, prune_beneath=True)
            return _Location(frames=frames[i + 1 :], depth=depth, prune=False, prune_beneath=True)
    return _Location(frames=frames, depth=depth, prune=False, prune_beneath=False)


def _prune_sample(locs: list[_Location]) -> list[_Location]:
    # From the root leafward; marked locations before the first unmarked one are kept.
    found_user = False
    for i in range(len(locs) - 1, -1, -1):
        loc = locs[i]
        if not loc.prune and not loc.prune_beneath:
            found_user = True
            continue
        if not found_user:
            continue
        if loc.prune:
            return locs[i + 1 :]
        return locs[i:]
    return locs
