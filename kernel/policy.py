"""The policy engine: a pure function from a proposed tool call to a decision.

Implements the core of ``spec/policy.md``: rules with ``action``, ``tool_id`` /
``tool_ids`` (shell-style globs over the whole id, ``*`` and ``?`` never match
``/``), ``agent_id`` / ``agent_ids`` (exact) and ``labels`` conditions, sorted
by unique ``priority`` (lowest first), first match wins, else the file's
``default`` (implicitly ``deny``). Decisions are ``allow`` and ``deny``;
``timeout_ms`` is returned for ``allow`` rules. The rest of the language
(argument predicates, schedules, rate limits, approval, directories) is a
separate issue; this module is the place it grows, with no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = ["PolicyInput", "PolicyDecision", "Rule", "Policy", "PolicyError", "load_policy", "parse_policy",
           "permissive", "secure_default", "glob_match", "DECISIONS"]

DECISIONS = ("allow", "deny")
_NOT_YET = ("arguments", "schedule", "min_step_count", "min_duration_ms")
_RULE_KEYS = {"id", "priority", "when", "then", "description"}
_WHEN_KEYS = {"action", "tool_id", "tool_ids", "agent_id", "agent_ids", "labels"}
_THEN_KEYS = {"decision", "reason", "timeout_ms"}
_TOOL_ACTION = "tool.invoke"


class PolicyError(ValueError):
    """A policy file is invalid; the message names the file, the rule and the problem."""


@dataclass(frozen=True, slots=True)
class PolicyInput:
    """What a decision is about (``spec/policy.md`` §1)."""

    tool_id: str
    agent_id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    arguments: Any = None
    step_count: int = 0
    duration_ms: int = 0
    action: str = _TOOL_ACTION
    now: Any = None


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """The engine's answer. ``timeout_ms`` is 0 unless an ``allow`` rule set one (milliseconds)."""

    decision: str
    rule_id: str
    reason: str = ""
    timeout_ms: int = 0
    rate_limit: Any = None

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"


def _glob_regex(pattern: str) -> re.Pattern[str] | None:
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            if i + 1 >= n:
                return None
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            j = i + 1
            negate = j < n and pattern[j] == "^"
            if negate:
                j += 1
            start = j
            while j < n and (pattern[j] != "]" or j == start):
                j += 1
            if j >= n:
                return None  # unclosed class
            body = pattern[start:j].replace("\\", "\\\\")
            out.append(f"[^/{body}]" if negate else f"(?:(?!/)[{body}])")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    try:
        return re.compile("".join(out) + r"\Z")
    except re.error:
        return None


_glob_cache: dict[str, re.Pattern[str] | None] = {}


def glob_match(pattern: str, value: str) -> bool:
    """Shell-style match of the whole ``value`` (``spec/policy.md`` §4.2); a malformed
    pattern falls back to string equality."""
    if pattern not in _glob_cache:
        _glob_cache[pattern] = _glob_regex(pattern)
    rx = _glob_cache[pattern]
    return value == pattern if rx is None else rx.match(value) is not None


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    decision: str
    priority: int = 0
    reason: str = ""
    timeout_ms: int = 0
    action: str | None = None
    tool_id: str | None = None
    tool_ids: tuple[str, ...] = ()
    agent_id: str | None = None
    agent_ids: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    def matches(self, inp: PolicyInput) -> bool:
        if self.action is not None and self.action != inp.action:
            return False
        if self.tool_id is not None and not glob_match(self.tool_id, inp.tool_id):
            return False
        if self.tool_ids and not any(glob_match(g, inp.tool_id) for g in self.tool_ids):
            return False
        if self.agent_id is not None and self.agent_id != inp.agent_id:
            return False
        if self.agent_ids and inp.agent_id not in self.agent_ids:
            return False
        return all(inp.labels.get(k, "") == v for k, v in self.labels.items())


@dataclass(frozen=True, slots=True)
class Policy:
    """An evaluated rule set: rules sorted by priority, and the default decision."""

    rules: tuple[Rule, ...]
    default: PolicyDecision
    source: str = "<memory>"
    version: str = ""

    def evaluate(self, inp: PolicyInput) -> PolicyDecision:
        """Decide ``inp``: the first matching rule by priority, else the default."""
        for rule in self.rules:
            if rule.matches(inp):
                return PolicyDecision(rule.decision, rule.id, rule.reason,
                                      rule.timeout_ms if rule.decision == "allow" and rule.timeout_ms > 0 else 0)
        return self.default

    def describe(self) -> str:
        """One line for banners and logs: the file and its rule count, or the permissive mode."""
        if not self.rules and self.default.rule_id in ("permissive-default", "secure-default"):
            return self.source
        return f"{self.source} ({len(self.rules)} rules loaded)"


def secure_default() -> Policy:
    """The engine of a kernel started without a policy outside dev mode: every tool call denied
    (``spec/policy.md`` §1)."""
    return Policy((), PolicyDecision("deny", "secure-default", "No policy engine configured"),
                  "secure default (every tool call denied)")


def permissive() -> Policy:
    """The engine of ``rebuno dev`` without ``--policy``: every tool call allowed."""
    return Policy((), PolicyDecision("allow", "permissive-default", "no policy configured (dev mode)"),
                  "permissive (all tools allowed)")


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{where} must be a list of strings")
    return tuple(value)


