"""Synthetic Rust templates: free functions with arithmetic, branches and loops.

Why this module exists: part of the embedded training set (synthetic.py). Each template fills a
fixed, rustfmt-shaped skeleton with random names and literals, and computes the function's
result in Python so the generated `#[test]`s assert true values.
"""

from __future__ import annotations

import random

from .synthetic_words import INT_TYPES, Item, Names, doc, trunc_rem, vis

_PREC = {"+": 1, "-": 1, "*": 2}
_CMP = {"<": lambda a, b: a < b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b,
        ">=": lambda a, b: a >= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}


def expr_tree(rng: random.Random, names: list[str], depth: int, need_var: bool = True) -> tuple:
    """A random integer expression; `need_var` keeps a variable in it so its type is known."""
    if depth == 0 or rng.random() < 0.3:
        if need_var or rng.random() < 0.6:
            return ("var", rng.choice(names))
        return ("lit", rng.randint(1, 9))
    if rng.random() < 0.8:
        left, right = expr_tree(rng, names, depth - 1, need_var), expr_tree(rng, names, depth - 1, False)
        return ("bin", rng.choice("+-*+"), left, right)
    method = rng.choice(["abs", "max", "min"])
    arg = None if method == "abs" else expr_tree(rng, names, 0, False)
    return ("call", method, expr_tree(rng, names, depth - 1, True), arg)


def _prec(t: tuple) -> int:
    return _PREC[t[1]] if t[0] == "bin" else 3


def render_expr(t: tuple, floats: bool = False) -> str:
    """Rust source of an expression tree; `floats` writes literals as `2.0` (for f64 code)."""
    kind = t[0]
    if kind == "var":
        return str(t[1])
    if kind == "lit":
        return f"{t[1]}.0" if floats else str(t[1])
    if kind == "call":
        recv = render_expr(t[2], floats)
        recv = f"({recv})" if t[2][0] == "bin" else recv
        return f"{recv}.{t[1]}({'' if t[3] is None else render_expr(t[3], floats)})"
    op, left, right = t[1], t[2], t[3]
    ls, rs = render_expr(left, floats), render_expr(right, floats)
    if _prec(left) < _PREC[op]:
        ls = f"({ls})"
    if _prec(right) < _PREC[op] or (_prec(right) == _PREC[op] and op == "-"):
        rs = f"({rs})"
    return f"{ls} {op} {rs}"


def eval_expr(t: tuple, env: dict[str, int]) -> int:
    kind = t[0]
    if kind == "var":
        return env[t[1]]
    if kind == "lit":
        return t[1]
    if kind == "call":
        recv = eval_expr(t[2], env)
        if t[1] == "abs":
            return abs(recv)
        arg = eval_expr(t[3], env)
        return max(recv, arg) if t[1] == "max" else min(recv, arg)
    a, b = eval_expr(t[2], env), eval_expr(t[3], env)
    return a + b if t[1] == "+" else a - b if t[1] == "-" else a * b


def _test_calls(rng: random.Random, fname: str, nargs: int, run, lo: int, hi: int,
                limit: int = 2**31 - 1) -> list[str]:
    """1-2 `assert_eq!` lines with random arguments whose result fits in `limit`."""
    lines: list[str] = []
    for _ in range(rng.randint(1, 2) * 3):
        args = [rng.randint(lo, hi) for _ in range(nargs)]
        try:
            out = run(*args)
        except OverflowError:
            continue
        if abs(out) <= limit and len(lines) < 2:
            call = f"{fname}({', '.join(map(str, args))})"
            lines.append(f"assert!({'' if out else '!'}{call});" if isinstance(out, bool)
                         else f"assert_eq!({call}, {out});")
    return lines


