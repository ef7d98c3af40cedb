// The generate form run on a LocalModel: shared by the exported page (page.js) and the
// playground's "run in this browser". Settings are read from the same inputs the
// playground has (temperature, top_p, top_k, length, seed, stop-at).
const LN2 = Math.log(2);

export class InputError extends Error {
  constructor(message, input) {
    super(message);
    this.input = input;
  }
}

function number(input, { integer = false, low = -Infinity, high = Infinity, open = false, blank }) {
  const label = input.labels[0].textContent;
  if (input.value.trim() === "") {
    if (blank !== undefined) return blank;
    throw new InputError(`${label}: a number is needed.`, input);
  }
  const value = Number(input.value);
  const ok = !input.validity.badInput && Number.isFinite(value) && (!integer || Number.isInteger(value))
    && value <= high && (open ? value > low : value >= low);
  if (!ok) {
    const what = integer ? "an integer" : "a number";
    throw new InputError(`${label}: “${input.value}” is not ${what} in the allowed range.`, input);
  }
  return value;
}

export function unescape(text) {
  return text.replace(/\\(n|t|r|\\)/g, (_, c) => ({ n: "\n", t: "\t", r: "\r", "\\": "\\" })[c]);
}

/** The generation settings in the form whose inputs `$` finds by id. */
export function settings($) {
  const stop = unescape($("stop-at").value);
  return {
    temperature: number($("temperature"), { low: 0 }),
    topP: number($("top_p"), { low: 0, high: 1, open: true }),
    topK: number($("top_k"), { integer: true, low: 0 }),
    maxChars: number($("length"), { integer: true, low: 0 }),
    // 53 bits, like the server's random seeds: exact in a JavaScript number.
    seed: number($("seed"), { integer: true, low: 0, high: 2 ** 53 - 1, blank: Math.floor(Math.random() * 2 ** 53) }),
    stop: stop ? [stop] : [],
  };
}

/**
 * Generate into `view` (a CharView) with `options`, reporting in the status element;
 * resolves to {finish, chars, seconds}.
 */
export async function run(model, prompt, options, view, status, signal) {
  view.clear();
  view.plain(prompt);
  status.dataset.state = "running";
  status.textContent = "Generating in this browser…";
  const started = performance.now();
  let chars = 0;
  let bits = 0;
  const pieces = model.generate(prompt, { ...options, alternatives: 5, signal });
  let next;
  while (!(next = await pieces.next()).done) {
    const piece = next.value;
    view.add(piece.text, piece.logprob, piece.top);
    chars += [...piece.text].length;
    bits -= piece.logprob / LN2;
  }
  const seconds = (performance.now() - started) / 1000;
  const finish = next.value;
  const why = { stop: "reached the stop string", length: "reached the length", aborted: "stopped" }[finish];
  const rate = seconds > 0 ? `, ${Math.round(chars / seconds)} chars/s` : "";
  const mean = chars ? `, ${(bits / chars).toFixed(2)} bits/char on average` : "";
  status.dataset.state = finish === "aborted" ? "stopped" : "done";
  status.dataset.charsPerSecond = String(seconds > 0 ? chars / seconds : 0);
  status.textContent = `Done: ${chars} characters in ${seconds.toFixed(2)} s (${why}${rate}${mean}; seed ${options.seed}).`;
  return { finish, chars, seconds };
}
