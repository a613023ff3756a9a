"""The key vault: pseudonyms and per-subject keys, envelope-encrypted under the master key.

Every normalized customer identifier is a *subject* (``privacy_subject``):

* a random pseudonym ``psn-<32 hex>`` stands for it everywhere else (Kafka keys and values, the
  identity graph, every read model);
* a blind index (HMAC of the identifier under a key derived from the master key) finds the
  subject again when the identifier comes back, without storing the identifier in the clear;
* a random 256-bit data key (DEK), stored only wrapped (AES-GCM) under a key-encryption key
  derived from the master key (``CRM_MASTER_KEY``, never stored by the platform), encrypts the
  subject's personal fields (``events.pii`` tokens) and its own identifier value.

Erasure deletes subjects' rows: the DEKs are gone, so every token made with them, in every topic,
archive, projection, rebuild or retired copy, can never be opened again (crypto-shredding), and
the pseudonyms point at nothing. Processes cache keys briefly and drop them at once when told on
the PostgreSQL channel ``crm_privacy``.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import select
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import orjson
import psycopg2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from events import pii
from events.envelope import Touchpoint
from events.identifiers import Identifier

log = logging.getLogger(__name__)

CHANNEL = "crm_privacy"
"""PostgreSQL NOTIFY channel: a payload of shredded subject ids (hex, comma separated)."""


class MasterKeyMissing(RuntimeError):
    pass


def load_master_key(value: str | None, path: str | None) -> bytes:
    """The 32-byte master key from CRM_MASTER_KEY (base64) or the file CRM_MASTER_KEY_FILE names."""
    text = value or ""
    if not text and path:
        try:
            text = Path(path).read_text().strip()
        except OSError as exc:
            raise MasterKeyMissing(f"cannot read the master key file {path}: {exc.strerror}") from None
    if not text:
        raise MasterKeyMissing("no master key: set CRM_MASTER_KEY (base64 of 32 random bytes) or CRM_MASTER_KEY_FILE "
                               "(create one with `crm privacy keygen FILE`)")
    try:
        key = base64.b64decode(text, validate=True)
    except ValueError:
        raise MasterKeyMissing("the master key is not base64") from None
    if len(key) != 32:
        raise MasterKeyMissing(f"the master key is {len(key)} bytes; it must be 32 (base64 of 32 random bytes)")
    return key


def new_master_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"crm-platform " + purpose).derive(master)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Subject:
    subject_id: str  # psn-<hex>
    dek: AESGCM

    @property
    def hex(self) -> str:
        return self.subject_id[4:]


class Vault:
    """Pseudonyms, keys and tokens. Database work happens on the cursor the caller passes (its
    transaction); keys are cached for ``cache_s`` seconds and dropped when a shred is announced."""

    def __init__(self, master_key: bytes, *, cache_s: float = 30.0, default_region: str = "CN",
                 blocked: frozenset[str] | None = None):
        self.default_region = default_region  # as the collector normalizes phone numbers
        self.blocked = blocked  # and refuses placeholder values (CRM_IDENTITY_BLOCKED)
        self._kek = AESGCM(_derive(master_key, b"subject key wrapping"))
        self._index_key = _derive(master_key, b"identifier blind index")
        self._search_key = _derive(master_key, b"search terms")
        self.cache_s = cache_s
        self._by_index: dict[bytes, tuple[float, Subject]] = {}
        self._by_hex: dict[str, tuple[float, AESGCM | None]] = {}
        self._pruned_at = 0.0  # monotonic time the caches were last cleared of expired keys
        self._lock = threading.Lock()
        self._listener: threading.Thread | None = None
        self._stop = threading.Event()

    # -- keys -----------------------------------------------------------------------------------------
    def blind_index(self, ident: Identifier) -> bytes:
        return hmac.new(self._index_key, ident.key.encode(), hashlib.sha256).digest()

    def search_digest(self, term: str) -> str:
        """A search term as stored: HMAC, so the read model holds no name in the clear."""
        return hmac.new(self._search_key, term.encode(), hashlib.sha256).hexdigest()[:40]

    def _wrap(self, subject_id: str, dek: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._kek.encrypt(nonce, dek, subject_id.encode())

    def _unwrap(self, subject_id: str, wrapped: bytes) -> AESGCM:
        return AESGCM(self._kek.decrypt(bytes(wrapped[:12]), bytes(wrapped[12:]), subject_id.encode()))

    @staticmethod
    def encrypt(subject: Subject, text: str) -> str:
        nonce = os.urandom(12)
        return f"enc1.{subject.hex}.{_b64(nonce + subject.dek.encrypt(nonce, text.encode(), subject.hex.encode()))}"

    @staticmethod
    def _decrypt(dek: AESGCM, hex_: str, token: str) -> str | None:
        m = pii.WHOLE_TOKEN.match(token)
        if not m:
            return None
        try:  # a token run into other text (a summary) may carry extra characters: not base64 then
            raw = _unb64(m.group(2))
            return dek.decrypt(raw[:12], raw[12:], hex_.encode()).decode()
        except (InvalidTag, ValueError):  # binascii.Error is a ValueError
            return None

    def _fresh(self, entry: tuple[float, Any] | None) -> bool:
        return entry is not None and time.monotonic() - entry[0] < self.cache_s

    # -- the collector: identifiers to subjects ------------------------------------------------------
    def subjects(self, cur, idents: Iterable[Identifier], *, create: bool = True) -> dict[Identifier, Subject]:
        """The subject of each identifier, created (with a new pseudonym and key) when new.
        ``create=False`` only finds: a lookup must not mint subjects."""
        out: dict[Identifier, Subject] = {}
        wanted: dict[bytes, Identifier] = {}
        with self._lock:
            for ident in set(idents):
                bi = self.blind_index(ident)
                entry = self._by_index.get(bi)
                if self._fresh(entry):
                    out[ident] = entry[1]
                else:
                    wanted[bi] = ident
        if not wanted:
            return out
        rows = []
        if create:
            new = []
            for bi, ident in sorted(wanted.items()):
                sid = "psn-" + uuid.uuid4().hex
                dek = secrets.token_bytes(32)
                subject = Subject(sid, AESGCM(dek))
                new.append((sid, bi, ident.kind, self._wrap(sid, dek), self.encrypt(subject, ident.value)))
            cur.execute("""
                WITH input (subject_id, blind_index, kind, wrapped_key, sealed_value) AS (
                    SELECT * FROM unnest(%s::text[], %s::bytea[], %s::text[], %s::bytea[], %s::text[])),
                ins AS (INSERT INTO public.privacy_subject (subject_id, blind_index, kind, wrapped_key, sealed_value)
                        SELECT * FROM input ON CONFLICT (blind_index) DO NOTHING
                        RETURNING subject_id, blind_index, wrapped_key)
                SELECT subject_id, blind_index, wrapped_key FROM ins
                UNION ALL
                SELECT p.subject_id, p.blind_index, p.wrapped_key FROM public.privacy_subject p
                JOIN input i ON p.blind_index = i.blind_index""",
                        ([r[0] for r in new], [r[1] for r in new], [r[2] for r in new], [r[3] for r in new],
                         [r[4] for r in new]))
            rows = cur.fetchall()
            missing = set(wanted) - {bytes(r[1]) for r in rows}
            if missing:  # inserted meanwhile by another transaction: its row was not in this statement's snapshot
                cur.execute("SELECT subject_id, blind_index, wrapped_key FROM public.privacy_subject "
                            "WHERE blind_index = ANY(%s)", (list(missing),))
                rows += cur.fetchall()
        else:
            cur.execute("SELECT subject_id, blind_index, wrapped_key FROM public.privacy_subject WHERE blind_index = ANY(%s)",
                        (list(wanted),))
            rows = cur.fetchall()
        now = time.monotonic()
        with self._lock:
            for sid, bi, wrapped in rows:
                subject = Subject(sid, self._unwrap(sid, wrapped))
                self._by_index[bytes(bi)] = (now, subject)
                self._by_hex[subject.hex] = (now, subject.dek)
                out[wanted[bytes(bi)]] = subject
            self._bound(now)
        return out

    def seal(self, cur, tp: Touchpoint) -> tuple[bytes, bytes]:
        """The sealed form of a validated touchpoint: (Kafka key, CloudEvent JSON). Identifiers become
        pseudonyms, every other personal field a token under the primary subject's key."""
        subjects = self.subjects(cur, tp.identifiers)
        primary = subjects[tp.primary_identifier]
        ce = tp.to_cloudevent()
        data = ce["data"]
        names = {ident.key: subjects[ident].subject_id for ident in tp.identifiers}
        self._pseudonymize_fields(tp, data, names, primary)
        for path, text in pii.personal_leaves(tp.type, data):
            if not pii.PSEUDONYM.match(text):
                pii.set_path(data, path, self.encrypt(primary, text))
        ce.update(pii.CLASSIFICATION)
        ce["crmsubject"] = primary.subject_id
        key = f"{tp.primary_identifier.kind}:{primary.subject_id}"
        return key.encode(), orjson.dumps(ce)

    def _pseudonymize_fields(self, tp: Touchpoint, data: dict, names: dict[str, str], primary: Subject) -> None:
        """Each identity field: its pseudonym when it normalized to one of the event's identifiers,
        else (an identifier that failed validation) a token."""
        from events.identifiers import Identifier, InvalidIdentifier, normalize

        for path, kind in pii.identity_paths(tp, data):
            try:
                raw = pii.get_path(data, path)
            except (KeyError, IndexError, TypeError):
                continue
            if not isinstance(raw, str) or raw.startswith("enc1."):
                continue
            if Identifier(kind, raw.strip()) in tp.blocked_identifiers:
                continue  # a placeholder (null, test@test.com...) is no one's data: kept to explain its refusal
            try:
                value = normalize(kind, raw, self.default_region, self.blocked).key
            except InvalidIdentifier:
                value = None
            pii.set_path(data, path, names[value] if value in names else self.encrypt(primary, raw))

    # -- opening tokens --------------------------------------------------------------------------------
    def deks(self, cur, hexes: Iterable[str]) -> dict[str, AESGCM | None]:
        """The data key of each subject (hex), None for one that is gone (erased)."""
        out: dict[str, AESGCM | None] = {}
        wanted = []
        with self._lock:
            for h in set(hexes):
                entry = self._by_hex.get(h)
                if self._fresh(entry):
                    out[h] = entry[1]
                else:
                    wanted.append(h)
        if wanted:
            cur.execute("SELECT subject_id, wrapped_key FROM public.privacy_subject WHERE subject_id = ANY(%s)",
                        (["psn-" + h for h in wanted],))
            found = {sid[4:]: self._unwrap(sid, wrapped) for sid, wrapped in cur.fetchall()}
            now = time.monotonic()
            with self._lock:
                for h in wanted:
                    out[h] = found.get(h)
                    self._by_hex[h] = (now, found.get(h))
                self._bound(now)
        return out

    MAX_CACHED = 20_000
    """Keys kept in memory at most (per cache). Without a bound the caches grew with every subject
    a process ever saw: a worker's memory doubled between 100,000 and 1,000,000 events."""

    def _bound(self, now: float) -> None:
        """Drops expired entries every ``cache_s`` or once a cache passes MAX_CACHED, then the
        oldest beyond half of it (under the lock)."""
        due = now - self._pruned_at >= self.cache_s
        if due:
            self._pruned_at = now
        for cache in (self._by_index, self._by_hex):
            if len(cache) <= self.MAX_CACHED and not due:
                continue
            fresh = {k: v for k, v in cache.items() if now - v[0] < self.cache_s}
            if len(fresh) > self.MAX_CACHED // 2:
                fresh = dict(sorted(fresh.items(), key=lambda kv: kv[1][0])[-(self.MAX_CACHED // 2):])
            cache.clear()
            cache.update(fresh)

    def reveal(self, cur, value: Any, *, pseudonyms: bool = True) -> Any:
        """``value`` with every token opened and, with ``pseudonyms``, every pseudonym replaced by
        its identifier (``[erased]`` where the subject is gone)."""
        hexes = set(pii.tokens_in(value))
        if not hexes:
            return value
        keys = self.deks(cur, hexes)
        opened = pii.reveal(value, lambda h, token: self._decrypt(keys[h], h, token) if keys.get(h) else None)
        if not pseudonyms:
            return opened
        idents = self.identifier_values(cur, [h for h in hexes if keys.get(h)])
        return _replace_pseudonyms(opened, idents)

    def identifier_values(self, cur, hexes: list[str]) -> dict[str, str]:
        if not hexes:
            return {}
        cur.execute("SELECT subject_id, sealed_value FROM public.privacy_subject WHERE subject_id = ANY(%s)",
                    (["psn-" + h for h in hexes],))
        rows = cur.fetchall()  # before deks(), which may query on the same cursor
        keys = self.deks(cur, hexes)
        out = {}
        for sid, token in rows:
            dek = keys.get(sid[4:])
            if dek is not None:
                value = self._decrypt(dek, sid[4:], token)
                if value is not None:
                    out[sid[4:]] = value
        return out

    def open_text(self, cur, value: Any) -> Any:
        """Tokens opened, pseudonyms left: for what reads text in memory (sentiment, search)."""
        return self.reveal(cur, value, pseudonyms=False)

    TEXT_FIELDS = ("subject", "body_text", "comment")
    """The fields ``projections.satisfaction.customer_text`` reads."""

    def open_events(self, cur, events: list) -> list:
        """Customer events with their sealed text fields opened in memory (``CustomerEvent.opened``)."""
        import dataclasses

        sealed = [e for e in events if any(isinstance(e.data.get(f), str) and "enc1." in e.data[f]
                                           for f in self.TEXT_FIELDS)]
        if not sealed:
            return events
        opened = self.open_text(cur, [{f: e.data.get(f) for f in self.TEXT_FIELDS if e.data.get(f)} for e in sealed])
        by_key = {id(e): {k: ("" if v == pii.ERASED else v) for k, v in o.items()} for e, o in zip(sealed, opened)}
        return [dataclasses.replace(e, opened=by_key[id(e)]) if id(e) in by_key else e for e in events]

    # -- erasure --------------------------------------------------------------------------------------
    def existing(self, cur, subject_ids: Iterable[str]) -> set[str]:
        ids = sorted(set(subject_ids))
        if not ids:
            return set()
        cur.execute("SELECT subject_id FROM public.privacy_subject WHERE subject_id = ANY(%s)", (ids,))
        return {r[0] for r in cur.fetchall()}

    def shred(self, cur, subject_ids: Iterable[str]) -> int:
        """Delete the subjects' keys (in the caller's transaction) and announce it on commit."""
        ids = sorted(set(subject_ids))
        if not ids:
            return 0
        cur.execute("DELETE FROM public.privacy_subject WHERE subject_id = ANY(%s)", (ids,))
        count = cur.rowcount
        for start in range(0, len(ids), 200):  # NOTIFY payloads are limited to 8000 bytes
            cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, ",".join(i[4:] for i in ids[start:start + 200])))
        self.forget([i[4:] for i in ids])
        return count

    def forget(self, hexes: Iterable[str]) -> None:
        gone = set(hexes)
        with self._lock:
            for h in gone:
                self._by_hex.pop(h, None)
            for bi, (_, subject) in list(self._by_index.items()):
                if subject.hex in gone:
                    del self._by_index[bi]

    def listen(self, dsn: str) -> None:
        """Follow shred announcements in a daemon thread (reconnecting), dropping cached keys."""
        if self._listener is not None:
            return

        from services.common.db import connect

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    conn = connect(dsn, application_name="crm-vault-listener", autocommit=True)
                    with conn.cursor() as cur:
                        cur.execute(f"LISTEN {CHANNEL}")
                    with self._lock:  # anything may have been shredded while we were not listening
                        self._by_index.clear()
                        self._by_hex.clear()
                    while not self._stop.is_set():
                        if select.select([conn], [], [], 1.0)[0]:
                            conn.poll()
                            while conn.notifies:
                                self.forget(conn.notifies.pop(0).payload.split(","))
                except psycopg2.Error as exc:
                    log.warning("vault listener reconnecting", extra={"error": str(exc).splitlines()[0]})
                    self._stop.wait(2.0)

        self._listener = threading.Thread(target=loop, name="vault-listener", daemon=True)
        self._listener.start()

    def close(self) -> None:
        self._stop.set()


_PSN = re.compile(r"psn-([0-9a-f]{32})")


def _replace_pseudonyms(value: Any, idents: dict[str, str]) -> Any:
    if isinstance(value, str):
        if "psn-" not in value:
            return value
        return _PSN.sub(lambda m: idents.get(m.group(1), pii.ERASED), value)
    if isinstance(value, dict):
        return {_replace_pseudonyms(k, idents): _replace_pseudonyms(v, idents) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_pseudonyms(v, idents) for v in value]
    return value


def from_settings(settings) -> Vault:
    """The process's vault from its settings (CRM_MASTER_KEY or CRM_MASTER_KEY_FILE)."""
    secret = settings.master_key.get_secret_value() if settings.master_key else None
    path = settings.master_key_file or None
    if not secret and not path:  # the demo's key (deploy/services.sh makes it), if there is one
        demo = Path(settings.home) / "keys" / "master.key"
        path = str(demo) if demo.exists() else None
    return Vault(load_master_key(secret, path), cache_s=settings.vault_cache_s, default_region=settings.default_region,
                 blocked=settings.blocked)
