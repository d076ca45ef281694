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
