// Talking to charnet serve: requests with the API key, Server-Sent Events read from a
// fetch body (EventSource cannot POST), and every failure turned into words.

const KEY = "charnet-api-key";

export const apiKey = {
  // sessionStorage: the key survives a reload of this tab, not the browser.
  get: () => sessionStorage.getItem(KEY) || "",
  set: (value) => (value ? sessionStorage.setItem(KEY, value) : sessionStorage.removeItem(KEY)),
};

/** An error to show in the page: `message` in words, `status` (0: no answer), `param`. */
export class ApiError extends Error {
  constructor(message, { status = 0, param = null, code = null } = {}) {
    super(message);
    this.status = status;
    this.param = param;
    this.code = code;
  }
}

function headers(json) {
  const h = { Accept: json ? "application/json" : "text/event-stream" };
  if (json !== null) h["Content-Type"] = "application/json";
  const key = apiKey.get();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

/** fetch, with a network failure (server down, connection refused) as an ApiError. */
async function send(path, { method = "GET", body, signal, stream = false } = {}) {
  try {
    return await fetch(path, {
      method, signal, body: body === undefined ? undefined : JSON.stringify(body),
      headers: headers(body === undefined ? null : !stream),
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(`Could not reach the server at ${location.origin} (${e.message}). ` +
      "Is charnet serve still running?");
  }
}

/** The words for a failed response: the server's own message, with what it means. */
export async function failure(response) {
  let detail = {};
  try {
    detail = (await response.json()).error || {};
  } catch {
    // Not our JSON (a proxy's page, say): the status line must do.
  }
  const status = response.status;
  const message = detail.message || `${status} ${response.statusText}`.trim();
  const retry = response.headers.get("Retry-After");
  const said = {
    400: `The server did not accept the request: ${message}.`,
    401: detail.message && /invalid/i.test(detail.message)
      ? "The server did not accept this API key. Check it and enter it again."
      : "This server needs an API key: enter it in the API key field.",
    404: `Not found: ${message}.`,
    408: `The server stopped the request because it took too long: ${message}.`,
    413: `That is too large for the server: ${message}.`,
    429: `The model is busy right now (${message}). Try again${retry ? ` in ${retry} s` : " shortly"}.`,
    503: `The server is not ready (${message}). Try again in a moment.`,
  }[status] || `The server failed (HTTP ${status}): ${message}.`;
  return new ApiError(said, { status, param: detail.param || null, code: detail.code || null });
}

/** GET a file (with the API key); the response, or an ApiError. */
export async function fetchFile(path) {
  const response = await send(path);
  if (!response.ok) throw await failure(response);
  return response;
}

/** GET or POST JSON; the parsed body, or an ApiError. */
export async function call(path, body) {
  const response = await send(path, body === undefined ? {} : { method: "POST", body });
  if (!response.ok) throw await failure(response);
  return response.json();
}

/**
 * POST a streaming request and yield each event's parsed data until `[DONE]`.
 * An `{"error": ...}` event (a failure mid-stream) is thrown as an ApiError.
 */
export async function* stream(path, body, signal) {
  const response = await send(path, { method: "POST", body, signal, stream: true });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      // An event ends at a blank line; its data is its `data:` lines joined.
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const lines = buffer.slice(0, end).split("\n");
        buffer = buffer.slice(end + 2);
        const data = lines.filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, "")).join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        const event = JSON.parse(data);
        if (event.error) {
          throw new ApiError(`Generation failed: ${event.error.message}.`, { status: 500, code: event.error.code });
        }
        yield event;
      }
    }
  } catch (e) {
    if (e instanceof ApiError || e.name === "AbortError") throw e;
    throw new ApiError(`The connection to the server broke off (${e.message}).`);
  } finally {
    reader.cancel().catch(() => {});
  }
  throw new ApiError("The server ended the stream early, without finishing.");
}
