"""RFC 822 bytes → ``email.message.Message``: the shape every POS sends read quickly, the rest by the stdlib.

The standard library's parser spends most of an order confirmation's parsing time on itself: it is a
generator-driven line machine, and it compiles a new regular expression for every multipart boundary
(each email has its own, so the ``re`` cache never hits). ``read_message`` reads the common shape (a
single part, or one level of multipart whose parts are not multipart or message/*) with a plain line scan
that does exactly what the standard parser does for that shape, and gives every other email, and every
email the scan finds the least irregular, to ``email.message_from_bytes`` untouched:

- the same ``Message`` class and compat32 policy, the header values made by the policy's own
  ``header_source_parse``, payloads as the same surrogate-escaped text, so header access, parameters,
  charsets and ``get_payload(decode=True)`` (quoted-printable, base64) are the standard library's own code;
- lines split where the standard parser splits them (CR, LF, CRLF), a boundary line recognised by the same
  pattern, the line break before a boundary given to the boundary, preamble and epilogue kept the same way;
- handed to the standard parser whole: a unix ``From`` line, a header line with no name, a continuation
  before any header, a header not ended by a blank line, no boundary parameter, no start or no close
  boundary, two boundary lines in a row, multipart/digest, nested multipart or message/* parts, and any
  error raised while reading. Those are the emails where the standard parser records a defect or recurses.

tests/unit/test_email_mime.py holds both readers to the same result, part by part.
"""

from __future__ import annotations

import email
import itertools
import re
from email.message import Message
from email.policy import compat32

# A header line that starts a field (a name, then the colon), as the standard parser's headerRE, less
# its "From " (unix envelope) and empty-name cases, which go to the standard parser.
_FIELD = re.compile(r"[\041-\071\073-\176]+:")
# What may follow "--<boundary>" on a boundary line: the standard parser's boundary pattern, less the
# boundary itself (compiled once instead of once per email).
_BOUNDARY_TAIL = re.compile(r"(?P<end>--)?[ \t]*(?P<linesep>\r\n|\r|\n)?")
# str.splitlines breaks lines at these too, the standard parser only at CR, LF and CRLF. (Looked for in
# the bytes: a search of the decoded text, wide once it holds surrogate escapes, is several times slower.)
_OTHER_LINE_BREAKS = re.compile(b"[\x0b\x0c\x1c\x1d\x1e]")


def read_message(raw: bytes) -> Message:
    """The email in ``raw``, exactly as ``email.message_from_bytes(raw)`` (compat32) reads it."""
    fast = read_common_shape(raw)
    return fast if fast is not None else email.message_from_bytes(raw)


def read_common_shape(raw: bytes) -> Message | None:
    """``raw`` read by the line scan; None if it is not the common shape (the standard parser's case)."""
    # The standard parser reads bytes as ASCII with surrogate escapes; so does this, for identical payloads.
    if _OTHER_LINE_BREAKS.search(raw):
        return None
    text = raw.decode("ascii", "surrogateescape")
    try:
        return _read(text.splitlines(keepends=True))
    except Exception:  # whatever the scan trips on, the standard parser has the last word
        return None


def _read(lines: list[str]) -> Message | None:
    head = _headers(lines, 0, len(lines))
    if head is None:
        return None
    msg, body = head
    kind = msg.get_content_type()
    if msg.get_content_maintype() == "message" or kind == "multipart/digest":
        return None
    if msg.get_content_maintype() != "multipart":
        msg.set_payload("".join(lines[body:]))
        return msg
    boundary = msg.get_boundary()
    if boundary is None:
        return None
    return _read_parts(msg, lines, body, "--" + boundary)


def _read_parts(msg: Message, lines: list[str], body: int, separator: str) -> Message | None:
    # The boundary lines, by a cheap test first; the parts are the lines between them.
    marks = [
        (index, mark)
        for index in range(body, len(lines))
        if lines[index].startswith(separator)
        and (mark := _BOUNDARY_TAIL.fullmatch(lines[index], len(separator))) is not None
    ]
    if not marks or marks[0][1]["end"] or not marks[-1][1]["end"]:
        return None  # no start boundary, or no close boundary
    preamble = lines[body : marks[0][0]]
    if preamble:
        preamble[-1] = _strip_line_break(preamble[-1])  # the break before a boundary is the boundary's
        msg.preamble = "".join(preamble)
    for (start, mark), (end, _) in itertools.pairwise(marks):
        if mark["end"]:
            break  # the standard parser ends the multipart at the first close boundary
        if end == start + 1:
            return None  # boundary lines in a row
        part = _part(lines, start + 1, end)
        if part is None:
            return None
        msg.attach(part)
    else:
        start = marks[-1][0]
    # After the close boundary, the epilogue: the standard parser drops the line break that starts it, but
    # that is the close boundary line's own break, which the line split has kept with the boundary.
    msg.epilogue = "".join(lines[start + 1 :])
    return msg


def _part(lines: list[str], start: int, end: int) -> Message | None:
    """A part between two boundary lines; None if it is not a leaf part with a blank line after its header."""
    head = _headers(lines, start, end)
    if head is None:
        return None
    part, body = head
    if part.get_content_maintype() in ("multipart", "message"):
        return None
    part.set_payload(_strip_line_break("".join(lines[body:end])))
    return part


def _headers(lines: list[str], start: int, end: int) -> tuple[Message, int] | None:
    """The header lines from ``start`` as a ``Message``, and the index of the first body line.

    None where the standard parser would note a defect or see an envelope line: a line that is neither
    a field, a continuation nor the blank line, a continuation first, or no blank line before ``end``.
    """
    msg = Message()
    field: list[str] = []
    for index in range(start, end):
        line = lines[index]
        if line[0] in " \t":
            if not field:
                return None
            field.append(line)
            continue
        if field:
            msg.set_raw(*compat32.header_source_parse(field))
            field = []
        if line[0] in "\r\n":
            return msg, index + 1
        if _FIELD.match(line) is None:
            return None
        field = [line]
    return None


def _strip_line_break(text: str) -> str:
    """``text`` without the one line break (CRLF, CR or LF) it may end with."""
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith(("\r", "\n")):
        return text[:-1]
    return text
