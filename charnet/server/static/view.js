// Coloured characters and their inspector: the colour scale, the spans that carry each
// character's probability, the tooltip listing the alternatives, and keyboard access.

// Viridis: perceptually uniform and readable with the common colour-vision deficiencies
// (unlike the red-green of the original char-rnn pictures). Stop k is probability k/8.
const STOPS = ["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"]
  .map((hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)));

/** The background for probability p in [0, 1], and a text colour readable on it. */
export function colour(p) {
  const x = Math.min(Math.max(Number.isFinite(p) ? p : 0, 0), 1) * (STOPS.length - 1);
  const i = Math.min(Math.floor(x), STOPS.length - 2);
  const f = x - i;
  const rgb = STOPS[i].map((c, k) => Math.round(c + (STOPS[i + 1][k] - c) * f));
  // Relative luminance (sRGB, roughly): dark backgrounds get white text.
  const lum = (0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]) / 255;
  return { background: `rgb(${rgb.join(", ")})`, text: lum < 0.45 ? "#fff" : "#000" };
}

const NAMES = { " ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍", "": "∅" };

/** A character as a person can see it in a list: whitespace and controls made visible. */
export function visible(ch) {
  if (ch in NAMES) return NAMES[ch];
  const code = ch.codePointAt(0);
  if (ch.length <= 2 && (code < 0x20 || (code >= 0x7f && code < 0xa0))) {
    return `U+${code.toString(16).toUpperCase().padStart(4, "0")}`;
  }
  return ch;
}

const LN2 = Math.log(2);
const percent = (p) => (p >= 0.9995 ? "100%" : p < 0.0005 ? "<0.1%" : `${(p * 100).toFixed(1)}%`);
const bits = (logprob) => `${(-logprob / LN2).toFixed(2)} bits`;

/**
 * One output area: append characters with their log-probabilities and alternatives,
 * then inspect them by mouse or keyboard (a roving tabindex: one character is in the
 * tab order, the arrow keys move among them).
 */
export class CharView {
  constructor(element, tip) {
    this.el = element;
    this.tip = tip;
    this.info = new WeakMap(); // span -> {logprob, top}
    this.current = null;
    element.addEventListener("mouseover", (e) => {
      const span = e.target.closest(".ch");
      if (span && element.contains(span)) this.show(span);
    });
    element.addEventListener("mouseleave", () => {
      if (!element.contains(document.activeElement)) this.hide();
    });
    element.addEventListener("focusin", (e) => {
      if (e.target.classList.contains("ch")) this.show(e.target);
    });
    element.addEventListener("focusout", (e) => {
      if (!element.contains(e.relatedTarget)) this.hide();
    });
    element.addEventListener("keydown", (e) => this.key(e));
  }

  clear() {
    this.hide();
    this.el.replaceChildren();
    this.current = null;
  }

  /** Plain, uncoloured text (the prompt before a generation). */
  plain(text) {
    const span = document.createElement("span");
    span.className = "prompt";
    span.textContent = text;
    this.el.append(span);
  }

  /**
   * A character (or a few, for a multi-byte character of a byte-vocabulary model),
   * coloured by its log-probability; null logprob: not predicted (shown grey).
   * `top` is [[text, logprob], ...]; `unknown` marks a character outside the vocabulary.
   */
  add(text, logprob, top = [], unknown = false) {
    const span = document.createElement("span");
    span.className = "ch";
    if (text === "\n") span.classList.add("nl");
    if (unknown) span.classList.add("unknown");
    span.textContent = text;
    if (logprob === null || logprob === undefined) {
      span.classList.add("none");
    } else {
      const p = Math.exp(logprob);
      const c = colour(p);
      span.dataset.logprob = String(logprob);
      span.dataset.p = p.toFixed(6);
      // CSSOM, not a style attribute: allowed under the page's Content-Security-Policy.
      span.style.backgroundColor = c.background;
      span.style.color = c.text;
    }
    this.info.set(span, { logprob, top, unknown });
    this.el.append(span);
    if (!this.current) this.focusable(span);
    return span;
  }

  chars() {
    return this.el.querySelectorAll(".ch");
  }

  focusable(span) {
    if (this.current) this.current.removeAttribute("tabindex");
    this.current = span;
    span.tabIndex = 0;
  }

  key(e) {
    const span = e.target.closest(".ch");
    if (!span) return;
    const all = Array.from(this.chars());
    const at = all.indexOf(span);
    const to = { ArrowRight: at + 1, ArrowDown: at + 1, ArrowLeft: at - 1, ArrowUp: at - 1, Home: 0,
      End: all.length - 1 }[e.key];
    if (to === undefined) return;
    e.preventDefault();
    const next = all[Math.min(Math.max(to, 0), all.length - 1)];
    this.focusable(next);
    next.focus();
  }

  show(span) {
    const info = this.info.get(span);
    if (!info) return;
    const tip = this.tip;
    tip.replaceChildren();
    const head = document.createElement("p");
    head.className = "tip-head";
    const ch = document.createElement("span");
    ch.className = "tip-ch";
    ch.textContent = visible(span.textContent);
    head.append(ch);
    if (info.logprob === null || info.logprob === undefined) {
      head.append(" not predicted: nothing comes before it");
    } else {
      head.append(` ${percent(Math.exp(info.logprob))} · ${bits(info.logprob)}`);
      if (info.unknown) head.append(" · not in the vocabulary");
    }
    tip.append(head);
    if (info.top.length) {
      const list = document.createElement("ol");
      list.className = "alts";
      list.setAttribute("aria-label", "Most likely characters here");
      for (const [text, logprob] of [...info.top].sort((a, b) => b[1] - a[1])) {
        const p = Math.exp(logprob);
        const item = document.createElement("li");
        if (text === span.textContent) item.className = "chosen";
        const name = document.createElement("span");
        name.className = "alt-ch";
        name.textContent = visible(text);
        const bar = document.createElement("span");
        bar.className = "bar";
        const fill = document.createElement("span");
        fill.style.width = `${Math.max(p * 100, 1)}%`;
        fill.style.backgroundColor = colour(p).background;
        bar.append(fill);
        const value = document.createElement("span");
        value.className = "alt-p";
        value.textContent = percent(p);
        item.append(name, bar, value);
        list.append(item);
      }
      tip.append(list);
    }
    tip.hidden = false;
    span.setAttribute("aria-describedby", tip.id);
    this.place(span);
  }

  place(span) {
    const r = span.getBoundingClientRect();
    const tip = this.tip;
    const width = tip.offsetWidth;
    const left = Math.min(Math.max(r.left, 8), document.documentElement.clientWidth - width - 8);
    tip.style.left = `${left + window.scrollX}px`;
    tip.style.top = `${r.bottom + window.scrollY + 6}px`;
  }

  hide() {
    this.tip.hidden = true;
    for (const span of this.el.querySelectorAll("[aria-describedby]")) span.removeAttribute("aria-describedby");
  }
}
