"""The email producer's MIME reader gives the standard parser's result, part by part, or leaves it to it.

Every simulator email (each locale, encoding and anomaly) and hand-made emails at the edges: folded and
encoded headers, quoted-printable and base64 bodies, charsets (RFC 2231, unknown), bare LF and CR line
breaks, preamble and epilogue, attachments, and the shapes handed to the standard parser (nested
multipart, no close boundary, unix From line, and more).
"""

from __future__ import annotations

import email
from email.message import Message
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any

import pytest

from producers.emails.mime import read_common_shape, read_message
from simulators.email_plan import ANOMALY_KINDS, EmailPlanner
from simulators.emails import build_message
from simulators.reference import build_reference
from tests.unit.test_email_parser import local_time

B = "b0und+ary(1)=="  # regular-expression metacharacters: the boundary is matched literally


def shape(msg: Message) -> list[tuple[Any, ...]]:
    """Everything the producer (or anyone) can read of ``msg``: per part, headers, type, payload, params."""
    out: list[tuple[Any, ...]] = []
    for part in msg.walk():
        decoded = None if part.is_multipart() else part.get_payload(decode=True)
        out.append(
            (
                part.items(),
                part.get_content_type(),
                part.get_default_type(),
                part.get_content_charset(),
                part.get_params(),
                part.get_filename(),
                part.get("Content-Disposition"),
                decoded,
                None if part.is_multipart() else part.get_payload(),
                part.preamble,
                part.epilogue,
                part.get_unixfrom(),
            )
        )
    return out


def assert_same(raw: bytes, fast: bool = True) -> None:
    """``read_message`` reads ``raw`` as the standard parser does; ``fast``: by the line scan."""
    assert (read_common_shape(raw) is not None) is fast
    assert shape(read_message(raw)) == shape(email.message_from_bytes(raw))


def test_every_simulator_email_is_read_the_same_by_the_line_scan() -> None:
    kinds = set()
    for planned in EmailPlanner(7, 300, 0.5, 1, reference=build_reference(42)).emails():
        at = local_time(planned.purchase.store)
        raw = build_message(planned, at, at, "confirmations@x", "x", f"<{planned.seq}@x>").as_bytes()
        assert_same(raw)
        assert_same(raw.replace(b"\n", b"\r\n"))  # as the mail server hands it over
        kinds.add(planned.anomaly)
    assert kinds == {None, *ANOMALY_KINDS}


def multipart(*parts: bytes, preamble: bytes = b"", epilogue: bytes = b"", nl: bytes = b"\r\n") -> bytes:
    head = b'Message-ID: <1@x>\r\nContent-Type: multipart/alternative;\r\n boundary="' + B.encode() + b'"'
    body = b"".join(nl + b"--" + B.encode() + nl + part for part in parts)
    return (head + nl + nl + preamble + body + nl + b"--" + B.encode() + b"--" + nl + epilogue).replace(
        b"\r\n", nl
    )


TEXT = (
    b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'
    b"Store: S1 M\xc3\xbcnchen\r\n"
)


