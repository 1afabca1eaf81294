"""The few tar header bytes a bundle uses: ustar regular files, written and parsed by hand.

Why not `tarfile`: it accepts many encodings of one member (pax, GNU, old-style,
bits no field reads), and a verifier must accept exactly one, the bundler's.

A bundle holds only regular files with short names, so the reader accepts
exactly that and refuses everything else by type (links, devices,
directories, pax and GNU extension headers) instead of interpreting it.
Sizes over the 11 octal digits of ustar (8 GiB) use GNU base-256, which
GNU tar, Go's archive/tar (docker, podman, skopeo) and Python all read.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.errors import BundleFormatError, MemberError

BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
_OCTAL_SIZE_MAX = 8**11 - 1

TYPE_NAMES = {
    b"1": "a hard link", b"2": "a symbolic link", b"3": "a character device",
    b"4": "a block device", b"5": "a directory", b"6": "a FIFO", b"7": "a contiguous file",
    b"x": "a pax extended header", b"g": "a pax global header",
    b"L": "a GNU long-name header", b"K": "a GNU long-link header",
}


def padding(size: int) -> int:
    """Bytes of zero padding after `size` bytes of member data."""
    return -size % BLOCK


def member_span(size: int) -> int:
    """Bytes a regular-file member of `size` occupies: header, data, padding."""
    return BLOCK + size + padding(size)


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _size_field(size: int) -> bytes:
    if size <= _OCTAL_SIZE_MAX:
        return _octal(size, 12)
    return bytes([0x80]) + size.to_bytes(11, "big")  # GNU base-256


def file_header(name: str, size: int, mtime: int = 0, mode: int = 0o644) -> bytes:
    """A ustar header for a regular file owned by uid/gid 0."""
    raw = name.encode("utf-8")
    if len(raw) > 100:
        raise ValueError(f"tar member name {name!r} is over 100 bytes")
    h = bytearray(BLOCK)
    h[0:len(raw)] = raw
    h[100:108] = _octal(mode, 8)
    h[108:116] = _octal(0, 8)
    h[116:124] = _octal(0, 8)
    h[124:136] = _size_field(size)
    h[136:148] = _octal(mtime, 12)
    h[148:156] = b" " * 8
    h[156:157] = b"0"
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[329:337] = _octal(0, 8)
    h[337:345] = _octal(0, 8)
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


@dataclass(frozen=True)
class Header:
    name: str
    size: int
    typeflag: bytes


def _parse_number(field: bytes, what: str) -> int:
    if field and field[0] & 0x80:
        if field[0] != 0x80:
            raise BundleFormatError(f"tar header {what} is a negative base-256 number")
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError as e:
        raise BundleFormatError(f"tar header {what} {text!r} is not octal") from e


def is_zero_block(block: bytes | bytearray) -> bool:
    return block.count(0) == len(block)


def parse_header(block: bytes, where: str) -> Header:
    """Decode one 512-byte header; `where` names its position for errors.

    Raises:
        BundleFormatError: bad checksum or magic (not a tar, or corrupted).
        MemberError: not a regular file, or an unsafe or malformed name.
    """
    if len(block) != BLOCK:
        raise BundleFormatError(f"tar header at {where} is short")
    stored = _parse_number(block[148:156], "checksum")
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    signed = (sum(b - 256 if b > 127 else b for b in block[:148]) + 8 * 0x20
              + sum(b - 256 if b > 127 else b for b in block[156:]))
    if stored not in (unsigned, signed):
        raise BundleFormatError(
            f"no valid tar header at {where} (checksum mismatch): not a bundle, or corrupted"
        )
    if block[257:262] != b"ustar":
        raise BundleFormatError(f"tar header at {where} is not ustar")
    raw_name = block[0:100].split(b"\0", 1)[0]
    prefix = block[345:500].split(b"\0", 1)[0] if block[257:263] == b"ustar\0" else b""
    if prefix:
        raw_name = prefix + b"/" + raw_name
    try:
        name = raw_name.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MemberError(f"member at {where} has a name that is not UTF-8") from e
    typeflag = block[156:157]
    if typeflag not in (b"0", b"\0"):
        kind = TYPE_NAMES.get(typeflag, f"of unknown type {typeflag!r}")
        raise MemberError(
            f"member {name!r} at {where} is {kind}; a bundle holds regular files only")
    check_name(name, where)
    size = _parse_number(block[124:136], "size")
    mode = _parse_number(block[100:108], "mode")
    mtime = _parse_number(block[136:148], "mtime")
    try:
        canonical = file_header(name, size, mtime, mode)
    except (ValueError, OverflowError) as e:
        raise BundleFormatError(f"tar header of {name!r} at {where} is malformed: {e}") from e
    if canonical != block:
        # Bytes that no field is read from must still be as the bundler wrote them:
        # a bundle has exactly one encoding, so any altered bit is refused.
        raise BundleFormatError(f"tar header of {name!r} at {where} is not in the bundle's "
                                "canonical form: it was altered")
    return Header(name, size, typeflag)


def check_name(name: str, where: str) -> None:
    """Refuse absolute, empty, `..`, `.` or non-normalised member names.

    Raises:
        MemberError: naming the member and what is wrong with its name.
    """
    if not name:
        raise MemberError(f"member at {where} has an empty name")
    if name.startswith("/"):
        raise MemberError(f"member {name!r} at {where} has an absolute name")
    parts = name.split("/")
    if ".." in parts:
        raise MemberError(f"member {name!r} at {where} has a '..' component")
    if "" in parts or "." in parts or "\\" in name or any(ord(c) < 32 for c in name):
        raise MemberError(f"member {name!r} at {where} has a malformed name")
