// The demo shop's own script: its catalogue, cart and sign-in, and where the CRM tracker comes from.
// The collector and the publishable key are given once in the URL (?collector=...&key=crm_pk_...)
// and kept in sessionStorage, so these files never need editing.
(function () {
  "use strict";
  const params = new URLSearchParams(location.search);
  for (const name of ["collector", "key", "wait"]) {
    if (params.get(name)) sessionStorage.setItem("shop." + name, params.get(name));
    params.delete(name);
  }
  if (location.search) { // keep the configuration out of the URLs the tracker reports
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  }
  const collector = sessionStorage.getItem("shop.collector") || "http://127.0.0.1:8080";
  const key = sessionStorage.getItem("shop.key");

  // the CRM tracker snippet's second half: load tracker.js from the collector with the key
  if (key) {
    const tag = document.createElement("script");
    tag.async = true;
    tag.src = collector.replace(/\/$/, "") + "/v1/tracker.js";
    tag.setAttribute("data-key", key);
    const wait = sessionStorage.getItem("shop.wait"); // ?wait=<ms>: the tracker's batch wait
    if (wait) tag.setAttribute("data-batch-wait-ms", wait);
    document.head.appendChild(tag);
  }

  const PRODUCTS = {
    "HAIER-BCD-470": { en: "Haier BCD-470 refrigerator", zh: "海尔 BCD-470 冰箱", price: 3999 },
    "MIDEA-MG100": { en: "Midea MG100 washing machine", zh: "美的 MG100 滚筒洗衣机", price: 2499 },
    "GREE-KFR-35": { en: "Gree KFR-35 air conditioner", zh: "格力 KFR-35 空调", price: 3299 },
  };
  const read = (name, fallback) => { try { return JSON.parse(localStorage.getItem(name)) || fallback; } catch (e) { return fallback; } };
  const write = (name, value) => localStorage.setItem(name, JSON.stringify(value));
  const $ = (id) => document.getElementById(id);
  const text = (tag, content, attrs) => Object.assign(document.createElement(tag), { textContent: content }, attrs || {});

  function header() {
    const user = read("shop.user", null), count = read("shop.cart", []).reduce((n, i) => n + i.quantity, 0);
    const nav = $("nav");
    nav.append(text("a", "Home · 首页", { href: "index.html" }), " | ",
      text("a", `Cart · 购物车 (${count})`, { href: "cart.html", id: "cart-link" }), " | ",
      user ? text("span", `Signed in as · 已登录: ${user.account}`, { id: "signed-in" })
        : text("a", "Sign in · 登录", { href: "login.html", id: "login-link" }));
    if (!key) nav.append(text("p", "CRM tracker off: open this page once with ?collector=<collector URL>&key=<crm_pk_...>",
      { className: "warning" }));
  }

  function catalogue() {
    const list = $("products");
    for (const [sku, p] of Object.entries(PRODUCTS)) {
      const item = document.createElement("li");
      item.append(text("a", `${p.en} · ${p.zh}`, { href: `product.html?sku=${sku}`, id: `product-${sku}` }),
        text("span", ` ¥${p.price}`));
      list.append(item);
    }
  }

  function product() {
    const sku = params.get("sku") in PRODUCTS ? params.get("sku") : "HAIER-BCD-470", p = PRODUCTS[sku];
    document.title = `${p.en} · ${p.zh} | Demo shop`;
    $("name").textContent = `${p.en} · ${p.zh}`;
    $("price").textContent = `¥${p.price}`;
    $("add-to-cart").addEventListener("click", () => {
      const cart = read("shop.cart", []), line = cart.find((i) => i.sku === sku);
      if (line) line.quantity += 1; else cart.push({ sku, quantity: 1 });
      write("shop.cart", cart);
      crm.track("Product Added", { sku, name: p.en, price: p.price, currency: "CNY", quantity: 1 });
      $("added").textContent = "Added to cart · 已加入购物车";
    });
  }

  function cart() {
    const list = $("lines"), cart = read("shop.cart", []);
    if (!cart.length) list.append(text("li", "Your cart is empty · 购物车是空的"));
    for (const line of cart) {
      const p = PRODUCTS[line.sku];
      if (p) list.append(text("li", `${p.en} · ${p.zh} × ${line.quantity}  ¥${p.price * line.quantity}`));
    }
  }

  function login() {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const account = $("account").value.trim(), email = $("email").value.trim();
      if (!account) return;
      write("shop.user", { account, email });
      crm.identify(account, { email, name: $("display-name").value.trim() || undefined });
      location.href = "index.html";
    });
  }

  window.shop = { header, catalogue, product, cart, login };
})();
