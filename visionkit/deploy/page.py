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
<div id="drop">Drop an image here, or <label>choose one <input id="file" type="file" accept="image/*"></label></div>
<p id="error"></p>
<img id="drawing" alt="">
<table id="table"></table>
<script>
const $ = (id) => document.getElementById(id);
fetch("info").then(r => r.json()).then(i => {
  $("info").textContent = `task ${i.task}, ${i.classes.length} classes, model ${i.model_file}, visionkit ${i.visionkit_version}`;
});
function rows(record) {
  if (record.detections) return record.detections.map(d => [d["class"], d.score, d.bbox.map(v => v.toFixed(1)).join(", ")]);
  if (record.top) return record.top.map(t => [t.name, t.score, ""]);
  if (record.class_pixels) return Object.entries(record.class_pixels).map(([k, v]) => [k, v, "pixels"]);
  return Object.entries(record).map(([k, v]) => [k, JSON.stringify(v), ""]);
}
async function send(file) {
  $("error").textContent = ""; $("table").innerHTML = ""; $("drawing").removeAttribute("src");
  const form = new FormData(); form.append("files", file);
  const answer = await fetch("predict", {method: "POST", body: form});
  const body = await answer.json();
  if (!answer.ok) { $("error").textContent = body.error; return; }
  const head = "<tr><th>class</th><th>score</th><th>detail</th></tr>";
  $("table").innerHTML = head + rows(body.predictions[0]).map(r => "<tr>" + r.map(c => `<td>${c}</td>`).join("") + "</tr>").join("");
  const again = new FormData(); again.append("files", file);
  const picture = await fetch("predict?draw=1", {method: "POST", body: again});
  if (picture.ok) $("drawing").src = URL.createObjectURL(await picture.blob());
}
$("file").addEventListener("change", (e) => e.target.files[0] && send(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); e.dataTransfer.files[0] && send(e.dataTransfer.files[0]); });
</script>
</body></html>
"""
