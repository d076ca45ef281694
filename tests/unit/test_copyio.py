"""The binary COPY payload matches PostgreSQL's documented format byte for byte."""

from __future__ import annotations

import struct

import numpy as np

from mlpipe.copyio import prediction_rows_binary


def test_one_row_layout():
    payload = prediction_rows_binary(
        np.array([42], dtype=np.int64), np.array([0.25]), np.array([True]), np.array([75.5], dtype=np.float32)
    )
    header = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
    row = (
        struct.pack(">h", 4)
        + struct.pack(">iq", 8, 42)
        + struct.pack(">id", 8, 0.25)
        + struct.pack(">iB", 1, 1)
        + struct.pack(">if", 4, 75.5)
    )
    assert payload == header + row + struct.pack(">h", -1)


def test_many_rows_have_fixed_width():
    n = 1000
    payload = prediction_rows_binary(
        np.arange(n, dtype=np.int64),
        np.random.default_rng(0).random(n),
        np.zeros(n, bool),
        np.zeros(n, np.float32),
    )
    assert len(payload) == 19 + n * (2 + 12 + 12 + 5 + 8) + 2
