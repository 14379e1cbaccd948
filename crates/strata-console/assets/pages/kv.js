// KV browser: the keys under a prefix as a tree (the next `/` segment grouped as a folder),
// read a page at a time; a key's value (text, JSON pretty-printed, hex for bytes) and its
// older revisions; put and delete with compare-and-set on mod_revision; and a live watch of
// the prefix. Uses only /v1/kv/range, /v1/kv/put, /v1/kv/txn, /v1/kv/delete and the
// /v1/kv/watch stream (docs/api.md).
//
// Paging: /v1/kv/range has `limit` and answers `more`; the next page starts at the last key
// + "\0" (etcd's way). A folder is skipped in one step by starting after it: "a/b/" ends
// before "a/b0", since "0" follows "/". So a page costs a few small keys_only reads however
// many keys the store holds. The hash names the view: #/kv?prefix=a/&key=a/b (key64= and
// prefix64= carry keys that are not UTF-8, as base64).
import { api, confirmAction, errorBox, field, h, stopWhenGone, stream } from "../app.js";

export const title = "KV";

/** Entries (keys and folders) per page of the tree. */
const PAGE = 50;
/** Reads per page at most; a page of mostly large folders may end short, with Next. */
const READS_PER_PAGE = 8;
/** Older revisions read per click. */
const HISTORY_STEP = 10;
/** Events kept in the watch log. */
const WATCH_KEEP = 100;
/** Bytes shown as hex at most. */
const HEX_MAX = 64 * 1024;

const SLASH = 0x2f;
const encoder = new TextEncoder();
const strict = new TextDecoder("utf-8", { fatal: true });

// --- Keys as bytes: the API sends a string, or {"b64"} for bytes that are not UTF-8. ---

