"""services.mail.parse on real-world messages (tests/data/eml, origins in SOURCES.md): charsets,
encoded headers, threads, attachments, direction, ids and the errors of mail that is no event."""
from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from events.envelope import validate
from services.mail.parse import (Mailbox, Unmappable, decode_text, event_id, html_to_text, to_events,
                                 trim_quoted)
from services.mail.receiver import Delivered, MailHandler

EML = Path(__file__).resolve().parents[1] / "data" / "eml"
NOW = datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc)
SOURCE = "urn:crm:mail:test"
COMPANY = ["shop.example.com"]


def sample(name: str) -> bytes:
    return (EML / name).read_bytes()


def event_of(raw: bytes, domains=COMPANY, **kw) -> dict:
    events = to_events(raw, domains=domains, source=SOURCE, now=NOW, **kw)
    assert len(events) == 1
    return events[0]


def test_every_sample_becomes_a_valid_event_deterministically():
    names = sorted(p.name for p in EML.glob("*.eml"))
    assert len(names) >= 11
    for name in names:
        mailbox = Mailbox("10000@qq.com", ("jianxin@jianxinapp.com",))  # one sample has no To header
        first = event_of(sample(name), mailbox=mailbox)
        assert first == event_of(sample(name), mailbox=mailbox), name
        validate(first, received_at=NOW)  # the platform's own validation
        mid = first["data"]["fax_id" if first["type"] == "fax.received" else "message_id"]
        assert first["source"] == SOURCE and first["id"].partition(":")[2] == event_id(mid).partition(":")[2]
        assert len(orjson.dumps(first)) <= 32 * 1024
        assert "\x00" not in json.dumps(first["data"], ensure_ascii=False)


def test_qq_mail_gb18030_alternative_prefers_the_plain_text():
    e = event_of(sample("qq-gb18030-alternative.eml"))
    d = e["data"]
    assert e["type"] == "email.received" and e["time"] == "2024-04-06T10:03:41+08:00"
    assert d["subject"] == "您好，我在2024年看到了社区的开源项目"
    assert d["body_text"].startswith("您好，感谢您百忙之中阅读这份邮件\n我想咨询下社区有没有QQ群或者VX群呀")
    assert d["body_text"].endswith("祝好") and "<div>" not in d["body_text"]
    assert d["properties"]["from_name"] == "孟祥宇 via Linux-erofs"
    assert d["message_id"] == d["thread_id"] == "<tencent_75345952C247D3E1F26BC00629354C648A08@qq.com>"


def test_gb18030_base64_body_and_encoded_display_names():
    d = event_of(sample("qq-gb18030-plain-base64.eml"))["data"]
    assert "so this is followed by the shallow-list：" in d["body_text"]  # a full-width colon in GB18030
    assert d["properties"]["from_name"] == "Force.Charlie" and d["to"] == ["git@vger.kernel.org"]


def test_163_gbk_reply_threads_on_references_and_drops_the_quoted_history():
    d = event_of(sample("163-coremail-gbk-reply.eml"))["data"]
    assert d["properties"]["from_name"] == "王征" and d["email"] == d["from"] == "zyytlz.wz@163.com"
    assert d["references"] == ["<20230911134633.619970489@linuxfoundation.org>",
                               "<20230911134645.689607572@linuxfoundation.org>"]
    assert d["in_reply_to"] == "<20230911134645.689607572@linuxfoundation.org>"
    assert d["thread_id"] == "<20230911134633.619970489@linuxfoundation.org>"
    assert len(d["cc"]) == 7 and "angelogioacchino.delregno@collabora.com" in d["cc"]
    assert d["body_text"].endswith("Best regards,\nZheng Wang")
    assert "wrote:" not in d["body_text"] and "6.1-stable review patch" not in d["body_text"]


def test_outlook_gb2312_b_and_q_encoded_words_and_inline_replies_kept():
    e = event_of(sample("outlook-gb2312-encoded-subject-reply.eml"))
    d = e["data"]
    assert d["subject"] == "答复: [PATCH 1/6] migration/colo.c: Use event instead of semaphore"
    assert e["time"] == "2020-05-13T11:31:06+00:00"
    assert d["thread_id"] == "<cover.1589193382.git.lukasstraub2@web.de>"
    # the answer between quotes stays; only the trailing quoted patch goes
    assert d["body_text"].startswith("> If multiple packets miscompare")
    assert "You right, good catch ;)" in d["body_text"] and "Signed-off-by: Lukas" not in d["body_text"]


