"""Build pprof protobufs from plain stacks (pure): for tests, examples and sample agents.

    b = ProfileBuilder([("samples", "count"), ("cpu", "nanoseconds")])
    b.add(["main.work", "main.main"], [3, 30_000_000])            # leaf first
    b.add([("bytes.Equal", "main.check"), "main.main"], [1, 10])   # an inlined location
    data = b.encode(gzipped=True)

A stack lists frames leaf first; a frame is a function name (one Location with one Line) or a
tuple of names (one Location whose Lines are those functions, callee first: all but the last
were inlined into the last). Equal frames reuse one Location and one Function, as real
profilers do. Strings and ids are assigned in order of first use; a function's line numbers
derive from its name alone, so equal stacks built by different builders are equal.
"""

from __future__ import annotations

import gzip
import random
import zlib
from collections.abc import Mapping, Sequence

from services.profiler import profile_pb2

FrameSpec = str | tuple[str, ...]


class ProfileBuilder:
    def __init__(
        self,
        sample_types: Sequence[tuple[str, str]],
        *,
        period_type: tuple[str, str] | None = None,
        period: int = 0,
        mapping_file: str = "",
    ) -> None:
        self.msg = profile_pb2.Profile()
        self._strings: dict[str, int] = {}
        self._functions: dict[str, int] = {}
        self._locations: dict[tuple[str, ...], int] = {}
        self.string("")
        for type_, unit in sample_types:
            self.msg.sample_type.add(type=self.string(type_), unit=self.string(unit))
        if period_type is not None:
            self.msg.period_type.type = self.string(period_type[0])
            self.msg.period_type.unit = self.string(period_type[1])
        self.msg.period = period
        self.mapping_id = 0
        if mapping_file:
            self.mapping_id = 1
            self.msg.mapping.add(
                id=1,
                memory_start=0x1000,
                memory_limit=0x100000,
                filename=self.string(mapping_file),
                has_functions=True,
                has_filenames=True,
                has_line_numbers=True,
                has_inline_frames=True,
            )

    def string(self, text: str) -> int:
        index = self._strings.get(text)
        if index is None:
            index = self._strings[text] = len(self.msg.string_table)
            self.msg.string_table.append(text)
        return index

    def function(self, name: str, filename: str = "") -> int:
        """The id of function `name`, created on first use (`filename` counts only then)."""
        fid = self._functions.get(name)
        if fid is None:
            fid = self._functions[name] = len(self._functions) + 1
            self.msg.function.add(
                id=fid,
                name=self.string(name),
                system_name=self.string(name),
                filename=self.string(filename or f"{name.split('.')[0]}.go"),
                start_line=_line_of(name) - 1,
            )
        return fid

    def location(self, frame: FrameSpec) -> int:
        names = (frame,) if isinstance(frame, str) else frame
        lid = self._locations.get(names)
        if lid is None:
            lid = self._locations[names] = len(self._locations) + 1
            loc = self.msg.location.add(id=lid, mapping_id=self.mapping_id, address=0x1000 + lid)
            for name in names:
                loc.line.add(function_id=self.function(name), line=_line_of(name))
        return lid

    def add(
        self,
        stack: Sequence[FrameSpec],
        values: Sequence[int],
        labels: Mapping[str, str] | None = None,
        num_labels: Mapping[str, tuple[int, str]] | None = None,
    ) -> profile_pb2.Sample:
        sample = self.msg.sample.add(
            location_id=[self.location(f) for f in stack], value=list(values)
        )
        for key, value in (labels or {}).items():
            sample.label.add(key=self.string(key), str=self.string(value))
        for key, (num, unit) in (num_labels or {}).items():
            sample.label.add(key=self.string(key), num=num, num_unit=self.string(unit))
        return sample

    def set_drop_frames(self, drop: str, keep: str = "") -> None:
        self.msg.drop_frames = self.string(drop)
        self.msg.keep_frames = self.string(keep) if keep else 0

    def encode(self, gzipped: bool = False) -> bytes:
        data = self.msg.SerializeToString(deterministic=True)
        return gzip.compress(data, mtime=0) if gzipped else data


def _line_of(name: str) -> int:
    return 2 + zlib.crc32(name.encode()) % 997


def cpu_example(scale: int = 1, *, time_nanos: int = 0, extra: str = "") -> ProfileBuilder:
    """A small CPU profile with a known `-top` (values in ms of cpu, x `scale`):

    main.compute 50 flat (inlined bytes.Equal below it: 5), main.parse 30, runtime.mallocgc
    15, main.main 0 flat / 100 cum; `extra` adds one more leaf under main.main worth 1.
    """
    ms = 1_000_000
    b = ProfileBuilder(
        [("samples", "count"), ("cpu", "nanoseconds")],
        period_type=("cpu", "nanoseconds"),
        period=10 * ms,
        mapping_file="/usr/bin/example",
    )
    b.msg.time_nanos = time_nanos
    b.msg.duration_nanos = 10_000 * ms
    b.add(["main.compute", "main.main", "runtime.main"], [45 * scale, 45 * ms * scale])
    b.add(
        [("bytes.Equal", "main.compute"), "main.main", "runtime.main"], [5 * scale, 5 * ms * scale]
    )
    b.add(["main.parse", "main.main", "runtime.main"], [30 * scale, 30 * ms * scale])
    b.add(
        ["runtime.mallocgc", "main.parse", "main.main", "runtime.main"],
        [15 * scale, 15 * ms * scale],
        labels={"goroutine": "7"},
    )
    b.add(["runtime.gcBgMarkWorker"], [5 * scale, 5 * ms * scale])
    if extra:
        b.add([extra, "main.main", "runtime.main"], [1, ms])
    return b


def random_example(
    seed: int,
    *,
    stacks: int = 200,
    functions: int = 150,
    max_depth: int = 24,
    samples: int = 1000,
    time_nanos: int = 0,
) -> ProfileBuilder:
    """A larger pseudo-random CPU profile (deterministic per seed), for load and round trips."""
    rng = random.Random(seed)
    names = [f"pkg{i % 7}.fn{i}" for i in range(functions)]
    b = ProfileBuilder(
        [("samples", "count"), ("cpu", "nanoseconds")],
        period_type=("cpu", "nanoseconds"),
        period=10_000_000,
        mapping_file="/usr/bin/app",
    )
    b.msg.time_nanos = time_nanos
    b.msg.duration_nanos = 10_000_000_000
    shapes: list[list[FrameSpec]] = []
    for _ in range(stacks):
        depth = rng.randint(2, max_depth)
        called = [rng.choice(names) for _ in range(depth - 1)]
        frames: list[FrameSpec] = list(called)
        if rng.random() < 0.2:
            frames[0] = (rng.choice(names), called[0])  # an inlined call at the leaf
        shapes.append([*frames, "runtime.main"])
    for _ in range(samples):
        count = rng.randint(1, 5)
        b.add(rng.choice(shapes), [count, count * 10_000_000])
    return b
