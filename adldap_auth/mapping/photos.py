"""Photos: the attributes that hold them, and how a photo is checked, re-encoded and named.

Only :func:`validate_photo` decodes a photo; it refuses one that is too big, not a JPEG, PNG or
GIF, or corrupt, and keeps the decoded pixels only.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

#: Photo attributes, in their usual spelling (used for ``CHANGE_FIELDCASE = None``).

#: Image formats accepted for photos (``MPO`` is how Pillow names some camera JPEGs).
PHOTO_FORMATS = ("JPEG", "PNG", "GIF")
_ACCEPTED_PHOTO_FORMATS = frozenset({*PHOTO_FORMATS, "MPO"})
#: File name extensions of a stored photo by format; a new file gets the first one.
PHOTO_EXTENSIONS = {"JPEG": (".jpg", ".jpeg"), "PNG": (".png",), "GIF": (".gif",)}
#: Most scans a JPEG photo may have. Decoding costs a pass over every pixel a scan, so a small
#: file repeating a scan thousands of times takes seconds to minutes; ordinary progressive
#: JPEGs have 6 (grey) to 18 (CMYK) scans, baseline ones 1 to 4.
PHOTO_MAX_SCANS = 32
#: Where the next JPEG marker starts: 0xFF then a byte that is not a stuffed zero, a restart
#: marker or a fill byte (the way libjpeg finds it, extraneous bytes skipped).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class PhotoError(ValueError):
    """A photo was rejected: too big, not a JPEG/PNG/GIF, corrupt or truncated."""


@dataclass(frozen=True)
class Photo:
    """A photo accepted by :func:`validate_photo`: re-encoded by Pillow, in ``format``."""

    data: bytes
    format: str  # "JPEG", "PNG" or "GIF"

    @property
    def extension(self) -> str:
        return PHOTO_EXTENSIONS[self.format][0]


def validate_photo(
    data: bytes, max_bytes: int, max_pixels: int, max_scans: int = PHOTO_MAX_SCANS
) -> Photo:
    """Check a photo and return it re-encoded by Pillow, if it is a sound JPEG, PNG or GIF
    within the limits.

    Raises :class:`PhotoError` when it is larger than ``max_bytes``, not one of those formats,
    declares more than ``max_pixels`` pixels (checked from the header, before any decoding, so
    a decompression bomb is never expanded), is a JPEG of more than ``max_scans`` scans
    (counted before any decoding: each scan costs a pass over the pixels), or is corrupt or
    truncated (``verify()`` and then a full ``load()`` of a second copy, since ``verify()``
    misses truncated JPEG scans).

    The result holds the decoded pixels only, written again (see :func:`_reencode`): whatever
    else the directory's bytes carried (trailing data, comments, EXIF with its GPS position,
    a second frame) is not stored. A site that sets ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES =
    True`` disables Pillow's own truncation error, and so the last check.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise PhotoError("empty photo")
    if len(data) > max_bytes:
        raise PhotoError(f"photo is {len(data)} bytes, more than {max_bytes}")
    try:
        with Image.open(io.BytesIO(data), formats=PHOTO_FORMATS) as image:
            if image.format not in _ACCEPTED_PHOTO_FORMATS:
                raise PhotoError(f"photo format {image.format} is not accepted")
            width, height = image.size
            if width * height > max_pixels:
                raise PhotoError(f"photo is {width}x{height} pixels, more than {max_pixels}")
            if image.format in ("JPEG", "MPO"):
                scans = jpeg_scan_count(data, max_scans)
                if scans > max_scans:
                    raise PhotoError(f"photo is a JPEG of more than {max_scans} scans")
            image.verify()
        with Image.open(io.BytesIO(data), formats=PHOTO_FORMATS) as image:
            image.load()
            return _reencode(image)
    except PhotoError:
        raise
    except Image.DecompressionBombError:
        raise PhotoError("photo declares too many pixels (decompression bomb)") from None
    except UnidentifiedImageError:
        raise PhotoError("photo is not a JPEG, PNG or GIF image") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise PhotoError(f"photo is corrupt ({type(exc).__name__})") from None


