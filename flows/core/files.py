"""Naming and typing downloaded files (SPEC §4.5).

Names come from the provider (``Content-Disposition``, the URL), so they are
untrusted: a name becomes a storage key, and must never climb out of the
job's folder nor carry control characters. So does the job id, which names
the job's folder (``storage_segment``). Types come from the header when
it says something, else from the bytes themselves, because CDNs often serve
everything as ``application/octet-stream``.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import mimetypes
import re
import unicodedata
from urllib.parse import unquote, unquote_to_bytes, urlsplit

OCTET_STREAM = "application/octet-stream"

# Room under the usual 255-byte file name limit for a "-2" suffix or a temporary
# ".part" name while the download is being written.
MAX_FILENAME_BYTES = 200

_FALLBACK_FILENAME = "file"

_GENERIC_MIMETYPES = frozenset(
    {OCTET_STREAM, "binary/octet-stream", "application/binary", "application/unknown"}
)

# The media these APIs produce, pinned here because the mimetypes module
# varies by platform and Python version (".jpe" for JPEG, no ".flac").
_EXTENSIONS = {
    "video/mp4": ".mp4",
    "video/quicktime": ".mov",
    "video/webm": ".webm",
    "video/x-matroska": ".mkv",
    "video/x-msvideo": ".avi",
    "audio/mpeg": ".mp3",
    "audio/mp3": ".mp3",
    "audio/mp4": ".m4a",
    "audio/x-m4a": ".m4a",
    "audio/aac": ".aac",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/wave": ".wav",
    "audio/vnd.wave": ".wav",
    "audio/ogg": ".ogg",
    "audio/webm": ".webm",
    "audio/flac": ".flac",
    "audio/x-flac": ".flac",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/avif": ".avif",
    "image/heic": ".heic",
    "image/svg+xml": ".svg",
    "application/pdf": ".pdf",
    "application/zip": ".zip",
    "application/json": ".json",
    "text/plain": ".txt",
    "text/csv": ".csv",
    "text/vtt": ".vtt",
    "application/x-subrip": ".srt",
    OCTET_STREAM: ".bin",
}
# The first type listed for an extension is its canonical one.
_MIMETYPES_BY_EXTENSION = {
    extension: mimetype for mimetype, extension in reversed(_EXTENSIONS.items())
}
# Only Python's built-in table, not the host's /etc/mime.types: same answer everywhere.
_BUILTIN_TYPES = mimetypes.MimeTypes()

_FTYP_BRANDS = {
    b"qt  ": "video/quicktime",
    b"M4A ": "audio/mp4",
    b"M4B ": "audio/mp4",
    b"avif": "image/avif",
    b"heic": "image/heic",
    b"heix": "image/heic",
}
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"ID3", "audio/mpeg"),
    (b"OggS", "audio/ogg"),
    (b"fLaC", "audio/flac"),
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"PK\x05\x06", "application/zip"),
)
_RIFF_FORMATS = {b"WAVE": "audio/wav", b"WEBP": "image/webp", b"AVI ": "video/x-msvideo"}

_PORTABILITY_UNSAFE = re.compile(r'[<>:"|?*]')
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,10}$")
_DISPOSITION_PARAM = re.compile(
    r";\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*(\"(?:[^\"\\]|\\.)*\"|[^;]*)"
)
_QUOTED_PAIR = re.compile(r"\\(.)")
_TASK_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

# A job id is used as its own folder name only when it is plainly safe everywhere:
# lowercase (so ids that differ in case never share a folder on a case-insensitive
# filesystem), no leading or trailing dot (hidden files, ``.``/``..``, Windows
# dropping a trailing dot), short, and not a Windows device name.
_PLAIN_SEGMENT = re.compile(r"[a-z0-9_-](?:[a-z0-9._-]{0,62}[a-z0-9_-])?")
_WINDOWS_DEVICES = re.compile(r"(?:con|prn|aux|nul|com[0-9]|lpt[0-9])(?:\..*)?")
# Any other id keeps a readable prefix, then ``~`` (never in a plain segment) and a
# hash of the whole id: distinct ids get distinct folders, whatever their spelling.
SEGMENT_PREFIX_CHARS = 40
SEGMENT_HASH_CHARS = 32
# A method's inventoryKey and name are the user's words, kept as written (any case:
# names differing only in case are one block anyway) unless they would not be one
# harmless folder: a separator, a control or Windows-refused character, a leading
# dot, a trailing dot or space, or the ``~`` that marks a hashed segment.
_NOT_IN_NAMES = r'/\\\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff<>:"|?*~'
_PLAIN_NAME = re.compile(rf"[^.{_NOT_IN_NAMES}](?:[^{_NOT_IN_NAMES}]{{0,98}}[^. {_NOT_IN_NAMES}])?")


def filename_from_content_disposition(value: str | None) -> str | None:
    """The file name a ``Content-Disposition`` header gives, sanitised, or None.

    ``filename*`` (RFC 6266/5987, any charset Python knows) wins over
    ``filename``, as in browsers, because it is the one that can carry
    non-ASCII names faithfully.
    """
    if not value:
        return None
    params: dict[str, str] = {}
    # A leading ";" also reads the params of a header that forgot its disposition type.
    for name, raw in _DISPOSITION_PARAM.findall(";" + value):
        params.setdefault(name.lower(), _unquote_header_value(raw.strip()))
    extended = params.get("filename*")
    if extended is not None:
        decoded = _decode_extended_value(extended)
        if decoded is not None and (name := _clean_filename(decoded)):
            return name
    plain = params.get("filename")
    return _clean_filename(plain) if plain is not None else None


def filename_from_url(url: str) -> str | None:
    """The URL path's last segment, percent-decoded and sanitised, when it has an extension.

    Without an extension a segment is usually an id (``/files/8f3a``), not
    a name worth keeping; ``data:`` URIs have no name at all.
    """
    if url.lstrip().lower().startswith("data:"):
        return None
    try:
        path = urlsplit(url).path
    except ValueError:
        return None
    name = _clean_filename(unquote(path.rsplit("/", 1)[-1]))
    return name if name is not None and _EXTENSION.search(name) else None


def safe_filename(name: str) -> str:
    """``name`` reduced to a harmless file name; ``"file"`` when nothing usable is left.

    Basename only (``/`` and ``\\`` both count as separators, ``..`` is
    dropped), no control or invisible format characters (a right-to-left
    override can disguise ``exe.mp4``), no characters Windows refuses, no
    leading dot (hidden files), at most ``MAX_FILENAME_BYTES`` of UTF-8 with
    the extension kept.
    """
    return _clean_filename(name) or _FALLBACK_FILENAME


def is_specific_mimetype(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` says what the bytes are (not a generic binary type)."""
    mimetype = _essence(content_type)
    return "/" in mimetype and mimetype not in _GENERIC_MIMETYPES


