// The playground: pick a model, generate with live per-character colours, score a text.
// Plain modules, no build step: what is here is what the browser runs.
import { ApiError, apiKey, call, fetchFile, stream } from "./api.js";
import { CharView } from "./view.js";

const $ = (id) => document.getElementById(id);
const LN2 = Math.log(2);
const ALTERNATIVES = 5;

const tip = $("tip");
const views = { generate: new CharView($("gen-output"), tip), score: new CharView($("score-output"), tip) };
let running = null; // the AbortController of the generation in progress
let cards = new Map(); // model id -> its /v1/models card
const locals = new Map(); // model id -> Promise of its LocalModel, loaded on first use
// What "run in this browser" cannot do: these inputs are the server's alone.
const SERVER_ONLY = ["min_p", "typical_p", "repetition_penalty", "frequency_penalty", "presence_penalty",
  "char_bias", "constraint-kind", "constraint"];

// -- errors and status -------------------------------------------------------------------

// The sampling controls: each is a number input whose id is the request field it sends.
const SAMPLING = ["temperature", "top_p", "top_k", "min_p", "typical_p", "repetition_penalty",
  "frequency_penalty", "presence_penalty", "seed"];
// The request fields each input sends (a 400 names the field; we mark that input).
const FIELDS = { max_tokens: "length", stop: "stop-at", model: "model", prompt: "prompt", text: "score-text",
  char_bias: "char_bias", structured_outputs: "constraint", "structured_outputs.regex": "constraint",
  "structured_outputs.json": "constraint", ...Object.fromEntries(SAMPLING.map((name) => [name, name])) };

