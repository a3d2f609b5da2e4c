"""Notifications: which events a job raises, and how they reach people.

Vocabulary:

* An *event* is one of ``failure`` (a run failed), ``rpo_breach`` (the newest
  snapshot present in every repository of the job became older than the RPO),
  ``recovery`` (the first good run after a failure, or the RPO back within its
  objective) and ``success`` (any good run; opt-in).
* ``transitions`` is the pure rule that turns "what the job looked like before"
  and "what it looks like now" into events; ``advance`` adds the reminder rule for
  a breach that persists (re-sent at most once per ``RPO_REMINDER_INTERVAL``).
* A *notice* is one event of one job, with a one-line summary and details.
* A *target* is where notices go: a ``WebhookTarget`` (JSON POST) or an
  ``EmailTarget`` (SMTP). Its ``on`` set names the events it wants.
* A *delivery* is the outcome of sending one notice to one target, retries
  included; every delivery is handed to the ``record`` callback (the scheduler
  stores it in the state database).

Sending never raises: a notification that cannot be delivered must not turn a
good backup into a failed one, so failures become ``Delivery(ok=False)``.
Secrets (SMTP password, webhook headers) arrive already resolved; this module
never reads files or the environment. The webhook body and the retry rules are
documented in docs/notifications.md.
"""

from __future__ import annotations

import http.client
import json
import logging
import smtplib
import socket
import ssl
import time as _time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from resurgo import __version__
from resurgo.errors import ResurgoError, UsageError

if TYPE_CHECKING:
    from resurgo.dr.plan import NotificationSpec
    from resurgo.dr.state import StateDB

_log = logging.getLogger(__name__)

FAILURE = "failure"
RPO_BREACH = "rpo_breach"
RECOVERY = "recovery"
SUCCESS = "success"
EVENTS: frozenset[str] = frozenset({FAILURE, RPO_BREACH, RECOVERY, SUCCESS})
DEFAULT_EVENTS: frozenset[str] = frozenset({FAILURE, RPO_BREACH, RECOVERY})
# Order in which a batch of events is sent: the bad news first.
_EVENT_ORDER = (FAILURE, RPO_BREACH, RECOVERY, SUCCESS)

# Run outcomes (the state database's ``runs.outcome``). "interrupted" is neither
# good nor bad: the run was cut short by a shutdown and says nothing about the job.
GOOD_OUTCOMES: frozenset[str] = frozenset({"success", "warning"})
BAD_OUTCOMES: frozenset[str] = frozenset({"failure"})

# A breach that lasts is re-notified at most this often (and a daemon restart
# during a breach does not re-notify before it has passed).
RPO_REMINDER_INTERVAL = 24 * 3600.0

WEBHOOK_SCHEMA = "resurgo.notice/1"
_MAX_RESPONSE_READ = 64 * 1024  # bytes of a webhook response kept for the record


# --- events ---------------------------------------------------------------------------


def transitions(
    previous_outcome: str | None,
    new_outcome: str | None,
    rpo_ok_before: bool | None,
    rpo_ok_now: bool | None,
) -> list[str]:
    """The events raised when a job moves from one observed state to the next.

    ``previous_outcome`` is the outcome of the last decisive run before this one
    (``success``/``warning``/``failure``; None when unknown); ``new_outcome`` that
    of the run that just ended (None when no run ended: a periodic RPO check).
    ``rpo_ok_*`` say whether the RPO age was within the objective (None: no
    objective or not known). Rules:

    * ``failure`` for every failed run;
    * ``recovery`` once, for the first good run after a failure, or when the RPO
      comes back within its objective; never together with ``failure``;
    * ``rpo_breach`` when the RPO goes from within the objective (or unknown) to
      breached; a breach that persists raises nothing here (see ``advance``);
    * ``success`` for every good run (targets opt in to it).

    Returned in sending order, without duplicates.
    """
    events: set[str] = set()
    if new_outcome in BAD_OUTCOMES:
        events.add(FAILURE)
    elif new_outcome in GOOD_OUTCOMES:
        events.add(SUCCESS)
        if previous_outcome in BAD_OUTCOMES:
            events.add(RECOVERY)
    if rpo_ok_now is False and rpo_ok_before is not False:
        events.add(RPO_BREACH)
    if rpo_ok_now is True and rpo_ok_before is False and FAILURE not in events:
        events.add(RECOVERY)
    return [e for e in _EVENT_ORDER if e in events]


