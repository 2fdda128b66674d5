// The qvgen playground: a page over this service's own /v1 API, with no dependency.
//
// State lives in the browser: the API key in sessionStorage (this tab only, sent as a bearer
// token to this origin and nowhere else), the list of recent jobs in localStorage. The job on
// show is followed live on its server-sent-event stream (GET /v1/videos/{id}/events); the other
// unfinished jobs of the list are read once when the page starts.
// User text is only ever written with textContent, never parsed as HTML.

const KEY_STORAGE = "qvgen.apiKey";
const HISTORY_STORAGE = "qvgen.history";
const HISTORY_LIMIT = 20;
const RETRY_MS = 3000; // before following a stream again: the service may be restarting
const FINAL = new Set(["completed", "failed", "cancelled", "gone"]);

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// --- API ---------------------------------------------------------------------------------

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

async function api(path, { method = "GET", body, headers = {} } = {}) {
  const key = apiKey();
  const init = { method, headers: { ...headers }, cache: "no-store" };
  if (key) init.headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, `cannot reach the service: ${error.message}`);
  }
  if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
  return response;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) {
    // not JSON: fall through to the status line
  }
  return `${response.status} ${response.statusText}`;
}

// --- the form: models and their limits ------------------------------------------------------

let models = new Map();

// Fetched again on every model change: a worker started since the page loaded may have
// published its model's rules, which narrow the limits.
async function loadModels(fillDefaults) {
  showError("form-error", "");
  try {
    const list = await (await api("/v1/models")).json();
    models = new Map(list.data.map((model) => [model.id, model]));
  } catch (error) {
    models = new Map();
    showError("form-error", error.message);
    if (error.status === 401) $("key-panel").open = true;
  }
  const select = $("model");
  const previous = select.value;
  select.replaceChildren(
    ...[...models.keys()].map((id) => new Option(id, id, false, id === previous)),
  );
  applyLimits(fillDefaults);
}

function setBounds(input, min, max, step) {
  input.min = String(min);
  input.max = String(max);
  input.step = String(step);
}

function applyLimits(fillDefaults) {
  const model = models.get($("model").value);
  $("submit").disabled = !model;
  if (!model || !model.limits) {
    $("limits").textContent = "";
    return;
  }
  const l = model.limits;
  const m = l.size_multiple;
  setBounds($("width"), l.min_side, l.max_width, m);
  setBounds($("height"), l.min_side, l.max_height, m);
  setBounds($("num-frames"), 1, l.max_frames, l.frame_step);
  setBounds($("steps"), 1, l.max_inference_steps, 1);
  $("guidance").min = String(l.min_guidance_scale);
  $("guidance").max = String(l.max_guidance_scale);
  $("seed").max = String(l.max_seed);
  $("prompt").maxLength = l.max_prompt_chars;
  $("negative-prompt").maxLength = l.max_prompt_chars;
  const frames =
    l.frame_step > 1 ? `1 + ${l.frame_step}k frames up to ${l.max_frames}` : `up to ${l.max_frames} frames`;
  $("limits").textContent =
    `Width ${l.min_side}–${l.max_width}, height ${l.min_side}–${l.max_height} px in steps of ${m}; ` +
    `${frames}; up to ${l.max_inference_steps} steps; ` +
    `guidance ${l.min_guidance_scale}–${l.max_guidance_scale}` +
    (l.from_worker ? " (this model's own limits)." : " (the API's bounds; the model may refuse more).");
  if (fillDefaults) {
    const [width, height] = l.default_size.split("x");
    $("width").value = width;
    $("height").value = height;
    $("num-frames").value = String(l.default_num_frames);
    $("steps").value = String(l.default_num_inference_steps);
    $("guidance").value = String(l.default_guidance_scale);
  }
}

function createBody() {
  const body = {
    model: $("model").value,
    prompt: $("prompt").value,
    size: `${$("width").value}x${$("height").value}`,
    num_frames: Number($("num-frames").value),
    num_inference_steps: Number($("steps").value),
    guidance_scale: Number($("guidance").value),
  };
  const negative = $("negative-prompt").value;
  if (negative.trim()) body.negative_prompt = negative;
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  return body;
}

async function submit(event) {
  event.preventDefault();
  showError("form-error", "");
  $("submit").disabled = true;
  try {
    // One key per click: a retried request returns the same job instead of a second one.
    const headers = { "Idempotency-Key": crypto.randomUUID() };
    const response = await api("/v1/videos", { method: "POST", body: createBody(), headers });
    const video = await response.json();
    remember(video);
    show(video.id);
    received(video);
  } catch (error) {
    showError("form-error", error.message);
  } finally {
    $("submit").disabled = !models.has($("model").value);
  }
}

