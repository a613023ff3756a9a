"""Sentiment of customer-written text, Chinese and English, from models shipped in PyPI packages.

Chinese text (any CJK ideograph in it) is scored by SnowNLP's naive-Bayes model trained on
product reviews; other text by VADER's rule-based lexicon. Both ship inside their packages: no
download at run time. Scores are mapped onto one scale, -1 (very negative) to +1 (very
positive); SnowNLP's probability p becomes 2p - 1, VADER's compound score is already on it.

The score is a pure function of the text, cached, so a re-fold or a replay gives the same value.
"""
from __future__ import annotations

import re
from functools import lru_cache

NEGATIVE = -0.3
POSITIVE = 0.3
"""Scores at or below NEGATIVE count as negative, at or above POSITIVE as positive."""

MAX_CHARS = 2000
"""Only the start of a long text is scored (the complaint is rarely on page three)."""

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_QUOTED = re.compile(r"(?m)^\s*>.*$")
_WORD = re.compile(r"\w")


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


@lru_cache(maxsize=1)
def _snownlp():
    from snownlp import SnowNLP

    return SnowNLP


def language(text: str) -> str:
    return "zh" if _CJK.search(text) else "en"


@lru_cache(maxsize=8192)
def score(text: str | None) -> float | None:
    """-1..+1, or None when there is nothing to score (empty, only quotes or punctuation)."""
    if not text:
        return None
    text = _QUOTED.sub("", text).strip()[:MAX_CHARS]  # a reply's quoted history is not the customer's mood
    if not _WORD.search(text):
        return None
    if language(text) == "zh":
        value = 2.0 * _snownlp()(text).sentiments - 1.0
    else:
        value = _vader().polarity_scores(text)["compound"]
    return round(max(-1.0, min(1.0, value)), 4)


def label(value: float | None) -> str | None:
    if value is None:
        return None
    return "negative" if value <= NEGATIVE else "positive" if value >= POSITIVE else "neutral"
