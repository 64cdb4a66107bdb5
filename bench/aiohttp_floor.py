"""The floor a Python relay reaches here: check a key, forward, relay the body as it comes.

python -m bench.aiohttp_floor PORT UPSTREAM_URL KEY
"""

import sys

import aiohttp
from aiohttp import web

PORT, UPSTREAM, KEY = int(sys.argv[1]), sys.argv[2], sys.argv[3]


async def relay(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Authorization") != f"Bearer {KEY}":
        return web.json_response({"error": {"message": "bad key"}}, status=401)
    body = await request.read()
    session: aiohttp.ClientSession = request.app["session"]
    async with session.post(
        UPSTREAM, data=body, headers={"Content-Type": "application/json"}
    ) as upstream:
        response = web.StreamResponse(
            status=upstream.status,
            headers={"Content-Type": upstream.headers.get("Content-Type", "application/json")},
        )
        await response.prepare(request)
        async for part in upstream.content.iter_any():
            await response.write(part)
        await response.write_eof()
        return response


async def start(app: web.Application) -> None:
    app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))


async def stop(app: web.Application) -> None:
    await app["session"].close()


app = web.Application()
app.router.add_post("/v1/chat/completions", relay)
app.on_startup.append(start)
app.on_cleanup.append(stop)
web.run_app(app, host="127.0.0.1", port=PORT, print=None, access_log=None)
