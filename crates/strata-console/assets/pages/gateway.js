// Gateway: the route table in force on this node, its upstream groups as they run (members,
// weights, health, ejections, breakers, retry budget), TCP listeners, and applying a table.
// Uses the gateway's admin API on the API listener (docs/gateway.md): GET /v1/gateway/routes,
// /v1/gateway/upstreams and /v1/gateway/tcp, read every two seconds; POST
// /v1/gateway/routes[?replace=true] with a JSON table, which the node validates whole and
// answers with its error as given; DELETE /v1/gateway/routes/NAME. When the gateway component
// does not run on this node its admin routes answer 404, and the page says so.
import { api, ApiError, confirmAction, errorBox, field, focusKey, h, notRunning, restoreFocus, stack, table } from "../app.js";

export const title = "Gateway";

/** How often the table and the upstream groups are read again, in ms. */
const REFRESH_MS = 2000;

const EXAMPLE = {
  routes: [
    { name: "hello", path: { prefix: "/hello" }, strip_prefix: true, upstream: "hello", timeout: "5s" },
  ],
  upstreams: [
    { name: "hello", addresses: ["127.0.0.1:8080"], balance: "round_robin" },
  ],
};

export async function render(root) {
  const heading = h("h1", {}, "Gateway");
  const summary = h("p", { class: "muted" }, "Loading…");
  const routes = h("div");
  const upstreams = h("div");
  const tcp = h("div");
  const changes = h("div", { "aria-live": "polite" });
  root.append(heading, summary);

  let first;
  try {
    first = await read();
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      summary.replaceChildren();
      root.append(notRunning("The gateway", "/v1/gateway/", "gateway", e));
      return undefined;
    }
    summary.replaceChildren(errorBox(e));
    return undefined;
  }

  const editor = applyForm(changes, () => refresh());
  root.append(
    h("h2", {}, "Routes"), routes,
    h("h2", {}, "Upstream groups"), upstreams,
    tcp,
    h("h2", { id: "apply-heading" }, "Apply a route table"), editor, changes);

  function show({ table: current, groups, listeners }) {
    const source = current.source === "config_center" ? "the config center" : current.source;
    summary.replaceChildren(h("span", {},
      `Table version ${current.version} from ${source} · ${current.routes.length} routes · ${current.upstreams.length} upstream groups`,
      current.source.startsWith("file") ? h("span", { class: "warn" }, " · served from a file: edit that file; the admin API refuses changes") : null));
    const focused = focusKey();
    routes.replaceChildren(routeTable(current.routes, current.upstreams, removeRoute));
    upstreams.replaceChildren(...upstreamCards(groups, current.upstreams));
    tcp.replaceChildren(...(listeners.length ? [h("h2", {}, "TCP listeners"), tcpTable(listeners)] : []));
    restoreFocus(root, focused);
  }

  async function read() {
    const [current, groups, listeners] = await Promise.all([
      api("GET", "/v1/gateway/routes"),
      api("GET", "/v1/gateway/upstreams"),
      api("GET", "/v1/gateway/tcp").catch(() => ({ tcp: [] })),
    ]);
    return { table: current, groups: groups.upstreams, listeners: listeners.tcp || [] };
  }

  let busy = false;
  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      show(await read());
    } catch (e) {
      if (e.name !== "AbortError") summary.replaceChildren(errorBox(e));
    } finally {
      busy = false;
    }
  }

  async function removeRoute(route) {
    if (!(await confirmAction(`Delete route ${route.name}? Every gateway node stops matching it once the new table is published.`))) return;
    changes.replaceChildren(h("p", { class: "muted" }, "Working…"));
    try {
      const reply = await api("DELETE", `/v1/gateway/routes/${encodeURIComponent(route.name)}`);
      changes.replaceChildren(h("p", { class: "ok", role: "status" }, `deleted route ${route.name}: ${appliedText(reply)}`));
    } catch (e) {
      changes.replaceChildren(errorBox(e));
    }
    refresh();
  }

  show(first);
  const timer = setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
  return () => clearInterval(timer);
}

function appliedText(reply) {
  return `version ${reply.version}, ${reply.routes} routes, ${reply.upstreams} upstream groups; `
    + (reply.in_force ? "in force on this node" : "not yet in force on this node");
}

// --- routes ---------------------------------------------------------------------------------

function routeTable(routes, upstreamSpecs, removeRoute) {
  const known = new Set(upstreamSpecs.map((u) => u.name));
  return stack(table([
    ["Name", (r) => h("strong", {}, r.name)],
    ["Match", (r) => matchText(r)],
    ["Action", (r) => actionText(r, known)],
    ["Options", (r) => optionList(r)],
    ["", (r) => h("button", { type: "button", class: "danger", "data-focus": `route:${r.name}`, onclick: () => removeRoute(r) }, "Delete")],
  ], routes, { label: "routes", empty: "No routes: the gateway answers 404 to every request. Apply a table below." }));
}