def test_foxmail_quoted_printable_gb2312_and_an_attachment_by_name_type_size():
    d = event_of(sample("foxmail-gb2312-qp-attachment.eml"))["data"]
    assert d["attachments"] == [{"filename": "t-expf.c", "content_type": "application/octet-stream", "size": 1100}]
    assert "在 2002-02-19 22:09:00 you wrote：" in d["body_text"]  # quote followed by a signature: kept
    assert d["body_text"].endswith("fxzhang@ict.ac.cn") and "I2luY2x1ZGUg" not in d["body_text"]
    assert d["to"] == ["hartvige@mips.com"] and d["cc"] == ["linux-mips@oss.sgi.com"]


def test_an_encoded_display_name_with_a_comma_is_one_mailbox():
    d = event_of(sample("flanker-encoded-header.eml"))["data"]
    assert d["from"] == "foo.bar@example.com" and d["properties"]["from_name"] == "Foo, Bar"
    assert d["to"] == ["foo@example.com"] and d["body_text"] == "hello, world"


def test_raw_8bit_gb2312_headers_and_an_html_only_body():
    raw = sample("flanker-qq-exmail-raw-gb2312.eml")
    with pytest.raises(Unmappable, match="no recipient"):
        event_of(raw)
    d = event_of(raw, mailbox=Mailbox("10000@qq.com", ("jianxin@jianxinapp.com",)))["data"]
    assert d["subject"] == "提示：您的企业成员暂时无法登录邮件客户端"
    assert d["properties"]["from_name"] == "腾讯企业邮箱" and d["to"] == ["jianxin@jianxinapp.com"]
    assert d["body_text"].startswith("尊敬的管理员：\n\n系统检测到邮箱账号jianxin@jianxinapp.com频繁地登录失败")
    assert "“账号”" in d["body_text"] and "style" not in d["body_text"] and "<" not in d["body_text"]
    assert d["message_id"].endswith("@no-message-id.crm-mail>")


