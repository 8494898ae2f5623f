// @ts-check
/**
 * A span server in the browser: the mirror of `python_peer/server.py` (docs/mesh.md).
 *
 * OPEN reserves `batch * max_length * bytes_per_token` of a KV budget (refused with `session_refused`
 * when the budget or the session table is full), FORWARD runs new tokens in step order, CLOSE frees the
 * session. Sessions are keyed by the client's peer id and its 16-byte session id, so no client reaches
 * another's session; idle ones are evicted. Every failure is answered with an ERROR frame carrying the
 * code Python would send.
 *
 * With a ledger (`config.ledger`, the node's `BrowserLedger`), sessions are paid for as in Python: OPEN
 * answers `payment_required` unless it names a hold in the client's log (as this node's ledger holds it)
 * that pays for exactly this session here, covers its price, has opened no session before, and fits the
 * client's balance beside all its other open holds, at every peer (`python_peer/core/holds.py`);
 * FORWARD counts token positions and is refused (`payment_required`) once that hold has expired. The ledger exchange on the link (the receipt proposed at CLOSE, the GOSSIP requests: push,
 * countersigned receipt, gossip message) is `ServerExchange`'s (`web/src/ledger/server_exchange.js`); ledger
 * errors (a malformed push, a bad signature) are answered `bad_frame` with `ledger: ...`, as Python
 * does; a push is answered `{stored, held}` (`held`: the seq through which this node now holds the
 * client's own log, so the client's next push carries only what follows). OPEN may carry the entries a
 * push would (`log`), stored as a push before the hold is checked; its answer says `log: true`, so
 * clients know they may. Without a ledger sessions are free: OPEN never answers `payment_required`, CLOSE proposes no
 * receipt, a client's push is answered `{stored: 0}` and other GOSSIP with `bad_frame`.
 *
 * `paused` refuses new sessions (`session_refused`, as `python_peer/api/control.py`) while open ones
 * run to their end.
 */

import {
  ErrorCode,
  FrameType,
  TensorError,
  WireError,
  checkFinite,
  errorFrame,
  floatTensor,
  frameTensor,
  frameTypeName,
  makeFrame,
  tensorAsInt64,
  tensorToFloat32,
} from '../protocol/wire.js';
import { ATTENTION_MASK, BlocksRunner, HIDDEN_IN, HIDDEN_OUT, POSITION_IDS, SessionError, ShardInputError } from '../runtime/shard.js';
import { ExchangeRefusal, remember } from '../ledger/exchange.js';
import { ServerExchange } from '../ledger/server_exchange.js';
import { MAX_BATCH, MAX_LENGTH_LIMIT, MAX_SESSIONS, OPEN_LOG } from '../protocol/constants.js';
import { modelContext, spanShards } from './span_choice.js';
import { ANSWER_META_KEY, INPUT_CHAIN_START, chainInput, signAnswer, tensorDigest } from '../protocol/answers.js';

const PEER_ID_RE = /^[0-9a-f]{64}$/;

/**
 * What a span server needs of the node's ledger: `BrowserLedger` of `web/src/ledger/ledger.js`, the
 * exchange's needs (`ServerLedger` of web/src/ledger/server_exchange.js) and the payment check.
 * `requireHold` throws an error with `code === 'payment_required'` when the hold does not pay for the
 * session; an error named `LedgerError` is the client's bad input (answered `bad_frame`). `reputation`
 * (`python_peer/core/reputation.py`) says whether a client is excluded by the evidence this node holds, and
 * `refusal` the message it is refused with (null unless excluded).
 * @typedef {import('../ledger/server_exchange.js').ServerLedger & {requireHold: (client: string, hold: unknown,
 *   terms: {session: Uint8Array, model: string, start: number, end: number, tokens: number}) => unknown,
 *   reputation?: (peerId: string) => Promise<{level: string, refusal: string | null}>}} ServerLedger
 *   `requireHold` resolves to the quote (`{price, hold_expires}`)
 */

const MAX_ADMITTED_HOLDS = 4096; // holds remembered as having opened a session here (each opens one)

