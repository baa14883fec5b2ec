"""Unit tests for ``kernel/policy.py``: globs, parsing/validation, evaluation, loading,
and the shared conformance vectors of ``spec/policy-vectors.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kernel.policy import (
    PolicyDecision, PolicyError, PolicyInput, glob_match, load_policy, parse_policy, permissive, secure_default,
)


def decide(doc: Any, tool_id: str = "t", agent_id: str = "a", labels: dict[str, str] | None = None,
           action: str = "tool.invoke") -> PolicyDecision:
    return parse_policy(doc, "test.yaml").evaluate(
        PolicyInput(tool_id=tool_id, agent_id=agent_id, labels=labels or {}, action=action))


def rule(rid: str, priority: int, when: dict | None = None, decision: str = "allow", **then: Any) -> dict:
    r: dict[str, Any] = {"id": rid, "priority": priority, "then": {"decision": decision, **then}}
    if when is not None:
        r["when"] = when
    return r


# ------------------------------------------------------------------ glob_match --
@pytest.mark.parametrize("pattern, value, expected", [
    # whole-id matching
    ("web_search", "web_search", True),
    ("web_search", "web_search2", False),
    ("web_search", "xweb_search", False),
    ("", "", True),
    ("", "a", False),
    # * : any run of non-'/' characters, possibly empty
    ("web_*", "web_search_deep", True),
    ("web_*", "web_", True),
    ("web_*", "web", False),
    ("web_*", "shell_exec", False),
    ("web_*", "web_a/b", False),
    ("*", "", True),
    ("*", "anything.at_all", True),
    ("*", "a/b", False),
    ("*/*", "a/b", True),
    ("*_fetch", "web_fetch", True),
    ("*_fetch", "web_fetcher", False),
    # ? : exactly one non-'/' character
    ("tool_?", "tool_a", True),
    ("tool_?", "tool_ab", False),
    ("tool_?", "tool_", False),
    ("a?c", "a/c", False),
    ("?", "/", False),
    # classes
    ("[abc]x", "bx", True),
    ("[abc]x", "dx", False),
    ("[fd]s_*", "ds_query", True),
    ("[fd]s_*", "fs_read", True),
    ("[fd]s_*", "gs_read", False),
    ("[a-z]", "m", True),
    ("[a-z]", "M", False),
    ("[a-z]", "/", False),
    ("[/]", "/", False),
    ("[^a-z]", "A", True),
    ("[^a-z]", "7", True),
    ("[^a-z]", "b", False),
    ("[^a-z]", "/", False),
    ("v[0-9][0-9]", "v42", True),
    ("v[0-9][0-9]", "v4x", False),
    # backslash escapes make the next character literal
    (r"\*", "*", True),
    (r"\*", "a", False),
    (r"a\?", "a?", True),
    (r"a\?", "ab", False),
    (r"\[x]", "[x]", True),
    (r"\[x]", "x", False),
    # '.' and '_' are literal
    ("fs.*", "fs.read", True),
    ("fs.*", "fs_read", False),
    ("a.c", "abc", False),
    ("a_c", "abc", False),
    ("a_c", "a_c", True),
    # other regex metacharacters are literal too
    ("a+b", "a+b", True),
    ("a+b", "aab", False),
    ("(x)|y", "(x)|y", True),
    ("(x)|y", "y", False),
    ("a$", "a$", True),
    ("^a", "^a", True),
    ("^a", "a", False),
])
def test_glob_match(pattern: str, value: str, expected: bool) -> None:
    assert glob_match(pattern, value) is expected


@pytest.mark.parametrize("pattern, equal_value, other_value", [
    ("web_[", "web_[", "web_x"),        # unclosed class
    ("[invalid", "[invalid", "i"),
    ("[^abc", "[^abc", "x"),
    ("tool\\", "tool\\", "tool"),       # dangling escape
])
def test_glob_malformed_pattern_falls_back_to_equality(pattern: str, equal_value: str, other_value: str) -> None:
    assert glob_match(pattern, equal_value) is True
    assert glob_match(pattern, other_value) is False


def test_glob_results_are_stable_across_calls() -> None:
    # the compiled pattern is cached: a second evaluation must give the same answers
    for _ in range(2):
        assert glob_match("cache_[ab]*", "cache_b1") is True
        assert glob_match("cache_[ab]*", "cache_c1") is False


# ------------------------------------------------------------------ evaluation --
def test_rules_are_sorted_by_priority_lowest_first_regardless_of_file_order() -> None:
    doc = {"rules": [
        rule("late", 30, {}, "deny", reason="late"),
        rule("early", -5, {"tool_id": "web_*"}, "allow", reason="early"),
        rule("middle", 10, {"tool_id": "web_search"}, "deny", reason="middle"),
    ]}
    policy = parse_policy(doc, "test.yaml")
    assert [r.id for r in policy.rules] == ["early", "middle", "late"]
    assert decide(doc, "web_search").rule_id == "early"
    assert decide(doc, "shell").rule_id == "late"


def test_first_matching_rule_wins() -> None:
    doc = {"rules": [
        rule("deny-web", 1, {"tool_id": "web_*"}, "deny", reason="no web"),
        rule("allow-all", 2, {}, "allow", reason="ok"),
    ]}
    d = decide(doc, "web_search")
    assert (d.decision, d.rule_id, d.reason) == ("deny", "deny-web", "no web")
    d = decide(doc, "calc")
    assert (d.decision, d.rule_id, d.reason) == ("allow", "allow-all", "ok")


@pytest.mark.parametrize("doc", [
    None,
    {},
    {"rules": []},
    {"rules": [rule("x", 1, {"tool_id": "other"})]},
    {"default": {}},
    {"default": {"reason": "dropped: no decision"}},
    {"default": {"decision": "", "reason": "dropped too"}},
])
def test_missing_default_is_deny_with_standard_reason(doc: Any) -> None:
    d = decide(doc, "web_search")
    assert d == PolicyDecision("deny", "default", "No explicit allow rule matched", 0)
    assert d.allowed is False


@pytest.mark.parametrize("decision", ["allow", "deny"])
def test_explicit_default_decision_and_reason(decision: str) -> None:
    d = decide({"default": {"decision": decision, "reason": "the default"}})
    assert (d.decision, d.rule_id, d.reason, d.timeout_ms) == (decision, "default", "the default", 0)
    assert d.allowed is (decision == "allow")


def test_default_without_reason_has_empty_reason_and_never_a_timeout() -> None:
    d = decide({"default": {"decision": "allow", "timeout_ms": 1000}})
    assert (d.decision, d.rule_id, d.reason, d.timeout_ms) == ("allow", "default", "", 0)


def test_rule_without_reason_returns_empty_reason() -> None:
    d = decide({"rules": [rule("r", 1, {})]})
    assert (d.decision, d.rule_id, d.reason) == ("allow", "r", "")


def test_tool_id_and_tool_ids_must_both_hold() -> None:
    doc = {"rules": [rule("both", 1, {"tool_id": "web_*", "tool_ids": ["*_fetch", "*_get"]})],
           "default": {"decision": "deny", "reason": "d"}}
    assert decide(doc, "web_fetch").rule_id == "both"
    assert decide(doc, "web_get").rule_id == "both"
    assert decide(doc, "web_search").rule_id == "default"   # tool_ids fails
    assert decide(doc, "api_fetch").rule_id == "default"    # tool_id fails


def test_tool_ids_matches_any_glob() -> None:
    doc = {"rules": [rule("set", 1, {"tool_ids": ["fs_read*", "fs_list"]})], "default": {"decision": "deny"}}
    assert decide(doc, "fs_read_file").rule_id == "set"
    assert decide(doc, "fs_list").rule_id == "set"
    assert decide(doc, "fs_list_all").rule_id == "default"
    assert decide(doc, "fs_write").rule_id == "default"


def test_empty_tool_ids_list_is_not_checked() -> None:
    doc = {"rules": [rule("any", 1, {"tool_ids": []}, "deny", reason="all")], "default": {"decision": "allow"}}
    assert decide(doc, "whatever").rule_id == "any"


def test_agent_id_is_exact_and_not_a_glob() -> None:
    doc = {"rules": [rule("r", 1, {"agent_id": "research*"})], "default": {"decision": "deny"}}
    assert decide(doc, agent_id="researcher").rule_id == "default"
    assert decide(doc, agent_id="research*").rule_id == "r"
    doc = {"rules": [rule("r", 1, {"agent_id": "researcher"})], "default": {"decision": "deny"}}
    assert decide(doc, agent_id="researcher").rule_id == "r"
    assert decide(doc, agent_id="researcher2").rule_id == "default"


def test_agent_ids_is_exact_membership() -> None:
    doc = {"rules": [rule("r", 1, {"agent_ids": ["researcher", "analyst*"]})], "default": {"decision": "deny"}}
    assert decide(doc, agent_id="researcher").rule_id == "r"
    assert decide(doc, agent_id="analyst*").rule_id == "r"
    assert decide(doc, agent_id="analyst1").rule_id == "default"
    assert decide(doc, agent_id="deploy-bot").rule_id == "default"


def test_agent_id_and_agent_ids_must_both_hold() -> None:
    doc = {"rules": [rule("r", 1, {"agent_id": "a", "agent_ids": ["b", "c"]})], "default": {"decision": "deny"}}
    assert decide(doc, agent_id="a").rule_id == "default"
    assert decide(doc, agent_id="b").rule_id == "default"
    doc = {"rules": [rule("r", 1, {"agent_id": "b", "agent_ids": ["b", "c"]})], "default": {"decision": "deny"}}
    assert decide(doc, agent_id="b").rule_id == "r"


def test_labels_require_equality_of_every_listed_label() -> None:
    doc = {"rules": [rule("locked", 1, {"labels": {"env": "prod", "tier": "critical"}}, "deny")],
           "default": {"decision": "allow"}}
    assert decide(doc, labels={"env": "prod", "tier": "critical"}).rule_id == "locked"
    assert decide(doc, labels={"env": "prod", "tier": "critical", "team": "x"}).rule_id == "locked"
    assert decide(doc, labels={"env": "prod"}).rule_id == "default"
    assert decide(doc, labels={"env": "prod", "tier": "low"}).rule_id == "default"
    assert decide(doc, labels={"env": "PROD", "tier": "critical"}).rule_id == "default"
    assert decide(doc, labels={}).rule_id == "default"


def test_label_required_empty_matches_a_missing_label() -> None:
    doc = {"rules": [rule("unowned", 1, {"labels": {"team": ""}}, "deny")], "default": {"decision": "allow"}}
    assert decide(doc, labels={}).rule_id == "unowned"
    assert decide(doc, labels={"team": ""}).rule_id == "unowned"
    assert decide(doc, labels={"team": "x"}).rule_id == "default"


def test_action_is_compared_exactly() -> None:
    doc = {"rules": [rule("tools", 1, {"action": "tool.invoke"}, "deny")], "default": {"decision": "allow"}}
    assert decide(doc).rule_id == "tools"
    assert decide(doc, action="execution.complete").rule_id == "default"
    doc = {"rules": [rule("life", 1, {"action": "execution.complete"}, "deny")], "default": {"decision": "allow"}}
    assert decide(doc).rule_id == "default"
    assert decide(doc, action="execution.complete").rule_id == "life"
    doc = {"rules": [rule("case", 1, {"action": "Tool.Invoke"}, "deny")], "default": {"decision": "allow"}}
    assert decide(doc).rule_id == "default"


def test_policy_input_defaults_to_tool_invoke() -> None:
    assert PolicyInput(tool_id="t", agent_id="a").action == "tool.invoke"


def test_timeout_ms_is_returned_for_allow_rules_only_and_only_when_positive() -> None:
    doc = {"rules": [
        rule("fast", 1, {"tool_id": "fast"}, "allow", timeout_ms=1500),
        rule("zero", 2, {"tool_id": "zero"}, "allow", timeout_ms=0),
        rule("neg", 3, {"tool_id": "neg"}, "allow", timeout_ms=-10),
        rule("deny", 4, {"tool_id": "deny"}, "deny", timeout_ms=5000),
    ]}
    assert decide(doc, "fast").timeout_ms == 1500
    assert decide(doc, "zero").timeout_ms == 0
    assert decide(doc, "neg").timeout_ms == 0
    d = decide(doc, "deny")
    assert (d.decision, d.rule_id, d.timeout_ms) == ("deny", "deny", 0)


def test_empty_when_matches_everything() -> None:
    doc = {"rules": [rule("all", 5, {}, "deny", reason="nothing")], "default": {"decision": "allow"}}
    assert decide(doc, "x", "y", {"k": "v"}).rule_id == "all"
    doc = {"rules": [{"id": "nowhen", "priority": 5, "then": {"decision": "deny"}}]}
    assert decide(doc).rule_id == "nowhen"


def test_negative_and_omitted_priorities_sort_numerically() -> None:
    doc = {"rules": [
        {"id": "zero", "when": {}, "then": {"decision": "allow"}},   # priority omitted = 0
        rule("neg", -1, {}, "deny"),
    ]}
    assert decide(doc).rule_id == "neg"


def test_unknown_top_level_keys_are_ignored() -> None:
    doc = {"version": 3, "rules": [rule("r", 1, {"tool_id": "t"})], "extra": True}
    assert decide(doc, "t").rule_id == "r"


@pytest.mark.parametrize("where, bad", [
    ("when", {"tool_idz": "t"}),          # a misspelled condition would widen the rule
    ("rule", {"comment": "x"}),
    ("then", {"decison": "deny"}),
])
def test_unknown_rule_keys_fail_closed(where: str, bad: dict) -> None:
    r = rule("r", 1, {"tool_id": "t"})
    if where == "when":
        r["when"] = {**r["when"], **bad}
    elif where == "then":
        r["then"] = {**r["then"], **bad}
    else:
        r.update(bad)
    with pytest.raises(PolicyError, match=rf'rule "r": unknown .*{next(iter(bad))}'):
        parse_policy({"rules": [r]}, "typo.yaml")


def test_describe_names_source_and_rule_count() -> None:
    p = parse_policy({"rules": [rule("a", 1), rule("b", 2)]}, "policy.yaml")
    assert p.describe() == "policy.yaml (2 rules loaded)"
    assert p.source == "policy.yaml"


def test_permissive_allows_everything() -> None:
    p = permissive()
    for inp in (PolicyInput(tool_id="rm_rf", agent_id="x"),
                PolicyInput(tool_id="a.b", agent_id="y", labels={"env": "prod"}),
                PolicyInput(tool_id="t", agent_id="z", action="execution.complete")):
        d = p.evaluate(inp)
        assert d.allowed
        assert (d.decision, d.rule_id, d.reason, d.timeout_ms) == (
            "allow", "permissive-default", "no policy configured (dev mode)", 0)
    assert p.rules == ()


# ------------------------------------------------------------------ validation --
def _error(doc: Any, source: str = "my-policy.yaml") -> str:
    with pytest.raises(PolicyError) as info:
        parse_policy(doc, source)
    msg = str(info.value)
    assert source in msg, f"message does not name the source: {msg}"
    return msg


def test_policy_error_is_a_value_error() -> None:
    assert issubclass(PolicyError, ValueError)


@pytest.mark.parametrize("raw", [
    {"priority": 1, "then": {"decision": "allow"}},
    {"id": "", "priority": 1, "then": {"decision": "allow"}},
    {"id": 5, "priority": 1, "then": {"decision": "allow"}},
])
def test_rule_without_id_is_rejected(raw: dict) -> None:
    msg = _error({"rules": [rule("first", 0), raw]})
    assert "rule missing ID" in msg
    assert "rule 1" in msg  # the rule's position, since it has no id


def test_duplicate_rule_id_is_rejected() -> None:
    msg = _error({"rules": [rule("same", 1), rule("same", 2, decision="deny")]})
    assert 'duplicate rule ID "same"' in msg


@pytest.mark.parametrize("then", [{}, {"decision": "maybe"}, {"decision": "ALLOW"}, {"decision": None}])
def test_invalid_rule_decision_is_rejected(then: dict) -> None:
    msg = _error({"rules": [{"id": "bad-rule", "priority": 1, "then": then}]})
    assert 'rule "bad-rule"' in msg
    assert "invalid decision" in msg
    assert str(then.get("decision")) in msg


def test_rule_without_then_is_rejected() -> None:
    msg = _error({"rules": [{"id": "no-then", "priority": 1, "when": {}}]})
    assert 'rule "no-then"' in msg
    assert "then" in msg


def test_require_approval_rule_is_rejected_with_a_clear_message() -> None:
    msg = _error({"rules": [rule("approve-deploy", 15, {"tool_id": "deploy_*"}, "require_approval")]})
    assert 'rule "approve-deploy"' in msg
    assert "require_approval" in msg
    assert "not supported" in msg


def test_duplicate_priority_is_rejected() -> None:
    msg = _error({"rules": [rule("a", 7), rule("b", 7)]})
    assert 'duplicate rule priority: priority 7 used by both "a" and "b"' in msg


def test_two_rules_omitting_priority_clash_at_zero() -> None:
    msg = _error({"rules": [{"id": "a", "then": {"decision": "allow"}},
                            {"id": "b", "then": {"decision": "deny"}}]})
    assert 'duplicate rule priority: priority 0 used by both "a" and "b"' in msg


@pytest.mark.parametrize("doc", [["a", "list"], "just a string", 42])
def test_non_mapping_document_is_rejected(doc: Any) -> None:
    msg = _error(doc)
    assert "mapping" in msg


def test_rules_must_be_a_list() -> None:
    assert "'rules' must be a list" in _error({"rules": "nope"})


def test_each_rule_must_be_a_mapping() -> None:
    assert "rule 0 must be a mapping" in _error({"rules": ["just-a-string"]})


@pytest.mark.parametrize("labels", [["env", "prod"], {"env": 1}, {"env": None}, {1: "x"}, "env=prod"])
def test_bad_labels_types_are_rejected(labels: Any) -> None:
    msg = _error({"rules": [rule("lbl", 1, {"labels": labels})]})
    assert 'rule "lbl"' in msg
    assert "labels" in msg


@pytest.mark.parametrize("when, field", [
    ({"tool_id": 5}, "when.tool_id"),
    ({"tool_ids": "web_*"}, "when.tool_ids"),
    ({"tool_ids": ["ok", 3]}, "when.tool_ids"),
    ({"agent_id": ["a"]}, "when.agent_id"),
    ({"agent_ids": "a"}, "when.agent_ids"),
    ({"action": 1}, "when.action"),
])
def test_bad_condition_types_are_rejected(when: dict, field: str) -> None:
    msg = _error({"rules": [rule("cond", 1, when)]})
    assert 'rule "cond"' in msg
    assert field in msg


def test_when_must_be_a_mapping() -> None:
    msg = _error({"rules": [{"id": "w", "priority": 1, "when": ["x"], "then": {"decision": "allow"}}]})
    assert 'rule "w"' in msg and "'when' must be a mapping" in msg


@pytest.mark.parametrize("priority", ["1", 1.5, True])
def test_priority_must_be_an_integer(priority: Any) -> None:
    msg = _error({"rules": [{"id": "p", "priority": priority, "then": {"decision": "allow"}}]})
    assert 'rule "p"' in msg and "priority must be an integer" in msg


def test_timeout_ms_must_be_an_integer() -> None:
    msg = _error({"rules": [rule("t", 1, {}, "allow", timeout_ms="5s")]})
    assert 'rule "t"' in msg and "timeout_ms must be an integer" in msg


def test_reason_must_be_a_string() -> None:
    msg = _error({"rules": [rule("r", 1, {}, "allow", reason=["x"])]})
    assert 'rule "r"' in msg and "reason must be a string" in msg


@pytest.mark.parametrize("decision", ["maybe", "Allow"])
def test_invalid_default_decision_is_rejected(decision: str) -> None:
    msg = _error({"default": {"decision": decision}})
    assert f'default has invalid decision "{decision}"' in msg


def test_default_must_be_a_mapping() -> None:
    assert "'default' must be a mapping" in _error({"default": "deny"})


def test_require_approval_default_is_rejected_as_not_supported() -> None:
    msg = _error({"default": {"decision": "require_approval"}})
    assert "require_approval" in msg and "not supported" in msg


@pytest.mark.parametrize("extra", [
    {"when": {"tool_id": "shell_exec", "arguments": [{"field": "command", "pattern": "^ls"}]}},
    {"when": {"tool_id": "shell_exec", "schedule": "Sat 00:00-00:01 UTC"}},
    {"when": {"tool_id": "shell_exec", "min_step_count": 1000}},
    {"when": {"tool_id": "shell_exec", "min_duration_ms": 3_600_000}},
    {"when": {"tool_id": "shell_exec"}, "rate_limit": {"max": 1, "window": "1h"}},
], ids=["arguments", "schedule", "min_step_count", "min_duration_ms", "rate_limit"])
def test_unsupported_conditions_are_rejected_not_ignored(extra: dict) -> None:
    doc = {"rules": [{"id": "narrow-allow", "priority": 1, "then": {"decision": "allow"}, **extra}],
           "default": {"decision": "deny"}}
    with pytest.raises(PolicyError, match=r"not supported"):
        parse_policy(doc, "narrow.yaml")


# --------------------------------------------------------------------- loading --
def test_load_policy_valid_file(tmp_path: Path) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text(
        "rules:\n"
        "  - id: allow-search\n"
        "    priority: 1\n"
        "    when: {tool_id: 'web_*'}\n"
        "    then: {decision: allow, reason: search ok, timeout_ms: 2500}\n"
        "default:\n"
        "  decision: deny\n"
        "  reason: nope\n"
    )
    p = load_policy(f)
    assert p.source == str(f)
    assert len(p.rules) == 1
    assert p.evaluate(PolicyInput(tool_id="web_search", agent_id="a")) == PolicyDecision(
        "allow", "allow-search", "search ok", 2500)
    assert p.evaluate(PolicyInput(tool_id="shell", agent_id="a")) == PolicyDecision("deny", "default", "nope", 0)
    # a str path works as well as a Path
    assert load_policy(str(f)).rules == p.rules


def test_load_empty_file_denies_everything(tmp_path: Path) -> None:
    f = tmp_path / "empty.yaml"
    f.write_text("")
    d = load_policy(f).evaluate(PolicyInput(tool_id="t", agent_id="a"))
    assert (d.decision, d.rule_id, d.reason) == ("deny", "default", "No explicit allow rule matched")


def test_load_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text("rules:\n  - id: a\n    then: {decision: allow\n  - id: b\n")
    with pytest.raises(PolicyError) as info:
        load_policy(f)
    msg = str(info.value)
    assert str(f) in msg
    assert "parsing policy YAML" in msg
    assert "(line " in msg


def test_load_yaml_syntax_error_reports_the_right_line(tmp_path: Path) -> None:
    f = tmp_path / "tab.yaml"
    f.write_text("rules: []\ndefault:\n\tdecision: deny\n")  # a tab on line 3
    with pytest.raises(PolicyError, match=r"\(line 3\)"):
        load_policy(f)


def test_load_invalid_policy_names_the_file_and_rule(tmp_path: Path) -> None:
    f = tmp_path / "invalid.yaml"
    f.write_text("rules:\n  - {id: r1, priority: 1, then: {decision: perhaps}}\n")
    with pytest.raises(PolicyError, match=r'invalid\.yaml: rule "r1" has invalid decision "perhaps"'):
        load_policy(f)


def test_load_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError) as info:
        load_policy(f)
    msg = str(info.value)
    assert str(f) in msg
    assert "cannot read policy" in msg
    assert "No such file" in msg


def test_load_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "researcher.yaml").write_text("rules: []\n")
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg
    assert "directories are not supported" in msg


# ------------------------------------------------------ spec conformance vectors --
def _spec_file(name: str) -> Path | None:
    """The vectors copied into tests/data (so CI always runs them), else the shared spec beside the repo."""
    here = Path(__file__).resolve()
    for base in (here.parents[1] / "data", here.parents[3] / "shared" / "spec"):
        if (base / name).is_file():
            return base / name
    return None


_VECTORS_FILE = _spec_file("policy-vectors.yaml")
_VECTORS: list[dict] = yaml.safe_load(_VECTORS_FILE.read_text()) if _VECTORS_FILE else []

_SUPPORTED_WHEN = {"action", "tool_id", "tool_ids", "agent_id", "agent_ids", "labels"}
_UNSUPPORTED_WHEN = {"arguments", "schedule", "min_step_count", "min_duration_ms"}


def unsupported_feature(vector: dict) -> str | None:
    """The first feature of ``vector`` this engine does not implement, or None when it can run."""
    mode = vector.get("mode", "file")
    if mode == "directory":
        return "directory policies (mode: directory)"
    if mode not in ("file", "none-dev", "none-server"):
        return f"mode {mode!r}"
    inp = vector.get("input") or {}
    if inp.get("action", "tool.invoke") != "tool.invoke":
        return "secure-default lifecycle wrapper (input action other than tool.invoke)"
    if "rate_limit" in vector.get("expect", {}):
        return "rate_limit"
    policy = vector.get("policy") or {}
    if (policy.get("default") or {}).get("decision") == "require_approval":
        return "require_approval (default)"
    for r in policy.get("rules") or []:
        if "rate_limit" in r:
            return "rate_limit"
        if (r.get("then") or {}).get("decision") == "require_approval":
            return "require_approval"
        when = r.get("when") or {}
        for key in sorted(_UNSUPPORTED_WHEN & set(when)):
            return key
        unknown = set(when) - _SUPPORTED_WHEN - _UNSUPPORTED_WHEN
        if unknown:
            return f"condition(s) {sorted(unknown)}"
    return None


_RUNNABLE = [v for v in _VECTORS if unsupported_feature(v) is None]
_SKIPPED = [v for v in _VECTORS if unsupported_feature(v) is not None]


def _vector_params() -> list:
    if not _VECTORS:
        return [pytest.param(None, id="no-vectors", marks=pytest.mark.skip(reason="spec/policy-vectors.yaml not found"))]
    out = []
    for v in _VECTORS:
        feature = unsupported_feature(v)
        marks = [pytest.mark.skip(reason=f"needs unsupported feature: {feature}")] if feature else []
        out.append(pytest.param(v, id=v["name"], marks=marks))
    return out


@pytest.mark.parametrize("vector", _vector_params())
def test_policy_vector(vector: dict) -> None:
    mode = vector.get("mode", "file")
    policy = (permissive() if mode == "none-dev" else secure_default() if mode == "none-server"
              else parse_policy(vector.get("policy"), f"vector:{vector['name']}"))
    inp = vector["input"]
    d = policy.evaluate(PolicyInput(
        tool_id=inp.get("tool_id", ""), agent_id=inp.get("agent_id", ""), labels=inp.get("labels") or {},
        arguments=inp.get("arguments"), step_count=inp.get("step_count", 0), duration_ms=inp.get("elapsed_ms", 0),
        action=inp.get("action", "tool.invoke")))
    exp = vector["expect"]
    assert (d.decision, d.rule_id, d.reason, d.timeout_ms) == (
        exp["decision"], exp["rule_id"], exp.get("reason", ""), exp.get("timeout_ms", 0))


@pytest.mark.skipif(not _VECTORS, reason="spec/policy-vectors.yaml not found")
def test_policy_vectors_coverage() -> None:
    names = [v["name"] for v in _VECTORS]
    assert len(names) == len(set(names)), "vector names must be unique"
    by_feature: dict[str, int] = {}
    for v in _SKIPPED:
        f = unsupported_feature(v)
        by_feature[f] = by_feature.get(f, 0) + 1
    print(f"\npolicy vectors: {len(_VECTORS)} total, {len(_RUNNABLE)} run, {len(_SKIPPED)} skipped")
    for f, n in sorted(by_feature.items()):
        print(f"  skipped {n:3d}: {f}")
    # the supported subset of the language is exercised by a meaningful number of vectors
    assert len(_RUNNABLE) >= 25
    modes = {v.get("mode", "file") for v in _RUNNABLE}
    assert modes == {"file", "none-dev", "none-server"}
    assert {v["expect"]["decision"] for v in _RUNNABLE} == {"allow", "deny"}
    assert any("timeout_ms" in v["expect"] for v in _RUNNABLE)
