// The exported page: load ./model into onnxruntime-web and generate with the form.
import { LocalModel } from "./generate.js";
import { InputError, run, settings } from "./local.js";
import { CharView } from "./view.js";

const $ = (id) => document.getElementById(id);
const view = new CharView($("gen-output"), $("tip"));
let model = null;
let running = null; // the AbortController of the generation in progress

function showError(error) {
  $("alert").textContent = error instanceof InputError ? error.message : `Something went wrong: ${error.message || error}`;
  if (error.input) {
    error.input.setAttribute("aria-invalid", "true");
    error.input.focus();
  }
}

function setRunning(controller) {
  running = controller;
  $("generate").disabled = Boolean(controller) || !model;
  const stopHadFocus = document.activeElement === $("stop");
  $("stop").disabled = !controller;
  if (stopHadFocus && !controller) $("generate").focus();
}

async function generate() {
  if (running || !model) return;
  $("alert").textContent = "";
  let options;
  try {
    options = settings($);
  } catch (e) {
    showError(e);
    return;
  }
  const controller = new AbortController();
  setRunning(controller);
  try {
    await run(model, $("prompt").value, options, view, $("gen-status"), controller.signal);
  } catch (e) {
    $("gen-status").dataset.state = "error";
    $("gen-status").textContent = "Generation failed: see the message above.";
    showError(e);
  } finally {
    setRunning(null);
  }
}

$("gen-form").addEventListener("submit", (e) => {
  e.preventDefault();
  generate();
});
$("stop").addEventListener("click", () => running && running.abort());
document.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    generate();
  } else if (e.key === "Escape" && running) {
    e.preventDefault();
    running.abort();
  }
});
for (const input of document.querySelectorAll("input, textarea")) {
  input.addEventListener("input", () => input.removeAttribute("aria-invalid"));
}

try {
  model = await LocalModel.open(new URL("model", document.baseURI).href.replace(/\/$/, ""));
  const m = model.manifest;
  $("model-name").textContent = `${m.source.name || "model"} — ${m.cell} ${m.layers}×${m.hidden}, ` +
    `${m.vocab_size} tokens, weights in ${m.dtype}`;
  $("gen-status").dataset.state = "idle";
  $("gen-status").textContent = "Ready.";
  setRunning(null);
} catch (e) {
  $("gen-status").dataset.state = "error";
  $("gen-status").textContent = "The model did not load: see the message above.";
  showError(e);
}
