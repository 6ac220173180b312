"""Photos cannot stall a run or a login, and are stored as clean images (issue 14, finding 6),
against a lab slapd (``jpegPhoto``), through ``run_sync`` and through a login.

- **Unchanged photos are never decoded.** The identity link keeps the SHA-256 of the
  directory's bytes; they are hashed and compared before anything is decoded, so an unchanged
  photo costs a hash on every run and login. A rejected photo is remembered (Django's cache,
  by digest and limits): the same bytes are not decoded again, and still reported.
- **Decoding is bounded.** A progressive JPEG's scans are counted from its markers before
  decoding: more than ``PHOTO_MAX_SCANS`` (32) is refused. Decoding costs a pass over the
  pixels a scan: a 2048x2048 JPEG repeating its last scan 5,000 times (105 KB) took 13 s.
- **Stored photos are re-encoded by Pillow**, in their own format, named with that format's
  extension: trailing bytes (a GIF carrying ``<script>``), comments and EXIF (GPS) are not
  stored; the EXIF orientation is applied to the pixels.

Decoding is observed with a spy on Pillow's ``ImageFile.load`` (the real method runs), so the
tests assert what is decoded, never how long it takes.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.cache import cache
from django.test import override_settings
from PIL import ExifTags, Image, ImageFile

from adldap_auth.login import clear_group_cache
from adldap_auth.mapping import PHOTO_MAX_SCANS, PhotoError, jpeg_scan_count, validate_photo
from adldap_auth.models import DirectoryUser
from adldap_auth.sync import SyncOptions, run_sync
from tests.backend_helpers import login_settings
from tests.helpers import slapd_settings
from tests.lab.spec import LAB_PASSWORD, DirectorySpec, GroupSpec, UserSpec, jpeg

pytestmark = pytest.mark.django_db

User = get_user_model()
KEY = "testapp.Employee.jpegphoto"


# -- images --------------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def many_scans(repeats: int, size: int = 2048) -> bytes:
    """A flat grey progressive JPEG (10 scans) whose last scan is repeated ``repeats`` more
    times: a few hundred bytes more, each repeat one more pass over every pixel."""
    data = encode(Image.new("RGB", (size, size), "grey"), "JPEG", progressive=True)
    assert data.endswith(b"\xff\xd9")
    last_scan = data[data.rindex(b"\xff\xda") : -2]
    return data[:-2] + last_scan * repeats + b"\xff\xd9"


#: 2048x2048, 310 scans, 26 KB: seconds to decode (13 s with 5,000 repeats, 105 KB).
PATHOLOGICAL = many_scans(300)


def gif_with_script() -> bytes:
    return encode(Image.new("P", (24, 16), 3), "GIF") + b"<script>alert(document.cookie)</script>"


def jpeg_with_exif() -> bytes:
    """A 40x20 progressive JPEG with a comment, an EXIF description and orientation 6 (to be
    shown turned 90 degrees clockwise, so 20x40)."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.ImageDescription] = "taken at 48.8584 N 2.2945 E"
    image = Image.new("RGB", (40, 20), (200, 30, 30))
    return encode(image, "JPEG", progressive=True, exif=exif, comment=b"secret comment")


# -- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_caches():
    cache.clear()  # rejected photos are remembered there
    clear_group_cache()
    yield
    clear_group_cache()


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """The format of every image Pillow decodes (``ImageFile.load``, the real one runs)."""
    seen: list[str] = []
    load = ImageFile.ImageFile.load

    def spy(self):
        if self.tile:  # not decoded yet (a decoded image's tile list is empty)
            seen.append(self.format)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return seen


def people(photo: bytes | None) -> DirectorySpec:
    users = [
        UserSpec("pat", "Pat", "Poe", password=LAB_PASSWORD, photo=photo),
        UserSpec("sam", "Sam", "Sun", photo=jpeg(5)),
    ]
    return DirectorySpec(users=users, groups=[GroupSpec("Team", members=["pat", "sam"])])


def sync(server, **options):
    with override_settings(**slapd_settings(server)):
        return run_sync(SyncOptions(mode="full", **options))


