// Monitoring: the cluster's own health as charts, a PromQL expression box, scrape targets,
// alerts and traces. Uses the monitor's Prometheus HTTP API on the API listener
// (docs/monitor.md): /api/v1/query_range for every chart, /api/v1/query for `up`,
// /api/v1/targets, /api/v1/alerts and /api/v1/rules; and its trace search,
// GET /v1/monitor/traces?service=&operation=&min_duration=&max_duration=&status=&limit= and
// GET /v1/monitor/traces/ID. When the monitor does not run on this node those routes answer
// 404 and the page says so.
//
// The page has views (#/monitor?view=health|query|targets|alerts|traces), so opening one does
// not run the queries of the others. State that a person would share (the expression, the
// range, the open trace) is kept in the address with history.replaceState.
import { api, ApiError, chart, errorBox, field, h, notRunning, stack, table } from "../app.js";

export const title = "Monitoring";

const VIEWS = [
  ["health", "Health"],
  ["query", "Query"],
  ["targets", "Targets"],
  ["alerts", "Alerts"],
  ["traces", "Traces"],
];

/** Chart ranges offered, in seconds. */
const RANGES = [
  ["15m", 15 * 60],
  ["1h", 3600],
  ["6h", 6 * 3600],
  ["24h", 24 * 3600],
];

/** How often the charts and tables are read again, in ms. */
const REFRESH_MS = 15000;

/**
 * The health charts. `W` in a query becomes the rate window (four steps, at least a
 * minute). A chart with several queries draws each under its label. The metric names are
 * the ones every node exports (docs/ops/cluster.md, and GET /api/v1/label/__name__/values).
 */
const CHARTS = [
  {
    title: "Operations per second, by component",
    queries: [
      ["kv", "sum(rate(strata_kv_operations_total[W]))"],
      ["registry", "sum(rate(strata_registry_operations_total[W]))"],
      ["config center", "sum(rate(strata_configcenter_operations_total[W]))"],
      ["gateway", "sum(rate(strata_gateway_requests_total[W]))"],
    ],
  },
  { title: "KV operations per second, by node", query: "sum by (instance) (rate(strata_kv_operations_total[W]))" },
  {
    title: "Write latency p99, proposal to apply on the leader (ms)",
    query: "1000 * histogram_quantile(0.99, sum by (le, instance) (rate(strata_raft_proposal_duration_seconds_bucket[W])))",
  },
  {
    title: "Gateway latency p99, arrival to response headers (ms)",
    query: "1000 * histogram_quantile(0.99, sum by (le) (rate(strata_gateway_request_duration_seconds_bucket[W])))",
  },
  {
    title: "Raft apply lag (entries behind the highest commit index)",
    query: "scalar(max(strata_raft_commit_index)) - max by (instance) (strata_raft_applied_index)",
  },
  { title: "Data folder size (bytes)", query: "max by (instance) (strata_storage_db_size_bytes)" },
  { title: "Free disk (bytes)", query: "max by (instance) (strata_disk_free_bytes)" },
  { title: "Targets up, by job", query: "sum by (job) (up)" },
];

export async function render(root, params) {
  const view = VIEWS.some(([v]) => v === params.get("view")) ? params.get("view") : "health";
  root.append(h("h1", {}, "Monitoring"));
  try {
    await api("GET", "/api/v1/status/buildinfo");
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      root.append(notRunning("The monitor", "/api/v1/", "monitor", e));
      return undefined;
    }
    root.append(errorBox(e));
    return undefined;
  }
  root.append(h("nav", { class: "tabs", "aria-label": "Monitoring views" },
    VIEWS.map(([v, label]) => h("a", {
      href: `#/monitor?view=${v}`, "aria-current": v === view ? "page" : undefined,
    }, label))));
  const body = h("div", { class: "monitor-view", "data-view": view });
  root.append(body);
  const views = { health, query, targets, alerts, traces };
  return views[view](body, params);
}