@dataclass(frozen=True)
class AlertState:
    """What the event rules remember about one job between observations.

    ``outcome``: the last decisive run outcome; ``rpo_ok``: the last RPO verdict;
    ``breach_notified``: when the last ``rpo_breach`` notice went out. All three
    can be rebuilt from the state database after a restart (runs and
    notifications tables); ``rpo_ok`` may then be left None.
    """

    outcome: str | None = None
    rpo_ok: bool | None = None
    breach_notified: float | None = None


def advance(
    state: AlertState,
    *,
    now: float,
    outcome: str | None = None,
    rpo_ok: bool | None = None,
    remind_every: float = RPO_REMINDER_INTERVAL,
) -> tuple[list[str], AlertState]:
    """``transitions`` plus the reminder rule; returns the events and the next state.

    ``outcome`` is the outcome of a run that just ended (None for a periodic
    check); ``rpo_ok`` the current RPO verdict (None: not evaluated, the previous
    verdict stands). A breach raises ``rpo_breach`` again once ``remind_every``
    seconds have passed since the last breach notice. After a restart
    (``rpo_ok`` unknown) a breach is notified only if no breach notice went out
    within ``remind_every``, so restarting the daemon does not spam.
    """
    current_rpo = state.rpo_ok if rpo_ok is None else rpo_ok
    events = transitions(state.outcome, outcome, state.rpo_ok, current_rpo)
    recent = state.breach_notified is not None and now - state.breach_notified < remind_every
    if RPO_BREACH in events and state.rpo_ok is None and recent:
        events.remove(RPO_BREACH)
    elif current_rpo is False and state.rpo_ok is False and not recent:
        events.insert(_insert_at(events, RPO_BREACH), RPO_BREACH)
    next_outcome = outcome if outcome in GOOD_OUTCOMES | BAD_OUTCOMES else state.outcome
    notified = now if RPO_BREACH in events else state.breach_notified
    return events, AlertState(outcome=next_outcome, rpo_ok=current_rpo, breach_notified=notified)


def alert_state_from(state_db: StateDB, job: str) -> AlertState:
    """Rebuild a job's ``AlertState`` from the state database after a restart.

    The outcome comes from the newest decisive run, ``breach_notified`` from the newest *delivered*
    ``rpo_breach`` notification (a breach whose notices all failed is sent again).
    ``rpo_ok`` is left unknown; ``advance`` handles that case.
    """
    outcome = next((r.outcome for r in state_db.last_runs(job, 50)
                    if r.outcome in GOOD_OUTCOMES | BAD_OUTCOMES), None)
    notified = next((n.time for n in state_db.last_notifications(job, 50, event=RPO_BREACH)
                     if n.ok), None)
    return AlertState(outcome=outcome, rpo_ok=None, breach_notified=notified)


def _insert_at(events: list[str], event: str) -> int:
    rank = _EVENT_ORDER.index(event)
    return sum(1 for e in events if _EVENT_ORDER.index(e) < rank)


# --- notices ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Notice:
    """One event of one job. ``time`` is Unix seconds; ``details`` is JSON-able."""

    event: str
    job: str
    time: float
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise ValueError(f"unknown notification event {self.event!r}")

    def to_dict(self, host: str = "") -> dict[str, Any]:
        """The webhook body (schema ``resurgo.notice/1``, docs/notifications.md)."""
        return {
            "schema": WEBHOOK_SCHEMA,
            "event": self.event,
            "job": self.job,
            "host": host,
            "time": iso_time(self.time),
            "timestamp": self.time,
            "summary": self.summary,
            "details": self.details,
            "resurgo_version": __version__,
        }


