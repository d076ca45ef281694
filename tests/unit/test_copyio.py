"""The binary COPY rows match PostgreSQL's documented format byte for byte."""

from __future__ import annotations

import struct

import numpy as np

from mlpipe.copyio import BINARY_HEADER, BINARY_TRAILER, prediction_rows


def test_the_header_and_trailer_are_postgresqls():
    assert BINARY_HEADER == b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8 and len(BINARY_HEADER) == 19
    assert BINARY_TRAILER == b"\xff\xff"


def test_one_row_layout():
    rows = prediction_rows(
        np.array([42], dtype=np.int64), np.array([0.25]), np.array([True]), np.array([75.5], dtype=np.float32)
    )
    assert rows.tobytes() == (
        struct.pack(">h", 4)
        + struct.pack(">iq", 8, 42)
        + struct.pack(">id", 8, 0.25)
        + struct.pack(">iB", 1, 1)
        + struct.pack(">if", 4, 75.5)
    )


def test_many_rows_have_fixed_width():
    n = 1000
    rows = prediction_rows(
        np.arange(n, dtype=np.int64),
        np.random.default_rng(0).random(n),
        np.zeros(n, bool),
        np.zeros(n, np.float32),
    )
    assert len(rows.tobytes()) == n * (2 + 12 + 12 + 5 + 8)


def test_text_keys_sit_between_their_length_and_the_fixed_fields():
    keys = np.array(["ab", "", "héllo"], dtype=object)
    rows = prediction_rows(
        keys, np.array([0.5, 0.25, 1.0]), np.array([True, False, True]), np.array([1, 2, 3], np.float32), "v1"
    )
    expected = b""
    for key, score, decision, percentile in zip(keys, [0.5, 0.25, 1.0], [1, 0, 1], [1, 2, 3], strict=True):
        raw = key.encode()
        expected += struct.pack(">hi", 5, len(raw)) + raw + struct.pack(">id", 8, score)
        expected += (
            struct.pack(">iB", 1, decision) + struct.pack(">if", 4, percentile) + struct.pack(">i", 2) + b"v1"
        )
    assert rows.tobytes() == expected


def test_text_keys_from_a_slice_of_a_larger_array():
    keys = np.array([f"k{i}" for i in range(10)], dtype=object)[3:6]
    rows = prediction_rows(keys, np.zeros(3), np.zeros(3, bool), np.zeros(3, np.float32))
    assert rows.tobytes().count(b"k") == 3 and b"k3" in rows.tobytes() and b"k6" not in rows.tobytes()
