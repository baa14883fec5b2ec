"""Unit tests for ``kernel/policy.py``: globs, every condition, parsing/validation with
file/rule/line messages, directory policies, sources and versions, durations, schedules,
and the shared conformance vectors of ``spec/policy-vectors.yaml`` (all of them run)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from kernel.policy import (
    NO_ARGUMENTS, ArgumentPredicate, Policy, PolicyDecision, PolicyError, PolicyInput, PolicySet, RateLimit,
    glob_match, load_policy, parse_duration, parse_policy, permissive, policy_from_sources, policy_sources,
    secure_default,
)

WED_NOON = datetime(2026, 3, 25, 12, 0, tzinfo=timezone.utc)


def decide(doc: Any, tool_id: str = "t", agent_id: str = "a", labels: dict[str, str] | None = None,
           action: str = "tool.invoke", **kw: Any) -> PolicyDecision:
    return parse_policy(doc, "test.yaml").evaluate(
        PolicyInput(tool_id=tool_id, agent_id=agent_id, labels=labels or {}, action=action, **kw))


def core(d: PolicyDecision) -> tuple:
    """A decision without its policy version."""
    return (d.decision, d.rule_id, d.reason, d.timeout_ms, d.rate_limit)


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
    assert core(d) == ("deny", "default", "No explicit allow rule matched", 0, None)
    assert d.allowed is False and d.denied is True and d.needs_approval is False


@pytest.mark.parametrize("decision", ["allow", "deny", "require_approval"])
def test_explicit_default_decision_and_reason(decision: str) -> None:
    d = decide({"default": {"decision": decision, "reason": "the default"}})
    assert core(d) == (decision, "default", "the default", 0, None)
    assert d.allowed is (decision == "allow")
    assert d.needs_approval is (decision == "require_approval")


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
    assert decide(doc, action="something.else").rule_id == "default"
    doc = {"rules": [rule("other", 1, {"action": "something.else"}, "deny")], "default": {"decision": "allow"}}
    assert decide(doc).rule_id == "default"
    assert decide(doc, action="something.else").rule_id == "other"
    doc = {"rules": [rule("case", 1, {"action": "Tool.Invoke"}, "deny")], "default": {"decision": "allow"}}
    assert decide(doc).rule_id == "default"


@pytest.mark.parametrize("action", ["execution.complete", "execution.fail", "execution.wait"])
def test_lifecycle_actions_are_allowed_before_any_rule(action: str) -> None:
    doc = {"rules": [rule("deny-all", 1, {}, "deny"), rule("life", 2, {"action": action}, "deny")]}
    d = decide(doc, action=action)
    assert core(d) == ("allow", "secure-default", "Execution lifecycle action allowed by default", 0, None)
    assert core(secure_default().evaluate(PolicyInput("t", "a", action=action)))[:2] == ("allow", "secure-default")


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


def test_require_approval_rule_ignores_timeout_and_rate_limit() -> None:
    doc = {"rules": [{**rule("human", 1, {"tool_id": "deploy_*"}, "require_approval", reason="ask", timeout_ms=5000),
                      "rate_limit": {"max": 1, "window": "1h"}}]}
    d = decide(doc, "deploy_api")
    assert core(d) == ("require_approval", "human", "ask", 0, None)
    assert d.needs_approval and not d.allowed


def test_rate_limit_is_returned_for_allow_rules_only() -> None:
    doc = {"rules": [
        {**rule("limited", 1, {"tool_id": "shell"}), "rate_limit": {"max": 10, "window": "1m30s"}},
        {**rule("denied", 2, {"tool_id": "rm"}, "deny"), "rate_limit": {"max": 1, "window": "1s"}},
    ], "default": {"decision": "allow"}}
    d = decide(doc, "shell")
    assert d.rate_limit == RateLimit(10, "1m30s", 90_000_000_000)
    assert d.rate_limit.window_s == 90.0
    assert d.rate_limit.as_dict() == {"max": 10, "window": "1m30s"}
    assert decide(doc, "rm").rate_limit is None
    assert decide(doc, "other").rate_limit is None  # a default match never carries one


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


@pytest.mark.parametrize("key", ["version", "extra", "rule", "defaults"])
def test_unknown_top_level_keys_fail_closed(key: str) -> None:
    # a misspelled 'rules' next to an allowing default would silently allow everything
    with pytest.raises(PolicyError, match=rf'policy: unknown key "{key}"'):
        parse_policy({key: [], "default": {"decision": "allow"}}, "typo.yaml")


def test_top_level_and_rule_descriptions_are_accepted() -> None:
    doc = {"description": "what this file is for",
           "rules": [{**rule("r", 1, {"tool_id": "t"}), "description": "why"}]}
    assert decide(doc, "t").rule_id == "r"
    assert parse_policy(doc).rules[0].description == "why"


@pytest.mark.parametrize("where, bad", [
    ("when", {"tool_idz": "t"}),          # a misspelled condition would widen the rule
    ("rule", {"comment": "x"}),
    ("then", {"decison": "deny"}),
    ("rate_limit", {"windw": "1m"}),
    ("predicate", {"patern": "^ls"}),
])
def test_unknown_rule_keys_fail_closed(where: str, bad: dict) -> None:
    r = rule("r", 1, {"tool_id": "t"})
    if where == "when":
        r["when"] = {**r["when"], **bad}
    elif where == "then":
        r["then"] = {**r["then"], **bad}
    elif where == "rate_limit":
        r["rate_limit"] = {"max": 1, "window": "1m", **bad}
    elif where == "predicate":
        r["when"]["arguments"] = [{"field": "x", "required": True, **bad}]
    else:
        r.update(bad)
    with pytest.raises(PolicyError, match=rf'rule "r".*: unknown key "{next(iter(bad))}"') as info:
        parse_policy({"rules": [r]}, "typo.yaml")
    assert info.value.rule_id == "r"


def test_unknown_key_suggests_the_close_name() -> None:
    with pytest.raises(PolicyError, match=r'unknown key "tool_idz" \(did you mean "tool_id"\?\)'):
        parse_policy({"rules": [rule("r", 1, {"tool_idz": "x"})]})


def test_unknown_default_key_fails_closed() -> None:
    with pytest.raises(PolicyError, match=r'default: unknown key "decison"'):
        parse_policy({"default": {"decison": "allow"}})


def test_describe_names_source_and_rule_count() -> None:
    p = parse_policy({"rules": [rule("a", 1), rule("b", 2)]}, "policy.yaml")
    assert p.describe() == "policy.yaml (2 rules loaded)"
    assert p.origin == "policy.yaml" and p.mode == "file"
    assert isinstance(p, PolicySet) and Policy is PolicySet


def test_permissive_allows_everything() -> None:
    p = permissive()
    for inp in (PolicyInput(tool_id="rm_rf", agent_id="x"),
                PolicyInput(tool_id="a.b", agent_id="y", labels={"env": "prod"}),
                PolicyInput(tool_id="t", agent_id="z", action="execution.complete")):
        d = p.evaluate(inp)
        assert d.allowed
        assert core(d) == ("allow", "permissive-default", "no policy configured (dev mode)", 0, None)
        assert d.policy_version == "builtin:permissive"
    assert p.rules == ()
    assert p.describe() == "permissive (all tools allowed)"


def test_secure_default_denies_every_tool() -> None:
    p = secure_default()
    d = p.evaluate(PolicyInput(tool_id="anything", agent_id="a"))
    assert core(d) == ("deny", "secure-default", "No policy engine configured", 0, None)
    assert d.policy_version == p.version == "builtin:secure-default"
    assert p.describe() == "secure default (every tool call denied)"


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
    assert "rules[1]" in msg  # the rule's position, since it has no id


def test_duplicate_rule_id_is_rejected() -> None:
    msg = _error({"rules": [rule("same", 1), rule("same", 2, decision="deny")]})
    assert 'duplicate rule ID "same"' in msg


@pytest.mark.parametrize("then, shown", [({}, ""), ({"decision": "maybe"}, "maybe"), ({"decision": "ALLOW"}, "ALLOW"),
                                         ({"decision": None}, ""), ({"decision": "approve"}, "approve")])
def test_invalid_rule_decision_is_rejected(then: dict, shown: str) -> None:
    msg = _error({"rules": [{"id": "bad-rule", "priority": 1, "then": then}]})
    assert f'rule "bad-rule" has invalid decision "{shown}"' in msg


def test_rule_without_then_is_rejected() -> None:
    msg = _error({"rules": [{"id": "no-then", "priority": 1, "when": {}}]})
    assert 'rule "no-then"' in msg
    assert "then" in msg




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
    assert "rules[0] must be a mapping" in _error({"rules": ["just-a-string"]})


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


def test_rule_errors_carry_rule_id_and_file() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy({"rules": [rule("bad", 1, decision="nope")]}, "f.yaml")
    err = info.value
    assert (err.file, err.rule_id, err.line) == ("f.yaml", "bad", None)
    assert err.problem.startswith('rule "bad" has invalid decision "nope"')
    assert str(err) == f"f.yaml: {err.problem}"


# ------------------------------------------------------------------- arguments --
def args_doc(*predicates: dict, decision: str = "allow") -> dict:
    return {"rules": [rule("args", 1, {"arguments": list(predicates)}, decision)],
            "default": {"decision": "deny" if decision == "allow" else "allow", "reason": "d"}}


def matched(doc: dict, arguments: Any = NO_ARGUMENTS, **kw: Any) -> bool:
    return decide(doc, arguments=arguments, **kw).rule_id == "args"


@pytest.mark.parametrize("predicate, arguments, expected", [
    # required: present and not ""; null, 0, false, {} count as present
    ({"field": "k", "required": True}, {"k": "v"}, True),
    ({"field": "k", "required": True}, {"k": ""}, False),
    ({"field": "k", "required": True}, {}, False),
    ({"field": "k", "required": True}, {"k": None}, True),
    ({"field": "k", "required": True}, {"k": 0}, True),
    ({"field": "k", "required": True}, {"k": False}, True),
    ({"field": "k", "required": True}, {"k": {}}, True),
    ({"field": "k", "required": True}, {"k": []}, True),
    # a missing optional field passes every other constraint
    ({"field": "k", "pattern": "^x$", "min": 1, "max_length": 0, "one_of": ["z"]}, {}, True),
    ({"field": "k", "required": False, "pattern": "^x$"}, {"other": 1}, True),
    # pattern: unanchored RE2 search on strings only
    ({"field": "k", "pattern": "^ls"}, {"k": "ls -la"}, True),
    ({"field": "k", "pattern": "^ls"}, {"k": "rm; ls"}, False),
    ({"field": "k", "pattern": "rm "}, {"k": "sudo rm -rf ./b"}, True),
    ({"field": "k", "pattern": "^ls$"}, {"k": "ls\n"}, False),     # RE2 '$' is end of text only
    ({"field": "k", "pattern": "(?m)^rm"}, {"k": "ls\nrm -rf /"}, True),
    ({"field": "k", "pattern": r"^\d+$"}, {"k": "١٢٣"}, False),    # RE2 \d is ASCII
    ({"field": "k", "pattern": "(?i)^LS"}, {"k": "ls"}, True),
    ({"field": "k", "pattern": "^5$"}, {"k": 5}, False),
    ({"field": "k", "pattern": "true"}, {"k": True}, False),
    ({"field": "k", "pattern": "."}, {"k": None}, False),
    ({"field": "k", "pattern": "."}, {"k": ["a"]}, False),
    ({"field": "k", "pattern": "[invalid("}, {"k": "anything"}, False),
    ({"field": "k", "pattern": "[invalid("}, {}, True),             # invalid pattern, field absent: passes
    ({"field": "k", "pattern": "(?=x)x"}, {"k": "x"}, False),      # lookahead is not RE2
    # one_of: a string equal to an entry
    ({"field": "k", "one_of": ["read", "write"]}, {"k": "read"}, True),
    ({"field": "k", "one_of": ["read", "write"]}, {"k": "READ"}, False),
    ({"field": "k", "one_of": ["1", "2"]}, {"k": 1}, False),
    ({"field": "k", "one_of": ["true"]}, {"k": True}, False),
    # min/max: JSON numbers (not bools, not numeric strings), inclusive, floating point
    ({"field": "k", "min": 1, "max": 100}, {"k": 1}, True),
    ({"field": "k", "min": 1, "max": 100}, {"k": 100}, True),
    ({"field": "k", "min": 1, "max": 100}, {"k": 100.5}, False),
    ({"field": "k", "min": 1, "max": 100}, {"k": 0.999}, False),
    ({"field": "k", "min": -5}, {"k": -5}, True),
    ({"field": "k", "min": 0.5}, {"k": 0.25}, False),
    ({"field": "k", "max": 30}, {"k": 30.5}, False),
    ({"field": "k", "max": 30}, {"k": "10"}, False),
    ({"field": "k", "min": 0}, {"k": True}, False),
    ({"field": "k", "max": 1}, {"k": False}, False),
    ({"field": "k", "max": 1}, {"k": None}, False),
    ({"field": "k", "max": 1e308}, {"k": 10 ** 400}, False),       # beyond float range: type mismatch
    # max_length: code points of a string
    ({"field": "k", "max_length": 3}, {"k": "日本語"}, True),
    ({"field": "k", "max_length": 3}, {"k": "abcd"}, False),
    ({"field": "k", "max_length": 0}, {"k": ""}, True),
    ({"field": "k", "max_length": 0}, {"k": "a"}, False),
    ({"field": "k", "max_length": 5}, {"k": 12}, False),
    ({"field": "k", "max_length": 5}, {"k": ["a"]}, False),
    # required and other constraints together
    ({"field": "k", "required": True, "pattern": "^a"}, {"k": "abc"}, True),
    ({"field": "k", "required": True, "pattern": "^a"}, {"k": "b"}, False),
    # an empty pattern or one_of is "not set"
    ({"field": "k", "pattern": "", "max": 3}, {"k": 2}, True),
    ({"field": "k", "one_of": [], "max": 3}, {"k": 2}, True),
    # dotted names are literal top-level keys
    ({"field": "opts.mode", "required": True}, {"opts": {"mode": "fast"}}, False),
    ({"field": "opts.mode", "required": True}, {"opts.mode": "fast"}, True),
])
def test_argument_predicate(predicate: dict, arguments: Any, expected: bool) -> None:
    assert matched(args_doc(predicate), arguments) is expected


@pytest.mark.parametrize("arguments, expected", [
    (NO_ARGUMENTS, False),      # no arguments at all: never matches, even with optional predicates only
    (None, True),               # JSON null: an empty object
    ({}, True),
    ([1, 2, 3], False),
    ("text", False),
    (5, False),
    (True, False),
])
def test_argument_preconditions(arguments: Any, expected: bool) -> None:
    assert matched(args_doc({"field": "opt", "pattern": "^yes$"}), arguments) is expected


@pytest.mark.parametrize("raw, expected", [
    ('{"command": "ls -la"}', True), (b'{"command": "ls"}', True), ('{"command": "rm"}', False),
    ("not json", False), ("", False), ("null", True), ("[1]", False), ('"ls"', False),
])
def test_arguments_json_text(raw: str | bytes, expected: bool) -> None:
    doc = args_doc({"field": "command", "pattern": "^ls"})
    assert matched(doc, arguments_json=raw) is expected
    # the raw text wins over decoded arguments
    assert matched(doc, arguments={"command": "ls"}, arguments_json=raw) is expected


def test_multiple_predicates_are_anded_and_empty_list_is_not_checked() -> None:
    doc = args_doc({"field": "command", "pattern": "^ls"}, {"field": "timeout", "max": 30})
    assert matched(doc, {"command": "ls", "timeout": 10})
    assert not matched(doc, {"command": "ls", "timeout": 60})
    assert not matched(doc, {"command": "rm", "timeout": 10})
    empty = {"rules": [rule("args", 1, {"arguments": []})], "default": {"decision": "deny"}}
    assert matched(empty)          # an empty list is "not checked", even without arguments


def test_deny_rule_on_argument_pattern() -> None:
    doc = {"rules": [rule("no-rm", 1, {"tool_id": "shell", "arguments": [{"field": "cmd", "pattern": r"\brm\b"}]},
                          "deny", reason="no rm"),
                     rule("shell", 2, {"tool_id": "shell"})], "default": {"decision": "deny"}}
    assert decide(doc, "shell", arguments={"cmd": "rm -rf /"}).rule_id == "no-rm"
    assert decide(doc, "shell", arguments={"cmd": "form"}).rule_id == "shell"
    assert decide(doc, "shell", arguments={"cmd": "ls"}).rule_id == "shell"


def test_arguments_are_decoded_once_per_evaluation() -> None:
    calls = 0

    class Args(dict):
        def __contains__(self, key: object) -> bool:
            nonlocal calls
            calls += 1
            return super().__contains__(key)

    doc = {"rules": [rule(f"r{i}", i, {"arguments": [{"field": "x", "required": True, "max": 0}]})
                     for i in range(3)], "default": {"decision": "deny"}}
    assert decide(doc, arguments=Args(x=5)).rule_id == "default"
    assert calls == 3  # one check per rule; the object is not copied or re-parsed


# -------------------------------------------------------- steps, duration, now --
def test_min_step_count_and_min_duration_are_inclusive() -> None:
    doc = {"rules": [rule("steps", 1, {"min_step_count": 3}, "deny"),
                     rule("slow", 2, {"min_duration_ms": 1000}, "deny")], "default": {"decision": "allow"}}
    assert decide(doc, step_count=2, duration_ms=999).rule_id == "default"
    assert decide(doc, step_count=3).rule_id == "steps"
    assert decide(doc, step_count=2, duration_ms=1000).rule_id == "slow"
    both = {"rules": [rule("both", 1, {"min_step_count": 3, "min_duration_ms": 1000}, "deny")],
            "default": {"decision": "allow"}}
    assert decide(both, step_count=3, duration_ms=999).rule_id == "default"
    assert decide(both, step_count=3, duration_ms=1000).rule_id == "both"


def sched(text: str, now: datetime) -> bool:
    doc = {"rules": [rule("s", 1, {"schedule": text})], "default": {"decision": "deny"}}
    return decide(doc, now=now).rule_id == "s"


def utc(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, second, tzinfo=timezone.utc)  # 22 Sun … 28 Sat, 29 Sun, 30 Mon


@pytest.mark.parametrize("text, now, expected", [
    ("Mon-Fri 09:00-17:00 UTC", utc(25, 12), True),
    ("Mon-Fri 09:00-17:00 UTC", utc(25, 8, 59, 59), False),
    ("Mon-Fri 09:00-17:00 UTC", utc(25, 9), True),
    ("Mon-Fri 09:00-17:00 UTC", utc(25, 16, 59, 59), True),
    ("Mon-Fri 09:00-17:00 UTC", utc(25, 17), False),
    ("Mon-Fri 09:00-17:00 UTC", utc(28, 12), False),          # Saturday
    ("Mon-Fri 09:00-17:00 UTC", utc(29, 12), False),          # Sunday
    ("Mon-Fri 9:00-17:00 UTC", utc(30, 9), True),             # one-digit hour
    # overnight: >= start or < end, judged on the current local day
    ("Mon-Fri 22:00-06:00 UTC", utc(25, 23), True),
    ("Mon-Fri 22:00-06:00 UTC", utc(26, 3), True),
    ("Mon-Fri 22:00-06:00 UTC", utc(26, 6), False),
    ("Mon-Fri 22:00-06:00 UTC", utc(26, 21, 59), False),
    ("Mon-Fri 22:00-06:00 UTC", utc(28, 3), False),           # Saturday 03:00 is not Friday night
    ("Mon-Fri 22:00-06:00 UTC", utc(30, 3), True),            # Monday 03:00 is
    ("Mon-Fri 22:00-06:00 UTC", utc(27, 23, 30), True),       # Friday 23:30
    ("Mon-Fri 22:00-06:00 UTC", utc(28, 23, 30), False),      # Saturday 23:30
    ("Mon-Sun 00:00-00:00 UTC", utc(25, 0), False),           # start = end never holds
    ("Sun-Sat 00:00-23:59 UTC", utc(25, 23, 59), False),      # the last minute is excluded
    ("Sun-Sat 23:59-00:00 UTC", utc(25, 23, 59, 30), True),   # ... and this covers it
    # day lists and wrap-around ranges
    ("Mon,Wed,Fri 08:00-12:00 UTC", utc(24, 10), False),      # Tuesday
    ("Mon,Wed,Fri 08:00-12:00 UTC", utc(25, 10), True),
    ("Sat 00:00-12:00 UTC", utc(28, 11), True),
    ("Sun 00:00-12:00 UTC", utc(28, 11), False),
    ("Fri-Mon 00:00-23:59 UTC", utc(27, 10), True),
    ("Fri-Mon 00:00-23:59 UTC", utc(28, 10), True),
    ("Fri-Mon 00:00-23:59 UTC", utc(29, 10), True),
    ("Fri-Mon 00:00-23:59 UTC", utc(30, 10), True),
    ("Fri-Mon 00:00-23:59 UTC", utc(24, 10), False),
    ("Fri-Mon 00:00-23:59 UTC", utc(26, 10), False),
    ("Sat-Sun 00:00-23:59 UTC", utc(29, 10), True),
    ("Sun-Sat 00:00-23:59 UTC", utc(25, 10), True),
    ("Wed-Wed 00:00-23:59 UTC", utc(25, 10), True),
    ("Wed-Wed 00:00-23:59 UTC", utc(26, 10), False),
    ("Thu-Wed 00:00-23:59 UTC", utc(24, 10), True),           # wraps to every day
    # zones: the weekday and minute are taken in the schedule's zone
    ("Mon-Fri 09:00-17:00 America/New_York", utc(25, 14), True),   # 10:00 EDT
    ("Mon-Fri 09:00-17:00 America/New_York", utc(25, 5), False),   # 01:00 EDT
    ("Mon-Fri 09:00-17:00 America/New_York", utc(25, 20, 59), True),
    ("Mon-Fri 09:00-17:00 America/New_York", utc(25, 21), False),
    ("Sat 00:00-23:59 America/New_York", utc(29, 2), True),        # Sunday UTC, Saturday in New York
    ("Mon 00:00-01:00 Asia/Tokyo", utc(29, 15, 30), True),         # Sunday 15:30 UTC = Monday 00:30 JST
    ("Mon-Fri 09:00-17:30 Asia/Kolkata", utc(25, 3, 30), True),    # 09:00 IST (+05:30, no DST)
    ("Mon-Fri 09:00-17:30 Asia/Kolkata", utc(25, 3, 29), False),
    ("Mon-Fri 09:00-17:30 Asia/Kolkata", utc(25, 12), False),      # 17:30 IST: end excluded
    ("Mon 00:00-00:15 Asia/Kathmandu", utc(29, 18, 15), True),     # +05:45
    ("Fri 23:00-01:00 Pacific/Kiritimati", utc(27, 9, 30), True),  # +14:00: Friday 23:30 local
    ("Sat 00:00-12:00 Etc/GMT+12", utc(28, 13), True),             # -12:00: Saturday 01:00
])
def test_schedule(text: str, now: datetime, expected: bool) -> None:
    assert sched(text, now) is expected


def test_schedule_follows_daylight_saving_time() -> None:
    # New York switched to EDT on 2026-03-08 02:00 local: 09:00 local is 14:00 UTC before, 13:00 UTC after
    assert sched("Mon-Fri 09:00-17:00 America/New_York", datetime(2026, 3, 6, 13, 30, tzinfo=timezone.utc)) is False
    assert sched("Mon-Fri 09:00-17:00 America/New_York", datetime(2026, 3, 9, 13, 30, tzinfo=timezone.utc)) is True
    assert sched("Sun 02:00-03:00 America/New_York", datetime(2026, 3, 8, 7, 30, tzinfo=timezone.utc)) is False
    assert sched("Sun 03:00-04:00 America/New_York", datetime(2026, 3, 8, 7, 30, tzinfo=timezone.utc)) is True


def test_schedule_accepts_naive_utc_and_other_offsets() -> None:
    assert sched("Wed 12:00-12:01 UTC", datetime(2026, 3, 25, 12, 0, 30)) is True   # naive = UTC
    plus2 = timezone(timedelta(hours=2))
    assert sched("Wed 12:00-12:01 UTC", datetime(2026, 3, 25, 14, 0, tzinfo=plus2)) is True
    assert sched("Wed 14:00-14:01 UTC", datetime(2026, 3, 25, 14, 0, tzinfo=plus2)) is False


def test_schedule_local_zone_uses_the_host_zone() -> None:
    now = datetime(2026, 3, 25, 12, 0, tzinfo=timezone.utc)
    local = now.astimezone()
    day = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[local.weekday()]
    start = f"{local.hour:02d}:{local.minute:02d}"
    end_minute = local.hour * 60 + local.minute + 1
    end = f"{end_minute // 60 % 24:02d}:{end_minute % 60:02d}"
    assert sched(f"{day} {start}-{end} Local", now) is True


def test_schedule_without_now_uses_the_current_time() -> None:
    doc = {"rules": [rule("always", 1, {"schedule": "Sun-Sat 00:00-00:00 UTC"}, "deny"),
                     rule("day", 2, {"schedule": "Sun-Sat 00:00-23:59 UTC"}),
                     rule("night", 3, {"schedule": "Sun-Sat 23:59-00:00 UTC"})]}
    assert decide(doc).rule_id in ("day", "night")


@pytest.mark.parametrize("text, detail", [
    ("Mon-Fri 09:00-17:00", "expected 3 parts"),
    ("Mon-Fri 09:00-17:00 UTC extra", "expected 3 parts"),
    ("", "expected 3 parts"),
    ("Mon-Wed,Fri 09:00-17:00 UTC", "mix a range and a list"),
    ("mon-fri 09:00-17:00 UTC", 'unknown day "mon"'),
    ("Monday 09:00-17:00 UTC", 'unknown day "Monday"'),
    ("Mon- 09:00-17:00 UTC", 'unknown day ""'),
    ("Mon-Tue-Wed 09:00-17:00 UTC", "invalid day range"),
    ("Mon,,Wed 09:00-17:00 UTC", 'unknown day ""'),
    ("Mon 24:00-17:00 UTC", "invalid hour"),
    ("Mon 09:60-17:00 UTC", "invalid minute"),
    ("Mon 0900-1700 UTC", 'invalid time "0900"'),
    ("Mon 09:00-17 UTC", 'invalid time "17"'),
    ("Mon 9am-5pm UTC", 'invalid time "9am"'),
    ("Mon 09:00-17:00 Mars/Olympus", 'unknown time zone "Mars/Olympus"'),
    ("Mon 09:00-17:00 utc", 'unknown time zone "utc"'),
    ("Mon 09:00-17:00 America", 'unknown time zone "America"'),
])
def test_invalid_schedule_is_rejected(text: str, detail: str) -> None:
    msg = _error({"rules": [rule("sched", 1, {"schedule": text})]})
    assert f'rule "sched" has invalid schedule "{text}": ' in msg
    assert detail in msg


# ------------------------------------------------------------------- durations --
@pytest.mark.parametrize("text, ns", [
    ("30s", 30 * 10**9), ("1m", 60 * 10**9), ("1h30m", 5400 * 10**9), ("500ms", 5 * 10**8), ("1.5m", 90 * 10**9),
    (".5s", 5 * 10**8), ("1.s", 10**9), ("1h1m1s1ms1us1ns", 3661001001001), ("1µs", 1000), ("1μs", 1000),
    ("10ns", 10), ("0", 0), ("0s", 0), ("+5s", 5 * 10**9), ("-5s", -5 * 10**9), ("2h45m", 9900 * 10**9),
    ("1.0000000001s", 10**9), ("2562047h47m16.854775807s", (1 << 63) - 1),
])
def test_parse_duration(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text, detail", [
    ("1d", 'unknown unit "d"'), ("1w", 'unknown unit "w"'), ("30", "missing unit"), ("1h30", "missing unit"),
    ("invalid", "invalid duration"), ("", "invalid duration"), ("-", "invalid duration"), (".s", "invalid duration"),
    ("1 m", 'unknown unit " m"'), ("1M", 'unknown unit "M"'), ("1sec", 'unknown unit "sec"'),
    ("2562047h47m16.854775808s", "too large"), ("s", "invalid duration"),
])
def test_parse_duration_rejects(text: str, detail: str) -> None:
    with pytest.raises(ValueError, match=detail):
        parse_duration(text)


@pytest.mark.parametrize("rate_limit, detail", [
    ({"max": 0, "window": "1m"}, "rate_limit.max must be positive"),
    ({"max": -1, "window": "1m"}, "rate_limit.max must be positive"),
    ({"window": "1m"}, "rate_limit.max must be positive"),
    ({"max": 1.5, "window": "1m"}, "rate_limit.max must be an integer"),
    ({"max": 1, "window": "1d"}, 'rate_limit.window is invalid: unknown unit "d"'),
    ({"max": 1, "window": "invalid"}, "rate_limit.window is invalid: "),
    ({"max": 1}, "rate_limit.window is invalid: "),
    ({"max": 1, "window": 60}, "rate_limit.window is invalid: "),
    ({"max": 1, "window": "0s"}, "not a positive duration"),
    ({"max": 1, "window": "-1m"}, "not a positive duration"),
    ("30/m", "rate_limit must be a mapping"),
])
def test_invalid_rate_limit_is_rejected(rate_limit: Any, detail: str) -> None:
    msg = _error({"rules": [{**rule("rl", 1), "rate_limit": rate_limit}]})
    assert 'rule "rl"' in msg and detail in msg


# ------------------------------------------------------------------ validation+ --
@pytest.mark.parametrize("predicate, detail", [
    ({"field": "", "required": True}, 'rule "p" argument predicate 0 has empty field'),
    ({"required": True}, 'rule "p" argument predicate 0 has empty field'),
    ({"field": "x"}, 'rule "p" argument predicate 0 (field "x") has no constraints'),
    ({"field": "x", "required": False}, '(field "x") has no constraints'),
    ({"field": "x", "pattern": ""}, '(field "x") has no constraints'),
    ({"field": "x", "one_of": []}, '(field "x") has no constraints'),
    ({"field": 5, "required": True}, "field must be a string"),
    ({"field": "x", "required": "yes"}, "required must be true or false"),
    ({"field": "x", "one_of": [1, 2]}, "one_of must be a list of strings"),
    ({"field": "x", "one_of": "read"}, "one_of must be a list of strings"),
    ({"field": "x", "min": "1"}, "min must be a number"),
    ({"field": "x", "max": True}, "max must be a number"),
    ({"field": "x", "max": float("nan")}, "max must be a number"),
    ({"field": "x", "max_length": -1}, "max_length must be non-negative"),
    ({"field": "x", "max_length": 2.5}, "max_length must be an integer"),
    ({"field": "x", "min": 5, "max": 1}, "min 5 is greater than max 1"),
    ({"field": "x", "pattern": 5}, "pattern must be a string"),
    ({"field": "x", "pattern": r"\pL"}, "is not supported by this engine"),
    ({"field": "x", "pattern": r"[\p{Greek}]"}, "is not supported by this engine"),
    ("x", 'rule "p" argument predicate 0 must be a mapping'),
])
def test_invalid_argument_predicate_is_rejected(predicate: Any, detail: str) -> None:
    msg = _error({"rules": [rule("p", 1, {"arguments": [{"field": "ok", "required": True}, predicate]})]})
    assert detail.replace("predicate 0", "predicate 1") in msg


def test_arguments_must_be_a_list() -> None:
    assert "when.arguments must be a list" in _error({"rules": [rule("a", 1, {"arguments": {"field": "x"}})]})


@pytest.mark.parametrize("when, detail", [
    ({"min_step_count": -1}, 'rule "c" min_step_count must be non-negative'),
    ({"min_step_count": "5"}, "min_step_count must be an integer"),
    ({"min_duration_ms": 0}, 'rule "c" min_duration_ms must be positive'),
    ({"min_duration_ms": -5}, 'rule "c" min_duration_ms must be positive'),
    ({"min_duration_ms": 1.5}, "min_duration_ms must be an integer"),
    ({"schedule": 5}, 'rule "c" has invalid schedule "5"'),
])
def test_invalid_state_conditions_are_rejected(when: dict, detail: str) -> None:
    assert detail in _error({"rules": [rule("c", 1, when)]})


def test_min_step_count_zero_is_valid_and_always_holds() -> None:
    assert decide({"rules": [rule("z", 1, {"min_step_count": 0}, "deny")]}, step_count=0).rule_id == "z"


def test_then_must_be_a_mapping() -> None:
    assert 'rule "t": then must be a mapping' in _error({"rules": [{"id": "t", "then": "allow"}]})


def test_null_sections_count_as_absent() -> None:
    doc = {"rules": [{"id": "n", "priority": 1, "when": None, "then": {"decision": "deny", "reason": None},
                      "rate_limit": None}], "default": None}
    assert core(decide(doc)) == ("deny", "n", "", 0, None)
    assert core(decide({"rules": None})) == ("deny", "default", "No explicit allow rule matched", 0, None)


# -------------------------------------------------------- YAML text and lines --
def from_text(text: str, name: str = "policy.yaml") -> PolicySet:
    return policy_from_sources({"": text}, name)


def text_error(text: str, name: str = "policy.yaml") -> PolicyError:
    with pytest.raises(PolicyError) as info:
        from_text(text, name)
    return info.value


POLICY_TEXT = """\
# a comment
rules:
  - id: allow-search
    priority: 1
    when:
      tool_id: web_*
    then:
      decision: allow
      reason: search ok
      timeout_ms: 2500
  - id: shell
    priority: 2
    when: {tool_id: shell_exec}
    then: {decision: require_approval, reason: ask a human}
