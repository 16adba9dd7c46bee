"""A Redis command as RESP bytes (an array of bulk strings), for the scripts that carry a batch.

`hiredis.pack_command` allocates for every argument and cost ~460 ns per 400-byte body here;
framing the arguments and joining them once costs less than half of that (docs/performance.md).
Arguments convert as redis-py and hiredis convert them: str as UTF-8, int in decimal, float by
`repr`; bool is refused, since neither client knows what it should mean.

Compiled with mypyc when a compiler is present (pyproject's `[tool.rivulet] compiled`): every
event passes through here twice (the gateway's append, the normalizer's commit).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

CommandArg = bytes | str | int | float

# Bulk-string headers (`$<len>\r\n`) of the sizes most arguments have, made once: formatting each
# was ~30 of the ~75 ns an argument cost here (docs/performance.md).
_CACHED_HEADERS: Final = 4096
_HEADERS: Final = [b"$%d\r\n" % size for size in range(_CACHED_HEADERS)]


def _as_bytes(arg: CommandArg) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, bool):
        raise TypeError("a bool is not a Redis argument: pass 0/1 or a string")
    if isinstance(arg, int):
        return b"%d" % arg
    return repr(arg).encode()


def pack_command(args: Sequence[CommandArg]) -> bytes:
    """`*<n>\\r\\n` then `$<len>\\r\\n<bytes>\\r\\n` per argument, in one bytes object."""
    parts: list[bytes] = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _as_bytes(arg)
        size = len(data)
        parts.append(_HEADERS[size] if size < _CACHED_HEADERS else b"$%d\r\n" % size)
        parts.append(data)
        parts.append(b"\r\n")
    return b"".join(parts)
