"""Exact, bounded checking of arithmetic equations written by a model (the Countdown verifier's core).

The model's text is untrusted. It is never passed to `eval`: it is checked
character by character, bounded in length, nesting depth and literal size, then
parsed with `ast` and walked under a whitelist of node types, and evaluated with
`fractions.Fraction` so that `6 / 4 * 2 == 3` holds exactly.

The bounds come *before* `ast.parse` because the parser itself can raise
`RecursionError`/`MemoryError` on deeply nested input, and `int()` on a
megabyte of digits is slow. With the bounds every check takes microseconds to
a few milliseconds whatever the input.

Accepted language (Countdown rules):
    non-negative integer literals written in ASCII digits (no leading zeros),
    the binary operators + - * /, parentheses and whitespace; optionally the
    target on one side of a single '=' ("expr = 80" or "80 = expr", see
    `check_equation`).
Rejected, each with its own reason: powers (** and ^), floor division (//),
modulo (%), decimals, names, calls, attributes, strings, unary minus and plus
(negation is not one of the four operations; every value reachable with it is
reachable without it), a number not given or used the wrong number of times,
and division by zero.

Every reason is a plain sentence meant for a person and, with `include_reason`,
for the model: malformed text is diagnosed token by token (`_check_structure`)
before `ast.parse`, so no Python parser message ever reaches a verdict.
"""

from __future__ import annotations

import ast
import operator
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Sequence

from r3rl.types import Verdict

__all__ = ["Limits", "DEFAULT_LIMITS", "ArithmeticRejected", "parse_expression", "evaluate", "check_equation"]


@dataclass(frozen=True)
class Limits:
    """Bounds applied to an expression before it is parsed."""

    max_chars: int = 1000  # longer text fails without being parsed
    max_depth: int = 100  # deepest parenthesis nesting accepted
    max_digits: int = 30  # longest integer literal accepted (keeps Fraction arithmetic small)
    # Each operator can add a level to the syntax tree, and building the tree recurses
    # in C (about 3 levels per Python frame of recursion limit), so they are bounded too.
    max_operators: int = 200


DEFAULT_LIMITS = Limits()

