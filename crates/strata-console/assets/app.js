// The Strata console: hash-routed pages (#/cluster, #/kv, ...) over the public HTTP API.
// Each page is a module in pages/ exporting `title` and `render(root, params)`; render may
// return a function that stops what the page started (watches, timers) when it is left.
// Helpers here are the only shared code: api() for requests, h() to build elements, and a few
// widgets (errors, tables, pagers, confirmation, charts).

export const PAGES = [
  ["cluster", "Cluster"],
  ["kv", "KV"],
  ["services", "Services"],
  ["configs", "Configs"],
  ["gateway", "Gateway"],
  ["monitor", "Monitoring"],
];

const TOKEN = "strata.token";

/** An error from the API: its `{"code","message"}` body and HTTP status. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN);
  return token ? { authorization: `Bearer ${token}` } : {};
}

async function failure(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body.code === "string") {
      return new ApiError(response.status, body.code, body.message || "");
    }
    if (body && body.status === "error") {
      // Prometheus's API: {"status":"error","errorType","error"}.
      return new ApiError(response.status, body.errorType || "error", body.error || "");
    }
  } catch (_) {
    // Not JSON: show the text as it came.
  }
  return new ApiError(response.status, `http_${response.status}`, text.trim() || response.statusText);
}

/**
 * Calls the API: `api("GET", "/v1/cluster/status")`, `api("POST", "/v1/kv/put", {key, value})`.
 * Answers the parsed JSON body; throws ApiError with the API's code and message otherwise. A
 * 401 shows the login form.
 */
export async function api(method, path, body, { signal } = {}) {
  const init = { method, headers: { ...authHeaders() }, signal };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "unreachable", `the node did not answer: ${e.message}`);
  }
  if (!response.ok) {
    const error = await failure(response);
    if (response.status === 401) showLogin(error.message);
    throw error;
  }
  const text = await response.text();
  return text ? JSON.parse(text) : {};
}

/**
 * Follows a streaming route that answers server-sent events (`data: JSON` lines), calling
 * `onMessage(json)` for each, until `signal` aborts. Fetch rather than EventSource, so that
 * the token goes in a header.
 */
export async function stream(method, path, body, onMessage, signal) {
  const init = { method, headers: { ...authHeaders(), accept: "text/event-stream" }, signal };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data) onMessage(JSON.parse(data));
    }
  }
}

/** Builds an element: h("button", {class: "x", onclick: f}, "text", child, ...). */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.className = value;
    } else if (key in el && typeof value !== "string") {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? "" : value);
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** An error as the API gave it: code and message, never a blank space. */
export function errorBox(error) {
  const code = error instanceof ApiError ? error.code : error.name || "error";
  return h("div", { class: "error", role: "alert" },
    h("strong", {}, code), " ", error.message || String(error));
}

/** Runs `work`, showing its error in `place` (replacing what was there) if it throws. */
export async function attempt(place, work) {
  try {
    return await work();
  } catch (e) {
    if (e.name === "AbortError") return undefined;
    place.replaceChildren(errorBox(e));
    return undefined;
  }
}

/** A table: columns are [header, row => cell] pairs. */
export function table(columns, rows, { empty = "Nothing here.", label } = {}) {
  if (!rows.length) return h("p", { class: "muted" }, empty);
  return h("div", { class: "scroll" },
    h("table", { "aria-label": label },
      h("thead", {}, h("tr", {}, columns.map(([name]) => h("th", { scope: "col" }, name)))),
      h("tbody", {}, rows.map((row) => h("tr", {}, columns.map(([, cell]) => h("td", {}, cell(row))))))));
}

/** Previous/next buttons for a list read a page at a time. */
export function pager({ page, hasMore, onPage }) {
  return h("nav", { class: "pager", "aria-label": "Pages" },
    h("button", { disabled: page === 0, onclick: () => onPage(page - 1) }, "← Previous"),
    h("span", { class: "muted" }, `page ${page + 1}`),
    h("button", { disabled: !hasMore, onclick: () => onPage(page + 1) }, "Next →"));
}

