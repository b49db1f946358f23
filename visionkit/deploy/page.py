# ruff: noqa: E501 - the page is one HTML string; its script lines are as long as they read best
"""The page `visionkit serve` shows at GET /: choose or drop an image, see the drawing and the predictions.
Plain HTML and JavaScript in one string: no build step, no external assets."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>visionkit serve</title>
<style>
body { font-family: sans-serif; margin: 2em; max-width: 60em; }
#drop { border: 2px dashed #888; padding: 2em; text-align: center; cursor: pointer; }
#drop.over { background: #eef; }
img#drawing { max-width: 100%; margin-top: 1em; image-rendering: pixelated; }
table { border-collapse: collapse; margin-top: 1em; } td, th { border: 1px solid #ccc; padding: .3em .6em; }
#error { color: #b00; }
</style></head>
<body>
<h1>visionkit serve</h1>
<p id="info">loading...</p>
<div id="sampler" hidden><label>samples <input id="count" type="number" min="1" value="16"></label>
<label>seed <input id="seed" type="number" value="0"></label> <button id="sample">sample</button></div>
<div id="drop" hidden>Drop an image here, or <label>choose one <input id="file" type="file" accept="image/*"></label></div>
<p id="error"></p>
<img id="drawing" alt="">
<table id="table"></table>
<script>
const $ = (id) => document.getElementById(id);
let classes = [];
fetch("info").then(r => r.json()).then(i => {
  classes = i.classes;
  $("info").textContent = `task ${i.task}, ${i.classes.length} classes, model ${i.model_file}, visionkit ${i.visionkit_version}`;
  $("drop").hidden = !i.predicts; $("sampler").hidden = !i.samples;
  $("count").max = i.limits.max_samples;
});
function cell(value) { const td = document.createElement("td"); td.textContent = value; return td; }
function show(head, table) {
  $("table").replaceChildren();
  for (const r of [head, ...table]) { const tr = document.createElement("tr"); r.forEach(c => tr.appendChild(cell(c))); $("table").appendChild(tr); }
}
function rows(record) {
  if (record.detections) return record.detections.map(d => [d["class"], d.score, d.bbox.map(v => v.toFixed(1)).join(", ")]);
  if (record.top) return record.top.map(t => [t.name, t.score, ""]);
  if (record.class_pixels) return Object.entries(record.class_pixels).map(([k, v]) => [k, v, "pixels"]);
  return Object.entries(record).map(([k, v]) => [k, JSON.stringify(v), ""]);
}
async function send(file) {
  $("error").textContent = ""; $("table").replaceChildren(); $("drawing").removeAttribute("src");
  const form = new FormData(); form.append("files", file);
  const answer = await fetch("predict", {method: "POST", body: form});
  const body = await answer.json();
  if (!answer.ok) { $("error").textContent = body.error; return; }
  show(["class", "score", "detail"], rows(body.predictions[0]));
  const again = new FormData(); again.append("files", file);
  const picture = await fetch("predict?draw=1", {method: "POST", body: again});
  if (picture.ok) $("drawing").src = URL.createObjectURL(await picture.blob());
}
async function sample() {
  $("error").textContent = ""; $("table").replaceChildren(); $("drawing").removeAttribute("src");
  const query = new URLSearchParams({num_samples: $("count").value, seed: $("seed").value});
  const answer = await fetch("sample?" + query, {method: "POST"});
  const body = await answer.json();
  if (!answer.ok) { $("error").textContent = body.error; return; }
  show(["sample", "class", "detail"], body.predictions.map((p, k) => [k, "label" in p ? (classes[p.label] ?? p.label) : "", "png"]));
  if (body.grid) $("drawing").src = "data:image/png;base64," + body.grid;
}
$("sample").addEventListener("click", sample);
$("file").addEventListener("change", (e) => e.target.files[0] && send(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); e.dataTransfer.files[0] && send(e.dataTransfer.files[0]); });
</script>
</body></html>
"""
