// Configs: the configs of a namespace with search, an editor that highlights the declared
// type and checks the content before publishing (the error shown at its line), history with a
// side-by-side diff and rollback, gray releases, and who listens. Uses the config center's
// routes (docs/config-center.md): list, get, publish, delete, history, diff, rollback, gray,
// gray/promote, gray/abort and the watch stream; and two documented reads of the KV store
// (docs/api.md /v1/kv/range over the key layout in docs/config-center.md), for what the config
// routes do not answer: which namespaces and groups exist, and whom a running gray release
// targets. /v1/config/list answers every match at once, so the page asks it for summaries only
// (no contents) and shows them a page at a time.
import { ago, api, ApiError, confirmAction, errorBox, field, h, notRunning, stopWhenGone, stream } from "../app.js";

export const title = "Configs";

const TYPES = ["text", "json", "yaml", "toml", "properties", "xml"];
const PER_PAGE = 25;
/** Namespaces or groups listed at most (each costs one small read). */
const NAMES_MAX = 50;
/** Content larger than this is shown without highlighting. */
const HIGHLIGHT_MAX = 64 * 1024;
const ITEMS = "/strata/config/items/";
/** An md5 no content has: a publish conditioned on it only checks the content. */
const CHECK_ONLY = "check-only";

const DEFAULTS = { ns: "public", group: "DEFAULT_GROUP" };

// --- Syntax highlighting: one list of sticky rules per type, applied line by line. A rule is
// [regex, class], or [regex with groups, [class per group]] when its parts differ. It is small
// and honest: constructs that span lines (XML comments excepted) are coloured line by line. ---

