"""The settings' errors: what a refused value shows of itself."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import ServiceSettings

# 51 characters, the shape of a real secret, but not valid base64 (the startup error once
# showed ~48 of them).
MALFORMED_SECRET = "whsec_" + "Zm9vYmFyYmF6cXV4" * 2 + "!!notbase64!!"


def test_a_malformed_webhook_secret_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QVGEN_WEBHOOK_SECRET", MALFORMED_SECRET)
    with pytest.raises(ValidationError) as raised:
        ServiceSettings()
    text = str(raised.value)
    assert "QVGEN_WEBHOOK_SECRET must read whsec_" in text  # still says what to do
    assert "Zm9vYmFy" not in text and "notbase64" not in text, text


def test_a_refused_value_beside_the_keys_shows_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QVGEN_API_KEYS", "sk-live-very-secret-key")
    monkeypatch.setenv("QVGEN_MAX_BODY_BYTES", "sk-live-very-secret-key")  # a paste error
    with pytest.raises(ValidationError) as raised:
        ServiceSettings()
    assert "very-secret" not in str(raised.value)
