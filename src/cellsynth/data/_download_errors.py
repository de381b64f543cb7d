"""The messages of a download that failed, and the check of its base URL: what went wrong
(an HTTP error, a redirect that cannot be followed, no reply, a reply cut short) and what to
do about it, for :mod:`cellsynth.data.download`."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.parse

from cellsynth.errors import ConfigError, DownloadError

DEFAULT_BASE_URL = "https://ftp.ebi.ac.uk/pub/databases/microarray/data/atlas/sc_experiments"
BY_HAND = "download the file by hand and pass it with `cellsynth run --set dataset.path=FILE`"


def check_base_url(base_url: object) -> None:
    """Refuse, with a :class:`ConfigError`, a base URL the file's address cannot be built on:
    another scheme, an http(s) address without a host, with a query or fragment (the
    accession's path would land in it) or with a user name (urllib takes it for the host)."""
    if not isinstance(base_url, str) or not base_url.lower().startswith(
            ("http://", "https://", "file://")):  # fmt: skip
        raise ConfigError(f"the base URL must start with http://, https:// or file://, got "
                          f"{base_url!r}; give the directory's full address (--base-url)")
    try:
        parts = urllib.parse.urlsplit(base_url)
    except ValueError as err:  # an unclosed IPv6 bracket, a bad port
        raise ConfigError(f"the base URL {base_url!r} is not a valid address ({err}); give "
                          f"the directory's full address, such as {DEFAULT_BASE_URL} "
                          "(--base-url)") from None
    why = ("it has no host" if parts.scheme.lower() != "file" and not parts.netloc else
           "it has a query (?...) or fragment (#...), where the file's path would be added"
           if parts.query or parts.fragment or base_url.rstrip("/").endswith(("?", "#")) else
           "it has a user name (user@host), which is not supported" if "@" in parts.netloc
           else None)
    if why is not None:
        raise ConfigError(f"the base URL {base_url!r} cannot be used: {why}; give the address "
                          "of the folder holding the experiments' folders, such as "
                          f"{DEFAULT_BASE_URL} (--base-url)")


def http_error(url: str, exc: urllib.error.HTTPError) -> DownloadError:
    """The error for an HTTP error reply (closed here), in one line: 404, a redirect that
    cannot be followed, any other code."""
    exc.close()
    if exc.code == 404:
        return DownloadError(
            f"{url} answered HTTP 404 Not Found: the accession may not exist at that URL; "
            "check the accession and the base URL"
        )
    reason = " ".join(str(exc.reason).split())[:200]  # urllib's redirect refusals span lines
    if 300 <= exc.code < 400:  # a loop, over 10 redirects, or to an address urllib refuses
        return DownloadError(f"{url} answered with a redirect that cannot be followed (HTTP "
                             f"{exc.code}: {reason}); check the base URL (--base-url), or "
                             f"{BY_HAND}")
    return DownloadError(f"{url} answered HTTP {exc.code} {reason}; try again later or {BY_HAND}")


def unreachable(url: str, exc: OSError, timeout: float) -> DownloadError:
    """The error for a request that got no reply: no such file, a timeout, or no route."""
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, FileNotFoundError | NotADirectoryError):
        return DownloadError(f"{url} does not exist (the mirror has no such file): check the "
                             "accession and the base URL (--base-url)")
    if url.lower().startswith("file:"):  # a folder where the file should be, no permission
        return DownloadError(f"cannot read {url} ({reason}): it is a local path, not a host; "
                             "check the accession and the base URL (--base-url)")
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return DownloadError(f"{url} did not answer within {timeout:g} s (timed out): the server "
                             f"is slow or overloaded; try again later, or {BY_HAND}")
    if isinstance(reason, ConnectionResetError | ConnectionAbortedError | ssl.SSLError):
        # the host answered: the server hung up without a reply, or spoke no TLS (https://
        # to a plain-HTTP port) or a TLS this machine does not accept
        return DownloadError(f"{url} was reached but the connection failed ({reason}): the "
                             "server closed it without a reply, or it does not speak https at "
                             "that address (try http://); check the base URL (--base-url), try "
                             f"again later, or {BY_HAND}")
    return DownloadError(f"cannot reach {url} ({reason}): this machine seems offline or the host "
                         f"unreachable; {BY_HAND}")


def stopped(error: BaseException | None, timeout: float) -> str:
    """Why a reply stopped early, in words: a timeout, or a closed connection."""
    if isinstance(error, TimeoutError) or "timed out" in str(error):
        return f"no data for {timeout:g} s"
    return "the connection was closed"
