// The playground's script: plain JavaScript, no build step, no library. It only calls the server's own API.
//
// Every text that comes from a model or a user is put into the page with textContent / createTextNode, never
// as markup: a model trained on HTML writes "<script>" as eleven characters, not as an element. The page's
// Content-Security-Policy would block an injected script anyway; this keeps injected markup out too.
"use strict";

(() => {
  const LN2 = Math.log(2);
  const KEY_STORE = "charrnn-api-key"; // sessionStorage: this tab only, gone when it closes
  const POLL_MS = 3000; // /v1/models again: a --watch server may have reloaded the model
  const MAX_SEED = 2n ** 63n - 1n; // the server's seed range, 0 to 2^63 - 1 (JS numbers lose digits past 2^53)
  const HEAT_LEVELS = 7; // charrnn.generation.heatmap.HEAT_COLOURS: level k is k to k+1 bits, 7 is 7 or more
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  const state = {
    key: sessionStorage.getItem(KEY_STORE),
    needsKey: document.body.dataset.auth === "key",
    watched: document.body.dataset.watch === "yes", // the server may reload its models (--watch): poll them
    models: new Map(), // id -> the /v1/models entry
    model: null, // the id picked
    shown: null, // "step/val" of the model whose facts and run are on the page
    controller: null, // the generation in flight, for Stop
    heat: [], // the per_char records of the scored text
    metrics: [], // the run's evaluations, drawn again when the page is resized
    cur: -1, // the character the tooltip is about
    polling: null,
  };

  class AuthNeeded extends Error {}

  // ---- talking to the server

  async function api(path, options = {}) {
    const headers = { ...(options.headers || {}) };
    if (state.key) headers.Authorization = `Bearer ${state.key}`;
    const r = await fetch(path, { ...options, headers });
    if (r.status === 401) {
      askKey(state.key ? "The server refused that key; give its API key." : "This server needs an API key.");
      throw new AuthNeeded();
    }
    return r;
  }

  async function errorOf(r) {
    try {
      const body = await r.json();
      return (body.error && body.error.message) || `the server answered ${r.status}.`;
    } catch {
      return `the server answered ${r.status}.`;
    }
  }

  // Server-Sent Events from a fetch body: EventSource can neither POST nor send the key.
  async function* events(body, signal) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buf += value;
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          const data = block
            .split("\n")
            .filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(5).replace(/^ /, ""))
            .join("\n");
          if (data) yield data;
        }
      }
    } finally {
      if (!signal.aborted) reader.cancel().catch(() => {});
    }
  }

  function setStatus(id, text, error = false) {
    const el = $(id);
    el.textContent = text;
    el.classList.toggle("error", error);
  }

  function failed(id, e) {
    if (!(e instanceof AuthNeeded)) setStatus(id, `Failed: ${e.message}`, true);
  }

  // ---- the API key

  function askKey(why) {
    $("key-why").textContent = why;
    $("keyform").hidden = false;
    $("key").focus();
  }

  function useKey(event) {
    event.preventDefault();
    const key = $("key").value.trim();
    if (!key) return;
    state.key = key;
    sessionStorage.setItem(KEY_STORE, key);
    $("key").value = "";
    $("keyform").hidden = true;
    refresh(true);
  }

  // ---- models: the picker, their facts, polled for a --watch reload

  async function refresh(force = false) {
    try {
      const r = await api("/v1/models");
      if (!r.ok) return setStatus("run-status", await errorOf(r), true);
      const list = (await r.json()).data;
      state.models = new Map(list.map((m) => [m.id, m]));
      if (!state.models.has(state.model)) state.model = list.length ? list[0].id : null;
      renderPicker(list);
      const m = state.models.get(state.model);
      const now = m ? `${m.id}/${m.steps}/${m.val_loss}/${m.created}` : null;
      if (force || now !== state.shown) {
        const reloaded = state.shown !== null && m && state.shown.startsWith(`${m.id}/`);
        state.shown = now;
        renderFacts(m);
        await loadRun(reloaded);
      }
    } catch (e) {
      failed("run-status", e);
    }
  }

  function renderPicker(list) {
    const select = $("model");
    const ids = list.map((m) => m.id);
    if ([...select.options].map((o) => o.value).join("\n") !== ids.join("\n")) {
      select.replaceChildren(...ids.map((id) => new Option(id, id)));
    }
    select.value = state.model;
    $("model-pick").hidden = list.length < 2;
    $("model-one").hidden = list.length !== 1;
    $("model-one").textContent = list.length === 1 ? list[0].id : "";
  }

  function bits(nats) {
    return nats === null || nats === undefined ? null : nats / LN2;
  }

  function renderFacts(m) {
    const facts = $("facts");
    facts.replaceChildren();
    if (!m) return;
    const val = m.val_loss ?? m.best_val_loss;
    const rows = [
      ["type", m.model_type, "type"],
      ["layers", m.num_layers, "layers"],
      ["hidden", m.hidden_size, "hidden size"],
      ["vocab", m.vocab_size === undefined ? null : `${m.vocab_size} chars`, "vocabulary"],
      ["steps", m.steps, "steps"],
      ["val", val === null || val === undefined ? "not evaluated" : `${bits(val).toFixed(3)} bits/char`, "validation loss"],
    ];
    for (const [key, value, name] of rows) {
      const row = document.createElement("div");
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = name;
      dd.textContent = value === null || value === undefined ? "?" : String(value);
      dd.id = `fact-${key}`;
      row.append(dt, dd);
      facts.append(row);
    }
  }

  function poll() {
    clearTimeout(state.polling);
    state.polling = setTimeout(async () => {
      if (!document.hidden && $("keyform").hidden) await refresh();
      poll();
    }, POLL_MS);
  }

  // ---- generating

  function settings() {
    const number = (id) => Number($(id).value.trim() === "" ? NaN : $(id).value);
    const temperature = number("temperature");
    const topP = number("top-p");
    const length = number("length");
    if (!(temperature >= 0 && temperature <= 2)) throw new RangeError("Temperature must be between 0 and 2.");
    if (!(topP > 0 && topP <= 1)) throw new RangeError("Top-p must be above 0 and at most 1.");
    if (!(Number.isInteger(length) && length >= 1)) throw new RangeError("Length must be a whole number, 1 or more.");
    const given = $("seed").value.trim();
    if (given && !(/^\d{1,19}$/.test(given) && BigInt(given) <= MAX_SEED)) {
      throw new RangeError("Seed must be a whole number from 0 to 9223372036854775807, or empty for a random one.");
    }
    // A seed of our own when none is given, so the page can say which one it was.
    const seed = given || String(crypto.getRandomValues(new Uint32Array(1))[0] & 0x7fffffff);
    return { temperature, topP, length, seed: String(BigInt(seed)) };
  }

  function noModel(id) {
    if (!$("keyform").hidden) $("key").focus();
    setStatus(id, $("keyform").hidden ? "No model to ask yet: the server has not answered." : "Give the API key first.", true);
  }

  async function generate() {
    if (state.controller) return;
    if (!state.model) return noModel("gen-status");
    let s;
    try {
      s = settings();
    } catch (e) {
      return setStatus("gen-status", e.message, true);
    }
    const prime = $("prime").value;
    const request = { model: state.model, prompt: prime || "\n", max_tokens: s.length, temperature: s.temperature, stream: true };
    if (s.topP < 1) request.top_p = s.topP;
    // The seed goes in as its digits: a JS number would round a seed past 2^53.
    const body = `{"seed":${s.seed},${JSON.stringify(request).slice(1)}`;
    $("echo").textContent = prime;
    $("output").textContent = "";
    $("seed-value").textContent = s.seed;
    $("seed-used").hidden = false;
    const controller = new AbortController();
    state.controller = controller;
    busy(true);
    setStatus("gen-status", "Generating…");
    let got = 0;
    const started = performance.now();
    try {
      const r = await api("/v1/completions", {
        method: "POST", headers: { "Content-Type": "application/json" }, body, signal: controller.signal,
      });
      if (!r.ok) return setStatus("gen-status", await errorOf(r), true);
      let finish = null;
      for await (const data of events(r.body, controller.signal)) {
        if (data === "[DONE]") break;
        const choice = JSON.parse(data).choices[0];
        if (!choice) continue;
        if (choice.text) {
          $("output").append(choice.text);
          got += [...choice.text].length;
        }
        finish = choice.finish_reason || finish;
        setStatus("gen-status", `${got} characters…`);
      }
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      const why = finish === "abort" ? " (the server ended the stream)" : "";
      setStatus("gen-status", `${got} characters in ${seconds} s${why}.`, finish === "abort");
    } catch (e) {
      if (e.name === "AbortError") setStatus("gen-status", `Stopped after ${got} characters.`);
      else failed("gen-status", e);
    } finally {
      state.controller = null;
      busy(false);
    }
  }

  function busy(on) {
    $("generate").disabled = on;
    $("stop").disabled = !on;
    $("output").setAttribute("aria-busy", String(on));
  }

  function stop() {
    if (state.controller) state.controller.abort(); // the server frees the stream when the connection closes
  }

  // ---- scoring: the text coloured by surprise, a tooltip per character

  function level(r) {
    if (r.bits === null || !(r.bits >= 1)) return 0;
    return Math.min(HEAT_LEVELS, Math.floor(r.bits));
  }

  // As charrnn.generation.heatmap._visible: control characters as their Unicode pictures.
  function visible(ch) {
    const cp = ch.codePointAt(0);
    if (ch === "\n" || ch === "\t") return ch;
    if (ch === "\r") return "";
    if (cp < 0x20) return String.fromCodePoint(0x2400 + cp);
    if (cp === 0x7f) return "\u2421";
    if (cp >= 0x80 && cp < 0xa0) return "\ufffd";
    return ch;
  }

  function named(ch) {
    const names = { "\n": "newline ↵", " ": "space ␣", "\t": "tab ⇥" };
    return names[ch] || `“${visible(ch)}”`;
  }

  async function score() {
    const text = $("score-text").value;
    if (!text) return setStatus("score-status", "Paste a text to score first.", true);
    if (!state.model) return noModel("score-status");
    setStatus("score-status", "Scoring…");
    try {
      const r = await api("/v1/score", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ model: state.model, text, per_char: true }),
      });
      if (!r.ok) return setStatus("score-status", await errorOf(r), true);
      const b = await r.json();
      const rate = b.bits_per_char === null ? "nothing to score" : `${b.bits_per_char.toFixed(3)} bits/char`;
      const unknown = b.unknown ? `; ${b.unknown} unknown to the model (purple)` : "";
      setStatus("score-status", `${rate} over ${b.chars} characters${unknown}.`);
      renderHeat(b.per_char);
    } catch (e) {
      failed("score-status", e);
    }
  }

  function renderHeat(records) {
    state.heat = records;
    state.cur = -1;
    const frag = document.createDocumentFragment();
    records.forEach((r, i) => {
      const span = document.createElement("span");
      span.dataset.i = String(i);
      const k = level(r);
      if (!r.known) span.className = "unk";
      else if (k) span.className = `h${k}`;
      if (r.char === "\n") span.classList.add("nl");
      span.textContent = visible(r.char);
      frag.append(span);
    });
    $("heat").replaceChildren(frag);
    $("heat").hidden = false;
    renderLegend();
    hideTip();
  }

  function renderLegend() {
    const legend = $("legend");
    if (legend.childElementCount) return (legend.hidden = false);
    const item = (cls, text) => {
      const span = document.createElement("span");
      if (cls) span.className = cls;
      span.textContent = text;
      return span;
    };
    legend.append(document.createTextNode("surprise:"), item("", "< 1 bit"));
    for (let k = 1; k <= HEAT_LEVELS; k++) legend.append(item(`h${k}`, k === HEAT_LEVELS ? `${k}+` : `${k}`));
    legend.append(document.createTextNode("bits"), item("unk", "unknown"));
    legend.hidden = false;
  }

  function describe(r) {
    if (!r.known) return `${named(r.char)}: unknown to the model, counted as ${r.bits.toFixed(2)} bits`;
    if (r.bits === null) return `${named(r.char)}: the first character, context only`;
    return `${named(r.char)}: p = ${r.prob.toPrecision(3)}, ${r.bits.toFixed(2)} bits`;
  }

  function showTip(i) {
    const r = state.heat[i];
    const span = $("heat").querySelector(`span[data-i="${i}"]`);
    if (!r || !span) return;
    const old = $("heat").querySelector("span.cur");
    if (old) old.classList.remove("cur");
    span.classList.add("cur");
    state.cur = i;
    const tip = $("tip");
    const head = document.createElement("div");
    head.textContent = describe(r);
    tip.replaceChildren(head);
    if (r.top.length) {
      const label = document.createElement("div");
      label.textContent = "the model's top choices:";
      const list = document.createElement("ol");
      for (const [ch, p] of r.top) {
        const li = document.createElement("li");
        li.textContent = `${named(ch)} ${p.toFixed(3)}`;
        list.append(li);
      }
      tip.append(label, list);
    }
    $("heat-live").textContent = tip.textContent;
    tip.hidden = false;
    place(tip, span.getBoundingClientRect());
  }

  function place(tip, at) {
    const w = tip.offsetWidth;
    const h = tip.offsetHeight;
    const left = Math.max(8, Math.min(at.left, window.innerWidth - w - 8));
    const below = at.bottom + 6;
    tip.style.left = `${left}px`;
    tip.style.top = `${below + h > window.innerHeight - 8 ? Math.max(8, at.top - h - 6) : below}px`;
  }

  function hideTip() {
    $("tip").hidden = true;
    const old = $("heat").querySelector("span.cur");
    if (old) old.classList.remove("cur");
  }

  function heatKeys(e) {
    const n = state.heat.length;
    if (!n) return;
    const moves = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 };
    let i = state.cur;
    if (e.key in moves) i = Math.max(0, Math.min(n - 1, (i < 0 ? 0 : i + moves[e.key])));
    else if (e.key === "Home") i = 0;
    else if (e.key === "End") i = n - 1;
    else if (e.key === "Escape") return hideTip();
    else return;
    e.preventDefault();
    showTip(i);
    $("heat").querySelector(`span[data-i="${i}"]`).scrollIntoView({ block: "nearest" });
  }

  function spanIndex(e) {
    const span = e.target.closest && e.target.closest("span[data-i]");
    return span ? Number(span.dataset.i) : -1;
  }

  // ---- the run: the loss curve and the previews

  async function loadRun(reloaded = false) {
    const name = state.model;
    if (!name) return;
    try {
      const r = await api(`/v1/models/${encodeURIComponent(name)}/run`);
      if (!r.ok) return setStatus("run-status", await errorOf(r), true);
      const run = await r.json();
      if (name !== state.model) return; // another model was picked meanwhile
      const m = state.models.get(name);
      const note = reloaded && m ? `Reloaded: step ${m.steps}. ` : "";
      if (!run.has_run) setStatus("run-status", `${note}This model's checkpoint is not in a run directory: no curve.`);
      else if (!run.metrics.length) setStatus("run-status", `${note}No evaluation yet.`);
      else setStatus("run-status", `${note}${run.metrics.length} evaluations${run.thinned ? " (thinned)" : ""}.`);
      state.metrics = run.metrics;
      drawCurve(run.metrics);
      renderSamples(run.samples);
    } catch (e) {
      failed("run-status", e);
    }
  }

  function ticks(lo, hi, count) {
    const raw = (hi - lo) / count;
    const mag = 10 ** Math.floor(Math.log10(raw));
    const f = raw / mag;
    const step = (f >= 7.5 ? 10 : f >= 3.5 ? 5 : f >= 1.5 ? 2 : 1) * mag;
    const digits = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-6; v += step) out.push([v, v.toFixed(digits)]);
    return out;
  }

  function el(name, attrs = {}, text = null) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== null) node.textContent = text;
    return node;
  }

  function drawCurve(rows) {
    const points = rows.filter((r) => r.train_loss !== null || r.val_loss !== null);
    $("curve").hidden = !points.length;
    if (!points.length) return $("chart").replaceChildren();
    // Drawn at the chart's own width, so its 11 px labels stay 11 px on a phone as on a desktop.
    const W = Math.max(280, Math.round($("chart").clientWidth || 600));
    const H = Math.round(Math.min(280, Math.max(200, W * 0.5)));
    const L = 52, R = 52, T = 12, B = 38;
    const values = points.flatMap((r) => [r.train_loss, r.val_loss]).filter((v) => v !== null);
    let [ylo, yhi] = [Math.min(...values), Math.max(...values)];
    const pad = (yhi - ylo) * 0.06 || 0.1;
    [ylo, yhi] = [Math.max(0, ylo - pad), yhi + pad];
    let [xlo, xhi] = [points[0].step, points[points.length - 1].step];
    if (xhi === xlo) [xlo, xhi] = [xlo - 1, xhi + 1];
    const x = (s) => L + ((s - xlo) / (xhi - xlo)) * (W - L - R);
    const y = (v) => T + (1 - (v - ylo) / (yhi - ylo)) * (H - T - B);
    const last = points.filter((r) => r.val_loss !== null).pop();
    const summary = last ? `validation ${bits(last.val_loss).toFixed(3)} bits/char at step ${last.step}` : "no validation yet";
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `Loss curve: ${summary}` });
    svg.append(el("title", {}, `Train and validation loss by step; ${summary}`));
    for (const [v, label] of ticks(ylo, yhi, 5)) {
      svg.append(el("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid-line" }));
      svg.append(el("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, label));
    }
    for (const [b, label] of ticks(ylo / LN2, yhi / LN2, 5)) {
      svg.append(el("text", { x: W - R + 6, y: y(b * LN2) + 4 }, label));
    }
    for (const [s, label] of ticks(xlo, xhi, W < 450 ? 3 : 5)) {
      if (Number.isInteger(s)) svg.append(el("text", { x: x(s), y: H - B + 16, "text-anchor": "middle" }, label));
    }
    svg.append(el("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
    svg.append(el("line", { x1: W - R, x2: W - R, y1: T, y2: H - B, class: "axis" }));
    svg.append(el("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
    svg.append(el("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, "step"));
    svg.append(el("text", { x: 12, y: (T + H - B) / 2, "text-anchor": "middle", transform: `rotate(-90 12 ${(T + H - B) / 2})` }, "nats/char"));
    svg.append(el("text", { x: W - 10, y: (T + H - B) / 2, "text-anchor": "middle", transform: `rotate(90 ${W - 10} ${(T + H - B) / 2})` }, "bits/char"));
    for (const [key, cls] of [["train_loss", "train"], ["val_loss", "val"]]) {
      const line = points.filter((r) => r[key] !== null).map((r) => `${x(r.step).toFixed(1)},${y(r[key]).toFixed(1)}`);
      if (line.length) svg.append(el("polyline", { points: line.join(" "), class: cls }));
    }
    if (last) svg.append(el("circle", { cx: x(last.step), cy: y(last.val_loss), r: 3.5, class: "dot" }));
    $("chart").replaceChildren(svg);
    caption(last);
  }

  function caption(last) {
    const key = (cls, text) => {
      const span = document.createElement("span");
      span.className = cls;
      span.textContent = text;
      return span;
    };
    const parts = [key("key-val", "━ validation"), document.createTextNode("  "), key("key-train", "╍ train")];
    if (last) {
      const nats = last.val_loss.toFixed(3);
      parts.push(document.createTextNode(` · step ${last.step}: ${bits(last.val_loss).toFixed(3)} bits/char (${nats} nats)`));
    }
    $("curve-caption").replaceChildren(...parts);
  }

  function renderSamples(samples) {
    $("samples-title").hidden = !samples.length;
    $("samples").replaceChildren(
      ...samples.map((s) => {
        const li = document.createElement("li");
        const head = document.createElement("h4");
        const val = s.val_loss === null ? "" : ` · val ${bits(s.val_loss).toFixed(3)} bits/char`;
        head.textContent = `step ${s.step}${val}`;
        const text = document.createElement("pre");
        text.className = "text";
        text.textContent = s.text;
        li.append(head, text);
        return li;
      }),
    );
    $("samples").scrollTop = $("samples").scrollHeight; // the newest preview in view; the earlier ones above it
  }

  // ---- wiring

  function ctrlEnter(action) {
    return (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        action();
      }
    };
  }

  function wire() {
    $("genform").addEventListener("submit", (e) => { e.preventDefault(); generate(); });
    $("genform").addEventListener("keydown", ctrlEnter(generate));
    $("stop").addEventListener("click", stop);
    $("reuse-seed").addEventListener("click", () => { $("seed").value = $("seed-value").textContent; });
    $("scoreform").addEventListener("submit", (e) => { e.preventDefault(); score(); });
    $("scoreform").addEventListener("keydown", ctrlEnter(score));
    $("keyform").addEventListener("submit", useKey);
    $("model").addEventListener("change", () => { state.model = $("model").value; refresh(true); });
    const heat = $("heat");
    heat.addEventListener("mouseover", (e) => { const i = spanIndex(e); if (i >= 0) showTip(i); });
    heat.addEventListener("click", (e) => { const i = spanIndex(e); if (i >= 0) showTip(i); });
    heat.addEventListener("mouseleave", () => { if (document.activeElement !== heat) hideTip(); });
    heat.addEventListener("focus", () => showTip(state.cur < 0 ? 0 : state.cur));
    heat.addEventListener("blur", hideTip);
    heat.addEventListener("keydown", heatKeys);
    const follow = () => { if (!$("tip").hidden && state.cur >= 0) showTip(state.cur); };
    heat.addEventListener("scroll", follow, { passive: true });
    window.addEventListener("scroll", follow, { passive: true });
    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => drawCurve(state.metrics), 150);
    });
  }

  wire();
  if (state.needsKey && !state.key) askKey("This server needs an API key.");
  else refresh(true);
  if (state.watched) poll();
})();
