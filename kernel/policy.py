"""The policy engine: a pure function from a proposed tool call to a decision.

Implements ``spec/policy.md`` in full; no I/O except reading policy files.

* **Rules** (§2–§5): ``id``, unique ``priority`` (lowest first), ``when`` conditions —
  ``action``; ``tool_id``/``tool_ids`` (shell-style globs over the whole id, ``*`` and
  ``?`` never match ``/``); ``agent_id``/``agent_ids`` (exact); ``labels``; ``arguments``
  predicates on top-level argument keys (``required``, RE2 ``pattern``, ``one_of``,
  ``min``, ``max``, ``max_length``); ``min_step_count``; ``min_duration_ms``;
  ``schedule`` — all ANDed; ``then`` with ``allow``/``deny``/``require_approval``,
  ``reason``, ``timeout_ms`` (ms, allow only); ``rate_limit`` (``max`` per ``window``,
  allow only). First match wins, else the file's ``default`` (implicitly ``deny``).
* **Engines** (§1, §6): a :class:`PolicySet` is what the kernel holds. It is built from
  one file, from a directory (per-agent files merged with ``_global.yaml``), or is a
  built-in (:func:`secure_default`, :func:`permissive`). It picks the engine by agent
  id, answers lifecycle actions with ``allow`` (``secure-default``), and carries a
  content-addressed :attr:`PolicySet.version` that every decision repeats.
* **Sources**: a policy is its source files. :func:`policy_sources` reads a file or a
  directory into a ``{name: text}`` mapping and :func:`policy_from_sources` builds the
  same :class:`PolicySet` from that mapping (what ``rebuno policy apply`` stores and
  every replica rebuilds). Convention: ``{"": text}`` is a single-file policy; otherwise
  the keys are the directory's file names (``"_global.yaml"``, ``"researcher.yml"``).

Departures from the original (``DESIGN.md`` §8), all fail-closed:

* Unknown keys (top level, rule, ``when``, ``then``, ``default``, ``rate_limit``, argument
  predicates) are refused at load instead of ignored: a misspelled condition would
  otherwise silently widen its rule. Free text may go in ``description`` (top level or
  rule). Duplicate YAML keys are refused too.
* Values have strict types: ids, globs, labels and ``one_of`` entries are strings (quote
  ``"1"``), counts are integers, YAML 1.2 scalars (``yes`` is a string).
* ``rate_limit.window`` must be positive; ``max_length`` non-negative; a predicate with
  ``min`` > ``max`` is refused (it could never match); a ``pattern`` that is valid RE2
  but not expressible with Python's ``re`` (``\\pL`` Unicode classes) is refused.
  A pattern RE2 itself rejects still loads and never matches, as specified, and
  :attr:`PolicySet.warnings` reports it.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import math
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import yaml

from ._policy_regex import UnsupportedPattern, compile_re2
from ._policy_time import Schedule, parse_duration, parse_schedule
from ._policy_yaml import line_of, load_yaml

__all__ = [
    "PolicyInput", "PolicyDecision", "RateLimit", "ArgumentPredicate", "Rule", "RuleSet", "PolicySet", "Policy",
    "PolicyError", "NO_ARGUMENTS", "load_policy", "parse_policy", "policy_sources", "policy_from_sources",
    "permissive", "secure_default", "glob_match", "parse_duration", "DECISIONS", "LIFECYCLE_ACTIONS",
]

DECISIONS = ("allow", "deny", "require_approval")
TOOL_ACTION = "tool.invoke"
LIFECYCLE_ACTIONS = frozenset({"execution.complete", "execution.fail", "execution.wait"})
POLICY_SUFFIXES = (".yaml", ".yml")
GLOBAL_STEM = "_global"

_TOP_KEYS = ("rules", "default", "description")
_RULE_KEYS = ("id", "description", "priority", "when", "then", "rate_limit")
_WHEN_KEYS = ("action", "tool_id", "tool_ids", "agent_id", "agent_ids", "labels", "arguments",
              "min_step_count", "min_duration_ms", "schedule")
_THEN_KEYS = ("decision", "reason", "timeout_ms")
_DEFAULT_KEYS = ("decision", "reason", "timeout_ms")
_RATE_KEYS = ("max", "window")
_PREDICATE_KEYS = ("field", "required", "pattern", "one_of", "min", "max", "max_length")

_IMPLICIT_DEFAULT_REASON = "No explicit allow rule matched"
_LIFECYCLE_REASON = "Execution lifecycle action allowed by default"


class PolicyError(ValueError):
    """A policy is invalid or cannot be read (``spec/policy.md`` §8).

    ``str(error)`` is ``<file>:<line>: <problem>`` (``<file>: <problem>`` when YAML gave
    no line). Attributes: ``problem`` (the message alone, e.g. ``rule "x" has invalid
    decision "maybe"``), ``file``, ``line`` (1-based or None), ``rule_id`` (or None).
    """

    def __init__(self, problem: str, *, file: str | None = None, line: int | None = None,
                 rule_id: str | None = None) -> None:
        self.problem, self.file, self.line, self.rule_id = problem, file, line, rule_id
        where = file or ""
        if where and line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {problem}" if where else problem)


class _Absent:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_ARGUMENTS"

    def __reduce__(self) -> str:
        return "NO_ARGUMENTS"


NO_ARGUMENTS: Any = _Absent()
"""``PolicyInput.arguments`` when the intent carried no arguments at all (§4.5: argument
predicates then never match). ``None`` means the JSON value ``null`` (an empty object)."""


@dataclass(frozen=True, slots=True)
class PolicyInput:
    """What a decision is about (``spec/policy.md`` §1).

    Attributes:
        tool_id: the proposed tool.
        agent_id: the agent of the session that proposed it (selects a directory engine).
        labels: the execution's labels.
        arguments: the intent's arguments as decoded JSON; :data:`NO_ARGUMENTS` (default)
            when it carried none, ``None`` for JSON ``null``.
        arguments_json: the raw JSON text instead of ``arguments`` (then invalid JSON makes
            every argument predicate fail); None to use ``arguments``.
        step_count: steps the execution already has, in any status (the proposed one excluded).
        duration_ms: milliseconds since the execution was created.
        action: always ``tool.invoke`` for tool calls; lifecycle actions are allowed.
        now: the evaluation instant for ``schedule`` (naive = UTC); None = the current time.
    """

    tool_id: str
    agent_id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    arguments: Any = NO_ARGUMENTS
    step_count: int = 0
    duration_ms: int = 0
    action: str = TOOL_ACTION
    now: datetime | None = None
    arguments_json: str | bytes | None = None


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A rule's ``rate_limit`` (§7): at most ``max`` calls per sliding ``window``.

    ``window`` is the duration string as written (``"1m"``); ``window_ns`` is its length in
    nanoseconds and :attr:`window_s` in seconds. The kernel keys buckets by
    ``"<agent_id>:<tool_id>"`` and, on refusal, says ``rate limit exceeded: max <max> per
    <window>``.
    """

    max: int
    window: str
    window_ns: int

    @property
    def window_s(self) -> float:
        """The window in seconds."""
        return self.window_ns / 1e9

    def as_dict(self) -> dict[str, Any]:
        """``{"max": int, "window": str}``, the shape of the spec's vectors and the CLI."""
        return {"max": self.max, "window": self.window}


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """The engine's answer (§3, §5).

    Attributes:
        decision: ``"allow"``, ``"deny"`` or ``"require_approval"``.
        rule_id: the matching rule's id, ``"default"``, or a built-in id
            (``secure-default``, ``permissive-default``, ``agent-default``).
        reason: the rule's or default's reason (``""`` when none).
        timeout_ms: the step deadline in **milliseconds** from an ``allow`` rule's
            ``then.timeout_ms`` when > 0, else 0 (use the kernel's default step timeout).
        rate_limit: the matching ``allow`` rule's rate limit, else None (never for a
            default, a deny or an approval).
        policy_version: :attr:`PolicySet.version` of the policy that decided.
    """

    decision: str
    rule_id: str
    reason: str = ""
    timeout_ms: int = 0
    rate_limit: RateLimit | None = None
    policy_version: str = ""

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"

    @property
    def denied(self) -> bool:
        return self.decision == "deny"

    @property
    def needs_approval(self) -> bool:
        return self.decision == "require_approval"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: decision, rule_id, reason, timeout_ms, rate_limit ({max, window} or
        None), policy_version."""
        return {"decision": self.decision, "rule_id": self.rule_id, "reason": self.reason,
                "timeout_ms": self.timeout_ms,
                "rate_limit": self.rate_limit.as_dict() if self.rate_limit else None,
                "policy_version": self.policy_version}


# ----------------------------------------------------------------------- globs --
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


@functools.lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str] | None:
    return _glob_regex(pattern)


def glob_match(pattern: str, value: str) -> bool:
    """Shell-style match of the whole ``value`` (§4.2); a malformed pattern falls back to
    string equality."""
    rx = _glob(pattern)
    return value == pattern if rx is None else rx.match(value) is not None


# ------------------------------------------------------------------ conditions --
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class ArgumentPredicate:
    """One entry of ``when.arguments`` (§4.5), checked against a top-level key.

    An empty ``pattern`` or ``one_of`` counts as absent. ``regex`` is the compiled
    pattern, None when the pattern is not valid RE2 (the predicate then never passes
    for a present value).
    """

    field: str
    required: bool = False
    pattern: str = ""
    regex: re.Pattern[str] | None = None
    one_of: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    max_length: int | None = None

    def check(self, args: Mapping[str, Any]) -> bool:
        """Whether the decoded argument object satisfies this predicate."""
        present = self.field in args
        value = args.get(self.field)
        if self.required and (not present or value == ""):
            return False
        if not present:
            return True
        if self.pattern and (not isinstance(value, str) or self.regex is None or self.regex.search(value) is None):
            return False
        if self.one_of and (not isinstance(value, str) or value not in self.one_of):
            return False
        if self.min is not None or self.max is not None:
            if not _is_number(value):
                return False
            try:
                number = float(value)  # type: ignore[arg-type]  # _is_number checked it
            except OverflowError:
                return False
            if self.min is not None and number < self.min:
                return False
            if self.max is not None and number > self.max:
                return False
        if self.max_length is not None and (not isinstance(value, str) or len(value) > self.max_length):
            return False
        return True

    def summary(self) -> str:
        parts = []
        if self.required:
            parts.append("required")
        if self.pattern:
            parts.append(f"~/{self.pattern}/")
        if self.one_of:
            parts.append("in [" + ", ".join(self.one_of) + "]")
        if self.min is not None:
            parts.append(f">={self.min:g}")
        if self.max is not None:
            parts.append(f"<={self.max:g}")
        if self.max_length is not None:
            parts.append(f"len<={self.max_length}")
        return f"{self.field} " + " ".join(parts)


class _Call:
    """Per-evaluation lazy state: the decoded argument object and the evaluation instant."""

    __slots__ = ("inp", "_args", "_now")
    _UNSET: Any = object()

    def __init__(self, inp: PolicyInput) -> None:
        self.inp = inp
        self._args = self._UNSET
        self._now = inp.now

    def args(self) -> Mapping[str, Any] | None:
        """The argument object predicates see, or None when they can never pass."""
        if self._args is self._UNSET:
            inp = self.inp
            value: Any = inp.arguments
            if inp.arguments_json is not None:
                try:
                    value = json.loads(inp.arguments_json)
                except ValueError:
                    value = NO_ARGUMENTS
            if value is None:
                value = {}
            self._args = value if isinstance(value, Mapping) else None
        return self._args

    def now(self) -> datetime:
        if self._now is None:
            self._now = datetime.now(timezone.utc)
        return self._now


@dataclass(frozen=True, slots=True)
class Rule:
    """One validated rule. ``file``/``line`` locate it in its source (line None when it
    was built from an in-memory document)."""

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
    arguments: tuple[ArgumentPredicate, ...] = ()
    min_step_count: int | None = None
    min_duration_ms: int | None = None
    schedule: Schedule | None = None
    rate_limit: RateLimit | None = None
    description: str = ""
    file: str = ""
    line: int | None = None

    def matches(self, inp: PolicyInput, call: _Call | None = None) -> bool:
        """Whether every condition of ``when`` holds for ``inp`` (§4)."""
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
        if self.labels and not all(inp.labels.get(k, "") == v for k, v in self.labels.items()):
            return False
        if self.min_step_count is not None and inp.step_count < self.min_step_count:
            return False
        if self.min_duration_ms is not None and inp.duration_ms < self.min_duration_ms:
            return False
        call = call or _Call(inp)
        if self.schedule is not None and not self.schedule.matches(call.now()):
            return False
        if self.arguments:
            args = call.args()
            if args is None or not all(p.check(args) for p in self.arguments):
                return False
        return True

    def decide(self, version: str = "") -> PolicyDecision:
        """The decision this rule returns when it matches (§3, §5)."""
        allow = self.decision == "allow"
        return PolicyDecision(self.decision, self.id, self.reason,
                              self.timeout_ms if allow and self.timeout_ms > 0 else 0,
                              self.rate_limit if allow else None, version)

    def conditions(self) -> str:
        """A one-line summary of ``when`` (``always`` when empty)."""
        parts = []
        if self.action is not None:
            parts.append(f"action={self.action}")
        if self.tool_id is not None:
            parts.append(f"tool_id={self.tool_id}")
        if self.tool_ids:
            parts.append("tool_ids=[" + ", ".join(self.tool_ids) + "]")
        if self.agent_id is not None:
            parts.append(f"agent_id={self.agent_id}")
        if self.agent_ids:
            parts.append("agent_ids=[" + ", ".join(self.agent_ids) + "]")
        if self.labels:
            parts.append("labels={" + ", ".join(f"{k}={v}" for k, v in self.labels.items()) + "}")
        if self.arguments:
            parts.append("arguments[" + "; ".join(p.summary() for p in self.arguments) + "]")
        if self.min_step_count is not None:
            parts.append(f"steps>={self.min_step_count}")
        if self.min_duration_ms is not None:
            parts.append(f"elapsed>={self.min_duration_ms}ms")
        if self.schedule is not None:
            parts.append(f"schedule={self.schedule.text!r}")
        return ", ".join(parts) or "always"


# ---------------------------------------------------------------------- engines --
@dataclass(frozen=True, slots=True)
class RuleSet:
    """One engine (§3): rules sorted by priority and the default decision.

    ``files`` names the source files its rules came from (agent file first, then
    ``_global.yaml``).
    """

    rules: tuple[Rule, ...]
    default: PolicyDecision
    source: str = "<memory>"
    files: tuple[str, ...] = ()

    def evaluate(self, inp: PolicyInput, version: str = "") -> PolicyDecision:
        """The first matching rule's decision, else the default; no lifecycle short-cut."""
        call = _Call(inp)
        for rule in self.rules:
            if rule.matches(inp, call):
                return rule.decide(version)
        return replace(self.default, policy_version=version) if version else self.default

    def describe(self) -> str:
        return f"{self.source} ({len(self.rules)} rules loaded)"

    def summary(self) -> dict[str, Any]:
        """JSON-ready: files, rules in evaluation order, default."""
        return {
            "files": list(self.files),
            "rules": [{"id": r.id, "priority": r.priority, "decision": r.decision, "reason": r.reason,
                       "when": r.conditions(), "timeout_ms": r.timeout_ms if r.decision == "allow" and r.timeout_ms > 0
                       else 0, "rate_limit": r.rate_limit.as_dict() if r.rate_limit and r.decision == "allow"
                       else None, "file": r.file, "line": r.line} for r in self.rules],
            "default": {"decision": self.default.decision, "rule_id": self.default.rule_id,
                        "reason": self.default.reason},
        }


