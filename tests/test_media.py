"""Images fetched for upstreams that need them inline, under the SSRF rules."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Server, chat, start_server, stop_server
from tests.netutil import serve_in_thread
from tests.schemas import check_completion, check_error
from tests.upstream import FakeUpstream

ALLOWED_HOST = "127.0.0.5"  # the test image server; the relay allows exactly this address
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg=="
)


class ImageServer:
    def __init__(self) -> None:
        self.port = serve_in_thread(self._handle, ALLOWED_HOST)
        self.url = f"http://{ALLOWED_HOST}:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        path = head.split(" ")[1]

        def send(status: str, kind: str, body: bytes, extra: str = "") -> None:
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: "
                f"{len(body)}\r\nConnection: close\r\n{extra}\r\n".encode()
                + body
            )

        if path == "/cat.png":
            send("200 OK", "image/png", PNG)
        elif path == "/big.png":
            send("200 OK", "image/png", b"\x89PNG" + b"0" * 300_000)
        elif path == "/page.html":
            send("200 OK", "text/html", b"<html></html>")
        elif path == "/missing.png":
            send("404 Not Found", "text/plain", b"no")
        elif path == "/slow.png":
            await asyncio.sleep(5)
            send("200 OK", "image/png", PNG)
        elif path.startswith("/to/"):
            target = path[len("/to/") :].replace("|", "/")
            send("302 Found", "text/plain", b"", f"Location: {target}\r\n")
        await writer.drain()
        writer.close()


@pytest.fixture(scope="module")
def images() -> ImageServer:
    return ImageServer()


@pytest.fixture(scope="module")
def media_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, FakeUpstream]]:
    upstream = FakeUpstream().start()
    channels = [
        {
            "name": "inline",
            "flavor": "llamacpp",
            "base_url": upstream.url,
            "keys": ["ok:inline"],
            "models": ["inline-model"],
        },
        {
            "name": "passthrough",
            "flavor": "relay",
            "base_url": upstream.url,
            "keys": ["ok:pass"],
            "models": ["url-model"],
        },
    ]
    config = {
        "channels": channels,
        "media_fetch_allow": [f"{ALLOWED_HOST}/32"],
        "media_max_bytes": 100_000,
        "media_timeout_seconds": 1.0,
    }
    srv = start_server(tmp_path_factory.mktemp("media"), extra_config=config)
    yield srv, upstream
    stop_server(srv)


def post(srv: Server, url: str, model: str = "inline-model") -> httpx.Response:
    body = chat(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
        model=model,
    )
    return httpx.post(
        srv.url + "/v1/chat/completions",
        json=body,
        timeout=30,
        headers={"Authorization": f"Bearer {srv.admin_key}"},
    )


def sent_image(upstream: FakeUpstream, key: str) -> str:
    return str(upstream.bodies(key)[-1]["messages"][0]["content"][1]["image_url"]["url"])


@pytest.mark.parametrize("path", ["/cat.png", "/to/|cat.png"])
def test_image_urls_become_data_uris(
    media_relay: tuple[Server, FakeUpstream], images: ImageServer, path: str
) -> None:
    srv, upstream = media_relay
    response = post(srv, images.url + path)
    assert response.status_code == 200, response.text
    check_completion(response.json())
    assert (
        sent_image(upstream, "ok:inline")
        == "data:image/png;base64," + base64.b64encode(PNG).decode()
    )


def test_urls_pass_through_to_upstreams_that_fetch_themselves(
    media_relay: tuple[Server, FakeUpstream],
) -> None:
    srv, upstream = media_relay
    assert post(srv, "http://127.0.0.1/private.png", model="url-model").status_code == 200
    assert sent_image(upstream, "ok:pass") == "http://127.0.0.1/private.png"


REFUSED = [
    ("loopback v4", "http://127.0.0.1/a.png"),
    ("loopback v6", "http://[::1]/a.png"),
    ("private 10/8", "http://10.1.2.3/a.png"),
    ("private 192.168/16", "http://192.168.0.1/a.png"),
    ("private 172.16/12", "http://172.16.5.4/a.png"),
    ("cloud metadata", "http://169.254.169.254/latest/meta-data/"),
    ("cloud metadata v6", "http://[fd00:ec2::254]/latest/"),
    ("link-local", "http://169.254.1.1/a.png"),
    ("unspecified", "http://0.0.0.0/a.png"),
    ("v4-mapped loopback", "http://[::ffff:127.0.0.1]/a.png"),
    ("decimal loopback", "http://2130706433/a.png"),
    ("name resolving to loopback", "http://localhost/a.png"),
    ("unique-local v6", "http://[fc00::1]/a.png"),
    ("credentials in URL", "https://user:pw@example.com/a.png"),
    ("unresolvable name", "http://no-such-host.invalid/a.png"),
]


@pytest.mark.parametrize("url", [u for _, u in REFUSED], ids=[n for n, _ in REFUSED])
def test_ssrf_targets_are_refused(media_relay: tuple[Server, FakeUpstream], url: str) -> None:
    response = post(media_relay[0], url)
    assert response.status_code == 400, response.text
    error = check_error(response.json())
    assert (error["code"], error["param"]) == ("image_fetch_refused", "messages[0].content[1]")
    assert "cannot be fetched" in error["message"]


@pytest.mark.parametrize(
    ("name", "path", "words"),
    [
        ("redirect to loopback", "/to/http:||127.0.0.1:9|a.png", "non-public"),
        ("oversized", "/big.png", "larger than"),
        ("wrong content type", "/page.html", "content type"),
        ("not found", "/missing.png", "404"),
        ("too slow", "/slow.png", "within"),
    ],
)
def test_bad_downloads_are_refused(
    media_relay: tuple[Server, FakeUpstream], images: ImageServer, name: str, path: str, words: str
) -> None:
    response = post(media_relay[0], images.url + path)
    assert response.status_code == 400, (name, response.text)
    assert words in check_error(response.json())["message"], name


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "gopher://example.com/a",
        "javascript:alert(1)",
    ],
)
def test_other_schemes_are_refused_at_parse_time(
    media_relay: tuple[Server, FakeUpstream], url: str
) -> None:
    response = post(media_relay[0], url, model="url-model")
    assert response.status_code == 400
    error: dict[str, Any] = check_error(response.json())
    assert error["param"] == "messages[0].content[1].image_url.url"
