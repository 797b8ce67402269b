"""General-purpose compressors as the baseline a language model must beat (@sec-speedrun-compression).

A model that assigns probability p to the next byte sequence can encode it in -log2 p bits with an
arithmetic coder, so its bits per byte on held-out text is a compression rate, directly comparable with
what xz, bzip2 and gzip achieve on the very same bytes.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import time
from collections.abc import Callable

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "xz -9e": lambda data: lzma.compress(data, preset=9 | lzma.PRESET_EXTREME),
    "bzip2 -9": lambda data: bz2.compress(data, compresslevel=9),
    "gzip -9": lambda data: gzip.compress(data, compresslevel=9, mtime=0),
}


def compressor_bits_per_byte(data: bytes, names: tuple[str, ...] = tuple(COMPRESSORS)) -> dict[str, dict]:
    """Compressed size and bits per input byte of `data` for each named compressor, with the time it took.

    Every compressed stream is decompressed and compared with the input, so a figure is never reported for
    a stream that does not round-trip.
    """
    if not data:
        raise ValueError("nothing to compress: the held-out text is empty")
    unknown = sorted(set(names) - set(COMPRESSORS))
    if unknown:
        raise ValueError(f"unknown compressor(s) {unknown}; known: {sorted(COMPRESSORS)}")
    decompress = {"xz -9e": lzma.decompress, "bzip2 -9": bz2.decompress, "gzip -9": gzip.decompress}
    out = {}
    for name in names:
        start = time.perf_counter()
        packed = COMPRESSORS[name](data)
        seconds = time.perf_counter() - start
        if decompress[name](packed) != data:
            raise RuntimeError(f"{name} did not round-trip the held-out text")
        out[name] = {"compressed_bytes": len(packed), "bits_per_byte": 8 * len(packed) / len(data),
                     "seconds": round(seconds, 3)}
    return out
