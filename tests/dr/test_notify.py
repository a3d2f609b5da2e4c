"""Notifications against real local servers: an HTTP receiver and an SMTP server
(aiosmtpd) with STARTTLS and AUTH, using a certificate made by the fixture."""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from resurgo.dr.notify import (
    FAILURE,
    RECOVERY,
    RPO_BREACH,
    RPO_REMINDER_INTERVAL,
    SUCCESS,
    WEBHOOK_SCHEMA,
    AlertState,
    Delivery,
    EmailTarget,
    Notice,
    Notifier,
    WebhookTarget,
    advance,
    alert_state_from,
    make_notice,
    state_recorder,
    target_from_spec,
    transitions,
)
from resurgo.dr.plan import NotificationSpec
from resurgo.dr.state import StateDB
from resurgo.errors import UsageError

NOW = 1_714_528_803.0  # 2024-05-01T02:00:03Z
SMTP_USER = "resurgo"
SMTP_PASSWORD = "correct horse battery"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sleeps:
    """Records the delays the notifier asks for instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def _notifier(targets: list[Any], **kwargs: Any) -> tuple[Notifier, list[Delivery], Sleeps]:
    records: list[Delivery] = []
    sleeps = Sleeps()
    notifier = Notifier(targets, lambda: NOW + 1, sleeps, record=records.append,
                        hostname="backup-host", **kwargs)
    return notifier, records, sleeps


def _failure_notice() -> Notice:
    return make_notice(FAILURE, "home", NOW, error="repository offsite: connection refused",
                       run_id=42, snapshot_ids={"local": "ab" * 32})


# --- certificates ---------------------------------------------------------------------


@dataclass
class Certs:
    ca_file: Path
    server_context: ssl.SSLContext


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A private CA and a server certificate for 127.0.0.1/localhost signed by it."""
    d = tmp_path_factory.mktemp("certs")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "resurgo test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = d / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file, key_file = d / "server.pem", d / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    return Certs(ca_file=ca_file, server_context=ctx)


# --- the HTTP receiver ----------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 answering with scripted status codes."""

    url: str
    codes: list[int]  # popped per request; 200 when exhausted
    requests: list[Received] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # failed TLS handshakes are part of the tests


def _start_receiver(tls: ssl.SSLContext | None = None) -> tuple[Receiver, _QuietServer]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            with lock:
                rec.requests.append(Received(self.path, dict(self.headers.items()), body))
                code = rec.codes.pop(0) if rec.codes else 200
            self.send_response(code)
            if 300 <= code < 400:
                self.send_header("Location", "/elsewhere")
            for name, value in rec.headers.items():
                self.send_header(name, value)
            reply = b'{"ok": true}' if code < 300 else b"nope"
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = _QuietServer(("127.0.0.1", 0), Handler)
    scheme = "http"
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    rec = Receiver(url=f"{scheme}://127.0.0.1:{server.server_address[1]}/hook", codes=[])
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    return rec, server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec, server = _start_receiver()
    yield rec
    server.shutdown()
    server.server_close()


@pytest.fixture
def tls_receiver(certs: Certs) -> Iterator[Receiver]:
    rec, server = _start_receiver(certs.server_context)
    yield rec
    server.shutdown()
    server.server_close()


# --- webhook --------------------------------------------------------------------------


def test_webhook_posts_the_notice_as_json_with_the_documented_fields(receiver: Receiver) -> None:
    target = WebhookTarget("ops", receiver.url, headers={"Authorization": "Bearer t0ken"})
    notifier, records, sleeps = _notifier([target])

    deliveries = notifier.notify(_failure_notice())

    assert [(d.target, d.ok, d.attempts, d.event, d.job) for d in deliveries] == [
        ("ops", True, 1, "failure", "home")]
    assert records == deliveries and records[0].time == NOW + 1
    assert len(receiver.requests) == 1
    req = receiver.requests[0]
    assert req.path == "/hook"
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["Authorization"] == "Bearer t0ken"
    assert req.headers["X-Resurgo-Event"] == "failure"
    body = json.loads(req.body)
    assert body["schema"] == WEBHOOK_SCHEMA
    assert body["event"] == "failure"
    assert body["job"] == "home"
    assert body["host"] == "backup-host"
    assert body["time"] == "2024-05-01T02:00:03Z"
    assert body["timestamp"] == NOW
    assert body["summary"] == "job home failed: repository offsite: connection refused"
    assert body["details"] == {"error": "repository offsite: connection refused", "run_id": 42,
                               "snapshot_ids": {"local": "ab" * 32}}
    assert body["resurgo_version"]
    assert sleeps.delays == []


