// The playground page: edits one slot latent and asks the server to decode it after every change.
"use strict";

const state = { slot: null, latent: null, pending: false, again: false, decodes: 0 };

function showStatus(text, isError) {
  const el = document.getElementById("status");
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

async function decode() {
  if (state.pending) { state.again = true; return; }  // coalesce: one request in flight at a time
  state.pending = true;
  try {
    const response = await fetch("/api/decode", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(state.latent),
    });
    const data = await response.json();
    if (!response.ok) { showStatus(data.error || response.statusText, true); return; }
    for (const [name, url] of Object.entries(data.images)) {
      document.querySelector(`img[data-view="${name}"]`).src = url;
    }
    state.decodes += 1;
    document.body.dataset.decodes = String(state.decodes);
    showStatus(`decoded in ${data.decode_ms.toFixed(1)} ms`, false);
    showReadout();
  } catch (err) {
    showStatus(`request failed: ${err}`, true);
  } finally {
    state.pending = false;
    if (state.again) { state.again = false; decode(); }
  }
}

function paintBits() {
  for (const button of document.querySelectorAll(".bit")) {
    const value = state.latent.gestalt[Number(button.dataset.index)];
    button.style.setProperty("--v", String(Math.min(1, Math.max(0, value))));
    button.setAttribute("aria-pressed", String(value >= 0.5));
  }
}

function flip(index) {
  const g = state.latent.gestalt;
  g[index] = g[index] >= 0.5 ? 0 : 1;
  paintBits();
  decode();
}

function buildBits() {
  const box = document.getElementById("bits");
  let offset = 0;
  for (const [name, count] of state.slot.groups) {
    const group = document.createElement("fieldset");
    const legend = document.createElement("legend");
    legend.textContent = `${name} (${count})`;
    const grid = document.createElement("div");
    grid.className = "bit-grid";
    grid.style.gridTemplateColumns = `repeat(${Math.min(16, count)}, 20px)`;
    for (let i = 0; i < count; i += 1) {
      const index = offset + i;
      const button = document.createElement("button");
      button.className = "bit";
      button.dataset.index = String(index);
      button.title = `${name} bit ${i}`;
      button.addEventListener("click", () => flip(index));
      grid.appendChild(button);
    }
    group.append(legend, grid);
    box.appendChild(group);
    offset += count;
  }
  paintBits();
}

function numberInput(label, vector, index) {
  const row = document.createElement("label");
  const input = document.createElement("input");
  input.type = "number"; input.step = "0.01"; input.value = String(vector[index]);
  input.addEventListener("change", () => {
    const value = Number(input.value);
    if (Number.isFinite(value)) { vector[index] = value; decode(); }
  });
  row.append(`${label} `, input);
  return row;
}

// Values that are neither toggles nor set with the position map (Loci-s: z_scale and depth z).
function buildExtras() {
  const box = document.getElementById("extras");
  const bits = state.slot.groups.reduce((sum, group) => sum + group[1], 0);
  for (let i = bits; i < state.slot.gestalt_size; i += 1) {
    box.appendChild(numberInput(state.slot.labels.gestalt[i] || `gestalt[${i}]`, state.latent.gestalt, i));
  }
  const used = new Set(Object.values(state.slot.axes));
  for (let i = 0; i < state.slot.position_size; i += 1) {
    if (!used.has(i)) {
      box.appendChild(numberInput(state.slot.labels.position[i] || `position[${i}]`, state.latent.position, i));
    }
  }
}

function showReadout() {
  const p = state.latent.position, a = state.slot.axes;
  document.getElementById("readout").textContent =
    `row ${p[a.row].toFixed(3)}  col ${p[a.col].toFixed(3)}  size ${p[a.size].toFixed(4)}`;
}

// Grid coordinates are align-corners: pixel i of an n-pixel axis sits at 2i/(n-1) - 1.
function toGrid(offset, extent, pixels) {
  const index = Math.min(pixels - 1, Math.max(0, Math.floor((offset / extent) * pixels)));
  return pixels > 1 ? (2 * index) / (pixels - 1) - 1 : 0;
}

function bindPosition() {
  const map = document.getElementById("position-map");
  const [height, width] = state.slot.image_size;
  const axes = state.slot.axes;
  map.addEventListener("click", (event) => {
    const rect = map.getBoundingClientRect();
    state.latent.position[axes.row] = toGrid(event.clientY - rect.top, rect.height, height);
    state.latent.position[axes.col] = toGrid(event.clientX - rect.left, rect.width, width);
    decode();
  });
  map.addEventListener("wheel", (event) => {
    event.preventDefault();
    const p = state.latent.position, s = p[axes.size];
    const [low, high] = state.slot.size_range;  // the decoder clips the size to this range
    const step = Math.max(s * (1 - s) * 0.1, 0.001);  // upstream's step, kept positive past s = 1
    p[axes.size] = Math.min(high, Math.max(low, event.deltaY < 0 ? s + step : s - step));
    decode();
  }, { passive: false });
}

// Clicking a small view swaps it with the big one, as in upstream's GUI.
function bindViews() {
  const big = document.getElementById("big");
  for (const box of document.querySelectorAll(".view-box.small")) {
    box.addEventListener("click", () => {
      const small = box.querySelector("figure"), large = big.querySelector("figure");
      box.appendChild(large);
      big.appendChild(small);
    });
  }
}

async function start() {
  try {
    const response = await fetch("/api/slot");
    const data = await response.json();
    state.slot = data.slot;
    state.latent = data.latent;
  } catch (err) {
    showStatus(`cannot reach the server: ${err}`, true);
    return;
  }
  const [height, width] = state.slot.image_size;
  document.getElementById("model").textContent = `${state.slot.kind}, ${width}x${height}`;
  buildBits();
  buildExtras();
  bindPosition();
  bindViews();
  await decode();
}

start();
