// FaceLLM chat page: plain JavaScript, no libraries (works offline). Talks to POST /v1/faces/query with
// stream: true and reads the server-sent events from the fetch body (EventSource cannot POST).
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"];
const state = {
  conversationId: null,   // from the first response; follow-ups send it back
  photos: [],             // the conversation's photos in order: {id ("image_1"; null until sent), name, uri, img, faces}
  shown: -1,              // index in photos of the one on the canvas
  image: null,            // HTMLImageElement on the canvas
  faces: [],              // per-face results of the photo on the canvas
  busy: false,
  reading: new Set(),     // photo files still being read: a question asked meanwhile waits for them
};
const IMAGE_ERRORS = ["invalid_image", "image_too_large", "too_many_images"];

async function loadConfig() {
  try {
    const cfg = await (await fetch("/web/config.json")).json();
    $("model-info").textContent = `agent: ${cfg.query_model === "engine" ? "FaceLLM (" + cfg.model + ")" : "rule-routed tools"}`;
    if (cfg.auth_required) {
      $("key-box").hidden = false;
      $("api-key").value = sessionStorage.getItem("facellm-key") || "";
    }
    state.maxBytes = cfg.max_image_bytes;
  } catch (e) { /* the page still works; errors show when asking */ }
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  bubble.textContent = text;
  div.appendChild(bubble);
  $("log").appendChild(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

// A file cut short decodes half-way in a browser (the rest grey) without any error: check that its format's end
// marker is there before showing it. Returns what is wrong, or null.
function damaged(bytes) {
  const n = bytes.length;
  const has = (sig, at) => sig.every((b, i) => bytes[at + i] === b);
  const tailHas = (sig, span) => {
    for (let i = n - sig.length; i >= Math.max(0, n - span); i--) if (has(sig, i)) return true;
    return false;
  };
  if (n < 8) return "the file is empty or far too short";
  if (has([0xff, 0xd8], 0)) return tailHas([0xff, 0xd9], 4096) ? null : "the JPEG file is cut short or damaged";
  if (has([0x89, 0x50, 0x4e, 0x47], 0)) return tailHas([0x49, 0x45, 0x4e, 0x44], 64) ? null : "the PNG file is cut short or damaged";
  if (has([0x47, 0x49, 0x46, 0x38], 0)) return tailHas([0x3b], 16) ? null : "the GIF file is cut short or damaged";
  if (has([0x52, 0x49, 0x46, 0x46], 0) && has([0x57, 0x45, 0x42, 0x50], 8)) {
    const size = (bytes[4] | (bytes[5] << 8) | (bytes[6] << 16) | (bytes[7] << 24)) >>> 0;
    return size + 8 <= n ? null : "the WebP file is cut short or damaged";
  }
  return null;  // another format: the browser's decoder decides
}

function asDataUri(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error("the file could not be read"));
    reader.readAsDataURL(file);
  });
}

async function decoded(uri) {
  const img = new Image();
  img.src = uri;
  try { await img.decode(); } catch (e) { throw new Error("the browser cannot decode it"); }
  if (!img.naturalWidth || !img.naturalHeight) throw new Error("it has no pixels");
  return img;
}

async function readFile(file) {
  if (!file) return;
  const fail = (why) => addMessage("error", `${file.name} was not added: ${why}. The conversation's photos are unchanged.`);
  if (!file.type.startsWith("image/")) { fail("it is not an image file"); return; }
  if (state.maxBytes && file.size > state.maxBytes) { fail(`it is larger than the server's limit of ${state.maxBytes} bytes`); return; }
  let img, uri;
  try {
    const problem = damaged(new Uint8Array(await file.arrayBuffer()));
    if (problem) throw new Error(problem);
    uri = await asDataUri(file);
    img = await decoded(uri);
  } catch (err) {
    fail(err.message);
    return;
  }
  state.photos.push({ id: null, name: file.name, uri, img, faces: [] });
  show(state.photos.length - 1);
  $("question").focus();
}

// Reads a chosen or dropped file, remembering the read until it ends so that ask() can wait for it.
function addFile(file) {
  const reading = readFile(file).finally(() => state.reading.delete(reading));
  state.reading.add(reading);
  return reading;
}

// Photos dropped since the last question: sent with the next one.
const pendingPhotos = () => state.photos.filter((p) => !p.id);

