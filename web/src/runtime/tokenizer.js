// @ts-check
/**
 * The tokenizer and chat template of an exported model in the browser, the mirror of
 * `python_peer/tokenizer.py`: the ids and the prompt text are those Python produces.
 *
 * The manifest's `tokenizer` section names the files (`exporter/pipeline.py` writes them next to the
 * shards): `file` (`tokenizer.json`, read by `@huggingface/tokenizers`) and `chat_template_file`
 * (`chat_template.jinja`, rendered by `@huggingface/jinja`, or null when the model has none), plus
 * `special_tokens` (passed to the template as `bos_token`, `eos_token`...) and `eos_token_ids`. The
 * export writes no `tokenizer_config.json`, and Python reads none: the library's config is made here
 * with `clean_up_tokenization_spaces: false`, since the Rust `tokenizers.decode` that Python calls
 * never cleans up spaces.
 *
 * As Python: `encode` adds no special tokens (the chat template writes them), `decode` skips special
 * tokens, and the template is rendered with trim_blocks and lstrip_blocks, after jinja2's own
 * preprocessing (newlines normalized to `\n`, one trailing newline dropped); `raise_exception(message)`
 * in a template (the library's own global, which cannot be replaced) becomes a TemplateError with the
 * message. No DOM: a page or a Worker.
 */

import { Tokenizer } from '../../node_modules/@huggingface/tokenizers/dist/tokenizers.min.mjs';
import { Template } from '../../node_modules/@huggingface/jinja/dist/index.js';
import { checkPublishedFile } from './publication.js';

