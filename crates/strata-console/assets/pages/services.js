// Services: the registry's services with instance counts by health, and one service's
// instances followed live. Everything comes from the registry's native API (docs/registry.md):
//
// - The list is GET /v1/registry/services, which answers every service with its instance
//   and passing counts in one response (1,000 services are about 85 KB), so the page is cut
//   here, in the browser. Only the services on the visible page that have instances not
//   passing are asked for their instances (GET /v1/registry/services/NAME), to split those
//   into warning, critical and disabled: at most one page of requests, and none while the
//   catalog's index stands still.
// - A service's instances come from its watch route (server-sent events: a snapshot, then
//   one put or delete per change), reconnected after a break, stopped when the page is left.
// - Deregister is DELETE /v1/registry/services/NAME/instances/ID. The registry has no route to
//   enable or disable an instance (a registration with different content is refused), so the
//   page flips `enabled` in the instance's record, which docs/registry.md documents as JSON
//   under /strata/registry/instances/NS/SERVICE/ID: a KV transaction that compares the mod
//   revision it read and keeps the key's lease, so a concurrent change is never overwritten.
import { ago, api, ApiError, confirmAction, errorBox, field, focusKey, h, notRunning, pager, restoreFocus, stack, stream, table } from "../app.js";

export const title = "Services";

/** Services shown on one page of the list. */
const PAGE_SIZE = 25;
/** How often the list is read again, in ms. */
const LIST_REFRESH_MS = 3000;
/** Waits between watch reconnections, in ms, growing to the last. */
const RECONNECT_MS = [500, 1000, 2000, 5000];

export async function render(root, params) {
  const service = params.get("service");
  if (service) return renderService(root, params.get("namespace") || "public", service);
  return renderList(root, params);
}

// --- the list -------------------------------------------------------------------------------

