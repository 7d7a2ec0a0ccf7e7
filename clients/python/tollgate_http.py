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

Every function returns ``{"status_code", "headers", "text", "json", "is_success",
"is_error"}``; ``json`` is the parsed body for JSON content types, else ``None``. Answers
from the upstream are returned whatever their status. When tollgate itself refuses or fails
a request, an ``HttpError`` subclass is raised with tollgate's message.
"""

import http.client as _httpclient
import json as _json
import os as _os
import socket as _socket
import ssl as _ssl
import urllib.parse as _parse

__all__ = [
    "http",
    "HttpError",
    "HttpRequestLimitExceeded",
    "HttpRequestTooLarge",
    "HttpResponseTooLarge",
    "HttpConnectionError",
    "HttpTimeoutError",
    "HttpInvalidURL",
    "HttpPolicyDenied",
    "HttpAuthProviderError",
]


class HttpError(Exception):
    """tollgate refused or could not complete the request.

    ``error`` is tollgate's error code (``policy_denied``, ``timeout``, ...),
    ``message`` its explanation, ``status_code`` the HTTP status it answered with
    (``None`` when the request failed before any answer).
    """

    def __init__(self, message, error=None, status_code=None, execution=None):
        super().__init__(message)
        self.message = message
        self.error = error
        self.status_code = status_code
        self.execution = execution


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


class HttpPolicyDenied(HttpInvalidURL):
    """The team's policy (or the SSRF protection) does not allow this request."""


class HttpAuthProviderError(HttpError):
    """The named auth provider does not exist or may not be used for this URL."""


_ERRORS = {
    "request_limit_exceeded": HttpRequestLimitExceeded,
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
}

_METHODS_WITHOUT_BODY = ("GET", "HEAD", "DELETE", "OPTIONS")


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


def _error_from(status, headers, body):
    """The exception for a response tollgate generated (it carries ``Tollgate-Error``)."""
    code = headers.get("tollgate-error")
    if code is None:
        return None
    message, execution = f"tollgate answered {status} ({code})", None
    try:
        document = _json.loads(body.decode("utf-8"))
        message = document.get("message") or message
        execution = document.get("execution")
    except (ValueError, UnicodeDecodeError, AttributeError):
        pass
    return _ERRORS.get(code, HttpError)(message, error=code, status_code=status, execution=execution)


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
        if json is not None and data is not None:
            raise ValueError("pass json or data, not both")
        method = method.upper()
        parts = _parse.urlsplit(url)
        scheme = (parts.scheme or "").lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise HttpInvalidURL(f"not an http:// or https:// URL: {url!r}", error="invalid_url")
        host = parts.hostname
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise HttpInvalidURL(f"the URL has an invalid port: {url!r}", error="invalid_url") from None
        query = parts.query
        if params:
            extra = _parse.urlencode(params, doseq=True)
            query = f"{query}&{extra}" if query else extra
        path = parts.path or "/"
        target = f"{path}?{query}" if query else path

        send = {}
        for name, value in (headers or {}).items():
            send[str(name)] = str(value)
        lowered = {name.lower() for name in send}
        body = None
        if json is not None:
            body = _json.dumps(json).encode("utf-8")
            if "content-type" not in lowered:
                send["Content-Type"] = "application/json"
        elif data is not None:
            if isinstance(data, (dict, list, tuple)):
                body = _parse.urlencode(data, doseq=True).encode("utf-8")
                if "content-type" not in lowered:
                    send["Content-Type"] = "application/x-www-form-urlencoded"
            elif isinstance(data, str):
                body = data.encode("utf-8")
            else:
                body = bytes(data)
        if body is None and method not in _METHODS_WITHOUT_BODY:
            body = b""
        if auth is not None:
            send["Tollgate-Auth"] = str(auth)
        if timeout is not None:
            send["Tollgate-Timeout"] = f"{float(timeout):g}"
        # The proxy enforces the timeout (and retries); the socket only guards against a
        # proxy that went away.
        socket_timeout = None if timeout is None else float(timeout) * 4 + 10

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
        except _socket.timeout as error:
            raise HttpTimeoutError(f"no answer from {host} in time: {error}", error="timeout") from None
        except _ssl.SSLError as error:
            raise HttpConnectionError(f"TLS with {host} failed: {error}", error="tls") from None
        except _httpclient.IncompleteRead as error:
            raise HttpConnectionError(
                f"the response from {host} was cut off after {len(error.partial)} bytes "
                "(it may be over the team's response size limit)", error="truncated") from None
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
        except LookupError:
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
