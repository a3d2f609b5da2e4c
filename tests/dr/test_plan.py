"""Plan files: a full plan loads into the documented model; every problem names its
file, line and field; secrets are refused inline; durations parse and print back."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resurgo.dr.plan import (
    CommandSource,
    HookSpec,
    Plan,
    PlanError,
    RetryPolicy,
    dotted,
    format_duration,
    load_plan,
    loads_plan,
    parse_duration,
    plan_warnings,
    retention_policy,
)
from resurgo.dr.schedule import CronSchedule, IntervalSchedule
from resurgo.errors import EXIT_USAGE, UsageError

FULL_PLAN = """\
[settings]
state_db = "/var/lib/resurgo/state.db"
catch_up = "none"
retry = { attempts = 5, backoff = "30s", max_backoff = "1h" }
max_concurrent_jobs = 2

[repositories.local]
url = "/srv/backup/repo"
password_file = "/etc/resurgo/local.pass"
options = { "s3.region" = "eu-west-1" }

[repositories.offsite]
url = "s3://bucket/resurgo?endpoint=http://127.0.0.1:8333&path_style=true"
password_env = "RESURGO_OFFSITE_PASSWORD"

[repositories.usb]
url = "/mnt/usb/repo"
password_command = ["pass", "show", "resurgo/usb"]
offsite = true

[notifications.ops]
type = "webhook"
url = "http://127.0.0.1:9000/hook"
on = ["failure", "rpo_breach", "recovery", "success"]

[notifications.mail]
type = "email"
smtp_host = "127.0.0.1"
smtp_port = 2525
starttls = false
username = "resurgo"
password_file = "/etc/resurgo/smtp.pass"
from = "resurgo@example.com"
to = ["ops@example.com", "oncall@example.com"]

[jobs.home]
paths = ["/home", "/etc"]
exclude = ["*.tmp", "node_modules/"]
exclude_caches = true
commands = [
  { name = "app.sql", command = ["pg_dump", "-Fc", "app"], timeout = "1h" },
  { name = "ldap.ldif", command = ["slapcat"] },
]
repositories = ["local", "offsite", "usb"]
schedule = "daily at 02:00"
timezone = "Europe/Paris"
rpo = "26h"
rto = "4h"
tags = ["home", "etc"]
maintenance = "weekly on sunday at 04:00"
notify = ["ops", "mail"]

[jobs.home.retention.local]
keep_daily = 7
keep_weekly = 4

[jobs.home.retention.offsite]
keep_monthly = 12
keep_within = "1y6m"

[[jobs.home.hooks.pre]]
command = ["systemctl", "stop", "app"]
timeout = "5m"

[[jobs.home.hooks.post]]
command = ["systemctl", "start", "app"]

[[jobs.home.hooks.on_failure]]
command = ["logger", "backup failed"]

[jobs.db]
commands = [{ name = "db.sql", command = ["pg_dumpall"] }]
repositories = ["offsite"]
schedule = "every 4h"
timezone = "America/New_York"
"""


def write(tmp_path: Path, text: str, name: str = "resurgo.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(text: str, tmp_path: Path, *, strict: bool = False) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(PlanError) as info:
        load_plan(path, strict=strict)
    assert info.value.exit_code == EXIT_USAGE
    return info.value.problems


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the first line of ``text`` containing ``needle``."""
    for n, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return n
    raise AssertionError(f"{needle!r} not in the plan text")


# --- a valid plan -----------------------------------------------------------------------