async function renderList(root, params) {
  const state = {
    filter: params.get("q") || "",
    namespace: params.get("namespace") || "",
    page: Math.max(0, Number(params.get("page") || 1) - 1) || 0,
    index: null,
    services: [],
  };
  // Splits of not-passing instances, by "NS/NAME", for the services of the visible page.
  const breakdowns = new Map();
  const summary = h("p", { class: "muted" });
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const nsSelect = h("select", { name: "namespace" }, h("option", { value: "" }, "all namespaces"));
  const filterInput = h("input", {
    name: "q", type: "search", value: state.filter, placeholder: "part of a name", autocomplete: "off",
  });
  root.append(
    h("h1", {}, "Services"),
    h("form", { class: "row", role: "search", onsubmit: (e) => e.preventDefault() },
      field("Name contains", filterInput), field("Namespace", nsSelect)),
    summary, body);

  filterInput.addEventListener("input", () => {
    state.filter = filterInput.value.trim();
    state.page = 0;
    show();
  });
  nsSelect.addEventListener("change", () => {
    state.namespace = nsSelect.value;
    state.page = 0;
    show();
  });

  let stopped = false;
  let loading = null;

  async function load() {
    const reply = await api("GET", "/v1/registry/services");
    const changed = reply.index !== state.index;
    state.index = reply.index;
    state.services = reply.services.sort((a, b) =>
      a.namespace === b.namespace ? a.name.localeCompare(b.name) : a.namespace.localeCompare(b.namespace));
    if (changed) breakdowns.clear();
    return changed;
  }

  function matching() {
    const needle = state.filter.toLowerCase();
    return state.services.filter((s) =>
      (!state.namespace || s.namespace === state.namespace) && (!needle || s.name.includes(needle)));
  }

  function show() {
    remember();
    const namespaces = [...new Set(state.services.map((s) => s.namespace))].sort();
    if (state.namespace && !namespaces.includes(state.namespace)) namespaces.push(state.namespace);
    const options = ["", ...namespaces];
    if (nsSelect.options.length !== options.length || [...nsSelect.options].some((o, i) => o.value !== options[i])) {
      nsSelect.replaceChildren(...options.map((ns) => h("option", { value: ns }, ns || "all namespaces")));
    }
    nsSelect.value = state.namespace;

    const rows = matching();
    const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
    if (state.page >= pages) state.page = pages - 1;
    const visible = rows.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE);
    const instances = state.services.reduce((n, s) => n + s.instances, 0);
    const passing = state.services.reduce((n, s) => n + s.passing, 0);
    summary.textContent = `${state.services.length} services, ${instances} instances, ${passing} passing`
      + (rows.length !== state.services.length ? `; ${rows.length} match` : "")
      + ` · index ${state.index}`;
    const focused = focusKey();
    body.replaceChildren(...present(
      stack(table([
        ["Service", (s) => h("a", { href: serviceHref(s.namespace, s.name), "data-focus": `svc:${s.namespace}/${s.name}` }, s.name)],
        ["Namespace", (s) => s.namespace],
        ["Instances", (s) => String(s.instances)],
        ["Health", (s) => healthCounts(s, breakdowns.get(`${s.namespace}/${s.name}`))],
        ["Tags", (s) => tagList(s.tags)],
      ], visible, {
        label: "services",
        empty: state.services.length ? "No service matches." : "No services are registered. Register one with `strata svc register` or POST /v1/registry/instances.",
      })),
      rows.length > PAGE_SIZE
        ? pager({ page: state.page, hasMore: state.page < pages - 1, onPage: (p) => {
          state.page = p;
          show();
          if (!body.contains(document.activeElement)) focusPager();
        } })
        : null,
      rows.length > PAGE_SIZE ? h("p", { class: "muted" }, `page ${state.page + 1} of ${pages}`) : null));
    body.querySelectorAll(".pager button").forEach((b, i) => { b.dataset.focus = `pager:${i}`; });
    restoreFocus(body, focused);
    split(visible);
  }

  function focusPager() {
    const next = body.querySelector(".pager button:not([disabled])");
    if (next) next.focus();
  }

  // Keeps the filter and page in the address, so a reload or a shared link shows the same.
  function remember() {
    const query = new URLSearchParams();
    if (state.filter) query.set("q", state.filter);
    if (state.namespace) query.set("namespace", state.namespace);
    if (state.page) query.set("page", String(state.page + 1));
    const hash = `#/services${query.toString() ? `?${query}` : ""}`;
    if (location.hash !== hash) history.replaceState(null, "", hash);
  }

  // Asks for the instances of the visible services that have some not passing (bounded by
  // the page size), to split them by status; fills the Health cells as the answers come.
  async function split(visible) {
    const wanted = visible.filter((s) => s.passing < s.instances && !breakdowns.has(`${s.namespace}/${s.name}`));
    if (!wanted.length) return;
    const index = state.index;
    await Promise.all(wanted.map(async (s) => {
      const key = `${s.namespace}/${s.name}`;
      try {
        const reply = await api("GET", `/v1/registry/services/${encodeURIComponent(s.name)}?namespace=${encodeURIComponent(s.namespace)}`);
        if (stopped || state.index !== index) return;
        breakdowns.set(key, countStatuses(reply.instances));
      } catch (_) {
        // The counts from the list stand; the split is a refinement.
        breakdowns.set(key, null);
      }
    }));
    if (!stopped && state.index === index) {
      const focused = focusKey();
      const cells = body.querySelectorAll("tbody tr");
      const shown = matching().slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE);
      cells.forEach((row, i) => {
        const s = shown[i];
        if (!s) return;
        row.children[3].replaceChildren(healthCounts(s, breakdowns.get(`${s.namespace}/${s.name}`)));
      });
      restoreFocus(body, focused);
    }
  }

  async function refresh() {
    if (loading || stopped) return;
    loading = (async () => {
      try {
        if (await load()) show();
      } catch (e) {
        if (e.name !== "AbortError") body.replaceChildren(errorBox(e));
        state.index = null;
      } finally {
        loading = null;
      }
    })();
    await loading;
  }

  try {
    await load();
    show();
  } catch (e) {
    body.replaceChildren(e instanceof ApiError && e.status === 404 ? notRunning("The service registry", "/v1/registry/", "registry", e) : errorBox(e));
    return undefined;
  }
  const timer = setInterval(() => {
    if (!document.hidden) refresh();
  }, LIST_REFRESH_MS);
  return () => {
    stopped = true;
    clearInterval(timer);
  };
}


function serviceHref(namespace, name) {
  return `#/services?${new URLSearchParams({ namespace, service: name })}`;
}

/** Counts instances by what consumers see: disabled, else their status. */
function countStatuses(instances) {
  const counts = { passing: 0, warning: 0, critical: 0, disabled: 0 };
  for (const i of instances) {
    if (!i.enabled) counts.disabled++;
    else counts[i.status] = (counts[i.status] || 0) + 1;
  }
  return counts;
}