@dataclass(frozen=True, slots=True, eq=False)
class PolicySet:
    """The policy the kernel enforces (§1, §6): picks the engine by agent id.

    Attributes:
        origin: the path it was loaded from, or a description.
        mode: ``"file"``, ``"directory"`` or ``"builtin"``.
        fallback: the engine for agents without their own file: the file's engine, the
            directory's ``_global.yaml`` engine, the built-in engine; None for a
            directory without ``_global.yaml`` (such agents are denied, ``agent-default``).
        agents: directory mode: agent id → its file's rules merged with the global rules.
        sources: the source files it was built from (see :func:`policy_from_sources`).
        version: content address of ``sources``: the first 16 hex digits of a SHA-256
            over the sorted (name, text) pairs; ``builtin:secure-default`` /
            ``builtin:permissive`` for the built-ins; ``doc:<hex>`` for
            :func:`parse_policy` (hash of the document's canonical JSON).
        lifecycle_default: answer ``execution.complete/fail/wait`` with ``allow``
            (``secure-default``) before any rule.
        warnings: settings accepted but without effect (``file:line: …``), e.g. a
            ``timeout_ms`` on a deny rule or a pattern that is not valid RE2.
    """

    origin: str
    mode: str
    fallback: RuleSet | None
    agents: Mapping[str, RuleSet] = field(default_factory=lambda: MappingProxyType({}))
    sources: Mapping[str, str | bytes] = field(default_factory=lambda: MappingProxyType({}))
    version: str = ""
    lifecycle_default: bool = True
    warnings: tuple[str, ...] = ()
    has_rate_limits: bool = field(init=False, default=False)
    """Whether any rule has a ``rate_limit`` (the kernel skips the shared counters otherwise)."""

    def __post_init__(self) -> None:
        engines = [*self.agents.values(), *([self.fallback] if self.fallback is not None else [])]
        object.__setattr__(self, "has_rate_limits", any(
            rule.rate_limit is not None for engine in engines for rule in engine.rules))

    def engine_for(self, agent_id: str) -> RuleSet | None:
        """The engine deciding for ``agent_id``; None = no policy for that agent."""
        return self.agents.get(agent_id, self.fallback)

    def evaluate(self, inp: PolicyInput) -> PolicyDecision:
        """Decide ``inp`` (pure apart from reading the clock when ``inp.now`` is None and a
        rule has a schedule). The decision carries :attr:`version`."""
        if self.lifecycle_default and inp.action in LIFECYCLE_ACTIONS:
            return PolicyDecision("allow", "secure-default", _LIFECYCLE_REASON, policy_version=self.version)
        engine = self.agents.get(inp.agent_id, self.fallback)
        if engine is None:
            return PolicyDecision("deny", "agent-default", f'no policy configured for agent "{inp.agent_id}"',
                                  policy_version=self.version)
        return engine.evaluate(inp, self.version)

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The rules of the engine for agents without their own file (all rules of a
        single-file policy); () when there is none."""
        return self.fallback.rules if self.fallback is not None else ()


    def describe(self) -> str:
        """One line for banners and logs (spec ``cli.md`` §2)."""
        if self.mode == "file":
            return f"{self.origin} ({len(self.rules)} rules loaded)"
        if self.mode == "directory":
            return f"{self.origin} ({len(self.agents)} agents loaded)"
        return self.origin

    def summary(self) -> dict[str, Any]:
        """JSON-ready description of every engine (what ``rebuno policy check`` prints)."""
        engines = [{"agents": agent, **engine.summary()} for agent, engine in sorted(self.agents.items())]
        if self.fallback is not None:
            engines.append({"agents": "*", **self.fallback.summary()})
        else:
            engines.append({"agents": "*", "files": [], "rules": [], "default": {
                "decision": "deny", "rule_id": "agent-default", "reason": "no policy configured for agent"}})
        return {"origin": self.origin, "mode": self.mode, "version": self.version,
                "files": sorted(self.sources), "engines": engines, "warnings": list(self.warnings)}


Policy = PolicySet
"""The name the kernel uses for the policy it holds."""


def secure_default() -> PolicySet:
    """A kernel started without a policy outside dev mode: every tool call denied
    (``secure-default``, ``No policy engine configured``); lifecycle actions allowed."""
    engine = RuleSet((), PolicyDecision("deny", "secure-default", "No policy engine configured"), "secure default")
    return PolicySet("secure default (every tool call denied)", "builtin", engine,
                     version="builtin:secure-default")


def permissive() -> PolicySet:
    """``rebuno dev`` without ``--policy``: everything allowed (``permissive-default``)."""
    engine = RuleSet((), PolicyDecision("allow", "permissive-default", "no policy configured (dev mode)"),
                     "permissive")
    return PolicySet("permissive (all tools allowed)", "builtin", engine, version="builtin:permissive",
                     lifecycle_default=False)


# -------------------------------------------------------------------- validation --
def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


@dataclass
class _File:
    """The validated content of one policy file."""

    name: str
    rules: list[Rule]
    default: PolicyDecision


class _Validator:
    """Validates one parsed document; errors name the file, the rule and the line."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.warnings: list[str] = []

    def error(self, problem: str, node: Any = None, key: Any = None, rule_id: str | None = None) -> PolicyError:
        return PolicyError(problem, file=self.name, line=line_of(node, key), rule_id=rule_id)

    def warn(self, problem: str, node: Any = None, key: Any = None) -> None:
        line = line_of(node, key)
        self.warnings.append(f"{self.name}{'' if line is None else f':{line}'}: {problem}")

    def unknown_keys(self, node: Mapping, allowed: tuple[str, ...], where: str, rule_id: str | None) -> None:
        for key in node:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                suggestion = f' (did you mean "{hint[0]}"?)' if hint else ""
                raise self.error(f'{where}: unknown key "{key}"{suggestion}; expected one of: {", ".join(allowed)}',
                                 node, key, rule_id)

    # --- typed fields -----------------------------------------------------------
    def string(self, node: Mapping, key: str, where: str, rid: str | None, default: str | None = None) -> str | None:
        value = node.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(f"{where}.{key} must be a string, got {_kind(value)} ({value!r})", node, key, rid)
        return value

    def integer(self, node: Mapping, key: str, where: str, rid: str | None) -> int | None:
        value = node.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"{where}.{key} must be an integer, got {_kind(value)} ({value!r})", node, key, rid)
        return value

    def number(self, node: Mapping, key: str, where: str, rid: str | None) -> float | None:
        value = node.get(key)
        if value is None:
            return None
        if not _is_number(value) or (isinstance(value, float) and math.isnan(value)):
            raise self.error(f"{where}.{key} must be a number, got {_kind(value)} ({value!r})", node, key, rid)
        try:
            return float(value)
        except OverflowError:
            raise self.error(f"{where}.{key} is out of range ({value!r})", node, key, rid) from None

    def strings(self, node: Mapping, key: str, where: str, rid: str | None) -> tuple[str, ...]:
        value = node.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(f"{where}.{key} must be a list of strings, got {value!r}", node, key, rid)
        return tuple(value)

    def mapping(self, node: Mapping, key: str, where: str, rid: str | None) -> Mapping:
        value = node.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.error(f"{where}.{key} must be a mapping, got {_kind(value)}", node, key, rid)
        return value

    # --- document ---------------------------------------------------------------
    def document(self, doc: Any) -> _File:
        if doc is None:
            doc = {}
        if not isinstance(doc, Mapping):
            raise self.error(f"a policy must be a mapping with 'rules' and 'default', got {_kind(doc)}", doc)
        self.unknown_keys(doc, _TOP_KEYS, "policy", None)
        raw_rules = doc.get("rules")
        if raw_rules is None:
            raw_rules = []
        if not isinstance(raw_rules, list):
            raise self.error(f"'rules' must be a list, got {_kind(raw_rules)}", doc, "rules")
        rules: list[Rule] = []
        ids: dict[str, Rule] = {}
        for index, raw in enumerate(raw_rules):
            rule = self.rule(raw, index, raw_rules)
            if rule.id in ids:
                raise self.error(f'duplicate rule ID "{rule.id}" (first at {_where(ids[rule.id])})',
                                 raw, "id", rule.id)
            ids[rule.id] = rule
            rules.append(rule)
        _check_priorities(rules)
        return _File(self.name, sorted(rules, key=lambda r: r.priority), self.default(doc))

    def default(self, doc: Mapping) -> PolicyDecision:
        raw = doc.get("default")
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise self.error(f"'default' must be a mapping with decision and reason, got {_kind(raw)}", doc, "default")
        self.unknown_keys(raw, _DEFAULT_KEYS, "default", None)
        decision = raw.get("decision")
        timeout = self.integer(raw, "timeout_ms", "default", None)
        if decision is None or decision == "":
            return PolicyDecision("deny", "default", _IMPLICIT_DEFAULT_REASON)
        if decision not in DECISIONS:
            raise self.error(f'default has invalid decision "{decision}" (use allow, deny or require_approval)',
                             raw, "decision")
        if timeout:
            self.warn("default.timeout_ms is ignored: a default decision carries no timeout", raw, "timeout_ms")
        return PolicyDecision(decision, "default", self.string(raw, "reason", "default", None, "") or "")

    def rule(self, raw: Any, index: int, parent: Any) -> Rule:
        if not isinstance(raw, Mapping):
            raise self.error(f"rules[{index}] must be a mapping with id, when and then, got {_kind(raw)}",
                             parent, index)
        rid = raw.get("id")
        if rid is None or rid == "":
            raise self.error(f"rule missing ID (rules[{index}])", raw)
        if not isinstance(rid, str):
            raise self.error(f"rule missing ID (rules[{index}]: id must be a string, got {_kind(rid)} {rid!r})",
                             raw, "id")
        where = f'rule "{rid}"'
        self.unknown_keys(raw, _RULE_KEYS, where, rid)
        self.string(raw, "description", where, rid)
        then = raw.get("then")
        if then is not None and not isinstance(then, Mapping):
            raise self.error(f"{where}: then must be a mapping with decision, reason, timeout_ms, got {_kind(then)}",
                             raw, "then", rid)
        then = then or {}
        self.unknown_keys(then, _THEN_KEYS, f"{where} then", rid)
        decision = then.get("decision")
        if decision not in DECISIONS:
            shown = "" if decision is None else decision
            hint = " (then.decision is required: allow, deny or require_approval)" if not shown else \
                " (use allow, deny or require_approval)"
            raise self.error(f'{where} has invalid decision "{shown}"{hint}',
                             then if "decision" in then else raw, "decision" if "decision" in then else "then", rid)
        reason = self.string(then, "reason", f"{where}: then", rid, "") or ""
        timeout_ms = self.integer(then, "timeout_ms", f"{where}: then", rid) or 0
        if timeout_ms and decision != "allow":
            self.warn(f"{where}: then.timeout_ms is ignored: only allow decisions carry a timeout", then, "timeout_ms")
        elif timeout_ms < 0:
            self.warn(f"{where}: then.timeout_ms {timeout_ms} is ignored (not positive)", then, "timeout_ms")
        priority = self.integer(raw, "priority", where, rid)
        when = raw.get("when")
        if when is not None and not isinstance(when, Mapping):
            raise self.error(f"{where}: 'when' must be a mapping, got {_kind(when)}", raw, "when", rid)
        when = when or {}
        self.unknown_keys(when, _WHEN_KEYS, f"{where} when", rid)
        w = f"{where}: when"
        labels = when.get("labels")
        if labels is None:
            labels = {}
        if not isinstance(labels, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                      for k, v in labels.items()):
            raise self.error(f"{w}.labels must map strings to strings (quote values such as \"1\" or \"true\"), "
                             f"got {labels!r}", when, "labels", rid)
        min_steps = self.integer(when, "min_step_count", w, rid)
        if min_steps is not None and min_steps < 0:
            raise self.error(f"{where} min_step_count must be non-negative", when, "min_step_count", rid)
        min_duration = self.integer(when, "min_duration_ms", w, rid)
        if min_duration is not None and min_duration <= 0:
            raise self.error(f"{where} min_duration_ms must be positive", when, "min_duration_ms", rid)
        schedule = None
        if when.get("schedule") is not None:
            text = when["schedule"]
            try:
                schedule = parse_schedule(text)
            except ValueError as exc:
                raise self.error(f'{where} has invalid schedule "{text}": {exc}', when, "schedule", rid) from None
        rate_limit = self.rate_limit(raw, where, rid, decision)
        return Rule(
            id=rid, decision=decision, priority=priority or 0, reason=reason, timeout_ms=timeout_ms,
            action=self.string(when, "action", w, rid),
            tool_id=self.string(when, "tool_id", w, rid), tool_ids=self.strings(when, "tool_ids", w, rid),
            agent_id=self.string(when, "agent_id", w, rid), agent_ids=self.strings(when, "agent_ids", w, rid),
            labels=dict(labels), arguments=self.predicates(when, where, rid),
            min_step_count=min_steps, min_duration_ms=min_duration, schedule=schedule, rate_limit=rate_limit,
            description=self.string(raw, "description", where, rid, "") or "", file=self.name, line=line_of(raw))

    def rate_limit(self, raw: Mapping, where: str, rid: str, decision: str) -> RateLimit | None:
        block = raw.get("rate_limit")
        if block is None:
            return None
        if not isinstance(block, Mapping):
            raise self.error(f"{where}: rate_limit must be a mapping with max and window, got {_kind(block)}",
                             raw, "rate_limit", rid)
        self.unknown_keys(block, _RATE_KEYS, f"{where} rate_limit", rid)
        limit = self.integer(block, "max", f"{where}: rate_limit", rid)
        if limit is None or limit <= 0:
            raise self.error(f"{where} rate_limit.max must be positive", block, "max", rid)
        window = block.get("window")
        try:
            window_ns = parse_duration("" if window is None else window)
        except ValueError as exc:
            raise self.error(f"{where} rate_limit.window is invalid: {exc}", block, "window", rid) from None
        if window_ns <= 0:
            raise self.error(f'{where} rate_limit.window is invalid: "{window}" is not a positive duration',
                             block, "window", rid)
        if decision != "allow":
            self.warn(f"{where}: rate_limit is ignored: only allow decisions are rate limited", raw, "rate_limit")
        return RateLimit(limit, str(window), window_ns)

    def predicates(self, when: Mapping, where: str, rid: str) -> tuple[ArgumentPredicate, ...]:
        raw = when.get("arguments")
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise self.error(f"{where}: when.arguments must be a list of predicates, got {_kind(raw)}",
                             when, "arguments", rid)
        out = []
        for i, p in enumerate(raw):
            what = f"{where} argument predicate {i}"
            if not isinstance(p, Mapping):
                raise self.error(f"{what} must be a mapping with field and constraints, got {_kind(p)}", raw, i, rid)
            self.unknown_keys(p, _PREDICATE_KEYS, what, rid)
            name = self.string(p, "field", what, rid, "")
            if not name:
                raise self.error(f"{what} has empty field", p, "field", rid)
            what = f'{what} (field "{name}")'
            required = p.get("required", False)
            if required is None:
                required = False
            if not isinstance(required, bool):
                raise self.error(f"{what}: required must be true or false, got {required!r}", p, "required", rid)
            pattern = self.string(p, "pattern", what, rid, "") or ""
            regex = None
            if pattern:
                try:
                    regex = compile_re2(pattern)
                except UnsupportedPattern as exc:
                    raise self.error(f"{what}: pattern {pattern!r} is not supported by this engine: {exc}",
                                     p, "pattern", rid) from None
                if regex is None:
                    self.warn(f"{what}: pattern {pattern!r} is not a valid RE2 expression; this predicate never "
                              f"matches a present value", p, "pattern")
            one_of = self.strings(p, "one_of", what, rid)
            low, high = self.number(p, "min", what, rid), self.number(p, "max", what, rid)
            max_length = self.integer(p, "max_length", what, rid)
            if max_length is not None and max_length < 0:
                raise self.error(f"{what}: max_length must be non-negative", p, "max_length", rid)
            if low is not None and high is not None and low > high:
                raise self.error(f"{what}: min {low:g} is greater than max {high:g}; it could never match",
                                 p, "min", rid)
            if not (required or pattern or one_of or low is not None or high is not None or max_length is not None):
                raise self.error(f"{what} has no constraints", p, "field", rid)
            out.append(ArgumentPredicate(name, required, pattern, regex, one_of, low, high, max_length))
        return tuple(out)