/**
 * @typedef {object} ServerConfig
 * @property {number} [memoryBudgetBytes]  for KV caches
 * @property {number} [idleTimeoutMs]
 * @property {number} [maxSessions]
 * @property {ServerLedger | null} [ledger]  null: sessions are free
 * @property {{peerId: string, sign: (bytes: Uint8Array) => Promise<string>} | null} [identity]  signs each
 *   FORWARD answer (`protocol/answers.js`); null: answers go unsigned and checking clients route around
 * @property {(event: {type: 'opened' | 'closed' | 'forward' | 'receipt', client: string, tokens?: number}) => void} [onChange]
 */

/**
 * @typedef {object} Session
 * @property {string} key
 * @property {string} client
 * @property {number} batch
 * @property {number} maxLength
 * @property {number} reserved
 * @property {number} price  what the client was quoted at OPEN
 * @property {number} holdExpires  when the hold that pays for the session expires (ms; 0: free session)
 * @property {number} tokens  token positions processed (batch x length), for the receipt
 * @property {number} length
 * @property {number} nextStep
 * @property {string} chain  the input chain through the last step (`protocol/answers.js`)
 * @property {number} lastUsed
 * @property {Promise<unknown>} queue  the session's requests run one after another
 * @property {boolean} busy
 */

class Refusal extends Error {
  /**
   * @param {string} code
   * @param {string} message
   */
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

const hex = (/** @type {Uint8Array} */ bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
const mib = (/** @type {number} */ n) => (n / 2 ** 20).toFixed(2);

/**
 * A tensor of `frame` as float32 (float16 widened) or int64 of the given rank; TensorError otherwise.
 * Floats must be finite (NonFiniteError), as Python's `tensors.expect`.
 * @param {import('../protocol/wire.js').Frame} frame
 * @param {string} name
 * @param {'f' | 'i'} kind
 * @param {number} rank
 */
function expect(frame, name, kind, rank) {
  const tensor = frameTensor(frame, name);
  const isFloat = tensor.dtype !== 'int64';
  if (isFloat) checkFinite(tensor);
  if ((kind === 'f') !== isFloat || tensor.shape.length !== rank) {
    throw new TensorError(
      `tensor ${name} is ${tensor.dtype} of rank ${tensor.shape.length}; expected ` +
        `${kind === 'f' ? 'a float' : 'an int64'} tensor of rank ${rank}`,
    );
  }
  return tensor;
}

/** The blocks `[start, end)` of one model, served to clients over frames. */
export class SpanServer {
  /**
   * @param {import('../runtime/shard.js').Manifest & {model: {name: string}}} manifest
   * @param {{start: number, end: number}} span
   * @param {BlocksRunner[]} runners  consecutive, covering the span exactly
   * @param {ServerConfig} [config]
   */
  constructor(manifest, span, runners, config = {}) {
    if (!runners.length || runners[0].start !== span.start || runners[runners.length - 1].end !== span.end) {
      throw new Error(`runners do not cover blocks ${span.start}-${span.end}`);
    }
    for (let i = 1; i < runners.length; i++) {
      if (runners[i - 1].end !== runners[i].start) throw new Error('runners are not consecutive');
    }
    this.model = manifest.model.name;
    this.start = span.start;
    this.end = span.end;
    this.runners = runners;
    const { ledger = null, identity = null, onChange = () => {}, ...limits } = config;
    this.identity = identity;
    this.config = { memoryBudgetBytes: 512 * 1024 * 1024, idleTimeoutMs: 300_000, maxSessions: MAX_SESSIONS, ...limits };
    /** @type {ServerLedger | null} */
    this.ledger = ledger;
    this.onChange = onChange;
    /** New sessions are refused while paused; open ones go on. */
    this.paused = false;
    /** The ledger exchange on the links: receipts proposed at CLOSE, the GOSSIP requests. */
    this.exchange = new ServerExchange({ ledger, onReceipt: (client) => this.onChange({ type: 'receipt', client }) });
    const cfg = manifest.model.config;
    this.hiddenSize = Number(cfg.hidden_size);
    /** the most positions the model takes, or null when its config does not say */
    this.context = modelContext(cfg);
    // KV bytes per token per sequence: two fp32 tensors per layer.
    this.bytesPerToken = (this.end - this.start) * 2 * Number(cfg.num_key_value_heads) * Number(cfg.head_dim) * 4;
    /** @type {Map<string, Session>} */
    this.sessions = new Map();
    /** @type {Set<string>} holds that opened a session here, oldest first (each opens one) */
    this.admittedHolds = new Set();
    this.tokensServed = 0;
  }

  /**
   * Download, verify and load the block shards that make up `[start, end)`.
   * @param {string | URL} baseUrl  the folder of manifest.json
   * @param {import('../runtime/shard.js').Manifest & {model: {name: string}}} manifest
   * @param {{start: number, end: number}} span
   * @param {ServerConfig} [config]
   * @param {import('../runtime/shard.js').LoadOptions} [loadOptions]
   */
  static async load(baseUrl, manifest, span, config, loadOptions) {
    const shards = spanShards(manifest, span);
    const runners = [];
    for (const entry of shards) runners.push(await BlocksRunner.load(baseUrl, entry, manifest, loadOptions));
    return new SpanServer(manifest, span, runners, config);
  }

  get span() {
    return `${this.start}-${this.end}`;
  }

  /**
   * Block-tokens per second of one decode step, measured now (after an 8-token prefill), as Python's
   * `SpanServer.measure_throughput`: what this peer announces.
   * @param {number} [steps]
   */
  async measureThroughput(steps = 3) {
    const key = '__throughput__';
    for (const runner of this.runners) runner.open(key, 1);
    try {
      const ones = (/** @type {number} */ n) => new BigInt64Array(n).fill(1n);
      /** @type {import('../runtime/shard.js').Float32Tensor} */
      let hidden = { data: new Float32Array(8 * this.hiddenSize), dims: [1, 8, this.hiddenSize] };
      const positions = BigInt64Array.from({ length: 8 }, (_, i) => BigInt(i));
      for (const runner of this.runners) hidden = await runner.forward(key, hidden, ones(8), positions);
      const begin = performance.now();
      for (let i = 0; i < steps; i++) {
        /** @type {import('../runtime/shard.js').Float32Tensor} */
        let h = { data: new Float32Array(this.hiddenSize), dims: [1, 1, this.hiddenSize] };
        for (const runner of this.runners) h = await runner.forward(key, h, ones(1), BigInt64Array.of(BigInt(8 + i)));
      }
      const elapsedS = Math.max((performance.now() - begin) / 1000, 1e-6);
      return ((this.end - this.start) * steps) / elapsedS;
    } finally {
      for (const runner of this.runners) runner.close(key);
    }
  }

  get reservedBytes() {
    let total = 0;
    for (const s of this.sessions.values()) total += s.reserved;
    return total;
  }

  get kvFreeTokens() {
    return Math.max(0, Math.floor((this.config.memoryBudgetBytes - this.reservedBytes) / this.bytesPerToken));
  }

  /**
   * Answer one request frame; every failure becomes an ERROR frame, never an exception.
   * @param {string} client  the remote peer id of the link the frame came on
   * @param {import('../protocol/wire.js').Frame} frame
   * @returns {Promise<import('../protocol/wire.js').Frame>}
   */
  async handle(client, frame) {
    try {
      if (frame.type === FrameType.OPEN) return await this.#open(client, frame);
      if (frame.type === FrameType.FORWARD) return await this.#forward(client, frame);
      if (frame.type === FrameType.CLOSE) return await this.#finish(client, frame);
      if (frame.type === FrameType.GOSSIP) return await this.#gossip(client, frame);
      throw new Refusal(ErrorCode.BAD_FRAME, `a server does not take ${frameTypeName(frame.type)} frames`);
    } catch (err) {
      if (err instanceof Refusal || err instanceof ExchangeRefusal || err instanceof WireError) return errorFrame(frame.session, frame.step, err.code, err.message);
      const code = /** @type {{code?: unknown}} */ (err)?.code;
      if (code === ErrorCode.PAYMENT_REQUIRED) {
        return errorFrame(frame.session, frame.step, ErrorCode.PAYMENT_REQUIRED, /** @type {Error} */ (err).message);
      }
      if (err instanceof Error && err.name === 'LedgerError') {
        return errorFrame(frame.session, frame.step, ErrorCode.BAD_FRAME, `ledger: ${err.message}`);
      }
      console.error(`span server: internal error on ${frameTypeName(frame.type)}`, err);
      const name = err instanceof Error ? err.name : typeof err;
      return errorFrame(frame.session, frame.step, ErrorCode.INTERNAL, `internal error: ${name}`);
    }
  }

  /**
   * GOSSIP frames on a session link: a client pushing its log, returning a countersigned receipt, or
   * sending one gossip message (`ServerExchange.answer`).
   * @param {string} client
   * @param {import('../protocol/wire.js').Frame} frame
   */
  async #gossip(client, frame) {
    const meta = await this.exchange.answer(client, SpanServer.key(client, frame.session), frame.meta);
    return makeFrame({ type: FrameType.RESULT, session: frame.session, step: frame.step, meta: /** @type {any} */ (meta) });
  }

  /**
   * @param {string} client
   * @param {Uint8Array} session
   */
  static key(client, session) {
    return `${client}:${hex(session)}`;
  }

  /**
   * @param {string} client
   * @param {import('../protocol/wire.js').Frame} frame
   */
  async #open(client, frame) {
    if (this.paused) {
      throw new Refusal(
        ErrorCode.SESSION_REFUSED,
        'this peer has paused serving: it finishes its open sessions and takes no new ones; open the session on another peer',
      );
    }
    const { model, start, end, batch, max_length: maxLength } = /** @type {{[key: string]: any}} */ (frame.meta);
    if (model !== this.model || start !== this.start || end !== this.end) {
      throw new Refusal(
        ErrorCode.SESSION_REFUSED,
        `this peer serves ${this.model} blocks ${this.span}, not ${model} blocks ${start}-${end}`,
      );
    }
    if (!Number.isInteger(batch) || batch < 1 || batch > MAX_BATCH) {
      throw new Refusal(ErrorCode.BAD_FRAME, `batch ${JSON.stringify(batch)} must be an integer in 1..${MAX_BATCH}`);
    }
    if (!Number.isInteger(maxLength) || maxLength < 1 || maxLength > MAX_LENGTH_LIMIT) {
      throw new Refusal(ErrorCode.BAD_FRAME, `max_length ${JSON.stringify(maxLength)} must be an integer in 1..${MAX_LENGTH_LIMIT}`);
    }
    const key = SpanServer.key(client, frame.session);
    if (this.sessions.has(key)) throw new Refusal(ErrorCode.SESSION_REFUSED, `session ${hex(frame.session)} is already open`);
    let price = 0;
    let holdExpires = 0;
    if (this.ledger !== null && PEER_ID_RE.test(client)) {
      // The client pays through a hold in its own log that pays for this session and fits its balance
      // with all its other open holds, at every peer; each hold opens one session.
      // A client proven to lie by several clients is not served, as Python's `ServerExchange.admit`.
      const standing = this.ledger.reputation === undefined ? null : await this.ledger.reputation(client);
      // The core's `Reputation.refusal` says why (null unless excluded), as the native peer's message.
      if (standing?.refusal) throw new Refusal(ErrorCode.SESSION_REFUSED, standing.refusal);
      // Its log may come with OPEN (`OPEN_LOG`): stored as a push, before the hold is checked.
      await this.exchange.takeLog(client, /** @type {{[key: string]: unknown}} */ (frame.meta));
      const hold = /** @type {{[key: string]: unknown}} */ (frame.meta).hold;
      const used = () => {
        if (typeof hold === 'string' && this.admittedHolds.has(hold)) {
          throw new Refusal(
            ErrorCode.PAYMENT_REQUIRED,
            `client ${client.slice(0, 12)}…: its hold ${hold.slice(0, 12)}… has already opened a session here; each session needs a hold of its own`,
          );
        }
      };
      used();
      const terms = { session: frame.session, model: this.model, start: this.start, end: this.end, tokens: batch * maxLength };
      const quote = /** @type {{price?: unknown, hold_expires?: unknown} | null | undefined} */ (
        await this.ledger.requireHold(client, hold, terms)
      );
      used(); // a concurrent OPEN with the same hold got there first
      price = typeof quote?.price === 'number' ? quote.price : 0;
      holdExpires = typeof quote?.hold_expires === 'number' ? quote.hold_expires : 0;
      remember(this.admittedHolds, /** @type {string} */ (hold), undefined, MAX_ADMITTED_HOLDS);
      if (this.sessions.has(key)) throw new Refusal(ErrorCode.SESSION_REFUSED, `session ${hex(frame.session)} is already open`);
      if (this.paused) throw new Refusal(ErrorCode.SESSION_REFUSED, 'this peer has paused serving; open the session on another peer');
    }
    this.evictIdle();
    const need = batch * maxLength * this.bytesPerToken;
    const budget = this.config.memoryBudgetBytes;
    if (this.sessions.size >= this.config.maxSessions || this.reservedBytes + need > budget) {
      throw new Refusal(
        ErrorCode.SESSION_REFUSED,
        `KV memory budget full: ${this.sessions.size} sessions hold ${mib(this.reservedBytes)} MiB ` +
          `of ${mib(budget)} MiB and this one needs ${mib(need)} MiB; try another peer`,
      );
    }
    for (const runner of this.runners) runner.open(key, batch);
    this.sessions.set(key, {
      key,
      client,
      batch,
      maxLength,
      reserved: need,
      price,
      holdExpires,
      tokens: 0,
      length: 0,
      nextStep: 0,
      chain: INPUT_CHAIN_START,
      lastUsed: performance.now(),
      queue: Promise.resolve(),
      busy: false,
    });
    this.onChange({ type: 'opened', client });
    return makeFrame({
      type: FrameType.RESULT,
      session: frame.session,
      step: frame.step,
      meta: { opened: true, kv_free_tokens: this.kvFreeTokens, ...(this.ledger !== null ? { [OPEN_LOG]: true } : {}) },
    });
  }

