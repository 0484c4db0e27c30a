"""Named query transforms: queries from the records of the formats the field's datasets use.

`QuerySource.transform` picks one; each turns one record into `(query text, system text or None, id or None)` or
raises `ValueError` with what is wrong (the loader prefixes the file and line or row):

- `hh_first_turn`: Anthropic HH-RLHF (`Anthropic/hh-rlhf` on the hub: `{"chosen", "rejected"}`, whole
  transcripts "\\n\\nHuman: ...\\n\\nAssistant: ..."): the first human turn, the paper's HH queries.
- `hh_context`: the same records, the conversation up to and including the last human turn, as HH's own text
  ("first human turn\\n\\nAssistant: ...\\n\\nHuman: last human turn"). Inside the base-style dialogue template
  ("Human: {query}\\n\\nAssistant:") this is the HH transcript itself; chat-style templates are refused
  (`sami.run_config`), since a transcript in one user message is not a multi-turn chat.
- `tldr`: OpenAI summarize-from-feedback (`openai/summarize_from_feedback`: `{"info": {"id", "post", "title",
  "subreddit", "site", "article"}, "summaries", "choice", ...}`): the Reddit post, id `info.id`. The dataset
  repeats a post once per comparison, so later rows of an id already read are skipped; rows without a post but
  with an article (its CNN/Daily Mail rows) are skipped and counted in a warning.
- `trl`: TRL's prompt formats: standard `{"prompt": str}`, conversational `{"prompt": [{"role", "content"},
  ...]}` and `{"messages": [...]}` (the turns before the final assistant reply). A system turn becomes the query's
  system text (`Query.meta["system"]`, appended to a chat template's system message; base-style templates have
  no system slot and leave it out). A prompt with more than one user turn, or an assistant turn before the last
  user turn, is refused: sami's queries are single-turn.

Hand-written: these are a few lines of record parsing per format, which no library exposes as a function (TRL's
`maybe_extract_prompt` / `apply_chat_template` render whole conversations, not one query).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

QueryTransform = Literal["hh_first_turn", "hh_context", "tldr", "trl"]
TRANSFORMS: dict[str, str] = {
    "hh_first_turn": "HH-RLHF transcripts ({chosen, rejected}): the first human turn (the paper's HH queries)",
    "hh_context": "HH-RLHF transcripts: the conversation up to the last human turn (base-style dialogue only)",
    "tldr": "summarize-from-feedback rows ({info: {id, post, ...}, summaries, ...}): the post, one per info.id",
    "trl": 'TRL prompts: {"prompt": str}, {"prompt": [messages]} or {"messages": [...]}; single-turn',
}

_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


class Skip(Exception):
    """The record holds no query of this format (e.g. a CNN/DM row of summarize-from-feedback): leave it out."""


def hh_turns(transcript: Any) -> list[tuple[str, str]]:
    """`[(role, text), ...]` of an HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant: ..."), text stripped."""
    if not isinstance(transcript, str):
        raise ValueError(f"'chosen' must be a transcript string, got {type(transcript).__name__}")
    marks = list(_TURN.finditer(transcript))
    return [
        (m.group(1), transcript[m.end() : marks[i + 1].start() if i + 1 < len(marks) else len(transcript)].strip())
        for i, m in enumerate(marks)
    ]


def _hh_transcript(record: dict) -> str:
    if "chosen" not in record:
        raise ValueError('no field \'chosen\' (an HH-RLHF record is {"chosen", "rejected"})')
    return record["chosen"]


def hh_first_turn(record: dict) -> tuple[str, None, None]:
    turns = hh_turns(_hh_transcript(record))
    human = [text for role, text in turns if role == "Human"]
    if not human:
        raise ValueError("the transcript has no 'Human:' turn")
    if not human[0]:
        raise ValueError("the first 'Human:' turn is empty")
    return human[0], None, None


def hh_context(record: dict) -> tuple[str, None, None]:
    turns = hh_turns(_hh_transcript(record))
    last = max((i for i, (role, _) in enumerate(turns) if role == "Human"), default=None)
    if last is None:
        raise ValueError("the transcript has no 'Human:' turn")
    if not turns[last][1]:
        raise ValueError("the last 'Human:' turn is empty")
    text = turns[0][1] + "".join(f"\n\n{role}: {body}" for role, body in turns[1 : last + 1])
    return text, None, None


def tldr(record: dict) -> tuple[str, None, str]:
    info = record.get("info")
    if not isinstance(info, dict):
        raise ValueError("no 'info' mapping (a summarize-from-feedback row has info: {id, post, title, ...})")
    post, article = info.get("post"), info.get("article")
    if post is None and isinstance(article, str) and article.strip():
        raise Skip("article")
    if not isinstance(post, str) or not post.strip():
        raise ValueError("info.post must be a non-empty string")
    if not isinstance(info.get("id"), str) or not info["id"]:
        raise ValueError("info.id must be a non-empty string")
    return post.strip(), None, info["id"]


def _content(message: Any, n: int) -> tuple[str, str]:
    if not isinstance(message, dict) or "role" not in message or "content" not in message:
        raise ValueError(f"message {n} must be a {{role, content}} mapping")
    if not isinstance(message["content"], str):
        raise ValueError(f"message {n}: content must be a string (multimodal content parts are not supported)")
    return str(message["role"]), message["content"]


def trl(record: dict) -> tuple[str, str | None, None]:
    if "prompt" in record:
        key, value = "prompt", record["prompt"]
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("'prompt' is empty")
            return value, None, None
    elif "messages" in record:
        key, value = "messages", record["messages"]
    else:
        raise ValueError("no field 'prompt' or 'messages' (TRL's prompt formats)")
    if not isinstance(value, list):
        raise ValueError(f"'{key}' must be a string or a list of {{role, content}} messages")
    if not value:
        raise ValueError(f"'{key}' is an empty list of messages")
    messages = [_content(m, n) for n, m in enumerate(value)]
    if key == "messages":  # language-modelling form: the turns before the final assistant reply
        while messages and messages[-1][0] == "assistant":
            messages.pop()
    system = None
    if messages and messages[0][0] in ("system", "developer"):
        system = messages.pop(0)[1]
    roles = [role for role, _ in messages]
    if roles != ["user"]:
        if "user" not in roles:
            raise ValueError(f"'{key}' has no user turn")
        raise ValueError(
            f"'{key}' is a multi-turn conversation (roles {roles}); sami's queries are single-turn: keep the "
            "last user turn, or use the base-style dialogue template with the turns written into the query"
        )
    text = messages[0][1]
    if not text.strip():
        raise ValueError(f"'{key}': the user turn is empty")
    return text, (system if system and system.strip() else None), None


TRANSFORM_FUNCTIONS: dict[str, Callable[[dict], tuple[str, str | None, str | None]]] = {
    "hh_first_turn": hh_first_turn,
    "hh_context": hh_context,
    "tldr": tldr,
    "trl": trl,
}