def test_full_plan_loads_every_field(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path, FULL_PLAN))
    assert isinstance(plan, Plan)
    assert plan.path == tmp_path / "resurgo.toml"

    s = plan.settings
    assert s.state_db == "/var/lib/resurgo/state.db"
    assert s.catch_up == "none"
    assert s.retry == RetryPolicy(attempts=5, backoff=30.0, max_backoff=3600.0)
    assert s.max_concurrent_jobs == 2

    local, offsite, usb = (plan.repositories[n] for n in ("local", "offsite", "usb"))
    assert local.url == "/srv/backup/repo"
    assert local.password_file == "/etc/resurgo/local.pass"
    assert local.password_env is None and local.password_command is None
    assert local.offsite is False
    assert local.options == {"s3.region": "eu-west-1"}
    assert offsite.password_env == "RESURGO_OFFSITE_PASSWORD"
    assert offsite.offsite is True  # s3:// is offsite by default
    assert usb.password_command == ["pass", "show", "resurgo/usb"]
    assert usb.offsite is True  # said so explicitly

    ops, mail = plan.notifications["ops"], plan.notifications["mail"]
    assert ops.type == "webhook" and ops.url == "http://127.0.0.1:9000/hook"
    assert ops.on == {"failure", "rpo_breach", "recovery", "success"}
    assert mail.type == "email"
    assert (mail.smtp_host, mail.smtp_port, mail.starttls) == ("127.0.0.1", 2525, False)
    assert mail.username == "resurgo" and mail.password_file == "/etc/resurgo/smtp.pass"
    assert mail.sender == "resurgo@example.com"
    assert mail.to == ["ops@example.com", "oncall@example.com"]
    assert mail.on == {"failure", "rpo_breach", "recovery"}  # the default

    home = plan.jobs["home"]
    assert home.paths == ["/home", "/etc"]
    assert home.exclude == ["*.tmp", "node_modules/"]
    assert home.exclude_caches is True
    assert home.commands == [
        CommandSource("app.sql", ["pg_dump", "-Fc", "app"], 3600.0),
        CommandSource("ldap.ldif", ["slapcat"], None),
    ]
    assert home.repositories == ["local", "offsite", "usb"]
    assert home.primary == "local" and home.copies == ["offsite", "usb"]
    assert isinstance(home.schedule, CronSchedule)
    assert home.schedule.text == "daily at 02:00"
    assert str(home.schedule.tz) == "Europe/Paris"
    assert home.timezone == "Europe/Paris"
    assert home.rpo == 26 * 3600 and home.rto == 4 * 3600
    assert home.tags == ["home", "etc"]
    assert home.maintenance is not None and home.maintenance.text == "weekly on sunday at 04:00"
    assert home.notify == ["ops", "mail"]
    assert home.retention == {
        "local": {"keep_daily": 7, "keep_weekly": 4},
        "offsite": {"keep_monthly": 12, "keep_within": "1y6m"},
    }
    assert home.hooks_pre == [HookSpec(["systemctl", "stop", "app"], 300.0)]
    assert home.hooks_post == [HookSpec(["systemctl", "start", "app"], 600.0)]
    assert home.hooks_on_failure == [HookSpec(["logger", "backup failed"], 600.0)]

    db = plan.jobs["db"]
    assert db.paths == [] and [c.name for c in db.commands] == ["db.sql"]
    assert isinstance(db.schedule, IntervalSchedule) and db.schedule.seconds == 4 * 3600
    assert db.rpo is None and db.maintenance is None and db.retention == {}
    assert plan_warnings(plan) == []


def test_retention_table_becomes_a_retention_policy(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path, FULL_PLAN))
    policy = retention_policy(plan.jobs["home"].retention["offsite"])
    assert policy.monthly == 12
    assert str(policy.within) == "1y6m"
    assert retention_policy(plan.jobs["home"].retention["local"]).describe() == "daily 7; weekly 4"


def test_defaults_apply_when_settings_are_absent(tmp_path: Path) -> None:
    plan = loads_plan(
        '[repositories.r]\nurl = "sftp://backup@host/srv/repo"\npassword_env = "P"\n'
        '[jobs.j]\npaths = ["/srv"]\nrepositories = ["r"]\nschedule = "hourly"\n',
        tmp_path / "p.toml",
    )
    assert plan.settings.catch_up == "once"
    assert plan.settings.retry == RetryPolicy(3, 60.0, 1800.0)
    assert plan.settings.max_concurrent_jobs == 1
    assert plan.settings.state_db is None
    assert plan.repositories["r"].offsite is True  # sftp:// is offsite by default
    assert plan.jobs["j"].timezone is None and plan.jobs["j"].schedule.tz is not None


