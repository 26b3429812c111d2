"""Stage 1b, `images`: put every sampled image under `data/images/`, or say why not.

For each row of the sample table the image is taken, in this order, from

1. `data/images/` itself, when an earlier run already put it there (the stage is resumable: DVC
   keeps this output in place between runs, `persist: true`);
2. the dataset's local tree `data.images_dir/<chain_id>/<hotel_id>/<source>/<image_id>.<ext>`;
3. its URL, only when `images.download` is on (it is off for the bundled sample, so the default
   pipeline never touches the network).

Downloads run on a bounded thread pool; each has connect/read timeouts, a wall-time deadline
for its body however slowly it trickles, retries with exponential backoff on connection errors
and 429/5xx answers (urllib3's `Retry`), a redirect limit and a size limit. Addresses that are
not public (loopback, private, link-local such as a cloud's metadata endpoint, ...) are refused
before connecting unless `images.allow_private_addresses` is on: each host is resolved once,
every address checked, and the connection made to the checked address (docs/images.md,
"Safety"). Politeness: at most
`images.per_host_workers` requests at a time per host, `Retry-After` on 429/503 honoured up to
`images.max_retry_after_s`, `X-Robots-Tag: noai`/`noimageai` answers recorded as `opted_out`.
TLS certificates are always verified for https URLs (there is no
switch to turn that off; `images.ca_bundle` may name extra trusted roots); plain http URLs, which
the dataset has, are fetched as they are. Every image, local or downloaded, is checked before it
is kept: a real image in an allowed format, declared pixel count under `images.max_pixels`
(checked from the header, before decoding: the decompression-bomb guard), fully decodable by the
pipeline's one loader (`imageio`: upright 8-bit RGB, 16-bit scaled, alpha on white) within a
memory budget estimated from the header (`images.max_decode_bytes`); then it is
resized as the dataset's own download script did (longer side 640).

Nothing fails the stage but a bad config: every problem becomes a row with status `failed` and a
short reason in `data/interim/images.csv`, and the counts go to `metrics/images.json`.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import logging
import numbers
import os
import queue
import re
import shutil
import socket
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urljoin, urlsplit

import pandas as pd
from pydantic import Field

from alien_hotels import imageio
from alien_hotels.common import Section, read_csv

log = logging.getLogger("alien_hotels.images")

# The images manifest, `data/interim/images.csv`: what this stage writes, and what the stages
# reading images (caption, edit) need of it. Only `ok` rows have a file, at `path` (repo-relative).
# `image_path`: data=folder, the file's place in the photo tree (every row, failed ones too, so a
# failure names the user's file, not only an id); empty for the other datasets. `detail`: what
# went wrong beyond the reason (`0 bytes`, the decoder's message).
MANIFEST_COLUMNS = ["image_id", "path", "status", "reason", "url", "image_path", "detail"]
MANIFEST_REQUIRED = ["image_id", "path", "status"]
EXTENSION_FORMAT = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
RETRY_STATUSES = (429, 500, 502, 503, 504)
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
# Content types that say nothing (S3 and CDNs send them for images too); the bytes decide.
GENERIC_TYPES = {"application/octet-stream", "binary/octet-stream"}


class ImagesConfig(Section):
    """`images.*`: where images come from and how downloads behave."""

    download: bool
    # Each worker may hold one decoding image (up to `max_decode_bytes`) besides its download:
    # 32 x the default budget is 8 GiB, and one process gains nothing from more threads.
    workers: int = Field(ge=1, le=32)
    connect_timeout_s: float = Field(gt=0)
    read_timeout_s: float = Field(gt=0)  # longest wait for any one read
    # Wall time for a whole body, however it trickles (`slow_body`).
    body_timeout_s: float = Field(gt=0, le=3600)
    retries: int = Field(ge=0, le=10)
    backoff_s: float = Field(ge=0)
    max_redirects: int = Field(ge=0, le=30)
    max_bytes: int = Field(ge=1)
    max_pixels: int = Field(ge=1)
    # Memory one image may take while decoding, estimated from its header before any pixel is
    # decoded (`too_large`): workers x this bounds the stage's decoding memory.
    max_decode_bytes: int = Field(ge=1 << 20)
    # HEIF (HEIC: iPhones) and AVIF are decoded and stored as JPEG, as any non-web format.
    formats: list[Literal["JPEG", "PNG", "WEBP", "HEIF", "AVIF", "GIF", "BMP"]]
    # The dataset's resizing: longer side to exactly this many pixels (null keeps the size).
    # At most 4096: an enlargement's memory grows with its square (20000 took 1.3 GB for a photo).
    longer_side: int | None = Field(ge=16, le=4096)
    upscale: bool  # the dataset's script enlarged small photos too
    jpeg_quality: int = Field(ge=1, le=100)
    user_agent: str
    # Certificates are always verified (there is no switch); this only names a CA bundle to trust
    # instead of certifi's.
    ca_bundle: str | None
    # Off: URLs (and redirects) to loopback, private, link-local, ... addresses are refused.
    allow_private_addresses: bool
    per_host_workers: int = Field(ge=1, le=64)  # concurrent requests to one host name
    # Longest Retry-After (429/503) waited for; a longer one is recorded as the status.
    max_retry_after_s: float = Field(ge=0, le=3600)
    respect_opt_out: bool  # X-Robots-Tag: noai / noimageai -> `opted_out`, nothing kept


class FetchError(Exception):
    """One image could not be had; `reason` is the short code recorded in the manifest."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Outcome:
    image_id: int
    path: str
    status: Literal["ok", "missing", "failed"]
    reason: str
    url: str
    origin: Literal["cached", "local", "downloaded", ""] = ""
    nbytes: int = 0
    image_path: str = ""  # data=folder: the file in the tree
    detail: str = ""  # a failure's detail (reports/skipped.csv)


