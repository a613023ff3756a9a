"""An RFC 5322 message → its ``email.received`` / ``email.sent`` CloudEvent (pure: no I/O, no clock).

Real-world mail is messy, so every decoding step degrades instead of failing:

* text declared as GB2312 or GBK is decoded as GB18030 (the superset: Chinese clients declare
  ``gb2312`` and send GBK characters such as 镕 or 喆); an unknown or missing charset is tried as
  UTF-8, then GB18030, then UTF-8 with replacement characters; text declared UTF-8 that is not
  UTF-8 is tried as GB18030 (a GBK client mislabelling its mail) before replacement characters;
* headers are decoded by us from their raw form (RFC 2047 encoded-words, also inside quoted
  display names and file names, and raw 8-bit bytes such as QQ Mail's notices put there);
* file names follow RFC 2231 (``filename*=UTF-8''...``, continuations) or RFC 2047.

Attachments are recorded by name, type and decoded size; their content never leaves this module.
"""
from __future__ import annotations

import codecs
import email.header
import email.message
import email.utils
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email import policy
from email.parser import BytesParser
from html.parser import HTMLParser
from typing import Any, Iterable

import orjson

from events.identifiers import InvalidIdentifier, normalize

MAX_BODY = 16_000
MAX_SUBJECT = 1_000
MAX_FILENAME = 500
MAX_FIELD = 200
MAX_ADDRESSES = 50
MAX_REFERENCES = 100
MAX_ATTACHMENTS = 100
MAX_DEPTH = 20  # nesting of multiparts and forwarded messages; deeper parts are ignored

_GB_LABELS = {"gb2312", "gbk", "gb18030", "x-gbk", "cp936", "ms936", "windows-936", "euc-cn", "x-euc-cn",
              "csgb2312", "chinese", "gb_2312-80", "iso-ir-58", "csiso58gb231280"}
_AUTO_LABELS = {"", "us-ascii", "ascii", "unknown-8bit", "x-unknown", "unknown", "default", "8bit", "7bit",
                "x-user-defined"}
_MSGID = re.compile(r"<[^<>\s]+>")
_SURROGATES = re.compile(r"[\udc80-\udcff]")


class Unmappable(ValueError):
    """The message cannot become an event; the text says why (it goes back in the SMTP reply)."""


@dataclass(frozen=True)
class Mailbox:
    """Where the message came from, as the SMTP session saw it."""

    envelope_from: str | None = None
    envelope_to: tuple[str, ...] = ()
    fax_senders: tuple[str, ...] = ()
    """Addresses of the fax-to-mail gateways (CRM_MAIL_FAX_SENDERS): their mail with a PDF or TIFF
    attachment is a received fax."""


# --- charsets -------------------------------------------------------------------------------------

def text_codec(label: str | None) -> str | None:
    """The codec to decode text declared with ``label``; None when undeclared or unknown."""
    name = (label or "").strip().strip("'\"").lower()
    if name in _GB_LABELS:
        return "gb18030"
    if name in _AUTO_LABELS:
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def decode_text(data: bytes, label: str | None) -> str:
    """Decode ``data`` declared as ``label``, never failing (see the module docstring)."""
    codec = text_codec(label)
    if codec is None:
        for guess in ("utf-8", "gb18030"):
            try:
                return data.decode(guess)
            except UnicodeDecodeError:
                pass
        return data.decode("utf-8", "replace")
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        if codec == "utf-8":
            try:
                return data.decode("gb18030")
            except UnicodeDecodeError:
                pass
        return data.decode(codec, "replace")


def _unescape_8bit(raw: str, label: str | None = None) -> str:
    """A raw header value with 8-bit bytes (kept by the parser as surrogate escapes) as text."""
    if not _SURROGATES.search(raw):
        return raw
    return decode_text(raw.encode("utf-8", "surrogateescape"), label)