function show(i) {
  const p = state.photos[i];
  if (!p) {
    Object.assign(state, { shown: -1, image: null, faces: [] });
    $("canvas").hidden = true;
    $("drop-hint").hidden = false;
    $("legend").textContent = "";
    delete $("canvas").dataset.image;
  } else {
    Object.assign(state, { shown: i, image: p.img, faces: p.faces });
    $("drop-hint").hidden = true;
    $("canvas").hidden = false;
    $("canvas").dataset.image = p.id || "new";
    draw();
    legend();
  }
  renderStrip();
}

function renderStrip() {
  const strip = $("strip");
  strip.textContent = "";
  state.photos.forEach((p, i) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = (i === state.shown ? "current " : "") + (p.id ? "" : "pending");
    b.dataset.imageId = p.id || "new";
    b.title = `${p.id || "not sent yet"}: ${p.name}`;
    const thumb = document.createElement("img");
    thumb.src = p.uri;
    thumb.alt = p.name;
    const cap = document.createElement("div");
    cap.textContent = p.id || "new";
    b.append(thumb, cap);
    b.addEventListener("click", () => show(i));
    strip.appendChild(b);
  });
  $("add-more").hidden = state.photos.length === 0;
}

function draw() {
  const canvas = $("canvas"), img = state.image;
  if (!img) return;
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const s = Math.max(1, Math.max(img.naturalWidth, img.naturalHeight) / 640);  // line widths readable at any size
  const showLm = $("show-landmarks").checked;
  state.faces.forEach((f, i) => {
    const c = COLORS[i % COLORS.length];
    const [x1, y1, x2, y2] = f.box;
    ctx.lineWidth = 2.5 * s;
    ctx.strokeStyle = c;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    if (showLm) {
      ctx.fillStyle = f.landmarks.length > 100 ? "rgba(255,255,255,0.45)" : "rgba(255,255,255,0.85)";  // the 478-point mesh is dense
      for (const [x, y] of f.landmarks) { ctx.beginPath(); ctx.arc(x, y, (f.landmarks.length > 100 ? 0.7 : 1.2) * s, 0, 2 * Math.PI); ctx.fill(); }
      ctx.fillStyle = c;
      for (const [x, y] of f.kpts5) { ctx.beginPath(); ctx.arc(x, y, 2.5 * s, 0, 2 * Math.PI); ctx.fill(); }
    }
    const label = `#${f.id}`;
    ctx.font = `bold ${Math.round(14 * s)}px sans-serif`;
    const w = ctx.measureText(label).width + 8 * s, h = 18 * s;
    ctx.fillStyle = c;
    ctx.fillRect(x1, Math.max(0, y1 - h), w, h);
    ctx.fillStyle = "#fff";
    ctx.fillText(label, x1 + 4 * s, Math.max(0, y1 - h) + 14 * s);
  });
  canvas.dataset.faces = String(state.faces.length);  // for tests and scripts driving the page
  canvas.dataset.boxes = JSON.stringify(state.faces.map((f) => f.box));
}

function legend() {
  const p = state.photos[state.shown];
  if (!p) return;
  if (!p.id) { $("legend").textContent = `${p.name}: ask a question to analyse it`; return; }
  const parts = state.faces.map((f) => {
    const bits = [];
    if (f.smiling !== null && f.smiling !== undefined) bits.push(f.smiling ? "smiling" : "not smiling");
    if (f.head_direction) bits.push(f.head_direction);
    if (f.perceived_age) bits.push(`age ${f.perceived_age}`);
    if (f.expression) bits.push(`expression ${f.expression} (estimate)`);
    return `#${f.id}${bits.length ? ": " + bits.join(", ") : ""}`;
  });
  $("legend").textContent = parts.length ? `${p.id}: ${parts.join(" · ")}` : `${p.id}: no face found`;
}

function short(obj) {
  const s = JSON.stringify(obj);
  return s.length > 160 ? s.slice(0, 157) + "…" : s;
}

function toolList(msgDiv) {
  let det = msgDiv.querySelector("details.tools");
  if (!det) {
    det = document.createElement("details");
    det.className = "tools";
    det.innerHTML = "<summary>tool calls</summary><ol></ol>";
    msgDiv.appendChild(det);
  }
  return det.querySelector("ol");
}

function setBusy(b) {
  state.busy = b;
  $("send").disabled = b;
  document.body.dataset.state = b ? "busy" : "idle";
}

