"""Downloads that survive the real world, into torch.hub's cache.

`fetch(spec)` returns a verified local file for a `Weights` or `ReferenceWeights` entry. Its
sources are tried in order; each one ends either in the cache or in one line of what happened:
- an HTML page instead of the file: Google Drive's "cannot scan for viruses" confirmation is
  followed (its form or its confirm link); a login page or any other page is reported by title;
- an HTTP error (404, 403, ...), no network, a timeout;
- a dropped connection: resumed with a Range request (or restarted when the server ignores it);
- a wrong checksum: the file is deleted, never cached.
When every source fails, `DownloadError` names the weights, every url tried and what happened,
and the exact paths where a file downloaded by hand is picked up. Files reach the cache only as
a complete, verified temp file renamed into place.
"""

from __future__ import annotations

import hashlib
import http.client
import http.cookiejar
import os
import re
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlencode, urljoin

import torch
from tqdm import tqdm

__all__ = ["DownloadError", "cache_dir", "fetch", "verify"]

CHUNK = 1 << 20
HTML_SNIFF = 1 << 16  # bytes of a page read to understand it
RESUMES = 3  # per source, after a dropped connection
TIMEOUT = 60.0  # seconds without data before a connection counts as dropped


class DownloadError(ValueError):
    """No source of a weights entry gave a good file (a ValueError, like other bad weights)."""


class _Failed(Exception):
    """One source failed; the message says how (one line)."""


def cache_dir() -> Path:
    """Where weights are cached: ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/...``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


# --------------------------------------------------------------------------------- checksums


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _mismatch(path: Path, sums, name: str) -> str | None:
    """What is wrong with the file's checksum, or None when it matches what is published.

    `sums` is anything with sha256 / hash_prefix / md5 attributes (a `Weights` or a `Source`).
    """
    checks = [("sha256", sums.sha256, False), ("sha256", sums.hash_prefix, True),
              ("md5", sums.md5, False)]  # fmt: skip
    for algo, expected, prefix in checks:
        if not expected:
            continue
        got = _digest(path, algo)
        if not (got.startswith(expected) if prefix else got == expected):
            return (
                f"its {algo} is {got}, but weights '{name}' are published with "
                f"{expected}{'...' if prefix else ''}"
            )
    return None


def verify(path: Path, spec) -> None:
    """Raise if the file's checksum differs from the one the weights are published with."""
    sources = [s for s in spec.sources if s.file_name == Path(path).name] or spec.sources[:1]
    problem = _mismatch(Path(path), sources[0], spec.name)
    if problem:
        raise ValueError(
            f"{path}: {problem}. The file is corrupt or not these weights: "
            f"delete it and download again"
        )


# ----------------------------------------------------------------------------- HTML pages


class _Page(HTMLParser):
    """What a downloader needs from an HTML page: title, forms, links, password fields."""

    def __init__(self):
        super().__init__()
        self.title, self._in_title = "", False
        self.forms: list[tuple[str, dict[str, str]]] = []  # (action, hidden inputs)
        self.links: list[str] = []
        self.password = False

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "title":
            self._in_title = True
        elif tag == "form":
            self.forms.append((a.get("action", ""), {}))
        elif tag == "input" and a.get("type") == "password":
            self.password = True
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1][1][a["name"]] = a.get("value", "")
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])

    def handle_endtag(self, tag):
        self._in_title = self._in_title and tag != "title"

    def handle_data(self, data):
        if self._in_title:
            self.title += data


def _confirm_url(page: _Page, base: str) -> str | None:
    """Google Drive's large-file page: the url its "Download anyway" button leads to."""
    for action, fields in page.forms:
        if "confirm" in fields or "download" in action:
            return urljoin(base, action) + "?" + urlencode(fields)
    for href in page.links:
        if "confirm=" in href:
            return urljoin(base, href.replace("&amp;", "&"))
    return None


def _describe(page: _Page) -> str:
    title = " ".join(page.title.split()) or "untitled"
    if page.password or re.search(r"sign[ -]?in|log[ -]?in|accounts", title, re.I):
        return f"a login page ('{title}') instead of the file: the file is not public there"
    return f"an HTML page ('{title}') instead of the file"


def _is_html(head: bytes) -> bool:
    return head.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html", b"<head"))


# ---------------------------------------------------------------------------- one source


