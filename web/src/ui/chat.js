// @ts-check
/**
 * The chat page: a model picker from `/v1/models` (every model the mesh covers; those this node cannot
 * chat with, lacking their files or a peer for some block, are listed but disabled), replies streamed
 * from `/v1/chat/completions` and shown token by token, and a privacy indicator that says what this
 * reply sent beyond this node.
 */

import { ApiError, getJson, streamChat } from "./api.js";
import { byId, clearError, html, pageConfig, showError, startLive } from "./page.js";

const config = pageConfig();
const live = startLive((snapshot) => {
  // Reload the picker when the mesh starts or stops covering one of this node's models.
  const servable = snapshot.mesh.models.filter((m) => m.servable).map((m) => m.model);
  const listed = [...modelSelect.options].filter((o) => !o.disabled).map((o) => o.value);
  if (servable.sort().join("\n") !== listed.sort().join("\n") && Date.now() - lastLoad > 5000) loadModels();
});

const form = /** @type {HTMLFormElement} */ (byId("chat-form"));
const modelSelect = /** @type {HTMLSelectElement} */ (byId("model"));
const temperatureInput = /** @type {HTMLInputElement} */ (byId("temperature"));
const maxTokensInput = /** @type {HTMLInputElement} */ (byId("max-tokens"));
const promptInput = /** @type {HTMLTextAreaElement} */ (byId("prompt"));
const sendButton = /** @type {HTMLButtonElement} */ (byId("send"));
const stopButton = /** @type {HTMLButtonElement} */ (byId("stop"));
const messagesList = byId("messages");
const modelNote = byId("model-note");
const privacyText = byId("privacy-text");

/** @type {{role: "user" | "assistant", content: string}[]} */
let conversation = [];
/** @type {AbortController | null} */
let running = null;
let lastLoad = 0;

async function loadModels() {
  lastLoad = Date.now();
  try {
    const list = await getJson(`${config.api_base}/models`);
    /** @type {{id: string, chat: boolean, coverage: {covered_blocks: number, blocks: number | null}}[]} */
    const cards = list.data;
    const ids = cards.filter((m) => m.chat).map((m) => m.id);
    const others = cards.filter((m) => !m.chat);
    const chosen = modelSelect.value;
    modelSelect.replaceChildren(
      ...ids.map((id) => html("option", { value: id }, id)),
      ...others.map((m) => {
        const why =
          m.coverage.blocks === null
            ? "no files on this node"
            : `${m.coverage.covered_blocks} of ${m.coverage.blocks} blocks served`;
        const option = html("option", { value: m.id }, `${m.id} (${why})`);
        option.disabled = true;
        return option;
      }),
    );
    if (ids.includes(chosen)) modelSelect.value = chosen;
    else if (ids.length) modelSelect.value = ids[0];
    const missing = config.models.filter((m) => !ids.includes(m.id)).map((m) => m.id);
    modelNote.hidden = !missing.length && ids.length > 0;
    modelNote.textContent = ids.length
      ? `Not fully served by the mesh now: ${missing.join(", ")}.`
      : "No model of this node is fully served by the mesh now; see the dashboard for coverage.";
    sendButton.disabled = !ids.length;
  } catch (error) {
    showError(error);
  }
}

/**
 * @param {"user" | "assistant"} role
 * @param {string} text
 * @returns {HTMLElement} the element holding the message's text
 */
function addMessage(role, text) {
  const content = html("div", { class: "content" }, text);
  messagesList.append(html("li", { class: `message ${role}` }, html("span", { class: "role" }, role), content));
  content.scrollIntoView({ block: "nearest" });
  return content;
}

/**
 * What left this machine for one reply, stated precisely from its usage.
 * @param {string} modelId
 * @param {{prompt_tokens: number, completion_tokens: number}} usage
 */
function describePrivacy(modelId, usage) {
  const model = config.models.find((m) => m.id === modelId);
  const hidden = model?.hidden_size ?? 0;
  // The prompt runs through the mesh once, and each new token once more (the last one included when
  // max_tokens cut the reply; an end-of-sequence token, which is not counted, otherwise).
  const positions = usage.prompt_tokens + usage.completion_tokens;
  const kib = (positions * hidden * 4) / 1024;
  const node = live.latest()?.node;
  const own =
    node && node.state === "serving" && node.model === modelId
      ? ` Blocks ${node.span} ran on this node itself.`
      : "";
  const loopback = ["127.0.0.1", "localhost", "[::1]"].includes(location.hostname);
  const browser = loopback ? "" : ` Your message went from this browser to the node at ${location.host}.`;
  privacyText.textContent =
    `Sent to peers: hidden states only (${positions} tokens × ${hidden} floats, ` +
    `${kib.toFixed(1)} KiB of fp32, with their positions and attention mask) to each peer serving ` +
    `blocks of the route. Prompt text, token ids and logits stayed on this node.${own}${browser}`;
  privacyText.dataset.tokens = String(positions);
}

/** @param {string} text */
async function send(text) {
  const model = modelSelect.value;
  conversation.push({ role: "user", content: text });
  addMessage("user", text);
  const reply = addMessage("assistant", "");
  reply.classList.add("streaming");
  running = new AbortController();
  sendButton.disabled = true;
  stopButton.hidden = false;
  const temperature = Number(temperatureInput.value);
  const maxTokens = Number(maxTokensInput.value);
  let answer = "";
  try {
    for await (const chunk of streamChat(
      {
        model,
        messages: conversation,
        ...(Number.isFinite(temperature) && temperatureInput.value !== "" ? { temperature } : {}),
        ...(Number.isInteger(maxTokens) && maxTokens > 0 ? { max_tokens: maxTokens } : {}),
      },
      running.signal,
    )) {
      const piece = chunk.choices[0]?.delta?.content;
      if (piece) {
        answer += piece;
        reply.textContent = answer;
      }
      if (chunk.usage) describePrivacy(model, chunk.usage);
    }
    conversation.push({ role: "assistant", content: answer });
    clearError();
  } catch (error) {
    if (error instanceof DOMException && error.name === "AbortError") {
      conversation.push({ role: "assistant", content: answer });
      reply.append(html("span", { class: "muted" }, " [stopped]"));
    } else {
      conversation.pop(); // the question stays on screen but leaves the history, to be asked again
      reply.append(html("span", { class: "error" }, answer ? ` [${message(error)}]` : message(error)));
      if (error instanceof ApiError && error.status === 503) loadModels();
      showError(error);
    }
  } finally {
    reply.classList.remove("streaming");
    reply.parentElement?.setAttribute("data-done", "true");
    running = null;
    sendButton.disabled = false;
    stopButton.hidden = true;
  }
}

/** @param {unknown} error */
function message(error) {
  return error instanceof Error ? error.message : String(error);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = promptInput.value.trim();
  if (!text || running || !modelSelect.value) return;
  promptInput.value = "";
  send(text);
});

promptInput.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
});

stopButton.addEventListener("click", () => running?.abort());

byId("new-chat").addEventListener("click", () => {
  running?.abort();
  conversation = [];
  messagesList.replaceChildren();
  promptInput.focus();
});

loadModels();
