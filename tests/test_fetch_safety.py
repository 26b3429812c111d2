"""The downloader's safety and politeness: no requests to non-public addresses (checked on every
connection, pinned against DNS rebinding), per-host limits, Retry-After, X-Robots-Tag opt-out.

Every "blocked" test proves nothing was sent: the loopback server's hit counts stay 0 and no
socket is connected (urllib3's and our connect paths are both watched)."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest
from pydantic import ValidationError

from alien_hotels.images.collect import collect_images
from alien_hotels.images.fetch import Downloader, FetchError, blocked_class
from alien_hotels.testing.imageserver import ImageServer, make_image
from conftest import compose, url_sample

STRICT = compose().images.updated(
    download=True,
    workers=8,
    connect_timeout_s=2.0,
    read_timeout_s=2.0,
    retries=1,
    backoff_s=0.01,
    max_redirects=3,
)
assert STRICT.allow_private_addresses is False  # the default

# One address of every class that must never be contacted.
BLOCKED = {
    "127.0.0.1": "loopback",
    "127.1.2.3": "loopback",
    "::1": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "172.31.255.254": "private",
    "192.168.1.1": "private",
    "169.254.169.254": "link-local",  # a cloud instance's credentials endpoint
    "fe80::1": "link-local",
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "::ffff:127.0.0.1": "loopback",  # IPv4-mapped IPv6 is judged as the IPv4 it reaches
    "::ffff:169.254.169.254": "link-local",
    "224.0.0.1": "multicast",
    "ff02::1": "multicast",
    "240.0.0.1": "private",  # reserved, listed among Python's private ranges
    "100.64.0.1": "not-global",  # shared address space (carrier-grade NAT)
    "fc00::1": "private",  # unique local
    "fd12:3456::1": "private",
}
PUBLIC = ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.fixture
def server():
    with ImageServer() as srv:
        yield srv


@pytest.fixture
def connects(monkeypatch):
    """Every (host, port) a socket was asked to connect to, by any code path."""
    seen: list = []
    real = socket.socket.connect

    def connect(self, address):
        seen.append(address)
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


def _resolve_as(monkeypatch, names: dict[str, list[str]]) -> list[str]:
    """Stub DNS: `names` answer with the given addresses (in turn, one list per lookup when a
    list of lists); everything else resolves as usual. Returns the names looked up."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        if host in names:
            asked.append(host)
            answers = names[host]
            ips = answers.pop(0) if isinstance(answers[0], list) else answers
            out = []
            for ip in ips:
                family = socket.AF_INET6 if ":" in ip else socket.AF_INET
                addr = (ip, port, 0, 0) if family == socket.AF_INET6 else (ip, port)
                out.append((family, socket.SOCK_STREAM, 6, "", addr))
            return out
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


@pytest.mark.parametrize("address", list(BLOCKED))
def test_every_non_public_address_class_is_blocked(address: str):
    assert blocked_class(address) == BLOCKED[address]


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str):
    assert blocked_class(address) is None


@pytest.mark.parametrize("address", list(BLOCKED))
def test_literal_ip_urls_are_refused_before_connecting(address: str, connects: list):
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(FetchError, match="blocked_address") as err:
        Downloader(STRICT).get(f"http://{host}:6379/latest/meta-data/")
    assert address in str(err.value)  # the detail names the address
    assert connects == []


def test_loopback_server_gets_no_request_by_any_spelling(server, monkeypatch, connects):
    _resolve_as(monkeypatch, {"images.example.com": ["93.184.215.14", "127.0.0.1"]})
    port = server.port
    urls = [
        f"http://127.0.0.1:{port}/good/1.jpg",
        f"http://0.0.0.0:{port}/good/1.jpg",  # Linux connects 0.0.0.0 to this host
        f"http://[::ffff:127.0.0.1]:{port}/good/1.jpg",
        f"http://localhost:{port}/good/1.jpg",
        f"http://2130706433:{port}/good/1.jpg",  # 127.0.0.1 as one decimal number
        # a public-looking name with one loopback answer among public ones: every address counts
        f"http://images.example.com:{port}/good/1.jpg",
        f"https://images.example.com:{port}/good/1.jpg",
    ]
    downloader = Downloader(STRICT)
    for url in urls:
        with pytest.raises(FetchError, match="blocked_address"):
            downloader.get(url)
    assert sum(server.hits.values()) == 0 and connects == []
    # The same server is reachable when private addresses are allowed: the test is not vacuous.
    allowed = Downloader(STRICT.updated(allow_private_addresses=True))
    assert allowed.get(urls[0]) == make_image(1)
    assert server.hits["/good/1.jpg"] == 1


