"""The one retry policy of the platform adapters (Stripe, Orb, Metronome, Lago), in one place.

A call that fails with a retryable error (rate limit, 5xx, network) is tried again up to
`max_retries` times. Before each retry the adapter waits what the platform asked for
(Retry-After, or Lago's x-ratelimit-reset) when it asked, else an exponential backoff capped
at `backoff_cap`. A requested wait past `retry_after_cap` would hold the push lock that long:
the adapter sets `halted` (the push run ends, the rest is left for the next run) and raises
its Backoff error; every later call raises it at once. Out of attempts: ProviderUnavailable.
What each platform does not retry, or maps to an error of ours (a refused key:
ProviderMisconfigured; Stripe's 409 in flight and Stripe-Should-Retry), is its `_not_retried`.

The SDKs' own retries are off so that this is the only retry loop. The figures the bench and
the push summary read stay on the adapter: `http_calls`, `retries`, `slept`, `halted`.
"""

from __future__ import annotations

from collections.abc import Callable

from billing.providers.base import ProviderUnavailable


def seconds(value) -> float | None:
    """A requested wait as seconds (never negative), or None when it is not a number."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class RetryPolicy:
    """Mixin for an adapter: set the class attributes, override the hooks that differ, call
    `_init_retry` from `__init__`, and send every SDK call through `_call`."""

    # The platform as the messages name it ("Orb").
    platform: str = ""
    # Where the platform's requested wait came from, as the halt message names it.
    wait_source: str = "Retry-After"
    # Raised when the platform asks for a wait past `retry_after_cap` (and after that).
    backoff_error: type[ProviderUnavailable] = ProviderUnavailable
    # The errors retried (unless `_not_retried` says otherwise).
    retryable: tuple[type[BaseException], ...] = ()

    halted: str = ""

    def _init_retry(
        self,
        *,
        max_retries: int,
        backoff_base: float,
        backoff_cap: float,
        retry_after_cap: float,
        sleep: Callable[[float], None],
    ) -> None:
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.retry_after_cap = retry_after_cap
        self._sleep = sleep
        self.http_calls = 0
        self.retries = 0
        self.slept: list[float] = []

    # --- hooks -----------------------------------------------------------------------------------

    def _requested_wait(self, exc: BaseException) -> float | None:
        """The wait in seconds the platform asked for with this error, or None."""
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
        return seconds(headers.get("Retry-After")) if headers is not None else None

    def _not_retried(self, exc: Exception) -> BaseException | None:
        """None to retry `exc`; else what to raise instead: `exc` itself (it goes up as it
        is) or an error of ours (raised from it), e.g. ProviderMisconfigured for a refused key."""
        return None if isinstance(exc, self.retryable) else exc

    def _describe(self, exc: BaseException) -> str:
        """The error as the out-of-attempts message shows it, after "<platform>: "."""
        return str(exc)

    # --- the policy ------------------------------------------------------------------------------

    def _delay(self, exc: BaseException, attempt: int) -> float:
        wait = self._requested_wait(exc)
        if wait is not None:
            if wait > self.retry_after_cap:
                # Sleeping that long would hold the push lock: stop, the next run goes on.
                self.halted = (
                    f"{self.platform} asked to wait {wait:g}s ({self.wait_source}), more than "
                    f"{self.retry_after_cap:g}s: the rest is left for the next run."
                )
                raise self.backoff_error(self.halted) from exc
            return wait
        return min(self.backoff_cap, self.backoff_base * (2**attempt))

    def _call(self, fn: Callable, *args, **kwargs):
        if self.halted:
            raise self.backoff_error(self.halted)
        attempt = 0
        while True:
            self.http_calls += 1
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                instead = self._not_retried(exc)
                if instead is exc:
                    raise
                if instead is not None:
                    raise instead from exc
                if attempt >= self.max_retries:
                    raise ProviderUnavailable(f"{self.platform}: {self._describe(exc)}") from exc
                delay = self._delay(exc, attempt)
                self.retries += 1
                self.slept.append(delay)
                self._sleep(delay)
                attempt += 1