def _open(opener, url: str, start: int):
    headers = {"User-Agent": "fcnseg (python urllib)"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        return opener.open(urllib.request.Request(url, headers=headers), timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        raise _Failed(f"HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise _Failed(f"no connection ({e.reason})") from e
    except TimeoutError as e:
        raise _Failed(f"no answer within {TIMEOUT:.0f} s") from e
    except (OSError, http.client.HTTPException) as e:
        raise _Failed(f"connection failed ({e})") from e


def _total(resp, start: int) -> int | None:
    """The file's full size from Content-Range (a resumed 206) or Content-Length (a 200)."""
    if start:
        m = re.match(r"bytes (\d+)-\d+/(\d+)", resp.headers.get("Content-Range", ""))
        return int(m.group(2)) if m else None
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _download(url: str, tmp: Path, *, progress: bool) -> None:
    """url -> tmp (complete), following confirmation pages and resuming dropped connections."""
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    done, drops, pages = 0, 0, 0
    # a new file of our own: never through a link, never an existing file (O_EXCL); a left
    # over name of this pid (or a link planted there) is removed, not written through
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as out, tqdm(unit="B", unit_scale=True, disable=not progress) as bar:
        while True:
            resp = _open(opener, url, done)
            with resp:
                resumed = done and getattr(resp, "status", 200) == 206
                if done and not resumed:  # the server ignored Range: start over
                    out.seek(0)
                    out.truncate()
                    bar.reset()
                    done = 0
                total = _total(resp, done)
                bar.total = total
                if not done and "html" in resp.headers.get("Content-Type", "").lower():
                    page = _Page()
                    page.feed(resp.read(HTML_SNIFF).decode("utf-8", "replace"))
                    confirm = _confirm_url(page, resp.geturl())
                    if confirm is None or pages >= 2:
                        raise _Failed(_describe(page))
                    url, pages = confirm, pages + 1
                    continue
                # read1: what has arrived (up to CHUNK), so a stall loses nothing already here
                read = getattr(resp, "read1", resp.read)
                try:
                    for chunk in iter(lambda: read(CHUNK), b""):  # noqa: B023
                        out.write(chunk)
                        done += len(chunk)
                        bar.update(len(chunk))
                except (OSError, http.client.HTTPException):
                    pass  # dropped: resumed below
            if total is None or done >= total:
                return
            drops += 1
            if drops > RESUMES:
                raise _Failed(f"connection dropped {drops} times, last at {done} of {total} bytes")


def _fetch_source(name: str, source, dst: Path, *, progress: bool) -> None:
    """One source into the cache at dst, verified; on any failure nothing is left behind."""
    # per-process name: two processes fetching the same file do not clobber each other
    tmp = dst.with_name(f"{dst.name}.{os.getpid()}.part")
    try:
        _download(source.url, tmp, progress=progress)
        with open(tmp, "rb") as f:
            head = f.read(512)
        if not head:
            raise _Failed("an empty file")
        if _is_html(head):  # a page served as a binary type
            page = _Page()
            page.feed(tmp.read_bytes()[:HTML_SNIFF].decode("utf-8", "replace"))
            raise _Failed(_describe(page))
        problem = _mismatch(tmp, source, name)
        if problem:
            raise _Failed(
                f"{problem}; the download was deleted (never cached): download again, "
                f"or fix the url / checksum of '{name}'"
            )
        os.replace(tmp, dst)  # never a half-written file under the final name
    finally:
        tmp.unlink(missing_ok=True)


def fetch(spec, *, progress: bool = True) -> Path:
    """A verified local file for `spec` (a `Weights` or `ReferenceWeights`), downloaded once.

    A file already in the cache under one of the sources' names is used (and verified): that is
    also where a file downloaded by hand goes. Otherwise the sources are tried in order.
    """
    cache = cache_dir()
    for source in spec.sources:
        dst = cache / source.file_name
        if dst.exists():
            verify(dst, spec)
            return dst
    cache.mkdir(parents=True, exist_ok=True)
    tried = []
    for source in spec.sources:
        dst = cache / source.file_name
        try:
            _fetch_source(spec.name, source, dst, progress=progress)
            return dst
        except _Failed as e:
            tried.append(f"  {source.url}\n    -> {e}")
    places = "\n".join(
        f"  {cache / s.file_name}  (the {s.format} file of {s.url})" for s in spec.sources
    )
    raise DownloadError(
        f"could not download weights '{spec.name}'; tried {len(tried)} url(s):\n"
        + "\n".join(tried)
        + f"\nDownload the file by hand (any of them) and put it at:\n{places}\n"
        f"or pass the file's path instead of the name."
    )
