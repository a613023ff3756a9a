"""Deterministic, realistic multi-channel customer journeys as CloudEvents (README: Event types).

Pure code: no I/O and no clock. Everything comes from the seed, the customer index and the
``start`` time passed in, so a re-run with the same seed produces the same events with the same
ids; the collector deduplicates them, which makes re-sending safe.

Each customer follows one of a few archetypes that match the customer lifecycle of DOMAIN.md:

- ``prospect``   web only, stays anonymous (潜在客户);
- ``caller``     only phones the call centre, known by phone number alone;
- ``emailer``    only writes emails, known by email address alone;
- ``buyer``      browses, logs in, fills in a profile, orders, sometimes calls or writes (购买客户);
- ``repeat``     a buyer who comes back for more orders, sometimes from a second device (忠实客户);
- ``complainer`` a buyer whose delivery goes wrong: calls, complaint emails, a complaint ticket,
  often a refund, a bad survey and withdrawn marketing consent (a customer being lost, 流失客户).

After a call, an email thread or a delivery most customers are sent a survey (``survey.sent``, a few
minutes after the interaction) and only some answer it (``survey.answered``, about 40 %). Some
tickets come back: the customer replies "still not fixed" to a resolved ticket, which reopens it
(``ticket.reopened``) until an agent resolves it again.

Identity is realistic on purpose: the web login carries the cookie and the account id together,
the profile update carries account id, email and phone together, orders carry account id and
email, while calls carry only the phone number and emails only the address. The platform has to
link them the way it would for real traffic.
"""
from __future__ import annotations

import dataclasses
import hashlib
import heapq
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Iterator

from events.touchpoints import EVENT_TYPES

SITE = "https://shop.example.com"
SUPPORT_EMAIL = "service@shop.example.com"
MAIL_DOMAIN = "mail.shop.example.com"

_ID_NAMESPACE = uuid.UUID("5b0f3c1e-8a4d-4c1b-9a57-2f6c0d1e7a10")
_UID_SPACE = 10**7  # customers per seed that get distinct identifiers
_UID_STEP = 7_368_787  # coprime with 10**7, so index -> uid is a bijection within the space
_PHONE_SPACE = 10**8
_PHONE_STEP = 48_271_093  # coprime with 10**8

ANSWER_RATE = 0.35
"""The share of sent surveys a customer answers (the response rate of demo traffic)."""
REOPEN_SHARE = 0.28
"""The share of tickets the customer reopens after they were resolved ("still not fixed")."""

ARCHETYPES: tuple[tuple[str, int], ...] = (
    ("prospect", 20), ("caller", 10), ("emailer", 7), ("buyer", 33), ("repeat", 15), ("complainer", 15),
)

# --- people --------------------------------------------------------------------------------------

_SURNAMES = (("王", "Wang"), ("李", "Li"), ("张", "Zhang"), ("刘", "Liu"), ("陈", "Chen"), ("杨", "Yang"),
             ("赵", "Zhao"), ("黄", "Huang"), ("周", "Zhou"), ("吴", "Wu"), ("徐", "Xu"), ("孙", "Sun"))
_GIVEN = (("芳", "Fang"), ("娜", "Na"), ("伟", "Wei"), ("静", "Jing"), ("敏", "Min"), ("强", "Qiang"),
          ("磊", "Lei"), ("洋", "Yang"), ("艳", "Yan"), ("勇", "Yong"), ("军", "Jun"), ("杰", "Jie"),
          ("丽", "Li"), ("秀英", "Xiuying"), ("桂英", "Guiying"), ("建华", "Jianhua"), ("晓明", "Xiaoming"))
_FIRST = ("Alice", "Michael", "Emma", "James", "Olivia", "David", "Sophie", "Daniel", "Laura", "Thomas",
          "Hannah", "Robert", "Grace", "William", "Emily")
_LAST = ("Johnson", "Brown", "Smith", "Taylor", "Wilson", "Davies", "Miller", "Clark", "Walker", "Wright",
         "Harris", "Green", "Baker", "Evans", "Moore")
_ZH_COMPANIES = ("海尔集团", "华为技术有限公司", "小米科技有限责任公司", "阿里巴巴集团", "京东集团",
                 "上海明远贸易有限公司", "杭州云帆网络科技有限公司")
_EN_COMPANIES = ("Acme Ltd", "Globex Corporation", "Contoso Ltd", "Northwind Traders", "Initech",
                 "Haier Europe", "Huawei Technologies UK")
_CN_MOBILE_PREFIXES = ("130", "131", "132", "133", "135", "136", "137", "138", "139", "150", "151", "152",
                       "155", "156", "158", "159", "180", "181", "185", "186", "187", "188", "189")
_US_AREA_CODES = ("212", "415", "646", "617", "312", "206")
_ZH_CITIES = (  # city, region, postal code, street template
    ("北京", "北京市", "100022", "朝阳区建国路{n}号"),
    ("上海", "上海市", "200120", "浦东新区世纪大道{n}号"),
    ("广州", "广东省", "510620", "天河区天河路{n}号"),
    ("深圳", "广东省", "518057", "南山区科技园南区{n}号"),
    ("杭州", "浙江省", "310012", "西湖区文三路{n}号"),
    ("青岛", "山东省", "266101", "崂山区海尔路{n}号"),
    ("成都", "四川省", "610021", "锦江区春熙路{n}号"),
)
_EN_ADDRESSES = (  # line1 template, city, region, postal code, country
    ("Room {n}, 1000 Century Avenue, Pudong", "Shanghai", "Shanghai", "200120", "CN"),
    ("Apt {n}, 8 Guanghua Road, Chaoyang", "Beijing", "Beijing", "100020", "CN"),
    ("{n} Baker Street", "London", "England", "NW1 6XE", "GB"),
    ("{n} Market Street", "San Francisco", "CA", "94105", "US"),
    ("{n} Park Avenue", "New York", "NY", "10016", "US"),
)

# --- agents and queues -----------------------------------------------------------------------------

_ZH_AGENTS = {"agent-li": "李明", "agent-wang": "王磊", "agent-zhang": "张婷", "agent-chen": "陈晨"}
_EN_AGENTS = {"agent-smith": "John Smith", "agent-jones": "Emma Jones", "agent-garcia": "Maria Garcia"}

# --- catalogue -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Product:
    """One catalogue entry: SKU, Chinese and English name, unit price in CNY."""

    sku: str
    name_zh: str
    name_en: str
    price: Decimal
    category: str

    def name(self, locale: str) -> str:
        """The product name in the customer's language (``zh`` or ``en``)."""
        return self.name_zh if locale == "zh" else self.name_en