def iso_time(t: float) -> str:
    """Unix seconds as ISO 8601 UTC with a ``Z``, to the second."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _short_duration(seconds: float) -> str:
    s = int(seconds)
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def make_notice(event: str, job: str, time: float, **details: Any) -> Notice:
    """A notice with the standard summary line, built from well-known ``details``.

    Details used in the summary when present: ``error`` (failure), ``rpo_age`` and
    ``rpo`` in seconds (rpo_breach), ``reason`` (recovery: ``"run"`` or ``"rpo"``),
    ``bytes_added`` (success). Every detail is passed on unchanged.
    """
    if event == FAILURE:
        summary = f"job {job} failed: {details.get('error') or 'unknown error'}"
    elif event == RPO_BREACH:
        age, rpo = details.get("rpo_age"), details.get("rpo")
        objective = f" (objective {_short_duration(rpo)})" if rpo is not None else ""
        if age is None:
            summary = f"job {job}: RPO breached: no snapshot is present in every repository"
        else:
            summary = (
                f"job {job}: RPO breached: the newest snapshot present in every repository "
                f"is {_short_duration(age)} old{objective}"
            )
    elif event == RECOVERY:
        if details.get("reason") == "rpo":
            summary = f"job {job} recovered: RPO back within its objective"
        else:
            summary = f"job {job} recovered: the run succeeded after a failure"
    elif event == SUCCESS:
        summary = f"job {job} succeeded"
    else:
        raise ValueError(f"unknown notification event {event!r}")
    return Notice(event=event, job=job, time=time, summary=summary, details=dict(details))


# --- targets ----------------------------------------------------------------------------


def _check_common(name: str, on: frozenset[str], attempts: int, timeout: float) -> None:
    unknown = sorted(set(on) - EVENTS)
    if unknown:
        raise UsageError(
            f"notification {name}: unknown event(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(EVENTS))})"
        )
    if attempts < 1:
        raise UsageError(f"notification {name}: attempts must be at least 1")
    if timeout <= 0:
        raise UsageError(f"notification {name}: timeout must be positive")


@dataclass(frozen=True)
class WebhookTarget:
    """A JSON POST to ``url`` (http or https).

    ``headers`` are added to the request (an ``Authorization`` header from a
    secret, say). ``attempts`` counts the first try. TLS verifies the server
    certificate against the system roots, or against ``ca_file`` only when it is
    given; ``tls_verify=False`` turns verification off (test servers only).
    """

    name: str
    url: str
    on: frozenset[str] = DEFAULT_EVENTS
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    timeout: float = 10.0
    attempts: int = 4
    backoff: float = 1.0
    max_backoff: float = 30.0
    tls_verify: bool = True
    ca_file: str | None = None

    kind = "webhook"

    def __post_init__(self) -> None:
        object.__setattr__(self, "on", frozenset(self.on))
        _check_common(self.name, self.on, self.attempts, self.timeout)
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"notification {self.name}: webhook URL must be http(s)://host/...")


@dataclass(frozen=True)
class EmailTarget:
    """An e-mail through an SMTP server (submission port 587 with STARTTLS by default).

    With ``starttls`` the connection is upgraded before anything else is said and
    the message is not sent when the server does not offer STARTTLS (no silent
    downgrade). Credentials (``username`` + ``password``, AUTH PLAIN or LOGIN) are
    only accepted together with ``starttls``: a password never crosses the
    network in clear. Certificate checks as for ``WebhookTarget``.
    """

    name: str
    host: str
    sender: str
    to: tuple[str, ...]
    on: frozenset[str] = DEFAULT_EVENTS
    port: int = 587
    starttls: bool = True
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    attempts: int = 3
    backoff: float = 5.0
    max_backoff: float = 60.0
    tls_verify: bool = True
    ca_file: str | None = None

    kind = "email"

    def __post_init__(self) -> None:
        object.__setattr__(self, "on", frozenset(self.on))
        object.__setattr__(self, "to", tuple(self.to))
        _check_common(self.name, self.on, self.attempts, self.timeout)
        if not self.to:
            raise UsageError(f"notification {self.name}: no recipients ('to' is empty)")
        if not self.sender:
            raise UsageError(f"notification {self.name}: no sender ('from' is empty)")
        if self.username and not self.starttls:
            raise UsageError(
                f"notification {self.name}: SMTP authentication needs starttls = true "
                "(the password would travel in clear)"
            )
        if self.username and self.password is None:
            raise UsageError(f"notification {self.name}: username given but no password")


Target = WebhookTarget | EmailTarget


def target_from_spec(spec: NotificationSpec, *, password: str | None = None) -> Target:
    """A target from a plan ``NotificationSpec`` (``resurgo.dr.plan``).

    ``password`` is the resolved SMTP password (the caller reads
    ``password_file``/``password_env``). Raises ``UsageError`` for a spec the
    target cannot use (missing URL, host or sender).
    """
    extra: dict[str, Any] = {"tls_verify": spec.tls_verify, "ca_file": spec.ca_file}
    if spec.timeout is not None:
        extra["timeout"] = spec.timeout
    on = frozenset(spec.on) if spec.on else DEFAULT_EVENTS
    if spec.type == "webhook":
        if not spec.url:
            raise UsageError(f"notification {spec.name}: no url")
        return WebhookTarget(name=spec.name, url=spec.url, on=on, **extra)
    if spec.type == "email":
        if not spec.smtp_host or not spec.sender:
            raise UsageError(f"notification {spec.name}: smtp_host and from are required")
        return EmailTarget(
            name=spec.name, host=spec.smtp_host, port=spec.smtp_port, sender=spec.sender,
            to=tuple(spec.to), on=on, starttls=spec.starttls, username=spec.username or None,
            password=password, **extra,
        )
    raise UsageError(f"notification {spec.name}: unknown type {spec.type!r}")


# --- sending ----------------------------------------------------------------------------


class NotificationError(ResurgoError):
    """One attempt to deliver a notice failed. ``retry_after``: a server-given delay."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None):
        super().__init__(message, retryable=retryable)
        self.retry_after = retry_after


