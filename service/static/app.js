// enet-serve demo page: plain JavaScript, no build step, every request to this server only.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "enet-serve-api-key";
const MAX_AUTO_RETRIES = 3;
const STAGES = [  // Server-Timing entries, in the order they happen, with their colours in the timing bar
  ["decode", "Decode", "#60a5fa"],
  ["queue", "Queue", "#fbbf24"],
  ["infer", "Inference", "#4f46e5"],
  ["encode", "Encode", "#a78bfa"],
];
const NETWORK_COLOR = "#cbd5e1";

const state = {
  config: null,
  models: [],
  model: null,        // the selected model's GET /models entry
  apiKey: sessionStorage.getItem(KEY_STORAGE) || "",
  view: "overlay",
  opacity: 0.55,
  input: null,        // {blob, name} of the last image sent
  shown: null,        // what the canvas shows: {bitmap, classMap, width, height}
  highlight: null,    // class index picked in the legend
  pinned: false,
  retries: 0,
  retryTimer: null,
  video: null,        // the running video stream
  busy: false,
};

class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

// -- HTTP ------------------------------------------------------------------------------------------
// The stream's key as a WebSocket subprotocol: "enet-serve.key." + base64url(UTF-8 key), unpadded (a token).
function keyProtocol(key) {
  const bytes = new TextEncoder().encode(key);
  const b64 = btoa(String.fromCharCode(...bytes));
  return "enet-serve.key." + b64.replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function authHeaders() {
  return state.apiKey ? { "X-API-Key": state.apiKey } : {};
}

async function request(path, options = {}) {
  const headers = { ...authHeaders(), ...(options.headers || {}) };
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (e) {
    throw new ApiError(0, "network", `The server could not be reached (${e.message}).`);
  }
  if (!response.ok) {
    let code = `http_${response.status}`;
    let message = response.statusText || "request failed";
    try {
      const body = await response.json();
      if (body && body.error) ({ code, message } = body.error);
    } catch (_) { /* not JSON */ }
    const retry = response.headers.get("Retry-After");
    throw new ApiError(response.status, code, message, retry ? Number(retry) : null);
  }
  return response;
}

function parseServerTiming(header) {
  const out = {};
  for (const entry of (header || "").split(",")) {
    const [name, ...params] = entry.trim().split(";");
    const dur = params.map((p) => p.trim()).find((p) => p.startsWith("dur="));
    if (name && dur) out[name.trim()] = Number(dur.slice(4));
  }
  return out;
}

// -- start-up ----------------------------------------------------------------------------------------
async function init() {
  bindControls();
  try {
    state.config = await (await request("/ui/config")).json();
  } catch (e) {
    showError(e);
    return;
  }
  $("version").textContent = state.config.version;
  $("keybar").hidden = !state.config.api_key_required;
  $("api-key").value = state.apiKey;
  renderSamples();
  checkHealth();
  await loadModels();
}

async function checkHealth() {
  const pill = $("health");
  try {
    const response = await fetch("/health/ready");
    const ready = response.ok;
    pill.textContent = ready ? "Ready" : "Warming up";
    pill.className = "pill " + (ready ? "ok" : "warn");
    if (!ready) setTimeout(checkHealth, 2000);
  } catch (_) {
    pill.textContent = "Unreachable";
    pill.className = "pill bad";
    setTimeout(checkHealth, 5000);
  }
}

async function loadModels() {
  const select = $("model");
  try {
    const body = await (await request("/models")).json();
    state.models = body.models;
    select.innerHTML = "";
    for (const [task, title] of [["segment", "Segmentation"], ["classify", "Classification"]]) {
      const models = body.models.filter((m) => m.task === task);
      if (!models.length) continue;
      const group = document.createElement("optgroup");
      group.label = title;
      for (const m of models) group.append(new Option(`${m.name} (${m.architecture})`, m.name));
      select.append(group);
    }
    select.disabled = false;
    const first = body.defaults.segment || body.defaults.classify || body.models[0]?.name;
    if (first) selectModel(first, false);
    $("key-state").textContent = state.apiKey ? "key accepted" : "";
  } catch (e) {
    select.innerHTML = "<option>no models</option>";
    showError(e);
  }
}

function selectModel(name, rerun = true) {
  state.model = state.models.find((m) => m.name === name) || null;
  $("model").value = name;
  const m = state.model;
  if (!m) return;
  const input = m.input || {};
  $("model-info").textContent = [
    `${m.task === "segment" ? "segmentation" : "classification"}, ${classCount(m)} classes`,
    `${Number(m.parameters).toLocaleString("en")} parameters, ${m.gflops} GFLOPs`,
    `input ${input.width}×${input.height}`,
    `${m.provider.replace("ExecutionProvider", "")} · ${m.precision}`,
  ].join(" · ");
  const segment = m.task === "segment";
  $("view-card").hidden = !segment;
  $("classes-title").textContent = segment ? "Classes" : "Top 5";
  updateVideoTab();
  renderSamples();
  clearResult();
  if (rerun && state.input) run(state.input.blob, state.input.name);
}

function classCount(m) {
  return m.labels.length - (m.void && m.void.index < m.labels.length ? 1 : 0);
}

// The canvas keeps the image's own size; on screen it fills the stage (small images scaled up, crisp).
function fitCanvas() {
  const canvas = $("canvas");
  if (!canvas.width || $("canvas-wrap").classList.contains("empty")) return;
  const room = $("canvas-wrap").clientWidth;
  const scale = Math.min(room / canvas.width, (window.innerHeight * 0.72) / canvas.height);
  canvas.style.width = `${Math.floor(canvas.width * scale)}px`;
  canvas.classList.toggle("pixelated", scale > 3);
}

// -- input ------------------------------------------------------------------------------------------
function renderSamples() {
  const box = $("samples");
  box.innerHTML = "";
  if (!state.config) return;
  const task = state.model ? state.model.task : "segment";
  for (const sample of state.config.samples.filter((s) => s.task === task)) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "sample" + (sample.task === "classify" ? " pixelated" : "");
    button.title = sample.source;
    button.dataset.file = sample.file;
    const img = document.createElement("img");
    img.src = sample.url;
    img.alt = sample.caption;
    const caption = document.createElement("span");
    caption.textContent = sample.caption;
    button.append(img, caption);
    button.addEventListener("click", async () => {
      for (const b of box.querySelectorAll(".sample")) b.classList.toggle("active", b === button);
      const blob = await (await fetch(sample.url)).blob();
      run(blob, sample.file);
    });
    box.append(button);
  }
}

