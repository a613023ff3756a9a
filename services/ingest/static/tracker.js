/*! CRM web tracker: crm.page(), crm.identify(), crm.track() as CloudEvents. See docs/adapters/web.md */
(function (w, d) {
  "use strict";
  const COOKIE_DAYS = 365; // the collector writes its tracker_cookie_days here
  const BATCH = 20, SESSION_MS = 18e5, MAX_BODY = 6e4, MAX_EVENT = 32e3;
  const RETRIES = 5, TRIES = 10, STORED = 200, AGE_MS = 6048e5;
  const Q = "crm_queue", UID = "crm_uid", SID = "crm_session", AID = "crm_aid";
  const prior = w.crm;
  if (prior && prior.loaded) return;

  const warn = (...a) => { try { console.warn("[crm]", ...a); } catch (e) { /* no console */ } };
  const tag = d.currentScript || d.querySelector('script[src*="/v1/tracker.js"]');
  const attr = (n) => (tag && tag.getAttribute("data-" + n)) || "";
  const base = attr("collector") || (tag ? new URL(tag.src, location.href).origin : "");
  const endpoint = base + "/v1/tracker/events?key=" + encodeURIComponent(attr("key"));
  // how long a batch waits for more events (data-batch-wait-ms, default 1 s); unload sends at once
  const WAIT_MS = Math.min(6e4, Math.max(0, parseInt(attr("batch-wait-ms"), 10) || 1000));
  const dnt = attr("respect-dnt") === "true" &&
    (navigator.doNotTrack === "1" || w.doNotTrack === "1" || navigator.globalPrivacyControl === true);

  const memory = {};
  const store = {
    get(k) { try { return w.localStorage.getItem(k); } catch (e) { return k in memory ? memory[k] : null; } },
    set(k, v) { try { w.localStorage.setItem(k, v); } catch (e) { memory[k] = v; } },
    del(k) { try { w.localStorage.removeItem(k); } catch (e) { /* unavailable */ } delete memory[k]; },
    json(k) { try { return JSON.parse(store.get(k)); } catch (e) { return null; } },
  };
  const bytes = (s) => (w.TextEncoder ? new TextEncoder().encode(s).length : s.length * 3);
  const clip = (s, n) => (typeof s === "string" && s ? s.slice(0, n) : undefined);

  function uuid() {
    const c = w.crypto;
    if (c && c.randomUUID) return c.randomUUID();
    const b = new Uint8Array(16);
    if (c && c.getRandomValues) c.getRandomValues(b); else b.forEach((_, i) => { b[i] = Math.random() * 256; });
    b[6] = (b[6] & 15) | 64; b[8] = (b[8] & 63) | 128;
    const h = Array.from(b, (x) => (x + 256).toString(16).slice(1)).join("");
    return [h.slice(0, 8), h.slice(8, 12), h.slice(12, 16), h.slice(16, 20), h.slice(20)].join("-");
  }

  function cookie(value) {
    if (value === undefined) {
      const m = d.cookie.match(/(?:^|; )crm_aid=([^;]*)/);
      return m ? decodeURIComponent(m[1]) : "";
    }
    let c = AID + "=" + encodeURIComponent(value) + "; Path=/; SameSite=Lax; Max-Age=" + COOKIE_DAYS * 86400;
    if (attr("cookie-domain")) c += "; Domain=" + attr("cookie-domain");
    if (location.protocol === "https:") c += "; Secure";
    d.cookie = c;
  }

  let aid = "";
  function anonymous(renew) {
    aid = (!renew && (cookie() || store.get(AID))) || uuid();
    cookie(aid); // a first-party cookie, its lifetime renewed on every page
    store.set(AID, aid);
  }

  function session() { // [id, whether it starts now]: a new one after 30 minutes without activity
    const now = Date.now();
    let s = store.json(SID), fresh = false;
    if (!s || typeof s.id !== "string" || !(now - s.last < SESSION_MS)) { s = { id: uuid() }; fresh = true; }
    s.last = now;
    store.set(SID, JSON.stringify(s));
    return [s.id, fresh];
  }

  function campaign() {
    const q = new URLSearchParams(location.search), c = {};
    ["source", "medium", "campaign", "term", "content"].forEach((f) => {
      const v = clip(q.get("utm_" + f), 200);
      if (v) c[f === "campaign" ? "name" : f] = v;
    });
    return Object.keys(c).length ? c : undefined;
  }

  function event(type, sid, extra) {
    const data = Object.assign({
      anonymous_id: aid, user_id: store.get(UID) || undefined, session_id: sid,
      url: location.href.slice(0, 2048), referrer: clip(d.referrer, 2048), title: clip(d.title, 1000),
      campaign: campaign(),
    }, extra);
    return { specversion: "1.0", id: uuid(), source: "urn:crm:web:" + location.host, type: "web." + type,
      time: new Date().toISOString(), data };
  }

  function record(type, extra) {
    if (dnt) return;
    const [sid, fresh] = session();
    if (fresh) enqueue(event("session_started", sid, {}));
    enqueue(event(type, sid, extra));
  }

  function plain(value, what) { // a JSON object, or {} with a warning
    if (value == null) return {};
    try {
      const v = JSON.parse(JSON.stringify(value));
      if (v && typeof v === "object" && !Array.isArray(v)) return v;
    } catch (e) { /* cyclic, BigInt */ }
    warn(what + " must be a JSON object; ignored");
    return {};
  }

  // delivery: a queue kept in localStorage until the collector confirms it
  let pending = [], timer = 0, retryAt = 0, sending = false, failures = 0;
  function stored(change) {
    const list = change(Array.isArray(store.json(Q)) ? store.json(Q) : []).slice(-STORED);
    if (list.length) store.set(Q, JSON.stringify(list)); else store.del(Q);
  }
  function enqueue(ev) {
    if (bytes(JSON.stringify(ev)) > MAX_EVENT) return warn(ev.type + " is over 32 KB; dropped");
    pending.push(ev);
    stored((l) => l.concat([{ ev, tries: 0 }]));
    if (pending.length >= BATCH) flush(); else later(WAIT_MS);
  }
  function later(ms, force) {
    if (timer && !force) return;
    clearTimeout(timer);
    timer = setTimeout(() => { timer = 0; flush(); }, ms);
  }
  function take() { // the next batch: at most 20 events and 60 KB (keepalive and beacon limit)
    const batch = [];
    let size = 20;
    while (pending.length && batch.length < BATCH) {
      const n = bytes(JSON.stringify(pending[0])) + 50;
      if (batch.length && size + n > MAX_BODY) break;
      batch.push(pending.shift());
      size += n;
    }
    return batch;
  }
  function body(batch) { // text/plain: no CORS preflight, and what sendBeacon sends
    const sentat = new Date().toISOString();
    return JSON.stringify({ batch: batch.map((e) => Object.assign({}, e, { sentat })) });
  }
  function retryAfter(h) {
    const s = Number(h);
    return h ? (s >= 0 ? s * 1000 : Math.max(0, Date.parse(h) - Date.now()) || 0) : 0;
  }

  async function flush() {
    if (sending || !pending.length || Date.now() < retryAt) return;
    const batch = take(), ids = new Set(batch.map((e) => e.id));
    let status = 0, wait = 0, answer = null;
    sending = true;
    try {
      const res = await fetch(endpoint, { method: "POST", body: body(batch), keepalive: true, credentials: "omit" });
      status = res.status;
      wait = retryAfter(res.headers.get("Retry-After"));
      answer = await res.json().catch(() => null);
    } catch (e) { /* offline, or refused by CORS */ }
    sending = false;
    if (!status || status === 429 || status >= 500) {
      pending = batch.concat(pending);
      stored((l) => l.map((x) => (ids.has(x.ev.id) ? { ev: x.ev, tries: x.tries + 1 } : x)));
      if (++failures <= RETRIES) {
        const ms = wait || Math.min(3e4, 1000 * 2 ** (failures - 1)) * (0.5 + Math.random());
        retryAt = Date.now() + ms;
        later(ms, true);
      } // else: kept for the next event or page
      return;
    }
    failures = 0;
    stored((l) => l.filter((x) => !ids.has(x.ev.id)));
    const refused = answer && answer.rejected && answer.rejected.length;
    if (status >= 300 || refused) warn("collector answered " + status, answer);
    if (pending.length) flush();
  }

  function leave() { // the page is hidden or unloading: beacons outlive it
    clearTimeout(timer);
    timer = 0;
    while (pending.length) {
      const batch = take();
      let sent = false;
      try { sent = navigator.sendBeacon(endpoint, body(batch)); } catch (e) { /* no beacons */ }
      if (!sent) { pending = batch.concat(pending); break; } // stays stored for the next page
      const ids = new Set(batch.map((e) => e.id)); // sent; but those that failed before stay stored too
      stored((l) => l.filter((x) => !ids.has(x.ev.id) || x.tries > 0));
    }
  }

  const api = {
    loaded: true,
    page() { record("page_viewed", {}); },
    identify(userId, traits) {
      const user = clip(userId == null ? store.get(UID) : String(userId), 200);
      if (!user) return warn("identify needs a user id");
      store.set(UID, user);
      const t = plain(traits, "traits"), extra = { user_id: user };
      ["email", "phone"].forEach((k) => {
        if (typeof t[k] === "string" && t[k]) extra[k] = clip(t[k], 200);
        delete t[k];
      });
      if (Object.keys(t).length) extra.traits = t;
      record("identified", extra);
    },
    track(name, properties) {
      if (typeof name !== "string" || !name) return warn("track needs an event name");
      record("tracked", { event: name.slice(0, 200), properties: plain(properties, "properties") });
    },
    reset() { store.del(UID); store.del(SID); if (!dnt) anonymous(true); },
    flush() { return flush(); },
    push(call) {
      if (Array.isArray(call) && call[0] !== "push" && typeof api[call[0]] === "function") api[call[0]](...call.slice(1));
    },
  };
  Object.keys(api).forEach((k) => {
    const f = api[k];
    if (typeof f === "function") api[k] = (...a) => { try { return f(...a); } catch (e) { warn(e); } };
  });

  try {
    if (!dnt) anonymous(false); // no cookie either when Do Not Track is respected
    const now = Date.now();
    stored((l) => l.filter((x) => x && x.ev && x.tries < TRIES && now - Date.parse(x.ev.time) < AGE_MS));
    pending = (store.json(Q) || []).map((x) => x.ev); // left over from earlier pages
    if (pending.length) later(WAIT_MS);
    w.addEventListener("pagehide", () => { try { leave(); } catch (e) { warn(e); } });
    d.addEventListener("visibilitychange", () => {
      try { if (d.visibilityState === "hidden") leave(); } catch (e) { warn(e); }
    });
  } catch (e) { warn(e); }
  w.crm = api;
  if (Array.isArray(prior)) prior.forEach(api.push); // calls made before the script loaded
})(window, document);
