"""HTTP from inside a tollgate sandbox, the way the platform's code nodes write it.

    from tollgate_http import http
    resp = http.post("https://api.example.com/data", auth="My API Key",
                     json={"query": 1}, timeout=10)
    if resp["is_error"]:
        return f"Error: {resp['status_code']}"
    return resp["json"]["result"]

Standard library only. Requests go through tollgate's proxy (``HTTP_PROXY`` /
``HTTPS_PROXY``, which ``tollgate run`` sets); HTTPS is verified against the bundle in
``SSL_CERT_FILE`` (the execution's CA, plus the system roots). ``auth`` names one of the
team's auth providers (sent as ``Tollgate-Auth``; the proxy attaches the secret, which this
code never sees) and ``timeout`` asks the proxy for that many seconds (``Tollgate-Timeout``).

The helper is importable in every sandbox. When the execution has no network (its policy
has no ``network`` section: ``tollgate run`` sets ``TOLLGATE_HTTP=disabled``), every call
raises ``HttpNotEnabled``.

Every function returns ``{"status_code", "headers", "text", "json", "is_success",
"is_error"}``; ``json`` is the parsed body for JSON content types, else ``None``. Answers
from the upstream are returned whatever their status. When tollgate itself refuses or fails
a request, an ``HttpError`` subclass is raised with tollgate's message. A URL, method, header
or argument that cannot be sent raises ``HttpInvalidURL`` (``HttpInvalidRequest`` for all
but the URL) before anything is sent. A team quota's refusal raises ``HttpTeamRateLimited``
or ``HttpTeamBudgetExhausted`` (both ``HttpQuotaExceeded``) or ``HttpQuotaUnavailable``, with
``retry_after`` from tollgate's ``Retry-After``; the helper never retries (the proxy already
did, as the policy's ``retry`` allows). docs/clients.md lists every exception.
"""

import http.client as _httpclient
import ipaddress as _ipaddress
import json as _json
import math as _math
import os as _os
import re as _re
import socket as _socket
import ssl as _ssl
import unicodedata as _unicodedata
import urllib.parse as _parse

__all__ = [
    "http",
    "HttpError",
    "HttpNotEnabled",
    "HttpRequestLimitExceeded",
    "HttpRequestTooLarge",
    "HttpResponseTooLarge",
    "HttpConnectionError",
    "HttpTimeoutError",
    "HttpInvalidURL",
    "HttpInvalidRequest",
    "HttpPolicyDenied",
    "HttpAuthProviderError",
    "HttpQuotaExceeded",
    "HttpTeamRateLimited",
    "HttpTeamBudgetExhausted",
    "HttpQuotaUnavailable",
]


class HttpError(Exception):
    """tollgate refused or could not complete the request.

    ``error`` is tollgate's error code (``policy_denied``, ``timeout``, ...),
    ``message`` its explanation, ``status_code`` the HTTP status it answered with
    (``None`` when the request failed before any answer).

    For the team quota errors, ``retry_after`` is how many seconds tollgate says to wait
    (its ``Retry-After``, as a float), and ``quota`` and ``scope`` name the quota that
    refused (``"requests_per_minute"``, ``"team"`` or a destination's host pattern); each
    is ``None`` when tollgate did not say.
    """

    def __init__(self, message, error=None, status_code=None, execution=None,
                 retry_after=None, quota=None, scope=None):
        super().__init__(message)
        self.message = message
        self.error = error
        self.status_code = status_code
        self.execution = execution
        self.retry_after = retry_after
        self.quota = quota
        self.scope = scope


class HttpNotEnabled(HttpError):
    """This execution has no network: its policy has no ``network`` section."""


class HttpRequestLimitExceeded(HttpError):
    """The execution used all the upstream requests its team allows."""


class HttpRequestTooLarge(HttpError):
    """The request body is over the team's limit."""


class HttpResponseTooLarge(HttpError):
    """The response body is over the team's limit."""


class HttpConnectionError(HttpError):
    """The upstream could not be reached, or its TLS or answer was broken."""


class HttpTimeoutError(HttpError):
    """The upstream did not answer in time."""


class HttpInvalidURL(HttpError):
    """The URL (or request) cannot be sent."""


