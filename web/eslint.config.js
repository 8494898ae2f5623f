// @ts-check
// ESLint flat config for the browser node: the recommended correctness rules, no style rules
// (formatting is left as written), browser + worker globals for src/ and Node globals for tests.
import js from "@eslint/js";
import globals from "globals";

export default [
  { ignores: ["node_modules/**", "templates/**"] },
  js.configs.recommended,
  {
    files: ["**/*.js"],
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: "module",
      globals: { ...globals.browser, ...globals.worker },
    },
    rules: {
      "no-unused-vars": [
        "error",
        { argsIgnorePattern: "^_", varsIgnorePattern: "^_", caughtErrorsIgnorePattern: "^_" },
      ],
    },
  },
  {
    files: ["test/**/*.js", "eslint.config.js"],
    languageOptions: { globals: { ...globals.node } },
  },
];