def _tls_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    # With ca_file, only that bundle is trusted (create_default_context loads the
    # system roots only when no CA is given): the way to trust a private CA or a
    # self-signed server while still checking the certificate and host name.
    ctx = ssl.create_default_context(cafile=ca_file)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirected POST loses its body (or turns into a GET); a webhook that
    # redirects is misconfigured, so the 3xx is reported instead of followed.
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        return None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP date: ignored, our own backoff applies
    return seconds if seconds >= 0 else None


def send_webhook(target: WebhookTarget, notice: Notice, host: str) -> str:
    """POST the notice as JSON once. Returns a short success detail.

    Raises ``NotificationError``: retryable for connection errors, timeouts and
    HTTP 5xx; not retryable for 3xx/4xx and certificate failures.
    """
    body = json.dumps(notice.to_dict(host), sort_keys=True, default=str).encode("utf-8")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"resurgo/{__version__}",
        "X-Resurgo-Event": notice.event,
        **target.headers,
    }
    request = urllib.request.Request(target.url, data=body, headers=headers, method="POST")
    # ProxyHandler({}): no proxy from the environment (the engine never reads it).
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        _NoRedirect(),
        urllib.request.HTTPSHandler(context=_tls_context(target.tls_verify, target.ca_file)),
    )
    try:
        with opener.open(request, timeout=target.timeout) as response:
            response.read(_MAX_RESPONSE_READ)
            return f"HTTP {response.status}"
    except urllib.error.HTTPError as e:
        try:
            e.read(_MAX_RESPONSE_READ)
        except OSError:
            pass
        finally:
            e.close()
        detail = f"HTTP {e.code} {e.reason}".rstrip()
        if e.code >= 500:
            retry_after = _retry_after(e.headers.get("Retry-After") if e.headers else None)
            raise NotificationError(detail, retryable=True, retry_after=retry_after)
        raise NotificationError(detail, retryable=False)
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise NotificationError(f"TLS certificate rejected: {reason}", retryable=False)
        raise NotificationError(f"connection failed: {reason}", retryable=True)
    except ssl.SSLCertVerificationError as e:
        raise NotificationError(f"TLS certificate rejected: {e}", retryable=False)
    except (OSError, ConnectionError) as e:  # timeouts while reading, resets
        raise NotificationError(f"connection failed: {e}", retryable=True)
    except http.client.HTTPException as e:  # a malformed or cut-off response
        raise NotificationError(f"bad response: {type(e).__name__} {e}".rstrip(), retryable=True)


def build_email(target: EmailTarget, notice: Notice, host: str) -> EmailMessage:
    """The message sent for ``notice``: plain text, one subject line, details listed."""
    msg = EmailMessage()
    where = f" on {host}" if host else ""
    msg["Subject"] = f"[resurgo] {notice.event.upper()}: {notice.summary}{where}"
    msg["From"] = target.sender
    msg["To"] = ", ".join(target.to)
    msg["Date"] = formatdate(notice.time, usegmt=True)
    msg["Message-ID"] = make_msgid(domain=_msgid_domain(target.sender))
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies, please
    msg["X-Resurgo-Event"] = notice.event
    msg["X-Resurgo-Job"] = notice.job
    lines = [
        notice.summary,
        "",
        f"event: {notice.event}",
        f"job:   {notice.job}",
        f"host:  {host or '-'}",
        f"time:  {iso_time(notice.time)}",
    ]
    if notice.details:
        lines += ["", "details:"]
        lines += [f"  {key}: {_detail_text(value)}" for key, value in sorted(notice.details.items())]
    lines += ["", f"-- resurgo {__version__}"]
    msg.set_content("\n".join(lines) + "\n")
    return msg


