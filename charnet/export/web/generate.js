// Generation in the browser: an exported charnet model (charnet export --format onnx)
// stepped by onnxruntime-web (WebAssembly), sampled as charnet samples.
//
// charnet/export/runtime.py is this file transcribed to Python (onnxruntime): the same
// priming, controls, draw and randomness, arithmetic in float64 on both sides, so a seed
// writes the same text here and there. The randomness and the draw are the engine's
// (charnet/inference/sampling.py): the uniform behind step t of seed s is SplitMix64 of
// (s, t), and the draw is an inverse CDF in vocabulary order over the characters top-k
// and top-p keep.
import * as ort from "./ort/ort.wasm.min.mjs";

// One thread: a step of one sequence is too small to split, and threads would need a
// cross-origin-isolated page, which a plain static host does not give.
ort.env.wasm.numThreads = 1;

const FORMAT = "charnet-onnx";
const MASK = (1n << 64n) - 1n;

/** The engine's uniform in [0, 1) for step `step` of seed `seed` (SplitMix64). */
export function uniform(seed, step) {
  let z = ((BigInt(seed) * 0x9e3779b97f4a7c15n) & MASK) ^ ((BigInt(step) + 0xd1b54a32d192ed03n) & MASK);
  z = (z + 0x9e3779b97f4a7c15n) & MASK;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK;
  z ^= z >> 31n;
  return Number(z >> 11n) / 2 ** 53;
}

/** The largest of `values` (a loop: spreading a big vocabulary into Math.max overflows the stack). */
function largest(values) {
  let top = -Infinity;
  for (const v of values) if (v > top) top = v;
  return top;
}

