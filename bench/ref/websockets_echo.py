"""Reference server: Python `websockets` (Debian python3-websockets), asyncio.
/echo echoes every message; /fanout follows bench/fanout.lua's protocol.
Usage: /usr/bin/python3 websockets_echo.py PORT"""
import asyncio
import sys
from urllib.parse import parse_qs, urlsplit

import websockets

SUBS = set()


async def handler(ws, path=None):
    if path is None:  # 10.1+: no path argument; legacy API has ws.path, 13+ ws.request
        path = getattr(ws, "path", None) or ws.request.path
    url = urlsplit(path)
    if url.path == "/echo":
        async for msg in ws:
            await ws.send(msg)
    elif url.path == "/fanout":
        if parse_qs(url.query).get("role", ["sub"])[0] == "sub":
            SUBS.add(ws)
            try:
                await ws.wait_closed()
            finally:
                SUBS.discard(ws)
        else:
            async for msg in ws:
                websockets.broadcast(SUBS, msg)


async def main(port):
    async with websockets.serve(handler, "127.0.0.1", port, compression=None,
                                max_size=64 << 20, ping_interval=None):
        print(f"websockets listening on {port}", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 9001))
