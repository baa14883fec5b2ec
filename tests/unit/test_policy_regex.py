"""RE2 patterns (``spec/policy.md`` §4.5) evaluated through ``kernel._policy_regex``:
Go ``regexp`` semantics where Python's ``re`` differs, and RE2's rejections."""

from __future__ import annotations

import pytest

from kernel._policy_regex import UnsupportedPattern, compile_re2, translate_re2

INVALID = None


def search(pattern: str, text: str) -> bool | None:
    rx = compile_re2(pattern)
    return None if rx is None else rx.search(text) is not None


@pytest.mark.parametrize("pattern, text, expected", [
    # basics: unanchored search
    ("^ls", "ls -la", True), ("^ls", "rm", False), ("rm ", "sudo rm -rf", True), ("", "", True), ("a|", "", True),
    ("a.c", "abc", True), ("a.c", "a\nc", False), ("(?s)a.c", "a\nc", True),
    # $ is the end of the text (no "before a final newline"); (?m) makes ^/$ line anchors
    ("^ls$", "ls", True), ("^ls$", "ls\n", False), (r"a\z", "a\n", False), (r"a\z", "a", True),
    ("(?m)^ls$", "x\nls\ny", True), ("(?m)^ls$", "x\nlsy", False), (r"\Aa", "ba", False), ("(?m)a$", "a\n", True),
    # Perl classes and \b are ASCII-only
    (r"\d+", "٣", False), (r"\d+", "3", True), (r"\w", "é", False), (r"\s", "\v", False), (r"\s", "\t", True),
    (r"\bfoo\b", "a foo b", True), (r"\bfoo\b", "éfooé", True), (r"\bfoo\b", "xfoo", False),
    (r"\B", "", True), (r"a\Bb", "ab", True), (r"[\d]", "5", True), (r"[^\d]", "5", False), (r"[\D]", "x", True),
    (r"[^\S]", " ", True), (r"[\w-]+$", "a-b", True),
    # case folding, flags anywhere, scoped to the group
    ("(?i)é", "É", True), ("(?i)ABC", "xabcx", True), ("a(?i)b|c", "C", True), ("(a(?i)b)c", "aBC", False),
    ("(a(?i)b)c", "aBc", True), ("(?i:a)b", "AB", False), ("(?i)[^a]", "A", False), (r"(?i)\W", "\u017f", False),
    ("(?i)k", "\u212a", True), ("(?i-i)a", "A", False), ("(?U)a+", "aaa", True), ("(?U)a+?b", "aab", True),
    # braces: only a valid {n}, {n,}, {n,m} repeats; anything else is literal
    ("a{,3}", "a{,3}", True), ("a{,3}", "aa", False), ("x{01}", "x{01}", True), ("a{2}", "aa", True),
    ("a{2,}", "a", False), ("a{1,2}b", "ab", True), ("{", "{", True), ("a{x}", "a{x}", True),
    ("x{1000}", "x" * 1000, True), ("(x{10}){100}", "", False), ("^*a", "a", True),
    # classes
    ("[[:alpha:]]+", "abc", True), ("[[:^alpha:]]", "a", False), ("[[:digit:][:upper:]]", "Q", True),
    ("(?i)[[:upper:]]", "q", True), ("[]a]", "]", True), ("[^]a]", "]", False), ("[a-]", "-", True),
    (r"[\]]", "]", True), ("[a-c-e]", "-", True), (r"[\x41-\x43]", "B", True), ("[^\\x00-\\x{10FFFF}]", "a", False),
    ("[[]", "[", True),
    # escapes
    (r"\Qa.b\E", "axb", False), (r"\Qa.b\E", "a.b", True), (r"\Qa.b", "a.b", True), (r"\x41", "A", True),
    (r"\x{1F600}", "\U0001F600", True), (r"\101", "A", True), (r"\0", "\0", True), (r"\_", "_", True),
    (r"\.", ".", True), (r"\.", "a", False), (r"\n", "\n", True), (r"\v", "\v", True),
    # groups
    ("(?P<n>a)", "a", True), ("(?<n>a)", "a", True), ("(?:ab)+$", "abab", True), ("()*", "", True),
    # RE2 rejects these: the predicate never matches
    ("[invalid(", "anything", INVALID), ("a**", "a", INVALID), ("a*+", "a", INVALID), ("a{2}{3}", "", INVALID),
    ("a??? ", "a", INVALID), ("(?=x)", "x", INVALID), ("(?!x)", "", INVALID), ("(?<=x)", "", INVALID),
    ("(?>x)", "x", INVALID), ("(?#c)", "", INVALID), (r"\1", "", INVALID), (r"(a)\1", "aa", INVALID),
    ("x{1001}", "x", INVALID), ("(x{100}){11}", "", INVALID), ("x{2,1}", "", INVALID), ("*a", "a", INVALID),
    ("a|*", "a", INVALID), ("(*)", "", INVALID), (r"\Z", "", INVALID), (r"\e", "", INVALID), (r"\C", "", INVALID),
    ("(?P<>a)", "a", INVALID), ("(?P<a-b>x)", "x", INVALID), ("(?P=n)", "", INVALID), ("(?i-)", "", INVALID),
    ("(?-)", "", INVALID), ("(?x)", "", INVALID), ("a)", "", INVALID), ("(a", "", INVALID), ("\\", "", INVALID),
    ("[a", "", INVALID), ("[z-a]", "a", INVALID), ("[[:foo:]]", "a", INVALID), (r"[\b]", "", INVALID),
    (r"\x{110000}", "", INVALID), (r"\x{}", "", INVALID), (r"\xZ1", "", INVALID), ("(?i", "", INVALID),
])
def test_re2_semantics(pattern: str, text: str, expected: bool | None) -> None:
    assert search(pattern, text) is expected


@pytest.mark.parametrize("pattern", [r"\pL", r"\p{Greek}", r"\PN", r"[\p{Han}a]", r"\p{^Greek}", "(" * 600 + ")" * 600])
def test_unicode_classes_are_unsupported(pattern: str) -> None:
    with pytest.raises(UnsupportedPattern):
        compile_re2(pattern)


def test_translation_needs_no_global_flags() -> None:
    # the output is valid Python with only scoped flags, so it composes safely
    out = translate_re2("(?i)a\n(?m)^b$(?s).")
    assert out is not None and not out.startswith("(?i)")
    assert compile_re2("(?i)a\n(?m)^b$(?s).").search("A\nB\n")
    assert not compile_re2("(?i)a\n(?m)^b$.").search("A\nB\n")