/** Asks before something that cannot be undone; resolves true on confirmation. */
export function confirmAction(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
    document.getElementById("confirm-ok").focus();
  });
}

/** A form field with its label. */
export function field(label, input) {
  return h("label", { class: "field" }, h("span", {}, label), input);
}

/** Seconds or milliseconds since a time, for humans. */
export function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

/** Bytes for humans. */
export function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/**
 * A line chart of Prometheus range-query results (`data.result` of /api/v1/query_range) as
 * SVG, one line per series, with its legend.
 */
export function chart(result, { height = 160 } = {}) {
  const width = 640;
  const series = result.map((s) => ({
    name: Object.entries(s.metric).filter(([k]) => k !== "__name__").map(([k, v]) => `${k}="${v}"`).join(", ") || s.metric.__name__ || "{}",
    points: s.values.map(([t, v]) => [Number(t), Number(v)]).filter(([, v]) => Number.isFinite(v)),
  }));
  const all = series.flatMap((s) => s.points);
  if (!all.length) return h("p", { class: "muted" }, "No data in this range.");
  const [t0, t1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [v0, v1] = [Math.min(0, ...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (v1 === v0) v1 = v0 + 1;
  const x = (t) => (t1 === t0 ? width / 2 : ((t - t0) / (t1 - t0)) * (width - 50) + 45);
  const y = (v) => height - 20 - ((v - v0) / (v1 - v0)) * (height - 30);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  const add = (tag, attrs, text) => {
    const el = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    svg.append(el);
    return el;
  };
  add("line", { x1: 45, y1: y(v0), x2: width, y2: y(v0), class: "axis" });
  add("text", { x: 0, y: y(v1) + 4, class: "tick" }, short(v1));
  add("text", { x: 0, y: y(v0), class: "tick" }, short(v0));
  add("text", { x: 45, y: height - 4, class: "tick" }, new Date(t0 * 1000).toLocaleTimeString());
  add("text", { x: width - 70, y: height - 4, class: "tick" }, new Date(t1 * 1000).toLocaleTimeString());
  series.slice(0, 12).forEach((s, i) => {
    const d = s.points.map(([t, v], j) => `${j ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`).join("");
    add("path", { d, class: `line c${i % 6}` });
  });
  svg.setAttribute("aria-label", `chart of ${series.length} series`);
  return h("figure", {}, svg,
    h("figcaption", {}, series.slice(0, 12).map((s, i) => h("span", { class: `key c${i % 6}` }, s.name)),
      series.length > 12 ? h("span", { class: "muted" }, ` and ${series.length - 12} more`) : null));
}

function short(v) {
  const a = Math.abs(v);
  if (a >= 1e9) return `${(v / 1e9).toFixed(1)}G`;
  if (a >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
  if (a >= 1e3) return `${(v / 1e3).toFixed(1)}k`;
  return a >= 10 || a === 0 ? v.toFixed(0) : v.toPrecision(2);
}

/** Labels each cell of the table in `made` with its column, for the narrow-screen layout
 * (`table.stack`), and returns `made`. */
export function stack(made) {
  const el = made.querySelector ? made.querySelector("table") : null;
  if (!el) return made;
  const names = [...el.querySelectorAll("thead th")].map((th) => th.textContent);
  el.classList.add("stack");
  for (const row of el.querySelectorAll("tbody tr")) {
    [...row.children].forEach((td, i) => td.setAttribute("data-label", names[i] || ""));
  }
  return made;
}

/** The `data-focus` key of the focused element, to give focus back after a re-render. */
export function focusKey() {
  const el = document.activeElement;
  return el && el.dataset ? el.dataset.focus : undefined;
}

/** Focuses the element of `container` with `data-focus` = `key` again. */
export function restoreFocus(container, key) {
  if (!key) return;
  const el = [...container.querySelectorAll("[data-focus]")].find((e) => e.dataset.focus === key);
  if (el) el.focus();
}

/** Aborts `controller` once `root` leaves the document (the page was left). */
export function stopWhenGone(root, controller) {
  const parent = root.parentNode;
  if (!parent) return;
  const observer = new MutationObserver(() => {
    if (!root.isConnected) controller.abort();
  });
  observer.observe(parent, { childList: true });
  controller.signal.addEventListener("abort", () => observer.disconnect(), { once: true });
}

/**
 * What a page shows when its component does not run on this node (its routes answered
 * 404): `what` ("The gateway"), the routes that answered (`/v1/gateway/`), the role that
 * serves them, and the API's error as given.
 */
export function notRunning(what, routes, role, error) {
  return h("div", { class: "card" },
    h("p", {}, h("strong", {}, `${what} does not run on this node.`)),
    h("p", { class: "muted" },
      `Its routes under ${routes} answer 404 here. Open the console on a node whose roles include ${role} (every node of strata dev runs it).`),
    h("p", { class: "muted" }, `${error.code}: ${error.message}`));
}

// --- Login ---

function showLogin(message) {
  const main = document.getElementById("main");
  const user = h("input", { name: "user", autocomplete: "username", required: true });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const status = h("div");
  const form = h("form", { class: "card login", onsubmit: async (e) => {
    e.preventDefault();
    status.replaceChildren();
    try {
      sessionStorage.removeItem(TOKEN);
      const reply = await api("POST", "/v1/auth/login", { user: user.value, password: password.value });
      sessionStorage.setItem(TOKEN, reply.token);
      route();
    } catch (err) {
      status.replaceChildren(errorBox(err));
    }
  } },
  h("h1", {}, "Log in"),
  h("p", { class: "muted" }, message || "Access control is on: log in with a Strata user, as the API and the CLI do."),
  field("User", user), field("Password", password),
  h("button", { type: "submit", class: "primary" }, "Log in"), status);
  main.replaceChildren(form);
  user.focus();
}

function logout() {
  sessionStorage.removeItem(TOKEN);
  route();
}

// --- Router ---

let leave = null;
/** Counts navigations, so that a page that finishes rendering after the user has moved on
 * is stopped at once instead of running unseen. */
let navigation = 0;

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [name, query = ""] = raw.split("?");
  return { name: name || "cluster", params: new URLSearchParams(query) };
}

/** Moves to a page with parameters: go("kv", {prefix: "a/"}). */
export function go(name, params = {}) {
  const query = new URLSearchParams(params).toString();
  location.hash = `#/${name}${query ? `?${query}` : ""}`;
}

async function route() {
  const mine = ++navigation;
  if (leave) {
    try { leave(); } catch (_) { /* a page's cleanup must not block the next page */ }
    leave = null;
  }
  const { name, params } = parseHash();
  const main = document.getElementById("main");
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const auth = await api("GET", "/v1/auth/status").catch(() => ({ enabled: false }));
  if (mine !== navigation) return;
  const banner = document.getElementById("banner");
  const who = document.getElementById("who");
  if (auth.enabled) {
    banner.hidden = true;
    if (!sessionStorage.getItem(TOKEN)) return showLogin();
    who.replaceChildren(h("button", { class: "link", onclick: logout }, "Log out"));
  } else {
    banner.hidden = false;
    banner.textContent = "Access control is off: this console is served to loopback clients only ([console] allow_remote), and anyone who reaches the API can change the cluster. See docs/auth.md.";
    who.replaceChildren();
  }
  if (!PAGES.some(([p]) => p === name)) {
    main.replaceChildren(errorBox(new ApiError(404, "not_found", `no page "${name}"`)));
    return;
  }
  const root = h("section", { class: "page", "data-page": name });
  main.replaceChildren(root);
  try {
    const page = await import(`./pages/${name}.js`);
    if (mine !== navigation) return;
    document.title = `${page.title} · Strata`;
    const stop = await page.render(root, params);
    if (typeof stop !== "function") return;
    if (mine === navigation) leave = stop;
    else stop();
  } catch (e) {
    root.replaceChildren(errorBox(e));
  }
}

function start() {
  document.getElementById("nav").replaceChildren(
    ...PAGES.map(([name, title]) => h("a", { href: `#/${name}`, "data-page": name }, title)));
  window.addEventListener("hashchange", route);
  route();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
