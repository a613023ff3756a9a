"""The survey channel: CSAT (1-5) and NPS (0-10) links per touchpoint and agent, and their answer page.

* ``POST /v1/surveys`` (API key, ``events:write``): a channel system asks for a link after a call,
  an email thread or a ticket. The link's content is sealed into its token (``_survey_links``:
  encrypted and authenticated, nothing personal readable in the URL), and ``survey.sent`` is
  published, the response rate's denominator. The link is given out only once that event is
  durable; otherwise the intake's refusal (4xx, 503) is passed through.
* ``GET /s/{token}``: a small HTML page in the link's language (``?lang=en|zh`` switches) with the
  asked scores as radio buttons and an optional comment; a plain form POST, no script needed.
  ``?score=N`` (or ``?csat=``/``?nps=``) only pre-selects a score: mail scanners fetch links.
* ``POST /s/{token}``: the answer. One transaction claims the survey in ``survey_response`` (ids and
  times only), publishes ``survey.answered`` and commits only when the intake answered 202, so an
  answer is recorded exactly once: a second one gets 409, a failed one can be sent again.

Tokens that fail to open count against the client IP's allowance of failed attempts
(``CRM_IP_RATE_LIMIT_*``), as bad API keys do.
"""
from __future__ import annotations

import asyncio
import html
import logging
import math
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from string import Template
from typing import Annotated, Any, Awaitable, Callable, Literal
from urllib.parse import parse_qs

import orjson
import psycopg2
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.concurrency import run_in_threadpool

from events.envelope import InvalidEvent, validate
from services.common.apikeys import EVENTS_WRITE, PUBLISHABLE
from services.common.auth import AuthProblem, Caller, client_ip, require
from services.common.db import KeepingPool, connect_params
from services.common.settings import Settings
from services.common.vault import load_master_key
from services.ingest.adapters._survey_links import IDENTIFIERS, InvalidLink, LinkSealer, SurveyLink
from services.ingest.intake import RETRY_AFTER_S, Intake, Outcome, read_body

log = logging.getLogger(__name__)

SOURCE = "urn:crm:surveys"
OPEN_ROUTES = frozenset({"GET /s/{token}", "POST /s/{token}"})
"""The answer page: the sealed token in its URL is the credential."""

MAX_LINKS = 1000
"""Most links one ``POST /v1/surveys`` creates."""
MAX_COMMENT = 2000
MAX_FORM_BYTES = 64 * 1024
"""An answer form: 2,000 Chinese characters percent-encoded are some 18 kB."""
STATIC = Path(__file__).resolve().parent.parent / "static"
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # the token is in the URL
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}
PAGES = Counter("crm_ingest_survey_pages_total", "survey page requests by outcome", ["method", "status"])

Str200 = Annotated[str, Field(max_length=200)]


# --- the link request ---------------------------------------------------------------------------

class CustomerIn(BaseModel):
    """Who the survey goes to: at least one identifier."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    email: Str200 | None = None
    phone: Str200 | None = None
    account_id: Str200 | None = None

    @model_validator(mode="after")
    def _one_identifier(self) -> "CustomerIn":
        if not any(getattr(self, k) for k in IDENTIFIERS):
            raise ValueError("the customer needs at least one identifier: email, phone or account_id")
        return self

    def identifiers(self) -> dict[str, str]:
        return {k: v for k in IDENTIFIERS if (v := getattr(self, k))}


class SurveyIn(BaseModel):
    """One link to create."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    kind: Literal["csat", "nps", "csat+nps"]
    touchpoint_id: Annotated[str, Field(min_length=1, max_length=200)]
    channel: Str200 | None = None
    agent: Str200 | None = None
    queue: Str200 | None = None
    customer: CustomerIn
    language: Literal["en", "zh"] = "en"
    expires_in_days: float | None = Field(None, gt=0)

    @field_validator("channel", "agent", "queue")
    @classmethod
    def _blank_is_absent(cls, value: str | None) -> str | None:
        return value or None