class HttpInvalidRequest(HttpInvalidURL, ValueError):
    """The method, a header or an argument cannot be sent: a line break in a header value, a
    header name with ``:``, a timeout that is not a positive number, ``json`` that is not
    JSON. Also a ``ValueError``, which such mistakes raised before."""


class HttpPolicyDenied(HttpInvalidURL):
    """The team's policy (or the SSRF protection) does not allow this request."""


class HttpAuthProviderError(HttpError):
    """The named auth provider does not exist or may not be used for this URL."""


class HttpQuotaExceeded(HttpError):
    """A quota of the team (shared by all its executions, on every node) refused the
    request: ``429``. ``retry_after`` says when to try again. tollgate has already retried
    as far as the policy's ``retry`` allows; the helper does not retry."""


class HttpTeamRateLimited(HttpQuotaExceeded):
    """The team's ``requests_per_minute`` (or a destination's) admits no request now;
    one is admitted again after ``retry_after`` seconds."""


class HttpTeamBudgetExhausted(HttpQuotaExceeded):
    """A day budget of the team (``requests_per_day``, ``bytes_per_day``, for the team or
    a destination) is used up until the next UTC midnight, ``retry_after`` seconds away.
    Retrying sooner is refused again."""


class HttpQuotaUnavailable(HttpError):
    """The team has a quota and tollgate could not check it (its shared store did not
    answer), so the request was not sent: ``503``. Not the code's fault; often brief."""


_ERRORS = {
    "request_limit_exceeded": HttpRequestLimitExceeded,
    "denial_limit": HttpRequestLimitExceeded,
    "request_too_large": HttpRequestTooLarge,
    "response_too_large": HttpResponseTooLarge,
    "connect_error": HttpConnectionError,
    "upstream_tls_error": HttpConnectionError,
    "too_many_connections": HttpConnectionError,
    "timeout": HttpTimeoutError,
    "client_timeout": HttpTimeoutError,
    "invalid_url": HttpInvalidURL,
    "invalid_request": HttpInvalidURL,
    "policy_denied": HttpPolicyDenied,
    "ssrf_denied": HttpPolicyDenied,
    "credential_placeholder_mismatch": HttpPolicyDenied,
    "auth_provider_error": HttpAuthProviderError,
    "credential_scope_denied": HttpAuthProviderError,
    "team_rate_limited": HttpTeamRateLimited,
    "team_budget_exhausted": HttpTeamBudgetExhausted,
    "quota_unavailable": HttpQuotaUnavailable,
}

_METHODS_WITHOUT_BODY = ("GET", "HEAD", "DELETE", "OPTIONS")

# What ``tollgate run`` sets to say whether this execution has a network.
_SWITCH = "TOLLGATE_HTTP"
_NOT_ENABLED = "HTTP requests are not enabled for this execution"

# An HTTP token (RFC 9110 section 5.6.2): what a method and a header name are made of.
_TOKEN = _re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# What a host name (RFC 3986 reg-name, percent-encoding included) may hold.
_HOST = _re.compile(r"[A-Za-z0-9._~!$&'()*+,;=%-]+")
# Characters left as they are in a path or query; anything else (non-ASCII, ``"<>^`{|}``) is
# percent-encoded, as browsers and requests do. ``%`` stays: the URL may be encoded already.
_SAFE_IN_TARGET = "!#$%&'()*+,/:;=?@[]~"
# Headers the helper writes itself from the URL and the body: a caller's own would make
# the request say two things (a Content-Length that does not match the body leaves the
# proxy waiting for bytes that never come).
_OWN_HEADERS = ("host", "content-length", "transfer-encoding")


def _invalid_url(url, why):
    return HttpInvalidURL(f"cannot send {url!r}: {why}", error="invalid_url")


def _invalid(why):
    return HttpInvalidRequest(why, error="invalid_request")


_CONTROL_NAMES = {"\t": "a tab", "\n": "a line feed", "\r": "a carriage return", "\0": "a NUL"}


def _describe(character):
    """``a line feed (U+000A)``, ``U+0020 SPACE``: what a refused character is."""
    code = f"U+{ord(character):04X}"
    if character in _CONTROL_NAMES:
        return f"{_CONTROL_NAMES[character]} ({code})"
    name = _unicodedata.name(character, None)
    return f"{code} {name}" if name else f"a control character ({code})"


