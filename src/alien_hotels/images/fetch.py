"""Downloading one image: `Downloader.get(url)` returns its body or raises `FetchError(reason)`.

Timeouts, a wall-time deadline per body, retries with backoff (urllib3's `Retry`, bounded
`Retry-After`), redirects followed one hop at a time, size limits, the address guard (no
loopback, private or link-local addresses unless `images.allow_private_addresses`), per-host
limits and the `X-Robots-Tag` opt-out. Only the images stage imports this module.
Contract and reasons: docs/images.md ("Downloading", "Safety", "Politeness"); design and
measurements: docs/design/images.md.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
import urllib.request
from urllib.parse import unquote, urljoin, urlsplit

from alien_hotels.images.config import ImagesConfig

RETRY_STATUSES = (429, 500, 502, 503, 504)
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
# Content types that say nothing (S3 and CDNs send them for images too); the bytes decide.
GENERIC_TYPES = {"application/octet-stream", "binary/octet-stream"}


class FetchError(Exception):
    """One image could not be had; `reason` is the short code recorded in the manifest."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# X-Robots-Tag directives by which a site opts its images out of AI use (img2dataset's defaults).
OPT_OUT_DIRECTIVES = {"noai", "noimageai"}


class BlockedAddress(Exception):  # not an OSError, so urllib3 never retries it
    """The host resolves to an address this downloader does not contact."""


def blocked_class(address: str) -> str | None:
    """Why `address` may not be contacted (`loopback`, `private`, ...), or None if it is public.

    IPv4-mapped IPv6 (`::ffff:127.0.0.1`) is judged as the IPv4 address it reaches.
    """
    ip = ipaddress.ip_address(address.split("%")[0])  # a scoped fe80::1%eth0 is link-local
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for name, hit in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
    ):
        if hit:
            return name
    # The rest that is not globally routable: 100.64/10 (carrier-grade NAT), ...
    return None if ip.is_global else "not-global"


class AddressGuard:
    """Resolves a host once and hands out only addresses that passed the check.

    The connection is then made to those very addresses, so a second DNS answer (rebinding)
    cannot swap a public address for a private one between check and connect. `trusted`
    (ip, port) pairs skip the check: for tests that need a reachable loopback "public" host;
    the config has no way to set it.
    """

    def __init__(self, trusted: frozenset[tuple[str, int]] = frozenset()) -> None:
        self.trusted = trusted

    def addresses(self, host: str, port: int) -> list[tuple]:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        for *_, sockaddr in infos:
            ip = sockaddr[0]
            why = None if (ip, port) in self.trusted else blocked_class(ip)
            if why is not None:  # one bad address refuses the host: it could be the one used
                raise BlockedAddress(f"{host} -> {ip} ({why})")
        return infos


def _guarded_pool(pool_cls: type, guard: AddressGuard) -> type:
    """`pool_cls` whose connections connect only through `guard` (TLS still on the host name:
    `HTTPSConnection.connect` wraps this socket with SNI and certificate checks for `self.host`).
    """
    from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
    from urllib3.util.connection import _set_socket_options
    from urllib3.util.timeout import _DEFAULT_TIMEOUT

    base = pool_cls.ConnectionCls

    def _new_conn(self) -> socket.socket:
        # urllib3's own `_new_conn` and `create_connection`, but on the guard's addresses.
        try:
            infos = guard.addresses(self._dns_host.strip("[]"), self.port)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        error: OSError | None = None
        for family, socktype, proto, _name, sockaddr in infos:
            sock = socket.socket(family, socktype, proto)
            try:
                _set_socket_options(sock, self.socket_options)
                if self.timeout is not _DEFAULT_TIMEOUT:
                    sock.settimeout(self.timeout)
                if self.source_address:
                    sock.bind(self.source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
        if isinstance(error, TimeoutError):
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            ) from error
        raise NewConnectionError(self, f"Failed to establish a new connection: {error}")

    conn_cls = type(f"Guarded{base.__name__}", (base,), {"_new_conn": _new_conn})
    return type(f"Guarded{pool_cls.__name__}", (pool_cls,), {"ConnectionCls": conn_cls})


