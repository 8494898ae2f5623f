// @ts-check
/**
 * Contribution settings: serve or pause, the KV-cache budget, the span of blocks. The form posts to
 * `/v1/node/settings` and says what changed, or what the node refused and why; the "Now" list follows
 * the node live.
 */

import { getJson, postJson } from "./api.js";
import { byId, count, mib, pageConfig, startLive } from "./page.js";

/** @typedef {import("./page.js").SettingsInfo} SettingsInfo */

const config = pageConfig();

startLive((snapshot) => {
  const node = snapshot.node;
  byId("s-state").textContent =
    node.state === "serving" ? "serving" : node.state === "paused" ? "paused: no new sessions" : "client only";
  byId("s-span").textContent = node.span ? `blocks ${node.span} of ${node.model}` : "—";
  byId("s-budget").textContent = node.kv ? mib(node.kv.budget_bytes) : "—";
  byId("s-free").textContent = node.kv ? `${count(node.kv.free_tokens)} tokens` : "—";
  byId("s-sessions").textContent = count(node.open_sessions);
  byId("s-tokens").textContent = count(node.tokens_served);
});

const form = /** @type {HTMLFormElement | null} */ (document.getElementById("settings-form"));
if (form && config.settings) {
  const serving = /** @type {HTMLInputElement} */ (byId("serving"));
  const memory = /** @type {HTMLInputElement} */ (byId("memory"));
  const span = /** @type {HTMLInputElement} */ (byId("span"));
  const save = /** @type {HTMLButtonElement} */ (byId("save"));
  const result = byId("settings-result");

  /**
   * @param {string} text
   * @param {"ok" | "error" | "busy"} kind
   */
  const say = (text, kind) => {
    result.textContent = text;
    result.className = `notice ${kind}`;
    result.setAttribute("role", kind === "error" ? "alert" : "status");
    result.hidden = false;
  };

  /** @param {SettingsInfo} settings */
  const fill = (settings) => {
    serving.checked = settings.serving;
    memory.value = String(settings.memory_budget_mb);
    span.value = settings.span;
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    /** @type {{serving: boolean, span: string, memory_budget_mb?: number}} */
    const change = { serving: serving.checked, span: span.value.trim() };
    if (memory.value !== "") change.memory_budget_mb = Number(memory.value);
    const moving = config.settings && change.span !== config.settings.span;
    save.disabled = true;
    say(moving ? `Loading blocks ${change.span}…` : "Saving…", "busy");
    try {
      /** @type {SettingsInfo} */
      const now = await postJson(`${config.api_base}/node/settings`, change);
      config.settings = now;
      fill(now);
      const what = now.serving ? `serving blocks ${now.span}` : `paused (blocks ${now.span} not announced)`;
      say(
        `${now.changed?.length ? `Saved (${now.changed.join(", ")})` : "Nothing changed"}: ${what}, ` +
          `KV budget ${now.memory_budget_mb} MiB (${count(now.kv_free_tokens)} tokens free).`,
        "ok",
      );
    } catch (error) {
      say(`Not saved: ${error instanceof Error ? error.message : error}`, "error");
      try {
        fill(await getJson(`${config.api_base}/node/settings`)); // show what the node still uses
        span.value = change.span; // but keep the text the user may want to correct
      } catch {
        // the error above says enough
      }
    } finally {
      save.disabled = false;
    }
  });
}
