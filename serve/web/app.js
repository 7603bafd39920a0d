// FaceLLM chat page: plain JavaScript, no libraries (works offline). Talks to POST /v1/faces/query with
// stream: true and reads the server-sent events from the fetch body (EventSource cannot POST).
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"];
const state = {
  conversationId: null,   // from the first response; follow-ups send it back
  pending: null,          // data URI of a photo not yet sent
  shownImageId: null,     // the conversation's id of the photo on the canvas
  image: null,            // HTMLImageElement on the canvas
  faces: [],              // per-face results of the photo on the canvas
  imageCount: 0,
  busy: false,
};

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

function showPhoto(dataUri) {
  const img = new Image();
  img.onload = () => {
    state.image = img;
    state.faces = [];
    $("drop-hint").hidden = true;
    $("canvas").hidden = false;
    draw();
  };
  img.src = dataUri;
}

function readFile(file) {
  if (!file || !file.type.startsWith("image/")) { addMessage("error", "That is not an image file."); return; }
  if (state.maxBytes && file.size > state.maxBytes) {
    addMessage("error", `The photo is larger than the server's limit of ${state.maxBytes} bytes.`);
    return;
  }
  const reader = new FileReader();
  reader.onload = () => {
    state.pending = reader.result;
    state.shownImageId = `image_${state.imageCount + 1}`;  // the id the server will give it
    showPhoto(reader.result);
    $("legend").textContent = `${file.name}: ask a question to analyse it`;
    $("question").focus();
  };
  reader.readAsDataURL(file);
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
  const parts = state.faces.map((f) => {
    const bits = [];
    if (f.smiling !== null && f.smiling !== undefined) bits.push(f.smiling ? "smiling" : "not smiling");
    if (f.head_direction) bits.push(f.head_direction);
    if (f.perceived_age) bits.push(`age ${f.perceived_age}`);
    if (f.expression) bits.push(`expression ${f.expression} (estimate)`);
    return `#${f.id}${bits.length ? ": " + bits.join(", ") : ""}`;
  });
  $("legend").textContent = parts.length ? `${state.shownImageId}: ${parts.join(" · ")}` : `${state.shownImageId}: no face found`;
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
  if (!state.pending && !state.conversationId) { addMessage("error", "Add a photo first (drop it on the left)."); return; }
  addMessage("user", question);
  const msg = addMessage("assistant", "");
  const bubble = msg.querySelector(".bubble");
  const body = { question, stream: true };
  if (state.pending) body.images = [state.pending];
  if (state.conversationId) body.conversation_id = state.conversationId;
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) { headers["Authorization"] = `Bearer ${key}`; sessionStorage.setItem("facellm-key", key); }
  setBusy(true);
  const calls = {};
  try {
    const resp = await fetch("/v1/faces/query", { method: "POST", headers, body: JSON.stringify(body) });
    if (!resp.ok) {
      let text = `HTTP ${resp.status}`;
      try { text = (await resp.json()).error.message; } catch (e) { /* keep the status */ }
      if (resp.status === 401) { $("key-box").hidden = false; text += " (enter the API key at the top)"; }
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
          handle(JSON.parse(data), msg, bubble, calls);
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

function handle(ev, msg, bubble, calls) {
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
    if (state.pending) { state.pending = null; state.imageCount = r.images.length; }
    const shown = r.images.find((im) => im.image_id === state.shownImageId) || r.images[r.images.length - 1];
    if (shown) { state.shownImageId = shown.image_id; state.faces = shown.faces; draw(); legend(); }
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
    bubble.textContent = `Error: ${ev.error.message}`;
    msg.dataset.done = "1";
  }
}

function setup() {
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => readFile(e.dataTransfer.files[0]));
  $("file").addEventListener("change", (e) => readFile(e.target.files[0]));
  $("show-landmarks").addEventListener("change", draw);
  $("ask").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("question").value.trim();
    if (!q || state.busy) return;
    $("question").value = "";
    ask(q);
  });
  $("new-chat").addEventListener("click", () => {
    Object.assign(state, { conversationId: null, pending: null, shownImageId: null, image: null, faces: [], imageCount: 0 });
    $("log").innerHTML = "";
    $("legend").textContent = "";
    $("canvas").hidden = true;
    $("drop-hint").hidden = false;
    $("file").value = "";
  });
  setBusy(false);
  loadConfig();
}

setup();
