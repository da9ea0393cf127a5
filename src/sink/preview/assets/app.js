"use strict";
// The preview page: the MJPEG stream, the legend with live pixel shares,
// FPS and latency from /stats, and renaming through POST /concepts.
const token = new URLSearchParams(location.search).get("token");
const $ = (id) => document.getElementById(id);

// A same-origin address, with the page's token when it has one.
function url(path, query = {}) {
  const q = new URLSearchParams(query);
  if (token) q.set("token", token);
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

let concepts = [];
let editing = null;

function startStream() {
  const view = $("view").value;
  $("alpha-control").hidden = view !== "overlay";
  $("stream").src = url("stream.mjpg", { view, alpha: $("alpha").value });
}

function renderLegend() {
  $("legend").replaceChildren(...concepts.map((c) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "concept";
    button.dataset.id = c.id;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = c.color;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = c.name;
    const share = document.createElement("span");
    share.className = "share";
    const bar = document.createElement("span");
    bar.className = "bar";
    button.append(swatch, name, share, bar);
    button.addEventListener("click", () => edit(c));
    const item = document.createElement("li");
    item.append(button);
    return item;
  }));
}

function showShares(fractions) {
  for (const button of document.querySelectorAll(".concept")) {
    const f = fractions[Number(button.dataset.id)] ?? 0;
    button.querySelector(".share").textContent = `${(100 * f).toFixed(1)} %`;
    button.querySelector(".bar").style.width = `${100 * f}%`;
  }
}

async function loadConcepts() {
  const response = await fetch(url("concepts"), { cache: "no-store" });
  if (response.ok) {
    concepts = await response.json();
    renderLegend();
  }
}

async function pollStats() {
  try {
    const response = await fetch(url("stats"), { cache: "no-store" });
    if (!response.ok) return;
    const s = await response.json();
    const l = s.latency_ms;
    $("fps").textContent = `${s.fps.toFixed(1)} fps · frame ${s.index}`;
    $("latency").textContent =
      `decode ${l.decode.toFixed(1)} · queue ${l.queue.toFixed(1)} · preprocess ${l.preprocess.toFixed(1)} · ` +
      `inference ${l.inference.toFixed(1)} · postprocess ${l.postprocess.toFixed(1)} · end to end ${l.end_to_end.toFixed(1)} ms`;
    showShares(s.concept_fractions);
  } catch {
    $("fps").textContent = "disconnected";
  }
}

function edit(concept) {
  editing = concept.id;
  $("rename-id").textContent = concept.id;
  $("rename-name").value = concept.name;
  $("rename-color").value = concept.color;
  $("rename-error").textContent = "";
  $("rename").hidden = false;
  $("rename-name").focus();
}

$("rename").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = JSON.stringify({ id: editing, name: $("rename-name").value, color: $("rename-color").value });
  try {
    const response = await fetch(url("concepts"), { method: "POST", headers: { "Content-Type": "application/json" }, body });
    if (response.ok) {
      concepts = await response.json();
      renderLegend();
      $("rename").hidden = true;
    } else {
      $("rename-error").textContent = await response.text();
    }
  } catch (error) {
    $("rename-error").textContent = `cannot reach causeseg: ${error}`;
  }
});
$("rename-cancel").addEventListener("click", () => { $("rename").hidden = true; });
$("view").addEventListener("change", startStream);
$("alpha").addEventListener("change", startStream);
// A dropped stream (the run restarted, the network blinked) reconnects.
$("stream").addEventListener("error", () => setTimeout(startStream, 2000));

startStream();
loadConcepts();
pollStats();
setInterval(pollStats, 500);
