// @ts-check

/**
 * Load the tokenizer of the model at `base` and encode/render/decode everything it is given.
 * @param {{ base: string, texts: string[], chats: { role: string, content: string }[][], decode: number[][] }} args
 */
async ({ base, texts, chats, decode }) => {
  const { ModelTokenizer, StreamDecoder } = await import('/web/src/runtime/tokenizer.js');
  const manifest = await (await fetch(base + 'manifest.json')).json();
  const tokenizer = await ModelTokenizer.load(base, manifest);
  const streamed = (ids) => {
    const decoder = new StreamDecoder(tokenizer);
    return ids.map((id) => decoder.push(id)).join('');
  };
  return {
    texts: texts.map((t) => tokenizer.encode(t)),
    chats: chats.map((c) => {
      const prompt = tokenizer.renderChat(c);
      return { prompt, ids: tokenizer.encode(prompt), open: tokenizer.renderChat(c, { addGenerationPrompt: false }) };
    }),
    decoded: decode.map((ids) => tokenizer.decode(ids)),
    streamed: decode.map(streamed),
    eos: [...tokenizer.eosTokenIds],
  };
};