def _bounded_retry(max_retry_after_s: float) -> type:
    """urllib3's `Retry`, but a `Retry-After` longer than the bound ends the retries at once (the
    status is recorded) instead of blocking a worker for as long as the server asks."""
    from urllib3.exceptions import InvalidHeader, MaxRetryError, ResponseError
    from urllib3.util.retry import Retry

    class BoundedRetry(Retry):
        def parse_retry_after(self, retry_after: str) -> float | None:
            try:
                return super().parse_retry_after(retry_after)
            except InvalidHeader:  # garbage: the usual backoff, not a failure of its own
                return None

        def increment(self, method=None, url=None, response=None, error=None, **kwargs):
            wait = self.get_retry_after(response) if response is not None else None
            if wait is not None and wait > max_retry_after_s:
                raise MaxRetryError(
                    kwargs.get("_pool"), url, ResponseError(f"Retry-After {wait:.0f} s")
                )
            return super().increment(method, url, response, error, **kwargs)

    return BoundedRetry


def opted_out(robots_tag: str) -> bool:
    """Whether an `X-Robots-Tag` value says no AI use: `noai`, `noimageai`, also per bot
    (`somebot: noai`, honoured whichever bot it names) and in a comma-separated list."""
    for directive in robots_tag.lower().replace(":", ",").split(","):
        if directive.strip() in OPT_OUT_DIRECTIVES:
            return True
    return False


def _env_proxies(direct) -> dict:
    """urllib3 proxy managers for the `http`/`https` proxies the environment names, with the
    same TLS settings and headers as the direct pools (proxy credentials from the proxy URL)."""
    import urllib3

    managers = {}
    for scheme, proxy in urllib.request.getproxies().items():
        if scheme in ("http", "https") and proxy:
            auth = urlsplit(proxy)
            headers = None
            if auth.username:
                creds = f"{unquote(auth.username)}:{unquote(auth.password or '')}"
                headers = urllib3.make_headers(proxy_basic_auth=creds)
            managers[scheme] = urllib3.ProxyManager(
                proxy,
                num_pools=64,  # hosts whose connections are kept, as for the direct pools
                headers=direct.headers,
                proxy_headers=headers,
                **direct.connection_pool_kw,
            )
    return managers


