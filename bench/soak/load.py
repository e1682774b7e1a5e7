#!/usr/bin/python3
"""Connection load for the soak run (bench/soak/soak.py), one process per side.

    load.py server PORT
        Echo server on [::]:PORT; prints "listening" once.
    load.py client HOST PORT CONNS SECONDS RAMP_PER_S LIFE_MIN LIFE_MAX PING_EVERY
        Holds CONNS connections open at once for SECONDS. Each one makes a round trip when it
        opens and every ~PING_EVERY seconds, lives LIFE_MIN..LIFE_MAX seconds (uniform), then
        closes and its slot opens a new one (churn). Connections open at RAMP_PER_S at first.
        Prints a JSON line of counters every second and a final one with "done": true.

Every loop ends by SECONDS (plus at most the 10 s I/O timeout); nothing here retries without a
pause. Both sides raise their descriptor limit to the hard limit.
"""

import asyncio
import collections
import json
import random
import resource
import socket
import sys
import time

PING = b"soak-ping-0123456789abcdef\n"
IO_TIMEOUT = 10


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def serve(port):
    async def echo(reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::", port))
    sock.listen(4096)
    server = await asyncio.start_server(echo, sock=sock, backlog=4096)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


class Stats:
    def __init__(self):
        self.open = 0
        self.opened = 0
        self.closed = 0       # closed by us at the end of their life
        self.connect_failed = 0
        self.broken = 0       # failed after opening (reset, timeout, short echo)
        self.round_trips = 0
        self.errors = collections.Counter()

    def line(self, **extra):
        return json.dumps(dict(t=time.time(), open=self.open, opened=self.opened,
                               closed=self.closed, connect_failed=self.connect_failed,
                               broken=self.broken, round_trips=self.round_trips,
                               errors=dict(self.errors), **extra))


async def client(host, port, conns, seconds, ramp, life_min, life_max, ping_every):
    stats = Stats()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def round_trip(reader, writer):
        writer.write(PING)
        await writer.drain()
        got = await asyncio.wait_for(reader.readexactly(len(PING)), IO_TIMEOUT)
        if got != PING:
            raise ValueError("echo differs")
        stats.round_trips += 1

    async def slot(index):
        await asyncio.sleep(index / ramp)
        while loop.time() < deadline:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), IO_TIMEOUT)
            except (OSError, asyncio.TimeoutError) as e:
                stats.connect_failed += 1
                stats.errors[type(e).__name__] += 1
                await asyncio.sleep(0.5 + random.random())
                continue
            stats.open += 1
            stats.opened += 1
            end = min(deadline, loop.time() + random.uniform(life_min, life_max))
            try:
                await round_trip(reader, writer)
                while True:
                    wait = min(ping_every * random.uniform(0.5, 1.5), end - loop.time())
                    if wait <= 0:
                        break
                    await asyncio.sleep(wait)
                    if loop.time() >= end:
                        break
                    await round_trip(reader, writer)
                stats.closed += 1
            except (OSError, ValueError, asyncio.TimeoutError,
                    asyncio.IncompleteReadError) as e:
                stats.broken += 1
                stats.errors[type(e).__name__] += 1
                await asyncio.sleep(0.5 + random.random())
            finally:
                stats.open -= 1
                writer.close()

    async def report():
        while loop.time() < deadline:
            print(stats.line(), flush=True)
            await asyncio.sleep(1)

    reporter = asyncio.ensure_future(report())
    await asyncio.gather(*(slot(i) for i in range(conns)))
    reporter.cancel()
    print(stats.line(done=True), flush=True)


def main():
    limit = raise_nofile()
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "server" and len(sys.argv) == 3:
        asyncio.run(serve(int(sys.argv[2])))
    elif mode == "client" and len(sys.argv) == 10:
        host, port = sys.argv[2], int(sys.argv[3])
        conns, seconds = int(sys.argv[4]), float(sys.argv[5])
        ramp, life_min, life_max, ping = (float(x) for x in sys.argv[6:10])
        if conns + 64 > limit:
            sys.exit(f"load.py: {conns} connections do not fit the descriptor limit {limit}")
        asyncio.run(client(host, port, conns, seconds, ramp, life_min, life_max, ping))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