def arith_fn(rng: random.Random, nm: Names) -> Item:
    """`fn f(a: i32, b: i32) -> i32` with let-bindings and an optional if/else."""
    ty = rng.choice(INT_TYPES)
    params = [nm.var() for _ in range(rng.randint(1, 3))]
    fname = nm.func()
    body: list[str] = []
    steps: list[tuple[str, tuple]] = []
    scope = list(params)
    for _ in range(rng.randint(1, 3)):
        local = nm.var()
        tree = expr_tree(rng, scope, 2)
        steps.append((local, tree))
        body.append(f"    let {local} = {render_expr(tree)};")
        scope.append(local)
    final = expr_tree(rng, scope[-2:], 1)
    branch = rng.random() < 0.5
    if branch:
        op = rng.choice(list(_CMP))
        lhs, rhs = ("var", scope[-1]), expr_tree(rng, scope, 0, False)
        other = expr_tree(rng, scope, 1)
        body += [f"    if {render_expr(lhs)} {op} {render_expr(rhs)} {{", f"        {render_expr(final)}",
                 "    } else {", f"        {render_expr(other)}", "    }"]
    else:
        body.append(f"    {render_expr(final)}")

    def run(*args: int) -> int:
        env = dict(zip(params, args))
        for local, tree in steps:
            env[local] = eval_expr(tree, env)
            if abs(env[local]) > 2**30:
                raise OverflowError
        if branch and not _CMP[op](eval_expr(lhs, env), eval_expr(rhs, env)):
            return eval_expr(other, env)
        return eval_expr(final, env)

    sig = ", ".join(f"{p}: {ty}" for p in params)
    lines = doc(rng, f"Combines {', '.join(f'`{p}`' for p in params)} into one {ty}.")
    lines += [f"{vis(rng)}fn {fname}({sig}) -> {ty} {{", *body, "}"]
    tests = _test_calls(rng, fname, len(params), run, -5, 9)
    return Item("\n".join(lines), [(f"test_{fname}", tests)] if tests else [])


def _loop_accumulate(rng, nm, fname, n, acc):
    k, m, c = rng.randint(2, 5), rng.randint(1, 4), rng.randint(1, 3)
    inclusive = rng.random() < 0.5
    cmp = rng.choice(["==", "!="])
    code = [f"fn {fname}({n}: u32) -> u32 {{", f"    let mut {acc} = 0;",
            f"    for i in {'1..=' if inclusive else '0..'}{n} {{", f"        if i % {k} {cmp} 0 {{",
            f"            {acc} += i * {m};", "        } else {", f"            {acc} += {c};",
            "        }", "    }", f"    {acc}", "}"]

    def run(x):
        rng_ = range(1, x + 1) if inclusive else range(x)
        return sum(i * m if _CMP[cmp](i % k, 0) else c for i in rng_)
    return code, run, 1, (0, 20), f"Sums a weighted pattern over the first `{n}` numbers."


def _loop_digits(rng, nm, fname, n, acc):
    base = rng.choice([2, 8, 10, 10, 16])
    if rng.random() < 0.5:
        code = [f"fn {fname}(mut {n}: u64) -> u32 {{", f"    let mut {acc} = 0;", f"    while {n} > 0 {{",
                f"        {n} /= {base};", f"        {acc} += 1;", "    }", f"    {acc}", "}"]

        def run(x):
            r = 0
            while x > 0:
                x //= base
                r += 1
            return r
        return code, run, 1, (0, 5000), f"Counts the base-{base} digits of `{n}`."
    code = [f"fn {fname}(mut {n}: u64) -> u64 {{", f"    let mut {acc} = 0;", f"    while {n} > 0 {{",
            f"        {acc} += {n} % {base};", f"        {n} /= {base};", "    }", f"    {acc}", "}"]

    def run(x):
        r = 0
        while x > 0:
            r, x = r + x % base, x // base
        return r
    return code, run, 1, (0, 5000), f"Adds up the base-{base} digits of `{n}`."


def _loop_product(rng, nm, fname, n, acc):
    if rng.random() < 0.5:
        code = [f"fn {fname}({n}: u64) -> u64 {{", f"    let mut {acc} = 1;", f"    for i in 1..={n} {{",
                f"        {acc} *= i;", "    }", f"    {acc}", "}"]
    else:
        code = [f"fn {fname}({n}: u64) -> u64 {{", f"    (1..={n}).product()", "}"]

    def run(x):
        r = 1
        for i in range(1, x + 1):
            r *= i
        return r
    return code, run, 1, (0, 10), f"Multiplies the numbers from 1 to `{n}`."


def _loop_fib(rng, nm, fname, n, acc):
    a, b = rng.choice([("a", "b"), ("prev", "curr"), ("low", "high")])
    code = [f"fn {fname}({n}: u32) -> u64 {{", f"    let (mut {a}, mut {b}) = (0u64, 1u64);",
            f"    for _ in 0..{n} {{", f"        let next = {a} + {b};", f"        {a} = {b};",
            f"        {b} = next;", "    }", f"    {a}", "}"]

    def run(x):
        p, q = 0, 1
        for _ in range(x):
            p, q = q, p + q
        return p
    return code, run, 1, (0, 30), f"Returns the Fibonacci number at position `{n}`."


