"""The images ``plm serve`` decodes, within limits: thumbnails of collection images and uploaded queries."""

from __future__ import annotations

import io
from http import HTTPStatus
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from plm.search.request import RequestError

__all__ = ["MAX_IMAGE_PIXELS", "MAX_UPLOAD_PIXELS", "UPLOAD_FORMATS", "decode_upload", "megabytes", "thumbnail_jpeg"]

#: the image formats an upload may be in
UPLOAD_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
#: the most pixels decoded from one image (an upload, or a collection image once reduced for its thumbnail)
MAX_IMAGE_PIXELS = 40_000_000
MAX_UPLOAD_PIXELS = MAX_IMAGE_PIXELS


def megabytes(n: int) -> str:
    """A size for messages: ``1.5 MB`` or ``300 KB``."""
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KB"


def thumbnail_jpeg(path: Path, side: int, what: str) -> bytes:
    """A JPEG thumbnail (longest side ``side``) of the image file ``path``, decoded at reduced scale
    where the format allows (JPEG: 1/2 to 1/8).

    Raises:
        RequestError: not decodable (404), or more than :data:`MAX_IMAGE_PIXELS` pixels to decode (413).
    """
    try:
        with Image.open(path) as img:
            img.draft("RGB", (side, side))  # JPEG decodes at the smallest scale still >= side; others: no-op
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                   f"{what} has {img.width}x{img.height} pixels, more than the {MAX_IMAGE_PIXELS:,} "
                                   f"this server decodes for a thumbnail (open the full image instead)")
            img.thumbnail((side, side))
            thumb = img.convert("RGB")
    except RequestError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise RequestError(HTTPStatus.NOT_FOUND, f"{what} cannot be decoded: {err}") from err
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def decode_upload(data: bytes) -> Image.Image:
    """An uploaded file as an RGB image.

    Raises:
        RequestError: empty, not an image, another format than :data:`UPLOAD_FORMATS`, truncated,
            or more than :data:`MAX_UPLOAD_PIXELS` pixels.
    """
    if not data:
        raise RequestError(HTTPStatus.BAD_REQUEST, "no image was uploaded (choose a file first)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in UPLOAD_FORMATS:
                raise RequestError(HTTPStatus.BAD_REQUEST, f"uploads must be {', '.join(UPLOAD_FORMATS)} images; "
                                                           f"this one is {img.format}")
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                   f"the image has {img.width}x{img.height} pixels, more than the "
                                   f"{MAX_IMAGE_PIXELS:,} accepted")
            img.load()
            return img.convert("RGB")
    except RequestError:
        raise
    except UnidentifiedImageError as err:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"the upload is not an image plm can read "
                                                   f"({', '.join(UPLOAD_FORMATS)})") from err
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"the upload cannot be decoded as an image (truncated or "
                                                   f"corrupt?): {err}") from err