def _msgid_domain(sender: str) -> str | None:
    # make_msgid would otherwise call socket.getfqdn(), which may block on DNS.
    _, _, domain = sender.rpartition("@")
    return domain.strip("> ") or "localhost"


def _detail_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def send_email(target: EmailTarget, notice: Notice, host: str) -> str:
    """Send the notice by SMTP once. Returns a short success detail.

    Raises ``NotificationError``: retryable for connection errors, timeouts and
    SMTP 4xx replies; not retryable for authentication failures, 5xx replies,
    missing STARTTLS and certificate failures.
    """
    msg = build_email(target, notice, host)
    try:
        with smtplib.SMTP(target.host, target.port, timeout=target.timeout,
                          local_hostname=host or None) as smtp:
            smtp.ehlo()
            if target.starttls:
                if not smtp.has_extn("starttls"):
                    raise NotificationError(
                        f"{target.host}:{target.port} does not offer STARTTLS", retryable=False
                    )
                smtp.starttls(context=_tls_context(target.tls_verify, target.ca_file))
                smtp.ehlo()
            if target.username:
                smtp.login(target.username, target.password or "")
            refused = smtp.send_message(msg)
    except NotificationError:
        raise
    except smtplib.SMTPAuthenticationError as e:
        raise NotificationError(f"SMTP authentication failed: {_smtp_reply(e)}", retryable=False)
    except smtplib.SMTPNotSupportedError as e:
        raise NotificationError(f"SMTP server does not support: {e}", retryable=False)
    except smtplib.SMTPRecipientsRefused as e:
        codes = [code for code, _ in e.recipients.values()]
        transient = bool(codes) and all(400 <= c < 500 for c in codes)
        raise NotificationError(f"all recipients refused: {_refused(e.recipients)}",
                                retryable=transient)
    except smtplib.SMTPResponseException as e:
        raise NotificationError(f"SMTP error: {_smtp_reply(e)}",
                                retryable=400 <= e.smtp_code < 500)
    except smtplib.SMTPServerDisconnected as e:
        raise NotificationError(f"SMTP connection lost: {e}", retryable=True)
    except smtplib.SMTPException as e:
        raise NotificationError(f"SMTP error: {e}", retryable=False)
    except ssl.SSLCertVerificationError as e:
        raise NotificationError(f"TLS certificate rejected: {e}", retryable=False)
    except OSError as e:  # refused, unreachable, timeout, TLS handshake cut short
        raise NotificationError(f"connection failed: {e}", retryable=True)
    if refused:
        # Some recipients got it: trying again would send them a second copy.
        raise NotificationError(f"some recipients refused: {_refused(refused)}", retryable=False)
    return f"sent to {len(target.to)} recipient(s)"


def _smtp_reply(e: smtplib.SMTPResponseException) -> str:
    text = e.smtp_error.decode("utf-8", "replace") if isinstance(e.smtp_error, bytes) else str(
        e.smtp_error)
    return f"{e.smtp_code} {text}".strip()


def _refused(recipients: Mapping[str, tuple[int, bytes]]) -> str:
    return ", ".join(f"{addr} ({code})" for addr, (code, _) in sorted(recipients.items()))


SendFn = Callable[[Any, Notice, str], str]
DEFAULT_SENDERS: Mapping[str, SendFn] = {"webhook": send_webhook, "email": send_email}


@dataclass(frozen=True)
class Delivery:
    """How sending one notice to one target went (a row of the notifications table)."""

    time: float
    job: str
    event: str
    target: str
    ok: bool
    detail: str
    attempts: int


def state_recorder(state_db: StateDB) -> Callable[[Delivery], None]:
    """A ``record`` callback that stores each delivery in a ``StateDB``'s notifications."""

    def record(d: Delivery) -> None:
        state_db.record_notification(d.job, d.event, d.target, d.ok, d.detail, time=d.time)

    return record