function takeFile(file) {
  if (!file) return;
  for (const b of $("samples").querySelectorAll(".sample")) b.classList.remove("active");
  run(file, file.name);
}

// -- one image -----------------------------------------------------------------------------------------
async function run(blob, name) {
  if (!state.model) return;
  stopVideo();
  clearRetry();
  state.input = { blob, name };
  const m = state.model;
  const segment = m.task === "segment";
  const path = segment
    ? `/segment?model=${encodeURIComponent(m.name)}&format=json`
    : `/classify?model=${encodeURIComponent(m.name)}&top_k=5`;
  setBusy(true);
  const t0 = performance.now();
  try {
    const response = await request(path, {
      method: "POST",
      body: blob,
      headers: { "Content-Type": blob.type || "application/octet-stream" },
    });
    const body = await response.json();
    const roundTrip = performance.now() - t0;
    const timing = parseServerTiming(response.headers.get("Server-Timing"));
    hideError();
    state.retries = 0;
    if (segment) await showSegmentation(body, blob);
    else await showClassification(body, blob);
    showTimings(roundTrip, timing);
    $("result-meta").textContent = `${name} · ${roundTrip.toFixed(0)} ms round trip`;
  } catch (e) {
    showError(e, () => run(blob, name));
  } finally {
    setBusy(false);
  }
}

async function decodePng(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return createImageBitmap(new Blob([bytes], { type: "image/png" }));
}

// Class index per pixel from the mask's colours (the palette PNG's indices are not visible to a canvas).
function classMapOf(maskBitmap, model) {
  const { width, height } = maskBitmap;
  const scratch = new OffscreenCanvas(width, height);
  const ctx = scratch.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(maskBitmap, 0, 0);
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const byColour = new Map();
  model.colors.forEach((c, i) => byColour.set((c[0] << 16) | (c[1] << 8) | c[2], i));
  const map = new Uint8Array(width * height).fill(255);  // 255: void or unknown
  for (let p = 0, i = 0; p < map.length; p++, i += 4) {
    const index = byColour.get((rgba[i] << 16) | (rgba[i + 1] << 8) | rgba[i + 2]);
    if (index !== undefined) map[p] = index;
  }
  return map;
}