/** The tokenizer files cannot be fetched or read. */
export class TokenizerError extends Error {
  /**
   * @param {string} message
   * @param {ErrorOptions} [options]
   */
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The chat template cannot render these messages (Python's TemplateError). */
export class TemplateError extends TokenizerError {}

/** At most this many bytes of tokenizer.json are read (SmolLM2's is 3.5 MB). */
export const MAX_TOKENIZER_BYTES = 64 * 1024 * 1024;
export const MAX_TEMPLATE_BYTES = 1024 * 1024;

/**
 * The manifest's `tokenizer` section (the fields read here).
 * @typedef {{file?: string, chat_template_file?: string | null, special_tokens?: Record<string, string>,
 *   eos_token_ids?: number[]}} TokenizerInfo
 */

/** @typedef {{role: string, content: string}} ChatMessage */

/**
 * Fetch a text file of the model's folder, bounded, and checked against the model's publication (its
 * size and sha256 as the publisher signed them) when there is one.
 * @param {URL} url
 * @param {number} limit
 * @param {import('./publication.js').Publication | null} [publication]
 */
async function fetchText(url, limit, publication = null) {
  /** @type {Response} */
  let response;
  try {
    response = await fetch(url);
  } catch (err) {
    throw new TokenizerError(`cannot download ${url.pathname}: ${err instanceof Error ? err.message : err}`, { cause: err });
  }
  if (!response.ok) throw new TokenizerError(`cannot download ${url.pathname}: HTTP ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  if (bytes.byteLength > limit) throw new TokenizerError(`${url.pathname} is larger than ${limit} bytes`);
  const name = decodeURIComponent(url.pathname.slice(url.pathname.lastIndexOf('/') + 1));
  try {
    await checkPublishedFile(publication, name, bytes);
  } catch (err) {
    throw new TokenizerError(err instanceof Error ? err.message : String(err), { cause: err });
  }
  return new TextDecoder().decode(bytes);
}

/**
 * A plain file name of the model's folder (no path), as the manifest must give it.
 * @param {unknown} name
 * @param {string} field
 */
function plainName(name, field) {
  if (typeof name !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(name)) {
    throw new TokenizerError(`manifest tokenizer.${field} ${JSON.stringify(name)} is not a plain file name`);
  }
  return name;
}

/**
 * jinja2's preprocessing of a template source: `\r\n` and `\r` become `\n`, and one trailing newline is
 * dropped (jinja2's `keep_trailing_newline=False`).
 * @param {string} source
 */
export function jinja2Source(source) {
  const normalized = source.replace(/\r\n|\r/g, '\n');
  return normalized.endsWith('\n') ? normalized.slice(0, -1) : normalized;
}

/** Encodes prompts (through the chat template when there is one) and decodes generated ids. */
export class ModelTokenizer {
  /**
   * @param {object} tokenizerJson  the parsed tokenizer.json
   * @param {TokenizerInfo} info  the manifest's `tokenizer` section
   * @param {string | null} chatTemplate  the template's source, or null
   */
  constructor(tokenizerJson, info, chatTemplate) {
    try {
      this.tokenizer = new Tokenizer(tokenizerJson, { clean_up_tokenization_spaces: false });
    } catch (err) {
      throw new TokenizerError(`cannot read the tokenizer: ${err instanceof Error ? err.message : err}`, { cause: err });
    }
    const eos = info.eos_token_ids ?? [];
    if (!Array.isArray(eos) || !eos.every((i) => Number.isInteger(i) && i >= 0)) {
      throw new TokenizerError(`manifest tokenizer.eos_token_ids ${JSON.stringify(eos)} is not a list of ids`);
    }
    /** @type {ReadonlySet<number>} */
    this.eosTokenIds = new Set(eos);
    /** @type {Record<string, string>} */
    this.specialTokens = {};
    for (const [key, value] of Object.entries(info.special_tokens ?? {})) {
      if (typeof value === 'string') this.specialTokens[key] = value;
    }
    /** @type {string | null} */
    this.chatTemplate = chatTemplate;
    /** @type {Template | null} */
    this.template = null;
    if (chatTemplate !== null) {
      try {
        this.template = new Template(jinja2Source(chatTemplate));
      } catch (err) {
        throw new TemplateError(`the chat template does not parse: ${err instanceof Error ? err.message : err}`, { cause: err });
      }
    }
  }

  /**
   * Fetch the tokenizer files that the manifest of the model at `baseUrl` names.
   * @param {string | URL} baseUrl  the folder of manifest.json
   * @param {{tokenizer?: TokenizerInfo}} manifest
   * @param {import('./publication.js').Publication | null} [publication] the model's verified publication:
   *   each file is checked against it (null: an unsigned export the page allows)
   * @returns {Promise<ModelTokenizer>}
   */
  static async load(baseUrl, manifest, publication = null) {
    const info = manifest.tokenizer;
    if (!info || typeof info !== 'object') throw new TokenizerError('the manifest has no tokenizer section');
    const base = new URL(String(baseUrl), globalThis.location?.href ?? 'http://localhost/');
    if (!base.pathname.endsWith('/')) base.pathname += '/';
    const file = plainName(info.file ?? 'tokenizer.json', 'file');
    const templateFile = info.chat_template_file == null ? null : plainName(info.chat_template_file, 'chat_template_file');
    const [json, template] = await Promise.all([
      fetchText(new URL(file, base), MAX_TOKENIZER_BYTES, publication),
      templateFile === null ? Promise.resolve(null) : fetchText(new URL(templateFile, base), MAX_TEMPLATE_BYTES, publication),
    ]);
    let parsed;
    try {
      parsed = JSON.parse(json);
    } catch (err) {
      throw new TokenizerError(`${file} is not JSON: ${err instanceof Error ? err.message : err}`, { cause: err });
    }
    return new ModelTokenizer(parsed, info, template);
  }

  /**
   * Token ids of `text`, without special tokens added (the chat template writes them).
   * @param {string} text
   * @returns {number[]}
   */
  encode(text) {
    if (typeof text !== 'string') throw new TokenizerError(`can only encode a string, not ${typeof text}`);
    if (text === '') return [];
    return this.tokenizer.encode(text, { add_special_tokens: false }).ids;
  }

  /**
   * The text of `ids`, special tokens skipped.
   * @param {readonly number[]} ids
   */
  decode(ids) {
    if (!ids.length) return '';
    return this.tokenizer.decode([...ids], { skip_special_tokens: true });
  }

  /**
   * The prompt text for `messages` through the chat template.
   * @param {readonly ChatMessage[]} messages
   * @param {{addGenerationPrompt?: boolean}} [options]
   */
  renderChat(messages, { addGenerationPrompt = true } = {}) {
    if (this.template === null) throw new TemplateError('this model has no chat template: send a plain prompt instead');
    if (!Array.isArray(messages) || !messages.every((m) => m && typeof m.role === 'string' && typeof m.content === 'string')) {
      throw new TemplateError('messages must be a list of {role, content} strings');
    }
    try {
      return this.template.render({
        ...this.specialTokens,
        messages: messages.map((m) => ({ ...m })),
        add_generation_prompt: addGenerationPrompt,
      });
    } catch (err) {
      if (err instanceof TemplateError) throw err;
      throw new TemplateError(`the chat template failed: ${err instanceof Error ? err.message : err}`, { cause: err });
    }
  }
}

/** Turns a growing list of token ids into text pieces, holding back incomplete UTF-8 sequences. */
export class StreamDecoder {
  /** @param {ModelTokenizer} tokenizer */
  constructor(tokenizer) {
    this.tokenizer = tokenizer;
    /** @type {number[]} */
    this.ids = [];
    this.emitted = '';
  }

  /**
   * @param {number} token
   * @returns {string} the new text, '' while a character is incomplete
   */
  push(token) {
    this.ids.push(token);
    const text = this.tokenizer.decode(this.ids);
    if (text.endsWith('\ufffd')) return '';
    const piece = text.startsWith(this.emitted) ? text.slice(this.emitted.length) : '';
    this.emitted = text;
    return piece;
  }

  get text() {
    return this.tokenizer.decode(this.ids);
  }
}
