"""A minimal Go text/template interpreter for the subset `export.modelfile.go_template` emits (range over
.Messages, variables, if / else if / end, eq ne and len slice), so tests can render a Modelfile TEMPLATE the way
Ollama would and compare with the Jinja chat template."""

from __future__ import annotations

import re
import shlex

ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)


def _tokens(expr: str) -> list:
    lex = shlex.shlex(expr.replace("(", " ( ").replace(")", " ) "), posix=False)
    lex.whitespace_split = True
    return list(lex)


def _parse_expr(toks: list, i: int = 0):
    """Parse a call `f a b` or a single operand; returns (node, next index)."""
    args = []
    while i < len(toks) and toks[i] != ")":
        if toks[i] == "(":
            node, i = _parse_expr(toks, i + 1)
            args.append(node)
            i += 1  # skip ")"
        else:
            args.append(toks[i])
            i += 1
    return (args[0] if len(args) == 1 else ("call", args)), i


def _eval(node, scope: dict):
    if isinstance(node, tuple):
        fn, *args = node[1]
        vals = [_eval(a, scope) for a in args]
        if fn == "eq":
            return vals[0] == vals[1]
        if fn == "ne":
            return vals[0] != vals[1]
        if fn == "and":
            return all(vals)
        if fn == "len":
            return len(vals[0])
        if fn == "slice":
            return vals[0][vals[1]:]
        raise ValueError(f"unsupported function {fn}")
    if node.startswith('"'):
        return node[1:-1]
    if node.lstrip("-").isdigit():
        return int(node)
    if node.startswith("$."):
        return scope["$root"][node[2:]]
    if node.startswith("$"):
        return scope[node]
    if node.startswith("."):
        return scope["$dot"][node[1:]]
    raise ValueError(f"unsupported operand {node}")


def _parse(template: str) -> list:
    """Flat list of ("text", s) / ("action", s) items."""
    items, pos = [], 0
    for m in ACTION.finditer(template):
        if m.start() > pos:
            items.append(("text", template[pos:m.start()]))
        items.append(("action", m.group(1)))
        pos = m.end()
    if pos < len(template):
        items.append(("text", template[pos:]))
    return items


def _block(items: list, i: int, scope: dict, out: list, emit: bool) -> tuple[int, str]:
    """Run items from i until an `end`/`else...` at this level; returns (index of that item, its text)."""
    while i < len(items):
        kind, s = items[i]
        if kind == "text":
            if emit:
                out.append(s)
            i += 1
            continue
        if s == "end" or s.startswith("else"):
            return i, s
        if s.startswith("range "):
            m = re.match(r"range \$(\w+), \$(\w+) := (\S+)", s)
            seq = _eval(m.group(3), scope) if emit else []
            start = i + 1
            end = start
            if not seq:
                end, _ = _block(items, start, scope, out, False)
            for k, item in enumerate(seq):
                inner = dict(scope, **{"$" + m.group(1): k, "$" + m.group(2): item, "$dot": item})
                end, _ = _block(items, start, inner, out, emit)
            i = end + 1
            continue
        if s.startswith("if "):
            taken = False
            cond = s[3:]
            j = i + 1
            while True:
                ok = emit and not taken and bool(_eval(_parse_expr(_tokens(cond))[0], scope))
                j, stop = _block(items, j, scope, out, ok)
                taken = taken or ok
                if stop == "end":
                    break
                cond = stop[len("else if "):] if stop.startswith("else if ") else "true_"
                if cond == "true_":
                    j, stop = _block(items, j + 1, scope, out, emit and not taken)
                    break
                j += 1
            i = j + 1
            continue
        m = re.match(r"\$(\w+) := (.*)", s)
        if m:
            scope["$" + m.group(1)] = _eval(_parse_expr(_tokens(m.group(2)))[0], scope)
        elif emit:
            out.append(str(_eval(_parse_expr(_tokens(s))[0], scope)))
        i += 1
    return i, ""


def render(template: str, messages: list[dict]) -> str:
    """Render like Ollama: `.Messages` with Role/Content, `.System` the joined system messages."""
    msgs = [{"Role": m["role"], "Content": m["content"]} for m in messages]
    root = {"Messages": msgs, "System": "\n\n".join(m["content"] for m in messages if m["role"] == "system")}
    out: list[str] = []
    _block(_parse(template), 0, {"$root": root, "$dot": root}, out, True)
    return "".join(out)