async function showSegmentation(body, blob) {
  const [image, mask] = await Promise.all([createImageBitmap(blob), decodePng(body.mask_png)]);
  const model = state.models.find((m) => m.name === body.model) || state.model;
  state.shown = { bitmap: image, classMap: classMapOf(mask, model), width: body.width, height: body.height, model };
  state.highlight = null;
  state.pinned = false;
  render();
  renderLegend(body.class_fractions, model);
  $("result-title").textContent = `Segmentation · ${body.model}`;
}

async function showClassification(body, blob) {
  const image = await createImageBitmap(blob);
  const canvas = $("canvas");
  canvas.width = image.width;
  canvas.height = image.height;
  canvas.getContext("2d").drawImage(image, 0, 0);
  $("canvas-wrap").classList.remove("empty");
  fitCanvas();
  state.shown = null;
  $("legend").hidden = true;
  const bars = $("bars");
  bars.hidden = false;
  bars.innerHTML = "";
  for (const p of body.predictions) {
    const li = document.createElement("li");
    li.className = "bar";
    li.innerHTML = `<div class="bar-head"><span class="name"></span><span class="pct"></span></div>
      <div class="track"><div class="fill"></div></div>`;
    li.querySelector(".name").textContent = p.label;
    li.querySelector(".pct").textContent = `${(p.score * 100).toFixed(1)} %`;
    li.querySelector(".fill").style.width = `${Math.max(0, Math.min(1, p.score)) * 100}%`;
    bars.append(li);
  }
  $("result-title").textContent = `Classification · ${body.model}`;
}

// Draw what state.shown holds in the chosen view, the picked class (if any) singled out.
function render() {
  const shown = state.shown;
  if (!shown) return;
  const { width, height, classMap, model } = shown;
  const canvas = $("canvas");
  canvas.width = width;
  canvas.height = height;
  $("canvas-wrap").classList.remove("empty");
  fitCanvas();
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, width, height);
  const voidIndex = model.void ? model.void.index : -1;
  if (state.view !== "mask") ctx.drawImage(shown.bitmap, 0, 0, width, height);
  if (state.view === "image") return;
  const overlay = state.view === "overlay";
  const alpha = overlay ? Math.round(state.opacity * 255) : 255;
  const pick = state.highlight;
  const pixels = new ImageData(width, height);
  const out = pixels.data;
  for (let p = 0, i = 0; p < classMap.length; p++, i += 4) {
    const c = classMap[p];
    const unlabelled = c === 255 || c === voidIndex;
    const colour = c === 255 ? [0, 0, 0] : model.colors[c];
    let a = unlabelled && overlay ? 0 : alpha;  // void stays see-through over the image
    if (pick !== null && c !== pick) a = overlay ? 0 : 60;
    out[i] = colour[0];
    out[i + 1] = colour[1];
    out[i + 2] = colour[2];
    out[i + 3] = a;
  }
  if (overlay && pick !== null) {  // dim the rest of the picture around the picked class
    ctx.fillStyle = "rgba(15, 23, 42, 0.45)";
    ctx.fillRect(0, 0, width, height);
  }
  const layer = new OffscreenCanvas(width, height);
  layer.getContext("2d").putImageData(pixels, 0, 0);
  if (!overlay) {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, width, height);
  }
  ctx.drawImage(layer, 0, 0);
}

function renderLegend(fractions, model) {
  $("bars").hidden = true;
  const legend = $("legend");
  legend.hidden = false;
  legend.innerHTML = "";
  const voidIndex = model.void ? model.void.index : -1;
  const rows = model.labels
    .map((label, index) => ({ label, index, fraction: fractions[label] || 0 }))
    .filter((row) => row.index !== voidIndex || row.fraction > 0);  // "Unlabelled" only when present
  rows.sort((a, b) => b.fraction - a.fraction);
  for (const row of rows) {
    const colour = model.colors[row.index] || [0, 0, 0];
    const li = document.createElement("li");
    li.className = row.fraction > 0 ? "" : "zero";
    li.dataset.index = String(row.index);
    li.tabIndex = 0;
    li.innerHTML = `<span class="swatch"></span><span class="name"></span><span class="pct"></span>
      <span class="track"><span class="fill"></span></span>`;
    const css = `rgb(${colour[0]}, ${colour[1]}, ${colour[2]})`;
    li.querySelector(".swatch").style.background = css;
    li.querySelector(".name").textContent = row.label;
    li.querySelector(".pct").textContent = formatShare(row.fraction);
    const fill = li.querySelector(".fill");
    fill.style.width = `${row.fraction * 100}%`;
    fill.style.background = css;
    const pick = () => { if (!state.pinned) setHighlight(row.index); };
    li.addEventListener("mouseenter", pick);
    li.addEventListener("focus", pick);
    li.addEventListener("mouseleave", () => { if (!state.pinned) setHighlight(null); });
    li.addEventListener("click", () => {
      state.pinned = !(state.pinned && state.highlight === row.index);
      setHighlight(state.pinned ? row.index : null);
    });
    legend.append(li);
  }
}

