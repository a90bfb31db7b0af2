// lost-reg's web page: drop images, see each one's objects (boxes, seeds, pixel masks) and heat map, change
// the method, its options and the number of objects, download the boxes and masks. Only the public API:
// /v1/model, /openapi.json (the form fields and their bounds), /v1/boxes (one file per request, so each
// error lands next to its file), /v1/export.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const SVG = "http://www.w3.org/2000/svg";
const PARALLEL = 3; // requests in flight; the server micro-batches them
const GENERAL = ["method", "features", "max_side", "max_objects", "refine", "masks"]; // not a method's option
const COLOURS = [[0, 229, 255], [255, 64, 129], [255, 214, 0], [118, 255, 3], [213, 0, 249], [255, 145, 0]];

const state = { model: null, fields: {}, images: [], queue: [], running: 0 };
const token = $("#token");

// ---- talking to the service ------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
  get text() {
    return `${this.status ? this.status + " " : ""}${this.code}: ${this.message}`;
  }
}

async function api(path, init = {}) {
  const headers = { ...(init.headers || {}) };
  if (token.value) headers.Authorization = `Bearer ${token.value.trim()}`;
  let response;
  try {
    response = await fetch(path, { ...init, headers });
  } catch (e) {
    throw new ApiError(0, "network_error", `the service did not answer (${e.message})`);
  }
  if (!response.ok) {
    let error = { code: `http_${response.status}`, message: response.statusText };
    try {
      error = (await response.json()).error || error;
    } catch (_) { /* not our JSON: keep the status line */ }
    throw new ApiError(response.status, error.code, error.message);
  }
  return response;
}

async function connect() {
  const line = $("#model");
  try {
    const [model, schema] = await Promise.all([
      api("v1/model").then((r) => r.json()),
      api("openapi.json").then((r) => r.json()),
    ]);
    state.model = model;
    buildForm(schema.paths["/v1/boxes"].post.requestBody.content["multipart/form-data"].schema);
    line.textContent = `${model.backbone} · ${model.registers} registers · server default ${model.method} · ${model.device}`;
    line.classList.remove("error");
    const mb = (model.limits.max_file_bytes / 2 ** 20).toFixed(0);
    $("#limits").textContent = `JPEG, PNG, WebP, TIFF, BMP or GIF · up to ${mb} MB and ` +
      `${(model.limits.max_pixels / 1e6).toFixed(0)} megapixels per image`;
    $("#rerun").disabled = false;
    pump();
  } catch (e) {
    line.textContent = e.status === 401 ? "This service needs its API key: enter it above." : `Cannot use the service: ${e.text}`;
    line.classList.add("error");
    if (e.status === 401) token.focus();
  }
}

// ---- the options form, built from the OpenAPI schema ------------------------------------------------

function buildForm(body) {
  const form = $("#options");
  const methodOf = {}; // option → the methods that take it
  for (const [name, dependent] of Object.entries(body.dependentSchemas || {})) {
    methodOf[name] = dependent.properties.method.enum;
  }
  state.fields = body.properties;
  fillSelect(form.elements.method, body.properties.method.enum, state.model.defaults.method, false);
  fillSelect(form.elements.features, body.properties.features.enum, state.model.defaults.features, true);
  const maxSide = form.elements.max_side;
  maxSide.min = body.properties.max_side.minimum;
  maxSide.max = body.properties.max_side.maximum;
  maxSide.placeholder = state.model.defaults.max_side;
  const objects = form.elements.max_objects;
  objects.min = body.properties.max_objects.minimum;
  objects.max = body.properties.max_objects.maximum;
  objects.placeholder = state.model.defaults.max_objects;
  fillSelect(form.elements.refine, body.properties.refine.enum, null, true);
  form.elements.refine.options[0].text = `default (${state.model.defaults.refine})`;

  const holder = $("#method-options");
  holder.replaceChildren();
  for (const [name, field] of Object.entries(body.properties)) {
    if (name === "images" || GENERAL.includes(name) || field.type === "boolean") continue;
    const label = document.createElement("label");
    label.dataset.methods = (methodOf[name] || []).join(" ");
    label.title = field.description || "";
    label.append(name.replaceAll("_", " "), " ");
    let input;
    if (field.enum) {
      input = document.createElement("select");
      fillSelect(input, field.enum, null, true);
    } else {
      input = document.createElement("input");
      if (field.type === "integer" || field.type === "number") {
        input.type = "number";
        input.step = field.type === "integer" ? "1" : "any";
        if (field.minimum !== undefined) input.min = field.minimum;
        if (field.maximum !== undefined) input.max = field.maximum;
      } else if (field.pattern) {
        input.pattern = field.pattern;
      }
    }
    input.name = name;
    label.append(input);
    holder.append(label);
  }
  form.elements.method.onchange = showMethodOptions;
  showMethodOptions();
}

