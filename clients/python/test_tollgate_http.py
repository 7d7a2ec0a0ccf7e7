"""Unit tests of tollgate_http: the exceptions it raises for tollgate's own answers.

The helper is tested against a fake proxy on loopback that answers the way tollgate's proxy
answers (``Tollgate-Error``, ``Retry-After``, the JSON error body), both for a plain
``http://`` request (absolute form) and for the ``CONNECT`` of an ``https://`` one. The
end-to-end behaviour (a real proxy enforcing real quotas) is tested in tests/tests/.

Standard library only (``/usr/bin/python3 -m unittest``, as the sandbox has it);
tests/tests/python_helper.rs runs this file under ``cargo test``.
"""

import email.utils
import http.server as httpserver
import json
import os
import threading
import time
import unittest
from unittest import mock

import tollgate_http
from tollgate_http import (
    HttpError,
    HttpQuotaExceeded,
    HttpQuotaUnavailable,
    HttpRequestLimitExceeded,
    HttpTeamBudgetExhausted,
    HttpTeamRateLimited,
    http,
)

EXECUTION = "exec-7f3a"


class _FakeProxy(httpserver.ThreadingHTTPServer):
    """Answers every request (and every CONNECT) with ``answer`` and records what it saw."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer = (200, {}, b"")
        # Declare this many more body bytes than are sent, then close: a body cut short.
        self.cut_short_by = 0
        self.seen = []
        self.lock = threading.Lock()

    @property
    def address(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(httpserver.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with self.server.lock:
            self.server.seen.append((self.command, self.path))
        status, headers, body = self.server.answer
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) + self.server.cut_short_by))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_CONNECT = _answer


def _refusal(code, status, message, retry_after=None, quota=None):
    """The answer tollgate gives: ``Tollgate-Error``, the JSON body, maybe ``Retry-After``."""
    document = {"error": code, "message": message, "execution": EXECUTION}
    if quota is not None:
        document["quota"] = quota
    headers = {"Content-Type": "application/json", "Tollgate-Error": code,
               "Tollgate-Message": message, "Via": "1.1 tollgate"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return status, headers, json.dumps(document).encode("utf-8")


RATE_QUOTA = {"quota": "requests_per_minute", "scope": "team", "limit": 60, "remaining": 0,
              "retry_after_ms": 6500, "store": "redis"}
DAY_QUOTA = {"quota": "requests_per_day", "scope": "api.example.com", "limit": 1000,
             "remaining": 0, "retry_after_ms": 3_600_000, "store": "node"}


class _ProxyTest(unittest.TestCase):
    """Each test talks to its own fake proxy through the proxy variables."""

    def setUp(self):
        self.proxy = _FakeProxy()
        # A short poll: shutdown() waits for the loop to notice, once per test.
        thread = threading.Thread(target=self.proxy.serve_forever, kwargs={"poll_interval": 0.01},
                                  daemon=True)
        thread.start()
        self.addCleanup(thread.join)
        self.addCleanup(self.proxy.server_close)
        self.addCleanup(self.proxy.shutdown)
        variables = {"HTTP_PROXY": self.proxy.address, "HTTPS_PROXY": self.proxy.address,
                     "TOLLGATE_HTTP": "enabled"}
        cleared = [name for name in os.environ
                   if name.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")]
        patch = mock.patch.dict(os.environ, variables)
        patch.start()
        self.addCleanup(patch.stop)
        for name in cleared:
            if name not in variables:
                del os.environ[name]

    def raised(self, call):
        """What ``call`` raised (it must raise an HttpError)."""
        with self.assertRaises(HttpError) as caught:
            call()
        return caught.exception


class TeamRateLimited(_ProxyTest):
    def test_a_refused_plain_request_raises_team_rate_limited_with_its_wait(self):
        message = "the team's requests_per_minute quota (60) is used up; retry in 7 s"
        self.proxy.answer = _refusal("team_rate_limited", 429, message, "7", RATE_QUOTA)
        error = self.raised(lambda: http.get("http://api.example.com/v1/x"))
        self.assertIs(type(error), HttpTeamRateLimited)
        self.assertIsInstance(error, HttpQuotaExceeded)
        self.assertEqual(error.error, "team_rate_limited")
        self.assertEqual(error.status_code, 429)
        self.assertEqual(error.message, message)
        self.assertEqual(str(error), message)
        self.assertEqual(error.execution, EXECUTION)
        self.assertEqual(error.retry_after, 7.0)
        self.assertIsInstance(error.retry_after, float)
        self.assertEqual(error.quota, "requests_per_minute")
        self.assertEqual(error.scope, "team")

    def test_a_refused_connect_raises_team_rate_limited(self):
        # A passthrough tunnel is an attempt too: the CONNECT itself is refused.
        self.proxy.answer = _refusal("team_rate_limited", 429, "rate limited", "2", RATE_QUOTA)
        error = self.raised(lambda: http.get("https://api.example.com/v1/x"))
        self.assertIs(type(error), HttpTeamRateLimited)
        self.assertEqual(error.retry_after, 2.0)
        self.assertEqual(error.scope, "team")
        self.assertEqual(self.proxy.seen, [("CONNECT", "api.example.com:443")])

    def test_the_helper_does_not_retry_a_rate_limited_request_itself(self):
        # The proxy already retried as the policy's retry allows; a second attempt from the
        # helper would spend the team's quota again behind the caller's back.
        self.proxy.answer = _refusal("team_rate_limited", 429, "rate limited", "1", RATE_QUOTA)
        self.raised(lambda: http.post("http://api.example.com/v1/x", json={"a": 1}))
        self.assertEqual(self.proxy.seen, [("POST", "http://api.example.com/v1/x")])


class TeamBudgetExhausted(_ProxyTest):
    def test_an_exhausted_day_budget_raises_team_budget_exhausted_once(self):
        self.proxy.answer = _refusal("team_budget_exhausted", 429, "day budget used up",
                                     "3600", DAY_QUOTA)
        error = self.raised(lambda: http.get("http://api.example.com/v1/x"))
        self.assertIs(type(error), HttpTeamBudgetExhausted)
        self.assertIsInstance(error, HttpQuotaExceeded)
        self.assertNotIsInstance(error, HttpTeamRateLimited)
        self.assertEqual(error.status_code, 429)
        self.assertEqual(error.retry_after, 3600.0)
        self.assertEqual(error.quota, "requests_per_day")
        self.assertEqual(error.scope, "api.example.com")
        # Never retried: a day budget comes back at midnight, not in a moment.
        self.assertEqual(self.proxy.seen, [("GET", "http://api.example.com/v1/x")])

    def test_an_exhausted_budget_on_connect_raises_team_budget_exhausted(self):
        quota = dict(DAY_QUOTA, quota="bytes_per_day", scope="team")
        self.proxy.answer = _refusal("team_budget_exhausted", 429, "bytes used up", "60", quota)
        error = self.raised(lambda: http.get("https://api.example.com/"))
        self.assertIs(type(error), HttpTeamBudgetExhausted)
        self.assertEqual((error.quota, error.scope, error.retry_after),
                         ("bytes_per_day", "team", 60.0))


class QuotaUnavailable(_ProxyTest):
    def test_an_unreachable_store_raises_quota_unavailable_without_a_wait(self):
        self.proxy.answer = _refusal("quota_unavailable", 503, "the quota store is unreachable")
        error = self.raised(lambda: http.get("http://api.example.com/v1/x"))
        self.assertIs(type(error), HttpQuotaUnavailable)
        self.assertNotIsInstance(error, HttpQuotaExceeded)
        self.assertEqual(error.error, "quota_unavailable")
        self.assertEqual(error.status_code, 503)
        self.assertIsNone(error.retry_after)
        self.assertIsNone(error.quota)
        self.assertIsNone(error.scope)
        self.assertEqual(self.proxy.seen, [("GET", "http://api.example.com/v1/x")])

    def test_quota_unavailable_carries_retry_after_when_the_proxy_gives_one(self):
        self.proxy.answer = _refusal("quota_unavailable", 503, "store down", "1",
                                     {"quota": "requests_per_minute", "scope": "team",
                                      "limit": 60, "remaining": None, "store": "redis"})
        error = self.raised(lambda: http.get("https://api.example.com/"))
        self.assertIs(type(error), HttpQuotaUnavailable)
        self.assertEqual(error.retry_after, 1.0)
        self.assertEqual((error.quota, error.scope), ("requests_per_minute", "team"))


class RetryAfterAndBody(_ProxyTest):
    def retry_after_for(self, value):
        self.proxy.answer = _refusal("team_rate_limited", 429, "rate limited", value)
        return self.raised(lambda: http.get("http://api.example.com/")).retry_after

    def test_retry_after_in_seconds(self):
        self.assertEqual(self.retry_after_for("0"), 0.0)
        self.assertEqual(self.retry_after_for(" 12 "), 12.0)

    def test_retry_after_as_an_http_date(self):
        past = email.utils.formatdate(time.time() - 3600, usegmt=True)
        self.assertEqual(self.retry_after_for(past), 0.0)
        future = email.utils.formatdate(time.time() + 86400, usegmt=True)
        self.assertGreater(self.retry_after_for(future), 0.0)

    def test_a_retry_after_that_means_nothing_is_none(self):
        for value in ("soon", "-5", "1.5", "1e400", "9" * 400, "nan", "inf", "3.5.1", ""):
            with self.subTest(value=value):
                self.assertIsNone(self.retry_after_for(value))

    def test_a_body_without_the_quota_still_gives_the_class_and_the_wait(self):
        self.proxy.answer = _refusal("team_budget_exhausted", 429, "used up", "30")
        error = self.raised(lambda: http.get("http://api.example.com/"))
        self.assertIs(type(error), HttpTeamBudgetExhausted)
        self.assertEqual(error.retry_after, 30.0)
        self.assertIsNone(error.quota)
        self.assertIsNone(error.scope)

    def test_a_body_that_is_not_json_still_gives_the_class(self):
        status, headers, _ = _refusal("team_rate_limited", 429, "x", "5")
        self.proxy.answer = (status, headers, b"\xff not json")
        error = self.raised(lambda: http.get("http://api.example.com/"))
        self.assertIs(type(error), HttpTeamRateLimited)
        self.assertEqual(error.retry_after, 5.0)
        self.assertIsNone(error.quota)
        self.assertIn("429", error.message)

    def test_a_quota_object_of_the_wrong_shape_is_ignored(self):
        for quota in ("requests_per_minute", ["team"], {"quota": 7, "scope": {"x": 1}}, None):
            with self.subTest(quota=quota):
                status, headers, _ = _refusal("team_rate_limited", 429, "x", "5")
                body = json.dumps({"error": "team_rate_limited", "message": "x",
                                   "quota": quota}).encode()
                self.proxy.answer = (status, headers, body)
                error = self.raised(lambda: http.get("http://api.example.com/"))
                self.assertIs(type(error), HttpTeamRateLimited)
                self.assertIsNone(error.quota)
                self.assertIsNone(error.scope)

    def test_a_json_body_that_is_not_an_object_still_gives_the_class(self):
        status, headers, _ = _refusal("team_rate_limited", 429, "x", "5")
        self.proxy.answer = (status, headers, b"[1, 2]")
        error = self.raised(lambda: http.get("http://api.example.com/"))
        self.assertIs(type(error), HttpTeamRateLimited)
        self.assertIsNone(error.quota)


class OtherAnswers(_ProxyTest):
    def test_a_body_cut_short_says_a_byte_budget_may_have_cut_it(self):
        # A response that crosses bytes_per_day is cut as max_response_bytes cuts it: the
        # helper sees only a short body, so its message names both.
        self.proxy.answer = (200, {"Content-Type": "text/plain"}, b"0123456789")
        self.proxy.cut_short_by = 90
        error = self.raised(lambda: http.get("http://api.example.com/big"))
        self.assertIs(type(error), tollgate_http.HttpConnectionError)
        self.assertEqual(error.error, "truncated")
        self.assertIn("bytes_per_day", error.message)

    def test_the_upstreams_own_429_is_returned_not_raised(self):
        # Only tollgate's answers carry Tollgate-Error; the upstream's 429 is the caller's.
        self.proxy.answer = (429, {"Retry-After": "9", "Content-Type": "application/json"},
                             b'{"detail": "slow down"}')
        response = http.get("http://api.example.com/")
        self.assertEqual(response["status_code"], 429)
        self.assertEqual(response["headers"]["retry-after"], "9")
        self.assertTrue(response["is_error"])

    def test_the_execution_budget_is_not_a_team_quota(self):
        self.proxy.answer = _refusal("request_limit_exceeded", 429, "max_requests used up")
        error = self.raised(lambda: http.get("http://api.example.com/"))
        self.assertIs(type(error), HttpRequestLimitExceeded)
        self.assertNotIsInstance(error, HttpQuotaExceeded)
        self.assertIsNone(error.retry_after)
        self.assertIsNone(error.quota)

    def test_every_class_is_exported(self):
        for name in ("HttpQuotaExceeded", "HttpTeamRateLimited", "HttpTeamBudgetExhausted",
                     "HttpQuotaUnavailable"):
            with self.subTest(name=name):
                self.assertIn(name, tollgate_http.__all__)
                self.assertTrue(issubclass(getattr(tollgate_http, name), HttpError))


if __name__ == "__main__":
    unittest.main()