/** Replaces the address's parameters without reloading the page. */
function remember(params) {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) query.set(k, v);
  history.replaceState(null, "", `#/monitor?${query}`);
}

/** Refreshes with `work` every REFRESH_MS while the tab is visible; returns the stop. */
function every(work) {
  const timer = setInterval(() => { if (!document.hidden) work(); }, REFRESH_MS);
  return () => clearInterval(timer);
}

// --- ranges and queries -----------------------------------------------------------------------

function rangeSelect(value, onChange) {
  const select = h("select", { name: "range" },
    RANGES.map(([label]) => h("option", { value: label, selected: label === value }, `last ${label}`)));
  select.addEventListener("change", () => onChange(select.value));
  return field("Range", select);
}

function rangeSeconds(label) {
  return (RANGES.find(([l]) => l === label) || RANGES[0])[1];
}

/** Runs a range query over the last `seconds`; answers `data.result` as a matrix. */
async function rangeQuery(expr, seconds, signal) {
  const end = Date.now() / 1000;
  const step = Math.max(1, Math.ceil(seconds / 150));
  const window = `${Math.max(60, step * 4)}s`;
  const query = new URLSearchParams({
    query: expr.replaceAll("[W]", `[${window}]`),
    start: (end - seconds).toFixed(3),
    end: end.toFixed(3),
    step: String(step),
  });
  const reply = await api("GET", `/api/v1/query_range?${query}`, undefined, { signal });
  return asMatrix(reply.data);
}

/** A scalar or string answer drawn as one series. */
function asMatrix(data) {
  if (!data) return [];
  if (data.resultType === "matrix") return data.result;
  if (data.resultType === "vector") return data.result.map((r) => ({ metric: r.metric, values: [r.value] }));
  if (data.resultType === "scalar") return [{ metric: {}, values: [data.result] }];
  return [];
}

// --- health -----------------------------------------------------------------------------------

async function health(body, params) {
  let range = params.get("range") || RANGES[0][0];
  const firing = h("div", { "aria-live": "polite" });
  const grid = h("div", { class: "charts" });
  body.append(
    h("div", { class: "row" }, rangeSelect(range, (r) => { range = r; remember({ view: "health", range }); draw(); })),
    firing, grid);
  const cards = CHARTS.map((c) => {
    const place = h("div", {}, h("p", { class: "muted" }, "Loading…"));
    const expr = c.query || c.queries.map(([, q]) => q).join("\n");
    const open = c.query ? h("a", { href: `#/monitor?${new URLSearchParams({ view: "query", expr: c.query })}` }, "Open in Query") : null;
    grid.append(h("section", { class: "card chart-card", "aria-label": c.title },
      h("h2", {}, c.title), place,
      h("details", {}, h("summary", {}, "PromQL"), h("pre", {}, expr), open)));
    return [c, place];
  });
  let controller = new AbortController();

  async function draw() {
    controller.abort();
    controller = new AbortController();
    const signal = controller.signal;
    const seconds = rangeSeconds(range);
    showFiring(firing, signal);
    await Promise.all(cards.map(async ([c, place]) => {
      try {
        let result;
        if (c.query) {
          result = await rangeQuery(c.query, seconds, signal);
        } else {
          const parts = await Promise.all(c.queries.map(async ([label, q]) =>
            (await rangeQuery(q, seconds, signal)).map((s) => ({ ...s, metric: { component: label } }))));
          result = parts.flat();
        }
        if (!signal.aborted) place.replaceChildren(chart(result));
      } catch (e) {
        if (e.name !== "AbortError") place.replaceChildren(errorBox(e));
      }
    }));
  }

  await draw();
  const stop = every(draw);
  return () => {
    stop();
    controller.abort();
  };
}

