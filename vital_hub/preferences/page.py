"""The annotation page: one self-contained HTML document, its stylesheet and its script (no CDN: works offline).

Text from items is only ever inserted with `textContent`, never as HTML, and the page is served with a strict
Content-Security-Policy, so an answer containing markup cannot run script in a clinician's browser.
"""

SHORTCUTS = (
    ("1", "answer A acceptable"),
    ("2", "answer A not acceptable"),
    ("3", "answer B acceptable"),
    ("4", "answer B not acceptable"),
    ("A / B", "answer A / B is better (optional)"),
    ("N", "no preference"),
    ("C", "write a comment (Esc leaves the box, Ctrl+Enter saves)"),
    ("Enter", "save and go to the next item"),
    ("← / →", "previous / next item"),
)

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>BioMed-VITAL clinician review</title>
<link rel="stylesheet" href="/static/app.css">
</head>
<body>
<header>
  <h1>Clinician review</h1>
  <span id="annotator" title="judgements are saved under this name"></span>
  <div class="progress"><div id="bar"></div></div>
  <span id="progress">loading…</span>
</header>
<div id="done-banner" hidden>All items are judged. Thank you! You can still go back and change a judgement.</div>
<main>
  <section class="figure">
    <div id="image-box"><img id="figure" alt="figure"><p id="no-image" hidden>Figure not available</p></div>
    <h2>Caption</h2>
    <p id="caption"></p>
    <h2>In-text mentions</h2>
    <ul id="mentions"></ul>
  </section>
  <section class="judge">
    <h2>Question</h2>
    <p id="question"></p>
    <div class="answer" id="card-a">
      <h3>Answer A</h3>
      <p id="answer-a"></p>
      <div class="marks">
        <button id="a-yes" data-side="a" data-value="true">Acceptable <kbd>1</kbd></button>
        <button id="a-no" data-side="a" data-value="false">Not acceptable <kbd>2</kbd></button>
      </div>
    </div>
    <div class="answer" id="card-b">
      <h3>Answer B</h3>
      <p id="answer-b"></p>
      <div class="marks">
        <button id="b-yes" data-side="b" data-value="true">Acceptable <kbd>3</kbd></button>
        <button id="b-no" data-side="b" data-value="false">Not acceptable <kbd>4</kbd></button>
      </div>
    </div>
    <div class="better">
      <span>Which is better? (optional)</span>
      <button id="better-a" data-better="a">A <kbd>A</kbd></button>
      <button id="better-b" data-better="b">B <kbd>B</kbd></button>
      <button id="better-none" data-better="">No preference <kbd>N</kbd></button>
    </div>
    <label for="comment">Comment (optional) <kbd>C</kbd></label>
    <textarea id="comment" rows="3" placeholder="anything the other answers or the question got wrong"></textarea>
    <div class="nav">
      <button id="prev">◀ Previous <kbd>←</kbd></button>
      <button id="save" class="primary" disabled>Save &amp; next <kbd>Enter</kbd></button>
      <button id="next">Next ▶ <kbd>→</kbd></button>
    </div>
    <p id="status" role="status"></p>
  </section>
</main>
<footer>
  <h2>Keyboard shortcuts</h2>
  <dl id="shortcuts">__SHORTCUTS__</dl>
  <p>Mark each answer acceptable or not acceptable; picking the better one and commenting are optional.
  Every judgement is saved on the server the moment you press Save.</p>
