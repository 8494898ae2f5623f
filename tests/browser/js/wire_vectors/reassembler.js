// @ts-check

/**
 * Each scenario's chunks through a Reassembler: what it yields and refuses.
 * @param {{ params: object, steps: object[] }[]} scenarios
 */
(scenarios) => scenarios.map(({ params, steps }) => {
  const r = new T.wire.Reassembler({
    maxMessageBytes: params.max_message_bytes, maxPartial: params.max_partial,
    maxBufferedBytes: params.max_buffered_bytes, timeoutS: params.timeout_s,
  });
  return steps.map((step) => {
    let answer;
    if (step[0] === 'expire') {
      answer = `expired [${r.expire(step[1]).join(', ')}]`;
    } else {
      try {
        const message = r.feed(T.fromB64(step[1]), step[2]);
        answer = message === null ? 'none' : 'message ' + T.toB64(message);
      } catch (e) {
        answer = T.errorName(e);
      }
    }
    return `${answer} | ${r.size} partial, ${r.bufferedBytes} bytes`;
  });
});
