"""Unit tests for services.profiler.pprof: decoding, validation, inlining, drop_frames, ids."""

from __future__ import annotations

import gzip
import tracemalloc

import pytest

from services.profiler import profile_pb2
from services.profiler.pprof import (
    Frame,
    InvalidProfile,
    Label,
    ParsedProfile,
    ProfileLimits,
    ValueType,
    parse_profile,
    sample_type_index,
)
from services.profiler.synth import ProfileBuilder

MIB = 1024 * 1024
CPU_TYPES = [("samples", "count"), ("cpu", "nanoseconds")]


def names(frames: tuple[Frame, ...]) -> list[str]:
    return [f.function for f in frames]


def cpu_builder() -> ProfileBuilder:
    b = ProfileBuilder(CPU_TYPES, period_type=("cpu", "nanoseconds"), period=10_000_000)
    b.add(["main.work", "main.main"], [3, 30_000_000])
    b.add(["main.idle", "main.main"], [1, 10_000_000])
    return b


def rejected(data: bytes, limits: ProfileLimits | None = None) -> str:
    with pytest.raises(InvalidProfile) as info:
        parse_profile(data, limits or ProfileLimits())
    assert info.value.reason == str(info.value)
    return info.value.reason


def test_plain_and_gzipped_decode_the_same() -> None:
    b = cpu_builder()
    plain = parse_profile(b.encode())
    assert parse_profile(b.encode(gzipped=True)) == plain
    assert plain.sample_types == (ValueType("samples", "count"), ValueType("cpu", "nanoseconds"))
    assert plain.period_type == ValueType("cpu", "nanoseconds")
    assert plain.period == 10_000_000
    assert [names(s.stack.frames) for s in plain.samples] == [
        ["main.work", "main.main"],
        ["main.idle", "main.main"],
    ]
    assert [s.values for s in plain.samples] == [(3, 30_000_000), (1, 10_000_000)]


def test_concatenated_gzip_members_are_one_stream() -> None:
    data = cpu_builder().encode()
    half = len(data) // 2
    joined = gzip.compress(data[:half]) + gzip.compress(data[half:])
    assert parse_profile(joined) == parse_profile(data)


def test_metadata_is_kept() -> None:
    b = cpu_builder()
    b.msg.time_nanos = 1_700_000_000_000_000_000
    b.msg.duration_nanos = 10_000_000_000
    b.msg.comment.extend([b.string("built by test"), b.string("second")])
    b.msg.default_sample_type = b.string("samples")
    b.msg.doc_url = b.string("https://example.test/cpu")
    b.msg.mapping.add(id=7, memory_start=1, memory_limit=2, file_offset=3)
    b.msg.mapping[-1].filename = b.string("/bin/app")
    b.msg.mapping[-1].build_id = b.string("abc123")
    b.set_drop_frames("runtime\\..*", "runtime\\.keep")
    p = parse_profile(b.encode())
    assert p.time_nanos == 1_700_000_000_000_000_000
    assert p.duration_nanos == 10_000_000_000
    assert p.comments == ("built by test", "second")
    assert p.default_sample_type == "samples"
    assert p.doc_url == "https://example.test/cpu"
    assert p.drop_frames == "runtime\\..*"
    assert p.keep_frames == "runtime\\.keep"
    (m,) = p.mappings
    assert (m.id, m.memory_start, m.memory_limit, m.file_offset) == (7, 1, 2, 3)
    assert (m.filename, m.build_id) == ("/bin/app", "abc123")


def test_a_location_with_several_lines_is_inlined_frames_callee_first() -> None:
    b = ProfileBuilder(CPU_TYPES)
    b.add([("bytes.Equal", "main.check"), "main.main"], [1, 10])
    (sample,) = parse_profile(b.encode()).samples
    frames = sample.stack.frames
    assert names(frames) == ["bytes.Equal", "main.check", "main.main"]
    assert [f.inlined for f in frames] == [True, False, False]
    first = frames[0]
    assert first.system_name == "bytes.Equal"
    assert first.filename == "bytes.go"
    assert first.line > 0 and first.start_line > 0