async function showFiring(place, signal) {
  try {
    const reply = await api("GET", "/api/v1/alerts", undefined, { signal });
    const list = reply.data.alerts.filter((a) => a.state === "firing");
    place.replaceChildren(list.length
      ? h("div", { class: "error", role: "alert" }, h("strong", {}, `${list.length} alert${list.length > 1 ? "s" : ""} firing: `),
        list.map((a, i) => [i ? ", " : "", a.labels.alertname || "alert", a.labels.instance ? ` (${a.labels.instance})` : ""]),
        " · ", h("a", { href: "#/monitor?view=alerts" }, "see alerts"))
      : h("p", { class: "ok" }, "No alerts firing."));
  } catch (e) {
    if (e.name !== "AbortError") place.replaceChildren(errorBox(e));
  }
}

// --- query ------------------------------------------------------------------------------------

async function query(body, params) {
  let range = params.get("range") || "1h";
  const input = h("input", {
    name: "expr", value: params.get("expr") || "", required: true, autocomplete: "off", spellcheck: "false",
    placeholder: "rate(strata_kv_operations_total[1m])", class: "expr", "aria-describedby": "expr-error",
  });
  const problem = h("div", { id: "expr-error", "aria-live": "assertive" });
  const result = h("div");
  const names = h("datalist", { id: "metric-names" });
  input.setAttribute("list", "metric-names");
  const form = h("form", { class: "query", onsubmit: (e) => { e.preventDefault(); run(); } },
    h("div", { class: "row expr-row" },
      field("PromQL expression", input),
      rangeSelect(range, (r) => { range = r; if (input.value.trim()) run(); }),
      h("button", { type: "submit", class: "primary" }, "Run")),
    problem, names);
  body.append(form, result);
  let controller = new AbortController();

  async function run() {
    const expr = input.value.trim();
    if (!expr) return;
    remember({ view: "query", expr, range });
    controller.abort();
    controller = new AbortController();
    result.replaceChildren(h("p", { class: "muted" }, "Running…"));
    try {
      const series = await rangeQuery(expr, rangeSeconds(range), controller.signal);
      input.removeAttribute("aria-invalid");
      problem.replaceChildren();
      result.replaceChildren(h("div", {}, chart(series), latest(series)));
    } catch (e) {
      if (e.name === "AbortError") return;
      input.setAttribute("aria-invalid", "true");
      problem.replaceChildren(errorBox(e));
      result.replaceChildren();
    }
  }

  // Metric names for the input's suggestions; the box works without them.
  api("GET", "/api/v1/label/__name__/values")
    .then((reply) => names.replaceChildren(...reply.data.map((n) => h("option", { value: n }))))
    .catch(() => {});
  if (input.value.trim()) await run();
  input.focus();
  const stop = every(() => { if (input.value.trim() && !input.hasAttribute("aria-invalid") && document.activeElement !== input) run(); });
  return () => {
    stop();
    controller.abort();
  };
}

function latest(series) {
  if (!series.length) return null;
  return table([
    ["Series", (s) => h("code", {}, seriesName(s.metric))],
    ["Latest value", (s) => (s.values.length ? s.values[s.values.length - 1][1] : "")],
  ], series.slice(0, 50), { label: "latest values" });
}

function seriesName(metric) {
  const { __name__: name = "", ...labels } = metric;
  const inner = Object.entries(labels).map(([k, v]) => `${k}="${v}"`).join(", ");
  return `${name}{${inner}}`;
}

// --- targets ----------------------------------------------------------------------------------