CATALOGUE: tuple[Product, ...] = (
    Product("HR-BCD-470WDPG", "海尔 470升 十字对开门冰箱", "Haier 470L French-door refrigerator",
            Decimal("3999.00"), "appliances"),
    Product("HR-EG100HB6S", "海尔 10公斤 滚筒洗衣机", "Haier 10 kg front-load washing machine",
            Decimal("2799.00"), "appliances"),
    Product("HR-KFR-35GW", "海尔 1.5匹 变频空调", "Haier 1.5 HP inverter air conditioner",
            Decimal("2599.00"), "appliances"),
    Product("HW-MATE60-512", "华为 Mate 60 Pro 512GB", "Huawei Mate 60 Pro 512 GB",
            Decimal("6999.00"), "phones"),
    Product("HW-WATCH4-46", "华为 WATCH 4 智能手表", "Huawei WATCH 4 smartwatch",
            Decimal("2699.00"), "wearables"),
    Product("HW-FREEBUDS5", "华为 FreeBuds 5 无线耳机", "Huawei FreeBuds 5 earbuds",
            Decimal("999.00"), "wearables"),
    Product("MI-AIRP4", "小米 空气净化器 4", "Xiaomi Smart Air Purifier 4",
            Decimal("899.00"), "appliances"),
    Product("ACME-KETTLE-17", "Acme 1.7升 电热水壶", "Acme 1.7 L electric kettle",
            Decimal("199.00"), "kitchen"),
    Product("ACME-LAMP-LED", "Acme LED 护眼台灯", "Acme LED desk lamp",
            Decimal("149.00"), "home"),
    Product("TEA-LJ-250", "西湖龙井 明前特级 250克", "West Lake Longjing green tea 250 g",
            Decimal("268.00"), "food"),
    Product("ACC-CASE-M60", "Mate 60 Pro 手机保护壳", "Mate 60 Pro phone case",
            Decimal("59.90"), "accessories"),
    Product("SVC-INSTALL", "大家电上门安装服务", "Home installation service for large appliances",
            Decimal("150.00"), "services"),
)
_INSTALLABLE = {"HR-BCD-470WDPG", "HR-EG100HB6S", "HR-KFR-35GW"}

_CAMPAIGNS = (
    {"source": "baidu", "medium": "cpc", "name": "double11", "term": "海尔冰箱"},
    {"source": "wechat", "medium": "social", "name": "spring_sale"},
    {"source": "weibo", "medium": "social", "name": "618_promo"},
    {"source": "google", "medium": "cpc", "name": "brand_search", "term": "huawei watch"},
    {"source": "newsletter", "medium": "email", "name": "weekly_deals", "content": "hero_banner"},
)
_REFERRERS = ("https://www.baidu.com/", "https://www.google.com/", "https://weixin.qq.com/",
              "https://www.bing.com/", "https://www.zhihu.com/", None)

# --- text ---------------------------------------------------------------------------------------------

_COMMENTS = {  # (locale, mood) -> (comment, the channel it is about; None fits any)
    ("zh", "good"): (("服务很好，谢谢！", None), ("客服态度非常好，问题很快就解决了。", None),
                     ("物流很快，包装完好，非常满意。", "shop"), ("产品质量不错，会再次购买。", "shop"),
                     ("安装师傅很专业，准时上门，点赞！", "shop"), ("回复邮件很及时，解答很清楚。", "email")),
    ("zh", "neutral"): (("还可以，一般般。", None), ("总体还行，希望发货能再快一点。", "shop"),
                        ("电话等了一会儿才接通，问题算是解决了。", "phone"), ("邮件回复有点慢。", "email")),
    ("zh", "bad"): (("快递太慢了，非常失望。", None), ("客服电话一直打不通，等了很久。", "phone"),
                    ("收到的商品有破损，要求退货。", None), ("退款处理太慢，很不满意。", None),
                    ("产品与描述不符，质量很差，不会再买了。", "shop"), ("发了好几封邮件都没人理。", "email")),
    ("en", "good"): (("Great service, thank you!", None), ("The agent was very helpful and solved my issue quickly.", None),
                     ("Fast delivery and well packaged. Very happy.", "shop"),
                     ("Excellent product, will buy again.", "shop"), ("Quick and clear answer to my email.", "email")),
    ("en", "neutral"): (("It was okay.", None), ("Fine overall, but delivery could be quicker.", "shop"),
                        ("Had to wait a while on the phone, but the problem was solved.", "phone"),
                        ("The email reply took a while.", "email")),
    ("en", "bad"): (("Delivery took far too long, very disappointed.", None),
                    ("I waited on hold for ages and nobody answered.", "phone"),
                    ("The item arrived damaged and nobody replied to my emails.", None),
                    ("The refund is taking forever. Not happy at all.", None),
                    ("The product does not match the description. Poor quality.", "shop"),
                    ("I sent three emails before anyone answered.", "email")),
}

