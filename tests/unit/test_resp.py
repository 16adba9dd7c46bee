"""`pack_command`: the RESP framing of the batch scripts' commands, byte for byte as hiredis's."""

from __future__ import annotations

import hiredis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.resp import CommandArg, pack_command

ARGS = st.lists(
    st.binary(max_size=64) | st.text(max_size=32) | st.integers() | st.floats(), max_size=12
)


@given(args=ARGS)
def test_a_command_is_framed_as_hiredis_frames_it(args: list[CommandArg]) -> None:
    command = ("EVALSHA", "0" * 40, 1, "rivulet:{logs}:raw", *args)
    assert pack_command(command) == hiredis.pack_command(command)  # type: ignore[arg-type]


@given(args=st.lists(st.binary(max_size=300), min_size=1, max_size=20))
def test_a_reply_parser_reads_back_the_arguments(args: list[bytes]) -> None:
    reader = hiredis.Reader()
    reader.feed(pack_command(args))
    assert reader.gets() == args
    assert reader.gets() is False  # nothing left over


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 100_000])
def test_arguments_on_both_sides_of_the_cached_headers_are_framed_alike(size: int) -> None:
    command = ("SET", "k", b"x" * size, "y" * size)
    assert pack_command(command) == hiredis.pack_command(command)  # type: ignore[arg-type]


def test_a_bool_is_refused() -> None:
    with pytest.raises(TypeError, match="bool"):
        pack_command(["SET", "k", True])