async function targets(body) {
  const place = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  body.append(h("p", { class: "muted" },
    "Each target is scraped by one monitor node; this node knows the health of the targets it scrapes, "
    + "and the others' from the replicated up series."), place);

  async function load() {
    try {
      const [reply, up] = await Promise.all([
        api("GET", "/api/v1/targets"),
        api("GET", `/api/v1/query?${new URLSearchParams({ query: "up" })}`).catch(() => null),
      ]);
      const upBy = new Map();
      for (const r of (up && up.data.result) || []) upBy.set(`${r.metric.job}|${r.metric.instance}`, Number(r.value[1]));
      const list = [...reply.data.activeTargets].sort((a, b) =>
        (a.scrapePool + a.scrapeUrl).localeCompare(b.scrapePool + b.scrapeUrl));
      place.replaceChildren(stack(table([
        ["Job", (t) => t.scrapePool],
        ["Target", (t) => h("div", {}, h("code", {}, t.scrapeUrl), h("div", { class: "muted" }, labelText(t.labels)))],
        ["Health", (t) => targetHealth(t, upBy.get(`${t.labels.job}|${t.labels.instance}`))],
        ["Scraped by", (t) => (t.scrapedBy ? `node ${t.scrapedBy}` : "—")],
        ["Last scrape", (t) => (t.lastScrape && !t.lastScrape.startsWith("0001") ? `${timeAgo(Date.parse(t.lastScrape))}, ${(t.lastScrapeDuration * 1000).toFixed(1)} ms` : h("span", { class: "muted" }, "not by this node"))],
        ["Every", (t) => t.scrapeInterval],
        ["Last error", (t) => (t.lastError ? h("span", { class: "bad" }, t.lastError) : "")],
      ], list, { label: "targets", empty: "No targets." })));
    } catch (e) {
      place.replaceChildren(errorBox(e));
    }
  }

  await load();
  return every(load);
}

function targetHealth(t, up) {
  if (t.health === "up") return h("span", { class: "badge ok" }, "up");
  if (t.health === "down") return h("span", { class: "badge bad" }, "down");
  if (up === 1) return h("span", { class: "badge ok", title: "from the up series" }, "up");
  if (up === 0) return h("span", { class: "badge bad", title: "from the up series" }, "down");
  return h("span", { class: "badge" }, t.health || "unknown");
}

function labelText(labels) {
  return Object.entries(labels || {}).filter(([k]) => k !== "job" && k !== "instance").map(([k, v]) => `${k}=${v}`).join(" ");
}

