"""The playground (`GET /` of `charrnn serve`) in a real browser, and the pieces behind it over plain HTTP.

Headless Chromium from the system's packages (Debian's `chromium`; .ci/run installs it), driven by Playwright
with that executable: the browser tests skip, saying why, only where no chromium can be found. The models are two
tiny runs trained on a text of HTML (so the model writes `<`, `>`, `&` and quotes): "html" (20 steps) and
"more" (30 steps, the same corpus), served together by one `--watch` server; a second server has an API key.
Every browser test fails on a console error or an uncaught exception in the page.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import TINY_TRAIN, charrnn_cmd, cli_env, cli_start, wait_for_line

import charrnn
from charrnn.generation.heatmap import HEAT_COLOURS, UNKNOWN_COLOURS, heat_level

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

KEY = "s3cret-key"
LN2 = math.log(2)
HTML_WORDS = [
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "<b>", "</b>", "<i>x</i>", "&amp;",
    "'", '"', '<p class="x">', "</p>", "<script>alert(1)</script>", "<img src=x onerror=alert(1)>",
]  # fmt: skip


def html_text(lines: int = 300) -> str:
    import random

    rng = random.Random(3)
    return "\n".join(" ".join(rng.choice(HTML_WORDS) for _ in range(8)) for _ in range(lines)) + "\n"


class Server:
    """`charrnn serve ARGS --port 0` in a subprocess (tests/test_serve.py's pattern): its stderr read all along."""

    def __init__(self, args, cwd) -> None:
        cmd = charrnn_cmd("serve", *args, "--port", "0", "--device", "cpu")
        self.proc = subprocess.Popen(
            cmd, cwd=cwd, env=cli_env(cwd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self.reader: threading.Thread | None = None

    def started(self) -> Server:
        self.lines = wait_for_line(self.proc, lambda line: line.startswith("listening on "), timeout=90)
        self.url = self.lines[-1].split()[-1]
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)
        self.reader.start()
        return self

    def get(self, path: str, key: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(self.url + path, headers=headers, timeout=30)

    def model(self, name: str, key: str | None = None) -> dict:
        return next(m for m in self.get("/v1/models", key).json()["data"] if m["id"] == name)

    def active(self) -> int:
        text = self.get("/metrics").text
        return sum(int(n) for n in re.findall(r"^charrnn_active_streams\{[^}]*\} (\d+)$", text, re.M))

    def stop(self) -> str:
        """SIGTERM; the server's stdout, which must stay empty."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)
        return self.proc.stdout.read()


# ---- the runs and servers: trained and started in parallel, once for the module


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> SimpleNamespace:
    work = tmp_path_factory.mktemp("playground")
    corpus = work / "page.html"
    corpus.write_text(html_text(), encoding="utf-8")
    tiny = [*TINY_TRAIN, "--sample-length", "60"]
    procs = {
        name: cli_start(["train", corpus, "--run-dir", work / name, *tiny, "--max-steps", str(steps)], cwd=work)
        for name, steps in (("html", 20), ("more", 30))
    }
    for proc in procs.values():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    return SimpleNamespace(work=work, html=work / "html", more=work / "more")


@pytest.fixture(scope="module")
def servers(runs):
    served = runs.work / "served" / "html"  # a copy: the watch test replaces its best.pt
    shutil.copytree(runs.html, served)
    main = Server([served, runs.more, "--watch", "--max-tokens", "100000"], runs.work)
    keyed = Server([runs.html, "--api-key", KEY], runs.work)
    s = SimpleNamespace(main=main.started(), keyed=keyed.started(), served=served)
    yield s
    assert keyed.stop() == "" and main.stop() == ""


@pytest.fixture(scope="module")
def html_model(runs):
    return charrnn.load(runs.html, device="cpu")


# ---- the browser


def _chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'")
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium on PATH (apt-get install chromium): the playground's browser tests need one")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable)
        yield b
        b.close()


class Tab:
    """A page in a fresh browser context, recording console errors, uncaught exceptions, dialogs (an alert would
    be injected script) and every URL it asks for."""

    def __init__(self, browser, width: int = 1280, height: int = 800) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.page.on("dialog", lambda d: (self.errors.append(f"dialog: {d.message}"), d.dismiss()))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def open(self, url: str) -> Tab:
        self.page.goto(url)
        return self

    def wait(self, js: str, timeout: float = 15) -> None:
        """Until the function `js` is true in the page (a function, not a string to eval: the page's CSP forbids
        eval)."""
        self.page.wait_for_function(js, timeout=timeout * 1000)

    def text(self, selector: str) -> str:
        return self.page.eval_on_selector(selector, "e => e.textContent")

    def generate(self, prime: str, length: int, seed: str = "", wait: bool = True) -> str:
        p = self.page
        p.get_by_label("Prime").fill(prime)
        p.get_by_label("Length").fill(str(length))
        p.get_by_label("Seed").fill(seed)
        p.get_by_role("button", name="Generate").click()
        if wait:
            self.wait_done()
        return self.text("#output")

    def wait_done(self) -> None:
        self.wait("() => document.getElementById('stop').disabled && /characters/.test("
                  "document.getElementById('gen-status').textContent)", timeout=60)  # fmt: skip

    def close(self, allowed: tuple[str, ...] = ()) -> None:
        errors = [e for e in self.errors if not any(a in e for a in allowed)]
        self.context.close()
        assert errors == []


@pytest.fixture
def tab(browser, servers):
    t = Tab(browser).open(servers.main.url + "/")
    t.wait("() => document.getElementById('fact-steps') !== null")
    yield t
    t.close()
    own = servers.main.url
    assert all(u.startswith(own) or u.startswith("data:") for u in t.requests), t.requests  # no CDN, no font


# ---- generating


def test_output_grows_while_streaming_and_ends_at_the_length(tab, html_model):
    page = tab.page
    page.evaluate(
        """() => { window.seen = []; const out = document.getElementById('output');
        new MutationObserver(() => window.seen.push(out.textContent.length))
            .observe(out, {childList: true, characterData: true, subtree: true}); }"""
    )
    text = tab.generate("the <b>", 12000, seed="11")
    seen = page.evaluate("() => window.seen")
    growing = [n for n in seen if 0 < n < 12000]
    assert len(text) == 12000 and seen[-1] == 12000
    # It came in pieces, in order, as it streamed (at most an event every 50 ms: 12,000 characters take many).
    assert len(growing) >= 2 and growing == sorted(growing)
    assert text == html_model.generate("the <b>", length=12000, temperature=0.8, seed=11)
    assert "12000 characters" in tab.text("#gen-status")
    assert tab.text("#echo") == "the <b>"


def test_the_seed_shown_gives_the_same_text_again_and_ctrl_enter_generates(tab):
    page = tab.page
    page.get_by_label("Prime").fill("a ")
    page.get_by_label("Length").fill("400")
    page.get_by_label("Prime").press("Control+Enter")  # no seed given: the page draws one and shows it
    tab.wait_done()
    first, seed = tab.text("#output"), tab.text("#seed-value")
    assert len(first) == 400 and seed.isdigit()
    page.get_by_role("button", name="use this seed").click()
    assert page.get_by_label("Seed").input_value() == seed
    page.get_by_role("button", name="Generate").click()
    tab.wait_done()
    assert tab.text("#output") == first and tab.text("#seed-value") == seed
    page.get_by_label("Seed").fill("")
    again = tab.generate("a ", 400)  # the seed box emptied: a new seed, other text
    assert tab.text("#seed-value") != seed and again != first


def test_stop_ends_the_stream_and_the_server_frees_it(tab, servers):
    page = tab.page
    tab.generate("the ", 100000, seed="1", wait=False)
    tab.wait("() => document.getElementById('output').textContent.length > 200")
    assert servers.main.active() == 1
    page.get_by_role("button", name="Stop").click()
    tab.wait("() => /Stopped/.test(document.getElementById('gen-status').textContent)")
    stopped_at = len(tab.text("#output"))
    assert stopped_at < 100000 and page.get_by_role("button", name="Generate").is_enabled()
    deadline = time.monotonic() + 10
    while servers.main.active() != 0:  # the disconnect frees the stream at the scheduler's next step
        assert time.monotonic() < deadline, "the stopped stream still holds its place"
        time.sleep(0.05)
    time.sleep(0.2)
    assert len(tab.text("#output")) == stopped_at  # nothing more arrives


def test_bad_settings_are_one_sentence_and_nothing_is_sent(tab):
    tab.page.get_by_label("Temperature").fill("7")
    before = len(tab.requests)
    tab.generate("the ", 10, wait=False)
    assert tab.text("#gen-status") == "Temperature must be between 0 and 2."
    assert not any("/v1/completions" in u for u in tab.requests[before:])


# ---- markup in the model's text stays text


def test_markup_from_the_model_shows_as_text(tab):
    page = tab.page
    page.evaluate("() => { window.injected = false; }")
    text = tab.generate("<img src=x onerror=alert(1)> <b>", 2000, seed="5")
    assert "<" in text and ">" in text and "&" in text  # the model writes markup characters...
    assert page.eval_on_selector("#output", "e => e.children.length") == 0  # ...and they stay characters
    assert page.eval_on_selector("#echo", "e => e.children.length") == 0
    page.get_by_label("Text to score").fill('<img src=x onerror="window.injected = true"><script>alert(2)</script>')
    page.get_by_role("button", name="Score").click()
    tab.wait("() => document.querySelectorAll('#heat span').length > 0")
    assert page.evaluate("() => document.querySelectorAll('img, script:not([src]), #heat b, #samples b').length") == 0
    assert page.evaluate("() => window.injected") is False
    assert page.eval_on_selector_all("#samples pre", "es => es.every(e => e.children.length === 0)")
    assert page.eval_on_selector_all("#samples pre", "es => es.some(e => /[<>&]/.test(e.textContent))")


# ---- scoring


def test_score_colours_each_character_and_hover_shows_probabilities(tab, servers):
    page = tab.page
    text = 'the <b>quick</b> "fox" jumps €\nover & dog'  # € is not in the model's vocabulary
    page.get_by_label("Text to score").fill(text)
    page.get_by_role("button", name="Score").click()
    tab.wait("() => document.querySelectorAll('#heat span').length > 0")
    api = httpx.post(servers.main.url + "/v1/score", json={"model": "html", "text": text, "per_char": True}).json()
    classes = page.eval_on_selector_all("#heat span", "es => es.map(e => e.className.replace(/ ?(nl|cur)/g, ''))")
    expected = ["unk" if not r["known"] else f"h{heat_level(r['bits'])}" if heat_level(r["bits"]) else ""
                for r in api["per_char"]]  # fmt: skip
    assert classes == expected and len(classes) == len(text)
    assert f"{api['bits_per_char']:.3f} bits/char" in tab.text("#score-status")
    for k in {heat_level(r["bits"]) for r in api["per_char"] if r["known"]} - {0}:  # heatmap.py's colours
        colour = page.eval_on_selector(f"#heat span.h{k}", "e => getComputedStyle(e).backgroundColor")
        assert colour == _rgb(HEAT_COLOURS[k])
    euro = text.index("€")
    assert page.eval_on_selector(f'#heat span[data-i="{euro}"]', "e => getComputedStyle(e).backgroundColor") == _rgb(
        UNKNOWN_COLOURS[1]
    )
    page.locator('#heat span[data-i="5"]').hover()
    tip = page.locator("#tip")
    assert tip.is_visible()
    r = api["per_char"][5]
    assert f"p = {r['prob']:.3g}"[:7] in tip.text_content() and f"{r['bits']:.2f} bits" in tip.text_content()
    assert tip.locator("li").count() == 5 and f"{r['top'][0][1]:.3f}" in tip.locator("li").first.text_content()
    page.locator(f'#heat span[data-i="{euro}"]').hover()
    assert "unknown to the model" in tip.text_content()


def test_score_tooltip_follows_the_keyboard(tab):
    page = tab.page
    page.get_by_label("Text to score").fill("the fox")
    page.get_by_label("Text to score").press("Control+Enter")
    tab.wait("() => document.querySelectorAll('#heat span').length === 7")
    page.locator("#heat").focus()
    assert "first character" in page.locator("#tip").text_content()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert page.locator("#tip").text_content().startswith("“e”: p = ")
    assert page.locator("#heat span.cur").get_attribute("data-i") == "2"
    assert page.locator("#heat-live").text_content() == page.locator("#tip").text_content()  # read out too
    page.keyboard.press("Escape")
    assert not page.locator("#tip").is_visible()


def _rgb(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


# ---- the run, and the models


def test_the_curve_and_previews_of_the_run(tab, runs):
    page = tab.page
    rows = [json.loads(line) for line in (runs.html / "metrics.jsonl").read_text().splitlines()]
    previews = [json.loads(line) for line in (runs.html / "samples.jsonl").read_text().splitlines()]
    tab.wait("() => document.querySelector('#chart svg polyline.val') !== null")
    points = page.eval_on_selector("#chart polyline.val", "e => e.getAttribute('points').split(' ').length")
    assert points == len(rows) == 2 and page.locator("#chart polyline.train").count() == 1
    labels = page.eval_on_selector_all("#chart text", "es => es.map(e => e.textContent)")
    assert "nats/char" in labels and "bits/char" in labels
    assert f"{rows[-1]['val_loss'] / LN2:.3f} bits/char ({rows[-1]['val_loss']:.3f} nats)" in tab.text("#curve")
    assert page.locator("#samples li").count() == len(previews) == 2
    assert page.locator("#samples pre").first.text_content() == previews[0]["text"]
    assert page.locator("#samples h4").first.text_content().startswith(f"step {previews[0]['step']} ")


def test_the_model_picker_shows_each_models_facts(tab, servers, runs):
    page = tab.page
    picker = page.get_by_label("Model", exact=True)
    assert picker.is_visible() and picker.locator("option").all_text_contents() == ["html", "more"]
    picker.select_option("more")
    tab.wait("() => document.getElementById('fact-steps').textContent === '30'")
    more = servers.main.model("more")
    assert tab.text("#fact-layers") == "1" and tab.text("#fact-hidden") == "32"
    assert tab.text("#fact-vocab") == f"{more['vocab_size']} chars"
    assert tab.text("#fact-val") == f"{more['val_loss'] / LN2:.3f} bits/char"
    tab.wait("() => document.querySelector('#chart polyline.val').getAttribute('points').split(' ').length === 3")
    more_model = charrnn.load(runs.more, device="cpu")
    assert tab.generate("the ", 50, seed="2") == more_model.generate("the ", length=50, temperature=0.8, seed=2)


def test_the_page_is_readable_on_a_phone_and_every_control_is_labelled(browser, servers):
    t = Tab(browser, 375, 740).open(servers.main.url + "/")
    page = t.page
    t.wait("() => document.querySelector('#chart svg') !== null")
    t.generate("the <b>", 300, seed="3")
    page.get_by_label("Text to score").fill('the quick <b>brown</b> fox & "dog" jumps €')
    page.get_by_role("button", name="Score").click()
    t.wait("() => document.querySelectorAll('#heat span').length > 0")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 375  # no sideways scrolling
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
            .map(e => e.id || e.outerHTML)"""
    )
    assert unnamed == []
    for name in ("Prime", "Temperature", "Top-p", "Length", "Seed", "Text to score"):
        assert page.get_by_label(name).is_visible()
    page.locator('#heat span[data-i="30"]').click()  # a tap shows the tooltip, inside the screen
    box = page.locator("#tip").bounding_box()
    assert page.locator("#tip").is_visible() and box["x"] >= 0 and box["x"] + box["width"] <= 375
    assert page.eval_on_selector("#chart svg", "e => e.getAttribute('viewBox')").split()[2] == str(
        round(page.locator("#chart").bounding_box()["width"])
    )  # drawn at its width: the labels stay readable
    t.close()
    wide = Tab(browser, 1280, 800).open(servers.main.url + "/")
    wide.wait("() => document.querySelector('#chart svg') !== null")
    generate, run = (wide.page.locator(f"section.{name}").bounding_box() for name in ("generate", "run"))
    assert run["x"] > generate["x"] + generate["width"]  # two columns on a desktop
    wide.close()


# ---- the API key


def test_the_page_asks_for_the_key_once_and_keeps_it_in_the_tab(browser, servers):
    url = servers.keyed.url
    assert servers.keyed.get("/").status_code == 200  # the page holds no data: it loads without the key
    t = Tab(browser).open(url + "/")
    page = t.page
    key_box = page.get_by_label("API key")
    assert key_box.is_visible() and key_box.get_attribute("type") == "password"
    page.get_by_role("button", name="Generate").click()
    assert t.text("#gen-status") == "Give the API key first."
    key_box.fill("wrong")
    page.get_by_role("button", name="Use key").click()
    t.wait("() => /refused/.test(document.getElementById('key-why').textContent)")  # a 401 asks again
    assert key_box.is_visible()
    key_box.fill(KEY)
    page.get_by_role("button", name="Use key").click()
    t.wait("() => document.getElementById('fact-steps') !== null")
    assert not key_box.is_visible() and tab_storage(page) == ({"charrnn-api-key": KEY}, {})
    assert len(t.generate("the ", 100, seed="4")) == 100
    page.reload()  # the same tab: the key is kept, not asked again
    t.wait("() => document.getElementById('fact-steps') !== null")
    assert not key_box.is_visible()
    t.close(allowed=("401",))  # the wrong key's refusal is a failed load the browser logs
    other = Tab(browser).open(url + "/")  # another tab has no key
    assert other.page.get_by_label("API key").is_visible()
    other.close()


def tab_storage(page) -> tuple[dict, dict]:
    return tuple(page.evaluate("() => [{...sessionStorage}, {...localStorage}]"))


# ---- plain HTTP: the page's files, the run endpoint


def test_the_page_and_its_files_are_served_with_security_headers(servers):
    for path, kind in (("/", "text/html"), ("/static/playground.js", "text/javascript"),
                       ("/static/playground.css", "text/css")):  # fmt: skip
        r = servers.keyed.get(path)  # no key needed: they hold no data
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert r.headers["x-content-type-options"] == "nosniff"
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    keyed, main = servers.keyed.get("/").text, servers.main.get("/").text
    assert 'data-auth="key"' in keyed and 'data-auth="none"' in main  # the page asks for a key before any 401
    assert 'data-watch="no"' in keyed and 'data-watch="yes"' in main  # and polls /v1/models only under --watch
    assert servers.main.get("/static/../app.py").status_code == 404
    assert servers.main.get("/static/index.html").status_code == 404  # only the page's own names
    js = servers.main.get("/static/playground.js").text
    assert "innerHTML" not in js and "eval(" not in js and "http://" not in js.replace("http://www.w3.org/2000/svg", "")


def test_run_endpoint_shape_auth_and_unknown_models(servers, runs):
    r = servers.main.get("/v1/models/more/run")
    assert r.status_code == 200
    body = r.json()
    rows = [json.loads(line) for line in (runs.more / "metrics.jsonl").read_text().splitlines()]
    assert body["object"] == "run" and body["model"] == "more" and body["has_run"] is True
    assert [m["step"] for m in body["metrics"]] == [r["step"] for r in rows] == [10, 20, 30]
    assert body["metrics"][-1]["val_loss"] == rows[-1]["val_loss"]
    assert set(body["metrics"][0]) == {"step", "train_loss", "val_loss", "elapsed_s"}
    assert [s["step"] for s in body["samples"]] == [10, 20, 30]
    assert set(body["samples"][0]) == {"step", "val_loss", "temperature", "prime", "text"}
    assert body["skipped_lines"] == 0 and body["thinned"] is False and body["truncated"] is False
    missing = servers.main.get("/v1/models/nothing/run")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert servers.keyed.get("/v1/models/html/run").status_code == 401
    assert servers.keyed.get("/v1/models/html/run", "wrong").status_code == 401
    assert servers.keyed.get("/v1/models/html/run", KEY).json()["metrics"][-1]["step"] == 20
    with open(servers.served / "metrics.jsonl", "a", encoding="utf-8") as f:  # damage, and a run writing a line
        f.write('{"step": "x"}\n\x00\x01 not json\n{"step": 40, "train_loss": 1.0, "val_l')
    damaged = servers.main.get("/v1/models/html/run").json()
    assert damaged["skipped_lines"] == 3 and [m["step"] for m in damaged["metrics"]] == [10, 20]


def test_run_info_survives_torn_corrupt_resumed_and_huge_files(tmp_path, monkeypatch):
    from charrnn.serve import run_info as ri

    ckpt = tmp_path / "best.pt"
    assert ri.run_info(ckpt) == {"object": "run", "has_run": False, "metrics": [], "samples": [], "skipped_lines": 0,
                                 "thinned": False, "truncated": False}  # fmt: skip
    row = lambda step, val=1.0: json.dumps({"step": step, "train_loss": val + 0.1, "val_loss": val, "lr": 1e-3})  # noqa: E731
    lines = [
        row(10, 2.0), "{not json", row(20, 1.5), '{"step": 25, "val_loss": "x"}', '{"step": 26, "val_loss": 1e300}',
        "[1, 2]", '{"step": true}', row(30, 1.2), row(20, 1.4),  # a resume from step 10 evaluates 20 again
        row(30, 1.1), "", "x" * (ri.MAX_LINE_BYTES + 10), row(40, 1.0), '{"step": 50, "val_lo',  # torn: training
    ]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines), encoding="utf-8")
    (tmp_path / "samples.jsonl").write_bytes(
        b'{"step": 10, "val_loss": null, "text": "<b>&amp;", "prime": ""}\n\xff\xfe\n{"step": 20, "text": 5}\n'
        + json.dumps({"step": 30, "val_loss": 1.1, "text": "x" * 5000, "prime": None, "temperature": 0.8}).encode()
    )
    info = ri.run_info(ckpt)
    assert [(m["step"], m["val_loss"]) for m in info["metrics"]] == [(10, 2.0), (20, 1.4), (30, 1.1), (40, 1.0)]
    assert info["skipped_lines"] == 6 + 1 + 2  # metrics: 6 unusable and 1 too long; samples: 2
    assert [s["step"] for s in info["samples"]] == [10, 30]
    assert info["samples"][0]["text"] == "<b>&amp;" and len(info["samples"][1]["text"]) == ri.MAX_SAMPLE_CHARS
    # Many rows are thinned, evenly, keeping the first and the newest; a huge file is read from its tail only.
    (tmp_path / "metrics.jsonl").write_text("\n".join(row(s) for s in range(1, 10_001)) + "\n", encoding="utf-8")
    info = ri.run_info(ckpt)
    steps = [m["step"] for m in info["metrics"]]
    assert ri.MAX_POINTS // 2 <= len(steps) <= ri.MAX_POINTS and steps[0] == 1 and steps[-1] == 10_000
    gaps = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    assert info["thinned"] and min(gaps) > 0 and max(gaps) <= 32
    monkeypatch.setattr(ri, "MAX_READ_BYTES", 10_000)
    info = ri.run_info(ckpt)
    assert info["truncated"] and info["metrics"][-1]["step"] == 10_000
    assert info["skipped_lines"] == 2  # samples.jsonl's two, as before: the line the cut fell in is not counted
    assert info["metrics"][0]["step"] > 9_000  # the tail, starting at a whole line
    (tmp_path / "metrics.jsonl").unlink()
    (tmp_path / "metrics.jsonl").mkdir()  # not a file at all
    assert ri.run_info(ckpt)["metrics"] == []