def _parse_url(url):
    """(scheme, host, port, path, query) of an http(s) URL; anything else raises
    HttpInvalidURL saying what is wrong."""
    if not isinstance(url, str):
        raise _invalid_url(url, f"the URL must be a str, not {type(url).__name__}")
    for position, character in enumerate(url):
        if character == " " or _unicodedata.category(character) == "Cc":
            # urllib would quietly drop tabs and line breaks and strip leading spaces, and
            # so send another URL than the one written.
            raise _invalid_url(url, f"it contains {_describe(character)} at position "
                                    f"{position}; percent-encode it (a space is %20)")
        if character == "\\":
            raise _invalid_url(url, "it contains a backslash, which parsers read differently "
                                    "(some as '/'); percent-encode it (%5C)")
    try:
        parts = _parse.urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise _invalid_url(url, str(error)) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not url[len(scheme):].startswith("://"):
        raise _invalid_url(url, "it is not an http:// or https:// URL")
    if "@" in parts.netloc:
        raise _invalid_url(url, "it carries a user name or password, which are never sent; "
                                "name the team's auth provider with auth= instead")
    host = parts.hostname
    if not host:
        raise _invalid_url(url, "it has no host")
    if "[" in parts.netloc:
        try:
            _ipaddress.IPv6Address(host.split("%")[0])
        except ValueError:
            raise _invalid_url(url, f"[{host}] is not an IPv6 address") from None
    else:
        if not host.isascii():
            try:
                host = host.encode("idna").decode("ascii")
            except UnicodeError as error:
                raise _invalid_url(url, f"the host cannot be encoded: {error}") from None
        if not _HOST.fullmatch(host):
            raise _invalid_url(url, f"the host {host!r} has characters a host cannot have")
    if port == 0:
        raise _invalid_url(url, "port 0 cannot be connected to")
    if port is None:
        port = 443 if scheme == "https" else 80
    path = _parse.quote(parts.path or "/", safe=_SAFE_IN_TARGET)
    query = _parse.quote(parts.query, safe=_SAFE_IN_TARGET)
    return scheme, host, port, path, query


def _check_method(method):
    if not isinstance(method, str) or not _TOKEN.fullmatch(method):
        raise _invalid(f"the method {method!r} is not an HTTP method (a token such as GET)")
    return method.upper()


def _check_header(name, value):
    """``(name, value)`` as text, or HttpInvalidRequest when they cannot be sent as a header."""
    name, value = str(name), str(value)
    if not _TOKEN.fullmatch(name):
        raise _invalid(f"the header name {name!r} is not a token (letters, digits and "
                       "!#$%&'*+-.^_`|~; no ':', spaces or line breaks)")
    for character in value:
        if character != "\t" and _unicodedata.category(character) == "Cc":
            raise _invalid(f"the value of header {name} contains {_describe(character)}; "
                           "a header value is one line of text")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise _invalid(f"the value of header {name} has characters outside Latin-1; "
                       "encode it (percent- or base64-encoding)") from None
    return name, value


def _check_timeout(timeout):
    if timeout is None:
        return None
    try:
        seconds = float(timeout)
    except (TypeError, ValueError):
        seconds = _math.nan
    if isinstance(timeout, bool) or not _math.isfinite(seconds) or seconds <= 0:
        raise _invalid(f"timeout={timeout!r}: give a positive number of seconds")
    return seconds


def _encode_body(json, data):
    """(body bytes or None, the Content-Type it implies or None)."""
    if json is not None and data is not None:
        raise _invalid("pass json or data, not both")
    if json is not None:
        try:
            return _json.dumps(json, allow_nan=False).encode("utf-8"), "application/json"
        except (TypeError, ValueError) as error:
            raise _invalid(f"json= cannot be encoded as JSON: {error}") from None
    if data is None:
        return None, None
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data), None
    if isinstance(data, str):
        return data.encode("utf-8"), None
    if isinstance(data, (dict, list, tuple)):
        try:
            encoded = _parse.urlencode(data, doseq=True)
        except (TypeError, ValueError) as error:
            raise _invalid(f"data= cannot be form-encoded: {error}") from None
        return encoded.encode("utf-8"), "application/x-www-form-urlencoded"
    raise _invalid(f"data= must be bytes, str, or a dict or list of pairs, not "
                   f"{type(data).__name__}")


