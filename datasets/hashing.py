"""The stable string hash that maps string ids into embedding tables.

A string id (Arrow ``string``, ``large_string``, ``binary`` or a dictionary of those) goes to
table row ``stable_hash(value) mod num_embeddings`` where

    stable_hash(s) = mix64(fnv1a64(utf8_bytes(s)))

* ``fnv1a64``: 64-bit FNV-1a — start at 0xCBF29CE484222325; for every byte b:
  ``h = (h XOR b) * 0x100000001B3 mod 2**64``;
* ``mix64``: the splitmix64 finaliser, which spreads FNV's weak low bits —
  ``h ^= h >> 30; h *= 0xBF58476D1CE4E5B9; h ^= h >> 27; h *= 0x94D049BB133111EB; h ^= h >> 31``
  (products mod 2**64);
* the result is an unsigned 64-bit integer; the modulo is unsigned.

It depends on the bytes only, never on the process (unlike Python's ``hash``, which
``PYTHONHASHSEED`` salts), so training, evaluation and a serving system written in any
language agree. The empty string is a value like any other (it gets its own row); a null is
an absent id. :func:`stable_hash` is the one-value reference; :func:`hash_strings` the
vectorised version the reader uses.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fusionrec.datasets.schema import MC_ID_SPACE

__all__ = ["MC_ID_SPACE", "hash_strings", "mc_ids", "stable_hash"]

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1


def _mix64_int(h: int) -> int:
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & _MASK
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & _MASK
    return h ^ (h >> 31)


def stable_hash(value: str | bytes) -> int:
    """``mix64(fnv1a64(bytes))`` of one value (str as UTF-8): an int in [0, 2**64)."""
    data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    h = FNV_OFFSET
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & _MASK
    return _mix64_int(h)


def _mix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _hash_unique(arr: pa.Array) -> np.ndarray:
    """Hashes of a string/binary array without nulls, one per element. Vectorised over the
    strings: one numpy step per byte position, the strings sorted longest first so each
    step works on a prefix of them (total work ~ the number of bytes)."""
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    if pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type):
        offset_type = np.int64
    else:
        offset_type = np.int32
    _, offsets_buf, data_buf = arr.buffers()[:3]
    offsets = np.frombuffer(offsets_buf, dtype=offset_type)[arr.offset : arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")
    starts, sorted_lengths = offsets[:-1][order], lengths[order]
    h = np.full(n, FNV_OFFSET, dtype=np.uint64)
    prime = np.uint64(FNV_PRIME)
    longest = int(sorted_lengths[0]) if n else 0
    # active[j]: how many strings are longer than j (a prefix, lengths being sorted descending)
    active = np.searchsorted(-sorted_lengths, -np.arange(longest), side="left")
    with np.errstate(over="ignore"):
        for j in range(longest):
            k = int(active[j])
            h[:k] = (h[:k] ^ data[starts[:k] + j].astype(np.uint64)) * prime
        h = _mix64(h)
    out = np.empty(n, dtype=np.uint64)
    out[order] = h
    return out


def hash_strings(arr: pa.Array) -> np.ndarray:
    """uint64 :func:`stable_hash` of every element of a string / binary array (or a
    dictionary array of those) without nulls. Each distinct value is hashed once."""
    if pa.types.is_dictionary(arr.type):
        indices = arr.indices.cast(pa.int64()).to_numpy(zero_copy_only=False)
        return hash_strings(arr.dictionary)[indices]
    if len(arr) == 0:
        return np.zeros(0, dtype=np.uint64)
    encoded = pc.dictionary_encode(arr)
    indices = encoded.indices.cast(pa.int64()).to_numpy(zero_copy_only=False)
    return _hash_unique(encoded.dictionary)[indices]




def mc_ids(ids: np.ndarray, hashed: bool = False) -> np.ndarray:
    """Raw ids (int64 or uint64, any values) → int64 ids in [0, MC_ID_SPACE = 2**63 - 1) for a
    collision-managed table: ``mix64(id as uint64) mod MC_ID_SPACE``, or just the modulo for
    ``hashed`` values (:func:`hash_strings` output, already mixed).

    ``mix64`` is a bijection on 64 bits, so two ids share a slot only when their mixes are
    MC_ID_SPACE apart (about n²/2**64 for n distinct ids: none in practice); its purpose is
    to spread ids that cluster (small integers, sequential ids) evenly over the row-wise
    shards of the managed-collision map.
    """
    h = np.asarray(ids).view(np.uint64) if np.asarray(ids).dtype == np.int64 else np.asarray(ids, dtype=np.uint64)
    if not hashed:
        with np.errstate(over="ignore"):
            h = _mix64(h)
    return (h % np.uint64(MC_ID_SPACE)).astype(np.int64)