@dataclass(frozen=True)
class ManifestSelection:
    rows: pd.DataFrame  # usable rows, manifest order, `path` stripped
    skipped: dict[str, int]  # the other rows by status (`ok_without_path` when ok lacks a path)


def read_manifest(path: str | Path) -> pd.DataFrame:
    return read_csv(path, MANIFEST_REQUIRED, what="images manifest")


def usable_images(manifest: pd.DataFrame, limit: int | None = None) -> ManifestSelection:
    """The rows with status `ok` and a path (the first per image id), at most `limit`."""
    status = manifest["status"].astype("string").fillna("").str.strip()
    path = manifest["path"].astype("string").fillna("").str.strip()
    usable = (status == "ok") & (path != "")
    skipped = Counter(status[~usable].replace("ok", "ok_without_path").replace("", "unknown"))
    rows = manifest.loc[usable].assign(path=path[usable]).drop_duplicates("image_id")
    rows = rows if limit is None else rows.head(limit)
    return ManifestSelection(rows.reset_index(drop=True), dict(sorted(skipped.items())))


# --- image checks and the dataset's resizing -------------------------------------------------


def prepare_image(data: bytes, extension: str, cfg: ImagesConfig) -> bytes:
    """Validate image bytes and return what to store (the input itself when nothing changes).

    Decoded by the one loader (`imageio`), so what is stored is what every later stage sees:
    upright 8-bit RGB, 16-bit images scaled, transparency on white.
    """
    from PIL import Image

    target_format = EXTENSION_FORMAT.get(extension.lower(), "JPEG")
    try:
        decoded = imageio.decode(
            data,
            max_pixels=cfg.max_pixels,
            formats=cfg.formats,
            draft_side=cfg.longer_side,  # big JPEGs decode at a reduced scale: fast
            limit_name="images.max_pixels",
            max_decode_bytes=cfg.max_decode_bytes,  # refused from the header: memory bounded
            budget_name="images.max_decode_bytes",
        )
    except imageio.ImageFailure as exc:
        raise FetchError(exc.reason, exc.detail) from None
    new_size = _resized(*decoded.display_size, cfg)
    if new_size is None and decoded.as_stored and decoded.format == target_format:
        return data
    out = decoded.image
    if new_size is not None and new_size != out.size:
        # Shrinking (what is left after the JPEG draft, under 2x): Pillow's antialiased
        # bilinear (a triangle filter over the scaled support), 2.3x faster than Lanczos here,
        # less aliasing than img2dataset's area averaging and as close to a full Lanczos; enlarging:
        # Lanczos, as img2dataset does. docs/design/images.md, "Fetching", has the measurements.
        if max(new_size) < max(out.size):
            out = out.resize(new_size, Image.Resampling.BILINEAR, reducing_gap=3.0)
        else:
            out = out.resize(new_size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    options = {"quality": cfg.jpeg_quality} if target_format == "JPEG" else {}
    out.save(buffer, format=target_format, **options)
    return buffer.getvalue()


def _resized(width: int, height: int, cfg: ImagesConfig) -> tuple[int, int] | None:
    side = cfg.longer_side
    longer = max(width, height)
    if side is None or longer == side or (longer < side and not cfg.upscale):
        return None
    if width >= height:
        return side, max(1, round(side * height / width))
    return max(1, round(side * width / height)), side


# --- downloading ------------------------------------------------------------------------------

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


# --- the stage --------------------------------------------------------------------------------


# Paths from data (metadata fields, CSV columns) never leave their root: a stored file's path is
# built from validated parts only, and a field that would escape is a failure row `unsafe_path`.
# `source` becomes a folder name: a plain name (no separator, `..`, hidden or option-like name).
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
INTEGER = re.compile(r"-?[0-9]{1,19}")
# Extensions a local file of the dataset's tree may have (its download script kept the URL's).
LOCAL_EXTENSIONS = (*EXTENSION_FORMAT, "gif", "bmp")


class UnsafePath(FetchError):
    """A field of the data would make a path outside its root (`..`, absolute, a separator)."""

    def __init__(self, detail: str) -> None:
        super().__init__("unsafe_path", detail)


def relative_image_path(row: pd.Series | dict) -> Path:
    """`<chain_id>/<hotel_id>/<source>/<image_id>.<ext>`: the dataset's own tree layout, from
    validated parts only (ids as integers, `source` a plain name, `ext` from EXTENSION_FORMAT:
    `image_name` only lends its extension), so joined to a folder it stays inside it.

    `UnsafePath` when a part is not what it must be."""
    chain = row.get("chain_id")
    chain = "unknown" if _missing(chain) else _id_text(chain, "chain_id")
    source = row.get("source")
    source = "unknown" if _missing(source) else str(source)
    if not SAFE_NAME.fullmatch(source):
        raise UnsafePath(f"source={source!r} is not a plain folder name")
    name = f"{_id_text(row['image_id'], 'image_id')}.{_stored_extension(row.get('image_name'))}"
    return Path(chain, _id_text(row["hotel_id"], "hotel_id"), source, name)


def _missing(value: object) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return value is None or bool(pd.isna(value))


def _id_text(value: object, column: str) -> str:
    """An id as the digits of an integer (an integral float too: pandas reads an integer column
    with a gap as floats)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return str(int(value))
    if isinstance(value, str) and INTEGER.fullmatch(value.strip()):
        return str(int(value))
    raise UnsafePath(f"{column}={value!r} is not an integer")


def _stored_extension(image_name: object) -> str:
    """The extension of `image_name` when allowed, else `jpg` (`prepare_image` stores other
    formats as JPEG). A name that is no plain file name is refused, not repaired."""
    if _missing(image_name):
        return "jpg"
    name = str(image_name)
    if name in (".", "..") or any(char in name for char in "/\\\0"):
        raise UnsafePath(f"image_name={name!r} is not a plain file name")
    extension = name.rpartition(".")[2].lower()
    return extension if "." in name and extension in EXTENSION_FORMAT else "jpg"


def _tree_path(image_path: object) -> str | None:
    """`image_path` (a file's place below the local tree) when it stays below it: relative, no
    `..`; None when the row has none."""
    if not isinstance(image_path, str) or not image_path:
        return None
    if image_path.startswith("/") or "\0" in image_path or ".." in image_path.split("/"):
        raise UnsafePath(f"image_path={image_path!r} leaves the local tree")
    return image_path


def _inside(root: str | Path, path: str | Path) -> bool:
    """Whether `path` is `root` or below it, compared as absolute normalised paths (resolve
    symlinks first, with `os.path.realpath`, where links must not lead out)."""
    root, path = os.path.abspath(root), os.path.abspath(path)
    return os.path.commonpath([root, path]) == root


def collect_images(
    sample: pd.DataFrame,
    cfg: ImagesConfig,
    local_dir: str | Path | None,
    out_dir: str | Path,
    progress: bool = True,
    *,
    follow_external_symlinks: bool = False,
) -> tuple[pd.DataFrame, dict]:
    """Fill `out_dir` with the sample's images; return the manifest and the metrics.

    A local file that is a symlink out of `local_dir` is `unsafe_path` unless
    `follow_external_symlinks` (`data.follow_external_symlinks`)."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    local = Path(local_dir) if local_dir else None
    downloader = Downloader(cfg) if cfg.download else None
    # Rows as plain dicts, made as they are submitted, and a bounded window of them in flight:
    # a pandas Series and a future per row, all made up front, cost ~6 KiB per URL at 1.1M.
    # Each outcome goes to its row's place in the sample (no sort, no id -> position map), and
    # finished futures come back through a queue (no `wait()` over the whole window per image).
    rows = enumerate(row._asdict() for row in sample.itertuples(index=False))
    window = threading.BoundedSemaphore(4 * cfg.workers)
    finished: queue.SimpleQueue = queue.SimpleQueue()

    def _finished(future) -> None:  # in the worker thread, or at cancellation
        finished.put(future)
        window.release()

    started = time.monotonic()
    outcomes: list[Outcome] = [None] * len(sample)  # type: ignore[list-item]
    submitted = handled = 0
    with (
        ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="images") as pool,
        tqdm(total=len(sample), unit="img", desc="images", disable=not progress) as bar,
    ):
        try:
            for n, row in rows:
                window.acquire()
                future = pool.submit(
                    _indexed, n, row, cfg, local, out_dir, downloader, follow_external_symlinks
                )
                future.add_done_callback(_finished)
                submitted += 1
                while not finished.empty():
                    _take(finished.get(), outcomes, bar)
                    handled += 1
            while handled < submitted:
                _take(finished.get(), outcomes, bar)
                handled += 1
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    _prune(out_dir, {o.path for o in outcomes if o.status == "ok"})
    manifest = pd.DataFrame(
        [(o.image_id, o.path, o.status, o.reason, o.url, o.image_path, o.detail) for o in outcomes],
        columns=MANIFEST_COLUMNS,
    )
    elapsed = time.monotonic() - started
    metrics = _metrics(outcomes, cfg)
    failures = [o for o in outcomes if o.status == "failed"]
    if failures:
        examples = "; ".join(
            f"{o.image_path or o.image_id} {o.reason} {o.url}".rstrip() for o in failures[:5]
        )
        log.warning(
            "%d images failed (all listed in the manifest), e.g. %s", len(failures), examples
        )
    fetched = metrics["ok_downloaded"]
    log.info(
        "images: %d ok (%d already there, %d local, %d downloaded), %d missing, %d failed "
        "in %.1f s (%.1f img/s)",
        metrics["ok"],
        metrics["ok_cached"],
        metrics["ok_local"],
        fetched,
        metrics["missing"],
        metrics["failed"],
        elapsed,
        len(sample) / elapsed if elapsed > 0 else 0.0,
    )
    return manifest, metrics


def _indexed(n: int, row: dict, *args) -> tuple[int, Outcome]:
    return n, _one(row, *args)


def _take(future, outcomes: list[Outcome], bar) -> None:
    n, outcome = future.result()  # an unexpected error in a worker ends the run here
    outcomes[n] = outcome
    bar.update(1)
    if outcome.status == "failed":
        log.debug("image %s failed: %s (%s)", outcome.image_id, outcome.reason, outcome.url)


def _one(
    row: dict,
    cfg: ImagesConfig,
    local: Path | None,
    out_dir: Path,
    downloader: Downloader | None,
    follow_external_symlinks: bool = False,
) -> Outcome:
    url = "" if pd.isna(row.get("url")) else str(row.get("url")).strip()
    raw_path = row.get("image_path")
    in_tree = raw_path if isinstance(raw_path, str) else ""
    try:  # every field checked before anything is read or written
        rel = relative_image_path(row)
        tree_path = _tree_path(row.get("image_path"))
        target = out_dir / rel
        if not _inside(out_dir, target):  # cannot happen from validated parts: a last guard
            raise UnsafePath(f"{target} is outside {out_dir}")
        image_id = int(rel.stem)
        reason = "not_in_local_tree"
        if target.is_file() and target.stat().st_size > 0:
            return Outcome(image_id, target.as_posix(), "ok", "", url, "cached", 0, in_tree)
        found = None
        if local is not None:
            found = _find_local(
                local, rel, tree_path, row.get("image_name"), follow_external_symlinks
            )
    except UnsafePath as exc:
        log.debug("image %s: %s", row.get("image_id"), exc)
        return Outcome(_raw_id(row), "", "failed", exc.reason, url, "", 0, in_tree, exc.detail)
    detail = ""
    if found is not None:
        try:
            try:
                data = found.read_bytes()
            except OSError as exc:  # permission denied, an I/O error: this photo, not the run
                raise FetchError("unreadable", exc.strerror or type(exc).__name__) from None
            _store(prepare_image(data, rel.suffix.lstrip("."), cfg), target)
            return Outcome(image_id, target.as_posix(), "ok", "", url, "local", 0, in_tree)
        except FetchError as exc:
            reason, detail = f"local_{exc.reason}", exc.detail
            log.debug("local image %s unusable: %s", found, exc)
    if downloader is None:
        status = "missing" if reason == "not_in_local_tree" else "failed"
        return Outcome(image_id, "", status, reason, url, "", 0, in_tree, detail)
    if not url:
        return Outcome(image_id, "", "failed", "no_url", url)
    try:
        body = downloader.get(url)
        _store(prepare_image(body, rel.suffix.lstrip("."), cfg), target)
    except FetchError as exc:
        log.debug("image %s: %s (%s)", image_id, exc, url)  # the detail, e.g. a blocked address
        return Outcome(image_id, "", "failed", exc.reason, url, "", 0, in_tree, exc.detail)
    return Outcome(image_id, target.as_posix(), "ok", "", url, "downloaded", len(body))


def _raw_id(row: dict) -> object:
    """The row's image id for the manifest: an integer when it is one, else as given."""
    try:
        return int(_id_text(row.get("image_id"), "image_id"))
    except UnsafePath:
        return row.get("image_id")


def _find_local(
    local: Path,
    rel: Path,
    tree_path: str | None = None,
    image_name: object = None,
    follow_external_symlinks: bool = False,
) -> Path | None:
    """The row's file in the local tree: `tree_path` (data=folder: its place in the tree, checked
    by `_tree_path`), else `rel` with any of the tree's extensions (the image name's first).

    A file there that is a symlink out of the tree is `UnsafePath`, unless
    `follow_external_symlinks`: it is not read."""
    if tree_path is not None:
        candidates = [local / tree_path]
    else:
        own = str(image_name).rpartition(".")[2].lower() if isinstance(image_name, str) else ""
        first = [ext for ext in (own, rel.suffix[1:]) if ext in LOCAL_EXTENSIONS]
        exact = local / rel
        candidates = [
            exact.with_suffix(f".{ext}") for ext in dict.fromkeys([*first, *EXTENSION_FORMAT])
        ]
    for found in candidates:
        if _is_file(found):
            if not follow_external_symlinks and not _inside(
                os.path.realpath(local), os.path.realpath(found)
            ):
                raise UnsafePath(f"{found} is a symlink out of {local}")
            return found
    return None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for the system, ...: nothing to read there
        return False


def _store(data: bytes, target: Path) -> None:
    """Write `target` atomically: a per-thread temporary, then a rename. Leaner than
    `common.atomic_path` (no sweep of the folder per image); what a kill leaves behind is
    swept by `_prune` at the end of the run. The folder is made only when the open says it is
    missing (once per hotel and source, not a `mkdir` per image)."""
    tmp = target.with_name(f".{target.name}.{threading.get_ident():x}.tmp")
    try:
        tmp.write_bytes(data)
    except FileNotFoundError:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
    os.replace(tmp, target)


def _prune(out_dir: Path, keep: set[str]) -> None:
    """Remove files of earlier samples and of interrupted writes (the `.<name>.<random>.tmp` a
    kill leaves), so the output is exactly this sample's.

    Only files in the layout this stage writes (`<chain>/<hotel>/<source>/<file>`) are touched.
    """
    # `keep` holds the outcomes' paths (`out_dir / rel` as strings): compared as normalised
    # strings, not Path objects or `resolve()`d (a Path costs ~0.5 KiB, `resolve` system calls
    # per path component: at 1.1M images both showed).
    keep = {os.path.normpath(p) for p in keep}
    for dirpath, _dirnames, filenames in os.walk(out_dir, topdown=False):
        rel_dir = os.path.relpath(dirpath, out_dir)
        depth = 0 if rel_dir == "." else rel_dir.count(os.sep) + 1
        for name in filenames:
            path = os.path.join(dirpath, name)
            if depth == 3 and os.path.normpath(path) not in keep:
                os.unlink(path)
        if 0 < depth <= 3 and not os.listdir(dirpath):
            shutil.rmtree(dirpath)


def _metrics(outcomes: list[Outcome], cfg: ImagesConfig) -> dict:
    status = Counter(o.status for o in outcomes)
    origin = Counter(o.origin for o in outcomes if o.status == "ok")
    failed = Counter(o.reason for o in outcomes if o.status == "failed")
    return {
        "requested": len(outcomes),
        "ok": status["ok"],
        "ok_cached": origin["cached"],
        "ok_local": origin["local"],
        "ok_downloaded": origin["downloaded"],
        "missing": status["missing"],
        "failed": status["failed"],
        "failed_by_reason": dict(sorted(failed.items())),
        "bytes_downloaded": sum(o.nbytes for o in outcomes),
        "download_enabled": cfg.download,
    }