async function ask(question) {
  if (state.reading.size) {  // Enter pressed while a photo is still being read: it belongs to this question
    setBusy(true);
    await Promise.allSettled([...state.reading]);
    setBusy(false);
  }
  const pending = pendingPhotos();
  if (!pending.length && !state.conversationId) { addMessage("error", "Add a photo first (drop it on the left).").dataset.done = "1"; return; }
  addMessage("user", question);
  const msg = addMessage("assistant", "");
  const bubble = msg.querySelector(".bubble");
  const body = { question, stream: true };
  if (pending.length) body.images = pending.map((p) => p.uri);
  if (state.conversationId) body.conversation_id = state.conversationId;
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) { headers["Authorization"] = `Bearer ${key}`; sessionStorage.setItem("facellm-key", key); }
  setBusy(true);
  const calls = {};
  try {
    const resp = await fetch("/v1/faces/query", { method: "POST", headers, body: JSON.stringify(body) });
    if (!resp.ok) {
      let text = `HTTP ${resp.status}`, code = null;
      try { const e = (await resp.json()).error; text = e.message; code = e.code; } catch (e) { /* keep the status */ }
      if (resp.status === 401) { $("key-box").hidden = false; text += " (enter the API key at the top)"; }
      if (IMAGE_ERRORS.includes(code)) text = sentence(text) + dropPending(pending);
      throw new Error(text);
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        for (const line of block.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          handle(JSON.parse(data), msg, bubble, calls, pending);
        }
      }
    }
  } catch (err) {
    msg.className = "msg error";
    bubble.textContent = `Error: ${err.message}`;
  } finally {
    msg.dataset.done = "1";
    setBusy(false);
    $("log").scrollTop = $("log").scrollHeight;
  }
}

const sentence = (text) => text.replace(/[.\s]*$/, ".");

// The server refused a new photo: take the photos of that request off the strip and show what was there before.
function dropPending(pending) {
  state.photos = state.photos.filter((p) => !pending.includes(p));
  const back = state.photos.map((p) => !!p.id).lastIndexOf(true);
  show(back);
  return pending.length ? ` The photo${pending.length > 1 ? "s were" : " was"} not added; the conversation is as before.` : "";
}

function handle(ev, msg, bubble, calls, pending) {
  if (ev.type === "start") {
    state.conversationId = ev.conversation_id;
  } else if (ev.type === "tool_call") {
    const li = document.createElement("li");
    li.className = `tool-${ev.origin}`;
    li.innerHTML = `<b></b> <code></code> <span class="muted">running…</span>`;
    li.querySelector("b").textContent = ev.name;
    li.querySelector("code").textContent = short(ev.arguments);
    toolList(msg).appendChild(li);
    calls[ev.id] = li;
  } else if (ev.type === "tool_result") {
    const li = calls[ev.id];
    if (li) li.querySelector("span").textContent = ev.ok ? `${ev.seconds.toFixed(2)} s → ${short(ev.result)}` : `error: ${ev.error}`;
  } else if (ev.type === "answer_delta") {
    bubble.textContent += ev.text;
  } else if (ev.type === "result") {
    const r = ev.response;
    state.conversationId = r.conversation_id;
    r.images.forEach((im, i) => {  // the server numbers the conversation's images in the order they were sent
      if (state.photos[i]) Object.assign(state.photos[i], { id: im.image_id, faces: im.faces });
    });
    show(state.shown >= 0 ? state.shown : state.photos.length - 1);
    bubble.textContent = r.answer;
    const list = toolList(msg);
    list.parentElement.querySelector("summary").textContent =
      `${r.tool_calls.length} tool call(s), ${r.path === "rules" ? "chosen by rules" : r.path === "model" ? "chosen by the model" : "none needed"} · ${r.timings_s.total.toFixed(2)} s`;
    if (!r.grounding.ok) {
      const warn = document.createElement("div");
      warn.className = "muted small";
      warn.textContent = `⚠ the answer contradicts the tool results in ${r.grounding.contradictions} place(s)`;
      msg.appendChild(warn);
    }
    msg.dataset.done = "1";
  } else if (ev.type === "error") {
    msg.className = "msg error";
    bubble.textContent = IMAGE_ERRORS.includes(ev.error.code) ? `Error: ${sentence(ev.error.message)}${dropPending(pending)}`
      : `Error: ${ev.error.message}`;
    msg.dataset.done = "1";
  }
}

function setup() {
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => addFile(e.dataTransfer.files[0]));
  for (const id of ["file", "file-more"]) {
    $(id).addEventListener("change", async (e) => { await addFile(e.target.files[0]); e.target.value = ""; });
  }
  $("show-landmarks").addEventListener("change", draw);
  $("ask").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("question").value.trim();
    if (!q || state.busy) return;
    $("question").value = "";
    ask(q);
  });
  $("new-chat").addEventListener("click", () => {
    Object.assign(state, { conversationId: null, photos: [] });
    $("log").innerHTML = "";
    show(-1);
  });
  setBusy(false);
  loadConfig();
}

setup();