  /**
   * @param {string} client
   * @param {import('../protocol/wire.js').Frame} frame
   */
  #forward(client, frame) {
    const key = SpanServer.key(client, frame.session);
    const session = this.sessions.get(key);
    if (session === undefined) {
      throw new Refusal(ErrorCode.UNKNOWN_SESSION, `session ${hex(frame.session)} is not open here (expired or never opened)`);
    }
    const run = session.queue.then(() => this.#forwardNow(key, session, frame));
    session.queue = run.catch(() => {});
    return run;
  }

  /**
   * @param {string} key
   * @param {Session} session
   * @param {import('../protocol/wire.js').Frame} frame
   */
  async #forwardNow(key, session, frame) {
    if (this.sessions.get(key) !== session) {
      throw new Refusal(ErrorCode.UNKNOWN_SESSION, `session ${hex(frame.session)} is not open here (expired or never opened)`);
    }
    if (session.holdExpires && Date.now() >= session.holdExpires) {
      throw new Refusal(
        ErrorCode.PAYMENT_REQUIRED,
        'the hold that pays for this session has expired (its credits may be promised elsewhere now): open a new session',
      );
    }
    if (frame.step !== session.nextStep) {
      throw new Refusal(ErrorCode.OUT_OF_ORDER, `step ${frame.step} arrived, step ${session.nextStep} was expected`);
    }
    const hidden = expect(frame, HIDDEN_IN, 'f', 3);
    const mask = expect(frame, ATTENTION_MASK, 'i', 2);
    const positions = expect(frame, POSITION_IDS, 'i', 2);
    const [batch, seq, width] = hidden.shape;
    if (width !== this.hiddenSize || batch !== session.batch || seq < 1) {
      throw new Refusal(
        ErrorCode.BAD_SHAPE,
        `hidden states [${hidden.shape.join(', ')}] do not fit batch ${session.batch}, hidden ${this.hiddenSize} with at least one token`,
      );
    }
    if (session.length + seq > session.maxLength) {
      throw new Refusal(
        ErrorCode.BAD_SHAPE,
        `${session.length} + ${seq} tokens exceed the session's max_length ${session.maxLength}`,
      );
    }
    const positionValues = tensorAsInt64(positions);
    this.#checkPositions(positionValues, session);
    /** @type {import('../runtime/shard.js').Float32Tensor} */
    let out = { data: tensorToFloat32(hidden), dims: [batch, seq, width] };
    const maskValues = tensorAsInt64(mask);
    session.busy = true;
    let done = 0;
    try {
      for (const runner of this.runners) {
        out = await runner.forward(key, out, maskValues, positionValues);
        done++;
      }
    } catch (err) {
      if (done) this.#close(key); // some runners advanced and some did not: the session can't be trusted
      if (err instanceof ShardInputError) throw new Refusal(ErrorCode.BAD_SHAPE, err.message);
      if (err instanceof SessionError) throw new Refusal(ErrorCode.UNKNOWN_SESSION, err.message);
      throw err;
    } finally {
      session.busy = false;
    }
    session.length += seq;
    session.tokens += batch * seq;
    session.nextStep++;
    session.lastUsed = performance.now();
    this.tokensServed += batch * seq;
    const inputs = [hidden, mask, positions].map((t) => tensorDigest(t.dtype, t.shape, t.data));
    session.chain = await chainInput(session.chain, await Promise.all(inputs));
    const result = floatTensor(HIDDEN_OUT, out.dims, out.data); // float16 when it is float16 values
    const meta = await this.#answer(session.client, frame, session, seq, result);
    this.onChange({ type: 'forward', client: session.client, tokens: batch * seq });
    return makeFrame({ type: FrameType.RESULT, session: frame.session, step: frame.step, meta, tensors: [result] });
  }

  /**
   * The RESULT metadata: this peer's signed answer (Python's `SpanServer._answer`), when it has an
   * identity and the client is a peer.
   * @param {string} client
   * @param {import('../protocol/wire.js').Frame} frame
   * @param {Session} session
   * @param {number} seq
   * @param {{dtype: string, shape: readonly number[], data: Float32Array | Uint16Array}} result
   * @returns {Promise<{[key: string]: unknown}>}
   */
  async #answer(client, frame, session, seq, result) {
    const identity = this.identity;
    if (identity === null || !PEER_ID_RE.test(client) || client === identity.peerId) return {};
    const bytes = new Uint8Array(result.data.buffer, result.data.byteOffset, result.data.byteLength);
    const answer = {
      session: hex(frame.session),
      model: this.model,
      start: this.start,
      end: this.end,
      step: frame.step,
      tokens: seq,
      input: session.chain,
      output: await tensorDigest(result.dtype, result.shape, bytes),
      client,
      server: identity.peerId,
    };
    return { [ANSWER_META_KEY]: await signAnswer(identity, answer) };
  }

  /**
   * CLOSE: free the session and, with a ledger, propose the receipt for the work done.
   * @param {string} client
   * @param {import('../protocol/wire.js').Frame} frame
   */
  async #finish(client, frame) {
    const key = SpanServer.key(client, frame.session);
    const session = this.sessions.get(key);
    this.#close(key);
    const meta = await this.exchange.closeAnswer(key, {
      client,
      session: frame.session,
      model: this.model,
      start: this.start,
      end: this.end,
      tokens: session?.tokens ?? 0,
    });
    return makeFrame({ type: FrameType.RESULT, session: frame.session, step: frame.step, meta: /** @type {any} */ (meta) });
  }

  /**
   * Positions past the model's context or the session's `max_length` are refused (`bad_shape`, like
   * tokens past `max_length`) before anything runs: no model was trained for them (as `server.py`).
   * @param {BigInt64Array} positions
   * @param {Session} session
   */
  #checkPositions(positions, session) {
    if (!positions.length) return;
    const limit = this.context === null ? session.maxLength : Math.min(session.maxLength, this.context);
    let low = positions[0];
    let high = positions[0];
    for (const p of positions) {
      if (p < low) low = p;
      if (p > high) high = p;
    }
    if (low < 0n || high >= BigInt(limit)) {
      const context = this.context === null ? '' : `, the model's context ${this.context}`;
      throw new Refusal(
        ErrorCode.BAD_SHAPE,
        `position_ids ${low}..${high} are outside 0..${limit - 1} (the session's max_length ${session.maxLength}${context})`,
      );
    }
  }

  /** @param {string} key */
  #close(key) {
    const session = this.sessions.get(key);
    if (!this.sessions.delete(key)) return;
    for (const runner of this.runners) runner.close(key);
    this.onChange({ type: 'closed', client: /** @type {Session} */ (session).client });
  }

  /** Drop every session of a client whose link is gone. @param {string} client */
  closeClient(client) {
    for (const key of [...this.sessions.keys()]) if (key.startsWith(`${client}:`)) this.#close(key);
  }

  /** Close every open session (their clients' next frames get `unknown_session` and fail over). */
  closeAll() {
    for (const key of [...this.sessions.keys()]) this.#close(key);
  }

  /** @param {number} [now]  `performance.now()` */
  evictIdle(now = performance.now()) {
    const idle = [...this.sessions.values()].filter((s) => now - s.lastUsed > this.config.idleTimeoutMs && !s.busy);
    for (const s of idle) this.#close(s.key);
    return idle.length;
  }

  /** Close every session and free the runners. */
  async release() {
    this.closeAll();
    this.exchange.clear();
    for (const runner of this.runners) await runner.release();
  }
}
