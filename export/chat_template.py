"""Take a Jinja chat template apart by example, so other runtimes can be given the same format.

Rendering a few conversations with marker contents recovers, for each role, the text before and after a message,
the generation prompt, a default preamble inserted when no system message comes first (SmolLM2 does this), and the
end-of-turn strings. The parts are checked by rebuilding several conversations and comparing with the real
template; a template that is not "prefix + content + suffix" per role is reported as untranslatable, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

Render = Callable[[list[dict[str, str]], bool], str]  # (messages, add_generation_prompt) -> text
ROLES = ("system", "user", "assistant")
MARK = {"system": "\x01SYSTEM-MARK\x01", "user": "\x01USER-MARK\x01", "assistant": "\x01ASSISTANT-MARK\x01"}


class UntranslatableTemplate(ValueError):
    pass


@dataclass
class TemplateParts:
    prefix: dict[str, str]
    suffix: dict[str, str]
    generation: str
    default_system: str = ""  # emitted before the first message when it is not a system message
    bos: str = ""  # emitted once at the very start
    stops: list[str] = field(default_factory=list)

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        """What the parts produce; must equal the Jinja template's output."""
        out = [self.bos]
        for i, m in enumerate(messages):
            if i == 0 and m["role"] != "system":
                out.append(self.default_system)
            out += [self.prefix[m["role"]], m["content"], self.suffix[m["role"]]]
        if add_generation_prompt:
            out.append(self.generation)
        return "".join(out)


def _split(text: str, marker: str, where: str) -> tuple[str, str]:
    if text.count(marker) != 1:
        raise UntranslatableTemplate(f"{where}: message content appears {text.count(marker)} times in the output")
    before, after = text.split(marker)
    return before, after


def _strip_prefix(text: str, prefix: str, where: str) -> str:
    if not text.startswith(prefix):
        raise UntranslatableTemplate(f"{where}: expected the output to start with {prefix!r}")
    return text[len(prefix):]


def analyze(render: Render, bos_token: str | None = None, special_tokens: list[str] | None = None,
            eos_token: str | None = None) -> TemplateParts:
    """Recover the per-role parts of a chat template; raises UntranslatableTemplate when they do not exist."""
    s = {"role": "system", "content": MARK["system"]}
    u = {"role": "user", "content": MARK["user"]}
    a = {"role": "assistant", "content": MARK["assistant"]}
    try:
        only_sys = render([s], False)
        sys_user = render([s, u], False)
        sys_user_gen = render([s, u], True)
        sua = render([s, u, a], False)
        only_user = render([u], False)
    except Exception as e:  # template raised (e.g. "roles must alternate"): not a per-role template
        raise UntranslatableTemplate(f"the template refused a probe conversation: {e}") from None
    errors = []
    for bos in dict.fromkeys(["", bos_token or ""]):  # the simplest explanation first: bos as part of a prefix
        try:
            parts = _parts(bos, only_sys, sys_user, sys_user_gen, sua, only_user)
            _check(parts, render)
            break
        except UntranslatableTemplate as e:
            errors.append(str(e))
    else:
        raise UntranslatableTemplate("; ".join(errors))
    parts.stops = stop_strings(parts, special_tokens or [], eos_token)
    return parts


def _parts(bos: str, only_sys: str, sys_user: str, sys_user_gen: str, sua: str, only_user: str) -> TemplateParts:
    pre_sys, suf_sys = _split(_strip_prefix(only_sys, bos, "system"), MARK["system"], "system")
    rest = _strip_prefix(sys_user, bos + pre_sys + MARK["system"] + suf_sys, "system+user")
    pre_user, suf_user = _split(rest, MARK["user"], "system+user")
    generation = _strip_prefix(sys_user_gen, sys_user, "generation prompt")
    rest = _strip_prefix(sua, sys_user, "system+user+assistant")
    pre_asst, suf_asst = _split(rest, MARK["assistant"], "system+user+assistant")
    head, _ = _split(_strip_prefix(only_user, bos, "user"), MARK["user"], "user")
    if not head.endswith(pre_user):
        raise UntranslatableTemplate("user-only: the user prefix differs from the one after a system message")
    return TemplateParts(
        prefix={"system": pre_sys, "user": pre_user, "assistant": pre_asst},
        suffix={"system": suf_sys, "user": suf_user, "assistant": suf_asst},
        generation=generation, default_system=head[: len(head) - len(pre_user)], bos=bos,
    )


PROBES: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Hello there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c"}],
    [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y\nz"}, {"role": "user", "content": "w"},
     {"role": "assistant", "content": "v"}],
]


def _check(parts: TemplateParts, render: Render) -> None:
    for msgs in PROBES:
        for gen in (True, False):
            if msgs[-1]["role"] == "assistant" and gen:
                continue
            want = render(msgs, gen)
            if parts.render(msgs, gen) != want:
                raise UntranslatableTemplate(f"rebuilding a {len(msgs)}-message conversation from per-role parts "
                                             f"does not reproduce the template (got {want[:80]!r}...)")


def stop_strings(parts: TemplateParts, special_tokens: list[str], eos_token: str | None) -> list[str]:
    """Every string that ends an assistant turn: eos, the special tokens closing a reply or opening the next turn."""
    out: list[str] = []

    def add(t: str | None) -> None:
        if t and t not in out:
            out.append(t)

    add(eos_token)
    closing = parts.suffix["assistant"]
    for _, t in sorted((closing.find(t), t) for t in special_tokens if t and t in closing):
        add(t)
    opening = parts.prefix["user"].lstrip()  # the token that opens the next turn: the model should never write it
    for t in special_tokens:
        if t and opening.startswith(t):
            add(t)
    if len(out) <= (1 if eos_token else 0):  # plain-text formats ("### Response:"): use the literal markers
        add(parts.suffix["assistant"].strip())
        add(parts.prefix["user"].strip())
    return out


def hf_render(tokenizer) -> Render:
    """A Render backed by transformers' own chat template rendering."""

    def render(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    return render


def special_tokens_of(tokenizer) -> list[str]:
    """Special and added control tokens (e.g. <|im_start|>, <|im_end|>) of a transformers tokenizer."""
    tokens = set(tokenizer.all_special_tokens)
    for tok in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(tok, "special", False):
            tokens.add(str(tok))
    return sorted(tokens)