class Notifier:
    """Sends notices to the targets that asked for their event, with bounded retries.

    ``clock`` stamps deliveries; ``sleep`` waits between attempts (both injectable
    for tests). ``record`` receives every ``Delivery``. ``senders`` maps a target
    kind (``"webhook"``, ``"email"``) to a send function, for tests. Thread-safe
    as long as ``record`` is: a Notifier keeps no state between notices.
    """

    def __init__(
        self,
        targets: Iterable[Target],
        clock: Callable[[], float] = _time.time,
        sleep: Callable[[float], None] = _time.sleep,
        *,
        record: Callable[[Delivery], None] | None = None,
        hostname: str | None = None,
        senders: Mapping[str, SendFn] | None = None,
    ) -> None:
        self.targets: dict[str, Target] = {}
        for target in targets:
            if target.name in self.targets:
                raise UsageError(f"duplicate notification target {target.name!r}")
            self.targets[target.name] = target
        self.clock = clock
        self.sleep = sleep
        self.record = record
        self.hostname = socket.gethostname() if hostname is None else hostname
        self.senders = dict(DEFAULT_SENDERS if senders is None else senders)

    def recipients(self, event: str, only: Iterable[str] | None = None) -> list[Target]:
        """Targets subscribed to ``event``, limited to the names in ``only`` when given."""
        names = list(self.targets) if only is None else list(dict.fromkeys(only))
        chosen = []
        for name in names:
            target = self.targets.get(name)
            if target is None:
                _log.warning("notification target %r is not defined; skipped", name)
            elif event in target.on:
                chosen.append(target)
        return chosen

    def notify(self, notice: Notice, *, only: Iterable[str] | None = None) -> list[Delivery]:
        """Send ``notice`` to every subscribed target; one ``Delivery`` per target."""
        return [self._deliver(target, notice) for target in self.recipients(notice.event, only)]

    def notify_all(
        self, notices: Sequence[Notice], *, only: Iterable[str] | None = None
    ) -> list[Delivery]:
        """Send a batch (the events of one observation), bad news first.

        A target that gets a job's ``recovery`` does not also get its ``success``
        from the same batch: the recovery notice already says the run succeeded.
        """
        names = None if only is None else list(only)
        ordered = sorted(notices, key=lambda n: _EVENT_ORDER.index(n.event))
        recovered: set[tuple[str, str]] = set()
        deliveries = []
        for notice in ordered:
            for target in self.recipients(notice.event, names):
                if notice.event == SUCCESS and (target.name, notice.job) in recovered:
                    continue
                if notice.event == RECOVERY:
                    recovered.add((target.name, notice.job))
                deliveries.append(self._deliver(target, notice))
        return deliveries

    def _deliver(self, target: Target, notice: Notice) -> Delivery:
        send = self.senders[target.kind]
        attempt = 0
        detail = ""
        ok = False
        while True:
            attempt += 1
            try:
                detail = send(target, notice, self.hostname)
                ok = True
                break
            except NotificationError as e:
                detail = e.message
                if not e.retryable or attempt >= target.attempts:
                    break
                delay = min(target.max_backoff, target.backoff * 2 ** (attempt - 1))
                if e.retry_after is not None:
                    delay = min(target.max_backoff, max(delay, e.retry_after))
                _log.info("notification %s to %s failed (%s); retrying in %.1fs",
                          notice.event, target.name, detail, delay)
                self.sleep(delay)
            except Exception as e:  # a bug in a sender must not fail the job
                detail = f"{type(e).__name__}: {e}"
                _log.exception("notification %s to %s crashed", notice.event, target.name)
                break
        if not ok:
            detail = f"{detail} (after {attempt} attempt{'s' if attempt != 1 else ''})"
            _log.warning("notification %s to %s failed: %s", notice.event, target.name, detail)
        delivery = Delivery(time=self.clock(), job=notice.job, event=notice.event,
                            target=target.name, ok=ok, detail=detail, attempts=attempt)
        if self.record is not None:
            self.record(delivery)
        return delivery


__all__ = [
    "BAD_OUTCOMES", "DEFAULT_EVENTS", "EVENTS", "FAILURE", "GOOD_OUTCOMES", "RECOVERY",
    "RPO_BREACH", "RPO_REMINDER_INTERVAL", "SUCCESS", "WEBHOOK_SCHEMA", "AlertState", "Delivery",
    "EmailTarget", "Notice", "NotificationError", "Notifier", "Target", "WebhookTarget",
    "advance", "alert_state_from", "build_email", "iso_time", "make_notice", "send_email",
    "send_webhook", "state_recorder", "target_from_spec", "transitions",
]