SURVEY_IN = {
    "type": "object",
    "required": ["kind", "touchpoint_id", "customer"],
    "additionalProperties": False,
    "properties": {
        "kind": {"enum": ["csat", "nps", "csat+nps"], "description": "the scores asked: CSAT 1-5, NPS 0-10, both"},
        "touchpoint_id": {"type": "string", "maxLength": 200, "description": "the rated call, email thread, "
                                                                               "ticket... (e.g. the call_id)"},
        "channel": {"type": "string", "maxLength": 200, "description": "phone, email, chat, ticket, ..."},
        "agent": {"type": "string", "maxLength": 200, "description": "the agent rated (shown on the page)"},
        "queue": {"type": "string", "maxLength": 200},
        "customer": {"type": "object", "minProperties": 1, "additionalProperties": False,
                     "properties": {k: {"type": "string", "maxLength": 200} for k in IDENTIFIERS}},
        "language": {"enum": ["en", "zh"], "default": "en", "description": "the page's language"},
        "expires_in_days": {"type": "number", "exclusiveMinimum": 0,
                            "description": "at most (and by default) CRM_SURVEY_LINK_DAYS"},
    },
}
SURVEY_OUT = {"type": "object", "properties": {"survey_id": {"type": "string"}, "url": {"type": "string"},
                                               "expires_at": {"type": "string", "format": "date-time"}}}
CREATE_DOC = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "oneOf": [SURVEY_IN, {"type": "array", "items": SURVEY_IN, "minItems": 1, "maxItems": MAX_LINKS}]}}}},
    "responses": {
        "201": {"description": "the link (an array of links for an array); survey.sent is durable",
                "content": {"application/json": {"schema": {"oneOf": [SURVEY_OUT,
                                                                       {"type": "array", "items": SURVEY_OUT}]}}}},
        "400": {"description": "an invalid request, or the intake refused the survey.sent events"},
        "413": {"description": "the request is over the size limit"},
        "503": {"description": "the event log is unavailable; no link was made, retry after Retry-After"},
    },
}
PAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the page (GET) or the thank-you page (POST)", "content": {"text/html": {}}},
    400: {"description": "(POST) a score the link asks is missing or out of range, or the comment is too long"},
    404: {"description": "the token is not valid"}, 409: {"description": "the survey was already answered"},
    410: {"description": "the link expired"}, 413: {"description": "(POST) the form is too big"},
    429: {"description": "too many invalid tokens from this client IP"},
    503: {"description": "(POST) the answer could not be recorded; nothing was kept, try again"},
}


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, timezone.utc).isoformat().replace("+00:00", "Z")