def _proxy_for(scheme, host):
    """The proxy (host, port) for this URL from the environment, or None."""
    no_proxy = _os.environ.get("no_proxy") or _os.environ.get("NO_PROXY") or ""
    bypass = [entry.strip().lower() for entry in no_proxy.split(",") if entry.strip()]
    if host.lower() in bypass or "*" in bypass:
        return None
    names = ("https_proxy", "HTTPS_PROXY") if scheme == "https" else ("http_proxy", "HTTP_PROXY")
    for name in names + ("all_proxy", "ALL_PROXY"):
        value = _os.environ.get(name)
        if value:
            parsed = _parse.urlsplit(value if "://" in value else "http://" + value)
            if parsed.hostname:
                return parsed.hostname, parsed.port or 80
    return None


# ``Retry-After`` as delta-seconds (RFC 9110 section 10.2.3), what tollgate sends.
_DELTA_SECONDS = _re.compile(r"[0-9]+")


def _retry_after(value):
    """The seconds a ``Retry-After`` value asks to wait (delta-seconds, or an HTTP-date:
    the time until then, 0 if past), as a float; ``None`` when it says neither."""
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        seconds = float(value)
        return seconds if _math.isfinite(seconds) else None
    # Imported here: only an HTTP-date needs it, and most sandboxed code never sees one.
    import email.utils as _email_utils
    import datetime as _datetime
    try:
        when = _email_utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_datetime.timezone.utc)
    now = _datetime.datetime.now(_datetime.timezone.utc)
    return max(0.0, (when - now).total_seconds())


def _quota_named(document):
    """``(quota, scope)`` from the error body's ``quota`` object, each ``None`` when absent."""
    quota = document.get("quota")
    if not isinstance(quota, dict):
        return None, None
    name, scope = quota.get("quota"), quota.get("scope")
    return (name if isinstance(name, str) else None,
            scope if isinstance(scope, str) else None)


def _error_from(status, headers, body):
    """The exception for a response tollgate generated (it carries ``Tollgate-Error``)."""
    code = headers.get("tollgate-error")
    if code is None:
        return None
    message, execution = f"tollgate answered {status} ({code})", None
    quota = scope = None
    try:
        document = _json.loads(body.decode("utf-8"))
        message = document.get("message") or message
        execution = document.get("execution")
        quota, scope = _quota_named(document)
    except (ValueError, UnicodeDecodeError, AttributeError):
        pass
    return _ERRORS.get(code, HttpError)(
        message, error=code, status_code=status, execution=execution,
        retry_after=_retry_after(headers.get("retry-after")), quota=quota, scope=scope)


def _lower_headers(message):
    headers = {}
    for name, value in message.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _tunnel(proxy, host, port, timeout, context):
    """A TLS socket to host:port through the proxy's CONNECT; refusals raise HttpError."""
    sock = _socket.create_connection(proxy, timeout=timeout)
    try:
        authority = f"[{host}]" if ":" in host else host
        request = f"CONNECT {authority}:{port} HTTP/1.1\r\nHost: {authority}:{port}\r\n\r\n"
        sock.sendall(request.encode("ascii"))
        response = _httpclient.HTTPResponse(sock, method="CONNECT")
        response.begin()
        if response.status != 200:
            headers = _lower_headers(response.msg)
            body = response.read() if response.length else b""
            raise _error_from(response.status, headers, body) or HttpConnectionError(
                f"the proxy refused the tunnel to {host}:{port}: {response.status} {response.reason}",
                status_code=response.status,
            )
        return context.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