function toBytes(wire) {
  if (typeof wire === "string") return encoder.encode(wire);
  const raw = atob(wire.b64);
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

function toWire(bytes) {
  try {
    return strict.decode(bytes);
  } catch (_) {
    let raw = "";
    for (const b of bytes) raw += String.fromCharCode(b);
    return { b64: btoa(raw) };
  }
}

function concat(a, b) {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

function startsWith(bytes, prefix) {
  if (bytes.length < prefix.length) return false;
  return prefix.every((b, i) => bytes[i] === b);
}

function same(a, b) {
  return a.length === b.length && startsWith(a, b);
}

/** The first key after every key starting with `prefix` ("\0", i.e. no end, for ""). */
function prefixEnd(prefix) {
  const end = Array.from(prefix);
  while (end.length && end[end.length - 1] === 0xff) end.pop();
  if (!end.length) return new Uint8Array([0]);
  end[end.length - 1] += 1;
  return Uint8Array.from(end);
}

/** How a key reads to a person: its text, or hex when it is not UTF-8. */
function show(bytes) {
  const wire = toWire(bytes);
  if (typeof wire === "string") return wire;
  return `0x${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/** Hash parameters naming a key or prefix: name=text, or name64=base64 for bytes. */
function keyParam(params, name, bytes) {
  const wire = toWire(bytes);
  if (typeof wire === "string") params[name] = wire;
  else params[`${name}64`] = wire.b64;
  return params;
}

function readParam(params, name) {
  if (params.has(`${name}64`)) return toBytes({ b64: params.get(`${name}64`) });
  return params.has(name) ? encoder.encode(params.get(name)) : null;
}

function href(prefix, key) {
  const params = keyParam({}, "prefix", prefix);
  if (key) keyParam(params, "key", key);
  return `#/kv?${new URLSearchParams(params)}`;
}

// --- Values ---

function valueBytes(value) {
  return typeof value === "string" ? encoder.encode(value) : toBytes(value);
}

/** A value for a person: ["json"|"text"|"hex", text]. */
function present(value) {
  if (typeof value !== "string") return ["hex", hexDump(toBytes(value))];
  const trimmed = value.trim();
  if (trimmed.startsWith("{") || trimmed.startsWith("[")) {
    try {
      return ["json", JSON.stringify(JSON.parse(value), null, 2)];
    } catch (_) {
      // Not JSON after all: text.
    }
  }
  return ["text", value];
}

function hexDump(bytes) {
  const lines = [];
  const shown = bytes.subarray(0, HEX_MAX);
  for (let at = 0; at < shown.length; at += 16) {
    const row = shown.subarray(at, at + 16);
    const hex = Array.from(row, (b) => b.toString(16).padStart(2, "0")).join(" ");
    const text = Array.from(row, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${at.toString(16).padStart(8, "0")}  ${hex.padEnd(47)}  ${text}`);
  }
  if (bytes.length > HEX_MAX) lines.push(`… ${bytes.length - HEX_MAX} more bytes not shown`);
  return lines.join("\n");
}

function preview(value, max = 60) {
  const [kind, text] = typeof value === "string" ? ["text", value] : ["hex", `${valueBytes(value).length} bytes`];
  const line = text.replace(/\s+/g, " ");
  return kind === "hex" ? `(${text})` : line.length > max ? `${line.slice(0, max)}…` : line;
}

/** A value as the edit form holds it: [encoding, text]. */
function editable(value) {
  if (typeof value !== "string") return ["base64", value.b64];
  return [present(value)[0] === "json" ? "json" : "text", value];
}

// --- The page ---

export async function render(root, params) {
  let prefix = readParam(params, "prefix");
  let selected = readParam(params, "key");
  if (prefix === null) {
    // A key alone opens its folder.
    const cut = selected ? selected.lastIndexOf(SLASH) + 1 : 0;
    prefix = selected ? selected.slice(0, cut) : new Uint8Array();
  }
  const controller = new AbortController();
  const signal = controller.signal;
  stopWhenGone(root, controller);

  const tree = h("div", { id: "kv-tree" }, h("p", { class: "muted" }, "Loading…"));
  const stale = h("div", { id: "kv-stale", "aria-live": "polite" });
  const viewer = h("div", { id: "kv-viewer" });
  const past = h("div", { id: "kv-past" });
  const editor = h("div", { id: "kv-editor" });
  const watchLog = h("ol", { id: "kv-watch", class: "kv-watch", "aria-label": "changes" });
  const watchStatus = h("div", { class: "muted", role: "status" });
  const watchButton = h("button", { type: "button", onclick: () => (watching ? stopWatch() : startWatch()) }, "Stop watching");

  const prefixInput = h("input", { name: "prefix", value: show(prefix), placeholder: "a/b/", size: 30 });
  root.append(
    h("h1", {}, "KV"),
    h("form", { class: "row", onsubmit: (e) => {
      e.preventDefault();
      location.hash = href(encoder.encode(prefixInput.value));
    } }, field("Prefix", prefixInput), h("button", { type: "submit" }, "Open")),
    crumbs(prefix),
    h("div", { class: "split kv-split" },
      h("div", {}, h("h2", {}, "Keys"), stale, tree,
        h("h2", {}, "Live changes under ", h("code", {}, show(prefix) || "(every key)")),
        h("div", { class: "row" }, watchButton, watchStatus),
        watchLog),
      h("div", {}, h("h2", {}, "Value"), viewer, past, h("h2", {}, "Put or delete"), editor)));

  // --- Tree ---

  const cursors = [prefix];
  let page = 0;
  let shownKeys = [];

  let treeRevision = 0;

  async function loadTree() {
    const end = prefixEnd(prefix);
    const entries = [];
    let from = cursors[page];
    let revision = 0;
    let count = null;
    let more = true;
    let folder = null; // the folder of the last entry: its keys are skipped
    try {
      for (let read = 0; more && read < READS_PER_PAGE; read++) {
        // The whole page reads one revision, the first read's; the later reads at that
        // revision may come from this node's own state (serializable: no trip to the leader),
        // unless it has not applied that far yet.
        const body = { key: toWire(from), range_end: toWire(end), keys_only: true, limit: PAGE + 1, revision };
        const reply = await api("POST", "/v1/kv/range", { ...body, serializable: read > 0 }, { signal })
          .catch((e) => (e.code === "future_revision" ? api("POST", "/v1/kv/range", body, { signal }) : Promise.reject(e)));
        revision = reply.header.revision;
        if (count === null) count = reply.count;
        let full = false;
        for (const kv of reply.kvs) {
          const key = toBytes(kv.key);
          if (folder && startsWith(key, folder)) continue;
          if (entries.length >= PAGE) {
            full = true;
            break;
          }
          const slash = key.subarray(prefix.length).indexOf(SLASH);
          if (slash < 0) {
            folder = null;
            entries.push({ key, kv });
            from = concat(key, new Uint8Array([0]));
          } else {
            folder = key.slice(0, prefix.length + slash + 1);
            entries.push({ folder });
            from = prefixEnd(folder);
          }
        }
        more = full || reply.more;
        if (full) break;
      }
    } catch (e) {
      if (e.name !== "AbortError") tree.replaceChildren(errorBox(e));
      return;
    }
    cursors[page + 1] = from;
    treeRevision = revision;
    shownKeys = entries.filter((e) => e.key).map((e) => e.key);
    stale.replaceChildren();
    const total = page === 0
      ? `${count} key${count === 1 ? "" : "s"} under ${show(prefix) || "the root"} at revision ${revision}`
      : `at revision ${revision}`;
    const list = entries.length
      ? h("ul", { class: "kv-tree", "aria-label": "keys" }, entries.map(entryItem))
      : h("p", { class: "muted" }, "No keys here.");
    tree.replaceChildren(h("p", { class: "muted" }, total), list, pagerFor(more));
  }

  function pagerFor(more) {
    return h("nav", { class: "pager", "aria-label": "Pages of keys" },
      h("button", { type: "button", disabled: page === 0, onclick: () => { page--; loadTree(); } }, "← Previous"),
      h("span", { class: "muted" }, `page ${page + 1}`),
      h("button", { type: "button", disabled: !more, onclick: () => { page++; loadTree(); } }, "Next →"));
  }

  function entryItem(entry) {
    if (entry.folder) {
      return h("li", { class: "folder" },
        h("a", { href: href(entry.folder) }, `${show(entry.folder.subarray(prefix.length))}`));
    }
    const current = selected && same(entry.key, selected);
    return h("li", { class: "leaf" },
      h("a", { href: href(prefix, entry.key), "aria-current": current ? "true" : null, onclick: (e) => {
        e.preventDefault();
        select(entry.key);
      } }, show(entry.key.subarray(prefix.length)) || "(the prefix itself)"),
      " ", h("span", { class: "muted" }, `rev ${entry.kv.mod_revision}`));
  }

  function select(key) {
    selected = key;
    // Keep the page (and its watch) running: a new history entry, no hashchange.
    history.pushState(null, "", href(prefix, key));
    for (const link of tree.querySelectorAll("a[aria-current]")) link.removeAttribute("aria-current");
    for (const link of tree.querySelectorAll(".leaf a")) {
      if (link.getAttribute("href") === href(prefix, key)) link.setAttribute("aria-current", "true");
    }
    past.replaceChildren();
    showKey();
  }

  // --- Value, history and the edit form ---

  let loaded = null; // the selected key's kv as last read, or null when it does not exist
  let loadedRevision = 0; // the revision it was read at
  const ownWrites = new Set(); // revisions of this page's own writes: no "changed" warning
  let writing = 0; // writes in flight: their own answer says what happened

  async function showKey({ keepForm = false } = {}) {
    if (!selected) {
      viewer.replaceChildren(h("p", { class: "muted" }, "Choose a key to see its value."));
      editor.replaceChildren(editForm(null));
      return;
    }
    let reply;
    try {
      reply = await api("POST", "/v1/kv/range", { key: toWire(selected) }, { signal });
    } catch (e) {
      if (e.name !== "AbortError") viewer.replaceChildren(errorBox(e));
      return;
    }
    loaded = reply.kvs[0] || null;
    loadedRevision = reply.header.revision;
    viewer.replaceChildren(loaded ? valueView(loaded, loadedRevision) : h("div", { class: "card" },
      h("p", {}, h("code", {}, show(selected))),
      h("p", { class: "muted" }, `No such key at revision ${loadedRevision}.`)));
    if (!keepForm) editor.replaceChildren(editForm(loaded));
  }

  function valueView(kv, revision, { past: isPast = false } = {}) {
    const [kind, text] = present(kv.value);
    const pre = h("pre", { id: isPast ? null : "kv-value", class: `kv-value ${kind}`, tabindex: "0", "aria-label": "value" }, text);
    const raw = kind === "json" ? h("button", { type: "button", class: "link", onclick: () => {
      const asStored = pre.dataset.raw !== "1";
      pre.textContent = asStored ? kv.value : text;
      pre.dataset.raw = asStored ? "1" : "";
      raw.textContent = asStored ? "Pretty-print" : "Show as stored";
    } }, "Show as stored") : null;
    const view = h("div", { class: "card" },
      isPast ? h("p", { class: "warn" }, `An older revision: the value as of revision ${kv.mod_revision}.`) : null,
      h("p", { class: "kv-key" }, h("code", {}, show(toBytes(kv.key)))),
      h("p", { class: "kv-meta muted" },
        h("span", { class: "badge" }, kind === "hex" ? "binary" : kind), " ",
        `${valueBytes(kv.value).length} bytes · mod_revision ${kv.mod_revision} · create_revision ${kv.create_revision} · version ${kv.version}`,
        kv.lease ? ` · lease ${kv.lease}` : "",
        isPast ? "" : ` · read at revision ${revision}`),
      pre, raw);
    if (isPast) return view;
    // Revisions: each older version is the key read at its successor's mod_revision - 1.
    const revs = h("ul", { id: "kv-history", class: "kv-revs", "aria-label": "revisions" }, revItem(kv, true));
    let oldest = kv;
    const older = h("button", { type: "button", onclick: async () => {
      older.disabled = true;
      const [found, stop] = await walkBack(oldest);
      for (const f of found) revs.append(revItem(f, false));
      if (found.length) oldest = found[found.length - 1];
      if (stop) older.replaceWith(stop);
      else older.disabled = false;
    } }, "Older revisions");
    view.append(h("h3", {}, "Revisions"), revs, kv.version <= 1 ? noOlder(kv) : older);
    return view;
  }

  function revItem(kv, current) {
    return h("li", {},
      current ? h("span", {}, `revision ${kv.mod_revision}`) : h("button", { type: "button", class: "link", onclick: () => {
        past.replaceChildren(valueView(kv, 0, { past: true }));
        past.querySelector("pre").focus();
      } }, `revision ${kv.mod_revision}`),
      ` · version ${kv.version}${current ? " (current)" : ""} · `,
      h("span", { class: "muted" }, preview(kv.value)));
  }

  function noOlder(kv) {
    return h("p", { class: "muted" },
      `Created at revision ${kv.create_revision}: no older revision of this life of the key. `,
      "An earlier life (before a delete) cannot be found by reading at revisions, since nothing records when the key was deleted; a watch with an old start_revision replays it while it is not compacted.");
  }

  /** The next HISTORY_STEP older versions of `kv`, and what ended the walk (or null). */
  async function walkBack(kv) {
    const found = [];
    try {
      for (let i = 0; i < HISTORY_STEP; i++) {
        if (kv.version <= 1) return [found, noOlder(kv)];
        const reply = await api("POST", "/v1/kv/range",
          { key: kv.key, revision: kv.mod_revision - 1, serializable: true }, { signal });
        if (!reply.kvs.length) return [found, noOlder(kv)];
        kv = reply.kvs[0];
        found.push(kv);
      }
    } catch (e) {
      if (e.name === "AbortError") return [found, null];
      return [found, h("div", {}, errorBox(e), h("p", { class: "muted" },
        "Older revisions are gone once compacted: the store keeps history back to its last compaction (POST /v1/kv/compact, kv.auto_compaction_mode)."))];
    }
    return [found, null];
  }

  function editForm(kv) {
    const keyInput = h("input", { name: "key", required: true, value: kv ? show(toBytes(kv.key)) : show(prefix), class: "wide" });
    const [encoding, text] = kv ? editable(kv.value) : ["text", ""];
    const valueInput = h("textarea", { name: "value", rows: 8, spellcheck: "false" }, text);
    const encodingSelect = h("select", { name: "encoding" },
      [["text", "text"], ["json", "JSON (checked before the put)"], ["base64", "bytes, as base64"]]
        .map(([v, label]) => h("option", { value: v, selected: v === encoding }, label)));
    const expect = h("input", { name: "mod_revision", inputmode: "numeric", size: 10, value: kv ? String(kv.mod_revision) : "0" });
    const status = h("div", { id: "kv-status", "aria-live": "polite" });
    const binaryKey = kv && typeof kv.key !== "string";

    function wireKey() {
      // A binary key stays the bytes it was read as unless its text was edited.
      if (binaryKey && keyInput.value === show(toBytes(kv.key))) return kv.key;
      return keyInput.value;
    }

    function wireValue() {
      const v = valueInput.value;
      if (encodingSelect.value === "base64") return { b64: v.replace(/\s+/g, "") };
      if (encodingSelect.value === "json") JSON.parse(v); // throws a SyntaxError that says where
      return v;
    }

    function compare(key) {
      const want = expect.value.trim();
      if (want === "") return null;
      if (!/^\d+$/.test(want)) throw new Error("the expected mod_revision must be a whole number, or empty for none");
      return { key, result: "equal", target: { mod_revision: Number(want) } };
    }

    async function write(op, describe) {
      writing++;
      try {
        await writeOnce(op, describe);
      } finally {
        writing--;
      }
    }

    async function writeOnce(op, describe) {
      status.replaceChildren(h("p", { class: "muted" }, "Working…"));
      let key;
      let condition;
      let operation;
      try {
        key = wireKey();
        condition = compare(key);
        operation = op(key);
      } catch (e) {
        status.replaceChildren(errorBox(e));
        return;
      }
      try {
        let revision;
        if (condition) {
          const reply = await api("POST", "/v1/kv/txn", {
            compare: [condition], success: [operation], failure: [{ range: { key } }],
          }, { signal });
          if (!reply.succeeded) {
            status.replaceChildren(conflict(condition, reply));
            status.scrollIntoView({ block: "nearest" });
            return;
          }
          revision = reply.header.revision;
        } else if (operation.put) {
          revision = (await api("POST", "/v1/kv/put", operation.put, { signal })).header.revision;
        } else {
          revision = (await api("POST", "/v1/kv/delete", operation.delete_range, { signal })).header.revision;
        }
        ownWrites.add(revision);
        status.replaceChildren(h("p", { class: "ok", role: "status" }, `${describe} at revision ${revision}`));
        selected = toBytes(key);
        history.replaceState(null, "", href(prefix, selected));
        await Promise.all([loadTree(), showKey({ keepForm: true })]);
        expect.value = loaded ? String(loaded.mod_revision) : "0";
      } catch (e) {
        if (e.name === "AbortError") return;
        status.replaceChildren(errorBox(e));
        status.scrollIntoView({ block: "nearest" });
      }
    }

    const form = h("form", { id: "kv-form", class: "card", onsubmit: (e) => {
      e.preventDefault();
      write((key) => ({ put: { key, value: wireValue() } }), `put ${keyInput.value}`);
    } },
    field("Key", keyInput),
    field("Value", valueInput),
    h("div", { class: "row" },
      field("Value is", encodingSelect),
      field("Only if mod_revision is (0: only if absent; empty: always)", expect)),
    h("div", { class: "row" },
      h("button", { type: "submit", class: "primary" }, "Put"),
      h("button", { type: "button", class: "danger", onclick: async () => {
        if (!(await confirmAction(`Delete the key ${keyInput.value}${expect.value.trim() ? ` if its mod_revision is still ${expect.value.trim()}` : ""}?`))) return;
        write((key) => ({ delete_range: { key } }), `deleted ${keyInput.value}`);
      } }, "Delete")),
    status);
    return form;
  }

  /** A compare that failed, as the txn answered: succeeded false, and the key as it is now. */
  function conflict(condition, reply) {
    const now = reply.responses[0]?.range?.kvs?.[0];
    const actual = now ? `its mod_revision is ${now.mod_revision} (version ${now.version})` : "the key does not exist (mod_revision 0)";
    return h("div", { class: "error", role: "alert" },
      h("strong", {}, "compare failed"), ` the txn answered "succeeded": false at revision ${reply.header.revision}: `,
      `the compare mod_revision = ${condition.target.mod_revision} did not hold, ${actual}. Nothing was written. `,
      h("button", { type: "button", class: "link", onclick: () => showKey() }, "Load the current value"));
  }

  // --- Watch ---

  let watching = null;
  let seen = 0;

  function startWatch() {
    if (signal.aborted) return;
    const stop = new AbortController();
    signal.addEventListener("abort", () => stop.abort(), { once: true });
    watching = stop;
    watchButton.textContent = "Stop watching";
    watchStatus.textContent = "Connecting…";
    const body = { key: toWire(prefix), prefix: true, prev_kv: false };
    if (seen) body.start_revision = seen + 1;
    stream("POST", "/v1/kv/watch", body, onWatch, stop.signal)
      .then(() => {
        if (watching === stop) watchStatus.textContent = "The node ended the watch.";
      })
      .catch((e) => {
        if (e.name === "AbortError") return;
        watchStatus.replaceChildren(errorBox(e));
      })
      .finally(() => {
        if (watching === stop) {
          watching = null;
          watchButton.textContent = "Watch again";
        }
      });
  }

  function stopWatch() {
    const current = watching;
    watching = null;
    current?.abort();
    watchButton.textContent = "Watch again";
    watchStatus.textContent = `Stopped at revision ${seen}.`;
  }

  function onWatch(message) {
    seen = Math.max(seen, message.header?.revision || 0);
    if (message.created) {
      watchStatus.textContent = `Watching from revision ${message.header.revision} on node ${message.header.member_id}.`;
      return;
    }
    if (message.compact_revision) {
      watchStatus.replaceChildren(errorBox(new Error(`the history this watch needed was compacted (compact_revision ${message.compact_revision})`)));
      return;
    }
    let changedSelected = null;
    let changedTree = false;
    for (const event of message.events || []) {
      const key = toBytes(event.kv.key);
      const revision = event.kv.mod_revision;
      seen = Math.max(seen, revision);
      if (selected && same(key, selected) && revision > loadedRevision) changedSelected = revision;
      // A new or deleted key changes the list; a changed one only its revision there.
      if (revision > treeRevision && (event.type === "delete" || event.kv.version === 1 || shownKeys.some((k) => same(k, key)))) {
        changedTree = true;
      }
      watchLog.prepend(h("li", {},
        h("span", { class: `badge ${event.type === "delete" ? "bad" : "ok"}` }, event.type), " ",
        h("a", { href: href(prefix, key), onclick: (e) => { e.preventDefault(); select(key); } }, show(key)), " ",
        h("span", { class: "muted" }, `revision ${revision}`),
        event.type === "put" ? [" ", h("span", {}, preview(event.kv.value))] : null));
    }
    while (watchLog.children.length > WATCH_KEEP) watchLog.lastElementChild.remove();
    if (changedTree && !stale.childElementCount) {
      stale.replaceChildren(h("p", {}, "Keys changed since this list was read. ",
        h("button", { type: "button", onclick: () => loadTree() }, "Refresh")));
    }
    if (changedSelected !== null) {
      showKey({ keepForm: true }).then(() => {
        const status = document.getElementById("kv-status");
        if (status && !writing && !ownWrites.has(changedSelected)) status.replaceChildren(h("p", { class: "warn" },
          `This key changed at revision ${changedSelected} since the form was filled in: a put comparing the old mod_revision will fail.`));
      });
    }
  }

  viewer.append(h("p", { class: "muted" }, "Loading…"));
  await Promise.all([loadTree(), showKey()]);
  startWatch();
  return () => controller.abort();
}

/** Links to each level of the prefix: (root) / a/ / b/. */
function crumbs(prefix) {
  const parts = [h("a", { href: "#/kv?prefix=" }, "(root)")];
  let at = 0;
  while (at < prefix.length) {
    const slash = prefix.indexOf(SLASH, at);
    const end = slash < 0 ? prefix.length : slash + 1;
    parts.push(" ", h("a", { href: href(prefix.slice(0, end)) }, show(prefix.slice(at, end))));
    at = end;
  }
  return h("nav", { class: "crumbs", "aria-label": "Prefix" }, parts);
}