def _where(rule: Rule) -> str:
    return f"{rule.file}:{rule.line}" if rule.line is not None else rule.file


def _check_priorities(rules: list[Rule]) -> None:
    """§8: priorities must be unique within an effective rule set."""
    seen: dict[int, Rule] = {}
    for rule in rules:
        first = seen.get(rule.priority)
        if first is not None:
            located = f" ({_where(first)} and {_where(rule)})" if first.line is not None or rule.line is not None \
                else ""
            raise PolicyError(f'duplicate rule priority: priority {rule.priority} used by both "{first.id}" and '
                              f'"{rule.id}"{located}', file=rule.file, line=rule.line, rule_id=rule.id)
        seen[rule.priority] = rule


def _parse_text(text: str | bytes, name: str) -> tuple[_File, list[str]]:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError(f"policy is not UTF-8 text: {exc}", file=name) from None
    try:
        doc = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(f"parsing policy YAML: {problem}", file=name,
                          line=mark.line + 1 if mark is not None else None) from None
    v = _Validator(name)
    return v.document(doc), v.warnings


def _version(sources: Mapping[str, str | bytes]) -> str:
    h = hashlib.sha256(b"rebuno-policy-sources/1\0")
    for name in sorted(sources):
        text = sources[name]
        data = text.encode("utf-8") if isinstance(text, str) else text
        key = name.encode("utf-8")
        h.update(len(key).to_bytes(4, "big") + key + len(data).to_bytes(8, "big") + data)
    return h.hexdigest()[:16]


