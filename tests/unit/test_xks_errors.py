"""The proxy's XKS error answers: the message as the spec allows it (printable ASCII, under 512
characters), whatever the key manager wrote, and the metrics of each answer counted once per request."""

from __future__ import annotations

import json

from xks_frontend.errors import MAX_MESSAGE, XksError, error_response, printable
from xks_frontend.metrics import XksMetrics


def test_a_printable_message_is_kept_and_anything_else_is_made_printable() -> None:
    plain = "SigV4 verification failed: the signature does not match"
    assert printable(plain) == plain
    assert printable("tab\there, é, \x7f and a line\nbreak") == "tab?here, ?, ? and a line?break"
    long = "x" * (MAX_MESSAGE + 1)
    assert printable(long) == "x" * (MAX_MESSAGE - 3) + "..."
    assert printable("x" * MAX_MESSAGE) == "x" * MAX_MESSAGE


def test_an_error_answer_is_one_json_line_with_its_status() -> None:
    response = error_response(XksError("AuthenticationFailedException", "bad\nsignature"))
    assert response.status == 401 and response.content_type == "application/json"
    assert isinstance(response.body, bytes) and b"\n" not in response.body
    assert json.loads(response.body) == {
        "errorName": "AuthenticationFailedException",
        "errorMessage": "bad?signature",
    }


def test_each_answer_is_counted_in_its_series() -> None:
    metrics = XksMetrics()
    for _ in range(3):
        metrics.observe("Encrypt", "AuthenticationFailedException", 0.002)
    metrics.observe("Encrypt", None, 0.3)
    metrics.observe("Decrypt", "AuthenticationFailedException", 0.002)
    text = metrics.render().decode()
    assert 'xks_proxy_requests_total{operation="Encrypt",outcome="AuthenticationFailedException"} 3.0' in text
    assert 'xks_proxy_requests_total{operation="Encrypt",outcome="success"} 1.0' in text
    assert (
        'xks_proxy_errors_total{error_name="AuthenticationFailedException",operation="Encrypt"} 3.0' in text
    )
    assert (
        'xks_proxy_errors_total{error_name="AuthenticationFailedException",operation="Decrypt"} 1.0' in text
    )
    assert 'xks_proxy_latency_seconds_count{operation="Encrypt"} 4.0' in text
    assert 'xks_proxy_latency_seconds_bucket{le="0.25",operation="Encrypt"} 3.0' in text