class _Deadlines:
    """One thread per process that shuts a socket down when the wall-time deadline of the body
    being read from it passes, so a read blocked on it returns at once. A socket timeout bounds
    each receive, not their sum, and one `read1` may loop over many receives inside http.client
    and urllib3 (a chunk-size line, a compressed body that decodes to nothing) where no deadline
    check of ours runs."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[int, tuple[float, socket.socket]] = {}
        self._count = 0
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watch(self, sock: socket.socket | None, deadline: float):
        if sock is None:  # nothing to shut down (no live connection): reads are checked anyway
            yield
            return
        with self._cond:
            key = self._count = self._count + 1
            self._due[key] = (deadline, sock)
            if self._thread is None or not self._thread.is_alive():  # first use, or forked
                self._thread = threading.Thread(
                    target=self._run, name="images-deadlines", daemon=True
                )
                self._thread.start()
            if deadline <= min(due for due, _ in self._due.values()):  # sooner than its wake-up
                self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._due.pop(key, None)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for key, (deadline, sock) in list(self._due.items()):
                    if deadline <= now:
                        del self._due[key]
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
                soonest = min((deadline for deadline, _ in self._due.values()), default=None)
                self._cond.wait(None if soonest is None else max(0.0, soonest - now))


_DEADLINES = _Deadlines()


class Downloader:
    """HTTP(S) GETs with retries, timeouts and limits, on one urllib3 `PoolManager` shared by the
    threads (keep-alive connections per host, at most `workers` kept per host).

    urllib3 directly, not `requests`: the same connection pools, retries and TLS, at half the
    CPU per request (no per-request environment, cookie, hook and auth processing). Redirects
    are followed here, one hop at a time, each a new request through the same checks.
    `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY` from the environment are used only when the address
    check is off: through a proxy the address is not ours to check. Never `.netrc` credentials.

    Unless `allow_private_addresses`, every connection (first request, redirects, retries) goes
    through an `AddressGuard`. At most `per_host_workers` requests run at once per host name.
    """

    def __init__(
        self, cfg: ImagesConfig, _trusted: frozenset[tuple[str, int]] = frozenset()
    ) -> None:
        import certifi
        import urllib3

        self.cfg = cfg
        self.guard = None if cfg.allow_private_addresses else AddressGuard(_trusted)
        self._hosts: dict[str, threading.BoundedSemaphore] = {}
        self._hosts_lock = threading.Lock()
        self._retry = _bounded_retry(cfg.max_retry_after_s)(
            total=cfg.retries,
            connect=cfg.retries,
            read=cfg.retries,
            status=cfg.retries,
            other=0,
            redirect=False,  # a 3xx is returned and followed in `_get`
            allowed_methods=frozenset({"GET"}),
            status_forcelist=RETRY_STATUSES,
            backoff_factor=cfg.backoff_s,
            backoff_max=30.0,
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        self._timeout = urllib3.Timeout(connect=cfg.connect_timeout_s, read=cfg.read_timeout_s)
        self._pools = urllib3.PoolManager(
            num_pools=64,
            maxsize=cfg.workers,  # never more requests than workers at once, to any host
            headers={"User-Agent": cfg.user_agent},
            # Always verified: against ca_bundle when one is named, else certifi's roots.
            cert_reqs="CERT_REQUIRED",
            ca_certs=cfg.ca_bundle or certifi.where(),
        )
        self._proxies: dict[str, urllib3.ProxyManager] = {}
        if self.guard is None:
            self._proxies = _env_proxies(self._pools)
        else:
            self._pools.pool_classes_by_scheme = {
                scheme: _guarded_pool(cls, self.guard)
                for scheme, cls in self._pools.pool_classes_by_scheme.items()
            }

    def _host_slot(self, host: str) -> threading.BoundedSemaphore:
        with self._hosts_lock:
            slot = self._hosts.get(host)
            if slot is None:
                slot = self._hosts[host] = threading.BoundedSemaphore(self.cfg.per_host_workers)
            return slot

    def get(self, url: str) -> bytes:
        """The body of `url`, or `FetchError` with the reason."""
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https"):
            raise FetchError("bad_url", url)
        # Per host name of the URL asked for (a redirect elsewhere keeps this slot).
        with self._host_slot((parts.hostname or "").lower()):
            return self._get(url)

    def _manager(self, url: str):
        """The pool manager for `url`: a proxy's when the environment names one for it."""
        if self._proxies:
            parts = urlsplit(url)
            proxy = self._proxies.get(parts.scheme.lower())
            if proxy is not None and not urllib.request.proxy_bypass(parts.hostname or ""):
                return proxy
        return self._pools

    def _get(self, url: str) -> bytes:
        from urllib3.exceptions import (
            DecodeError,
            HTTPError,
            InvalidHeader,
            LocationValueError,
            MaxRetryError,
            ProtocolError,
            ResponseError,
            SSLError,
            TimeoutError,
        )

        try:
            for hop in range(self.cfg.max_redirects + 1):
                response = self._manager(url).urlopen(
                    "GET",
                    url,
                    redirect=False,
                    retries=self._retry,
                    timeout=self._timeout,
                    preload_content=False,
                )
                location = response.get_redirect_location()
                if response.status not in REDIRECT_STATUSES or not location:
                    return self._body(response)
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) <= 1 << 16:
                    # A small body: read (within the body's deadline) to keep the connection.
                    self._read(response, 1 << 16)
                else:
                    response.close()  # maybe endless: not read, the connection dropped
                response.release_conn()
                if hop == self.cfg.max_redirects:
                    raise FetchError("too_many_redirects")
                url = urljoin(url, location)
                if urlsplit(url).scheme.lower() not in ("http", "https"):
                    raise FetchError("bad_url", f"redirect to {url}")
            raise AssertionError("unreachable")  # pragma: no cover
        except FetchError:
            raise
        except BlockedAddress as exc:
            raise FetchError("blocked_address", str(exc)) from None
        except MaxRetryError as exc:
            reason = exc.reason
            if isinstance(reason, SSLError):
                raise FetchError("tls_error", str(reason)[:200]) from None
            if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                raise FetchError("timeout") from None
            if isinstance(reason, ResponseError):
                raise FetchError("retries_exhausted") from None
            raise FetchError("connection_error", str(reason)[:200]) from None
        except SSLError as exc:
            raise FetchError("tls_error", str(exc)[:200]) from None
        except TimeoutError:
            raise FetchError("timeout") from None
        except (ProtocolError, DecodeError):  # the connection ended before the body did
            raise FetchError("incomplete_body") from None
        except InvalidHeader as exc:  # e.g. two different Content-Lengths: the answer is bad
            raise FetchError("bad_response", str(exc)[:200]) from None
        except (LocationValueError, ValueError, UnicodeError) as exc:  # invalid URLs
            raise FetchError("bad_url", str(exc)[:200]) from None
        except HTTPError as exc:  # anything else urllib3 rejects comes from the answer
            raise FetchError("bad_response", str(exc)[:200]) from None

    def _body(self, response) -> bytes:
        """Check the answer's status and headers, then read the body within the limits."""
        cfg = self.cfg
        complete = False
        try:
            if response.status != 200:
                raise FetchError(f"http_{response.status}")
            robots = response.headers.get("X-Robots-Tag", "")
            if cfg.respect_opt_out and opted_out(robots):
                raise FetchError("opted_out", robots)  # the body is not even read
            ctype = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if ctype and not ctype.startswith("image/") and ctype not in GENERIC_TYPES:
                raise FetchError("not_image_content_type", ctype)
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > cfg.max_bytes:
                raise FetchError("too_large", f"{declared} bytes declared")
            body = self._read(response, cfg.max_bytes)
            complete = True
            return body
        finally:
            if not complete:  # unread or half-read: the connection cannot be reused
                response.close()
            response.release_conn()

    def _read(self, response, limit: int) -> bytes:
        """The (decoded) body, at most `limit` bytes (`too_large`), within `body_timeout_s` of
        wall time however it trickles (`slow_body`): the deadline is checked after every read
        (`read1` returns what has arrived, not a full chunk), each read's socket timeout is the
        time left, and `_DEADLINES` shuts the socket down at the deadline in any case."""
        from urllib3.exceptions import HTTPError

        timeout = self.cfg.body_timeout_s
        deadline = time.monotonic() + timeout
        sock = getattr(response.connection, "sock", None)
        body = bytearray()
        slow = f"body not read within images.body_timeout_s ({timeout:g} s)"
        with _DEADLINES.watch(sock, deadline):
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FetchError("slow_body", slow)
                if sock is not None:
                    sock.settimeout(min(self.cfg.read_timeout_s, left))
                try:
                    chunk = response.read1(1 << 16, decode_content=True)
                except (HTTPError, OSError):
                    if time.monotonic() >= deadline - 0.01:  # cut at the deadline
                        raise FetchError("slow_body", slow) from None
                    raise
                # A read cut by `_DEADLINES` may also end "normally" (a chunked body reads a
                # cut chunk-size line as its end): past the deadline, nothing read counts.
                if time.monotonic() >= deadline - 0.01:
                    raise FetchError("slow_body", slow)
                if not chunk:
                    return bytes(body)
                body += chunk
                if len(body) > limit:
                    raise FetchError("too_large", f"over {limit} bytes")
