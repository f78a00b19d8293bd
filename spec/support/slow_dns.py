"""A nameserver on loopback for the DNS specs (switchboard --resolver): UDP,
one asyncio process. It prints one line "port N" and serves until killed.

  slow.sb.test   A 127.0.0.1 after --delay seconds (default 1.5); AAAA: none, as late
  fast.sb.test   A 127.0.0.1 at once; AAAA: none
  anything else  NXDOMAIN at once"""
import asyncio
import struct
import sys

DELAY = float(sys.argv[sys.argv.index("--delay") + 1]) if "--delay" in sys.argv else 1.5


def parse_question(data):
    """(id, flags, qname, qtype, end of the question) of a query."""
    qid, flags = struct.unpack("!HH", data[:4])
    i, labels = 12, []
    while data[i]:
        n = data[i]
        labels.append(data[i + 1:i + 1 + n].decode("ascii", "replace").lower())
        i += 1 + n
    qtype = struct.unpack("!H", data[i + 1:i + 3])[0]
    return qid, flags, ".".join(labels), qtype, i + 5


def answer(data, rcode, addr=None):
    qid, flags, _, qtype, end = parse_question(data)
    rd = flags & 0x0100
    an = 1 if addr and qtype == 1 else 0
    head = struct.pack("!HHHHHH", qid, 0x8000 | 0x0400 | rd | 0x0080 | rcode, 1, an, 0, 0)
    out = head + data[12:end]
    if an:
        out += struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + bytes(addr)
    return out


class Dns(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.t = transport

    def datagram_received(self, data, peer):
        try:
            _, _, name, _, _ = parse_question(data)
        except (IndexError, struct.error):
            return
        loop = asyncio.get_running_loop()
        if name == "slow.sb.test":
            loop.call_later(DELAY, self.t.sendto, answer(data, 0, (127, 0, 0, 1)), peer)
        elif name == "fast.sb.test":
            self.t.sendto(answer(data, 0, (127, 0, 0, 1)), peer)
        else:
            self.t.sendto(answer(data, 3), peer)


async def main():
    loop = asyncio.get_running_loop()
    t, _ = await loop.create_datagram_endpoint(Dns, local_addr=("127.0.0.1", 0))
    print("port", t.get_extra_info("sockname")[1], flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
