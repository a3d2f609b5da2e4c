"""End-to-end behaviour of ``resurgo init`` and ``resurgo key``, and the CLI's global rules:
repository resolution, password sources, exit codes, --help epilogs and --json output."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import pytest

from resurgo.cli import cmd_key
from resurgo.cli.main import build_parser
from resurgo.cli.parsing import exit_codes_epilog
from resurgo.errors import (
    EXIT_EXISTS,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_NO_REPOSITORY,
    EXIT_USAGE,
    EXIT_WRONG_PASSWORD,
)
from resurgo.repo import Repository
from resurgo.session import open_repo

from .conftest import PASSWORD, run_cli, run_cli_subprocess


def _key_ids(repo: Path) -> set[str]:
    return {p.name for p in (repo / "keys").iterdir()}


def _assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("resurgo: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], err


def _open(repo: Path, password: str = PASSWORD) -> Repository:
    return open_repo(str(repo), password, retry=False)


# --- init and repository resolution -----------------------------------------------


def test_init_creates_a_repository_at_the_repo_option(repo_path, password_env):
    code, out, err = run_cli("--repo", str(repo_path), "init", env=password_env)

    assert code == 0, err
    assert (repo_path / "config").is_file()
    assert len(_key_ids(repo_path)) == 1
    repo = _open(repo_path)
    try:
        assert f"created repository {repo.config.id}" in out
    finally:
        repo.close()


def test_global_options_are_accepted_after_the_command_name(repo_path, password_env):
    code, _, err = run_cli("init", "-r", str(repo_path), env=password_env)

    assert code == 0, err
    assert (repo_path / "config").is_file()


def test_init_uses_resurgo_repository_from_the_environment(repo_path):
    env = {"RESURGO_REPOSITORY": str(repo_path), "RESURGO_PASSWORD": PASSWORD}
    code, _, err = run_cli("init", env=env)

    assert code == 0, err
    assert (repo_path / "config").is_file()
    assert run_cli("key", "list", env=env).code == 0


def test_init_without_a_location_uses_the_xdg_data_directory(isolated_env, password_env):
    code, _, err = run_cli("init", env=password_env)

    assert code == 0, err
    default = isolated_env["XDG_DATA_HOME"] / "resurgo" / "repository"
    assert (default / "config").is_file()
    assert run_cli("key", "list", env=password_env).code == 0


def test_init_falls_back_to_home_when_xdg_data_home_is_unset(isolated_env, password_env):
    code, _, err = run_cli("init", env={**password_env, "XDG_DATA_HOME": None})

    assert code == 0, err
    assert (isolated_env["HOME"] / ".local/share/resurgo/repository/config").is_file()


def test_init_applies_pack_size_and_compression(repo_path, password_env):
    code, _, err = run_cli(
        "-r", str(repo_path), "init", "--pack-size", "8MiB", "--compression", "9",
        env=password_env,
    )

    assert code == 0, err
    repo = _open(repo_path)
    try:
        assert repo.config.params.pack_size == 8 << 20
        assert repo.config.params.compression_level == 9
    finally:
        repo.close()


def test_init_rejects_an_out_of_range_compression_level(repo_path, password_env):
    code, _, err = run_cli("-r", str(repo_path), "init", "--compression", "99", env=password_env)

    assert code == EXIT_USAGE
    _assert_one_line_error(err, "compression level")
    assert not repo_path.exists() or not (repo_path / "config").exists()


def test_init_twice_refuses_with_exit_16(initialized_repo, password_env):
    keys_before = _key_ids(initialized_repo)
    code, _, err = run_cli("-r", str(initialized_repo), "init", env=password_env)

    assert code == EXIT_EXISTS
    _assert_one_line_error(err, "already exists")
    assert _key_ids(initialized_repo) == keys_before


# --- opening: missing repository, wrong password -----------------------------------


def test_wrong_password_exits_12_with_one_line_and_no_traceback(initialized_repo):
    code, out, err = run_cli(
        "-r", str(initialized_repo), "key", "list", env={"RESURGO_PASSWORD": "not it"}
    )

    assert code == EXIT_WRONG_PASSWORD
    assert out == ""
    _assert_one_line_error(err, "wrong password")
    assert "not it" not in err


def test_missing_repository_exits_10(tmp_path, password_env):
    code, _, err = run_cli("-r", str(tmp_path / "nothing"), "key", "list", env=password_env)

    assert code == EXIT_NO_REPOSITORY
    _assert_one_line_error(err, "no repository")


def test_read_only_command_does_not_create_the_repository_directory(tmp_path, password_env):
    where = tmp_path / "nothing"
    run_cli("-r", str(where), "key", "list", env=password_env)

    assert not where.exists()


# --- password sources ---------------------------------------------------------------


def test_password_file_first_line_is_the_password(repo_path, tmp_path):
    pw_file = tmp_path / "pw"
    pw_file.write_text(f"{PASSWORD}\nsecond line is ignored\n")

    code, _, err = run_cli("-r", str(repo_path), "--password-file", str(pw_file), "init")
    assert code == 0, err

    assert run_cli("-r", str(repo_path), "key", "list", env={"RESURGO_PASSWORD": PASSWORD}).code == 0


def test_password_file_from_the_environment(initialized_repo, tmp_path):
    pw_file = tmp_path / "pw"
    pw_file.write_text(PASSWORD + "\r\n")

    code, _, err = run_cli(
        "-r", str(initialized_repo), "key", "list",
        env={"RESURGO_PASSWORD_FILE": str(pw_file)},
    )
    assert code == 0, err


def test_password_file_option_beats_the_password_variable(initialized_repo, tmp_path):
    pw_file = tmp_path / "pw"
    pw_file.write_text("wrong")

    code, _, _ = run_cli(
        "-r", str(initialized_repo), "--password-file", str(pw_file), "key", "list",
        env={"RESURGO_PASSWORD": PASSWORD},
    )
    assert code == EXIT_WRONG_PASSWORD


def test_unreadable_password_file_is_a_usage_error(initialized_repo, tmp_path):
    code, _, err = run_cli(
        "-r", str(initialized_repo), "--password-file", str(tmp_path / "absent"), "key", "list"
    )
    assert code == EXIT_USAGE
    _assert_one_line_error(err, "cannot read password file")


def test_password_command_output_is_the_password(initialized_repo):
    command = f"printf '%s\\njunk\\n' {shlex.quote(PASSWORD)}"

    code, _, err = run_cli(
        "-r", str(initialized_repo), "--password-command", command, "key", "list"
    )
    assert code == 0, err


def test_password_command_from_the_environment(initialized_repo):
    command = f"printf '%s\\n' {shlex.quote(PASSWORD)}"

    code, _, err = run_cli(
        "-r", str(initialized_repo), "key", "list",
        env={"RESURGO_PASSWORD_COMMAND": command, "RESURGO_PASSWORD": "ignored"},
    )
    assert code == 0, err


def test_failing_password_command_is_a_one_line_error(initialized_repo):
    command = (
        f"{shlex.quote(sys.executable)} -c "
        "'import sys; print(\"secret-ish\"); sys.stderr.write(\"vault sealed\\n\"); sys.exit(3)'"
    )

    code, out, err = run_cli(
        "-r", str(initialized_repo), "--password-command", command, "key", "list"
    )

    assert code == EXIT_FAILURE
    assert out == ""
    _assert_one_line_error(err, "exited with status 3", "vault sealed")
    assert "secret-ish" not in err


def test_missing_password_command_is_a_one_line_error(initialized_repo):
    code, _, err = run_cli(
        "-r", str(initialized_repo), "--password-command", "/nonexistent/pw-tool", "key", "list"
    )
    assert code == EXIT_FAILURE
    _assert_one_line_error(err, "not found")


def test_no_password_and_no_terminal_is_a_usage_error(initialized_repo):
    code, _, err = run_cli("-r", str(initialized_repo), "key", "list")

    assert code == EXIT_USAGE
    _assert_one_line_error(err, "no password given")


def test_init_on_a_terminal_asks_for_the_password_twice(repo_path):
    code, _, err = run_cli("-r", str(repo_path), "init", prompts=[PASSWORD, PASSWORD])

    assert code == 0, err
    repo = _open(repo_path)
    repo.close()


def test_init_on_a_terminal_refuses_mismatched_passwords(repo_path):
    code, _, err = run_cli("-r", str(repo_path), "init", prompts=[PASSWORD, "typo"])

    assert code == EXIT_USAGE
    _assert_one_line_error(err, "do not match")
    assert not (repo_path / "config").exists()


def test_opening_on_a_terminal_asks_once(initialized_repo):
    code, _, err = run_cli("-r", str(initialized_repo), "key", "list", prompts=[PASSWORD])

    assert code == 0, err


# --- key management ----------------------------------------------------------------


def test_key_add_list_remove_round_trip(initialized_repo, password_env, tmp_path):
    repo = str(initialized_repo)
    (original,) = _key_ids(initialized_repo)
    new_pw = tmp_path / "new-pw"
    new_pw.write_text("second password\n")

    code, out, err = run_cli(
        "-r", repo, "key", "add", "--new-password-file", str(new_pw),
        "--hostname", "vault-host", "--username", "alice", env=password_env,
    )
    assert code == 0, err
    (added,) = _key_ids(initialized_repo) - {original}
    assert f"added key {added[:8]}" in out

    # the new password opens the repository on its own
    code, out, err = run_cli("-r", repo, "key", "list", env={"RESURGO_PASSWORD": "second password"})
    assert code == 0, err
    rows = out.strip().splitlines()[2:]
    assert len(rows) == 2
    current = [r for r in rows if r.startswith("*")]
    assert len(current) == 1 and added[:8] in current[0]
    assert "vault-host" in current[0] and "alice" in current[0]

    code, out, err = run_cli("-r", repo, "key", "remove", added[:12], env=password_env)
    assert code == 0, err
    assert _key_ids(initialized_repo) == {original}
    code, _, _ = run_cli("-r", repo, "key", "list", env={"RESURGO_PASSWORD": "second password"})
    assert code == EXIT_WRONG_PASSWORD


def test_key_add_on_a_terminal_asks_for_current_then_new_password_twice(initialized_repo):
    code, _, err = run_cli(
        "-r", str(initialized_repo), "key", "add", prompts=[PASSWORD, "other", "other"]
    )

    assert code == 0, err
    assert len(_key_ids(initialized_repo)) == 2
    _open(initialized_repo, "other").close()


def test_key_add_without_a_new_password_source_is_a_usage_error(initialized_repo, password_env):
    code, _, err = run_cli("-r", str(initialized_repo), "key", "add", env=password_env)

    assert code == EXIT_USAGE
    _assert_one_line_error(err, "new password")
    assert len(_key_ids(initialized_repo)) == 1


def test_key_passwd_replaces_the_key_and_the_old_password_stops_working(
    initialized_repo, password_env, tmp_path
):
    repo = str(initialized_repo)
    (old_key,) = _key_ids(initialized_repo)
    new_pw = tmp_path / "new-pw"
    new_pw.write_text("brand new")

    code, out, err = run_cli(
        "-r", repo, "key", "passwd", "--new-password-file", str(new_pw), env=password_env
    )

    assert code == 0, err
    (new_key,) = _key_ids(initialized_repo)
    assert new_key != old_key
    assert new_key[:8] in out
    assert run_cli("-r", repo, "key", "list", env=password_env).code == EXIT_WRONG_PASSWORD
    assert run_cli("-r", repo, "key", "list", env={"RESURGO_PASSWORD": "brand new"}).code == 0


def test_removing_the_key_in_use_is_refused(initialized_repo, password_env):
    (only,) = _key_ids(initialized_repo)

    code, _, err = run_cli("-r", str(initialized_repo), "key", "remove", only, env=password_env)

    assert code == EXIT_FAILURE
    _assert_one_line_error(err, "key in use")
    assert _key_ids(initialized_repo) == {only}


def test_removing_an_unknown_key_fails(initialized_repo, password_env):
    code, _, err = run_cli("-r", str(initialized_repo), "key", "remove", "ffff", env=password_env)

    assert code == EXIT_FAILURE
    _assert_one_line_error(err, "no key")


# --- help, json, errors ---------------------------------------------------------------


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _command_paths(sub, (*prefix, name))


def test_every_commands_help_ends_with_the_exit_code_table():
    paths = list(_command_paths(build_parser()))
    assert ("key", "passwd") in paths and ("init",) in paths

    for path in paths:
        code, out, err = run_cli(*path, "--help")
        assert code == 0, (path, err)
        assert out.rstrip().endswith(exit_codes_epilog()), path
        assert "130  interrupted" in out


def test_json_key_list_is_json_lines_ending_in_a_summary(initialized_repo, password_env):
    code, out, err = run_cli(
        "-r", str(initialized_repo), "--json", "key", "list", env=password_env
    )

    assert code == 0, err
    docs = [json.loads(line) for line in out.splitlines()]
    (key_id,) = _key_ids(initialized_repo)
    assert docs[0]["type"] == "key"
    assert docs[0]["id"] == key_id and docs[0]["current"] is True
    assert docs[-1] == {
        "type": "summary", "command": "key list", "exit_code": 0, "ok": True, "keys": 1,
    }


def test_json_init_summary_names_the_repository(repo_path, password_env):
    code, out, err = run_cli("--json", "-r", str(repo_path), "init", env=password_env)

    assert code == 0, err
    (summary,) = [json.loads(line) for line in out.splitlines()]
    repo = _open(repo_path)
    try:
        assert summary["repository_id"] == repo.config.id
    finally:
        repo.close()
    assert summary["type"] == "summary" and summary["ok"] is True


def test_json_errors_end_in_a_failed_summary(initialized_repo):
    code, out, err = run_cli(
        "--json", "-r", str(initialized_repo), "key", "list", env={"RESURGO_PASSWORD": "bad"}
    )

    assert code == EXIT_WRONG_PASSWORD
    (summary,) = [json.loads(line) for line in out.splitlines()]
    assert summary["type"] == "summary"
    assert summary["ok"] is False and summary["exit_code"] == EXIT_WRONG_PASSWORD
    assert "wrong password" in summary["error"]
    _assert_one_line_error(err, "wrong password")


def test_unexpected_errors_print_one_line_and_the_traceback_only_with_verbose(
    initialized_repo, password_env, monkeypatch
):
    def boom(args, ctx):
        raise RuntimeError("kaput")

    monkeypatch.setattr(cmd_key, "run_list", boom)

    code, _, err = run_cli("-r", str(initialized_repo), "key", "list", env=password_env)
    assert code == EXIT_FAILURE
    assert "RuntimeError: kaput" in err and "Traceback" not in err

    code, _, err = run_cli("-v", "-r", str(initialized_repo), "key", "list", env=password_env)
    assert code == EXIT_FAILURE
    assert "Traceback" in err and "kaput" in err


def test_ctrl_c_exits_130(initialized_repo, password_env, monkeypatch):
    def interrupted(args, ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(cmd_key, "run_list", interrupted)

    code, _, err = run_cli("-r", str(initialized_repo), "key", "list", env=password_env)
    assert code == EXIT_INTERRUPTED
    assert "interrupted" in err and "Traceback" not in err


def test_bad_arguments_exit_2():
    assert run_cli("init", "--pack-size", "lots").code == EXIT_USAGE
    assert run_cli("no-such-command").code == EXIT_USAGE
    assert run_cli().code == EXIT_USAGE


def test_injected_transient_faults_are_retried_through_the_cli(repo_path, password_env):
    env = {**password_env, "RESURGO_TEST_FAULTS": "put:fail:2"}
    code, _, err = run_cli("-r", str(repo_path), "init", env=env)

    assert code == 0, err
    assert (repo_path / "config").is_file()


def test_injected_permanent_faults_reach_the_user_as_backend_errors(repo_path, password_env):
    env = {**password_env, "RESURGO_TEST_FAULTS": "put:fail:1:denied"}
    code, _, err = run_cli("-r", str(repo_path), "init", env=env)

    assert code == 15
    _assert_one_line_error(err)


# --- entry points ------------------------------------------------------------------------


def test_python_dash_m_resurgo_runs_init_and_key_list(repo_path, password_env):
    code, out, err = run_cli_subprocess("-r", str(repo_path), "init", env=password_env)
    assert code == 0, err
    assert "created repository" in out

    code, out, err = run_cli_subprocess(
        "-r", str(repo_path), "--json", "key", "list", env=password_env
    )
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["keys"] == 1


def test_python_dash_m_cli_main_reports_exit_codes(tmp_path, password_env):
    code, _, err = run_cli_subprocess(
        "-r", str(tmp_path / "none"), "key", "list", env=password_env, module="resurgo.cli.main"
    )
    assert code == EXIT_NO_REPOSITORY
    _assert_one_line_error(err, "no repository")


@pytest.mark.parametrize("flag", ["--version"])
def test_version_flag_prints_the_version(flag):
    code, out, _ = run_cli(flag)
    assert code == 0 and out.startswith("resurgo ")
