"""RE2 (Go ``regexp``) patterns evaluated with Python's :mod:`re`.

The policy language's argument ``pattern`` uses RE2 syntax (``spec/policy.md`` §4.5):
an unanchored search, ``$`` only at the very end of the text, ``\\d``/``\\w``/``\\s``/``\\b``
ASCII-only, ``{,3}`` a literal, no backreferences or lookaround, flags ``i m s U`` that may
appear anywhere and last to the end of the enclosing group. Python's dialect differs on
each of those points, so :func:`compile_re2` parses the RE2 syntax itself and emits an
equivalent Python pattern that needs no global flags.

* A pattern RE2 rejects (``[invalid(``, ``a**``, ``(?=x)``, ``\\1``, ``x{1001}``) compiles to
  ``None``: the caller's predicate then never matches, as the spec requires.
* A valid RE2 pattern this translation cannot express faithfully raises
  :class:`UnsupportedPattern` (today only the Unicode classes ``\\pL``, ``\\p{Greek}``,
  ``\\PN``): the policy loader refuses the file instead of guessing (fail closed).

Python's engine backtracks where RE2 is linear: a pathological pattern (``(a+)+$``) can
be slow on a long argument. Policy authors own the patterns; keep them simple.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["compile_re2", "translate_re2", "UnsupportedPattern"]

_MAX_RUNE = 0x10FFFF
_MAX_REPEAT = 1000
_MAX_DEPTH = 1000


class UnsupportedPattern(ValueError):
    """A valid RE2 pattern that this translation cannot evaluate faithfully."""


class _Invalid(Exception):
    """The pattern is not valid RE2 syntax."""


# Perl and POSIX classes are ASCII-only in RE2: (lo, hi) code point ranges.
_PERL = {
    "d": ((0x30, 0x39),),
    "s": ((0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)),
    "w": ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)),
}
_POSIX = {
    "alnum": ((0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)),
    "alpha": ((0x41, 0x5A), (0x61, 0x7A)),
    "ascii": ((0x00, 0x7F),),
    "blank": ((0x09, 0x09), (0x20, 0x20)),
    "cntrl": ((0x00, 0x1F), (0x7F, 0x7F)),
    "digit": ((0x30, 0x39),),
    "graph": ((0x21, 0x7E),),
    "lower": ((0x61, 0x7A),),
    "print": ((0x20, 0x7E),),
    "punct": ((0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)),
    "space": ((0x09, 0x0D), (0x20, 0x20)),
    "upper": ((0x41, 0x5A),),
    "word": ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)),
    "xdigit": ((0x30, 0x39), (0x41, 0x46), (0x61, 0x66)),
}
_WORD = r"[0-9A-Za-z_]"
_C_ESCAPES = {"a": 0x07, "f": 0x0C, "n": 0x0A, "r": 0x0D, "t": 0x09, "v": 0x0B}


def _clean(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _negate(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, next_lo = [], 0
    for lo, hi in _clean(ranges):
        if next_lo <= lo - 1:
            out.append((next_lo, lo - 1))
        next_lo = hi + 1
    if next_lo <= _MAX_RUNE:
        out.append((next_lo, _MAX_RUNE))
    return out


def _ascii_fold(ranges: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    """Case-fold closure of an ASCII class, as RE2 computes it under ``(?i)``."""
    out = list(ranges)
    for lo, hi in ranges:
        for c in range(lo, hi + 1):
            ch = chr(c)
            if ch.isalpha():
                out.append((ord(ch.swapcase()),) * 2)
                if ch in "sS":
                    out.append((0x17F, 0x17F))    # LATIN SMALL LETTER LONG S
                elif ch in "kK":
                    out.append((0x212A, 0x212A))  # KELVIN SIGN
    return _clean(out)


def _class_char(c: int) -> str:
    ch = chr(c)
    if ch.isascii() and ch.isalnum():
        return ch
    return f"\\u{c:04x}" if c <= 0xFFFF else f"\\U{c:08x}"


def _class_body(ranges: list[tuple[int, int]]) -> str:
    return "".join(_class_char(lo) if lo == hi else f"{_class_char(lo)}-{_class_char(hi)}" for lo, hi in ranges)


# ------------------------------------------------------------------ syntax tree --
@dataclass
class _Node:
    py: str          # the Python pattern for this node
    mult: int = 1    # largest product of nested x{n,m} counts on any path (RE2 caps it at 1000)


@dataclass
class _Flags:
    fold: bool = False        # i
    multiline: bool = False   # m (RE2's default is one-line: ^/$ at text edges only)
    dotnl: bool = False       # s
    ungreedy: bool = False    # U

    def copy(self) -> "_Flags":
        return _Flags(self.fold, self.multiline, self.dotnl, self.ungreedy)


class _Parser:
    def __init__(self, pattern: str) -> None:
        self.s = pattern
        self.i = 0

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.s[j] if j < len(self.s) else ""

    # --- groups and alternation -------------------------------------------------
    def parse(self) -> str:
        node = self.alternation(_Flags(), 0)
        if self.i < len(self.s):  # only a ')' stops alternation early
            raise _Invalid("unexpected )")
        return node.py

    def alternation(self, flags: _Flags, depth: int) -> _Node:
        if depth > _MAX_DEPTH:
            raise _Invalid("expression nests too deeply")
        alternatives: list[list[_Node]] = [[]]
        last_was_repeat = False
        while self.i < len(self.s):
            c = self.s[self.i]
            seq = alternatives[-1]
            if c == ")":
                break
            if c == "|":
                self.i += 1
                alternatives.append([])
                last_was_repeat = False
                continue
            if c in "*+?{":
                parsed = self.repeat_op()
                if parsed is not None:
                    lo, hi = parsed
                    if last_was_repeat:
                        raise _Invalid("invalid nested repetition operator")
                    if not seq:
                        raise _Invalid("missing argument to repetition operator")
                    seq[-1] = self.apply_repeat(seq[-1], lo, hi, flags)
                    last_was_repeat = True
                    continue
                # a '{' that does not start a valid repeat is a literal
                self.i += 1
                seq.append(self.literal(ord("{"), flags))
                last_was_repeat = False
                continue
            last_was_repeat = False
            if c == "(":
                node = self.group(flags, depth)
                if node is not None:
                    seq.append(node)
                continue
            self.i += 1
            if c == "^":
                seq.append(_Node(r"(?m:^)" if flags.multiline else r"\A"))
            elif c == "$":
                seq.append(_Node(r"(?m:$)" if flags.multiline else r"\Z"))
            elif c == ".":
                seq.append(_Node(r"(?s:.)" if flags.dotnl else r"[^\n]"))
            elif c == "[":
                seq.append(self.char_class(flags))
            elif c == "\\":
                seq.extend(self.escape(flags))
            else:
                seq.append(self.literal(ord(c), flags))
        if len(alternatives) == 1:
            return _concat(alternatives[0])
        parts = [_concat(a) for a in alternatives]
        return _Node("(?:" + "|".join(p.py for p in parts) + ")", max(p.mult for p in parts))

    def group(self, flags: _Flags, depth: int) -> _Node | None:
        """Parse from '(' to its ')'. Returns None for a bare flag setting like ``(?i)``,
        which changes ``flags`` in place for the rest of the enclosing group."""
        self.i += 1
        inner = flags.copy()
        if self.peek() == "?":
            name_start = 3 if self.s.startswith("P<", self.i + 1) else 2 if self.peek(1) == "<" else 0
            if name_start:
                end = self.s.find(">", self.i)
                if end < 0:
                    raise _Invalid("invalid named capture")
                name = self.s[self.i + name_start:end]
                if not name or not all(ch.isascii() and (ch.isalnum() or ch == "_") for ch in name):
                    raise _Invalid("invalid named capture")
                self.i = end + 1
            else:
                self.i += 1
                sign, saw_flag = 1, False
                while True:
                    ch = self.peek()
                    self.i += 1
                    if ch in ("i", "m", "s", "U"):
                        attr = {"i": "fold", "m": "multiline", "s": "dotnl", "U": "ungreedy"}[ch]
                        setattr(inner, attr, sign > 0)
                        saw_flag = True
                    elif ch == "-" and sign > 0:
                        sign, saw_flag = -1, False
                    elif ch in (":", ")"):
                        if sign < 0 and not saw_flag:
                            raise _Invalid("invalid or unsupported Perl syntax")
                        if ch == ")":
                            flags.fold, flags.multiline = inner.fold, inner.multiline
                            flags.dotnl, flags.ungreedy = inner.dotnl, inner.ungreedy
                            return None
                        break
                    else:
                        raise _Invalid("invalid or unsupported Perl syntax")
        node = self.alternation(inner, depth + 1)
        if self.peek() != ")":
            raise _Invalid("missing closing )")
        self.i += 1
        return _Node(f"(?:{node.py})", node.mult)

    # --- repetition -------------------------------------------------------------
    def repeat_op(self) -> tuple[int, int] | None:
        """Consume a repetition operator; (min, max) with max -1 = unbounded, or None when
        a '{' does not start one (nothing consumed then)."""
        c = self.s[self.i]
        if c != "{":
            self.i += 1
            return {"*": (0, -1), "+": (1, -1), "?": (0, 1)}[c]
        m = re.compile(r"\{(0|[1-9][0-9]*)(?:(,)(0|[1-9][0-9]*)?)?\}").match(self.s, self.i)
        if m is None:
            return None
        lo = int(m.group(1))
        hi = lo if m.group(2) is None else -1 if m.group(3) is None else int(m.group(3))
        if lo > _MAX_REPEAT or hi > _MAX_REPEAT or (hi >= 0 and lo > hi):
            raise _Invalid("invalid repeat count")
        self.i = m.end()
        return lo, hi

    def apply_repeat(self, node: _Node, lo: int, hi: int, flags: _Flags) -> _Node:
        lazy = self.peek() == "?"
        if lazy:
            self.i += 1
        greedy = lazy == flags.ungreedy
        if (lo, hi) == (0, -1):
            op = "*"
        elif (lo, hi) == (1, -1):
            op = "+"
        elif (lo, hi) == (0, 1):
            op = "?"
        elif hi == lo:
            op = f"{{{lo}}}"
        elif hi < 0:
            op = f"{{{lo},}}"
        else:
            op = f"{{{lo},{hi}}}"
        mult = node.mult
        if op.startswith("{"):
            # RE2's repeatIsValid: x{n,m} counts as m copies (n when unbounded); {0} hides
            # what it repeats, {0,} is transparent.
            size = hi if hi >= 0 else lo
            if (lo >= 2 or hi >= 2) and size * mult > _MAX_REPEAT:
                raise _Invalid("invalid repeat count")
            mult = 1 if hi == 0 else size * mult if size else mult
        return _Node(f"(?:{node.py}){op}{'' if greedy else '?'}", mult)

    # --- atoms ------------------------------------------------------------------
    def literal(self, c: int, flags: _Flags) -> _Node:
        text = re.escape(chr(c))
        if flags.fold and chr(c).lower() != chr(c).upper():
            return _Node(f"(?i:{text})")
        return _Node(text)

    def escape(self, flags: _Flags) -> list[_Node]:
        """After a backslash outside a class."""
        c = self.peek()
        if c == "":
            raise _Invalid("trailing backslash at end of expression")
        simple = {"A": r"\A", "z": r"\Z",
                  "b": rf"(?:(?<={_WORD})(?!{_WORD})|(?<!{_WORD})(?={_WORD}))",
                  "B": rf"(?:(?<={_WORD})(?={_WORD})|(?<!{_WORD})(?!{_WORD}))"}
        if c in simple:
            self.i += 1
            return [_Node(simple[c])]
        if c == "C":
            raise _Invalid("invalid escape sequence \\C")
        if c == "Q":
            end = self.s.find("\\E", self.i + 1)
            lit = self.s[self.i + 1:] if end < 0 else self.s[self.i + 1:end]
            self.i = len(self.s) if end < 0 else end + 2
            return [self.literal(ord(ch), flags) for ch in lit]
        if c in "pP":
            raise UnsupportedPattern(f"Unicode class \\{c}… is not supported")
        if c.lower() in _PERL:
            self.i += 1
            # already case-folded where RE2 folds it, so no (?i:) wrapper
            return [_class_node(_perl_ranges(c, flags.fold), False, False)]
        return [self.literal(self.escaped_char(), flags)]

    def escaped_char(self) -> int:
        """An ordinary single-character escape, the backslash already consumed."""
        c = self.peek()
        if c == "":
            raise _Invalid("trailing backslash at end of expression")
        self.i += 1
        if c.isascii() and not c.isalnum():
            return ord(c)
        if c in "1234567" and not ("0" <= self.peek() <= "7"):
            raise _Invalid("backreferences are not supported")
        if "0" <= c <= "7":
            value = ord(c) - 48
            for _ in range(2):
                if "0" <= self.peek() <= "7":
                    value = value * 8 + ord(self.peek()) - 48
                    self.i += 1
            return value
        if c == "x":
            if self.peek() == "{":
                end = self.s.find("}", self.i)
                digits = self.s[self.i + 1:end] if end > 0 else ""
                if not digits or not all(d in "0123456789abcdefABCDEF" for d in digits) or int(digits, 16) > _MAX_RUNE:
                    raise _Invalid("invalid escape sequence")
                self.i = end + 1
                return int(digits, 16)
            digits = self.s[self.i:self.i + 2]
            if len(digits) < 2 or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise _Invalid("invalid escape sequence")
            self.i += 2
            return int(digits, 16)
        if c in _C_ESCAPES:
            return _C_ESCAPES[c]
        raise _Invalid(f"invalid escape sequence \\{c}")

    def char_class(self, flags: _Flags) -> _Node:
        """After '[' up to and including ']'."""
        negated = self.peek() == "^"
        if negated:
            self.i += 1
        ranges: list[tuple[int, int]] = []
        first = True
        while first or self.peek() != "]":
            if self.peek() == "":
                raise _Invalid("missing closing ]")
            first = False
            if self.s.startswith("[:", self.i):
                end = self.s.find(":]", self.i + 2)
                if end >= 0:
                    name = self.s[self.i + 2:end]
                    neg = name.startswith("^")
                    base = _POSIX.get(name[1:] if neg else name)
                    if base is None:
                        raise _Invalid(f"invalid character class range [:{name}:]")
                    self.i = end + 2
                    ranges += _group(base, neg, flags.fold)
                    continue
            if self.peek() == "\\":
                nxt = self.peek(1)
                if nxt in ("p", "P"):
                    raise UnsupportedPattern(f"Unicode class \\{nxt}… is not supported")
                if nxt.lower() in _PERL and nxt != "":
                    self.i += 2
                    ranges += _perl_ranges(nxt, flags.fold)
                    continue
            lo = self.class_char()
            hi = lo
            if self.peek() == "-" and self.peek(1) not in ("]", ""):
                self.i += 1
                hi = self.class_char()
                if hi < lo:
                    raise _Invalid("invalid character class range")
            ranges.append((lo, hi))
        self.i += 1
        return _class_node(_clean(ranges), negated, flags.fold)

    def class_char(self) -> int:
        c = self.peek()
        if c == "":
            raise _Invalid("missing closing ]")
        self.i += 1
        if c == "\\":
            return self.escaped_char()
        return ord(c)


def _perl_ranges(letter: str, fold: bool) -> list[tuple[int, int]]:
    return _group(_PERL[letter.lower()], letter.isupper(), fold)


def _group(base: tuple[tuple[int, int], ...], negated: bool, fold: bool) -> list[tuple[int, int]]:
    """A Perl/POSIX group; under (?i) RE2 folds it before negating."""
    ranges = _ascii_fold(base) if fold else list(base)
    return _negate(ranges) if negated else ranges


def _class_node(ranges: list[tuple[int, int]], negated: bool, fold: bool) -> _Node:
    ranges = _clean(ranges)
    if not ranges:
        return _Node(r"(?s:.)" if negated else r"(?!)")
    body = ("^" if negated else "") + _class_body(ranges)
    return _Node(f"(?i:[{body}])" if fold else f"[{body}]")


def _concat(nodes: list[_Node]) -> _Node:
    return _Node("".join(n.py for n in nodes), max((n.mult for n in nodes), default=1))


def translate_re2(pattern: str) -> str | None:
    """The Python equivalent of RE2 ``pattern``, or None when RE2 rejects it.

    Raises:
        UnsupportedPattern: valid RE2 that has no faithful Python translation here
            (Unicode classes; nesting too deep for Python's recursion limit).
    """
    try:
        return _Parser(pattern).parse()
    except _Invalid:
        return None
    except RecursionError:
        raise UnsupportedPattern("the pattern nests too deeply") from None


def compile_re2(pattern: str) -> re.Pattern[str] | None:
    """Compile RE2 ``pattern`` for unanchored ``search``; None when RE2 rejects it.

    Raises:
        UnsupportedPattern: as :func:`translate_re2`.
    """
    translated = translate_re2(pattern)
    if translated is None:
        return None
    try:
        return re.compile(translated)
    except RecursionError:
        raise UnsupportedPattern("the pattern nests too deeply") from None
    except (re.error, OverflowError):  # pragma: no cover - the translation is always valid Python
        return None