def test_a_location_without_lines_is_one_unnamed_frame() -> None:
    b = ProfileBuilder(CPU_TYPES, mapping_file="/usr/lib/libc.so.6")
    b.msg.location.add(id=99, mapping_id=1, address=0xABC)
    b.msg.sample.add(location_id=[99, b.location("main.main")], value=[1, 1])
    (sample,) = parse_profile(b.encode()).samples
    leaf = sample.stack.frames[0]
    assert (leaf.function, leaf.mapping, leaf.address) == ("", "/usr/lib/libc.so.6", 0xABC)


def test_labels_string_and_numeric_with_units() -> None:
    b = cpu_builder()
    b.add(
        ["main.work"],
        [1, 1],
        labels={"thread": "t1", "span": "abc"},
        num_labels={"bytes": (4096, "bytes"), "requests": (3, "")},
    )
    sample = b.msg.sample[-1]
    sample.label.add(key=b.string("empty"))  # carries nothing: pprof skips it
    labels = parse_profile(b.encode()).samples[-1].labels
    assert labels == (
        Label(key="thread", str_value="t1"),
        Label(key="span", str_value="abc"),
        Label(key="bytes", num=4096, num_unit="bytes"),
        Label(key="requests", num=3, num_unit=""),
    )


# --- drop_frames / keep_frames ----------------------------------------------------------------


def heap_builder() -> ProfileBuilder:
    b = ProfileBuilder([("alloc_space", "bytes")])
    b.add(["runtime.mallocgc", "runtime.newobject", "main.alloc", "main.main"], [100])
    b.add([("runtime.mallocgc", "main.inl"), "main.main"], [10])
    b.add(["runtime.mallocgc", "runtime.newobject"], [1])  # no unmarked frame: nothing pruned
    return b


def test_drop_frames_prunes_matching_frames_and_their_callees() -> None:
    b = heap_builder()
    b.set_drop_frames("runtime\\.mallocgc|runtime\\.newobject")
    stacks = [names(s.stack.frames) for s in parse_profile(b.encode()).samples]
    assert stacks == [
        ["main.alloc", "main.main"],
        ["main.inl", "main.main"],  # the inlined line went, its caller stayed
        ["runtime.mallocgc", "runtime.newobject"],
    ]


def test_drop_frames_is_anchored_and_keep_frames_wins() -> None:
    b = heap_builder()
    b.set_drop_frames("runtime\\.", keep="")  # anchored: matches no full name
    stacks = [names(s.stack.frames) for s in parse_profile(b.encode()).samples]
    assert stacks[0] == ["runtime.mallocgc", "runtime.newobject", "main.alloc", "main.main"]

    b = heap_builder()
    b.set_drop_frames("runtime\\..*", keep="runtime\\.mallocgc")
    stacks = [names(s.stack.frames) for s in parse_profile(b.encode()).samples]
    # newobject is dropped (and mallocgc with it, as its callee) despite mallocgc being kept
    assert stacks[0] == ["main.alloc", "main.main"]


def test_drop_frames_prunes_everything_leafward_of_the_outermost_match() -> None:
    b = ProfileBuilder([("alloc_space", "bytes")])
    b.add(["leaf", "lib.inner", "mid", "lib.outer", "main.main"], [5])
    b.set_drop_frames("lib\\..*")
    (sample,) = parse_profile(b.encode()).samples
    assert names(sample.stack.frames) == ["main.main"]


def test_drop_frames_trims_arguments_like_pprof() -> None:
    b = ProfileBuilder([("alloc_space", "bytes")])
    b.add(["operator new(unsigned long)", "Foo::make()", "main"], [5])
    b.add(["(anonymous namespace)::helper", "main"], [1])
    b.set_drop_frames("operator new|\\(anonymous namespace\\)::helper")
    stacks = [names(s.stack.frames) for s in parse_profile(b.encode()).samples]
    assert stacks == [["Foo::make()", "main"], ["main"]]