def test_webhook_503_twice_then_200_is_delivered_after_retries_with_backoff(
        receiver: Receiver) -> None:
    receiver.codes = [503, 503, 200]
    notifier, records, sleeps = _notifier([WebhookTarget("ops", receiver.url, backoff=1.5)])

    [delivery] = notifier.notify(_failure_notice())

    assert delivery.ok and delivery.attempts == 3
    assert len(receiver.requests) == 3
    assert len({r.body for r in receiver.requests}) == 1  # the same notice each time
    assert sleeps.delays == [1.5, 3.0]
    assert [r.ok for r in records] == [True]


def test_webhook_400_is_not_retried_and_is_recorded_as_failed(receiver: Receiver) -> None:
    receiver.codes = [400]
    notifier, records, sleeps = _notifier([WebhookTarget("ops", receiver.url)])

    [delivery] = notifier.notify(_failure_notice())

    assert not delivery.ok
    assert delivery.attempts == 1
    assert "HTTP 400" in delivery.detail
    assert len(receiver.requests) == 1
    assert sleeps.delays == []
    assert records == [delivery]


def test_webhook_persistent_5xx_gives_up_after_the_attempt_limit(receiver: Receiver) -> None:
    receiver.codes = [500] * 10
    target = WebhookTarget("ops", receiver.url, attempts=3, backoff=10, max_backoff=15)
    notifier, records, sleeps = _notifier([target])

    [delivery] = notifier.notify(_failure_notice())

    assert not delivery.ok and delivery.attempts == 3
    assert "HTTP 500" in delivery.detail and "after 3 attempts" in delivery.detail
    assert len(receiver.requests) == 3
    assert sleeps.delays == [10, 15]  # doubled, then capped at max_backoff
    assert records == [delivery]


def test_webhook_retry_after_from_a_503_lengthens_the_delay(receiver: Receiver) -> None:
    receiver.codes = [503]
    receiver.headers = {"Retry-After": "7"}
    notifier, _, sleeps = _notifier([WebhookTarget("ops", receiver.url)])

    [delivery] = notifier.notify(_failure_notice())

    assert delivery.ok and delivery.attempts == 2
    assert sleeps.delays == [7.0]


def test_webhook_connection_refused_is_retried_then_recorded_failed() -> None:
    url = f"http://127.0.0.1:{_free_port()}/hook"  # nothing listens there
    notifier, records, sleeps = _notifier([WebhookTarget("ops", url, attempts=3, timeout=2)])

    [delivery] = notifier.notify(_failure_notice())

    assert not delivery.ok and delivery.attempts == 3
    assert "connection failed" in delivery.detail
    assert sleeps.delays == [1.0, 2.0]
    assert records == [delivery]


def test_webhook_redirect_is_not_followed(receiver: Receiver) -> None:
    receiver.codes = [302]
    notifier, _, sleeps = _notifier([WebhookTarget("ops", receiver.url)])

    [delivery] = notifier.notify(_failure_notice())

    assert not delivery.ok and delivery.attempts == 1 and "HTTP 302" in delivery.detail
    assert [r.path for r in receiver.requests] == ["/hook"]
    assert sleeps.delays == []


def test_https_webhook_rejects_an_untrusted_certificate_without_retrying(
        tls_receiver: Receiver) -> None:
    notifier, _, sleeps = _notifier([WebhookTarget("ops", tls_receiver.url)])

    [delivery] = notifier.notify(_failure_notice())

    assert not delivery.ok and delivery.attempts == 1
    assert "certificate" in delivery.detail.lower()
    assert tls_receiver.requests == []
    assert sleeps.delays == []


def test_https_webhook_trusts_the_configured_ca_file(tls_receiver: Receiver, certs: Certs) -> None:
    target = WebhookTarget("ops", tls_receiver.url, ca_file=str(certs.ca_file))
    notifier, _, _ = _notifier([target])

    [delivery] = notifier.notify(_failure_notice())

    assert delivery.ok
    assert json.loads(tls_receiver.requests[0].body)["event"] == "failure"


def test_webhook_target_refuses_a_non_http_url() -> None:
    with pytest.raises(UsageError, match="http"):
        WebhookTarget("ops", "file:///etc/passwd")


# --- e-mail ---------------------------------------------------------------------------