def test_connects_to_the_address_that_was_checked(server, monkeypatch, connects):
    # DNS rebinding: first a public answer, then loopback. One lookup, and the connection goes
    # to the checked public address (unreachable here), never to the loopback server.
    asked = _resolve_as(monkeypatch, {"rebind.example.com": [["93.184.215.14"], ["127.0.0.1"]]})
    cfg = STRICT.updated(retries=0, connect_timeout_s=0.5)
    with pytest.raises(FetchError, match="timeout|connection_error"):
        Downloader(cfg).get(f"http://rebind.example.com:{server.port}/good/2.jpg")
    assert asked == ["rebind.example.com"]
    assert connects == [("93.184.215.14", server.port)]
    assert sum(server.hits.values()) == 0


def _trusted(srv: ImageServer) -> frozenset:
    return frozenset({("127.0.0.1", srv.port)})


def test_a_redirect_to_a_private_address_is_refused(server, monkeypatch):
    # `server` stands in for a public host: the test trusts its (address, port) alone, which the
    # config cannot do; a second loopback server is the private target.
    _resolve_as(monkeypatch, {"cdn.example.com": ["127.0.0.1"]})
    with ImageServer() as private:
        downloader = Downloader(STRICT, _trusted=_trusted(server))
        public = f"http://cdn.example.com:{server.port}"
        assert downloader.get(f"{public}/good/3.jpg") == make_image(3)  # reachable
        targets = [
            private.url("/good/4.jpg"),
            "http://169.254.169.254/latest/meta-data/iam/",
            f"http://[::1]:{private.port}/good/4.jpg",
            f"{public}/go/again?to={quote(private.url('/good/4.jpg'), safe='')}",  # two hops
        ]
        for n, target in enumerate(targets):
            with pytest.raises(FetchError, match="blocked_address"):
                downloader.get(f"{public}/go/{n}?to={quote(target, safe='')}")
        assert sum(private.hits.values()) == 0
        assert server.hits["/go/0"] == server.hits["/go/3"] == 1
        # A redirect to another scheme is refused too.
        with pytest.raises(FetchError, match="bad_url"):
            downloader.get(f"{public}/go/file?to={quote('file:///etc/passwd', safe='')}")


def test_a_redirect_loop_ends_as_a_failure_within_the_limit(server):
    downloader = Downloader(STRICT, _trusted=_trusted(server))
    with pytest.raises(FetchError, match="too_many_redirects"):
        downloader.get(server.url("/loop.jpg"))
    assert server.hits["/loop.jpg"] == STRICT.max_redirects + 1


def test_https_through_the_guard_verifies_the_host_name(tmp_path: Path, monkeypatch):
    from alien_hotels.testing.imageserver import self_signed_cert

    cert, key = self_signed_cert(tmp_path)  # valid for 127.0.0.1 only
    _resolve_as(monkeypatch, {"cdn.example.com": ["127.0.0.1"]})
    with ImageServer(tls=(cert, key)) as https:
        cfg = STRICT.updated(ca_bundle=str(cert), retries=0)
        downloader = Downloader(cfg, _trusted=_trusted(https))
        assert downloader.get(https.url("/good/21.jpg")) == make_image(21)
        # Connected to the checked 127.0.0.1, but the certificate is checked for the name.
        with pytest.raises(FetchError, match="tls_error"):
            downloader.get(f"https://cdn.example.com:{https.port}/good/21.jpg")
        assert https.hits["/good/21.jpg"] == 1


