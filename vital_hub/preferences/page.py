"""The annotation page: one self-contained HTML document and its stylesheet (the script is in page_js.py; no
CDN: works offline).

Text from items is only ever inserted with `textContent` (a small markdown subset is turned into DOM nodes,
never into HTML), and the page is served with a strict Content-Security-Policy, so an answer containing markup
cannot run script in a clinician's browser.
"""

import html

from vital_hub.preferences.page_js import APP_JS, LOGIN_JS

__all__ = ["APP_CSS", "APP_JS", "LOGIN_HTML", "LOGIN_JS", "logout_form", "page_html"]

SHORTCUTS = (
    ("1", "answer A acceptable"),
    ("2", "answer A not acceptable"),
    ("3", "answer B acceptable"),
    ("4", "answer B not acceptable"),
    ("A / B", "answer A / B is better (optional)"),
    ("N", "no preference"),
    ("U", "cannot judge: the figure is unavailable"),
    ("Z", "zoom the figure (click it too; Esc closes)"),
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
  __LOGOUT__
</header>
<div id="done-banner" hidden>All items are judged. Thank you! You can still go back and change a judgement.</div>
<main>
  <section class="figure">
    <div id="image-box"><img id="figure" alt="figure (click to zoom)" title="click to zoom">
      <div id="no-image" hidden><p id="no-image-text">Figure unavailable</p>
        <button id="cannot-judge">Cannot judge: figure unavailable <kbd>U</kbd></button>
        <p class="hint">You may still judge from the text; such judgements are kept out of the training pairs.</p>
      </div></div>
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
      <div id="answer-a" class="md"></div>
      <div class="marks">
        <button id="a-yes" data-side="a" data-value="true">Acceptable <kbd>1</kbd></button>
        <button id="a-no" data-side="a" data-value="false">Not acceptable <kbd>2</kbd></button>
      </div>
    </div>
    <div class="answer" id="card-b">
      <h3>Answer B</h3>
      <div id="answer-b" class="md"></div>
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
    <textarea id="comment" rows="3" maxlength="4000"
      placeholder="anything the other answers or the question got wrong"></textarea>
    <p id="warning" role="alert" hidden></p>
    <div class="nav">
      <button id="prev">◀ Previous <kbd>←</kbd></button>
      <button id="save" class="primary" disabled>Save &amp; next <kbd>Enter</kbd></button>
      <button id="next">Next ▶ <kbd>→</kbd></button>
    </div>
    <p id="status" role="status"></p>
  </section>
</main>
<div id="zoom" hidden><img id="zoomed" alt="figure, full size"></div>
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
#no-image p { color: #ddd; margin: 0; }
#no-image { padding: 28px 12px; }
#no-image .hint { font-size: 13px; color: #aab4bd; margin-top: 8px; }
#figure { cursor: zoom-in; }
#zoom { position: fixed; inset: 0; background: rgba(0,0,0,.92); overflow: auto; z-index: 10; cursor: zoom-out;
  text-align: center; }
#zoom img { max-width: none; margin: 20px auto; }
#warning { background: #fff4e6; border: 1px solid #f59f00; border-radius: 6px; padding: 6px 10px; margin: 8px 0; }
body[data-busy=true] { cursor: progress; }
body[data-busy=true] #save::after { content: " …"; }
.answer .md p { margin: 0 0 6px; white-space: pre-wrap; }
.answer .md ul, .answer .md ol { margin: 0 0 6px; padding-left: 22px; }
.answer .md code { background: #f1f3f5; padding: 0 3px; border-radius: 3px; }
header form { margin: 0; }
header .spacer { flex: 1; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e3e7eb; }
main.single { grid-template-columns: 1fr; }
@media (max-width: 900px) {
  main { grid-template-columns: 1fr; padding: 10px; }
  header { flex-wrap: wrap; }
  #figure { max-height: 70vh; }
}
#question { font-weight: 600; font-size: 16px; }
.answer { border: 2px solid #d5dbe1; border-radius: 8px; padding: 10px 12px; margin: 10px 0; }
.answer.yes { border-color: #2f9e44; background: #f2fbf4; }
.answer.no { border-color: #d9480f; background: #fff5f0; }
.answer.preferred { box-shadow: 0 0 0 3px #ffd43b; }
.answer > .md { margin: 0 0 8px; }
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

LOGIN_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in: clinician review</title>
<style>body{font:15px system-ui,sans-serif;background:#f4f6f8}main{max-width:420px;margin:60px auto;
background:#fff;padding:16px;border-radius:8px}h1{font-size:18px}.error{color:#c92a2a}</style></head>
<body><main>
<h1>Clinician review: sign in</h1>
<p>Open the invite link you were given, or paste its access key (the part after <code>#key=</code>).</p>
<form method="post" action="/login" id="login">
<input type="hidden" name="next" value="__NEXT__">
<input type="hidden" name="binding" id="binding">
<input type="password" name="key" id="key" autocomplete="off" autofocus style="width:100%;font:inherit;padding:6px">
<p><button type="submit">Sign in</button></p>
<p id="status" class="error">__MESSAGE__</p>
</form></main><script src="/static/login.js"></script></body></html>
"""


LOGOUT_FORM = (
    '<form method="post" action="/logout"><input type="hidden" name="csrf" value="__CSRF__">'
    '<button type="submit" id="logout">Sign out</button></form>'
)


def logout_form(csrf_token: str | None) -> str:
    """The sign-out button of a session: its form sends the session's CSRF token back (none without accounts)."""
    return LOGOUT_FORM.replace("__CSRF__", html.escape(csrf_token)) if csrf_token else ""


def page_html(csrf_token: str | None = None) -> str:
    """The page; with a session's CSRF token (accounts), a sign-out form that sends it back."""
    rows = "".join(f"<dt>{key}</dt><dd>{meaning}</dd>" for key, meaning in SHORTCUTS)
    return PAGE_HTML.replace("__SHORTCUTS__", rows).replace("__LOGOUT__", logout_form(csrf_token))