def test_invalid_drop_frames_regexp_is_rejected() -> None:
    b = heap_builder()
    b.set_drop_frames("runtime\\.(")
    assert "regexp" in rejected(b.encode())


def test_pathological_regexp_stays_linear() -> None:
    b = ProfileBuilder([("alloc_space", "bytes")])
    b.add(["a" * 5000 + "!", "main"], [1])
    b.set_drop_frames("(a|a)*(a|a)*(a|a)*b")  # exponential for a backtracking engine
    (sample,) = parse_profile(b.encode()).samples
    assert len(sample.stack.frames) == 2


# --- stack identity -----------------------------------------------------------------------------


def test_equal_stacks_get_equal_ids_across_profiles() -> None:
    a = ProfileBuilder(CPU_TYPES)
    a.add(["main.unrelated"], [1, 1])  # shifts every id of the next stack
    a.add(["main.work", "main.main"], [1, 1])
    b = ProfileBuilder(CPU_TYPES, mapping_file="/bin/other")
    b.add(["main.work", "main.main"], [7, 7])
    b.add(["main.work", "main.main"], [1, 1])
    pa, pb = parse_profile(a.encode()), parse_profile(b.encode())
    assert pa.samples[1].stack.id == pb.samples[0].stack.id
    assert pb.samples[0].stack is pb.samples[1].stack
    assert pa.samples[0].stack.id != pa.samples[1].stack.id
    assert 0 <= pa.samples[1].stack.id < 2**64


def test_inline_flag_and_line_are_part_of_the_identity() -> None:
    flat = ProfileBuilder(CPU_TYPES)
    flat.add(["bytes.Equal", "main.check"], [1, 1])
    inlined = ProfileBuilder(CPU_TYPES)
    inlined.add([("bytes.Equal", "main.check")], [1, 1])
    a = parse_profile(flat.encode()).samples[0].stack
    b = parse_profile(inlined.encode()).samples[0].stack
    assert names(a.frames) == names(b.frames)
    assert a.id != b.id
    moved = ProfileBuilder(CPU_TYPES)
    moved.add(["bytes.Equal", "main.check"], [1, 1])
    moved.msg.location[0].line[0].line += 1
    assert parse_profile(moved.encode()).samples[0].stack.id != a.id


# --- sample index -------------------------------------------------------------------------------


def test_sample_type_index_follows_pprof() -> None:
    b = ProfileBuilder([("alloc_objects", "count"), ("alloc_space", "bytes"), ("space", "bytes")])
    p = parse_profile(b.encode())
    assert sample_type_index(p, None) == 2
    assert sample_type_index(p, 0) == 0
    assert sample_type_index(p, "1") == 1
    assert sample_type_index(p, "alloc_space") == 1
    assert sample_type_index(p, "inuse_space") == 2
    with pytest.raises(ValueError, match="outside the range"):
        sample_type_index(p, 3)
    with pytest.raises(ValueError, match="must be one of"):
        sample_type_index(p, "cpu")
    b.msg.default_sample_type = b.string("alloc_objects")
    assert sample_type_index(parse_profile(b.encode()), None) == 0
    with pytest.raises(ValueError):
        sample_type_index(ParsedProfile(sample_types=(), samples=()), None)


# --- rejections ---------------------------------------------------------------------------------


def test_dangling_location_id() -> None:
    b = cpu_builder()
    b.msg.sample.add(location_id=[12345], value=[1, 1])
    assert "missing location 12345" in rejected(b.encode())


def test_dangling_function_id() -> None:
    b = cpu_builder()
    b.msg.location[0].line[0].function_id = 777
    assert "missing function 777" in rejected(b.encode())


def test_line_without_function() -> None:
    b = cpu_builder()
    b.msg.location[0].line[0].function_id = 0
    assert "missing function 0" in rejected(b.encode())