def test_blocked_urls_are_failure_rows_and_nothing_fetched_is_lost(server, tmp_path: Path):
    urls = [server.url("/good/1.jpg"), server.url("/good/2.jpg"), "http://10.0.0.7/x.jpg"]
    out = tmp_path / "images"
    # An earlier run (say, from an internal mirror) fetched the first image.
    allowed = STRICT.updated(allow_private_addresses=True)
    collect_images(url_sample(urls[:1]), allowed, None, out, progress=False)
    hits = sum(server.hits.values())

    manifest, metrics = collect_images(url_sample(urls), STRICT, None, out, progress=False)
    assert list(manifest["status"]) == ["ok", "failed", "failed"]
    assert list(manifest["reason"]) == ["", "blocked_address", "blocked_address"]
    assert metrics["ok_cached"] == 1 and metrics["failed_by_reason"] == {"blocked_address": 2}
    assert sum(server.hits.values()) == hits
    assert Path(manifest["path"][0]).is_file()


def test_config_keys_are_validated_by_name():
    for key, value in (
        ("per_host_workers", 0),
        ("max_retry_after_s", -1),
        ("allow_private_addresses", "maybe"),
    ):
        with pytest.raises(ValidationError, match=key):
            STRICT.updated(**{key: value})


# --- politeness -------------------------------------------------------------------------------

POLITE = STRICT.updated(allow_private_addresses=True, retries=2, max_retry_after_s=5.0)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_is_waited_for(server, status: int):
    start = time.monotonic()
    body = Downloader(POLITE).get(server.url(f"/busy/5.jpg?status={status}&retry_after=1"))
    assert body == make_image(5)
    assert time.monotonic() - start >= 0.95  # not the 0.01 s backoff
    assert server.hits["/busy/5.jpg"] == 2


def test_retry_after_as_an_http_date(server):
    start = time.monotonic()
    assert Downloader(POLITE).get(server.url("/busy/6.jpg?retry_after=date%2B2")) == make_image(6)
    assert time.monotonic() - start >= 0.9  # the date has one-second resolution
    assert server.hits["/busy/6.jpg"] == 2


def test_an_unreadable_retry_after_falls_back_to_the_backoff(server):
    assert Downloader(POLITE).get(server.url("/busy/4.jpg?retry_after=soon")) == make_image(4)
    assert server.hits["/busy/4.jpg"] == 2


@pytest.mark.parametrize("status", [429, 503])
def test_a_retry_after_over_the_bound_is_not_waited_for(server, status: int):
    start = time.monotonic()
    with pytest.raises(FetchError, match=f"http_{status}"):
        Downloader(POLITE).get(server.url(f"/busy/7.jpg?status={status}&retry_after=3600"))
    assert time.monotonic() - start < 2
    assert server.hits["/busy/7.jpg"] == 1  # gave up at once, no hammering


@pytest.mark.parametrize(
    "robots", ["noai", "noimageai", "noindex, noai", "NoImageAI", "otherbot: noai"]
)
def test_x_robots_tag_opt_out_is_respected(server, tmp_path: Path, robots: str):
    url = server.url(f"/good/8.jpg?robots={quote(robots)}")
    out = tmp_path / "images"
    manifest, metrics = collect_images(url_sample([url]), POLITE, None, out, progress=False)
    assert list(manifest["reason"]) == ["opted_out"] and metrics["failed"] == 1
    assert not [p for p in out.rglob("*") if p.is_file()]  # nothing of it kept
    assert Downloader(POLITE.updated(respect_opt_out=False)).get(url) == make_image(8)


def test_other_robots_directives_do_not_opt_out(server):
    url = server.url(f"/good/9.jpg?robots={quote('noindex, nofollow')}")
    assert Downloader(POLITE).get(url) == make_image(9)


def test_per_host_workers_bounds_concurrent_requests_to_one_host(server):
    urls = [server.url(f"/good/{i}.jpg?delay=0.3") for i in range(8)]
    for per_host, expected in ((2, 2), (8, 8)):
        server.max_in_flight = 0
        downloader = Downloader(POLITE.updated(per_host_workers=per_host))
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(downloader.get, urls))
        assert server.max_in_flight == expected


def test_the_user_agent_names_the_project(server):
    assert Downloader(POLITE).get(server.url("/good/2.jpg")) == make_image(2)
    assert server.user_agents == {POLITE.user_agent} and "alien-hotels" in POLITE.user_agent
    custom = POLITE.updated(user_agent="alien-hotels/0.1 (mirror test; ops@example.com)")
    Downloader(custom).get(server.url("/good/2.jpg"))
    assert server.user_agents == {POLITE.user_agent, custom.user_agent}
