# An aiohttp client for tests/tests/transparent_clients.rs, run by Debian's /usr/bin/python3
# (python3-aiohttp) inside the sandbox with aiohttp's default settings: a plain
# ClientSession(), so trust_env=False and the proxy variables are ignored, as in most
# programs that use it.
#
#   transparent_clients_aiohttp.py URL
#
# Prints `status=N` and the body; an error ends it with a traceback (exit 1).

import asyncio
import sys

import aiohttp


async def main(url):
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            body = await response.text()
            sys.stdout.write(f"status={response.status}\n{body}")


asyncio.run(main(sys.argv[1]))