function formatShare(fraction) {
  if (fraction === 0) return "–";
  if (fraction < 0.001) return "<0.1 %";
  return `${(fraction * 100).toFixed(1)} %`;
}

function setHighlight(index) {
  state.highlight = index;
  for (const li of $("legend").children) li.classList.toggle("active", Number(li.dataset.index) === index);
  render();
}

function showTimings(roundTrip, timing, extra = []) {
  const rows = [["Round trip", roundTrip, "total"]];
  const bar = $("timing-bar");
  bar.innerHTML = "";
  let server = 0;
  for (const [key, label, colour] of STAGES) {
    if (timing[key] === undefined) continue;
    rows.push([label, timing[key], colour]);
    server += timing[key];
  }
  if (timing.total !== undefined) {
    rows.push(["Server total", timing.total, ""]);
    rows.push(["Network & browser", Math.max(0, roundTrip - timing.total), NETWORK_COLOR]);
  }
  for (const [key, , colour] of STAGES) {
    if (timing[key] === undefined) continue;
    const span = document.createElement("span");
    span.style.width = `${(timing[key] / roundTrip) * 100}%`;
    span.style.background = colour;
    span.title = key;
    bar.append(span);
  }
  if (!server && timing.total !== undefined) {  // only the server's total (the video stream's latency_ms)
    const span = document.createElement("span");
    span.style.width = `${Math.min(1, timing.total / roundTrip) * 100}%`;
    span.style.background = STAGES[2][2];
    bar.append(span);
    server = timing.total;
  }
  if (timing.total !== undefined && roundTrip > server) {
    const span = document.createElement("span");
    span.style.width = `${((roundTrip - server) / roundTrip) * 100}%`;
    span.style.background = NETWORK_COLOR;
    bar.append(span);
  }
  const list = $("timings");
  list.innerHTML = "";
  for (const [label, ms, colour] of [...rows, ...extra]) {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    if (colour === "total") { dt.className = dd.className = "total"; }
    else if (colour) { const i = document.createElement("i"); i.style.background = colour; dt.append(i); }
    dt.append(label);
    dd.textContent = typeof ms === "number" ? `${ms < 10 ? ms.toFixed(1) : ms.toFixed(0)} ms` : ms;
    list.append(dt, dd);
  }
}

function clearResult() {
  state.shown = null;
  $("canvas-wrap").classList.add("empty");
  $("legend").innerHTML = "";
  $("bars").innerHTML = "";
  $("result-meta").textContent = "";
  $("result-title").textContent = state.model && state.model.task === "classify"
    ? "Classify an image" : "Segment a street scene in one click";
}

function setBusy(busy) {
  state.busy = busy;
  $("busy").hidden = !busy;
}

// -- errors --------------------------------------------------------------------------------------------
const TITLES = {
  0: "The server could not be reached",
  400: "The image could not be read",
  401: "An API key is needed",
  404: "Not found",
  408: "The upload was too slow",
  413: "The image is too large",
  415: "This file type is not supported",
  422: "The request was not accepted",
  500: "The server failed",
  503: "The server is busy",
  504: "The request waited too long",
};

const RETRYABLE = new Set([0, 500, 503, 504]);

