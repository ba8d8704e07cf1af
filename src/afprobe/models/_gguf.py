"""A quick structural check of a GGUF file before Hugging Face parses it: a cut download or a file that is only a
header fails here with one line naming the file, instead of a ``struct.error`` deep inside the loader.

It walks the header (key/value pairs and tensor descriptions, never the tensor data) and checks that the file is
long enough to hold every tensor it describes.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from afprobe._errors import AfprobeError

MAGIC = b"GGUF"
# value type -> struct format of one scalar (8 = string and 9 = array are handled apart)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
DEFAULT_ALIGNMENT = 32


class _Cut(Exception):
    """The header runs past the end of the file."""


class _Reader:
    def __init__(self, buf: mmap.mmap | bytes):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str) -> int | float:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buf):
            raise _Cut
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = int(self.take("Q"))
        if self.pos + n > len(self.buf):
            raise _Cut
        s = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def skip_value(self, vtype: int) -> int | float | str | None:
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = int(self.take("I")), int(self.take("Q"))
            if etype in _SCALARS:  # fixed-size elements: jump over them
                size = struct.calcsize("<" + _SCALARS[etype]) * count
                if self.pos + size > len(self.buf):
                    raise _Cut
                self.pos += size
            else:
                for _ in range(count):
                    self.skip_value(etype)
            return None
        raise ValueError(f"unknown value type {vtype}")


def check_gguf(path: str | Path) -> None:
    """Raise :class:`AfprobeError` naming ``path`` unless it is a whole GGUF file (v2 or v3)."""
    p = Path(path)
    size = p.stat().st_size
    if size == 0:
        raise AfprobeError(f"model file {p} is empty (0 bytes): not a GGUF file")
    with p.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != MAGIC:
            raise AfprobeError(
                f"model file {p} is not a GGUF file (it does not start with the GGUF magic bytes)"
            )
        try:
            end = _required_size(_Reader(buf))
        except _Cut:
            raise AfprobeError(
                f"model file {p} is cut short ({size} bytes): its GGUF header runs past the end of the file; "
                "download it again"
            ) from None
        except ValueError as e:
            raise AfprobeError(f"model file {p} is not a readable GGUF file: {e}") from None
    if end > size:
        raise AfprobeError(
            f"model file {p} is cut short: its GGUF tensors need {end} bytes, the file has {size}; download it again"
        )


def _required_size(r: _Reader) -> int:
    """How many bytes the file must have to hold every tensor its header describes."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    r.pos = 4
    version = int(r.take("I"))
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} (afprobe reads versions 2 and 3)")
    n_tensors, n_kv = int(r.take("Q")), int(r.take("Q"))
    alignment = DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        key = r.string()
        value = r.skip_value(int(r.take("I")))
        if key == "general.alignment" and isinstance(value, int) and value > 0:
            alignment = value
    end_of_data = 0
    for _ in range(n_tensors):
        name = r.string()
        dims = [int(r.take("Q")) for _ in range(int(r.take("I")))]
        ggml_type, offset = int(r.take("I")), int(r.take("Q"))
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            raise ValueError(f"tensor {name!r} has an unknown type {ggml_type}") from None
        n = 1
        for d in dims:
            n *= d
        end_of_data = max(end_of_data, offset + n // block * type_size)
    start = (r.pos + alignment - 1) // alignment * alignment
    return start + end_of_data if n_tensors else r.pos
