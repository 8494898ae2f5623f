// @ts-check
// Init script (before any page script): keep a copy of every data channel message the page sends;
// `window.__channelSent()` returns them as [channel id, label, text or null, base64 bytes or null].

(() => {
  const sent = [];
  const ids = new WeakMap();
  let next = 0;
  const original = RTCDataChannel.prototype.send;
  RTCDataChannel.prototype.send = function (data) {
    if (!ids.has(this)) ids.set(this, next++);
    let bytes;
    if (typeof data === 'string') bytes = new TextEncoder().encode(data);
    else if (data instanceof ArrayBuffer) bytes = new Uint8Array(data.slice(0));
    else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));
    else bytes = new Uint8Array(0);
    sent.push([ids.get(this), this.label, typeof data === 'string', bytes]);
    return original.call(this, data);
  };
  window.__channelSent = () => sent.map(([id, label, text, bytes]) => {
    let binary = '';
    for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return [id, label, text, btoa(binary)];
  });
})();