</footer>
<script src="/static/app.js"></script>
</body>
</html>
"""

APP_CSS = """
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, sans-serif; color: #1d2327; background: #f4f6f8; }
header { display: flex; align-items: center; gap: 16px; padding: 10px 20px; background: #12355b; color: #fff; }
header h1 { font-size: 18px; margin: 0; }
#annotator { background: #1f4f82; padding: 2px 10px; border-radius: 10px; }
.progress { flex: 1; height: 8px; background: #2b5a8a; border-radius: 4px; overflow: hidden; }
#bar { height: 100%; width: 0; background: #7bd389; }
#done-banner { background: #dff3e3; padding: 8px 20px; border-bottom: 1px solid #9dd3a8; }
main { display: grid; grid-template-columns: minmax(300px, 1fr) minmax(360px, 1fr); gap: 20px; padding: 16px 20px; }
section { background: #fff; border-radius: 8px; padding: 12px 16px; box-shadow: 0 1px 3px rgba(0,0,0,.12); }
h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .05em; color: #5b6670; margin: 12px 0 4px; }
h3 { margin: 0 0 6px; font-size: 15px; }
#image-box { text-align: center; background: #111; border-radius: 6px; min-height: 120px; }
#figure { max-width: 100%; max-height: 58vh; }
#no-image { color: #ddd; padding: 40px 0; margin: 0; }
#question { font-weight: 600; font-size: 16px; }
.answer { border: 2px solid #d5dbe1; border-radius: 8px; padding: 10px 12px; margin: 10px 0; }
.answer.yes { border-color: #2f9e44; background: #f2fbf4; }
.answer.no { border-color: #d9480f; background: #fff5f0; }
.answer.preferred { box-shadow: 0 0 0 3px #ffd43b; }
.answer p { white-space: pre-wrap; margin: 0 0 8px; }
button { font: inherit; padding: 5px 12px; border-radius: 6px; border: 1px solid #aab4bd; background: #fff;
  cursor: pointer; }
button.on { background: #12355b; color: #fff; border-color: #12355b; }
button.primary { background: #2f9e44; color: #fff; border-color: #2f9e44; }
button:disabled { opacity: .45; cursor: not-allowed; }
kbd { font-size: 11px; border: 1px solid #aab4bd; border-radius: 3px; padding: 0 4px; background: #f1f3f5;
  color: #333; }
.better { margin: 8px 0; display: flex; align-items: center; gap: 8px; }
textarea { width: 100%; font: inherit; margin-top: 4px; }
.nav { display: flex; justify-content: space-between; margin-top: 10px; }
#status { min-height: 1.4em; color: #2f9e44; }
#status.error { color: #c92a2a; }
footer { padding: 0 20px 20px; color: #5b6670; }
footer dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 0; }
footer dt { font-weight: 600; }
footer dd { margin: 0; }
"""

APP_JS = """
"use strict";
const params = new URLSearchParams(location.search);
const state = { annotator: params.get("annotator") || "", total: 0, done: 0, index: 0, item: null,
  marks: { a: null, b: null }, better: null, busy: false, ticket: 0 };
const $ = (id) => document.getElementById(id);

async function api(path, options) {
  const sep = path.includes("?") ? "&" : "?";
  const url = state.annotator ? `${path}${sep}annotator=${encodeURIComponent(state.annotator)}` : path;
  const response = await fetch(url, Object.assign({ credentials: "same-origin" }, options || {}));
  if (response.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search); }
  const body = await response.json().catch(() => ({ detail: `server answered ${response.status}` }));
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
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
  $("answer-a").textContent = item.answer_a;
  $("answer-b").textContent = item.answer_b;
  const figure = $("figure");
  figure.hidden = !state.hasImage;
  $("no-image").hidden = state.hasImage;
  if (state.hasImage) figure.src = `/api/image/${state.index}`; else figure.removeAttribute("src");
  renderMarks();
  showProgress();
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
  $("save").disabled = state.marks.a === null || state.marks.b === null || state.busy;
}

// While an item is being saved or loaded, input is dropped rather than applied to an item not yet on screen.
function setBusy(value) {
  state.busy = value;
  document.body.dataset.busy = String(value);
  renderMarks();
}

async function load(index) {
  const ticket = ++state.ticket;
  setBusy(true);
  try {
    const body = await api(`/api/item/${index}`);
    if (ticket !== state.ticket) return;
    Object.assign(state, { index: body.index, total: body.total, done: body.done, item: body.item,
      hasImage: body.has_image });
    const previous = body.judgement;
    state.marks = previous ? { a: previous.acceptable_a, b: previous.acceptable_b } : { a: null, b: null };
    state.better = previous ? previous.better : null;
    $("comment").value = previous ? previous.comment || "" : "";
    setStatus(previous ? "Judged before; saving again replaces the earlier judgement." : "");
    render();
  } finally {
    if (ticket === state.ticket) setBusy(false);
  }
}

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").classList.toggle("error", !!error);
}

function mark(side, value) { if (!state.busy) { state.marks[side] = value; renderMarks(); } }
function pickBetter(value) { if (!state.busy) { state.better = value || null; renderMarks(); } }

async function save() {
  if ($("save").disabled || state.busy) return;
  setBusy(true);
  let body;
  try {
    body = await api("/api/judgements", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ index: state.index, item_id: state.item.item_id, acceptable_a: state.marks.a,
        acceptable_b: state.marks.b, better: state.better, comment: $("comment").value }) });
  } catch (err) {
    setBusy(false);
    setStatus(`Not saved: ${err.message}`, true);
    return;
  }
  state.done = body.done;
  if (state.index + 1 < state.total) await load(state.index + 1); else setBusy(false);
  setStatus(`Saved item ${body.saved_index + 1}.`);
  showProgress();
}

function go(delta) {
  if (state.busy) return;
  const target = state.index + delta;
  if (target >= 0 && target < state.total) load(target);
}

function onKey(event) {
  const typing = event.target === $("comment");
  if (typing) {
    if (event.key === "Escape") $("comment").blur();
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); save(); }
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const actions = { "1": () => mark("a", true), "2": () => mark("a", false), "3": () => mark("b", true),
    "4": () => mark("b", false), a: () => pickBetter("a"), b: () => pickBetter("b"), n: () => pickBetter(null),
    c: () => $("comment").focus(), Enter: save, ArrowLeft: () => go(-1), ArrowRight: () => go(1) };
  const action = actions[event.key.length === 1 ? event.key.toLowerCase() : event.key];
  if (action) { event.preventDefault(); action(); }
}

async function start() {
  for (const button of document.querySelectorAll("[data-side]")) {
    button.addEventListener("click", () => mark(button.dataset.side, button.dataset.value === "true"));
  }
  for (const button of document.querySelectorAll("[data-better]")) {
    button.addEventListener("click", () => pickBetter(button.dataset.better));
  }
  $("save").addEventListener("click", save);
  $("prev").addEventListener("click", () => go(-1));
  $("next").addEventListener("click", () => go(1));
  document.addEventListener("keydown", onKey);
  const status = await api("/api/state");
  state.annotator = status.annotator;
  await load(Math.min(status.position, status.total - 1));
  document.body.dataset.ready = "true";
}

start().catch((err) => setStatus(`Could not load: ${err.message}`, true));
"""

LOGIN_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in: clinician review</title>
<style>body{font:15px system-ui,sans-serif;background:#f4f6f8}main{max-width:420px;margin:60px auto;
background:#fff;padding:16px;border-radius:8px}h1{font-size:18px}.error{color:#c92a2a}</style></head>
<body><main>
<h1>Clinician review: sign in</h1>
<p>Enter the access token you were given.</p>
<form method="post" action="/login">
<input type="hidden" name="next" value="__NEXT__">
<input type="password" name="token" id="token" autofocus style="width:100%;font:inherit;padding:6px">
<p><button type="submit">Sign in</button></p>
<p id="status" class="error">__MESSAGE__</p>
</form></main></body></html>
"""


def page_html() -> str:
    rows = "".join(f"<dt>{key}</dt><dd>{meaning}</dd>" for key, meaning in SHORTCUTS)
    return PAGE_HTML.replace("__SHORTCUTS__", rows)