// --- history (localStorage) -------------------------------------------------------------

function history() {
  try {
    const entries = JSON.parse(localStorage.getItem(HISTORY_STORAGE) || "[]");
    return Array.isArray(entries) ? entries : [];
  } catch (_) {
    return [];
  }
}

function saveHistory(entries) {
  const text = JSON.stringify(entries.slice(0, HISTORY_LIMIT));
  // Unchanged (most events): keep the list's elements, and so a click in progress on them.
  if (text === localStorage.getItem(HISTORY_STORAGE)) return;
  localStorage.setItem(HISTORY_STORAGE, text);
  renderHistory();
}

function historyEntry(video) {
  return {
    id: video.id,
    model: video.model,
    prompt: video.prompt,
    status: video.status,
    created_at: video.created_at,
  };
}

function remember(video) {
  const others = history().filter((item) => item.id !== video.id);
  saveHistory([historyEntry(video), ...others]);
}

// Update the job's entry; false when the list no longer holds it (cleared, or pushed out).
function update(video) {
  const entries = history();
  const index = entries.findIndex((item) => item.id === video.id);
  if (index < 0) return false;
  entries[index] = historyEntry(video);
  saveHistory(entries);
  return true;
}

function markGone(id) {
  saveHistory(history().map((item) => (item.id === id ? { ...item, status: "gone" } : item)));
}

function renderHistory() {
  const entries = history();
  $("history-empty").hidden = entries.length > 0;
  $("history").replaceChildren(
    ...entries.map((item) => {
      const li = document.createElement("li");
      li.dataset.id = item.id;
      li.dataset.status = item.status;
      li.classList.toggle("current", item.id === current);
      const open = document.createElement("button");
      open.type = "button";
      open.textContent = item.prompt;
      open.title = `${item.id} (${item.model})`;
      open.addEventListener("click", () => show(item.id));
      const badge = document.createElement("span");
      badge.className = `badge status-${item.status}`;
      badge.textContent = item.status === "gone" ? "deleted or expired" : item.status;
      const time = document.createElement("time");
      const created = new Date(item.created_at * 1000);
      time.dateTime = created.toISOString();
      time.textContent = created.toLocaleTimeString();
      li.append(open, badge, time);
      return li;
    }),
  );
}

function clearHistory() {
  saveHistory([]);
}

// --- live progress ---------------------------------------------------------------------
//
// fetch() reads the event stream, since EventSource cannot send the Authorization header. Only
// the job on show has a stream: a browser keeps at most six connections to one origin, and a
// stream per listed job would leave none for the page's other requests.

let following = null; // { id, controller } of the stream being read

function follow(id) {
  unfollow();
  const controller = new AbortController();
  following = { id, controller };
  readEvents(id, controller.signal);
}

function unfollow() {
  if (following) following.controller.abort();
  following = null;
}

function parseEvent(block) {
  const event = { type: "message", data: "" };
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue; // a comment: the server's keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event.type = value;
    if (field === "data") event.data += value;
  }
  return event.data ? event : null;
}

async function readEvents(id, signal) {
  let ended = false; // a final event came: the stream is over for good
  try {
    const headers = { Accept: "text/event-stream" };
    const key = apiKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    const url = `/v1/videos/${encodeURIComponent(id)}/events`;
    const response = await fetch(url, { headers, cache: "no-store", signal });
    if (response.status === 404) {
      gone(id);
      return;
    }
    if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = parseEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (event) ended = onEvent(id, event) || ended;
      }
    }
  } catch (error) {
    if (signal.aborted) return;
    if (id === current) showError("job-error", error.message);
  }
  if (ended || signal.aborted) return;
  // Cut off before the job ended (a restart, a dropped connection): follow it again.
  setTimeout(() => {
    if (!signal.aborted) readEvents(id, signal);
  }, RETRY_MS);
}

// One event of the stream; true when it was the last (the job ended or is gone).
function onEvent(id, event) {
  if (event.type === "video.deleted") {
    gone(id);
    return true;
  }
  const video = JSON.parse(event.data);
  if (id === current) showError("job-error", "");
  received(video);
  return FINAL.has(video.status);
}

// One read of a job that is not on show (when the page starts).
async function refresh(id) {
  try {
    const response = await api(`/v1/videos/${encodeURIComponent(id)}`);
    received(await response.json());
  } catch (error) {
    if (error.status === 404) gone(id);
  }
}

function received(video) {
  update(video);
  if (video.id === current) renderJob(video);
}

function gone(id) {
  markGone(id);
  if (id === current) renderGone(id);
}

// --- the job panel -----------------------------------------------------------------------

let current = null;
let resultFor = null; // the job whose video the player holds
const objectUrls = [];

