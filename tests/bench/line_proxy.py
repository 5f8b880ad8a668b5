"""A minimal stdio proxy, the floor that any MCP proxy written in Python pays.

`make bench` measures it between the client and the fixture server, beside the gateway.
It starts the server named on its command line and copies JSON-RPC lines both ways,
parsing each one as JSON, as any proxy that looks at a message must. It has no MCP
session, no validation and no policy, so it shows what the extra process and pipe hops
cost on their own.

Usage: python line_proxy.py SERVER-COMMAND [ARGS...]
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence

# Maximum line length; the fixture's largest result is a few megabytes.
LINE_LIMIT_BYTES = 64 * 1024 * 1024


async def proxy(command: Sequence[str]) -> int:
    """Run the server and copy lines between it and this process's stdin and stdout until either side ends."""
    server = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=LINE_LIMIT_BYTES
    )
    assert server.stdin is not None and server.stdout is not None
    loop = asyncio.get_running_loop()
    client_reader = asyncio.StreamReader(limit=LINE_LIMIT_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(client_reader), sys.stdin)
    client_writer, _ = await loop.connect_write_pipe(asyncio.Protocol, sys.stdout)

    async def to_server() -> None:
        while line := await client_reader.readline():
            json.loads(line)
            server.stdin.write(line)
        server.stdin.close()

    async def to_client() -> None:
        while line := await server.stdout.readline():
            json.loads(line)
            client_writer.write(line)

    await asyncio.gather(to_server(), to_client())
    return await server.wait()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(asyncio.run(proxy(sys.argv[1:])))