/** The next token from one row of logits (an array of numbers; banned ones -Infinity). */
export function choose(logits, { temperature, topK, topP }, u) {
  const n = logits.length;
  if (temperature === 0) {
    let best = 0;
    for (let i = 1; i < n; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }
  const scaled = Array.from(logits, (v) => v / temperature);
  const top = largest(scaled);
  let probs = scaled.map((v) => Math.exp(v - top));
  let total = 0;
  for (const p of probs) total += p;
  probs = probs.map((p) => p / total);
  if ((topK > 0 && topK < n) || topP < 1) {
    // Array.prototype.sort is stable: equal probabilities keep id order.
    const order = probs.map((_, i) => i).sort((a, b) => probs[b] - probs[a]);
    const keep = new Array(n).fill(false);
    let before = 0;
    order.forEach((i, rank) => {
      keep[i] = rank === 0 || ((topK === 0 || rank < topK) && before < topP);
      before += probs[i];
    });
    probs = probs.map((p, i) => (keep[i] ? p : 0));
  }
  const cdf = [];
  let acc = 0;
  for (const p of probs) cdf.push((acc += p));
  const target = u * acc;
  for (let i = 0; i < n; i++) if (cdf[i] > target) return i;
  return n - 1;
}

// Byte vocabularies write valid UTF-8 only, as the engine keeps them to (Utf8 in
// charnet/inference/constraints.py): rows 0-3 let a character start with room for 1, 2,
// 3 or 4+ bytes; rows 4-7 are the continuation byte after the lead bytes E0, ED, F0 and
// F4 (no overlong forms, surrogates or code points past U+10FFFF); row 8 any other.
const LEADS = [[0x00, 0x7f], [0xc2, 0xdf], [0xe0, 0xef], [0xf0, 0xf4]];
const UTF8_ROWS = [1, 2, 3, 4].map((n) => LEADS.slice(0, n))
  .concat([[[0xa0, 0xbf]], [[0x80, 0x9f]], [[0x90, 0xbf]], [[0x80, 0x8f]], [[0x80, 0xbf]]]);
const FIRST_CONTINUATION = { 0xe0: 4, 0xed: 5, 0xf0: 6, 0xf4: 7 };

class Utf8 {
  pending = 0; // continuation bytes still due
  nextRow = 8;

  /** The bytes that may come next, as [low, high] spans, with `room` bytes left. */
  allowed(room) {
    return UTF8_ROWS[this.pending ? this.nextRow : Math.min(room, 4) - 1];
  }

  feed(byte) {
    if (this.pending) {
      this.pending -= 1;
      this.nextRow = 8;
    } else if (byte >= 0xc0) {
      this.pending = byte < 0xe0 ? 1 : byte < 0xf0 ? 2 : 3;
      this.nextRow = FIRST_CONTINUATION[byte] ?? 8;
    }
  }
}

/** Natural-log probabilities of a row of logits (-Infinity stays -Infinity). */
function logSoftmax(logits) {
  const top = largest(logits);
  let total = 0;
  for (const v of logits) total += Math.exp(v - top);
  const norm = top + Math.log(total);
  return Array.from(logits, (v) => v - norm);
}

async function sha256(bytes) {
  // crypto.subtle exists only in secure contexts (https, localhost); elsewhere the
  // runtime's own parsing is the only check.
  if (!globalThis.crypto || !crypto.subtle) return null;
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** An exported model loaded into onnxruntime-web. */
export class LocalModel {
  /**
   * The export at `base` (a URL of the folder holding charnet.json and model.onnx).
   * `get(url)` fetches a file (the playground passes one that sends its API key).
   */
  static async open(base, get = (url) => fetch(url)) {
    const file = async (name) => {
      const response = await get(`${base}/${name}`);
      if (!response.ok) throw new Error(`${base}/${name}: HTTP ${response.status}`);
      return response;
    };
    const manifest = await (await file("charnet.json")).json();
    if (manifest.format !== FORMAT) throw new Error(`${base}/charnet.json is not a charnet ONNX manifest`);
    const bytes = new Uint8Array(await (await file("model.onnx")).arrayBuffer());
    const digest = await sha256(bytes);
    if (digest && digest !== manifest.files["model.onnx"]) {
      throw new Error(`${base}/model.onnx does not match its manifest's SHA-256; the export is damaged`);
    }
    const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
    return new LocalModel(manifest, session);
  }

  constructor(manifest, session) {
    this.manifest = manifest;
    this.session = session;
    this.ids = new Map(manifest.tokens.map((t, i) => [t, i]));
  }

  /** Token ids of `text`: its characters, or its UTF-8 bytes for a byte vocabulary. */
  encode(text) {
    const m = this.manifest;
    if (m.vocab_kind === "byte") return Array.from(new TextEncoder().encode(text));
    return Array.from(text, (ch) => (this.ids.has(ch) ? this.ids.get(ch) : m.unk_id));
  }

  /** A token as people see it: its character, or for a byte beyond ASCII "bytes:\xNN" (as the server shows it). */
  display(id) {
    if (this.manifest.vocab_kind !== "byte") return this.manifest.tokens[id];
    return id < 128 ? String.fromCharCode(id) : `bytes:\\x${id.toString(16).padStart(2, "0")}`;
  }

  zeroState() {
    const { layers, hidden } = this.manifest;
    return this.manifest.state.map(() => new ort.Tensor("float32", new Float32Array(layers * hidden), [layers, 1, hidden]));
  }

  /** [logits (Float32Array), new state] after feeding `token` in `state`. */
  async step(token, state) {
    const feeds = { tokens: new ort.Tensor("int64", BigInt64Array.of(BigInt(token)), [1]) };
    this.manifest.state.forEach((name, i) => { feeds[name] = state[i]; });
    const out = await this.session.run(feeds);
    return [out.logits.data, this.manifest.state.map((name) => out[`${name}_out`])];
  }

  /**
   * Continue `prompt`, yielding pieces {text, logprob, top}: the text shown (held back
   * while it may still be the start of a stop string), the model's log-probability of
   * it and its `alternatives` most likely characters. Returns the finish reason:
   * "stop", "length" or "aborted" (when `signal` aborts).
   */
  async *generate(prompt, { maxChars = 300, temperature = 1, topK = 0, topP = 1, seed = 0, stop = [],
    alternatives = 0, signal } = {}) {
    const m = this.manifest;
    let state = this.zeroState();
    let logits = null;
    for (const token of this.encode(prompt || m.document_start)) [logits, state] = await this.step(token, state);
    const decoder = new TextDecoder("utf-8");
    const utf8 = m.vocab_kind === "byte" ? new Utf8() : null;
    const stops = stop.filter(Boolean);
    let text = "";
    let held = []; // pieces not shown yet: they may begin a stop string
    let shown = 0; // length of the text yielded so far
    let pendingLogprob = 0; // bytes of a character not complete yet
    for (let t = 0; t < maxChars; t++) {
      if (signal && signal.aborted) return "aborted";
      const row = Array.from(logits);
      if (m.unk_id !== null) row[m.unk_id] = -Infinity;
      if (utf8) {
        const spans = utf8.allowed(maxChars - t);
        for (let i = 0; i < row.length; i++) if (!spans.some(([lo, hi]) => i >= lo && i <= hi)) row[i] = -Infinity;
      }
      const token = choose(row, { temperature, topK, topP }, uniform(seed, t));
      if (utf8) utf8.feed(token);
      const logp = logSoftmax(row);
      pendingLogprob += logp[token];
      const piece = m.vocab_kind === "byte" ? decoder.decode(Uint8Array.of(token), { stream: true }) : m.tokens[token];
      if (piece) {
        const top = alternatives ? logp.map((v, i) => [i, v]).sort((a, b) => b[1] - a[1]).slice(0, alternatives)
          .map(([i, v]) => [this.display(i), v]) : [];
        held.push({ text: piece, logprob: pendingLogprob, top });
        pendingLogprob = 0;
        const start = text.length;
        for (const ch of piece) {
          text += ch;
          const ended = stops.filter((s) => text.endsWith(s));
          if (ended.length) {
            // The text before the stop is shown (of the longest stop ending here), the rest dropped.
            const cut = text.length - Math.max(...ended.map((s) => s.length));
            for (const p of held) {
              if (shown >= cut) break;
              yield { ...p, text: p.text.slice(0, cut - shown) };
              shown += p.text.length;
            }
            return "stop";
          }
        }
        const showable = start + piece.length - heldBack(text, stops);
        while (held.length && shown + held[0].text.length <= showable) {
          shown += held[0].text.length;
          yield held.shift();
        }
      }
      [logits, state] = await this.step(token, state);
    }
    const rest = m.vocab_kind === "byte" ? decoder.decode() : "";
    for (const p of held) yield p;
    if (rest) yield { text: rest, logprob: pendingLogprob, top: [] };
    return "length";
  }
}

/** Length of the longest suffix of `text` that is a proper prefix of a stop string. */
function heldBack(text, stops) {
  let longest = 0;
  for (const s of stops) {
    for (let k = Math.min(s.length - 1, text.length); k > longest; k--) {
      if (text.endsWith(s.slice(0, k))) {
        longest = k;
        break;
      }
    }
  }
  return longest;
}
