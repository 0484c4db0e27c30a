"""The prompts of an evaluation: the evaluated model's template and an instruct baseline's user-turn template."""

from __future__ import annotations

from sami.prompts import PromptTemplate, get_template


def choose_template(task: str, style: str, template: PromptTemplate | None = None) -> PromptTemplate:
    """`template` when it has `style` (a run's own prompts), else the built-in template of `task` and `style`."""
    if template is not None and template.style == style:
        return template
    return get_template(task, style)


def user_turn_template(task: str) -> PromptTemplate:
    """The chat template of an instruct baseline as the authors prompted theirs (mistral-7b-instruct v0.1): the
    instruction, the constitution and the query in the user turn, no system message."""
    chat = get_template(task, "chat")
    text = f"{chat.system}\n\n{chat.generation}"
    return get_template(task, "chat", generation=text, training=text, system="")