function matchText(r) {
  const parts = [];
  if (r.priority) parts.push(`priority ${r.priority}`);
  if (r.hosts && r.hosts.length) parts.push(`host ${r.hosts.join(" | ")}`);
  if (r.path) {
    const [kind, value] = Object.entries(r.path)[0] || ["", ""];
    parts.push(`path ${kind} ${value}`);
  }
  if (r.methods && r.methods.length) parts.push(r.methods.join(" "));
  for (const [what, list] of [["header", r.headers], ["query", r.query], ["cookie", r.cookies]]) {
    for (const m of list || []) parts.push(`${what} ${fieldMatch(m)}`);
  }
  if (!parts.length) return h("span", { class: "muted" }, "every request");
  return h("ul", { class: "plain" }, parts.map((p) => h("li", {}, h("code", {}, p))));
}

function fieldMatch(m) {
  if (m.value !== undefined) return `${m.name} = ${m.value}`;
  if (m.regex !== undefined) return `${m.name} ~ ${m.regex}`;
  if (m.present === false) return `${m.name} absent`;
  return `${m.name} present`;
}

function actionText(r, known) {
  if (r.upstream) {
    return h("span", {}, "→ upstream ", h("code", {}, r.upstream),
      known.has(r.upstream) ? null : h("span", { class: "bad" }, " (missing)"),
      r.canary ? h("div", { class: "muted" }, `canary ${r.canary.weight ?? 0}% → `, h("code", {}, r.canary.upstream)) : null,
      r.strip_prefix ? h("div", { class: "muted" }, "strip prefix") : null,
      r.rewrite ? h("div", { class: "muted" }, `rewrite ${r.rewrite}`) : null);
  }
  if (r.redirect) return h("span", {}, `redirect ${r.redirect.status || 302} → `, h("code", {}, r.redirect.to));
  if (r.respond) return h("span", {}, `respond ${r.respond.status || 200}`);
  if (r.files) return h("span", {}, "files from ", h("code", {}, r.files.dir));
  return h("span", { class: "muted" }, "—");
}

function optionList(r) {
  const parts = [];
  if (r.timeout) parts.push(`timeout ${r.timeout}`);
  if (r.idle_timeout) parts.push(`idle ${r.idle_timeout}`);
  if (r.retries !== undefined) parts.push(`retries ${r.retries}`);
  if (r.max_body) parts.push(`max body ${r.max_body}`);
  if (r.max_concurrent) parts.push(`max ${r.max_concurrent} in flight`);
  for (const l of r.rate_limits || []) parts.push(`limit ${l.requests}/${l.per || "1s"}${l.key ? ` by ${l.key}` : ""}${l.cluster ? " (cluster)" : ""}`);
  if (r.hedge_after) parts.push(`hedge after ${r.hedge_after}`);
  if (r.fallback) parts.push("fallback");
  if (r.auth) parts.push(`auth ${(r.auth.methods || []).join(", ")}`);
  if (r.cors) parts.push("CORS");
  if (r.allow_ips && r.allow_ips.length) parts.push(`allow ${r.allow_ips.join(", ")}`);
  if (r.deny_ips && r.deny_ips.length) parts.push(`deny ${r.deny_ips.join(", ")}`);
  if (!parts.length) return h("span", { class: "muted" }, "defaults");
  return h("span", { class: "tags" }, parts.map((p) => h("span", { class: "tag" }, p)));
}

// --- upstream groups --------------------------------------------------------------------------

function upstreamCards(groups, specs) {
  if (!groups.length) return [h("p", { class: "muted" }, "No upstream groups.")];
  const bySpec = new Map(specs.map((s) => [s.name, s]));
  return [...groups].sort((a, b) => a.name.localeCompare(b.name)).map((g) => {
    const spec = bySpec.get(g.name) || {};
    const alive = g.members.filter((m) => m.health === "passing" && !m.ejected).length;
    return h("section", { class: "card upstream", "aria-label": `upstream ${g.name}`, "data-upstream": g.name },
      h("h3", {}, g.name, " ",
        h("span", { class: `badge ${alive ? "ok" : "bad"}` }, `${alive} of ${g.members.length} live`), " ",
        g.breaker ? breakerBadge(g.breaker.state, "breaker") : null),
      h("p", { class: "muted" },
        `${g.source} · balance ${g.balance}`,
        spec.protocol && spec.protocol !== "http1" ? ` · ${spec.protocol}` : "",
        spec.slow_start ? ` · slow start ${spec.slow_start}` : "",
        ` · pool: ${g.connections_open} open, ${g.connections_opened} opened, reuse ${(g.pool_reuse * 100).toFixed(0)}%`,
        ` · retry budget: ${g.retry_budget.available} available, ${g.retry_budget.spent} spent, ${g.retry_budget.refused} refused`,
        g.concurrency ? ` · in flight ${g.concurrency[0]} of ${g.concurrency[1]}` : ""),
      g.problem ? h("p", { class: "warn", role: "note" }, g.problem) : null,
      g.breaker ? breakerLine(g.breaker) : null,
      stack(table([
        ["Member", (m) => h("div", {}, h("code", {}, m.address), m.id !== m.address ? h("div", { class: "muted" }, m.id) : null)],
        ["Weight", (m) => String(m.weight)],
        ["Health", (m) => h("span", { class: `badge ${m.health === "passing" ? "ok" : "bad"}` }, m.health)],
        ["Ejected", (m) => m.ejected ? h("span", { class: "badge bad" }, "ejected") : h("span", { class: "muted" }, "no")],
        ["Ejections", (m) => String(m.ejections)],
        ["Breaker", (m) => m.breaker ? breakerBadge(m.breaker) : h("span", { class: "muted" }, "—")],
        ["Warmth", (m) => `${m.warmth_percent}%`],
        ["In flight", (m) => String(m.in_flight)],
        ["Requests", (m) => String(m.requests)],
        ["Failures", (m) => String(m.failures)],
      ], g.members, {
        label: `members of ${g.name}`,
        empty: g.source.startsWith("service")
          ? `No members: the service has no enabled, passing instances${spec.tags ? " with these tags" : ""}.`
          : "No members.",
      })));
  });
}

