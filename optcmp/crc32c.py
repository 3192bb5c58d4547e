"""CRC-32C (Castagnoli) checksums for TensorBoard's record framing, fast without a C extension.

Every TensorBoard event record carries two masked CRC-32C checksums, and readers verify
them. tensorboardX falls back to a pure-Python byte loop (about 2 ms per 20 kB) when the
optional `crc32c` package is missing, which alone would cost seconds per 1000 histogram
steps. Here the checksum of many records is computed at once with numpy:

The "raw" CRC (initial register 0, no final xor) is linear over GF(2) in the message, so
for a message A‖B, raw(A‖B) = Z_|B|(raw(A)) ⊕ raw(B), where Z_n is the linear map
"feed n zero bytes". Leading zero bytes leave the raw CRC unchanged (the register stays 0),
so messages of similar lengths are front-padded to one width, cut into 16-byte blocks whose
raw CRCs are sums of 16 table look-ups (slice-by-16), and the blocks reduced pairwise in a
tree of log2(length/16) vectorized steps. The standard CRC follows from the raw one by
xoring the initial register 0xFFFFFFFF into the first four message bytes and the result
with 0xFFFFFFFF.

A native `google_crc32c` or `crc32c` module is used instead when one is installed.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

_POLY = 0x82F63B78  # CRC-32C, bit-reflected
_MASK_DELTA = 0xA282EAD8  # TFRecord's checksum mask


def _byte_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(_POLY), table >> 1).astype(np.uint32)
    return table


_TABLE = _byte_table()
_TABLE_LIST = _TABLE.tolist()


def _tables_from_images(images: np.ndarray) -> np.ndarray:
    """Byte lookup tables (4, 256) of the linear map whose 32 basis-bit images are given."""
    bits = ((np.arange(256)[:, None] >> np.arange(8)) & 1).astype(bool)  # (256, 8)
    tables = np.empty((4, 256), dtype=np.uint32)
    for k in range(4):
        tables[k] = np.bitwise_xor.reduce(np.where(bits, images[8 * k : 8 * k + 8], 0), axis=1)
    return tables


def _apply(tables: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Apply the linear map given by byte tables to an array of uint32 CRC registers."""
    # Indexing with a little-endian byte view skips the shifts and masks.
    b = np.ascontiguousarray(x, dtype="<u4").view(np.uint8).reshape(*x.shape, 4)
    return tables[0][b[..., 0]] ^ tables[1][b[..., 1]] ^ tables[2][b[..., 2]] ^ tables[3][b[..., 3]]


@lru_cache(maxsize=None)
def _zeros_operator(nbytes: int) -> np.ndarray:
    """Byte tables of Z_n, the register after feeding `nbytes` zero bytes (n a power of 2, ≥ 4)."""
    if nbytes == 4:
        images = np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32))
        for _ in range(4):
            images = _TABLE[images & 0xFF] ^ (images >> 8)
        return _tables_from_images(images)
    half = _zeros_operator(nbytes // 2)
    images = np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32))
    return _tables_from_images(_apply(half, _apply(half, images)))


def _crc32c_python(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _TABLE_LIST
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


_LEAF = 16  # bytes per leaf of the tree, summed with one table per byte position (slice-by-16)


@lru_cache(maxsize=None)
def _leaf_tables() -> np.ndarray:
    """tables[j][b]: raw CRC of a 16-byte block holding byte b at position j, zeros elsewhere."""
    tables = np.empty((_LEAF, 256), dtype=np.uint32)
    reg = _TABLE.copy()  # b fed last in the block
    for j in reversed(range(_LEAF)):
        tables[j] = reg
        reg = _TABLE[reg & 0xFF] ^ (reg >> 8)  # one more zero byte after b
    return tables


def _crc32c_numpy_many(messages: Sequence[bytes]) -> list[int]:
    """CRC-32C of messages of at least 4 bytes, best when their lengths are alike."""
    width = max(len(m) for m in messages)
    width += -width % _LEAF
    if all(len(m) == len(messages[0]) for m in messages):  # the usual case: one copy
        rows = np.frombuffer(b"".join(messages), dtype=np.uint8).reshape(len(messages), -1)
        buf = np.zeros((len(messages), width), dtype=np.uint8)
        buf[:, width - rows.shape[1] :] = rows
    else:
        buf = np.zeros((len(messages), width), dtype=np.uint8)
        for i, m in enumerate(messages):
            buf[i, width - len(m) :] = np.frombuffer(m, dtype=np.uint8)
    # Right-aligned: leading zeros do not change the raw CRC. The initial register
    # 0xFFFFFFFF is folded into each message's first four bytes.
    starts = width - np.array([len(m) for m in messages])
    for k in range(4):
        buf[np.arange(len(messages)), starts + k] ^= 0xFF
    blocks = buf.reshape(len(messages), -1, _LEAF)
    tables = _leaf_tables()
    regs = tables[0].take(blocks[:, :, 0])
    for j in range(1, _LEAF):
        regs ^= tables[j].take(blocks[:, :, j])
    block = _LEAF  # bytes covered by each register in `regs`
    while regs.shape[1] > 1:
        if regs.shape[1] % 2:  # a zero block in front has raw CRC 0
            regs = np.concatenate([np.zeros((regs.shape[0], 1), np.uint32), regs], axis=1)
        regs = _apply(_zeros_operator(block), regs[:, 0::2]) ^ regs[:, 1::2]
        block *= 2
    return (regs[:, 0] ^ np.uint32(0xFFFFFFFF)).tolist()


def _chunks_of_similar_length(order: list[int], lengths: list[int]) -> list[list[int]]:
    """Split indices sorted by length so that padding to a chunk's longest stays small."""
    chunks: list[list[int]] = []
    for i in order:
        if chunks and lengths[i] <= 1.25 * lengths[chunks[-1][0]] and len(chunks[-1]) * lengths[i] < 4 << 20:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return chunks


def _native():
    try:
        import google_crc32c

        if google_crc32c.implementation == "c":
            return google_crc32c.value
    except ImportError:
        pass
    try:
        import crc32c as _crc32c_pkg

        return _crc32c_pkg.crc32c
    except ImportError:
        return None


_NATIVE = _native()
_SMALL = 64  # below this many bytes the byte loop beats numpy's per-call overhead


def crc32c_many(messages: Sequence[bytes]) -> list[int]:
    """CRC-32C of each message (bytes objects of any lengths)."""
    if _NATIVE is not None:
        return [_NATIVE(m) for m in messages]
    out = [0] * len(messages)
    lengths = [len(m) for m in messages]
    big = []
    for i, m in enumerate(messages):
        if lengths[i] < _SMALL:
            out[i] = _crc32c_python(m)
        else:
            big.append(i)
    big.sort(key=lengths.__getitem__)
    for chunk in _chunks_of_similar_length(big, lengths):
        for i, crc in zip(chunk, _crc32c_numpy_many([messages[i] for i in chunk])):
            out[i] = crc
    return out


def crc32c(data: bytes) -> int:
    """CRC-32C of one message."""
    return crc32c_many([data])[0]


def masked(crc: int) -> int:
    """TFRecord's masked form of a CRC, stored in event files."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF
