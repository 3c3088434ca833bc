"""Hostile sweep archives, written byte by byte (tar headers and zip records built here, not by tarfile
or zipfile, so that they can lie): each builder returns the file's bytes; ``HOSTILE`` names each one with
the code the service answers it with. Shared by tests/core/checkpoints/test_archive.py,
tests/api/test_upload_dos.py and bench/hostile_archives.py.

``scale`` makes the bench's copies as large as the review's files (a 1 GiB long name, 4 GiB of
zeros, 100,000 directory entries); the tests use the default (small but still over every limit).
"""

from __future__ import annotations

import bz2
import io
import struct
import zipfile
import zlib
from collections.abc import Callable

RUN = "output/base2new/train_base/tiny_a/shots_16/CoOp/vit_b16_ep50/seed1"
CKPT_MEMBER = f"{RUN}/prompt_learner/model.pth.tar-50"


def tar_header(name: bytes, size: int, typeflag: bytes = b"0", *, size_field: bytes | None = None) -> bytes:
    """One ustar header block with a correct checksum (``size_field`` overrides the size's 12 bytes)."""
    block = bytearray(512)
    block[0 : len(name[:100])] = name[:100]
    block[100:108] = b"0000644\0"
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = size_field if size_field is not None else b"%011o\0" % size
    block[136:148] = b"00000000000\0"
    block[156:157] = typeflag
    block[257:263] = b"ustar\0"
    block[263:265] = b"00"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def tar_member(name: bytes, data: bytes, typeflag: bytes = b"0") -> bytes:
    return tar_header(name, len(data), typeflag) + data + bytes(-len(data) % 512)


def pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n += 1
    return str(n).encode() + body


def tar_end() -> bytes:
    return bytes(1024)


def gz(data: bytes) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    return z.compress(data) + z.flush()


def zeros_stream(compress: Callable[[bytes], bytes], total: int, chunk: int = 64 << 20) -> bytes:
    """``total`` zero bytes as concatenated compressed streams of ``chunk`` zeros each (the way pigz and
    pbzip2 write; every decompressor reads them as one)."""
    one = compress(bytes(min(chunk, total)))
    return one * max(1, total // chunk)


# ------------------------------------------------------------------------------------------ builders


def good_files(ckpt: bytes = b"x" * 100) -> dict[str, bytes]:
    return {CKPT_MEMBER: ckpt, f"{RUN}/log.txt": b"Finish training\n"}


def plain_tar(files: dict[str, bytes]) -> bytes:
    return b"".join(tar_member(n.encode(), d) for n, d in files.items()) + tar_end()


def _declared_header(
    compress: Callable[[bytes], bytes], name: bytes, typeflag: bytes, size: int, fill: bytes, scale: bool
) -> bytes:
    """A header declaring ``size`` bytes of ``fill``, then a good tree: with ``scale`` all of them (as
    concatenated compressed streams of 64 MiB each), else 1 MiB (the header alone is refused)."""
    chunk = 64 << 20
    n = size if scale else 1 << 20
    first = min(n, chunk)
    parts = [compress(tar_header(name, size, typeflag) + fill * (first // len(fill)))]
    if n > first:
        parts.append(compress(fill * (chunk // len(fill))) * ((n - first) // chunk))
    parts.append(compress(bytes(-n % 512) + plain_tar(good_files())))
    return b"".join(parts)


def gnu_long_name(scale: bool = False) -> bytes:
    """A .tar.bz2 whose GNU long-name header declares a 1 GiB name."""
    return _declared_header(bz2.compress, b"././@LongLink", b"L", 1 << 30, b"a", scale)


def pax_huge(scale: bool = False) -> bytes:
    """A .tar.gz with a pax header of 256 MiB (digits and spaces: the quadratic case of tarfile's pax
    parser before Python 3.11.10)."""
    return _declared_header(gz, b"././@PaxHeader", b"x", 256 << 20, b"1 ", scale)


def pax_quadratic() -> bytes:
    """A .tar.gz with a pax header within the size limit whose records never close (``tarfile``'s
    regular expression backtracks over all of it at every position)."""
    body = b"9" * 20 + b" " + b"1 " * 30000
    return gz(tar_header(b"././@PaxHeader", len(body), b"x") + body + bytes(-len(body) % 512) + tar_end())


def pax_bad_length() -> bytes:
    body = b"99 path=short\n"
    return gz(
        tar_header(b"././@PaxHeader", len(body), b"x")
        + body
        + bytes(-len(body) % 512)
        + plain_tar(good_files())
    )


def pax_bad_size() -> bytes:
    body = pax_record("size", "-1")
    return gz(
        tar_header(b"././@PaxHeader", len(body), b"x")
        + body
        + bytes(-len(body) % 512)
        + plain_tar(good_files())
    )


def gnu_sparse_old() -> bytes:
    """A GNU sparse member (typeflag S) with a garbage sparse map."""
    head = bytearray(tar_header(CKPT_MEMBER.encode(), 512, b"S"))
    head[386:398] = b"\xff" * 12  # the sparse map's first offset: not a number
    head[148:156] = b" " * 8
    head[148:156] = b"%06o\0 " % sum(head)
    return gz(bytes(head) + bytes(512) + tar_end())


def gnu_sparse_pax() -> bytes:
    body = (
        pax_record("GNU.sparse.major", "1")
        + pax_record("GNU.sparse.minor", "0")
        + pax_record("GNU.sparse.name", CKPT_MEMBER)
    )
    pax = tar_header(b"././@PaxHeader", len(body), b"x") + body + bytes(-len(body) % 512)
    return gz(pax + tar_member(b"GNUSparseFile.0/x", b"garbage map\n") + tar_end())


def bad_checksum() -> bytes:
    head = bytearray(tar_header(CKPT_MEMBER.encode(), 3))
    head[0] = ord("X")  # the checksum no longer matches
    return gz(bytes(head) + b"abc" + bytes(509) + tar_end())


def bad_size_field() -> bytes:
    head = tar_header(CKPT_MEMBER.encode(), 0, size_field=b"12zz34567890")
    return gz(head + tar_end())


def negative_size() -> bytes:
    head = tar_header(CKPT_MEMBER.encode(), 0, size_field=b"\xff" * 12)
    return gz(head + tar_end())


def truncated_tar() -> bytes:
    return gz(tar_header(CKPT_MEMBER.encode(), 4096) + b"x" * 1000)


def bz2_bomb(scale: bool = False) -> bytes:
    """4 GiB of zeros as a .tar.bz2 (a tar header, then zeros), a few KiB."""
    total = 4 << 30 if scale else 256 << 20
    head = tar_header(b"output/zeros.bin", total - 512)
    return bz2.compress(head + bytes((64 << 20) - 512)) + zeros_stream(bz2.compress, total - (64 << 20))


def gz_bomb(scale: bool = False) -> bytes:
    """Zeros as a plain gzip stream (no tar header at all: a zero block is the tar's end)."""
    return zeros_stream(gz, 4 << 30 if scale else 256 << 20)


def zip_dirs(n: int = 2000, name_len: int = 40) -> bytes:
    """A zip of ``n`` directory entries (stored, empty)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n):
            zf.writestr(zipfile.ZipInfo(f"output/{i:08d}/".ljust(name_len, "d") + "/"), b"")
        for name, data in good_files().items():
            zf.writestr(name, data)
    return buf.getvalue()


def zip_lying_count(n: int = 2000) -> bytes:
    """A zip of many directory entries whose end record says it has 3 (the index is far larger)."""
    data = bytearray(zip_dirs(n))
    at = data.rfind(b"PK\x05\x06")
    struct.pack_into("<2H", data, at + 8, 3, 3)
    return bytes(data)


def zip_overlap() -> bytes:
    """Two index entries pointing at the same compressed data (the overlapping-member bomb)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(CKPT_MEMBER, b"x" * 100)
    data = bytearray(buf.getvalue())
    at = data.find(b"PK\x01\x02")
    end = data.rfind(b"PK\x05\x06")
    entry = bytes(data[at:end])
    second = bytearray(entry)
    name = CKPT_MEMBER.replace("seed1", "seed2").encode()
    second[46 : 46 + len(name)] = name
    index = entry + bytes(second)
    eocd = bytearray(data[end:])
    struct.pack_into("<2HLL", eocd, 8, 2, 2, len(index), at)
    return bytes(data[:at]) + index + bytes(eocd)


def names_with(char: str, kind: str) -> bytes:
    """A good tree plus a checkpoint whose dataset folder name holds ``char`` (LF, CR or TAB)."""
    files = good_files()
    files[CKPT_MEMBER.replace("tiny_a", f"tiny{char}b")] = b"y" * 100
    if kind == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
        return buf.getvalue()
    return gz(plain_tar(files))


def tar_then_zip() -> bytes:
    """A plain tar with a zip appended: ``tar tf`` shows the tar, a zip reader the zip."""
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(CKPT_MEMBER.replace("seed1", "seed9"), b"z" * 100)
    return plain_tar(good_files()) + z.getvalue()


def zip_with_tar_header() -> bytes:
    """A zip whose first 512 bytes are also a valid tar header block."""
    name = b"PK\x03\x04" + b"\0" * 20
    head = tar_header(name, 0)
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w") as zf:
        for n, d in good_files().items():
            zf.writestr(n, d)
    # the tar header's bytes become a stored zip member's local header + data
    return head + z.getvalue()


def zip_with_prefix() -> bytes:
    """A zip preceded by another file's bytes (zipfile finds it by the end record and shifts)."""
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w") as zf:
        for n, d in good_files().items():
            zf.writestr(n, d)
    first = io.BytesIO()
    with zipfile.ZipFile(first, "w") as zf:
        zf.writestr("output/decoy.txt", b"decoy")
    return first.getvalue()[: first.getvalue().find(b"PK\x01\x02")] + z.getvalue()


#: name: (builder (small, for tests), code answered)
HOSTILE: dict[str, tuple[Callable[[], bytes], str]] = {
    "gnu_long_name_1gib.tar.bz2": (gnu_long_name, "header_too_large"),
    "pax_256mib.tar.gz": (pax_huge, "header_too_large"),
    "pax_quadratic.tar.gz": (pax_quadratic, "malformed_archive"),
    "pax_bad_length.tar.gz": (pax_bad_length, "malformed_archive"),
    "pax_bad_size.tar.gz": (pax_bad_size, "malformed_archive"),
    "gnu_sparse.tar.gz": (gnu_sparse_old, "unsafe_archive"),
    "gnu_sparse_pax.tar.gz": (gnu_sparse_pax, "unsafe_archive"),
    "bad_checksum.tar.gz": (bad_checksum, "malformed_archive"),
    "bad_size_field.tar.gz": (bad_size_field, "malformed_archive"),
    "negative_size.tar.gz": (negative_size, "malformed_archive"),
    "truncated.tar.gz": (truncated_tar, "malformed_archive"),
    "zeros_bomb.tar.bz2": (bz2_bomb, "compression_ratio"),
    "zeros_bomb.gz": (gz_bomb, "compression_ratio"),
    "dirs.zip": (lambda: zip_dirs(20000, 20), "too_many_members"),
    "dirs_lying_count.zip": (lambda: zip_lying_count(5000), "header_too_large"),
    "overlap.zip": (zip_overlap, "unsafe_archive"),
    "name_lf.tar.gz": (lambda: names_with("\n", "tar"), "unsafe_archive"),
    "name_cr.zip": (lambda: names_with("\r", "zip"), "unsafe_archive"),
    "name_tab.tar.gz": (lambda: names_with("\t", "tar"), "unsafe_archive"),
    "tar_then_zip.tar": (tar_then_zip, "ambiguous_archive"),
    "zip_with_tar_header.zip": (zip_with_tar_header, "ambiguous_archive"),
    "zip_with_prefix.zip": (zip_with_prefix, "ambiguous_archive"),
}