function healthCounts(s, split) {
  const parts = [];
  if (s.passing) parts.push(h("span", { class: "badge ok" }, `${s.passing} passing`));
  const rest = s.instances - s.passing;
  if (rest && split) {
    if (split.warning) parts.push(h("span", { class: "badge warn" }, `${split.warning} warning`));
    if (split.critical) parts.push(h("span", { class: "badge bad" }, `${split.critical} critical`));
    if (split.disabled) parts.push(h("span", { class: "badge" }, `${split.disabled} disabled`));
  } else if (rest) {
    parts.push(h("span", { class: "badge bad", title: "warning, critical or disabled" }, `${rest} not passing`));
  }
  if (!parts.length) parts.push(h("span", { class: "muted" }, "no instances"));
  return h("span", { class: "health-counts" }, parts);
}

function tagList(tags) {
  if (!tags || !tags.length) return h("span", { class: "muted" }, "—");
  return h("span", { class: "tags" }, tags.map((t) => h("code", { class: "tag" }, t)));
}

// --- one service ----------------------------------------------------------------------------

async function renderService(root, namespace, service) {
  const instances = new Map();
  const live = h("div", { class: "muted", role: "status" }, "Connecting…");
  const indexLine = h("span", { class: "muted" });
  const counts = h("div", { class: "health-counts" });
  const body = h("div");
  const notice = h("div", { "aria-live": "polite" });
  let index = 0;
  let stopped = false;
  const controller = new AbortController();

  root.append(
    h("p", {}, h("a", { href: "#/services" }, "← All services")),
    h("h1", {}, service, " ", h("span", { class: "muted" }, `(${namespace})`)),
    h("div", { class: "row" }, live, indexLine), counts, notice, body);

  const base = `/v1/registry/services/${encodeURIComponent(service)}`;
  const ns = `namespace=${encodeURIComponent(namespace)}`;

  function show() {
    const list = [...instances.values()].sort((a, b) => a.id.localeCompare(b.id));
    const c = countStatuses(list);
    counts.replaceChildren(
      h("span", { class: "badge ok" }, `${c.passing} passing`), " ",
      h("span", { class: `badge ${c.warning ? "warn" : ""}` }, `${c.warning} warning`), " ",
      h("span", { class: `badge ${c.critical ? "bad" : ""}` }, `${c.critical} critical`), " ",
      h("span", { class: "badge" }, `${c.disabled} disabled`));
    const focused = focusKey();
    body.replaceChildren(stack(table([
      ["Instance", (i) => h("div", {}, h("strong", {}, i.id), h("div", {}, h("code", {}, dial(i))),
        i.ephemeral ? h("div", { class: "muted" }, `ephemeral, ttl ${i.ttl}`) : null)],
      ["Status", (i) => h("div", {},
        h("span", { class: `badge ${statusTone(i.status)}`, "data-status": i.status }, i.status),
        i.enabled ? null : [" ", h("span", { class: "badge" }, "disabled")],
        h("div", { class: "muted" }, `since ${ago(i.status_since_ms)}`))],
      ["Check", (i) => h("div", {}, checkText(i),
        i.output ? h("pre", { class: "output", title: "output of the check at its last status change" }, i.output) : null)],
      ["Tags", (i) => tagList(i.tags)],
      ["Metadata", (i) => metaList(i.meta)],
      ["Weight", (i) => String(i.weight)],
      ["", (i) => h("div", { class: "actions" },
        h("button", { type: "button", "data-focus": `en:${i.id}`, onclick: () => toggle(i) }, i.enabled ? "Disable" : "Enable"),
        h("button", { type: "button", class: "danger", "data-focus": `de:${i.id}`, onclick: () => deregister(i) }, "Deregister"))],
    ], list, {
      label: "instances",
      empty: "No instances: the service has none now, or it was never registered in this namespace.",
    })));
    restoreFocus(body, focused);
  }

  let pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      if (!stopped) show();
    });
  }

  function onMessage(message) {
    if (message.type === "snapshot") {
      instances.clear();
      for (const i of message.instances) instances.set(i.id, i);
    } else if (message.type === "put") {
      instances.set(message.instance.id, message.instance);
    } else if (message.type === "delete") {
      instances.delete(message.id);
    }
    if (typeof message.index === "number") index = Math.max(index, message.index);
    // The status line changes only when the connection does, so that it is not announced
    // on every change; the index is beside it.
    setLive("Live: following the watch route", "ok");
    indexLine.textContent = `index ${index}`;
    schedule();
  }

  function setLive(text, tone) {
    if (live.textContent !== text) live.textContent = text;
    live.className = tone;
  }

  async function follow() {
    let failures = 0;
    while (!stopped) {
      try {
        await stream("GET", `${base}/watch?${ns}`, undefined, (m) => {
          failures = 0;
          onMessage(m);
        }, controller.signal);
        if (stopped) return;
        setLive("The watch ended; reconnecting…", "warn");
      } catch (e) {
        if (stopped || e.name === "AbortError") return;
        if (e instanceof ApiError && e.status >= 400 && e.status < 500) {
          // The request itself is wrong (an invalid name, no permission, no registry here):
          // retrying won't help.
          live.replaceChildren(e.status === 404 ? notRunning("The service registry", "/v1/registry/", "registry", e) : errorBox(e));
          live.className = "";
          return;
        }
        setLive(`The watch broke (${e.message}); reconnecting…`, "warn");
      }
      const wait = RECONNECT_MS[Math.min(failures, RECONNECT_MS.length - 1)];
      failures++;
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }

  async function act(work, done) {
    notice.replaceChildren(h("p", { class: "muted" }, "Working…"));
    try {
      await work();
      notice.replaceChildren(h("p", { class: "ok", role: "status" }, done));
    } catch (e) {
      notice.replaceChildren(errorBox(e));
    }
  }

  async function deregister(i) {
    if (!(await confirmAction(`Deregister instance ${i.id} (${dial(i)}) of service ${service}? Consumers stop getting it at once; its owner must register it again to bring it back.`))) return;
    await act(() => api("DELETE", `${base}/instances/${encodeURIComponent(i.id)}?${ns}`),
      `deregistered ${service}/${i.id}`);
  }

  async function toggle(i) {
    const enable = !i.enabled;
    if (!enable && !(await confirmAction(`Disable instance ${i.id} (${dial(i)}) of service ${service}? Consumers and the gateway stop sending it requests until it is enabled again.`))) return;
    await act(() => setEnabled(i, enable), `${enable ? "enabled" : "disabled"} ${service}/${i.id}`);
  }

  // Flips `enabled` in the stored record with a compare-and-set on its mod revision, keeping
  // its lease (an ephemeral instance's) with ignore_lease.
  async function setEnabled(i, enabled) {
    const key = `/strata/registry/instances/${namespace}/${service}/${i.id}`;
    const read = await api("POST", "/v1/kv/range", { key });
    const kv = read.kvs && read.kvs[0];
    if (!kv) throw new ApiError(404, "not_found", `instance ${i.id} of service ${service} is not registered`);
    const record = JSON.parse(typeof kv.value === "string" ? kv.value : "null");
    if (!record || typeof record !== "object") {
      throw new ApiError(0, "unexpected", `the record of instance ${i.id} is not JSON`);
    }
    record.enabled = enabled;
    const reply = await api("POST", "/v1/kv/txn", {
      compare: [{ key, result: "equal", target: { mod_revision: kv.mod_revision } }],
      success: [{ put: { key, value: JSON.stringify(record), ignore_lease: true } }],
      failure: [],
    });
    if (!reply.succeeded) {
      throw new ApiError(409, "failed_precondition", `instance ${i.id} changed while it was being ${enabled ? "enabled" : "disabled"}; try again`);
    }
  }

  follow();
  // Keeps the "since" times current between changes.
  const tick = setInterval(() => { if (!document.hidden && instances.size) schedule(); }, 10000);
  return () => {
    stopped = true;
    controller.abort();
    clearInterval(tick);
  };
}