def _engine(files: list[_File], source: str) -> RuleSet:
    rules = [r for f in files for r in f.rules]
    _check_priorities(rules)
    return RuleSet(tuple(sorted(rules, key=lambda r: r.priority)), files[0].default, source,
                   tuple(f.name for f in files))


# ------------------------------------------------------------------------ loaders --
def parse_policy(doc: Any, source: str = "<memory>") -> PolicySet:
    """A single-file policy from an already parsed YAML document (a mapping with ``rules``
    and ``default``; None = empty). ``version`` is ``doc:`` + a hash of the document's
    canonical JSON (prefer :func:`policy_from_sources`, whose version is the sources').

    Raises:
        PolicyError: naming ``source``, the rule id and the problem (§8).
    """
    v = _Validator(source)
    parsed = v.document(doc)
    canonical = json.dumps(doc, sort_keys=True, default=str, separators=(",", ":"))
    return PolicySet(source, "file", _engine([parsed], source),
                     version="doc:" + hashlib.sha256(canonical.encode()).hexdigest()[:16], warnings=tuple(v.warnings))


def _is_policy_name(name: str) -> bool:
    return name.lower().endswith(POLICY_SUFFIXES)


def _stem(name: str) -> str:
    return name[: name.rfind(".")]


def policy_from_sources(files: Mapping[str, str | bytes], origin: str = "<memory>") -> PolicySet:
    """Build a policy from its source files (what :func:`policy_sources` returns).

    Convention for ``files``:

    * ``{"": text}`` — a single-file policy (``--policy FILE``); errors name ``origin``.
    * otherwise a directory policy (``--policy DIR``, §6): keys are file names ending in
      ``.yaml``/``.yml`` (any case), without ``/``; the name without its extension is the
      agent id it governs, ``_global`` is the global file; of ``x.yaml`` and ``x.yml`` the
      later name (``x.yml``) wins, but both are validated. Errors name ``origin/<name>``.

    Texts may be ``str`` or UTF-8 ``bytes``. ``version`` hashes exactly these names and
    texts, so the same files always give the same version on every replica.

    Raises:
        PolicyError: an invalid file, a bad file name, no files, a priority clash between an
            agent file and ``_global.yaml``.
    """
    if not files:
        raise PolicyError("no policy files", file=origin)
    names = sorted(files)
    if "" in files:
        if len(files) > 1:
            raise PolicyError('a single-file policy ("" key) cannot be mixed with directory files', file=origin)
        parsed, file_warnings = _parse_text(files[""], origin)
        return PolicySet(origin, "file", _engine([parsed], origin), sources=MappingProxyType(dict(files)),
                         version=_version(files), warnings=tuple(file_warnings))
    base = origin.rstrip("/") or origin
    by_stem: dict[str, _File] = {}
    warnings: list[str] = []
    for name in names:
        if "/" in name or "\\" in name or "\0" in name or not _is_policy_name(name) or not _stem(name):
            raise PolicyError(f'"{name}" is not a policy file name (<agent-id>.yaml, <agent-id>.yml or _global.yaml)',
                              file=base)
        parsed, more = _parse_text(files[name], f"{base}/{name}")
        warnings += more
        by_stem[_stem(name)] = parsed  # sorted order: x.yml replaces x.yaml
    global_file = by_stem.pop(GLOBAL_STEM, None)
    extra = [global_file] if global_file is not None else []
    agents = {agent: _engine([f, *extra], f.name) for agent, f in sorted(by_stem.items())}
    fallback = _engine([global_file], global_file.name) if global_file is not None else None
    return PolicySet(base, "directory", fallback, MappingProxyType(agents), sources=MappingProxyType(dict(files)),
                     version=_version(files), warnings=tuple(warnings))


