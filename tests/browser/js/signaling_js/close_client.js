// @ts-check

/**
 * Close the JS signal client `name` and forget it.
 * @param {string} name
 */
async (name) => {
  await clients[name].close();
  delete clients[name];
};
