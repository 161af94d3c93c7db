"""The reflect and retry instructions, and chat templating: messages -> token ids, in one place.

Every conversation r3rl shows a model is built here with the model's own chat
template, so the ids used for generation, for the loss and for evaluation agree.

Conversation shapes (one round):
    first attempt:  [system?] user(task)                                    -> assistant(attempt)
    reflection:     ... assistant(attempt) user(reflect)                    -> assistant(reflection)
    retry:          ... assistant(reflection) user(retry)                   -> assistant(retry)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from r3rl.errors import InputError

DEFAULT_REFLECT = (
    "You tried performing the task, but failed in generating the correct answer. "
    "Reflect on what went wrong and write a short explanation that will help you do better next time."
)
DEFAULT_REFLECT_WITH_REASON = (
    "You tried performing the task, but failed in generating the correct answer. "
    "The checker said: {reason}\n"
    "Reflect on what went wrong and write a short explanation that will help you do better next time."
)
DEFAULT_RETRY = "Now try the task again, using your reflection."
# The control in evaluation: a second try with no reflection, only the news of failure.
DEFAULT_RETRY_NO_REFLECTION = "You tried performing the task, but failed in generating the correct answer. Try again."

# Rendered in place of an assistant message to find where the template puts its content.
_SENTINEL = "\u2063R3RL\u2063"

Messages = list[dict[str, Any]]


@dataclass(frozen=True)
class Instructions:
    """The user turns r3rl adds after a failure. `{reason}` in reflect is the verifier's reason."""

    reflect: str = DEFAULT_REFLECT
    retry: str = DEFAULT_RETRY
    retry_no_reflection: str = DEFAULT_RETRY_NO_REFLECTION
    include_reason: bool = False

    def reflect_text(self, reason: str = "") -> str:
        template = self.reflect
        if self.include_reason and "{reason}" not in template:
            template = DEFAULT_REFLECT_WITH_REASON if template == DEFAULT_REFLECT else template + "\nThe checker said: {reason}"
        if "{reason}" in template:
            return template.replace("{reason}", reason if self.include_reason else "")
        return template


def _template_kwargs(tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {"tools": tools} if tools else {}


def supports_tools(tokenizer) -> bool:
    """True when the tokenizer's chat template renders a `tools=` argument."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = " ".join(template.values())
    return bool(template) and "tools" in template


def render_tools_system_prompt(tools: list[dict[str, Any]]) -> str:
    """Fallback for templates without tool support: the tools as JSON in a system prompt."""
    import json

    lines = [
        "You have access to the following tools. To call tools, answer with a JSON list of calls, "
        'each {"name": <tool name>, "arguments": {<argument>: <value>}}, and nothing else.',
        "Tools:",
    ]
    lines += [json.dumps(t, ensure_ascii=False) for t in tools]
    return "\n".join(lines)


def prepare_messages(tokenizer, messages: Messages, tools: list[dict[str, Any]] | None) -> tuple[Messages, list | None]:
    """Send tools through the template when it supports them, else fold them into the system prompt."""
    if not tools or supports_tools(tokenizer):
        return messages, tools
    text = render_tools_system_prompt(tools)
    if messages and messages[0].get("role") == "system":
        messages = [{"role": "system", "content": messages[0]["content"] + "\n\n" + text}] + messages[1:]
    else:
        messages = [{"role": "system", "content": text}] + list(messages)
    return messages, None


def render(tokenizer, messages: Messages, tools: list | None = None, add_generation_prompt: bool = True) -> str:
    messages, tools = prepare_messages(tokenizer, messages, tools)
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, **_template_kwargs(tools)
    )


def encode(tokenizer, messages: Messages, tools: list | None = None, add_generation_prompt: bool = True) -> list[int]:
    """Messages -> prompt token ids with the model's chat template."""
    text = render(tokenizer, messages, tools, add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def continuation_suffix(
    tokenizer, messages: Messages, user_text: str, tools: list | None, generated_ids: list[int], stop_ids: list[int]
) -> list[int]:
    """Token ids that follow an assistant turn just generated, up to the next assistant header.

    `messages` is the conversation *before* the assistant turn. The result is what
    the template puts after the assistant's content (end-of-turn, a new user turn
    with `user_text`, the generation prompt); if the generated ids already end
    with a stop token, the template's own end-of-turn token is not repeated.
    """
    return response_suffix(tokenizer, messages, [{"role": "user", "content": user_text}], tools, generated_ids, stop_ids)


def response_suffix(
    tokenizer, messages: Messages, new_messages: Messages, tools: list | None, generated_ids: list[int],
    stop_ids: list[int],
) -> list[int]:
    """As `continuation_suffix`, with any messages after the assistant turn (a tool's output, then a user turn)."""
    conv = list(messages) + [{"role": "assistant", "content": _SENTINEL}] + list(new_messages)
    text = render(tokenizer, conv, tools, add_generation_prompt=True)
    idx = text.rfind(_SENTINEL)
    if idx < 0:
        raise InputError("chat template dropped the assistant content; cannot continue a conversation")
    suffix = tokenizer(text[idx + len(_SENTINEL):], add_special_tokens=False)["input_ids"]
    if generated_ids and generated_ids[-1] in stop_ids and suffix and suffix[0] in stop_ids:
        suffix = suffix[1:]
    return suffix
