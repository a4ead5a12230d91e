"""The session's idle timeout (`serve.stream.IdleWatch`): one timer per session, not per message."""

import asyncio

import pytest

from pipeline.session_wire import CLOSE_IDLE
from serve.stream import IdleWatch, SessionTimeout


class Socket:
    """An ASGI WebSocket whose messages the test puts in."""

    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()

    async def receive(self) -> dict:
        return await self.queue.get()


def test_a_wait_with_no_message_ends_after_the_timeout():
    async def scenario():
        watch, socket = IdleWatch(0.2), Socket()
        start = asyncio.get_running_loop().time()
        with pytest.raises(SessionTimeout) as timed_out:
            await watch.receive(socket)
        watch.stop()
        return asyncio.get_running_loop().time() - start, timed_out.value

    waited, err = asyncio.run(scenario())
    assert 0.19 <= waited < 1.0
    assert err.close_code == CLOSE_IDLE and "0.2 s" in str(err)


def test_messages_and_busy_frames_keep_the_session_open():
    async def scenario():
        watch, socket = IdleWatch(0.2), Socket()
        got = []
        for i in range(6):  # a message every 0.1 s: never idle for 0.2 s
            asyncio.get_running_loop().call_later(0.1, socket.queue.put_nowait,
                                                  {"type": "websocket.receive", "bytes": bytes([i])})
            got.append(await watch.receive(socket))
        await asyncio.sleep(0.35)  # a frame that takes longer than the timeout is not idleness
        socket.queue.put_nowait({"type": "websocket.receive", "text": "late"})
        got.append(await watch.receive(socket))
        socket.queue.put_nowait({"type": "websocket.disconnect"})
        got.append(await watch.receive(socket))
        watch.stop()
        return got

    assert asyncio.run(scenario()) == [bytes([i]) for i in range(6)] + ["late", None]


def test_a_cancellation_from_elsewhere_is_not_taken_for_idleness():
    async def scenario():
        socket = Socket()

        async def session():
            watch = IdleWatch(5.0)
            try:
                await watch.receive(socket)
            finally:
                watch.stop()

        task = asyncio.create_task(session())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
