"""Time limits on the Hub's HTTP requests: a timeout on every request huggingface_hub sends, and a deadline on a
whole operation (a push and its pre-flight), so no Hub call can wait forever.

Where ddpm_ext uses them: pushes and the training run's pre-flight ([`ddpm_ext.hub.push`], a deadline), the
download of a pipeline by repo id ([`ddpm_ext.pipelines.checkpoint_io`]) and of a Hub data set
([`ddpm_ext.data.loading`]) (a timeout on each request; a download's length depends on its size).

huggingface_hub (>= 1.0) sends every request through one shared `httpx` client, made by its client factory, with
no timeout of its own (`timeout=None`; only downloads and HEAD requests pass `HF_HUB_DOWNLOAD_TIMEOUT` /
`HF_HUB_ETAG_TIMEOUT`). Its retries (`http_backoff`: up to 5, 1 to 8 s apart, on timeouts, network errors and
5xx) then repeat a request that never ends. [`hub_time_limits`] installs, while a `with` block is open, a client
factory that wraps the previous one and adds a request hook: each request's connect, read, write and pool timeouts
become at most `timeout` seconds and at most the time left before the deadline, and once the deadline has passed
every new request (a retry included) raises [`HubDeadlineError`] at once instead of being sent. Blocks nest and
may be open in several threads; every request obeys the strictest open one.
[`run_with_deadline`] runs a function under these limits in a worker thread and gives up at the deadline, so even
work outside `httpx` (e.g. the optional `hf_xet` uploader) cannot hold the caller past it.

Older huggingface_hub versions (requests-based, no `set_client_factory`) keep their own behaviour; the deadline of
[`run_with_deadline`] still holds.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["DEFAULT_REQUEST_TIMEOUT", "HubDeadlineError", "hub_time_limits", "run_with_deadline"]

T = TypeVar("T")

DEFAULT_REQUEST_TIMEOUT = 60.0  # seconds without progress on one request (connect, one read, one write)


class HubDeadlineError(TimeoutError):
    """A Hub operation did not finish before its deadline."""


@dataclass(eq=False)  # each scope is its own entry, removed by identity
class _Limits:
    timeout: float
    deadline: float | None
    what: str


_LOCK = threading.Lock()
_ACTIVE: list[_Limits] = []  # the limits of every open `hub_time_limits` block, of any thread
_PREVIOUS_FACTORY: list[Callable[[], Any]] = []  # the factory in place before the first open block


def _limit_request(request: Any) -> None:
    """The httpx request hook: clamp the request's timeouts to the strictest open block's `timeout` and to the time
    left before its deadline; past a deadline, refuse the request (a retry included) instead of sending it."""
    with _LOCK:
        active = list(_ACTIVE)
    if not active:
        return
    limit = min(a.timeout for a in active)
    now = time.monotonic()
    for a in active:
        if a.deadline is not None:
            if a.deadline <= now:
                raise HubDeadlineError(f"{a.what} passed its deadline; {request.method} {request.url} was not sent")
            limit = min(limit, a.deadline - now)
    current = request.extensions.get("timeout") or {}
    request.extensions["timeout"] = {
        key: limit if current.get(key) is None else min(current[key], limit)
        for key in ("connect", "read", "write", "pool")
    }


@contextlib.contextmanager
def hub_time_limits(
    timeout: float | None = None, deadline: float | None = None, what: str = "the Hub operation"
) -> Iterator[None]:
    """Bound every request huggingface_hub sends inside the block: each waits at most `timeout` seconds for a
    connection, a read or a write, and none is sent or waits past `deadline` (a `time.monotonic()` time).

    Blocks may nest and may be open in several threads at once: every request obeys the strictest open block. The
    client factory in place before the first block (huggingface_hub's default, or one set with
    `set_client_factory`) is wrapped, not replaced, and restored when the last block closes; the shared client is
    recreated then and when the first block opens.

    Args:
        timeout (`float`, *optional*): Seconds one request may wait without progress (> 0); default
            [`DEFAULT_REQUEST_TIMEOUT`].
        deadline (`float`, *optional*): `time.monotonic()` time after which no request is sent and every open one
            times out; None: only `timeout`.
        what (`str`): The operation's name for [`HubDeadlineError`]'s message.

    Example:

    ```py
    >>> import time
    >>> from ddpm_ext.network import hub_time_limits
    >>> with hub_time_limits(timeout=10, deadline=time.monotonic() + 60):
    ...     pass  # HfApi().create_repo(...), snapshot_download(...): every request bounded

    ```
    """
    timeout = DEFAULT_REQUEST_TIMEOUT if timeout is None else timeout
    if isinstance(timeout, bool) or not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"`timeout` must be a number of seconds > 0, got {timeout!r}.")
    try:
        from huggingface_hub.utils import _http, set_client_factory  # noqa: PLC0415 (huggingface_hub >= 1.0)
    except ImportError:  # requests-based huggingface_hub: its own timeouts apply
        yield
        return
    limits = _Limits(float(timeout), deadline, what)
    with _LOCK:
        if not _ACTIVE:
            previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", None) or _http.default_client_factory
            _PREVIOUS_FACTORY[:] = [previous]

            def bounded_client() -> Any:
                client = previous()
                hooks = client.event_hooks
                client.event_hooks = {**hooks, "request": [*hooks.get("request", []), _limit_request]}
                return client

            set_client_factory(bounded_client)  # closes the shared client: the next request makes a bounded one
        _ACTIVE.append(limits)
    try:
        yield
    finally:
        with _LOCK:
            _ACTIVE.remove(limits)
            if not _ACTIVE:
                set_client_factory(_PREVIOUS_FACTORY.pop())  # closes the bounded client: open requests end now


def run_with_deadline(
    fn: Callable[[], T], seconds: float, *, timeout: float | None = None, what: str = "the Hub operation"
) -> T:
    """`fn()` under [`hub_time_limits`] with a deadline `seconds` from now: its result, its exception, or
    [`HubDeadlineError`] once `seconds` have passed.

    `fn` runs in a daemon thread; at the deadline the caller gets the error at once, and `fn`'s requests end (no
    new request is sent, the shared client is closed), so the thread ends soon after.

    Raises:
        ValueError: when `seconds` is not a number > 0.
        HubDeadlineError: when `fn` has not returned after `seconds`.
    """
    if not (isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and 0 < seconds < float("inf")):
        raise ValueError(f"The deadline must be a finite number of seconds > 0, got {seconds!r}.")
    deadline = time.monotonic() + seconds
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as e:  # noqa: BLE001 (handed to the caller's thread)
            outcome["error"] = e

    timeout = DEFAULT_REQUEST_TIMEOUT if timeout is None else timeout
    with hub_time_limits(timeout=min(timeout, seconds), deadline=deadline, what=what):
        worker = threading.Thread(target=target, name="ddpm-ext-hub", daemon=True)
        worker.start()
        worker.join(max(0.0, deadline - time.monotonic()) + 0.5)  # + 0.5 s: a request that timed out at the deadline
    error = outcome.get("error")
    # a request cut at the deadline raises the client's own timeout error (ReadTimeout, ConnectTimeout, ...)
    cut = error is not None and time.monotonic() >= deadline and "timeout" in type(error).__name__.lower()
    if worker.is_alive() or isinstance(error, HubDeadlineError) or cut:
        raise HubDeadlineError(f"{what} did not finish within {seconds:g} s") from error
    if error is not None:
        raise error
    return outcome["value"]
