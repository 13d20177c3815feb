"""What a request to ``plm serve`` may carry: bounded numbers and a one-level multipart upload.

:class:`RequestError` is every refusal the server answers with a status and one line for the user.
"""

from __future__ import annotations

import email.message
import re
from http import HTTPStatus
from typing import Optional

__all__ = ["MAX_DIGITS", "RequestError", "header_params", "parse_multipart", "parse_number", "shown"]

#: the most digits of a number in a request (ids, page numbers, Content-Length)
MAX_DIGITS = 12


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a one-line message for the user."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def parse_number(text: Optional[str]) -> Optional[int]:
    """``text`` as a non-negative integer when it is 1 to :data:`MAX_DIGITS` ASCII digits, else ``None``."""
    if text is None or not re.fullmatch(rf"[0-9]{{1,{MAX_DIGITS}}}", text):
        return None
    return int(text)


def shown(text: str, limit: int = 40) -> str:
    """A request value for a message: repr, cut to ``limit`` characters."""
    return repr(text[:limit] + ("…" if len(text) > limit else ""))


def header_params(name: str, value: str) -> email.message.Message:
    """One header parsed for its parameters (quoting and RFC 2231 names handled by :mod:`email`)."""
    msg = email.message.Message()
    msg[name] = value
    return msg


def parse_multipart(content_type: str, body: bytes, field_name: str = "image") -> tuple[str, bytes]:
    """(file name, bytes) of the ``field_name`` part of a ``multipart/form-data`` body.

    The body is split at its boundary once: a part that is itself multipart is not opened (it is
    just bytes, which then are not an image), so no nesting can make the parser recurse.

    Raises:
        RequestError: not multipart, no boundary, a part without headers, or no such field.
    """
    header = header_params("Content-Type", content_type)
    if header.get_content_type() != "multipart/form-data":
        raise RequestError(HTTPStatus.BAD_REQUEST, "uploads must be sent as multipart/form-data (the page's form)")
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= 200:
        raise RequestError(HTTPStatus.BAD_REQUEST, "the upload's multipart/form-data header has no usable boundary")
    delimiter = b"\r\n--" + boundary.encode("latin-1", "replace")
    for part in (b"\r\n" + body).split(delimiter)[1:]:
        if part.startswith(b"--"):  # the closing delimiter
            break
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            raise RequestError(HTTPStatus.BAD_REQUEST, "the upload is not a valid multipart/form-data body "
                                                       "(a part has no headers)")
        disposition = ""
        for line in head.split(b"\r\n"):
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-disposition":
                disposition = value.decode("utf-8", "replace").strip()
        fields = header_params("Content-Disposition", disposition)
        if fields.get_param("name", header="content-disposition") == field_name:
            return str(fields.get_filename() or "upload"), content
    raise RequestError(HTTPStatus.BAD_REQUEST, f"the upload has no {field_name!r} file field")