function fillSelect(select, values, selected, withDefault) {
  select.replaceChildren();
  if (withDefault) select.append(new Option("default", ""));
  for (const value of values) select.append(new Option(value, value, false, value === selected));
}

function showMethodOptions() {
  const form = $("#options");
  const method = form.elements.method.value;
  const serverMethod = method === state.model.defaults.method;
  for (const label of $("#method-options").children) {
    const input = label.lastElementChild;
    label.hidden = !label.dataset.methods.split(" ").includes(method);
    const fallback = serverMethod ? state.model.defaults[input.name] : undefined;
    if (input.tagName === "SELECT") input.options[0].text = fallback === undefined ? "default" : `default (${fallback})`;
    else input.placeholder = fallback === undefined ? "default" : String(fallback);
  }
}

/** The options to send: every visible field the user set, as form fields. */
function chosenOptions() {
  const form = $("#options");
  const options = { method: form.elements.method.value };
  for (const element of form.elements) {
    if (!element.name || element.name === "method" || !element.value || element.closest("[hidden]")) continue;
    options[element.name] = element.value;
  }
  return options;
}

function describe(options) {
  const given = Object.entries(options).filter(([k]) => !GENERAL.includes(k)).map(([k, v]) => `${k}=${v}`);
  if (options.method === state.model.defaults.method && !given.length) return state.model.method;
  return `${options.method}(${given.join(", ")})`;
}

// ---- images --------------------------------------------------------------------------------------------

function add(files) {
  for (const file of files) {
    const card = $("#card").content.firstElementChild.cloneNode(true);
    const item = { file, card, url: URL.createObjectURL(file), result: null };
    card.dataset.file = file.name;
    $(".name", card).textContent = file.name;
    $("img", card).src = item.url;
    $("img", card).alt = file.name;
    $("#gallery").append(card);
    state.images.push(item);
    enqueue(item);
  }
  summarize();
}

function enqueue(item) {
  item.card.dataset.state = "queued";
  state.queue.push(item);
  pump();
}

function pump() {
  while (state.model && state.running < PARALLEL && state.queue.length) {
    const item = state.queue.shift();
    state.running += 1;
    run(item).finally(() => {
      state.running -= 1;
      summarize();
      pump();
    });
  }
}

async function run(item) {
  const { card, file } = item;
  card.dataset.state = "working";
  const limit = state.model.limits.max_file_bytes;
  if (file.size > limit) { // the server would refuse it after the upload; say so without sending it
    return fail(item, new ApiError(413, "file_too_large",
      `${file.name}: larger than the ${(limit / 2 ** 20).toFixed(0)} MB limit per file (not sent)`));
  }
  const options = chosenOptions();
  const body = new FormData();
  body.append("images", file, file.name);
  for (const [k, v] of Object.entries(options)) body.append(k, v);
  body.append("masks", "rle");
  body.append("return_heat", "true");
  try {
    const answer = await (await api("v1/boxes", { method: "POST", body })).json();
    const result = answer.results[0];
    if (result.error) throw new ApiError(0, result.error.code, result.error.message);
    item.result = { ...result, madeWith: describe(options) };
    draw(item);
  } catch (e) {
    fail(item, e instanceof ApiError ? e : new ApiError(0, "page_error", e.message));
  }
}

function fail(item, error) {
  item.result = null;
  item.card.dataset.state = "error";
  item.card.dataset.error = error.code;
  $("svg", item.card).replaceChildren();
  $(".facts", item.card).textContent = "";
  $(".error", item.card).textContent = error.text;
}

/** Every object of an answer, best first: its `objects`, or the one object its own fields describe. */
function objectsOf(r) {
  return r.objects || (r.box ? [{ box: r.box, score: r.score, seed: r.seed, segmentation: r.segmentation }] : []);
}

// ---- drawing: everything in the image's own pixels (the SVG's viewBox), so it scales with the picture ----

