// The search page: plain JavaScript over the HTTP API, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: localStorage.getItem("searchengine_key") || "", caps: {}, last: null };

function headers() {
  return state.key ? { Authorization: "Bearer " + state.key } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (response.status === 401) {
    $("key-box").hidden = false;
    $("key").focus();
    throw new Error("This server needs an API key.");
  }
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) {
    const detail = body && body.detail;
    throw new Error(typeof detail === "string" ? detail : `request failed (${response.status})`);
  }
  return body;
}

function say(text) { $("message").textContent = text; }

function label(hit) {
  if (hit.title) return hit.title;
  return hit.path.split("/").pop();
}

function card(hit) {
  const li = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  const img = document.createElement("img");
  img.loading = "lazy";
  img.src = hit.thumbnail + "?size=256";
  img.alt = hit.caption || hit.title || label(hit);
  const meta = document.createElement("div");
  meta.className = "meta";
  const score = hit.score === undefined ? "" : ` <span class="score">${hit.score.toFixed(3)}</span>`;
  meta.innerHTML = `<span class="name"></span>${score}`;
  meta.querySelector(".name").textContent = label(hit);
  button.append(img, meta);
  button.setAttribute("aria-label", `${label(hit)}, score ${hit.score?.toFixed(3) ?? ""}: show details and similar images`);
  button.addEventListener("click", () => showDetail(hit.id));
  li.append(button);
  return li;
}

function render(list, hits) {
  list.replaceChildren(...hits.map(card));
}

function filterExpression() {
  const parts = [];
  for (const select of document.querySelectorAll("#filters select")) {
    if (select.value) parts.push(`${select.dataset.key} = "${select.value.replaceAll('"', '\\"')}"`);
  }
  return parts.join(" and ");
}

async function searchText(event) {
  event?.preventDefault();
  const q = $("q").value.trim();
  if (!q) { say("Type a few words, or choose an image."); return; }
  const params = new URLSearchParams({ q, k: $("k").value });
  const where = filterExpression();
  if (where) params.set("filter", where);
  say("Searching…");
  try {
    const result = await api("/api/search?" + params);
    render($("grid"), result.hits);
    say(`${result.hits.length} results for “${q}” (${result.took_ms} ms)`);
  } catch (error) { say(error.message); }
}

async function searchImage(file) {
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  form.append("k", $("k").value);
  const where = filterExpression();
  if (where) form.append("filter", where);
  say(`Searching with ${file.name}…`);
  try {
    const result = await api("/api/search/image", { method: "POST", body: form });
    render($("grid"), result.hits);
    say(`${result.hits.length} results like ${file.name} (${result.took_ms} ms)`);
  } catch (error) { say(error.message); }
}

function fact(list, name, value) {
  if (value === null || value === undefined || value === "" || (Array.isArray(value) && !value.length)) return;
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = Array.isArray(value) ? value.join(", ") : String(value);
  list.append(dt, dd);
}

async function showDetail(id) {
  const dialog = $("detail");
  try {
    const hit = await api(`/api/images/${id}`);
    state.last = hit;
    $("detail-title").textContent = label(hit);
    $("detail-image").src = hit.thumbnail + "?size=512";
    $("detail-image").alt = hit.caption || label(hit);
    $("detail-original").href = hit.original;
    const facts = $("detail-facts");
    facts.replaceChildren();
    fact(facts, "Path", hit.path);
    fact(facts, "Product", hit.product_id);
    fact(facts, "Caption", hit.caption);
    fact(facts, "Generated caption", hit.generated_caption);
    fact(facts, "Description", hit.description);
    fact(facts, "Tags", hit.attributes?.tag);
    fact(facts, "Text in the image", hit.text);
    fact(facts, "Taken", hit.taken_at);
    fact(facts, "Size", `${hit.width} × ${hit.height}`);
    for (const [key, values] of Object.entries(hit.attributes || {})) {
      if (key !== "tag") fact(facts, key, values);
    }
    $("ask").hidden = !state.caps.vqa;
    $("answer").textContent = "";
    if (!dialog.open) dialog.showModal();
    const similar = await api(`/api/images/${id}/similar?k=12`);
    render($("similar"), similar.hits);
  } catch (error) { say(error.message); }
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question || !state.last) return;
  $("answer").textContent = "Thinking…";
  try {
    const result = await api(`/api/images/${state.last.id}/ask`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ question }),
    });
    $("answer").textContent = result.answer;
  } catch (error) { $("answer").textContent = error.message; }
}

async function loadFilters() {
  const facets = await api("/api/facets");
  const box = $("filters");
  box.replaceChildren();
  for (const [key, values] of Object.entries(facets)) {
    const labelEl = document.createElement("label");
    labelEl.textContent = key;
    const select = document.createElement("select");
    select.dataset.key = key;
    select.append(new Option("any", ""));
    for (const { value, count } of values) select.append(new Option(`${value} (${count})`, value));
    select.addEventListener("change", () => $("q").value.trim() && searchText());
    labelEl.append(select);
    box.append(labelEl);
  }
  $("filters-box").hidden = !Object.keys(facets).length;
}

async function start() {
  try {
    const status = await api("/api/status");
    $("collection").textContent = `${status.collection}: ${status.images} images, model ${status.model}`;
    state.caps = await api("/api/capabilities");
    await loadFilters();
    $("key-box").hidden = true;
  } catch (error) { say(error.message); }
}

function useKey(event) {
  event.preventDefault();
  state.key = $("key").value.trim();
  localStorage.setItem("searchengine_key", state.key);
  // thumbnails load through <img> tags, which send no headers: the server reads this cookie on GETs only
  document.cookie = `searchengine_key=${encodeURIComponent(state.key)}; path=/; SameSite=Strict`;
  start();
}

function dragAndDrop() {
  let depth = 0;
  window.addEventListener("dragenter", (e) => { e.preventDefault(); depth++; $("drop").hidden = false; });
  window.addEventListener("dragleave", () => { if (--depth <= 0) { depth = 0; $("drop").hidden = true; } });
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    $("drop").hidden = true;
    searchImage(e.dataTransfer.files[0]);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("search").addEventListener("submit", searchText);
  $("file").addEventListener("change", (e) => searchImage(e.target.files[0]));
  $("key-form").addEventListener("submit", useKey);
  $("ask").addEventListener("submit", ask);
  dragAndDrop();
  if (state.key) document.cookie = `searchengine_key=${encodeURIComponent(state.key)}; path=/; SameSite=Strict`;
  start();
});