def test_dangling_mapping_id() -> None:
    b = cpu_builder()
    b.msg.location[0].mapping_id = 5
    assert "missing mapping 5" in rejected(b.encode())


@pytest.mark.parametrize("index", [999, -1])
def test_string_index_out_of_range(index: int) -> None:
    b = cpu_builder()
    b.msg.function[0].name = index
    assert f"string index {index} out of range" in rejected(b.encode())
    b = cpu_builder()
    b.add(["main.work"], [1, 1]).label.add(key=index, str=1)
    assert "label key" in rejected(b.encode())


def test_string_table_must_start_empty() -> None:
    b = cpu_builder()
    b.msg.string_table[0] = "oops"
    assert "string_table[0]" in rejected(b.encode())
    assert "string_table[0]" in rejected(b"")


def test_zero_and_duplicate_ids() -> None:
    b = cpu_builder()
    b.msg.location[0].id = 0
    assert "reserved id 0" in rejected(b.encode())
    b = cpu_builder()
    b.msg.function.add(id=1, name=1)
    assert "function id 1 appears twice" in rejected(b.encode())


def test_value_count_must_match_sample_types() -> None:
    b = cpu_builder()
    b.add(["main.work"], [1])
    assert "1 values for 2 sample types" in rejected(b.encode())
    b = ProfileBuilder([])
    b.add(["main.work"], [])
    assert "without sample types" in rejected(b.encode())


def test_too_many_samples() -> None:
    b = cpu_builder()
    for _ in range(3):
        b.add(["main.work"], [1, 1])
    assert parse_profile(b.encode(), ProfileLimits(max_samples=5))
    assert "more than the limit of 4" in rejected(b.encode(), ProfileLimits(max_samples=4))


def test_too_deep_stacks_are_rejected_counting_inlined_frames() -> None:
    b = ProfileBuilder(CPU_TYPES)
    b.add([f"f{i}" for i in range(10)], [1, 1])
    assert parse_profile(b.encode(), ProfileLimits(max_stack_depth=10))
    assert "10 frames deep" in rejected(b.encode(), ProfileLimits(max_stack_depth=9))
    b = ProfileBuilder(CPU_TYPES)
    b.add([("a", "b", "c"), ("d", "e")], [1, 1])
    assert "5 frames deep" in rejected(b.encode(), ProfileLimits(max_stack_depth=4))


def test_truncated_protobuf() -> None:
    b = ProfileBuilder(CPU_TYPES)  # no period fields: the string table is serialized last
    b.add(["main.work", "main.main"], [3, 30_000_000])
    data = b.encode()
    assert "not a valid pprof protobuf" in rejected(data[:-1])  # inside the last field
    for cut in range(1, len(data)):  # a cut on a field boundary still fails validation
        rejected(data[:cut])


def test_garbage_bytes() -> None:
    assert "not a valid pprof protobuf" in rejected(b"\xff" * 64)
    assert "not a valid pprof protobuf" in rejected(b"\x0a\x05\x08")


def test_truncated_gzip() -> None:
    data = cpu_builder().encode(gzipped=True)
    assert "truncated" in rejected(data[:-10])
    assert "not valid gzip" in rejected(b"\x1f\x8bnot really gzip")


def test_gzip_bomb_is_refused_without_inflating_it() -> None:
    bomb = gzip.compress(b"\0" * (64 * MIB), compresslevel=9)
    assert len(bomb) < MIB
    tracemalloc.start()
    try:
        reason = rejected(bomb, ProfileLimits(max_bytes=MIB))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "larger than 1048576 bytes after gunzip" in reason
    assert peak < 8 * MIB


def test_plain_profile_over_the_byte_limit() -> None:
    data = cpu_builder().encode()
    assert "larger than" in rejected(data, ProfileLimits(max_bytes=len(data) - 1))


def test_generated_classes_round_trip() -> None:
    msg = profile_pb2.Profile()
    msg.ParseFromString(cpu_builder().encode())
    assert msg.sample[0].value == [3, 30_000_000]