def _clean(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def sent_event(link: SurveyLink, now: float) -> dict[str, Any]:
    """The ``survey.sent`` CloudEvent of a new link (one per survey: its id is the survey's)."""
    return {"specversion": "1.0", "id": f"survey:{link.survey_id}:sent", "source": SOURCE, "type": "survey.sent",
            "time": _iso(now), "data": _clean({
                "survey_id": link.survey_id, "rated_touchpoint_id": link.touchpoint_id,
                "rated_channel": link.channel, "agent": link.agent, "queue": link.queue, **link.customer,
                "properties": {"kind": link.kind, "language": link.language, "expires_at": _iso(link.expires_at)}})}


def answered_event(link: SurveyLink, scores: dict[str, int], comment: str, language: str,
                   now: float) -> dict[str, Any]:
    """The ``survey.answered`` CloudEvent: attributed to the touchpoint and agent the link rates."""
    return {"specversion": "1.0", "id": f"survey:{link.survey_id}:answered", "source": SOURCE,
            "type": "survey.answered", "time": _iso(now), "data": _clean({
                "survey_id": link.survey_id, "csat": scores.get("csat"), "nps": scores.get("nps"),
                "comment": comment, "rated_touchpoint_id": link.touchpoint_id, "rated_channel": link.channel,
                "agent": link.agent, "queue": link.queue, **link.customer,
                "properties": {"kind": link.kind, "language": language}})}


# --- the page's words ---------------------------------------------------------------------------

TEXTS: dict[str, dict[str, Any]] = {
    "en": {
        "language": "English", "title": "Your feedback", "heading": "How did we do?",
        "csat": "How satisfied are you with the service you received?",
        "csat_labels": ("Very dissatisfied", "Dissatisfied", "Neutral", "Satisfied", "Very satisfied"),
        "nps": "How likely are you to recommend us to a friend or colleague?",
        "nps_low": "Not at all likely", "nps_high": "Extremely likely",
        "comment": "Anything else you would like to tell us? (optional)", "submit": "Send",
        "note": "You can answer once.",
        "context": {"phone": ("Your call with {agent}", "About your recent call"),
                    "email": ("Your emails with {agent}", "About your recent email"),
                    "chat": ("Your chat with {agent}", "About your recent chat"),
                    "ticket": ("Your request handled by {agent}", "About your recent request"),
                    "": ("Your conversation with {agent}", "About your recent contact with us")},
        "choose": "Please choose a score: {question}",
        "too_long": "Your comment is too long: at most 2,000 characters, please.",
        "thanks": ("Thank you!", "Your feedback has been received. It helps us serve you better."),
        "already": ("Already answered", "You have already answered, thank you!"),
        "expired": ("This link has expired", "This survey link has expired. Thank you all the same."),
        "invalid": ("Link not valid", "This survey link is not valid. Please check that it was copied whole."),
        "retry": ("Please try again", "We could not save your answer just now. Please try again in a moment."),
        "too_many": ("Too many attempts", "Please try again in a moment."),
        "too_big": ("Answer too long", "Your answer is too long to be sent."),
    },
    "zh": {
        "language": "中文", "title": "服务评价", "heading": "请评价我们的服务",
        "csat": "您对本次服务满意吗？",
        "csat_labels": ("非常不满意", "不满意", "一般", "满意", "非常满意"),
        "nps": "您有多大可能向朋友或同事推荐我们？",
        "nps_low": "不太可能", "nps_high": "非常可能",
        "comment": "还有什么想告诉我们的吗？（选填）", "submit": "提交",
        "note": "每个链接只能提交一次。",
        "context": {"phone": ("您与 {agent} 的通话", "关于您最近的通话"),
                    "email": ("您与 {agent} 的邮件沟通", "关于您最近的邮件"),
                    "chat": ("您与 {agent} 的在线沟通", "关于您最近的在线沟通"),
                    "ticket": ("{agent} 为您处理的服务请求", "关于您最近的服务请求"),
                    "": ("您与 {agent} 的沟通", "关于您最近与我们的联系")},
        "choose": "请选择评分：{question}",
        "too_long": "留言过长，最多 2000 字。",
        "thanks": ("感谢您的反馈！", "我们已收到您的评价，这将帮助我们改进服务。"),
        "already": ("您已提交过评价", "您已经提交过评价，谢谢！"),
        "expired": ("链接已过期", "此问卷链接已过期，仍然感谢您的支持。"),
        "invalid": ("链接无效", "此问卷链接无效，请确认链接完整。"),
        "retry": ("请稍后再试", "暂时无法保存您的评价，请稍后再试。"),
        "too_many": ("尝试次数过多", "请稍后再试。"),
        "too_big": ("内容过长", "您提交的内容过长。"),
    },
}
CHANNEL_GROUPS = {"phone": "phone", "call": "phone", "voice": "phone", "tel": "phone",
                  "email": "email", "mail": "email",
                  "chat": "chat", "livechat": "chat", "wechat": "chat", "web": "chat", "im": "chat", "sms": "chat",
                  "whatsapp": "chat", "ticket": "ticket"}


def language_of(*asked: str | None, accept: str = "") -> str | None:
    """The first of ``asked`` that names a page language (``zh-CN`` is ``zh``), else the
    Accept-Language header's first, else None."""
    for value in (*asked, accept.split(",")[0] if accept else None):
        tag = (value or "").strip().lower()
        if tag.startswith("zh"):
            return "zh"
        if tag.startswith("en"):
            return "en"
    return None


def context_line(texts: dict[str, Any], channel: str | None, agent: str | None) -> str:
    """'Your call with agent-li': what the survey is about, by the rated channel."""
    with_agent, without = texts["context"][CHANNEL_GROUPS.get((channel or "").lower(), "")]
    return with_agent.format(agent=agent) if agent else without


def _score(value: str | None, metric: str) -> int | None:
    """A score given as text, or None when absent or out of the metric's range."""
    if value is None or not re.fullmatch(r"[0-9]{1,2}", value.strip()):
        return None
    n = int(value)
    low, high = (1, 5) if metric == "csat" else (0, 10)
    return n if low <= n <= high else None


class Pages:
    """The answer page and the one-message pages (thank you, already answered, errors)."""

    def __init__(self, folder: Path):
        self.form_page = Template((folder / "survey.html").read_text(encoding="utf-8"))
        self.message_page = Template((folder / "survey_message.html").read_text(encoding="utf-8"))

    @staticmethod
    def _response(body: str, status: int, lang: str, method: str, headers: dict[str, str] | None = None
                  ) -> HTMLResponse:
        PAGES.labels(method, str(status)).inc()
        return HTMLResponse(body, status_code=status,
                            headers={**PAGE_HEADERS, "Content-Language": "zh-Hans" if lang == "zh" else "en",
                                     **(headers or {})})

    def message(self, what: str, status: int, lang: str | None, method: str,
                headers: dict[str, str] | None = None) -> HTMLResponse:
        lang = lang or "en"
        heading, text = TEXTS[lang][what]
        body = self.message_page.substitute(html_lang="zh-Hans" if lang == "zh" else "en", page=what,
                                            title=html.escape(heading), heading=html.escape(heading),
                                            text=html.escape(text))
        return self._response(body, status, lang, method, headers)

    def form(self, link: SurveyLink, token: str, lang: str, method: str, *, chosen: dict[str, int | None],
             comment: str = "", error: str = "", status: int = 200) -> HTMLResponse:
        t = TEXTS[lang]
        other = "en" if lang == "zh" else "zh"
        questions = []
        if "csat" in link.asks:
            options = "".join(_option("csat", n, label, chosen.get("csat"))
                              for n, label in zip(range(1, 6), t["csat_labels"]))
            questions.append(f'<fieldset id="csat"><legend>{html.escape(t["csat"])}</legend>'
                             f'<div class="scale csat">{options}</div></fieldset>')
        if "nps" in link.asks:
            options = "".join(_option("nps", n, None, chosen.get("nps")) for n in range(11))
            questions.append(f'<fieldset id="nps"><legend>{html.escape(t["nps"])}</legend>'
                             f'<div class="scale nps">{options}</div><div class="ends">'
                             f'<span>0 = {html.escape(t["nps_low"])}</span>'
                             f'<span>10 = {html.escape(t["nps_high"])}</span></div></fieldset>')
        body = self.form_page.substitute(
            html_lang="zh-Hans" if lang == "zh" else "en", lang=lang, title=html.escape(t["title"]),
            other_lang=other, other_language=html.escape(TEXTS[other]["language"]),
            heading=html.escape(t["heading"]), context=html.escape(context_line(t, link.channel, link.agent)),
            error=f'<p class="error" role="alert" id="error">{html.escape(error)}</p>' if error else "",
            action=html.escape(token), questions="\n".join(questions), comment_label=html.escape(t["comment"]),
            comment_max=MAX_COMMENT, comment=html.escape(comment), submit=html.escape(t["submit"]),
            note=html.escape(t["note"]))
        return self._response(body, status, lang, method)


def _option(metric: str, n: int, label: str | None, chosen: int | None) -> str:
    checked = " checked" if chosen == n else ""
    required = " required" if n == (1 if metric == "csat" else 0) else ""  # one per group asks the browser to check
    small = f"<small>{html.escape(label)}</small>" if label else ""
    return (f'<label class="opt" for="{metric}-{n}"><input type="radio" id="{metric}-{n}" name="{metric}" '
            f'value="{n}"{checked}{required}><span>{n}{small}</span></label>')


# --- which surveys were answered ----------------------------------------------------------------

class NotRecorded(Exception):
    """The answer could not be recorded (the database); the customer may send it again."""


class Responses:
    """``survey_response``: the answered surveys (ids and times only, nothing personal). A
    connection is held across the publish of an answer (the claim's transaction), never a thread."""

    LOCK_TIMEOUT = "20s"  # a concurrent answer of the same survey holds its row until its publish ends

    def __init__(self, dsn: str, maxconn: int = 4):
        self.pool = KeepingPool(maxconn, dsn, application_name="crm-ingest-surveys", connect_timeout=5,
                                **connect_params(dsn))
        self.maxconn = maxconn
        self._slots = None

    @property
    def slots(self) -> asyncio.Semaphore:
        if self._slots is None:  # made in the event loop that uses it
            self._slots = asyncio.Semaphore(self.maxconn)
        return self._slots

    async def answered(self, survey_id: str) -> bool:
        """Whether the survey was answered (False when the database cannot say: the page is shown)."""
        def ask() -> bool:
            conn = self.pool.getconn()
            try:
                with conn, conn.cursor() as cur:
                    cur.execute("SELECT 1 FROM survey_response WHERE survey_id = %s", (survey_id,))
                    return cur.fetchone() is not None
            finally:
                self.pool.putconn(conn, close=bool(conn.closed))
        try:
            async with self.slots:
                return await run_in_threadpool(ask)
        except psycopg2.Error as exc:
            log.warning("survey_response unavailable", extra={"error": type(exc).__name__})
            return False

    async def record(self, link: SurveyLink, publish: Callable[[], Awaitable[Outcome]]) -> Outcome | None:
        """Claim the survey, ``publish`` its answer, and commit only when the answer is durable.
        None: already answered. Raises ``NotRecorded`` when the database fails (nothing kept)."""
        async with self.slots:
            try:
                conn = await run_in_threadpool(self.pool.getconn)
            except psycopg2.Error as exc:
                raise NotRecorded(type(exc).__name__) from None
            close = True  # unless the transaction ends cleanly, the connection is dropped (rolling it back)
            try:
                claimed = await run_in_threadpool(self._claim, conn, link)
                if not claimed:
                    await run_in_threadpool(conn.rollback)
                    close = False
                    return None
                outcome = await publish()
                await run_in_threadpool(conn.commit if outcome.durable else conn.rollback)
                close = False
                return outcome
            except psycopg2.Error as exc:
                raise NotRecorded(type(exc).__name__) from None
            finally:
                self.pool.putconn(conn, close=close or bool(conn.closed))

    def _claim(self, conn, link: SurveyLink) -> bool:
        with conn.cursor() as cur:
            cur.execute(f"SET LOCAL lock_timeout = '{self.LOCK_TIMEOUT}'")
            cur.execute("""INSERT INTO survey_response (survey_id, answered_at, expires_at)
                           VALUES (%s, now(), to_timestamp(%s))
                           ON CONFLICT (survey_id) DO NOTHING RETURNING 1""", (link.survey_id, link.expires_at))
            return cur.fetchone() is not None


# --- wiring -------------------------------------------------------------------------------------

def master_key(settings: Settings) -> bytes:
    """The master key as the collector's vault loads it (services.common.vault.from_settings)."""
    secret = settings.master_key.get_secret_value() if settings.master_key else None
    path = settings.master_key_file or None
    if not secret and not path:
        demo = Path(settings.home) / "keys" / "master.key"
        path = str(demo) if demo.exists() else None
    return load_master_key(secret, path)


def _errors(index: int | None, exc: ValidationError) -> list[dict[str, Any]]:
    where = {} if index is None else {"index": index}
    return [{**where, "field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]


def install(app: FastAPI, intake: Intake, settings: Settings) -> None:
    """Add ``POST /v1/surveys`` and the answer page ``/s/{token}``."""
    sealer = LinkSealer(master_key(settings))
    responses = Responses(settings.pg_dsn)
    pages = Pages(STATIC)
    app.state.survey_links = sealer

    def bad(message: str, status: int = 400, **extra: Any) -> JSONResponse:
        return JSONResponse({"error": message, **extra}, status_code=status)

    @app.post("/v1/surveys", status_code=201, tags=["surveys"], openapi_extra=CREATE_DOC)
    async def create_surveys(request: Request, caller: Annotated[Caller, Depends(require(EVENTS_WRITE))]) -> Response:
        """Create survey links (one object, or an array of them) and publish their ``survey.sent``.
        Answers 201 with ``{survey_id, url, expires_at}`` (an array for an array) once the events are
        durable; a link is never given out otherwise."""
        if caller.key.kind == PUBLISHABLE:
            return bad("a publishable key cannot create survey links: use a secret key with events:write", 403)
        body = await read_body(request, settings.max_batch_bytes)
        if body is None:
            return bad(f"request body is over the limit of {settings.max_batch_bytes} bytes", 413)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return bad(f"malformed JSON: {exc}")
        single = isinstance(payload, dict)
        items = [payload] if single else payload
        if not isinstance(items, list) or not items:
            return bad("the body must be a survey request object or a non-empty array of them")
        if len(items) > MAX_LINKS:
            return bad(f"{len(items)} surveys in one request; the limit is {MAX_LINKS}")
        requests, errors = [], []
        for index, item in enumerate(items):
            try:
                requests.append(SurveyIn.model_validate(item))
            except ValidationError as exc:
                errors += _errors(None if single else index, exc)
                continue
            days = requests[-1].expires_in_days
            if days is not None and days > settings.survey_link_days:
                errors.append({**({} if single else {"index": index}), "field": "expires_in_days",
                               "message": f"at most {settings.survey_link_days:g} days (CRM_SURVEY_LINK_DAYS)"})
        if errors:
            return bad("invalid survey request", detail=errors)

        now = time.time()
        received = datetime.fromtimestamp(now, timezone.utc)
        links, events = [], []
        for index, req in enumerate(requests):
            days = req.expires_in_days or settings.survey_link_days
            link = sealer.new_link(kind=req.kind, touchpoint_id=req.touchpoint_id, channel=req.channel,
                                   agent=req.agent, queue=req.queue, customer=req.customer.identifiers(),
                                   language=req.language, expires_at=math.ceil(now + days * 86400))
            event = sent_event(link, now)
            try:  # said here, in the request's own terms, rather than as the intake's rejection
                validate(event, received_at=received, default_region=settings.default_region,
                         blocked=settings.blocked)
            except InvalidEvent as exc:
                errors += [{**({} if single else {"index": index}),
                            "field": re.sub(r"^data\.(email|phone|account_id)$", r"customer.\1", e.field),
                            "message": e.message} for e in exc.errors]
            links.append(link)
            events.append(event)
        if errors:
            return bad("invalid survey request", detail=errors)

        outcome = await intake.accept(caller, events, single=single, adapter="surveys")
        if not outcome.durable:
            return outcome.response()
        base = settings.public_url.rstrip("/") or str(request.base_url).rstrip("/")
        refused = {r.get("index") for r in outcome.rejected}
        made = [{"survey_id": link.survey_id, "url": f"{base}/s/{sealer.seal(link)}",
                 "expires_at": _iso(link.expires_at)} for index, link in enumerate(links) if index not in refused]
        if refused:  # the refused ones' links are not given out
            return bad("some surveys were refused; links are given for the others only",
                       rejected=outcome.rejected, created=made)
        log.info("survey links created", extra={"surveys": len(made), "key": caller.key.prefix})
        return JSONResponse(made[0] if single else made, status_code=201)

    def opened(request: Request, token: str, method: str) -> SurveyLink | HTMLResponse:
        """The token's link, or the page refusing it (404; 429 once the client failed too often)."""
        try:
            return sealer.open(token)
        except InvalidLink:
            lang = language_of(request.query_params.get("lang"), accept=request.headers.get("accept-language", ""))
            auth = request.app.state.auth
            try:  # a failed attempt costs the client IP, as a bad API key does
                auth.limit([auth.ip_want(client_ip(request))])
            except AuthProblem as exc:
                return pages.message("too_many", 429, lang, method, exc.headers)
            return pages.message("invalid", 404, lang, method)

    @app.get("/s/{token}", response_class=HTMLResponse, tags=["surveys"], responses=PAGE_RESPONSES)
    async def survey_page(request: Request, token: str) -> Response:
        """The answer page. ``?lang=en|zh`` switches the language; ``?score=N`` (or ``?csat=``, ``?nps=``)
        pre-selects a score without answering (mail scanners open links)."""
        link = opened(request, token, "GET")
        if isinstance(link, HTMLResponse):
            return link
        q = request.query_params
        lang = language_of(q.get("lang")) or link.language
        if link.expired(time.time()):
            return pages.message("expired", 410, lang, "GET")
        if await responses.answered(link.survey_id):
            return pages.message("already", 409, lang, "GET")
        only = link.asks[0] if len(link.asks) == 1 else None
        chosen = {m: _score(q.get(m) or (q.get("score") if m == only else None), m) for m in link.asks}
        return pages.form(link, token, lang, "GET", chosen=chosen)

    @app.post("/s/{token}", response_class=HTMLResponse, tags=["surveys"], responses=PAGE_RESPONSES)
    async def survey_answer(request: Request, token: str) -> Response:
        """An answer, form-encoded: ``csat`` and/or ``nps`` (each score the link asks), optional
        ``comment`` (at most 2,000 characters), ``lang``. Answers the thank-you page; 409 when the
        survey was already answered, 410 when the link expired, 503 to try again."""
        link = opened(request, token, "POST")
        if isinstance(link, HTMLResponse):
            return link
        body = await read_body(request, MAX_FORM_BYTES)
        if body is None:
            return pages.message("too_big", 413, language_of(request.query_params.get("lang")) or link.language,
                                 "POST")
        try:
            form = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True, max_num_fields=20)
        except ValueError:
            form = {}
        field = lambda name: (form.get(name) or [None])[0]  # noqa: E731
        lang = language_of(field("lang"), request.query_params.get("lang")) or link.language
        if link.expired(time.time()):
            return pages.message("expired", 410, lang, "POST")

        t = TEXTS[lang]
        scores = {m: _score(field(m), m) for m in link.asks}
        comment = (field("comment") or "").replace("\r\n", "\n").replace("\x00", "").strip()
        missing = [m for m in link.asks if scores[m] is None]
        error = (t["choose"].format(question=t[missing[0]]) if missing
                 else t["too_long"] if len(comment) > MAX_COMMENT else "")
        if error:
            return pages.form(link, token, lang, "POST", chosen=scores, comment=comment[:MAX_COMMENT * 2],
                              error=error, status=400)

        event = answered_event(link, {m: s for m, s in scores.items() if s is not None}, comment, lang, time.time())
        try:
            outcome = await responses.record(
                link, lambda: intake.accept(None, [event], single=True, adapter="surveys"))
        except NotRecorded as exc:
            log.warning("survey answer not recorded: database unavailable",
                        extra={"survey_id": link.survey_id, "error": str(exc)})
            return pages.message("retry", 503, lang, "POST", {"Retry-After": str(RETRY_AFTER_S)})
        if outcome is None:
            return pages.message("already", 409, lang, "POST")
        if not outcome.durable:
            log.warning("survey answer not accepted by the intake", extra={
                "survey_id": link.survey_id, "status": outcome.status, "reasons": outcome.reasons()})
            return pages.message("retry", 503, lang, "POST",
                                 {"Retry-After": outcome.headers.get("Retry-After", str(RETRY_AFTER_S))})
        log.info("survey answered", extra={"survey_id": link.survey_id})
        return pages.message("thanks", 200, lang, "POST")
