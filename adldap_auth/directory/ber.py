"""Reading BER (the encoding of LDAP controls) by hand, for the control values read in bulk.

pyasn1 decodes a small control value in about 0.1 ms; a refresh or a DirSync read carries one
per entry. The values read here are short SEQUENCEs of primitive types with definite lengths.
"""

from __future__ import annotations


def ber_read(data: bytes, pos: int, tag: int) -> tuple[bytes, int]:
    """The content of the TLV at ``pos`` (which must carry ``tag``) and the position after it."""
    if pos + 2 > len(data) or data[pos] != tag:
        raise ValueError(f"expected BER tag 0x{tag:02x} at offset {pos}")
    length, pos = data[pos + 1], pos + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise ValueError(f"unsupported BER length at offset {pos - 1}")
        length, pos = int.from_bytes(data[pos : pos + count], "big"), pos + count
    if pos + length > len(data):
        raise ValueError("BER value is truncated")
    return data[pos : pos + length], pos + length