function showError(error, retry) {
  clearRetry();
  const status = error instanceof ApiError ? error.status : -1;
  const box = $("error");
  box.hidden = false;
  box.className = "alert" + (status === 503 ? " warn" : "");
  box.dataset.status = String(status);
  $("error-title").textContent = `${TITLES[status] || "Something went wrong"}${status > 0 ? ` (${status})` : ""}`;
  let message = error.message;
  if (status === 401) {
    $("keybar").hidden = false;
    $("api-key").focus();
    message += " Enter the key above.";
  }
  if (!RETRYABLE.has(status)) retry = null;  // the same request would fail the same way
  const retryButton = $("error-retry");
  retryButton.hidden = !retry;
  retryButton.onclick = retry ? () => { clearRetry(); hideError(); retry(); } : null;
  if (status === 503 && retry && state.retries < MAX_AUTO_RETRIES) {
    // the server said when to come back (Retry-After): do so, a few times, counting down
    let left = Math.max(1, error.retryAfter || 1);
    state.retries += 1;
    const tick = () => {
      $("error-message").textContent = `${message} Retrying in ${left} s…`;
      if (left-- <= 0) { clearRetry(); hideError(); retry(); return; }
      state.retryTimer = setTimeout(tick, 1000);
    };
    tick();
    return;
  }
  $("error-message").textContent = message;
}

function clearRetry() {
  if (state.retryTimer) clearTimeout(state.retryTimer);
  state.retryTimer = null;
}

function hideError() {
  $("error").hidden = true;
}

// -- video through the /segment/stream WebSocket --------------------------------------------------------
function updateVideoTab() {
  const tab = $("tab-video");
  const segment = state.model && state.model.task === "segment";
  const stream = state.config && state.config.stream;
  $("video-note").textContent = !stream
    ? "Video needs the /segment/stream WebSocket route, which this server does not have."
    : "Frames go to the server over a WebSocket; when it falls behind, the newest frame wins.";
  $("webcam").disabled = $("video-file").disabled = !stream || !segment;
  $("video-file-label").classList.toggle("disabled", !stream || !segment);
  tab.disabled = !segment;
  tab.title = segment ? "" : "video is for segmentation models";
  if (!segment) showTab("image");
}

function showTab(which) {
  $("tab-image").setAttribute("aria-selected", String(which === "image"));
  $("tab-video").setAttribute("aria-selected", String(which === "video"));
  $("image-source").hidden = which !== "image";
  $("video-source").hidden = which !== "video";
  if (which === "image") stopVideo();
}

async function startVideo(source) {
  stopVideo();
  hideError();
  const m = state.model;
  const video = document.createElement("video");
  video.muted = true;
  video.playsInline = true;
  video.loop = true;
  if (source instanceof MediaStream) video.srcObject = source;
  else video.src = URL.createObjectURL(source);
  try {
    await video.play();
  } catch (e) {
    showError(new ApiError(-1, "video", `The video cannot be played here (${e.message}).`));
    return;
  }
  const query = new URLSearchParams({ model: m.name, format: "png" });
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  // a browser cannot set headers on a WebSocket: the key goes in a subprotocol (never in a URL, which gets logged)
  const protocols = state.apiKey ? [keyProtocol(state.apiKey)] : [];
  const ws = new WebSocket(`${scheme}//${location.host}${state.config.stream}?${query}`, protocols);
  ws.binaryType = "blob";
  const v = {
    video, ws, source, model: m, next: 0, answered: 0, dropped: 0, frames: new Map(),
    header: null, started: performance.now(), stopped: false, sending: false,
  };
  state.video = v;
  $("video-stop").hidden = false;
  $("result-title").textContent = `Live segmentation · ${m.name}`;
  ws.onopen = () => pump(v);
  ws.onmessage = (event) => onStreamMessage(v, event.data);
  ws.onclose = (event) => {
    if (v.stopped) return;
    stopVideo();
    const why = event.reason || (event.code === 1006 ? "the connection failed" : `code ${event.code}`);
    showError(new ApiError(-1, "stream", `The video stream closed: ${why}.`));
  };
}

// Capture frames while fewer than two are on their way: the server keeps only the newest anyway.
async function pump(v) {
  if (v.sending || v.stopped) return;
  v.sending = true;
  try {
    while (!v.stopped && v.ws.readyState === WebSocket.OPEN && v.frames.size < 2) {
      const { videoWidth: w, videoHeight: h } = v.video;
      if (!w || !h) { await new Promise((r) => setTimeout(r, 50)); continue; }
      const scale = Math.min(1, 640 / w);
      const canvas = new OffscreenCanvas(Math.round(w * scale), Math.round(h * scale));
      canvas.getContext("2d").drawImage(v.video, 0, 0, canvas.width, canvas.height);
      const [jpeg, bitmap] = await Promise.all([
        canvas.convertToBlob({ type: "image/jpeg", quality: 0.85 }),
        createImageBitmap(canvas),
      ]);
      if (v.stopped) return;
      v.frames.set(v.next, { bitmap, sent: performance.now() });
      v.next += 1;
      v.ws.send(jpeg);
    }
  } finally {
    v.sending = false;
  }
}

