// @ts-check
/**
 * This node's HTTP API, for the pages: JSON calls, server-sent events read with fetch (so that an API
 * key can travel in a header, which EventSource cannot send), and streamed chat completions.
 * Nothing here touches the DOM; the page modules render what these return.
 */

const KEY_STORAGE = "ai4all.apiKey";

/** An error answer of the API, in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`). */
export class ApiError extends Error {
  /**
   * @param {number} status HTTP status (0: the node could not be reached)
   * @param {string} message what the node said
   * @param {string | null} [code] OpenAI-style error code, e.g. "invalid_api_key"
   */
  constructor(status, message, code = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

/** @returns {string | null} the API key given in this tab, if the node wants one */
export function apiKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE);
  } catch {
    return null;
  }
}

/** @param {string | null} key kept for this tab only (sessionStorage), never sent anywhere but this node */
export function setApiKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    // storage disabled: the key lasts until the page is left
  }
}

/**
 * @param {Record<string, string>} [extra]
 * @returns {Record<string, string>}
 */
function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

/**
 * @param {Response} response an answer that is not ok
 * @returns {Promise<ApiError>}
 */
async function failure(response) {
  let message = `${response.status} ${response.statusText}`.trim();
  let code = null;
  try {
    const body = await response.json();
    if (body && typeof body.error === "object" && body.error) {
      message = String(body.error.message ?? message);
      code = body.error.code ?? null;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message, code);
}

/**
 * @param {string} path
 * @param {RequestInit} init
 * @returns {Promise<Response>}
 */
async function request(path, init) {
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error instanceof DOMException && error.name === "AbortError") throw error;
    throw new ApiError(0, `this node cannot be reached (${error instanceof Error ? error.message : error})`);
  }
  if (!response.ok) throw await failure(response);
  return response;
}

/**
 * GET a JSON document of the API.
 * @param {string} path e.g. "/v1/models"
 * @param {AbortSignal} [signal]
 * @returns {Promise<any>}
 */
export async function getJson(path, signal) {
  const response = await request(path, { headers: headers(), signal });
  return response.json();
}

/**
 * POST a JSON body; resolves to the JSON answer, rejects with an `ApiError`.
 * @param {string} path
 * @param {unknown} body
 * @param {AbortSignal} [signal]
 * @returns {Promise<any>}
 */
export async function postJson(path, body, signal) {
  const response = await request(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify(body),
    signal,
  });
  return response.json();
}

/** @typedef {{event: string, data: string}} SseEvent */

/**
 * Parse a `text/event-stream` body into events, as the HTML standard describes (comments, `event:`,
 * multi-line `data:`, CR, LF or CRLF line ends); `retry:` and `id:` are not needed here.
 * @param {ReadableStream<Uint8Array>} body
 * @returns {AsyncGenerator<SseEvent>}
 */
export async function* readEvents(body) {
  const decoder = /** @type {ReadableWritablePair<string, Uint8Array>} */ (/** @type {unknown} */ (new TextDecoderStream()));
  const reader = body.pipeThrough(decoder).getReader();
  let buffer = "";
  /** @type {string[]} */
  let data = [];
  let event = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      for (;;) {
        const end = buffer.search(/\r\n|\r|\n/);
        if (end < 0 || (end === buffer.length - 1 && buffer[end] === "\r")) break; // CR may start a CRLF
        const line = buffer.slice(0, end);
        buffer = buffer.slice(buffer.startsWith("\r\n", end) ? end + 2 : end + 1);
        if (line === "") {
          if (data.length) yield { event: event || "message", data: data.join("\n") };
          data = [];
          event = "";
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "data") data.push(text);
        else if (field === "event") event = text;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/**
 * @typedef {object} ChatRequest
 * @property {string} model
 * @property {{role: string, content: string}[]} messages
 * @property {number} [temperature]
 * @property {number} [max_tokens]
 */

/**
 * @typedef {object} ChatChunk one event of a streamed chat completion (OpenAI's chunk)
 * @property {string} id
 * @property {{delta: {role?: string, content?: string | null}, finish_reason: string | null}[]} choices
 * @property {{prompt_tokens: number, completion_tokens: number, total_tokens: number} | null} [usage]
 */

/**
 * Stream a chat completion: yields each chunk as it arrives, the last one with `usage`.
 * @param {ChatRequest} chat
 * @param {AbortSignal} [signal] aborting it stops the generation on the node too
 * @returns {AsyncGenerator<ChatChunk>}
 */
export async function* streamChat(chat, signal) {
  const response = await request("/v1/chat/completions", {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify({ ...chat, stream: true, stream_options: { include_usage: true } }),
    signal,
  });
  if (!response.body) throw new ApiError(response.status, "the reply has no body to stream");
  for await (const { data } of readEvents(response.body)) {
    if (data === "[DONE]") return;
    const chunk = JSON.parse(data);
    if (chunk && chunk.error) {
      throw new ApiError(500, String(chunk.error.message), chunk.error.code ?? null);
    }
    yield /** @type {ChatChunk} */ (chunk);
  }
}

/**
 * Follow a server-sent event stream for as long as `signal` is not aborted, reconnecting after a
 * failure; each event's data is parsed as JSON and handed to `onData`.
 * @param {string} path e.g. "/v1/node/events"
 * @param {(data: any, event: string) => void} onData
 * @param {{signal?: AbortSignal, onError?: (error: ApiError) => void, onOpen?: () => void, retryMs?: number}} [options]
 */
export async function follow(path, onData, options = {}) {
  const { signal, onError = () => {}, onOpen = () => {}, retryMs = 3000 } = options;
  while (!signal?.aborted) {
    try {
      const response = await request(path, { headers: headers({ Accept: "text/event-stream" }), signal });
      if (!response.body) throw new ApiError(response.status, "the event stream has no body");
      onOpen();
      for await (const { event, data } of readEvents(response.body)) onData(JSON.parse(data), event);
      throw new ApiError(0, "the event stream ended");
    } catch (error) {
      if (signal?.aborted) return;
      onError(error instanceof ApiError ? error : new ApiError(0, String(error)));
    }
    await new Promise((resolve) => setTimeout(resolve, retryMs));
  }
}
