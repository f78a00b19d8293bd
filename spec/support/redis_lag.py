"""A TCP proxy in front of a redis-server that makes a subscriber connection late:
once a client connection has sent SUBSCRIBE, everything Redis sends it from then on
is delivered --delay seconds late (in order); other connections pass at once. It is
how the history specs put a publication on the channel behind the reply to a read
that already holds it (the race of a recovery with --redis). With --up, what such a
connection sends (SUBSCRIBE on) reaches Redis that late too: a process's subscriptions
take effect late after a reconnection. Prints one line "port PORT" and serves until
killed.

    redis_lag.py --redis PORT [--delay SECONDS] [--up]"""
import argparse
import asyncio


async def pipe_up(reader, writer, state, delay):
    while True:
        data = await reader.read(65536)
        if not data:
            break
        if b"SUBSCRIBE" in data.upper():
            state["late"] = True
        if state["late"] and delay:
            await asyncio.sleep(delay)
        writer.write(data)
        await writer.drain()
    writer.close()


async def pipe_down(reader, writer, state, delay):
    queue = asyncio.Queue()

    async def deliver():
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    task = asyncio.create_task(deliver())
    loop = asyncio.get_running_loop()
    while True:
        data = await reader.read(65536)
        if not data:
            break
        queue.put_nowait((loop.time() + (delay if state["late"] else 0), data))
    queue.put_nowait((0, None))
    await task


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis", type=int, required=True)
    ap.add_argument("--delay", type=float, default=0.3)
    ap.add_argument("--up", action="store_true")
    args = ap.parse_args()

    async def handle(creader, cwriter):
        try:
            rreader, rwriter = await asyncio.open_connection("127.0.0.1", args.redis)
        except OSError:
            cwriter.close()
            return
        state = {"late": False}
        try:
            await asyncio.gather(pipe_up(creader, rwriter, state, args.delay if args.up else 0),
                                 pipe_down(rreader, cwriter, state, args.delay))
        except (ConnectionError, OSError):
            pass
        finally:
            cwriter.close()
            rwriter.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    print("port", srv.sockets[0].getsockname()[1], flush=True)
    async with srv:
        await srv.serve_forever()


asyncio.run(main())
