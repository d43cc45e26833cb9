// fcnseg serve's page: plain JavaScript, no library, nothing from another site.
"use strict";

const $ = (id) => document.getElementById(id);
let models = [];      // GET /models
let result = null;    // the last POST /predict JSON (with ?pixels=1)
let photoUrl = null;
let downloadUrl = null;

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function headers() {
  const token = $("token").value || sessionStorage.getItem("fcnseg-token") || "";
  return token ? { Authorization: "Bearer " + token } : {};
}

async function problem(response) {
  try {
    const body = await response.json();
    return `${response.status}: ${body.message || body.error}`;
  } catch (e) {
    return `${response.status} ${response.statusText}`;
  }
}

async function loadModels() {
  const response = await fetch("/models", { headers: headers() });
  if (response.status === 401) {
    $("token-box").hidden = false;
    status("This server needs its token: type it above.", true);
    return;
  }
  if (!response.ok) { status(await problem(response), true); return; }
  models = (await response.json()).models;
  const select = $("model");
  select.textContent = "";
  for (const m of models) select.add(new Option(`${m.name} (${m.net})`, m.name));
  chooseModel();
  status("Choose or drop a photo.");
}

function current() { return models.find((m) => m.name === $("model").value); }

function chooseModel() {
  const m = current();
  if (!m) return;
  const rgbd = m.inputs.length > 1;
  $("depth-box").hidden = !rgbd;
  $("camera-box").hidden = !(rgbd && m.inputs.includes("hha"));
  const heads = Object.keys(m.outputs);
  $("output-box").hidden = heads.length < 2;
  $("output").textContent = "";
  for (const h of heads) $("output").add(new Option(h, h));
}

async function segment(file) {
  const m = current();
  if (!m || !file) return;
  const form = new FormData();
  form.append("image", file);
  if (m.inputs.length > 1) {
    const depth = $("depth").files[0];
    if (!depth) { status(`${m.name} takes a depth PNG beside the photo: choose it first.`, true); return; }
    form.append("depth", depth);
    if (m.inputs.includes("hha")) form.append("camera", $("camera").value);
  }
  status(`Segmenting ${file.name}...`);
  $("overlay").dataset.ready = "0";
  const url = `/predict?model=${encodeURIComponent(m.name)}&pixels=1`;
  let response;
  try {
    response = await fetch(url, { method: "POST", body: form,
                                  headers: { ...headers(), Accept: "application/json" } });
  } catch (e) { status(`The server did not answer (${e.message}).`, true); return; }
  if (!response.ok) { status(await problem(response), true); return; }
  result = await response.json();
  result.fileName = file.name;
  if (photoUrl) URL.revokeObjectURL(photoUrl);
  photoUrl = URL.createObjectURL(file);
  const img = new Image();
  img.onload = () => { drawPhoto(img); show(); };
  img.onerror = () => { drawPhoto(null); show(); };  // e.g. a TIFF the browser cannot show
  img.src = photoUrl;
}

function sizeCanvas(canvas) {
  const { width, height } = result.size;
  canvas.width = width;
  canvas.height = height;
  const shown = Math.min(window.innerWidth * 0.62, Math.max(width, 480));
  canvas.style.width = shown + "px";
  canvas.style.height = (shown * height / width) + "px";
}

function drawPhoto(img) {
  const canvas = $("photo");
  sizeCanvas(canvas);
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#777";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (img) ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
}

function decode(b64) {
  const text = atob(b64);
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

function output() { return result.outputs[$("output").value] || Object.values(result.outputs)[0]; }

function show() {
  const out = output();
  out.labelArray = out.labelArray || decode(out.labels);
  out.confArray = out.confArray || (out.confidence ? decode(out.confidence) : null);
  const canvas = $("overlay");
  sizeCanvas(canvas);
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(canvas.width, canvas.height);
  const colours = {};
  for (const c of out.classes) colours[c.index] = c.color;
  const clear = out.classes.some((c) => c.index === 0 && c.name === "background");
  for (let i = 0; i < out.labelArray.length; i++) {
    const k = out.labelArray[i];
    const rgb = colours[k] || [0, 0, 0];
    image.data.set([rgb[0], rgb[1], rgb[2], clear && k === 0 ? 0 : 255], 4 * i);
  }
  ctx.putImageData(image, 0, 0);
  setOpacity();
  legend(out);
  const png = decode(out.labels_png);
  if (downloadUrl) URL.revokeObjectURL(downloadUrl);
  downloadUrl = URL.createObjectURL(new Blob([png], { type: "image/png" }));
  $("download").href = downloadUrl;
  const stem = result.fileName.replace(/\.[^.]*$/, "") || "image";
  const head = Object.keys(result.outputs).length > 1 ? "_" + $("output").value : "";
  $("download").download = `${stem}${head}.png`;
  const t = result.timings_ms;
  $("timing").textContent = `${result.size.width} x ${result.size.height}, ${result.model}: ` +
    `${t.total.toFixed(0)} ms (inference ${t.inference.toFixed(0)} ms, batch of ${result.batch})`;
  $("result").hidden = false;
  canvas.dataset.ready = "1";
  status(`${result.fileName}: ${out.classes.length} classes.`);
}

function legend(out) {
  const body = $("legend").tBodies[0];
  body.textContent = "";
  for (const c of out.classes) {
    const row = body.insertRow();
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${c.color.join(",")})`;
    row.insertCell().append(swatch);
    row.insertCell().textContent = c.name;
    row.insertCell().textContent = (100 * c.share).toFixed(1) + " %";
  }
}

function setOpacity() {
  const v = $("opacity").value;
  $("overlay").style.opacity = v / 100;
  $("opacity-value").textContent = v + " %";
}

function hover(event) {
  if (!result) return;
  const canvas = $("overlay");
  const rect = canvas.getBoundingClientRect();
  const x = Math.floor((event.clientX - rect.left) * canvas.width / rect.width);
  const y = Math.floor((event.clientY - rect.top) * canvas.height / rect.height);
  if (x < 0 || y < 0 || x >= canvas.width || y >= canvas.height) return;
  const out = output();
  const i = y * canvas.width + x;
  const k = out.labelArray[i];
  const c = out.classes.find((e) => e.index === k);
  const p = out.confArray ? ` ${(100 * out.confArray[i] / 255).toFixed(1)} %` : "";
  $("hover").textContent = `(${x}, ${y}) ${c ? c.name : k}${p}`;
}

function init() {
  $("token").value = sessionStorage.getItem("fcnseg-token") || "";
  $("token").addEventListener("change", () => {
    sessionStorage.setItem("fcnseg-token", $("token").value);
    loadModels();
  });
  $("model").addEventListener("change", chooseModel);
  $("output").addEventListener("change", () => { if (result) show(); });
  $("file").addEventListener("change", () => segment($("file").files[0]));
  $("opacity").addEventListener("input", setOpacity);
  $("overlay").addEventListener("mousemove", hover);
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const files = [...e.dataTransfer.files];
    const image = files.find((f) => f.type.startsWith("image/"));
    if (image) segment(image);
  });
  loadModels().catch((e) => status(`Cannot reach the server (${e.message}).`, true));
}

init();