function breakerBadge(state, prefix) {
  const tone = state === "closed" || state === "disabled" ? "ok" : state === "half_open" ? "warn" : "bad";
  return h("span", { class: `badge ${tone}`, title: "circuit breaker" }, prefix ? `${prefix} ${state.replace("_", " ")}` : state.replace("_", " "));
}

function breakerLine(b) {
  return h("p", { class: "muted" },
    `Group breaker: ${b.state.replace("_", " ")} · ${b.calls} calls in the window, ${b.failed_calls} failed (${b.failure_rate.toFixed(1)}%), `
    + `${b.slow_calls} slow (${b.slow_call_rate.toFixed(1)}%) · ${b.not_permitted} refused`
    + (b.retry_after_ms !== undefined ? ` · trial calls in ${(b.retry_after_ms / 1000).toFixed(1)} s` : ""));
}

function tcpTable(listeners) {
  const columns = Object.keys(listeners[0] || {}).map((k) => [k.replace(/_/g, " "), (l) => {
    const v = l[k];
    return v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v);
  }]);
  return table(columns, listeners, { label: "tcp listeners" });
}

// --- applying a table ---------------------------------------------------------------------------

function applyForm(place, refresh) {
  const text = h("textarea", {
    name: "table", rows: 14, spellcheck: "false", "aria-describedby": "table-help",
    placeholder: JSON.stringify(EXAMPLE, null, 2),
  });
  const replace = h("input", { type: "checkbox", name: "replace" });
  const help = h("p", { id: "table-help", class: "muted" },
    "A route table as JSON: routes and upstreams, as docs/gateway.md describes (the CLI also takes TOML). "
    + "The node validates it whole before publishing it to the config center; a table that fails is refused and the one in force keeps serving.");
  const form = h("form", { class: "apply", onsubmit: async (e) => {
    e.preventDefault();
    let body;
    try {
      body = JSON.parse(text.value);
    } catch (err) {
      text.setAttribute("aria-invalid", "true");
      place.replaceChildren(errorBox(new ApiError(0, "invalid_json", `the table is not JSON: ${err.message}`)));
      return;
    }
    const replacing = replace.checked;
    if (replacing && !(await confirmAction("Replace the whole route table? Everything not in this table is removed on every gateway node: routes, upstreams and TCP listeners, and also certificates, host address lists and JWT and OIDC providers, which the table in force does not show here."))) return;
    place.replaceChildren(h("p", { class: "muted" }, "Applying…"));
    try {
      const reply = await api("POST", `/v1/gateway/routes${replacing ? "?replace=true" : ""}`, body);
      text.removeAttribute("aria-invalid");
      place.replaceChildren(h("p", { class: "ok", role: "status" }, `applied: ${appliedText(reply)}`));
      refresh();
    } catch (err) {
      text.setAttribute("aria-invalid", "true");
      place.replaceChildren(errorBox(err));
    }
  } },
  field("Route table (JSON)", text), help,
  h("label", { class: "check" }, replace, " Replace the whole table (otherwise routes and upstreams are added or replaced by name)"),
  h("div", { class: "row" },
    h("button", { type: "submit", class: "primary" }, "Apply"),
    h("button", { type: "button", onclick: async () => {
      try {
        const current = await api("GET", "/v1/gateway/routes");
        const { version: _v, source: _s, ...tableOnly } = current;
        text.value = JSON.stringify(tableOnly, null, 2);
        text.focus();
      } catch (err) {
        place.replaceChildren(errorBox(err));
      }
    } }, "Load the table in force"),
    h("button", { type: "button", onclick: () => { text.value = JSON.stringify(EXAMPLE, null, 2); text.focus(); } }, "Example")));
  return form;
}


// --- focus across re-renders ------------------------------------------------------------------


