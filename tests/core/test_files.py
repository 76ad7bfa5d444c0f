"""Naming and typing downloaded files."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from toolflows.core.files import (
    MAX_FILENAME_BYTES,
    choose_filename,
    choose_mimetype,
    decode_data_uri,
    extension_for,
    filename_from_content_disposition,
    filename_from_url,
    is_specific_mimetype,
    safe_filename,
    sniff_mimetype,
    storage_prefix,
    storage_segment,
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('attachment; filename="video.mp4"', "video.mp4"),
        ("attachment; filename=video.mp4", "video.mp4"),
        ("attachment;filename=video.mp4 ", "video.mp4"),
        ('inline; FILENAME="Clip One.webm"', "Clip One.webm"),
        ('attachment; filename="a;b.mp4"; size=3', "a;b.mp4"),
        ('attachment; filename="say \\"hi\\".mp3"', "say _hi_.mp3"),
        ("attachment; filename*=UTF-8''na%C3%AFve%20clip.mp4", "naïve clip.mp4"),
        # filename* wins over filename, in either order.
        ("attachment; filename=\"fallback.mp4\"; filename*=utf-8''%E2%82%AC.mp4", "€.mp4"),
        ("attachment; filename*=UTF-8''%E2%82%AC.mp4; filename=\"fallback.mp4\"", "€.mp4"),
        ("attachment; filename*=iso-8859-1'en'%E9t%E9.wav", "été.wav"),
        # An undecodable filename* falls back to filename.
        ("attachment; filename*=nope''x.mp4; filename=\"ok.mp4\"", "ok.mp4"),
        ("attachment; filename*=UTF-8''%FF%FE.mp4; filename=\"ok.mp4\"", "ok.mp4"),
        ('attachment; filename*=x.mp4; filename="ok.mp4"', "ok.mp4"),
        ('filename="no-type.png"', "no-type.png"),
        # Untrusted names are sanitised.
        ('attachment; filename="../../etc/passwd"', "passwd"),
        ('attachment; filename="C:\\\\Users\\\\me\\\\v.mp4"', "v.mp4"),
        ('attachment; filename=".bashrc"', "bashrc"),
        ("attachment; filename*=UTF-8''..%2F..%2Fx.mp4", "x.mp4"),
        # Nothing usable.
        ('attachment; filename=""', None),
        ('attachment; filename="../.."', None),
        ("attachment", None),
        ("inline", None),
        ("", None),
        (None, None),
    ],
)
def test_filename_from_content_disposition(header: str | None, expected: str | None) -> None:
    assert filename_from_content_disposition(header) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://cdn.test/out/video.mp4", "video.mp4"),
        ("https://cdn.test/out/My%20Clip.MP4?X-Amz-Signature=abc#t=1", "My Clip.MP4"),
        ("https://cdn.test/a/%C3%A9t%C3%A9.wav", "été.wav"),
        ("https://cdn.test/a/b%2F..%2Fevil.sh", "evil.sh"),
        ("https://cdn.test/files/8f3a9c", None),  # an id, not a name
        ("https://cdn.test/files/", None),
        ("https://cdn.test", None),
        ("https://cdn.test/.mp4", None),  # only an extension: nothing to keep
        ("https://cdn.test/archive.tar.gz", "archive.tar.gz"),
        ("https://cdn.test/v.toolongextension", None),
        ("data:video/mp4;base64,AAAA", None),
        ("DATA:text/plain,a.txt", None),
        ("http://[::1/v.mp4", None),  # unparseable
    ],
)
def test_filename_from_url(url: str, expected: str | None) -> None:
    assert filename_from_url(url) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("video.mp4", "video.mp4"),
        ("dir/sub/video.mp4", "video.mp4"),
        ("..\\..\\windows\\system.ini", "system.ini"),
        ("video.mp4/", "video.mp4"),
        ("a\x00b\x1f\x7fc.png", "abc.png"),
        ("\u202egnp.exe", "gnp.exe"),  # right-to-left override removed
        ('what?<is>:this|"*.txt', "what__is__this___.txt"),
        ("  spaced name.mp3  ", "spaced name.mp3"),
        ("trailing dots...", "trailing dots"),
        ("...", "file"),
        ("", "file"),
        ("..", "file"),
        ("/", "file"),
        ("e\u0301te\u0301.wav", "été.wav"),  # NFC: one code point per letter
    ],
)
def test_safe_filename(name: str, expected: str) -> None:
    assert safe_filename(name) == expected


@pytest.mark.parametrize("stem_char", ["a", "é", "日"])
def test_long_names_are_cut_keeping_the_extension(stem_char: str) -> None:
    name = safe_filename(stem_char * 400 + ".mp4")
    assert name.endswith(".mp4")
    assert len(name.encode()) <= MAX_FILENAME_BYTES
    assert len(name.encode()) > MAX_FILENAME_BYTES - 4  # cut at the limit, not far below
    assert set(name.removesuffix(".mp4")) == {stem_char}  # no broken UTF-8 sequence


@pytest.mark.parametrize(
    ("content_type", "specific"),
    [
        ("video/mp4", True),
        ("Video/MP4; codecs=avc1", True),
        ("text/plain; charset=utf-8", True),
        ("application/octet-stream", False),
        ("APPLICATION/OCTET-STREAM; charset=binary", False),
        ("binary/octet-stream", False),
        ("application/binary", False),
        ("application/unknown", False),
        ("", False),
        ("garbage", False),
        (None, False),
    ],
)
def test_is_specific_mimetype(content_type: str | None, specific: bool) -> None:
    assert is_specific_mimetype(content_type) is specific


def _ftyp(brand: bytes) -> bytes:
    return b"\x00\x00\x00\x20ftyp" + brand + b"\x00\x00\x02\x00"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (_ftyp(b"isom"), "video/mp4"),
        (_ftyp(b"mp42"), "video/mp4"),
        (_ftyp(b"avc1"), "video/mp4"),
        (_ftyp(b"mp41"), "video/mp4"),
        (_ftyp(b"qt  "), "video/quicktime"),
        (_ftyp(b"M4A "), "audio/mp4"),
        (_ftyp(b"avif"), "image/avif"),
        (_ftyp(b"heic"), "image/heic"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm", "video/webm"),
        (b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\x82\x88matroska", "video/x-matroska"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image/png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
        (b"GIF89a\x01\x00", "image/gif"),
        (b"GIF87a\x01\x00", "image/gif"),
        (b"RIFF\x24\x08\x00\x00WEBPVP8 ", "image/webp"),
        (b"RIFF\x24\x08\x00\x00WAVEfmt ", "audio/wav"),
        (b"RIFF\x24\x08\x00\x00AVI LIST", "video/x-msvideo"),
        (b"RIFF\x24\x08\x00\x00XXXX", None),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00", "audio/mpeg"),
        (b"\xff\xfb\x90\x64\x00", "audio/mpeg"),  # MPEG-1 layer III frame, no ID3 tag
        (b"\xff\xf3\x40\xc4", "audio/mpeg"),  # MPEG-2 layer III
        (b"\xff\xf1\x50\x80", "audio/aac"),  # ADTS (layer bits 00)
        (b"OggS\x00\x02", "audio/ogg"),
        (b"fLaC\x00\x00\x00\x22", "audio/flac"),
        (b"%PDF-1.7\n", "application/pdf"),
        (b"PK\x03\x04\x14\x00", "application/zip"),
        (b'{"status": "ok"}', None),
        (b"hello world", None),
        (b"\xff", None),
        (b"", None),
    ],
)
def test_sniff_mimetype(head: bytes, expected: str | None) -> None:
    assert sniff_mimetype(head) == expected


@pytest.mark.parametrize(
    ("mimetype", "extension"),
    [
        ("video/mp4", ".mp4"),
        ("image/jpeg", ".jpg"),
        ("IMAGE/JPEG; q=1", ".jpg"),
        ("audio/mpeg", ".mp3"),
        ("image/png", ".png"),
        ("video/webm", ".webm"),
        ("audio/wav", ".wav"),
        ("audio/x-wav", ".wav"),
        ("audio/mp4", ".m4a"),
        ("video/quicktime", ".mov"),
        ("audio/flac", ".flac"),
        ("text/plain", ".txt"),
        ("application/json", ".json"),
        ("text/html", ".html"),  # from Python's built-in table
        ("application/octet-stream", ".bin"),
        ("application/x-made-up", ".bin"),
        ("", ".bin"),
    ],
)
def test_extension_for(mimetype: str, extension: str) -> None:
    assert extension_for(mimetype) == extension


MP4_HEAD = _ftyp(b"isom")


@pytest.mark.parametrize(
    ("content_type", "head", "filename", "expected"),
    [
        ("video/mp4", b"", None, "video/mp4"),
        ("Video/MP4; codecs=avc1", b"", None, "video/mp4"),
        ("image/png", MP4_HEAD, "x.wav", "image/png"),  # a specific header is believed
        ("application/octet-stream", MP4_HEAD, "x.wav", "video/mp4"),  # sniffed
        ("binary/octet-stream", b"ID3\x04", None, "audio/mpeg"),
        (None, b"\x89PNG\r\n\x1a\n", None, "image/png"),
        ("application/octet-stream", b"???", "clip.MP4", "video/mp4"),  # by the name
        (None, b"???", "voice.wav", "audio/wav"),
        (None, b"???", "voice.flac", "audio/flac"),
        (None, b"???", "page.html", "text/html"),  # from Python's built-in table
        (None, b"???", "archive.unknownext", "application/octet-stream"),
        (None, b"???", "noextension", "application/octet-stream"),
        (None, b"", None, "application/octet-stream"),
    ],
)
def test_choose_mimetype(
    content_type: str | None, head: bytes, filename: str | None, expected: str
) -> None:
    assert choose_mimetype(content_type=content_type, head=head, filename=filename) == expected


@pytest.mark.parametrize(
    ("content_disposition", "url", "mimetype", "task_id", "index", "expected"),
    [
        (
            'attachment; filename="named.mp4"',
            "https://cdn.test/v.mov",
            "video/mp4",
            "t1",
            0,
            "named.mp4",
        ),
        (None, "https://cdn.test/out/v.mov?sig=1", "video/mp4", "t1", 0, "v.mov"),
        ('attachment; filename=""', "https://cdn.test/out/v.mov", "video/mp4", "t1", 0, "v.mov"),
        (None, "https://cdn.test/files/8f3a", "video/mp4", "abc123", 0, "file-abc123.mp4"),
        (None, "https://cdn.test/files/8f3a", "image/jpeg", "abc123", 1, "file-abc123-2.jpg"),
        (None, "https://cdn.test/files/8f3a", "image/png", "abc123", 2, "file-abc123-3.png"),
        (None, "data:image/png;base64,AAAA", "image/png", "abc123", 0, "file-abc123.png"),
        (None, "https://cdn.test/x", "application/x-made-up", "abc", 0, "file-abc.bin"),
        (
            None,
            "https://cdn.test/x",
            "audio/mpeg",
            "projects/p/operations/7",
            0,
            "file-projects_p_operations_7.mp3",
        ),
        (None, "https://cdn.test/x", "audio/mpeg", "../../etc", 0, "file-etc.mp3"),
        (
            None,
            "https://cdn.test/x",
            "audio/mpeg",
            "id with spaces?&",
            0,
            "file-id_with_spaces.mp3",
        ),
        (None, "https://cdn.test/x", "audio/mpeg", "///", 0, "file-job.mp3"),
    ],
)
def test_choose_filename(
    content_disposition: str | None,
    url: str,
    mimetype: str,
    task_id: str,
    index: int,
    expected: str,
) -> None:
    chosen = choose_filename(
        content_disposition=content_disposition,
        url=url,
        mimetype=mimetype,
        task_id=task_id,
        index=index,
    )
    assert chosen == expected


def test_choose_filename_caps_a_huge_task_id() -> None:
    chosen = choose_filename(
        content_disposition=None,
        url="https://cdn.test/x",
        mimetype="video/mp4",
        task_id="a" * 1000,
        index=0,
    )
    assert chosen.startswith("file-aaa")
    assert chosen.endswith(".mp4")
    assert len(chosen.encode()) <= MAX_FILENAME_BYTES


@pytest.mark.parametrize(
    ("uri", "data", "mimetype"),
    [
        ("data:image/png;base64,iVBORw0KGgo=", b"\x89PNG\r\n\x1a\n", "image/png"),
        ("data:image/png;base64,iVBORw0KGgo", b"\x89PNG\r\n\x1a\n", "image/png"),  # unpadded
        ("data:application/octet-stream;base64,-_8=", b"\xfb\xff", "application/octet-stream"),
        ("data:application/octet-stream;base64,+/8=", b"\xfb\xff", "application/octet-stream"),
        ("data:audio/wav;base64,UklG\nRg==", b"RIFF", "audio/wav"),  # wrapped lines
        ("data:audio/wav;base64,UklGRg%3D%3D", b"RIFF", "audio/wav"),  # percent-encoded padding
        ("DATA:Image/PNG;BASE64,iVBORw0KGgo=", b"\x89PNG\r\n\x1a\n", "image/png"),
        ("data:text/plain;charset=utf-8,caf%C3%A9", "café".encode(), "text/plain"),
        ("data:,Hello%2C%20World", b"Hello, World", None),
        ("data:;base64,SGk=", b"Hi", None),
        ("data:text/plain,", b"", "text/plain"),
        ("  data:text/plain,x  ", b"x", "text/plain"),
    ],
)
def test_decode_data_uri(uri: str, data: bytes, mimetype: str | None) -> None:
    assert decode_data_uri(uri) == (data, mimetype)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("https://cdn.test/v.mp4", "not a data: URI"),
        ("data-image/png;base64,AAAA", "not a data: URI"),
        ("data:image/png;base64", "no comma"),
        ("data:image/png;base64,@@@@", "invalid base64"),
        ("data:image/png;base64,A", "invalid base64"),
        ("data:notatype;base64,AAAA", "not a media type"),
    ],
)
def test_malformed_data_uris(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_data_uri(uri)


def test_a_data_uri_error_never_quotes_the_data() -> None:
    payload = "Zm9v" * 1000 + "!"
    with pytest.raises(ValueError) as caught:
        decode_data_uri(f"data:video/mp4;base64,{payload}")
    assert "Zm9v" not in str(caught.value)


# -- the job id's folder ------------------------------------------------------------------


@pytest.mark.parametrize(
    "task_id",
    ["abc123", "3f2a9c1e-7b4d-4c1a-9f00-aa11bb22cc33", "job_0f3a", "video_68d.v2", "-x", "7"],
)
def test_a_plainly_safe_id_is_its_own_folder(task_id):
    assert storage_segment(task_id) == task_id


@pytest.mark.parametrize(
    ("task_id", "prefix"),
    [
        ("..", ""),
        (".", ""),
        ("../..", "_.."),
        ("../other_method/T1", "_other_method_T1"),
        ("a/b", "a_b"),
        ("a\\b", "a_b"),
        ("JobA", "JobA"),
        ("abc.", "abc."),
        (".hidden", "hidden"),
        ("con", "con"),
        ("nul.txt", "nul.txt"),
        ("", ""),
        ("x" * 10_000, "x" * 40),
        ("nul\x00inside", "nul_inside"),
        ("projects/p/operations/1", "projects_p_operations_1"),
    ],
)
def test_any_other_id_keeps_a_readable_prefix_and_a_hash(task_id, prefix):
    segment = storage_segment(task_id)
    readable, tilde, digest = segment.rpartition("~")
    assert (readable, tilde) == (prefix, "~")
    assert len(digest) == 32
    assert all(char in "0123456789abcdef" for char in digest)


SEGMENT_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-~")
ANY_ID = st.one_of(
    st.text(max_size=300),
    st.text(alphabet="aA./\\_-~ \x00", max_size=12),
    st.sampled_from(["..", ".", "a", "A", "con", "abc.", "x" * 65, "x" * 64]),
)


@given(ANY_ID)
def test_a_segment_is_one_bounded_safe_name(task_id):
    segment = storage_segment(task_id)
    assert 1 <= len(segment) <= 73
    assert set(segment) <= SEGMENT_SAFE
    assert segment not in (".", "..")
    assert not segment.startswith(".")
    assert not segment.endswith(".")
    assert not any(unicodedata.category(char) == "Cc" for char in segment)


@given(ANY_ID, ANY_ID)
def test_distinct_ids_never_share_a_folder_even_on_a_case_insensitive_filesystem(one, other):
    if one != other:
        assert storage_segment(one).casefold() != storage_segment(other).casefold()


def test_ids_that_only_differ_in_case_or_in_unsafe_characters_get_distinct_segments():
    ids = ["joba", "JobA", "JOBA", "a/b", "a_b", "a\\b", "a b", "a:b", "..", "._."]
    segments = {storage_segment(task_id).casefold() for task_id in ids}
    assert len(segments) == len(ids)


@pytest.mark.parametrize(
    ("inventory_key", "name", "expected"),
    [
        ("heygen", "create_avatar_video_v2", "heygen/create_avatar_video_v2/t1"),
        ("Acme", "Video v2.1", "Acme/Video v2.1/t1"),
        ("acme", "odd/names", "acme/odd_names~"),
        ("..", "x", "~"),
        ("acme", "../other", "acme/_other~"),
        ("acme", "a~b", "acme/a_b~"),
        ("acme", "name.", "acme/name.~"),
        ("CON", "x", "CON~"),
    ],
)
def test_a_methods_folders_are_its_names_when_harmless(inventory_key, name, expected):
    prefix = storage_prefix(inventory_key, name, "t1")
    assert prefix.startswith(expected)
    assert prefix.count("/") == 2


@given(ANY_ID, ANY_ID, ANY_ID)
def test_a_storage_prefix_is_always_three_safe_segments(inventory_key, name, task_id):
    segments = storage_prefix(inventory_key, name, task_id).split("/")
    assert len(segments) == 3
    for segment in segments:
        assert segment.strip(".") and "\\" not in segment
        assert not any(unicodedata.category(char) == "Cc" for char in segment)