# --- errors name file, line and field ------------------------------------------------------

BROKEN = [
    # (plan text, the text on the reported line, the field path, a word of the message)
    ('[settings]\ncatch_up = "sometimes"\n', 'catch_up', "settings.catch_up", "once"),
    ('[settings]\nretry = { attempts = 3, backoff = "1x" }\n', "retry", "settings.retry.backoff",
     "duration"),
    ('[settings]\nretry = { attempts = "three" }\n', "retry", "settings.retry.attempts", "integer"),
    ('[settings]\ncolour = "blue"\n', "colour", "settings.colour", "unknown field"),
    ('[repositories.r]\npassword_env = "P"\n', "[repositories.r]", "repositories.r.url",
     "missing"),
    ('[repositories.r]\nurl = "ftp://h/x"\npassword_env = "P"\n', "ftp://", "repositories.r.url",
     "unknown scheme"),
    ('[repositories.r]\nurl = "/x"\n', "[repositories.r]", "repositories.r", "exactly one"),
    ('[repositories.r]\nurl = "/x"\npassword_env = "P"\npassword_file = "/f"\n',
     "[repositories.r]", "repositories.r", "exactly one"),
    ('[repositories.r]\nurl = "/x"\npassword_env = "P"\noffsite = "yes"\n', "offsite",
     "repositories.r.offsite", "true or false"),
    ('[repositories.r]\nurl = "/x"\npassword_command = "pass show x"\n', "password_command",
     "repositories.r.password_command", "list of strings"),
    ('[notifications.n]\ntype = "pager"\n', "pager", "notifications.n.type", "webhook"),
    ('[notifications.n]\ntype = "webhook"\nurl = "ftp://x"\n', "ftp://x", "notifications.n.url",
     "http"),
    ('[notifications.n]\ntype = "webhook"\nurl = "http://x"\non = ["failure", "sunrise"]\n',
     "sunrise", "notifications.n.on[1]", "unknown event"),
    ('[notifications.n]\ntype = "email"\nsmtp_host = "h"\nfrom = "a@b"\n', "[notifications.n]",
     "notifications.n.to", "missing"),
    ('[notifications.n]\ntype = "email"\nsmtp_host = "h"\nfrom = "a@b"\nto = ["nobody"]\n',
     "nobody", "notifications.n.to[0]", "e-mail address"),
    ('[jobs.j]\npaths = ["relative/dir"]\n', "relative/dir", "jobs.j.paths[0]", "absolute"),
    ('[jobs.j]\npaths = ["/x"]\nrepositories = ["nowhere"]\n', "nowhere",
     "jobs.j.repositories[0]", "no repository"),
    ('[jobs.j]\npaths = ["/x"]\nrepositories = []\n', "repositories = []",
     "jobs.j.repositories", "empty"),
    ('[jobs.j]\npaths = ["/x"]\nschedule = "dailly at 2"\n', "dailly", "jobs.j.schedule",
     "not a schedule"),
    ('[jobs.j]\npaths = ["/x"]\nschedule = "61 * * * *"\n', "61 *", "jobs.j.schedule",
     "out of range"),
    ('[jobs.j]\npaths = ["/x"]\n# no schedule\n', "[jobs.j]", "jobs.j.schedule", "missing"),
    ('[jobs.j]\npaths = ["/x"]\ntimezone = "Mars/Olympus"\n', "Mars", "jobs.j.timezone",
     "time zone"),
    ('[jobs.j]\npaths = ["/x"]\nrpo = "26"\n', "rpo", "jobs.j.rpo", "duration"),
    ('[jobs.j]\npaths = ["/x"]\nnotify = ["pager"]\n', "pager", "jobs.j.notify[0]",
     "no notification target"),
    ('[jobs.j]\npaths = ["/x"]\nexclude = ["[z-a]"]\n', "exclude", "jobs.j.exclude",
     "invalid exclude pattern"),
    ('[jobs.j]\nrepositories = ["r"]\n', "[jobs.j]", "jobs.j", "nothing to back up"),
    ('[jobs.j]\npaths = ["/x"]\ncommands = [\n  { name = "a", command = ["x"] },\n'
     '  { name = "b/c", command = ["y"] },\n]\n', '"b/c"', "jobs.j.commands[1].name",
     "plain file name"),
    ('[jobs.j]\npaths = ["/x"]\ncommands = [\n  { name = "a", command = ["x"] },\n'
     '  { name = "b", command = [] },\n]\n', 'name = "b"', "jobs.j.commands[1].command",
     "command"),
    ('[jobs.j]\npaths = ["/x"]\n[jobs.j.retention.elsewhere]\nkeep_daily = 7\n',
     "[jobs.j.retention.elsewhere]", "jobs.j.retention.elsewhere", "not one of this job's"),
    ('[jobs.j]\npaths = ["/x"]\n[jobs.j.retention.r]\nkeep_dayly = 7\n', "keep_dayly",
     "jobs.j.retention.r.keep_dayly", "unknown field"),
    ('[jobs.j]\npaths = ["/x"]\n[jobs.j.retention.r]\nkeep_within = "2 weeks"\n',
     "keep_within", "jobs.j.retention.r.keep_within", "duration"),
    ('[jobs.j]\npaths = ["/x"]\n[[jobs.j.hooks.pre]]\ncommand = ["a"]\n[[jobs.j.hooks.pre]]\n'
     'command = ["b"]\ntimeout = "0s"\n', 'timeout = "0s"', "jobs.j.hooks.pre[1].timeout",
     "longer than zero"),
    ('[jobs.j]\npaths = ["/x"]\n[[jobs.j.hooks.pre]]\ncommand = "systemctl stop app"\n',
     "systemctl stop", "jobs.j.hooks.pre[0].command", "list of strings"),
    ('[jobs.j]\npaths = ["/x"]\n[[jobs.j.hooks.during]]\ncommand = ["x"]\n',
     "[[jobs.j.hooks.during]]", "jobs.j.hooks.during", "unknown field"),
]