def policy_sources(path: str | Path) -> dict[str, str]:
    """Read a policy file or directory into the mapping :func:`policy_from_sources` takes:
    ``{"": text}`` for a file; for a directory ``{file name: text}`` of its regular
    ``.yaml``/``.yml`` files (subdirectories and other files ignored).

    Raises:
        PolicyError: missing or unreadable path, a directory with no YAML file, non-UTF-8 text.
    """
    p = Path(path)

    def read(f: Path) -> str:
        try:
            data = f.read_bytes()
        except OSError as e:
            raise PolicyError(f"cannot read policy: {e.strerror or e}", file=str(f)) from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PolicyError(f"policy is not UTF-8 text: {e}", file=str(f)) from None

    if p.is_dir():
        try:
            entries = sorted(p.iterdir())
        except OSError as e:
            raise PolicyError(f"cannot read policy directory: {e.strerror or e}", file=str(p)) from None
        out = {f.name: read(f) for f in entries if _is_policy_name(f.name) and f.is_file()}
        if not out:
            raise PolicyError("policy directory has no .yaml or .yml file", file=str(p))
        return out
    return {"": read(p)}


def load_policy(path: str | Path) -> PolicySet:
    """Load and validate a policy file or directory (``--policy PATH``).

    Raises:
        PolicyError: unreadable, not YAML, or invalid; the message names the file, the rule
            and the line.
    """
    return policy_from_sources(policy_sources(path), str(path))