@dataclass
class Mail:
    envelope_from: str
    recipients: list[str]
    message: Message
    tls: bool
    authenticated: bool
    login: bytes | None


@dataclass
class SmtpServer:
    host: str
    port: int
    mails: list[Mail]
    auth_attempts: list[tuple[str, bytes]]


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_DATA(self, smtp: Any, session: Any, envelope: Any) -> str:
        auth = session.auth_data
        self.server.mails.append(Mail(
            envelope_from=envelope.mail_from,
            recipients=list(envelope.rcpt_tos),
            message=message_from_bytes(envelope.original_content, policy=policy.default),
            tls=session.ssl is not None,
            authenticated=bool(session.authenticated),
            login=auth.login if isinstance(auth, LoginPassword) else None,
        ))
        return "250 OK"


def _start_smtp(certs: Certs | None) -> tuple[SmtpServer, Controller]:
    server = SmtpServer("127.0.0.1", _free_port(), [], [])

    def authenticator(smtp: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        server.auth_attempts.append((mechanism, auth_data.login))
        ok = auth_data.login == SMTP_USER.encode() and auth_data.password == SMTP_PASSWORD.encode()
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    kwargs: dict[str, Any] = {}
    if certs is not None:
        kwargs = dict(tls_context=certs.server_context, require_starttls=True,
                      auth_required=True, auth_require_tls=True, authenticator=authenticator)
    controller = Controller(_Handler(server), hostname=server.host, port=server.port,
                            server_hostname="mail.test", ready_timeout=10, **kwargs)
    controller.start()
    return server, controller


@pytest.fixture
def smtp(certs: Certs) -> Iterator[SmtpServer]:
    server, controller = _start_smtp(certs)
    yield server
    controller.stop()


def _mail_target(server: SmtpServer, certs: Certs, **overrides: Any) -> EmailTarget:
    values: dict[str, Any] = dict(
        name="mail", host=server.host, port=server.port, sender="resurgo@example.com",
        to=("ops@example.com", "oncall@example.com"), username=SMTP_USER,
        password=SMTP_PASSWORD, ca_file=str(certs.ca_file), timeout=10, backoff=0.5,
    )
    values.update(overrides)
    return EmailTarget(**values)


def test_email_arrives_over_starttls_after_authentication(smtp: SmtpServer, certs: Certs) -> None:
    notifier, records, sleeps = _notifier([_mail_target(smtp, certs)])

    [delivery] = notifier.notify(_failure_notice())

    assert delivery.ok, delivery.detail
    assert delivery.attempts == 1 and records == [delivery]
    [mail] = smtp.mails
    assert mail.tls, "the message was sent before STARTTLS"
    assert mail.authenticated and mail.login == b"resurgo"
    assert smtp.auth_attempts and smtp.auth_attempts[0][0] in ("PLAIN", "LOGIN")
    assert mail.envelope_from == "resurgo@example.com"
    assert mail.recipients == ["ops@example.com", "oncall@example.com"]
    msg = mail.message
    assert msg["Subject"] == (
        "[resurgo] FAILURE: job home failed: repository offsite: connection refused"
        " on backup-host")
    assert msg["From"] == "resurgo@example.com"
    assert msg["To"] == "ops@example.com, oncall@example.com"
    assert msg["X-Resurgo-Event"] == "failure" and msg["X-Resurgo-Job"] == "home"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert isinstance(msg, EmailMessage)
    body = msg.get_content()
    assert "job home failed: repository offsite: connection refused" in body
    assert "time:  2024-05-01T02:00:03Z" in body
    assert "run_id: 42" in body
    assert sleeps.delays == []


def test_email_with_a_wrong_password_is_recorded_as_failed_and_not_retried(
        smtp: SmtpServer, certs: Certs) -> None:
    notifier, records, sleeps = _notifier([_mail_target(smtp, certs, password="wrong")])

    [delivery] = notifier.notify(_failure_notice())

    assert not delivery.ok
    assert "authentication failed" in delivery.detail and "535" in delivery.detail
    assert delivery.attempts == 1 and sleeps.delays == []
    assert records == [delivery]
    assert smtp.mails == []
    assert len(smtp.auth_attempts) >= 1


def test_email_without_credentials_is_refused_by_a_server_requiring_auth(
        smtp: SmtpServer, certs: Certs) -> None:
    target = _mail_target(smtp, certs, username=None, password=None)
    notifier, records, _ = _notifier([target])

    [delivery] = notifier.notify(_failure_notice())

    assert not delivery.ok and "530" in delivery.detail
    assert delivery.attempts == 1 and records == [delivery]
    assert smtp.mails == []


def test_email_refuses_an_untrusted_certificate_by_default(smtp: SmtpServer, certs: Certs) -> None:
    target = _mail_target(smtp, certs, ca_file=None)
    notifier, _, sleeps = _notifier([target])

    [delivery] = notifier.notify(_failure_notice())

    assert not delivery.ok and "certificate" in delivery.detail.lower()
    assert delivery.attempts == 1 and sleeps.delays == []
    assert smtp.mails == [] and smtp.auth_attempts == []  # the password was never sent


def test_email_tls_verify_false_accepts_a_self_signed_server(smtp: SmtpServer, certs: Certs) -> None:
    target = _mail_target(smtp, certs, ca_file=None, tls_verify=False)
    notifier, _, _ = _notifier([target])

    [delivery] = notifier.notify(_failure_notice())

    assert delivery.ok, delivery.detail
    assert smtp.mails[0].tls


def test_email_is_not_sent_when_the_server_does_not_offer_starttls(certs: Certs) -> None:
    server, controller = _start_smtp(None)  # plain SMTP, no TLS
    try:
        target = _mail_target(server, certs, username=None, password=None)
        notifier, _, _ = _notifier([target])
        [delivery] = notifier.notify(_failure_notice())
    finally:
        controller.stop()

    assert not delivery.ok and "does not offer STARTTLS" in delivery.detail
    assert server.mails == []


def test_email_to_a_closed_port_is_retried_then_recorded_failed(certs: Certs) -> None:
    server = SmtpServer("127.0.0.1", _free_port(), [], [])
    notifier, records, sleeps = _notifier([_mail_target(server, certs, attempts=2)])

    [delivery] = notifier.notify(_failure_notice())

    assert not delivery.ok and delivery.attempts == 2
    assert "connection failed" in delivery.detail
    assert sleeps.delays == [0.5]
    assert records == [delivery]


def test_email_target_refuses_credentials_without_starttls() -> None:
    with pytest.raises(UsageError, match="starttls"):
        EmailTarget("mail", "127.0.0.1", "a@example.com", ("b@example.com",),
                    starttls=False, username="u", password="p")


# --- choosing targets -----------------------------------------------------------------


def _fake_senders(log: list[tuple[str, str, str]]) -> dict[str, Any]:
    def send(target: Any, notice: Notice, host: str) -> str:
        log.append((target.name, notice.event, notice.job))
        return "ok"

    return {"webhook": send, "email": send}


def test_each_target_gets_only_the_events_in_its_on_set() -> None:
    sent: list[tuple[str, str, str]] = []
    targets = [
        WebhookTarget("ops", "http://127.0.0.1:1/a"),  # default: failure, rpo_breach, recovery
        WebhookTarget("chat", "http://127.0.0.1:1/b", on=frozenset({SUCCESS, FAILURE})),
        EmailTarget("mail", "127.0.0.1", "a@example.com", ("b@example.com",),
                    on=frozenset({RPO_BREACH})),
    ]
    notifier, records, _ = _notifier(targets, senders=_fake_senders(sent))

    for event in (FAILURE, RPO_BREACH, RECOVERY, SUCCESS):
        notifier.notify(make_notice(event, "home", NOW))

    assert sent == [
        ("ops", FAILURE, "home"), ("chat", FAILURE, "home"),
        ("ops", RPO_BREACH, "home"), ("mail", RPO_BREACH, "home"),
        ("ops", RECOVERY, "home"),
        ("chat", SUCCESS, "home"),
    ]
    assert len(records) == 6 and all(r.ok for r in records)


def test_only_limits_delivery_to_the_jobs_targets() -> None:
    sent: list[tuple[str, str, str]] = []
    targets = [WebhookTarget("ops", "http://127.0.0.1:1/a"),
               WebhookTarget("other", "http://127.0.0.1:1/b")]
    notifier, _, _ = _notifier(targets, senders=_fake_senders(sent))

    notifier.notify(make_notice(FAILURE, "home", NOW), only=["other", "undefined"])

    assert sent == [("other", FAILURE, "home")]


def test_a_target_subscribed_to_recovery_and_success_gets_only_the_recovery() -> None:
    sent: list[tuple[str, str, str]] = []
    both = frozenset({RECOVERY, SUCCESS})
    targets = [WebhookTarget("both", "http://127.0.0.1:1/a", on=both),
               WebhookTarget("success", "http://127.0.0.1:1/b", on=frozenset({SUCCESS}))]
    notifier, _, _ = _notifier(targets, senders=_fake_senders(sent))
    events = transitions("failure", "success", None, None)

    notifier.notify_all([make_notice(e, "home", NOW) for e in events])

    assert events == [RECOVERY, SUCCESS]
    assert sent == [("both", RECOVERY, "home"), ("success", SUCCESS, "home")]


def test_a_crashing_sender_becomes_a_failed_delivery() -> None:
    def boom(target: Any, notice: Notice, host: str) -> str:
        raise RuntimeError("bug")

    notifier, records, _ = _notifier([WebhookTarget("ops", "http://127.0.0.1:1/a")],
                                     senders={"webhook": boom})

    [delivery] = notifier.notify(make_notice(FAILURE, "home", NOW))

    assert not delivery.ok and "RuntimeError: bug" in delivery.detail
    assert records == [delivery]


def test_target_from_spec_builds_both_kinds() -> None:
    hook = NotificationSpec("ops", "webhook", {"failure"}, url="https://h.example/x")
    mail = NotificationSpec("mail", "email", {"rpo_breach"}, smtp_host="smtp.example",
                            smtp_port=2525, username="u", password_env="SMTP_PW",
                            sender="r@example.com", to=["o@example.com"], ca_file="/etc/ca.pem")

    webhook = target_from_spec(hook)
    email = target_from_spec(mail, password="pw")

    assert isinstance(webhook, WebhookTarget) and webhook.on == {"failure"}
    assert (webhook.url, webhook.timeout, webhook.tls_verify) == ("https://h.example/x", 10.0, True)
    assert isinstance(email, EmailTarget)
    assert (email.host, email.port, email.username, email.password, email.ca_file) == (
        "smtp.example", 2525, "u", "pw", "/etc/ca.pem")
    assert email.to == ("o@example.com",) and email.on == {"rpo_breach"}
    assert "pw" not in repr(email)


def test_make_notice_summaries_name_the_job_and_the_numbers() -> None:
    breach = make_notice(RPO_BREACH, "db", NOW, rpo_age=27 * 3600 + 300, rpo=26 * 3600)
    assert breach.summary == ("job db: RPO breached: the newest snapshot present in every "
                              "repository is 1d3h old (objective 1d2h)")
    assert make_notice(RPO_BREACH, "db", NOW, rpo_age=None, rpo=3600).summary == (
        "job db: RPO breached: no snapshot is present in every repository")
    assert make_notice(RECOVERY, "db", NOW, reason="rpo").summary == (
        "job db recovered: RPO back within its objective")
    assert make_notice(SUCCESS, "db", NOW).summary == "job db succeeded"
    with pytest.raises(ValueError):
        Notice("explosion", "db", NOW, "x")


# --- the event rules ------------------------------------------------------------------

OUTCOMES = st.sampled_from(["success", "warning", "failure", "interrupted", None])
RPO = st.sampled_from([True, False, None])


@given(OUTCOMES, OUTCOMES, RPO, RPO)
def test_transitions_follow_the_documented_rules(
        previous: str | None, new: str | None, before: bool | None, now: bool | None) -> None:
    events = transitions(previous, new, before, now)

    assert len(events) == len(set(events))
    assert (FAILURE in events) == (new == "failure")
    assert (SUCCESS in events) == (new in ("success", "warning"))
    assert (RPO_BREACH in events) == (now is False and before is not False)
    run_recovery = previous == "failure" and new in ("success", "warning")
    rpo_recovery = before is False and now is True and new != "failure"
    assert (RECOVERY in events) == (run_recovery or rpo_recovery)
    assert not (FAILURE in events and RECOVERY in events)
    assert events == sorted(events, key=[FAILURE, RPO_BREACH, RECOVERY, SUCCESS].index)


@given(st.lists(st.sampled_from(["success", "warning", "failure", "interrupted"]), max_size=30))
def test_recovery_is_sent_once_per_failure_streak_that_ends_in_success(outcomes: list[str]) -> None:
    state = AlertState()
    recoveries = failures = 0
    for outcome in outcomes:
        events, state = advance(state, now=NOW, outcome=outcome)
        recoveries += events.count(RECOVERY)
        failures += events.count(FAILURE)
    decisive = [o for o in outcomes if o != "interrupted"]
    streak_ends = sum(1 for a, b in itertools.pairwise(decisive)
                      if a == "failure" and b != "failure")
    assert recoveries == streak_ends
    assert failures == outcomes.count("failure")


@settings(max_examples=200)
@given(st.lists(st.tuples(st.floats(min_value=60, max_value=12 * 3600), RPO), max_size=60))
def test_a_persisting_breach_is_renotified_at_most_once_per_reminder_interval(
        ticks: list[tuple[float, bool | None]]) -> None:
    state = AlertState(rpo_ok=True)
    t = NOW
    last_breach: float | None = None
    ok_since_breach = True
    breached = False
    for step, rpo_ok in ticks:
        t += step
        events, state = advance(state, now=t, rpo_ok=rpo_ok)
        if rpo_ok is True:
            ok_since_breach = True
        if rpo_ok is not None:
            breached = rpo_ok is False
        if RPO_BREACH in events:
            assert breached
            if last_breach is not None and not ok_since_breach:
                assert t - last_breach >= RPO_REMINDER_INTERVAL
            last_breach, ok_since_breach = t, False
        elif breached:
            # a breach is never silent for longer than the reminder interval
            assert last_breach is not None and t - last_breach < RPO_REMINDER_INTERVAL


def test_a_restart_during_a_breach_does_not_renotify_before_the_reminder_is_due() -> None:
    restarted = AlertState(outcome="success", rpo_ok=None, breach_notified=NOW - 3600)

    events, state = advance(restarted, now=NOW, rpo_ok=False)
    assert events == []
    assert state.breach_notified == NOW - 3600

    events, state = advance(state, now=NOW - 3600 + RPO_REMINDER_INTERVAL, rpo_ok=False)
    assert events == [RPO_BREACH]

    events, _ = advance(AlertState(rpo_ok=None, breach_notified=NOW - 2 * RPO_REMINDER_INTERVAL),
                        now=NOW, rpo_ok=False)
    assert events == [RPO_BREACH]


def test_rpo_back_within_objective_sends_one_recovery() -> None:
    state = AlertState(outcome="success", rpo_ok=True)
    events, state = advance(state, now=NOW, rpo_ok=False)
    assert events == [RPO_BREACH]
    events, state = advance(state, now=NOW + 600, outcome="success", rpo_ok=True)
    assert events == [RECOVERY, SUCCESS]
    events, state = advance(state, now=NOW + 1200, rpo_ok=True)
    assert events == []


# --- with the plan and the state database -----------------------------------------------


def test_target_from_a_plan_notification_spec(certs: Certs) -> None:
    spec = NotificationSpec("mail", "email", {"failure", "recovery"}, smtp_host="127.0.0.1",
                            smtp_port=2525, username="resurgo", password_file="/x",
                            sender="r@example.com", to=["o@example.com"], timeout=5.0,
                            ca_file=str(certs.ca_file))

    target = target_from_spec(spec, password="pw")

    assert isinstance(target, EmailTarget)
    assert (target.port, target.starttls, target.timeout, target.tls_verify) == (
        2525, True, 5.0, True)
    assert target.on == {"failure", "recovery"} and target.password == "pw"


def test_deliveries_are_recorded_in_the_state_database(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    sent: list[tuple[str, str, str]] = []
    notifier = Notifier([WebhookTarget("ops", "http://127.0.0.1:1/a")], lambda: NOW,
                        Sleeps(), record=state_recorder(db), hostname="h",
                        senders=_fake_senders(sent))

    notifier.notify(make_notice(FAILURE, "home", NOW - 5, error="x"))

    [row] = db.last_notifications("home")
    assert (row.time, row.job, row.event, row.target, row.ok, row.detail) == (
        NOW, "home", "failure", "ops", True, "ok")
    db.close()


def test_alert_state_is_rebuilt_from_the_state_database_after_a_restart(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    failed = db.start_run("home", "schedule", started=NOW - 300)
    db.finish_run(failed, "failure", ended=NOW - 290, error="boom")
    cut = db.start_run("home", "retry", started=NOW - 200)
    db.finish_run(cut, "interrupted", ended=NOW - 190)
    db.record_notification("home", RPO_BREACH, "ops", True, "HTTP 200", time=NOW - 3000)
    db.record_notification("home", RPO_BREACH, "ops", False, "HTTP 500", time=NOW - 100)

    state = alert_state_from(db, "home")
    db.close()

    assert state == AlertState(outcome="failure", rpo_ok=None, breach_notified=NOW - 3000)
    events, _ = advance(state, now=NOW, outcome="success", rpo_ok=False)
    assert events == [RECOVERY, SUCCESS]  # the breach was notified 50 minutes ago
