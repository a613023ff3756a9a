"""End to end, with a real SMTP client: crm-mail as a process in front of the collector, a processor
and the query API; a customer's Chinese mail, the agent's BCC-captured reply and the customer's
answer become one customer with one thread."""
from __future__ import annotations

import base64
import json
import smtplib

import pytest

from tests import http
from tests.processes import wait_for

COMPANY = "shop.example.com"
CAPTURE = "crm-capture@shop.example.com"
PHOTO_MARKER = b"PHOTO-BYTES-NEVER-STORED-"


def b64(data: bytes) -> str:
    text = base64.b64encode(data).decode()
    return "\r\n".join(text[i:i + 76] for i in range(0, len(text), 76))


def gbk_word(text: str, label: str = "GB2312") -> str:
    return f"=?{label}?B?{base64.b64encode(text.encode('gbk')).decode()}?="


def inbound(u: str, customer: str, photo: bytes) -> bytes:
    """The customer's first mail, as 163.com/Foxmail write it: GBK text declared gb2312 (喆 is
    not in GB2312), a photo with an RFC 2047 file name."""
    text = f"您好：\r\n我是王喆，冰箱（订单 DD-{u}）冷藏室不制冷，照片见附件。\r\n".encode("gbk")
    return (f"From: {gbk_word('王喆')} <{customer}>\r\n"
            f"To: {gbk_word('客服')} <service@{COMPANY}>\r\n"
            f"Subject: {gbk_word('冰箱不制冷，请安排维修')}\r\n"
            f"Date: Tue, 3 Nov 2026 09:12:45 +0800\r\n"
            f"Message-ID: <m1-{u}@163.com>\r\n"
            "X-Mailer: Foxmail 7.2.25.254[cn]\r\nMime-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="----=_001_NextPart"\r\n\r\n'
            "------=_001_NextPart\r\n"
            'Content-Type: text/plain; charset="gb2312"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
            f"{b64(text)}\r\n\r\n"
            "------=_001_NextPart\r\n"
            f'Content-Type: image/jpeg; name="{gbk_word("故障照片.jpg")}"\r\n'
            "Content-Transfer-Encoding: base64\r\n"
            f'Content-Disposition: attachment; filename="{gbk_word("故障照片.jpg")}"\r\n\r\n'
            f"{b64(photo)}\r\n\r\n"
            "------=_001_NextPart--\r\n").encode("ascii")


def reply(u: str, customer: str) -> bytes:
    """The agent's answer from the company's mailbox (UTF-8, quoted-printable)."""
    body = "王先生您好：\r\n已安排师傅明天上门维修。\r\n".encode("utf-8")
    qp = "".join(f"={b:02X}" if b > 126 else chr(b) for b in body)
    return (f"From: =?UTF-8?B?{base64.b64encode('客服小李'.encode()).decode()}?= <xiao.li@{COMPANY}>\r\n"
            f"To: {customer}\r\n"
            f"Subject: =?UTF-8?B?{base64.b64encode('回复：冰箱不制冷，请安排维修'.encode()).decode()}?=\r\n"
            "Date: Tue, 3 Nov 2026 10:30:00 +0800\r\n"
            f"Message-ID: <m2-{u}@{COMPANY}>\r\nIn-Reply-To: <m1-{u}@163.com>\r\nReferences: <m1-{u}@163.com>\r\n"
            "Mime-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: quoted-printable\r\n\r\n{qp}").encode("ascii")