function timeAgo(ms) {
  const s = Math.max(0, (Date.now() - ms) / 1000);
  return s < 60 ? `${s.toFixed(0)} s ago` : s < 3600 ? `${(s / 60).toFixed(0)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
}

// --- alerts -----------------------------------------------------------------------------------

async function alerts(body) {
  const active = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const rules = h("div");
  body.append(h("h2", {}, "Firing and pending alerts"), active, h("h2", {}, "Alerting rules"), rules);

  async function load() {
    try {
      const reply = await api("GET", "/api/v1/alerts");
      const list = [...reply.data.alerts].sort((a, b) => (a.state === b.state ? 0 : a.state === "firing" ? -1 : 1));
      active.replaceChildren(stack(table([
        ["Alert", (a) => h("strong", {}, a.labels.alertname || "")],
        ["State", (a) => h("span", { class: `badge ${a.state === "firing" ? "bad" : "warn"}` }, a.state)],
        ["Labels", (a) => h("code", {}, labelText(Object.fromEntries(Object.entries(a.labels).filter(([k]) => k !== "alertname"))))],
        ["Summary", (a) => (a.annotations && (a.annotations.summary || a.annotations.description)) || ""],
        ["Active since", (a) => (a.activeAt ? timeAgo(Date.parse(a.activeAt)) : "")],
        ["Value", (a) => a.value],
      ], list, { label: "alerts", empty: "No alerts firing or pending." })));
    } catch (e) {
      active.replaceChildren(errorBox(e));
    }
    try {
      const reply = await api("GET", "/api/v1/rules");
      const list = reply.data.groups.flatMap((g) => g.rules.filter((r) => r.type === "alerting").map((r) => ({ ...r, group: g.name })));
      rules.replaceChildren(table([
        ["Rule", (r) => h("strong", {}, r.name)],
        ["Group", (r) => r.group],
        ["State", (r) => h("span", { class: `badge ${r.state === "firing" ? "bad" : r.state === "pending" ? "warn" : "ok"}` }, r.state || "inactive")],
        ["Expression", (r) => h("code", {}, r.query)],
        ["For", (r) => (r.duration ? (r.duration % 60 ? `${r.duration} s` : `${r.duration / 60} min`) : "")],
      ], list, { label: "alerting rules", empty: "No alerting rules." }));
    } catch (e) {
      rules.replaceChildren(errorBox(e));
    }
  }

  await load();
  return every(load);
}

// --- traces -----------------------------------------------------------------------------------

async function traces(body, params) {
  const service = h("input", { name: "service", value: params.get("service") || "", list: "trace-services", autocomplete: "off" });
  const operation = h("input", { name: "operation", value: params.get("operation") || "", autocomplete: "off" });
  const minDuration = h("input", { name: "min_duration", value: params.get("min_duration") || "", placeholder: "100ms", size: 8 });
  const status = h("select", { name: "status" },
    [["", "any"], ["error", "error"], ["ok", "ok"], ["unset", "unset"]].map(([v, l]) =>
      h("option", { value: v, selected: v === (params.get("status") || "") }, l)));
  const limit = h("input", { name: "limit", type: "number", min: 1, max: 1000, value: params.get("limit") || "20", size: 5 });
  const services = h("datalist", { id: "trace-services" });
  const results = h("div");
  const waterfallPlace = h("div", { id: "trace" });
  const form = h("form", { class: "row", role: "search", onsubmit: (e) => { e.preventDefault(); search(); } },
    field("Service", service), field("Operation", operation), field("Min duration", minDuration),
    field("Status", status), field("Limit", limit),
    h("button", { type: "submit", class: "primary" }, "Search"), services);
  body.append(form, results, waterfallPlace);
  let openTrace = params.get("trace") || "";

  function state() {
    return {
      view: "traces", service: service.value.trim(), operation: operation.value.trim(),
      min_duration: minDuration.value.trim(), status: status.value,
      limit: limit.value !== "20" ? limit.value : "", trace: openTrace,
    };
  }

  async function search() {
    const s = state();
    remember(s);
    const query = new URLSearchParams();
    for (const k of ["service", "operation", "min_duration", "status"]) if (s[k]) query.set(k, s[k]);
    query.set("limit", limit.value || "20");
    results.replaceChildren(h("p", { class: "muted" }, "Searching…"));
    try {
      const reply = await api("GET", `/v1/monitor/traces?${query}`);
      results.replaceChildren(stack(table([
        ["Trace", (t) => h("button", { type: "button", class: "link", "data-trace": t.trace_id, onclick: () => open(t.trace_id) }, t.trace_id.slice(0, 16) + "…")],
        ["Root", (t) => h("div", {}, h("strong", {}, t.root_service), " ", t.root_operation)],
        ["Started", (t) => new Date(t.start_ms).toLocaleString()],
        ["Duration", (t) => `${t.duration_ms.toFixed(2)} ms`],
        ["Spans", (t) => String(t.spans)],
        ["Services", (t) => t.services.join(", ")],
        ["Errors", (t) => (t.errors ? h("span", { class: "badge bad" }, String(t.errors)) : "0")],
      ], reply.traces, {
        label: "traces",
        empty: "No trace matches. Traces are kept by the node that received them: search the node your applications send spans to.",
      })));
    } catch (e) {
      results.replaceChildren(errorBox(e));
    }
  }

  async function open(id) {
    openTrace = id;
    remember(state());
    waterfallPlace.replaceChildren(h("p", { class: "muted" }, "Loading the trace…"));
    try {
      const reply = await api("GET", `/v1/monitor/traces/${encodeURIComponent(id)}`);
      waterfallPlace.replaceChildren(waterfall(reply.trace_id, reply.spans));
      waterfallPlace.querySelector("h2").focus();
    } catch (e) {
      waterfallPlace.replaceChildren(errorBox(e));
    }
  }

  // Services seen in recent traces, as suggestions for the service box.
  api("GET", "/v1/monitor/traces?limit=200")
    .then((reply) => {
      const seen = new Set(reply.traces.flatMap((t) => t.services));
      services.replaceChildren(...[...seen].sort().map((s) => h("option", { value: s })));
    })
    .catch(() => {});
  await search();
  if (openTrace) await open(openTrace);
  return undefined;
}

/** A trace as a waterfall: spans in tree order, each a bar on the trace's time line. */
function waterfall(traceId, spans) {
  const t0 = Math.min(...spans.map((s) => s.start_unix_nano));
  const t1 = Math.max(...spans.map((s) => s.end_unix_nano));
  const total = Math.max(1, t1 - t0);
  const ms = (ns) => `${(ns / 1e6).toFixed(ns < 1e7 ? 3 : 1)} ms`;
  const ids = new Set(spans.map((s) => s.span_id));
  const children = new Map();
  const roots = [];
  for (const s of spans) {
    if (s.parent_span_id && ids.has(s.parent_span_id)) {
      if (!children.has(s.parent_span_id)) children.set(s.parent_span_id, []);
      children.get(s.parent_span_id).push(s);
    } else {
      roots.push(s);
    }
  }
  const byStart = (a, b) => a.start_unix_nano - b.start_unix_nano;
  const ordered = [];
  const visit = (s, depth) => {
    ordered.push([s, depth]);
    for (const c of (children.get(s.span_id) || []).sort(byStart)) visit(c, depth + 1);
  };
  for (const r of roots.sort(byStart)) visit(r, 0);
  const services = new Set(spans.map((s) => s.service));
  const errors = spans.filter((s) => s.status_code === 2).length;

  const rows = ordered.map(([s, depth]) => {
    const duration = Math.max(0, s.end_unix_nano - s.start_unix_nano);
    const left = ((s.start_unix_nano - t0) / total) * 100;
    const width = Math.max(0.3, (duration / total) * 100);
    const failed = s.status_code === 2;
    const details = h("div", { class: "wf-details", hidden: true, id: `span-${s.span_id}` },
      h("dl", { class: "meta" },
        [["span", s.span_id], ["parent", s.parent_span_id || "none"], ["kind", s.kind],
          ["starts at", `+${ms(s.start_unix_nano - t0)}`], ["duration", ms(duration)],
          ["status", failed ? `error${s.status_message ? `: ${s.status_message}` : ""}` : s.status_code === 1 ? "ok" : "unset"],
          ...Object.entries(s.attributes || {})].map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
    const toggle = h("button", {
      type: "button", class: "wf-label", "aria-expanded": "false", "aria-controls": `span-${s.span_id}`,
      onclick: () => {
        details.hidden = !details.hidden;
        toggle.setAttribute("aria-expanded", String(!details.hidden));
      },
    }, h("span", { class: failed ? "bad" : "" }, h("strong", {}, s.service), " ", s.name), " ", h("span", { class: "muted" }, ms(duration)));
    // Positions go through the style properties: the console's Content-Security-Policy
    // (style-src 'self') refuses style attributes.
    toggle.style.paddingLeft = `${depth * 14 + 4}px`;
    const bar = h("div", { class: `bar${failed ? " error" : ""}` });
    bar.style.marginLeft = `${left.toFixed(2)}%`;
    bar.style.width = `${Math.min(width, 100 - left).toFixed(2)}%`;
    return h("li", { class: "wf-row", "data-span": s.span_id },
      toggle, h("div", { class: "wf-track", "aria-hidden": "true" }, bar), details);
  });

  return h("section", { class: "card", "aria-label": `trace ${traceId}` },
    h("h2", { tabindex: "-1" }, `Trace ${traceId}`),
    h("p", { class: "muted" }, `${spans.length} spans · ${[...services].sort().join(", ")} · ${ms(total)}`,
      errors ? h("span", { class: "bad" }, ` · ${errors} failed`) : null),
    h("div", { class: "wf-axis", "aria-hidden": "true" },
      h("span", {}, "0"), h("span", {}, ms(total / 2)), h("span", {}, ms(total))),
    h("ol", { class: "waterfall", "aria-label": "spans, in call order" }, rows));
}

