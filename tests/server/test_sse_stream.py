"""server.serving.sse_stream: the tail every streamed response shares (in-band error, [DONE], closing)."""
import asyncio
import json

from server.serving import DONE, sse_stream


async def _collect(stream) -> list[str]:
    return [event async for event in stream]


def test_stream_ends_with_done():
    async def events():
        yield "data: 1\n\n"
    assert asyncio.run(_collect(sse_stream(events()))) == ["data: 1\n\n", DONE]


def test_error_mid_stream_is_sent_in_band_then_done():
    async def events():
        yield "data: 1\n\n"
        raise ValueError("temperature must be >= 0")
    out = asyncio.run(_collect(sse_stream(events())))
    assert out[0] == "data: 1\n\n" and out[-1] == DONE and len(out) == 3
    error = json.loads(out[1].removeprefix("data: "))["error"]
    assert "temperature must be >= 0" in error["message"] and error["code"] == 400


def test_closing_the_stream_closes_the_events_at_once():
    closed = []

    async def events():
        try:
            yield "data: 1\n\n"
            yield "data: 2\n\n"
        finally:
            closed.append(True)

    async def first_then_close():
        stream = sse_stream(events())
        first = await stream.__anext__()
        await stream.aclose()          # what the server does when the client goes away
        return first, list(closed)     # closed now, not later when the event loop collects it
    assert asyncio.run(first_then_close()) == ("data: 1\n\n", [True])
