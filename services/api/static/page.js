// The diffbus web page: plain JS against the native API (/api/v1), no build step.
// Live progress comes over the WebSocket /api/v1/ws (the key as ?api_key=, since a browser's
// WebSocket cannot send headers); if it drops, the task is polled instead.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "diffbus.apiKey";
const PAGE_SIZE = 8;
const TERMINAL = ["completed", "failed", "cancelled"];
const state = { initImage: null, current: null, tasks: new Map(), ws: null, wsKey: null, historyPage: 1 };

// ---- talking to the API -------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super(describeError(status, body));
    this.status = status;
  }
}

function describeError(status, body) {
  const what = {
    401: "The API key was not accepted", 404: "Not found", 409: "Not possible now",
    413: "The request is too large", 422: "The server refused the request", 500: "The server failed",
    503: "Not available on this server", 504: "The server timed out",
  }[status] || `The server answered HTTP ${status}`;
  let detail = body && typeof body === "object" ? body.detail : body;
  if (Array.isArray(detail)) {
    detail = detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".") || "request"}: ${d.msg}`)
      .join("\n");
  }
  return `${what} (${status})${detail ? ": " + detail : ""}`;
}

function key() { return $("api-key").value.trim(); }

async function api(method, path, body) {
  const headers = { "X-API-Key": key() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new Error(`Could not reach the server: ${e.message}`);
  }
  const text = await resp.text();
  let data = text;
  try { data = text ? JSON.parse(text) : null; } catch (e) { /* not JSON: keep the text */ }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// ---- key, models, samplers ------------------------------------------------------------------------

async function loadSamplers() {
  try {
    const doc = await (await fetch("openapi.json")).json();
    const ref = doc.paths["/api/v1/generate"].post.requestBody.content["application/json"].schema.$ref;
    const field = doc.components.schemas[ref.split("/").pop()].properties.scheduler;
    const names = (field.anyOf || [field]).flatMap((s) => s.enum || []);
    for (const name of names) $("scheduler").add(new Option(name.replace(/Scheduler$/, ""), name));
  } catch (e) { /* the sampler list is optional: the model's default is used */ }
}

async function loadModels() {
  const status = $("key-status");
  if (!key()) { status.textContent = "Kept in this browser only (localStorage)."; status.className = "hint"; return; }
  try {
    const answer = await api("GET", "api/v1/models");
    const select = $("model");
    select.length = 1;
    for (const m of answer.models) {
      const option = new Option(`${m.name}${m.loaded ? "" : " (not loaded)"}`, m.name);
      option.dataset.width = m.width; option.dataset.height = m.height;
      select.add(option);
    }
    select.value = answer.default;
    const chosen = select.selectedOptions[0];
    if (chosen && chosen.dataset.width) { $("width").value = chosen.dataset.width; $("height").value = chosen.dataset.height; }
    status.textContent = `Key accepted: ${answer.models.length} model(s) on this server.`;
    status.className = "hint ok";
    showError("");
    loadHistory(1);
  } catch (e) {
    status.textContent = e.message;
    status.className = "error";
  }
}

// ---- init image ---------------------------------------------------------------------------------------

function setInitImage(file) {
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    state.initImage = reader.result;
    $("init-preview").src = reader.result;
    for (const id of ["init-preview", "init-clear", "strength", "strength-label"]) $(id).hidden = false;
    $("drop-text").textContent = `Init image: ${file.name} (the result keeps its size)`;
    $("width").disabled = $("height").disabled = true;
  };
  reader.readAsDataURL(file);
}

function clearInitImage() {
  state.initImage = null;
  $("init-image").value = "";
  for (const id of ["init-preview", "init-clear", "strength", "strength-label"]) $(id).hidden = true;
  $("drop-text").textContent = "Optional init image (img2img): drop one here or choose a file";
  $("width").disabled = $("height").disabled = false;
}

// ---- generating and following a task --------------------------------------------------------------------

function requestBody() {
  const number = (id) => Number($(id).value);
  const body = {
    prompt: $("prompt").value, num_inference_steps: number("steps"), guidance_scale: number("guidance"),
    num_images: number("num-images"), seed: $("seed").value === "" ? -1 : number("seed"),
  };
  if ($("negative-prompt").value) body.negative_prompt = $("negative-prompt").value;
  if ($("model").value) body.model = $("model").value;
  if ($("scheduler").value) body.scheduler = $("scheduler").value;
  if (state.initImage) { body.init_image = state.initImage; body.strength = number("strength"); }
  else { body.width = number("width"); body.height = number("height"); }
  return body;
}

async function generate(event) {
  event.preventDefault();
  showError("");
  if (!key()) { showError("Paste an API key first."); return; }
  const body = requestBody();
  $("generate").disabled = true;
  try {
    const created = await api("POST", "api/v1/generate", body);
    follow(created.task_id, body);
  } catch (e) {
    showError(e.message);
  } finally {
    $("generate").disabled = false;
  }
}

function follow(taskId, body) {
  const task = { id: taskId, body, done: false, started: Date.now() };
  state.tasks.set(taskId, task);
  state.current = task;
  $("task").hidden = false;
  $("task-id").textContent = taskId;
  $("progress-bar").value = 0;
  $("progress-text").textContent = "Queued…";
  $("preview").hidden = true;
  $("preview").removeAttribute("src");
  $("cancel").disabled = false;
  subscribe(task);
}

function socket() {
  if (state.ws && state.wsKey === key() && state.ws.readyState <= WebSocket.OPEN) return state.ws;
  if (state.ws) state.ws.close();
  const url = new URL("api/v1/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("api_key", key());
  const ws = new WebSocket(url);
  ws.pending = [];
  ws.onopen = () => { for (const m of ws.pending.splice(0)) ws.send(m); };
  ws.onmessage = (msg) => {
    const event = JSON.parse(msg.data);
    const task = state.tasks.get(event.task_id);
    if (task) onEvent(task, event.event, event.data);
  };
  ws.onclose = () => {
    if (state.ws === ws) state.ws = null;
    for (const task of state.tasks.values()) if (!task.done && task.ws === ws) poll(task);
  };
  state.ws = ws;
  state.wsKey = key();
  return ws;
}

function subscribe(task) {
  const ws = socket();
  task.ws = ws;
  const message = JSON.stringify({ subscribe: [task.id] });
  if (ws.readyState === WebSocket.OPEN) ws.send(message); else ws.pending.push(message);
}

async function poll(task) {
  while (!task.done) {
    try {
      const view = await api("GET", `api/v1/tasks/${task.id}`);
      onEvent(task, TERMINAL.includes(view.status) ? view.status : "state", view);
    } catch (e) {
      if (task === state.current) $("progress-text").textContent = e.message;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function onEvent(task, name, data) {
  if (task.done) return;
  const current = task === state.current;
  if (name === "error") { if (current) $("progress-text").textContent = describeError(404, data); return; }
  if (name === "state") {
    if (current) $("progress-text").textContent = data.status === "processing" ? "Generating…" : "Waiting in the queue…";
    return;
  }
  if (name === "progress") {
    if (!current) return;
    if (data.status === "pending") {
      $("progress-text").textContent = `Waiting in the queue: ${data.queue_position} task(s) ahead`;
      return;
    }
    $("progress-bar").value = data.fraction;
    const stage = data.stages > 1 ? ` (${data.stage_name}, stage ${data.stage + 1} of ${data.stages})` : "";
    const eta = data.eta_s == null ? "" : ` · about ${data.eta_s.toFixed(1)} s left`;
    $("progress-text").textContent =
      `Step ${data.step} of ${data.total_steps}${stage} · ${Math.round(data.fraction * 100)}%${eta}`;
    if (data.preview) {
      $("preview").src = `data:image/${data.preview_format || "webp"};base64,${data.preview}`;
      $("preview").hidden = false;
    }
    return;
  }
  // completed | failed | cancelled
  task.done = true;
  if (current) {
    $("cancel").disabled = true;
    const seconds = ((Date.now() - task.started) / 1000).toFixed(1);
    if (name === "completed") { $("progress-bar").value = 1; $("progress-text").textContent = `Done in ${seconds} s.`; }
    else if (name === "failed") { $("progress-text").textContent = `Failed: ${data.error_message || "no reason given"}`; }
    else { $("progress-text").textContent = "Cancelled."; }
  }
  if (name === "completed") addResult(task, data);
  loadHistory(state.historyPage);
}

async function cancel() {
  const task = state.current;
  if (!task) return;
  try {
    const answer = await api("POST", `api/v1/tasks/${task.id}/cancel`);
    $("progress-text").textContent = answer.message;
  } catch (e) {
    $("progress-text").textContent = e.message;
  }
}

// ---- results and history -------------------------------------------------------------------------

function urls(view) { return view.result_urls || (view.result_url ? [view.result_url] : []); }

function addResult(task, view) {
  $("gallery-empty")?.remove();
  const card = document.createElement("div");
  card.className = "result";
  card.dataset.taskId = task.id;
  const extension = (url) => url.split(".").pop();
  urls(view).forEach((url, i) => {
    const figure = document.createElement("figure");
    figure.innerHTML = `<a target="_blank"><img alt="result ${i + 1}"></a><figcaption><a>Download</a></figcaption>`;
    figure.querySelector("a").href = url;
    figure.querySelector("img").src = url;
    const download = figure.querySelector("figcaption a");
    download.href = url;
    download.download = `diffbus-${task.id}-${i}.${extension(url)}`;
    card.append(figure);
  });
  const params = document.createElement("pre");
  const b = task.body;
  params.textContent = [`prompt: ${b.prompt}`, b.negative_prompt && `negative: ${b.negative_prompt}`,
    `model: ${b.model || "default"} · sampler: ${b.scheduler || "default"} · steps: ${b.num_inference_steps}`,
    `size: ${b.init_image ? "as the init image" : `${b.width}×${b.height}`} · guidance: ${b.guidance_scale} · seed: ${b.seed}`,
  ].filter(Boolean).join("\n");
  card.append(params);
  $("gallery").prepend(card);
  showParameters(urls(view)[0], params);
}

async function showParameters(url, into) {
  // The PNG carries what was really used (the seed chosen, the defaults filled in): read it back.
  try {
    const blob = await (await fetch(url)).blob();
    const dataUri = await new Promise((resolve) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.readAsDataURL(blob);
    });
    const answer = await api("POST", "api/v1/png-info", { image: dataUri });
    if (answer.info) into.textContent = answer.info;
  } catch (e) { /* keep the request's parameters */ }
}

async function loadHistory(page) {
  if (!key()) return;
  const box = $("history");
  try {
    const answer = await api("GET", `api/v1/tasks?page=${page}&page_size=${PAGE_SIZE}`);
    state.historyPage = answer.page;
    const pages = Math.max(1, Math.ceil(answer.total / answer.page_size));
    $("history-page").textContent = `Page ${answer.page} of ${pages} · ${answer.total} task(s)`;
    $("history-prev").disabled = answer.page <= 1;
    $("history-next").disabled = answer.page >= pages;
    if (!answer.tasks.length) { box.innerHTML = '<p class="hint">No tasks yet.</p>'; return; }
    const table = document.createElement("table");
    table.innerHTML = "<thead><tr><th>Created</th><th>Status</th><th>Images</th><th>Task</th></tr></thead><tbody></tbody>";
    for (const task of answer.tasks) {
      const row = table.tBodies[0].insertRow();
      row.insertCell().textContent = task.created_at.replace("T", " ").replace("+00:00", " UTC");
      row.insertCell().textContent = task.status + (task.error_message ? `: ${task.error_message}` : "");
      const images = row.insertCell();
      for (const url of urls(task)) {
        const link = document.createElement("a");
        link.href = url; link.target = "_blank";
        link.innerHTML = "<img alt=''>";
        link.firstChild.src = url;
        images.append(link);
      }
      row.insertCell().innerHTML = `<code>${task.task_id.slice(0, 12)}</code>`;
    }
    box.replaceChildren(table);
  } catch (e) {
    $("history-prev").disabled = $("history-next").disabled = true;
    $("history-page").textContent = "";
    box.innerHTML = "";
    const message = document.createElement("p");
    message.className = "error";
    message.textContent = e.status === 404
      ? "History is not available: this server has no task listing (GET /api/v1/tasks answered 404)."
      : e.message;
    box.append(message);
  }
}

// ---- wiring -------------------------------------------------------------------------------------------

function init() {
  $("api-key").value = localStorage.getItem(KEY_STORE) || "";
  $("api-key").addEventListener("change", () => {
    localStorage.setItem(KEY_STORE, key());
    loadModels();
  });
  $("key-show").addEventListener("click", () => {
    const input = $("api-key");
    input.type = input.type === "password" ? "text" : "password";
    $("key-show").textContent = input.type === "password" ? "Show" : "Hide";
  });
  $("model").addEventListener("change", () => {
    const chosen = $("model").selectedOptions[0];
    if (chosen.dataset.width && !state.initImage) { $("width").value = chosen.dataset.width; $("height").value = chosen.dataset.height; }
  });
  $("generate-form").addEventListener("submit", generate);
  $("cancel").addEventListener("click", cancel);
  $("init-image").addEventListener("change", (e) => setInitImage(e.target.files[0]));
  $("init-clear").addEventListener("click", clearInitImage);
  $("strength").addEventListener("input", () => { $("strength-value").textContent = $("strength").value; });
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    setInitImage(e.dataTransfer.files[0]);
  });
  $("history-prev").addEventListener("click", () => loadHistory(state.historyPage - 1));
  $("history-next").addEventListener("click", () => loadHistory(state.historyPage + 1));
  loadSamplers();
  loadModels();
}

init();