def _opt_str(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise PolicyError(f"{where} must be a string")
    return value


def _int(value: Any, where: str, default: int = 0) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(f"{where} must be an integer")
    return value


def parse_policy(doc: Any, source: str = "<memory>") -> Policy:
    """Build a :class:`Policy` from a parsed YAML document.

    Raises:
        PolicyError: naming ``source``, the rule id and the problem (``spec/policy.md`` §8).
    """
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise PolicyError(f"{source}: a policy must be a mapping with 'rules' and 'default'")
    raw_rules = doc.get("rules") or []
    if not isinstance(raw_rules, list):
        raise PolicyError(f"{source}: 'rules' must be a list")
    rules: list[Rule] = []
    seen_ids: set[str] = set()
    by_priority: dict[int, str] = {}
    for i, raw in enumerate(raw_rules):
        if not isinstance(raw, dict):
            raise PolicyError(f"{source}: rule {i} must be a mapping")
        rid = raw.get("id")
        if not isinstance(rid, str) or not rid:
            raise PolicyError(f"{source}: rule {i}: rule missing ID")
        where = f'{source}: rule "{rid}"'
        if rid in seen_ids:
            raise PolicyError(f'{source}: duplicate rule ID "{rid}"')
        seen_ids.add(rid)
        then = raw.get("then")
        if not isinstance(then, dict):
            raise PolicyError(f"{where} has no 'then' mapping")
        decision = then.get("decision")
        if decision not in DECISIONS:
            if decision == "require_approval":
                raise PolicyError(f'{where}: decision "require_approval" is not supported by this kernel yet')
            raise PolicyError(f'{where} has invalid decision "{decision}"')
        when = raw.get("when") or {}
        if not isinstance(when, dict):
            raise PolicyError(f"{where}: 'when' must be a mapping")
        # Fail closed: a condition this engine cannot check, or a misspelled one, must not be
        # ignored — that would silently widen the rule (the original ignored unknown keys).
        for key in _NOT_YET:
            if key in when:
                raise PolicyError(f'{where}: condition "{key}" is not supported by this kernel yet')
        if "rate_limit" in raw:
            raise PolicyError(f'{where}: "rate_limit" is not supported by this kernel yet')
        for keys, allowed, what in ((when, _WHEN_KEYS, "condition"), (raw, _RULE_KEYS, "rule field"),
                                    (then, _THEN_KEYS, "'then' field")):
            unknown = sorted(str(k) for k in keys if k not in allowed)
            if unknown:
                raise PolicyError(f"{where}: unknown {what}(s) {unknown}; expected one of {sorted(allowed)}")
        labels = when.get("labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise PolicyError(f"{where}: when.labels must map strings to strings")
        priority = _int(raw.get("priority"), f"{where}: priority")
        if priority in by_priority:
            raise PolicyError(f'{source}: duplicate rule priority: priority {priority} used by both '
                              f'"{by_priority[priority]}" and "{rid}"')
        by_priority[priority] = rid
        reason = then.get("reason") or ""
        if not isinstance(reason, str):
            raise PolicyError(f"{where}: then.reason must be a string")
        rules.append(Rule(
            id=rid, decision=decision, priority=priority, reason=reason,
            timeout_ms=_int(then.get("timeout_ms"), f"{where}: then.timeout_ms"),
            action=_opt_str(when.get("action"), f"{where}: when.action"),
            tool_id=_opt_str(when.get("tool_id"), f"{where}: when.tool_id"),
            tool_ids=_str_list(when.get("tool_ids"), f"{where}: when.tool_ids"),
            agent_id=_opt_str(when.get("agent_id"), f"{where}: when.agent_id"),
            agent_ids=_str_list(when.get("agent_ids"), f"{where}: when.agent_ids"),
            labels=dict(labels),
        ))
    rules.sort(key=lambda r: r.priority)
    raw_default = doc.get("default") or {}
    if not isinstance(raw_default, dict):
        raise PolicyError(f"{source}: 'default' must be a mapping")
    d = raw_default.get("decision")
    if not d:
        default = PolicyDecision("deny", "default", "No explicit allow rule matched")
    elif d == "require_approval":
        raise PolicyError(f'{source}: default decision "require_approval" is not supported by this kernel yet')
    elif d not in DECISIONS:
        raise PolicyError(f'{source}: default has invalid decision "{d}"')
    else:
        default = PolicyDecision(d, "default", str(raw_default.get("reason") or ""))
    return Policy(tuple(rules), default, source)


def load_policy(path: str | Path) -> Policy:
    """Load and validate a policy file.

    Raises:
        PolicyError: the file is missing, unreadable, not YAML, or invalid.
    """
    p = Path(path)
    if p.is_dir():
        raise PolicyError(f"{p}: policy directories are not supported by this kernel yet; pass a file")
    try:
        text = p.read_text()
    except OSError as e:
        raise PolicyError(f"{p}: cannot read policy: {e.strerror or e}") from e
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise PolicyError(f"{p}: parsing policy YAML{line}: {getattr(e, 'problem', e)}") from e
    return parse_policy(doc, str(p))


def policy_from_sources(files: Mapping[str, str], origin: str) -> Policy:
    """(Interim) a policy from one in-memory file."""
    (name, text), = files.items()
    return parse_policy(yaml.safe_load(text), f"{origin}/{name}" if name else origin)