def jpeg_scan_count(data: bytes, limit: int) -> int:
    """How many scans (SOS segments) the first image of a JPEG has, without decoding it;
    counting stops past ``limit``. Markers are found as libjpeg finds them: segment
    payloads skipped by their length, entropy-coded data and stray bytes searched for the
    next 0xFF that is not stuffing, a restart or a fill byte."""
    scans, position = 0, 2  # after SOI
    while (found := _JPEG_MARKER.search(data, position)) is not None:
        marker, position = data[found.start() + 1], found.end()
        if marker == 0xD9:  # EOI: the end of the first image
            break
        if marker in (0x01, 0xD8):  # TEM, SOI: no payload
            continue
        if marker == 0xDA:
            scans += 1
            if scans > limit:
                break
        position += int.from_bytes(data[position : position + 2], "big")
    return scans


def _reencode(image: Any) -> Photo:
    """Write a loaded image again in its format (an MPO camera file as a plain JPEG): a
    baseline JPEG with the source's quantization tables and chroma subsampling (so about
    its quality and size), a PNG, or a GIF of the first frame. Kept: the ICC colour profile,
    transparency; an EXIF orientation is applied to the pixels, since the EXIF block itself
    is dropped."""
    from PIL import ExifTags, ImageOps, JpegImagePlugin

    fmt = "JPEG" if image.format in ("JPEG", "MPO") else image.format
    options: dict[str, Any] = {}
    if fmt == "JPEG":
        tables = getattr(image, "quantization", None)
        if tables:
            options["qtables"] = [tables[key] for key in sorted(tables)]
        options["subsampling"] = JpegImagePlugin.get_sampling(image)
    if image.info.get("icc_profile"):
        options["icc_profile"] = image.info["icc_profile"]
    kept = {k: image.info[k] for k in ("transparency", "background") if k in image.info}
    if image.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9):
        image = ImageOps.exif_transpose(image)
    image.info = kept  # no comment, EXIF, XMP or text chunk is carried over
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt, **options)
    except (OSError, ValueError, KeyError) as exc:  # a mode the format cannot be written in
        raise PhotoError(f"photo cannot be re-encoded ({type(exc).__name__})") from None
    return Photo(buffer.getvalue(), fmt)


def photo_filename(
    template: str, username: str, now: datetime, photo_format: str | None = None
) -> str:
    """The file name for a user's photo, from ``LDAP_SYNC_USER_THUMBNAILPHOTO_NAME``.

    ``{username}`` is replaced by the username made safe for a file name (Django's
    ``get_valid_filename``, dot runs collapsed, leading dots removed, at most 64 characters),
    ``{uuid4}`` by a random UUID, then strftime codes are expanded with ``now``. The result is a
    bare file name (no directory part ever escapes); a template that yields nothing usable
    falls back to ``{username}_{uuid4}.jpg``. With ``photo_format`` (of :class:`Photo`), an
    extension that is not one of that format's is replaced (or added): a PNG is never stored
    as ``.jpg``.
    """
    safe_username = _safe_filename_part(username)
    name = template.replace("{username}", safe_username).replace("{uuid4}", str(uuid.uuid4()))
    name = now.strftime(name)
    name = os.path.basename(name.replace("\\", "/")).strip()
    if name in ("", ".", "..") or _CONTROL_CHARS.search(name):
        name = f"{safe_username}_{uuid.uuid4()}.jpg"
    if photo_format is not None:
        root, extension = os.path.splitext(name)
        if extension.lower() not in PHOTO_EXTENSIONS[photo_format]:
            name = root + PHOTO_EXTENSIONS[photo_format][0]
    return name


def _safe_filename_part(text: str) -> str:
    from django.core.exceptions import SuspiciousFileOperation
    from django.utils.text import get_valid_filename

    try:
        safe = get_valid_filename(text)
    except SuspiciousFileOperation:
        safe = ""
    safe = re.sub(r"\.{2,}", ".", safe).lstrip(".")[:64]
    return safe or "user"


def photo_digest(data: bytes) -> str:
    """SHA-256 hex digest of a photo as the directory holds it: an unchanged photo is
    neither decoded nor rewritten."""
    return hashlib.sha256(data).hexdigest()