def login(server, username: str = "pat"):
    with override_settings(**login_settings(slapd_settings(server))):
        user = authenticate(username=username, password=LAB_PASSWORD)
    assert user is not None, "the login itself never fails because of a photo"
    return user


def stored(username: str, media: Path) -> tuple[str, bytes] | None:
    """The stored photo of a user: (file name, bytes), or None."""
    profile = User.objects.get(username=username).employee
    if not profile.jpegphoto:
        return None
    return profile.jpegphoto.name, (media / profile.jpegphoto.name).read_bytes()


def digests(username: str) -> dict:
    return DirectoryUser.objects.get(user__username=username).photo_digests


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# -- bounded decoding ----------------------------------------------------------------------------


def test_a_jpeg_of_hundreds_of_scans_is_refused_without_being_decoded_by_a_run(
    make_slapd, media, decodes
):
    server = make_slapd(spec=people(PATHOLOGICAL))
    dry = sync(server, dry_run=True)
    rejected = (
        f"user {server.user_dn('pat')}: attribute jpegphoto rejected "
        f"(photo is a JPEG of more than {PHOTO_MAX_SCANS} scans); jpegphoto left unchanged"
    )
    assert dry.problems == [rejected] and dry.counts["photos_written"] == 1  # sam's only

    result = sync(server)
    assert result.status == "success" and result.problems == [rejected]
    assert result.counts["warnings"] == 1 and result.counts["photos_written"] == 1
    assert stored("pat", media) is None and digests("pat") == {}
    assert stored("sam", media) is not None
    assert "MPO" not in decodes and decodes.count("JPEG") == 2  # sam's photo, twice (dry run)


def test_a_jpeg_of_hundreds_of_scans_is_refused_without_being_decoded_at_login(
    make_slapd, media, decodes, caplog
):
    server = make_slapd(spec=people(PATHOLOGICAL))
    user = login(server)
    assert user.username == "pat" and stored("pat", media) is None
    assert decodes == []
    assert any(
        f"more than {PHOTO_MAX_SCANS} scans" in message and server.user_dn("pat") in message
        for message in warnings(caplog)
    )


def test_scans_are_counted_as_libjpeg_finds_them():
    """Stray bytes between segments (libjpeg skips them, so must the count) and marker-like
    bytes inside a segment's payload (a comment) or stuffed in the entropy-coded data."""
    data = many_scans(0, size=16)
    assert jpeg_scan_count(data, 100) == 10
    first_sos = data.index(b"\xff\xda")
    comment = b"\xff\xfe\x00\x08\xff\xda\xff\xda\x00\x00"  # a COM segment full of fake SOS
    garbled = data[:first_sos] + comment + b"junk" + data[first_sos:]
    assert jpeg_scan_count(garbled, 100) == 10
    assert jpeg_scan_count(many_scans(40, size=16), 100) == 50
    assert jpeg_scan_count(many_scans(40, size=16), 20) == 21  # stops past the limit


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
def test_ordinary_progressive_jpegs_are_accepted_and_stored_as_baseline(mode):
    data = encode(Image.new(mode, (64, 48)), "JPEG", progressive=True)
    photo = validate_photo(data, 100_000, 1_000_000)
    assert photo.format == "JPEG" and jpeg_scan_count(photo.data, 100) == 1
    assert Image.open(io.BytesIO(photo.data)).mode == mode


def test_the_scan_limit():
    at_limit = many_scans(PHOTO_MAX_SCANS - 10, size=32)
    assert jpeg_scan_count(at_limit, 100) == PHOTO_MAX_SCANS
    assert validate_photo(at_limit, 100_000, 1_000_000).format == "JPEG"
    with pytest.raises(PhotoError, match=f"more than {PHOTO_MAX_SCANS} scans"):
        validate_photo(many_scans(PHOTO_MAX_SCANS - 9, size=32), 100_000, 1_000_000)


# -- the digest is compared before decoding ------------------------------------------------------