def _loop_gcd(rng, nm, fname, n, acc):
    code = [f"fn {fname}(mut a: u64, mut b: u64) -> u64 {{", "    while b != 0 {", "        let t = b;",
            "        b = a % b;", "        a = t;", "    }", "    a", "}"]

    def run(x, y):
        while y:
            x, y = y, x % y
        return x
    return code, run, 2, (1, 200), "Greatest common divisor (Euclid)."


def _loop_break(rng, nm, fname, n, acc):
    limit, m, c = nm.var(), rng.randint(2, 3), rng.randint(0, 2)
    code = [f"fn {fname}({n}: u32, {limit}: u32) -> u32 {{", f"    let mut x = {n} + 1;",
            f"    let mut {acc} = 0;", "    loop {", f"        if x >= {limit} {{", "            break;",
            "        }", f"        x = x * {m} + {c};", f"        {acc} += 1;", "    }", f"    {acc}", "}"]

    def run(x, lim):
        x, r = x + 1, 0
        while x < lim:
            x, r = x * m + c, r + 1
        return r
    return code, run, 2, (0, 60), f"Counts the steps until the value reaches `{limit}`."


def _collatz_step(n: str) -> list[str]:
    """rustfmt keeps an if/else expression on one line only while it is under 50 columns."""
    expr = f"if {n} % 2 == 0 {{ {n} / 2 }} else {{ 3 * {n} + 1 }}"
    if len(expr) < 50:
        return [f"        {n} = {expr};"]
    return [f"        {n} = if {n} % 2 == 0 {{", f"            {n} / 2", "        } else {",
            f"            3 * {n} + 1", "        };"]


def _loop_collatz(rng, nm, fname, n, acc):
    code = [f"fn {fname}(mut {n}: u64) -> u32 {{", f"    let mut {acc} = 0;", f"    while {n} > 1 {{",
            *_collatz_step(n), f"        {acc} += 1;",
            "    }", f"    {acc}", "}"]

    def run(x):
        r = 0
        while x > 1:
            x, r = (x // 2 if x % 2 == 0 else 3 * x + 1), r + 1
        return r
    return code, run, 1, (1, 50), f"Counts the Collatz steps from `{n}` down to 1."


def _loop_prime(rng, nm, fname, n, acc):
    code = [f"fn {fname}({n}: u32) -> bool {{", f"    if {n} < 2 {{", "        return false;", "    }",
            "    let mut i = 2;", f"    while i * i <= {n} {{", f"        if {n} % i == 0 {{",
            "            return false;", "        }", "        i += 1;", "    }", "    true", "}"]

    def run(x):
        return x >= 2 and all(x % i for i in range(2, int(x**0.5) + 1))
    return code, run, 1, (0, 100), f"Tells whether `{n}` is prime."


def _loop_continue(rng, nm, fname, n, acc):
    hi, k = nm.var(), rng.randint(2, 4)
    code = [f"fn {fname}({n}: i32, {hi}: i32) -> i32 {{", f"    let mut {acc} = 0;",
            f"    for x in {n}..{hi} {{", f"        if x % {k} != 0 {{", "            continue;", "        }",
            f"        {acc} += x;", "    }", f"    {acc}", "}"]

    def run(lo, h):
        return sum(x for x in range(lo, h) if trunc_rem(x, k) == 0)
    return code, run, 2, (-10, 30), f"Sums the multiples of {k} in `{n}..{hi}`."


_LOOPS = [_loop_accumulate, _loop_digits, _loop_product, _loop_fib, _loop_gcd, _loop_break,
          _loop_collatz, _loop_prime, _loop_continue]


def loop_fn(rng: random.Random, nm: Names) -> Item:
    """A function built around `for`, `while` or `loop`."""
    template = rng.choice(_LOOPS)
    fname, n, acc = nm.func(), nm.var(), nm.var()
    code, run, nargs, (lo, hi), text = template(rng, nm, fname, n, acc)
    code[0] = vis(rng) + code[0]
    tests = _test_calls(rng, fname, nargs, run, lo, hi, limit=2**63)
    return Item("\n".join(doc(rng, text) + code), [(f"test_{fname}", tests)] if tests else [])
