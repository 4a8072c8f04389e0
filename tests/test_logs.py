"""Log lines never show a password: ``redact_url`` hides it wherever a URL may carry one."""

from __future__ import annotations

import pytest

from kibitz import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://kibitz:s3cret@nats-1", "nats://kibitz:***@nats-1"),
        ("nats://kibitz:s3cret@nats-1:4222", "nats://kibitz:***@nats-1:4222"),
        ("redis://:s3cret@cache:6380/0?ssl_cert_reqs=none", "redis://:***@cache:6380/0?ssl_cert_reqs=none"),
        ("redis://cache/0?password=s3cret&db=1", "redis://cache/0?password=***&db=1"),
        ("nats://nats-1:4222", "nats://nats-1:4222"),
    ],
)
def test_redact_url_hides_the_password_and_keeps_the_rest(url: str, shown: str) -> None:
    assert redact_url(url) == shown