BASE = '[repositories.r]\nurl = "/srv/repo"\npassword_env = "P"\noffsite = true\n'
JOB_BASE = 'repositories = ["r"]\nschedule = "hourly"\n'


def _with_base(fragment: str) -> str:
    """Complete a fragment into a plan whose only problem is the fragment's."""
    text = fragment
    if "[repositories." not in fragment:
        text = BASE + text
    if "[jobs." not in fragment:
        text += '[jobs.ok]\npaths = ["/srv"]\nrepositories = ["r"]\nschedule = "hourly"\n'
    else:
        lines = text.split("\n")
        first = next(i for i, line in enumerate(lines) if line.startswith("[jobs."))
        extra = [p for p in JOB_BASE.strip().split("\n")
                 if p.split(" = ")[0] + " =" not in fragment
                 and not ("# no schedule" in fragment and p.startswith("schedule"))]
        lines[first + 1:first + 1] = extra
        text = "\n".join(lines)
    return text


@pytest.mark.parametrize(("fragment", "on_line", "field", "word"), BROKEN)
def test_each_problem_names_file_line_and_field(
    tmp_path: Path, fragment: str, on_line: str, field: str, word: str
) -> None:
    text = _with_base(fragment)
    problems = problems_of(text, tmp_path)
    expected_prefix = f"{tmp_path / 'resurgo.toml'}:{line_of(text, on_line)}: {field}: "
    matching = [p for p in problems if p.startswith(expected_prefix)]
    assert matching, f"no problem starts with {expected_prefix!r}: {problems}"
    assert word in matching[0]
    assert len(problems) == 1, problems


