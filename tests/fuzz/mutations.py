"""Hypothesis strategies that mutate a valid file: truncate it, flip bytes, insert or delete
runs of bytes, or (text) replace one number or word with a huge, negative, non-finite or
non-numeric value. Each mutation comes with a one-line description (the reproducer)."""

from __future__ import annotations

import re

from hypothesis import strategies as st

BAD_VALUES = ["-1", "0", "-0", "1e308", "-1e308", "1e400", "nan", "inf", "-inf", "99999999999999999999",
              "2147483648", "4294967296", "65536", "1.5", "abc", "", " ", "[]", "{}", "null", "true", "\"x\"",
              "0x10", "1,2", "-99999999999", "1e-320", "\u00e9"]
_TOKEN = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|[A-Za-z_]+")


@st.composite
def mutated(draw, seed: bytes, text: bool = False):
    """(bytes, description): one to three mutations of ``seed``."""
    data = bytearray(seed)
    steps = []
    kinds = ["truncate", "flip", "insert", "delete", "duplicate"] + (["token"] * 4 if text else ["word"] * 2)
    for _ in range(draw(st.integers(1, 3 if not text else 2))):
        kind = draw(st.sampled_from(kinds))
        n = len(data)
        if kind == "truncate":
            at = draw(st.integers(0, max(n - 1, 0)))
            data = data[:at]
            steps.append(f"truncate to {at} bytes")
        elif kind == "flip" and n:
            at = draw(st.one_of(st.integers(0, min(n, 512) - 1), st.integers(0, n - 1)))  # header or anywhere
            value = draw(st.integers(0, 255))
            data[at] = value
            steps.append(f"byte {at} := {value}")
        elif kind == "insert":
            at = draw(st.integers(0, n))
            blob = draw(st.binary(min_size=1, max_size=16))
            data[at:at] = blob
            steps.append(f"insert {bytes(blob)!r} at {at}")
        elif kind == "delete" and n:
            at = draw(st.integers(0, n - 1))
            k = draw(st.integers(1, 32))
            del data[at:at + k]
            steps.append(f"delete {k} bytes at {at}")
        elif kind == "duplicate" and n:
            at = draw(st.integers(0, n - 1))
            k = draw(st.integers(1, 64))
            data[at:at] = data[at:at + k]
            steps.append(f"duplicate {k} bytes at {at}")
        elif kind == "token":
            tokens = list(_TOKEN.finditer(bytes(data)))
            if not tokens:
                continue
            m = tokens[draw(st.integers(0, len(tokens) - 1))]
            value = draw(st.sampled_from(BAD_VALUES)).encode()
            data[m.start():m.end()] = value
            steps.append(f"token {m.group().decode(errors='replace')!r} at {m.start()} := {value.decode()!r}")
        elif kind == "word" and n >= 4:
            at = draw(st.integers(0, min(n, 512) - 4))  # a header field: huge, negative or zero
            word = draw(st.sampled_from([b"\xff\xff\xff\x7f", b"\xff\xff\xff\xff", b"\x00\x00\x00\x80",
                                         b"\x00\x00\x00\x00", b"\x00\x00\x80\x7f", b"\x00\x00\xc0\x7f"]))
            data[at:at + 4] = word
            steps.append(f"bytes {at}..{at + 3} := {word!r}")
    return bytes(data), "; ".join(steps) or "unchanged"