def test_gbk_characters_in_text_declared_gb2312_and_an_rfc2047_file_name():
    d = event_of(sample("composed-foxmail-gbk-in-gb2312-attachment.eml"))["data"]
    assert d["properties"]["from_name"] == "王喆"  # 喆 exists in GBK only
    assert d["subject"] == "冰箱不制冷，请安排维修（订单DD20261101-0088）"
    assert "我是王喆" in d["body_text"] and "朱镕师傅" in d["body_text"] and "font-size" not in d["body_text"]
    assert d["attachments"] == [{"filename": "购物小票及故障清单.xlsx", "size": 3098, "content_type":
                                 "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}]


def test_rfc2231_file_names_and_a_forwarded_message():
    d = event_of(sample("composed-thunderbird-forward-rfc2231.eml"))["data"]
    assert d["subject"] == "Fwd: 您的电子发票 — 抬头写错了"
    names = [(a["filename"], a["content_type"]) for a in d["attachments"]]
    assert names == [("电子发票.pdf", "application/pdf"),
                     ("您的电子发票（海尔官方旗舰店 2026-11-02）.eml", "message/rfc822")]  # filename*0*/*1*
    assert d["attachments"][0]["size"] == 1461 and d["attachments"][1]["size"] > 300
    body = d["body_text"]
    assert body.startswith("你好，\n\n发票抬头应该是“上海某某贸易有限公司”")
    assert "---------- Forwarded message ----------" in body and "Subject: 您的电子发票" in body
    assert body.endswith("您的发票已开具，请查收附件。\n\n海尔官方旗舰店")  # the inner GB18030 text


def test_mislabelled_and_unknown_charsets_degrade_to_text():
    e = event_of(sample("composed-mislabelled-charsets.eml"))
    d = e["data"]
    assert d["subject"] == "退货"  # an encoded-word in a charset nobody knows
    assert "请问退货地址是哪里？" in d["body_text"]  # GBK bytes declared utf-8
    assert "订单号 DD20261101-0099" in d["body_text"]  # x-mac-chinesesimp: unknown, UTF-8 in fact
    assert "Sent from my phone \ufffd" in d["body_text"] and "\x00" not in d["body_text"]
    assert e["time"] == "2026-11-04T08:00:00+00:00"  # "-0000": UTC


def test_mail_from_the_company_is_sent_to_the_first_outside_recipient():
    e = event_of(sample("composed-outbound-qq-html-reply.eml"))
    d = e["data"]
    assert e["type"] == "email.sent" and d["email"] == "wang.zhe.1988@163.com"
    assert d["agent"] == d["from"] == "xiao.li@shop.example.com" and d["cc"] == ["service@shop.example.com"]
    assert d["thread_id"] == d["in_reply_to"] == "<202611030912451230178@163.com>"
    # HTML: script, style and title gone; the QQ "original message" below the separator trimmed
    assert d["body_text"] == ("王先生您好：\n\n已为您安排维修师傅，明天 上午 9:00-12:00 上门，请保持电话畅通。\n\n"
                              "如有问题请直接回复本邮件。\n\n海尔官方旗舰店 客服 小李")
    # the same mail seen by a company that owns 163.com: received from xiao.li, its customer
    other = event_of(sample("composed-outbound-qq-html-reply.eml"), domains=["163.com"])
    assert other["type"] == "email.received" and other["data"]["email"] == "xiao.li@shop.example.com"


def test_direction_follows_the_company_domains():
    raw = sample("163-coremail-gbk-reply.eml")
    sent = event_of(raw, domains=["163.com", "vger.kernel.org"])
    assert sent["type"] == "email.sent" and sent["data"]["email"] == "gregkh@linuxfoundation.org"
    assert sent["data"]["agent"] == "zyytlz.wz@163.com"
    # email.sent names its customer by to[0]: the customer (here from Cc) comes first, the rest keep their order
    cc_customer = event_of(raw, domains=["163.com", "linuxfoundation.org", "vger.kernel.org"])["data"]
    assert cc_customer["email"] == "patches@lists.linux.dev"
    assert cc_customer["to"] == ["patches@lists.linux.dev", "gregkh@linuxfoundation.org"]
    assert "patches@lists.linux.dev" not in cc_customer["cc"] and "stable@vger.kernel.org" in cc_customer["cc"]
    received = event_of(raw, domains=["linuxfoundation.org"])
    assert received["type"] == "email.received" and received["data"]["email"] == "zyytlz.wz@163.com"
    assert "agent" not in received["data"] and sent["id"] == received["id"]


def test_line_endings_and_transport_headers_do_not_change_the_event():
    raw = sample("163-coremail-gbk-reply.eml")
    crlf = raw.replace(b"\n", b"\r\n")
    redelivered = b"Received: from mx2.shop.example.com by crm-mail; Tue, 10 Oct 2023 22:20:00 +0800\r\n" + crlf
    assert event_of(crlf) == event_of(raw) == event_of(redelivered)


def test_messages_that_cannot_be_events_say_why():
    with pytest.raises(Unmappable, match="empty"):
        event_of(b"\r\n")
    with pytest.raises(Unmappable, match="no From"):
        event_of(b"To: service@shop.example.com\r\nSubject: hi\r\n\r\nhello\r\n")
    with pytest.raises(Unmappable, match="not a valid email address"):
        event_of(b"From: li@163\r\nTo: service@shop.example.com\r\nSubject: hi\r\n\r\nhello\r\n")
    with pytest.raises(Unmappable, match="no To or Cc recipient outside"):
        event_of(b"From: a@shop.example.com\r\nTo: b@shop.example.com\r\nSubject: internal\r\n\r\nx\r\n")


def test_without_a_message_id_the_bytes_name_the_event():
    one = b"From: li@163.com\r\nTo: service@shop.example.com\r\nSubject: a\r\n\r\nfirst\r\n"
    two = one.replace(b"first", b"second")
    assert event_of(one)["id"] == event_of(one)["id"] != event_of(two)["id"]
    assert event_of(one)["time"] == NOW.isoformat()  # no Date: now


def test_a_long_chinese_body_is_cut_to_fit_the_event_limits():
    text = ("请尽快处理我的退款申请。" * 3000).encode("gb18030")
    raw = (b"From: li@163.com\r\nTo: service@shop.example.com\r\nMessage-ID: <long@163.com>\r\n"
           b"Content-Type: text/plain; charset=gbk\r\n\r\n" + text)
    e = event_of(raw)
    assert len(orjson.dumps(e)) <= 32 * 1024 and 1000 < len(e["data"]["body_text"]) <= 16_000
    assert e["data"]["properties"]["body_truncated"] is True
    validate(e, received_at=NOW)


def test_charset_fallbacks():
    assert decode_text("王喆".encode("gbk"), "gb2312") == "王喆"
    assert decode_text("𠮷".encode("gb18030"), "GBK") == "𠮷"  # four-byte GB18030 under a GBK label
    assert decode_text("中文".encode("utf-8"), "no-such-charset") == "中文"
    assert decode_text("中文".encode("gbk"), None) == "中文"
    assert decode_text(b"\xff\xfe", "utf-8") == "\ufffd\ufffd"


def test_html_to_text_drops_scripts_and_keeps_line_breaks():
    html = ("<html><head><title>t</title><style>p{color:red}</style></head><body><script>var x=1;</script>"
            "<p>第一行</p>第二行<br>第三&nbsp;行 &amp; <b>粗</b><div>last</div></body></html>")
    assert html_to_text(html) == "第一行\n第二行\n第三 行 & 粗\nlast"
    assert html_to_text("<p>unclosed <div><span>x") == "unclosed\nx"


def test_trim_quoted_only_when_unambiguous():
    assert trim_quoted("Thanks!\n\nOn Mon, Bob wrote:\n> hi\n> there\n") == "Thanks!"
    inline = "> question one\nanswer one\n> question two\nanswer two"
    assert trim_quoted(inline) == inline
    assert trim_quoted("> only a quote\n> nothing else") == "> only a quote\n> nothing else"
    assert trim_quoted("好的\n\n------------------ 原始邮件 ------------------\n发件人: x") == "好的"


# --- the SMTP replies (services.mail.receiver), with the collector's answer given -----------------

def _data(result: Delivered, raw: bytes, rcpts=("service@shop.example.com",)) -> str:
    async def deliver(events):
        return result

    handler = MailHandler(domains=COMPANY, capture_address="crm-capture@shop.example.com", source=SOURCE,
                          deliver=deliver)
    envelope = SimpleNamespace(original_content=raw, content=raw, mail_from="li@163.com", rcpt_tos=list(rcpts))
    return asyncio.run(handler.handle_DATA(None, SimpleNamespace(peer=("203.0.113.9", 1)), envelope))


def test_smtp_replies_follow_the_collector():
    raw = sample("163-coremail-gbk-reply.eml")
    eid = event_of(raw)["id"]
    assert _data(Delivered([eid], [], status=202), raw).startswith(f"250 2.0.0 OK: recorded as email.received {eid}")
    assert _data(Delivered([], [], failed=1, error="ConnectError"), raw).startswith("451 4.3.0")
    rejected = Delivered([], [{"index": 0, "id": eid, "reason": "schema_violation",
                               "errors": [{"field": "data.to", "message": "收件人 too many"}]}], status=400)
    reply = _data(rejected, raw)
    assert reply.startswith("550 5.6.0 the CRM rejected the message: schema_violation: data.to:")
    assert reply.isascii() and "\\u6536" in reply
    assert _data(Delivered([eid], []), b"Subject: x\r\n\r\n").startswith("550 5.6.0 cannot record this message")


def test_rcpt_takes_the_company_and_the_capture_address_only():
    handler = MailHandler(domains=COMPANY, capture_address="crm-capture@shop.example.com", source=SOURCE,
                          deliver=None)
    session = SimpleNamespace(peer=("127.0.0.1", 1))

    def rcpt(address: str) -> str:
        envelope = SimpleNamespace(mail_from="xiao.li@shop.example.com", rcpt_tos=[])
        return asyncio.run(handler.handle_RCPT(None, session, envelope, address, []))

    assert rcpt("Service@Shop.Example.com").startswith("250")
    assert rcpt("crm-capture@shop.example.com").startswith("250")
    assert rcpt("customer@163.com").startswith("550 5.7.1")


def test_relay_mode_records_then_forwards_to_the_smarthost():
    from aiosmtpd.controller import Controller

    from services.mail.receiver import Relay
    from tests.processes import free_port

    received: list[tuple[str, list[str], bytes]] = []

    class Smarthost:
        async def handle_DATA(self, server, session, envelope):
            received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
            return "250 queued"

    smarthost = Controller(Smarthost(), hostname="127.0.0.1", port=free_port())
    smarthost.start()
    try:
        raw = sample("composed-outbound-qq-html-reply.eml")
        recorded = []

        async def deliver(events):
            recorded.extend(events)
            return Delivered([e["id"] for e in events], [])

        handler = MailHandler(domains=COMPANY, capture_address="crm-capture@shop.example.com", source=SOURCE,
                              deliver=deliver, relay=Relay.parse(f"127.0.0.1:{smarthost.port}"))

        async def transaction(peer: str) -> list[str]:
            session = SimpleNamespace(peer=(peer, 1))
            envelope = SimpleNamespace(mail_from="xiao.li@shop.example.com", rcpt_tos=[], original_content=raw,
                                       content=raw)
            replies = [await handler.handle_RCPT(None, session, envelope, r, [])
                       for r in ("wang.zhe.1988@163.com", "crm-capture@shop.example.com")]
            if all(r.startswith("250") for r in replies):
                replies.append(await handler.handle_DATA(None, session, envelope))
            return replies

        assert asyncio.run(transaction("93.184.216.34"))[0].startswith("550 5.7.1")  # not from our network
        replies = asyncio.run(transaction("10.0.0.5"))
        assert replies[-1].startswith("250 2.0.0 OK: recorded as email.sent") and replies[-1].endswith("relayed")
        assert [e["type"] for e in recorded] == ["email.sent"]
        assert received == [("xiao.li@shop.example.com", ["wang.zhe.1988@163.com"], raw)]
    finally:
        smarthost.stop()


def test_truncated_and_corrupted_mail_never_raises_anything_but_unmappable():
    import random

    rng = random.Random(7)
    for path in sorted(EML.glob("*.eml")):
        raw = path.read_bytes()
        variants = [raw[:cut] for cut in (1, len(raw) // 3, len(raw) // 2, len(raw) - 7)]
        for _ in range(5):
            damaged = bytearray(raw)
            for i in rng.sample(range(len(damaged)), min(40, len(damaged))):
                damaged[i] = rng.randrange(256)
            variants.append(bytes(damaged))
        for variant in variants:
            try:
                e = event_of(variant, mailbox=Mailbox("x@163.com", ("service@shop.example.com",)))
            except Unmappable:
                continue
            validate(e, received_at=NOW)


# --- faxes from a fax-to-mail gateway -------------------------------------------------------------

def test_a_hylafax_faxrcvd_mail_is_a_received_fax():
    event = event_of(sample("composed-hylafax-faxrcvd-pdf.eml"))
    assert event["type"] == "fax.received" and event["id"].startswith("fax:")
    data = event["data"]
    assert data["from_number"] == "+862166668888" and data["pages"] == 2 and data["gateway"] == "hylafax"
    assert data["document"]["filename"] == "fax00012.pdf" and data["document"]["content_type"] == "application/pdf"
    assert data["document"]["size"] > 0 and data["fax_id"] == "<20261120101604.fax000000012@fax.shop.example.com>"
    tp = validate(event, received_at=NOW)
    assert [i.key for i in tp.identifiers][0] == "phone:+862166668888"


def _fax_mail(subject: str, sender: str = "faxmail@efax.example.net", attachment: str = "image/tiff") -> bytes:
    return (f"From: {sender}\r\nTo: service@shop.example.com\r\nSubject: {subject}\r\n"
            "Message-ID: <f1@efax.example.net>\r\nDate: Fri, 20 Nov 2026 10:16:04 +0800\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n'
            "You have a new fax.\r\n--b\r\n"
            f'Content-Type: {attachment}; name="fax.tif"\r\nContent-Transfer-Encoding: base64\r\n'
            'Content-Disposition: attachment; filename="fax.tif"\r\n\r\nSUkqAAgAAAA=\r\n--b--\r\n').encode()


def test_a_configured_gateway_sender_or_a_fax_subject_with_a_tiff_is_a_fax_and_other_mail_is_not():
    by_sender = event_of(_fax_mail("New fax message", sender="faxmail@efax.example.net"),
                         mailbox=Mailbox(fax_senders=("FaxMail@efax.example.net",)))
    assert by_sender["type"] == "email.received"  # no number anywhere: it stays an email
    with_number = event_of(_fax_mail("Fax from 021-6666 8888"), mailbox=Mailbox(fax_senders=("faxmail@efax.example.net",)))
    assert with_number["type"] == "fax.received" and with_number["data"]["from_number"] == "021-6666 8888"
    assert with_number["data"]["document"] == {"filename": "fax.tif", "content_type": "image/tiff", "size": 8}
    assert event_of(_fax_mail("facsimile received from +86 21 6666 8888"))["type"] == "fax.received"
    # a fax subject without a PDF or TIFF, or a customer's mail about a fax: an email
    plain = _fax_mail("facsimile received from +86 21 6666 8888", attachment="text/csv").replace(b"fax.tif", b"a.csv")
    assert event_of(plain)["type"] == "email.received"
    assert event_of(_fax_mail("Re: my fax to you"))["type"] == "email.received"