TRICKY = """\
# comment with [brackets] and key = "value"
[repositories.r]
url = "/srv/repo"   # trailing [comment]
password_env = "P"
offsite = true

[jobs.a]
paths = [
  "/srv",  # a comment ] inside an array
  "/etc",
]
commands = [
  { name = "x", command = ["sh", "-c", \"\"\"
[jobs.fake]
schedule = "not a key"
\"\"\"] },
  { name = 'y', command = ['echo', "a\\"b"], timeout = "1x" },
]
repositories = ["r"]
"schedule" = "hourly"
hooks.pre = [ { command = ["true"], timeout = "nope" } ]

[jobs."b.c"]
paths = ["/srv"]
repositories = ["r"]
schedule = "hourly"
rpo = "soon"
"""


def test_lines_are_found_through_comments_multiline_strings_and_dotted_keys(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, TRICKY)
    with pytest.raises(PlanError) as info:
        load_plan(path)
    lines = [line_of(TRICKY, needle) for needle in ('"1x"', "hooks.pre =", "rpo =")]
    assert [p.split(": not a duration")[0] for p in info.value.problems] == [
        f"{path}:{lines[0]}: jobs.a.commands[1].timeout",
        f"{path}:{lines[1]}: jobs.a.hooks.pre[0].timeout",
        f"{path}:{lines[2]}: " + 'jobs."b.c".rpo',
    ]


def test_every_problem_is_reported_at_once_in_line_order(tmp_path: Path) -> None:
    text = (
        '[settings]\ncatch_up = "later"\n'
        '[repositories.r]\nurl = "/x"\npassword_env = "P"\n'
        '[jobs.j]\npaths = ["rel"]\nrepositories = ["r", "zz"]\nschedule = "sometimes"\n'
    )
    problems = problems_of(text, tmp_path)
    lines = [int(re.match(r".*?:(\d+): ", p).group(1)) for p in problems]  # type: ignore[union-attr]
    assert lines == sorted(lines)
    fields = [p.split(": ")[1] for p in problems]
    assert fields == ["settings.catch_up", "jobs.j.paths[0]", "jobs.j.repositories[1]",
                      "jobs.j.schedule"]


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    text = '[jobs.j]\npaths = ["/x"]\nschedule = "hourly\n'
    problems = problems_of(text, tmp_path)
    assert problems[0].startswith(f"{tmp_path / 'resurgo.toml'}:3: not valid TOML")


def test_missing_plan_file_is_a_plan_error(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="no such plan file"):
        load_plan(tmp_path / "absent.toml")


def test_a_plan_without_jobs_is_refused(tmp_path: Path) -> None:
    problems = problems_of(BASE, tmp_path)
    assert problems == [f"{tmp_path / 'resurgo.toml'}:1: jobs: the plan defines no jobs: add a "
                        "[jobs.NAME] table"]


def test_dotted_renders_indices_and_quotes_odd_keys() -> None:
    assert dotted(("jobs", "home", "hooks", "pre", 0, "timeout")) == "jobs.home.hooks.pre[0].timeout"
    assert dotted(("repositories", "r", "options", "s3.region")) == 'repositories.r.options."s3.region"'


# --- secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fragment", "needle", "field"),
    [
        ('[repositories.r]\nurl = "/x"\npassword = "hunter2"\n', "hunter2",
         "repositories.r.password"),
        ('[repositories.r]\nurl = "/x"\npassword_env = "P"\n'
         'options = { "s3.secret_key" = "hunter2" }\n', "hunter2",
         'repositories.r.options."s3.secret_key"'),
        ('[repositories.r]\nurl = "/x"\npassword_env = "P"\n'
         'options = { "s3.session_token" = "hunter2" }\n', "hunter2",
         'repositories.r.options."s3.session_token"'),
        ('[notifications.n]\ntype = "webhook"\nurl = "http://h/x"\ntoken = "hunter2"\n',
         "hunter2", "notifications.n.token"),
        ('[notifications.n]\ntype = "email"\nsmtp_host = "h"\nfrom = "a@b"\nto = ["c@d"]\n'
         'username = "u"\npassword = "hunter2"\n', "hunter2", "notifications.n.password"),
        ('[settings]\napi_secret = "hunter2"\n', "hunter2", "settings.api_secret"),
    ],
)
def test_inline_secrets_are_refused_naming_line_and_field(
    tmp_path: Path, fragment: str, needle: str, field: str
) -> None:
    text = _with_base(fragment)
    problems = problems_of(text, tmp_path)
    hit = [p for p in problems if "secrets are never written in the plan" in p]
    assert len(hit) == 1, problems
    assert hit[0].startswith(f"{tmp_path / 'resurgo.toml'}:{line_of(text, needle)}: {field}: ")
    assert "hunter2" not in "".join(problems)


