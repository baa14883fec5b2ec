"""``rebuno policy check`` and ``rebuno policy eval``: offline, no broker.

A few cases run the real command line in a subprocess (exit codes, stdout/stderr);
the rest call :func:`rebuno.cli.main` in-process to stay fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernel.policy import load_policy
from rebuno.cli import main

ROOT = Path(__file__).resolve().parents[2]

POLICY = """\
rules:
  - id: allow-search
    priority: 1
    when: {tool_id: "web_*", arguments: [{field: q, max_length: 10}]}
    then: {decision: allow, reason: search ok, timeout_ms: 2500}
    rate_limit: {max: 10, window: 1m}
  - id: business-hours
    priority: 2
    when: {schedule: "Mon-Fri 09:00-17:00 UTC", labels: {tier: trusted}}
    then: {decision: require_approval, reason: ask}
  - id: long-runs
    priority: 3
    when: {min_step_count: 5, min_duration_ms: 1000}
    then: {decision: deny, reason: too long}
default: {decision: deny, reason: nope}
"""


def rebuno(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rebuno.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "NO_COLOR": "1"})


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    f = tmp_path / "policy.yaml"
    f.write_text(POLICY)
    return f


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def evaluate(capsys: pytest.CaptureFixture, *args: str) -> dict:
    code, out, err = run(capsys, "policy", "eval", *args)
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1
    return json.loads(out)


# ------------------------------------------------------------------ subprocess --
def test_eval_prints_one_json_object(policy_file: Path) -> None:
    proc = rebuno("policy", "eval", str(policy_file), "--agent", "a", "--tool", "web_search", "--args", '{"q": "x"}')
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "decision": "allow", "rule_id": "allow-search", "reason": "search ok", "timeout_ms": 2500,
        "rate_limit": {"max": 10, "window": "1m"}, "policy_version": load_policy(policy_file).version}


@pytest.mark.parametrize("extra, message", [
    (["--args", "{bad"], "invalid --args JSON"),
    (["--at", "yesterday"], 'invalid --at time "yesterday"'),
])
def test_eval_bad_input_exits_2(policy_file: Path, extra: list[str], message: str) -> None:
    proc = rebuno("policy", "eval", str(policy_file), "--agent", "a", "--tool", "t", *extra)
    assert proc.returncode == 2 and proc.stdout == ""
    assert message in proc.stderr


def test_check_prints_rules_in_priority_order(policy_file: Path) -> None:
    proc = rebuno("policy", "check", str(policy_file))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith(f"{policy_file}: OK (file policy, 3 rules, version {load_policy(policy_file).version})")
    assert out.index("allow-search") < out.index("business-hours") < out.index("long-runs")
    assert 'allow "search ok" [timeout 2500 ms, rate limit 10 per 1m]' in out
    assert "when tool_id=web_*, arguments[q len<=10]" in out
    assert 'default: deny "nope"' in out


def test_check_invalid_policy_names_file_rule_and_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("rules:\n  - id: ok\n    then: {decision: allow}\n  - id: typo\n    priority: 1\n"
                 "    when: {tool_idz: x}\n    then: {decision: allow}\n")
    proc = rebuno("policy", "check", str(f))
    assert proc.returncode == 1 and proc.stdout == ""
    assert f'{f}:6: rule "typo" when: unknown key "tool_idz"' in proc.stderr


# ------------------------------------------------------------------ in-process --
def test_eval_inputs_reach_every_condition(capsys: pytest.CaptureFixture, policy_file: Path) -> None:
    p = str(policy_file)
    base = ["--agent", "a", "--tool", "calc"]
    assert evaluate(capsys, p, *base)["rule_id"] == "default"
    wednesday_10 = ["--at", "2026-03-25T10:00:00Z"]
    assert evaluate(capsys, p, *base, "--labels", "tier=trusted", *wednesday_10)["decision"] == "require_approval"
    assert evaluate(capsys, p, *base, "--label", "x=1,tier=trusted", *wednesday_10)["rule_id"] == "business-hours"
    assert evaluate(capsys, p, *base, "--labels", "tier=trusted", "--at", "2026-03-28T10:00:00Z")["rule_id"] == \
        "default"                                                        # Saturday
    assert evaluate(capsys, p, *base, "--labels", "tier=trusted", "--at", "2026-03-25T10:00")["rule_id"] == \
        "business-hours"                                                 # naive = UTC
    assert evaluate(capsys, p, *base, "--labels", "tier=trusted", "--at", "2026-03-25T10:00:00-08:00")["rule_id"] \
        == "default"                                                     # 18:00 UTC
    assert evaluate(capsys, p, *base, "--steps", "5", "--elapsed-ms", "1000")["rule_id"] == "long-runs"
    assert evaluate(capsys, p, *base, "--steps", "5", "--elapsed-ms", "999")["rule_id"] == "default"
    search = ["--agent", "a", "--tool", "web_search"]
    assert evaluate(capsys, p, *search)["rule_id"] == "default"          # no --args: no arguments at all
    assert evaluate(capsys, p, *search, "--args", "null")["rule_id"] == "allow-search"
    assert evaluate(capsys, p, *search, "--args", '{"q": "far too long"}')["rule_id"] == "default"


@pytest.mark.parametrize("extra, message", [
    (["--labels", "novalue"], 'invalid label "novalue"'),
    (["--labels", "=x"], 'invalid label "=x"'),
    (["--steps", "-1"], "must be >= 0"),
    (["--elapsed-ms", "soon"], "not an integer"),
])
def test_eval_usage_errors_exit_2(capsys: pytest.CaptureFixture, policy_file: Path, extra: list[str],
                                  message: str) -> None:
    code, out, err = run(capsys, "policy", "eval", str(policy_file), "--agent", "a", "--tool", "t", *extra)
    assert (code, out) == (2, "") and message in err


def test_eval_invalid_or_missing_policy_exits_2(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, out, err = run(capsys, "policy", "eval", str(tmp_path / "missing.yaml"), "--agent", "a", "--tool", "t")
    assert (code, out) == (2, "") and "invalid policy" in err and "cannot read policy" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("default: {decision: maybe}\n")
    code, out, err = run(capsys, "policy", "eval", str(bad), "--agent", "a", "--tool", "t")
    assert code == 2 and f'{bad}:1: default has invalid decision "maybe"' in err


def test_eval_requires_agent_and_tool(capsys: pytest.CaptureFixture, policy_file: Path) -> None:
    code, _, err = run(capsys, "policy", "eval", str(policy_file), "--tool", "t")
    assert code == 2 and "--agent" in err


def test_eval_directory_policy(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    (tmp_path / "researcher.yaml").write_text(POLICY)
    d = evaluate(capsys, str(tmp_path), "--agent", "other", "--tool", "t")
    assert (d["decision"], d["rule_id"], d["reason"]) == ("deny", "agent-default",
                                                          'no policy configured for agent "other"')
    assert d["policy_version"] == load_policy(tmp_path).version
    assert evaluate(capsys, str(tmp_path), "--agent", "researcher", "--tool", "web_x", "--args", "{}")[
        "rule_id"] == "allow-search"


def test_check_directory_lists_each_engine(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    (tmp_path / "researcher.yaml").write_text(POLICY)
    (tmp_path / "_global.yaml").write_text("rules:\n  - {id: no-shell, priority: 0, when: {tool_id: shell}, "
                                           "then: {decision: deny, timeout_ms: 5}}\n")
    code, out, err = run(capsys, "policy", "check", str(tmp_path))
    assert code == 0
    assert out.startswith(f"{tmp_path}: OK (directory policy, 1 agent file + _global, version ")
    assert f'agent "researcher" ({tmp_path}/researcher.yaml + {tmp_path}/_global.yaml)' in out
    assert f"agents without their own file ({tmp_path}/_global.yaml)" in out
    agent_part = out[out.index('agent "researcher"'):out.index("agents without")]
    assert agent_part.index("no-shell") < agent_part.index("allow-search")
    assert f'warning: {tmp_path}/_global.yaml:2: rule "no-shell": then.timeout_ms is ignored' in err
    (tmp_path / "_global.yaml").unlink()
    code, out, _ = run(capsys, "policy", "check", str(tmp_path))
    assert code == 0 and "no _global file: denied (rule agent-default" in out


def test_check_json(capsys: pytest.CaptureFixture, policy_file: Path) -> None:
    code, out, _ = run(capsys, "policy", "check", str(policy_file), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary == load_policy(policy_file).summary()
    assert [r["id"] for r in summary["engines"][0]["rules"]] == ["allow-search", "business-hours", "long-runs"]


def test_check_the_shipped_examples(capsys: pytest.CaptureFixture) -> None:
    for path in sorted((ROOT / "examples" / "policies").iterdir()):
        code, out, err = run(capsys, "policy", "check", str(path))
        assert code == 0, err
        assert ": OK (" in out


def test_policy_requires_a_subcommand(capsys: pytest.CaptureFixture) -> None:
    code, _, err = run(capsys, "policy")
    assert code == 2 and "SUBCOMMAND" in err
