// @ts-check

/**
 * Add a line to the harness page's list, so the screenshot saved at the end shows what was checked.
 * @param {string} text
 */
(text) => {
  const li = document.createElement('li');
  li.textContent = text;
  document.getElementById('notes').append(li);
};