def second(u: str, customer: str, n: int = 3) -> bytes:
    """The customer answers (GB18030 as QQ Mail writes it), quoting the thread."""
    text = "谢谢，明天上午在家。".encode("gb18030")
    return (f"From: {gbk_word('王喆', 'gb18030')} <{customer}>\r\nTo: service@{COMPANY}\r\n"
            f"Subject: {gbk_word('回复：冰箱不制冷，请安排维修', 'gb18030')}\r\n"
            f"Date: Tue, 3 Nov 2026 1{n}:05:00 +0800\r\nMessage-ID: <m{n}-{u}@qq.com>\r\n"
            f"In-Reply-To: <m2-{u}@{COMPANY}>\r\nReferences: <m1-{u}@163.com> <m2-{u}@{COMPANY}>\r\n"
            'Mime-Version: 1.0\r\nContent-Type: text/plain; charset="gb18030"\r\n'
            f"Content-Transfer-Encoding: base64\r\n\r\n{b64(text)}\r\n").encode("ascii")


def send(port: int, mail_from: str, rcpts: list[str], message: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.sendmail(mail_from, rcpts, message)


def test_a_mail_conversation_is_one_customer_one_thread(platform, unique):
    collector_svc, collector = platform.collector()
    platform.processor()
    _, api = platform.api()
    _, port = platform.mail(collector)
    u, customer = unique, f"wang.zhe.{unique}@163.com"
    photo = PHOTO_MARKER + unique.encode() + bytes(range(256)) * 8

    send(port, customer, [f"service@{COMPANY}"], inbound(u, customer, photo))
    send(port, f"xiao.li@{COMPANY}", [CAPTURE], reply(u, customer))  # the BCC copy: envelope to capture only
    send(port, customer, [f"service@{COMPANY}"], second(u, customer))
    send(port, customer, [f"service@{COMPANY}"], inbound(u, customer, photo))  # re-delivered: same event

    def found() -> dict | None:
        items = http.get(f"{api}/v1/customers", params={"email": customer}).json()["items"]
        return items[0] if items and items[0]["event_count"] >= 3 else None

    cust = wait_for(found, 60, "three mails applied to one customer")
    items = http.get(f"{api}/v1/customers/{cust['customer_id']}/timeline").json()["items"]
    assert [i["type"] for i in items] == ["email.received", "email.sent", "email.received"]
    data = [i["data"] for i in items]
    assert {d["thread_id"] for d in data} == {f"<m1-{u}@163.com>"}
    assert data[0]["subject"] == "冰箱不制冷，请安排维修"
    assert data[1]["subject"] == data[2]["subject"] == "回复：冰箱不制冷，请安排维修"
    assert "我是王喆" in data[0]["body_text"] and data[2]["body_text"] == "谢谢，明天上午在家。"
    assert data[1]["agent"] == f"xiao.li@{COMPANY}" and data[1]["to"] == [customer]
    assert data[0]["attachments"] == [{"filename": "故障照片.jpg", "content_type": "image/jpeg", "size": len(photo)}]
    everything = json.dumps(items, ensure_ascii=False)
    assert "PHOTO-BYTES" not in everything and base64.b64encode(photo[:30]).decode()[:20] not in everything

    # not an open relay; not an event; neither reaches the platform
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(port, customer, ["someone@gmail.com"], second(u, customer))
    assert refused.value.recipients["someone@gmail.com"][0] == 550
    with pytest.raises(smtplib.SMTPDataError) as bad:
        send(port, customer, [f"service@{COMPANY}"], b"To: service@shop.example.com\r\nSubject: x\r\n\r\nhi\r\n")
    assert bad.value.smtp_code == 550 and b"no From" in bad.value.smtp_error

    # the collector down: 451, nothing lost; after its restart the same message goes through
    collector_svc.stop()
    with pytest.raises(smtplib.SMTPDataError) as later:
        send(port, customer, [f"service@{COMPANY}"], second(u, customer, 4))
    assert later.value.smtp_code == 451
    collector_svc.start()
    send(port, customer, [f"service@{COMPANY}"], second(u, customer, 4))
    wait_for(lambda: (c := found()) and c["event_count"] == 4, 60, "the fourth mail (the re-delivery not counted)")
    ids = [i["event_id"] for i in http.get(f"{api}/v1/customers/{cust['customer_id']}/timeline").json()["items"]]
    assert len(ids) == len(set(ids)) == 4