# ---- --watch


class FakeScheduler:
    def __init__(self) -> None:
        self.swapped: list = []

    def swap(self, model):
        from concurrent.futures import Future

        self.swapped.append(model)
        f: Future = Future()
        f.set_result(None)
        return f


def test_watcher_reloads_a_new_checkpoint_and_keeps_the_old_on_a_bad_one(runs, tmp_path):
    from charrnn.serve.watch import Watcher

    run = tmp_path / "run"
    shutil.copytree(runs.html, run)
    old = charrnn.load(run, device="cpu")
    scheduler, lines = FakeScheduler(), []
    state = SimpleNamespace(models={"run": old}, schedulers={"run": scheduler}, created={"run": 0}, stopping=False)
    w = Watcher(state, lines.append)
    assert w.check("run") is False and lines == []  # nothing changed
    _replace(run / "best.pt", b"PK\x03\x04 half a checkpoint")
    assert w.check("run") is False and state.models["run"] is old and scheduler.swapped == []
    assert len(lines) == 1 and "did not load" in lines[0] and "still serving step 20" in lines[0]
    assert w.check("run") is False and len(lines) == 1  # that version is not tried again
    corpus = tmp_path / "other.txt"
    corpus.write_text(html_text(20).replace("o", "0"), encoding="utf-8")  # no "o" in its vocabulary
    other = charrnn.train(corpus, run_dir=tmp_path / "other", max_steps=1, hidden_size=8,
                          num_layers=1, seq_len=8, batch_size=2, device="cpu", sample_length=0)  # fmt: skip
    _replace(run / "best.pt", Path(other.checkpoint).read_bytes())
    assert w.check("run") is False and "another vocabulary" in lines[-1] and state.models["run"] is old
    _replace(run / "best.pt", (runs.more / "best.pt").read_bytes())
    assert w.check("run") is True and scheduler.swapped == [state.models["run"]]
    assert state.models["run"].info["step"] == 30 and state.created["run"] == int((run / "best.pt").stat().st_mtime)
    assert "reloaded" in lines[-1] and "step 30" in lines[-1]