const RULES = {
  json: [
    [/"(?:[^"\\]|\\.)*"(?=\s*:)/y, "t-key"],
    [/"(?:[^"\\]|\\.)*"?/y, "t-str"],
    [/-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/y, "t-num"],
    [/(?:true|false|null)\b/y, "t-lit"],
    [/[{}[\],:]/y, "t-punct"],
  ],
  yaml: [
    [/^(\s*)(---|\.\.\.)(?=\s|$)/y, ["", "t-punct"]],
    [/^(\s*(?:-\s+)*)("(?:[^"\\]|\\.)*"|'[^']*'|[^\s#'"\-?:,[\]{}][^#]*?)(\s*:)(?=\s|$)/y, ["", "t-key", "t-punct"]],
    [/(?<=^|\s)#.*/y, "t-com"],
    [/"(?:[^"\\]|\\.)*"?|'[^']*'?/y, "t-str"],
    [/[&*][\w-]+|!!?[\w-]*/y, "t-lit"],
    [/(?<=^|[\s:[,])(?:true|false|null|~|[-+]?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)(?=\s*(?:$|[,\]}#]))/y, "t-num"],
    [/-(?=\s|$)|[[\]{},|>]/y, "t-punct"],
  ],
  toml: [
    [/^(\s*)(\[\[?[^\]]*\]\]?)/y, ["", "t-key"]],
    [/#.*/y, "t-com"],
    [/(?:[\w-]+|"(?:[^"\\]|\\.)*"|'[^']*')(?:\s*\.\s*(?:[\w-]+|"(?:[^"\\]|\\.)*"|'[^']*'))*(?=\s*=)/y, "t-key"],
    [/"""|'''|"(?:[^"\\]|\\.)*"?|'[^']*'?/y, "t-str"],
    [/\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?|[+-]?(?:inf|nan)\b|[+-]?(?:0x[\da-fA-F_]+|0o[0-7_]+|0b[01_]+|\d[\d_]*(?:\.[\d_]+)?(?:[eE][+-]?\d+)?)/y, "t-num"],
    [/(?:true|false)\b/y, "t-lit"],
    [/[=[\]{},.]/y, "t-punct"],
  ],
  properties: [
    [/^\s*[#!].*/y, "t-com"],
    [/^(\s*)((?:[^\s=:\\]|\\.)+)(\s*[=:]?\s*)(.*)/y, ["", "t-key", "t-punct", "t-str"]],
  ],
  xml: [
    [/<!--.*?(?:-->|$)/y, "t-com"],
    [/<!\[CDATA\[.*?(?:\]\]>|$)/y, "t-str"],
    [/<[?!]?\/?[\w:.-]*|\??\/?>/y, "t-tag"],
    [/([\w:.-]+)(\s*=\s*)("[^"]*"?|'[^']*'?)/y, ["t-key", "t-punct", "t-str"]],
    [/&#?\w+;/y, "t-lit"],
  ],
};

/** One line as [class, text] tokens; `state` carries what spans lines (XML comments,
 * properties continuations). */
function tokens(type, line, state) {
  const out = [];
  let pos = 0;
  if (type === "xml" && state.comment) {
    const end = line.indexOf("-->");
    pos = end < 0 ? line.length : end + 3;
    out.push(["t-com", line.slice(0, pos)]);
    state.comment = end < 0;
  }
  if (type === "properties" && state.continued) {
    state.continued = /(^|[^\\])(\\\\)*\\$/.test(line);
    return [["t-str", line]];
  }
  const rules = RULES[type] || [];
  let plain = "";
  while (pos < line.length) {
    let matched = false;
    for (const [re, cls] of rules) {
      re.lastIndex = pos;
      const m = re.exec(line);
      if (!m || !m[0].length) continue;
      if (plain) out.push(["", plain]);
      plain = "";
      if (Array.isArray(cls)) cls.forEach((c, i) => m[i + 1] && out.push([c, m[i + 1]]));
      else out.push([cls, m[0]]);
      pos += m[0].length;
      matched = true;
      break;
    }
    if (!matched) plain += line[pos++];
  }
  if (plain) out.push(["", plain]);
  if (type === "xml") {
    const last = out[out.length - 1];
    state.comment = Boolean(last && last[0] === "t-com" && last[1].startsWith("<!--") && !last[1].endsWith("-->"));
  }
  if (type === "properties" && !/^\s*[#!]/.test(line)) state.continued = /(^|[^\\])(\\\\)*\\$/.test(line);
  return out;
}

/**
 * A code editor: a textarea over a highlighted copy of its text, with line numbers. Keyboard
 * and screen readers use the textarea; the copy is decoration (aria-hidden).
 */
function codeEditor({ value = "", type = "text", label, name, rows = 16 }) {
  const numbers = h("div");
  const gutter = h("div", { class: "code-gutter", "aria-hidden": "true" }, numbers);
  const copy = h("pre", { class: "code-hl", "aria-hidden": "true" });
  const input = h("textarea", {
    class: "code-input", name, rows, wrap: "off", spellcheck: "false", autocapitalize: "off",
    autocomplete: "off", "aria-label": label,
  }, value);
  const note = h("p", { class: "muted code-note" });
  let kind = type;
  let bad = 0;
  let pending = 0;

  function paint() {
    pending = 0;
    const text = input.value;
    const lines = text.split("\n");
    const plain = text.length > HIGHLIGHT_MAX;
    note.textContent = plain ? `Highlighting is off above ${HIGHLIGHT_MAX / 1024} KiB.` : "";
    const state = {};
    copy.replaceChildren(...lines.map((line, i) => {
      const parts = plain || kind === "text" ? [["", line]] : tokens(kind, line, state);
      return h("span", { class: i + 1 === bad ? "ln bad" : "ln", "data-line": String(i + 1) },
        parts.length && line ? parts.map(([cls, t]) => (cls ? h("span", { class: cls }, t) : t)) : " ");
    }), h("span", { class: "ln" }, " "), h("span", { class: "ln" }, " "));
    // The numbers are out of the flow (so that they never make the editor taller): size
    // the gutter for the widest.
    numbers.replaceChildren(...lines.map((_, i) => h("span", { class: i + 1 === bad ? "bad" : null }, String(i + 1))));
    gutter.style.width = `calc(${Math.max(2, String(lines.length).length)}ch + 16px)`;
    sync();
  }

  function sync() {
    copy.scrollTop = input.scrollTop;
    copy.scrollLeft = input.scrollLeft;
    gutter.scrollTop = input.scrollTop;
  }

  function schedule() {
    if (!pending) pending = requestAnimationFrame(paint);
  }

  input.addEventListener("input", () => {
    bad = 0;
    schedule();
  });
  input.addEventListener("scroll", sync);
  paint();

  return {
    element: h("div", {}, h("div", { class: "code" }, gutter, h("div", { class: "code-stack" }, copy, input)), note),
    input,
    get value() {
      return input.value;
    },
    set value(text) {
      input.value = text;
      bad = 0;
      paint();
    },
    setType(t) {
      kind = t;
      paint();
    },
    /** Marks `line` (0: none) as the one with the error. */
    mark(line) {
      bad = line;
      paint();
    },
    /** Puts the cursor on `line`, `column` and scrolls there. */
    goTo(line, column = 1) {
      const lines = input.value.split("\n");
      let at = 0;
      for (let i = 0; i < Math.min(line - 1, lines.length); i++) at += lines[i].length + 1;
      const end = at + (lines[line - 1] || "").length;
      input.focus();
      input.setSelectionRange(Math.min(at + column - 1, end), end);
      const height = parseFloat(getComputedStyle(input).lineHeight) || 20;
      input.scrollTop = Math.max(0, (line - 3) * height);
      sync();
    },
  };
}

// --- Checking content ---

/** Where a check failed: {line, column} from "... at line 3, column 7: ..." or a JSON.parse
 * message ("position 18 (line 3 column 7)"). */
function located(message, content) {
  let m = /line (\d+),? column (\d+)/.exec(message);
  if (m) return { line: Number(m[1]), column: Number(m[2]) };
  m = /position (\d+)/.exec(message);
  if (m) {
    const before = content.slice(0, Number(m[1]));
    const line = before.split("\n").length;
    return { line, column: Number(m[1]) - before.lastIndexOf("\n") };
  }
  if (/end of JSON input/.test(message)) {
    const lines = content.split("\n");
    return { line: lines.length, column: lines[lines.length - 1].length + 1 };
  }
  return null;
}

/** The browser's own check (JSON only; the config center checks every type on publish). */
function checkHere(type, content) {
  if (type !== "json") return null;
  try {
    JSON.parse(content);
    return null;
  } catch (e) {
    const at = located(e.message, content);
    const error = new Error(at ? `line ${at.line}, column ${at.column}: ${e.message.replace(/ in JSON at position \d+.*$/, "")}` : e.message);
    error.name = "invalid json (checked in the browser)";
    error.at = at;
    return error;
  }
}

// --- Small helpers ---

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  return q.toString();
}

function named(c) {
  return { namespace: c.namespace, group: c.group, data_id: c.data_id };
}

function when(ms) {
  return ms ? h("time", { datetime: new Date(ms).toISOString(), title: new Date(ms).toLocaleString() }, ago(ms)) : "";
}

/** Replaces `place`'s children, skipping null ones (replaceChildren would write "null"). */
function put(place, ...children) {
  place.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

function done(place, text) {
  place.replaceChildren(h("p", { class: "ok", role: "status" }, text));
}

/** Distinct path segments under `base` in the KV store, one small read each (a skip scan). */
async function segments(base, signal) {
  const found = [];
  let from = base;
  const end = base.slice(0, -1) + "0"; // "/" + 1: the first key after the folder
  while (found.length < NAMES_MAX) {
    const reply = await api("POST", "/v1/kv/range",
      { key: from, range_end: end, keys_only: true, limit: 1, serializable: true }, { signal });
    if (!reply.kvs.length || typeof reply.kvs[0].key !== "string") break;
    const name = reply.kvs[0].key.slice(base.length).split("/")[0];
    found.push(name);
    from = `${base}${name}0`;
  }
  return found;
}

// --- The page ---

export async function render(root, params) {
  const controller = new AbortController();
  const signal = controller.signal;
  stopWhenGone(root, controller);
  const ns = params.get("ns") || DEFAULTS.ns;
  const filter = { group: params.get("group") || "", q: params.get("q") || "", tag: params.get("tag") || "" };
  const selected = params.get("id") ? { namespace: ns, group: params.get("g") || DEFAULTS.group, data_id: params.get("id") } : null;
  const creating = params.get("new") === "1";

  const link = (extra) => `#/configs?${query({ ns, group: filter.group, q: filter.q, tag: filter.tag, ...extra })}`;

  // Filters.
  const nsInput = h("input", { name: "namespace", value: ns, list: "cfg-namespaces", size: 14 });
  const groupInput = h("input", { name: "group", value: filter.group, list: "cfg-groups", placeholder: "all", size: 16 });
  const qInput = h("input", { name: "q", type: "search", value: filter.q, placeholder: "app.", size: 16 });
  const tagInput = h("input", { name: "tag", value: filter.tag, size: 10 });
  const nsList = h("datalist", { id: "cfg-namespaces" });
  const groupList = h("datalist", { id: "cfg-groups" });
  const list = h("div", { id: "cfg-list" }, h("p", { class: "muted" }, "Loading…"));
  const detail = h("div", { id: "cfg-detail" });
  const split = h("div", { class: "split cfg-split" }, h("div", {}, list), detail);

  root.append(
    h("h1", {}, "Configs"),
    h("form", { class: "row", role: "search", onsubmit: (e) => {
      e.preventDefault();
      location.hash = `#/configs?${query({ ns: nsInput.value.trim(), group: groupInput.value.trim(), q: qInput.value.trim(), tag: tagInput.value.trim() })}`;
    } },
    field("Namespace", nsInput), field("Group", groupInput), field("Data id starts with", qInput), field("Tag", tagInput),
    h("button", { type: "submit" }, "Search"),
    h("a", { class: "cfg-button", href: link({ new: "1" }) }, "New config"),
    nsList, groupList),
    split);

  // Namespaces and groups that exist, for the inputs' suggestions (not awaited).
  segments(ITEMS, signal).then((names) => nsList.replaceChildren(...names.map((n) => h("option", { value: n }))), () => {});
  segments(`${ITEMS}${ns}/`, signal).then((names) => groupList.replaceChildren(...names.map((n) => h("option", { value: n }))), () => {});

  // --- The list ---

  let page = 0;
  let rows = [];

  async function loadList() {
    try {
      rows = await api("GET", `/v1/config/list?${query({ namespace: ns, group: filter.group, prefix: filter.q, tag: filter.tag })}`, undefined, { signal });
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        // Only an unknown route answers 404 here: the config center's role is off.
        split.replaceWith(notRunning("The config center", "/v1/config/", "config_center", e));
        controller.abort();
      } else if (e.name !== "AbortError") {
        list.replaceChildren(errorBox(e));
      }
      return;
    }
    rows.sort((a, b) => a.group.localeCompare(b.group) || a.data_id.localeCompare(b.data_id));
    if (selected && page === 0) {
      // Open the page of the list that holds the selected config.
      const at = rows.findIndex((c) => c.group === selected.group && c.data_id === selected.data_id);
      if (at >= 0) page = Math.floor(at / PER_PAGE);
    }
    showPage();
  }

  function showPage() {
    const shown = rows.slice(page * PER_PAGE, (page + 1) * PER_PAGE);
    const isSelected = (c) => selected && c.group === selected.group && c.data_id === selected.data_id;
    list.replaceChildren(
      h("p", { class: "muted" }, `${rows.length} config${rows.length === 1 ? "" : "s"} in namespace ${ns}`,
        filter.group ? `, group ${filter.group}` : "", filter.q ? `, data id starting with ${filter.q}` : "",
        filter.tag ? `, tag ${filter.tag}` : ""),
      shown.length ? h("div", { class: "scroll" }, h("table", { "aria-label": "configs" },
        h("thead", {}, h("tr", {}, ["Config", "Type", "Version"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, shown.map((c) => h("tr", { class: isSelected(c) ? "selected" : null },
          h("td", { class: "cfg-name" }, h("a", { href: link({ id: c.data_id, g: c.group }), "aria-current": isSelected(c) ? "true" : null }, c.data_id),
            c.gray ? [" ", h("span", { class: "badge warn" }, "gray")] : null,
            c.encrypted ? [" ", h("span", { class: "badge" }, "encrypted")] : null,
            h("div", { class: "muted" }, c.group, " · ", when(c.modified_at))),
          h("td", {}, c.type), h("td", {}, String(c.version)))))))
        : h("p", { class: "muted" }, "No config matches."),
      h("nav", { class: "pager", "aria-label": "Pages of configs" },
        h("button", { type: "button", disabled: page === 0, onclick: () => { page--; showPage(); } }, "← Previous"),
        h("span", { class: "muted" }, `page ${page + 1} of ${Math.max(1, Math.ceil(rows.length / PER_PAGE))}`),
        h("button", { type: "button", disabled: (page + 1) * PER_PAGE >= rows.length, onclick: () => { page++; showPage(); } }, "Next →")));
  }

  const work = [loadList()];
  if (selected || creating) work.push(showConfig(detail, selected, { ns, signal, link, reloadList: loadList }));
  else {
    const deleted = params.get("deleted");
    if (deleted) done(detail, `deleted ${deleted.replace("@", ": its delete is version ")}`);
    detail.append(h("p", { class: "muted" }, "Choose a config, or make a new one."));
  }
  await Promise.all(work);
  return () => controller.abort();
}

// --- One config: editor, history, gray release, listeners ---

async function showConfig(place, key, { ns, signal, link, reloadList }) {
  const status = h("div", { id: "cfg-status", "aria-live": "polite" });
  const problem = h("div", { id: "cfg-problem" });
  const notice = h("div", { id: "cfg-notice", "aria-live": "polite" });
  let current = null; // what /v1/config/get answered for this config, or null for a new one
  let busy = 0; // this page's writes in flight: they reload what they change themselves
  const own = new Set(); // versions this page wrote

  /** Runs one of this page's writes, so that its own watch does not call it someone else's. */
  async function writing(work) {
    busy++;
    try {
      const reply = await work();
      if (reply && reply.version) own.add(reply.version);
      return reply;
    } finally {
      busy--;
    }
  }

  let summary = null; // the list's summary: description and tags are there, not in get's answer
  if (key) {
    try {
      let summaries;
      [current, summaries] = await Promise.all([
        api("GET", `/v1/config/get?${query(named(key))}`, undefined, { signal }),
        api("GET", `/v1/config/list?${query({ namespace: ns, group: key.group, prefix: key.data_id })}`, undefined, { signal }).catch(() => []),
      ]);
      summary = summaries.find((c) => c.data_id === key.data_id) || null;
    } catch (e) {
      if (e.name === "AbortError") return;
      place.replaceChildren(errorBox(e), h("p", {}, h("a", { href: link({ new: "1" }) }, "Make a new config")));
      return;
    }
    if (current.gray) {
      // This browser matches the gray release: show the main version in the editor.
      current = await mainVersion(key, current.version, signal) || current;
    }
  }

  const idInput = h("input", { name: "data_id", required: true, value: key ? key.data_id : "", readonly: Boolean(key) });
  const groupInput = h("input", { name: "group", value: key ? key.group : DEFAULTS.group, readonly: Boolean(key) });
  const typeSelect = h("select", { name: "type", onchange: () => editor.setType(typeSelect.value) },
    TYPES.map((t) => h("option", { value: t, selected: (current ? current.type : "json") === t }, t)));
  const descInput = h("input", { name: "desc", class: "wide", value: summary ? summary.desc : "" });
  const tagsInput = h("input", { name: "tags", placeholder: "web, prod", size: 20, value: summary ? summary.tags.join(", ") : "" });
  const editor = codeEditor({ value: current ? current.content : "", type: typeSelect.value, label: "Content", name: "content" });
  const meta = h("p", { class: "muted", id: "cfg-meta" });
  const historyBox = h("div", { id: "cfg-history" });
  const gray = h("div", { id: "cfg-gray" });
  const listeners = h("div", { id: "cfg-listeners" });

  const target = () => ({ namespace: ns, group: groupInput.value.trim() || DEFAULTS.group, data_id: idInput.value.trim() });
  editor.input.addEventListener("input", () => problem.replaceChildren());

  const publishButton = h("button", { type: "submit", class: "primary" }, "Publish");

  function showMeta() {
    publishButton.textContent = current ? `Publish version ${current.version + 1}` : "Publish";
    meta.replaceChildren(...(current
      ? [`${ns} / ${current.group} · version ${current.version} · md5 ${current.md5} · ${current.type} · changed `, when(current.modified_at)]
      : [`A new config in namespace ${ns}.`]));
  }

  /** Shows a check's error at its line; true when there was one. */
  function showProblem(error, content) {
    const at = error.at || located(error.message || "", content);
    editor.mark(at ? at.line : 0);
    put(problem, errorBox(error),
      at ? h("button", { type: "button", onclick: () => editor.goTo(at.line, at.column) }, `Go to line ${at.line}`) : null);
    problem.scrollIntoView({ block: "nearest" });
  }

  /** Checks the content in the browser (JSON), then by the config center without publishing:
   * a publish conditioned on an md5 no content has is refused, after the content's check. */
  async function check() {
    status.replaceChildren();
    const content = editor.value;
    const local = checkHere(typeSelect.value, content);
    if (local) return showProblem(local, content);
    try {
      await api("POST", "/v1/config/publish", { ...target(), content, type: typeSelect.value, if_md5: CHECK_ONLY }, { signal });
    } catch (e) {
      if (e.name === "AbortError") return undefined;
      if (e.code === "failed_precondition" && e.message.startsWith("compare-and-set failed")) {
        editor.mark(0);
        problem.replaceChildren(h("p", { class: "ok", role: "status" }, `Valid ${typeSelect.value}: the config center accepts it (nothing was published).`));
        return undefined;
      }
      return showProblem(e, content);
    }
    return undefined;
  }

  async function publish() {
    status.replaceChildren();
    const content = editor.value;
    const local = checkHere(typeSelect.value, content);
    if (local) return showProblem(local, content);
    const body = { ...target(), content, type: typeSelect.value, if_version: current ? current.version : 0 };
    body.desc = descInput.value.trim();
    body.tags = tagsInput.value.split(",").map((t) => t.trim()).filter(Boolean);
    try {
      const written = await writing(() => api("POST", "/v1/config/publish", body, { signal }));
      editor.mark(0);
      problem.replaceChildren();
      if (!current) {
        location.hash = link({ id: written.data_id, g: written.group, published: written.version });
        return undefined;
      }
      done(status, `published ${written.data_id} version ${written.version}`);
      await reload();
    } catch (e) {
      if (e.name === "AbortError") return undefined;
      if (e.code === "bad_request" && located(e.message, content)) return showProblem(e, content);
      put(problem, errorBox(e), e.code === "failed_precondition"
        ? h("button", { type: "button", onclick: () => reload({ content: true }) }, "Load the current version") : null);
      problem.scrollIntoView({ block: "nearest" });
    }
    return undefined;
  }

  async function remove() {
    const k = target();
    if (!(await confirmAction(`Delete the config ${k.data_id} (group ${k.group}, namespace ${k.namespace})? Its history stays; clients get "not found".`))) return;
    try {
      const reply = await api("POST", "/v1/config/delete", k, { signal });
      location.hash = link({ deleted: `${k.data_id}@${reply.version}` });
    } catch (e) {
      if (e.name !== "AbortError") status.replaceChildren(errorBox(e));
    }
  }

  /** Reads the config again; the editor's content too when asked or when it was not edited. */
  async function reload({ content = false } = {}) {
    const before = current;
    try {
      let next = await api("GET", `/v1/config/get?${query(named(target()))}`, undefined, { signal });
      if (next.gray) next = await mainVersion(target(), next.version, signal) || next;
      current = next;
    } catch (e) {
      if (e.name !== "AbortError") status.replaceChildren(errorBox(e));
      return;
    }
    if (content || !before || editor.value === before.content) {
      editor.value = current.content;
      notice.replaceChildren();
    }
    typeSelect.value = current.type;
    editor.setType(current.type);
    showMeta();
    await Promise.all([loadHistory(), loadGray(), reloadList()]);
  }

  // --- History, diff, rollback ---

  const diffPlace = h("div", { id: "cfg-diff" });

  async function loadHistory() {
    if (!current) return;
    let entries;
    try {
      entries = await api("GET", `/v1/config/history?${query(named(target()))}`, undefined, { signal });
    } catch (e) {
      if (e.name !== "AbortError") historyBox.replaceChildren(errorBox(e));
      return;
    }
    entries.reverse();
    diffPlace.replaceChildren();
    const versions = entries.filter((e) => e.op !== "delete").map((e) => e.version);
    const from = h("select", { name: "from" }, versions.map((v, i) => h("option", { value: v, selected: i === 1 }, `version ${v}`)));
    const to = h("select", { name: "to" }, versions.map((v, i) => h("option", { value: v, selected: i === 0 }, `version ${v}`)));
    put(historyBox,
      h("div", { class: "scroll" }, h("table", { "aria-label": "history" },
        h("thead", {}, h("tr", {}, ["Version", "Operation", "Type", "MD5", "When", "Source", ""].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, entries.map((e) => h("tr", {},
          h("td", {}, String(e.version), e.version === current.version ? h("span", { class: "muted" }, " (current)") : null),
          h("td", {}, e.op), h("td", {}, e.type), h("td", {}, h("code", {}, e.md5 ? e.md5.slice(0, 8) : "")),
          h("td", {}, when(e.modified_at)), h("td", {}, h("code", {}, e.source)),
          h("td", {}, e.op === "delete" || e.version === current.version ? null : h("span", { class: "actions" },
            h("button", { type: "button", onclick: () => showDiff(e.version, current.version) }, `Diff with ${current.version}`), " ",
            h("button", { type: "button", class: "danger", onclick: () => rollback(e.version) }, "Roll back")))))))),
      versions.length > 1 ? h("form", { class: "row", onsubmit: (ev) => {
        ev.preventDefault();
        showDiff(Number(from.value), Number(to.value));
      } }, field("From", from), field("To", to), h("button", { type: "submit" }, "Compare")) : null,
      diffPlace);
  }

  async function showDiff(from, to) {
    diffPlace.replaceChildren(h("p", { class: "muted" }, "Loading…"));
    try {
      const reply = await api("GET", `/v1/config/diff?${query({ ...named(target()), from, to })}`, undefined, { signal });
      diffPlace.replaceChildren(h("h3", {}, `Version ${from} → version ${to}`), sideBySide(reply.diff, from, to));
      diffPlace.scrollIntoView({ block: "nearest" });
    } catch (e) {
      if (e.name !== "AbortError") diffPlace.replaceChildren(errorBox(e));
    }
  }

  async function rollback(version) {
    const k = target();
    if (!(await confirmAction(`Roll ${k.data_id} back to version ${version}? Its content is published as a new version for every client.`))) return;
    try {
      const written = await writing(() => api("POST", "/v1/config/rollback", { ...k, to_version: version }, { signal }));
      done(status, `rolled ${k.data_id} back to version ${version}: now version ${written.version}`);
      await reload({ content: true });
      status.scrollIntoView({ block: "nearest" });
    } catch (e) {
      if (e.name !== "AbortError") status.replaceChildren(errorBox(e));
    }
  }

  // --- Gray release ---

  const grayStatus = h("div", { id: "cfg-gray-status", "aria-live": "polite" });
  const grayProblem = h("div", { id: "cfg-gray-problem" });

  async function loadGray() {
    if (!current) return;
    const k = target();
    let running = null;
    let ruleError = null;
    try {
      // The rule is not in the config routes' answers: read the documented key of the gray
      // release (docs/config-center.md, "Keys in the KV store").
      const reply = await api("POST", "/v1/kv/range", { key: `/strata/config/gray/${k.namespace}/${k.group}/${k.data_id}`, serializable: true }, { signal });
      if (reply.kvs.length) running = JSON.parse(reply.kvs[0].value);
    } catch (e) {
      if (e.name === "AbortError") return;
      ruleError = e;
    }
    put(gray,
      ruleError ? h("div", {}, h("p", { class: "muted" }, "Whom the gray release goes to could not be read:"), errorBox(ruleError)) : null,
      running ? grayRunning(running) : h("p", { id: "cfg-gray-none", class: "muted" }, "No gray release is running."),
      grayForm(running),
      h("h3", {}, "What a client gets"), whoGets(),
      grayStatus);
  }

  function grayRunning(g) {
    const who = g.rule.ips
      ? ["clients at ", g.rule.ips.map((ip, i) => [i ? ", " : "", h("code", {}, ip)])]
      : ["clients labelled ", Object.entries(g.rule.labels || {}).map(([k, v], i) => [i ? " and " : "", h("code", {}, `${k}=${v}`)])];
    const probe = g.rule.ips ? { ip: g.rule.ips[0] } : { label: Object.entries(g.rule.labels || {}).map(([k, v]) => `${k}=${v}`) };
    const content = h("pre", { class: "cfg-gray-content" }, g.encrypted ? "…" : g.content);
    if (g.encrypted) {
      // Stored encrypted: ask for it as a matching client, which gets it decrypted.
      const q = new URLSearchParams(named(target()));
      if (probe.ip) q.set("ip", probe.ip);
      for (const l of probe.label || []) q.append("label", l);
      api("GET", `/v1/config/get?${q}`, undefined, { signal }).then((r) => { content.textContent = r.content; }, (e) => content.replaceWith(errorBox(e)));
    }
    return h("div", { class: "card", id: "cfg-gray-running" },
      h("p", {}, h("span", { class: "badge warn" }, "gray release running"), " started ", when(g.created_at), g.md5 ? ` · md5 ${g.md5}` : ""),
      h("p", {}, "Goes to ", who, "; every other client keeps version ", String(current.version), "."),
      content,
      h("div", { class: "row" },
        h("button", { type: "button", class: "primary", onclick: () => grayEnd("promote") }, "Promote to everyone"),
        h("button", { type: "button", class: "danger", onclick: () => grayEnd("abort") }, "Abort")));
  }

  async function grayEnd(how) {
    const k = target();
    const text = how === "promote"
      ? `Promote the gray release of ${k.data_id}? Its content is published to every client as a new version.`
      : `Abort the gray release of ${k.data_id}? Its clients go back to version ${current.version}.`;
    if (!(await confirmAction(text))) return;
    try {
      const reply = await writing(() => api("POST", `/v1/config/gray/${how}`, k, { signal }));
      await reload({ content: how === "promote" });
      done(grayStatus, how === "promote" ? `promoted the gray release: now version ${reply.version}` : "aborted the gray release");
    } catch (e) {
      if (e.name !== "AbortError") grayStatus.replaceChildren(errorBox(e));
    }
  }

  function grayForm(running) {
    const grayEditor = codeEditor({ value: running && !running.encrypted ? running.content : editor.value, type: typeSelect.value, label: "Gray content", name: "gray_content", rows: 8 });
    const by = h("select", { name: "gray_by" }, h("option", { value: "ips" }, "client addresses (IPs)"), h("option", { value: "labels" }, "client labels (all of them)"));
    const who = h("input", { name: "gray_to", class: "wide", placeholder: "10.0.0.5, 10.0.0.6  or  env=canary, zone=a" });
    return h("details", { open: !running },
      h("summary", {}, running ? "Replace the gray release" : "Start a gray release"),
      h("form", { id: "cfg-gray-form", onsubmit: async (e) => {
        e.preventDefault();
        grayProblem.replaceChildren();
        const content = grayEditor.value;
        const local = checkHere(typeSelect.value, content);
        if (local) {
          grayEditor.mark(local.at ? local.at.line : 0);
          grayProblem.replaceChildren(errorBox(local));
          return;
        }
        const items = who.value.split(",").map((s) => s.trim()).filter(Boolean);
        const body = { ...target(), content };
        if (by.value === "ips") body.ips = items;
        else {
          body.labels = {};
          for (const item of items) {
            const [k, ...v] = item.split("=");
            body.labels[k.trim()] = v.join("=").trim();
          }
        }
        try {
          await writing(() => api("POST", "/v1/config/gray", body, { signal }));
          await loadGray();
          await reloadList();
          done(grayStatus, `gray release started for ${items.join(", ")}`);
        } catch (err) {
          if (err.name === "AbortError") return;
          const at = located(err.message, content);
          grayEditor.mark(at && err.code === "bad_request" ? at.line : 0);
          grayProblem.replaceChildren(errorBox(err));
        }
      } },
      grayEditor.element, grayProblem,
      h("div", { class: "row" }, field("Send it to", by), h("div", { class: "grow" }, field("Who (comma-separated)", who))),
      h("button", { type: "submit" }, running ? "Replace" : "Start the gray release")));
  }

  function whoGets() {
    const ip = h("input", { name: "probe_ip", placeholder: "10.0.0.5", size: 14 });
    const labels = h("input", { name: "probe_labels", placeholder: "env=canary", size: 18 });
    const answer = h("div", { id: "cfg-probe", "aria-live": "polite" });
    return h("form", { class: "row", onsubmit: async (e) => {
      e.preventDefault();
      const q = new URLSearchParams(named(target()));
      q.set("ip", ip.value.trim() || "0.0.0.0");
      for (const l of labels.value.split(",").map((s) => s.trim()).filter(Boolean)) q.append("label", l);
      try {
        const r = await api("GET", `/v1/config/get?${q}`, undefined, { signal });
        answer.replaceChildren(h("p", {}, r.gray ? h("span", { class: "badge warn" }, "gray") : h("span", { class: "badge ok" }, `version ${r.version}`),
          ` md5 ${r.md5}`));
      } catch (err) {
        if (err.name !== "AbortError") answer.replaceChildren(errorBox(err));
      }
    } }, field("IP", ip), field("Labels", labels), h("button", { type: "submit" }, "Ask"), answer);
  }

  // --- Listeners: the config center counts them per node, and this page is one. ---

  async function loadListeners() {
    const counts = new Map(); // node → [count, as of when]
    try {
      // Every node's count, as the monitor last scraped it (when a monitor runs).
      const reply = await api("GET", `/api/v1/query?query=${encodeURIComponent("strata_configcenter_listeners")}`, undefined, { signal });
      for (const r of reply.data.result) {
        counts.set(r.metric.node_id || r.metric.instance, [Number(r.value[1]), `when the monitor last scraped ${r.metric.instance || "it"}`]);
      }
    } catch (e) {
      if (e.name === "AbortError") return;
    }
    try {
      // This node's count now (its /metrics is served without a credential).
      const text = await (await fetch("/metrics", { signal })).text();
      const m = /^strata_configcenter_listeners(?:\{([^}]*)\})? (\d+)/m.exec(text);
      if (m) counts.set((/node_id="([^"]+)"/.exec(m[1] || "") || [])[1] || "this node", [Number(m[2]), "now (the node serving this page)"]);
    } catch (e) {
      if (e.name === "AbortError") return;
    }
    put(listeners,
      h("p", { class: "muted" }, "The config center does not say which clients listen to one config: it counts the open long-polls and watch streams of every config, per node (strata_configcenter_listeners). This page's own watch, below, is one of them."),
      counts.size
        ? h("ul", {}, [...counts].sort().map(([node, [n, when]]) => h("li", {}, `node ${node}: ${n} listening ${when}`)))
        : h("p", { class: "muted" }, "No count available."),
      h("button", { type: "button", onclick: loadListeners }, "Count again"),
      h("h3", {}, "Changes, live"), watchLog);
  }

  const watchLog = h("ol", { id: "cfg-watch", class: "kv-watch", "aria-label": "changes" });

  function watch() {
    const q = query(named(target()));
    stream("GET", `/v1/config/watch?${q}`, undefined, (m) => {
      watchLog.prepend(h("li", {}, h("span", { class: "badge" }, m.event), ` version ${m.version} · md5 ${m.md5 || "—"}`));
      if (m.event === "current") loadListeners(); // counted now, with this watch
      if (m.event === "current" || !current || busy || own.has(m.version)) return;
      if (m.version > current.version || m.event === "gray" || m.event === "delete") {
        const edited = editor.value !== current.content;
        reload().then(() => {
          if (edited && m.event !== "gray") {
            notice.replaceChildren(h("p", { class: "warn", role: "status" },
              `Version ${m.version} was published (${m.event}) while you were editing: publishing now fails its compare-and-set. `,
              h("button", { type: "button", onclick: () => reload({ content: true }) }, "Load it")));
          }
        });
      }
    }, signal).catch((e) => {
      if (e.name !== "AbortError") watchLog.prepend(h("li", {}, errorBox(e)));
    });
  }

  // --- Layout ---

  showMeta();
  place.replaceChildren(
    h("h2", {}, key ? key.data_id : "New config"), meta, notice,
    h("form", { id: "cfg-form", class: "card", onsubmit: (e) => {
      e.preventDefault();
      publish();
    } },
    key ? null : h("div", { class: "row" }, field("Data id", idInput), field("Group", groupInput)),
    h("div", { class: "row" }, field("Type", typeSelect), h("div", { class: "grow" }, field("Description", descInput)),
      field("Tags (comma-separated)", tagsInput)),
    editor.element, problem,
    h("div", { class: "row" },
      publishButton,
      h("button", { type: "button", onclick: check }, "Check"),
      current ? h("button", { type: "button", class: "danger", onclick: remove }, "Delete") : null),
    status),
    ...(current ? [
      h("h2", {}, "History"), historyBox,
      h("h2", {}, "Gray release"), gray,
      h("h2", {}, "Listeners"), listeners,
    ] : []));
  if (!current) return;
  const published = new URLSearchParams(location.hash.split("?")[1] || "").get("published");
  if (published) {
    done(status, `published ${key.data_id} version ${published}`);
    history.replaceState(null, "", link({ id: key.data_id, g: key.group }));
  }
  watch();
  await Promise.all([loadHistory(), loadGray(), loadListeners()]);
}

/** The main version for clients outside a running gray release (this browser is in it). */
async function mainVersion(key, version, signal) {
  try {
    const entry = await api("GET", `/v1/config/get?${query({ ...named(key), version })}`, undefined, { signal });
    return { ...entry, gray: false };
  } catch (_) {
    return null;
  }
}

/** A unified diff (as /v1/config/diff answers) side by side: old on the left, new on the right. */
function sideBySide(diff, from, to) {
  if (!diff) return h("p", { class: "muted" }, "The two versions have the same content.");
  const rows = [];
  let left = 0;
  let right = 0;
  let dels = [];
  let adds = [];
  const flush = () => {
    for (let i = 0; i < Math.max(dels.length, adds.length); i++) {
      rows.push([dels[i] ? ["del", dels[i][0], dels[i][1]] : ["", "", ""], adds[i] ? ["add", adds[i][0], adds[i][1]] : ["", "", ""]]);
    }
    dels = [];
    adds = [];
  };
  for (const line of diff.split("\n")) {
    if (line.startsWith("---") || line.startsWith("+++") || line === "") continue;
    const hunk = /^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@/.exec(line);
    if (hunk) {
      flush();
      left = Number(hunk[1]);
      right = Number(hunk[2]);
      rows.push("hunk");
      continue;
    }
    const text = line.slice(1);
    if (line[0] === "-") dels.push([left++, text]);
    else if (line[0] === "+") adds.push([right++, text]);
    else if (line[0] === "\\") {
      flush();
      rows.push("eof");
    } else {
      flush();
      rows.push([["", left++, text], ["", right++, text]]);
    }
  }
  flush();
  const cells = ([cls, n, text]) => [h("td", { class: `num ${cls}` }, String(n)), h("td", { class: cls }, text)];
  return h("div", { class: "scroll" }, h("table", { class: "cfg-diff", "aria-label": `diff of version ${from} and version ${to}` },
    h("colgroup", {}, h("col", { class: "num" }), h("col", {}), h("col", { class: "num" }), h("col", {})),
    h("thead", {}, h("tr", {}, h("th", { scope: "col", colspan: "2" }, `version ${from}`), h("th", { scope: "col", colspan: "2" }, `version ${to}`))),
    h("tbody", {}, rows.map((r) => {
      if (r === "hunk") return h("tr", { class: "hunk" }, h("td", { colspan: "4" }, "⋯"));
      if (r === "eof") return h("tr", { class: "hunk" }, h("td", { colspan: "4" }, "\\ No newline at end of file"));
      return h("tr", {}, cells(r[0]), cells(r[1]));
    }))));
}