def sniff_mimetype(head: bytes) -> str | None:
    """The media type the first bytes of a file announce, or None when unknown."""
    if head[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(head[8:12], "video/mp4")
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: Matroska or its WebM profile
        return "video/x-matroska" if b"matroska" in head[:64] else "video/webm"
    if head.startswith(b"RIFF"):
        return _RIFF_FORMATS.get(head[8:12])
    for signature, mimetype in _SIGNATURES:
        if head.startswith(signature):
            return mimetype
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return _mpeg_audio_frame_type(head[1])
    return None


def extension_for(mimetype: str) -> str:
    """The file extension for ``mimetype`` (``.jpg``, not ``.jpe``); ``.bin`` when unknown."""
    essence = _essence(mimetype)
    return (
        _EXTENSIONS.get(essence) or _BUILTIN_TYPES.guess_extension(essence, strict=False) or ".bin"
    )


def choose_mimetype(*, content_type: str | None, head: bytes, filename: str | None) -> str:
    """The type of a downloaded file: the header when specific, else sniffed, else by name."""
    if is_specific_mimetype(content_type):
        return _essence(content_type)
    sniffed = sniff_mimetype(head)
    if sniffed is not None:
        return sniffed
    if filename:
        extension = _EXTENSION.search(filename)
        if extension is not None:
            by_name = _MIMETYPES_BY_EXTENSION.get(extension.group(0).lower())
            guessed = by_name or _BUILTIN_TYPES.guess_type(filename, strict=False)[0]
            if guessed is not None:
                return guessed
    return OCTET_STREAM


def choose_filename(
    *, content_disposition: str | None, url: str, mimetype: str, task_id: str, index: int
) -> str:
    """The stored name of output ``index`` (0 = primary) of job ``task_id``.

    ``Content-Disposition``, else the URL's last segment when it has an
    extension, else ``file-<id><ext>`` (``file-<id>-2<ext>``... for further
    outputs) with the extension of ``mimetype``.
    """
    named = filename_from_content_disposition(content_disposition) or filename_from_url(url)
    if named is not None:
        return named
    # Operation-style ids are paths ("projects/p/operations/1"): keep them readable.
    id_part = _TASK_ID_UNSAFE.sub("_", task_id).strip("._") or "job"
    number = f"-{index + 1}" if index > 0 else ""
    return safe_filename(f"file-{id_part}{number}{extension_for(mimetype)}")


def storage_segment(task_id: str) -> str:
    """The one path segment a job's files go under, whatever the provider sent as its id.

    A plain id (``abc123``, ``3f2a-...``) is used as is; any other (``..``,
    ``a/b``, ``JobA``, 10,000 characters, control characters) becomes
    ``<readable prefix>~<sha256>``: always one safe segment of at most 73
    characters, and never the segment of another id, even on a
    case-insensitive filesystem.
    """
    if _PLAIN_SEGMENT.fullmatch(task_id) and not _WINDOWS_DEVICES.fullmatch(task_id):
        return task_id
    prefix = _TASK_ID_UNSAFE.sub("_", task_id[:SEGMENT_PREFIX_CHARS]).lstrip(".")
    digest = hashlib.sha256(task_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{prefix}~{digest[:SEGMENT_HASH_CHARS]}"


def storage_prefix(inventory_key: str, name: str, task_id: str) -> str:
    """``<inventoryKey>/<name>/<taskId>``: the folder of one job's files, three segments always.

    ``inventoryKey`` and ``name`` stay as written when each is one harmless
    folder name (``heygen``, ``create_avatar_video_v2``, ``Video v2``), else
    become what ``storage_segment`` makes of them (``odd/names`` →
    ``odd_names~<sha256>``); the job id is always ``storage_segment(task_id)``.
    """
    return "/".join(
        (_method_segment(inventory_key), _method_segment(name), storage_segment(task_id))
    )


def _method_segment(name: str) -> str:
    if _PLAIN_NAME.fullmatch(name) and not _WINDOWS_DEVICES.fullmatch(name.lower()):
        return name
    return storage_segment(name)


def decode_data_uri(uri: str) -> tuple[bytes, str | None]:
    """The bytes and mimetype (None when not stated) of a ``data:`` URI (RFC 2397).

    Both the base64 and the percent-encoded forms; unpadded and URL-safe
    base64 are accepted since generators emit both. Raises ValueError, never
    quoting the data itself (it may be megabytes long).
    """
    scheme, colon, rest = uri.strip().partition(":")
    if scheme.lower() != "data" or not colon:
        raise ValueError("not a data: URI")
    header, comma, data = rest.partition(",")
    if not comma:
        raise ValueError("malformed data: URI: no comma between its header and its data")
    media_type, *parameters = header.split(";")
    mimetype = _essence(media_type) or None
    if mimetype is not None and "/" not in mimetype:
        raise ValueError(f"malformed data: URI: {media_type.strip()!r} is not a media type")
    if parameters and parameters[-1].strip().lower() == "base64":
        return _decode_base64(unquote(data)), mimetype
    return unquote_to_bytes(data), mimetype


def _decode_base64(text: str) -> bytes:
    compact = "".join(text.split()).translate(str.maketrans("-_", "+/"))
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"malformed data: URI: invalid base64 ({exc})") from None


def _mpeg_audio_frame_type(second_byte: int) -> str:
    # Layer bits 00 mark an ADTS (AAC) header; any other layer is MPEG audio (MP3).
    return "audio/aac" if second_byte & 0x06 == 0 else "audio/mpeg"


def _essence(content_type: str | None) -> str:
    """``"Video/MP4; codecs=avc1"`` → ``"video/mp4"``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def _unquote_header_value(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return _QUOTED_PAIR.sub(r"\1", raw[1:-1])
    return raw


def _decode_extended_value(value: str) -> str | None:
    """``UTF-8''na%C3%AFve.mp4`` → ``naïve.mp4``; None when the charset is unknown."""
    charset, quote_mark, rest = value.partition("'")
    _language, quote_mark_2, encoded = rest.partition("'")
    if not (quote_mark and quote_mark_2):
        return None
    try:
        # Looked up first: unquote never consults the codec when nothing is escaped.
        codec = codecs.lookup(charset or "utf-8").name
        return unquote(encoded, encoding=codec, errors="strict")
    except (LookupError, UnicodeDecodeError):
        return None


def _clean_filename(name: str) -> str | None:
    name = unicodedata.normalize("NFC", name)
    segments = [s for s in name.replace("\\", "/").split("/") if s.strip() not in ("", ".", "..")]
    if not segments:
        return None
    visible = "".join(ch for ch in segments[-1] if unicodedata.category(ch) not in ("Cc", "Cf"))
    cleaned = _PORTABILITY_UNSAFE.sub("_", visible).strip().strip(" .")
    return _truncate(cleaned) or None


def _truncate(name: str) -> str:
    """Cut the stem, never the extension, to fit ``MAX_FILENAME_BYTES`` of UTF-8."""
    if len(name.encode()) <= MAX_FILENAME_BYTES:
        return name
    match = _EXTENSION.search(name)
    extension = match.group(0) if match else ""
    stem = name[: len(name) - len(extension)]
    budget = MAX_FILENAME_BYTES - len(extension.encode())
    stem = stem.encode()[:budget].decode(errors="ignore")
    return stem + extension
