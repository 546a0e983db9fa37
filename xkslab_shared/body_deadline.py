"""The request body's deadline, as one aiohttp middleware every service's listener gets
(serve.start): a client that sends its headers and then trickles or withholds the body is answered 408
and closed, instead of holding a connection and a handler for as long as it likes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

BODY_TIMEOUT_KEY: web.AppKey[float] = web.AppKey("xkslab_body_timeout_s", float)
_EXPIRED: web.RequestKey[bool] = web.RequestKey("xkslab_body_expired", bool)


def body_expired(request: web.BaseRequest) -> bool:
    """Whether this request's body deadline passed: a handler sees it as a CancelledError, the client
    gets a 408 (a handler that counts its outcomes counts this one as the error it is)."""
    return bool(request.get(_EXPIRED, False))


@web.middleware
async def body_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """408 and close when the body is still incomplete ``BODY_TIMEOUT_KEY`` seconds after the handler
    started. Only an incomplete body cancels: a handler that has its whole body may take as long as it
    needs (the services bound their own work)."""
    timeout = request.app.get(BODY_TIMEOUT_KEY)
    # A body already whole (a small one, read with its headers: nearly every request) cannot expire:
    # no timer to arm and cancel.
    if timeout is None or not request.body_exists or request.content.is_eof():
        return await handler(request)
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        if not request.content.is_eof():
            expired = True
            request[_EXPIRED] = True
            task.cancel()

    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        return await handler(request)
    except asyncio.CancelledError:
        if not expired or task.uncancel() > 0:
            raise
        # Close once the 408 is written, and mark the body ended: aiohttp would otherwise linger reading
        # the rest of it for another 10 s before closing.
        if request.protocol is not None:
            request.protocol.close()
        request.content.feed_eof()
        raise web.HTTPRequestTimeout(text="request body not received in time") from None
    finally:
        timer.cancel()
