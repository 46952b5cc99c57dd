"""The annotation page's script and the login page's script (served as /static/app.js and /static/login.js).

The page never builds HTML from strings: item text goes in with `textContent`, and the markdown subset of the
answers (paragraphs, `-`/`1.` lists, **bold**, *italic*, `code`) is turned into elements node by node.
Keys pressed while a save or a load is in flight are queued and replayed on the item that comes next, so
nothing typed is lost or applied to the wrong item.
"""

APP_JS = r"""
"use strict";
const state = { annotator: "", total: 0, done: 0, index: 0, item: null, hasImage: false, figureProblem: null,
  marks: { a: null, b: null }, better: null, saved: null, busy: false, ticket: 0, queue: [], acknowledged: false };
const $ = (id) => document.getElementById(id);
const PROBLEMS = { missing: "Figure unavailable: its file is missing.",
  damaged: "Figure unavailable: its file is damaged (it does not open as an image).",
  too_large: "Figure unavailable: its file is too large to show safely (a decompression bomb or an oversized file)." };

async function api(path, options) {
  let response;
  // the value the sign-in page kept: a session cookie planted from another port of this host lacks it
  const binding = { "X-Vital-Binding": localStorage.getItem("vital_annotate_binding") || "" };
  const request = Object.assign({ credentials: "same-origin" }, options || {});
  request.headers = Object.assign(binding, request.headers || {});
  try {
    response = await fetch(path, request);
  } catch (err) {
    throw new Error("the server cannot be reached (is it running? is the network up?)");
  }
  if (response.status === 401) {
    location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
  }
  const body = await response.json().catch(() => ({ detail: `server answered ${response.status}` }));
  if (!response.ok) throw new Error(typeof body.detail === "string" ? body.detail : `server answered ${response.status}`);
  return body;
}

function inline(parent, text) {
  const pattern = /(\*\*[^*]+\*\*|\*[^*\s][^*]*\*|`[^`]+`)/g;
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    if (match.index > last) parent.appendChild(document.createTextNode(text.slice(last, match.index)));
    const token = match[0];
    const tag = token.startsWith("**") ? "strong" : token.startsWith("`") ? "code" : "em";
    const cut = tag === "strong" ? 2 : 1;
    const node = document.createElement(tag);
    node.textContent = token.slice(cut, token.length - cut);
    parent.appendChild(node);
    last = match.index + token.length;
  }
  if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
}

function markdown(container, text) {
  container.replaceChildren();
  for (const block of String(text).split(/\n\s*\n/)) {
    const lines = block.split("\n").filter((line) => line.trim());
    if (!lines.length) continue;
    const bullet = lines.every((line) => /^\s*[-*]\s+/.test(line));
    const numbered = lines.every((line) => /^\s*\d+[.)]\s+/.test(line));
    if (bullet || numbered) {
      const list = document.createElement(bullet ? "ul" : "ol");
      for (const line of lines) {
        const li = document.createElement("li");
        inline(li, line.replace(bullet ? /^\s*[-*]\s+/ : /^\s*\d+[.)]\s+/, ""));
        list.appendChild(li);
      }
      container.appendChild(list);
    } else {
      const p = document.createElement("p");
      inline(p, lines.join("\n"));
      container.appendChild(p);
    }
  }
}

function showProgress() {
  $("progress").textContent = `Item ${state.index + 1} of ${state.total} · ${state.done} judged`;
  $("bar").style.width = `${(100 * state.done) / Math.max(1, state.total)}%`;
  $("done-banner").hidden = state.done < state.total;
  $("annotator").textContent = state.annotator;
}

function render() {
  const item = state.item;
  $("caption").textContent = item.caption || "(no caption)";
  const list = $("mentions");
  list.replaceChildren();
  for (const mention of item.mentions.length ? item.mentions : ["(none)"]) {
    const li = document.createElement("li");
    li.textContent = mention;
    list.appendChild(li);
  }
  $("question").textContent = item.question;
  markdown($("answer-a"), item.answer_a);
  markdown($("answer-b"), item.answer_b);
  const figure = $("figure");
  figure.hidden = !state.hasImage;
  $("no-image").hidden = state.hasImage;
  $("no-image-text").textContent = PROBLEMS[state.figureProblem] || "Figure unavailable.";
  if (state.hasImage) figure.src = `/api/image/${state.index}`; else figure.removeAttribute("src");
  renderMarks();
  showProgress();
}

function contradictory() {
  const { a, b } = state.marks;
  return (state.better === "a" && a === false && b === true) || (state.better === "b" && b === false && a === true);
}

function dirty() {
  const saved = state.saved || { acceptable_a: null, acceptable_b: null, better: null, comment: "" };
  return state.marks.a !== saved.acceptable_a || state.marks.b !== saved.acceptable_b ||
    state.better !== (saved.better || null) || $("comment").value.trim() !== (saved.comment || "");
}

function renderMarks() {
  for (const side of ["a", "b"]) {
    const mark = state.marks[side];
    $(`${side}-yes`).classList.toggle("on", mark === true);
    $(`${side}-no`).classList.toggle("on", mark === false);
    const card = $(`card-${side}`);
    card.classList.toggle("yes", mark === true);
    card.classList.toggle("no", mark === false);
    card.classList.toggle("preferred", state.better === side);
  }
  $("better-a").classList.toggle("on", state.better === "a");
  $("better-b").classList.toggle("on", state.better === "b");
  $("better-none").classList.toggle("on", state.better === null);
  const warning = $("warning");
  warning.hidden = !contradictory();
  if (contradictory()) {
    const good = state.better === "a" ? "B" : "A";
    warning.textContent = `Answer ${state.better.toUpperCase()} is picked as better but marked not acceptable, ` +
      `while ${good} is acceptable. Change a mark or the pick, or press Save again to keep it.`;
  }
  $("save").disabled = state.marks.a === null || state.marks.b === null || state.busy;
}

function setBusy(value) {
  state.busy = value;
  document.body.dataset.busy = String(value);
  renderMarks();
  if (!value) replayQueue();
}

function replayQueue() {
  while (state.queue.length && !state.busy) handleKey(state.queue.shift());
}

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").classList.toggle("error", !!error);
}

// `note` (what the last action did) goes on the status line before queued keys are replayed.
async function load(index, note) {
  const ticket = ++state.ticket;
  setBusy(true);
  let body;
  try {
    body = await api(`/api/item/${index}`);
  } catch (err) {
    if (ticket === state.ticket) {
      state.queue = [];
      setBusy(false);
      setStatus(`${note ? note + " " : ""}Could not open item ${index + 1}: ${err.message}`, true);
    }
    return false;
  }
  if (ticket !== state.ticket) return false;
  Object.assign(state, { index: body.index, total: body.total, done: body.done, item: body.item,
    hasImage: body.has_image, figureProblem: body.figure_problem, saved: body.judgement, acknowledged: false });
  const previous = body.judgement;
  state.marks = previous ? { a: previous.acceptable_a, b: previous.acceptable_b } : { a: null, b: null };
  state.better = previous ? previous.better : null;
  $("comment").value = previous ? previous.comment || "" : "";
  const before = previous && previous.cannot_judge ? "Marked before: cannot judge (figure unavailable)."
    : previous ? "Judged before; saving again replaces the earlier judgement." : "";
  setStatus(note ? `${note} ${before}`.trim() : before);
  if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();
  render();
  window.scrollTo(0, 0);
  setBusy(false);
  return true;
}

function mark(side, value) { state.marks[side] = value; state.acknowledged = false; renderMarks(); }
function pickBetter(value) { state.better = value || null; state.acknowledged = false; renderMarks(); }

async function send(verdict) {
  setBusy(true);
  setStatus("Saving…");
  let body;
  try {
    body = await api("/api/judgements", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(Object.assign({ index: state.index, item_id: state.item.item_id,
        comment: $("comment").value }, verdict)) });
  } catch (err) {
    state.queue = [];
    setBusy(false);
    setStatus(`Not saved: ${err.message}`, true);
    return;
  }
  state.done = body.done;
  state.saved = null;
  const saved = `Saved item ${body.saved_index + 1}.`;
  if (state.index + 1 < state.total) {
    await load(state.index + 1, saved);
  } else {
    state.saved = Object.assign({ acceptable_a: state.marks.a, acceptable_b: state.marks.b, better: state.better,
      comment: $("comment").value.trim() }, verdict);
    setBusy(false);
    setStatus(saved);
  }
  showProgress();
}

function save() {
  if ($("save").disabled || state.busy) return;
  if (contradictory() && !state.acknowledged) {
    state.acknowledged = true;
    setStatus("Check the highlighted warning; press Save again to keep this judgement.", true);
    return;
  }
  send({ acceptable_a: state.marks.a, acceptable_b: state.marks.b, better: state.better });
}

function cannotJudge() {
  if (state.busy || state.hasImage) return;
  send({ acceptable_a: null, acceptable_b: null, better: null, cannot_judge: "figure_unavailable" });
}

function go(delta) {
  if (state.busy) return;
  const target = state.index + delta;
  if (target < 0 || target >= state.total) return;
  if (dirty() && !confirm("This item has changes that are not saved. Leave it anyway?")) return;
  load(target);
}

function zoom(open) {
  if (!state.hasImage) return;
  const box = $("zoom");
  const show = open === undefined ? box.hidden : open;
  if (show) $("zoomed").src = $("figure").src;
  box.hidden = !show;
}

const ACTIONS = { "1": () => mark("a", true), "2": () => mark("a", false), "3": () => mark("b", true),
  "4": () => mark("b", false), a: () => pickBetter("a"), b: () => pickBetter("b"), n: () => pickBetter(null),
  u: cannotJudge, z: () => zoom(), c: () => $("comment").focus(), Enter: save, ArrowLeft: () => go(-1),
  ArrowRight: () => go(1), Escape: () => zoom(false) };

function handleKey(key) {
  const action = ACTIONS[key];
  if (action) action();
}

function onKey(event) {
  const typing = event.target === $("comment");
  if (typing) {
    if (event.key === "Escape") $("comment").blur();
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); save(); }
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  if (!(key in ACTIONS)) return;
  event.preventDefault();
  if (state.busy) { if (state.queue.length < 20) state.queue.push(key); } else handleKey(key);
}

async function start() {
  for (const button of document.querySelectorAll("[data-side]")) {
    button.addEventListener("click", () => { if (!state.busy) mark(button.dataset.side, button.dataset.value === "true"); });
  }
  for (const button of document.querySelectorAll("[data-better]")) {
    button.addEventListener("click", () => { if (!state.busy) pickBetter(button.dataset.better); });
  }
  $("save").addEventListener("click", save);
  $("cannot-judge").addEventListener("click", cannotJudge);
  $("prev").addEventListener("click", () => go(-1));
  $("next").addEventListener("click", () => go(1));
  $("comment").addEventListener("input", () => { state.acknowledged = false; });
  $("figure").addEventListener("click", () => zoom(true));
  $("zoom").addEventListener("click", () => zoom(false));
  document.addEventListener("keydown", onKey);
  window.addEventListener("beforeunload", (event) => { if (state.item && dirty()) event.preventDefault(); });
  const status = await api("/api/state");
  state.annotator = status.annotator;
  await load(Math.min(status.position, status.total - 1));
  document.body.dataset.ready = "true";
}

start().catch((err) => setStatus(`Could not load: ${err.message}`, true));
"""

LOGIN_JS = r"""
"use strict";
// The session is bound to a random value this origin keeps in localStorage (pages of other ports cannot read or
// write it) and the app's script sends with every API call.
function bind() {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  const value = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  localStorage.setItem("vital_annotate_binding", value);
  document.getElementById("binding").value = value;
}
document.getElementById("login").addEventListener("submit", bind);
// An invite link carries the key after '#': browsers never send that part to a server or put it in a Referer.
const key = new URLSearchParams(location.hash.slice(1)).get("key");
if (key) {
  history.replaceState(null, "", location.pathname + location.search);
  document.getElementById("key").value = key;
  bind();
  document.getElementById("login").submit();
}
"""