default:
  decision: deny
  reason: nope
"""


def test_source_text_policy_evaluates() -> None:
    p = from_text(POLICY_TEXT)
    assert core(p.evaluate(PolicyInput("web_search", "a"))) == ("allow", "allow-search", "search ok", 2500, None)
    assert core(p.evaluate(PolicyInput("shell_exec", "a"))) == ("require_approval", "shell", "ask a human", 0, None)
    assert core(p.evaluate(PolicyInput("rm", "a"))) == ("deny", "default", "nope", 0, None)
    assert [(r.id, r.line, r.file) for r in p.rules] == [("allow-search", 3, "policy.yaml"), ("shell", 11, "policy.yaml")]


@pytest.mark.parametrize("edit, line, problem", [
    (("decision: allow", "decision: maybe"), 8, 'rule "allow-search" has invalid decision "maybe"'),
    (("tool_id: web_*", "tool_idz: web_*"), 6, 'rule "allow-search" when: unknown key "tool_idz"'),
    (("    priority: 2\n", "    priority: 1\n"), 11, 'duplicate rule priority: priority 1 used by both '
                                                      '"allow-search" and "shell"'),
    (("id: shell", "id: allow-search"), 11, 'duplicate rule ID "allow-search" (first at policy.yaml:3)'),
    (("  - id: shell\n", "  - description: x\n"), 11, "rule missing ID (rules[1])"),
    (("timeout_ms: 2500", "timeout_ms: soon"), 10, 'rule "allow-search": then.timeout_ms must be an integer'),
    (("  decision: deny", "  decision: nope"), 16, 'default has invalid decision "nope"'),
    (("reason: search ok", "reason: [a]"), 9, 'rule "allow-search": then.reason must be a string'),
    (("    priority: 1\n", "    priority: 1\n    color: red\n"), 5, 'rule "allow-search": unknown key "color"'),
    (("{tool_id: shell_exec}", "{tool_id: shell_exec, min_duration_ms: 0}"), 13,
     'rule "shell" min_duration_ms must be positive'),
])
def test_validation_errors_name_file_rule_and_line(edit: tuple[str, str], line: int, problem: str) -> None:
    text = POLICY_TEXT.replace(*edit)
    assert text != POLICY_TEXT
    err = text_error(text)
    assert str(err).startswith(f"policy.yaml:{line}: {problem}"), str(err)
    assert (err.file, err.line) == ("policy.yaml", line)


def test_yaml_syntax_error_names_file_and_line() -> None:
    err = text_error("rules:\n  - id: a\n    then: {decision: allow\n  - id: b\n", "broken.yaml")
    assert str(err).startswith("broken.yaml:4: parsing policy YAML: ")
    err = text_error("rules: []\ndefault:\n\tdecision: deny\n", "tab.yaml")
    assert str(err).startswith("tab.yaml:3: parsing policy YAML: ")


def test_duplicate_yaml_keys_are_refused() -> None:
    err = text_error("rules:\n  - id: a\n    then: {decision: allow}\n    then: {decision: deny}\n")
    assert err.line == 4 and "duplicate key 'then' (first defined at line 3)" in str(err)
    err = text_error("default: {decision: allow}\ndefault: {decision: deny}\n")
    assert err.line == 2


def test_yaml_anchors_and_merge_keys_work() -> None:
    text = ("base: &base {decision: allow, reason: shared}\n") 
    assert "unknown key" in str(text_error(text + "rules: []\n"))   # 'base' is not a policy key
    p = from_text("rules:\n  - id: a\n    priority: 1\n    when: &w {tool_id: x}\n    then: {decision: allow}\n"
                  "  - id: b\n    priority: 2\n    when: *w\n    then: {<<: {decision: deny}, reason: r}\n")
    assert [r.decision for r in p.rules] == ["allow", "deny"] and p.rules[1].tool_id == "x"


@pytest.mark.parametrize("value, ok", [
    ("yes", True), ("on", True), ("No", True), ("1:30", True), ("2026-01-01", True), ("'1'", True),
    ("1", False), ("true", False), ("1.5", False), ("null", False),
])
def test_yaml_1_2_scalars_in_labels(value: str, ok: bool) -> None:
    text = f"rules:\n  - id: l\n    when: {{labels: {{v: {value}}}}}\n    then: {{decision: deny}}\ndefault: {{decision: allow}}\n"
    if not ok:
        assert "labels must map strings to strings" in str(text_error(text))
        return
    p = from_text(text)
    expected = yaml.safe_load(f"v: {value}")["v"] if value.startswith("'") else value
    assert p.evaluate(PolicyInput("t", "a", labels={"v": expected})).rule_id == "l"


def test_yaml_integers_are_decimal() -> None:
    p = from_text("rules:\n  - {id: a, priority: 010, then: {decision: allow}}\n"
                  "  - {id: b, priority: 0x10, then: {decision: deny}}\n")
    assert [(r.id, r.priority) for r in p.rules] == [("a", 10), ("b", 16)]


def test_empty_and_comment_only_files_deny_everything() -> None:
    for text in ("", "# nothing\n", "---\n"):
        d = from_text(text).evaluate(PolicyInput("t", "a"))
        assert core(d) == ("deny", "default", "No explicit allow rule matched", 0, None)


def test_multiple_yaml_documents_are_refused() -> None:
    assert "parsing policy YAML" in str(text_error("rules: []\n---\nrules: []\n"))


def test_bytes_sources_and_bad_utf8() -> None:
    assert from_text(POLICY_TEXT).version == policy_from_sources({"": POLICY_TEXT.encode()}, "policy.yaml").version
    with pytest.raises(PolicyError, match="not UTF-8"):
        policy_from_sources({"": b"rules: [\xff]"}, "bin.yaml")


# -------------------------------------------------------------------- warnings --
def test_warnings_for_settings_without_effect() -> None:
    p = from_text("rules:\n"
                  "  - id: d\n    priority: 1\n    then: {decision: deny, timeout_ms: 5}\n"
                  "    rate_limit: {max: 1, window: 1m}\n"
                  "  - id: neg\n    priority: 2\n    then: {decision: allow, timeout_ms: -1}\n"
                  "  - id: re\n    priority: 3\n    when: {arguments: [{field: c, pattern: '[oops('}]}\n"
                  "    then: {decision: allow}\n"
                  "default: {decision: deny, timeout_ms: 9}\n")
    w = "\n".join(p.warnings)
    assert 'policy.yaml:4: rule "d": then.timeout_ms is ignored' in w
    assert 'policy.yaml:5: rule "d": rate_limit is ignored' in w
    assert 'policy.yaml:8: rule "neg": then.timeout_ms -1 is ignored' in w
    assert "policy.yaml:11: rule \"re\" argument predicate 0 (field \"c\"): pattern '[oops(' is not a valid RE2" in w
    assert "policy.yaml:13: default.timeout_ms is ignored" in w
    assert from_text(POLICY_TEXT).warnings == ()


# ----------------------------------------------------------- files and folders --
def write(dir_: Path, files: dict[str, str]) -> Path:
    dir_.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (dir_ / name).write_text(text)
    return dir_


AGENT = "rules:\n  - {id: allow-web, priority: 10, when: {tool_id: web_search}, then: {decision: allow}}\n"
GLOBAL = ("rules:\n  - {id: no-shell, priority: 5, when: {tool_id: shell}, then: {decision: deny, reason: no shell}}\n"
          "  - {id: calc, priority: 50, when: {tool_id: calc}, then: {decision: allow}}\n"
          "default: {decision: deny, reason: global default}\n")


def test_load_policy_valid_file(tmp_path: Path) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text(POLICY_TEXT)
    p = load_policy(f)
    assert (p.origin, p.mode, len(p.rules)) == (str(f), "file", 2)
    assert p.describe() == f"{f} (2 rules loaded)"
    assert p.sources == {"": POLICY_TEXT} == policy_sources(f)
    assert load_policy(str(f)).version == p.version == from_text(POLICY_TEXT, "elsewhere.yaml").version


def test_load_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError) as info:
        load_policy(f)
    assert str(info.value).startswith(f"{f}: cannot read policy: No such file")


def test_load_invalid_file_names_the_file_rule_and_line(tmp_path: Path) -> None:
    f = tmp_path / "invalid.yaml"
    f.write_text("rules:\n  - {id: r1, priority: 1, then: {decision: perhaps}}\n")
    with pytest.raises(PolicyError, match=rf'^{re.escape(str(f))}:2: rule "r1" has invalid decision "perhaps"'):
        load_policy(f)


def test_directory_policy(tmp_path: Path) -> None:
    d = write(tmp_path / "pol", {"researcher.yaml": AGENT, "_global.yaml": GLOBAL, "README.md": "not policy",
                                 "notes.txt": "x"})
    (d / "sub").mkdir()
    (d / "sub" / "ignored.yaml").write_text("rules: [oops")
    p = load_policy(d)
    assert (p.mode, p.origin) == ("directory", str(d))
    assert p.describe() == f"{d} (1 agents loaded)"
    assert sorted(p.sources) == ["_global.yaml", "researcher.yaml"]

    def ev(agent: str, tool: str) -> tuple:
        return core(p.evaluate(PolicyInput(tool, agent)))

    assert ev("researcher", "web_search") == ("allow", "allow-web", "", 0, None)
    assert ev("researcher", "shell") == ("deny", "no-shell", "no shell", 0, None)      # global rule merged
    assert ev("researcher", "calc") == ("allow", "calc", "", 0, None)
    assert ev("researcher", "other") == ("deny", "default", "No explicit allow rule matched", 0, None)  # agent default
    assert ev("new-agent", "calc") == ("allow", "calc", "", 0, None)                    # global engine
    assert ev("new-agent", "web_search") == ("deny", "default", "global default", 0, None)
    assert [r.id for r in p.engine_for("researcher").rules] == ["no-shell", "allow-web", "calc"]
    assert p.engine_for("researcher").files == (str(d / "researcher.yaml"), str(d / "_global.yaml"))
    assert p.engine_for("nobody") is p.fallback
    assert p.evaluate(PolicyInput("t", "x", action="execution.fail")).rule_id == "secure-default"


def test_directory_without_global_denies_unknown_agents(tmp_path: Path) -> None:
    p = load_policy(write(tmp_path, {"researcher.yml": AGENT}))
    d = p.evaluate(PolicyInput("web_search", "unknown-agent"))
    assert core(d) == ("deny", "agent-default", 'no policy configured for agent "unknown-agent"', 0, None)
    assert d.policy_version == p.version
    assert p.engine_for("unknown-agent") is None and p.fallback is None
    assert p.evaluate(PolicyInput("web_search", "researcher")).rule_id == "allow-web"


def test_directory_with_only_a_global_file(tmp_path: Path) -> None:
    p = load_policy(write(tmp_path, {"_global.yaml": GLOBAL}))
    assert p.agents == {} and p.describe() == f"{tmp_path} (0 agents loaded)"
    assert p.evaluate(PolicyInput("calc", "anyone")).rule_id == "calc"


def test_directory_agent_default_wins_over_global_default(tmp_path: Path) -> None:
    p = load_policy(write(tmp_path, {"a.yaml": AGENT + "default: {decision: allow, reason: agent}\n",
                                     "b.yaml": AGENT, "_global.yaml": GLOBAL}))
    assert core(p.evaluate(PolicyInput("zzz", "a")))[:3] == ("allow", "default", "agent")
    assert core(p.evaluate(PolicyInput("zzz", "b")))[:3] == ("deny", "default", "No explicit allow rule matched")
    assert core(p.evaluate(PolicyInput("zzz", "c")))[:3] == ("deny", "default", "global default")


def test_directory_priority_clash_between_agent_and_global_fails(tmp_path: Path) -> None:
    write(tmp_path, {"researcher.yaml": AGENT.replace("priority: 10", "priority: 50"), "_global.yaml": GLOBAL})
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    msg = str(info.value)
    assert 'duplicate rule priority: priority 50 used by both "allow-web" and "calc"' in msg
    assert f"{tmp_path}/researcher.yaml:2" in msg and f"{tmp_path}/_global.yaml:3" in msg


def test_directory_rule_ids_may_repeat_across_files(tmp_path: Path) -> None:
    p = load_policy(write(tmp_path, {"a.yaml": AGENT, "_global.yaml": GLOBAL.replace("id: calc", "id: allow-web")}))
    assert [r.id for r in p.engine_for("a").rules] == ["no-shell", "allow-web", "allow-web"]


def test_directory_each_file_is_validated(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": AGENT, "b.yaml": "rules:\n  - {id: x, then: {decision: perhaps}}\n"})
    with pytest.raises(PolicyError, match=rf'^{re.escape(str(tmp_path))}/b\.yaml:2: rule "x" has invalid decision'):
        load_policy(tmp_path)


def test_directory_yml_wins_over_yaml_but_both_are_validated(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": AGENT, "a.yml": AGENT.replace("allow-web", "from-yml")})
    p = load_policy(tmp_path)
    assert p.evaluate(PolicyInput("web_search", "a")).rule_id == "from-yml"
    (tmp_path / "a.yaml").write_text("rules: [oops")
    with pytest.raises(PolicyError, match=r"a\.yaml:1: parsing policy YAML"):
        load_policy(tmp_path)


def test_directory_extensions_are_case_insensitive(tmp_path: Path) -> None:
    p = load_policy(write(tmp_path, {"Upper.YAML": AGENT, "mixed.Yml": AGENT}))
    assert sorted(p.agents) == ["Upper", "mixed"]


def test_directory_agent_ids_keep_inner_dots(tmp_path: Path) -> None:
    p = load_policy(write(tmp_path, {"team.bot.yaml": AGENT}))
    assert list(p.agents) == ["team.bot"]


def test_directory_without_yaml_files_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, {"README.md": "x"})
    with pytest.raises(PolicyError, match="policy directory has no .yaml or .yml file"):
        load_policy(tmp_path)


def test_policy_from_sources_conventions() -> None:
    single = policy_from_sources({"": AGENT}, "one.yaml")
    assert single.mode == "file" and single.evaluate(PolicyInput("web_search", "anyone")).rule_id == "allow-web"
    folder = policy_from_sources({"researcher.yaml": AGENT}, "dir/")
    assert folder.mode == "directory" and folder.origin == "dir"
    assert folder.evaluate(PolicyInput("web_search", "anyone")).rule_id == "agent-default"
    with pytest.raises(PolicyError, match="cannot be mixed"):
        policy_from_sources({"": AGENT, "a.yaml": AGENT}, "x")
    with pytest.raises(PolicyError, match="no policy files"):
        policy_from_sources({}, "x")
    for bad in ("notes.txt", "sub/a.yaml", ".yaml", "a"):
        with pytest.raises(PolicyError, match="is not a policy file name"):
            policy_from_sources({bad: AGENT}, "x")


def test_policy_from_sources_errors_name_origin_and_file() -> None:
    with pytest.raises(PolicyError, match=r'^kv:policy/b\.yaml:1: rule missing ID'):
        policy_from_sources({"a.yaml": AGENT, "b.yaml": "rules: [{priority: 1}]"}, "kv:policy")


def test_sources_round_trip_and_version(tmp_path: Path) -> None:
    d = write(tmp_path / "p", {"researcher.yaml": AGENT, "_global.yaml": GLOBAL})
    sources = policy_sources(d)
    loaded, rebuilt = load_policy(d), policy_from_sources(sources, "elsewhere")
    assert loaded.version == rebuilt.version
    assert len(loaded.version) == 16 and int(loaded.version, 16) >= 0
    assert policy_from_sources(dict(reversed(list(sources.items()))), "x").version == loaded.version  # order-free
    # any change to a name or a byte changes the version
    versions = {loaded.version,
                policy_from_sources({**sources, "_global.yaml": GLOBAL + "# comment\n"}, "x").version,
                policy_from_sources({"researcher.yaml": AGENT, "_global.yml": GLOBAL}, "x").version,
                policy_from_sources({"": AGENT}, "x").version,
                policy_from_sources({"researcher.yaml": AGENT}, "x").version}
    assert len(versions) == 5
    # CRLF files keep their bytes
    (d / "researcher.yaml").write_bytes(AGENT.replace("\n", "\r\n").encode())
    assert policy_sources(d)["researcher.yaml"] == AGENT.replace("\n", "\r\n")
    assert load_policy(d).version != loaded.version


def test_version_is_stable_across_processes() -> None:
    # a fixed expectation: replicas and future releases must agree on the same bytes
    assert policy_from_sources({"": "rules: []\n"}, "a").version == policy_from_sources({"": "rules: []\n"}, "b").version
    assert policy_from_sources({"": "rules: []\n"}, "a").version == "3b38351f8f5b67b8"


def test_parse_policy_version_follows_the_document() -> None:
    a = parse_policy({"rules": [rule("a", 1)]})
    assert a.version.startswith("doc:")
    assert a.version == parse_policy({"rules": [rule("a", 1)]}, "other").version
    assert a.version != parse_policy({"rules": [rule("a", 2)]}).version


def test_decisions_carry_the_policy_version() -> None:
    p = from_text(POLICY_TEXT)
    for tool in ("web_search", "shell_exec", "rm"):
        assert p.evaluate(PolicyInput(tool, "a")).policy_version == p.version
    assert p.evaluate(PolicyInput("t", "a", action="execution.complete")).policy_version == p.version


def test_summary_lists_engines_in_evaluation_order(tmp_path: Path) -> None:
    p = load_policy(write(tmp_path, {"researcher.yaml": AGENT, "_global.yaml": GLOBAL}))
    s = p.summary()
    assert (s["mode"], s["version"], s["files"]) == ("directory", p.version, ["_global.yaml", "researcher.yaml"])
    researcher, rest = s["engines"]
    assert researcher["agents"] == "researcher" and rest["agents"] == "*"
    assert [r["id"] for r in researcher["rules"]] == ["no-shell", "allow-web", "calc"]
    assert researcher["rules"][0] == {"id": "no-shell", "priority": 5, "decision": "deny", "reason": "no shell",
                                      "when": "tool_id=shell", "timeout_ms": 0, "rate_limit": None,
                                      "file": f"{tmp_path}/_global.yaml", "line": 2}
    assert rest["default"] == {"decision": "deny", "rule_id": "default", "reason": "global default"}
    no_global = load_policy(write(tmp_path / "x", {"a.yaml": AGENT})).summary()
    assert no_global["engines"][-1]["default"]["rule_id"] == "agent-default"


def test_rule_condition_summary() -> None:
    p = parse_policy({"rules": [rule("all", 1, {
        "action": "tool.invoke", "tool_id": "a*", "tool_ids": ["b", "c"], "agent_id": "x", "agent_ids": ["y"],
        "labels": {"env": "prod"}, "arguments": [{"field": "cmd", "required": True, "pattern": "^ls",
                                                  "one_of": ["ls"], "min": 1, "max": 2.5, "max_length": 9}],
        "min_step_count": 3, "min_duration_ms": 100, "schedule": "Mon-Fri 09:00-17:00 UTC"}), rule("none", 2)]})
    assert p.rules[0].conditions() == (
        "action=tool.invoke, tool_id=a*, tool_ids=[b, c], agent_id=x, agent_ids=[y], labels={env=prod}, "
        "arguments[cmd required ~/^ls/ in [ls] >=1 <=2.5 len<=9], steps>=3, elapsed>=100ms, "
        "schedule='Mon-Fri 09:00-17:00 UTC'")
    assert p.rules[1].conditions() == "always"
    assert isinstance(p.rules[0].arguments[0], ArgumentPredicate)


def test_policy_input_defaults() -> None:
    inp = PolicyInput(tool_id="t", agent_id="a")
    assert (inp.action, inp.arguments, inp.now, inp.arguments_json, inp.step_count) == (
        "tool.invoke", NO_ARGUMENTS, None, None, 0)
    assert repr(NO_ARGUMENTS) == "NO_ARGUMENTS"


def test_decision_as_dict() -> None:
    d = PolicyDecision("allow", "r", "why", 5, RateLimit(3, "1m", 60 * 10**9), "v1")
    assert d.as_dict() == {"decision": "allow", "rule_id": "r", "reason": "why", "timeout_ms": 5,
                           "rate_limit": {"max": 3, "window": "1m"}, "policy_version": "v1"}
    assert PolicyDecision("deny", "x").as_dict()["rate_limit"] is None


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
_DEFAULT_NOW = "2026-03-25T12:00:00Z"


def _vector_policy(vector: dict, via: str) -> PolicySet:
    mode = vector.get("mode", "file")
    if mode == "none-dev":
        return permissive()
    if mode == "none-server":
        return secure_default()
    if mode == "file":
        if via == "document":
            return parse_policy(vector.get("policy"), f"vector:{vector['name']}")
        return policy_from_sources({"": yaml.safe_dump(vector.get("policy"))}, f"{vector['name']}.yaml")
    assert mode == "directory", mode
    return policy_from_sources({f"{stem}.yaml": yaml.safe_dump(doc) for stem, doc in vector["policy_dir"].items()},
                               vector["name"])


def _vector_input(vector: dict) -> PolicyInput:
    inp = vector["input"]
    extra: dict[str, Any] = {}
    if "arguments" in inp:
        extra["arguments"] = inp["arguments"]
    if "arguments_raw" in inp:
        extra["arguments_json"] = inp["arguments_raw"]
    return PolicyInput(
        tool_id=inp.get("tool_id", ""), agent_id=inp.get("agent_id", ""), labels=inp.get("labels") or {},
        step_count=inp.get("step_count", 0), duration_ms=inp.get("elapsed_ms", 0),
        action=inp.get("action", "tool.invoke"), now=datetime.fromisoformat(inp.get("now", _DEFAULT_NOW)), **extra)


def _vector_params() -> list:
    """Every vector through its source files, and single-file vectors also as parsed documents."""
    if not _VECTORS:
        return [pytest.param(None, "", id="no-vectors", marks=pytest.mark.skip(reason="policy-vectors.yaml not found"))]
    return ([pytest.param(v, "sources", id=v["name"]) for v in _VECTORS]
            + [pytest.param(v, "document", id=f"{v['name']}-document") for v in _VECTORS
               if v.get("mode", "file") == "file"])


@pytest.mark.parametrize("vector, via", _vector_params())
def test_policy_vector(vector: dict, via: str) -> None:
    d = _vector_policy(vector, via).evaluate(_vector_input(vector))
    exp = vector["expect"]
    assert (d.decision, d.rule_id, d.reason, d.timeout_ms, d.rate_limit.as_dict() if d.rate_limit else None) == (
        exp["decision"], exp["rule_id"], exp.get("reason", ""), exp.get("timeout_ms", 0), exp.get("rate_limit"))


@pytest.mark.skipif(not _VECTORS, reason="spec/policy-vectors.yaml not found")
def test_policy_vectors_coverage() -> None:
    names = [v["name"] for v in _VECTORS]
    assert len(names) == len(set(names)), "vector names must be unique"
    assert len(_VECTORS) >= 95
    assert {v.get("mode", "file") for v in _VECTORS} == {"file", "directory", "none-dev", "none-server"}
    assert {v["expect"]["decision"] for v in _VECTORS} == {"allow", "deny", "require_approval"}