_QUESTION = {
    "zh": ("咨询：{product}是否支持上门安装？",
           "您好，\n\n我想购买{product}，请问是否支持上门安装？大概几天可以送到{city}？\n\n谢谢！\n{name}"),
    "en": ("Question about the {product}",
           "Hi,\n\nI'm interested in the {product}. Do you deliver to {city}, and how long does it take?\n\n"
           "Thanks,\n{name}"),
}
_QUESTION_ANSWER = {
    "zh": "{product}支持免费上门安装，下单后一般2-3天送达{city}，安装师傅会提前电话联系您。",
    "en": "Yes, we deliver the {product} to {city}, usually within 2-3 days, and installation is free.",
}
_WHERE_IS_ORDER = {
    "zh": ("订单{order_id}什么时候发货？", "你好，我的订单{order_id}已经付款了，请问什么时候能发货？\n{name}"),
    "en": ("When will order {order_id} ship?", "Hello,\n\nI paid for order {order_id}. When will it ship?\n\n{name}"),
}
_WHERE_IS_ORDER_ANSWER = {
    "zh": "您的订单{order_id}已经发货，快递单号{tracking}，预计1-2天送达。",
    "en": "Your order {order_id} has shipped with tracking number {tracking} and should arrive in 1-2 days.",
}
_COMPLAINT = {
    "zh": {
        "late": ("投诉：订单{order_id}迟迟未到",
                 "你好，我的订单{order_id}已经下单{days}天了，快递太慢了，到现在还没有收到，非常失望。"
                 "客服电话也一直打不通，请尽快给我一个答复！\n{name}"),
        "damaged": ("投诉：订单{order_id}商品破损",
                    "你好，今天收到订单{order_id}，{product}外包装破损，商品也有明显划痕。"
                    "这么贵的东西怎么能这样发货？要求退货退款。\n{name}"),
    },
    "en": {
        "late": ("Complaint: order {order_id} still not delivered",
                 "Hello,\n\nI placed order {order_id} {days} days ago and it still hasn't arrived. Delivery is "
                 "far too slow and I couldn't get through on the phone either. Very disappointed.\n\n{name}"),
        "damaged": ("Complaint: order {order_id} arrived damaged",
                    "Hello,\n\nOrder {order_id} arrived today and the {product} is damaged - the box was crushed "
                    "and there are scratches on the front. I want a refund.\n\n{name}"),
    },
}
_APOLOGY = {
    "zh": "非常抱歉给您带来不好的体验。我们已经联系快递核实情况，并为您优先处理，今天内会给您答复。",
    "en": "We are very sorry for the trouble. We have contacted the carrier and escalated your case; "
          "you will hear from us today.",
}
_REPLY = {
    "zh": ("回复：{subject}", "{name}您好，\n\n感谢您的来信。{answer}\n\n如有其他问题，欢迎随时联系我们。\n\n客服 {agent}"),
    "en": ("Re: {subject}", "Dear {name},\n\nThank you for contacting us. {answer}\n\nBest regards,\n{agent}\n"
                            "Customer Service"),
}
_FOLLOW_UP = {
    "zh": "好的，谢谢。另外请问可以开增值税专用发票吗？\n{name}",
    "en": "Thanks. One more question: can you issue a VAT invoice for my company?\n\n{name}",
}
_FOLLOW_UP_ANSWER = {
    "zh": "可以开具增值税专用发票，请在订单详情页填写公司抬头和税号即可。",
    "en": "Yes, please add your company name and tax number on the order page and we will issue it.",
}
_CALL_NOTES = {
    "zh": {
        "presales": "客户咨询{product}的价格和配送时间，已介绍当前优惠活动。",
        "delivery": "客户询问订单{order_id}的物流进度，已告知快递单号。",
        "complaint": "客户投诉订单{order_id}快递延误，情绪激动，已升级处理并创建投诉工单。",
        "service": "客户预约{product}上门安装，已登记服务工单。",
    },
    "en": {
        "presales": "Customer asked about price and delivery time of the {product}; explained current offers.",
        "delivery": "Customer asked where order {order_id} is; gave the tracking number.",
        "complaint": "Customer complained that order {order_id} is late; upset, escalated and opened a complaint.",
        "service": "Customer booked home installation of the {product}; service request logged.",
    },
}
_TICKET = {
    "zh": {
        "complaint": ("订单{order_id}投诉：{problem}", "客户反映：{problem}。订单号{order_id}，要求尽快处理。"),
        "service_request": ("{product}上门安装预约", "客户希望预约{product}的上门安装，地址：{city}。"),
    },
    "en": {
        "complaint": ("Complaint about order {order_id}: {problem}",
                      "Customer reports: {problem}. Order {order_id}; wants this fixed quickly."),
        "service_request": ("Installation booking for the {product}",
                            "Customer wants to book home installation of the {product} in {city}."),
    },
}
_PROBLEMS = {"zh": {"late": "快递延误", "damaged": "商品破损"}, "en": {"late": "late delivery", "damaged": "item damaged"}}
_TICKET_AGENT_REPLY = {
    "zh": "您好，我们已经核实了您的问题，{fix}。给您带来的不便深表歉意。",
    "en": "Hello, we have looked into your case: {fix}. We apologise for the inconvenience.",
}
_TICKET_CUSTOMER_REPLY = {
    "zh": "好的，希望这次能尽快处理，谢谢。",
    "en": "OK, I hope it gets sorted quickly this time. Thanks.",
}
_TICKET_STILL_BROKEN = {  # the customer answers a resolved ticket: it is not fixed after all
    "zh": {"refund": "退款到现在还没有到账，问题还是没有解决。",
           "replace": "补发的商品还是没有收到，问题还是没有解决，请尽快处理！",
           "install": "安装师傅没有按约定上门，问题还是没有解决。"},
    "en": {"refund": "The refund still hasn't arrived. This is still not fixed.",
           "replace": "I still haven't received the replacement - still not fixed, please sort it out.",
           "install": "The installer never showed up, so this is still not fixed."},
}
_REOPEN_REASONS = {
    "zh": {"refund": "客户回复：退款未到账", "replace": "客户回复：补发商品未收到", "install": "客户回复：师傅未上门"},
    "en": {"refund": "customer reply: refund not received", "replace": "customer reply: replacement not received",
           "install": "customer reply: installer did not come"},
}
_TICKET_AGENT_FOLLOW_UP = {
    "zh": "非常抱歉，我们已经重新跟进您的问题并加急处理：{fix}。如仍有问题请随时回复。",
    "en": "We are sorry this is still not sorted. We have followed up again and expedited it: {fix}. "
          "Please reply if anything is still wrong.",
}
_FIXES = {
    "zh": {"refund": "已为您办理全额退款，3-5个工作日到账", "replace": "已为您补发新的商品，顺丰次日达",
           "install": "安装师傅将于明天上午上门"},
    "en": {"refund": "a full refund has been issued and will arrive in 3-5 working days",
           "replace": "a replacement has been sent by next-day express",
           "install": "the installer will visit tomorrow morning"},
}
_REFUND_REASONS = {
    "zh": {"late": "快递延误", "damaged": "商品破损", "return": "七天无理由退货"},
    "en": {"late": "late delivery", "damaged": "item damaged", "return": "changed mind (7-day return)"},
}
_PAGE_TITLES = {
    "zh": {"home": "优选商城 - 首页", "pricing": "价格与会员方案", "cart": "购物车", "checkout": "结算",
           "login": "登录", "account": "我的账户", "help": "帮助中心 - 配送说明", "category": "家用电器",
           "order": "订单详情"},
    "en": {"home": "ShopExample - Home", "pricing": "Pricing & membership plans", "cart": "Shopping cart",
           "checkout": "Checkout", "login": "Sign in", "account": "My account", "help": "Help - Shipping",
           "category": "Home appliances", "order": "Order details"},
}
_PAGE_PATHS = {"home": "", "pricing": "pricing", "cart": "cart", "checkout": "checkout", "login": "account/login",
               "account": "account", "help": "help/shipping", "category": "category/appliances",
               "order": "account/orders"}


@dataclass(frozen=True)
class Persona:
    """Who one simulated customer is: name, language, identifiers and the journey archetype."""

    index: int
    uid: int
    kind: str
    locale: str
    name: str
    latin_name: str
    email: str
    phone: str
    phone_as_typed: str
    account_id: str
    anonymous_id: str
    company: str | None
    address: dict[str, str]
    city: str
    household: int | None = None
    """Index of the customer this one lives with, sharing their phone and home computer (a family
    phone and a shared browser cookie that must not fuse the two into one profile)."""

    @property
    def language(self) -> str:
        """The profile language tag: ``zh-CN`` or ``en``."""
        return "zh-CN" if self.locale == "zh" else "en"

    @property
    def email_domain(self) -> str:
        """The domain of the customer's email address (used for their Message-IDs)."""
        return self.email.rsplit("@", 1)[1]


# which identifiers each archetype ever reveals to the platform
_ACCOUNT_HOLDERS = frozenset({"buyer", "repeat", "complainer"})
HOUSEHOLD_SHARE = 0.15
"""Of the account holders at odd indices whose predecessor holds an account too, the share living
with that predecessor."""

