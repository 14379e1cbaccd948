// Cluster: members, roles, leader, term, indexes, per-node health and apply lag, and
// membership changes. Reads GET /v1/cluster/status; per-node health and lag come from the
// monitor's PromQL API when the monitor runs (`up`, and each node's commit index minus its
// applied index from the same scrape, the built-in alert's measure), since a page may only
// call the node that served it. Adds with POST /v1/cluster/members (the new
// node joins as a learner and is promoted once it has caught up; calling it again promotes a
// learner that has caught up since), removes with DELETE /v1/cluster/members/{id}.
import { api, attempt, bytes, confirmAction, errorBox, field, h, table } from "../app.js";

export const title = "Cluster";

/** Per-instance values of an instant PromQL query, or an empty map without a monitor. */
async function byInstance(query) {
  try {
    const reply = await api("GET", `/api/v1/query?query=${encodeURIComponent(query)}`);
    return new Map(reply.data.result.map((r) => [r.metric.instance, Number(r.value[1])]));
  } catch (_) {
    return new Map();
  }
}

export async function render(root) {
  const summary = h("div");
  const members = h("div");
  const changes = h("div");
  root.append(h("h1", {}, "Cluster"), summary, h("h2", {}, "Members"), members,
    h("h2", {}, "Add a member"), addForm(changes, refresh), changes);

  async function refresh() {
    await attempt(summary, async () => {
      const [status, up, applied, lag] = await Promise.all([
        api("GET", "/v1/cluster/status"),
        byInstance('up{job="strata"}'),
        byInstance("strata_raft_applied_index"),
        byInstance("strata_raft_commit_index - strata_raft_applied_index"),
      ]);
      const leader = status.members.find((m) => m.id === status.leader);
      summary.replaceChildren(h("div", { class: "cards" },
        stat("Leader", leader ? `node ${leader.id}` : "none", leader ? "ok" : "bad"),
        stat("Term", status.term),
        stat("Commit index", status.commit_index),
        stat("Applied index", status.applied_index),
        stat("Revision", status.revision),
        stat(`Disk (node ${status.node_id})`, bytes(status.disk_bytes)),
        stat("Writes", status.read_only ? "read-only: disk full" : "accepted", status.read_only ? "bad" : "ok")));
      members.replaceChildren(table([
        ["Id", (m) => String(m.id)],
        ["Role", (m) => h("span", { class: `badge ${m.role === "learner" ? "warn" : ""}` }, m.role)],
        ["Raft", (m) => h("code", {}, m.raft_addr)],
        ["API", (m) => h("code", {}, m.api_addr || "")],
        ["Health", (m) => health(up.get(m.api_addr))],
        ["Applied (apply lag)", (m) => {
          const a = applied.get(m.api_addr);
          const l = lag.get(m.api_addr);
          return a === undefined ? h("span", { class: "muted" }, "—") : `${a} (${l ?? "?"})`;
        }],
        ["", (m) => h("span", {},
          m.role === "learner" ? h("button", { onclick: () => promote(m) }, "Promote") : null,
          " ",
          h("button", { class: "danger", onclick: () => remove(m) }, "Remove"))],
      ], status.members, { label: "members" }));
    });
  }

  async function promote(m) {
    await change(changes, () => api("POST", "/v1/cluster/members", { id: m.id, raft_addr: m.raft_addr, api_addr: m.api_addr }),
      `node ${m.id} is a voter`);
    refresh();
  }

  async function remove(m) {
    if (!(await confirmAction(`Remove node ${m.id} (${m.raft_addr}) from the cluster? It stops receiving the log at once.`))) return;
    await change(changes, () => api("DELETE", `/v1/cluster/members/${m.id}`), `node ${m.id} removed`);
    refresh();
  }

  await refresh();
  const timer = setInterval(refresh, 2000);
  return () => clearInterval(timer);
}

function stat(label, value, tone = "") {
  return h("div", { class: "card" }, h("div", { class: "muted" }, label), h("div", { class: `stat ${tone}` }, String(value)));
}

function health(up) {
  if (up === undefined) return h("span", { class: "muted", title: "no monitor data" }, "—");
  return up === 1 ? h("span", { class: "badge ok" }, "up") : h("span", { class: "badge bad" }, "down");
}

async function change(place, work, done) {
  place.replaceChildren(h("p", { class: "muted" }, "Working…"));
  try {
    await work();
    place.replaceChildren(h("p", { class: "ok", role: "status" }, done));
  } catch (e) {
    place.replaceChildren(errorBox(e));
  }
}

function addForm(place, refresh) {
  const id = h("input", { name: "id", inputmode: "numeric", required: true, size: 6 });
  const raft = h("input", { name: "raft_addr", placeholder: "127.0.0.1:7711", required: true });
  const apiAddr = h("input", { name: "api_addr", placeholder: "127.0.0.1:7710" });
  return h("form", { class: "row", onsubmit: async (e) => {
    e.preventDefault();
    const body = { id: Number(id.value), raft_addr: raft.value.trim() };
    if (apiAddr.value.trim()) body.api_addr = apiAddr.value.trim();
    if (!(await confirmAction(`Add node ${body.id} at ${body.raft_addr}? It joins as a learner and becomes a voter once it has caught up.`))) return;
    await change(place, () => api("POST", "/v1/cluster/members", body), `node ${body.id} added`);
    refresh();
  } },
  field("Id", id), field("Raft address", raft), field("API address", apiAddr),
  h("button", { type: "submit", class: "primary" }, "Add"));
}
