#!/usr/bin/env python3
"""A small TCP proxy that adds latency (netem is not in this kernel).

    delay-proxy.py LISTEN_HOST:PORT TARGET_HOST:PORT ONE_WAY_MS [READY_FILE]

Every byte is held back ONE_WAY_MS in each direction (so a round trip through the proxy costs
2 * ONE_WAY_MS more), and a new connection reaches the target ONE_WAY_MS after it was accepted
(the SYN's trip). Chunks keep their order; a bounded queue per direction gives backpressure, so
the rate limit behind the proxy (tc tbf) still decides throughput. Used by scripts/bench.sh.
When READY_FILE is given, the listening port is written to it once the socket is bound.
"""
import asyncio
import os
import sys
import time

CHUNK = 256 * 1024
QUEUE = 256  # chunks in flight per direction (64 MiB at most)


async def pump(reader, writer, delay):
    q = asyncio.Queue(QUEUE)

    async def rx():
        try:
            while True:
                data = await reader.read(CHUNK)
                await q.put((time.monotonic() + delay, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            await q.put((time.monotonic(), b""))

    async def tx():
        try:
            while True:
                due, data = await q.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return

    await asyncio.gather(rx(), tx())


async def handle(cr, cw, target, delay):
    await asyncio.sleep(delay)
    host, port = target
    try:
        ur, uw = await asyncio.open_connection(host, port)
    except OSError as e:
        print(f"delay-proxy: connect {host}:{port}: {e}", file=sys.stderr)
        cw.close()
        return
    try:
        await asyncio.gather(pump(cr, uw, delay), pump(ur, cw, delay))
    finally:
        for w in (cw, uw):
            try:
                w.close()
            except Exception:
                pass


def split(hp):
    h, p = hp.rsplit(":", 1)
    return h, int(p)


async def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    lh, lp = split(sys.argv[1])
    target = split(sys.argv[2])
    delay = float(sys.argv[3]) / 1000.0
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, target, delay), lh, lp, reuse_address=True
    )
    port = server.sockets[0].getsockname()[1]
    if len(sys.argv) == 5:
        tmp = sys.argv[4] + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.rename(tmp, sys.argv[4])
    print(f"delay-proxy: {lh}:{port} -> {target[0]}:{target[1]}, +{sys.argv[3]} ms each way",
          file=sys.stderr)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