@pytest.mark.parametrize(
    "raw",
    [
        multipart(TEXT),
        multipart(TEXT, nl=b"\n"),  # bare LF line breaks
        multipart(TEXT, nl=b"\r"),  # bare CR line breaks
        multipart(TEXT, preamble=b"This is a multi-part message.\r\n", epilogue=b"after\r\nthe end"),
        multipart(TEXT, epilogue=b"\r\n\r\n--" + B.encode() + b"--\r\n"),  # a close boundary in the epilogue
        multipart(TEXT + b"\r\n\r\n"),  # trailing blank lines stay the part's, less the boundary's break
        multipart(b"\r\nno headers at all: text/plain by default\r\n"),
        multipart(TEXT, b"Content-Type: text/html\r\n\r\n<p>x</p>"),
        multipart(b"Content-Type: text/plain;\r\n\tcharset*=utf-8''latin-1\r\n\r\nRFC 2231 parameter"),
        multipart(b"Content-Type: text/plain; charset=x-no-such-charset\r\n\r\nan unknown charset"),
        multipart(b"Content-Type: text/plain; charset=\xc3\xa4\r\n\r\na non-ASCII charset name"),
        multipart(b"X-Note: =?utf-8?q?M=C3=BCnchen?=\r\n =?utf-8?b?w6TDtsO8?=\r\n\r\nencoded, folded header"),
        multipart(b"Content-Transfer-Encoding: quoted-printable\r\n\r\nM=C3=BCnchen=\r\n soft break=3D"),
        multipart(b"Content-Transfer-Encoding: base64\r\n\r\nU3RvcmU6IFMxIE3DvG5jaGVu\r\n"),
        multipart(b"Content-Transfer-Encoding: base64\r\n\r\nU3RvcmU6!!IFMx\r\n"),  # broken base64
        multipart(b"Content-Transfer-Encoding: x-unknown\r\n\r\nas it is"),
        multipart(TEXT.replace(b"--", b"")[:-2] + b"\r\n--" + B.encode() + b"not a boundary\r\n"),
        multipart(TEXT, b"Content-Type: text/plain\r\n\r\n--" + B.encode() + b" \t\r\n"),  # ws after it
        multipart(TEXT, b"Content-Type: text/plain\r\n\r\n--" + B.encode() + b"-- \r\n"),  # closes early
        (MIMEText("Store: S1 M\u00fcnchen\r\n", "plain", "utf-8")).as_bytes(),  # single part, base64
        b"Message-ID: <2@x>\r\nSubject: no MIME headers\r\n\r\nStore: S1\r\n",
        b"Message-ID: <2@x>\r\n\r\n",  # an empty body
        b"Subject: a \xff byte in a header\r\n\r\nbody \xfe",
    ],
)
def test_edges_read_by_the_line_scan_match_the_standard_parser(raw: bytes) -> None:
    assert_same(raw)


def test_an_attachment_part_is_read_as_the_standard_parser_reads_it() -> None:
    msg = MIMEMultipart("mixed")
    msg["Message-ID"] = "<3@x>"
    msg.attach(MIMEText("Store: S1\r\n", "plain", "utf-8"))
    attachment = MIMEApplication(b"\x00\x01binary", Name="receipt.txt")
    attachment["Content-Disposition"] = 'attachment; filename="receipt.txt"'
    msg.attach(attachment)
    assert_same(msg.as_bytes())


def nested() -> bytes:
    outer = MIMEMultipart("mixed")
    inner = MIMEMultipart("alternative")
    inner.attach(MIMEText("Store: S1\r\n", "plain", "utf-8"))
    outer.attach(inner)
    return outer.as_bytes()


@pytest.mark.parametrize(
    "raw",
    [
        nested(),  # a multipart in a multipart
        multipart(b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nx"),
        multipart(TEXT)[: -len(b"--\r\n") - len(B) - 2],  # no close boundary
        multipart(TEXT).replace(b"--" + B.encode() + b"\r\n", b"", 1),  # no start boundary
        multipart(TEXT)
        .replace(b"--" + B.encode() + b"\r\n", b"--" + B.encode() + b"\r\n" * 2, 1)
        .replace(b"\r\n\r\nContent-Type", b"\r\n--" + B.encode() + b"\r\nContent-Type", 1),  # two in a row
        multipart(TEXT).replace(b"boundary=", b"x-boundary="),  # multipart without a boundary
        b"From sender@x Mon Nov 25 17:04:07 2026\r\nMessage-ID: <4@x>\r\n\r\nbody",  # unix From line
        b" continued first\r\nMessage-ID: <4@x>\r\n\r\nbody",  # a continuation before any header
        b"Message-ID: <4@x>\r\nnot a header line\r\n\r\nbody",  # no blank line before the body
        b":no name\r\nMessage-ID: <4@x>\r\n\r\nbody",
        b"Message-ID: <4@x>\r\nSubject: headers only",
        multipart(b"Content-Type: text/plain\r\nno blank line after the part's header"),
        multipart(TEXT).replace(b"multipart/alternative", b"multipart/digest"),
        b"Message-ID: <4@x>\r\n\r\na form feed \x0c breaks a line for str.splitlines only",
        b"",
    ],
)
def test_other_shapes_are_left_to_the_standard_parser(raw: bytes) -> None:
    assert_same(raw, fast=False)