def test_watcher_loads_on_a_thread_that_ends(runs, tmp_path, monkeypatch):
    """The reload runs torch on neither the watcher's thread nor the caller's, but on one that is gone once the
    model is loaded (a live thread that has run torch halves the scheduler's speed: serve/watch.py)."""
    from charrnn.api import Model
    from charrnn.errors import CheckpointError
    from charrnn.serve.watch import Watcher, load_apart

    run = tmp_path / "run"
    shutil.copytree(runs.html, run)
    loaders: list[threading.Thread] = []
    real = Model.from_file.__func__

    def recording(cls, *args, **kw):
        loaders.append(threading.current_thread())
        return real(cls, *args, **kw)

    state = SimpleNamespace(models={"run": charrnn.load(run, device="cpu")}, schedulers={"run": FakeScheduler()},
                            created={"run": 0}, stopping=False)  # fmt: skip
    monkeypatch.setattr(Model, "from_file", classmethod(recording))
    w = Watcher(state, [].append)
    _replace(run / "best.pt", (runs.more / "best.pt").read_bytes())
    assert w.check("run") is True and state.models["run"].info["step"] == 30
    (loader,) = loaders
    assert loader.name.startswith("charrnn-load") and loader is not threading.current_thread()
    assert not loader.is_alive()
    with pytest.raises(CheckpointError, match="does not exist"):
        load_apart(tmp_path / "missing.pt", "cpu", "fp32")  # its exception comes back to the caller