function clearError() {
  $("alert").textContent = "";
  for (const el of document.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

function showError(error) {
  const message = error instanceof ApiError ? error.message : `Something went wrong in the page: ${error}`;
  $("alert").textContent = message;
  const param = error.param || "";
  const input = param && $(FIELDS[param] || FIELDS[param.split(".")[0]] || param);
  if (input) {
    input.setAttribute("aria-invalid", "true");
    input.focus();
  }
  if (error.status === 401) askForKey();
}

function setStatus(id, state, text) {
  $(id).dataset.state = state;
  $(id).textContent = text;
}

function askForKey() {
  $("key-row").hidden = false;
  $("api-key").value = apiKey.get();
  $("api-key").focus();
}

// -- models --------------------------------------------------------------------------------

function describe(model) {
  const c = model.charnet || {};
  const shape = c.cell ? ` — ${c.cell} ${c.layers}×${c.hidden}` : "";
  const bpc = typeof c.val_bits_per_char === "number" ? `, ${c.val_bits_per_char.toFixed(2)} bits/char` : "";
  return `${model.id}${shape}${bpc}`;
}

async function loadModels() {
  const select = $("model");
  try {
    const { data } = await call("/v1/models");
    const previous = select.value;
    select.replaceChildren(...data.map((m) => new Option(describe(m), m.id)));
    if (data.some((m) => m.id === previous)) select.value = previous;
    cards = new Map(data.map((m) => [m.id, m]));
    offerLocal();
    if (!data.length) throw new ApiError("The server serves no models.");
    clearError();
    return true;
  } catch (e) {
    select.replaceChildren(new Option("No models (see the message above)", ""));
    showError(e);
    return false;
  }
}

// -- generate ------------------------------------------------------------------------------

/** A number input's value: undefined when blank (the server's default), else a number. */
function number(id) {
  const input = $(id);
  if (input.validity.badInput) {
    throw new ApiError(`${input.labels[0].textContent}: “${input.value}” is not a number.`, { param: id });
  }
  return input.value.trim() === "" ? undefined : Number(input.value);
}

function unescape(text) {
  return text.replace(/\\(n|t|r|\\)/g, (_, c) => ({ n: "\n", t: "\t", r: "\r", "\\": "\\" })[c]);
}

/** "e=-100 !=5" as { e: -100, "!": 5 }; a malformed entry is sent as is, for the server to name. */
function charBias(text) {
  const entries = text.trim().split(/\s+/).filter(Boolean).map((item) => {
    const at = item.lastIndexOf("=");
    const value = item.slice(at + 1);
    return at > 0 && value !== "" && !Number.isNaN(Number(value)) ? [unescape(item.slice(0, at)), Number(value)]
      : [item, item];
  });
  return entries.length ? Object.fromEntries(entries) : undefined;
}

/** The structured_outputs the constraint fields ask for, or undefined. */
function structuredOutputs() {
  const kind = $("constraint-kind").value;
  const text = $("constraint").value.trim();
  if (!kind || !text) return undefined;
  if (kind !== "json") return { [kind]: text };
  try {
    return { json: JSON.parse(text) };
  } catch {
    return { json: text }; // the server says what is wrong with it
  }
}

function generationRequest() {
  const stop = unescape($("stop-at").value);
  return {
    model: $("model").value || undefined, prompt: $("prompt").value, max_tokens: number("length"),
    ...Object.fromEntries(SAMPLING.map((name) => [name, number(name)])),
    char_bias: charBias($("char_bias").value), structured_outputs: structuredOutputs(),
    stop: stop ? [stop] : undefined, logprobs: ALTERNATIVES, stream: true,
  };
}

/** Render one streamed choice: a span per character, coloured by its log-probability. */
function append(view, choice, totals) {
  const lp = choice.logprobs;
  if (!choice.text) return;
  if (!lp || !lp.tokens.length) {
    for (const ch of choice.text) view.add(ch, null);
    return;
  }
  const top = (i) => Object.entries(lp.top_logprobs[i] || {});
  if (lp.tokens.join("") === choice.text) {
    lp.tokens.forEach((t, i) => view.add(t, lp.token_logprobs[i], top(i)));
  } else {
    // A byte-vocabulary model: tokens are bytes, the text whole characters. The piece's
    // probability is the product of its bytes'; the alternatives are its first byte's.
    const logprob = lp.token_logprobs.reduce((a, b) => a + b, 0);
    view.add(choice.text, logprob, top(0));
  }
  for (const value of lp.token_logprobs) totals.bits -= value / LN2;
  totals.tokens += lp.tokens.length;
}

function setRunning(controller) {
  running = controller;
  $("generate").disabled = Boolean(controller);
  // Focus must not vanish with a button that becomes disabled under it.
  const stopHadFocus = document.activeElement === $("stop");
  $("stop").disabled = !controller;
  if (stopHadFocus && !controller) $("generate").focus();
}

async function generate() {
  if (running) return;
  clearError();
  if ($("local").checked) {
    await generateLocal();
    return;
  }
  let body;
  try {
    body = generationRequest();
  } catch (e) {
    showError(e);
    return;
  }
  const view = views.generate;
  view.clear();
  view.plain(body.prompt);
  const controller = new AbortController();
  setRunning(controller);
  setStatus("gen-status", "running", "Generating…");
  const totals = { bits: 0, tokens: 0 };
  let finish = null;
  try {
    for await (const chunk of stream("/v1/completions", body, controller.signal)) {
      for (const choice of chunk.choices) {
        append(view, choice, totals);
        finish = choice.finish_reason || finish;
      }
    }
    const mean = totals.tokens ? `, ${(totals.bits / totals.tokens).toFixed(2)} bits/char on average` : "";
    const why = finish === "stop" ? "reached the stop string" : "reached the length";
    setStatus("gen-status", "done", `Done: ${view.chars().length} characters (${why})${mean}.`);
  } catch (e) {
    if (e.name === "AbortError") {
      setStatus("gen-status", "stopped", `Stopped after ${view.chars().length} characters.`);
    } else {
      setStatus("gen-status", "error", "Generation failed: see the message above.");
      showError(e);
    }
  } finally {
    setRunning(null);
  }
}

function stop() {
  // Aborting the fetch closes the connection; the server cancels the generation then.
  if (running) running.abort();
}

// -- run in this browser ------------------------------------------------------------------

/** Show "run in this browser" for a model with an ONNX export; grey out what it lacks. */
function offerLocal() {
  const card = cards.get($("model").value);
  const offered = Boolean(card && card.charnet && card.charnet.onnx);
  $("local-row").hidden = !offered;
  if (!offered) $("local").checked = false;
  for (const id of SERVER_ONLY) $(id).disabled = $("local").checked;
}

function localModel(id) {
  if (!locals.has(id)) {
    const loading = import("/local/generate.js").then(({ LocalModel }) =>
      LocalModel.open(`/v1/models/${encodeURIComponent(id)}/onnx`, fetchFile));
    loading.catch(() => locals.delete(id)); // a failed load is tried again next time
    locals.set(id, loading);
  }
  return locals.get(id);
}

async function generateLocal() {
  const { run, settings } = await import("/local/local.js");
  let options;
  try {
    options = settings($);
  } catch (e) {
    showError(new ApiError(e.message, { param: e.input ? e.input.id : null }));
    return;
  }
  const controller = new AbortController();
  setRunning(controller);
  setStatus("gen-status", "running", "Loading the model into this browser…");
  try {
    const model = await localModel($("model").value);
    await run(model, $("prompt").value, options, views.generate, $("gen-status"), controller.signal);
  } catch (e) {
    setStatus("gen-status", "error", "Generation in this browser failed: see the message above.");
    showError(e instanceof ApiError ? e : new ApiError(`Running the model in this browser failed: ${e.message}`));
  } finally {
    setRunning(null);
  }
}

// -- score ---------------------------------------------------------------------------------

async function score() {
  clearError();
  const view = views.score;
  const text = $("score-text").value;
  $("score").disabled = true;
  setStatus("score-status", "running", "Scoring…");
  try {
    const result = await call("/v1/score", { model: $("model").value || undefined, text, top: ALTERNATIVES });
    view.clear();
    for (const c of result.chars) view.add(c.text, c.logprob, c.top, c.unknown);
    const status = $("score-status");
    status.dataset.state = "done";
    status.replaceChildren();
    if (result.bits_per_char === null) {
      status.append("Too short to score: the first character has nothing before it to be predicted from.");
      return;
    }
    const value = document.createElement("strong");
    value.id = "bits-per-char";
    value.dataset.bits = String(result.bits_per_char);
    value.textContent = result.bits_per_char.toFixed(3);
    const unknownNote = result.unknown ? `; ${result.unknown} not in the model's vocabulary` : "";
    status.append(value, ` bits/char over ${result.tokens} predicted characters${unknownNote}.`);
  } catch (e) {
    setStatus("score-status", "error", "Scoring failed: see the message above.");
    showError(e);
  } finally {
    $("score").disabled = false;
  }
}

// -- tabs and keys ---------------------------------------------------------------------------

const TABS = [$("tab-generate"), $("tab-score")];

function select(tab, focus = false) {
  for (const t of TABS) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !on;
  }
  tip.hidden = true;
  if (focus) tab.focus();
}

for (const tab of TABS) {
  tab.addEventListener("click", () => select(tab));
  tab.addEventListener("keydown", (e) => {
    const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
    if (step === undefined) return;
    e.preventDefault();
    select(TABS[(TABS.indexOf(tab) + step + TABS.length) % TABS.length], true);
  });
}

document.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    if ($("tab-score").getAttribute("aria-selected") === "true") score();
    else generate();
  } else if (e.key === "Escape") {
    if (running) {
      e.preventDefault();
      stop();
    }
    tip.hidden = true;
  }
});

$("gen-form").addEventListener("submit", (e) => {
  e.preventDefault();
  generate();
});
$("score-form").addEventListener("submit", (e) => {
  e.preventDefault();
  score();
});
$("stop").addEventListener("click", stop);
$("model").addEventListener("change", offerLocal);
$("local").addEventListener("change", offerLocal);
$("setup").addEventListener("submit", (e) => {
  e.preventDefault();
  apiKey.set($("api-key").value.trim());
  loadModels();
});
for (const input of document.querySelectorAll("input, textarea, select")) {
  input.addEventListener("input", () => input.removeAttribute("aria-invalid"));
}

if (apiKey.get()) $("key-row").hidden = false;
loadModels();