_REVEALS = {
    "prospect": ("anonymous_id",),
    "caller": ("phone",),
    "emailer": ("email",),
    "buyer": ("email", "phone", "account_id", "anonymous_id"),
    "repeat": ("email", "phone", "account_id", "anonymous_id"),
    "complainer": ("email", "phone", "account_id", "anonymous_id"),
}


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seed_offset(seed: int, salt: str, space: int) -> int:
    digest = hashlib.sha256(f"crm-sim:{salt}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % space


class JourneyGenerator:
    """Generates the events of simulated customers, deterministically for a seed.

    ``start`` is the earliest event time; every journey fits in ``[start, start + span]``.
    """

    def __init__(self, seed: int, start: datetime, span: timedelta = timedelta(days=7)):
        if start.tzinfo is None:
            raise ValueError("start must carry a time zone, e.g. datetime(..., tzinfo=timezone.utc)")
        if span <= timedelta(0):
            raise ValueError("span must be positive")
        self.seed = seed
        self.start = start.astimezone(timezone.utc)
        self.span = span
        self._uid_offset = _seed_offset(seed, "uid", _UID_SPACE)
        self._phone_offset = _seed_offset(seed, "phone", _PHONE_SPACE)

    # --- customers ------------------------------------------------------------------------------

    def persona(self, customer_index: int) -> Persona:
        """The customer behind ``customer_index``: name, identifiers and archetype.

        Some account holders at an odd index live with the customer before them, also an account
        holder: they share that customer's phone, home computer (its browser cookie) and address.
        """
        own = self._persona(customer_index)
        if customer_index % 2 == 1 and own.kind in _ACCOUNT_HOLDERS:
            rng = random.Random(f"crm-sim:{self.seed}:{customer_index}:household")
            if rng.random() < HOUSEHOLD_SHARE:
                other = self._persona(customer_index - 1)
                if other.kind in _ACCOUNT_HOLDERS:
                    return dataclasses.replace(own, phone=other.phone, phone_as_typed=other.phone_as_typed,
                                               anonymous_id=other.anonymous_id, address=other.address,
                                               city=other.city, household=other.index)
        return own

    def _persona(self, customer_index: int) -> Persona:
        if customer_index < 0:
            raise ValueError("customer_index must be >= 0")
        rng = random.Random(f"crm-sim:{self.seed}:{customer_index}:persona")
        uid = (customer_index * _UID_STEP + self._uid_offset) % _UID_SPACE
        phone_digits = (customer_index * _PHONE_STEP + self._phone_offset) % _PHONE_SPACE
        kind = rng.choices([k for k, _ in ARCHETYPES], weights=[w for _, w in ARCHETYPES])[0]
        locale = "zh" if rng.random() < 0.65 else "en"
        if locale == "zh":
            (sur, sur_py), (given, given_py) = rng.choice(_SURNAMES), rng.choice(_GIVEN)
            name, latin = sur + given, f"{sur_py} {given_py}"
            local = rng.choice((f"{sur_py}{given_py}{uid}".lower(), f"{given_py}.{sur_py}{uid}".lower(),
                                f"{uid + 100_000_000}"))
            domain = "qq.com" if local.isdigit() else rng.choice(("163.com", "126.com", "qq.com", "gmail.com"))
            city, region, postal, street = rng.choice(_ZH_CITIES)
            address = {"line1": street.format(n=rng.randint(1, 999)), "city": city, "region": region,
                       "postal_code": postal, "country": "CN"}
            company = rng.choice(_ZH_COMPANIES) if rng.random() < 0.3 else None
        else:
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            name = latin = f"{first} {last}"
            local = f"{first}.{last}{uid}".lower()
            domain = rng.choice(("gmail.com", "example.com", "outlook.com", "example.com"))
            line1, city, region, postal, country = rng.choice(_EN_ADDRESSES)
            address = {"line1": line1.format(n=rng.randint(1, 2999)), "city": city, "region": region,
                       "postal_code": postal, "country": country}
            company = rng.choice(_EN_COMPANIES) if rng.random() < 0.35 else None
        country = address["country"]
        if country == "CN" and (locale == "zh" or rng.random() < 0.7):  # expats mostly get a local mobile
            prefix = rng.choice(_CN_MOBILE_PREFIXES)
            national = f"{prefix}{phone_digits:08d}"
            phone = f"+86{national}"
            typed = rng.choice((national, f"{national[:3]} {national[3:7]} {national[7:]}",
                                f"+86 {national[:3]}-{national[3:7]}-{national[7:]}"))
        elif country == "US" or (country == "CN" and rng.random() < 0.5):
            rest = phone_digits % (8 * 10**6)
            area = rng.choice(_US_AREA_CODES)
            line = f"{200 + rest // 10_000}{rest % 10_000:04d}"
            phone = f"+1{area}{line}"
            typed = f"+1 ({area}) {line[:3]}-{line[3:]}"
        else:
            national = f"7{rng.choice('123')}{phone_digits:08d}"
            phone = f"+44{national}"
            typed = f"+44 {national[:4]} {national[4:]}"
        anonymous_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        return Persona(index=customer_index, uid=uid, kind=kind, locale=locale, name=name, latin_name=latin,
                       email=f"{local}@{domain}", phone=phone, phone_as_typed=typed,
                       account_id=f"C{uid:07d}", anonymous_id=anonymous_id, company=company, address=address,
                       city=address["city"])

    def identifiers_of(self, customer_index: int) -> dict[str, str | None]:
        """The identifiers the customer's journey reveals, normalized (email lower case, phone E.164).

        Keys are always ``email``, ``phone``, ``account_id`` and ``anonymous_id``; a value is None when
        the journey never shows that identifier (a web-only prospect has only an anonymous id). A
        repeat buyer may also use a second cookie; ``anonymous_id`` is the first one.
        """
        p = self.persona(customer_index)
        shown = _REVEALS[p.kind]
        values = {"email": p.email, "phone": p.phone, "account_id": p.account_id, "anonymous_id": p.anonymous_id}
        return {k: (v if k in shown else None) for k, v in values.items()}

    # --- events ---------------------------------------------------------------------------------

    def event_id(self, customer_index: int, step: int) -> str:
        """The id of the ``step``-th event generated for a customer: stable across re-runs of a seed."""
        return str(uuid.uuid5(_ID_NAMESPACE, f"{self.seed}/{customer_index}/{step}"))

    def _timed(self, customer_index: int) -> list[tuple[datetime, int, int, dict[str, Any]]]:
        persona = self.persona(customer_index)
        rng = random.Random(f"crm-sim:{self.seed}:{customer_index}:journey")
        builder = _Journey(self, persona, rng)
        builder.play()
        events = builder.events
        span_s = self.span.total_seconds()
        duration = max(t for t, _, _ in events)
        # Journeys are designed to fit a week; with a shorter span they are squeezed, keeping the order.
        scale = min(1.0, span_s / duration) if duration > 0 else 1.0
        offset = rng.uniform(0, max(0.0, span_s - duration * scale))
        out = []
        for t, step, event in events:
            when = self.start + timedelta(milliseconds=round((offset + t * scale) * 1000))
            event["time"] = _iso(when)
            out.append((when.replace(microsecond=when.microsecond // 1000 * 1000), customer_index, step, event))
        out.sort(key=lambda row: (row[0], row[2]))
        return out

    def journey(self, customer_index: int) -> list[dict[str, Any]]:
        """The events of one customer, in event-time order (each a structured CloudEvent dict)."""
        return [event for *_, event in self._timed(customer_index)]

    def stream(self, customers: int, first_index: int = 0, block: int = 1000) -> Iterator[dict[str, Any]]:
        """Events of ``customers`` customers from ``first_index`` on, interleaved in event-time order.

        Customers are merged ``block`` at a time so memory stays bounded: the order is exact within
        a block and starts over at the next block (the collector does not need order).
        """
        if customers < 0 or block < 1:
            raise ValueError("customers must be >= 0 and block >= 1")
        end = first_index + customers
        for lo in range(first_index, end, block):
            journeys = [self._timed(i) for i in range(lo, min(lo + block, end))]
            for *_, event in heapq.merge(*journeys):
                yield event


class _Journey:
    """Builds one customer's events on a relative clock (seconds since the journey began)."""

    def __init__(self, gen: JourneyGenerator, persona: Persona, rng: random.Random):
        self.gen = gen
        self.p = persona
        self.rng = rng
        self.loc = persona.locale
        self.t = 0.0
        self.events: list[tuple[float, int, dict[str, Any]]] = []
        self.times: dict[str, float] = {}  # event id -> relative time, to place surveys after what they rate
        self.counter = 0
        self.orders: list[tuple[str, Decimal, list[Product]]] = []
        self.last_tracking = ""

    # --- plumbing ---------------------------------------------------------------------------------

    def later(self, lo: float, hi: float) -> float:
        self.t += self.rng.uniform(lo, hi)
        return self.t

    def serial(self) -> int:
        self.counter += 1
        return self.counter

    def hex(self, n: int) -> str:
        return f"{self.rng.getrandbits(4 * n):0{n}x}"

    def emit(self, type_: str, source: str, data: dict[str, Any], *, at: float | None = None,
             subject: str | None = None) -> str:
        step = len(self.events)
        event: dict[str, Any] = {
            "specversion": "1.0",
            "id": self.gen.event_id(self.p.index, step),
            "source": f"urn:crm:sim:{source}",
            "type": type_,
            "datacontenttype": "application/json",
            "dataschema": EVENT_TYPES[type_].dataschema,
        }
        if subject is not None:
            event["subject"] = subject
        event["data"] = {k: v for k, v in data.items() if v is not None}
        when = self.t if at is None else at
        self.events.append((when, step, event))
        self.times[event["id"]] = when
        return event["id"]

    def agent(self) -> str:
        # mostly an agent who speaks the customer's language; the bilingual rest is routed anywhere
        same_language = self.rng.random() < 0.9
        pool = _ZH_AGENTS if (self.loc == "zh") == same_language else _EN_AGENTS
        return self.rng.choice(sorted(pool))

    def agent_name(self, agent: str) -> str:
        return _ZH_AGENTS.get(agent) or _EN_AGENTS[agent]

    def pick_products(self, k: int) -> list[Product]:
        return self.rng.sample(CATALOGUE[:-1], k)  # the installation service is only added to appliances

    def comment(self, mood: str, channel: str) -> str:
        return self.rng.choice([text for text, about in _COMMENTS[(self.loc, mood)] if about in (None, channel)])

    def email_as_written(self) -> str:
        # people type their address with capitals now and then; the platform lower-cases emails
        if self.rng.random() < 0.15:
            local, domain = self.p.email.split("@")
            return f"{local.capitalize()}@{domain.upper()}"
        return self.p.email

    def phone_as_dialled(self) -> str:
        # a CTI reports E.164 or the national number, depending on the trunk
        if self.p.phone.startswith("+86") and self.rng.random() < 0.4:
            return self.p.phone[3:]
        return self.p.phone

    # --- web --------------------------------------------------------------------------------------

    def url(self, page: str, product: Product | None = None, query: str = "") -> tuple[str, str]:
        lang = "zh" if self.loc == "zh" else "en"
        if product is not None:
            return f"{SITE}/{lang}/products/{product.sku}{query}", product.name(self.loc)
        return f"{SITE}/{lang}/{_PAGE_PATHS[page]}{query}", _PAGE_TITLES[self.loc][page]

    def web_session(self, pages: list[tuple[str, Product | None]], *, cookie: str, user: str | None = None,
                    login_at: int | None = None, campaign: bool | None = None) -> None:
        """One visit: session start, then the pages; ``login_at`` is the page index where the login lands."""
        session_id = f"s-{self.hex(16)}"
        device = self.rng.choice(("desktop", "mobile", "mobile", "tablet"))
        camp = self.rng.choice(_CAMPAIGNS) if (campaign if campaign is not None else self.rng.random() < 0.4) else None
        query = ""
        if camp is not None:
            query = f"?utm_source={camp['source']}&utm_medium={camp['medium']}&utm_campaign={camp['name']}"
        referrer = self.rng.choice(_REFERRERS)
        if camp is not None and camp["source"] == "newsletter":
            referrer = None
        for i, (page, product) in enumerate(pages):
            if login_at is not None and i == login_at:
                user = self.p.account_id
            url, title = self.url(page, product, query if i == 0 else "")
            data = {"anonymous_id": cookie, "user_id": user, "session_id": session_id, "url": url, "title": title,
                    "properties": {"device": device, "locale": self.p.language}}
            if i == 0:
                data.update(referrer=referrer, campaign=camp)
                self.emit("web.session_started", "web", dict(data))
                self.later(0.2, 1.5)
            else:
                prev_url = self.url(*pages[i - 1])[0]
                data["referrer"] = prev_url
                if login_at is not None and i == login_at:
                    data["properties"] = {**data["properties"], "event": "login"}
            if page == "cart" and i > 0 and pages[i - 1][1] is not None:  # the tracker's add-to-cart
                product = pages[i - 1][1]
                self.emit("web.tracked", "web", {**data, "url": prev_url, "title": self.url(*pages[i - 1])[1],
                                                 "event": "Product Added", "properties": {
                                                     **data["properties"], "sku": product.sku, "quantity": 1}})
                self.later(1, 5)
            self.emit("web.page_viewed", "web", data)
            if login_at is not None and i == login_at:  # the tracker's identify() after the login
                self.emit("web.identified", "web", {**data, "user_id": user, "traits": {"locale": self.p.language}})
            self.later(8, 180)

    def browse_pages(self, products: list[Product], *, to_cart: bool) -> list[tuple[str, Product | None]]:
        landing = self.rng.choice(["home", "category", "product", "product"])
        pages: list[tuple[str, Product | None]] = []
        pages.append(("product", products[0]) if landing == "product" else (landing, None))
        pages += [("product", p) for p in products if ("product", p) not in pages]
        if self.rng.random() < 0.5:
            pages.append(("pricing", None))
        if self.rng.random() < 0.3:
            pages.append(("help", None))
        if to_cart:
            pages.append(("cart", None))
        return pages

    # --- orders -----------------------------------------------------------------------------------

    def place_order(self, products: list[Product], *, ship_after: tuple[float, float]) -> tuple[str, float]:
        """order.placed, order.paid and order.shipped; returns the order id and the shipping time."""
        order_id = f"SO{self.p.uid:07d}{self.serial():02d}"
        items = []
        for product in products:
            qty = 1 if product.price > 1000 else self.rng.choice((1, 1, 2, 3))
            items.append({"sku": product.sku, "name": product.name(self.loc), "quantity": qty,
                          "unit_price": str(product.price)})
            if product.sku in _INSTALLABLE and self.rng.random() < 0.5:
                service = CATALOGUE[-1]
                items.append({"sku": service.sku, "name": service.name(self.loc), "quantity": 1,
                              "unit_price": str(service.price)})
        total = sum((Decimal(i["unit_price"]) * i["quantity"] for i in items), Decimal(0))
        ids = {"account_id": self.p.account_id, "email": self.p.email}
        self.emit("order.placed", "shop", {**ids, "order_id": order_id, "currency": "CNY", "items": items,
                                           "total": str(total), "properties": {"channel": "web"}},
                  subject=order_id)
        self.later(20, 600)
        methods = ("alipay", "wechat_pay", "unionpay") if self.loc == "zh" else ("credit_card", "paypal", "alipay")
        self.emit("order.paid", "shop", {**ids, "order_id": order_id, "currency": "CNY", "amount": str(total),
                                         "method": self.rng.choice(methods)}, subject=order_id)
        shipped_at = self.t + self.rng.uniform(*ship_after)
        carrier, prefix = self.rng.choice((("顺丰速运", "SF"), ("京东物流", "JD"), ("中通快递", "ZTO"))
                                          if self.loc == "zh" else (("SF Express", "SF"), ("DHL", "DHL")))
        tracking = f"{prefix}{self.rng.randrange(10**11, 10**12)}"
        self.emit("order.shipped", "shop", {**ids, "order_id": order_id, "currency": "CNY", "carrier": carrier,
                                            "tracking_number": tracking}, at=shipped_at, subject=order_id)
        self.orders.append((order_id, total, products))
        self.last_tracking = tracking
        return order_id, shipped_at

    def refund(self, order_id: str, amount: Decimal, reason: str) -> None:
        self.emit("order.refunded", "shop", {"account_id": self.p.account_id, "email": self.p.email,
                                             "order_id": order_id, "currency": "CNY", "amount": str(amount),
                                             "reason": _REFUND_REASONS[self.loc][reason]}, subject=order_id)

    # --- profile and consent --------------------------------------------------------------------

    def sign_up(self) -> None:
        self.emit("profile.updated", "crm", {
            "account_id": self.p.account_id, "email": self.email_as_written(), "phone": self.p.phone_as_typed,
            "name": self.p.name, "company": self.p.company, "address": self.p.address, "language": self.p.language,
            "preferred_channel": ("wechat" if self.loc == "zh" else "sms", "phone", "email")[self.p.uid % 3],
            "preferred_time": ("morning", "afternoon", "evening", "any")[self.p.uid // 3 % 4],
            "properties": {"trait_source": "web_signup", "latin_name": self.p.latin_name},
        })

    def consent(self, granted: bool, channel: str) -> None:
        self.emit("consent.changed", "crm", {"account_id": self.p.account_id, "email": self.p.email,
                                             "purpose": "marketing", "channel": channel, "granted": granted,
                                             "properties": {"via": "preference_center" if granted else "unsubscribe"}})

    # --- calls ----------------------------------------------------------------------------------

    def call(self, queue: str, topic: str, *, abandon: bool = False, patience: tuple[float, float] = (5, 120),
             **fmt: str) -> tuple[str | None, str | None]:
        """One inbound call; returns (call.ended id, agent), or (None, None) when the caller hung up."""
        call_id = f"CALL-{self.p.uid:07d}-{self.serial():02d}"
        base = {"call_id": call_id, "phone_number": self.phone_as_dialled(), "direction": "inbound", "queue": queue}
        self.emit("call.started", "cti", base, subject=call_id)
        wait = round(self.rng.uniform(*patience), 1)
        self.t += wait
        if abandon:
            self.emit("call.abandoned", "cti", {**base, "wait_seconds": wait}, subject=call_id)
            return None, None
        agent = self.agent()
        self.emit("call.answered", "cti", {**base, "agent": agent, "wait_seconds": wait}, subject=call_id)
        talk = round(self.rng.uniform(45, 900), 1)
        hold = round(self.rng.uniform(10, 120), 1) if self.rng.random() < 0.35 else 0.0  # "let me check that"
        wrap = round(self.rng.uniform(15, 90), 1)  # after-call work once the caller has hung up
        self.t += talk + hold
        disposition = {"presales": "information_provided", "delivery": "resolved", "complaint": "escalated",
                       "service": "follow_up"}[topic]
        notes = _CALL_NOTES[self.loc][topic].format(**fmt)
        ended = self.emit("call.ended", "cti", {**base, "agent": agent, "wait_seconds": wait, "talk_seconds": talk,
                                                "hold_seconds": hold, "wrap_seconds": wrap,
                                                "disposition": disposition, "notes": notes}, subject=call_id)
        return ended, agent

    # --- email ----------------------------------------------------------------------------------

    def email_thread(self, subject: str, body: str, answer: str, *, reply_within: tuple[float, float] = (300, 14_400),
                     follow_up: tuple[str, str] | None = None) -> tuple[str, str]:
        """Customer writes, an agent answers (optionally a second round); returns (email.sent id, agent)."""
        thread_id = f"TH-{self.p.uid:07d}-{self.serial():02d}"
        agent = self.agent()
        signature = self.agent_name(agent)
        rounds = [(subject, body, answer)]
        if follow_up is not None:
            rounds.append((subject, *follow_up))
        references: list[str] = []
        sent_id = ""
        for i, (subj, text, reply) in enumerate(rounds):
            incoming = f"<{self.hex(20)}@{self.p.email_domain}>"
            in_subject = subj if i == 0 else _REPLY[self.loc][0].format(subject=subj)
            self.emit("email.received", "mail", {
                "thread_id": thread_id, "message_id": incoming, "from": self.email_as_written(),
                "to": [SUPPORT_EMAIL], "subject": in_subject, "body_text": text,
                "in_reply_to": references[-1] if references else None, "references": list(references),
            }, subject=thread_id)
            references.append(incoming)
            self.later(*reply_within)
            outgoing = f"<{self.hex(20)}@{MAIL_DOMAIN}>"
            reply_subject, reply_body = _REPLY[self.loc]
            sent_id = self.emit("email.sent", "mail", {
                "thread_id": thread_id, "message_id": outgoing, "from": SUPPORT_EMAIL, "to": [self.p.email],
                "subject": reply_subject.format(subject=subj),
                "body_text": reply_body.format(name=self.p.name, answer=reply, agent=signature),
                "in_reply_to": incoming, "references": list(references), "agent": agent,
            }, subject=thread_id)
            references.append(outgoing)
            if i + 1 < len(rounds):
                self.later(600, 7200)
        return sent_id, agent

    # --- surveys and tickets ----------------------------------------------------------------------

    def survey(self, mood: str, *, rated: str | None, channel: str, agent: str | None, queue: str | None,
               ids: dict[str, str], answer_after: tuple[float, float], answer_rate: float = ANSWER_RATE,
               after: float | None = None) -> str | None:
        """Send a survey shortly after the rated interaction; the customer answers only sometimes.

        ``survey.sent`` goes out 1-10 minutes after the rated touchpoint (or after ``after``, or now,
        when nothing in particular is rated); the answer, if any, comes ``answer_after`` later than
        the journey's current time. Returns the ``survey.answered`` id, or None when left unanswered.
        """
        survey_id = f"SV-{self.p.uid:07d}-{self.serial():02d}"
        rated_at = self.times[rated] if rated is not None else (self.t if after is None else after)
        sent_at = rated_at + self.rng.uniform(60, 600)
        about = {"rated_touchpoint_id": rated, "rated_channel": channel, "agent": agent, "queue": queue}
        self.emit("survey.sent", "survey", {**ids, "survey_id": survey_id, **about}, at=sent_at, subject=survey_id)
        if self.rng.random() >= answer_rate:
            return None
        self.t = max(self.t, sent_at) + self.rng.uniform(*answer_after)
        csat = {"good": self.rng.choice((4, 5, 5)), "neutral": 3, "bad": self.rng.choice((1, 1, 2))}[mood]
        nps = {"good": self.rng.randint(8, 10), "neutral": self.rng.randint(5, 7), "bad": self.rng.randint(0, 4)}[mood]
        shape = self.rng.random()
        return self.emit("survey.answered", "survey", {
            **ids, "survey_id": survey_id,
            "csat": csat if shape < 0.8 else None, "nps": nps if shape > 0.5 else None,
            "comment": self.comment(mood, channel) if self.rng.random() < 0.8 else "", **about,
        }, subject=survey_id)

    def ticket(self, kind: str, channel: str, ids: dict[str, str], *, fix: str, priority: str,
               customer_replies: bool, resolve_after: tuple[float, float], **fmt: str) -> str:
        ticket_id = f"TK-{self.p.uid:07d}-{self.serial():02d}"
        agent = self.agent()
        queue = "complaints" if kind == "complaint" else "aftersales"
        base = {**ids, "ticket_id": ticket_id, "kind": kind, "channel": channel, "queue": queue}
        subject, body = _TICKET[self.loc][kind]
        self.emit("ticket.opened", "helpdesk", {**base, "subject": subject.format(**fmt), "body_text": body.format(**fmt),
                                                "priority": priority}, subject=ticket_id)
        self.later(600, 10_800)
        self.emit("ticket.replied", "helpdesk", {
            **base, "agent": agent, "author": "agent",
            "body_text": _TICKET_AGENT_REPLY[self.loc].format(fix=_FIXES[self.loc][fix])}, subject=ticket_id)
        if customer_replies:
            self.later(1800, 20_000)
            self.emit("ticket.replied", "helpdesk", {**base, "author": "customer",
                                                     "body_text": _TICKET_CUSTOMER_REPLY[self.loc]}, subject=ticket_id)
        self.later(*resolve_after)
        resolved = {**base, "agent": agent, "resolution": _FIXES[self.loc][fix]}
        self.emit("ticket.resolved", "helpdesk", resolved, subject=ticket_id)
        if self.rng.random() < REOPEN_SHARE:  # "still not fixed": the customer's reply reopens the ticket
            self.later(2 * 3600, 30 * 3600)
            self.emit("ticket.replied", "helpdesk", {**base, "author": "customer",
                                                     "body_text": _TICKET_STILL_BROKEN[self.loc][fix]},
                      subject=ticket_id)
            self.later(1, 30)
            self.emit("ticket.reopened", "helpdesk", {**base, "agent": agent,
                                                      "reason": _REOPEN_REASONS[self.loc][fix]}, subject=ticket_id)
            self.later(600, 7200)
            self.emit("ticket.replied", "helpdesk", {
                **base, "agent": agent, "author": "agent",
                "body_text": _TICKET_AGENT_FOLLOW_UP[self.loc].format(fix=_FIXES[self.loc][fix])}, subject=ticket_id)
            self.later(3 * 3600, 24 * 3600)
            self.emit("ticket.resolved", "helpdesk", resolved, subject=ticket_id)
        return ticket_id

    # --- archetypes -------------------------------------------------------------------------------

    def play(self) -> None:
        getattr(self, f"_{self.p.kind}")()

    def _prospect(self) -> None:
        for visit in range(self.rng.randint(1, 3)):
            if visit:
                self.later(3600, 2 * 86_400)
            products = self.pick_products(self.rng.randint(1, 3))
            self.web_session(self.browse_pages(products, to_cart=self.rng.random() < 0.25), cookie=self.p.anonymous_id)

    def _caller(self) -> None:
        product = self.rng.choice(CATALOGUE[:-1])
        fmt = {"product": product.name(self.loc), "order_id": "-"}
        if self.rng.random() < 0.35:
            self.call("presales", "presales", abandon=True, patience=(30, 240))
            self.later(300, 3600)
        ended, agent = self.call("presales", "presales", **fmt)
        phone = {"phone": self.p.phone}
        if self.rng.random() < 0.3:
            self.later(60, 600)
            self.ticket("service_request", "phone", phone, fix="install", priority="normal", customer_replies=False,
                        resolve_after=(3600, 86_400), product=product.name(self.loc), city=self.p.city,
                        order_id="-")
        if self.rng.random() < 0.8:
            self.survey(self.rng.choice(("good", "good", "neutral")), rated=ended, channel="phone", agent=agent,
                        queue="presales", ids=phone, answer_after=(120, 1800))
        if self.rng.random() < 0.3:
            self.later(86_400, 3 * 86_400)
            self.call("presales", "presales", **fmt)

    def _emailer(self) -> None:
        product = self.rng.choice(CATALOGUE[:-1])
        fmt = {"product": product.name(self.loc), "city": self.p.city, "name": self.p.name}
        subject, body = _QUESTION[self.loc]
        follow = None
        if self.rng.random() < 0.3:
            follow = (_FOLLOW_UP[self.loc].format(**fmt), _FOLLOW_UP_ANSWER[self.loc])
        sent, agent = self.email_thread(subject.format(**fmt), body.format(**fmt),
                                        _QUESTION_ANSWER[self.loc].format(**fmt), follow_up=follow)
        if self.rng.random() < 0.8:
            self.survey(self.rng.choice(("good", "good", "neutral")), rated=sent, channel="email", agent=agent,
                        queue="presales", ids={"email": self.p.email}, answer_after=(3600, 86_400))

    def _first_purchase(self, *, ship_after: tuple[float, float]) -> tuple[str, float, list[Product]]:
        """Anonymous browsing, login, profile, order: the common start of every buyer archetype."""
        products = self.pick_products(self.rng.choice((1, 1, 2, 3)))
        if self.rng.random() < 0.2:  # a pre-sales question by email before buying
            fmt = {"product": products[0].name(self.loc), "city": self.p.city, "name": self.p.name}
            subject, body = _QUESTION[self.loc]
            self.email_thread(subject.format(**fmt), body.format(**fmt), _QUESTION_ANSWER[self.loc].format(**fmt))
            self.later(3600, 86_400)
        if self.rng.random() < 0.6:
            self.web_session(self.browse_pages(products, to_cart=False), cookie=self.p.anonymous_id, campaign=True)
            self.later(3600, 86_400)
        pages = self.browse_pages(products, to_cart=True)
        login_at = len(pages) + 1
        pages += [("login", None), ("account", None), ("checkout", None)]
        self.web_session(pages, cookie=self.p.anonymous_id, login_at=login_at)
        self.sign_up()
        if self.rng.random() < 0.4:
            self.later(1, 30)
            self.consent(True, self.rng.choice(("email", "sms", "all")))
        self.later(30, 300)
        order_id, shipped_at = self.place_order(products, ship_after=ship_after)
        return order_id, shipped_at, products

    def _buyer(self) -> None:
        order_id, shipped_at, products = self._first_purchase(ship_after=(4 * 3600, 36 * 3600))
        fmt = {"product": products[0].name(self.loc), "order_id": order_id, "city": self.p.city,
               "name": self.p.name, "tracking": self.last_tracking}
        self.t = max(self.t, shipped_at) + self.rng.uniform(1800, 12 * 3600)
        rated, agent, channel, queue = None, None, "shop", None
        roll = self.rng.random()
        if roll < 0.35:  # "where is my order" call
            if self.rng.random() < 0.15:
                self.call("aftersales", "delivery", abandon=True)
                self.later(120, 1800)
            rated, agent = self.call("aftersales", "delivery", **fmt)
            channel, queue = "phone", "aftersales"
        elif roll < 0.65:
            subject, body = _WHERE_IS_ORDER[self.loc]
            rated, agent = self.email_thread(subject.format(**fmt), body.format(**fmt),
                                             _WHERE_IS_ORDER_ANSWER[self.loc].format(**fmt))
            channel, queue = "email", "aftersales"
        self.t = max(self.t, shipped_at) + self.rng.uniform(86_400, 2 * 86_400)  # delivered
        delivered = self.t
        installable = [p for p in products if p.sku in _INSTALLABLE]
        if installable and self.rng.random() < 0.5:
            fmt["product"] = installable[0].name(self.loc)
            self.ticket("service_request", "web", {"account_id": self.p.account_id, "email": self.p.email},
                        fix="install", priority="normal", customer_replies=False, resolve_after=(3600, 86_400), **fmt)
            self.later(600, 7200)
        if self.rng.random() < 0.9:
            ids = ({"phone": self.p.phone} if channel == "phone" else
                   {"email": self.p.email} if channel == "email" else
                   {"account_id": self.p.account_id, "email": self.p.email})
            self.survey(self.rng.choice(("good", "good", "good", "neutral")), rated=rated, channel=channel,
                        agent=agent, queue=queue, ids=ids, after=delivered, answer_after=(600, 7200))
        if self.rng.random() < 0.1:
            self.later(3600, 86_400)
            total = self.orders[-1][1]
            self.refund(order_id, total, "return")

    def _repeat(self) -> None:
        _, shipped_at, _ = self._first_purchase(ship_after=(3 * 3600, 24 * 3600))
        self.t = shipped_at + self.rng.uniform(20 * 3600, 30 * 3600)
        self.survey("good", rated=None, channel="shop", agent=None, queue=None,
                    ids={"account_id": self.p.account_id, "email": self.p.email}, answer_after=(600, 6 * 3600),
                    answer_rate=0.5)
        second_cookie = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        for n in range(self.rng.randint(1, 3)):
            self.later(12 * 3600, 36 * 3600)
            products = self.pick_products(self.rng.choice((1, 2)))
            pages = self.browse_pages(products, to_cart=True) + [("checkout", None)]
            if self.rng.random() < 0.35:  # another device: anonymous until the login ties the cookie
                pages = pages[:-1] + [("login", None), ("account", None), ("checkout", None)]
                self.web_session(pages, cookie=second_cookie, login_at=len(pages) - 2)
            else:  # remembered login: logged in from the first page
                self.web_session(pages, cookie=self.p.anonymous_id, user=self.p.account_id)
            if n == 0 and self.rng.random() < 0.25:
                self.emit("profile.updated", "crm", {"account_id": self.p.account_id, "phone": self.p.phone,
                                                     "address": {**self.p.address, "line2": "3F"},
                                                     "properties": {"trait_source": "account_settings"}})
                self.later(10, 120)
            order_id, shipped_at = self.place_order(products, ship_after=(2 * 3600, 20 * 3600))
            if self.rng.random() < 0.3:
                self.t = shipped_at + self.rng.uniform(1800, 6 * 3600)
                ended, agent = self.call("vip", "delivery", order_id=order_id,
                                         product=products[0].name(self.loc))
                self.survey("good", rated=ended, channel="phone", agent=agent, queue="vip", ids={"phone": self.p.phone},
                            answer_after=(300, 3600), answer_rate=0.5)
            self.t = max(self.t, shipped_at)

    def _complainer(self) -> None:
        problem = self.rng.choice(("late", "late", "damaged"))
        ship_after = (2 * 86_400, 3 * 86_400) if problem == "late" else (6 * 3600, 20 * 3600)
        order_id, shipped_at, products = self._first_purchase(ship_after=ship_after)
        fmt = {"product": products[0].name(self.loc), "order_id": order_id, "city": self.p.city,
               "name": self.p.name, "days": str(self.rng.randint(3, 5)), "problem": _PROBLEMS[self.loc][problem]}
        if problem == "late":
            self.t += self.rng.uniform(36 * 3600, 60 * 3600)  # still nothing after a day and a half
        else:
            self.t = shipped_at + self.rng.uniform(20 * 3600, 30 * 3600)  # arrives broken
        if self.rng.random() < 0.5:
            self.call("complaints", "complaint", abandon=True, patience=(120, 600))
            self.later(300, 3600)
        ended, agent = self.call("complaints", "complaint", patience=(60, 900), **fmt)
        self.later(600, 7200)
        subject, body = _COMPLAINT[self.loc][problem]
        self.email_thread(subject.format(**fmt), body.format(**fmt), _APOLOGY[self.loc],
                          reply_within=(3600, 20 * 3600))
        self.later(600, 3600)
        fix = "refund" if problem == "damaged" or self.rng.random() < 0.5 else "replace"
        channel = self.rng.choice(("email", "phone"))
        ids = {"phone": self.p.phone} if channel == "phone" else {"email": self.p.email}
        self.ticket("complaint", channel, ids, fix=fix,
                    priority=self.rng.choice(("high", "urgent")), customer_replies=self.rng.random() < 0.5,
                    resolve_after=(4 * 3600, 36 * 3600), **fmt)
        if fix == "refund" or self.rng.random() < 0.2:
            self.later(600, 7200)
            total = self.orders[-1][1]
            self.refund(order_id, total, problem)
        if self.rng.random() < 0.95:
            self.survey(self.rng.choice(("bad", "bad", "neutral")), rated=ended, channel="phone", agent=agent,
                        queue="complaints", ids={"phone": self.p.phone}, answer_after=(1800, 86_400),
                        answer_rate=0.55)  # angry customers answer more often than the rest
        if self.rng.random() < 0.4:
            self.later(3600, 86_400)
            self.consent(False, "all")