def test_credentials_in_urls_are_refused(tmp_path: Path) -> None:
    text = _with_base('[repositories.r]\nurl = "sftp://u:hunter2@host/x"\npassword_env = "P"\n')
    problems = problems_of(text, tmp_path)
    assert len(problems) == 1
    assert "repositories.r.url: the URL carries a credential" in problems[0]
    assert "hunter2" not in problems[0]


def test_secret_sources_are_accepted(tmp_path: Path) -> None:
    text = _with_base(
        '[repositories.r]\nurl = "s3://b/p"\npassword_file = "/etc/p"\n'
        'options = { "s3.secret_key_file" = "/etc/s3", "sftp.identity_file" = "/k" }\n'
    )
    plan = load_plan(write(tmp_path, text))
    assert plan.repositories["r"].options == {
        "s3.secret_key_file": "/etc/s3", "sftp.identity_file": "/k",
    }


# --- warnings and strict mode -----------------------------------------------------------------

ONSITE_ONLY = (
    '[repositories.disk]\nurl = "/srv/repo"\npassword_env = "P"\n'
    '[jobs.j]\npaths = ["/srv"]\nrepositories = ["disk"]\nschedule = "daily at 01:00"\n'
    'rpo = "12h"\n'
)


def test_job_without_offsite_copy_is_a_warning_not_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, ONSITE_ONLY)
    plan = load_plan(path)
    warnings = plan_warnings(plan)
    offsite = [w for w in warnings if "no offsite repository" in w]
    assert offsite == [
        f"{path}:{line_of(ONSITE_ONLY, 'repositories = [')}: jobs.j.repositories: no offsite "
        "repository: a fire, flood or theft at this site would take every copy; add one "
        "(s3:// and sftp:// are offsite by default, or set offsite = true)"
    ]


def test_rpo_shorter_than_the_schedule_gap_is_a_warning(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path, ONSITE_ONLY))
    rpo = [w for w in plan_warnings(plan) if "jobs.j.rpo" in w]
    assert len(rpo) == 1
    assert f":{line_of(ONSITE_ONLY, 'rpo =')}: jobs.j.rpo: " in rpo[0]
    assert "RPO will be breached" in rpo[0]


def test_strict_mode_turns_warnings_into_errors(tmp_path: Path) -> None:
    problems = problems_of(ONSITE_ONLY, tmp_path, strict=True)
    assert len(problems) == 2
    assert any("jobs.j.repositories: no offsite repository" in p for p in problems)


# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("4h", 14400), ("7d", 604800), ("2w", 1209600),
     ("1d12h", 129600), ("1h 30m", 5400), ("0s", 0), ("1W2D", 777600)],
)
def test_durations_parse(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "26", "5 minutes", "1x", "h", "1h1h", "30m1h", "-5m",
                                  "1.5h", "1h junk"])
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(UsageError, match="not a duration"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**9))
def test_format_duration_round_trips(seconds: int) -> None:
    text = format_duration(seconds)
    assert parse_duration(text) == seconds
    assert re.fullmatch(r"(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?", text)


@given(st.lists(st.tuples(st.sampled_from("wdhms"), st.integers(0, 10_000)), min_size=1,
                max_size=5, unique_by=lambda p: p[0]))
def test_any_well_formed_duration_sums_its_parts(parts: list[tuple[str, int]]) -> None:
    units = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
    ordered = sorted(parts, key=lambda p: "wdhms".index(p[0]))
    text = "".join(f"{n}{u}" for u, n in ordered)
    assert parse_duration(text) == sum(n * units[u] for u, n in ordered)