def decode_words(raw: str, label: str | None = None) -> str:
    """Decode a raw header text: unfold it, decode RFC 2047 encoded-words (wherever they are)
    and raw 8-bit bytes."""
    text = re.sub(r"\r?\n(?=[ \t])", "", _unescape_8bit(raw, label))
    if "=?" not in text:
        return text
    try:
        chunks = email.header.decode_header(text)
    except Exception:  # a malformed encoded-word: keep the text as it came
        return text
    out = []
    for chunk, charset in chunks:
        out.append(chunk if isinstance(chunk, str) else decode_text(chunk, charset))
    return "".join(out)


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` without control characters (NUL in particular) and lone surrogates, which no
    stored text can hold; line breaks and tabs stay."""
    return _CONTROL.sub("", text)


def _clean(text: str, limit: int) -> str:
    return re.sub(r"\s+", " ", printable(text)).strip()[:limit]


# --- headers --------------------------------------------------------------------------------------

def _raw(msg: email.message.Message, name: str) -> str | None:
    """The first raw value of header ``name`` (as on the wire, unfolded later; 8-bit bytes decoded)."""
    for key, value in msg.raw_items():
        if key.lower() == name:
            return _unescape_8bit(str(value))
    return None


def _raw_all(msg: email.message.Message, name: str) -> list[str]:
    return [_unescape_8bit(str(v)) for k, v in msg.raw_items() if k.lower() == name]


def _addresses(msg: email.message.Message, *names: str) -> list[tuple[str, str]]:
    """(display name, lower-cased address) of every mailbox in the headers, in order, once each."""
    raws = [_unescape_8bit(v) for name in names for v in _raw_all(msg, name)]
    seen, out = set(), []
    for display, addr in email.utils.getaddresses([re.sub(r"\r?\n(?=[ \t])", "", r) for r in raws]):
        addr = addr.strip().strip("<>").lower()
        if "@" not in addr or len(addr) > MAX_FIELD or addr in seen:
            continue
        seen.add(addr)
        out.append((_clean(decode_words(display), MAX_FIELD).strip('"').strip(), addr))
    return out


def _message_ids(raw: str | None) -> list[str]:
    return [m for m in _MSGID.findall(printable(raw or "")) if len(m) <= MAX_FIELD]


def _valid(address: str) -> bool:
    try:
        normalize("email", address)
    except InvalidIdentifier:
        return False
    return True


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


# --- bodies ---------------------------------------------------------------------------------------

class _HtmlText(HTMLParser):
    """HTML → plain text: scripts, styles and the head dropped, block elements as line breaks."""

    _SKIP = {"script", "style", "head", "title", "noscript", "template"}
    _BLOCK = {"p", "div", "br", "li", "tr", "table", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6",
              "blockquote", "hr", "pre", "section", "article", "header", "footer", "dt", "dd"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self._SKIP:
            self.skipping += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: Any) -> None:
        if tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(re.sub(r"[ \t\r\n\f]+", " ", data))


def html_to_text(html: str) -> str:
    """The readable text of an HTML body (stdlib html.parser; tolerant of broken markup)."""
    parser = _HtmlText()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # html.parser rarely raises; if it does, keep what was read
        pass
    lines = [re.sub(r" {2,}", " ", line).strip()
             for line in "".join(parser.parts).replace("\xa0", " ").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _normalize_text(text: str) -> str:
    text = printable(text.replace("\r\n", "\n").replace("\r", "\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(line.rstrip() for line in text.split("\n"))).strip()


_SEPARATORS = re.compile(
    r"^\s*(?:-{2,}\s*(?:原始邮件|Original(?: Message)?|邮件原件|原始郵件)\s*-{2,}"
    r"|-{3,}\s*Original Message\s*-{3,}"
    r"|_{20,})\s*$", re.IGNORECASE)
_ATTRIBUTION = re.compile(r"(wrote|写道|寫道|écrit|schrieb)\s*[:：]\s*$", re.IGNORECASE)


def trim_quoted(text: str) -> str:
    """The reply without the history it quotes, only where that is unambiguous: a trailing block
    of ``>`` lines (with the "... wrote:" line before it) or everything below a client's
    "original message" separator (QQ Mail, Outlook, Foxmail). Inline answers between quotes are
    kept; if nothing would remain the text is kept whole."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if i > 0 and _SEPARATORS.match(line):
            head = "\n".join(lines[:i]).strip()
            return head or text
    end = len(lines)
    while end > 0 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith(">")):
        end -= 1
    if end == len(lines) or not any(l.lstrip().startswith(">") for l in lines[end:]):
        return text
    if end > 0 and _ATTRIBUTION.search(lines[end - 1]):
        end -= 1
    head = "\n".join(lines[:end]).strip()
    return head or text


@dataclass
class _Collected:
    texts: list[str]
    attachments: list[dict[str, Any]]


def _filename(part: email.message.Message) -> str | None:
    """The part's file name: Content-Disposition filename, else Content-Type name; RFC 2231 and
    RFC 2047 decoded, GB labels as GB18030."""
    for header, param in (("content-disposition", "filename"), ("content-type", "name")):
        raw = _raw(part, header)
        if raw is None:
            continue
        holder = email.message.Message()  # compat32: parameters exactly as written
        holder[header] = re.sub(r"\r?\n(?=[ \t])", "", _unescape_8bit(raw))
        value = holder.get_param(param, header=header)
        if value is None:
            continue
        if isinstance(value, tuple):  # RFC 2231: (charset, language, %-encoded value)
            charset, _, latin1 = value  # the stdlib %-decoded it as Latin-1: these are the bytes
            text = decode_text(latin1.encode("latin-1", "replace"), charset or "utf-8")
        else:
            text = email.utils.unquote(value)
        name = _clean(decode_words(text), MAX_FILENAME)
        if name:
            return name
    return None


def _payload(part: email.message.Message) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception:  # a broken transfer encoding: the part is counted as empty
        return b""
    return data if isinstance(data, bytes) else b""


def _leaf_text(part: email.message.Message) -> str:
    text = decode_text(_payload(part), part.get_content_charset())
    if part.get_content_type() == "text/html":
        return html_to_text(text)
    return _normalize_text(text)


def _is_body(part: email.message.Message) -> bool:
    return (part.get_content_type() in ("text/plain", "text/html")
            and part.get_content_disposition() != "attachment")


def _record(part: email.message.Message, out: _Collected) -> None:
    content_type = printable(part.get_content_type()) or "application/octet-stream"
    out.attachments.append({"filename": _filename(part), "content_type": content_type[:MAX_FIELD],
                            "size": len(_payload(part))})


def _walk(part: email.message.Message, out: _Collected, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        return
    ctype = part.get_content_type()
    if ctype == "message/rfc822":
        inner = part.get_payload()
        inner = inner[0] if isinstance(inner, list) and inner else inner
        if isinstance(inner, email.message.Message):
            if part.get_content_disposition() == "attachment":  # "forward as attachment": a file too
                out.attachments.append({"filename": _filename(part), "content_type": ctype,
                                        "size": _message_size(inner)})
            _forwarded(inner, out, depth + 1)
            return
    if part.is_multipart():
        children = [c for c in part.get_payload() if isinstance(c, email.message.Message)]
        if ctype == "multipart/alternative":
            chosen = _choose_alternative(children)
            if chosen is not None:
                _walk(chosen, out, depth + 1)
            return
        for child in children:
            try:
                _walk(child, out, depth + 1)
            except Exception:  # one part the stdlib cannot read (malformed headers) must not lose the rest
                continue
        return
    if _is_body(part):
        text = _leaf_text(part)
        if text:
            out.texts.append(text)
        return
    _record(part, out)


def _message_size(inner: email.message.Message) -> int:
    try:
        return len(inner.as_bytes())
    except Exception:  # a forwarded message too broken to serialize again
        return 0


def _choose_alternative(children: list[email.message.Message]) -> email.message.Message | None:
    """text/plain when it says something, else HTML, else the richest other part (e.g. related)."""
    by_type: dict[str, email.message.Message] = {}
    for child in children:
        by_type.setdefault(child.get_content_type(), child)
    plain = by_type.get("text/plain")
    if plain is not None and _leaf_text(plain).strip():
        return plain
    if "text/html" in by_type:
        return by_type["text/html"]
    for child in reversed(children):
        if child.is_multipart():
            return child
    return plain or (children[0] if children else None)


def _forwarded(inner: email.message.Message, out: _Collected, depth: int) -> None:
    """A forwarded message: its headers and text are appended to the body, its files recorded."""
    nested = _Collected([], out.attachments)
    _walk(inner, nested, depth)
    head = ["---------- Forwarded message ----------"]
    for label, name in (("From", "from"), ("Date", "date"), ("Subject", "subject"), ("To", "to")):
        raw = _raw(inner, name)
        if raw:
            head.append(f"{label}: {_clean(decode_words(raw), MAX_SUBJECT)}")
    out.texts.append("\n".join(head) + ("\n\n" + "\n\n".join(nested.texts) if nested.texts else ""))


# --- the event ------------------------------------------------------------------------------------

def _time(msg: email.message.Message, now: datetime) -> datetime:
    raw = _raw(msg, "date")
    if raw:
        try:
            when = email.utils.parsedate_to_datetime(_clean(raw, 200))
            if when.tzinfo is None:  # "-0000": the sender did not know its zone; UTC is the best guess
                when = when.replace(tzinfo=timezone.utc)
            if datetime(1900, 1, 1, tzinfo=timezone.utc) <= when < datetime(2200, 1, 1, tzinfo=timezone.utc):
                return when
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
    return now


def event_id(message_id: str) -> str:
    """The event id of a message: the same Message-ID is the same event, whatever the route."""
    return "email:" + hashlib.sha256(message_id.strip().lower().encode("utf-8", "surrogateescape")).hexdigest()[:40]


def parse_message(raw: bytes) -> email.message.EmailMessage:
    """The stdlib parse (policy.default); it never raises on malformed input, it records defects."""
    return BytesParser(policy=policy.default).parsebytes(raw)


def _fit(event: dict[str, Any], limit: int) -> dict[str, Any]:
    """Shorten the body (then the lists) until the event's JSON fits the collector's per-event
    limit: 16,000 Chinese characters are 48 KB of UTF-8."""
    data = event["data"]
    size = len(orjson.dumps(event))
    while size > limit and data["body_text"]:
        body = data["body_text"]
        body_bytes = len(orjson.dumps(body))
        keep = max(0, body_bytes - (size - limit) - 64)  # bytes of body that fit, with a little room
        data["body_text"] = body[:min(len(body) - 1, len(body) * keep // body_bytes)].rstrip()
        data.setdefault("properties", {})["body_truncated"] = True
        size = len(orjson.dumps(event))
    for key in ("attachments", "references", "cc"):
        while size > limit and len(data[key]) > 1:
            data[key] = data[key][:len(data[key]) // 2]
            size = len(orjson.dumps(event))
    return event


# --- faxes from a fax-to-mail gateway ---------------------------------------------------------------

FAX_SUBJECT = re.compile(r"(?i)\b(?:facsimile|fax)\s+(?:received\s+)?from\s+(?P<sender>.+?)\s*$")
"""HylaFAX's faxrcvd: "facsimile received from <TSI>"; many services: "Fax from <number>"."""
FAX_DOCUMENT_TYPES = ("application/pdf", "image/tiff", "image/tif")
_FAX_FIELD = re.compile(r"(?im)^\s*(Sender|CallID1|Pages|CommID|Received On)\s*:\s*(.+?)\s*$")
_NUMBER = re.compile(r"^\+?[\d\s().-]{5,40}$")


def _fax_number(text: str | None) -> str | None:
    """A fax number as written (the identity layer normalizes it), or None for a station name."""
    text = (text or "").strip()
    return text if _NUMBER.match(text) and sum(c.isdigit() for c in text) >= 5 else None


def _fax(sender: str, subject: str, body: str, attachments: list[dict[str, Any]], mailbox: Mailbox
         ) -> dict[str, Any] | None:
    """The ``fax.received`` data of a fax-to-mail gateway's message, or None when it is not one:
    a faxrcvd-style subject or a configured gateway sender, and a PDF or TIFF attachment."""
    match = FAX_SUBJECT.search(subject)
    gateway_sender = sender.lower() in {a.strip().lower() for a in mailbox.fax_senders if a.strip()}
    documents = [a for a in attachments if a.get("content_type", "").lower() in FAX_DOCUMENT_TYPES
                 or (a.get("filename") or "").lower().endswith((".pdf", ".tif", ".tiff"))]
    if not (match or gateway_sender) or not documents:
        return None
    fields: dict[str, str] = {}
    for name, value in _FAX_FIELD.findall(body):
        fields.setdefault(name.lower(), value)
    number = (_fax_number(fields.get("callid1")) or _fax_number(fields.get("sender"))
              or _fax_number(match.group("sender") if match else None))
    if number is None:
        return None
    pages = fields.get("pages", "")
    data: dict[str, Any] = {"from_number": number, "document": documents[0],
                            "gateway": "hylafax" if "callid1" in fields or "commid" in fields else "fax-to-mail"}
    if pages.isdigit():
        data["pages"] = int(pages)
    return data


def to_events(raw: bytes, *, domains: Iterable[str], source: str, now: datetime,
              mailbox: Mailbox = Mailbox(), max_event_bytes: int = 32 * 1024) -> list[dict[str, Any]]:
    """The CloudEvent(s) of one message (one today: its direction decides the type).

    ``domains`` are the company's mail domains: mail from them is ``email.sent`` (the customer is
    the first To/Cc recipient outside them), any other mail ``email.received`` (the customer is the
    sender). Raises ``Unmappable`` with the reason when the message cannot be an event.
    """
    ours = {d.strip().lower().lstrip("@") for d in domains if d.strip()}
    if not raw.strip():
        raise Unmappable("the message is empty")
    msg = parse_message(raw)

    senders = _addresses(msg, "from")
    if not senders:
        raise Unmappable("the message has no From address")
    from_name, sender = senders[0]
    if not _valid(sender):
        raise Unmappable(f"the From address {sender!r} is not a valid email address")
    to = _addresses(msg, "to")
    cc = _addresses(msg, "cc")
    outbound = _domain(sender) in ours

    to_list = [addr for _, addr in to]
    if outbound:
        outside = [addr for _, addr in to + cc if _domain(addr) not in ours and _valid(addr)]
        if not outside:
            raise Unmappable(f"mail from {sender} (one of the company's domains) has no To or Cc recipient "
                             "outside the company's domains, so there is no customer to record it for")
        customer, kind = outside[0], "email.sent"
        # email.sent names its customer by the first To address (events/touchpoints.py)
        to_list = [customer] + [a for a in to_list if a != customer]
    else:
        customer, kind = sender, "email.received"

    if not to_list:  # "undisclosed recipients": the envelope says who it reached
        to_list = [a.lower() for a in mailbox.envelope_to if "@" in a and len(a) <= MAX_FIELD]
    if not to_list:
        raise Unmappable("the message has no recipient (no To header and no envelope recipient)")

    declared_id = _message_ids(_raw(msg, "message-id"))
    message_id = declared_id[0] if declared_id else (
        "<" + hashlib.sha256(raw).hexdigest()[:40] + "@no-message-id.crm-mail>")
    in_reply_to = (_message_ids(_raw(msg, "in-reply-to")) or [None])[0]
    references = list(dict.fromkeys(_message_ids(" ".join(_raw_all(msg, "references")))))
    if len(references) > MAX_REFERENCES:  # the first names the thread; the last ones the nearest parents
        references = references[:1] + references[-(MAX_REFERENCES - 1):]
    thread_id = references[0] if references else (in_reply_to or message_id)

    collected = _Collected([], [])
    try:
        _walk(msg, collected)
    except Exception:  # the top-level part itself is unreadable: record the message without its text
        pass
    body = trim_quoted(_normalize_text("\n\n".join(collected.texts)))[:MAX_BODY].strip()
    subject = _clean(decode_words(_raw(msg, "subject") or ""), MAX_SUBJECT)

    data: dict[str, Any] = {
        "email": customer,
        "message_id": message_id,
        "thread_id": thread_id,
        "from": sender,
        "to": to_list[:MAX_ADDRESSES],
        "cc": [addr for _, addr in cc if not (outbound and addr == customer)][:MAX_ADDRESSES],
        "subject": subject,
        "body_text": body,
        "references": references,
        "attachments": collected.attachments[:MAX_ATTACHMENTS],
    }
    fax = None if outbound else _fax(sender, subject, "\n".join(collected.texts), collected.attachments, mailbox)
    if fax is not None:
        return [{
            "specversion": "1.0", "id": event_id(message_id).replace("email:", "fax:", 1), "source": source,
            "type": "fax.received", "time": _time(msg, now).isoformat(), "datacontenttype": "application/json",
            "data": {"fax_id": message_id[:200], **fax},
        }]
    if in_reply_to:
        data["in_reply_to"] = in_reply_to
    if outbound:
        data["agent"] = sender
    if from_name:
        data["properties"] = {"from_name": from_name}
    return [_fit({
        "specversion": "1.0",
        "id": event_id(message_id),
        "source": source,
        "type": kind,
        "time": _time(msg, now).isoformat(),
        "datacontenttype": "application/json",
        "data": data,
    }, max_event_bytes)]
