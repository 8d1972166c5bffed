"""Chat templates: the shipped default and rendering through `transformers`' own Jinja
renderer (same environment, same variables), so our text equals
`PreTrainedTokenizerFast.apply_chat_template`'s."""

from __future__ import annotations

from typing import Sequence

# ChatML (as in Qwen / SmolLM), after <bos> when the tokenizer has one
DEFAULT_CHAT_TEMPLATE = (
    "{%- if bos_token %}{{ bos_token }}{% endif %}"
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHAT_TOKENS: tuple[str, ...] = ("<|im_start|>", "<|im_end|>")  # what DEFAULT_CHAT_TEMPLATE needs


def check_template(template: str) -> None:
    """Raise naming the line when `template` is not valid Jinja."""
    import jinja2

    if not isinstance(template, str):
        raise TypeError(f"chat_template must be a str, got {type(template).__name__}")
    try:
        jinja2.Environment().parse(template)
    except jinja2.TemplateSyntaxError as err:
        raise ValueError(f"chat_template is not valid Jinja (line {err.lineno}: {err.message})") from None


def render(template: str, messages: Sequence[dict], add_generation_prompt: bool = False,
           continue_final_message: bool = False, **variables) -> str:
    """The text of `messages` (`[{"role": ..., "content": ...}, ...]`) under `template`;
    `variables` are the template's other variables (bos_token, eos_token, ...)."""
    if not messages:
        raise ValueError("cannot apply a chat template to an empty conversation")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
    from transformers.utils.chat_template_utils import render_jinja_template

    conversation = [{k: v for k, v in m.items() if v is not None} for m in messages]  # as transformers does
    rendered, _ = render_jinja_template(
        conversations=[conversation], chat_template=template, add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message, **variables)
    return rendered[0]