function draw(item) {
  const r = item.result;
  const svg = $("svg", item.card);
  svg.setAttribute("viewBox", `0 0 ${r.width} ${r.height}`);
  svg.replaceChildren();
  const [rows, cols] = r.grid;
  const [cw, ch] = r.cell_px;
  const grid = { x: 0, y: 0, width: cols * cw, height: rows * ch, preserveAspectRatio: "none" };
  svg.append(element("image", { ...grid, class: "heat", href: `data:image/png;base64,${r.heat}` }));
  const objects = objectsOf(r);
  const colour = (k) => COLOURS[k % COLOURS.length];
  const last = [...objects.entries()].reverse(); // the best object drawn last: on top
  for (const [k, o] of last) {
    if (o.segmentation) {
      svg.append(element("image", { x: 0, y: 0, width: r.width, height: r.height, class: "mask", "data-object": k,
        preserveAspectRatio: "none", href: maskPicture(o.segmentation, colour(k)) }));
    }
  }
  for (const [k, o] of last) {
    const box = element("rect", { class: "box", "data-object": k, x: o.box[0], y: o.box[1],
      width: o.box[2] - o.box[0], height: o.box[3] - o.box[1] });
    if (k) box.style.stroke = `rgb(${colour(k)})`; // the CSSOM, which the page's policy allows (no style attribute)
    svg.append(box, element("circle", { class: "seed", "data-object": k, cx: (o.seed[1] + 0.5) * cw,
      cy: (o.seed[0] + 0.5) * ch, r: 0.3 * Math.min(cw, ch) }));
  }
  item.card.dataset.state = "done";
  delete item.card.dataset.error;
  $(".error", item.card).textContent = "";
  const count = objects.length === 1 ? "" : `${objects.length} objects · best `;
  $(".facts", item.card).textContent = objects.length
    ? `${count}box ${r.box.join(", ")} · score ${r.score.toFixed(2)} · ${Math.round(r.ms)} ms · ${r.madeWith}`
    : `no object · ${Math.round(r.ms)} ms · ${r.madeWith}`;
}

function element(name, attributes) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, v);
  return node;
}

/** COCO's compressed RLE string (column-major) → a 0/1 array in row-major order. */
function decodeRle(counts, rows, cols) {
  const runs = [];
  for (let p = 0; p < counts.length;) {
    let x = 0, k = 0, more = true;
    while (more) {
      const c = counts.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p += 1;
      k += 1;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (runs.length > 2) x += runs[runs.length - 2];
    runs.push(x);
  }
  const mask = new Uint8Array(rows * cols);
  let i = 0, value = 0;
  for (const run of runs) {
    for (let end = i + run; i < end; i += 1) if (value) mask[(i % rows) * cols + Math.floor(i / rows)] = 1;
    value ^= 1;
  }
  return mask;
}

/** A COCO RLE mask as a PNG data URL of its size, its pixels in `colour`, the rest transparent. */
function maskPicture(rle, colour) {
  const [rows, cols] = rle.size;
  const mask = decodeRle(rle.counts, rows, cols);
  const canvas = document.createElement("canvas");
  canvas.width = cols;
  canvas.height = rows;
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(cols, rows);
  const rgba = [...colour, 255];
  mask.forEach((on, i) => {
    if (on) pixels.data.set(rgba, 4 * i);
  });
  context.putImageData(pixels, 0, 0);
  return canvas.toDataURL("image/png");
}

// ---- summary and downloads --------------------------------------------------------------------------

function summarize() {
  const done = state.images.filter((i) => i.card.dataset.state === "done").length;
  const failed = state.images.filter((i) => i.card.dataset.state === "error").length;
  const waiting = state.images.length - done - failed;
  const parts = [`${state.images.length} images`, `${done} with a box`];
  if (failed) parts.push(`${failed} refused`);
  if (waiting) parts.push(`${waiting} working`);
  $("#status").textContent = state.images.length ? parts.join(" · ") : "";
  for (const button of document.querySelectorAll("#downloads button")) button.disabled = !done;
}

async function download(format) {
  const done = state.images.filter((i) => i.result);
  const versions = new Set(done.map((i) => i.result.madeWith));
  const body = {
    format,
    images: done.map(({ file, result: r }) => ({
      file_name: file.name, width: r.width, height: r.height,
      objects: objectsOf(r).map((o) => ({ box: o.box, score: o.score, segmentation: o.segmentation })),
    })),
  };
  if (versions.size === 1) body.model_version = `lost-reg ${state.model.backbone} ${[...versions][0]}`;
  try {
    const response = await api("v1/export", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const name = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "")?.[1] || `boxes-${format}.json`;
    const a = document.createElement("a");
    a.href = URL.createObjectURL(await response.blob());
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
  } catch (e) {
    $("#status").textContent = `Download failed: ${e.text || e.message}`;
  }
}

// ---- wiring -------------------------------------------------------------------------------------------

token.value = sessionStorage.getItem("lost-reg-token") || "";
token.addEventListener("change", () => {
  sessionStorage.setItem("lost-reg-token", token.value);
  connect();
});

$("#files").addEventListener("change", (event) => {
  add(event.target.files);
  event.target.value = "";
});

const drop = $("#drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  add(event.dataTransfer.files);
});

$("#options").addEventListener("submit", (event) => {
  event.preventDefault();
  if (!event.target.reportValidity()) return;
  state.images.filter((i) => !["queued", "working"].includes(i.card.dataset.state)).forEach(enqueue);
  summarize();
});

for (const box of document.querySelectorAll("#layers input")) {
  box.addEventListener("change", () => $("#gallery").classList.toggle(`hide-${box.value}`, !box.checked));
}

for (const button of document.querySelectorAll("#downloads button")) {
  button.addEventListener("click", () => download(button.dataset.format));
}

connect();