_ALLOWED_CHARS = frozenset("0123456789+-*/() ")
_DIGIT_RUN = re.compile(r"[0-9]+")
_BIN_OPS: dict[type, Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_OP_NAMES = {ast.Pow: "power (**)", ast.FloorDiv: "floor division (//)", ast.Mod: "modulo (%)",
             ast.MatMult: "matrix product (@)", ast.BitXor: "'^'", ast.BitAnd: "'&'", ast.BitOr: "'|'",
             ast.LShift: "'<<'", ast.RShift: "'>>'"}


#: failure classes of `check_equation` (CountdownTask.failure_classes adds "no_answer")
NOT_AN_EXPRESSION = "not_an_expression"
DISALLOWED_OPERATOR = "disallowed_operator"
DIVISION_BY_ZERO = "division_by_zero"
NUMBERS_NOT_USED_ONCE = "numbers_not_used_once"
WRONG_VALUE = "wrong_value"


class ArithmeticRejected(ValueError):
    """The expression is not in the accepted language; `reason` says why, for the verdict, and
    `failure_class` which kind of rejection it is (a malformed expression unless said otherwise)."""

    def __init__(self, reason: str, failure_class: str = NOT_AN_EXPRESSION):
        super().__init__(reason)
        self.reason = reason
        self.failure_class = failure_class


def _preview(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


_UNARY_REASON = "unary {sign} is not allowed; use only binary + - * / on the given numbers"
_ONE_EQUALS = "only one '=' is allowed, with the target number alone on one side (as in '(25 - 5) * 4 = 80')"
_IMPLICIT = "implicit multiplication like '2(3)' or '(2)(3)' is not allowed; write '*' between them"
_TOKEN = re.compile(r"[0-9]+|[-+*/()]")
_WORD = re.compile(r"[^\W\d]\w*")  # a name: a letter or underscore, then word characters


def _check_characters(expr: str) -> None:
    """Reject forbidden syntax with a specific reason before anything is parsed.

    Checked most telling first: "(3).real" is reported as a name, not a decimal point.
    """
    if "'" in expr or '"' in expr:
        raise ArithmeticRejected("strings are not allowed")
    word = _WORD.search(expr)
    if word:
        raise ArithmeticRejected(f"names, words and function calls are not allowed (found {_preview(word.group())})")
    for token, what, kind in (("**", "powers (**) are not allowed", DISALLOWED_OPERATOR),
                              ("//", "floor division (//) is not allowed", DISALLOWED_OPERATOR),
                              ("^", "'^' is not allowed (no powers)", DISALLOWED_OPERATOR),
                              ("%", "modulo (%) is not allowed", DISALLOWED_OPERATOR),
                              (".", "decimal numbers are not allowed; use the given integers", NOT_AN_EXPRESSION),
                              ("=", _ONE_EQUALS, NOT_AN_EXPRESSION)):
        if token in expr:
            raise ArithmeticRejected(what, kind)
    previous = "("  # the start of the text behaves like an opening parenthesis
    for ch in expr:
        if ch not in _ALLOWED_CHARS:
            raise ArithmeticRejected(
                f"character {ch!r} is not allowed; use only the given integers, + - * / and parentheses"
            )
        # Caught here, not only in the tree: a chain of 900 unary minuses makes ast.parse
        # recurse once per sign and can raise RecursionError.
        if ch in "+-" and previous in "(+-*/":
            raise ArithmeticRejected(_UNARY_REASON.format(sign="minus" if ch == "-" else "plus"), DISALLOWED_OPERATOR)
        if ch != " ":
            previous = ch


def _check_nesting(expr: str, max_depth: int) -> None:
    depth = 0
    for ch in expr:
        if ch == "(":
            depth += 1
            if depth > max_depth:
                raise ArithmeticRejected(f"parentheses nested deeper than {max_depth}")
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ArithmeticRejected("unbalanced parentheses: ')' without '('")
    if depth:
        raise ArithmeticRejected("unbalanced parentheses: '(' not closed")


def _check_structure(expr: str) -> None:
    """Diagnose malformed arithmetic in words before the Python parser sees it.

    Runs after `_check_characters` (so only digits, + - * /, parentheses and
    spaces remain and no sign is unary) and `_check_nesting`. Whatever passes is
    valid Python syntax, so `ast.parse` raises no message of its own.
    """
    previous = ""  # "", "number", "operator", "(" or ")"
    last_op = ""
    for m in _TOKEN.finditer(expr):
        tok = m.group()
        kind = "number" if tok[0].isdigit() else tok if tok in "()" else "operator"
        if kind == "number":
            if len(tok) > 1 and tok[0] == "0":
                raise ArithmeticRejected(f"numbers must not have leading zeros (found {tok!r}); write the given number as is")
            if previous == "number":
                raise ArithmeticRejected("two numbers stand next to each other with no operator between them")
            if previous == ")":
                raise ArithmeticRejected(_IMPLICIT)
        elif kind == "operator":
            if previous in ("", "(", "operator"):
                where = "at the start" if previous == "" else "after '('" if previous == "(" else f"after '{last_op}'"
                raise ArithmeticRejected(f"'{tok}' {where} has no number on its left")
            last_op = tok
        elif kind == "(":
            if previous in ("number", ")"):
                raise ArithmeticRejected(_IMPLICIT)
        else:  # ")"
            if previous == "(":
                raise ArithmeticRejected("empty parentheses '()' are not allowed")
            if previous == "operator":
                raise ArithmeticRejected(f"'{last_op}' before ')' has no number on its right")
        previous = kind
    if previous == "operator":
        raise ArithmeticRejected(f"'{last_op}' at the end has no number on its right")


def _rejected(node: ast.AST) -> ArithmeticRejected:
    """The rejection of a syntax-tree node outside the accepted language: an operator other than
    + - * / (or a unary sign) is a disallowed operator, anything else not an expression."""
    kind = DISALLOWED_OPERATOR if isinstance(node, (ast.BinOp, ast.UnaryOp)) else NOT_AN_EXPRESSION
    return ArithmeticRejected(_describe(node), kind)


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.BinOp):
        return _OP_NAMES.get(type(node.op), type(node.op).__name__) + " is not allowed"
    if isinstance(node, ast.UnaryOp):
        sign = {ast.USub: "minus", ast.UAdd: "plus"}.get(type(node.op), type(node.op).__name__)
        return _UNARY_REASON.format(sign=sign)
    if isinstance(node, ast.Constant):
        return f"literal {node.value!r} is not allowed; use the given integers"
    if isinstance(node, ast.Call):
        return "calls and implicit multiplication like '2(3)' are not allowed; write '*'"
    if isinstance(node, ast.Tuple):
        return "tuples and empty parentheses are not allowed"
    return "only numbers, + - * / and parentheses are allowed in an equation"


def parse_expression(expr: str, limits: Limits = DEFAULT_LIMITS) -> tuple[ast.Expression, list[int]]:
    """Validate an arithmetic expression; return its syntax tree and its integer literals in order.

    Raises ArithmeticRejected (with a reason meant for the verdict) for anything
    outside the accepted language. Never evaluates anything.
    """
    if len(expr) > limits.max_chars:
        raise ArithmeticRejected(f"expression too long ({len(expr)} characters, limit {limits.max_chars})")
    # Newlines and tabs are layout, not syntax; a bare newline would otherwise be a SyntaxError.
    expr = " ".join(expr.split())
    if not expr:
        raise ArithmeticRejected("the expression is empty")
    _check_characters(expr)
    _check_nesting(expr, limits.max_depth)
    for run in _DIGIT_RUN.findall(expr):
        if len(run) > limits.max_digits:
            raise ArithmeticRejected(f"number with {len(run)} digits is too long (limit {limits.max_digits})")
    n_operators = sum(expr.count(op) for op in "+-*/")
    if n_operators > limits.max_operators:
        raise ArithmeticRejected(f"too many operators ({n_operators}, limit {limits.max_operators})")
    _check_structure(expr)
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:  # not expected after _check_structure; its message is Python's, so it is not shown
        raise ArithmeticRejected("the expression is not valid arithmetic") from None
    except RecursionError:
        # Only when the caller already sits deep in the stack or lowered the recursion limit:
        # the bounds above keep the tree a few hundred levels deep at most.
        raise ArithmeticRejected("expression nests too deeply to parse") from None
    # ast.walk is iterative, so a long flat chain like 1+1+...+1 cannot exhaust the stack.
    for node in ast.walk(tree):
        if isinstance(node, (ast.Expression, ast.operator)):
            continue
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
            continue
        if isinstance(node, ast.Constant) and type(node.value) is int:
            continue
        raise _rejected(node)
    # Only digits can form literals here, so the digit runs are the literals, in reading order.
    return tree, [int(run) for run in _DIGIT_RUN.findall(expr)]


def evaluate(tree: ast.Expression) -> Fraction:
    """Exact value of a tree accepted by `parse_expression`. Division by zero raises ArithmeticRejected.

    Iterative post-order walk: the depth of a tree is not bounded by the
    parenthesis limit (a flat chain of 400 additions is 400 levels deep).
    """
    stack: list[tuple[ast.AST, bool]] = [(tree.body, False)]
    values: list[Fraction] = []
    while stack:
        node, children_done = stack.pop()
        if isinstance(node, ast.Constant):
            values.append(Fraction(node.value))
        elif isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
            if not children_done:
                stack.append((node, True))
                stack.append((node.right, False))
                stack.append((node.left, False))
                continue
            right, left = values.pop(), values.pop()
            if isinstance(node.op, ast.Div) and right == 0:
                raise ArithmeticRejected("division by zero is not allowed", DIVISION_BY_ZERO)
            values.append(_BIN_OPS[type(node.op)](left, right))
        else:  # only reachable if the tree did not come from parse_expression
            raise _rejected(node)
    (value,) = values
    return value


def _plain_number(text: str, limits: Limits) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= limits.max_digits


def _split_claimed_result(answer: str, limits: Limits) -> tuple[str, int | None]:
    """Split "expr = N" or "N = expr" into (expr, N); (answer, None) when there is no '='."""
    if "=" not in answer:
        return answer, None
    if answer.count("=") > 1:
        raise ArithmeticRejected(_ONE_EQUALS)
    lhs, rhs = (side.strip() for side in answer.split("="))
    if _plain_number(rhs, limits):
        return lhs, int(rhs)
    if _plain_number(lhs, limits):
        return rhs, int(lhs)
    if not lhs or not rhs:
        raise ArithmeticRejected("'=' needs the expression on one side and the target number on the other")
    raise ArithmeticRejected(f"one side of '=' must be the target number alone, as in '(25 - 5) * 4 = 80'; "
                             f"got {_preview(lhs)} = {_preview(rhs)}")


def _short_list(values: list[int], limit: int = 60) -> str:
    text = str(values)
    return text if len(text) <= limit else text[: limit - 4] + " ...]"


def _compare_numbers(used: list[int], given: Sequence[int]) -> str | None:
    """Why `used` is not a permutation of `given`, or None if it is."""
    used_c, given_c = Counter(used), Counter(given)
    if used_c == given_c:
        return None
    problems: list[str] = []
    for n in used_c:
        if n not in given_c:
            problems.append(f"{n} is not one of the given numbers")
        elif used_c[n] > given_c[n]:
            problems.append(f"{n} is used {used_c[n]} times but given {given_c[n]} time(s)")
    unused = sorted((given_c - used_c).elements())
    if unused:
        problems.append(f"not all numbers used (missing {_short_list(unused)})")
    if len(problems) > 3:
        problems = problems[:3] + [f"and {len(problems) - 3} more"]
    return f"each given number {_short_list(sorted(given))} must be used exactly once: " + "; ".join(problems)


def check_equation(answer: str, nums: Sequence[int], target: int, limits: Limits = DEFAULT_LIMITS) -> Verdict:
    """Does `answer` use every number of `nums` exactly once and evaluate exactly to `target`?

    `answer` is an expression such as "(25 - 5) * 4", optionally with the target
    on one side of an '=' ("(25 - 5) * 4 = 80" or "80 = (25 - 5) * 4": models
    write the whole equation either way); that number must then be the target
    itself. Never raises for any `answer`.
    """
    if len(answer) > limits.max_chars:
        return Verdict(False, f"answer too long ({len(answer)} characters, limit {limits.max_chars})",
                       NOT_AN_EXPRESSION)
    try:
        expr, claimed = _split_claimed_result(answer, limits)
        if claimed is not None and claimed != target:
            return Verdict(False, f"the equation says the result is {claimed}, but the target is {target}", WRONG_VALUE)
        tree, used = parse_expression(expr, limits)
        # Checked before evaluating, so only expressions over the given numbers are ever computed.
        problem = _compare_numbers(used, nums)
        if problem:
            return Verdict(False, problem, NUMBERS_NOT_USED_ONCE)
        value = evaluate(tree)
    except ArithmeticRejected as e:
        return Verdict(False, e.reason, e.failure_class)
    if value != target:
        shown = str(value) if value.denominator == 1 else f"{value} (= {float(value):.4g})"
        return Verdict(False, f"the expression equals {shown}, not the target {target}", WRONG_VALUE)
    return Verdict(True, "correct")