function dial(i) {
  return i.address.includes(":") && !i.address.startsWith("[") ? `[${i.address}]:${i.port}` : `${i.address}:${i.port}`;
}

function statusTone(status) {
  return status === "passing" ? "ok" : status === "warning" ? "warn" : "bad";
}

function checkText(i) {
  const c = i.check;
  if (!c) return h("span", { class: "muted" }, i.ephemeral ? "heartbeats" : "none");
  if (c.ttl) return h("span", {}, `TTL ${c.ttl}`);
  const p = c.probe || {};
  const target = p.kind === "http" ? `${(p.method || "GET").toUpperCase()} ${p.url}` : p.addr + (p.service ? ` ${p.service}` : "");
  return h("span", {}, `${(p.kind || "?").toUpperCase()} `, h("code", {}, target),
    h("span", { class: "muted" }, ` every ${c.interval}, timeout ${c.timeout}`));
}

function metaList(meta) {
  const entries = Object.entries(meta || {});
  if (!entries.length) return h("span", { class: "muted" }, "—");
  return h("dl", { class: "meta" }, entries.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

/** The nodes of a list that are there (replaceChildren would write null as "null"). */
function present(...nodes) {
  return nodes.filter((n) => n !== null && n !== undefined && n !== false);
}


// --- focus across re-renders ----------------------------------------------------------------


