#!/usr/bin/python3
"""slow_http.py PORT [DELAY] — a local HTTP/1.1 service that answers every request
after DELAY seconds (default 0.05) with `200 ok`: the auth service of bench/run's
handshake scenario (bench/app/auth.lua calls it from `upgrade`). Listens on
127.0.0.1 with a deep accept queue so that 1,000 requests at once all get in."""
import asyncio
import sys

PORT = int(sys.argv[1])
DELAY = float(sys.argv[2]) if len(sys.argv) > 2 else 0.05


async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length, close = 0, head.split(b"\r\n", 1)[0].endswith(b"HTTP/1.0")
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                k, v = k.strip().lower(), v.strip().lower()
                if k == b"content-length":
                    length = int(v)
                elif k == b"connection" and v == b"close":
                    close = True
            if length:
                await reader.readexactly(length)
            await asyncio.sleep(DELAY)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
                         + (b"Connection: close\r\n" if close else b"") + b"\r\nok\n")
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", PORT, backlog=4096)
    async with server:
        await server.serve_forever()


asyncio.run(main())