function show(id) {
  current = id;
  resultFor = null;
  $("job").hidden = false;
  $("result").hidden = true;
  $("job-error").hidden = true;
  $("job-id").textContent = id;
  renderHistory();
  const known = history().find((item) => item.id === id);
  // What the list knows until the first answer: nothing of the previous job stays on show.
  $("job-prompt").textContent = known ? known.prompt : "";
  $("job-queue").textContent = "";
  $("job-steps").textContent = "";
  if (known && known.status === "gone") {
    unfollow();
    renderGone(id);
    return;
  }
  follow(id);
}

function setStatus(status, label) {
  const badge = $("job-status");
  badge.className = `badge status-${status}`;
  badge.textContent = label || status.replace("_", " ");
  $("job").dataset.status = status;
}

function renderJob(video) {
  $("job-prompt").textContent = video.prompt;
  setStatus(video.status);
  $("job-progress").value = video.progress;
  $("job-progress").dataset.value = String(video.progress);
  const queued = video.status === "queued" && video.queue_position !== null;
  $("job-queue").textContent = queued ? queueText(video.queue_position) : "";
  $("job-steps").textContent = stepsText(video);
  $("cancel").hidden = FINAL.has(video.status);
  if (video.error) {
    showError("job-error", video.error.message);
  } else if (video.status !== "gone") {
    showError("job-error", "");
  }
  if (video.status === "completed" && resultFor !== video.id) {
    resultFor = video.id;
    loadResult(video.id);
  }
}

function stepsText(video) {
  if (video.status === "in_progress") return `step ${video.steps_done} of ${video.steps_total}`;
  if (video.status === "completed" && video.run_seconds !== null) {
    return `${video.steps_total} steps in ${video.run_seconds.toFixed(1)} s`;
  }
  return "";
}

function queueText(ahead) {
  if (ahead === 0) return "next in line";
  return `${ahead}${ahead >= 100 ? "+" : ""} job${ahead === 1 ? "" : "s"} ahead`;
}

function renderGone(id) {
  $("job-id").textContent = id;
  setStatus("gone", "deleted or expired");
  $("cancel").hidden = true;
  $("job-queue").textContent = "";
  $("job-steps").textContent = "";
}

async function contentUrl(id, variant) {
  const response = await api(`/v1/videos/${encodeURIComponent(id)}/content?variant=${variant}`);
  const url = URL.createObjectURL(await response.blob());
  objectUrls.push(url);
  return url;
}

async function loadResult(id) {
  // Fetched with the key and shown from blob: URLs, since <video src> cannot send a header.
  while (objectUrls.length) URL.revokeObjectURL(objectUrls.pop());
  try {
    const [video, thumbnail] = await Promise.all([
      contentUrl(id, "video"),
      contentUrl(id, "thumbnail"),
    ]);
    if (current !== id) return;
    $("video").src = video;
    $("thumbnail").src = thumbnail;
    $("download").href = video;
    $("download").download = `${id}.mp4`;
    $("result").hidden = false;
    $("video").play().catch(() => {
      // autoplay refused: the controls still play it
    });
  } catch (error) {
    if (current === id) showError("job-error", error.message);
  }
}

// DELETE cancels and removes the job in one call (its stream then ends with video.deleted).
async function cancel() {
  const id = current;
  $("cancel").disabled = true;
  try {
    await api(`/v1/videos/${encodeURIComponent(id)}`, { method: "DELETE" });
    gone(id);
  } catch (error) {
    if (error.status === 404) gone(id);
    else showError("job-error", error.message);
  } finally {
    $("cancel").disabled = false;
  }
}

function showError(id, message) {
  $(id).textContent = message;
  $(id).hidden = !message;
}

// --- the key -----------------------------------------------------------------------------

function renderKeyState() {
  $("key-state").textContent = apiKey() ? "set for this tab" : "none";
}

function saveKey() {
  const key = $("api-key").value.trim();
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  $("api-key").value = "";
  renderKeyState();
  restart();
}

function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
  renderKeyState();
  restart();
}

// --- start -------------------------------------------------------------------------------

function restart() {
  loadModels(true);
  for (const item of history()) {
    if (!FINAL.has(item.status) && item.id !== current) refresh(item.id);
  }
  if (current && following) follow(current);
}

function start() {
  $("create-form").addEventListener("submit", submit);
  $("model").addEventListener("change", () => loadModels(false));
  $("cancel").addEventListener("click", cancel);
  $("key-save").addEventListener("click", saveKey);
  $("key-forget").addEventListener("click", forgetKey);
  $("history-clear").addEventListener("click", clearHistory);
  renderKeyState();
  renderHistory();
  restart();
}

start();