class _Http:
    """``http.get/post/put/patch/delete/head/request``."""

    def request(self, method, url, *, params=None, headers=None, auth=None, json=None,
                data=None, timeout=None):
        if _os.environ.get(_SWITCH) == "disabled":
            raise HttpNotEnabled(_NOT_ENABLED, error="http_not_enabled")
        # Everything is checked before a socket is opened: a request that cannot be sent
        # whole is not sent at all (not even its CONNECT).
        method = _check_method(method)
        scheme, host, port, path, query = _parse_url(url)
        if params:
            try:
                extra = _parse.urlencode(params, doseq=True)
            except (TypeError, ValueError) as error:
                raise _invalid(f"params= cannot be encoded: {error}") from None
            query = f"{query}&{extra}" if query else extra
        target = f"{path}?{query}" if query else path
        body, content_type = _encode_body(json, data)
        seconds = _check_timeout(timeout)

        send = {}
        for name, value in (headers or {}).items():
            name, value = _check_header(name, value)
            if name.lower() in _OWN_HEADERS:
                raise _invalid(f"the header {name} is the helper's to write (from the URL and "
                               "the body); leave it out")
            send[name] = value
        lowered = {name.lower() for name in send}
        if content_type and "content-type" not in lowered:
            send["Content-Type"] = content_type
        if body is None and method not in _METHODS_WITHOUT_BODY:
            body = b""
        if auth is not None:
            name, value = _check_header("Tollgate-Auth", auth)
            send[name] = value
        if seconds is not None:
            send["Tollgate-Timeout"] = f"{seconds:g}"
        # The proxy enforces the timeout (and retries); the socket only guards against a
        # proxy that went away.
        socket_timeout = None if seconds is None else seconds * 4 + 10

        proxy = _proxy_for(scheme, host)
        try:
            if scheme == "https":
                context = _ssl.create_default_context()
                if proxy:
                    connection = _httpclient.HTTPSConnection(host, port, timeout=socket_timeout,
                                                             context=context)
                    connection.sock = _tunnel(proxy, host, port, socket_timeout, context)
                else:
                    connection = _httpclient.HTTPSConnection(host, port, timeout=socket_timeout,
                                                             context=context)
                request_target = target
            else:
                if proxy:
                    connection = _httpclient.HTTPConnection(proxy[0], proxy[1], timeout=socket_timeout)
                    authority = host if port == 80 else f"{host}:{port}"
                    if ":" in host:
                        authority = f"[{host}]" if port == 80 else f"[{host}]:{port}"
                    request_target = f"http://{authority}{target}"
                else:
                    connection = _httpclient.HTTPConnection(host, port, timeout=socket_timeout)
                    request_target = target
            try:
                connection.request(method, request_target, body=body, headers=send)
                response = connection.getresponse()
                payload = response.read()
                status = response.status
                response_headers = _lower_headers(response.msg)
            finally:
                connection.close()
        except HttpError:
            raise
        except _httpclient.InvalidURL as error:
            # Checked above; http.client's own check is the backstop.
            raise HttpInvalidURL(f"cannot send {url!r}: {error}", error="invalid_url") from None
        except _socket.timeout as error:
            raise HttpTimeoutError(f"no answer from {host} in time: {error}", error="timeout") from None
        except _ssl.SSLError as error:
            raise HttpConnectionError(f"TLS with {host} failed: {error}", error="tls") from None
        except _httpclient.IncompleteRead as error:
            raise HttpConnectionError(
                f"the response from {host} was cut off after {len(error.partial)} bytes "
                "(it may be over the team's response size limit or its bytes_per_day quota)",
                error="truncated") from None
        except (OSError, _httpclient.HTTPException) as error:
            raise HttpConnectionError(f"cannot reach {host}: {error}", error="connection") from None

        refusal = _error_from(status, response_headers, payload)
        if refusal is not None:
            raise refusal
        content_type = response_headers.get("content-type", "")
        charset = "utf-8"
        for parameter in content_type.split(";")[1:]:
            name, _, value = parameter.strip().partition("=")
            if name.lower() == "charset" and value:
                charset = value.strip('"')
        try:
            text = payload.decode(charset, errors="replace")
        except (LookupError, ValueError):
            # An unknown charset, or a name Python cannot even look up (a NUL in it).
            text = payload.decode("utf-8", errors="replace")
        media = content_type.split(";")[0].strip().lower()
        parsed = None
        if media == "application/json" or media.endswith("+json"):
            try:
                parsed = _json.loads(text)
            except ValueError:
                parsed = None
        return {
            "status_code": status,
            "headers": response_headers,
            "text": text,
            "json": parsed,
            "is_success": 200 <= status < 300,
            "is_error": status >= 400,
        }

    def get(self, url, **kwargs):
        return self.request("GET", url, **kwargs)

    def head(self, url, **kwargs):
        return self.request("HEAD", url, **kwargs)

    def post(self, url, **kwargs):
        return self.request("POST", url, **kwargs)

    def put(self, url, **kwargs):
        return self.request("PUT", url, **kwargs)

    def patch(self, url, **kwargs):
        return self.request("PATCH", url, **kwargs)

    def delete(self, url, **kwargs):
        return self.request("DELETE", url, **kwargs)


http = _Http()