def test_an_unchanged_photo_is_never_decoded_again_by_runs_or_logins(make_slapd, media, decodes):
    photo = jpeg(1, size=(300, 200))
    server = make_slapd(spec=people(photo))
    assert sync(server).counts["photos_written"] == 2
    assert decodes
    name, _ = stored("pat", media)
    assert digests("pat") == {KEY: hashlib.sha256(photo).hexdigest()}  # of the directory's bytes

    decodes.clear()
    again = sync(server)
    assert again.status == "success" and "photos_written" not in again.counts
    login(server)
    login(server, "pat")
    assert decodes == []
    assert stored("pat", media)[0] == name

    # A new photo is decoded (once) and written, by the login as by a run.
    server.apply(server.spec, people(jpeg(2, size=(300, 200))))
    login(server)
    assert decodes == ["JPEG"] and stored("pat", media)[0] != name


def test_an_unchanged_rejected_photo_is_not_decoded_again(make_slapd, media, decodes, caplog):
    """Corrupt data that only a full decode finds (the JPEG's entropy-coded data is cut)."""
    whole = jpeg(3, size=(600, 400))
    cut = whole[: len(whole) * 2 // 3]
    server = make_slapd(spec=people(cut))
    first = sync(server)
    [problem] = first.problems
    assert "attribute jpegphoto rejected (photo is corrupt (OSError))" in problem
    assert decodes.count("JPEG") == 2  # pat's (rejected) and sam's

    decodes.clear()
    caplog.clear()
    second = sync(server)
    assert second.problems == [problem]  # still reported
    login(server)
    assert decodes == []
    assert sum(problem in message for message in warnings(caplog)) == 2
    assert stored("pat", media) is None


# -- re-encoded, with the right extension --------------------------------------------------------


@pytest.mark.parametrize("path", ["run", "login"])
def test_a_gif_with_a_trailing_script_is_stored_as_a_clean_gif(make_slapd, media, path):
    data = gif_with_script()
    server = make_slapd(spec=people(data))
    if path == "run":
        assert sync(server).counts["photos_written"] == 2
    else:
        login(server)
    name, content = stored("pat", media)
    assert name.startswith("photos/pat_") and name.endswith(".gif")
    assert b"<script" not in content
    with Image.open(io.BytesIO(content)) as clean, Image.open(io.BytesIO(data)) as original:
        assert clean.format == "GIF" and clean.size == (24, 16)
        assert clean.convert("RGB").tobytes() == original.convert("RGB").tobytes()
    assert digests("pat") == {KEY: hashlib.sha256(data).hexdigest()}
    sync(server)
    assert stored("pat", media) == (name, content)  # the same bytes: nothing rewritten


def test_photos_are_stored_in_their_format_without_metadata(make_slapd, media):
    png = encode(Image.new("RGBA", (30, 20), (0, 128, 255, 100)), "PNG")
    data = jpeg_with_exif()
    spec = people(data)
    spec.users.append(UserSpec("kim", "Kim", "Kay", photo=png))
    server = make_slapd(spec=spec)
    assert sync(server).counts["photos_written"] == 3

    name, content = stored("pat", media)
    assert name.endswith(".jpg")
    with Image.open(io.BytesIO(content)) as clean:
        assert clean.format == "JPEG" and not clean.info.get("progressive")
        assert clean.size == (20, 40)  # the orientation applied to the pixels
        assert not clean.getexif() and "comment" not in clean.info
    assert b"48.8584" not in content and b"secret comment" not in content

    name, content = stored("kim", media)
    assert name.endswith(".png")  # not the template's .jpg
    with Image.open(io.BytesIO(content)) as clean:
        assert clean.format == "PNG" and clean.mode == "RGBA"
        assert clean.getpixel((3, 3)) == (0, 128, 255, 100)


def test_the_name_template_keeps_its_extension_when_it_fits(make_slapd, media):
    png = encode(Image.new("RGB", (8, 8)), "PNG")
    server = make_slapd(spec=people(png))
    settings = slapd_settings(server, LDAP_SYNC_USER_THUMBNAILPHOTO_NAME="{username}.jpeg")
    with override_settings(**settings):
        assert run_sync(SyncOptions(mode="full")).counts["photos_written"] == 2
    assert stored("pat", media)[0] == "photos/pat.png"
    assert stored("sam", media)[0] == "photos/sam.jpeg"
