"""The one retry policy the platform adapters share (billing/providers/retry.py), on its own:
a stand-in adapter whose calls fail as scripted, with the sleep recorded instead of slept."""

import pytest

from billing.providers.base import ProviderMisconfigured, ProviderUnavailable
from billing.providers.retry import RetryPolicy, seconds


class Busy(Exception):
    def __init__(self, retry_after=None):
        super().__init__("busy")
        self.retry_after = retry_after


class Refused(Exception):
    pass


class Invalid(Exception):
    pass


class PlatformBackoff(ProviderUnavailable):
    pass


class Adapter(RetryPolicy):
    platform = "Platform"
    backoff_error = PlatformBackoff
    retryable = (Busy,)

    def __init__(self, *, max_retries=6, backoff_cap=30.0, retry_after_cap=30.0):
        self.slept_for: list[float] = []
        self._init_retry(
            max_retries=max_retries,
            backoff_base=0.5,
            backoff_cap=backoff_cap,
            retry_after_cap=retry_after_cap,
            sleep=self.slept_for.append,
        )

    def _requested_wait(self, exc):
        return seconds(getattr(exc, "retry_after", None))

    def _not_retried(self, exc):
        if isinstance(exc, Refused):
            return ProviderMisconfigured(f"Platform refused our key: {exc}")
        return super()._not_retried(exc)


def failing(*errors, answer="ok"):
    """A call that raises `errors` in turn, then answers."""
    pending = list(errors)

    def call():
        if pending:
            raise pending.pop(0)
        return answer

    return call


def test_requested_wait_is_slept_before_the_retry():
    adapter = Adapter()
    assert adapter._call(failing(Busy(retry_after="7"), Busy(retry_after="0.25"))) == "ok"
    assert adapter.slept == [7.0, 0.25]
    assert adapter.slept_for == [7.0, 0.25]
    assert (adapter.http_calls, adapter.retries, adapter.halted) == (3, 2, "")


def test_wait_past_the_cap_halts_the_run_with_the_message():
    adapter = Adapter(retry_after_cap=30)
    with pytest.raises(PlatformBackoff) as raised:
        adapter._call(failing(Busy(retry_after="120")))
    message = (
        "Platform asked to wait 120s (Retry-After), more than 30s: "
        "the rest is left for the next run."
    )
    assert str(raised.value) == adapter.halted == message
    assert adapter.slept_for == [] and adapter.retries == 0

    # Halted: every later call stops before reaching the platform.
    with pytest.raises(PlatformBackoff, match="asked to wait 120s"):
        adapter._call(failing())
    assert adapter.http_calls == 1


def test_without_a_requested_wait_the_backoff_doubles_up_to_its_cap():
    adapter = Adapter(backoff_cap=3.0)
    unreadable = Busy(retry_after="soon")  # not a number: backoff as if none were asked
    assert adapter._call(failing(Busy(), Busy(), unreadable, Busy(), Busy())) == "ok"
    assert adapter.slept == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_out_of_attempts_is_provider_unavailable():
    adapter = Adapter(max_retries=2)
    with pytest.raises(ProviderUnavailable) as raised:
        adapter._call(failing(Busy(), Busy(), Busy()))
    assert str(raised.value) == "Platform: busy"
    assert not isinstance(raised.value, PlatformBackoff)
    assert (adapter.http_calls, adapter.retries, adapter.slept) == (3, 2, [0.5, 1.0])
    assert adapter.halted == ""


def test_errors_not_retried_go_up_as_they_are_or_mapped():
    adapter = Adapter()
    invalid = Invalid("bad request")
    with pytest.raises(Invalid) as raised:
        adapter._call(failing(invalid))
    assert raised.value is invalid

    refused = Refused("401")
    with pytest.raises(ProviderMisconfigured, match="Platform refused our key: 401") as mapped:
        adapter._call(failing(refused))
    assert mapped.value.__cause__ is refused
    assert (adapter.http_calls, adapter.retries) == (2, 0)
