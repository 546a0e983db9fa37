"""Reading a request body sent with a Content-Encoding, for every service: one place that decides which
encodings a protocol takes and how a refusal reads.

aiohttp decompresses gzip and deflate bodies as it reads them, and failed on each uncompressed body sent
with such a header deep in request.read() (a 500 in all three services); br and zstd, which it cannot
decode here, failed while parsing the headers (a 400 calling the request malformed). Now a service names
the encodings its protocol accepts: any other is refused before the body is read, and an accepted one
that does not decode is a 400 that says so. A decompressed body counts against the service's body size
limit (aiohttp checks client_max_size on what it hands over, after decompression): a small compressed
body cannot become a large one.

- The DSM (Fortanix REST) accepts gzip and deflate, as HTTP servers commonly do.
- The XKS proxy and KMS accept none: AWS KMS sends XKS requests uncompressed, and the AWS SDKs compress
  request bodies only for operations whose model asks for it, which no KMS operation does.

A client that closes its connection before its body is read (a load generator ending its run with
requests still queued, a KMS giving up) makes aiohttp raise ``ConnectionResetError("Connection lost")``
from ``request.read()``, even for a body it already holds: ``read`` raises ClientGone instead, which
each service counts as gone, with status 499 on its access line (nginx's "client closed request") and
no log line above INFO; no answer is sent, since there is no one to send it to. It used to reach each
service's catch-all: an ERROR traceback and a 500 in the metrics for an answer nobody was sent.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.http_exceptions import PayloadEncodingError

NONE: frozenset[str] = frozenset()
GZIP_OR_DEFLATE = frozenset({"gzip", "deflate"})
_IDENTITY = ("", "identity")
# The access line's status, and the DSM metrics' status label, of a request whose client left first.
CLIENT_GONE_STATUS = 499


class ClientGone(Exception):
    """The client closed its connection before its body was read: nothing can be answered."""


class BodyEncodingError(Exception):
    """The body's encoding is refused (``status`` 415) or does not decode (400); ``message`` names the
    encoding only when it is one of the few known names, never an arbitrary header value."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def refused_message(accepted: frozenset[str]) -> str:
    """What a refusal says, for the body readers and for a request refused while its headers were parsed
    (br and zstd, which aiohttp cannot decode here)."""
    if not accepted:
        return "the request body must not be compressed: send it without a Content-Encoding"
    names = ", ".join(sorted(accepted))
    return f"the request body's Content-Encoding is not accepted: send it uncompressed, or as one of {names}"


async def read(request: web.Request, accepted: frozenset[str]) -> bytes:
    """The body, decompressed when its encoding is accepted; BodyEncodingError otherwise. The caller
    still handles the size limit (web.HTTPRequestEntityTooLarge), which applies to the decompressed size."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding in _IDENTITY:
        try:
            return await request.read()
        except OSError:
            # The read is the only I/O here, so an OSError is the client's connection.
            raise ClientGone() from None
    if encoding not in accepted:
        raise _refused(request, 415, refused_message(accepted))
    try:
        return await request.read()
    except OSError:
        raise ClientGone() from None
    except (PayloadEncodingError, web.RequestPayloadError):  # the latter wraps the former in read()
        raise _refused(request, 400, f"the request body is not valid {encoding} data") from None
    except web.HTTPRequestEntityTooLarge:
        # Too large once decompressed: the rest is not decompressed after the answer either (aiohttp
        # would read, and so inflate, what is left for up to its lingering time).
        _refused(request, 413, "")
        raise


def install(app: web.Application) -> None:
    """Each service's app: a refusal's answer says Connection: close (the connection does close after
    it, and a client that pooled it would otherwise find it gone on its next request)."""
    app.on_response_prepare.append(_close_if_refused)


_REFUSED: web.RequestKey[bool] = web.RequestKey("xkslab.body_encoding_refused", bool)


async def _close_if_refused(request: web.Request, response: web.StreamResponse) -> None:
    if request.get(_REFUSED):
        # The headers are already prepared when this signal runs: say it as well as do it.
        response.force_close()
        response.headers["Connection"] = "close"


def _refused(request: web.Request, status: int, message: str) -> BodyEncodingError:
    # The rest of the body is not read: aiohttp would read it after the answer (and, for an encoding it
    # decodes, fail on it again with a logged traceback). The connection closes after the answer.
    request[_REFUSED] = True
    if request.protocol is not None:
        request.protocol.close()
    request.content.feed_eof()
    return BodyEncodingError(status, message)
