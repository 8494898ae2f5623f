// @ts-check

/**
 * Record the assistant's text length at each change, to see the reply grow while it streams.
 */
() => {
  window.__lengths = [];
  const list = document.getElementById('messages');
  new MutationObserver(() => {
    const reply = list.querySelector('.message.assistant .content');
    if (reply) window.__lengths.push(reply.textContent.length);
  }).observe(list, {subtree: true, childList: true, characterData: true});
};