def _replace(path: Path, data: bytes) -> None:
    """Write `data` over `path` as training does: a temporary file moved over it in one step."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_watch_picks_up_a_new_best_and_the_page_shows_it(tab, servers, runs):
    """Last of the module: it replaces the main server's html model (its best.pt) with the 30-step one."""
    main = servers.main
    assert main.model("html")["steps"] == 20 and tab.text("#fact-steps") == "20"
    before = tab.text("#fact-val")
    _replace(servers.served / "best.pt", b"not a checkpoint at all")
    deadline = time.monotonic() + 10
    while not any("did not load" in line for line in main.lines):
        assert time.monotonic() < deadline, "".join(main.lines[-5:])
        time.sleep(0.1)
    assert main.model("html")["steps"] == 20 and main.get("/health").status_code == 200  # the old one serves on
    _replace(servers.served / "best.pt", (runs.more / "best.pt").read_bytes())
    while main.model("html")["steps"] != 30:
        assert time.monotonic() < deadline + 10, "".join(main.lines[-5:])
        time.sleep(0.1)
    tab.wait("() => document.getElementById('fact-steps').textContent === '30'", timeout=10)  # the page polls
    tab.wait("() => document.getElementById('run-status').textContent.startsWith('Reloaded: step 30.')")
    assert tab.text("#fact-val") == f"{main.model('html')['val_loss'] / LN2:.3f} bits/char" != before
    more = charrnn.load(runs.more, device="cpu")
    assert tab.generate("the ", 200, seed="8") == more.generate("the ", length=200, temperature=0.8, seed=8)