async function onStreamMessage(v, data) {
  if (v.stopped) return;
  if (typeof data === "string") {
    const message = JSON.parse(data);
    if (message.error) {
      showError(new ApiError(-1, message.error.code, message.error.message));
      return;
    }
    for (const k of message.dropped || []) forget(v, k, true);
    v.header = message;
    return;
  }
  const header = v.header;
  v.header = null;
  if (!header) return;
  const frame = v.frames.get(header.frame);
  for (const k of [...v.frames.keys()]) if (k < header.frame) forget(v, k, false);
  v.frames.delete(header.frame);
  if (frame) {
    const mask = await createImageBitmap(data);
    if (state.shown && state.shown.bitmap !== frame.bitmap) state.shown.bitmap.close?.();
    state.shown = {
      bitmap: frame.bitmap, classMap: classMapOf(mask, v.model), width: header.width, height: header.height,
      model: v.model,
    };
    render();
    if (!$("legend").matches(":hover")) renderLegend(header.class_fractions, v.model);
    v.answered += 1;
    const seconds = (performance.now() - v.started) / 1000;
    showTimings(performance.now() - frame.sent, { total: header.latency_ms }, [
      ["Frames answered", `${v.answered}`],
      ["Frames dropped", `${v.dropped}`],
      ["Frames per second", `${(v.answered / seconds).toFixed(1)}`],
    ]);
    $("result-meta").textContent = `frame ${header.frame} · ${header.width}×${header.height}`;
  }
  pump(v);
}

function forget(v, k, dropped) {
  const frame = v.frames.get(k);
  if (!frame) return;
  frame.bitmap.close();
  v.frames.delete(k);
  if (dropped) v.dropped += 1;
}

function stopVideo() {
  const v = state.video;
  if (!v) return;
  v.stopped = true;
  state.video = null;
  try { v.ws.close(); } catch (_) { /* already closed */ }
  v.video.pause();
  if (v.source instanceof MediaStream) for (const track of v.source.getTracks()) track.stop();
  else URL.revokeObjectURL(v.video.src);
  $("video-stop").hidden = true;
}

// -- wiring ---------------------------------------------------------------------------------------------
function bindControls() {
  $("model").addEventListener("change", (e) => selectModel(e.target.value));
  $("file").addEventListener("change", (e) => { takeFile(e.target.files[0]); e.target.value = ""; });
  const zone = $("dropzone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    takeFile(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    const file = [...(e.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file) takeFile(file);
  });
  for (const button of $("view").querySelectorAll("button")) {
    button.addEventListener("click", () => {
      state.view = button.dataset.view;
      for (const b of $("view").querySelectorAll("button")) b.setAttribute("aria-pressed", String(b === button));
      render();
    });
  }
  $("opacity").addEventListener("input", (e) => {
    state.opacity = Number(e.target.value) / 100;
    $("opacity-value").textContent = `${e.target.value} %`;
    if (state.view === "overlay") render();
  });
  $("key-save").addEventListener("click", () => {
    state.apiKey = $("api-key").value.trim();
    sessionStorage.setItem(KEY_STORAGE, state.apiKey);
    hideError();
    loadModels();
  });
  $("api-key").addEventListener("keydown", (e) => { if (e.key === "Enter") $("key-save").click(); });
  $("error-close").addEventListener("click", () => { clearRetry(); hideError(); });
  $("tab-image").addEventListener("click", () => showTab("image"));
  $("tab-video").addEventListener("click", () => showTab("video"));
  $("video-file").addEventListener("change", (e) => {
    if (e.target.files[0]) startVideo(e.target.files[0]);
    e.target.value = "";
  });
  $("webcam").addEventListener("click", async () => {
    try {
      startVideo(await navigator.mediaDevices.getUserMedia({ video: true, audio: false }));
    } catch (e) {
      showError(new ApiError(-1, "webcam", `The webcam is not available (${e.message}).`));
    }
  });
  $("video-stop").addEventListener("click", stopVideo);
  window.addEventListener("resize", fitCanvas);
}

document.addEventListener("DOMContentLoaded", init);
